"""The WebSocket transport (docs/design.md#d21-websocket, docs/protocol.md#websocket-transport)
over a real loopback socket against the in-process daemon; its timers (keepalive, idle,
hold) run on the harness's Clock. The transport does not depend on the storage
backend, so these run on SQLite only."""
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.conftest import Harness, make_config, seed_directory
from tests.storefixtures import make_store
from tests.wsclient import Rejected, connect, subscribe

inline = pytest_twisted.ensureDeferred


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path, request):
    """A started :class:`~tests.conftest.Harness` on SQLite with the usual directory."""
    marker = request.node.get_closest_marker("config")
    config = make_config(**(marker.kwargs if marker else {}))
    store, drop = await make_store("sqlite", tmp_path)
    h = Harness(store, config)
    await h.start()
    await seed_directory(store)
    try:
        yield h
    finally:
        await h.stop()
        await drop()


async def until(condition, what, timeout_s=10.0):
    """Let the reactor run until ``condition()`` holds (bytes in flight, database threads)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.005, lambda: None)


def packets(envelope, kind="messages"):
    return [(p.get("body") or p.get("show"), p["seq"]) for p in envelope[kind]]


# -- subscribe and envelopes ----------------------------------------------------------------

@inline
async def test_online_names_the_socket_url(daemon):
    ans = await daemon.online("alice")
    assert ans["connection"]["websocket"] == "ws://127.0.0.1:8000/ws"


@inline
@pytest.mark.config(websocket={"enabled": False})
async def test_disabled_websocket_is_not_offered_nor_served(daemon):
    ans = await daemon.online("alice")
    assert "websocket" not in ans["connection"]
    with pytest.raises(Rejected) as refused:
        await connect(daemon.base)
    assert refused.value.status == 404 and refused.value.json["error"] == "unknown_path"


@inline
async def test_subscribe_streams_envelopes_and_calls_get_replies(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    sock, first = await subscribe(daemon.base, bob)
    assert first == {"status": "ok", "messages": [], "presences": [], "statuses": [], "seq": first["seq"]}
    assert daemon.router.stats()["parked_polls"] == 1 and daemon.router.stats()["websockets"] == 1
    asock, _ = await subscribe(daemon.base, alice)
    asock.send({"id": 7, "call": "message", "params": {"type": "unicast", "to": "bob", "body": "hi"}})
    reply = await asock.next()
    assert reply == {"reply": 7, "result": "ok"}
    got = await sock.next()
    assert [m["body"] for m in got["messages"]] == ["hi"] and got["seq"] == got["messages"][0]["seq"]
    assert got["messages"][0]["from"] == "alice"
    # the message is stored (the reply came after the commit)
    history = await daemon.call("history", user="bob", id="alice", type="unicast")
    assert [m["body"] for m in history.json] == ["hi"]
    sock.close()
    asock.close()
    await sock.wait_closed()
    await asock.wait_closed()


async def _send(daemon, ticket, body, to="bob"):
    resp = await daemon.call("message", ticket=ticket, type="unicast", to=to, body=body)
    assert resp.status == 200, resp.text


@inline
async def test_ack_and_resume_send_nothing_twice_and_lose_nothing(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    sock, first = await subscribe(daemon.base, bob, ack=0)
    await _send(daemon, alice, "one")
    await _send(daemon, alice, "two")
    one, two = await sock.next(), await sock.next()
    assert [m["body"] for m in one["messages"] + two["messages"]] == ["one", "two"]
    sock.send(f"ack {one['seq']}")  # "two" is not acked
    sock.close()
    assert await sock.wait_closed() == 1000
    await until(lambda: not daemon.router.session(bob).streaming, "the socket to be gone")
    await _send(daemon, alice, "three")  # while no socket is there
    again, resent = await subscribe(daemon.base, bob, ack=one["seq"])
    assert [m["body"] for m in resent["messages"]] == ["two", "three"]
    await _send(daemon, alice, "four")
    assert [m["body"] for m in (await again.next())["messages"]] == ["four"]
    again.close()
    await again.wait_closed()


@inline
async def test_without_ack_what_was_sent_counts_as_delivered(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, bob)
    await _send(daemon, alice, "one")
    assert [m["body"] for m in (await sock.next())["messages"]] == ["one"]
    sock.close()
    await sock.wait_closed()
    await until(lambda: not daemon.router.session(bob).streaming, "the socket to be gone")
    again, first = await subscribe(daemon.base, bob)
    assert first["messages"] == [] and first["seq"] == 1
    again.close()
    await again.wait_closed()


@inline
async def test_a_newer_socket_or_poll_replaces_the_socket_with_4409(daemon):
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    first, _ = await subscribe(daemon.base, bob)
    second, _ = await subscribe(daemon.base, bob)
    assert await first.wait_closed() == 4409
    poll = daemon.poll(bob)
    assert await second.wait_closed() == 4409
    await until(lambda: daemon.router.session(bob).parked, "the poll to park")
    third, _ = await subscribe(daemon.base, bob)  # a newer socket stops the parked poll
    assert (await poll).json == {"status": "stopped"}
    third.close()
    await third.wait_closed()
