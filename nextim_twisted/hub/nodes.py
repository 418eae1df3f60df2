"""Which nodes of a cluster are alive: one heartbeat key per node in Redis.

Each node holds ``<prefix>:node:<node_id>``, whose value is a random instance id and
which expires ``node_timeout`` seconds after its last heartbeat (docs/design.md#d20-cluster).
The set of node ids ever seen is the hash ``<prefix>:nodes``. A node whose key has
expired is dead: the first live node to take its reap lock ends the dead node's sessions
(``on_dead``), then forgets it.

A node id is claimed with ``SET NX``: while another live instance keeps the key fresh,
the id is taken and a second node with it refuses to start. A node that restarts after a
crash finds its own stale key; it waits for that key to expire (at most ``node_timeout``)
instead of refusing, since the old instance is not heartbeating any more, and then reaps
what the old instance left behind before it serves.
"""
from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from .redisclient import RedisClient, RedisUnavailable

log = Logger()

# KEYS[1] = heartbeat key, ARGV[1] = our instance id, ARGV[2] = ttl in ms.
# 1: refreshed; 0: the key is gone (Redis lost it: claim again); -1: another instance has it.
_HEARTBEAT = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then return 0 end
return -1
"""


class NodeIdTaken(Exception):
    """Another live node has this node id; ``str(err)`` is one line for the operator."""


class NodeRegistry:
    """This node's heartbeat, and the detection of dead peers.

    :param redis: a started :class:`~.redisclient.RedisClient`.
    :param clock: ``IReactorTime`` for the heartbeat and watch loops.
    :param prefix: ``[cluster] redis_prefix``.
    :param node_id: ``[cluster] node_id``.
    :param timeout: ``[cluster] node_timeout`` in seconds (float).
    :param on_dead: ``await on_dead(node_id, instance)`` once per dead instance of a peer,
        on the one live node that took its reap lock (returning ``False`` means "not
        yet": the peer is kept and asked about again after the lock expires); also for this node's own predecessor
        at :meth:`claim`. Live state in Redis is tagged with the instance, so a reap never
        touches what a restarted node with the same id has made since.
    """

    def __init__(self, redis: RedisClient, clock, prefix: str, node_id: str, timeout: float,
                 on_dead: Callable[[str, str], Awaitable[bool | None]]):
        self.redis = redis
        self.clock = clock
        self.prefix = prefix
        self.node_id = node_id
        self.timeout = timeout
        self.on_dead = on_dead
        self.instance = secrets.token_hex(8)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self._reaping: set[str] = set()

    def key(self, node_id: str) -> str:
        """The heartbeat key of ``node_id``."""
        return f"{self.prefix}:node:{node_id}"

    @property
    def ttl_ms(self) -> int:
        return int(self.timeout * 1000)

    async def claim(self) -> None:
        """Take this node's id, waiting out a stale key of a crashed predecessor.

        :raises NodeIdTaken: another instance kept the key fresh for longer than the
            node timeout (a live node with the same id).
        :raises RedisUnavailable: Redis cannot be reached.
        """
        key = self.key(self.node_id)
        deadline = self.clock.seconds() + self.timeout + 1
        while True:
            if await self.redis.execute("SET", key, self.instance, "NX", "PX", self.ttl_ms):
                break
            holder = await self.redis.execute("GET", key)
            if self.clock.seconds() >= deadline:
                raise NodeIdTaken(
                    f"[cluster] node_id {self.node_id!r} is in use by another live node "
                    f"(instance {holder}); give each node its own id")
            await task.deferLater(self.clock, min(0.5, self.timeout / 4), lambda: None)
        # Whatever an earlier instance of this id left in Redis belongs to nobody now.
        previous = await self.redis.execute("HGET", f"{self.prefix}:nodes", self.node_id)
        await self.redis.execute("HSET", f"{self.prefix}:nodes", self.node_id, self.instance)
        if previous and previous != self.instance:
            await self.on_dead(self.node_id, previous)

    def start(self) -> None:
        """Heartbeat and watch every third of the node timeout."""
        self._loop.start(self.timeout / 3, now=False)

    async def stop(self, release: bool = True) -> None:
        """Stop the loops; with ``release``, delete the heartbeat key and forget this node
        (a clean stop: its sessions were ended by the caller, nothing is left to reap)."""
        if self._loop.running:
            self._loop.stop()
        if release:
            try:
                await self.redis.execute("EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                         "return redis.call('DEL', KEYS[1]) end return 0",
                                         1, self.key(self.node_id), self.instance)
                await self.redis.execute("HDEL", f"{self.prefix}:nodes", self.node_id)
            except RedisUnavailable:
                log.warn("Redis down at stop: node {node} will be reaped after its timeout",
                         node=self.node_id)

    async def live_nodes(self) -> set[str]:
        """Node ids whose heartbeat key exists now."""
        known = await self.redis.execute("HKEYS", f"{self.prefix}:nodes") or []
        alive = set()
        for node_id in known:
            if await self.redis.execute("EXISTS", self.key(node_id)):
                alive.add(node_id)
        return alive

    def _tick(self) -> defer.Deferred:
        return defer.ensureDeferred(self._beat_and_watch()).addErrback(self._tick_failed)

    def _tick_failed(self, failure):
        if failure.check(RedisUnavailable):
            return None  # Redis is down: the client reconnects; the next tick tries again
        log.failure("cluster heartbeat failed", failure)
        return None

    async def _beat_and_watch(self) -> None:
        key = self.key(self.node_id)
        state = await self.redis.execute("EVAL", _HEARTBEAT, 1, key, self.instance, self.ttl_ms)
        if state == 0:
            # Redis lost the key (restarted without persistence): take it again.
            await self.redis.execute("SET", key, self.instance, "NX", "PX", self.ttl_ms)
            await self.redis.execute("HSET", f"{self.prefix}:nodes", self.node_id, self.instance)
        elif state == -1:
            log.critical("node id {node} was taken by another instance while this one ran",
                         node=self.node_id)
        flat = await self.redis.execute("HGETALL", f"{self.prefix}:nodes") or []
        known = dict(zip(flat[::2], flat[1::2], strict=True))
        for node_id, instance in known.items():
            if node_id == self.node_id or node_id in self._reaping:
                continue
            if await self.redis.execute("EXISTS", self.key(node_id)):
                continue
            # Dead: one live node reaps it, the others skip it.
            lock = f"{self.prefix}:reap:{node_id}"
            if not await self.redis.execute("SET", lock, self.node_id, "NX", "PX", self.ttl_ms * 2):
                continue
            self._reaping.add(node_id)
            try:
                if await self.on_dead(node_id, instance) is False:
                    # Not now (this node just came back from a Redis outage, in which
                    # every heartbeat stopped): asked again once the lock expires.
                    continue
                log.warn("node {node} missed its heartbeat for {s} s: its sessions were ended",
                         node=node_id, s=self.timeout)
                # forget it unless a new instance of that id registered meanwhile
                await self.redis.execute("EVAL", "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
                                         "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0",
                                         1, f"{self.prefix}:nodes", node_id, instance)
            finally:
                self._reaping.discard(node_id)
