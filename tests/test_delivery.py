"""The delivery rule: "is the recipient live → store → re-check for a recipient who came
online while storing → route" holds for every source of a message: ``webim/message``,
inbound XMPP chat and the admin broadcast (docs/design.md#d7-messages,
docs/design.md#d10-history).

Each race test makes the store's insert yield control, lets the recipient go online
in between, and counts what reaches them: in ``online``'s ``new_messages`` and in the
live queue together, exactly once.
"""
import pytest_twisted

from nextim_twisted.handlers import xmpp as xmpp_handlers

inline = pytest_twisted.ensureDeferred

ROMEO = "romeo@montague.lit"


def _seen(daemon, answer, body):
    """How often ``body`` reached the user of an ``online`` ``answer``: in its
    ``new_messages`` plus in the live queue of the session it opened."""
    ticket = answer["connection"]["ticket"]
    queued = [p["body"] for _, kind, p in daemon.router.session(ticket).queue if kind == "messages"]
    return [m["body"] for m in answer["new_messages"] if m["body"] == body] + [b for b in queued if b == body]


def _race(daemon, user):
    """Make the store's next ``add_message`` commit, then let ``user`` go online before
    it returns. Returns the dict that gets ``answer`` (that ``online``'s answer)."""
    real_add = daemon.store.add_message
    state = {}

    async def racing_add(*args):
        daemon.store.add_message = real_add
        msg = await real_add(*args)
        state["answer"] = await daemon.online(user)
        return msg

    daemon.store.add_message = racing_add
    return state


@inline
async def test_xmpp_chat_to_a_user_coming_online_while_it_is_stored_arrives_once(daemon):
    # was: inbound XMPP chat decided "offline", stored undelivered, then routed it live
    # as well: the web user got it twice, in new_messages and on the comet.
    state = _race(daemon, "dave")
    await xmpp_handlers.incoming_chat(daemon.ctx, "dave", ROMEO, "Romeo", "race from xmpp")
    assert _seen(daemon, state["answer"], "race from xmpp") == ["race from xmpp"]
    assert (await daemon.online("dave"))["new_messages"] == []  # and not again later


@inline
async def test_xmpp_chat_to_an_offline_user_waits_for_their_online(daemon):
    await xmpp_handlers.incoming_chat(daemon.ctx, "dave", ROMEO, "Romeo", "while away")
    answer = await daemon.online("dave")
    assert [m["body"] for m in answer["new_messages"]] == ["while away"]
    assert answer["new_messages"][0]["from"] == ROMEO


@inline
async def test_web_message_to_a_user_coming_online_while_it_is_stored_arrives_once(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    state = _race(daemon, "dave")
    resp = await daemon.call("message", ticket=alice, type="unicast", to="dave", body="race from web")
    assert resp.text == "ok"
    assert _seen(daemon, state["answer"], "race from web") == ["race from web"]


@inline
async def test_broadcast_reaches_a_user_coming_online_while_it_is_stored_at_most_once(daemon):
    # A broadcast is for whoever is online when it is routed: it is never kept for a
    # later online (docs/design.md#d7-messages), so the racing user gets it live, once.
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    state = _race(daemon, "dave")
    resp = await daemon.admin("POST", "/admin/broadcast", {"body": "to all"})
    assert resp.status == 200 and resp.json["delivered"] == 2
    assert _seen(daemon, state["answer"], "to all") == ["to all"]
    env = (await daemon.poll(bob, ack=0)).json
    assert [(m["type"], m["to"], m["body"]) for m in env["messages"]] == [("unicast", "bob", "to all")]
