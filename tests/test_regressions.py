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
