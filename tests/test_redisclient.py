"""The Redis client wrapper against the real Redis on 127.0.0.1:6379: each gap of
txredisapi that nextim_twisted/hub/redisclient.py closes, shown with the input that
opens it. Channels and ACL users carry a random suffix, so runs can share one Redis."""
import secrets

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, task
from twisted.internet.testing import MemoryReactorClock

from nextim_twisted.hub.redisclient import RedisClient, RedisUnavailable, RedisURLError, parse_redis_url

REDIS_URL = "redis://127.0.0.1:6379/0"


async def wait_until(predicate, timeout=10.0, step=0.05):
    """Poll ``predicate`` on the real reactor until it is true; fail after ``timeout`` s."""
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await task.deferLater(reactor, step, lambda: None)
    raise AssertionError("condition not reached in %.1f s" % timeout)


class Recorder:
    def __init__(self):
        self.messages = []
        self.states = []

    def message(self, channel, payload):
        self.messages.append((channel, payload))

    def state(self, up):
        self.states.append(up)


@pytest.fixture
def channel():
    return "nextim_test_" + secrets.token_hex(6)


async def started(url=REDIS_URL, **kw):
    rec = Recorder()
    client = RedisClient(reactor, url, rec.message, rec.state, **kw)
    client.start()
    return client, rec


def test_url_parsing():
    assert parse_redis_url("redis://u:p%40ss@redis.internal:6380/3") == {
        "host": "redis.internal", "port": 6380, "db": 3, "username": "u", "password": "p@ss"}
    assert parse_redis_url("redis://127.0.0.1")["port"] == 6379
    for bad in ("rediss://h", "http://h", "redis://h:x", "redis://h/zero"):
        with pytest.raises(RedisURLError):
            parse_redis_url(bad)


def test_connects_on_the_injected_reactor():
    """Gap 1: nothing is connected through the global reactor; back-off runs on the clock."""
    fake = MemoryReactorClock()
    client = RedisClient(fake, REDIS_URL, lambda c, p: None)
    client.start()
    assert len(fake.tcpClients) == 2  # the command and the subscriber connection
    assert fake.getDelayedCalls()  # the keepalive timer
    client.stop()


@pytest_twisted.ensureDeferred
async def test_publish_reaches_subscriber(channel):
    client, rec = await started()
    try:
        await client.when_up(timeout=5)
        await client.subscribe([channel])
        assert await client.publish(channel, b"hello") == 1
        await wait_until(lambda: rec.messages)
        assert rec.messages == [(channel, "hello")]
        assert rec.states == [True]
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_resubscribes_after_the_connection_is_killed(channel):
    """Gap 2: after Redis drops the subscriber connection, the channel still delivers,
    and the loss was reported (so the caller can refill what it missed)."""
    client, rec = await started()
    admin, _ = await started(keepalive=0)
    try:
        await client.when_up(timeout=5)
        await admin.when_up(timeout=5)
        await client.subscribe([channel])
        killed = await admin.execute("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        await wait_until(lambda: rec.states[-2:] == [False, True])
        await wait_until(lambda: client.up)
        # The channel is subscribed again once the client says it is up.
        assert await admin.publish(channel, b"after") >= 1
        await wait_until(lambda: rec.messages)
        assert rec.messages == [(channel, "after")]
    finally:
        await client.stop()
        await admin.stop()


@pytest_twisted.ensureDeferred
async def test_execute_while_down_fails_at_once():
    client = RedisClient(reactor, "redis://127.0.0.1:1/0", lambda c, p: None)
    client.start()
    try:
        with pytest.raises(RedisUnavailable):
            await client.execute("PING")
        with pytest.raises(RedisUnavailable):
            await client.when_up(timeout=0.5)
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_auth_refused_then_fixed_connects_without_restart(channel):
    """Gap 4: a refused AUTH does not stop the client for good."""
    admin, _ = await started(keepalive=0)
    user = channel  # unique ACL user; the default user is untouched
    try:
        await admin.when_up(timeout=5)
        await admin.execute("ACL", "SETUSER", user, "on", ">right-password", "~*", "&*", "+@all")
        client, _ = await started(url=f"redis://{user}:wrong-password@127.0.0.1:6379/0")
        try:
            await task.deferLater(reactor, 1.0, lambda: None)  # at least one refused attempt
            assert not client.up
            await admin.execute("ACL", "SETUSER", user, "resetpass", ">wrong-password")
            await wait_until(lambda: client.up, timeout=15)
            assert await client.execute("PING") == "PONG"
        finally:
            await client.stop()
    finally:
        await admin.execute("ACL", "DELUSER", user)
        await admin.stop()


class Silent(protocol.Protocol):
    """A peer that accepts connections and never answers."""


@pytest_twisted.ensureDeferred
async def test_keepalive_drops_a_silent_peer():
    """Gap 3: a server that stops answering is noticed by the PING and reconnected."""
    accepted = []
    factory = protocol.Factory.forProtocol(Silent)
    original = factory.buildProtocol
    factory.buildProtocol = lambda addr: accepted.append(addr) or original(addr)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client, rec = await started(url=f"redis://127.0.0.1:{port.getHost().port}/0",
                                keepalive=0.2, reply_timeout=0.3)
    try:
        # two connections at first, then at least one new one after a PING went unanswered
        await wait_until(lambda: len(accepted) >= 3, timeout=15)
        assert True in rec.states and rec.states[-1] in (True, False)
        assert False in rec.states
    finally:
        await client.stop()
        await port.stopListening()
