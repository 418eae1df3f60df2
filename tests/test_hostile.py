"""Hostile input against the in-process daemon (docs/guarantees.md): broken, oversized and
malicious parameters, JSON bodies, tokens, tickets, callbacks and floods, on SQLite
and PostgreSQL.

Expected everywhere: the error envelope (plain mode: 4xx + JSON; JSONP: 200 + script),
never a 5xx; nothing stored half-way; no other user's data in any answer; text is
stored and returned as text. Property-based tests use hypothesis; their test bodies are
synchronous and drive the reactor with ``pytest_twisted.blockon``. Every input that
broke the daemon once is kept below as an explicit case (``# was:`` says what it did).
"""
import base64
import json
import re
import secrets
import time
from urllib.parse import quote_from_bytes, unquote_to_bytes

import jwt
import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads

from nextim_twisted.handlers.params import MAX_IDS, is_storable
from nextim_twisted.web.webim import WEBIM
from tests.conftest import API_KEY, TOKEN_SECRET, Response

inline = pytest_twisted.ensureDeferred

HYPO = settings(max_examples=75, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Longest one example may take (real seconds) before it fails as hung.
EXAMPLE_TIMEOUT_S = 20

#: A private unicast between bob and carol; it must never show up in alice's answers.
SECRET = "PRIVATE-bob-to-carol-" + secrets.token_hex(4)

NASTY_TEXT = [
    "<script>alert(1)</script>", "</script><script>alert(document.cookie)</script>",
    "<img src=x onerror=alert(1)>", "\"'><svg/onload=alert(1)>", "javascript:alert(1)",
    "😀🀄𝄞 four-byte", "line\u2028sep\u2029para", "\u202eRTL override", "tab\tnew\nline\r",
    "\\u0000 escaped", "{{7*7}} ${7*7}", "%00%ED%A0%80", "'; DROP TABLE messages; --", "\ufeffBOM", "x" * 2000,
]

NASTY_BYTES = [
    b"%ED%A0%80",            # a lone surrogate (U+D800) as UTF-8 bytes: not valid UTF-8
    b"%ED%B0%80%ED%A0%80",   # a reversed surrogate pair
    b"%FF%FE", b"%C0%AF",    # invalid and overlong sequences
    b"%00", b"a%00b",        # NUL
    b"%F4%90%80%80",         # beyond U+10FFFF
    b"%E2%80%A8",            # U+2028 (valid UTF-8, must be escaped inside JSONP)
    b"%F0%9F%98%80",         # a 4-byte character
]


# -- helpers --------------------------------------------------------------------------

def on_reactor(make_coro):
    """From a worker thread: run ``make_coro()`` on the reactor and wait for its result."""
    def start():
        d = defer.ensureDeferred(make_coro())
        d.addTimeout(EXAMPLE_TIMEOUT_S, reactor)  # a parked poll must fail the test, not hang it
        return d
    return threads.blockingCallFromThread(reactor, start)


def in_thread(prop):
    """Run a synchronous hypothesis property in a worker thread while the reactor (and
    the in-process daemon) keeps running; each example calls :func:`on_reactor`."""
    return threads.deferToThread(prop)


async def raw(daemon, method, path, query=b"", body=None, headers=None):
    """A request with a pre-encoded query/body (bytes), so invalid UTF-8 reaches the daemon."""
    url = daemon.base + path + ("?" + query.decode("ascii") if query else "")
    hdrs = {k: [v] for k, v in (headers or {}).items()}
    if body is not None:
        hdrs.setdefault("Content-Type", ["application/x-www-form-urlencoded"])
    resp = await treq.request(method, url, data=body, headers=hdrs, persistent=False)
    content = await resp.content()
    headers_out = {k.decode().lower(): v[-1].decode("latin-1") for k, v in resp.headers.getAllRawHeaders()}
    return Response(resp.code, headers_out, content)


def form(pairs):
    """``[(name bytes, value bytes)]`` → percent-encoded form bytes."""
    return b"&".join(quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode() for k, v in pairs)


def assert_envelope(value, code=None):
    assert isinstance(value, dict) and set(value) == {"success", "error", "error_msg"}, value
    assert value["success"] is False and value["error"] and isinstance(value["error_msg"], str), value
    if code is not None:
        assert value["error"] == code, value


JSONP = re.compile(r"^/\*\*/([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\((.*)\);$", re.S | re.A)


def check_answer(resp, callback=None):
    """The invariants every answer keeps; returns the decoded JSON (or ``"ok"``).
    ``callback``: the callback the answer must use, if JSONP is expected."""
    assert resp.status < 500, (resp.status, resp.body[:300])
    text = resp.body.decode("utf-8")  # always valid UTF-8
    ctype = resp.headers.get("content-type", "")
    assert not ctype.startswith("text/html"), ctype
    assert SECRET not in text, "another user's message leaked"
    if callback is not None:
        assert ctype.startswith("application/javascript") or resp.status == 404, (resp.status, ctype, text[:200])
    if ctype.startswith("application/javascript"):
        assert resp.status == 200, (resp.status, text[:200])
        # A script body: no raw line/paragraph separators (not valid in pre-ES2019 string
        # literals), and exactly /**/cb(<strict JSON>);
        assert "\u2028" not in text and "\u2029" not in text
        match = JSONP.match(text)
        assert match, text[:200]
        if callback is not None:
            assert match.group(1) == callback
        value = json.loads(match.group(2))
        if isinstance(value, dict) and value.get("success") is False:
            assert_envelope(value)
        return value
    if resp.status != 200:
        assert ctype.startswith("application/json"), (resp.status, ctype, text[:200])
        assert_envelope(resp.json)
        return resp.json
    if ctype.startswith("text/plain"):
        assert text == "ok"
        return "ok"
    assert ctype.startswith("application/json"), ctype
    return resp.json


async def setup_secret(daemon):
    """bob → carol, one private message that alice must never see."""
    if getattr(daemon, "_secret_sent", False):
        return
    bob = await daemon.online("bob")
    resp = await daemon.call("message", ticket=bob["connection"]["ticket"], type="unicast", to="carol", body=SECRET)
    assert resp.status == 200, resp.text
    daemon._secret_sent = True


async def ticket_of(daemon, user):
    """One live ticket per user for the whole test (the fixture's Clock never expires it)."""
    cache = daemon.__dict__.setdefault("_tickets", {})
    if user not in cache:
        cache[user] = (await daemon.online(user))["connection"]["ticket"]
    return cache[user]


async def drain(daemon, ticket, ack=None):
    """Take what is queued without parking (the hold would wait on the Clock)."""
    session = daemon.router.sessions[ticket]
    if not session.queue:
        return []
    resp = await daemon.poll(ticket, ack=ack)
    env = check_answer(resp)
    return env["messages"]


# -- property: any parameters to any endpoint -----------------------------------------

param_names = st.sampled_from(sorted({"ticket", "type", "to", "body", "id", "ids", "show", "status", "data",
                                      "buddy_ids", "room_ids", "stranger_ids", "style", "offline", "ack",
                                      "username", "password", "token", "nick", "_", "callback", "from",
                                      "timestamp", "csrf_token"}))
raw_values = st.one_of(
    st.text(max_size=60).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=30),
    st.sampled_from([unquote_to_bytes(b) for b in NASTY_BYTES]),
    st.sampled_from([t.encode("utf-8") for t in NASTY_TEXT]),
    st.sampled_from([b"", b"unicast", b"multicast", b"broadcast", b"bob", b"lobby", b"alice", b"-1", b"1e9",
                     b"99999999999999999999999999", b"true", b"available", b"invisible", b"{}", b"[]", b"null",
                     b"bob,carol,,alice", b"typing"]),
)


@inline
async def test_any_parameters_to_any_endpoint(daemon):
    """Whatever the parameters (invalid UTF-8, NUL, huge numbers, wrong types), every
    endpoint answers the error envelope or a proper answer, never a 5xx or another user's data."""
    @given(name=st.sampled_from(sorted(WEBIM) + ["login", "logout", "nope", "online.php"]),
           method=st.sampled_from(["GET", "POST"]),
           pairs=st.lists(st.tuples(param_names.map(str.encode), raw_values), max_size=6),
           with_ticket=st.booleans(), with_token=st.booleans(),
           callback=st.sampled_from([None, "cb", "parent.jsonp1", "alert(1)//", "a\u2028b", "x" * 200]))
    @HYPO
    def prop(name, method, pairs, with_ticket, with_token, callback):
        async def go():
            await setup_secret(daemon)
            daemon.ctx.limiter.buckets.clear()
            pairs_ = list(pairs)
            if with_ticket:
                pairs_.insert(0, (b"ticket", (await ticket_of(daemon, "alice")).encode()))
            if callback is not None:
                pairs_.insert(0, (b"callback", callback.encode("utf-8")))
            headers = {"Authorization": "Bearer " + daemon.token("alice")} if with_token else {}
            encoded = form(pairs_)
            if method == "GET":
                resp = await raw(daemon, "GET", "/webim/" + name, query=encoded, headers=headers)
            else:
                resp = await raw(daemon, "POST", "/webim/" + name, body=encoded, headers=headers)
            cb = callback if callback in ("cb", "parent.jsonp1") else None
            check_answer(resp, cb)
        on_reactor(go)

    await in_thread(prop)


@inline
async def test_any_parameters_to_the_poll(daemon):
    """``/packets`` with junk: 400/404 envelope or a batch, never a 5xx (and never parks
    forever: a valid ticket has queued packets or gets a ``stopped`` from the next poll)."""
    @given(pairs=st.lists(st.tuples(param_names.map(str.encode), raw_values), max_size=5),
           with_ticket=st.booleans())
    @HYPO
    def prop(pairs, with_ticket):
        async def go():
            ticket = await ticket_of(daemon, "alice")
            pairs_ = list(pairs)
            if with_ticket:
                pairs_.insert(0, (b"ticket", ticket.encode()))
            # make sure a valid poll answers at once: one packet queued
            daemon.router.sessions[ticket].push("statuses", {"from": "x", "nick": "x", "to": "alice", "show": "typing"})
            resp = await raw(daemon, "GET", "/packets", query=form(pairs_))
            check_answer(resp)
            daemon.router.sessions[ticket].queue.clear()
        on_reactor(go)

    await in_thread(prop)


# -- property: text is stored and returned as text --------------------------------------

@inline
async def test_message_text_round_trips_exactly(daemon):
    """Any text as a message body reaches the recipient and history unchanged (HTML and
    script included: the daemon never renders it), and JSONP stays one valid script;
    a body with NUL is refused and nothing is stored."""
    @given(body=st.one_of(st.text(min_size=1, max_size=300), st.sampled_from(NASTY_TEXT)),
           callback=st.sampled_from([None, "cb"]))
    @HYPO
    def prop(body, callback):
        async def go():
            daemon.ctx.limiter.buckets.clear()
            alice, bob = await ticket_of(daemon, "alice"), await ticket_of(daemon, "bob")
            before = await daemon.store.message_count()
            resp = await daemon.call("message", ticket=alice, type="unicast", to="bob", body=body)
            if "\x00" in body:
                assert_envelope(check_answer(resp), "bad_encoding")
                assert await daemon.store.message_count() == before
                return
            assert check_answer(resp) == "ok"
            assert await daemon.store.message_count() == before + 1
            last = daemon.router.sessions[bob].last_seq
            got = await daemon.poll(bob, ack=last - 1, **({"callback": callback} if callback else {}))
            env = check_answer(got, callback)
            assert env["messages"][-1]["body"] == body
            hist = check_answer(await daemon.call("history", ticket=bob, id="alice", method="GET",
                                                  **({"callback": callback} if callback else {})), callback)
            assert hist[-1]["body"] == body  # (the next example's ack drops this one)
        on_reactor(go)

    await in_thread(prop)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=20), st.sampled_from(["\ud800", "\udfff", "\x00", "</script>", "\u2028"]))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)


@pytest.mark.config(limits={"onlines_per_minute": 10000})  # many onlines on purpose
@inline
async def test_setting_accepts_only_objects_it_can_answer_again(daemon):
    """``webim/setting`` with any JSON (NaN, Infinity, lone-surrogate escapes, non-objects):
    refused with the envelope, or stored and answered back equal — and ``online`` and the
    read never fail afterwards."""
    @given(value=json_values, callback=st.sampled_from([None, "cb"]))
    @HYPO
    def prop(value, callback):
        async def go():
            ticket = await ticket_of(daemon, "alice")
            data = json.dumps(value, allow_nan=True)  # ASCII: "\ud800" stays an escape
            resp = await daemon.call("setting", ticket=ticket, data=data)
            answer = check_answer(resp)
            read = check_answer(await daemon.call("setting", ticket=ticket, method="GET",
                                                  **({"callback": callback} if callback else {})), callback)
            if answer == "ok":
                assert isinstance(value, dict)
                assert json.dumps(read, sort_keys=True) == json.dumps(value, sort_keys=True)
            else:
                assert_envelope(answer)
            assert (await daemon.call("online", user="alice")).status == 200
        on_reactor(go)

    await in_thread(prop)


@inline
async def test_admin_json_bodies(daemon):
    """Any JSON body to the admin API: a 2xx or the envelope; a refused call stores nothing."""
    @given(body=json_values)
    @HYPO
    def prop(body):
        async def go():
            for method, path in (("PUT", "/admin/users/zed"), ("PUT", "/admin/rooms/zroom"),
                                 ("POST", "/admin/users/alice/notifications"), ("PUT", "/admin/users/alice/buddies/dave")):
                resp = await daemon.request(method, path, headers={"Authorization": "Bearer " + API_KEY},
                                            data=json.dumps(body, allow_nan=True).encode())
                check_answer(resp)
                if path == "/admin/users/zed" and resp.status != 200:
                    assert await daemon.store.get_user("zed") is None
                await daemon.store.delete_user("zed")
                await daemon.store.delete_room("zroom")
        on_reactor(go)

    await in_thread(prop)


claims_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                          st.sampled_from(["", " ", "a,b", "a/b", "\x01", "\ud800", "x\x00", "<b>x</b>", "x" * 70,
                                           1e400, -1e400, 2**70]),
                          st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@inline
async def test_any_token_claims(daemon):
    """A token with any claims, signed right, wrong or not at all: 200 only when signed
    right with a valid ``sub``; otherwise the 401 envelope; never a 5xx."""
    @given(claims=st.fixed_dictionaries({}, optional={k: claims_values for k in
                                                      ("sub", "nick", "pic_url", "default_pic_url", "url", "exp", "nbf", "iat")}),
           key=st.sampled_from(["right", "wrong", "none"]))
    @HYPO
    def prop(claims, key):
        async def go():
            payload = json.dumps(claims, allow_nan=True).encode()
            header = {"alg": "HS256" if key != "none" else "none", "typ": "JWT"}
            signing = b64(json.dumps(header).encode()) + "." + b64(payload)
            if key == "none":
                token = signing + "."
            else:
                secret = TOKEN_SECRET if key == "right" else TOKEN_SECRET + "x"
                token = signing + "." + b64(jwt.api_jws.get_algorithm_by_name("HS256").sign(
                    signing.encode(), jwt.api_jws.get_algorithm_by_name("HS256").prepare_key(secret)))
            resp = await daemon.request("POST", "/webim/online", headers={"Authorization": "Bearer " + token})
            answer = check_answer(resp)
            if key != "right":
                assert resp.status == 401
            if resp.status == 200:
                assert answer["user"]["id"] == claims["sub"]
                assert await daemon.store.get_user(claims["sub"]) is not None
            elif (isinstance(claims.get("sub"), str) and is_storable(claims["sub"])
                  and claims["sub"] not in ("alice", "bob", "carol", "dave")):
                assert await daemon.store.get_user(claims["sub"]) is None  # refused: nothing stored
        on_reactor(go)

    await in_thread(prop)


@inline
async def test_callback_names_cannot_inject(daemon):
    """A callback is either a plain dotted JS name echoed as ``/**/name(``, or refused
    with a plain JSON 400 — never reflected into a script otherwise."""
    @given(callback=st.one_of(st.text(max_size=40), st.sampled_from([
        "alert(1)//", "a=1;b", "x\u2028y", "</script>", "a.b.c", "$", "_", "a..b", ".a", "a.", "1a", "a-b",
        "constructor.constructor('alert(1)')()", "\u0430lert", "a\x00", "a b", "a\nb"])))
    @HYPO
    def prop(callback):
        async def go():
            resp = await daemon.call("buddies", user="alice", method="GET", ids="bob", callback=callback)
            import re
            if callback and len(callback) <= 128 and re.fullmatch(r"[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*", callback,
                                                                  re.ASCII):
                assert resp.status == 200 and resp.text.startswith(f"/**/{callback}(")
                check_answer(resp, callback)
            elif callback:
                assert resp.status == 400 and resp.headers["content-type"].startswith("application/json")
                assert_envelope(resp.json, "bad_callback")
            else:
                check_answer(resp)
        on_reactor(go)

    await in_thread(prop)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- regression cases: each input that broke the daemon -----------------------------

@inline
async def test_admin_json_with_lone_surrogate_or_nul_is_400_and_stores_nothing(daemon):
    # was: 500 internal_error (UnicodeEncodeError in the store; PostgreSQL: NUL in text)
    for body in ('{"nick": "\\ud800"}', '{"nick": "a\\u0000b"}', '{"nick": "ok", "url": "\\udfff"}',
                 '{"nick": "ok", "\\ud800": 1}'):
        resp = await daemon.request("PUT", "/admin/users/zed", headers={"Authorization": "Bearer " + API_KEY},
                                    data=body.encode())
        assert resp.status == 400, (body, resp.text)
        assert_envelope(resp.json, "bad_encoding")
        assert await daemon.store.get_user("zed") is None
    resp = await daemon.request("POST", "/admin/broadcast", headers={"Authorization": "Bearer " + API_KEY},
                                data=b'{"body": "x\\ud800"}')
    assert resp.status == 400
    resp = await daemon.request("POST", "/admin/users/alice/notifications",
                                headers={"Authorization": "Bearer " + API_KEY}, data=b'{"text": "\\u0000"}')
    assert resp.status == 400


@pytest.mark.parametrize("data", ['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e400}',
                                  '{"a": ' + "[" * 40 + "]" * 40 + "}", '{"a": ' + "[" * 900 + "]" * 900 + "}"])
@inline
async def test_setting_that_could_not_be_answered_is_refused(daemon, data):
    # was: stored with ``ok``, then every ``online`` and setting read of the user → 500
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    resp = await daemon.call("setting", ticket=ticket, data=data)
    assert resp.status == 400, resp.text
    assert_envelope(resp.json, "bad_parameter")
    assert await daemon.store.get_setting("alice") is None
    assert (await daemon.call("online", user="alice")).status == 200


@inline
async def test_a_poisoned_stored_setting_does_not_break_online(daemon):
    # A value stored before the rule (or by hand) is answered as {} rather than a 500.
    await daemon.store.put_setting("alice", '{"a": NaN, "b": ' + "[" * 900 + "]" * 900 + "}")
    ans = await daemon.online("alice")
    assert ans["setting"] == {}


@inline
async def test_setting_with_surrogate_escape_round_trips_as_an_escape(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("setting", ticket=ticket, data='{"a": "\\ud800", "b": "\u2028"}')).text == "ok"
    resp = await daemon.call("setting", ticket=ticket, method="GET", callback="cb")
    assert "\\ud800" in resp.text and "\u2028" not in resp.text
    assert resp.jsonp("cb") == {"a": "\ud800", "b": "\u2028"}


@pytest.mark.parametrize("claims", [
    {"sub": "alice", "nick": "\ud800"},     # was: 500 (UnicodeEncodeError storing the profile)
    {"sub": "newbie", "nick": "a\x00b"},    # was: 500 on PostgreSQL (NUL in text)
    {"sub": "a,b"},                         # was: 200, a user id no csv parameter can name
    {"sub": "a/b"},                         # was: 200, a user id no admin path can name
    {"sub": " x\x01"},                      # was: 200, control characters in a user id
    {"sub": "x" * 65},
    {"sub": "alice", "url": "u" * 2001},
])
@inline
async def test_token_claims_that_cannot_be_stored_are_401(daemon, claims):
    token = jwt.encode(dict(claims, exp=int(time.time()) + 60), TOKEN_SECRET, algorithm="HS256")
    resp = await daemon.request("POST", "/webim/online", headers={"Authorization": "Bearer " + token})
    assert resp.status == 401, resp.text
    assert_envelope(resp.json, "invalid_token")
    if claims["sub"] != "alice":
        assert await daemon.store.get_user(claims["sub"]) is None


@inline
async def test_forged_tokens(daemon):
    now = int(time.time())
    header_deep = b64(b"[" * 5000) + "." + b64(b'{"sub":"alice"}') + ".c2ln"
    unsigned = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(b'{"sub":"alice"}') + "."
    cases = {
        "wrong signature": jwt.encode({"sub": "alice", "exp": now + 60}, TOKEN_SECRET + "!", algorithm="HS256"),
        "alg none": unsigned,
        "expired": jwt.encode({"sub": "alice", "exp": now - 3600}, TOKEN_SECRET, algorithm="HS256"),
        "HS512": jwt.encode({"sub": "alice"}, TOKEN_SECRET, algorithm="HS512"),
        "deep header": header_deep,
        "garbage": "a.b.c", "empty parts": "..", "no dots": "x" * 3000,
        "huge exp": jwt.encode({"sub": "alice", "exp": 10**30}, TOKEN_SECRET, algorithm="HS256"),
        "inf nbf": b64(b'{"alg":"HS256"}') + "." + b64(b'{"sub":"alice","nbf":1e400}') + ".x",
    }
    for what, token in cases.items():
        for where in ("header", "param"):
            if where == "header":
                resp = await daemon.request("POST", "/webim/online", headers={"Authorization": "Bearer " + token})
            else:
                resp = await daemon.call("online", token=token)
            if what == "huge exp":
                assert resp.status == 200, resp.text  # far future is valid
                continue
            assert resp.status == 401, (what, resp.text)
            assert_envelope(resp.json)


@inline
async def test_ticket_of_another_user_is_refused_everywhere(daemon):
    bob_ticket = (await daemon.online("bob"))["connection"]["ticket"]
    await daemon.online("alice")
    for name in ("offline", "refresh", "message", "presence", "status", "join", "leave", "members", "history",
                 "setting", "buddies"):
        resp = await daemon.call(name, user="alice", ticket=bob_ticket, type="unicast", to="carol", body="x",
                                 show="away", id="lobby", ids="carol")
        assert resp.status == 403, (name, resp.text)
        assert_envelope(resp.json, "ticket_mismatch")
    assert bob_ticket in daemon.router.sessions  # bob's session is untouched
    assert await daemon.store.message_count() == 0


@inline
async def test_unknown_and_ended_tickets(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    await daemon.call("offline", ticket=ticket)
    for t in (ticket, "x" * 32, "", "../../etc/passwd"):
        resp = await daemon.poll(t, callback="cb")
        assert resp.status == 404 and resp.headers["content-type"].startswith("application/json")
        assert_envelope(resp.json)
        resp = await daemon.call("message", ticket=t, type="unicast", to="bob", body="x")
        assert resp.status in (401, 404)
        assert_envelope(resp.json)


ADMIN_ROUTES = [("PUT", "/admin/users/x"), ("DELETE", "/admin/users/alice"), ("PUT", "/admin/users/alice/buddies/dave"),
                ("DELETE", "/admin/users/alice/buddies/bob"), ("POST", "/admin/users/alice/notifications"),
                ("PUT", "/admin/rooms/r"), ("DELETE", "/admin/rooms/lobby"), ("PUT", "/admin/rooms/lobby/members/dave"),
                ("DELETE", "/admin/rooms/lobby/members/alice"), ("POST", "/admin/broadcast"), ("GET", "/admin/stats")]


@inline
async def test_admin_without_or_with_a_wrong_key_is_401_and_changes_nothing(daemon):
    for key in (None, "", "wrong", API_KEY + "x", API_KEY[:-1], "Basic " + API_KEY, daemon.token("alice")):
        for method, path in ADMIN_ROUTES:
            resp = await daemon.admin(method, path, {"nick": "X", "text": "t", "body": "b"}, key=key)
            assert resp.status == 401, (key, method, path, resp.text)
            assert_envelope(resp.json, "bad_api_key")
    assert await daemon.store.get_user("alice") is not None
    assert await daemon.store.get_user("x") is None
    assert await daemon.store.is_member("lobby", "alice")


@inline
async def test_lone_surrogate_in_form_data_is_400_on_every_endpoint(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    for name in sorted(WEBIM):
        for method in ("GET", "POST"):
            enc = b"ticket=" + ticket.encode() + b"&to=bob&type=unicast&id=%ED%A0%80&body=a%ED%A0%80b&data=%ED%A0%80"
            if method == "GET":
                resp = await raw(daemon, "GET", "/webim/" + name, query=enc + b"&callback=cb")
                assert resp.status == 200 and resp.jsonp("cb")["error"] == "bad_encoding", (name, resp.text)
            else:
                resp = await raw(daemon, "POST", "/webim/" + name, body=enc)
                assert resp.status == 400, (name, resp.text)
                assert_envelope(resp.json, "bad_encoding")
    assert await daemon.store.message_count() == 0


@inline
async def test_u2028_and_4_byte_characters_in_jsonp(daemon):
    alice, bob = (await daemon.online("alice"))["connection"]["ticket"], (await daemon.online("bob"))["connection"]["ticket"]
    body = "a\u2028b\u2029c 😀 </script>"
    assert (await daemon.call("message", ticket=alice, type="unicast", to="bob", body=body)).text == "ok"
    resp = await daemon.poll(bob, ack=0, callback="jsonp1")
    assert "\u2028" not in resp.text and "\u2029" not in resp.text and "😀" in resp.text
    assert resp.jsonp("jsonp1")["messages"][0]["body"] == body


@inline
async def test_html_in_every_text_field_is_stored_and_returned_as_text(daemon):
    html = "<script>alert('x')</script><b onmouseover=alert(1)>"
    await daemon.admin("PUT", "/admin/users/eve", {"nick": html, "pic_url": html, "url": html})
    await daemon.admin("PUT", "/admin/users/eve/buddies/alice", {"group": html})
    await daemon.admin("PUT", "/admin/rooms/den", {"nick": html, "url": html})
    await daemon.admin("PUT", "/admin/rooms/den/members/alice")
    await daemon.admin("POST", "/admin/users/alice/notifications", {"text": html, "link": html})
    ans = await daemon.online("alice", status=html)
    eve = [b for b in ans["buddies"] if b["id"] == "eve"]
    assert ans["user"]["status"] == html
    ticket = ans["connection"]["ticket"]
    assert (await daemon.call("setting", ticket=ticket, data=json.dumps({"k": html}))).text == "ok"
    resp = await daemon.call("buddies", ticket=ticket, method="GET", ids="eve")
    eve = resp.json[0]
    assert eve["nick"] == html and eve["group"] == html and eve["pic_url"] == html
    rooms = (await daemon.call("rooms", ticket=ticket, method="GET", ids="den")).json
    assert rooms[0]["nick"] == html
    notes = (await daemon.call("notifications", ticket=ticket, method="GET")).json
    assert notes[0]["text"] == html and notes[0]["link"] == html
    assert (await daemon.call("setting", ticket=ticket, method="GET")).json == {"k": html}
    resp = await daemon.call("message", ticket=ticket, type="unicast", to="eve", body=html,
                             style="color:red;background:url(javascript:alert(1));font-weight:bold")
    assert resp.text == "ok"
    hist = (await daemon.call("history", ticket=ticket, method="GET", id="eve")).json
    assert hist[-1]["body"] == html and hist[-1]["style"] == "color:red;font-weight:bold"
    for r in (resp,):
        assert not r.headers["content-type"].startswith("text/html")


@inline
async def test_huge_id_lists_fail_at_the_first_id_too_many(daemon):
    # was: the whole list was de-duplicated with a list scan (quadratic) before counting
    ids = ",".join(f"u{i}" for i in range(MAX_IDS)) + ",u-last," + "\x01bad"
    resp = await daemon.call("buddies", user="alice", ids=ids)
    assert resp.status == 400 and "too many ids" in resp.json["error_msg"]
    ok = await daemon.call("buddies", user="alice", ids=",".join(["bob"] * 3000))  # duplicates are fine
    assert ok.status == 200 and [b["id"] for b in ok.json] == ["bob"]


@pytest.mark.parametrize("value", ["-1", "1.5", "x", "9" * 5000, "0x10", " ", "1e3", "99999999999999999999"])
@inline
async def test_malformed_ack_is_400(daemon, value):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    resp = await daemon.poll(ticket, ack=value)
    assert resp.status in (400, 200), resp.text
    if resp.status == 400:
        assert_envelope(resp.json, "bad_parameter")


# -- delivery: duplicates and concurrency -------------------------------------------

@inline
async def test_message_to_oneself_reaches_each_other_tab_once(daemon):
    # was: every other tab got the message twice, the sending tab once (docs/design.md#d7-messages: never)
    t1 = (await daemon.online("alice"))["connection"]["ticket"]
    t2 = (await daemon.online("alice"))["connection"]["ticket"]
    t3 = (await daemon.online("alice"))["connection"]["ticket"]
    assert (await daemon.call("message", ticket=t1, type="unicast", to="alice", body="note")).text == "ok"
    for t in (t2, t3):
        env = (await daemon.poll(t, ack=0)).json
        assert [m["body"] for m in env["messages"]] == ["note"]
    assert not daemon.router.sessions[t1].queue


@pytest.mark.config(limits={"onlines_per_minute": 10000})  # many onlines on purpose
@inline
async def test_twenty_concurrent_onlines_of_one_user(daemon):
    # was: each of the 20 answers carried the same new_messages (20 deliveries of one message)
    for i in range(3):
        await daemon.store.add_message("unicast", "carol", "bob", "Carol", f"offline {i}", "", 1000 + i, False)
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    answers = await defer.gatherResults([defer.ensureDeferred(daemon.call("online", user="bob")) for _ in range(20)])
    assert all(a.status == 200 for a in answers)
    bodies = [m["body"] for a in answers for m in a.json["new_messages"]]
    assert sorted(bodies) == ["offline 0", "offline 1", "offline 2"]
    assert len({a.json["connection"]["ticket"] for a in answers}) == 20
    assert len(daemon.router.users["bob"].sessions) == 20
    assert daemon.router.stats()["sessions"] == 21
    env = (await daemon.poll(alice, ack=0)).json
    assert [(p["type"], p["from"]) for p in env["presences"]] == [("online", "bob")]
    assert (await daemon.call("online", user="bob")).json["new_messages"] == []


@inline
async def test_recipient_coming_online_while_a_message_is_stored_gets_it_once(daemon):
    """The message handler decided "offline" (stored undelivered); the recipient's
    ``online`` opens a session before the commit returns. Either the ``online`` hands it
    over in ``new_messages`` or the comet does — never both, never neither."""
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    real_add = daemon.store.add_message
    state = {}

    async def racing_add(*args):
        msg = await real_add(*args)
        state["dave"] = (await daemon.online("dave"))  # dave comes online in between
        return msg

    daemon.store.add_message = racing_add
    try:
        assert (await daemon.call("message", ticket=alice, type="unicast", to="dave", body="race")).text == "ok"
    finally:
        daemon.store.add_message = real_add
    dave = state["dave"]
    ticket = dave["connection"]["ticket"]
    live = daemon.router.sessions[ticket].queue
    seen = [m["body"] for m in dave["new_messages"]] + [p["body"] for _, k, p in live if k == "messages"]
    assert seen == ["race"]
    assert (await daemon.online("dave"))["new_messages"] == []  # and not again at the next online


# -- floods (docs/design.md#d15-limits) ----------------------------------------------

@inline
async def test_message_flood_is_rate_limited_and_stores_only_what_got_ok(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    results = await defer.gatherResults([defer.ensureDeferred(
        daemon.call("message", ticket=ticket, type="unicast", to="bob", body=f"m{i}")) for i in range(60)])
    ok = [r for r in results if r.status == 200]
    limited = [r for r in results if r.status == 429]
    assert len(ok) + len(limited) == 60 and limited and ok
    for r in limited:
        assert_envelope(r.json, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
    assert await daemon.store.message_count() == len(ok)
    daemon.clock.advance(int(limited[0].headers["retry-after"]))
    assert (await daemon.call("message", ticket=ticket, type="unicast", to="bob", body="later")).text == "ok"


@inline
async def test_presence_and_typing_flood_is_rate_limited(daemon):
    ticket = (await daemon.online("alice"))["connection"]["ticket"]
    statuses = []
    for _ in range(40):
        r = await daemon.call("status", ticket=ticket, to="bob", show="typing", callback="cb")
        statuses.append(r)
    codes = [r.jsonp("cb") for r in statuses]
    assert all(r.status == 200 for r in statuses)  # JSONP: errors are 200 scripts (docs/design.md#d2-errors)
    assert "ok" in codes and any(isinstance(c, dict) and c["error"] == "rate_limited" for c in codes)


# -- long requests (docs/design.md#d1-plain-and-jsonp, docs/design.md#d15-limits) -----

@inline
async def test_a_long_message_by_jsonp_get_is_answered(daemon):
    # was: a 10 000-character CJK message sent as a JSONP GET (90 KB of percent-encoding)
    # exceeded twisted.web's 16 KiB request line: the connection was dropped, no answer.
    alice = (await daemon.online("alice"))["connection"]["ticket"]
    bob = (await daemon.online("bob"))["connection"]["ticket"]
    body = "漢" * daemon.config.limits.message_chars
    resp = await daemon.call("message", method="GET", ticket=alice, type="unicast", to="bob", body=body,
                             callback="jsonp7")
    assert resp.status == 200 and resp.text == '/**/jsonp7("ok");'
    assert (await daemon.poll(bob, ack=0)).json["messages"][0]["body"] == body


@inline
async def test_an_over_long_request_line_or_query_is_the_413_envelope(daemon):
    max_body = daemon.config.server.max_body_bytes
    query = b"callback=cb&data=" + b"%41" * (max_body + 10)  # decodes to more than max_body bytes
    resp = await raw(daemon, "GET", "/webim/setting", query=query, headers={
        "Authorization": "Bearer " + daemon.token("alice")})
    assert resp.status == 200 and resp.jsonp("cb")["error"] == "body_too_large"  # JSONP: 200 (docs/design.md#d2-errors)
    resp = await raw(daemon, "GET", "/webim/setting", query=b"data=" + b"%41" * (max_body + 10))
    assert resp.status == 413 and resp.json["error"] == "body_too_large"
    resp = await raw(daemon, "GET", "/webim/online", query=b"x=" + b"A" * (4 * max_body))
    assert resp.status == 413
    assert_envelope(resp.json, "request_too_large")
