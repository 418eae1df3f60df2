"""Node heartbeats against the real Redis (nextim_twisted/hub/nodes.py), with a node
timeout of one second and a unique key prefix per test. Redis expires keys on its own
clock, so these tests wait for conditions on the real reactor; nothing asserts a time."""
import secrets

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from nextim_twisted.hub.nodes import NodeIdTaken, NodeRegistry
from nextim_twisted.hub.redisclient import RedisClient
from tests.test_redisclient import REDIS_URL, wait_until

TIMEOUT = 1.0


@pytest.fixture
def prefix():
    return "nextim_test_" + secrets.token_hex(6)


class Node:
    def __init__(self, prefix, node_id):
        self.redis = RedisClient(reactor, REDIS_URL, lambda c, p: None, keepalive=0)
        self.reaped = []
        self.registry = NodeRegistry(self.redis, reactor, prefix, node_id, TIMEOUT, self.reap)

    async def reap(self, node_id, instance):
        self.reaped.append((node_id, instance))

    async def start(self):
        self.redis.start()
        await self.redis.when_up(timeout=5)
        await self.registry.claim()
        self.registry.start()
        return self

    async def kill(self):
        """Stop without releasing: what kill -9 leaves behind."""
        await self.registry.stop(release=False)
        await self.redis.stop()

    async def stop(self):
        await self.registry.stop()
        await self.redis.stop()


@pytest_twisted.ensureDeferred
async def test_two_nodes_see_each_other(prefix):
    a = await Node(prefix, "a").start()
    b = await Node(prefix, "b").start()
    try:
        assert await a.registry.live_nodes() == {"a", "b"}
        await task.deferLater(reactor, TIMEOUT * 2, lambda: None)  # heartbeats keep them alive
        assert await b.registry.live_nodes() == {"a", "b"}
        assert a.reaped == [] and b.reaped == []
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_duplicate_node_id_is_refused(prefix):
    a = await Node(prefix, "n1").start()
    dup = Node(prefix, "n1")
    try:
        with pytest.raises(NodeIdTaken, match="node_id 'n1' is in use by another live node"):
            await dup.start()
    finally:
        await dup.redis.stop()
        await a.stop()


@pytest_twisted.ensureDeferred
async def test_dead_node_is_reaped_once(prefix):
    a = await Node(prefix, "a").start()
    b = await Node(prefix, "b").start()
    c = await Node(prefix, "c").start()
    dead_instance = c.registry.instance
    await c.kill()
    try:
        await wait_until(lambda: a.reaped or b.reaped, timeout=10)
        await task.deferLater(reactor, TIMEOUT * 2, lambda: None)  # a second reap would show by now
        assert a.reaped + b.reaped == [("c", dead_instance)]
        assert await a.registry.live_nodes() == {"a", "b"}
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_restart_after_crash_waits_out_its_old_key_and_reaps_it(prefix):
    old = await Node(prefix, "n1").start()
    old_instance = old.registry.instance
    await old.kill()
    new = await Node(prefix, "n1").start()  # waits for the stale key to expire
    try:
        assert new.reaped == [("n1", old_instance)]
        assert await new.registry.live_nodes() == {"n1"}
    finally:
        await new.stop()


@pytest_twisted.ensureDeferred
async def test_clean_stop_leaves_nothing_to_reap(prefix):
    a = await Node(prefix, "a").start()
    b = await Node(prefix, "b").start()
    await b.stop()
    try:
        assert await a.registry.live_nodes() == {"a"}
        await task.deferLater(reactor, TIMEOUT * 2, lambda: None)
        assert a.reaped == []
    finally:
        await a.stop()


@pytest_twisted.ensureDeferred
async def test_lost_key_is_claimed_again(prefix):
    """Redis restarted without persistence forgets every key: the heartbeat re-creates it."""
    a = await Node(prefix, "a").start()
    try:
        await a.redis.execute("DEL", a.registry.key("a"), f"{prefix}:nodes")
        await task.deferLater(reactor, TIMEOUT, lambda: None)
        assert await a.registry.live_nodes() == {"a"}
    finally:
        await a.stop()
