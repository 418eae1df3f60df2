"""Signed webhooks to the host site through the outbox (docs/integration.md#webhooks,
docs/design.md#d22-the-site-as-source-of-truth).

:class:`Webhooks` is a child service of the daemon. Events come in three ways, none of
which waits for the site:

- a chat message's ``message`` / ``message.offline`` rows are written in the message's
  own transaction (:meth:`Webhooks.message_rows` gives ``add_message`` its ``also``);
- ``presence``, ``room.join`` and ``room.leave`` come from the router as an observer
  (:meth:`user_presence`, :meth:`room_joined`, :meth:`room_left`), are buffered in
  memory and written in one transaction every :data:`FLUSH_S` seconds;
- the delivery loop, driven by the injected clock, claims due rows, POSTs each one
  (signed like the directory's requests), deletes it on a 2xx and otherwise retries
  it after 1, 2, 4 ... seconds, at most :data:`MAX_BACKOFF_S` apart. An event older
  than ``[webhooks] max_age`` is dropped and counted.
"""
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ..core.observers import ILiveStateObserver
from ..hostsite.client import SiteClient, SiteError
from .outbox import Outbox, insert, make_event

log = Logger()

#: Seconds between writes of buffered presence and room events.
FLUSH_S = 0.5
#: Presence/room events kept in memory while the database does not take them; more
#: are dropped and counted (``reason="buffer"``) — the database is down then, and the
#: chat with it.
MAX_BUFFER = 10_000
#: Events sent at once (concurrent POSTs).
BATCH = 16
#: Longest wait between two attempts of one event, seconds.
MAX_BACKOFF_S = 300
#: Longest sleep of an idle loop, seconds (it also wakes on every new event).
IDLE_S = 5
#: Seconds between two checks for events past ``max_age``.
PURGE_EVERY_S = 60
#: Longest answer body read from the site (it is ignored).
MAX_ANSWER_BYTES = 64 * 1024


def backoff_s(attempts):
    """Seconds before attempt ``attempts + 1`` after ``attempts`` failures (≥ 1):
    1, 2, 4, ... at most :data:`MAX_BACKOFF_S`."""
    return min(2 ** (max(attempts, 1) - 1), MAX_BACKOFF_S)


class Webhooks(service.Service, ILiveStateObserver):
    """The outbox writer and delivery loop.

    :param cfg: the ``[webhooks]`` section (``url``, ``secret``, ``events``, ``timeout``,
        ``max_age``).
    :param store: the daemon's ``SQLStore`` (started before this service).
    :param reactor: what the HTTP client connects with.
    :param clock: ``IReactorTime`` for timestamps, timers and timeouts.

    Counters for the metrics (plain ints and dicts): :attr:`enqueued` ``{event: n}``,
    :attr:`delivered`, :attr:`failures` (attempts that failed), :attr:`dropped`
    ``{reason: n}`` (``max_age`` or ``buffer``), :attr:`waiting` (rows in the outbox at
    the last check).
    """

    name = "webhooks"  # type: ignore[assignment]  # the service's name in the daemon's tree

    def __init__(self, cfg, store, reactor, clock, client=None):
        self.url = cfg.url
        self.events = frozenset(cfg.events)
        self.timeout_s = cfg.timeout
        self.max_age_s = cfg.max_age
        self.clock = clock
        self.outbox = Outbox(store)
        self.client = client or SiteClient(reactor, clock, cfg.secret, cfg.timeout, MAX_ANSWER_BYTES)
        self.enqueued = {}
        self.delivered = 0
        self.failures = 0
        self.dropped = {}
        self.waiting = 0
        self._buffer = []
        self._flush_call = None
        self._flushing = None
        self._wake_call = None
        self._loop = None
        self._inflight = set()
        self._kicked = False
        self._last_purge = None

    def wants(self, event):
        """True if ``event`` is in ``[webhooks] events``."""
        return event in self.events

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    # -- events in -----------------------------------------------------------------
    def message_rows(self, offline):
        """The ``also`` for ``store.add_message`` of one chat message: writes its
        ``message`` event, and ``message.offline`` when ``offline`` (a unicast stored
        for a user with no live session), in the message's transaction. None when
        neither event is wanted. Call :meth:`kick` after the commit."""
        names = [e for e in ("message", "message.offline") if self.wants(e) and (offline or e == "message")]
        if not names:
            return None

        now = self.now_ms()  # read here: ``also`` runs on a database thread
        for name in names:
            self.enqueued[name] = self.enqueued.get(name, 0) + 1

        def also(cursor, message):
            data = {k: message[k] for k in ("id", "type", "from", "to", "nick", "body", "style", "timestamp")}
            insert(cursor, [make_event(name, data, now) for name in names])
        return also

    def emit(self, event, data):
        """Queue ``event`` with ``data`` (a JSON-able dict) if it is wanted; written to
        the outbox within :data:`FLUSH_S` seconds."""
        if not self.wants(event) or not self.running:
            return
        if len(self._buffer) >= MAX_BUFFER:
            self.dropped["buffer"] = self.dropped.get("buffer", 0) + 1
            return
        self._buffer.append(make_event(event, data, self.now_ms()))
        self.enqueued[event] = self.enqueued.get(event, 0) + 1
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(FLUSH_S, self._flush)

    # router observer (core/router.py Router.observers)
    def user_presence(self, user, type_):
        """``online``, ``show`` or ``offline`` as others see it (invisible is offline)."""
        show, status = ("unavailable", "") if type_ == "offline" else (user.show, user.status)
        self.emit("presence", {"user": user.id, "nick": user.nick, "type": type_, "show": show,
                               "status": status})

    def room_joined(self, user, room_id):
        self.emit("room.join", {"user": user.id, "room": room_id})

    def room_left(self, user, room_id):
        self.emit("room.leave", {"user": user.id, "room": room_id})

    def _flush(self):
        self._flush_call = None
        if self._flushing is not None or not self._buffer:
            return self._flushing
        rows, self._buffer = self._buffer, []
        d = self.outbox.add(rows)

        def written(_):
            self.kick()

        def failed(failure):
            # Kept for the next flush (the database is away for a moment).
            log.warn("webhooks: could not write {n} events to the outbox: {error}", n=len(rows),
                     error=failure.getErrorMessage())
            room = MAX_BUFFER - len(self._buffer)
            if len(rows) > room:
                self.dropped["buffer"] = self.dropped.get("buffer", 0) + len(rows) - max(room, 0)
            self._buffer[:0] = rows[:max(room, 0)]
            if self.running and self._flush_call is None:
                self._flush_call = self.clock.callLater(FLUSH_S, self._flush)

        def done(_):
            self._flushing = None
            if self._buffer and self.running and self._flush_call is None:
                self._flush_call = self.clock.callLater(FLUSH_S, self._flush)
        d.addCallbacks(written, failed)
        d.addBoth(done)
        self._flushing = d
        return d

    # -- delivery ------------------------------------------------------------------
    def startService(self):
        super().startService()
        self._schedule(0)

    def kick(self):
        """New events are in the outbox: run the loop now rather than at its next wake."""
        if not self.running:
            return
        if self._loop is not None:
            self._kicked = True
        else:
            self._schedule(0)

    def _schedule(self, delay_s):
        if self._wake_call is not None and self._wake_call.active():
            if self._wake_call.getTime() <= self.clock.seconds() + delay_s:
                return
            self._wake_call.cancel()
        self._wake_call = self.clock.callLater(delay_s, self._wake)

    def _wake(self):
        self._wake_call = None
        if self._loop is None and self.running:
            self._loop = defer.ensureDeferred(self._run_once())
            self._loop.addErrback(self._round_failed)
            self._loop.addBoth(self._loop_done)

    def _round_failed(self, failure):
        log.warn("webhooks: delivery round failed: {error}", error=failure.getErrorMessage())

    def _loop_done(self, delay_s):
        self._loop = None
        if not self.running:
            return
        if self._kicked:
            self._kicked = False
            delay_s = 0
        # None: the round failed (logged); the database may be away, try again later.
        self._schedule(IDLE_S if delay_s is None else delay_s)

    async def _run_once(self):
        """One round: purge old events now and then, claim a batch and send it.

        :returns: seconds to sleep before the next round (0: more may be due now).
        """
        now = self.now_ms()
        if self._last_purge is None or now - self._last_purge >= PURGE_EVERY_S * 1000:
            self._last_purge = now
            await self._purge(now)
        lease_ms = int((self.timeout_s + 30) * 1000)
        rows = await self.outbox.claim(now, lease_ms, BATCH)
        if rows and not self.running:
            # Stopped while claiming: no new POST may start (it would outlive the
            # service); the rows are due again at once, for the next start.
            await self.outbox.retry_at([(row["id"], now, "not sent: the daemon stopped") for row in rows])
            return None
        if rows:
            results = await defer.DeferredList([defer.ensureDeferred(self._send(row)) for row in rows],
                                               consumeErrors=True)
            ok, retry = [], []
            now = self.now_ms()
            for row, (_, error) in zip(rows, results, strict=True):  # _send never fails
                if error is None:
                    ok.append(row["id"])
                else:
                    retry.append((row["id"], now + int(backoff_s(row["attempts"]) * 1000), error))
            self.delivered += len(ok)
            self.failures += len(retry)
            if ok:
                await self.outbox.delivered(ok)
            if retry:
                await self.outbox.retry_at(retry)
            return 0
        waiting, due = await self.outbox.summary()
        self.waiting = waiting
        if due is None:
            return IDLE_S
        return min(max((due - self.now_ms()) / 1000, 0), IDLE_S)

    async def _send(self, row):
        """POST one event. :returns: None when the site took it (2xx), else the
        failure's text (never raises)."""
        d = self.client.request("POST", self.url, row["body"], {
            "Content-Type": "application/json", "X-Nextim-Event": row["event"],
            "X-Nextim-Event-Id": row["event_id"]})
        self._inflight.add(d)
        try:
            status, _ = await d
        except SiteError as error:
            reason = error.reason
        except defer.CancelledError:
            reason = "cancelled: the daemon stopped"
        else:
            if 200 <= status < 300:
                return None
            reason = f"HTTP {status}"
        finally:
            self._inflight.discard(d)
        if row["attempts"] == 1 or row["attempts"] % 10 == 0:
            log.warn("webhooks: {event} {event_id} not taken by the site ({reason}); attempt {n}, "
                     "retrying in {wait} s", event=row["event"], event_id=row["event_id"], reason=reason,
                     n=row["attempts"], wait=backoff_s(row["attempts"]))
        return reason

    async def _purge(self, now):
        counts = await self.outbox.drop_older_than(now - self.max_age_s * 1000)
        total = sum(counts.values())
        if total:
            self.dropped["max_age"] = self.dropped.get("max_age", 0) + total
            log.error("webhooks: dropped {n} events older than {age} s that the site never took ({counts})",
                      n=total, age=self.max_age_s, counts=", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))

    async def _stop(self):
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._flushing is not None:
            await self._flushing
        if self._buffer:  # the last presences: written before the store closes
            rows, self._buffer = self._buffer, []
            try:
                await self.outbox.add(rows)
            except Exception as e:  # noqa: BLE001 (logged: the store is going away)
                log.warn("webhooks: {n} events lost at shutdown: {error}", n=len(rows), error=str(e))
        for d in list(self._inflight):
            d.cancel()
        if self._loop is not None:
            await self._loop
        await self.client.close()

    def stopService(self):
        """Write buffered events, cancel POSTs under way (they are sent again after
        the restart) and close connections. Deferred; the store must still be open."""
        super().stopService()
        return defer.ensureDeferred(self._stop())
