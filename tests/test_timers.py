"""core/timers.py: the bucketed timers behind every session's hold and idle timeout
(docs/benchmarks.md), driven by a Clock."""
from twisted.internet import task

from nextim_twisted.core.router import Router
from nextim_twisted.core.timers import TimerWheel


def test_fires_at_the_deadline_and_never_early():
    clock = task.Clock()
    wheel, fired = TimerWheel(clock), []
    wheel.callLater(25, lambda: fired.append(clock.seconds()))
    clock.advance(24.99)
    assert fired == []
    clock.advance(0.01)
    assert fired == [25.0]


def test_an_odd_deadline_is_rounded_up_by_less_than_a_tick():
    clock = task.Clock()
    clock.advance(0.123)
    wheel, fired = TimerWheel(clock), []
    wheel.callLater(1.0, lambda: fired.append(clock.seconds()))
    clock.advance(0.999)          # 1.122: not yet due
    assert fired == []
    clock.advance(0.1)            # 1.222: due since 1.123, at most 0.1 s late
    assert len(fired) == 1 and 1.123 <= fired[0] <= 1.223


def test_cancel_and_active():
    clock = task.Clock()
    wheel, fired = TimerWheel(clock), []
    a = wheel.callLater(5, lambda: fired.append("a"))
    b = wheel.callLater(5, lambda: fired.append("b"))
    assert a.active() and b.active()
    a.cancel()
    a.cancel()                    # idempotent
    assert not a.active()
    clock.advance(5)
    assert fired == ["b"] and not b.active()
    assert len(wheel) == 0 and clock.getDelayedCalls() == []


def test_many_timers_share_one_reactor_call_and_fire_in_order():
    clock = task.Clock()
    wheel, fired = TimerWheel(clock), []
    for i in range(1000):
        wheel.callLater(10 + (i % 50) / 10, lambda i=i: fired.append(i))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(10)
    assert fired == list(range(0, 1000, 50))      # the 10.0 s bucket, in scheduling order
    clock.advance(5)
    assert sorted(fired) == list(range(1000))


def test_an_earlier_timer_rearms_and_callbacks_may_schedule_more():
    clock = task.Clock()
    wheel, fired = TimerWheel(clock), []
    wheel.callLater(20, lambda: fired.append("late"))

    def first():
        fired.append("early")
        wheel.callLater(1, lambda: fired.append("chained"))
    wheel.callLater(2, first)
    clock.advance(2)
    assert fired == ["early"]
    clock.advance(1)
    assert fired == ["early", "chained"]
    clock.advance(17)
    assert fired == ["early", "chained", "late"]


def test_a_callback_cancelling_another_in_the_same_bucket():
    clock = task.Clock()
    wheel, fired = TimerWheel(clock), []
    second = None

    def first():
        fired.append("first")
        second.cancel()
    wheel.callLater(3, first)
    second = wheel.callLater(3, lambda: fired.append("second"))
    clock.advance(3)
    assert fired == ["first"]


def test_ten_thousand_parked_sessions_arm_one_reactor_timer():
    """What the wheel is for: the router's sessions no longer put one DelayedCall
    each into the reactor, and their holds still end on time (docs/design.md#d5-timers)."""
    clock = task.Clock()
    router = Router(clock, poll_hold=25, session_idle=10, user_grace=10)
    answers = []
    for i in range(10000):
        session, _ = router.open_session({"id": f"u{i}", "nick": f"u{i}"}, "available", "", [], [])
        session.poll(ack=0).addCallback(answers.append)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(25)
    assert len(answers) == 10000 and all(a["status"] == "ok" for a in answers)


def test_a_stopped_router_leaves_no_reactor_call_behind():
    clock = task.Clock()
    router = Router(clock, poll_hold=25, session_idle=10, user_grace=10)
    session, _ = router.open_session({"id": "alice", "nick": "Alice"}, "available", "", [], [])
    session.poll(ack=0)
    router.shutdown()
    assert clock.getDelayedCalls() == []
