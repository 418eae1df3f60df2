"""Cluster-wide live state against the real Redis (nextim_twisted/hub/cluster_state.py):
three nodes' views of one prefix, with their pub/sub channels."""
import secrets

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from nextim_twisted.hub.cluster_state import ClusterState, decode
from nextim_twisted.hub.redisclient import RedisClient
from tests.test_redisclient import REDIS_URL, wait_until


class Node:
    def __init__(self, prefix, node_id):
        self.received = []
        self.redis = RedisClient(reactor, REDIS_URL, self.on_message, keepalive=0)
        self.state = ClusterState(self.redis, prefix, node_id, secrets.token_hex(4))

    def on_message(self, channel, data):
        self.received.append(decode(data))

    async def start(self):
        self.redis.start()
        await self.redis.when_up(timeout=5)
        await self.redis.subscribe([self.state.channel(self.state.node_id)])


@pytest.fixture
def nodes():
    prefix = "nextim_test_" + secrets.token_hex(6)
    made = [Node(prefix, n) for n in ("n1", "n2", "n3")]
    pytest_twisted.blockon(defer.gatherResults([defer.ensureDeferred(n.start()) for n in made]))
    yield made
    for n in made:
        pytest_twisted.blockon(n.redis.stop())


@pytest_twisted.ensureDeferred
async def test_online_and_offline_are_decided_once(nodes):
    n1, n2, _ = nodes
    assert await n1.state.user_up("alice", "available", "", "Alice") == (True, "available", "")
    # a reload onto n2 asking for "away": n2 learns the cluster's show, which is unchanged
    assert await n2.state.user_up("alice", "away", "", "Alice") == (False, "available", "")
    assert await n1.state.user_down("alice") is False  # n1's grace ends: still on n2
    assert await n1.state.presences(["alice", "bob"]) == {"alice": ("available", "", "Alice")}
    assert await n2.state.user_down("alice") is True
    assert await n1.state.presences(["alice"]) == {}


@pytest_twisted.ensureDeferred
async def test_publish_reaches_exactly_the_nodes_that_hold_recipients(nodes):
    n1, n2, n3 = nodes
    await n2.state.user_up("bob", "available", "", "Bob")
    await n3.state.user_up("carol", "available", "", "Carol")
    await n1.state.user_up("alice", "available", "", "Alice")
    # n1 itself is skipped (it routes its own sessions); carol's node is not involved
    assert await n1.state.publish({"k": "m", "i": 1}, users=["bob", "alice", "nobody"]) == 1
    for i in range(2, 6):
        await n1.state.publish({"k": "m", "i": i}, users=["bob"])
    await wait_until(lambda: len(n2.received) == 5)
    assert [p["i"] for p in n2.received] == [1, 2, 3, 4, 5]  # in the order n1 published
    assert n3.received == [] and n1.received == []


@pytest_twisted.ensureDeferred
async def test_rooms_span_nodes(nodes):
    n1, n2, n3 = nodes
    await n1.state.room_join("lobby", "alice")
    await n2.state.room_join("lobby", "bob")
    await n2.state.room_join("lobby", "dave")
    assert await n3.state.room_members("lobby") == {"alice", "bob", "dave"}
    assert await n3.state.publish({"k": "room"}, rooms=["lobby"]) == 2
    await wait_until(lambda: n1.received and n2.received)
    assert n1.received == n2.received == [{"k": "room"}]  # n2 once, though it holds two members
    await n2.state.room_leave("lobby", "bob")
    assert await n1.state.room_members("lobby") == {"alice", "dave"}


@pytest_twisted.ensureDeferred
async def test_reap_removes_only_the_dead_instance(nodes):
    n1, n2, _ = nodes
    await n2.state.user_up("bob", "available", "", "Bob")
    await n2.state.user_up("alice", "available", "", "Alice")
    await n1.state.user_up("alice", "available", "", "Alice")
    await n2.state.room_join("lobby", "bob")
    await n1.state.room_join("lobby", "alice")
    # a wrong instance tag removes nothing
    assert await n1.state.reap("n2", "not-the-instance") == []
    assert await n1.state.reap("n2", n2.state.instance) == [("bob", "available", "Bob")]  # alice: on n1
    assert set(await n1.state.presences(["alice", "bob"])) == {"alice"}
    assert await n1.state.room_members("lobby") == {"alice"}
    assert await n1.state.reap("n2", n2.state.instance) == []  # twice is harmless


@pytest_twisted.ensureDeferred
async def test_open_sessions_are_told_apart_from_the_grace(nodes):
    n1, n2, _ = nodes
    await n1.state.user_up("alice", "available", "", "Alice")
    await n2.state.user_up("alice", "available", "", "Alice")
    assert await n1.state.has_sessions(["alice", "bob"]) == {"alice"}
    await n1.state.set_sessions("alice", False)  # n1: only the grace now
    assert await n2.state.has_sessions(["alice"]) == {"alice"}
    await n2.state.set_sessions("alice", False)
    assert await n2.state.has_sessions(["alice"]) == set()  # kept for her next online
    assert set(await n2.state.presences(["alice"])) == {"alice"}  # still online (grace)
    await n1.state.set_sessions("alice", True)
    assert await n2.state.has_sessions(["alice"]) == {"alice"}
    await n1.state.user_down("alice")
    assert await n2.state.has_sessions(["alice"]) == set()
    # a node that does not hold the user cannot mark sessions for it
    await n1.state.set_sessions("alice", True)
    assert await n2.state.has_sessions(["alice"]) == set()


@pytest_twisted.ensureDeferred
async def test_publish_others_reaches_every_registered_node_but_this_one(nodes):
    n1, n2, n3 = nodes
    for n in nodes:
        await n.redis.execute("HSET", f"{n.state.prefix}:nodes", n.state.node_id, n.state.instance)
    assert await n2.state.publish_others({"t": "dir"}) == 2
    await wait_until(lambda: n1.received and n3.received)
    assert n1.received == n3.received == [{"t": "dir"}] and n2.received == []
