"""Coarse timers for many sessions on one reactor timer (CPU and memory per user, docs/benchmarks.md).

Every session always has one timer running: the hold of its parked poll (docs/design.md#d5-timers,
``poll_hold``) or, between polls, its idle timeout (``session_idle``). With one
``DelayedCall`` each, 10 000 sessions kept 10 000 of them (about 0.5 KB apiece) in
the reactor's heap, re-armed on every poll. :class:`TimerWheel` keeps them in
buckets of 1/:data:`TICKS_PER_S` s instead and arms one ``DelayedCall``, for the
earliest bucket. A timer fires at most one tick late, never early.
"""
import heapq
import math

#: Buckets per second: a timer fires within 100 ms after its deadline.
TICKS_PER_S = 10


class WheelTimer:
    """One scheduled call; the handle :meth:`TimerWheel.callLater` returns.

    Has the two methods of ``IDelayedCall`` that sessions use: :meth:`active` and
    :meth:`cancel`.
    """

    __slots__ = ("wheel", "slot", "func")

    def __init__(self, wheel, slot, func):
        self.wheel = wheel
        self.slot = slot
        self.func = func

    def active(self):
        """True until the call has run or been cancelled."""
        return self.slot is not None

    def cancel(self):
        """Forget the call (idempotent, unlike ``DelayedCall.cancel``)."""
        if self.slot is not None:
            self.wheel._remove(self)


class TimerWheel:
    """Bucketed timers on one ``DelayedCall`` of ``clock``.

    :param clock: an ``IReactorTime`` (the reactor, or ``Clock`` in tests).
    :param ticks_per_s: bucket resolution (default :data:`TICKS_PER_S`); deadlines are
        rounded up to the next bucket boundary.
    """

    def __init__(self, clock, ticks_per_s=TICKS_PER_S):
        self.clock = clock
        self.ticks_per_s = ticks_per_s
        self._buckets = {}   # slot -> {WheelTimer: None}, in scheduling order
        self._slots = []     # heap of slots that have (or had) a bucket
        self._call = None    # the DelayedCall for the earliest slot
        self._call_slot = None

    def __len__(self):
        """Timers pending."""
        return sum(len(b) for b in self._buckets.values())

    def callLater(self, delay_s, func):
        """Call ``func()`` once, ``delay_s`` seconds from now (rounded up to a tick).

        :returns: :class:`WheelTimer`.
        """
        # The small epsilon keeps 25.0 s from becoming slot 251 through float error.
        slot = math.ceil((self.clock.seconds() + max(0.0, delay_s)) * self.ticks_per_s - 1e-6)
        timer = WheelTimer(self, slot, func)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._slots, slot)
        bucket[timer] = None
        if self._call_slot is None or slot < self._call_slot:
            self._arm(slot)
        return timer

    def _remove(self, timer):
        bucket = self._buckets.get(timer.slot)
        if bucket is not None:
            bucket.pop(timer, None)
            if not bucket:
                del self._buckets[timer.slot]  # its heap entry is skipped when reached
        timer.slot = None
        if not self._buckets and self._call is not None:
            # nothing left: leave no reactor call behind (a stopped router, tests)
            if self._call.active():
                self._call.cancel()
            self._call = self._call_slot = None
            self._slots.clear()

    def _arm(self, slot):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call_slot = slot
        # slot / ticks is exact for whole and tenth seconds: 250 / 10 == 25.0
        self._call = self.clock.callLater(max(0.0, slot / self.ticks_per_s - self.clock.seconds()), self._run)

    def _run(self):
        self._call = self._call_slot = None
        now_slot = math.floor(self.clock.seconds() * self.ticks_per_s + 1e-6)
        while self._slots and self._slots[0] <= now_slot:
            slot = heapq.heappop(self._slots)
            bucket = self._buckets.pop(slot, None)
            for timer in bucket or ():
                if timer.slot == slot:  # not cancelled by an earlier call in this run
                    timer.slot = None
                    timer.func()
        # Calls above may have scheduled new timers (and armed for them); re-arm for
        # the earliest live bucket.
        while self._slots and self._slots[0] not in self._buckets:
            heapq.heappop(self._slots)
        if self._slots and (self._call_slot is None or self._slots[0] < self._call_slot):
            self._arm(self._slots[0])
