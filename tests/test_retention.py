"""History retention (docs/operations.md#history-retention): ``[storage] retention_days`` purges old messages at
start and every 24 h; the timer runs on a Clock, the deletes on the real store."""
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

from nextim_twisted import config as config_module
from nextim_twisted.retention import DAY_MS, PURGE_INTERVAL, Retention
from nextim_twisted.service import NextimService
from tests.storefixtures import STORE_KINDS, make_store, skip_unless_enabled

T0 = 1_800_000_000  # clock start, seconds


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    skip_unless_enabled(request.param)
    st, drop = pytest_twisted.blockon(make_store(request.param, tmp_path))
    yield st
    pytest_twisted.blockon(drop())


def _add(store, body, timestamp_ms, type="unicast", to="bob"):
    return store.add_message(type, "alice", to, "Alice", body, "", timestamp_ms, False)


@defer.inlineCallbacks
def _bodies(store):
    rows = yield store.export_messages()
    return [m["body"] for m in rows]


@pytest_twisted.inlineCallbacks
def test_purges_at_start_then_every_24_hours(store):
    clock = task.Clock()
    clock.advance(T0)
    now = T0 * 1000
    yield _add(store, "three days old", now - 3 * DAY_MS)
    yield _add(store, "room, three days old", now - 3 * DAY_MS, type="multicast", to="lobby")
    yield _add(store, "one day old", now - DAY_MS)
    yield _add(store, "new", now)

    r = Retention(store, clock, days=2)
    r.start()
    assert (yield r.last) == 2  # at start: every type older than 2 days
    assert (yield _bodies(store)) == ["one day old", "new"]

    first = r.last
    clock.advance(PURGE_INTERVAL - 1)
    assert r.last is first  # nothing before 24 h
    clock.advance(1)
    # now "one day old" is exactly 2 days old: kept (strictly older is deleted)
    assert (yield r.last) == 0
    clock.advance(PURGE_INTERVAL)
    assert (yield r.last) == 1
    assert (yield _bodies(store)) == ["new"]

    r.stop()
    done = r.last
    clock.advance(10 * PURGE_INTERVAL)
    assert r.last is done and not clock.getDelayedCalls()


@pytest_twisted.inlineCallbacks
def test_a_failed_purge_is_logged_and_retried():
    class FlakyStore:  # only the storage *failure* is simulated here
        calls = 0

        def purge_messages(self, older_than_ms):
            self.calls += 1
            if self.calls == 1:
                return defer.fail(RuntimeError("database is down"))
            return defer.succeed(5)

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = task.Clock()
        r = Retention(FlakyStore(), clock, days=30)
        r.start()
        assert (yield r.last) is None
        clock.advance(PURGE_INTERVAL)
        assert (yield r.last) == 5
        r.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if "purge failed" in e.get("log_format", "")]
    assert len(failures) == 1 and failures[0]["error"] == "database is down"


def test_retention_days_must_be_positive():
    with pytest.raises(ValueError):
        Retention(None, task.Clock(), days=0)


def _config(tmp_path, **storage):
    return config_module.from_dict({
        # gc_tuning off: the service runs inside the pytest process, whose GC it would change
        "server": {"listen": "tcp:0:interface=127.0.0.1", "gc_tuning": False},
        "storage": {"path": str(tmp_path / "n.sqlite"), **storage},
        "auth": {"token_secret": "s" * 16}, "admin": {"api_key": "k" * 16}})


@pytest_twisted.inlineCallbacks
def test_service_runs_retention_only_when_configured(tmp_path):
    svc = NextimService(_config(tmp_path, retention_days=7), reactor)
    now = int(reactor.seconds() * 1000)
    yield svc.store.start()
    yield _add(svc.store, "old", now - 8 * DAY_MS)
    yield _add(svc.store, "recent", now - 6 * DAY_MS)
    svc.startService()
    try:
        yield svc.ready
        assert svc.retention is not None and svc.retention.days == 7
        assert (yield svc.retention.last) == 1
        assert (yield _bodies(svc.store)) == ["recent"]
    finally:
        yield svc.stopService()
    assert not svc.retention._loop.running

    keep = NextimService(_config(tmp_path), reactor)  # default retention_days = 0
    keep.startService()
    try:
        yield keep.ready
        assert keep.retention is None
        assert (yield _bodies(keep.store)) == ["recent"]
    finally:
        yield keep.stopService()


def test_config_rejects_negative_retention():
    with pytest.raises(config_module.ConfigError) as err:
        config_module.from_dict({"storage": {"retention_days": -1}, "auth": {"token_secret": "s" * 16},
                                 "admin": {"api_key": "k" * 16}})
    assert "[storage] retention_days" in str(err.value)


@pytest_twisted.inlineCallbacks
def test_service_tree_starts_in_dependency_order_and_stops_in_reverse(tmp_path):
    # docs/design.md#d16-shutdown: the listener (which answers parked polls) stops
    # first, storage last; retention runs only while storage is open.
    svc = NextimService(_config(tmp_path, retention_days=7), reactor)
    assert [child.name for child in svc] == ["storage", "directory", "directory-watch", "key-retention", "retention",
                                             "web", "stall-monitor"]
    events = []
    for child in svc:
        for method in ("startService", "stopService"):
            real = getattr(child, method)

            def record(real=real, name=child.name, method=method):
                events.append((method[:-7], name))
                return real()
            setattr(child, method, record)
    svc.startService()
    yield svc.ready
    assert svc.port is not None and all(child.running for child in svc)
    yield svc.stopService()
    assert not any(child.running for child in svc)
    assert events == [
        ("start", "storage"), ("start", "directory"), ("start", "directory-watch"), ("start", "key-retention"),
        ("start", "retention"), ("start", "web"), ("start", "stall-monitor"),
        ("stop", "stall-monitor"), ("stop", "web"), ("stop", "retention"), ("stop", "key-retention"),
        ("stop", "directory-watch"), ("stop", "directory"), ("stop", "storage")]
