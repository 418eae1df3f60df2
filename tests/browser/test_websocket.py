"""The browser client over the WebSocket transport (docs/client.md#transports,
docs/design.md#d21-websocket): the socket is used when the daemon offers it, a
dropped socket resumes from its ack, a refused handshake falls back to the
JSONP long poll, and a daemon without WebSocket is long-polled as before."""
import json
import re

import pytest

from tests.browser.conftest import (NICKS, SHORT_TIMERS, expect, free_port, running, running_host_site, sign_in,
                                    site_login, start_daemon, start_embed_daemon)

pytestmark = pytest.mark.browser

WS_PATH = re.compile(r"/ws$")


def tid(page, testid):
    return page.get_by_test_id(testid)


class Traffic:
    """What one page sent to the daemon: the WebSockets it opened (URL, frames
    it sent, whether the handshake failed) and its long-poll requests."""

    def __init__(self, page):
        self.sockets = []
        self.polls = []
        self.calls = []  # webim/<name> over HTTP (fetch or JSONP)
        page.on("websocket", self._socket)
        page.on("request", self._request)

    def _request(self, request):
        if "/packets" in request.url:
            self.polls.append(request.url)
        elif "/webim/" in request.url:
            self.calls.append(request.url.split("/webim/")[1].split("?")[0])

    def _socket(self, ws):
        entry = {"url": ws.url, "sent": [], "error": None}
        self.sockets.append(entry)
        ws.on("framesent", lambda payload: entry["sent"].append(payload))
        ws.on("socketerror", lambda error: entry.__setitem__("error", error))


def open_page(pages, url, label):
    """A page that records its traffic from the first request on."""
    page = pages.new(None, label=label)
    traffic = Traffic(page)
    page.goto(url)
    return page, traffic


@pytest.fixture(scope="module")
def demo_daemon(tmp_path_factory):
    """A demo daemon of this module's own: the demo users' state here (their welcome
    notification, handed out once) must not depend on which browser tests ran first."""
    with running(start_daemon(tmp_path_factory.mktemp("nextim-ws-demo"))) as d:
        yield d


def login(pages, daemon, user, route=None):
    """Sign in on the daemon's own page; ``route(page)`` runs before it loads."""
    page = pages.new(None, label=user)
    traffic = Traffic(page)
    if route:
        route(page)
    page.goto(daemon.url + "/")
    sign_in(page, user, user)
    expect(tid(page, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(page, "my-nick")).to_have_text(NICKS[user])
    return page, traffic


def channel(page):
    return page.evaluate("NextIM.apps[0].channel")


def open_chat(page, buddy):
    tid(page, f"buddy-{buddy}").click()
    expect(tid(page, "chat-pane")).to_have_attribute("data-chat", f"unicast:{buddy}")


def send(page, text):
    tid(page, "chat-input").fill(text)
    tid(page, "chat-input").press("Enter")
    expect(tid(page, "message").last).to_have_attribute("data-state", "sent")


def delivered(page):
    """Bodies of every message packet the comet delivered to this page, in order."""
    return page.evaluate("""() => NextIM.apps[0].packetLog
        .flatMap(b => b.messages || []).map(m => m.body)""")


def test_two_users_chat_over_the_websocket(pages, demo_daemon):
    alice, alice_traffic = login(pages, demo_daemon, "alice")
    bob, bob_traffic = login(pages, demo_daemon, "bob")
    for page, traffic in ((alice, alice_traffic), (bob, bob_traffic)):
        expect(tid(page, "conn-state")).to_have_attribute("data-transport", "websocket")
        assert channel(page) == "websocket"
        page.wait_for_function("() => NextIM.apps[0].packetLog.length > 0")
        assert [s["url"] for s in traffic.sockets] == [demo_daemon.url.replace("http:", "ws:") + "/ws"]
        subscribe = traffic.sockets[0]["sent"][0].split(" ")
        assert subscribe[0] == "subscribe" and subscribe[2] == page.evaluate("NextIM.apps[0].ticket"), subscribe
        assert subscribe[3] == "0"

    open_chat(alice, "bob")
    send(alice, "over the socket 🧦")
    expect(tid(bob, "tab-unicast-alice")).to_be_visible()
    open_chat(bob, "alice")
    expect(tid(bob, "msg-body").last).to_have_text("over the socket 🧦")
    send(bob, "我收到了")
    expect(tid(alice, "msg-body").last).to_have_text("我收到了")
    tid(bob, "chat-input").press_sequentially("typing")
    expect(tid(alice, "typing-indicator")).to_contain_text("Bob")

    # Every packet came over the socket, once; no long poll ran; the socket
    # told the server what it processed.
    assert delivered(bob) == ["over the socket 🧦"]
    assert delivered(alice) == ["我收到了"]
    assert alice_traffic.polls == [] and bob_traffic.polls == []
    # Messages and typing went over the socket as call frames, not as HTTP calls.
    for traffic in (alice_traffic, bob_traffic):
        assert "message" not in traffic.calls and "status" not in traffic.calls, traffic.calls
    calls = [json.loads(f) for f in bob_traffic.sockets[0]["sent"] if f.startswith("{")]
    assert [c["call"] for c in calls if c["call"] == "message"] == ["message"]
    assert {"typing"} <= {c["params"].get("show") for c in calls if c["call"] == "status"}
    bob.wait_for_function("() => true")  # let the frame events in
    assert any(f.startswith("ack ") for f in bob_traffic.sockets[0]["sent"]), bob_traffic.sockets[0]["sent"]


def test_a_dropped_socket_resumes_from_its_ack_and_shows_nothing_twice(pages, demo_daemon):
    routed = []  # (page side, server side) of each socket the page opened

    def route(page):
        def handler(ws):
            routed.append((ws, ws.connect_to_server()))
        page.route_web_socket(WS_PATH, handler)

    alice, traffic = login(pages, demo_daemon, "alice", route=route)
    bob, _ = login(pages, demo_daemon, "bob")
    open_chat(bob, "alice")
    send(bob, "before the drop")
    expect(tid(alice, "tab-unicast-bob")).to_be_visible()
    open_chat(alice, "bob")
    expect(tid(alice, "msg-body").last).to_have_text("before the drop")
    alice.wait_for_function("() => NextIM.apps[0].client.socket.ack > 0")
    acked = alice.evaluate("NextIM.apps[0].client.socket.ack")
    assert len(routed) == 1

    # The connection breaks: both sides close. Bob writes while Alice has no socket.
    page_side, server_side = routed[0]
    server_side.close()
    page_side.close(code=1011, reason="network gone")
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "reconnecting")
    bob.get_by_test_id("chat-input").fill("while you were away")
    bob.get_by_test_id("chat-input").press("Enter")

    # The next socket subscribes with the last seq Alice had, and gets the rest.
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online", timeout=10000)
    expect(tid(alice, "msg-body").last).to_have_text("while you were away")
    assert len(routed) == 2
    second = traffic.sockets[-1]["sent"]
    assert second[0].split(" ")[2:] == [alice.evaluate("NextIM.apps[0].ticket"), str(acked)], second
    assert alice.evaluate("NextIM.apps[0].channel") == "websocket"
    assert delivered(alice) == ["before the drop", "while you were away"]
    shown = tid(alice, "msg-body").all_inner_texts()
    assert shown[-2:] == ["before the drop", "while you were away"]
    assert shown.count("while you were away") == 1


def test_a_lost_session_goes_online_again_and_back_on_the_socket(pages, demo_daemon):
    alice, traffic = login(pages, demo_daemon, "alice")
    bob, _ = login(pages, demo_daemon, "bob")
    old = alice.evaluate("NextIM.apps[0].ticket")
    # End Alice's session behind the client's back: the server closes her socket 4404.
    alice.evaluate("""t => fetch('webim/offline', {method: 'POST', body: new URLSearchParams({ticket: t})})""", old)
    alice.wait_for_function("t => NextIM.apps[0].ticket && NextIM.apps[0].ticket !== t", arg=old)
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(alice, "conn-state")).to_have_attribute("data-transport", "websocket")
    open_chat(bob, "alice")
    send(bob, "new session")
    tid(alice, "tab-unicast-bob").click()
    expect(tid(alice, "msg-body").last).to_have_text("new session")
    assert len(traffic.sockets) == 2
    assert traffic.sockets[1]["sent"][0].split(" ")[2] == alice.evaluate("NextIM.apps[0].ticket")


def test_embed_on_a_foreign_origin_falls_back_to_jsonp(pages, host_site, embed_daemon):
    """The daemon refuses the handshake from an Origin it does not accept (403);
    the browser shows that as a failed socket, the client falls back to the
    JSONP long poll, chat works, and the tab does not try the socket again."""
    pairs = []
    for user in ("alice", "bob"):
        page = pages.new(None, label=user)
        pairs.append((page, Traffic(page)))
        site_login(pages, host_site, user, page=page)
    (alice, alice_traffic), (bob, bob_traffic) = pairs
    for page, traffic in pairs:
        expect(tid(page, "conn-state")).to_have_attribute("data-transport", "longpoll", timeout=10000)
        ws_url = embed_daemon.url.replace("http:", "ws:") + "/ws"
        assert [s["url"] for s in traffic.sockets] == [ws_url] * 3
        assert all(s["error"] and s["sent"] == [] for s in traffic.sockets), traffic.sockets
        expect(tid(page, "conn-state")).to_have_attribute("data-state", "online")

    tid(alice, "buddy-bob").click()
    send(alice, "over JSONP after all")
    tid(bob, "tab-unicast-alice").click()
    expect(tid(bob, "msg-body").last).to_have_text("over JSONP after all")
    assert delivered(bob) == ["over JSONP after all"]
    assert bob_traffic.polls and all("callback=NextIM._cb." in u for u in bob_traffic.polls)

    # The next page load in this tab goes straight to the long poll.
    before = len(alice_traffic.sockets)
    alice.reload()
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(alice, "conn-state")).to_have_attribute("data-transport", "longpoll")
    assert len(alice_traffic.sockets) == before


def test_embed_on_an_allowed_origin_uses_the_socket(pages, tmp_path_factory):
    """With the host site in [server] allowed_origins the same embed (JSONP
    mode for its calls) gets its packets over the WebSocket."""
    port = free_port()
    daemon = start_embed_daemon(tmp_path_factory.mktemp("nextim-ws-allowed"),
                                allowed_origins=[f"http://localhost:{port}"])
    with running(daemon), running_host_site(daemon, port=port) as site:
        pairs = []
        for user in ("alice", "bob"):
            page = pages.new(None, label=user)
            pairs.append((page, Traffic(page)))
            site_login(pages, site, user, page=page)
        (alice, _), (bob, bob_traffic) = pairs
        for page, _ in pairs:
            expect(tid(page, "conn-state")).to_have_attribute("data-transport", "websocket")
        tid(alice, "buddy-bob").click()
        send(alice, "cross-origin socket")
        tid(bob, "tab-unicast-alice").click()
        expect(tid(bob, "msg-body").last).to_have_text("cross-origin socket")
        assert delivered(bob) == ["cross-origin socket"]
        assert bob_traffic.polls == []
        assert len(bob_traffic.sockets) == 1 and bob_traffic.sockets[0]["error"] is None
        for page, _ in pairs:
            page.evaluate("() => Promise.all(NextIM.apps.map(a => a.stop()))")


def test_daemon_without_websocket_is_long_polled(pages, tmp_path_factory):
    daemon = start_daemon(tmp_path_factory.mktemp("nextim-no-ws"),
                          config_text=SHORT_TIMERS + "[websocket]\nenabled = false\n")
    with running(daemon):
        alice, alice_traffic = login(pages, daemon, "alice")
        bob, bob_traffic = login(pages, daemon, "bob")
        for page in (alice, bob):
            expect(tid(page, "conn-state")).to_have_attribute("data-transport", "longpoll")
        open_chat(alice, "bob")
        send(alice, "the 2010 way")
        tid(bob, "tab-unicast-alice").click()
        expect(tid(bob, "msg-body").last).to_have_text("the 2010 way")
        assert delivered(bob) == ["the 2010 way"]
        assert alice_traffic.sockets == [] and bob_traffic.sockets == []
        assert bob_traffic.polls and all("ack=" in u for u in bob_traffic.polls)
        for page in (alice, bob):
            page.evaluate("() => Promise.all(NextIM.apps.map(a => a.stop()))")
