"""End to end: a real ``twistd nextim`` process driven over HTTP.

Plain synchronous pytest (no reactor in this process): the daemon runs as a child
process (:mod:`tests.daemon`), each browser tab is a :class:`Tab` whose long-poll
loop runs in a worker thread and uses the ``ack`` protocol (docs/design.md#d6-comet-envelope). Timers are short
(poll hold 3 s, session idle 3 s, user grace 2 s), and every wait is a poll for a
condition with a deadline.
"""
import concurrent.futures
import json
import secrets
import threading
import time

import jwt
import pytest

from tests.daemon import Daemon, PacketLog, wait_until
from tests.storefixtures import POSTGRES_DSN, STORE_KINDS, _drop_schema, skip_unless_enabled

POLL_TIMEOUT = 15  # client-side socket timeout of one poll (hold is 3 s)


# -- helpers ------------------------------------------------------------------------

def bearer(d, user_id, nick=None):
    return {"Authorization": "Bearer " + d.token(user_id, nick)}


def assert_envelope(value, code=None):
    """The error envelope."""
    assert isinstance(value, dict), value
    assert value.get("success") is False, value
    assert isinstance(value.get("error"), str) and value["error"], value
    assert isinstance(value.get("error_msg"), str) and value["error_msg"], value
    if code is not None:
        assert value["error"] == code, value


def assert_ok(resp):
    assert resp.status == 200, resp
    assert resp.body == b"ok", resp
    assert resp.content_type == "text/plain", resp


def assert_error(resp, status, code=None):
    assert resp.status == status, resp
    assert resp.content_type == "application/json", resp
    assert_envelope(resp.json(), code)


class Tab(PacketLog):
    """One browser tab: ``webim/online`` → ticket, then a long-poll loop in a thread.

    Every packet received is kept in :attr:`packets` as ``(kind, packet)`` in ``seq``
    order. The loop checks docs/design.md#d6-comet-envelope: packets of a session are numbered 1, 2, 3 … with no
    gap or repeat across polls, and the envelope's ``seq`` is the last one in it.
    """

    def __init__(self, d, executor, user_id, nick=None, auth="bearer", params=None):
        self.d = d
        self.executor = executor
        self.user_id = user_id
        self.client = d.client()
        data = dict(params or {})
        headers = {}
        if auth == "bearer":
            headers = bearer(d, user_id, nick)
        elif auth == "param":
            data["token"] = d.token(user_id, nick)
        resp = self.client.post("/webim/online", data, headers=headers)
        assert resp.status == 200, resp
        assert resp.content_type == "application/json", resp
        self.online = resp.json()
        assert self.online.get("success") is True, self.online
        self.ticket = self.online["connection"]["ticket"]
        self.packets = []
        self.envelopes = 0
        self.errors = []
        self.last_seq = 0
        self.ended = None
        self.closing = False
        self.cond = threading.Condition()
        self.future = None

    # -- the poll loop --
    def start(self):
        self.future = self.executor.submit(self._loop)
        return self

    def _loop(self):
        try:
            while not self.closing:
                resp = self.client.get("/packets", {"ticket": self.ticket, "ack": self.last_seq},
                                       timeout=POLL_TIMEOUT)
                if resp.status == 404:
                    return self._end("404")
                if resp.status != 200:
                    return self._end(f"error: {resp!r}")
                env = resp.json()
                if env.get("status") == "stopped":
                    return self._end("stopped")
                self._take(env)
        except Exception as e:  # noqa: BLE001 - reported by check()
            self._end(f"error: {e!r}")

    def _take(self, env):
        with self.cond:
            self.envelopes += 1
            if env.get("status") != "ok" or not all(isinstance(env.get(k), list)
                                                    for k in ("messages", "presences", "statuses")):
                self.errors.append(f"bad envelope {env!r}")
            got = sorted(((p.get("seq"), kind, p) for kind in ("messages", "presences", "statuses")
                          for p in env.get(kind, [])), key=lambda t: t[0] or 0)
            for seq, kind, packet in got:
                if seq != self.last_seq + 1:
                    self.errors.append(f"seq {seq} after {self.last_seq}: {packet!r}")
                self.last_seq = seq if isinstance(seq, int) else self.last_seq
                self.packets.append((kind, packet))
            if env.get("seq") != self.last_seq:
                self.errors.append(f"envelope seq {env.get('seq')} but last packet seq {self.last_seq}")
            self.cond.notify_all()

    def _end(self, reason):
        with self.cond:
            self.ended = reason
            self.cond.notify_all()

    # -- calls with this tab's ticket --
    def call(self, name, **params):
        return self.client.post("/webim/" + name, dict(params, ticket=self.ticket))

    def send(self, to, body, type_="unicast", **extra):
        resp = self.call("message", type=type_, to=to, body=body, **extra)
        assert_ok(resp)

    def close(self):
        """``webim/offline`` for this tab; the loop ends on the ``stopped`` answer."""
        self.closing = True
        if self.ended is None:
            self.call("offline")


@pytest.fixture(scope="module", params=STORE_KINDS)
def daemon(request):
    """A real ``twistd nextim`` on SQLite, then the same on PostgreSQL (an operator may pick either: the same
    conversation must pass on both), each in its own database/schema."""
    skip_unless_enabled(request.param)
    overrides = None
    schema = None
    if request.param == "postgres":
        schema = "nextim_e2e_" + secrets.token_hex(6)
        overrides = {"storage": {"backend": "postgres", "dsn": POSTGRES_DSN, "schema": schema,
                                 "path": None}}
    d = Daemon(overrides)
    d.start()
    yield d
    d.stop()
    d.cleanup()
    if schema is not None:
        _drop_schema(schema)


@pytest.fixture
def tabs(daemon):
    """Factory of started tabs; closes them and checks their seq bookkeeping at the end."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    opened = []

    def open_tab(user_id, nick=None, start=True, **kw):
        tab = Tab(daemon, executor, user_id, nick, **kw)
        opened.append(tab)
        return tab.start() if start else tab

    yield open_tab
    for tab in opened:
        try:
            tab.close()
        except OSError:
            pass
    executor.shutdown(wait=True, cancel_futures=True)
    for tab in opened:
        tab.check()


def admin_ok(d, method, path, body=None):
    resp = d.admin(method, path, body)
    assert resp.status == 200, (method, path, resp)
    assert resp.json().get("success") is True, resp
    return resp


def make_users(d, *users, rooms=None, buddies=()):
    """``users``: ``(id, nick)``; ``buddies``: pairs; ``rooms``: ``{room: [member ids]}``."""
    for user_id, nick in users:
        admin_ok(d, "PUT", f"/admin/users/{user_id}", {"nick": nick})
    for a, b in buddies:
        admin_ok(d, "PUT", f"/admin/users/{a}/buddies/{b}", {"group": "friends"})
    for room, members in (rooms or {}).items():
        admin_ok(d, "PUT", f"/admin/rooms/{room}", {"nick": room.title()})
        for member in members:
            admin_ok(d, "PUT", f"/admin/rooms/{room}/members/{member}")


def bodies(items, **fields):
    return [m["body"] for m in items if all(m.get(k.rstrip("_")) == v for k, v in fields.items())]


# -- the whole product scenario ---------------------------------------------------------

def test_three_users_chat_end_to_end(daemon, tabs):
    d = daemon
    make_users(d, ("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"),
               buddies=[("alice", "bob"), ("alice", "carol"), ("bob", "carol")],
               rooms={"lobby": ["alice", "bob", "carol"], "staff": ["alice"]})

    # -- online, with the three ways of carrying a token --------------------------------
    a1 = tabs("alice", "Alice")
    on = a1.online
    assert on["user"]["id"] == "alice" and on["user"]["nick"] == "Alice"
    assert on["connection"]["domain"] == "test.local"
    assert on["connection"]["server"] == d.public_url + "/packets"
    assert len(a1.ticket) >= 22  # >= 128 bits, url-safe (docs/design.md#d4-tickets)
    assert isinstance(on["server_time"], int)
    assert {b["id"]: b["presence"] for b in on["buddies"]} == {"bob": "offline", "carol": "offline"}
    assert [r["id"] for r in on["rooms"]] == ["lobby", "staff"]
    assert on["new_messages"] == [] and on["setting"] == {} and on["presences"] == {}

    b1 = tabs("bob", "Bob", auth="param")
    assert b1.online["presences"] == {"alice": "available"}
    assert {b["id"]: b["presence"] for b in b1.online["buddies"]} == {"alice": "online", "carol": "offline"}
    assert [r["id"] for r in b1.online["rooms"]] == ["lobby"]
    a1.wait_for("presences", type="online", from_="bob", to="alice", show="available")

    c1 = tabs("carol", "Carol")
    assert c1.online["presences"] == {"alice": "available", "bob": "available"}
    lobby = [r for r in c1.online["rooms"] if r["id"] == "lobby"][0]
    assert lobby["count"] == 3 and lobby["blocked"] is False
    a1.wait_for("presences", type="online", from_="carol")
    b1.wait_for("presences", type="online", from_="carol", to="bob")

    # -- unicast: once, in order, server-stamped; not echoed to the sending tab ---------
    before = int(time.time() * 1000) - 5000
    for body in ("m1", "m2 ünïcødé ✓ 😀 \u2028 <b>&amp;</b>", "m3"):
        a1.send("bob", body, **{"from": "mallory", "nick": "Mallory", "timestamp": "1", "offline": "true"})
    b1.wait_for("messages", body="m3")
    got = b1.find("messages", from_="alice")
    assert bodies(got) == ["m1", "m2 ünïcødé ✓ 😀 \u2028 <b>&amp;</b>", "m3"], got
    for m in got:
        assert m["type"] == "unicast" and m["to"] == "bob" and m["nick"] == "Alice", m
        assert isinstance(m["timestamp"], int) and m["timestamp"] > before, m
        assert isinstance(m["seq"], int), m
    assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)

    # A second tab of alice: no new `online` presence; it gets copies of what tab 1 sends.
    a2 = tabs("alice", "Alice")
    assert a2.ticket != a1.ticket
    assert a2.online["presences"] == {"bob": "available", "carol": "available"}
    a1.send("bob", "m4")
    b1.wait_for("messages", body="m4", from_="alice")
    a2.wait_for("messages", body="m4", from_="alice", to="bob")
    # Barrier: bob's reply comes after m4 in each of alice's session queues.
    b1.send("alice", "r1")
    a1.wait_for("messages", body="r1", from_="bob")
    a2.wait_for("messages", body="r1", from_="bob")
    assert a1.find("messages", from_="alice") == [], "the sending tab got its own message back"
    assert bodies(a2.find("messages")) == ["m4", "r1"]
    for m in got + b1.find("messages", body="m4"):
        assert len(b1.find("messages", body=m["body"])) == 1, (m, b1.packets)
    assert len(b1.find("presences", from_="alice", type="online")) == 0  # alice was first
    assert len(c1.find("presences", from_="alice")) == 0  # no flap when alice opened tab 2

    # -- typing ---------------------------------------------------------------------------
    assert_ok(b1.call("status", to="alice", show="typing"))
    for tab in (a1, a2):
        s = tab.wait_for("statuses", from_="bob", show="typing")
        assert s["to"] == "alice" and s["nick"] == "Bob", s
    assert_ok(b1.call("status", to="alice", show="clear"))
    a1.wait_for("statuses", from_="bob", show="clear")

    # -- show / status changes, invisible ---------------------------------------------------
    ma, mc = a1.mark(), c1.mark()
    assert_ok(b1.call("presence", show="away", status="lunch"))
    for tab, mark in ((a1, ma), (c1, mc)):
        p = tab.wait_for("presences", since=mark, from_="bob", type="show")
        assert p["show"] == "away" and p["status"] == "lunch" and p["nick"] == "Bob", p
    ma, mc = a1.mark(), c1.mark()
    assert_ok(b1.call("presence", show="invisible"))
    for tab, mark in ((a1, ma), (c1, mc)):
        p = tab.wait_for("presences", since=mark, from_="bob")
        assert p["type"] == "offline" and p["show"] == "unavailable", p
    resp = c1.client.get("/webim/buddies", {"ids": "bob,alice"}, headers=bearer(d, "carol"))
    assert resp.status == 200, resp
    seen = {b["id"]: (b["presence"], b["show"]) for b in resp.json()}
    assert seen == {"bob": ("offline", "unavailable"), "alice": ("online", "available")}, seen
    ma = a1.mark()
    assert_ok(b1.call("presence", show="available"))
    p = a1.wait_for("presences", since=ma, from_="bob")
    assert p["type"] == "online" and p["show"] == "available", p

    # -- room chat ----------------------------------------------------------------------------
    mb = b1.mark()
    c1.send("lobby", "hello room", type_="multicast")
    for tab in (a1, a2, b1):
        m = tab.wait_for("messages", body="hello room")
        assert m["type"] == "multicast" and m["from"] == "carol" and m["to"] == "lobby", m
    c1.send("lobby", "grpchat alias", type_="grpchat")
    b1.wait_for("messages", body="grpchat alias", type="multicast")
    a1.send("carol", "barrier-c")
    c1.wait_for("messages", body="barrier-c")
    assert c1.find("messages", from_="carol") == [], "the sending tab got its own room message"
    assert b1.find("messages", from_="bob") == [], "the sending tab got its own message back"
    assert [m["body"] for m in b1.find("messages", since=mb)] == ["hello room", "grpchat alias"]
    assert_error(b1.call("message", type="multicast", to="staff", body="x"), 403)
    assert_error(b1.call("message", type="multicast", to="nosuchroom", body="x"), 404)
    assert_error(b1.call("message", type="unicast", to="nosuchuser", body="x"), 404)
    assert_error(b1.call("message", type="unicast", to="alice", body=""), 400)

    # -- history and clear_history (per side) --------------------------------------------------
    def history(tab, other, type_="unicast"):
        resp = tab.client.get("/webim/history", {"id": other, "type": type_}, headers=bearer(d, tab.user_id))
        assert resp.status == 200, resp
        return resp.json()

    expected = ["m1", "m2 ünïcødé ✓ 😀 \u2028 <b>&amp;</b>", "m3", "m4", "r1"]
    hb = history(b1, "alice")
    assert bodies(hb) == expected, hb
    assert all(set(h) >= {"type", "from", "to", "nick", "body", "style", "timestamp"} for h in hb)
    assert [h["timestamp"] for h in hb] == sorted(h["timestamp"] for h in hb)
    assert bodies(history(a1, "bob")) == expected
    assert bodies(history(a1, "lobby", "multicast")) == ["hello room", "grpchat alias"]
    resp = b1.client.get("/webim/history", {"id": "staff", "type": "multicast"}, headers=bearer(d, "bob"))
    assert_error(resp, 403)
    assert_ok(b1.client.post("/webim/clear_history", {"id": "alice", "type": "unicast"},
                             headers=bearer(d, "bob")))
    assert history(b1, "alice") == []
    assert bodies(history(a1, "bob")) == expected  # alice's side is untouched

    # -- settings -------------------------------------------------------------------------------
    setting = {"play_sound": False, "buddy_sticky": True, "blocked_rooms": [], "note": "é ✓"}
    assert_ok(a1.call("setting", data=json.dumps(setting)))
    resp = a1.call("setting")
    assert resp.status == 200 and resp.json() == setting, resp
    assert_error(a1.call("setting", data="[1, 2]"), 400)
    assert_error(a1.call("setting", data="{not json"), 400)

    # -- carol goes offline; messages meanwhile wait for her next online -------------------------
    ma, mb = a1.mark(), b1.mark()
    t0 = time.monotonic()
    assert_ok(c1.call("offline"))
    c1.closing = True
    assert c1.wait_ended() == "stopped"
    b1.send("carol", "while away 1")  # inside the grace: carol has no session
    for tab, mark in ((a1, ma), (b1, mb)):
        p = tab.wait_for("presences", since=mark, from_="carol", timeout=10)
        assert p["type"] == "offline" and p["show"] == "unavailable", p
    assert time.monotonic() - t0 >= 1.5, "offline presence came before user_grace (2 s)"
    b1.send("carol", "while away 2")
    resp = c1.client.get("/packets", {"ticket": c1.ticket})
    assert_error(resp, 404)

    ma = a1.mark()
    c2 = tabs("carol", "Carol")
    nm = c2.online["new_messages"]
    assert bodies(nm) == ["while away 1", "while away 2"], nm
    assert all(m["from"] == "bob" and m["to"] == "carol" and m["type"] == "unicast" for m in nm), nm
    bob_entry = [b for b in c2.online["buddies"] if b["id"] == "bob"][0]
    assert bob_entry["presence"] == "online"
    assert "while away 1" not in bodies(bob_entry.get("history", [])), "new message repeated in history"
    a1.wait_for("presences", since=ma, from_="carol", type="online")
    c3 = tabs("carol", "Carol", start=False)
    assert c3.online["new_messages"] == [], "new_messages delivered twice"
    assert_ok(c3.call("offline"))
    assert bodies(history(c2, "bob"))[-2:] == ["while away 1", "while away 2"]

    # -- the saved settings come back in `online` --------------------------------------------------
    a3 = tabs("alice", "Alice", start=False)
    assert a3.online["setting"] == setting
    assert_ok(a3.call("refresh"))

    # -- still consistent at the end -------------------------------------------------------------
    for tab in (a1, a2, b1, c2):
        assert tab.ended is None, (tab.user_id, tab.ended)
        tab.check()


# -- JSONP and the edges of the protocol -------------------------------------------------------

def test_jsonp_mode(daemon, tabs):
    d = daemon
    make_users(d, ("dave", "Dave"), ("erin", "Erin"), buddies=[("dave", "erin")])
    c = d.client()
    erin = tabs("erin", "Erin")

    # online as a JSONP GET with the token as a parameter (a browser <script>). Dave never
    # runs a poll loop: everything below must stay within session_idle (3 s) of the last poll.
    resp = c.get("/webim/online", {"token": d.token("dave", "Dave"), "callback": "cb"})
    assert resp.status == 200 and resp.content_type == "application/javascript", resp
    assert resp.headers.get("x-content-type-options") == "nosniff"
    assert resp.headers.get("cache-control") == "no-store"
    on = resp.jsonp("cb")
    assert on["success"] is True and on["user"]["id"] == "dave"
    dave_ticket = on["connection"]["ticket"]

    erin.wait_for("presences", type="online", from_="dave")

    # A write as a JSONP GET answers cb("ok").
    resp = c.get("/webim/message", {"ticket": dave_ticket, "type": "unicast", "to": "erin",
                                    "body": "via jsonp", "callback": "jQuery17_1.cb"})
    assert resp.status == 200 and resp.content_type == "application/javascript", resp
    assert resp.body == b'/**/jQuery17_1.cb("ok");'
    erin.wait_for("messages", body="via jsonp", from_="dave")

    # Errors are status 200 with the error envelope under JSONP.
    resp = c.get("/webim/message", {"ticket": dave_ticket, "type": "unicast", "to": "erin", "callback": "cb"})
    assert resp.status == 200 and resp.content_type == "application/javascript", resp
    assert_envelope(resp.jsonp("cb"), "missing_parameter")
    resp = c.get("/webim/online", {"callback": "cb"})
    assert resp.status == 200, resp
    assert_envelope(resp.jsonp("cb"), "not_authenticated")
    resp = c.get("/webim/message", {"ticket": dave_ticket, "type": "unicast", "to": "nobody",
                                    "body": "x", "callback": "cb"})
    assert resp.status == 200, resp
    assert_envelope(resp.jsonp("cb"))
    resp = c.get("/webim/no_such_endpoint", {"callback": "cb"})
    assert resp.status == 200, resp
    assert_envelope(resp.jsonp("cb"))

    # Reads: history and setting.
    resp = c.get("/webim/history", {"ticket": dave_ticket, "id": "erin", "type": "unicast", "callback": "cb"})
    assert resp.status == 200 and bodies(resp.jsonp("cb")) == ["via jsonp"], resp
    resp = c.get("/webim/setting", {"ticket": dave_ticket, "data": '{"play_sound":true}', "callback": "cb"})
    assert resp.body == b'/**/cb("ok");', resp
    resp = c.get("/webim/setting", {"ticket": dave_ticket, "callback": "cb"})
    assert resp.jsonp("cb") == {"play_sound": True}

    # The long poll under JSONP (the 1.0.x client always polls this way).
    erin.send("dave", "to dave")
    resp = c.get("/packets", {"ticket": dave_ticket, "domain": "test.local", "callback": "jsonp1", "ack": 0})
    assert resp.status == 200 and resp.content_type == "application/javascript", resp
    env = resp.jsonp("jsonp1")
    assert env["status"] == "ok" and set(env) >= {"messages", "presences", "statuses", "seq"}, env
    assert bodies(env["messages"]) == ["to dave"], env
    seqs = sorted(p["seq"] for k in ("messages", "presences", "statuses") for p in env[k])
    assert seqs == list(range(1, len(seqs) + 1)) and env["seq"] == seqs[-1], env
    # docs/design.md#d6-comet-envelope: without acking, a retry gets the same packets again; acking drops them.
    again = c.get("/packets", {"ticket": dave_ticket, "callback": "jsonp2", "ack": 0}).jsonp("jsonp2")
    assert again["messages"] == env["messages"] and again["seq"] == env["seq"], again
    erin.send("dave", "second")
    after = c.get("/packets", {"ticket": dave_ticket, "callback": "jsonp3", "ack": env["seq"]}).jsonp("jsonp3")
    assert bodies(after["messages"]) == ["second"] and after["messages"][0]["seq"] == env["seq"] + 1, after
    assert_ok(c.post("/webim/offline", {"ticket": dave_ticket}))


def test_invisible_online_and_request_limits(daemon, tabs):
    d = daemon
    make_users(d, ("ivy", "Ivy"), ("jack", "Jack"), buddies=[("ivy", "jack")])
    jack = tabs("jack", "Jack")
    ivy = tabs("ivy", "Ivy", params={"show": "invisible"})
    assert ivy.online["user"]["show"] == "invisible"
    assert ivy.online["presences"] == {"jack": "available"}
    resp = jack.client.get("/webim/buddies", {"ids": "ivy"}, headers=bearer(d, "jack"))
    assert [(b["presence"], b["show"]) for b in resp.json()] == [("offline", "unavailable")], resp
    assert_ok(ivy.call("presence", show="busy"))  # legacy spelling of dnd (docs/design.md#d8-presence)
    p = jack.wait_for("presences", from_="ivy")
    assert p["type"] == "online" and p["show"] == "dnd", p  # invisible -> visible = `online`
    assert jack.find("presences", from_="ivy") == [p]  # nothing while she was invisible

    c = d.client()
    assert_error(ivy.call("presence", show="bogus"), 400)
    assert_error(ivy.call("message", type="broadcast", to="jack", body="x"), 403)
    assert_error(ivy.call("message", type="unicast", to="jack", body="x" * 10001), 413)
    assert_error(ivy.call("message", type="unicast", to="jack", body="x" * 50000), 413)
    assert_error(c.post("/webim/message", {"ticket": jack.ticket, "type": "unicast", "to": "ivy", "body": "x"},
                        headers=bearer(d, "ivy")), 403)  # jack's ticket with ivy's token
    assert_error(c.post("/webim/offline", {}, headers=bearer(d, "ivy")), 400)  # no ticket
    assert_error(c.request("PUT", "/webim/online", headers=bearer(d, "ivy")), 405)
    assert_error(c.request("DELETE", "/packets"), 405)

    # Seed-literal configs poll the bare server URL (docs/protocol.md#a3-the-poll-url); a second tab of ivy does.
    ivy2 = tabs("ivy", "Ivy", start=False)
    jack.send("ivy", "to both tabs")
    resp = c.get("/", {"ticket": ivy2.ticket, "callback": "cb", "ack": 0})
    assert resp.status == 200 and resp.content_type == "application/javascript", resp
    assert bodies(resp.jsonp("cb")["messages"]) == ["to both tabs"], resp
    ivy.wait_for("messages", body="to both tabs")

    m, t0 = jack.mark(), time.monotonic()
    assert_ok(ivy2.call("offline"))
    assert_ok(ivy.call("refresh"))
    ivy.closing = True
    assert ivy.wait_ended() == "stopped"
    # Closing tabs inside the grace: no presence yet, `offline` after it.
    p = jack.wait_for("presences", since=m, from_="ivy")
    assert p["type"] == "offline", p
    assert time.monotonic() - t0 >= 1.5, "offline presence came before user_grace (2 s)"


def test_unknown_ticket_poll_is_404_in_both_modes(daemon):
    c = daemon.client()
    for params in ({"ticket": "no-such-ticket"}, {"ticket": "no-such-ticket", "callback": "cb"}, {},
                   {"ticket": "no-such-ticket", "callback": "cb", "ack": "3"}):
        resp = c.get("/packets", params)
        assert resp.status == 404, (params, resp)
        assert_envelope(json.loads(resp.body))


def test_bad_callback_is_400(daemon):
    c = daemon.client()
    for cb in ("alert(1)", "a-b", "1abc", "cb;x", "a..b", "x" * 129, "<script>"):
        for path, params in (("/webim/online", {}), ("/packets", {"ticket": "t"}),
                             ("/webim/history", {"id": "x"})):
            resp = c.get(path, dict(params, callback=cb))
            assert resp.status == 400, (path, cb, resp)
            assert resp.content_type == "application/json", resp
            assert_envelope(resp.json(), "bad_callback")
    resp = c.get("/webim/online", {"callback": "a" * 128})
    assert resp.status == 200, resp  # 128 characters is allowed: a JSONP error answer


def test_token_and_admin_refusals(daemon):
    d = daemon
    c = d.client()
    now = int(time.time())
    bad = {
        "wrong secret": jwt.encode({"sub": "alice", "exp": now + 60}, "x" * 32, algorithm="HS256"),
        "expired": jwt.encode({"sub": "alice", "exp": now - 60}, d.secret, algorithm="HS256"),
        "no sub": jwt.encode({"nick": "A", "exp": now + 60}, d.secret, algorithm="HS256"),
        "empty sub": jwt.encode({"sub": "", "exp": now + 60}, d.secret, algorithm="HS256"),
        "alg none": jwt.encode({"sub": "alice"}, None, algorithm="none"),
        "garbage": "not.a.token",
    }
    for why, token in bad.items():
        resp = c.post("/webim/online", {}, headers={"Authorization": "Bearer " + token})
        assert resp.status == 401, (why, resp)
        assert_envelope(resp.json())
    resp = d.admin("PUT", "/admin/users/zed", {"nick": "Zed"}, key="wrong-key-" * 4)
    assert_error(resp, 401)
    resp = d.admin("PUT", "/admin/users/zed", {})
    assert_error(resp, 400)
    resp = c.get("/no/such/path")
    assert_error(resp, 404)


# -- shutdown and restart (own daemon) ----------------------------------------------------------

def test_sigterm_answers_parked_poll_and_restart_keeps_history():
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    d = Daemon()
    try:
        d.start()
        # Not buddies, and yuri is offline while xena writes: nothing but the parked poll
        # ties the two sessions, so no presence (e.g. xena's session idling out) can
        # reach yuri's queue however slow the machine is.
        make_users(d, ("xena", "Xena"), ("yuri", "Yuri"))
        c = d.client()
        x = c.post("/webim/online", {}, headers=bearer(d, "xena", "Xena")).json()
        xt = x["connection"]["ticket"]
        for body in ("before stop 1", "before stop 2"):
            assert_ok(c.post("/webim/message", {"ticket": xt, "type": "unicast", "to": "yuri", "body": body}))
        y = c.post("/webim/online", {}, headers=bearer(d, "yuri", "Yuri")).json()
        yt = y["connection"]["ticket"]
        assert bodies(y["new_messages"]) == ["before stop 1", "before stop 2"], y
        parked = executor.submit(c.get, "/packets", {"ticket": yt, "ack": 0}, timeout=POLL_TIMEOUT)
        wait_until(lambda: d.admin("GET", "/admin/stats").json().get("parked_polls") == 1,
                   what="the poll to be parked")

        t0 = time.monotonic()
        d.stop()  # SIGTERM; returns once the process has exited
        resp = parked.result(timeout=5)
        assert resp.status == 200, resp
        body = resp.json()
        assert body["status"] == "ok", body
        assert body["messages"] == [] and body["presences"] == [] and body["statuses"] == [], body
        assert time.monotonic() - t0 < 3, "the parked poll was not answered promptly at shutdown"

        d.start()
        for ticket in (xt, yt):
            assert_error(c.get("/packets", {"ticket": ticket}), 404)
            assert_error(c.get("/packets", {"ticket": ticket, "callback": "cb"}), 404)
        hist = c.get("/webim/history", {"id": "xena"}, headers=bearer(d, "yuri")).json()
        assert bodies(hist) == ["before stop 1", "before stop 2"], hist

        # A crash right after `ok` loses nothing either (committed before ok, docs/design.md#d7-messages).
        x = c.post("/webim/online", {}, headers=bearer(d, "xena", "Xena")).json()
        assert_ok(c.post("/webim/message", {"ticket": x["connection"]["ticket"], "type": "unicast",
                                            "to": "yuri", "body": "before crash"}))
        d.kill9()
        d.start()
        hist = c.get("/webim/history", {"id": "yuri"}, headers=bearer(d, "xena")).json()
        assert bodies(hist) == ["before stop 1", "before stop 2", "before crash"], hist
        # yuri was offline when it was sent: it waits for yuri's next online.
        y = c.post("/webim/online", {}, headers=bearer(d, "yuri", "Yuri")).json()
        assert bodies(y["new_messages"]) == ["before crash"], y["new_messages"]
        d.restart()
        hist = c.get("/webim/history", {"id": "xena"}, headers=bearer(d, "yuri")).json()
        assert bodies(hist) == ["before stop 1", "before stop 2", "before crash"], hist
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        d.stop()
        d.cleanup()
