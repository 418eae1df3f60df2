"""When CPython's cyclic garbage collector runs in the daemon (``[server] gc_tuning``).

Every collection stops the reactor for as long as it walks its generation's objects,
and an online user keeps about 57 of them alive (parked poll, connection, session),
so collections that include 10 000 users' objects are 0.1–1 s stalls in everyone's
deliveries (docs/benchmarks.md). CPython's own trigger does not help here: it
counts allocations *minus* deallocations, and a daemon answering polls frees an old
poll's objects for each new one, so the young generation grew for seconds unseen and
each collection of it took over 100 ms.

So, under ``gc_tuning``:

* start-up objects are frozen (``gc.freeze()``): no collection walks them again;
* young objects are collected on a timer, every :data:`YOUNG_INTERVAL_S`, so a
  collection walks at most that much of new objects (a few ms);
* older generations are never collected automatically: what survives a young
  collection is almost always alive (a parked poll, a session);
* a full collection runs every :data:`FULL_INTERVAL_S` to free the rare reference
  cycles that lived longer than a young interval. It is the one long stall (about
  1 s per 10 000 users), once an hour; ``nextim_gc_pause_seconds`` shows each.

Reference counting frees all other garbage at once, as always.
"""
import gc

from twisted.application import service
from twisted.internet import task

#: Seconds between young (generation 0) collections.
YOUNG_INTERVAL_S = 0.25
#: Seconds between full collections.
FULL_INTERVAL_S = 3600
#: CPython's own trigger stays for bursts: a generation-0 collection after this many
#: net allocations; its cascade into older generations is switched off.
THRESHOLDS = (10_000, 2**30, 2**30)


class GcSchedule(service.Service):
    """Runs the collections on ``reactor`` timers (see the module docstring); a child
    service of the daemon (:class:`~nextim_twisted.service.NextimService`), started last.

    :param reactor: an ``IReactorTime`` (a ``Clock`` in tests).
    :param collect: ``gc.collect`` (injected in tests).
    """

    def __init__(self, reactor, collect=gc.collect):
        self.setName("gc-schedule")
        self.reactor = reactor
        self.collect = collect
        self._young = None
        self._full = None
        self._saved_thresholds = None

    def start(self):
        """Freeze what exists now, take over the thresholds and start the timers
        (once: a second call changes nothing)."""
        if self._saved_thresholds is not None:
            return self
        self.collect()
        gc.freeze()
        self._saved_thresholds = gc.get_threshold()
        gc.set_threshold(*THRESHOLDS)
        self._young = task.LoopingCall(self.collect, 0)
        self._young.clock = self.reactor
        self._young.start(YOUNG_INTERVAL_S, now=False)
        self._full = task.LoopingCall(self.collect)
        self._full.clock = self.reactor
        self._full.start(FULL_INTERVAL_S, now=False)
        return self

    def stop(self):
        """Stop the timers and give the collector its thresholds back (idempotent)."""
        for loop in (self._young, self._full):
            if loop is not None and loop.running:
                loop.stop()
        if self._saved_thresholds is not None:
            gc.set_threshold(*self._saved_thresholds)
            gc.unfreeze()
            self._saved_thresholds = None

    def startService(self):
        super().startService()
        self.start()

    def stopService(self):
        super().stopService()
        self.stop()
