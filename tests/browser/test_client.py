"""The browser client against a real daemon, in headless Chromium.

Each browser context is one person. Waits are Playwright's auto-waiting
``expect`` (a few seconds); the only fixed waits are the ones a rule needs
(the 2 s presence grace of the test daemon's config).
"""
import re

import pytest

from tests.browser.conftest import STATIC_DIR, USER_GRACE, expect, sign_in

pytestmark = pytest.mark.browser


def tid(page, testid):
    return page.get_by_test_id(testid)


def open_chat(page, buddy):
    tid(page, f"buddy-{buddy}").click()
    expect(tid(page, "chat-pane")).to_have_attribute("data-chat", f"unicast:{buddy}")
    expect(tid(page, "chat-input")).to_be_visible()


def open_room(page, room):
    tid(page, f"room-{room}").click()
    expect(tid(page, "chat-pane")).to_have_attribute("data-chat", f"multicast:{room}")


def send(page, text):
    box = tid(page, "chat-input")
    box.fill(text)
    box.press("Enter")
    # Rendered locally at once, confirmed by the server's "ok".
    expect(tid(page, "messages").get_by_test_id("message").last).to_have_attribute("data-state", "sent")


def bodies(page):
    return tid(page, "messages").get_by_test_id("msg-body")


def presence(page, buddy):
    return tid(page, f"buddy-presence-{buddy}")


def choose_show(page, show):
    tid(page, "presence-button").click()
    expect(tid(page, "presence-menu")).to_be_visible()
    tid(page, f"presence-option-{show}").click()
    expect(tid(page, "presence-menu")).to_be_hidden()


def received_bodies(page):
    """Bodies of every message packet the comet delivered to this page."""
    return page.evaluate("""() => NextIM.apps[0].packetLog
        .flatMap(b => b.messages || []).map(m => m.body)""")


# -- tests ---------------------------------------------------------------------


def test_login_form_rejects_bad_password_then_signs_in(pages, demo_daemon):
    page = pages.new(demo_daemon.url + "/", "alice")
    expect(tid(page, "login-view")).to_be_visible()
    sign_in(page, "alice", "not-her-password")
    expect(tid(page, "login-error")).to_have_text("Wrong user name or password.")
    expect(tid(page, "main-view")).to_be_hidden()

    sign_in(page, "alice", "alice")
    expect(tid(page, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(page, "my-nick")).to_have_text("Alice")
    expect(tid(page, "my-presence")).to_have_text("Available")
    expect(tid(page, "buddy-group-Friends")).to_be_visible()
    expect(tid(page, "buddy-nick-bob")).to_have_text("Bob")
    expect(tid(page, "buddy-nick-carol")).to_have_text("Carol")
    expect(tid(page, "room-lobby")).to_contain_text("Lobby")

    # The welcome notification: counted, and its admin HTML kept (sanitized).
    expect(tid(page, "notifications-count")).to_have_text("1")
    tid(page, "notifications-button").click()
    note = tid(page, "notification-text").first
    expect(note).to_contain_text("Welcome to nextim-twisted")
    expect(note.locator("strong")).to_have_text("nextim-twisted")
    expect(tid(page, "notifications-count")).to_be_hidden()
    # The server hands a notification out once; the client keeps it, read.
    page.reload()
    expect(tid(page, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(page, "notifications-count")).to_be_hidden()
    tid(page, "notifications-button").click()
    expect(tid(page, "notification-text")).to_have_count(1)


def test_buddies_see_each_other_online_and_online_sort_first(login):
    alice = login("alice")
    bob = login("bob")
    expect(presence(alice, "bob")).to_have_attribute("data-presence", "online")
    expect(presence(bob, "alice")).to_have_attribute("data-presence", "online")
    expect(presence(alice, "bob")).to_have_text("Available")
    # Within a group, online buddies come before offline ones.
    for page in (alice, bob):
        order = page.evaluate("""() => Array.from(document.querySelectorAll(
            '[data-testid="buddy-group-Friends"] [data-testid^="buddy-presence-"]')).map(e => e.dataset.presence)""")
        assert order == sorted(order, key=lambda p: p != "online"), order


def test_messages_with_emoji_cjk_and_html_are_shown_literally(login):
    alice = login("alice")
    bob = login("bob")
    # Bob is looking at another chat: Alice's messages count as unread.
    open_chat(bob, "carol")

    texts = ["Hello Bob 👋🎉", "你好，世界！こんにちは 안녕하세요",
             "<script>alert(1)</script>", '<img src=x onerror="alert(2)">']
    open_chat(alice, "bob")
    for text in texts:
        send(alice, text)
    expect(bodies(alice)).to_have_text(texts)

    expect(tid(bob, "tab-unicast-alice")).to_be_visible()
    expect(tid(bob, "tab-unread-unicast-alice")).to_have_text(str(len(texts)))
    expect(tid(bob, "buddy-unread-alice")).to_have_text(str(len(texts)))
    expect(bob).to_have_title(re.compile(r"^\(\d+\) NextIM$"))
    tid(bob, "tab-unicast-alice").click()
    expect(bodies(bob)).to_have_text(texts)
    expect(tid(bob, "tab-unread-unicast-alice")).to_have_count(0)
    expect(bob).not_to_have_title(re.compile(r"\(4\)"))
    expect(tid(bob, "messages").get_by_test_id("msg-nick").first).to_have_text("Alice")
    expect(tid(bob, "messages").get_by_test_id("msg-time").first).to_have_text(re.compile(r"^\d\d:\d\d$"))
    # Nothing from the server became markup.
    for page in (alice, bob):
        assert page.locator("[data-testid=messages] script, [data-testid=messages] img").count() == 0

    send(bob, "Hi Alice! 😀 再见")
    expect(bodies(alice).last).to_have_text("Hi Alice! 😀 再见")
    expect(tid(alice, "messages").get_by_test_id("msg-nick").last).to_have_text("Bob")


def test_typing_indicator_shows_and_clears(login):
    alice = login("alice")
    bob = login("bob")
    open_chat(alice, "bob")
    open_chat(bob, "alice")
    indicator = tid(bob, "typing-indicator")
    expect(indicator).to_be_hidden()

    tid(alice, "chat-input").press_sequentially("hel")
    expect(indicator).to_be_visible()
    expect(indicator).to_have_text("Alice is typing…")
    tid(alice, "chat-input").press_sequentially("lo")
    tid(alice, "chat-input").press("Enter")
    # The message itself ends the indicator.
    expect(bodies(bob).last).to_have_text("hello")
    expect(indicator).to_be_hidden()

    # Typing then stopping: "clear" is sent after 6 s without keys.
    tid(alice, "chat-input").press_sequentially("wait")
    expect(indicator).to_be_visible()
    expect(indicator).to_be_hidden(timeout=9000)


def test_reload_does_not_flap_presence_and_restores_chats(login):
    alice = login("alice")
    bob = login("bob")
    open_chat(alice, "bob")
    send(alice, "before reload")
    expect(presence(bob, "alice")).to_have_attribute("data-presence", "online")

    # Record every moment Bob's view shows Alice offline, across re-renders.
    bob.evaluate("""() => {
        window.__aliceOffline = [];
        const check = () => {
            const el = document.querySelector('[data-testid="buddy-presence-alice"]');
            if (!el || el.dataset.presence !== 'online') window.__aliceOffline.push(el ? el.dataset.presence : 'missing');
        };
        new MutationObserver(check).observe(document.querySelector('[data-testid="buddy-list"]'),
            {subtree: true, childList: true, attributes: true, characterData: true});
    }""")

    alice.reload()
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    # The open chat comes back, with its history.
    expect(tid(alice, "chat-pane")).to_have_attribute("data-chat", "unicast:bob")
    expect(bodies(alice).last).to_have_text("before reload")
    # The rule under test is a timer: wait past the grace before concluding.
    bob.wait_for_timeout((USER_GRACE + 1) * 1000)
    assert bob.evaluate("window.__aliceOffline") == []
    expect(presence(bob, "alice")).to_have_attribute("data-presence", "online")

    send(alice, "after reload")
    tid(bob, "tab-unicast-alice").click()
    expect(bodies(bob).last).to_have_text("after reload")


def test_room_chat_block_and_unblock(login):
    alice = login("alice")
    bob = login("bob")
    carol = login("carol")
    for page in (alice, bob, carol):
        expect(tid(page, "room-count-lobby")).to_have_attribute("data-count", "3")
        open_room(page, "lobby")
    expect(tid(alice, "member-carol")).to_have_attribute("data-presence", "online")

    send(alice, "hello room 🎉")
    for page in (bob, carol):
        expect(bodies(page).last).to_have_text("hello room 🎉")
        expect(tid(page, "messages").get_by_test_id("msg-nick").last).to_have_text("Alice")

    # Bob blocks the room: it is left on the server and remembered in settings.
    tid(bob, "room-block-lobby").click()
    expect(tid(bob, "room-lobby")).to_have_attribute("data-blocked", "true")
    expect(tid(bob, "room-blocked-note")).to_be_visible()
    expect(tid(bob, "room-block-lobby")).to_have_text("Unblock")
    # Wait until the server has processed the leave (the room shows 2 online).
    tid(alice, "room-lobby").click()
    alice.evaluate("NextIM.apps[0].refreshRoomCounts()")
    expect(tid(alice, "room-count-lobby")).to_have_attribute("data-count", "2")

    send(alice, "while bob blocks")
    expect(bodies(carol).last).to_have_text("while bob blocks")
    # A later unicast to Bob is a barrier: once it is in, the room message
    # (sent before it, by the same sender) would have been too.
    open_chat(alice, "bob")
    send(alice, "barrier")
    bob.wait_for_function("""() => NextIM.apps[0].packetLog
        .flatMap(b => b.messages || []).some(m => m.body === 'barrier')""", timeout=6000)
    assert "while bob blocks" not in received_bodies(bob)

    # The block survives a reload (it is in the stored settings).
    bob.reload()
    expect(tid(bob, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(bob, "room-lobby")).to_have_attribute("data-blocked", "true")

    # Unblock: joined again; what was missed is in the history.
    tid(bob, "room-block-lobby").click()
    expect(tid(bob, "room-lobby")).to_have_attribute("data-blocked", "false")
    open_room(bob, "lobby")
    expect(bodies(bob).last).to_have_text("while bob blocks")
    open_room(alice, "lobby")
    send(alice, "welcome back")
    expect(bodies(bob).last).to_have_text("welcome back")


def test_invisible_looks_offline_and_status_text_is_shared(login):
    alice = login("alice")
    carol = login("carol")
    expect(presence(alice, "carol")).to_have_attribute("data-presence", "online")

    choose_show(carol, "invisible")
    expect(tid(carol, "my-presence")).to_have_text("Invisible")
    expect(presence(alice, "carol")).to_have_attribute("data-presence", "offline")
    expect(presence(alice, "carol")).to_have_text("Offline")

    choose_show(carol, "away")
    expect(presence(alice, "carol")).to_have_attribute("data-presence", "online")
    expect(presence(alice, "carol")).to_have_text("Away")

    status = tid(carol, "status-input")
    status.fill("At lunch 🍜")
    status.press("Enter")
    expect(tid(alice, "buddy-status-carol")).to_have_text(" · At lunch 🍜")


def test_logout_looks_offline_after_grace(login):
    alice = login("alice")
    bob = login("bob")
    expect(presence(alice, "bob")).to_have_attribute("data-presence", "online")
    tid(bob, "logout-button").click()
    expect(tid(bob, "login-view")).to_be_visible()
    expect(presence(alice, "bob")).to_have_attribute("data-presence", "offline", timeout=(USER_GRACE + 5) * 1000)
    # Signed out for real: a reload shows the login form again.
    bob.reload()
    expect(tid(bob, "login-view")).to_be_visible()


def test_going_offline_from_the_menu_and_back(login):
    alice = login("alice")
    bob = login("bob")
    choose_show(bob, "offline")
    expect(tid(bob, "conn-state")).to_have_attribute("data-state", "offline")
    expect(presence(alice, "bob")).to_have_attribute("data-presence", "offline", timeout=(USER_GRACE + 5) * 1000)
    choose_show(bob, "dnd")
    expect(tid(bob, "conn-state")).to_have_attribute("data-state", "online")
    expect(presence(alice, "bob")).to_have_text("Do not disturb")


def test_new_ticket_after_the_session_is_lost(login):
    alice = login("alice")
    bob = login("bob")
    old = alice.evaluate("NextIM.apps[0].ticket")
    # End Alice's session behind the client's back: its next poll gets 404.
    alice.evaluate("""t => fetch('webim/offline', {method: 'POST',
        body: new URLSearchParams({ticket: t})})""", old)
    alice.wait_for_function("t => NextIM.apps[0].ticket && NextIM.apps[0].ticket !== t", arg=old)
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    open_chat(bob, "alice")
    send(bob, "still there?")
    expect(tid(alice, "tab-unicast-bob")).to_be_visible()
    tid(alice, "tab-unicast-bob").click()
    expect(bodies(alice).last).to_have_text("still there?")


def test_poll_errors_show_reconnecting_then_recover(login):
    alice = login("alice")
    bob = login("bob")
    # A browser without WebSocket long-polls (the socket's drops: test_websocket.py).
    alice.add_init_script("window.WebSocket = undefined;")
    alice.reload()
    expect(tid(alice, "conn-state")).to_have_attribute("data-transport", "longpoll")
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    alice.route("**/packets**", lambda route: route.abort())
    alice.evaluate("NextIM.apps[0].abortPoll()")
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "reconnecting")
    alice.unroute("**/packets**")
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online", timeout=15000)
    open_chat(bob, "alice")
    send(bob, "after the outage")
    tid(alice, "tab-unicast-bob").click()
    expect(bodies(alice).last).to_have_text("after the outage")


def test_clear_history_is_per_side_and_survives_reload(login):
    alice = login("alice")
    carol = login("carol")
    open_chat(alice, "carol")
    send(alice, "clear this on my side")
    clear = tid(alice, "chat-clear")
    clear.click()
    expect(clear).to_have_text("Click again to clear")  # no confirm() dialog
    clear.click()
    expect(tid(alice, "messages").get_by_test_id("message")).to_have_count(0)
    alice.reload()
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    expect(tid(alice, "chat-pane")).to_have_attribute("data-chat", "unicast:carol")
    expect(tid(alice, "no-messages")).to_be_visible()
    # Carol keeps her copy.
    open_chat(carol, "alice")
    expect(bodies(carol).last).to_have_text("clear this on my side")


def test_sound_setting_beeps_and_persists(login):
    alice = login("alice")
    bob = login("bob")
    open_chat(alice, "carol")  # Bob's messages arrive in a chat not on screen
    open_chat(bob, "alice")
    send(bob, "ding")
    expect(tid(alice, "tab-unread-unicast-bob")).to_have_text("1")
    assert alice.evaluate("NextIM.apps[0].beeper.count") == 1

    tid(alice, "settings-button").click()
    box = tid(alice, "setting-play_sound")
    expect(box).to_be_checked()
    box.uncheck()
    send(bob, "silent")
    expect(tid(alice, "tab-unread-unicast-bob")).to_have_text("2")
    assert alice.evaluate("NextIM.apps[0].beeper.count") == 1

    alice.reload()
    expect(tid(alice, "conn-state")).to_have_attribute("data-state", "online")
    tid(alice, "settings-button").click()
    expect(tid(alice, "setting-play_sound")).not_to_be_checked()
    tid(alice, "setting-play_sound").check()  # leave the default for other tests
    alice.wait_for_function("NextIM.apps[0].setting.play_sound === true")
    alice.evaluate("NextIM.apps[0].saveSetting()")


# -- client functions that need no server -------------------------------------------


@pytest.fixture
def bare(pages):
    """A blank page with app.js loaded (no daemon calls)."""
    page = pages.new(None, "bare")
    page.set_content("<!doctype html><html><head></head><body></body></html>")
    page.add_script_tag(path=str(STATIC_DIR / "app.js"))
    return page


SANITIZE = """html => {
    const box = document.createElement('div');
    box.appendChild(NextIM._sanitize(html));
    document.body.appendChild(box);
    return box.innerHTML;
}"""


@pytest.mark.parametrize("html, expected", [
    ("<b>bold</b> <strong>s</strong> <i>i</i> <em>e</em><br>x", "<b>bold</b> <strong>s</strong> <i>i</i> <em>e</em><br>x"),
    ("<script>alert(1)</script>ok", "ok"),
    ("<img src=x onerror=alert(1)>", ""),
    ('<img src="https://example.org/a.png" onerror="alert(1)" alt="A">',
     '<img src="https://example.org/a.png" alt="A" referrerpolicy="no-referrer" loading="lazy">'),
    ('<a href="javascript:alert(1)" onclick="alert(2)">x</a>', "<a>x</a>"),
    ('<a href="JaVaScRiPt&colon;alert(1)">x</a>', "<a>x</a>"),
    ('<a href="https://example.org/?q=1&amp;r=2" style="color:red">go</a>',
     '<a href="https://example.org/?q=1&amp;r=2" target="_blank" rel="noopener noreferrer nofollow">go</a>'),
    ('<div onmouseover="alert(1)"><span class="x">kept</span> text</div>', "<span>kept</span> text"),
    ("<svg><script>alert(1)</script></svg><iframe src=x></iframe><style>*{}</style>z", "z"),
    ("<math><mi><a href='javascript:alert(1)'>m</a></mi></math>", ""),
    ('<img src="data:image/png;base64,AAAA">', ""),
    ("<!-- c --><p>p&lt;b&gt;</p>", "<p>p&lt;b&gt;</p>"),
    ('<form action="https://evil"><input value=1>t</form>', ""),
])
def test_notification_sanitizer(bare, html, expected):
    assert bare.evaluate(SANITIZE, html) == expected


def test_times_use_local_clock_corrected_by_skew(bare):
    # A server clock 1 h ahead: its timestamps are shown 1 h earlier.
    out = bare.evaluate("""() => {
        const now = new Date(2024, 4, 17, 12, 30).getTime();
        const skew = 3600 * 1000;
        return [NextIM._formatTime(now + skew, skew, now),
                NextIM._formatTime(now + skew - 86400000 * 3, skew, now),
                NextIM._formatTime('x', 0, now)];
    }""")
    assert out == ["12:30", "2024-05-14 12:30", ""]


def test_backoff_grows_with_jitter_and_is_capped(bare):
    delays = bare.evaluate("() => [1, 2, 3, 4, 10, 50].map(n => NextIM._backoff(n))")
    caps = [1000, 2000, 4000, 8000, 30000, 30000]
    for d, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= d <= cap
