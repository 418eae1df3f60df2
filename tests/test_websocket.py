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
from tests.wsclient import Rejected, connect, fragment, subscribe

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


# -- calls and replies ----------------------------------------------------------------------

@inline
async def test_message_reply_comes_after_the_commit_and_never_back_to_the_sender(daemon):
    tab1 = (await daemon.online("alice"))["connection"]["ticket"]
    tab2 = (await daemon.online("alice"))["connection"]["ticket"]
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    s1, _ = await subscribe(daemon.base, tab1)
    s2, _ = await subscribe(daemon.base, tab2)
    sb, _ = await subscribe(daemon.base, bob)
    s1.send({"id": "m1", "call": "message", "params": {"type": "unicast", "to": "bob", "body": "hello",
                                                       "client_id": "c-1"}})
    assert await s1.next() == {"reply": "m1", "result": "ok"}
    stored = await daemon.store.unicast_history("alice", "bob", 10)
    assert [m["body"] for m in stored] == ["hello"]  # committed before the reply
    assert [m["body"] for m in (await sb.next())["messages"]] == ["hello"]
    assert [m["body"] for m in (await s2.next())["messages"]] == ["hello"]  # the other tab's copy
    # the same client_id again: answered ok, nothing stored or routed a second time
    s1.send({"id": "m2", "call": "message", "params": {"type": "unicast", "to": "bob", "body": "hello",
                                                       "client_id": "c-1"}})
    assert await s1.next() == {"reply": "m2", "result": "ok"}
    s1.send({"id": 3, "call": "status", "params": {"to": "bob", "show": "typing"}})
    assert await s1.next() == {"reply": 3, "result": "ok"}
    # bob's next frame is the typing status, not a second "hello"; the sender got nothing
    assert (await sb.next())["statuses"][0]["show"] == "typing"
    assert len(await daemon.store.unicast_history("alice", "bob", 10)) == 1
    assert s1.frames.pending == [] and s2.frames.pending == []
    for sock in (s1, s2, sb):
        sock.close()
        await sock.wait_closed()


@inline
async def test_room_message_and_presence_calls(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    carol = (await daemon.online("carol"))["connection"]["ticket"]
    sa, _ = await subscribe(daemon.base, alice)
    sc, _ = await subscribe(daemon.base, carol)
    sa.send({"id": 1, "call": "message", "params": {"type": "multicast", "to": "lobby", "body": "all"}})
    assert await sa.next() == {"reply": 1, "result": "ok"}
    got = await sc.next()
    assert [(m["body"], m["to"]) for m in got["messages"]] == [("all", "lobby")]
    sa.send({"id": 2, "call": "presence", "params": {"show": "away"}})
    assert await sa.next() == {"reply": 2, "result": "ok"}
    assert daemon.router.presence_of("alice") == ("online", "away", "")
    for sock in (sa, sc):
        sock.close()
        await sock.wait_closed()


@inline
async def test_refusals_are_error_replies_and_the_socket_stays_open(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    sock.send("{not json")
    assert (await sock.next())["reply"] is None
    sock.send({"id": 1, "call": "history", "params": {}})
    bad = await sock.next()
    assert bad["reply"] == 1 and bad["error"]["error"] == "bad_request" and bad["error"]["success"] is False
    sock.send({"id": 2, "call": "message", "params": []})
    assert (await sock.next())["error"]["error"] == "bad_request"
    sock.send({"id": 3, "call": "message", "params": {"type": "unicast", "to": "nobody-here", "body": "x"}})
    assert (await sock.next())["error"]["error"] == "unknown_user"
    sock.send({"id": 4, "call": "message", "params": {"type": "unicast", "to": "bob"}})
    missing = await sock.next()
    assert missing["error"]["error"] == "missing_parameter" and "body" in missing["error"]["error_msg"]
    sock.send({"id": [1], "call": "message", "params": {}})  # an id that is not a scalar
    assert (await sock.next())["reply"] is None
    sock.send("ack twelve")
    assert (await sock.next())["error"]["error"] == "bad_request"
    # still open and serving calls
    sock.send({"id": 5, "call": "presence", "params": {"show": "dnd"}})
    assert await sock.next() == {"reply": 5, "result": "ok"}
    sock.close()
    assert await sock.wait_closed() == 1000


@inline
@pytest.mark.config(limits={"messages_per_minute": 2})
async def test_rate_limit_is_an_error_reply_and_the_socket_stays_open(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    for n in range(6):  # the burst is 5 (docs/design.md#d15-limits)
        sock.send({"id": n, "call": "message", "params": {"type": "unicast", "to": "bob", "body": f"m{n}",
                                                          "client_id": f"k{n}"}})
    replies = {r["reply"]: r for r in [await sock.next() for _ in range(6)]}
    assert all(replies[n]["result"] == "ok" for n in range(5))
    assert replies[5]["error"]["error"] == "rate_limited"
    # a retry of a stored message is answered ok even over the limit (docs/design.md#d17-idempotent-sends)
    sock.send({"id": 9, "call": "message", "params": {"type": "unicast", "to": "bob", "body": "m0",
                                                      "client_id": "k0"}})
    assert await sock.next() == {"reply": 9, "result": "ok"}
    assert len(await daemon.store.unicast_history("alice", "bob", 10)) == 5
    sock.send({"id": 10, "call": "status", "params": {"to": "bob", "show": "typing"}})
    assert await sock.next() == {"reply": 10, "result": "ok"}
    sock.close()
    await sock.wait_closed()


@inline
async def test_offline_call_replies_then_closes_1000_and_ends_the_session(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    sock.send({"id": "bye", "call": "offline", "params": {}})
    assert await sock.next() == {"reply": "bye", "result": "ok"}
    assert await sock.wait_closed() == 1000
    assert alice not in daemon.router.sessions


# -- close codes ----------------------------------------------------------------------------

@inline
async def test_unknown_ticket_is_4404_and_a_bad_first_frame_4400(daemon):
    sock, = [await connect(daemon.base)]
    sock.send("subscribe test.local no-such-ticket")
    assert await sock.wait_closed() == 4404
    for first in ("hello", "subscribe onlyone", "subscribe d t 12x", '{"id": 1, "call": "message"}',
                  "subscribe d t 1 extra"):
        sock = await connect(daemon.base)
        sock.send(first)
        assert await sock.wait_closed() == 4400, first


@inline
async def test_a_session_ended_over_http_closes_the_socket_4404(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    resp = await daemon.call("offline", ticket=alice)
    assert resp.status == 200
    assert await sock.wait_closed() == 4404


@inline
async def test_binary_frame_is_1003(daemon):
    for subscribed in (False, True):
        alice = (await daemon.online("alice"))["connection"]["ticket"]
        sock = (await subscribe(daemon.base, alice))[0] if subscribed else await connect(daemon.base)
        sock.send_bytes(b"\x00\x01")
        assert await sock.wait_closed() == 1003


@inline
async def test_frames_over_max_body_bytes_are_1009(daemon):
    limit = daemon.config.server.max_body_bytes
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    sock.send({"id": 1, "call": "status", "params": {"to": "bob", "show": "x" * limit}})
    assert await sock.wait_closed() == 1009
    # a message in fragments is closed before it ends
    sock, _ = await subscribe(daemon.base, alice)
    for _ in range(limit // 500 + 2):
        fragment(sock, "y" * 500, finished=False)
    assert await sock.wait_closed() == 1009
    # just under the limit is a call like any other
    sock, _ = await subscribe(daemon.base, alice)
    body = "z" * daemon.config.limits.message_chars
    sock.send({"id": 2, "call": "message", "params": {"type": "unicast", "to": "bob", "body": body}})
    assert await sock.next() == {"reply": 2, "result": "ok"}
    sock.close()
    await sock.wait_closed()


@inline
async def test_shutdown_closes_every_socket_1001_and_refuses_new_ones(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    subscribed, _ = await subscribe(daemon.base, alice)
    idle = await connect(daemon.base)
    daemon.ctx.shutting_down = True
    daemon.router.shutdown()
    assert daemon.web.sockets.close_all() == 1  # the one that had not subscribed
    assert await subscribed.wait_closed() == 1001
    assert await idle.wait_closed() == 1001
    with pytest.raises(Rejected) as refused:
        await connect(daemon.base)
    assert refused.value.status == 503 and refused.value.json["error"] == "shutting_down"


# -- the handshake --------------------------------------------------------------------------

@inline
@pytest.mark.config(server={"allowed_origins": ["https://site.example"]})
async def test_origin_check(daemon):
    with pytest.raises(Rejected) as refused:
        await connect(daemon.base, headers=[("Origin", "https://evil.example")])
    assert refused.value.status == 403
    assert refused.value.json == {"success": False, "error": "origin_not_allowed",
                                  "error_msg": refused.value.json["error_msg"]}
    assert refused.value.headers["content-type"].startswith("application/json")
    for origin in ("https://site.example", "http://127.0.0.1:8000", daemon.base):
        sock = await connect(daemon.base, headers=[("Origin", origin)])
        sock.close()
        assert await sock.wait_closed() == 1000
    sock = await connect(daemon.base)  # no Origin: not a browser, allowed
    sock.close()
    await sock.wait_closed()


@inline
async def test_no_extension_is_negotiated_and_plain_gets_are_refused(daemon):
    sock = await connect(daemon.base, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    accepted = sock.accepted.result
    assert accepted.extensions == [] and not any(k.lower() == b"sec-websocket-extensions"
                                                 for k, _ in accepted.extra_headers)
    sock.close()
    await sock.wait_closed()
    plain = await daemon.request("GET", "/ws")
    assert plain.status == 400 and plain.json["error"] == "bad_request"
    post = await daemon.request("POST", "/ws")
    assert post.status == 405 and post.json["error"] == "method_not_allowed"


def test_twisted_private_names_still_exist():
    from twisted.internet.protocol import Protocol
    from twisted.web import _websocket_impl, http
    from wsproto import ConnectionType, WSConnection

    from nextim_twisted.web.websocket import TWISTED_PRIVATE_NAMES
    wire = _websocket_impl._WebSocketWireProtocol(WSConnection(ConnectionType.SERVER), lambda c, t: None, Protocol())
    owners = {"twisted.web.http.HTTPChannel": http.HTTPChannel,
              "twisted.web._websocket_impl._WebSocketWireProtocol()": wire,
              "twisted.web._websocket_impl.Buffer()": wire._textBuffer}
    for owner, name in TWISTED_PRIVATE_NAMES:
        assert hasattr(owners[owner], name), f"{owner}.{name} is gone: see nextim_twisted/web/websocket.py"


# -- timers on the Clock --------------------------------------------------------------------

@inline
async def test_an_open_socket_holds_off_the_idle_timer_which_starts_at_the_close(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    daemon.clock.advance(20)  # twice session_idle, less than one poll_hold
    assert daemon.router.session(alice).parked
    sock.close()
    await sock.wait_closed()
    await until(lambda: not daemon.router.session(alice).streaming, "the server to see the close")
    daemon.clock.advance(9)
    assert alice in daemon.router.sessions
    daemon.clock.advance(1.2)
    assert alice not in daemon.router.sessions


def _server_side(daemon):
    (socket,) = daemon.web.sockets.open
    return socket


@inline
async def test_keepalive_pings_a_live_peer_and_closes_a_dead_one(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    live, _ = await subscribe(daemon.base, alice)
    dead, _ = await subscribe(daemon.base, bob, answer_pings=False)
    hold = daemon.config.timers.poll_hold
    daemon.clock.advance(hold + 0.2)
    await until(lambda: live.pings == 1 and dead.pings == 1, "the first pings")
    await until(lambda: all(s.heard for s in daemon.web.sockets.open if s.session.ticket == alice),
                "alice's pong")
    daemon.clock.advance(hold + 0.2)  # the wheel fires up to a tick late
    assert await dead.wait_closed() is None  # aborted: no close frame to a dead peer
    await until(lambda: live.pings == 2, "the second ping")
    assert not live.closed.called
    assert bob in daemon.router.sessions and not daemon.router.session(bob).parked  # idle runs now
    live.close()
    await live.wait_closed()


@inline
async def test_a_socket_that_never_subscribes_is_closed_at_the_first_ping(daemon):
    sock = await connect(daemon.base)
    daemon.clock.advance(daemon.config.timers.poll_hold + 0.2)
    assert await sock.wait_closed() is None


@inline
@pytest.mark.config(timers={"session_max": 30})
async def test_a_streaming_session_past_session_max_is_closed_4404(daemon):
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    sock, _ = await subscribe(daemon.base, alice)
    daemon.clock.advance(25.2)
    await until(lambda: sock.pings == 1, "the ping")
    await until(lambda: _server_side(daemon).heard, "the pong")
    daemon.clock.advance(25.2)
    assert await sock.wait_closed() == 4404
    assert alice not in daemon.router.sessions


@inline
async def test_a_subscribe_frame_in_the_same_packet_as_the_handshake_is_read(daemon):
    from urllib.parse import urlsplit

    from twisted.internet import endpoints, protocol
    from wsproto.frame_protocol import FrameProtocol

    alice = (await daemon.online("alice"))["connection"]["ticket"]
    parts = urlsplit(daemon.base)
    got = []

    class Eager(protocol.Protocol):
        def connectionMade(self):
            handshake = (f"GET /ws HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode()
            frame = FrameProtocol(client=True, extensions=[]).send_data(f"subscribe test.local {alice}", True)
            self.transport.write(handshake + frame)  # one write, one read on the server

        def dataReceived(self, data):
            got.append(data)

    client = Eager()
    await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, parts.hostname, parts.port), client)
    await until(lambda: b'"status":"ok"' in b"".join(got), "the first envelope")
    assert daemon.router.session(alice).streaming
    client.transport.loseConnection()
