"""Directory changes acting on live sessions at once, wherever they are made
(docs/design.md#d19-session-lifetime).

One rule, :func:`apply`, says what a change does to the live state of a daemon: a
deleted user's sessions end and their buddies see one ``offline``; a removed buddy
relation stops presence both ways; a removed room member leaves the live room (no more
room packets, 403 on multicast). The admin API applies its changes at once through
:func:`changed`, which also records them in the ``directory_changes`` table
(:mod:`nextim_twisted.store.changes`); ``nextimctl``, which runs beside the daemon and
cannot reach its memory, only records them. Every running daemon reads the table about
once a second (:class:`DirectoryWatch`) and applies the rows other writers made.

Why a table read on a timer, not a call into the daemon or Redis: it needs nothing but
the database every writer already has, so it works for one daemon on SQLite and for
``nextimctl`` with the daemon stopped (the rows are then simply not needed: a starting
daemon begins after the newest row, its live state being empty), and several daemons
on one PostgreSQL each read the same rows, so a cluster reuses it unchanged. The cost
is one indexed read per second per daemon and at most about a second of delay.
"""
from twisted.internet import defer, task
from twisted.logger import Logger

from ..store import changes

log = Logger()

#: Seconds between two reads of ``directory_changes``.
POLL_INTERVAL = 1.0
#: Rows older than this (seconds) are purged; a daemon further behind than that is
#: not running.
KEEP_S = 24 * 3600


async def apply(ctx, kind, a, b=None):
    """Make the live state of this daemon follow one directory change (``kind`` and
    ids as in :data:`nextim_twisted.store.changes.KINDS`). Unknown kinds are ignored
    (written by a newer release)."""
    router = ctx.router
    if kind == "user_deleted":
        router.user_offline(a)
        if ctx.xmpp is not None:
            await ctx.xmpp.user_deleted(a)  # unpair their XMPP buddies (docs/xmpp.md)
    elif kind == "user_updated":
        if router.is_online(a):
            profile = await ctx.store.get_user(a)
            if profile is not None:
                router.update_profile(a, profile)
    elif kind == "password_changed":
        router.end_sessions(a)
    elif kind in ("buddy_added", "buddy_removed"):
        router.buddies_changed(a, b, kind == "buddy_added")
    elif kind == "member_added":
        if router.is_online(b):
            router.join_room(b, a)
    elif kind == "member_removed":
        if router.is_online(b):
            router.leave_room(b, a)
    elif kind == "room_deleted":
        for member_id in router.live_members(a):
            router.leave_room(member_id, a)


async def changed(ctx, kind, a, b=None):
    """A directory change was stored: apply it here, then record it for the other
    daemons (``ctx.node_id`` is the origin they skip it by)."""
    await apply(ctx, kind, a, b)
    await changes.add(ctx.store, ctx.node_id, kind, a, b, ctx.now_ms())


class DirectoryWatch:
    """Reads ``directory_changes`` every :data:`POLL_INTERVAL` seconds on ``clock`` and
    applies the rows of other origins in id order.

    :param ctx: the handlers' :class:`~.context.Context` (``node_id`` names this daemon).
    :param clock: ``IReactorTime`` (a ``Clock`` in tests).

    A failed read (database down) is logged and retried at the next tick; a tick is
    skipped while the previous one still runs. :attr:`last` is the newest id seen.
    """

    def __init__(self, ctx, clock, interval=POLL_INTERVAL):
        self.ctx = ctx
        self.clock = clock
        self.interval = interval
        self.last = 0
        self._running = None
        self._next_purge = 0.0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock

    async def start(self):
        """Begin after the newest change (older ones are already in the tables this
        daemon reads at each ``online``), then read on the timer."""
        self.last = await changes.last_id(self.ctx.store)
        self._next_purge = self.clock.seconds() + 3600
        self._loop.start(self.interval, now=False)

    def stop(self):
        """Stop the timer (a read already running finishes). Idempotent."""
        if self._loop.running:
            self._loop.stop()

    def _tick(self):
        if self._running is not None:
            return
        self._running = defer.ensureDeferred(self.poll_once())
        self._running.addErrback(lambda f: log.error("directory changes: read failed: {error}",
                                                     error=f.getErrorMessage()))
        self._running.addBoth(self._done)

    def _done(self, _):
        self._running = None

    async def poll_once(self):
        """Apply every change after :attr:`last` (pages of 500). Deferred → count applied."""
        applied = 0
        while True:
            rows = await changes.after(self.ctx.store, self.last)
            for row in rows:
                if row["origin"] != self.ctx.node_id:
                    try:
                        await apply(self.ctx, row["kind"], row["a"], row["b"])
                        applied += 1
                    except Exception:
                        log.failure("directory change {id} ({kind}) failed", id=row["id"], kind=row["kind"])
                self.last = row["id"]
            if len(rows) < 500:
                break
        if self.clock.seconds() >= self._next_purge:
            self._next_purge = self.clock.seconds() + 3600
            await changes.purge(self.ctx.store, int((self.clock.seconds() - KEEP_S) * 1000))
        return applied
