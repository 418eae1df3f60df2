"""Prometheus series of the site's directory and the webhooks, read from their plain
counters when Prometheus scrapes (like ``web/metrics.py``'s ``LiveCollector``):

======================================  =======  ===========================================
name                                    type     labels / meaning
======================================  =======  ===========================================
``directory_requests_total``            counter  ``kind`` (user, users, buddies, rooms, room,
                                                 members), ``result`` (ok, not_found, timeout,
                                                 connect, status, too_large, malformed)
``directory_stale_served_total``        counter  ``kind``: cached answers served while the
                                                 site failed
``directory_unavailable_total``         counter  ``kind``: failures with nothing cached (503)
``webhook_events_total``                counter  ``event``: events written to the outbox
``webhook_deliveries_total``            counter  events the site took (2xx)
``webhook_failed_attempts_total``       counter  POSTs that failed and will be retried
``webhook_dropped_total``               counter  ``reason``: ``max_age`` (never taken within
                                                 ``[webhooks] max_age``) or ``buffer``
``webhook_outbox_events``               gauge    events waiting, as of the worker's last
                                                 idle check
======================================  =======  ===========================================

All prefixed ``nextim_``. A provider or worker that is not configured adds nothing.
"""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..directory.http import KINDS


class SiteCollector:
    """:param directory: the directory (only an ``HTTPDirectory`` has counters).
    :param webhooks: the :class:`~nextim_twisted.webhooks.worker.Webhooks` or None."""

    def __init__(self, directory=None, webhooks=None):
        self.directory = directory
        self.webhooks = webhooks

    def describe(self):
        return self.collect()

    def collect(self):
        d = self.directory
        if d is not None and hasattr(d, "stale_served"):
            requests = CounterMetricFamily("nextim_directory_requests",
                                           "Requests to the site's directory, by answer kind and result.",
                                           labels=["kind", "result"])
            for (kind, result), n in sorted(d.requests.items()):
                requests.add_metric([kind, result], n)
            yield requests
            for name, doc, counts in (
                    ("nextim_directory_stale_served", "Cached directory answers served while the site failed.",
                     d.stale_served),
                    ("nextim_directory_unavailable", "Directory reads that failed with nothing cached (503).",
                     d.unavailable)):
                family = CounterMetricFamily(name, doc, labels=["kind"])
                for kind in KINDS:
                    family.add_metric([kind], counts.get(kind, 0))
                yield family
        w = self.webhooks
        if w is not None:
            events = CounterMetricFamily("nextim_webhook_events", "Webhook events written to the outbox.",
                                         labels=["event"])
            for event in sorted(w.events):
                events.add_metric([event], w.enqueued.get(event, 0))
            yield events
            yield CounterMetricFamily("nextim_webhook_deliveries", "Webhook events the site took (2xx).",
                                      value=w.delivered)
            yield CounterMetricFamily("nextim_webhook_failed_attempts",
                                      "Webhook POSTs that failed and will be retried.", value=w.failures)
            dropped = CounterMetricFamily("nextim_webhook_dropped",
                                          "Webhook events given up: max_age (never taken in time) or buffer.",
                                          labels=["reason"])
            for reason in ("max_age", "buffer"):
                dropped.add_metric([reason], w.dropped.get(reason, 0))
            yield dropped
            yield GaugeMetricFamily("nextim_webhook_outbox_events",
                                    "Webhook events waiting in the outbox (as of the last idle check).",
                                    value=w.waiting)
