"""XMPP bridge, pure parts (docs/xmpp.md): the RFC 3921 subscription state machine and the
presence/show mapping, each on its own; the component's bounded queue."""
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.words.xish import domish

from nextim_twisted.xmpp import mapping, subscriptions as s
from nextim_twisted.xmpp.component import ComponentConnection
from nextim_twisted.xmpp.subscriptions import Subscription as Sub


# -- show / presence mapping ---------------------------------------------------------
@pytest.mark.parametrize("web, xmpp", [
    ("available", (None, None)), ("chat", (None, "chat")), ("away", (None, "away")), ("dnd", (None, "dnd")),
    ("invisible", ("unavailable", None)), ("unavailable", ("unavailable", None)),
])
def test_web_show_to_xmpp(web, xmpp):
    assert mapping.web_to_xmpp(web) == xmpp


@pytest.mark.parametrize("type_, show, web", [
    (None, None, "available"), (None, "chat", "chat"), (None, "away", "away"), (None, "xa", "away"),
    (None, "dnd", "dnd"), (None, "bogus", "available"), ("unavailable", None, "unavailable"),
    ("error", None, "unavailable"),
])
def test_xmpp_show_to_web(type_, show, web):
    assert mapping.xmpp_to_web(type_, show) == web


def test_xmpp_to_web_refuses_subscription_types():
    with pytest.raises(ValueError):
        mapping.xmpp_to_web("subscribe", None)


def test_every_visible_web_show_survives_a_round_trip():
    for show in ("available", "chat", "away", "dnd"):
        type_, text = mapping.web_to_xmpp(show)
        assert mapping.xmpp_to_web(type_, text) == show


def test_aggregate_prefers_priority_then_availability():
    assert mapping.aggregate({}) == ("unavailable", "")
    assert mapping.aggregate({"phone": ("away", "on the go", 0)}) == ("away", "on the go")
    both = {"phone": ("away", "", 0), "desk": ("dnd", "busy", 5)}
    assert mapping.aggregate(both) == ("dnd", "busy")  # higher priority wins
    same = {"phone": ("away", "", 0), "desk": ("chat", "", 0), "x": ("available", "", 0)}
    assert mapping.aggregate(same)[0] == "chat"


@pytest.mark.parametrize("user_id", ["alice", "a@b.c", "with space", "back\\5cslash", "x/y:z", "\\40"])
def test_user_ids_round_trip_through_jid_escaping(user_id):
    node = mapping.escape_node(user_id)
    assert "@" not in node and "/" not in node and " " not in node
    assert mapping.unescape_node(node) == user_id


def test_user_jid_and_nick():
    assert mapping.user_jid("a@b.c", "web.example.org", "web") == "a\\40b.c@web.example.org/web"
    assert mapping.nick_of("romeo@montague.lit/orchard") == "romeo"


# -- RFC 3921 subscription state machine ------------------------------------------------
def test_pairing_asks_for_the_contacts_presence_once_per_connection():
    sub, actions = s.ensure(Sub())
    assert sub == Sub("none", ask=True) and actions == (s.SEND_SUBSCRIBE,)
    assert s.ensure(Sub("to"))[1] == () and s.ensure(Sub("both"))[1] == ()
    # still pending after a reconnect: asked again (the request may have been lost)
    assert s.ensure(Sub("from", ask=True)) == (Sub("from", ask=True), (s.SEND_SUBSCRIBE,))


def test_full_handshake_reaches_both():
    sub, _ = s.ensure(Sub())
    sub, actions = s.inbound(sub, "subscribed", paired=True)      # contact approved ours
    assert sub == Sub("to") and actions == ()
    sub, actions = s.inbound(sub, "subscribe", paired=True)       # contact asks for ours
    assert sub == Sub("both")
    assert actions == (s.SEND_SUBSCRIBED, s.SEND_PRESENCE)


def test_contact_asks_first_we_approve_and_ask_back():
    sub, actions = s.inbound(Sub(), "subscribe", paired=True)
    assert sub == Sub("from", ask=True)
    assert actions == (s.SEND_SUBSCRIBED, s.SEND_PRESENCE, s.SEND_SUBSCRIBE)
    assert s.inbound(sub, "subscribed", paired=True)[0] == Sub("both")


def test_requests_from_strangers_are_refused():
    sub, actions = s.inbound(Sub(), "subscribe", paired=False)
    assert sub == Sub() and actions == (s.SEND_UNSUBSCRIBED,)


def test_unsolicited_subscribed_is_ignored():
    assert s.inbound(Sub("both"), "subscribed", paired=True) == (Sub("both"), ())
    assert s.inbound(Sub(), "subscribed", paired=False) == (Sub(), ())


def test_contact_unsubscribes_from_our_presence():
    sub, actions = s.inbound(Sub("both"), "unsubscribe", paired=True)
    assert sub == Sub("to") and actions == (s.SEND_UNSUBSCRIBED, s.SEND_UNAVAILABLE)
    assert s.inbound(Sub("to"), "unsubscribe", paired=True) == (Sub("to"), ())


def test_contact_cancels_or_denies_our_subscription():
    sub, actions = s.inbound(Sub("both"), "unsubscribed", paired=True)
    assert sub == Sub("from") and actions == (s.CONTACT_GONE,)
    # a denied request: pending cleared
    assert s.inbound(Sub("none", ask=True), "unsubscribed", paired=True) == (Sub(), (s.CONTACT_GONE,))
    assert s.inbound(Sub(), "unsubscribed", paired=True) == (Sub(), ())


def test_removing_a_pair_cancels_both_directions():
    assert s.remove(Sub("both")) == (Sub(), (s.SEND_UNSUBSCRIBE, s.SEND_UNAVAILABLE, s.SEND_UNSUBSCRIBED,
                                             s.CONTACT_GONE))
    assert s.remove(Sub("none", ask=True)) == (Sub(), (s.SEND_UNSUBSCRIBE,))
    assert s.remove(Sub()) == (Sub(), ())


def test_only_from_or_both_may_see_presence():
    assert [st for st in s.STATES if s.may_see(Sub(st))] == ["from", "both"]
    assert Sub("from", ask=True).label == "from+pending"
    with pytest.raises(ValueError):
        Sub("half")
    with pytest.raises(ValueError):
        s.inbound(Sub(), "probe", paired=True)


# -- component queue ---------------------------------------------------------------------
def test_queue_is_bounded_while_disconnected():
    conn = ComponentConnection(MemoryReactorClock(), "127.0.0.1", 5347, "web.example.org", "secret",
                               on_stanza=lambda el: None, max_queue=2)
    el = domish.Element((None, "message"))
    assert conn.send(el) and conn.send(el)
    assert not conn.can_send() and not conn.send(el) and conn.dropped == 1
    assert not conn.send(el, queue=False)  # presence is not queued, and not counted as dropped
    assert len(conn.queue) == 2 and conn.dropped == 1


def test_a_refused_configuration_is_logged_as_such_not_as_a_full_queue():
    from twisted.logger import globalLogPublisher
    conn = ComponentConnection(MemoryReactorClock(), "127.0.0.1", 5347, "web.example.org", "secret",
                               on_stanza=lambda el: None)
    conn.fatal = "not-authorized"
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        el = domish.Element((None, "presence"))
        assert not conn.send(el) and not conn.send(el) and not conn.send(el, queue=False)
    finally:
        globalLogPublisher.removeObserver(events.append)
    texts = [e["log_format"] for e in events if "XMPP" in e.get("log_format", "")]
    assert len(texts) == 1 and "bridge is off" in texts[0] and "queue" not in texts[0]
    assert conn.refused == 3 and conn.dropped == 0
