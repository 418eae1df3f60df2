"""The XMPP bridge against a real ejabberd (docs/xmpp.md): what the Prosody tests check
for chat, subscriptions and bridged rooms, on the other server that web sites bridge to.

Skipped, with the reason, when ejabberd cannot run here (:func:`tests.ejabberd.unavailable`).
"""
import pytest
import pytest_twisted

from tests import ejabberd
from tests.test_xmpp import (BENVOLIO, NAMES, ROMEO, WEB, bridged,  # noqa: F401 (a fixture)
                             killed_and_restarted_while_users_chat, online, pair, three_in_a_room, wait_inside)
from tests.xmppclient import until

WHY_NOT = ejabberd.unavailable()
pytestmark = [
    pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or ""),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ejabberd node for the module (the ``bridged`` fixture connects to it)."""
    e = ejabberd.Ejabberd(tmp_path_factory.mktemp("ejabberd"))
    try:
        e.start()
    except RuntimeError as exc:
        e.stop()
        pytest.skip(f"ejabberd did not start here: {str(exc).splitlines()[0]}")
    try:
        for name in NAMES:
            e.register(name, "pw-" + name)
        yield e
    finally:
        e.stop()


@pytest_twisted.ensureDeferred
async def test_chat_with_an_ejabberd_user(bridged):
    h = bridged
    romeo = h.xmpp_user(ROMEO)
    romeo.start()
    await romeo.wait_started()
    await pair(h, "alice", ROMEO)
    answer, inbox = await online(h, "alice")
    alice_jid = f"alice@{h.bridge.domain}"
    resp = await h.call("message", ticket=answer["connection"]["ticket"], type="unicast", to=ROMEO, body="hi")
    assert resp.text == "ok"
    await until(lambda: [m for m in romeo.messages if m["body"] == "hi"], 10, "romeo to get it")
    romeo.send_message(alice_jid, "hello alice")
    await until(lambda: [m for m in inbox.messages if m["body"] == "hello alice"], 10, "alice to get the reply")
    await until(lambda: (p := romeo.last_presence(alice_jid)) and p["type"] == "available", 10, "alice's presence")


@pytest_twisted.ensureDeferred
async def test_room_bridged_while_three_members_are_online_on_ejabberd(bridged):
    h = bridged
    tickets, inboxes = await three_in_a_room(h, "arena")
    room_jid = f"arena@{h.bridge.muc_domain}"
    resp = await h.admin("PUT", "/admin/rooms/arena", {"nick": "Arena", "muc": "arena"})
    assert resp.status == 200, resp.text
    for uid in WEB:
        await h.call("message", ticket=tickets[uid], type="multicast", to="arena", body=f"early {uid}")
    await wait_inside(h, "arena", 30)
    benvolio = h.xmpp_user(BENVOLIO)
    benvolio.start()
    await benvolio.wait_started()
    benvolio.join(room_jid, "Benvolio", history=20)
    await until(lambda: {p["nick"] for p in benvolio.muc_presences if p["type"] == "available"}
                >= {"Alice", "Bob", "Carol"}, 10, "benvolio to see the three")
    for uid in WEB:
        await h.call("message", ticket=tickets[uid], type="multicast", to="arena", body=f"late {uid}")
    await until(lambda: {m["body"] for m in benvolio.groupchat} >= {f"late {u}" for u in WEB}, 10, "the late ones")
    await until(lambda: not any(o.unacked for o in h.bridge.joined["arena"].values()), 10, "reflections")
    got = [m["body"] for m in benvolio.groupchat + benvolio.history]
    for uid in WEB:
        assert got.count(f"late {uid}") == 1
        # sent before benvolio was there: in the room's history, once
        assert got.count(f"early {uid}") == 1, got
        assert not [m for m in inboxes[uid].messages if m.get("error")]


@pytest_twisted.ensureDeferred
async def test_ejabberd_killed_and_restarted_while_users_chat(bridged, server):
    await killed_and_restarted_while_users_chat(bridged, server)
