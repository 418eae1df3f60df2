"""The host site as source of truth, end to end through the daemon's HTTP API
(docs/integration.md): a real site on loopback (tests/sitefixtures.py) answers the
directory and receives the webhooks, on SQLite and PostgreSQL."""
import pytest_twisted
from twisted.internet import defer

from tests.conftest import API_KEY, Harness, make_config
from tests.sitefixtures import FakeSite
from tests.storefixtures import make_store

inline = pytest_twisted.ensureDeferred
DIRECTORY_SECRET = "site-directory-secret-" + "s" * 16
WEBHOOK_SECRET = "site-webhook-secret-" + "h" * 16


@pytest_twisted.async_yield_fixture
async def site():
    s = FakeSite(DIRECTORY_SECRET, webhook_secret=WEBHOOK_SECRET)
    await s.listen()
    s.add_user("alice", "Alice of the site", url="https://site.example/alice")
    for uid in ("bob", "carol", "dave"):
        s.add_user(uid)
    s.befriend("alice", "bob", "Friends")
    s.befriend("bob", "carol", "Work")
    s.add_room("lobby", "Lobby", members=("alice", "bob", "carol"))
    try:
        yield s
    finally:
        await s.close()


@pytest_twisted.async_yield_fixture
async def h(store_kind, tmp_path, site):
    """A daemon whose directory is ``site`` and whose webhooks go to it."""
    config = make_config(
        directory={"provider": "http", "url": site.url, "secret": DIRECTORY_SECRET},
        webhooks={"url": site.base + "/nextim/events", "secret": WEBHOOK_SECRET})
    store, drop = await make_store(store_kind, tmp_path)
    harness = Harness(store, config)
    await harness.start()
    harness.site = site
    try:
        yield harness
    finally:
        await harness.stop()
        assert site.bad_signatures == 0
        await drop()


async def refused(resp, status, code):
    assert resp.status == status, resp.text
    assert resp.json["success"] is False and resp.json["error"] == code, resp.json
    return resp.json["error_msg"]


async def webhooks_settle(h):
    """Let the webhooks' flush and delivery rounds that are due now finish."""
    hooks = h.webhooks
    h.clock.advance(0.5)
    for _ in range(50):
        if hooks._flushing is None and hooks._loop is None:
            count, due = await hooks.outbox.summary()
            if count == 0 or due > hooks.now_ms():
                return
        if hooks._flushing is not None:
            await hooks._flushing
        if hooks._loop is not None:
            await hooks._loop
        h.clock.advance(0)
    raise AssertionError("webhooks never settled")


async def messages(h, ticket):
    """The next messages that reach the session (presences before them are skipped)."""
    ack = None
    for _ in range(10):
        packets = (await h.poll(ticket, ack=ack)).json
        if packets["messages"]:
            return packets["messages"]
        ack = packets["seq"]
    raise AssertionError("no message came")


def events(h, name=None):
    return [e for e in h.site.events if name is None or e["event"] == name]


# -- the directory -----------------------------------------------------------------

@inline
async def test_the_sites_directory_reaches_online(h):
    a = await h.online("alice")
    assert a["user"]["nick"] == "Alice of the site" and a["user"]["url"] == "https://site.example/alice"
    assert [(b["id"], b["group"]) for b in a["buddies"]] == [("bob", "Friends")]
    assert [(r["id"], r["nick"], r["all_count"]) for r in a["rooms"]] == [("lobby", "Lobby", 3)]
    assert await h.store.get_user("alice") is None  # nothing was copied into the daemon
    b = await h.online("bob")
    assert {x["id"]: x["group"] for x in b["buddies"]} == {"alice": "Friends", "carol": "Work"}
    buddies = await h.call("buddies", user="bob", ids="alice,dave,nobody")
    assert [(x["id"], x["group"], x["presence"]) for x in buddies.json] == [
        ("alice", "Friends", "online"), ("dave", "stranger", "offline")]
    rooms = await h.call("rooms", user="bob", ids="lobby")
    assert [r["id"] for r in rooms.json] == ["lobby"]
    members = await h.call("members", user="bob", id="lobby")
    assert [m["id"] for m in members.json] == ["alice", "bob"]
    await refused(await h.call("members", user="dave", id="lobby"), 403, "not_member")


@inline
async def test_a_user_the_site_does_not_know_is_refused_and_claims_change_nothing(h):
    await refused(await h.call("online", user="mallory"), 404, "unknown_user")
    resp = await h.request("POST", "/webim/online", headers={
        "Authorization": "Bearer " + h.token("alice", nick="Somebody else")})
    assert resp.json["user"]["nick"] == "Alice of the site"


@inline
async def test_messages_go_to_users_the_site_knows(h):
    a = await h.online("alice")
    ok = await h.call("message", ticket=a["connection"]["ticket"], type="unicast", to="dave", body="hi")
    assert ok.text == "ok"
    await refused(await h.call("message", ticket=a["connection"]["ticket"], type="unicast", to="nobody",
                               body="hi"), 404, "unknown_user")


@inline
async def test_the_admin_apis_directory_writes_are_refused(h):
    resp = await h.admin("PUT", "/admin/users/erin", {"nick": "Erin"})
    assert "POST /admin/directory/invalidate" in await refused(resp, 409, "directory_is_remote")
    await refused(await h.admin("PUT", "/admin/rooms/lobby/members/dave"), 409, "directory_is_remote")


# -- invalidation ------------------------------------------------------------------------

@inline
async def test_invalidation_shows_up_in_live_sessions(h):
    a = await h.online("alice")
    c = await h.online("carol")
    # The site makes alice and carol friends and renames alice, and tells the daemon.
    h.site.befriend("alice", "carol", "New")
    h.site.users["alice"]["nick"] = "Alice Renamed"
    resp = await h.admin("POST", "/admin/directory/invalidate", {"users": ["alice", "carol"]})
    assert resp.json == {"success": True, "users": 2, "rooms": 0}
    # carol's show change now reaches alice, and alice's message carries the new nick
    poll = h.poll(a["connection"]["ticket"])
    await h.call("presence", ticket=c["connection"]["ticket"], show="away")
    packets = (await poll).json
    assert [(p["from"], p["show"]) for p in packets["presences"]] == [("carol", "away")]
    await h.call("message", ticket=a["connection"]["ticket"], type="unicast", to="carol", body="hello")
    assert [(m["from"], m["nick"]) for m in await messages(h, c["connection"]["ticket"])] == [
        ("alice", "Alice Renamed")]


@inline
async def test_invalidating_a_room_moves_its_live_members(h):
    a = await h.online("alice")
    b = await h.online("bob")
    d = await h.online("dave")
    h.site.members["lobby"] = {"alice", "dave"}
    resp = await h.admin("POST", "/admin/directory/invalidate", {"rooms": ["lobby"]})
    assert resp.json == {"success": True, "users": 0, "rooms": 1}
    members = await h.call("members", user="alice", id="lobby")
    assert [m["id"] for m in members.json] == ["alice", "dave"]
    await refused(await h.call("message", ticket=b["connection"]["ticket"], type="multicast", to="lobby",
                               body="still here?"), 403, "not_member")
    assert (await h.call("message", ticket=d["connection"]["ticket"], type="multicast", to="lobby",
                         body="hi lobby")).text == "ok"
    assert [m["body"] for m in await messages(h, a["connection"]["ticket"])] == ["hi lobby"]
    rooms = await h.call("rooms", user="dave", ids="lobby")
    assert [r["id"] for r in rooms.json] == ["lobby"]


@inline
async def test_a_user_the_site_removed_goes_offline_on_invalidation(h):
    a = await h.online("alice")
    del h.site.users["alice"]
    await h.admin("POST", "/admin/directory/invalidate", {"users": ["alice"]})
    assert not h.router.is_online("alice")
    assert (await h.poll(a["connection"]["ticket"])).status == 404


@inline
async def test_invalidate_refuses_bad_lists(h):
    await refused(await h.admin("POST", "/admin/directory/invalidate", {"users": ["a/b"]}), 400, "bad_parameter")
    await refused(await h.admin("POST", "/admin/directory/invalidate", {"rooms": ["x"] * 1001}), 400,
                  "bad_parameter")
    await refused(await h.admin("POST", "/admin/directory/invalidate", {"users": []}, key="wrong-key-xxxxxxxx"),
                  401, "bad_api_key")


# -- the site failing -----------------------------------------------------------------------

async def metric(h, name):
    text = (await h.request("GET", "/metrics")).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(name)}


@inline
async def test_a_failing_site_with_nothing_cached_answers_503(h):
    h.site.mode = "500"
    message = await refused(await h.call("online", user="alice"), 503, "directory_unavailable")
    assert message == "the site's user directory is not answering (HTTP 500); try again shortly"
    h.site.mode = "malformed"
    assert "not JSON" in await refused(await h.call("online", user="alice"), 503, "directory_unavailable")
    assert (await metric(h, "nextim_directory_unavailable_total"))['nextim_directory_unavailable_total{kind="user"}'] == 2
    assert not h.router.is_online("alice")


@inline
async def test_a_10_mb_buddy_list_is_refused(h):
    h.site.mode = lambda target: (200, {"id": "alice", "nick": "Alice"}) if target.endswith("/alice") else None
    await h.ctx.directory.profile("alice")
    h.site.mode = "huge"
    assert "over 2097152 bytes" in await refused(await h.call("online", user="alice"), 503, "directory_unavailable")


@inline
async def test_a_site_that_is_down_serves_the_warm_cache_and_refuses_the_cold(h):
    await h.online("alice")
    first = await h.online("alice")
    await h.site.close()
    h.clock.advance(120)
    again = await h.online("alice")  # from the cache, whatever its age
    assert again["buddies"] == [dict(b, presence=b["presence"]) for b in first["buddies"]]
    assert [r["id"] for r in again["rooms"]] == ["lobby"]
    assert "ConnectionRefusedError" in await refused(await h.call("online", user="carol"), 503,
                                                     "directory_unavailable")
    stale = await metric(h, "nextim_directory_stale_served_total")
    assert stale['nextim_directory_stale_served_total{kind="user"}'] >= 1
    assert stale['nextim_directory_stale_served_total{kind="buddies"}'] >= 1


@inline
async def test_a_site_that_hangs_fails_after_the_timeout_without_holding_others(h):
    b = await h.online("bob")
    h.site.mode = "hang"
    waiting = defer.ensureDeferred(h.call("online", user="alice"))
    await h.site.next_request()
    # bob, already live, is not held up by alice's read
    assert (await h.call("presence", ticket=b["connection"]["ticket"], show="away")).text == "ok"
    assert not waiting.called
    h.clock.advance(5)
    assert "no answer within 5 s" in await refused(await waiting, 503, "directory_unavailable")


# -- webhooks ---------------------------------------------------------------------------

@inline
async def test_webhooks_for_a_conversation_each_once(h):
    a = await h.online("alice")
    b = await h.online("bob")
    ta = a["connection"]["ticket"]
    await h.call("message", ticket=ta, type="unicast", to="bob", body="online one")
    await h.call("message", ticket=ta, type="unicast", to="dave", body="offline one")
    await h.call("message", ticket=ta, type="multicast", to="lobby", body="room one")
    await h.call("presence", ticket=b["connection"]["ticket"], show="dnd")
    await webhooks_settle(h)
    h.clock.advance(30)
    await webhooks_settle(h)
    # Sent 16 at a time: arrival order is not the order of events (docs/integration.md#delivery).
    assert sorted((e["data"]["to"], e["data"]["body"]) for e in events(h, "message")) == [
        ("bob", "online one"), ("dave", "offline one"), ("lobby", "room one")]
    assert [(e["data"]["to"], e["data"]["body"]) for e in events(h, "message.offline")] == [("dave", "offline one")]
    assert sorted((e["data"]["user"], e["data"]["type"], e["data"]["show"]) for e in events(h, "presence")) == [
        ("alice", "online", "available"), ("bob", "online", "available"), ("bob", "show", "dnd")]
    assert sorted(e["data"]["user"] for e in events(h, "room.join")) == ["alice", "bob"]
    assert len({e["id"] for e in h.site.events}) == len(h.site.events)
    stats = await metric(h, "nextim_webhook_deliveries_total")
    assert stats["nextim_webhook_deliveries_total"] == len(h.site.events)


@inline
async def test_message_offline_once_the_recipient_has_no_live_session(h):
    a = await h.online("alice")
    b = await h.online("bob")
    await h.call("offline", ticket=b["connection"]["ticket"])
    h.clock.advance(h.config.timers.user_grace + 1)  # bob's grace ends: offline
    a = await h.online("alice")  # (her first session idled out meanwhile)
    sent = await h.call("message", ticket=a["connection"]["ticket"], type="unicast", to="bob", body="are you there?")
    assert sent.text == "ok"
    await webhooks_settle(h)
    assert [e["data"]["body"] for e in events(h, "message.offline")] == ["are you there?"]
    bob = sorted(events(h, "presence"), key=lambda e: e["timestamp"])
    assert [e["data"]["type"] for e in bob if e["data"]["user"] == "bob"] == ["online", "offline"]


@inline
async def test_webhooks_are_retried_after_the_site_fails(h):
    h.site.webhook_status = 500
    a = await h.online("alice")
    await h.call("message", ticket=a["connection"]["ticket"], type="unicast", to="dave", body="later")
    await webhooks_settle(h)
    assert events(h) == [] and h.webhooks.failures >= 2
    h.site.webhook_status = 200
    h.clock.advance(1)
    await webhooks_settle(h)
    assert sorted(e["event"] for e in events(h)) == ["message", "message.offline", "presence", "room.join"]


@inline
async def test_the_local_directory_is_the_default(tmp_path, store_kind):
    store, drop = await make_store(store_kind, tmp_path)
    h = Harness(store, make_config())
    await h.start()
    try:
        assert h.ctx.directory.provisions and h.webhooks is None
        assert (await h.online("zoe"))["user"]["nick"] == "Zoe"  # provisioned from the token
        assert (await store.get_user("zoe"))["nick"] == "Zoe"
        assert (await h.admin("POST", "/admin/directory/invalidate", {"users": ["zoe"]})).json == {
            "success": True, "users": 1, "rooms": 0}
    finally:
        await h.stop()
        await drop()
    assert API_KEY


def test_the_service_runs_the_webhooks_between_storage_and_the_listener(tmp_path):
    # They start after storage (the outbox is there) and stop before it, writing their
    # last events first (docs/design.md#d16-shutdown).
    from twisted.internet import reactor

    from nextim_twisted.service import NextimService
    config = make_config(storage={"path": str(tmp_path / "n.db")},
                         webhooks={"url": "http://127.0.0.1:9/hook", "secret": WEBHOOK_SECRET})
    svc = NextimService(config, reactor)
    names = [child.name for child in svc]
    assert names.index("storage") < names.index("directory") < names.index("webhooks") < names.index("web")
    assert svc.parts.webhooks in svc.router.observers
