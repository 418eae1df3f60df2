"""Regressions found by trying the daemon as a new site owner, operator and hostile
client would (fresh clone, README commands, raw-socket probes). One test per bug;
``# was:`` says what the daemon did before the fix.

Raw-socket tests speak HTTP/1.1 by hand from a worker thread (the in-process daemon
keeps running on the reactor meanwhile), so malformed or partial requests reach the
daemon exactly as sent.
"""
import json
import socket

import pytest
import pytest_twisted
from twisted.internet import threads

from nextim_twisted import config
from tests.conftest import API_KEY

inline = pytest_twisted.ensureDeferred

#: Real seconds a raw-socket read waits for the daemon before giving up.
READ_TIMEOUT_S = 5


def _exchange(port, chunks, read_timeout=READ_TIMEOUT_S):
    """Blocking: send ``chunks`` (bytes, each its own send), then read until the
    daemon closes or ``read_timeout`` passes. Returns ``(bytes read, timed_out)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except OSError:  # the daemon refused and closed while we were sending
                break
        out = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return out, False
                out += data
        except socket.timeout:
            return out, True
        except OSError:
            return out, False


def exchange(daemon, *chunks, read_timeout=READ_TIMEOUT_S):
    return threads.deferToThread(_exchange, daemon.port.getHost().port, chunks, read_timeout)


def parse(raw):
    """``(status, lower-case headers, body bytes)`` of the *last* response in ``raw``
    (skipping any interim ``100 Continue``), body de-chunked."""
    while raw.startswith(b"HTTP/1.1 100"):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    if headers.get("transfer-encoding") == "chunked":
        plain = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            plain += rest[:n]
            body = rest[n + 2:]
        body = plain
    return status, headers, body


def assert_envelope(status, headers, body, http_status, code=None):
    assert status == http_status, (status, body[:200])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:200])
    value = json.loads(body)
    assert set(value) == {"success", "error", "error_msg"} and value["success"] is False, value
    if code is not None:
        assert value["error"] == code, value


def request_head(method, path, *headers):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- request bodies over [server] max_body_bytes (docs/design.md#d15-limits) -----------

@pytest.mark.config(server={"max_body_bytes": 2000})
@inline
async def test_declared_body_over_the_limit_is_refused_before_it_is_read(daemon):
    """A Content-Length over ``max_body_bytes`` is answered 413 at once, without a
    ``100 Continue`` and without waiting for the body.
    # was: ``100 Continue``, then the daemon read (and spooled to a temp file) the whole
    # declared body — 900 MB here — before answering 413."""
    raw, timed_out = await exchange(daemon, request_head(
        "PUT", "/admin/users/big", f"Authorization: Bearer {API_KEY}",
        "Expect: 100-continue", "Content-Length: 900000000"))
    assert not timed_out, raw[:200]
    assert not raw.startswith(b"HTTP/1.1 100"), raw[:200]
    assert_envelope(*parse(raw), 413, "body_too_large")
    assert await daemon.store.get_user("big") is None


@pytest.mark.config(server={"max_body_bytes": 2000})
@inline
async def test_chunked_body_over_the_limit_is_cut_off(daemon):
    """A chunked body that grows past ``max_body_bytes`` is refused (413) while it is
    still arriving: the terminating chunk never comes here.
    # was: the daemon kept reading until the client ended the body, however long."""
    chunk = b"%x\r\n%s\r\n" % (1000, b"a" * 1000)
    head = request_head("POST", "/webim/message", "Transfer-Encoding: chunked",
                        "Content-Type: application/x-www-form-urlencoded")
    raw, timed_out = await exchange(daemon, head, *[chunk] * 40)
    assert not timed_out, raw[:200]
    assert_envelope(*parse(raw), 413, "body_too_large")


@pytest.mark.config(server={"max_body_bytes": 2000})
@inline
async def test_body_within_the_limit_still_works_with_expect_continue(daemon):
    body = json.dumps({"nick": "Eve"}).encode()
    raw, _ = await exchange(daemon, request_head(
        "PUT", "/admin/users/eve", f"Authorization: Bearer {API_KEY}", "Expect: 100-continue",
        f"Content-Length: {len(body)}", "Connection: close") + body)
    assert raw.startswith(b"HTTP/1.1 100 Continue"), raw[:200]
    status, _, answer = parse(raw)
    assert status == 200 and json.loads(answer) == {"success": True}
    assert (await daemon.store.get_user("eve"))["nick"] == "Eve"


@pytest.mark.parametrize("head", [
    b"GARBAGE\r\n\r\n",
    request_head("POST", "/webim/message", "Content-Length: -1"),
    request_head("POST", "/webim/message", "Content-Length: 5", "Transfer-Encoding: chunked"),
    request_head("POST", "/webim/message", "Transfer-Encoding: gzip"),
])
@inline
async def test_malformed_framing_is_a_400_envelope(daemon, head):
    """Requests twisted.web refuses while parsing (bad request line, bad or conflicting
    length headers) get the error envelope too.
    # was: a bare ``HTTP/1.1 400 Bad Request`` with no headers and no body."""
    raw, _ = await exchange(daemon, head)
    assert_envelope(*parse(raw), 400, "bad_request")


# -- paths -------------------------------------------------------------------------

@inline
async def test_nul_in_a_static_path_is_a_404_envelope(daemon):
    """# was: 500 with Twisted's HTML "Processing Failed" page and a traceback in the
    log (``ValueError: embedded null byte`` from ``stat``)."""
    resp = await daemon.request("GET", "/static/app.js%00.png")
    assert resp.status == 404 and resp.json["error"] == "unknown_path", resp.text


@pytest.mark.parametrize("path", ["/webim/%FF", "/static/%FF", "/%FF%FE", "/admin/users/%C0%AF"])
@inline
async def test_invalid_utf8_in_the_path_is_a_400_envelope(daemon, path):
    """# was: 400 ``text/html`` "Non-UTF-8 encoding in URL." from Klein, with a
    traceback in the log."""
    raw, _ = await exchange(daemon, request_head("GET", path, "Connection: close"))
    assert_envelope(*parse(raw), 400, "bad_encoding")


# -- configuration -------------------------------------------------------------------

@pytest.mark.parametrize("section, key", [("auth", "token_secret"), ("admin", "api_key"),
                                          ("metrics", "token")])
def test_the_example_secrets_are_refused(section, key):
    """The secrets printed in etc/nextim.toml are public: a daemon started with them
    would accept anyone's tokens and admin calls. ``check-config`` and the start refuse
    them with one line naming the key.
    # was: ``cp etc/nextim.toml /etc/nextim/nextim.toml`` and start: served, with the
    # admin API open to ``Bearer change-me-to-another-long-secret``."""
    data = {"auth": {"token_secret": "s" * 32}, "admin": {"api_key": "k" * 32}}
    data.setdefault(section, {})[key] = "change-me-to-a-long-random-secret"
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(data)
    assert f"[{section}] {key}" in str(err.value) and "\n" not in str(err.value)


# -- live state after admin changes ------------------------------------------------------

@inline
async def test_deleted_user_leaves_the_live_buddy_lists(daemon):
    """After ``DELETE /admin/users/bob``, a new ``bob`` (a token for an unknown user
    creates them) is nobody's buddy: alice's presence must not reach him.
    # was: alice's live buddy set kept "bob" until she went offline, so the new bob
    # received her presence changes."""
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.online("bob")
    resp = await daemon.admin("DELETE", "/admin/users/bob")
    assert resp.status == 200, resp.text
    new_bob = await daemon.online("bob")
    assert new_bob["buddies"] == []
    ticket = new_bob["connection"]["ticket"]
    resp = await daemon.call("presence", ticket=alice, show="away", status="lunch")
    assert resp.status == 200, resp.text
    queued = [packet for _, kind, packet in daemon.router.sessions[ticket].queue if kind == "presences"]
    assert not any(p["from"] == "alice" for p in queued), queued
