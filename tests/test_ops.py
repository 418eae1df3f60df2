"""Operator surface: Prometheus metrics, /health, the access log and the
[log] observer — against the in-process daemon on SQLite and PostgreSQL."""
import io
import json

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.application import service
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.web.client import ResponseNeverReceived

from nextim_twisted import config as config_module
from nextim_twisted import logs
from nextim_twisted.core.timers import TICKS_PER_S
from nextim_twisted.web.metrics import endpoint_name
from nextim_twisted.web.ops import HEALTH_TIMEOUT_S
from tests.conftest import API_KEY, TOKEN_SECRET
from tests import memweb

daemon = memweb.daemon  # these HTTP tests run in memory, their timers on a Clock (tests/memweb.py)
METRICS_TOKEN = "metrics-token-" + "z" * 16


async def scrape(daemon, headers=None):
    """``GET /metrics`` parsed: ``{(sample name, frozenset(labels.items())): value}``."""
    resp = await daemon.request("GET", "/metrics", headers=headers)
    assert resp.status == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(daemon, condition, what):
    """Let the reactor run (HTTP and database threads) until ``condition()`` holds."""
    await daemon.until(condition, what)


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_traffic(daemon):
    before = await scrape(daemon)
    assert value(before, "nextim_online_users") == 0
    a = await daemon.online("alice")
    b = await daemon.online("bob")
    poll = daemon.poll(b["connection"]["ticket"])
    await until(daemon, lambda: daemon.router.stats()["parked_polls"] == 1, "bob's poll to park")
    live = await scrape(daemon)
    # gauges are read from the router at scrape time
    assert value(live, "nextim_online_users") == 2
    assert value(live, "nextim_sessions") == 2
    assert value(live, "nextim_parked_polls") == 1
    assert value(live, "nextim_logins_total", method="token") == value(before, "nextim_logins_total",
                                                                        method="token") + 2

    for i in range(3):
        r = await daemon.call("message", ticket=a["connection"]["ticket"], type="unicast", to="bob",
                              body=f"hello {i}")
        assert r.status == 200, r.text
    r = await daemon.call("message", ticket=a["connection"]["ticket"], type="multicast", to="lobby", body="hi")
    assert r.status == 200, r.text
    answer = (await poll).json
    assert answer["messages"]
    bad = await daemon.call("message", ticket=a["connection"]["ticket"], type="unicast", to="nobody", body="x")
    assert bad.status == 404 and bad.json["error"] == "unknown_user"

    after = await scrape(daemon)
    assert value(after, "nextim_messages_total", type="unicast") == 3
    assert value(after, "nextim_messages_total", type="multicast") == 1
    assert value(after, "nextim_packets_delivered_total", kind="messages") >= 1
    assert value(after, "nextim_errors_total", code="unknown_user") == 1
    assert value(after, "nextim_parked_polls") == 0
    assert value(after, "nextim_queue_overflows_total") == 0
    # latency histograms: by endpoint name (never raw paths), polls separately, db by operation
    assert value(after, "nextim_request_duration_seconds_count", endpoint="webim_message") == 5
    assert value(after, "nextim_requests_total", endpoint="webim_message", status="2xx") == 4
    assert value(after, "nextim_requests_total", endpoint="webim_message", status="4xx") == 1
    assert value(after, "nextim_poll_duration_seconds_count") == 1
    assert value(after, "nextim_request_duration_seconds_count", endpoint="packets") == 0
    assert value(after, "nextim_db_duration_seconds_count", operation="add_message") == 4
    # each online reads the directory in one transaction (store/snapshot.py)
    assert value(after, "nextim_db_duration_seconds_count", operation="directory_snapshot") == 2
    assert value(after, "nextim_db_duration_seconds_count", operation="get_user") >= 1  # the unknown "nobody"
    endpoints = {dict(k[1]).get("endpoint") for k in after if k[0] == "nextim_requests_total"}
    assert endpoints <= {"webim_online", "webim_message", "packets", "metrics", "health", "admin",
                         "index", "static", "webim_unknown", "other"}


@pytest_twisted.ensureDeferred
async def test_metrics_count_broadcast_and_overflow(daemon):
    daemon.router.max_queue = 2
    a = await daemon.online("alice")
    await daemon.online("bob")
    r = await daemon.admin("POST", "/admin/broadcast", {"body": "maintenance at noon"})
    assert r.status == 200, r.text
    for i in range(3):  # bob never polls: his queue overflows on the third
        await daemon.call("message", ticket=a["connection"]["ticket"], type="unicast", to="bob", body=str(i))
    samples = await scrape(daemon)
    assert value(samples, "nextim_messages_total", type="broadcast") == 1
    assert value(samples, "nextim_queue_overflows_total") == 1


@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_one_bounded_label(daemon):
    for path in ("/nope", "/nope/2", "/webim/does-not-exist", "/webim/x.php"):
        await daemon.request("GET", path)
    samples = await scrape(daemon)
    assert value(samples, "nextim_requests_total", endpoint="other", status="4xx") == 2
    assert value(samples, "nextim_requests_total", endpoint="webim_unknown", status="4xx") == 2
    assert not any("nope" in str(labels) for _, labels in samples)


def test_endpoint_names():
    names = {"online", "message"}
    assert endpoint_name(b"/webim/online", {}, names) == "webim_online"
    assert endpoint_name(b"/webim/online.php", {}, names) == "webim_online"
    assert endpoint_name(b"/webim/../etc", {}, names) == "webim_unknown"
    assert endpoint_name(b"/", {b"ticket": [b"t"]}, names) == "packets"
    assert endpoint_name(b"/", {}, names) == "index"
    assert endpoint_name(b"/admin/users/alice", {}, names) == "admin"
    assert endpoint_name(b"/static/app.js", {}, names) == "static"


@pytest.mark.config(metrics={"token": METRICS_TOKEN})
@pytest_twisted.ensureDeferred
async def test_metrics_token(daemon):
    for headers in (None, {"Authorization": "Bearer wrong-token-" + "w" * 16},
                    {"Authorization": "Bearer " + API_KEY}):
        resp = await daemon.request("GET", "/metrics", headers=headers)
        assert resp.status == 401
        assert resp.json == {"success": False, "error": "bad_metrics_token", "error_msg": resp.json["error_msg"]}
    samples = await scrape(daemon, headers={"Authorization": "Bearer " + METRICS_TOKEN})
    assert ("nextim_online_users", frozenset()) in samples


@pytest.mark.config(metrics={"enabled": False})
@pytest_twisted.ensureDeferred
async def test_metrics_disabled(daemon):
    resp = await daemon.request("GET", "/metrics")
    assert resp.status == 404 and resp.json["error"] == "unknown_path"


def test_each_daemon_has_its_own_registry():
    """Two daemons in one process (tests, bench) must not collide in a global registry."""
    from nextim_twisted.core.router import Router
    from twisted.internet.task import Clock
    from nextim_twisted.web.metrics import Metrics
    one, two = Metrics(Router(Clock())), Metrics(Router(Clock()))
    one.logged_in("token")
    assert one.registry is not two.registry
    assert b'nextim_logins_total{method="token"} 1.0' in one.exposition()
    assert b'nextim_logins_total{method="token"}' not in two.exposition()


# -- /health ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_health_ok(daemon):
    resp = await daemon.request("GET", "/health")
    assert resp.status == 200
    assert resp.json == {"status": "ok", "storage": "ok"}
    assert resp.headers["cache-control"] == "no-store"


@pytest_twisted.ensureDeferred
async def test_health_503_when_storage_is_closed(daemon):
    await daemon.store.close()
    # A closed adbapi pool never answers: /health gives up after HEALTH_TIMEOUT_S
    # on the daemon clock, which the test drives.
    pending = defer.ensureDeferred(daemon.request("GET", "/health"))

    def answered():
        daemon.clock.advance(HEALTH_TIMEOUT_S)
        return pending.called
    await until(daemon, answered, "the /health answer")
    resp = await pending
    assert resp.status == 503
    assert resp.json == {"status": "error", "storage": "error"}


@pytest_twisted.ensureDeferred
async def test_health_503_when_storage_fails(daemon, monkeypatch):
    monkeypatch.setattr(daemon.store, "ping", lambda: defer.fail(OSError("database is gone")))
    resp = await daemon.request("GET", "/health")
    assert resp.status == 503 and resp.json["storage"] == "error"
    assert "gone" not in resp.text


@pytest_twisted.ensureDeferred
async def test_health_503_while_shutting_down(daemon):
    daemon.ctx.shutting_down = True
    resp = await daemon.request("GET", "/health")
    assert resp.status == 503 and resp.json["status"] == "shutting_down"


# -- the access log ----------------------------------------------------------------------

class Captured(list):
    """Access events seen by a twisted.logger observer during a test."""

    def __call__(self, event):
        if event.get("log_namespace") == "nextim_twisted.access":
            self.append(event)


@pytest.fixture
def access_events():
    captured = Captured()
    globalLogPublisher.addObserver(captured)
    yield captured
    globalLogPublisher.removeObserver(captured)


@pytest_twisted.ensureDeferred
async def test_one_access_event_per_request_without_secrets(daemon, access_events):
    token = daemon.token("alice")
    resp = await daemon.request("GET", "/webim/online",
                                {"token": token, "password": "hunter2-secret", "show": "available"})
    assert resp.status == 200, resp.text
    ticket = resp.json["connection"]["ticket"]
    body = "the secret plans for tuesday"
    await daemon.call("message", ticket=ticket, type="unicast", to="bob", body=body)
    await daemon.call("message", ticket=ticket, type="unicast", to="nobody", body=body)
    poll = daemon.poll(ticket, callback="cb")
    await until(daemon, lambda: daemon.router.stats()["parked_polls"] == 1, "the poll to park")
    daemon.clock.advance(daemon.config.timers.poll_hold + 1 / TICKS_PER_S)  # holds fire ≤ 1 tick late
    assert (await poll).status == 200
    await until(daemon, lambda: any(e["path"] == "/packets" for e in access_events), "the poll's event")

    by_path = {}
    for e in access_events:
        by_path.setdefault(e["path"], []).append(e)
    online, = by_path["/webim/online"]
    assert online["method"] == "GET" and online["status"] == 200 and online["user_id"] == "alice"
    assert online["endpoint"] == "webim_online" and online["error"] is None
    assert isinstance(online["duration_ms"], float) and online["duration_ms"] >= 0
    ok, refused = by_path["/webim/message"]
    assert (ok["status"], ok["error"]) == (200, None)
    assert (refused["status"], refused["error"], refused["user_id"]) == (404, "unknown_user", "alice")
    polled, = by_path["/packets"]
    assert polled["status"] == 200 and polled["user_id"] == "alice" and polled["endpoint"] == "packets"

    from twisted.logger import formatEvent
    for e in access_events:
        text = formatEvent(e) + json.dumps({k: v for k, v in e.items() if not k.startswith("log_")},
                                           default=str)
        for secret in (token, ticket, "hunter2", "secret plans", TOKEN_SECRET):
            assert secret not in text, (secret, text)
    assert "?" not in formatEvent(online)


@pytest_twisted.ensureDeferred
async def test_abandoned_poll_is_logged_once(daemon, access_events):
    a = await daemon.online("alice")
    poll = daemon.poll(a["connection"]["ticket"])
    await until(daemon, lambda: daemon.router.stats()["parked_polls"] == 1, "the poll to park")
    poll.cancel()  # the client drops the connection
    with pytest.raises(ResponseNeverReceived):
        await poll
    await until(daemon, lambda: any(e["path"] == "/packets" for e in access_events), "the poll's event")
    await daemon.settle()  # a second event would show up now
    polls = [e for e in access_events if e["path"] == "/packets"]
    assert [(e["status"], e["user_id"]) for e in polls] == [(499, "alice")]
    samples = await scrape(daemon)
    assert value(samples, "nextim_requests_total", endpoint="packets", status="aborted") == 1
    # The poll ended with its connection; the session lives on until its idle timeout (docs/design.md#d5-timers).
    assert daemon.router.stats()["parked_polls"] == 0
    assert daemon.router.stats()["sessions"] == 1


# -- the [log] observer ------------------------------------------------------------------

def emit_through(observer):
    Logger(namespace="nextim_twisted.access", observer=observer).info(
        "{method} {path} {status}", method="GET", path="/webim/online", status=200, user_id="alice",
        duration_ms=1.5)
    Logger(namespace="x", observer=observer).debug("quiet {n}", n=1)


def test_json_lines_format():
    out = io.StringIO()
    emit_through(logs.make_observer("json", "info", out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # the debug event is filtered
    record = json.loads(lines[0])
    assert record["msg"] == "GET /webim/online 200"
    assert record["level"] == "info" and record["namespace"] == "nextim_twisted.access"
    assert (record["path"], record["status"], record["user_id"], record["duration_ms"]) == \
        ("/webim/online", 200, "alice", 1.5)
    assert record["time"].endswith("+00:00")


def test_text_format_and_debug_level():
    out = io.StringIO()
    emit_through(logs.make_observer("text", "debug", out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "GET /webim/online 200" in lines[0] and "quiet 1" in lines[1]


def test_twistd_application_gets_the_configured_observer():
    cfg = config_module.from_dict({"auth": {"token_secret": "s" * 16}, "admin": {"api_key": "k" * 16},
                                   "log": {"format": "json", "level": "warn"}})
    application = service.Application("nextim")
    out = io.StringIO()
    assert logs.install(application, cfg.log, out) is not None
    observer = application.getComponent(ILogObserver)
    Logger(observer=observer).info("dropped")
    Logger(observer=observer).warn("kept {n}", n=2)
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["kept 2"]
    assert logs.install(application, cfg.log, out) is None  # an existing observer wins


@pytest.mark.parametrize("data, key", [
    ({"log": {"format": "xml"}}, "[log] format"),
    ({"log": {"level": "verbose"}}, "[log] level"),
    ({"metrics": {"token": "short"}}, "[metrics] token"),
    ({"metrics": {"enabled": "yes"}}, "[metrics] enabled"),
])
def test_config_errors_name_the_key(data, key):
    merged = {"auth": {"token_secret": "s" * 16}, "admin": {"api_key": "k" * 16}, **data}
    with pytest.raises(config_module.ConfigError) as err:
        config_module.from_dict(merged)
    assert key in str(err.value)


def test_stall_monitor_records_reactor_lag_and_gc_pauses():
    """A reactor stall shows in nextim_reactor_lag_seconds by how late the 100 ms timer
    fired; every cyclic collection shows in nextim_gc_pause_seconds."""
    import gc

    from twisted.internet.task import Clock

    from nextim_twisted.core.router import Router
    from nextim_twisted.web.metrics import Metrics, StallMonitor

    clock = Clock()
    metrics = Metrics(Router(clock, 25, 60, 10, 100, False))
    monitor = StallMonitor(metrics, clock).start()
    try:
        clock.advance(0.1)            # on time
        clock.advance(0.1 + 0.3)      # the reactor was stuck for 300 ms
        gc.collect()
    finally:
        monitor.stop()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for fam in text_string_to_metric_families(metrics.exposition().decode()) for s in fam.samples}
    assert value(samples, "nextim_reactor_lag_seconds_count") == 2
    assert value(samples, "nextim_reactor_lag_seconds_bucket", le="0.005") == 1
    assert value(samples, "nextim_reactor_lag_seconds_bucket", le="0.25") == 1
    assert value(samples, "nextim_reactor_lag_seconds_bucket", le="0.5") == 2
    assert value(samples, "nextim_gc_pause_seconds_count", generation="2") >= 1
    # stopped: no timer left behind, no hook left in the collector
    assert clock.getDelayedCalls() == [] and monitor._on_gc not in gc.callbacks
