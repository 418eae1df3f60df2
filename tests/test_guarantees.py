"""The second round of promises of docs/guarantees.md, each with the input that broke
it before: typing to unknown or offline users, session lifetime, logout and password
changes, erasure and export, directory changes made outside the daemon."""
import pytest
import pytest_twisted

inline = pytest_twisted.ensureDeferred


async def hold_out(daemon, poll):
    """The answer of a parked ``poll`` once its hold has run out on the test clock."""
    await daemon.settle()
    daemon.clock.advance(daemon.config.timers.poll_hold + 0.2)  # the wheel is 100 ms coarse
    return await poll


# -- typing statuses ---------------------------------------------------------------

@inline
async def test_typing_to_an_unknown_user_is_404_like_a_message(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    typing = await daemon.call("status", ticket=a, to="ghost", show="typing")
    message = await daemon.call("message", ticket=a, type="unicast", to="ghost", body="hi")
    assert (typing.status, typing.json["error"]) == (404, "unknown_user")
    assert (message.status, message.json["error"]) == (404, "unknown_user")


@inline
async def test_typing_to_an_offline_user_is_never_stored(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("status", ticket=a, to="bob", show="typing")).text == "ok"
    assert (await daemon.call("message", ticket=a, type="unicast", to="bob", body="hi")).text == "ok"
    bob = await daemon.online("bob")
    assert [m["body"] for m in bob["new_messages"]] == ["hi"]
    first = await hold_out(daemon, daemon.poll(bob["connection"]["ticket"], ack=0))
    assert first.json["status"] == "ok" and first.json["statuses"] == []


# -- the postgres extra --------------------------------------------------------------

_WITHOUT_PSYCOPG = "import sys; sys.modules['psycopg'] = None; sys.argv = {argv!r}; {run}"


@pytest.mark.parametrize("program", ["twistd", "nextimctl", "tac"])
def test_postgres_without_psycopg_is_one_line_and_exit_2(tmp_path, program):
    """Without the optional driver, every way of starting names the extra to install:
    one line, exit status 2, no traceback."""
    import os
    import subprocess
    import sys
    cfg = tmp_path / "nextim.toml"
    cfg.write_text('[storage]\nbackend = "postgres"\ndsn = "host=127.0.0.1"\n'
                   f'[auth]\ntoken_secret = "{"s" * 20}"\n[admin]\napi_key = "{"k" * 20}"\n')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if program == "twistd":
        code = _WITHOUT_PSYCOPG.format(argv=["twistd", "-n", "--pidfile=", "nextim", "-c", str(cfg)],
                                       run="from twisted.scripts.twistd import run; run()")
    elif program == "tac":
        code = _WITHOUT_PSYCOPG.format(argv=["twistd", "-n", "--pidfile=", "-y", os.path.join(repo, "nextim.tac")],
                                       run="from twisted.scripts.twistd import run; run()")
    else:
        code = _WITHOUT_PSYCOPG.format(argv=["nextimctl", "--config", str(cfg), "stats"],
                                       run="from nextim_twisted.ctl import main; main()")
    env = dict(os.environ, PYTHONPATH=repo, NEXTIM_CONFIG=str(cfg))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nextim-twisted[postgres]'" in lines[0], r.stderr


# -- rate limits -------------------------------------------------------------------

@pytest.mark.config(limits={"messages_per_minute": 10})
@inline
async def test_rate_limits_are_per_user_not_per_address(daemon):
    """Behind a proxy every user comes from one address: one user's flood must not
    spend another's budget, and a forged X-Forwarded-For buys nothing."""
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    spoof = {"X-Forwarded-For": "203.0.113.%d"}
    alice = [(await daemon.call("message", ticket=a, type="unicast", to="dave", body=str(i),
                                headers={"X-Forwarded-For": spoof["X-Forwarded-For"] % i})).status
             for i in range(7)]
    bob = [(await daemon.call("message", ticket=b, type="unicast", to="dave", body=str(i))).status
           for i in range(5)]
    assert alice[:5] == [200] * 5 and alice[5:] == [429, 429]
    assert bob == [200] * 5


# -- session lifetime ----------------------------------------------------------------

@pytest.mark.config(timers={"session_max": 40})
@inline
async def test_a_session_polled_for_ever_still_ends_at_session_max(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    first = await hold_out(daemon, daemon.poll(a, ack=0))     # t = 25
    assert first.json["status"] == "ok"
    second = await hold_out(daemon, daemon.poll(a, ack=0))    # t = 50: parked before 40, answered
    assert second.json["status"] == "ok"
    third = await daemon.poll(a, ack=0)
    assert (third.status, third.json["error"]) == (404, "invalid_ticket")
    assert a not in daemon.router.sessions
    again = await daemon.online("alice")                        # a fresh token: a new session
    assert again["connection"]["ticket"] != a


@inline
async def test_online_with_an_expired_token_is_401_token_expired(daemon):
    import time
    resp = await daemon.request("POST", "/webim/online", {"token": daemon.token("alice", exp=int(time.time()) - 60)})
    assert (resp.status, resp.json["error"]) == (401, "token_expired")


async def _login(daemon, user, password):
    own = {"Origin": "http://127.0.0.1:8000"}
    ok = await daemon.request("POST", "/webim/login", {"username": user, "password": password}, headers=own)
    assert ok.status == 200, ok.text
    jar = {"nextim_session": ok.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]}
    online = await daemon.request("POST", "/webim/online", {}, headers=own, cookies=jar)
    assert online.status == 200, online.text
    return jar, online.json["connection"]["ticket"]


@pytest.mark.config(auth={"method": "accounts"})
@inline
async def test_logout_ends_the_sessions_of_that_login_only_then_the_old_ticket_is_404(daemon):
    from nextim_twisted.auth import hash_password
    await daemon.store.set_password_hash("alice", hash_password("s3cret"))
    own = {"Origin": "http://127.0.0.1:8000"}
    laptop, t_laptop = await _login(daemon, "alice", "s3cret")
    phone, t_phone = await _login(daemon, "alice", "s3cret")
    parked = daemon.poll(t_laptop, ack=0)
    await daemon.settle()
    out = await daemon.request("POST", "/webim/logout", {}, headers=own, cookies=laptop)
    assert out.text == "ok"
    assert (await parked).json == {"status": "stopped"}
    old = await daemon.poll(t_laptop, ack=0)
    assert (old.status, old.json["error"]) == (404, "invalid_ticket")
    assert (await daemon.call("message", ticket=t_laptop, type="unicast", to="bob", body="x")).status == 404
    # the other login's session lives on
    assert (await daemon.call("message", ticket=t_phone, type="unicast", to="bob", body="x")).text == "ok"
    # a foreign page cannot log the user out
    evil = await daemon.request("POST", "/webim/logout", {}, headers={"Origin": "http://evil.example"},
                                cookies=phone)
    assert evil.status == 403 and t_phone in daemon.router.sessions


@pytest.mark.config(auth={"method": "accounts"})
@inline
async def test_a_password_change_ends_older_cookies_and_the_users_sessions(daemon):
    own = {"Origin": "http://127.0.0.1:8000"}
    assert (await daemon.admin("PUT", "/admin/users/alice", {"nick": "Alice", "password": "old-one"})).status == 200
    jar, ticket = await _login(daemon, "alice", "old-one")
    assert (await daemon.admin("PUT", "/admin/users/alice", {"nick": "Alice", "password": "new-one"})).status == 200
    assert (await daemon.poll(ticket, ack=0)).status == 404
    stale = await daemon.request("POST", "/webim/online", {}, headers=own, cookies=jar)
    assert (stale.status, stale.json["error"]) == (401, "not_authenticated")
    assert (await daemon.request("POST", "/webim/login", {"username": "alice", "password": "old-one"},
                                 headers=own)).status == 401
    await _login(daemon, "alice", "new-one")                  # the new password's cookie works


# -- erasure and export --------------------------------------------------------------

@inline
async def test_export_holds_everything_and_erase_removes_it(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    await daemon.call("message", ticket=a, type="unicast", to="bob", body="from alice")
    await daemon.call("message", ticket=b, type="unicast", to="alice", body="to alice")
    await daemon.call("message", ticket=b, type="unicast", to="carol", body="bob to carol")
    await daemon.call("message", ticket=a, type="multicast", to="lobby", body="alice in lobby")
    await daemon.call("message", ticket=b, type="multicast", to="lobby", body="bob in lobby")
    await daemon.call("setting", ticket=a, data='{"theme": "dark"}')
    await daemon.admin("POST", "/admin/users/alice/notifications", {"text": "welcome"})

    export = await daemon.admin("GET", "/admin/users/alice/export")
    data = export.json
    assert export.status == 200 and data["user"]["id"] == "alice" and data["user"]["has_password"] is False
    assert "password_hash" not in data["user"]
    assert data["buddies"] == [{"id": "bob", "group": "Friends"}] and data["rooms"] == ["lobby"]
    assert data["setting"] == '{"theme": "dark"}'
    assert [n["text"] for n in data["notifications"]] == ["welcome"]
    assert [m["body"] for m in data["messages"]] == ["from alice", "to alice", "alice in lobby"]

    assert (await daemon.admin("DELETE", "/admin/users/alice?erase=true")).status == 200
    assert not daemon.router.is_online("alice")
    assert (await daemon.admin("GET", "/admin/users/alice/export")).status == 404
    left = await daemon.store.export_messages()
    assert [m["body"] for m in left] == ["bob to carol", "bob in lobby"]
    assert await daemon.store.get_setting("alice") is None
    assert await daemon.store.take_unread_notifications("alice") == []


@inline
async def test_delete_without_erase_keeps_the_other_sides_history(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.call("message", ticket=a, type="unicast", to="bob", body="kept")
    assert (await daemon.admin("DELETE", "/admin/users/alice")).status == 200
    assert [m["body"] for m in await daemon.store.export_messages(user_id="bob")] == ["kept"]


# -- directory changes made with nextimctl reach live sessions ---------------------

def _nextimctl(daemon, tmp_path, *args):
    """Run ``nextimctl`` as a process on the test daemon's database; assert it worked."""
    import os
    import subprocess
    import sys
    store = daemon.store
    if store.dialect == "sqlite":
        storage = f'backend = "sqlite"\npath = "{store.location}"\n'
    else:
        storage = f'backend = "postgres"\ndsn = "{store.location}"\nschema = "{store.schema}"\n'
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(f'[storage]\n{storage}[auth]\ntoken_secret = "{"s" * 20}"\n[admin]\napi_key = "{"k" * 20}"\n')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "nextim_twisted.ctl", "--config", str(cfg), *args],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=repo), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def _watch_tick(daemon):
    """One read of directory_changes by the daemon, driven by its clock."""
    daemon.clock.advance(1)
    if daemon.watch._running is not None:
        await daemon.watch._running
    await daemon.settle()


@inline
async def test_a_user_deleted_with_nextimctl_while_polling_goes_offline_at_once(daemon, tmp_path):
    b = (await daemon.online("bob"))["connection"]["ticket"]
    c = (await daemon.online("carol"))["connection"]["ticket"]
    seen = (await daemon.poll(b, ack=0)).json            # carol's online
    assert [(p["type"], p["from"]) for p in seen["presences"]] == [("online", "carol")]
    parked = daemon.poll(c, ack=0)
    await daemon.settle()
    await threads_run(_nextimctl, daemon, tmp_path, "user", "delete", "carol")
    await _watch_tick(daemon)
    assert (await parked).json == {"status": "stopped"}
    assert not daemon.router.is_online("carol")
    assert (await daemon.poll(c, ack=0)).status == 404
    # bob sees exactly one offline, now — not after a grace, not twice
    await _watch_tick(daemon)
    after = await hold_out(daemon, daemon.poll(b, ack=seen["seq"]))
    assert [(p["type"], p["from"]) for p in after.json["presences"]] == [("offline", "carol")]


@inline
async def test_buddy_and_member_removed_with_nextimctl_stop_presence_and_room_packets(daemon, tmp_path):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    seen = (await daemon.poll(a, ack=0)).json["seq"]     # bob's online
    await threads_run(_nextimctl, daemon, tmp_path, "buddy", "delete", "alice", "bob")
    await threads_run(_nextimctl, daemon, tmp_path, "member", "delete", "lobby", "alice")
    await _watch_tick(daemon)
    await daemon.call("presence", ticket=b, show="away")           # to alice no more
    await daemon.call("presence", ticket=a, show="dnd")            # to bob no more
    await daemon.call("message", ticket=b, type="multicast", to="lobby", body="room")
    refused = await daemon.call("message", ticket=a, type="multicast", to="lobby", body="me too")
    assert (refused.status, refused.json["error"]) == (403, "not_member")
    to_bob = [packet for _, kind, packet in daemon.router.sessions[b].queue if kind == "presences"]
    assert to_bob == []
    quiet = await hold_out(daemon, daemon.poll(a, ack=seen))
    assert quiet.json["presences"] == [] and quiet.json["messages"] == []


def threads_run(f, *args):
    """Run a blocking ``f`` (a subprocess) off the reactor, so the daemon keeps serving."""
    from twisted.internet import threads
    return threads.deferToThread(f, *args)


@inline
async def test_nextimctl_exports_and_erases_a_user(daemon, tmp_path):
    import json
    a = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.call("message", ticket=a, type="unicast", to="bob", body="secret")
    exported = json.loads(await threads_run(_nextimctl, daemon, tmp_path, "user", "export", "alice"))
    assert exported["user"]["id"] == "alice" and [m["body"] for m in exported["messages"]] == ["secret"]
    out = await threads_run(_nextimctl, daemon, tmp_path, "user", "delete", "--erase", "alice")
    assert out == "user alice erased\n"
    assert await daemon.store.export_messages() == []
    await _watch_tick(daemon)
    assert not daemon.router.is_online("alice")


# -- HTTP/1.0 (nginx's default towards its upstream) ---------------------------------

async def _http10(daemon, request_bytes):
    """Send one raw HTTP/1.0 request; → (head text, body bytes) once the server closes."""
    from twisted.internet import defer, endpoints, protocol, reactor

    class Collect(protocol.Protocol):
        def __init__(self):
            self.data, self.done = b"", defer.Deferred()

        def dataReceived(self, data):
            self.data += data

        def connectionLost(self, reason):
            self.done.callback(self.data)

    port = daemon.port.getHost().port
    proto = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
    proto.transport.write(request_bytes)
    raw = await proto.done
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def _length(head):
    import re
    found = re.search(r"^content-length: *(\d+)", head, re.I | re.M)
    return int(found.group(1)) if found else None


@inline
async def test_an_http_10_poll_answered_later_carries_content_length(daemon):
    a = (await daemon.online("alice"))["connection"]["ticket"]
    b = (await daemon.online("bob"))["connection"]["ticket"]
    await daemon.poll(a, ack=0)                                    # bob's online presence
    seq = daemon.router.session(a).last_seq
    parked = defer_from(_http10(daemon, f"GET /packets?ticket={a}&ack={seq} HTTP/1.0\r\n\r\n".encode()))
    await daemon.settle()
    assert daemon.router.session(a).parked
    await daemon.call("message", ticket=b, type="unicast", to="alice", body="over 1.0")
    head, body = await parked
    assert head.startswith("HTTP/1.0 200") and "chunked" not in head.lower()
    assert _length(head) == len(body) and b"over 1.0" in body


@inline
async def test_http_10_calls_and_refusals_carry_content_length(daemon):
    token = daemon.token("alice")
    head, body = await _http10(daemon, (f"POST /webim/online HTTP/1.0\r\nAuthorization: Bearer {token}\r\n"
                                        "Content-Type: application/x-www-form-urlencoded\r\n"
                                        "Content-Length: 0\r\n\r\n").encode())
    assert head.startswith("HTTP/1.0 200") and _length(head) == len(body) > 0
    head, body = await _http10(daemon, b"GET /packets?ticket=nope HTTP/1.0\r\n\r\n")
    assert head.startswith("HTTP/1.0 404") and _length(head) == len(body) > 0
    head, body = await _http10(daemon, b"GET /admin/stats HTTP/1.0\r\n\r\n")
    assert head.startswith("HTTP/1.0 401") and _length(head) == len(body) > 0


def defer_from(coro):
    from twisted.internet import defer
    return defer.ensureDeferred(coro)
