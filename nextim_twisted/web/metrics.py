"""What the web layer measures: the Prometheus metrics served at ``GET /metrics``
(the route is in :mod:`.ops`), the reactor-stall monitor, and one access-log event per
request (:class:`ObservedSite`).

Metrics live in a per-daemon ``CollectorRegistry`` (never the global one), so several
daemons may run in one process (tests). Names, all prefixed ``nextim_``:

=================================== ========= ===========================================
name                                type      labels / meaning
=================================== ========= ===========================================
``online_users``                    gauge     users live (sessions or grace), at scrape
``sessions``                        gauge     live sessions (tickets), at scrape
``parked_polls``                    gauge     long polls waiting right now, subscribed
                                              WebSockets included, at scrape
``websockets``                      gauge     open WebSockets (docs/design.md#d21-websocket)
``websocket_frames_total``          counter   ``direction`` = in, out: WebSocket text
                                              and binary frames (pings not counted)
``messages_total``                  counter   ``type`` = unicast, multicast, broadcast
                                              (committed and routed)
``packets_delivered_total``         counter   ``kind`` = messages, presences, statuses:
                                              packets sent in poll answers and WebSocket
                                              envelopes (a re-send counts again)
``queue_overflows_total``           counter   sessions ended by a full queue
``errors_total``                    counter   ``code``: the envelope's ``error``
``logins_total``                    counter   ``method`` = token, password, session,
                                              ticket: successful ``webim/online`` calls
``requests_total``                  counter   ``endpoint``, ``status`` = 1xx, 2xx, 3xx,
                                              4xx, 5xx or ``aborted`` (client went away);
                                              a WebSocket handshake is ``websocket`` 1xx,
                                              its calls ``websocket_<call>``
``request_duration_seconds``        histogram ``endpoint`` (all but ``packets``)
``poll_duration_seconds``           histogram how long ``/packets`` polls were held
``db_duration_seconds``             histogram ``operation``: the store method name
``reactor_lag_seconds``             histogram how late a 100 ms reactor timer fired: every
                                              stall of the event loop delays every user
``gc_pause_seconds``                histogram ``generation``: cyclic garbage collections
                                              (they stop the reactor while they run)
=================================== ========= ===========================================

plus the standard ``process_*`` series (open fds against ``LimitNOFILE``, memory, CPU).

``endpoint`` labels come from a fixed set (:func:`endpoint_name`), never a raw path.
The gauges and the router's counters are read from the router when Prometheus
scrapes (:class:`LiveCollector`): nothing polls.
"""
import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger
from twisted.web import server

#: The access log: one event per request (namespace ``nextim_twisted.access``).
access_log = Logger(namespace="nextim_twisted.access")

#: Endpoints whose access events are logged at debug level (scrapes and probes
#: would otherwise flood the log).
QUIET_ENDPOINTS = frozenset({"metrics", "health"})

REQUEST_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
POLL_BUCKETS = (.01, .1, .5, 1, 2.5, 5, 10, 15, 20, 25, 30, 45, 60)
STALL_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
DB_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)

PACKET_KINDS = ("messages", "presences", "statuses")
MESSAGE_TYPES = ("unicast", "multicast", "broadcast")


def endpoint_name(path, args, webim_names):
    """The bounded ``endpoint`` label of a request.

    :param path: ``request.path`` (bytes, no query string).
    :param args: ``request.args`` (the bare ``/`` with a ``ticket`` is a poll: configs
        whose poll URL is the server URL itself).
    :param webim_names: the known ``webim/<name>`` endpoints.
    :returns: ``packets``, ``websocket``, ``index``, ``webim_<name>``, ``webim_unknown``,
        ``admin``, ``static``, ``metrics``, ``health`` or ``other``.
    """
    if path == b"/packets":
        return "packets"
    if path == b"/ws" or (path.startswith(b"/n/") and path.endswith(b"/ws")):
        return "websocket"
    if path == b"/":
        return "packets" if (args or {}).get(b"ticket") else "index"
    if path.startswith(b"/webim/"):
        name = path[7:].decode("latin-1")
        if name.endswith(".php"):
            name = name[:-4]
        return "webim_" + name if name in webim_names else "webim_unknown"
    if path.startswith(b"/admin/"):
        return "admin"
    if path.startswith(b"/static/"):
        return "static"
    if path in (b"/metrics", b"/health"):
        return path[1:].decode("ascii")
    return "other"


class LiveCollector:
    """Prometheus collector reading the router's live state at scrape time.

    :param router: :class:`~nextim_twisted.core.router.Router` (``stats()``,
        ``messages_routed``).
    """

    def __init__(self, router):
        self.router = router

    def describe(self):
        return self._families(None)

    def collect(self):
        return self._families(self.router)

    @staticmethod
    def _families(router):
        stats = router.stats() if router is not None else {}
        routed = getattr(router, "messages_routed", {}) if router is not None else {}
        gauges = (
            ("nextim_online_users", "Users online (with sessions or inside the grace).", "online_users"),
            ("nextim_sessions", "Live sessions (one per ticket).", "sessions"),
            ("nextim_parked_polls", "Long polls waiting for packets right now.", "parked_polls"),
        )
        families = [GaugeMetricFamily(name, doc, value=stats.get(key, 0)) for name, doc, key in gauges]
        families.append(CounterMetricFamily(
            "nextim_queue_overflows", "Sessions ended because their packet queue was full.",
            value=stats.get("queue_overflows", 0)))
        messages = CounterMetricFamily("nextim_messages", "Messages committed and routed, by type.",
                                       labels=["type"])
        for type_ in MESSAGE_TYPES:
            messages.add_metric([type_], routed.get(type_, 0))
        families.append(messages)
        return families


class Metrics:
    """The daemon's metrics in their own registry.

    :param router: the live router (gauges and routing counters).
    :param store: the store; when it has an ``observe_query`` attribute (SQLStore)
        its transactions are timed into ``nextim_db_duration_seconds``.
    """

    def __init__(self, router, store=None):
        self.registry = CollectorRegistry()
        self.registry.register(LiveCollector(router))
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.packets = Counter("nextim_packets_delivered", "Packets sent in long-poll answers, by kind.",
                               ["kind"], registry=r)
        self.errors = Counter("nextim_errors", "Refusals answered with the error envelope, by error code.",
                              ["code"], registry=r)
        self.logins = Counter("nextim_logins", "Successful webim/online calls, by how the caller was "
                              "identified.", ["method"], registry=r)
        self.requests = Counter("nextim_requests", "HTTP requests by endpoint and status class.",
                                ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("nextim_request_duration_seconds",
                                         "Time from a request's arrival to its answer, by endpoint "
                                         "(long polls are in nextim_poll_duration_seconds).",
                                         ["endpoint"], buckets=REQUEST_BUCKETS, registry=r)
        self.poll_seconds = Histogram("nextim_poll_duration_seconds",
                                      "How long /packets polls were held before their answer.",
                                      buckets=POLL_BUCKETS, registry=r)
        self.db_seconds = Histogram("nextim_db_duration_seconds",
                                    "Storage transactions (queue wait included), by store operation.",
                                    ["operation"], buckets=DB_BUCKETS, registry=r)
        self.reactor_lag = Histogram("nextim_reactor_lag_seconds",
                                     "How late a 100 ms reactor timer fired (event-loop stalls delay "
                                     "every request and poll answer).", buckets=STALL_BUCKETS, registry=r)
        self.gc_pause = Histogram("nextim_gc_pause_seconds", "Cyclic garbage collections, by generation.",
                                  ["generation"], buckets=STALL_BUCKETS, registry=r)
        self.websockets = Gauge("nextim_websockets", "Open WebSockets (subscribed or not).", registry=r)
        self.websocket_frames = Counter("nextim_websocket_frames", "WebSocket text and binary frames, by "
                                        "direction (in, out).", ["direction"], registry=r)
        if store is not None and hasattr(store, "observe_query"):
            store.observe_query = self.observe_query

    # -- hooks -------------------------------------------------------------
    def observe_query(self, operation, seconds):
        """A store transaction of ``operation`` took ``seconds``."""
        self.db_seconds.labels(operation).observe(seconds)

    def polled(self, envelope):
        """Count the packets of a poll answer (docs/design.md#d6-comet-envelope); returns it
        unchanged."""
        if isinstance(envelope, dict):
            for kind in PACKET_KINDS:
                n = len(envelope.get(kind) or ())
                if n:
                    self.packets.labels(kind).inc(n)
        return envelope

    def logged_in(self, method):
        """A successful ``online`` by an identity of ``method`` (token, password …)."""
        self.logins.labels(method).inc()

    def observe_request(self, endpoint, status, seconds, error=None):
        """One finished request: ``status`` an int, or None when the client went away."""
        status_class = "aborted" if status is None else f"{status // 100}xx"
        self.requests.labels(endpoint, status_class).inc()
        if endpoint == "packets":
            self.poll_seconds.observe(seconds)
        else:
            self.request_seconds.labels(endpoint).observe(seconds)
        if error:
            self.errors.labels(error).inc()

    def exposition(self):
        """The Prometheus text format of the registry (bytes)."""
        return generate_latest(self.registry)


class StallMonitor:
    """Feeds ``nextim_reactor_lag_seconds`` and ``nextim_gc_pause_seconds``.

    A timer re-armed every :attr:`INTERVAL_S` seconds records how late it fired; a
    ``gc.callbacks`` hook times each collection (the collector stops the reactor). Both
    tell an operator whether a latency tail is this process stalling (docs/benchmarks.md).

    :param metrics: the :class:`Metrics` whose histograms are fed.
    :param reactor: an ``IReactorTime`` (a ``Clock`` in tests).
    """

    INTERVAL_S = 0.1

    def __init__(self, metrics, reactor):
        self.metrics = metrics
        self.reactor = reactor
        self._call = None
        self._due = None
        self._gc_started = None

    def start(self):
        """Arm the timer and hook the collector; returns self."""
        gc.callbacks.append(self._on_gc)
        self._arm()
        return self

    def stop(self):
        """Disarm both (idempotent)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self):
        self._due = self.reactor.seconds() + self.INTERVAL_S
        self._call = self.reactor.callLater(self.INTERVAL_S, self._fired)

    def _fired(self):
        self.metrics.reactor_lag.observe(max(0.0, self.reactor.seconds() - self._due))
        self._arm()

    def _on_gc(self, phase, info):
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.metrics.gc_pause.labels(str(info["generation"])).observe(time.perf_counter() - self._gc_started)
            self._gc_started = None


class ObservedRequest(server.Request):
    """A ``twisted.web`` request that remembers when it arrived and reports a client
    that went away before the answer (a closed long poll) to its site."""

    # This project's attributes live in slots, not in the instance dict: twisted.web's
    # Request already puts 22 keys there, and a 25th turns CPython's compact shared-key
    # dict (~0.3 KB) into a full one (~1.6 KB), once per parked poll (docs/benchmarks.md).
    __slots__ = ("started", "on_connection_lost", "nextim_user_id", "nextim_error")

    def __init__(self, *args, **kwargs):
        self.started = None
        #: Set by the web layer: called with no argument when the connection is lost
        #: before the answer (a parked poll cancels its Deferred, docs/design.md#d5-timers).
        self.on_connection_lost = None
        super().__init__(*args, **kwargs)

    def process(self):
        self.started = time.perf_counter()
        super().process()

    def connectionLost(self, reason):
        site = getattr(self, "site", None)
        unanswered = not self.finished
        super().connectionLost(reason)
        if unanswered and self.on_connection_lost is not None:
            self.on_connection_lost()
        if unanswered and self.started is not None and isinstance(site, ObservedSite):
            site.observe(self, aborted=True)


class ObservedSite(server.Site):
    """``Site`` that writes one access event per request and feeds :class:`Metrics`.

    It replaces twisted.web's own access log (``Site.log``), so nothing is logged twice.
    The event (namespace ``nextim_twisted.access``, level info; debug for
    :data:`QUIET_ENDPOINTS`) has the fields ``method``, ``path`` (never the query
    string: it carries tickets and tokens), ``status`` (int; 499 when the client went
    away first), ``duration_ms`` (float), ``endpoint``, ``user_id`` (None when not
    known) and ``error`` (the envelope's code or None). Request and answer bodies are never
    logged. The web layer tells it the user and error through the request attributes
    ``nextim_user_id`` and ``nextim_error``.

    :param resource: the root resource.
    :param metrics: :class:`Metrics`.
    :param webim_names: known ``webim/<name>`` endpoints (for :func:`endpoint_name`).
    """

    requestFactory = ObservedRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource, metrics, webim_names=(), **kw):
        super().__init__(resource, **kw)
        self.metrics = metrics
        self.webim_names = frozenset(webim_names)

    def log(self, request):
        """Called by twisted.web when a request is answered."""
        self.observe(request)

    def observe(self, request, aborted=False):
        """Log and count one request (answered, or ``aborted`` by the client)."""
        started = getattr(request, "started", None)
        seconds = time.perf_counter() - started if started is not None else 0.0
        endpoint = endpoint_name(request.path or b"", request.args, self.webim_names)
        status = None if aborted else request.code
        error = getattr(request, "nextim_error", None)
        user_id = getattr(request, "nextim_user_id", None)
        self.metrics.observe_request(endpoint, status, seconds, error)
        fmt = "{method} {path} {status} {duration_ms}ms"
        if user_id is not None:
            fmt += " user={user_id}"
        if error:
            fmt += " error={error}"
        emit = access_log.debug if endpoint in QUIET_ENDPOINTS else access_log.info
        emit(fmt, method=(request.method or b"-").decode("latin-1"),
             path=(request.path or b"").decode("latin-1")[:300],
             status=499 if aborted else request.code, duration_ms=round(seconds * 1000, 1),
             endpoint=endpoint, user_id=user_id, error=error)
