#!/usr/bin/env python3
"""Regenerate the client screenshots in this folder.

Needs a fresh demo daemon (users alice/bob/carol) and Debian's Chromium::

    cd "$(mktemp -d)" && twistd -n --pidfile= nextim --demo &
    python docs/screenshots/take_screenshots.py --url http://127.0.0.1:8000

With ``--host-site URL`` (examples/embed/host_site.py running against the
example's token daemon) it also takes embed.png.
"""
import argparse
import base64
import pathlib

from playwright.sync_api import expect, sync_playwright

HERE = pathlib.Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def login(browser, url, user, size=(1200, 720)):
    page = browser.new_context(viewport={"width": size[0], "height": size[1]}, device_scale_factor=1).new_page()
    page.goto(url + "/")
    page.get_by_test_id("login-username").fill(user)
    page.get_by_test_id("login-password").fill(user)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    return page


def say(page, text):
    box = page.get_by_test_id("chat-input")
    box.fill(text)
    box.press("Enter")
    expect(page.get_by_test_id("message").last).to_have_attribute("data-state", "sent")


def side_by_side(browser, shots, path):
    """Put two screenshots next to each other, each with a caption."""
    cells = "".join(
        f'<figure><figcaption>{label}</figcaption><img src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"></figure>' for label, png in shots)
    page = browser.new_context(viewport={"width": 1640, "height": 700}).new_page()
    page.set_content(f"""<style>body{{margin:0;background:#d9dee8;display:flex;gap:16px;padding:16px;
        font:600 14px system-ui,sans-serif;color:#333}} figure{{margin:0}} figcaption{{margin:0 0 6px 4px}}
        img{{display:block;border-radius:10px;box-shadow:0 4px 18px rgba(0,0,0,.18)}}</style>{cells}""")
    page.wait_for_load_state()
    page.screenshot(path=str(path), full_page=True)
    page.context.close()


def embed_shot(browser, host_site):
    pages = []
    for user in ("bob", "alice"):
        page = browser.new_context(viewport={"width": 1280, "height": 760}).new_page()
        page.goto(host_site.rstrip("/") + "/")
        page.select_option("select[name=user]", user)
        page.click("button[type=submit]")
        expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
        pages.append(page)
    bob, alice = pages
    alice.get_by_test_id("buddy-bob").click()
    bob.get_by_test_id("buddy-alice").click()
    say(alice, "Hello from the host site 👋")
    say(bob, "Hi! Same chat, different origin.")
    expect(alice.get_by_test_id("msg-body").last).to_have_text("Hi! Same chat, different origin.")
    alice.screenshot(path=str(HERE / "embed.png"))
    for page in pages:
        page.evaluate("() => Promise.all(NextIM.apps.map(a => a.stop()))")
        page.context.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--host-site", help="URL of examples/embed/host_site.py, for embed.png")
    args = ap.parse_args()
    url = args.url.rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=ARGS)

        alice = login(browser, url, "alice", size=(800, 640))
        bob = login(browser, url, "bob", size=(800, 640))
        carol = login(browser, url, "carol")

        # Two users chatting.
        alice.get_by_test_id("buddy-bob").click()
        bob.get_by_test_id("buddy-alice").click()
        say(alice, "Hi Bob! Did you see the new chat client? 🎉")
        say(bob, "I did — it even keeps my tabs when I reload.")
        say(alice, "Unicode works too: 你好，世界 · こんにちは · 😀")
        say(bob, "And <script>alert(1)</script> stays plain text 👍")
        say(alice, "Details are in https://example.org/docs/client")
        carol.get_by_test_id("status-input").fill("Writing the release notes")
        carol.get_by_test_id("status-input").press("Enter")
        carol.get_by_test_id("presence-button").click()
        carol.get_by_test_id("presence-option-away").click()
        bob.get_by_test_id("chat-input").press_sequentially("one more thing")
        expect(alice.get_by_test_id("typing-indicator")).to_be_visible()
        expect(alice.get_by_test_id("buddy-status-carol")).to_be_visible()
        bob.get_by_test_id("chat-input").fill("")
        expect(alice.get_by_test_id("typing-indicator")).to_be_hidden()
        alice.get_by_test_id("chat-input").press_sequentially("See you")
        expect(bob.get_by_test_id("typing-indicator")).to_be_visible()
        side_by_side(browser, [("Alice", alice.screenshot()), ("Bob", bob.screenshot())], HERE / "chat.png")
        alice.get_by_test_id("chat-input").fill("")

        # A room with three people.
        for p in (alice, bob, carol):
            p.get_by_test_id("room-lobby").click()
        say(carol, "Morning everyone ☕")
        say(bob, "Morning! Stand-up in 10?")
        say(alice, "Sure, see you there.")
        expect(carol.get_by_test_id("msg-body").last).to_have_text("Sure, see you there.")
        expect(carol.get_by_test_id("member-alice")).to_be_visible()
        carol.screenshot(path=str(HERE / "room.png"))

        # The presence menu, and a notification waiting.
        bob.set_viewport_size({"width": 1200, "height": 720})
        bob.get_by_test_id("presence-button").click()
        expect(bob.get_by_test_id("presence-menu")).to_be_visible()
        bob.screenshot(path=str(HERE / "presence-menu.png"))

        for p in (alice, bob, carol):
            p.evaluate("() => Promise.all(NextIM.apps.map(a => a.stop()))")
        if args.host_site:
            embed_shot(browser, args.host_site)
        browser.close()
    print("screenshots written to", HERE)


if __name__ == "__main__":
    main()
