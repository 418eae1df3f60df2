"""HTTP tests in memory: the daemon's real ``Site`` (tuned channel, access log,
metrics) and a treq client joined by in-memory transports instead of a socket.

Every timer of the daemon runs on the harness's ``Clock``, so poll hold, session idle
and user grace are tested by advancing it, without sleeping; connection timeouts are
on it too. The database still answers through the real reactor's threads, so a
request's answer arrives on a later reactor turn, like over a socket.

Use the ``daemon`` fixture of this module in a test file instead of the one of
``tests/conftest.py`` (``from tests.memweb import daemon``); the harness has the same
methods. When a test ends, the harness stops the router, lets every connection close
and asserts that nothing is left scheduled on the Clock. Real sockets stay for the
channel class itself, the end-to-end and the fault tests.
"""
import secrets
import time
from urllib.parse import urlencode

import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.test import iosim
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tests.conftest import Harness, Response, make_config, seed_directory
from tests.storefixtures import make_store

#: The address the in-memory server and clients pretend to have.
SERVER = IPv4Address("TCP", "127.0.0.1", 8000)
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)


class _Transport(iosim.FakeTransport):
    """An in-memory transport that asks its pipe to move bytes whenever it writes or
    closes (iosim's transports only move them when pumped)."""

    pipe = None

    def write(self, data):
        super().write(data)
        self.pipe.wake()

    def loseConnection(self):
        super().loseConnection()
        self.pipe.wake()

    def abortConnection(self):
        super().abortConnection()
        self.pipe.wake()


class Pipe:
    """One client connection to the site: bytes move on the next reactor turn after
    either side wrote (the same order a socket would give, without the kernel)."""

    def __init__(self, site, client_protocol):
        server_protocol = site.buildProtocol(CLIENT)
        self.server = _Transport(server_protocol, isServer=True, hostAddress=SERVER, peerAddress=CLIENT)
        self.client = _Transport(client_protocol, isServer=False, hostAddress=CLIENT, peerAddress=SERVER)
        self.server.pipe = self.client.pipe = self
        self._due = None
        self.pump = iosim.connect(server_protocol, self.server, client_protocol, self.client, greet=False)
        self.wake()

    @property
    def closed(self):
        return self.server.disconnected and self.client.disconnected

    @property
    def busy(self):
        return self._due is not None

    def wake(self):
        if self._due is None and not self.closed:
            self._due = reactor.callLater(0, self._move)

    def _move(self):
        self._due = None
        self.pump.flush()


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self, harness):
        self.harness = harness

    def connect(self, factory):
        protocol = factory.buildProtocol(SERVER)
        self.harness.pipes.append(Pipe(self.harness.site, protocol))
        return defer.succeed(protocol)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, harness):
        self.harness = harness

    def endpointForURI(self, uri):
        return _Endpoint(self.harness)


class MemoryHarness(Harness):
    """:class:`tests.conftest.Harness` served in memory (see the module's docstring)."""

    base = "http://127.0.0.1:8000"

    def __init__(self, store, config):
        super().__init__(store, config)
        self.pipes = []
        self.site = None
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent.usingEndpointFactory(reactor, _Endpoints(self), pool=pool))

    async def start(self):
        key = await self.store.get_or_create_meta("login_cookie_key", lambda: secrets.token_hex(32))
        self.auth.set_cookie_key(key)
        self.site = self.web.site(reactor=self.clock)

    async def stop(self):
        """Stop the router, let every connection close, then check the Clock is empty.

        :raises AssertionError: a delayed call is left on the Clock (a timer someone
            forgot to cancel), or a connection did not close.
        """
        self.router.shutdown()
        for _ in range(200):
            if not any(p.busy or not p.closed for p in self.pipes):
                break
            await self.turn()
        open_pipes = [p for p in self.pipes if not p.closed]
        left = [repr(c) for c in self.clock.getDelayedCalls()]
        assert open_pipes == [], f"{len(open_pipes)} connections still open after the router stopped"
        assert left == [], f"delayed calls left on the Clock: {left}"

    @staticmethod
    def turn():
        """One turn of the real reactor (database threads answer through it)."""
        return task.deferLater(reactor, 0, lambda: None)

    async def settle(self):
        """Deliver every byte in flight (the Clock does not move)."""
        for _ in range(50):
            await self.turn()
            if not any(p.busy for p in self.pipes):
                return

    async def until(self, condition, what, timeout_s=10.0):
        """Let the reactor run (bytes in flight, database threads) until ``condition()``
        holds; checked every 2 ms of real time, given up after ``timeout_s`` seconds.
        (The Clock does not move; a test that waits for a timer advances it.)

        :raises AssertionError: ``condition()`` still false after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await self.settle()
            if not condition():
                await task.deferLater(reactor, 0.002, lambda: None)

    async def request(self, method, path, params=None, headers=None, data=None, cookies=None):
        url = self.base + path
        hdrs = {k: [v] for k, v in (headers or {}).items()}
        if method == "GET" and params:
            url += "?" + urlencode(params)
            params = None
        if params is not None:
            data = urlencode(params).encode("utf-8")
            hdrs.setdefault("Content-Type", ["application/x-www-form-urlencoded"])
        resp = await self.http.request(method, url, data=data, headers=hdrs, cookies=cookies)
        body = await resp.content()
        headers_out = {k.decode().lower(): v[-1].decode() for k, v in resp.headers.getAllRawHeaders()}
        return Response(resp.code, headers_out, body)


@pytest_twisted.async_yield_fixture
async def daemon(store_kind, tmp_path, request):
    """A started :class:`MemoryHarness` with the directory of :func:`tests.conftest.seed_directory`."""
    marker = request.node.get_closest_marker("config")
    config = make_config(**(marker.kwargs if marker else {}))
    store, drop = await make_store(store_kind, tmp_path)
    h = MemoryHarness(store, config)
    await h.start()
    await seed_directory(store)
    try:
        yield h
    finally:
        try:
            await h.stop()
        finally:
            await drop()
