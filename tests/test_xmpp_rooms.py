"""Bridged rooms without a server: the bridge's MUC joins, holds and acknowledgements
(docs/xmpp.md "Rooms", XEP-0045 §7.2, §7.4, §10.1.2) driven stanza by stanza through a
fake component connection, timers on a Clock.

What a user would notice: a multicast answered ``ok`` reaches the XMPP room once, or
its sender gets a failure packet naming it.
"""
import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.words.xish import domish

from nextim_twisted.xmpp import bridge as bridge_module
from nextim_twisted.xmpp.bridge import Bridge
from tests.conftest import Harness, make_config
from tests.storefixtures import make_store

MUC = "hall@conference.example.org"
DOMAIN = "web.example.org"


class FakeConnection:
    """Records stanzas instead of sending them; ``connected``/``fatal`` set by the test."""

    def __init__(self, *args, **kwargs):
        self.sent = []
        self.connected = True
        self.fatal = None
        self.queue = []

    def start(self):
        pass

    def stop(self):
        from twisted.internet import defer
        return defer.succeed(None)

    def can_send(self):
        return self.fatal is None

    def send(self, element, queue=True):
        if not self.connected:
            return False
        self.sent.append(element)
        return True

    def joins(self, to_prefix=MUC):
        """(from user, nick) of MUC joins sent so far, in order."""
        return [(el["from"].split("@")[0], el["to"].split("/", 1)[1]) for el in self.sent
                if el.name == "presence" and el.getAttribute("to", "").startswith(to_prefix + "/")
                and not el.hasAttribute("type")]

    def groupchats(self):
        return [el for el in self.sent if el.name == "message" and el.getAttribute("type") == "groupchat"]

    def take(self):
        sent, self.sent = self.sent, []
        return sent


@pytest_twisted.async_yield_fixture
async def rig(tmp_path):
    config = make_config(xmpp={"enabled": True, "host": "127.0.0.1", "port": 5347, "component_domain": DOMAIN,
                               "secret": "s", "muc_domain": "conference.example.org"})
    store, drop = await make_store("sqlite", tmp_path)
    h = Harness(store, config)
    # The bridge's own Clock: advancing it must not expire the web sessions (router timers).
    h.bridge = h.ctx.xmpp = Bridge(h.ctx, config.xmpp, task.Clock(), connection_factory=FakeConnection)
    await store.put_room("hall", "Hall")
    for uid in ("alice", "bob", "carol"):
        await store.put_user(uid, uid.title())
        await store.put_member("hall", uid)
    await h.bridge.start()
    h.conn = h.bridge.conn
    h.sessions = {}
    try:
        yield h
    finally:
        await h.bridge.stop()
        h.router.shutdown()
        await drop()


def go_online(h, uid, show="available"):
    session, _ = h.router.open_session({"id": uid, "nick": uid.title()}, show, "", [], ["hall"])
    h.sessions[uid] = session


def failures(h, uid):
    return [p for _, kind, p in h.sessions[uid].queue if kind == "messages" and p.get("error")]


def self_presence(uid, nick, created=False, type_=None):
    el = domish.Element((None, "presence"))
    el["from"], el["to"] = f"{MUC}/{nick}", f"{uid}@{DOMAIN}/web"
    if type_:
        el["type"] = type_
    x = el.addElement(("http://jabber.org/protocol/muc#user", "x"))
    for code in ("110", "201") if created else ("110",):
        x.addElement("status")["code"] = code
    return el


def join_error(uid, nick, condition):
    el = domish.Element((None, "presence"))
    el["from"], el["to"], el["type"] = f"{MUC}/{nick}", f"{uid}@{DOMAIN}/web", "error"
    err = el.addElement("error")
    err["type"] = "cancel"
    err.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", condition))
    return el


def reflection(uid, nick, sent):
    el = domish.Element((None, "message"))
    el["from"], el["to"], el["type"], el["id"] = f"{MUC}/{nick}", f"{uid}@{DOMAIN}/web", "groupchat", sent["id"]
    el.addElement("body", content=str(sent.body))
    return el


def config_result(h):
    iq = [el for el in h.conn.sent if el.name == "iq" and el.getAttribute("type") == "set"][-1]
    el = domish.Element((None, "iq"))
    el["from"], el["to"], el["type"], el["id"] = MUC, iq["from"], "result", iq["id"]
    return el


async def bridge_room(h):
    await h.bridge.set_room("hall", MUC)


@pytest_twisted.ensureDeferred
async def test_joins_wait_for_the_room_to_be_created_and_configured(rig):
    h = rig
    for uid in ("alice", "bob", "carol"):
        go_online(h, uid)
    await bridge_room(h)
    assert h.conn.joins() == [("alice", "Alice")]          # one opener, not three joins at once
    for uid in ("bob", "carol"):
        h.bridge.send_groupchat("hall", uid, f"early {uid}")
    assert h.conn.groupchats() == []                        # held, not sent into a locked room
    h.bridge._stanza(self_presence("alice", "Alice", created=True))
    assert h.conn.joins() == [("alice", "Alice")]           # still locked until configured
    assert [el for el in h.conn.sent if el.name == "iq"]    # instant-room configuration submitted
    h.bridge._stanza(config_result(h))
    assert h.conn.joins() == [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")]
    for uid in ("bob", "carol"):
        h.bridge._stanza(self_presence(uid, uid.title()))
    bodies = [str(el.body) for el in h.conn.groupchats()]
    assert bodies == ["early bob", "early carol"]
    for el in h.conn.groupchats():
        uid = el["from"].split("@")[0]
        h.bridge._stanza(reflection(uid, uid.title(), el))
    h.bridge.clock.advance(bridge_module.ACK_SECONDS + 1)
    assert not failures(h, "bob") and not failures(h, "carol")


@pytest_twisted.ensureDeferred
async def test_a_refused_join_is_retried_with_backoff_and_then_sends_what_was_held(rig):
    h = rig
    go_online(h, "alice")
    go_online(h, "bob")
    await bridge_room(h)
    h.bridge._stanza(self_presence("alice", "Alice", created=True))
    h.bridge._stanza(config_result(h))
    h.conn.take()
    h.bridge.send_groupchat("hall", "bob", "wait for me")
    h.bridge._stanza(join_error("bob", "Bob", "item-not-found"))   # the room is still locked
    assert h.conn.joins() == []
    h.bridge._stanza(config_result(h))     # so alice, inside, configured it again
    h.bridge.clock.advance(bridge_module.JOIN_RETRY_DELAYS[0])
    assert h.conn.joins() == [("bob", "Bob")]
    h.bridge._stanza(self_presence("bob", "Bob"))
    assert [str(el.body) for el in h.conn.groupchats()] == ["wait for me"]


@pytest_twisted.ensureDeferred
async def test_a_join_that_fails_for_good_fails_each_held_message(rig):
    h = rig
    go_online(h, "alice")
    await bridge_room(h)
    h.bridge.send_groupchat("hall", "alice", "one")
    h.bridge.send_groupchat("hall", "alice", "two")
    h.bridge._stanza(join_error("alice", "Alice", "forbidden"))    # banned: retrying cannot help
    got = failures(h, "alice")
    assert [f["error"] for f in got] == ["forbidden", "forbidden"]
    assert "“one”" in got[0]["body"] and "“two”" in got[1]["body"] and got[0]["from"] == "hall"
    assert h.conn.groupchats() == []


@pytest_twisted.ensureDeferred
async def test_unanswered_joins_give_up_after_the_documented_retries(rig):
    h = rig
    go_online(h, "alice")
    await bridge_room(h)
    h.bridge.send_groupchat("hall", "alice", "anyone?")
    for delay in bridge_module.JOIN_RETRY_DELAYS + (0,):
        h.bridge.clock.advance(bridge_module.JOIN_TIMEOUT)
        h.bridge.clock.advance(delay)
    assert sum(bridge_module.JOIN_RETRY_DELAYS) + 7 * bridge_module.JOIN_TIMEOUT < bridge_module.HOLD_SECONDS
    assert len(h.conn.joins()) == len(bridge_module.JOIN_RETRY_DELAYS) + 1
    assert len(failures(h, "alice")) == 1 and "“anyone?”" in failures(h, "alice")[0]["body"]


@pytest_twisted.ensureDeferred
async def test_the_hold_is_bounded(rig, monkeypatch):
    h = rig
    monkeypatch.setattr(bridge_module, "HOLD_MESSAGES", 2)
    go_online(h, "alice")
    await bridge_room(h)
    for body in ("a", "b", "c"):
        h.bridge.send_groupchat("hall", "alice", body)
    assert ["“c”" in f["body"] for f in failures(h, "alice")] == [True]   # the third, at once
    h.bridge.clock.advance(bridge_module.HOLD_SECONDS)                            # the join never answered…
    assert len(failures(h, "alice")) == 3                                  # …so a and b fail too


@pytest_twisted.ensureDeferred
async def test_unconfirmed_multicasts_fail_when_the_stream_dies_and_held_ones_follow_the_rejoin(rig):
    h = rig
    go_online(h, "alice")
    await bridge_room(h)
    h.bridge._stanza(self_presence("alice", "Alice", created=True))
    h.bridge._stanza(config_result(h))
    h.bridge.send_groupchat("hall", "alice", "in flight")
    h.conn.connected = False
    h.bridge._disconnected()
    assert ["“in flight”" in f["body"] for f in failures(h, "alice")] == [True]
    h.bridge.send_groupchat("hall", "alice", "while down")
    h.conn.connected = True
    h.conn.take()
    h.bridge._connected()
    assert h.conn.joins() == [("alice", "Alice")]          # rejoined; the room may be gone: opener
    h.bridge._stanza(self_presence("alice", "Alice", created=True))
    h.bridge._stanza(config_result(h))
    assert [str(el.body) for el in h.conn.groupchats()] == ["while down"]
    assert len(failures(h, "alice")) == 1


@pytest_twisted.ensureDeferred
async def test_a_multicast_the_room_never_reflects_is_reported(rig):
    h = rig
    go_online(h, "alice")
    await bridge_room(h)
    h.bridge._stanza(self_presence("alice", "Alice"))      # an existing room: open at once
    h.bridge.send_groupchat("hall", "alice", "echo?")
    h.bridge.clock.advance(bridge_module.ACK_SECONDS)
    assert ["“echo?”" in f["body"] for f in failures(h, "alice")] == [True]


@pytest_twisted.ensureDeferred
async def test_an_invisible_sender_is_told_xmpp_did_not_get_it(rig):
    h = rig
    go_online(h, "alice", show="invisible")
    await bridge_room(h)
    assert h.conn.joins() == []
    h.bridge.send_groupchat("hall", "alice", "psst")
    assert "invisible" in failures(h, "alice")[0]["body"]


@pytest.mark.parametrize("stamp, ms", [("2024-05-01T12:00:00Z", 1714564800000),
                                       ("2024-05-01T12:00:00.250Z", 1714564800250), ("nonsense", None)])
def test_delay_stamps(stamp, ms):
    assert bridge_module._parse_stamp(stamp) == ms


# -- directed presence (RFC 3921 §5.1.4) -------------------------------------------------------
def presence_from(jid, to, type_=None):
    el = domish.Element((None, "presence"))
    el["from"], el["to"] = jid, to
    if type_:
        el["type"] = type_
    return el


@pytest_twisted.ensureDeferred
async def test_directed_presence_from_a_buddy_shows_without_a_subscription(rig):
    """A paired contact whose subscription is not yet ``to`` may still send presence
    straight to the web user; it shows, and so does its end. A stranger's does not."""
    h = rig
    go_online(h, "alice")
    await h.bridge.add_buddy("alice", "romeo@example.org")
    assert h.bridge.pair("alice", "romeo@example.org").sub.state == "none"
    h.bridge._stanza(presence_from("romeo@example.org/phone", f"alice@{DOMAIN}/web"))
    assert h.bridge.remote_buddies("alice")["romeo@example.org"]["presence"] == "online"
    h.bridge._stanza(presence_from("romeo@example.org/phone", f"alice@{DOMAIN}/web", "unavailable"))
    assert h.bridge.remote_buddies("alice")["romeo@example.org"]["presence"] == "offline"
    kinds = [(kind, p["type"]) for _, kind, p in h.sessions["alice"].queue if kind == "presences"]
    assert kinds == [("presences", "online"), ("presences", "offline")]
    h.bridge._stanza(presence_from("tybalt@example.org/x", f"alice@{DOMAIN}/web"))
    assert "tybalt@example.org" not in h.bridge.remote_buddies("alice")
    assert len([1 for _, kind, _ in h.sessions["alice"].queue if kind == "presences"]) == 2


# -- MUC history on join (XEP-0045 §7.2.15) ------------------------------------------------------
def history_message(uid, nick, body, stamp):
    el = domish.Element((None, "message"))
    el["from"], el["to"], el["type"] = f"{MUC}/{nick}", f"{uid}@{DOMAIN}/web", "groupchat"
    el.addElement("body", content=body)
    el.addElement(("urn:xmpp:delay", "delay"))["stamp"] = stamp
    return el


@pytest_twisted.ensureDeferred
async def test_history_on_join_stores_only_what_the_web_side_lacks(rig):
    h = rig
    # the web side has Tybalt's "old" from 12:00:05.300 (its last message, plus the 2 s margin)
    await h.store.add_message("multicast", f"{MUC}/Tybalt", "hall", "Tybalt", "old", "", 1714564805300, True)
    go_online(h, "alice")
    await bridge_room(h)
    join = [el for el in h.conn.sent if el.name == "presence"][0]
    assert next(join.elements()).firstChildElement()["since"] == "2024-05-01T12:00:07Z"
    h.bridge._stanza(self_presence("alice", "Alice"))
    since = 1714564807300
    assert h.bridge.joined["hall"]["alice"].history_since == since
    for body, stamp in (("older", "2024-05-01T12:00:06Z"), ("old", "2024-05-01T12:00:07Z"),
                        ("same second", "2024-05-01T12:00:07Z"), ("newer", "2024-05-01T12:00:09Z")):
        h.bridge._stanza(history_message("alice", "Tybalt", body, stamp))
    await h.bridge._history.run(defer.succeed, None)
    rows = await h.store.room_history("hall", 10)
    assert [(m["body"], m["timestamp"]) for m in rows] == [
        ("old", 1714564805300), ("same second", 1714564807000), ("newer", 1714564809000)]
    packets = [p["body"] for _, kind, p in h.sessions["alice"].queue if kind == "messages"]
    assert packets == ["same second", "newer"]
