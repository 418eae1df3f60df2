"""Idempotent sends (docs/design.md#d17-idempotent-sends) and the whole offline backlog
(docs/design.md#d18-the-whole-backlog), each with the input that broke them: a retried
``message`` after a lost answer (also two at once, and one after a restart), and 150
offline messages from three senders (also with several tabs coming online at once)."""
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.conftest import Harness

inline = pytest_twisted.ensureDeferred


async def _collect(daemon, ticket, want, seq=0):
    """Poll with ``ack`` until ``want`` message packets came; → (packets, last seq)."""
    got = []
    for _ in range(100):
        if len(got) >= want:
            break
        resp = await daemon.poll(ticket, ack=seq)
        assert resp.status == 200, resp.text
        got += resp.json["messages"]
        seq = resp.json["seq"]
    return got, seq


# -- idempotent sends ----------------------------------------------------------------

@inline
async def test_a_retried_message_is_stored_and_routed_once(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    send = dict(ticket=a, type="unicast", to="bob", body="hello", client_id="m-1")
    first = await daemon.call("message", **send)
    retry = await daemon.call("message", **send)       # the answer to the first was lost
    assert first.text == retry.text == "ok" and retry.status == first.status == 200
    assert await daemon.store.message_count() == 1
    packets, seq = await _collect(daemon, b, 1)
    assert [(p["body"], p["client_id"]) for p in packets] == [("hello", "m-1")]
    assert isinstance(packets[0]["id"], int)
    later = await daemon.call("message", ticket=a, type="unicast", to="bob", body="next", client_id="m-2")
    assert later.text == "ok"
    more, _ = await _collect(daemon, b, 1, seq)                 # the retry routed nothing
    assert [p["body"] for p in more] == ["next"]
    history = (await daemon.call("history", ticket=b, id="alice")).json
    assert [(h["id"], h["client_id"], h["body"]) for h in history] == [
        (packets[0]["id"], "m-1", "hello"), (more[0]["id"], "m-2", "next")]


@inline
async def test_the_same_client_id_with_other_content_is_409_and_stores_nothing(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("message", ticket=a, type="unicast", to="bob", body="one", client_id="k")).text == "ok"
    other = await daemon.call("message", ticket=a, type="unicast", to="bob", body="two", client_id="k")
    assert other.status == 409 and other.json["success"] is False and other.json["error"] == "client_id_reused"
    elsewhere = await daemon.call("message", ticket=a, type="unicast", to="carol", body="one", client_id="k")
    assert elsewhere.status == 409
    assert await daemon.store.message_count() == 1
    # keys are per sender: bob may use the same one
    b = (await daemon.online("bob"))["connection"]["ticket"]
    assert (await daemon.call("message", ticket=b, type="unicast", to="alice", body="two", client_id="k")).text == "ok"


@inline
async def test_two_retries_at_once_store_one_message(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    send = dict(ticket=a, type="unicast", to="bob", body="twice", client_id="dup")
    answers = await defer.gatherResults([defer.ensureDeferred(daemon.call("message", **send)) for _ in range(3)])
    assert [r.text for r in answers] == ["ok"] * 3
    assert await daemon.store.message_count() == 1
    packets, _ = await _collect(daemon, b, 1)
    assert [p["body"] for p in packets] == ["twice"]


@inline
async def test_a_retry_after_a_restart_stores_nothing(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    send = dict(type="unicast", to="bob", body="before the crash", client_id="r-1")
    assert (await daemon.call("message", ticket=a, **send)).text == "ok"
    await daemon.stop()                                # the daemon restarts: keys are stored
    again = Harness(daemon.store, daemon.config)
    await again.start()
    try:
        t = (await again.online("alice"))["connection"]["ticket"]
        assert (await again.call("message", ticket=t, **send)).text == "ok"
        assert await again.store.message_count() == 1
    finally:
        await again.stop()
        await daemon.start()                           # so the fixture can stop it


@pytest.mark.parametrize("client_id", ["", "x" * 65, "a\x00b", "tab\there", "new\nline"])
@inline
async def test_a_bad_client_id_is_400_and_stores_nothing(daemon, client_id):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    resp = await daemon.call("message", ticket=a, type="unicast", to="bob", body="x", client_id=client_id)
    assert resp.status == 400 and resp.json["success"] is False
    assert await daemon.store.message_count() == 0


@pytest.mark.config(limits={"messages_per_minute": 10})
@inline
async def test_a_retry_of_a_stored_message_is_ok_even_when_rate_limited(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    for i in range(5):
        await daemon.call("message", ticket=a, type="unicast", to="bob", body=str(i), client_id=f"c{i}")
    assert (await daemon.call("message", ticket=a, type="unicast", to="bob", body="new")).status == 429
    retry = await daemon.call("message", ticket=a, type="unicast", to="bob", body="4", client_id="c4")
    assert retry.text == "ok" and await daemon.store.message_count() == 5


@pytest.mark.config(limits={"client_id_hours": 1})
@inline
async def test_keys_are_forgotten_after_client_id_hours(daemon):
    from nextim_twisted.store import keys
    a = (await daemon.online("alice"))["connection"]["ticket"]
    send = dict(ticket=a, type="unicast", to="bob", body="x", client_id="old")
    assert (await daemon.call("message", **send)).text == "ok"
    assert await keys.purge(daemon.store, daemon.ctx.now_ms() - 3600 * 1000) == 0   # younger than an hour
    assert await keys.purge(daemon.store, daemon.ctx.now_ms() + 1) == 1
    assert (await daemon.call("message", **send)).text == "ok"
    assert await daemon.store.message_count() == 2


# -- the whole backlog ---------------------------------------------------------------

async def _offline_messages(daemon, count, senders=("alice", "carol", "dave"), to="bob"):
    """``count`` undelivered unicasts to ``to``, the senders taking turns; → bodies in order."""
    bodies = []
    for i in range(count):
        sender = senders[i % len(senders)]
        body = f"{sender} {i}"
        await daemon.store.add_message("unicast", sender, to, sender.title(), body, "", daemon.ctx.now_ms(), False)
        bodies.append(body)
    return bodies


@inline
async def test_150_offline_messages_from_three_senders_all_arrive_once_in_order(daemon):
    bodies = await _offline_messages(daemon, 150)
    ans = await daemon.online("bob")
    assert [m["body"] for m in ans["new_messages"]] == bodies[:50]
    assert ans["new_messages_pending"] == 100
    packets, _ = await _collect(daemon, ans["connection"]["ticket"], 100)
    assert [p["body"] for p in packets] == bodies[50:]
    assert all(isinstance(p["id"], int) for p in packets)
    again = await daemon.online("bob")
    assert again["new_messages"] == [] and again["new_messages_pending"] == 0


@inline
async def test_several_tabs_coming_online_at_once_share_the_backlog_exactly_once(daemon):
    bodies = await _offline_messages(daemon, 150)
    answers = await defer.gatherResults([defer.ensureDeferred(daemon.online("bob")) for _ in range(3)])
    seen = [m["body"] for a in answers for m in a["new_messages"]]
    # what the answers did not carry follows on one tab's comet or another's
    for ans in answers:
        session = daemon.router.sessions[ans["connection"]["ticket"]]
        await daemon.settle()
        seen += [p["body"] for _, kind, p in session.queue if kind == "messages"]
    for _ in range(20):
        if len(seen) >= 150:
            break
        await daemon.settle()
        seen = [m["body"] for a in answers for m in a["new_messages"]]
        for ans in answers:
            session = daemon.router.sessions[ans["connection"]["ticket"]]
            seen += [p["body"] for _, kind, p in session.queue if kind == "messages"]
    assert sorted(seen) == sorted(bodies)                     # each exactly once


@pytest.mark.config(limits={"queue_packets": 60})
@inline
async def test_a_backlog_larger_than_the_queue_arrives_without_overflow(daemon):
    bodies = await _offline_messages(daemon, 400)
    ans = await daemon.online("bob")
    assert ans["new_messages_pending"] == 350
    ticket = ans["connection"]["ticket"]
    packets, _ = await _collect(daemon, ticket, 350)
    assert [p["body"] for p in packets] == bodies[50:]
    assert ticket in daemon.router.sessions and daemon.router.overflows == 0


@inline
async def test_a_legacy_poll_without_ack_gets_the_backlog_too(daemon):
    bodies = await _offline_messages(daemon, 80)
    ans = await daemon.online("bob")
    got = []
    for _ in range(20):
        if len(got) >= 30:
            break
        got += (await daemon.poll(ans["connection"]["ticket"])).json["messages"]
    assert [p["body"] for p in got] == bodies[50:]
