"""The cluster's seams in the router, on a Clock and without Redis: the router asks its
arbiter before it announces online or offline (nextim_twisted/hub/arbiter.py), tickets
name their node, and the cluster hub delivers here and publishes for the other nodes
(nextim_twisted/hub/cluster.py)."""
from twisted.internet import task

from nextim_twisted.core.router import Router
from nextim_twisted.hub.cluster import ClusterHub
from nextim_twisted.web.webim import node_route
from tests.test_core import drain, profile


class HeldArbiter:
    """Decides nothing itself: records the questions and keeps ``announce`` for the test."""

    def __init__(self):
        self.asked = []
        self.pending = []
        self.joined = []

    def came_online(self, user, announce, joined):
        self.asked.append(("online", user.id))
        self.pending.append(announce)
        self.joined.append(joined)

    def went_offline(self, user, announce):
        self.asked.append(("offline", user.id))
        self.pending.append(announce)

    def sessions_changed(self, user, has_sessions):
        self.asked.append(("sessions", user.id, has_sessions))

    def show_changed(self, user):
        self.asked.append(("show", user.id, user.show))


def router(**kw):
    clock = task.Clock()
    return clock, Router(clock, poll_hold=25, session_idle=100, user_grace=10, **kw)


def presences(session):
    return [(p["type"], p["from"]) for p in drain(session)["presences"]]


def test_online_and_offline_go_out_only_when_the_arbiter_says_so():
    arbiter = HeldArbiter()
    clock, r = router(arbiter=arbiter)
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], [])
    arbiter.pending.clear()  # (alice's own online: nobody to tell)
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], [])
    assert arbiter.asked[-1] == ("online", "bob")
    assert presences(sa) == []            # not before the arbiter answers
    arbiter.pending.pop()()               # another node did not hold bob: announce
    assert presences(sa) == [("online", "bob")]
    r.end_session(sb.ticket)
    assert arbiter.asked[-1] == ("sessions", "bob", False)  # grace: no open session here
    clock.advance(10)
    assert arbiter.asked[-1] == ("offline", "bob")
    arbiter.pending.clear()               # bob is still on another node: no offline
    assert presences(sa) == [] and not r.is_online("bob")


def test_an_online_decided_after_the_user_left_is_not_announced():
    arbiter = HeldArbiter()
    clock, r = router(arbiter=arbiter)
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], [])
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], [])
    late = arbiter.pending.pop()
    r.user_offline("bob")
    late()
    assert ("online", "bob") not in presences(sa)


def bob_watching_alice():
    """A router whose arbiter waits for the test, and bob online here as alice's buddy."""
    arbiter = HeldArbiter()
    clock, r = router(arbiter=arbiter)
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], [])
    arbiter.pending.pop()()
    drain(sb)
    return arbiter, r, sb


def test_a_user_held_elsewhere_takes_the_cluster_show_unless_online_asked_for_one():
    arbiter, r, sb = bob_watching_alice()
    # alice is away on another node; a tab here that asks for no show stays away, silently
    r.open_session(profile("alice"), None, None, ["bob"], [])
    arbiter.joined.pop()("away", "lunch")
    assert r.presence_of("alice", "bob") == ("online", "away", "lunch")
    assert presences(sb) == []
    # a tab here that asks for "available" changes her show cluster-wide, once
    r.user_offline("alice")
    r.open_session(profile("alice"), "available", None, ["bob"], [])
    arbiter.joined.pop()("away", "lunch")
    assert r.presence_of("alice", "bob") == ("online", "available", "lunch")
    assert presences(sb) == [("show", "alice")]  # (her offline waited for the arbiter)
    assert arbiter.asked[-1] == ("show", "alice", "available")


def test_a_user_invisible_elsewhere_stays_hidden_on_a_new_node():
    arbiter, r, sb = bob_watching_alice()
    r.open_session(profile("alice"), None, None, ["bob"], [])
    arbiter.joined.pop()("invisible", "")
    assert r.presence_of("alice", "bob")[0] == "offline"
    assert presences(sb) == []


def test_back_from_the_grace_and_show_changes_are_reported():
    arbiter = HeldArbiter()
    clock, r = router(arbiter=arbiter)
    s1, _ = r.open_session(profile("alice"), None, None, [], [])
    r.end_session(s1.ticket)
    r.open_session(profile("alice"), None, None, [], [])
    r.set_presence("alice", "away", "lunch")
    assert arbiter.asked == [("online", "alice"), ("sessions", "alice", False),
                             ("sessions", "alice", True), ("show", "alice", "away")]


def test_tickets_name_their_node():
    _, r = router(node_id="n7")
    session, _ = r.open_session(profile("alice"), None, None, [], [])
    node, dot, rest = session.ticket.partition(".")
    assert (node, dot) == ("n7", ".") and len(rest) >= 22  # 128+ random bits in base64url
    _, alone = router()
    assert "." not in alone.open_session(profile("bob"), None, None, [], [])[0].ticket


class FakeNode:
    """What ClusterHub publishes through, recorded."""

    def __init__(self):
        self.published = []

    def publish(self, payload, users=(), rooms=()):
        self.published.append((payload, sorted(users), sorted(rooms)))

    def publish_others(self, payload):
        self.published.append((payload, "all", None))


def test_cluster_hub_delivers_here_and_publishes_for_recipients_elsewhere():
    node = FakeNode()
    _, r = router(hub=lambda sessions: ClusterHub(sessions, node))
    sa, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    sa2, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    node.published.clear()
    # bob is not live here: the router still hands him to the hub, which publishes
    msg = {"id": 1, "type": "unicast", "from": "alice", "to": "bob", "nick": "Alice", "body": "hi",
           "style": "", "timestamp": 1}
    assert r.route_unicast(msg, sender_ticket=sa.ticket) is False
    assert [(p["t"], p["u"], users) for p, users, _ in node.published] == [("u", "bob", ["bob"]),
                                                                          ("u", "alice", ["alice"])]
    assert node.published[1][0]["x"] == sa.ticket  # other nodes' tabs of alice get a copy
    assert [m["body"] for m in drain(sa2)["messages"]] == ["hi"] and drain(sa)["messages"] == []
    # what another node published arrives on this node's sessions, minus the except ticket
    hub = r.hub
    assert hub.received({"t": "r", "r": "lobby", "k": "messages", "p": {"body": "room"}, "xu": None,
                         "x": sa.ticket})
    assert [m["body"] for m in drain(sa2)["messages"]] == ["room"] and drain(sa)["messages"] == []
    assert hub.received({"t": "us", "u": ["alice", "zed"], "k": "presences",
                         "p": {"type": "online", "from": "zed"}})
    assert [p["to"] for p in drain(sa)["presences"]] == ["alice"]
    assert not hub.received({"t": "call"}) and not hub.received({"t": "u", "k": "bogus", "p": {}})


def test_node_paths_name_their_node_and_endpoint():
    assert node_route("/n/n1/packets") == ("n1", "packets")
    assert node_route("/n/n2/ws") == ("n2", "ws")
    for path in ("/n//ws", "/n/n1", "/n/n1/", "/n/n1/other", "/n/a/b/ws", "/packets", "/ws"):
        assert node_route(path) is None, path
