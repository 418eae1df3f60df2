"""gcschedule.py: under [server] gc_tuning the collector runs young collections on a
timer and a full one every hour (docs/benchmarks.md), driven by a Clock."""
import gc

from twisted.internet import task

from nextim_twisted.gcschedule import FULL_INTERVAL_S, THRESHOLDS, YOUNG_INTERVAL_S, GcSchedule


def test_young_collections_on_a_timer_and_a_full_one_hourly():
    clock, calls = task.Clock(), []
    before = gc.get_threshold()
    schedule = GcSchedule(clock, collect=lambda *generation: calls.append(generation)).start()
    try:
        assert calls == [()]                           # one full collection before freezing
        assert gc.get_threshold() == THRESHOLDS        # no automatic cascade into old generations
        assert gc.get_freeze_count() > 0
        calls.clear()
        clock.advance(YOUNG_INTERVAL_S)
        assert calls == [(0,)]
        for _ in range(int(FULL_INTERVAL_S / YOUNG_INTERVAL_S)):
            clock.advance(YOUNG_INTERVAL_S)
        assert calls.count(()) == 1                    # the hourly full collection
        assert calls.count((0,)) == FULL_INTERVAL_S / YOUNG_INTERVAL_S + 1
    finally:
        schedule.stop()
    # stopped: the process gets its collector back, no timer is left
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert clock.getDelayedCalls() == []
    schedule.stop()                                    # idempotent
