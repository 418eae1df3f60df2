"""Several real ``twistd nextim`` nodes on loopback over one PostgreSQL schema and a
private Redis (tests/cluster.py): what users on different nodes see of each other
(docs/scaling.md, docs/design.md#d20-cluster).

Timers are short (poll hold 3 s, session idle 3 s, user grace 2 s, node timeout 3 s);
every wait is a poll for a condition with a deadline.
"""
import os
import subprocess
import sys
import threading
import time

import pytest

from nextim_twisted.handlers.directory_changes import POLL_INTERVAL
from tests.cluster import Cluster
from tests.daemon import REPO_ROOT, Daemon, DaemonError, SocketTab, to_toml, wait_until


@pytest.fixture(params=["direct", "nginx"])
def two(request, tmp_path):
    """Two nodes; ``nginx``: behind a real nginx with etc/nginx-nextim-cluster.conf, so
    polls go through its /n/<id>/ routes and every other call to any node (least_conn)."""
    with Cluster(2, nginx=request.param == "nginx", tmp_path=tmp_path) as c:
        c.users("alice", "bob", "carol", buddies=[("alice", "bob"), ("alice", "carol")],
                rooms=[("lobby", ["alice", "bob", "carol"])])
        yield c


def offline_packets(tab, user_id, since=0):
    return tab.find("presences", since, from_=user_id, type="offline")


def test_users_on_two_nodes_chat_and_see_each_other(two):
    a = two.tab(0, "alice")
    assert a.node_id == "n1" and a.ticket.startswith("n1.") and len(a.ticket) > 3 + 22
    assert a.online["connection"]["server"] == two.nodes[0].public_url + "/n/n1/packets"
    b = two.tab(1, "bob")
    assert b.node_id == "n2"
    # bob's online on n2 announced him to alice on n1, and his online answer saw her
    a.wait_for("presences", from_="bob", type="online")
    assert {x["id"]: x["presence"] for x in b.online["buddies"]}["alice"] == "online"
    lobby = {r["id"]: r for r in b.online["rooms"]}["lobby"]
    assert lobby["count"] == 2  # alice (n1) and bob (n2)
    # unicast both ways, typing, room
    a.send("bob", "hi bob")
    b.wait_for("messages", body="hi bob", from_="alice", type="unicast")
    b.send("alice", "hi alice")
    a.wait_for("messages", body="hi alice", from_="bob")
    assert b.call("status", to="alice", show="typing").status == 200
    a.wait_for("statuses", from_="bob", show="typing")
    a.send("lobby", "hello room", type_="multicast")
    b.wait_for("messages", body="hello room", to="lobby")
    members = b.call("members", id="lobby").json()
    assert [m["id"] for m in members] == ["alice", "bob"]
    # presence changes cross nodes once; invisible is offline for others
    assert a.call("presence", show="away", status="lunch").status == 200
    b.wait_for("presences", from_="alice", type="show", show="away")
    mark = b.mark()
    assert a.call("presence", show="invisible").status == 200
    b.wait_for("presences", since=mark, from_="alice", type="offline")
    assert [m["id"] for m in b.call("members", id="lobby").json()] == ["bob"]
    buddies = b.call("buddies", ids="alice").json()
    assert buddies[0]["presence"] == "offline"
    a.call("presence", show="available")
    b.wait_for("presences", since=mark, from_="alice", type="online")
    # nothing arrived twice, and never back to the sending tab
    time.sleep(0.3)
    assert len(b.find("messages", body="hi bob")) == 1
    assert a.find("messages", body="hi bob") == [] and a.find("messages", body="hello room") == []
    assert len(b.find("presences", from_="alice", type="show", show="away")) == 1
    a.check()
    b.check()


def test_a_websocket_on_one_node_gets_what_a_user_on_the_other_sends(two):
    """docs/protocol.md#websocket-transport in a cluster: the socket lives on its owner node
    (connection.websocket names it), its calls run there, and another node's socket path
    is 404 without an upgrade."""
    on = two.nodes[0].client().post("/webim/online", {}, headers={
        "Authorization": "Bearer " + two.token("alice", "Alice")}).json()
    ws_url = on["connection"]["websocket"]
    assert ws_url == two.nodes[0].public_url.replace("http://", "ws://") + "/n/n1/ws"
    b = two.tab(1, "bob")
    sock = SocketTab(ws_url.replace("ws://", "http://").rsplit("/n/", 1)[0], "/n/n1/ws",
                     on["connection"]["ticket"], "alice")
    try:
        sock.wait_for("presences", from_="bob", type="online")
        b.send("alice", "from n2")
        assert sock.wait_for("messages", body="from n2")["from"] == "bob"
        assert sock.call("message", type="unicast", to="bob", body="from the socket on n1")["result"] == "ok"
        b.wait_for("messages", body="from the socket on n1", from_="alice")
        sock.send("lobby", "room from n1", type_="multicast")
        b.wait_for("messages", body="room from n1", to="lobby")
        time.sleep(0.3)
        assert sock.find("messages", from_="alice") == []  # never back to the sending session
        assert len(b.find("messages", body="from the socket on n1")) == 1
        assert not sock.errors
    finally:
        sock.close()
    # n1 serves only its own socket path: n2's is the 404 envelope, with no upgrade
    resp = two.nodes[0].client().get("/n/n2/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 404 and resp.json()["error"] == "invalid_ticket", resp
    assert two.nodes[0].client().get("/ws").status == 404  # no single-node path in a cluster
    # a ticket of n2 subscribed on n1's socket: unknown here (4404)
    stray = SocketTab(two.nodes[0].base_url, "/n/n1/ws", b.ticket, "bob")
    assert stray.wait_ended() == "closed 4404"
    b.check()


def test_a_message_to_a_user_live_on_another_node_is_delivered_not_kept(two):
    b = two.tab(1, "bob")
    a = two.tab(0, "alice")
    a.send("bob", "live one")
    b.wait_for("messages", body="live one")
    # a later online of bob (another tab, on n1) does not get it again as new
    again = two.tab(0, "bob")
    assert [m["body"] for m in again.online["new_messages"]] == []
    # while bob is offline everywhere, a message is kept for his next online
    b.close()
    again.close()
    wait_until(lambda: a.find("presences", from_="bob", type="offline"), timeout=10, what="bob offline")
    a.send("bob", "kept")
    later = two.tab(1, "bob")
    assert [m["body"] for m in later.online["new_messages"]] == ["kept"]


def test_a_reload_onto_another_node_does_not_flap(two):
    a = two.tab(0, "alice")
    b = two.tab(0, "bob")
    a.wait_for("presences", from_="bob", type="online")
    mark = a.mark()
    b.close()                      # the page unloads on n1 ...
    b2 = two.tab(1, "bob")         # ... and reloads onto n2 inside the grace
    time.sleep(3.5)                # past n1's grace (2 s)
    assert a.find("presences", mark, from_="bob") == []
    assert b2.call("members", id="lobby").json()[1]["id"] == "bob"
    b2.close()
    a.wait_for("presences", mark, from_="bob", type="offline", timeout=10)
    time.sleep(0.5)
    assert len(offline_packets(a, "bob", mark)) == 1


def test_calls_with_a_ticket_from_another_node(two):
    a = two.tab(0, "alice")
    a2 = two.tab(1, "alice")   # alice's second tab, on n2
    b = two.tab(1, "bob")
    # alice's n1 ticket, sent to n2: run by n1, so never back to the sending tab
    a.send("bob", "via n2", via=1)
    b.wait_for("messages", body="via n2")
    a2.wait_for("messages", body="via n2")  # her other tab gets the copy
    assert a.call("presence", show="dnd", via=1).status == 200
    b.wait_for("presences", from_="alice", show="dnd")
    assert a.call("status", to="bob", show="typing", via=1).status == 200
    b.wait_for("statuses", from_="alice")
    left = a.call("leave", id="lobby", via=1)
    assert left.status == 200 and left.body == b"ok"
    joined = a.call("join", id="lobby", via=1).json()
    assert joined["id"] == "lobby" and joined["count"] == 2
    # refusals come back as the owner answers them
    bad = a.call("message", via=1, type="unicast", to="nobody", body="x")
    assert bad.status == 404 and bad.json()["error"] == "unknown_user"
    # a poll on n2's path with n1's ticket, or on n1's path at n2: 404, the client goes online again
    wrong = two.client(1).get("/n/n2/packets", {"ticket": a.ticket})
    assert wrong.status == 404 and wrong.json()["error"] == "invalid_ticket"
    if two.nginx is None:  # (through nginx, /n/n1/ is n1 itself)
        other = two.client(1).get("/n/n1/packets", {"ticket": a.ticket})
        assert other.status == 404 and other.json()["success"] is False
    assert a.call("offline", via=1).status == 200
    assert a.wait_ended() == "stopped"
    assert a.find("messages", body="via n2") == []
    for t in (a, a2, b):
        t.check()


def test_directory_changes_reach_every_node(two):
    a = two.tab(0, "alice")
    b = two.tab(1, "bob")
    c = two.tab(1, "carol")
    a.wait_for("presences", from_="bob", type="online")
    # a removed member: 403 on multicast (on any node), no more room packets
    assert two.admin("DELETE", "/admin/rooms/lobby/members/bob", node=0).status == 200
    # (the admin call returns once Redis took the change; n2 applies it a moment later)
    wait_until(lambda: b.call("message", type="multicast", to="lobby", body="x").status == 403,
               timeout=5, what="403 on n2")
    a.send("lobby", "after removal", type_="multicast")
    c.wait_for("messages", body="after removal")
    time.sleep(0.3)
    assert b.find("messages", body="after removal") == []
    # a removed buddy: presence stops both ways
    assert two.admin("DELETE", "/admin/users/alice/buddies/bob", node=0).status == 200
    time.sleep(POLL_INTERVAL + 0.5)  # n2 reads the change from directory_changes
    mark_a, mark_b = a.mark(), b.mark()
    b.call("presence", show="away")
    a.call("presence", show="away")
    c.wait_for("presences", from_="alice", show="away")
    time.sleep(0.3)
    assert a.find("presences", mark_a, from_="bob") == [] and b.find("presences", mark_b, from_="alice") == []
    # a deleted user: sessions end on their node, buddies see one offline, messages 404
    mark = a.mark()
    assert two.admin("DELETE", "/admin/users/carol", node=0).status == 200
    assert c.wait_ended() in ("stopped", "404")
    a.wait_for("presences", mark, from_="carol", type="offline")
    time.sleep(0.3)
    assert len(offline_packets(a, "carol", mark)) == 1
    assert a.call("message", type="unicast", to="carol", body="x").status == 404


def test_kill9_a_node_mid_conversation():
    with Cluster(3) as c:
        c.users("alice", "bob", "carol", "dave", buddies=[("alice", "bob"), ("alice", "carol"), ("dave", "bob")],
                rooms=[("lobby", ["alice", "bob", "carol", "dave"])])
        a = c.tab(0, "alice")
        b = c.tab(1, "bob")
        b_elsewhere = c.tab(2, "dave")
        k = c.tab(1, "carol")
        a.wait_for("presences", from_="carol", type="online")
        sent = []
        for i in range(10):
            k.send("alice", f"m{i}")
            sent.append(f"m{i}")
        a.wait_for("messages", body="m9")
        # bob is also live on n3 (a second tab), carol only on n2
        b3 = c.tab(2, "bob")
        mark = a.mark()
        c.kill9(1)
        # within node_timeout (3 s) someone reaps n2: carol offline once, bob stays online
        a.wait_for("presences", mark, from_="carol", type="offline", timeout=12)
        time.sleep(1.0)
        assert len(offline_packets(a, "carol", mark)) == 1
        assert a.find("presences", mark, from_="bob") == []
        assert b.wait_ended(timeout=10).startswith(("404", "error"))
        # the dead node's tickets are 404 on the others
        dead = b.call("message", via=0, type="unicast", to="alice", body="x")
        assert dead.status == 404 and dead.json()["error"] == "invalid_ticket"
        counts = {r["id"]: r["count"] for r in c.tab(0, "alice").online["rooms"]}
        assert counts["lobby"] == 3  # alice (n1), bob and dave (n3); carol is gone
        # the others are unaffected
        b3.send("alice", "still here")
        a.wait_for("messages", body="still here")
        # everything that got ok is in PostgreSQL
        history = [m["body"] for m in a.call("history", id="carol").json()]
        assert [s for s in sent if s not in history] == []
        b_elsewhere.check()


def test_restart_redis_during_a_burst():
    with Cluster(2, extra={"limits": {"messages_per_minute": 100000, "history": 1000, "new_messages": 1000}}) as c:
        c.users("alice", "bob", buddies=[("alice", "bob")])
        a = c.tab(0, "alice")
        b = c.tab(1, "bob")
        a.wait_for("presences", from_="bob", type="online")
        oks = []
        stop = threading.Event()

        def burst():
            i = 0
            while not stop.is_set() and i < 400:
                resp = a.call("message", type="unicast", to="bob", body=f"b{i}")
                if resp.status == 200 and resp.body == b"ok":
                    oks.append(f"b{i}")
                i += 1
                time.sleep(0.01)
        t = threading.Thread(target=burst)
        t.start()
        wait_until(lambda: len(oks) > 20, what="the burst under way")
        c.redis.stop()
        health = [c.client(i).get("/health") for i in (0, 1)]
        c.redis.start()
        time.sleep(1.5)
        stop.set()
        t.join(30)
        assert [h.status for h in health] == [503, 503]
        assert health[0].json()["redis"] == "error"
        wait_until(lambda: all(c.client(i).get("/health").status == 200 for i in (0, 1)), what="healthy again")
        # bob's session lived through the gap: it ends (404), or it got every ok'd message once
        ended = b.wait_ended(timeout=10) if b.ended is None else b.ended
        got = [p["body"] for p in b.find("messages")]
        assert len(got) == len(set(got)), "nothing twice"
        if ended != "404":
            assert set(oks) <= set(got)
        # reloading gets everything that was ok'd and not delivered live: nothing lost
        b2 = c.tab(1, "bob")
        history = {m["body"] for m in b2.call("history", id="alice").json()}
        assert set(oks) <= history | set(got)
        new = [m["body"] for m in b2.online["new_messages"]]
        assert len(new) == len(set(new)) and not (set(new) & set(got))
        # routing works again, and Redis holds the users again
        a2 = c.tab(0, "alice")
        a2.send("bob", "after")
        b2.wait_for("messages", body="after")


def test_a_duplicate_node_id_is_refused():
    with Cluster(1, node_timeout=2) as c:
        # the same config (n1) on another port, while n1 is alive
        twin = Daemon({k: v for k, v in c.nodes[0].config.items() if k != "server"})
        try:
            with pytest.raises(DaemonError):
                twin.start()
            lines = [line for line in twin.log_text().splitlines() if "node_id" in line]
            assert lines and "in use by another live node" in lines[-1]
        finally:
            twin.cleanup()


def test_a_node_stopping_ends_its_sessions_and_presence_follows_the_grace(two):
    a = two.tab(0, "alice")
    b = two.tab(1, "bob")
    a.wait_for("presences", from_="bob", type="online")
    mark = a.mark()
    started = time.monotonic()
    two.nodes[1].stop()
    assert time.monotonic() - started < 8
    assert b.wait_ended() in ("404", "stopped") or b.ended.startswith("error")
    a.wait_for("presences", mark, from_="bob", type="offline", timeout=10)
    time.sleep(0.5)
    assert len(offline_packets(a, "bob", mark)) == 1


def test_kill9_a_node_behind_nginx(tmp_path):
    with Cluster(2, nginx=True, tmp_path=tmp_path) as c:
        c.users("alice", "bob", buddies=[("alice", "bob")])
        a = c.tab(0, "alice")
        b = c.tab(1, "bob")
        a.wait_for("presences", from_="bob", type="online")
        b.send("alice", "before")
        a.wait_for("messages", body="before")
        mark = a.mark()
        c.kill9(1)
        # nginx answers bob's poll on the dead node's path with the 404 envelope
        assert b.wait_ended(timeout=10) == "404"
        again = c.tab(0, "bob")  # the client goes online again, on the live node
        assert again.node_id == "n1"
        again.send("alice", "after")
        a.wait_for("messages", body="after")
        time.sleep(4)  # past node_timeout: n2 is reaped, but bob is live on n1
        assert a.find("presences", mark, from_="bob", type="offline") == []


def test_nextimctl_changes_reach_live_sessions_on_every_node(tmp_path):
    with Cluster(2) as c:
        c.users("alice", "bob", buddies=[("alice", "bob")])
        a = c.tab(0, "alice")
        b = c.tab(1, "bob")
        a.wait_for("presences", from_="bob", type="online")
        # the shared file of a cluster: no node_id (each node gets --node-id)
        shared = {k: dict(v) for k, v in c.nodes[0].config.items() if k != "server"}
        del shared["cluster"]["node_id"]
        cfg = tmp_path / "shared.toml"
        cfg.write_text(to_toml(shared))
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        proc = subprocess.run([sys.executable, "-m", "nextim_twisted.ctl", "--config", str(cfg),
                               "buddy", "delete", "alice", "bob"], capture_output=True, text=True,
                              timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        time.sleep(POLL_INTERVAL + 0.5)  # each node reads the change from directory_changes
        mark_a, mark_b = a.mark(), b.mark()
        b.call("presence", show="away")
        a.call("presence", show="dnd")
        time.sleep(0.5)
        assert a.find("presences", mark_a, from_="bob") == [] and b.find("presences", mark_b, from_="alice") == []
        proc = subprocess.run([sys.executable, "-m", "nextim_twisted.ctl", "--config", str(cfg),
                               "user", "delete", "bob"], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert b.wait_ended() in ("stopped", "404")
