"""One browser tab's IM session: its ticket, packet queue and long-poll (docs/design.md#d6-comet-envelope).

A session owns a bounded queue of packets, each numbered with a per-session
``seq`` (1, 2, 3 …). A poll either takes what is queued at once or parks until a
packet arrives or the hold timer (``poll_hold`` s) runs out. While no poll is
parked the idle timer (``session_idle`` s) runs; when it fires the session ends.
No I/O happens here: the web layer turns the Deferred a poll returns into an
HTTP answer, and cancels it when the client goes away.

A WebSocket (docs/design.md#d21-websocket) is a *streaming subscriber*
(:class:`Subscriber`) instead of a one-shot parked Deferred: it takes an envelope at
once when it subscribes and one per packet after that, and counts as a parked poll
for the timers (no idle timer while it is open; the idle timer starts when it
unsubscribes). Only one of the two waits at a time: a newer poll or subscriber
replaces the current one.
"""
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

#: Envelope answered to a poll superseded by a newer one, or whose ticket was ended (docs/design.md#d5-timers).
STOPPED = {"status": "stopped"}

KINDS = ("messages", "presences", "statuses")

#: Why a subscriber is let go (:meth:`Subscriber.session_closed`): a newer poll or
#: subscriber took the ticket; the session ended (offline, refresh, idle, overflow,
#: ``session_max``, an admin removal); the daemon is stopping (docs/design.md#d16-shutdown).
REPLACED, ENDED, SHUTDOWN = "replaced", "ended", "shutdown"


class Subscriber(Protocol):
    """What a streaming transport (a WebSocket, web/websocket.py) offers a session."""

    def deliver(self, envelope: dict) -> None:
        """Send one comet envelope (docs/design.md#d6-comet-envelope) now; must not raise."""

    def session_closed(self, reason: str) -> None:
        """The session no longer streams to this subscriber: ``reason`` is
        :data:`REPLACED`, :data:`ENDED` or :data:`SHUTDOWN`; must not raise."""


class Session:
    """A ticket-bound session (docs/design.md#d4-tickets) with its packet queue (docs/design.md#d6-comet-envelope).

    :param ticket: the opaque ticket string.
    :param user_id: owner of the session.
    :param clock: what runs the hold and idle timers: anything with
        ``callLater(delay_s, func)`` returning a handle with ``active()`` and
        ``cancel()``: the router's :class:`~.timers.TimerWheel`, or a ``Clock`` in tests.
    :param hold_s: how long a poll is held, seconds (docs/design.md#d5-timers, default 25).
    :param idle_s: how long the session may go without a parked poll, seconds.
    :param max_queue: queue bound in packets; overflow ends the session (docs/design.md#d6-comet-envelope).
    :param on_end: ``callable(session, reason)`` called once when the session ends
        by itself (``"idle"`` or ``"overflow"``); not called for :meth:`stop`.
    """

    def __init__(self, ticket, user_id, clock, hold_s, idle_s, max_queue, on_end):
        self.ticket = ticket
        self.user_id = user_id
        self.clock = clock
        self.hold_s = hold_s
        self.idle_s = idle_s
        self.max_queue = max_queue
        self.on_end = on_end
        # (seq, kind, packet with "seq"); a list, not a deque: an empty deque costs
        # ~600 bytes, one per session (RSS per idle user, docs/benchmarks.md)
        self.queue = []
        self.last_seq = 0
        self.ended = False
        self._acked = False  # the last poll sent ``ack``: keep packets until acked
        self._parked = None
        self._stream = None  # the streaming Subscriber (a WebSocket), if one is subscribed
        self._hold_timer = None
        self._idle_timer = clock.callLater(idle_s, self._idle_expired)
        #: ``clock.seconds()`` after which the router no longer knows the ticket
        #: (``[timers] session_max``, docs/design.md#d19-session-lifetime).
        self.expires_at = float("inf")
        #: The ``jti`` of the login cookie that opened the session (accounts), else None:
        #: ``logout`` ends the sessions of its own login only.
        self.login = None
        #: ``callable(session)`` called at each poll once acked packets are dropped:
        #: the offline backlog feeds its next page when there is room
        #: (handlers/backlog.py, docs/design.md#d18-the-whole-backlog).
        self.on_drain = None

    # -- feeding -----------------------------------------------------------
    def push(self, kind, packet):
        """Queue one packet (``kind`` ∈ messages, presences, statuses) and wake a parked poll.

        :returns: False if the session has ended (now, by overflow, or before).
        """
        if self.ended:
            return False
        if len(self.queue) >= self.max_queue:
            log.warn("session queue overflow for {user_id}; ending the session", user_id=self.user_id)
            self._end("overflow")
            return False
        self.last_seq += 1
        packet = dict(packet, seq=self.last_seq)
        self.queue.append((self.last_seq, kind, packet))
        if self._stream is not None:
            # Everything queued before was sent when the subscriber subscribed or at an
            # earlier push: only this packet is new. Unacked it stays queued for a resend.
            envelope = self._envelope()
            envelope[kind].append(packet)
            if not self._acked:
                self.queue.clear()
            self._stream.deliver(envelope)
        elif self._parked is not None:
            self._answer(self._take())
        return True

    # -- polling -----------------------------------------------------------
    def poll(self, ack=None):
        """Start a poll. ``ack`` (int or None) drops every packet with ``seq <= ack``
        and keeps the rest for re-sending; without ``ack`` whatever is answered
        counts as delivered (legacy clients, docs/design.md#d6-comet-envelope).

        :returns: Deferred → envelope dict ``{"status": "ok", "messages": [...],
            "presences": [...], "statuses": [...], "seq": N}``, or :data:`STOPPED`
            when a newer poll takes over or the session is stopped.
        """
        if self._parked is not None:
            self._answer(STOPPED)
        self._release_stream(REPLACED)
        self._cancel_idle()
        self._drop_acked(ack)
        self._acked = ack is not None
        if self.queue:
            envelope = self._take()
            self._start_idle()
            if self.on_drain is not None:
                self.on_drain(self)
            return defer.succeed(envelope)
        self._parked = defer.Deferred(canceller=self._poll_cancelled)
        self._hold_timer = self.clock.callLater(self.hold_s, self._hold_expired)
        if self.on_drain is not None:
            self.on_drain(self)
        return self._parked

    # -- streaming (a WebSocket, docs/design.md#d21-websocket) ----------------------
    def subscribe(self, subscriber: Subscriber, ack: int | None = None) -> None:
        """Stream this session's packets to ``subscriber`` until it unsubscribes, a
        newer poll or subscriber takes over, or the session ends.

        A parked poll is answered :data:`STOPPED`; a current subscriber is let go with
        :data:`REPLACED`. ``ack`` as for :meth:`poll`: with it, packets after ``ack``
        are sent again and kept until acked (:meth:`ack`); without it what is sent
        counts as delivered. The subscriber gets one envelope at once (everything
        queued, maybe nothing, with the current ``seq``), then one per packet. The idle
        timer is off until :meth:`unsubscribe`.
        """
        if self._parked is not None:
            self._answer(STOPPED, restart_idle=False)
        self._release_stream(REPLACED)
        self._cancel_idle()
        self._drop_acked(ack)
        self._acked = ack is not None
        self._stream = subscriber
        subscriber.deliver(self._take())
        if self.on_drain is not None:
            self.on_drain(self)

    def ack(self, ack: int) -> None:
        """The subscriber has every packet up to ``seq`` ``ack``: drop those from the
        queue. From now on packets are kept until acked (docs/design.md#d6-comet-envelope)."""
        self._drop_acked(ack)
        self._acked = True
        if self.on_drain is not None:
            self.on_drain(self)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """``subscriber`` went away (its socket closed): the idle timer starts
        (docs/design.md#d5-timers). Nothing happens if it was already replaced."""
        if self._stream is subscriber:
            self._stream = None
            if not self.ended:
                self._start_idle()

    @property
    def streaming(self):
        """True while a subscriber (a WebSocket) is subscribed."""
        return self._stream is not None

    @property
    def parked(self):
        """True while a poll is waiting or a subscriber is subscribed (both count as a
        parked poll for the timers and in ``/admin/stats``)."""
        return self._parked is not None or self._stream is not None

    def stop(self, envelope=STOPPED, reason=ENDED):
        """End the session: answer a parked poll with ``envelope``, let a subscriber go
        with ``reason`` (:data:`ENDED`, or :data:`SHUTDOWN` when the daemon stops) and
        cancel timers."""
        if self.ended:
            return
        self.ended = True
        if self._parked is not None:
            self._answer(envelope, restart_idle=False)
        self._release_stream(reason)
        self._cancel_idle()
        self.queue.clear()

    # -- internals ----------------------------------------------------------
    def _drop_acked(self, ack):
        if ack is not None:
            acked = 0
            while acked < len(self.queue) and self.queue[acked][0] <= ack:
                acked += 1
            del self.queue[:acked]

    def _release_stream(self, reason):
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.session_closed(reason)

    def _envelope(self):
        """An empty comet envelope at the current ``seq`` (docs/design.md#d6-comet-envelope)."""
        return {"status": "ok", "messages": [], "presences": [], "statuses": [], "seq": self.last_seq}

    def _take(self):
        envelope = self._envelope()
        for _, kind, packet in self.queue:
            envelope[kind].append(packet)
        if not self._acked:
            self.queue.clear()
        return envelope

    def _answer(self, envelope, restart_idle=True):
        d, self._parked = self._parked, None
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None
        if restart_idle and not self.ended:
            self._start_idle()
        d.callback(envelope)

    def _hold_expired(self):
        self._hold_timer = None
        if self._parked is not None:
            self._answer(self._take())

    def _poll_cancelled(self, d):
        # The client went away: the poll is over, the session lives on (idle timer).
        if self._parked is d:
            self._parked = None
            if self._hold_timer is not None and self._hold_timer.active():
                self._hold_timer.cancel()
            self._hold_timer = None
            if not self.ended:
                self._start_idle()

    def _start_idle(self):
        self._cancel_idle()
        self._idle_timer = self.clock.callLater(self.idle_s, self._idle_expired)

    def _cancel_idle(self):
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_expired(self):
        self._idle_timer = None
        self._end("idle")

    def _end(self, reason):
        self.stop()
        self.on_end(self, reason)
