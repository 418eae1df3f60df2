"""Sessions, timers and routing in core/ driven by a Clock (docs/design.md#d5-timers to #d9-rooms)."""
from twisted.internet import task

from nextim_twisted.core.router import Router
from nextim_twisted.core.session import STOPPED, Session
from nextim_twisted.core.presence import normalize_show


def results(d):
    out = []
    d.addBoth(out.append)
    return out


def make_session(clock, ended, max_queue=5):
    return Session("t1", "alice", clock, hold_s=25, idle_s=10, max_queue=max_queue,
                   on_end=lambda s, reason: ended.append(reason))


def test_poll_hold_returns_empty_batch():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    got = results(s.poll())
    clock.advance(24.9)
    assert got == []
    clock.advance(0.2)
    assert got == [{"status": "ok", "messages": [], "presences": [], "statuses": [], "seq": 0}]
    assert ended == []


def test_packet_wakes_parked_poll_with_seq():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    got = results(s.poll(ack=0))
    s.push("messages", {"body": "hi"})
    assert got[0]["messages"] == [{"body": "hi", "seq": 1}]
    assert got[0]["seq"] == 1


def test_ack_resends_unacked_and_drops_acked():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    s.push("messages", {"n": 1})
    s.push("presences", {"n": 2})
    first = results(s.poll(ack=0))[0]
    assert [p["seq"] for p in first["messages"] + first["presences"]] == [1, 2]
    # The answer was lost: the client retries with the same ack and gets the same packets.
    retry = results(s.poll(ack=0))[0]
    assert retry == first
    s.push("statuses", {"n": 3})
    after = results(s.poll(ack=2))[0]
    assert after["messages"] == [] and after["presences"] == []
    assert after["statuses"] == [{"n": 3, "seq": 3}]


def test_legacy_poll_without_ack_counts_as_delivered():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    s.push("messages", {"n": 1})
    assert results(s.poll())[0]["messages"] == [{"n": 1, "seq": 1}]
    got = results(s.poll())
    assert got == []  # parked: nothing re-sent


def test_newer_poll_stops_older():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    older = results(s.poll())
    newer = results(s.poll())
    assert older == [STOPPED]
    assert newer == []


def test_idle_session_ends_and_parked_poll_keeps_it_alive():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    clock.advance(9)
    results(s.poll())          # parks: idle timer stops
    clock.advance(25)          # hold expires, idle restarts
    assert ended == []
    clock.advance(9.9)
    assert ended == []
    clock.advance(0.2)
    assert ended == ["idle"]


def test_cancelled_poll_restarts_idle_timer():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    d = s.poll()
    d.addErrback(lambda f: None)
    d.cancel()
    assert not s.parked
    clock.advance(10.1)
    assert ended == ["idle"]


def test_queue_overflow_ends_session():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended, max_queue=3)
    for i in range(3):
        assert s.push("messages", {"n": i})
    assert not s.push("messages", {"n": 3})
    assert ended == ["overflow"] and s.ended


def test_show_aliases():
    assert normalize_show("busy") == "dnd"
    assert normalize_show("BUZY") == "dnd"
    assert normalize_show("invisible") == "invisible"
    assert normalize_show("unavailable") == "unavailable"
    assert normalize_show("sleeping") is None


# -- router -----------------------------------------------------------------------

def profile(uid):
    return {"id": uid, "nick": uid.title()}


def make_router(session_idle=100, **kw):
    """A router whose sessions outlive the test unless it sets ``session_idle``."""
    clock = task.Clock()
    return clock, Router(clock, poll_hold=25, session_idle=session_idle, user_grace=10, **kw)


def drain(session):
    """Packets queued on a session (answers a poll with ack)."""
    return results(session.poll(ack=None))[0] if session.queue else {"messages": [], "presences": [], "statuses": []}


def test_reload_inside_grace_sends_no_presence():
    clock, r = make_router()
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], [])
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], [])
    assert [p["type"] for p in drain(sa)["presences"]] == ["online"]
    r.end_session(sb.ticket)                 # bob reloads the page …
    clock.advance(5)
    sb2, _ = r.open_session(profile("bob"), None, None, ["alice"], [])  # … and is back in 5 s
    clock.advance(30)
    assert drain(sa)["presences"] == []
    assert r.is_online("bob")


def test_grace_expiry_sends_offline_to_online_buddies_only():
    clock, r = make_router()
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], [])
    sc, _ = r.open_session(profile("carol"), None, None, [], [])
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], [])
    drain(sa)
    r.end_session(sb.ticket)
    clock.advance(9.9)
    assert drain(sa)["presences"] == []
    clock.advance(0.2)
    offline = drain(sa)["presences"]
    assert [(p["type"], p["from"], p["to"], p["show"]) for p in offline] == [("offline", "bob", "alice", "unavailable")]
    assert drain(sc)["presences"] == []
    assert not r.is_online("bob")


def test_invisible_looks_offline_and_back_online():
    clock, r = make_router()
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], [])
    sb, _ = r.open_session(profile("bob"), "invisible", None, ["alice"], [])
    assert drain(sa)["presences"] == []          # invisible arrival is not announced
    assert r.presence_of("bob", "alice") == ("offline", "unavailable", "")
    assert r.presence_of("bob", "bob")[1] == "invisible"
    r.set_presence("bob", "away", "lunch")
    p = drain(sa)["presences"]
    assert [(x["type"], x["show"], x["status"]) for x in p] == [("online", "away", "lunch")]
    r.set_presence("bob", "invisible", None)
    assert [x["type"] for x in drain(sa)["presences"]] == ["offline"]


def test_unicast_fans_out_to_tabs_and_sender_copies():
    clock, r = make_router()
    a1, _ = r.open_session(profile("alice"), None, None, [], [])
    a2, _ = r.open_session(profile("alice"), None, None, [], [])
    b1, _ = r.open_session(profile("bob"), None, None, [], [])
    b2, _ = r.open_session(profile("bob"), None, None, [], [])
    msg = {"id": 7, "type": "unicast", "from": "alice", "to": "bob", "nick": "Alice", "body": "hi",
           "style": "", "timestamp": 1}
    assert r.route_unicast(msg, a1.ticket)
    assert drain(a1)["messages"] == []                      # never back to the sending tab
    assert [m["body"] for m in drain(a2)["messages"]] == ["hi"]
    got = drain(b1)["messages"]
    assert [m["body"] for m in got] == ["hi"]
    assert got[0]["id"] == 7 and "client_id" not in got[0]  # the storage id travels (docs/design.md#d17-idempotent-sends)
    assert [m["body"] for m in drain(b2)["messages"]] == ["hi"]
    # strangers who talked now exchange presence (docs/design.md#d8-presence)
    r.set_presence("alice", "away", "")
    assert [p["type"] for p in drain(b1)["presences"]] == ["show"]


def test_multicast_reaches_live_members_except_sending_tab():
    clock, r = make_router()
    a, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    b, _ = r.open_session(profile("bob"), None, None, [], ["lobby"])
    c, _ = r.open_session(profile("carol"), None, None, [], [])   # blocked the room
    msg = {"id": 1, "type": "multicast", "from": "alice", "to": "lobby", "nick": "Alice", "body": "all",
           "style": "", "timestamp": 1}
    r.route_multicast(msg, a.ticket)
    assert drain(a)["messages"] == []
    assert [m["body"] for m in drain(b)["messages"]] == ["all"]
    assert drain(c)["messages"] == []
    assert r.room_count("lobby") == 2
    r.leave_room("bob", "lobby")
    assert r.room_members("lobby") == [{"id": "alice", "nick": "Alice", "presence": "online", "show": "available"}]


def test_grace_expiry_leaves_rooms():
    clock, r = make_router()
    a, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    r.end_session(a.ticket)
    assert r.room_count("lobby") == 1
    clock.advance(11)
    assert r.room_count("lobby") == 0


def test_status_only_to_online_recipient():
    clock, r = make_router()
    a, _ = r.open_session(profile("alice"), None, None, [], [])
    assert not r.route_status("alice", "bob", "typing")
    b, _ = r.open_session(profile("bob"), None, None, [], [])
    assert r.route_status("alice", "bob", "typing")
    assert drain(b)["statuses"] == [{"from": "alice", "nick": "Alice", "to": "bob", "show": "typing", "seq": 1}]


def test_idle_session_expiry_starts_grace():
    clock, r = make_router(session_idle=10)
    a, _ = r.open_session(profile("alice"), None, None, [], [])
    clock.advance(10.1)                      # never polled
    assert a.ticket not in r.sessions
    assert r.is_online("alice")              # grace
    clock.advance(10)
    assert not r.is_online("alice")


def test_shutdown_answers_parked_polls():
    clock, r = make_router()
    a, _ = r.open_session(profile("alice"), None, None, [], [])
    got = results(a.poll(ack=0))
    r.shutdown()
    assert got[0]["status"] == "ok" and got[0]["messages"] == []
    assert r.stats()["sessions"] == 0


def test_room_presences_only_when_configured():
    """docs/design.md#d9-rooms: join/leave presences are off by default (1.0.x clients misread them) and,
    when switched on, go v5-style to the other live members with ``to`` = room id."""
    for enabled in (False, True):
        clock, r = make_router(room_presences=enabled)
        a, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
        b, _ = r.open_session(profile("bob"), None, None, [], [])   # lobby blocked at online
        r.join_room("bob", "lobby")
        r.leave_room("bob", "lobby")
        got = [(p["type"], p["from"], p["to"]) for p in drain(a)["presences"]]
        assert got == ([("join", "bob", "lobby"), ("leave", "bob", "lobby")] if enabled else [])
        assert drain(b)["presences"] == []                  # never to the one who moved


# -- the hub seam and the router's queries (docs/design.md#d20-cluster) ---------------

class RecordingHub:
    """An IHub that records what the router hands it and delivers nothing."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.calls = []

    def to_user(self, user_id, kind, packet, except_ticket=None):
        self.calls.append(("user", user_id, kind, packet.get("body") or packet.get("type"), except_ticket))
        return False

    def to_users(self, user_ids, kind, packet):
        self.calls.append(("users", sorted(user_ids), kind, packet["type"], None))
        return 0

    def to_room(self, room_id, kind, packet, except_user=None, except_ticket=None):
        self.calls.append(("room", room_id, kind, packet.get("body") or packet.get("type"), except_ticket))
        return 0

    def to_everyone(self, kind, packet):
        self.calls.append(("everyone", None, kind, packet["body"], None))
        return 0


def test_every_packet_leaves_through_the_hub():
    clock, r = make_router(hub=RecordingHub, room_presences=True)
    hub = r.hub
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], ["lobby"])
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], ["lobby"])
    assert hub.calls == [("users", ["alice"], "presences", "online", None)]
    hub.calls.clear()
    r.route_unicast({"id": 1, "type": "unicast", "from": "alice", "to": "bob", "body": "hi"}, sa.ticket)
    r.route_multicast({"id": 2, "type": "multicast", "from": "alice", "to": "lobby", "body": "all"}, sa.ticket)
    r.route_broadcast({"id": 3, "type": "broadcast", "from": "admin", "to": "x", "body": "news"})
    r.route_status("alice", "bob", "typing")
    r.leave_room("bob", "lobby")
    assert hub.calls == [
        ("user", "bob", "messages", "hi", None),
        ("user", "alice", "messages", "hi", sa.ticket),  # the sender's other sessions
        ("room", "lobby", "messages", "all", sa.ticket),
        ("everyone", None, "messages", "news", None),
        ("user", "bob", "statuses", None, None),
        ("room", "lobby", "presences", "leave", None),
    ]
    assert sa.queue == [] and sb.queue == []  # nothing bypassed the hub


def test_router_queries_answer_without_its_dicts():
    clock, r = make_router()
    sa, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    r.open_session(profile("bob"), None, None, [], ["lobby"])
    assert r.has_sessions("alice") and not r.has_sessions("carol")
    assert r.live_members("lobby") == ["alice", "bob"] and r.live_members("nowhere") == []
    assert sorted(r.live_user_ids()) == ["alice", "bob"]
    assert r.sessions_of("alice") == [sa] and r.sessions_of("carol") == []
    assert r.user("alice").nick == "Alice" and r.user("carol") is None
    r.update_profile("alice", {"id": "alice", "nick": "Ally"})
    assert r.user("alice").nick == "Ally"
    r.end_session(sa.ticket)
    assert not r.has_sessions("alice") and r.is_online("alice")  # inside the grace
    clock.advance(10)
    assert not r.is_online("alice") and r.live_members("lobby") == ["bob"]


def test_observers_hear_presence_and_room_changes_and_cannot_break_routing():
    from nextim_twisted.core.observers import ILiveStateObserver
    from nextim_twisted.xmpp.bridge import Bridge

    assert ILiveStateObserver in Bridge.__mro__  # the bridge declares the contract

    class Recorder(ILiveStateObserver):
        def __init__(self):
            self.events = []

        def user_presence(self, user, type_):
            self.events.append(("presence", user.id, type_))
            raise RuntimeError("an observer's bug")

        def room_joined(self, user, room_id):
            self.events.append(("joined", user.id, room_id))

        def room_left(self, user, room_id):
            self.events.append(("left", user.id, room_id))

    clock, r = make_router()
    seen = Recorder()
    r.add_observer(seen)
    r.add_observer(seen)  # once is enough
    sb, _ = r.open_session(profile("bob"), None, None, ["alice"], [])
    sa, _ = r.open_session(profile("alice"), None, None, ["bob"], ["lobby"])
    r.leave_room("alice", "lobby")
    assert seen.events == [("presence", "bob", "online"), ("joined", "alice", "lobby"),
                           ("presence", "alice", "online"), ("left", "alice", "lobby")]
    assert [p["from"] for p in drain(sb)["presences"]] == ["alice"]  # routing went on
    r.remove_observer(seen)
    r.set_presence("alice", "away", None)
    assert len(seen.events) == 4


def test_local_hub_carries_packets_to_live_sessions_only():
    # The contract a cluster hub must keep as well (hub/base.IHub).
    from nextim_twisted.hub.local import LocalHub

    clock, r = make_router()
    a1, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    a2, _ = r.open_session(profile("alice"), None, None, [], ["lobby"])
    b1, _ = r.open_session(profile("bob"), None, None, [], ["lobby"])
    hub = LocalHub(r)
    assert hub.to_user("alice", "statuses", {"to": "alice", "show": "typing"}, except_ticket=a1.ticket)
    assert not hub.to_user("carol", "statuses", {"to": "carol", "show": "typing"})  # not live: skipped
    assert hub.to_users(["alice", "bob", "carol"], "presences", {"type": "show", "to": None}) == 2
    assert hub.to_room("lobby", "presences", {"type": "join", "to": "lobby"}, except_user="bob") == 1
    assert hub.to_everyone("messages", {"type": "unicast", "to": None, "body": "b"}) == 2
    got = {s.ticket: drain(s) for s in (a1, a2, b1)}
    assert got[a1.ticket]["statuses"] == [] and [p["show"] for p in got[a2.ticket]["statuses"]] == ["typing"]
    assert [(p["type"], p["to"]) for p in got[a1.ticket]["presences"]] == [("show", "alice"), ("join", "lobby")]
    assert [(p["type"], p["to"]) for p in got[b1.ticket]["presences"]] == [("show", "bob")]
    assert [m["to"] for m in got[b1.ticket]["messages"]] == ["bob"]
    assert [m["to"] for m in got[a2.ticket]["messages"]] == ["alice"]


# -- a streaming subscriber (a WebSocket, docs/design.md#d21-websocket) ----------------------------

class Stream:
    """A subscriber that records what the session sends it and why it was let go."""

    def __init__(self):
        self.envelopes, self.closed = [], []

    def deliver(self, envelope):
        self.envelopes.append(envelope)

    def session_closed(self, reason):
        self.closed.append(reason)

    def bodies(self):
        return [p["body"] for e in self.envelopes for p in e["messages"]]


def test_a_subscriber_counts_as_a_parked_poll_and_the_idle_timer_starts_when_it_goes():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    stream = Stream()
    s.subscribe(stream)
    assert stream.envelopes == [{"status": "ok", "messages": [], "presences": [], "statuses": [], "seq": 0}]
    assert s.parked and s.streaming
    clock.advance(100)  # no hold and no idle timer while subscribed
    assert ended == [] and not s.ended
    s.unsubscribe(stream)
    assert not s.parked
    clock.advance(9.9)
    assert ended == []
    clock.advance(0.2)
    assert ended == ["idle"]


def test_a_subscriber_gets_each_packet_once_and_acked_ones_are_resent_after_a_reconnect():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended, max_queue=10)
    first = Stream()
    s.subscribe(first, ack=0)
    for body in ("a", "b", "c"):
        s.push("messages", {"body": body})
    assert first.bodies() == ["a", "b", "c"]  # one envelope per packet, nothing twice
    assert [e["seq"] for e in first.envelopes] == [0, 1, 2, 3]
    s.ack(1)
    assert [q[0] for q in s.queue] == [2, 3]  # acked dropped, the rest kept for a resend
    s.unsubscribe(first)
    s.push("messages", {"body": "d"})
    second = Stream()
    s.subscribe(second, ack=2)
    assert second.bodies() == ["c", "d"]


def test_without_ack_a_subscriber_keeps_nothing():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    stream = Stream()
    s.subscribe(stream)
    s.push("messages", {"body": "a"})
    assert stream.bodies() == ["a"] and s.queue == []


def test_newer_poll_or_subscriber_replaces_and_stop_says_why():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended)
    old, new = Stream(), Stream()
    s.subscribe(old)
    s.subscribe(new)
    assert old.closed == ["replaced"] and new.closed == []
    poll = results(s.poll())
    assert new.closed == ["replaced"] and not s.streaming and s.parked
    third = Stream()
    s.subscribe(third)
    assert poll == [STOPPED]  # a newer socket stops a parked poll
    s.stop()
    assert third.closed == ["ended"]
    clock2, r = make_router()
    a, _ = r.open_session(profile("alice"), None, None, [], [])
    stream = Stream()
    a.subscribe(stream)
    assert r.stats()["parked_polls"] == 1 and r.stats()["websockets"] == 1
    r.shutdown()
    assert stream.closed == ["shutdown"]


def test_overflow_ends_a_streaming_session():
    clock, ended = task.Clock(), []
    s = make_session(clock, ended, max_queue=2)
    stream = Stream()
    s.subscribe(stream, ack=0)  # acking but never acks: the queue fills
    for body in ("a", "b", "c"):
        s.push("messages", {"body": body})
    assert ended == ["overflow"] and stream.closed == ["ended"]
