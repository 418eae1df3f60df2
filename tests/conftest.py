"""Shared fixtures: a daemon assembled in-process on a loopback port, with the real
SQL store (SQLite file or PostgreSQL schema) and a ``Clock`` driving all timers."""
import json
import secrets
import time
from urllib.parse import urlencode

import jwt
import pytest
import pytest_twisted
import treq
from twisted.internet import defer, endpoints, reactor, task, threads

from nextim_twisted import config as config_module
from nextim_twisted.compose import compose
from tests.storefixtures import STORE_KINDS, make_store, skip_unless_enabled

TOKEN_SECRET = "test-token-secret-" + "x" * 16
API_KEY = "test-admin-key-" + "y" * 16


class Response:
    """A decoded HTTP answer: ``status``, ``headers`` (lower-case str → str), ``text``, ``json``."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        self.text = body.decode("utf-8")

    @property
    def json(self):
        return json.loads(self.text)

    def jsonp(self, callback):
        """The JSON inside ``/**/callback(...);``."""
        prefix, suffix = f"/**/{callback}(", ");"
        assert self.text.startswith(prefix) and self.text.endswith(suffix), self.text
        return json.loads(self.text[len(prefix):-len(suffix)])


class Harness:
    """The daemon's parts wired by :func:`nextim_twisted.compose.compose`, as the
    service wires them, serving HTTP on 127.0.0.1 with the real reactor; the router's
    timers, token expiry and timestamps run on :attr:`clock`. With ``[xmpp] enabled``
    the bridge is built (:attr:`bridge`) but not started."""

    def __init__(self, store, config):
        self.store = store
        self.config = config
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.parts = compose(config, reactor, store=store, clock=self.clock,
                             blocking=lambda f, *a: threads.deferToThread(f, *a))
        self.router, self.auth, self.ctx, self.web = (self.parts.router, self.parts.auth, self.parts.ctx,
                                                      self.parts.web)
        self.bridge = self.parts.xmpp
        # directory changes of nextimctl (handlers/directory.py), read on the test clock
        self.watch = self.parts.watch
        self.port = None

    async def start(self):
        key = await self.store.get_or_create_meta("login_cookie_key", lambda: secrets.token_hex(32))
        self.auth.set_cookie_key(key)
        await self.watch.start()
        self.webhooks = self.parts.webhooks  # [webhooks] url: runs on the clock (docs/integration.md)
        if self.webhooks is not None:
            self.webhooks.startService()
        site = self.web.site()
        self.port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self):
        self.watch.stop()
        self.router.shutdown()
        await self.port.stopListening()
        if self.webhooks is not None and self.webhooks.running:
            await self.webhooks.stopService()
        await self.parts.directory.stop()

    def token(self, sub, nick=None, **claims):
        """A site JWT (docs/design.md#d13-identity) for ``sub``."""
        payload = {"sub": sub, "nick": nick or sub.title(), "exp": int(time.time()) + 3600, **claims}
        return jwt.encode(payload, TOKEN_SECRET, algorithm="HS256")

    async def request(self, method, path, params=None, headers=None, data=None, cookies=None):
        url = self.base + path
        hdrs = {k: [v] for k, v in (headers or {}).items()}
        if method == "GET" and params:
            url += "?" + urlencode(params)
            params = None
        if params is not None:
            data = urlencode(params).encode("utf-8")
            hdrs.setdefault("Content-Type", ["application/x-www-form-urlencoded"])
        resp = await treq.request(method, url, data=data, headers=hdrs, cookies=cookies, persistent=False)
        body = await resp.content()
        headers_out = {k.decode().lower(): v[-1].decode() for k, v in resp.headers.getAllRawHeaders()}
        return Response(resp.code, headers_out, body)

    async def call(self, name, user=None, method="POST", headers=None, **params):
        """``webim/<name>`` with ``params``; ``user`` adds a bearer token for that user."""
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["Authorization"] = "Bearer " + self.token(user)
        return await self.request(method, "/webim/" + name, params, hdrs)

    async def online(self, user, **params):
        """Go online as ``user``; returns the parsed answer."""
        resp = await self.call("online", user=user, **params)
        assert resp.status == 200, resp.text
        return resp.json

    def poll(self, ticket, ack=None, **params):
        """Start a long poll (a Deferred of :class:`Response`)."""
        query = {"ticket": ticket, **params}
        if ack is not None:
            query["ack"] = ack
        return defer.ensureDeferred(self.request("GET", "/packets", query))

    async def admin(self, method, path, body=None, key=API_KEY):
        hdrs = {"Authorization": "Bearer " + key} if key else {}
        data = json.dumps(body).encode() if body is not None else None
        return await self.request(method, path, headers=hdrs, data=data)

    async def settle(self):
        """Let in-flight reactor work (HTTP, DB threads) run a moment."""
        await task.deferLater(reactor, 0.05, lambda: None)


def make_config(**sections):
    """A validated token-auth config for tests; ``sections`` override TOML tables."""
    data = {
        "server": {"public_url": "http://127.0.0.1:8000", "domain": "test.local"},
        "auth": {"method": "token", "token_secret": TOKEN_SECRET},
        "admin": {"api_key": API_KEY},
        "timers": {"poll_hold": 25, "session_idle": 10, "user_grace": 10},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_module.from_dict(data)


async def seed_directory(store):
    """The directory every ``daemon`` fixture starts with: users alice, bob (buddies),
    carol (bob's buddy), dave (no buddies); room ``lobby`` with alice, bob, carol."""
    for uid in ("alice", "bob", "carol", "dave"):
        await store.put_user(uid, uid.title())
    await store.put_buddy("alice", "bob", "Friends")
    await store.put_buddy("bob", "carol", "Work")
    await store.put_room("lobby", "Lobby")
    for uid in ("alice", "bob", "carol"):
        await store.put_member("lobby", uid)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request):
    skip_unless_enabled(request.param)
    return request.param


@pytest_twisted.async_yield_fixture
async def daemon(store_kind, tmp_path, request):
    """A started :class:`Harness` with users alice, bob (buddies), carol (bob's buddy),
    dave (no buddies), and room ``lobby`` with alice, bob, carol."""
    marker = request.node.get_closest_marker("config")
    config = make_config(**(marker.kwargs if marker else {}))
    store, drop = await make_store(store_kind, tmp_path)
    h = Harness(store, config)
    await h.start()
    await seed_directory(store)
    try:
        yield h
    finally:
        await h.stop()
        await drop()


def pytest_configure(config):
    config.addinivalue_line("markers", "config(**sections): override the test daemon's config tables")
