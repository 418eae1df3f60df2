"""History retention (docs/operations.md#history-retention): delete messages older than ``[storage]
retention_days``, once when the daemon starts and then every 24 hours.

Driven by an injected ``IReactorTime`` (docs/architecture.md#rules-of-the-layers: tests use a ``Clock``); the
deletion itself is :meth:`~nextim_twisted.store.base.Store.purge_messages`, one
transaction, off the reactor thread.
"""
from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

log = Logger()

#: Seconds between two purges.
PURGE_INTERVAL = 24 * 3600

DAY_MS = 24 * 3600 * 1000


class _Periodic(service.Service):
    """A child service that calls :meth:`_tick` now and then every ``interval`` seconds
    on the injected clock, without waiting for a tick's Deferred (the grid stays fixed
    however long a purge takes)."""

    def __init__(self, name, store, clock, interval):
        self.setName(name)
        self.store = store
        self.clock = clock
        self.interval = interval
        self.last = None
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock

    def _tick(self):
        self.purge_once()

    def purge_once(self):
        raise NotImplementedError

    def start(self):
        """Purge now, then every :attr:`interval` seconds."""
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self):
        """Stop the timer (a purge already running finishes). Idempotent."""
        if self._loop.running:
            self._loop.stop()

    def startService(self):
        super().startService()
        self.start()

    def stopService(self):
        super().stopService()
        self.stop()


class Retention(_Periodic):
    """Purges messages older than ``days`` days on a timer; a child service of the
    daemon (:class:`~nextim_twisted.service.NextimService`), started once storage is.

    :param store: a started :class:`~nextim_twisted.store.base.Store`.
    :param clock: ``IReactorTime``; "now" is ``clock.seconds()``.
    :param days: positive int; messages with ``timestamp < now - days`` are deleted.
    :param interval: seconds between purges (default :data:`PURGE_INTERVAL`).

    A failed purge (database down) is logged and retried at the next interval; it
    never stops the timer. :attr:`last` is the Deferred of the latest purge (fires
    with the number deleted, or ``None`` after a logged failure).
    """

    def __init__(self, store, clock, days, interval=PURGE_INTERVAL):
        if days < 1:
            raise ValueError("retention days must be at least 1")
        super().__init__("retention", store, clock, interval)
        self.days = days

    def cutoff_ms(self):
        """Epoch ms before which messages are deleted now."""
        return int(self.clock.seconds() * 1000) - self.days * DAY_MS

    def purge_once(self):
        """Run one purge now. Deferred → number of messages deleted (``None`` if it failed)."""
        d = self.store.purge_messages(self.cutoff_ms())

        def done(count):
            if count:
                log.info("retention: deleted {count} messages older than {days} days",
                         count=count, days=self.days)
            return count

        def failed(failure):
            log.error("retention: purge failed, retrying in {hours} h: {error}",
                      hours=self.interval / 3600, error=failure.getErrorMessage())
            return None

        d.addCallbacks(done, failed)
        self.last = d
        return d

#: Seconds between two purges of idempotency keys.
KEY_PURGE_INTERVAL = 3600


class KeyRetention(_Periodic):
    """Forgets the ``client_id`` keys of messages (docs/design.md#d17-idempotent-sends)
    once they are older than ``hours``, now and then every hour: a retry within
    ``hours`` stores nothing, a key reused after them is a new message.

    :param store: a started store (:mod:`nextim_twisted.store.keys` runs on it).
    :param clock: ``IReactorTime``.
    :param hours: ``[limits] client_id_hours`` (positive int).

    A failed purge is logged and retried at the next tick. :attr:`last` as for
    :class:`Retention`.
    """

    def __init__(self, store, clock, hours, interval=KEY_PURGE_INTERVAL):
        if hours < 1:
            raise ValueError("client_id_hours must be at least 1")
        super().__init__("key-retention", store, clock, interval)
        self.hours = hours

    def purge_once(self):
        """Purge now. Deferred → number of keys forgotten (``None`` if it failed)."""
        from .store import keys
        d = keys.purge(self.store, int((self.clock.seconds() - self.hours * 3600) * 1000))
        d.addErrback(lambda f: log.error("client_id keys: purge failed: {error}", error=f.getErrorMessage()))
        self.last = d
        return d
