"""Every webim/* endpoint over real HTTP: normal answers and errors, plain and JSONP
(docs/design.md#d1-plain-and-jsonp, docs/design.md#d2-errors), on both storage
backends. In memory (tests/memweb.py): timers are driven by the harness's Clock."""
import json

import pytest
import pytest_twisted

from tests.conftest import API_KEY
from tests import memweb

daemon = memweb.daemon  # these HTTP tests run in memory, their timers on a Clock (tests/memweb.py)
inline = pytest_twisted.ensureDeferred


# -- plain, JSONP and the envelope ----------------------------------------------------------------------------

@inline
async def test_online_answer_shape(daemon):
    ans = await daemon.online("alice", buddy_ids="bob", room_ids="lobby")
    assert ans["success"] is True
    assert ans["user"]["id"] == "alice" and ans["user"]["show"] == "available"
    conn = ans["connection"]
    assert conn["domain"] == "test.local"
    assert conn["server"] == "http://127.0.0.1:8000/packets"
    assert len(conn["ticket"]) >= 22
    assert [b["id"] for b in ans["buddies"]] == ["bob"]
    assert ans["buddies"][0]["presence"] == "offline" and ans["buddies"][0]["group"] == "Friends"
    assert ans["buddies"][0]["history"] == []
    assert ans["rooms"][0]["id"] == "lobby" and ans["rooms"][0]["count"] == 1
    assert ans["rooms"][0]["all_count"] == 3
    assert ans["new_messages"] == [] and ans["setting"] == {} and ans["presences"] == {}
    assert abs(ans["server_time"] - daemon.clock.seconds() * 1000) < 1000


@inline
async def test_each_online_is_a_new_ticket(daemon):
    a = await daemon.online("alice")
    b = await daemon.online("alice")
    assert a["connection"]["ticket"] != b["connection"]["ticket"]
    assert daemon.router.stats()["sessions"] == 2


@inline
async def test_jsonp_answers_and_errors_are_200_javascript(daemon):
    ans = await daemon.online("alice")
    ticket = ans["connection"]["ticket"]
    ok = await daemon.call("presence", method="GET", ticket=ticket, show="away", callback="jsonp123")
    assert ok.status == 200
    assert ok.headers["content-type"].startswith("application/javascript")
    assert ok.headers["x-content-type-options"] == "nosniff"
    assert ok.headers["cache-control"] == "no-store"
    assert ok.text == '/**/jsonp123("ok");'
    err = await daemon.call("message", method="GET", ticket=ticket, callback="parent.jsonp9")
    assert err.status == 200
    env = err.jsonp("parent.jsonp9")
    assert env == {"success": False, "error": "missing_parameter", "error_msg": env["error_msg"]}
    assert "type" in env["error_msg"] and "to" in env["error_msg"]


@inline
async def test_plain_ok_is_text(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    ok = await daemon.call("presence", ticket=ticket, show="dnd")
    assert ok.status == 200 and ok.text == "ok" and ok.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("callback", ["alert(1)//", "a-b", "1abc", "a..b", "x" * 129, "a;b", "a b", "é"])
@inline
async def test_bad_callback_is_400(daemon, callback):
    resp = await daemon.call("online", user="alice", callback=callback)
    assert resp.status == 400
    assert resp.json["error"] == "bad_callback"
    assert resp.headers["content-type"].startswith("application/json")   # never run as script
    assert callback not in resp.text                                       # never echoed


@inline
async def test_unknown_path_and_method_answer_envelope(daemon):
    resp = await daemon.request("GET", "/nope")
    assert resp.status == 404 and resp.json["success"] is False
    resp = await daemon.call("frobnicate", user="alice")
    assert resp.status == 404 and resp.json["error"] == "unknown_endpoint"
    resp = await daemon.request("DELETE", "/webim/online")
    assert resp.status == 405 and resp.json["success"] is False
    resp = await daemon.request("PATCH", "/admin/stats")
    assert resp.status == 405 and resp.json["success"] is False


@inline
async def test_oversized_body_is_413(daemon):
    resp = await daemon.call("online", user="alice", filler="x" * 50000)
    assert resp.status == 413 and resp.json["error"] == "body_too_large"


@inline
async def test_invalid_utf8_is_400(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    resp = await daemon.request("POST", "/webim/message", data=b"ticket=" + ticket.encode() +
                                b"&type=unicast&to=bob&body=%ff%fe",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400 and resp.json["error"] == "bad_encoding"
    assert await daemon.store.message_count() == 0


# -- identity (docs/design.md#d13-identity) -------------------------------------------------------------------

@inline
async def test_no_credentials_401(daemon):
    resp = await daemon.call("online")
    assert resp.status == 401 and resp.json["success"] is False


@inline
async def test_forged_and_expired_tokens_401(daemon):
    import time

    import jwt
    forged = jwt.encode({"sub": "alice"}, "another-secret-of-enough-length", algorithm="HS256")
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, "test-token-secret-" + "x" * 16,
                         algorithm="HS256")
    none_alg = jwt.encode({"sub": "alice"}, None, algorithm="none")
    no_sub = jwt.encode({"nick": "x"}, "test-token-secret-" + "x" * 16, algorithm="HS256")
    for token, code in ((forged, "invalid_token"), (expired, "token_expired"), (none_alg, "invalid_token"),
                        (no_sub, "invalid_token"), ("garbage", "invalid_token")):
        resp = await daemon.call("online", token=token)
        assert resp.status == 401 and resp.json["error"] == code, token


@inline
async def test_token_creates_unknown_user_from_claims(daemon):
    resp = await daemon.request("POST", "/webim/online", {"token": daemon.token("zoe", nick="Zoë", url="/u/zoe")})
    assert resp.status == 200
    user = await daemon.store.get_user("zoe")
    assert user["nick"] == "Zoë" and user["url"] == "/u/zoe"


@inline
async def test_ticket_of_another_user_is_403(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    resp = await daemon.call("message", user="bob", ticket=ticket, type="unicast", to="carol", body="x")
    assert resp.status == 403 and resp.json["error"] == "ticket_mismatch"
    assert await daemon.store.message_count() == 0


@inline
async def test_expired_ticket_is_404(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.call("offline", ticket=ticket)
    resp = await daemon.call("message", ticket=ticket, type="unicast", to="bob", body="late")
    assert resp.status == 404 and resp.json["error"] == "invalid_ticket"


@inline
async def test_cookie_only_write_needs_post_from_allowed_origin(daemon):
    cookies = {"nextim_token": daemon.token("alice")}
    bad = await daemon.request("POST", "/webim/online", {}, headers={"Origin": "http://evil.example"},
                               cookies=cookies)
    assert bad.status == 403 and bad.json["error"] == "csrf"
    get = await daemon.request("GET", "/webim/online", {"x": "1"}, cookies=cookies)
    assert get.status == 403
    jsonp = await daemon.request("GET", "/webim/history", {"id": "bob", "callback": "cb"}, cookies=cookies)
    assert jsonp.status == 200 and jsonp.jsonp("cb")["error"] == "csrf"
    good = await daemon.request("POST", "/webim/online", {}, headers={"Origin": "http://127.0.0.1:8000"},
                                cookies=cookies)
    assert good.status == 200 and good.json["success"] is True


# -- messages, history, offline delivery (docs/design.md#d7-messages, docs/design.md#d10-history) -------------

@inline
async def test_message_flow_offline_then_new_messages(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    for body in ("one", "two <b>&", "三 😀"):
        resp = await daemon.call("message", ticket=a, type="unicast", to="bob", body=body,
                                 nick="Mallory", timestamp="1", **{"from": "mallory"})
        assert resp.text == "ok"
    ans = await daemon.online("bob")
    news = ans["new_messages"]
    assert [m["body"] for m in news] == ["one", "two <b>&", "三 😀"]
    assert all(m["from"] == "alice" and m["nick"] == "Alice" and m["to"] == "bob" for m in news)
    assert all(isinstance(m["timestamp"], int) and m["timestamp"] > 10**12 for m in news)
    assert "history" in [b for b in ans["buddies"] if b["id"] == "alice"][0]
    assert [b for b in ans["buddies"] if b["id"] == "alice"][0]["history"] == []  # never in both
    again = await daemon.online("bob")
    assert again["new_messages"] == []
    hist = await daemon.call("history", user="bob", method="GET", id="alice", type="unicast")
    assert [m["body"] for m in hist.json] == ["one", "two <b>&", "三 😀"]


@inline
async def test_message_to_online_user_is_routed_once(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    poll = daemon.poll(b, ack=0)
    await daemon.call("message", ticket=a, type="chat", to="bob", body="hello")
    resp = await poll
    msgs = resp.json["messages"]
    assert [(m["body"], m["type"], m["from"]) for m in msgs] == [("hello", "unicast", "alice")]
    again = await daemon.call("online", user="bob")
    assert again.json["new_messages"] == []


@inline
async def test_message_errors(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    cases = [
        ({"type": "unicast", "to": "nobody", "body": "x"}, 404, "unknown_user"),
        ({"type": "multicast", "to": "nowhere", "body": "x"}, 404, "unknown_room"),
        ({"type": "broadcast", "to": "bob", "body": "x"}, 403, "admin_only"),
        ({"type": "weird", "to": "bob", "body": "x"}, 400, "bad_parameter"),
        ({"type": "unicast", "to": "bob", "body": "x" * 10001}, 413, "body_too_long"),
        ({"type": "unicast", "to": "", "body": "x"}, 400, "missing_parameter"),
        ({"type": "unicast", "to": "a" * 65, "body": "x"}, 400, "bad_parameter"),
    ]
    for params, status, code in cases:
        resp = await daemon.call("message", ticket=a, **params)
        assert (resp.status, resp.json["error"]) == (status, code), params
    dave = (await daemon.online("dave"))["connection"]["ticket"]
    resp = await daemon.call("message", ticket=dave, type="multicast", to="lobby", body="let me in")
    assert resp.status == 403 and resp.json["error"] == "not_member"
    resp = await daemon.call("message", user="alice", type="unicast", to="bob", body="no ticket")
    assert resp.status == 400
    assert await daemon.store.message_count() == 0


@inline
async def test_style_is_sanitized(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.call("message", ticket=a, type="unicast", to="bob", body="x",
                      style='color:#f00; background:url(javascript:alert(1)); font-weight:bold; x:"y"')
    hist = await daemon.call("history", user="alice", method="GET", id="bob")
    assert hist.json[0]["style"] == "color:#f00;font-weight:bold"


@inline
async def test_clear_history_is_per_side(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.online("bob")
    await daemon.call("message", ticket=a, type="unicast", to="bob", body="keep?")
    assert (await daemon.call("clear_history", user="alice", id="bob", type="unicast")).text == "ok"
    assert (await daemon.call("history", user="alice", method="GET", id="bob")).json == []
    assert [m["body"] for m in (await daemon.call("history", user="bob", method="GET", id="alice")).json] == ["keep?"]
    resp = await daemon.call("clear_history", user="alice")
    assert resp.status == 400


@inline
async def test_room_chat_history_and_membership(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    poll = daemon.poll(b, ack=0)
    assert (await daemon.call("message", ticket=a, type="grpchat", to="lobby", body="hi room")).text == "ok"
    resp = await poll
    assert [(m["type"], m["to"], m["body"]) for m in resp.json["messages"]] == [("multicast", "lobby", "hi room")]
    hist = await daemon.call("history", user="carol", method="GET", id="lobby", type="multicast")
    assert [m["body"] for m in hist.json] == ["hi room"]
    denied = await daemon.call("history", user="dave", method="GET", id="lobby", type="multicast")
    assert denied.status == 403
    members = await daemon.call("members", ticket=a, method="GET", id="lobby")
    assert [m["id"] for m in members.json] == ["alice", "bob"]
    assert (await daemon.call("members", ticket=a, method="GET", id="nowhere")).status == 404


@inline
async def test_leave_blocks_room_and_join_unblocks(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    assert (await daemon.call("leave", ticket=b, id="lobby")).text == "ok"
    await daemon.call("message", ticket=a, type="multicast", to="lobby", body="unheard")
    assert daemon.router.sessions[b].queue == type(daemon.router.sessions[b].queue)() or \
        all(p[2].get("body") != "unheard" for p in daemon.router.sessions[b].queue)
    blocked = await daemon.call("message", ticket=b, type="multicast", to="lobby", body="x")
    assert blocked.status == 403 and blocked.json["error"] == "room_blocked"
    joined = await daemon.call("join", ticket=b, id="lobby")
    assert joined.json["id"] == "lobby" and joined.json["count"] == 2
    assert (await daemon.call("join", ticket=b, id="nowhere")).status == 404
    d = (await daemon.online("dave"))["connection"]["ticket"]
    assert (await daemon.call("join", ticket=d, id="lobby")).status == 403


@inline
async def test_blocked_rooms_setting_is_honoured_at_online(daemon):
    await daemon.call("setting", user="alice", data=json.dumps({"blocked_rooms": ["lobby"], "play_sound": False}))
    ans = await daemon.online("alice")
    assert ans["rooms"][0]["blocked"] is True
    assert ans["setting"] == {"blocked_rooms": ["lobby"], "play_sound": False}
    assert not daemon.router.in_room("alice", "lobby")


# -- presence and status (docs/design.md#d8-presence) ---------------------------------------------------------

@inline
async def test_presence_and_typing_reach_buddy(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    first = await daemon.poll(a, ack=0)
    seq = first.json["seq"]
    assert [(p["type"], p["from"]) for p in first.json["presences"]] == [("online", "bob")]
    await daemon.call("presence", ticket=b, show="busy", status="in a meeting")
    await daemon.call("status", ticket=b, to="alice", show="typing")
    resp = await daemon.poll(a, ack=seq)
    p = resp.json["presences"]
    assert [(x["type"], x["show"], x["status"]) for x in p] == [("show", "dnd", "in a meeting")]
    assert [(s["from"], s["show"]) for s in resp.json["statuses"]] == [("bob", "typing")]
    assert resp.json["seq"] == seq + 2


@inline
async def test_presence_errors(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("presence", ticket=a, show="sleepy")).status == 400
    assert (await daemon.call("presence", ticket=a)).status == 400
    assert (await daemon.call("status", ticket=a, to="bob", show="<script>")).status == 400
    assert (await daemon.call("status", ticket=a, show="typing")).status == 400


@inline
async def test_presence_unavailable_ends_session(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("presence", ticket=a, show="unavailable")).text == "ok"
    assert (await daemon.poll(a)).status == 404


# -- the long poll (docs/design.md#d5-timers, docs/design.md#d6-comet-envelope) -------------------------------

@inline
async def test_poll_unknown_ticket_404_in_both_modes(daemon):
    plain = await daemon.poll("nope")
    assert plain.status == 404 and plain.json["error"] == "invalid_ticket"
    jsonp = await daemon.poll("nope", callback="jsonp1")
    assert jsonp.status == 404


@inline
async def test_poll_hold_returns_empty_batch_jsonp(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    poll = daemon.poll(a, callback="jsonp77")
    await daemon.settle()
    daemon.clock.advance(25.1)
    resp = await poll
    assert resp.status == 200
    assert resp.jsonp("jsonp77") == {"status": "ok", "messages": [], "presences": [], "statuses": [], "seq": 0}


@inline
async def test_newer_poll_stops_older(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    older = daemon.poll(a)
    await daemon.settle()
    newer = daemon.poll(a)
    assert (await older).json == {"status": "stopped"}
    await daemon.call("offline", ticket=a)
    assert (await newer).json == {"status": "stopped"}


@inline
async def test_session_without_polls_ends_after_the_idle_time(daemon):
    """docs/design.md#d5-timers: a ticket nobody polls with ends after
    [timers] session_idle seconds (10 here), on the Clock, not on the wall clock."""
    a = (await daemon.online("alice"))["connection"]["ticket"]
    daemon.clock.advance(9)
    assert daemon.router.stats()["sessions"] == 1
    daemon.clock.advance(1.5)
    assert daemon.router.stats()["sessions"] == 0
    assert (await daemon.poll(a)).json["error"] == "invalid_ticket"


@inline
async def test_buddy_sees_offline_only_after_the_grace(daemon):
    """docs/design.md#d5-timers: a user whose last session ended stays online for
    [timers] user_grace seconds (a page reload), then the buddies get ``offline``."""
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    seq = (await daemon.poll(a, ack=0)).json["seq"]  # bob's online
    poll = daemon.poll(a, ack=seq)
    await daemon.until(lambda: daemon.router.stats()["parked_polls"] == 1, "alice's poll to park")
    assert (await daemon.call("offline", ticket=b)).text == "ok"
    daemon.clock.advance(9)
    await daemon.settle()
    assert daemon.router.is_online("bob") and not poll.called
    daemon.clock.advance(1.5)
    presences = (await poll).json["presences"]
    assert [(p["type"], p["from"]) for p in presences] == [("offline", "bob")]


@inline
async def test_poll_bad_ack_400(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    resp = await daemon.poll(a, ack="-1")
    assert resp.status == 400
    resp = await daemon.poll(a, ack="x")
    assert resp.status == 400


@inline
async def test_root_path_answers_polls(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.call("presence", ticket=a, show="away")
    b = (await daemon.online("bob"))["connection"]["ticket"]
    await daemon.call("presence", ticket=b, show="away")
    resp = await daemon.request("GET", "/", {"ticket": a, "callback": "cb"})
    assert [p["from"] for p in resp.jsonp("cb")["presences"]] == ["bob", "bob"]


# -- settings, notifications, buddies, rooms (docs/design.md#d11-settings, docs/design.md#d12-notifications)

@inline
async def test_settings_roundtrip_and_errors(daemon):
    data = json.dumps({"play_sound": True, "emoji": "😀", "blocked_rooms": []}, ensure_ascii=False)
    assert (await daemon.call("setting", user="alice", data=data)).text == "ok"
    read = await daemon.call("setting", user="alice", method="GET")
    assert read.json == json.loads(data)
    for bad, status in (("[1,2]", 400), ("not json", 400), ('"str"', 400), ("[" * 5000 + "]" * 5000, 413),
                        ("[" * 3000 + "]" * 3000, 400), (json.dumps({"k": "x" * 9000}), 413)):
        resp = await daemon.call("setting", user="alice", data=bad)
        assert resp.status == status, bad[:20]
    assert (await daemon.call("setting", user="alice", method="GET")).json == json.loads(data)


@inline
async def test_notifications_unread_newest_first(daemon):
    for text in ("first", "<b>second</b>"):
        resp = await daemon.admin("POST", "/admin/users/alice/notifications", {"text": text, "link": "/n"})
        assert resp.status == 200
    for path in ("notifications", "notification"):
        resp = await daemon.call(path, user="alice", method="GET")
        if path == "notifications":
            assert [n["text"] for n in resp.json] == ["<b>second</b>", "first"]
            assert resp.json[0]["link"] == "/n"
        else:
            assert resp.json == []   # already read


@inline
async def test_buddies_and_rooms_lookup(daemon):
    await daemon.online("bob", show="away")
    resp = await daemon.call("buddies", user="alice", method="GET", ids="bob,carol,ghost")
    assert [(b["id"], b["presence"], b["show"]) for b in resp.json] == [("bob", "online", "away"),
                                                                          ("carol", "offline", "unavailable")]
    assert (await daemon.call("buddies", user="alice", method="GET")).status == 400
    rooms = await daemon.call("rooms", user="alice", method="GET", ids="lobby,nowhere")
    assert [(r["id"], r["count"]) for r in rooms.json] == [("lobby", 1)]


# -- admin API (docs/design.md#d14-directory) -----------------------------------------------------------------

@inline
async def test_admin_requires_key(daemon):
    assert (await daemon.admin("GET", "/admin/stats", key=None)).status == 401
    assert (await daemon.admin("GET", "/admin/stats", key="wrong-" + API_KEY)).status == 401
    ok = await daemon.admin("GET", "/admin/stats")
    assert ok.status == 200 and ok.json["online_users"] == 0


@inline
async def test_admin_directory_changes_reach_live_users(daemon):
    assert (await daemon.admin("PUT", "/admin/users/erin", {"nick": "Erin"})).status == 200
    assert (await daemon.admin("PUT", "/admin/users/erin/buddies/alice", {"group": "New"})).status == 200
    a = (await daemon.online("alice"))["connection"]["ticket"]
    ans = await daemon.online("erin")
    assert [(b["id"], b["group"], b["presence"]) for b in ans["buddies"]] == [("alice", "New", "online")]
    first = await daemon.poll(a, ack=0)
    assert [p["from"] for p in first.json["presences"]] == ["erin"]
    assert (await daemon.admin("PUT", "/admin/rooms/dev", {"nick": "Dev"})).status == 200
    assert (await daemon.admin("PUT", "/admin/rooms/dev/members/erin")).status == 200
    assert daemon.router.in_room("erin", "dev")
    bc = await daemon.admin("POST", "/admin/broadcast", {"body": "maintenance at 5"})
    assert bc.json["delivered"] == 2
    resp = await daemon.poll(a, ack=first.json["seq"])
    assert [(m["type"], m["to"], m["body"]) for m in resp.json["messages"]] == [
        ("unicast", "alice", "maintenance at 5")]
    assert (await daemon.admin("DELETE", "/admin/users/erin")).status == 200
    assert not daemon.router.is_online("erin")


@inline
async def test_admin_bad_input(daemon):
    cases = [
        ("PUT", "/admin/users/x", {}, 400),
        ("PUT", "/admin/users/x", {"nick": 5}, 400),
        ("PUT", "/admin/users/lobby", {"nick": "clash"}, 400),
        ("PUT", "/admin/rooms/alice", {"nick": "clash"}, 400),
        ("PUT", "/admin/users/alice/buddies/ghost", {}, 404),
        ("PUT", "/admin/users/alice/buddies/alice", {}, 400),
        ("DELETE", "/admin/users/ghost", None, 404),
        ("PUT", "/admin/rooms/nowhere/members/alice", None, 404),
        ("POST", "/admin/broadcast", {"nick": "x"}, 400),
        ("POST", "/admin/users/ghost/notifications", {"text": "x"}, 404),
    ]
    for method, path, body, status in cases:
        resp = await daemon.admin(method, path, body)
        assert resp.status == status and resp.json["success"] is False, (method, path, resp.text)
    raw = await daemon.request("PUT", "/admin/users/x", headers={"Authorization": "Bearer " + API_KEY},
                               data=b"[1,2")
    assert raw.status == 400 and raw.json["error"] == "bad_json"


@pytest.mark.config(limits={"messages_per_minute": 10})
@inline
async def test_message_flood_is_rate_limited(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    statuses = []
    for i in range(8):
        resp = await daemon.call("message", ticket=a, type="unicast", to="bob", body=str(i))
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.json["error"] == "rate_limited"
    assert statuses[:5] == [200] * 5 and 429 in statuses
    assert await daemon.store.message_count() == statuses.count(200)
    daemon.clock.advance(7)   # one token per 6 s (and inside the session idle)
    assert (await daemon.call("message", ticket=a, type="unicast", to="bob", body="later")).status == 200


@pytest.mark.config(limits={"onlines_per_minute": 12})
@inline
async def test_online_flood_is_rate_limited(daemon):
    """Each online opens a session until idle: a flood of them gets 429 (docs/design.md#d15-limits), and the
    sessions already opened stay the only ones."""
    statuses = [(await daemon.call("online", user="alice")).status for _ in range(6)]
    assert statuses[:5] == [200] * 5 and statuses[5] == 429
    assert daemon.router.stats()["sessions"] == 5
    daemon.clock.advance(5)   # one token per 5 s
    assert (await daemon.call("online", user="alice")).status == 200


@pytest.mark.config(auth={"method": "accounts"})
@inline
async def test_accounts_login_cookie_and_csrf(daemon):
    """accounts auth (docs/design.md#d13-identity): login sets an HttpOnly SameSite cookie; the cookie
    alone may change state only by POST from the daemon's own origin."""
    from nextim_twisted.auth import hash_password
    await daemon.store.set_password_hash("alice", hash_password("s3cret"))
    own, evil = {"Origin": "http://127.0.0.1:8000"}, {"Origin": "http://evil.example"}
    wrong = await daemon.request("POST", "/webim/login", {"username": "alice", "password": "nope"}, headers=own)
    ghost = await daemon.request("POST", "/webim/login", {"username": "ghost", "password": "nope"}, headers=own)
    assert (wrong.status, wrong.json["error"]) == (401, "bad_credentials")
    assert ghost.json == wrong.json           # no hint which user names exist
    assert (await daemon.request("POST", "/webim/login", {"username": "alice", "password": "s3cret"},
                                 headers=evil)).status == 403
    assert (await daemon.request("GET", "/webim/login", {"username": "alice", "password": "s3cret"})).status == 403
    ok = await daemon.request("POST", "/webim/login", {"username": "alice", "password": "s3cret"}, headers=own)
    assert ok.status == 200 and ok.json["user"]["id"] == "alice"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    jar = {"nextim_session": value}
    assert (await daemon.request("POST", "/webim/online", {}, headers=evil, cookies=jar)).status == 403
    online = await daemon.request("POST", "/webim/online", {}, headers=own, cookies=jar)
    assert online.status == 200 and online.json["user"]["id"] == "alice"
    by_password = await daemon.call("online", username="alice", password="s3cret")
    assert by_password.status == 200
    tampered = {"nextim_session": value[:-2] + ("AA" if not value.endswith("AA") else "BB")}
    assert (await daemon.request("POST", "/webim/online", {}, headers=own, cookies=tampered)).status == 401
    out = await daemon.request("POST", "/webim/logout", {}, headers=own, cookies=jar)
    assert out.text == "ok" and "Max-Age=0" in out.headers["set-cookie"]
