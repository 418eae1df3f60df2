"""The embedding example: a host site on another origin mints JWTs and loads
the client from the daemon in JSONP mode (examples/embed/)."""
import time
import tomllib
import urllib.request

import jwt
import pytest

from tests.browser.conftest import (EMBED_EXAMPLE, expect, site_login)

pytestmark = pytest.mark.browser

EXAMPLE = EMBED_EXAMPLE


def test_embedded_client_chats_over_jsonp_with_site_tokens(pages, host_site, embed_daemon):
    alice = site_login(pages, host_site, "alice")
    bob = site_login(pages, host_site, "bob")
    for page in (alice, bob):
        # The site vouches for the user: no login form, no sign-out button.
        expect(page.get_by_test_id("login-view")).to_be_hidden()
        expect(page.get_by_test_id("logout-button")).to_be_hidden()
    expect(alice.get_by_test_id("my-nick")).to_have_text("Alice")
    expect(alice.get_by_test_id("buddy-presence-bob")).to_have_attribute("data-presence", "online")

    alice.get_by_test_id("buddy-bob").click()
    alice.get_by_test_id("chat-input").fill("from the host page 🌍 <b>hi</b>")
    alice.get_by_test_id("chat-input").press("Enter")
    expect(alice.get_by_test_id("message").last).to_have_attribute("data-state", "sent")
    bob.get_by_test_id("tab-unicast-alice").click()
    expect(bob.get_by_test_id("msg-body").last).to_have_text("from the host page 🌍 <b>hi</b>")

    # Minimized to its launcher button, the widget still counts unread messages.
    bob.get_by_test_id("minimize-button").click()
    expect(bob.get_by_test_id("buddy-list")).to_be_hidden()
    alice.get_by_test_id("chat-input").fill("are you there?")
    alice.get_by_test_id("chat-input").press("Enter")
    expect(bob.get_by_test_id("launcher-unread")).to_have_text("1")
    bob.get_by_test_id("launcher").click()
    expect(bob.get_by_test_id("msg-body").last).to_have_text("are you there?")
    expect(bob.get_by_test_id("launcher")).to_be_hidden()

    # Every call to the daemon went out as a <script> (JSONP), none as fetch/XHR.
    calls = alice.evaluate("""d => performance.getEntriesByType('resource')
        .filter(e => e.name.startsWith(d + '/webim/') || e.name.startsWith(d + '/packets'))
        .map(e => [e.initiatorType, e.name])""", embed_daemon.url)
    assert calls, "no daemon calls recorded"
    assert {kind for kind, _ in calls} == {"script"}, calls
    assert all("callback=NextIM._cb." in url for _, url in calls), calls
    # The token proves identity only until there is a ticket.
    with_token = [url.split("?")[0] for _, url in calls if "token=" in url]
    assert with_token == [embed_daemon.url + "/webim/online"], with_token


def test_bad_token_shows_the_auth_error(pages, host_site, embed_daemon):
    page = pages.new(host_site + "/no-such-page", label="stranger")
    page.add_script_tag(url=embed_daemon.url + "/static/app.js")
    page.evaluate("d => NextIM.start({server: d, jsonp: true, token: 'not-a-jwt'})", embed_daemon.url)
    expect(page.get_by_test_id("auth-error-view")).to_be_visible()
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "offline")


def test_expired_token_is_replaced_through_get_token(pages, host_site, embed_daemon):
    """A page open longer than its token's life: the client asks the host
    site for a fresh token once (getToken) and carries on."""
    page = site_login(pages, host_site, "carol")
    secret = tomllib.loads((EXAMPLE / "nextim.toml").read_text())["auth"]["token_secret"]
    expired = jwt.encode({"sub": "carol", "nick": "Carol", "exp": int(time.time()) - 60}, secret, algorithm="HS256")
    page.goto(host_site + "/no-such-page")  # same origin as the site, no client on it
    page.add_script_tag(url=embed_daemon.url + "/static/app.js")
    page.evaluate("""([d, t]) => { window.asked = 0; NextIM.start({server: d, jsonp: true, token: t,
        getToken: () => { window.asked++; return fetch('/token').then(r => r.text()); }}); }""",
                  [embed_daemon.url, expired])
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    expect(page.get_by_test_id("my-nick")).to_have_text("Carol")
    assert page.evaluate("window.asked") == 1


def test_message_from_a_stranger_lists_them_under_strangers(pages, host_site, embed_daemon):
    cfg = tomllib.loads((EXAMPLE / "nextim.toml").read_text())
    req = urllib.request.Request(embed_daemon.url + "/admin/users/dave", method="PUT",
                                 data=b'{"nick": "Dave"}',
                                 headers={"Authorization": "Bearer " + cfg["admin"]["api_key"],
                                          "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()
    alice = site_login(pages, host_site, "alice")
    expect(alice.get_by_test_id("buddy-dave")).to_have_count(0)

    # Dave is known to the daemon but nobody's buddy.
    dave = pages.new(host_site + "/no-such-page", label="dave")
    token = jwt.encode({"sub": "dave", "nick": "Dave", "exp": int(time.time()) + 600},
                       cfg["auth"]["token_secret"], algorithm="HS256")
    dave.add_script_tag(url=embed_daemon.url + "/static/app.js")
    dave.evaluate("([d, t]) => NextIM.start({server: d, jsonp: true, token: t})", [embed_daemon.url, token])
    expect(dave.get_by_test_id("conn-state")).to_have_attribute("data-state", "online")
    dave.evaluate("""() => { const a = NextIM.apps[0]; a.openTab('unicast:alice', true); }""")
    dave.get_by_test_id("chat-input").fill("hello, we have not met")
    dave.get_by_test_id("chat-input").press("Enter")

    expect(alice.get_by_test_id("buddy-group-Strangers").get_by_test_id("buddy-nick-dave")).to_have_text("Dave")
    alice.get_by_test_id("tab-unicast-dave").click()
    expect(alice.get_by_test_id("msg-body").last).to_have_text("hello, we have not met")
