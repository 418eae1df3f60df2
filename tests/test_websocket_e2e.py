"""End to end over the WebSocket transport (docs/protocol.md#websocket-transport): a real
``twistd nextim`` process, several users on sockets and one on the JSONP long poll in
one conversation, unicast and in a room. Each must receive what the others send exactly
once, and no sending session its own message back (docs/design.md#d7-messages).
Plain synchronous pytest, as tests/test_e2e.py; each socket has a reader thread."""
import json
import threading

import pytest

from tests.daemon import Daemon, PacketLog, SocketRejected, SocketTab, wait_until

SOCKET_USERS = ("alice", "bob", "carol")
POLL_USER = "dave"
EVERYONE = SOCKET_USERS + (POLL_USER,)


class JsonpTab(PacketLog):
    """A tab of the 2010 client: the JSONP long poll (``callback``) in a thread, with ``ack``."""

    def __init__(self, d, user_id, ticket):
        self.d, self.user_id, self.ticket = d, user_id, ticket
        self.client = d.client()
        self.cond = threading.Condition()
        self.packets, self.errors = [], []
        self.ended = None
        self.last_seq = 0
        self.closing = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        n = 0
        while not self.closing:
            n += 1
            callback = f"jsonp{n}"
            resp = self.client.get("/packets", {"ticket": self.ticket, "ack": self.last_seq, "callback": callback},
                                   timeout=15)
            if resp.status != 200:
                with self.cond:
                    self.ended = f"status {resp.status}"
                    self.cond.notify_all()
                return
            env = resp.jsonp(callback)
            if env.get("status") == "stopped":
                break
            with self.cond:
                for kind in ("messages", "presences", "statuses"):
                    for packet in env[kind]:
                        if packet["seq"] > self.last_seq:
                            self.packets.append((kind, packet))
                self.last_seq = env["seq"]
                self.cond.notify_all()
        with self.cond:
            self.ended = "stopped"
            self.cond.notify_all()

    def send(self, to, body, type_="unicast"):
        resp = self.client.post("/webim/message", {"ticket": self.ticket, "type": type_, "to": to, "body": body})
        assert resp.status == 200 and resp.body == b"ok", resp

    def close(self):
        self.closing = True
        self.client.post("/webim/offline", {"ticket": self.ticket})


@pytest.fixture(scope="module")
def daemon():
    with Daemon() as d:
        for uid in EVERYONE:
            assert d.admin("PUT", f"/admin/users/{uid}", {"nick": uid.title()}).status == 200
        assert d.admin("PUT", "/admin/rooms/lobby", {"nick": "Lobby"}).status == 200
        for uid in EVERYONE:
            assert d.admin("PUT", f"/admin/rooms/lobby/members/{uid}").status == 200
        yield d


def online(d, user_id):
    resp = d.client().post("/webim/online", {}, headers={"Authorization": "Bearer " + d.token(user_id)})
    assert resp.status == 200, resp
    return resp.json()


def test_socket_and_poll_users_each_get_every_message_once(daemon):
    d = daemon
    tabs = {}
    for uid in SOCKET_USERS:
        on = online(d, uid)
        assert on["connection"]["websocket"] == d.public_url.replace("http://", "ws://") + "/ws"
        tabs[uid] = SocketTab(d.base_url, "/ws", on["connection"]["ticket"], uid, ack=uid != "carol")
    tabs[POLL_USER] = JsonpTab(d, POLL_USER, online(d, POLL_USER)["connection"]["ticket"])
    # a second socket tab of alice: gets copies of what alice's first tab sends, and
    # the first tab never its own
    on = online(d, "alice")
    alice2 = SocketTab(d.base_url, "/ws", on["connection"]["ticket"], "alice")
    try:
        for sender in EVERYONE:
            for to in EVERYONE:
                if to != sender:
                    tabs[sender].send(to, f"{sender}>{to}")
            tabs[sender].send("lobby", f"{sender}@lobby", type_="multicast")
        for uid, tab in tabs.items():
            expected = sorted([f"{s}>{uid}" for s in EVERYONE if s != uid] +
                              [f"{s}@lobby" for s in EVERYONE if s != uid])
            wait_until(lambda tab=tab, expected=expected: len(tab.find("messages")) >= len(expected),
                       what=f"{uid}'s messages")
            # exactly once each, and none of the tab's own messages
            assert sorted(m["body"] for m in tab.find("messages")) == expected, uid
        # alice's second tab: what others sent her and everything alice's first tab sent
        others = [f"{s}>alice" for s in EVERYONE if s != "alice"] + [f"{s}@lobby" for s in EVERYONE if s != "alice"]
        mine = [f"alice>{t}" for t in EVERYONE if t != "alice"] + ["alice@lobby"]
        wait_until(lambda: len(alice2.find("messages")) >= len(others + mine), what="alice's second tab")
        assert sorted(m["body"] for m in alice2.find("messages")) == sorted(others + mine)
        # nothing more arrives (no duplicate was merely late): a last marker goes round
        tabs["bob"].send("alice", "last")
        tabs["alice"].wait_for("messages", body="last")
        assert len(tabs["alice"].find("messages", body="last")) == 1
        for tab in list(tabs.values()) + [alice2]:
            assert not tab.errors, (tab.user_id, tab.errors)
        # a typing status from a socket to the poll user
        reply = tabs["alice"].call("status", to=POLL_USER, show="typing")
        assert reply == {"reply": reply["reply"], "result": "ok"}
        tabs[POLL_USER].wait_for("statuses", from_="alice", show="typing")
    finally:
        for tab in list(tabs.values()) + [alice2]:
            tab.close()


def test_foreign_origin_is_refused_and_stats_count_sockets(daemon):
    d = daemon
    with pytest.raises(SocketRejected) as refused:
        SocketTab(d.base_url, "/ws", "t", "x", headers=[("Origin", "https://evil.example")])
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["error"] == "origin_not_allowed"
    on = online(d, "bob")
    tab = SocketTab(d.base_url, "/ws", on["connection"]["ticket"], "bob",
                    headers=[("Origin", d.public_url)])
    try:
        wait_until(lambda: d.admin("GET", "/admin/stats").json().get("websockets") == 1, what="the socket counted")
        assert d.admin("GET", "/admin/stats").json()["parked_polls"] >= 1
    finally:
        tab.close()


def test_sigterm_closes_sockets_1001():
    with Daemon() as d:
        assert d.admin("PUT", "/admin/users/erin", {"nick": "Erin"}).status == 200
        tab = SocketTab(d.base_url, "/ws", online(d, "erin")["connection"]["ticket"], "erin")
        wait_until(lambda: d.admin("GET", "/admin/stats").json().get("websockets") == 1, what="the socket")
        d.stop()  # SIGTERM; returns once the process has exited
        assert tab.wait_ended() == "closed 1001"
