"""Calls forwarded to a ticket's owner node and answered back, over the real Redis."""
import secrets

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from nextim_twisted.hub.cluster_state import ClusterState, decode
from nextim_twisted.hub.forward import CallForwarder, OwnerUnreachable
from nextim_twisted.hub.redisclient import RedisClient
from tests.test_redisclient import REDIS_URL


class Node:
    def __init__(self, prefix, node_id, run):
        self.redis = RedisClient(reactor, REDIS_URL, self.on_message, keepalive=0)
        self.state = ClusterState(self.redis, prefix, node_id, "i")
        self.forwarder = CallForwarder(self.state, reactor, run, timeout=1.0)

    def on_message(self, channel, data):
        assert self.forwarder.received(decode(data))

    async def start(self):
        self.redis.start()
        await self.redis.when_up(timeout=5)
        await self.redis.subscribe([self.state.channel(self.state.node_id)])


@pytest.fixture
def pair():
    prefix = "nextim_test_" + secrets.token_hex(6)
    calls = []

    async def run(call, params):
        calls.append((call, params))
        if call == "hang":
            await defer.Deferred()
        if call == "fail":
            raise RuntimeError("boom")
        return {"status": 200, "body": {"echo": params}}

    a, b = Node(prefix, "a", run), Node(prefix, "b", run)
    pytest_twisted.blockon(defer.gatherResults([defer.ensureDeferred(n.start()) for n in (a, b)]))
    yield a, b, calls
    for n in (a, b):
        pytest_twisted.blockon(n.redis.stop())


@pytest_twisted.ensureDeferred
async def test_call_runs_on_the_owner_and_answers_back(pair):
    a, b, calls = pair
    answer = await a.forwarder.forward("b", "message", {"ticket": "b.x", "body": "hi"})
    assert answer == {"status": 200, "body": {"echo": {"ticket": "b.x", "body": "hi"}}}
    assert calls == [("message", {"ticket": "b.x", "body": "hi"})]


@pytest_twisted.ensureDeferred
async def test_owner_error_is_an_envelope_not_a_hang(pair):
    a, _, _ = pair
    answer = await a.forwarder.forward("b", "fail", {})
    assert answer["status"] == 500 and answer["body"]["error"] == "internal_error"


@pytest_twisted.ensureDeferred
async def test_unknown_node_and_silent_owner(pair):
    a, _, _ = pair
    with pytest.raises(OwnerUnreachable, match="not connected"):
        await a.forwarder.forward("zz", "message", {})
    with pytest.raises(OwnerUnreachable, match="did not answer"):
        await a.forwarder.forward("b", "hang", {})
    assert a.forwarder._pending == {}
