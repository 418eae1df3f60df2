"""The whole offline backlog in the session that comes online
(docs/design.md#d18-the-whole-backlog).

``online`` answers the oldest ``[limits] new_messages`` undelivered messages itself and
says in ``new_messages_pending`` how many more there are; :class:`Backlog` then feeds
those to that session's comet, oldest first, in pages that never fill more than half of
the session's queue (so a backlog of any size never overflows it: the next page waits
until the client's polls have taken the last one).

Exactly once: a message goes to the session that marks it delivered (the conditional
``delivered = 0 → 1`` of :meth:`~nextim_twisted.store.sql.SQLStore.mark_delivered`),
so of several tabs coming online at once, and of ``online``'s own ``new_messages``,
each message reaches one. A page marked for a session that ended before it was queued
is given back (marked undelivered) for the next ``online``.
"""
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

#: Most messages read, marked and queued at once.
PAGE = 200


class Backlog:
    """Feeds one session the user's undelivered messages until none is left.

    :param store: the storage (``undelivered``, ``mark_delivered``, ``mark_undelivered``).
    :param session: the :class:`~nextim_twisted.core.session.Session` to feed.
    :param make_packet: ``message dict → packet dict`` (the comet's message shape).

    :meth:`start` runs it; the session's ``on_drain`` hook wakes it when a poll has
    made room. :attr:`done` fires (None) when nothing is left or the session ended.
    """

    def __init__(self, store, session, make_packet):
        self.store = store
        self.session = session
        self.make_packet = make_packet
        self.done = defer.Deferred()
        self.fed = 0
        self._busy = False
        self._finished = False

    def start(self):
        """Feed the first page now; later pages as the session drains."""
        self.session.on_drain = self._wake
        self._wake(self.session)
        return self.done

    def _room(self):
        return self.session.max_queue // 2 - len(self.session.queue)

    def _wake(self, _session):
        if self._busy or self._finished:
            return
        if self.session.ended:
            return self._finish()
        if self._room() <= 0:
            return  # the next poll calls on_drain again
        self._busy = True
        d = defer.ensureDeferred(self._page())
        d.addErrback(lambda f: log.failure("backlog feed failed for {user_id}", f, user_id=self.session.user_id))
        d.addBoth(self._after)

    def _after(self, more):
        self._busy = False
        if more is True:
            self._wake(self.session)
        elif not self._finished:
            self._finish()

    def _finish(self):
        self._finished = True
        if self.session.on_drain == self._wake:
            self.session.on_drain = None
        self.done.callback(None)

    async def _page(self):
        """One page. :returns: True if there may be more, False when done."""
        room = self._room()
        if room <= 0:
            return None
        rows = await self.store.undelivered(self.session.user_id, min(PAGE, room))
        if not rows:
            return False
        if self.session.ended:
            return False
        taken = set(await self.store.mark_delivered([m["id"] for m in rows]))
        mine = [m for m in rows if m["id"] in taken]
        for i, message in enumerate(mine):
            if not self.session.push("messages", self.make_packet(message)):
                # ended meanwhile: what it did not take waits for the next online
                await self.store.mark_undelivered([m["id"] for m in mine[i:]])
                return False
            self.fed += 1
        # Another tab took some of this page: read on (the rest may be for us).
        return True
