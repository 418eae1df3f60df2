"""Cluster-wide live state in Redis: which node holds which user and room member, each
user's show, and publishing a packet to exactly the nodes that need it.

Every node keeps its own sessions in its :class:`~nextim_twisted.core.router.Router`;
this module records, for the whole cluster, what the other nodes need to route and to
answer presence questions (docs/design.md#d20-cluster). Keys (``p`` is
``[cluster] redis_prefix``):

``p:u:<user>``      hash: ``show``, ``status``, ``nick``, ``n:<node>`` = instance for
                    every node that holds the user (sessions, or the user grace), and
                    ``s:<node>`` for every node where the user has an open session now
                    (a message to a user with no ``s:`` field is kept for their next
                    ``online``, docs/design.md#d7-messages)
``p:nu:<node>``     set: users held by ``node`` (what a reap walks)
``p:r:<room>``      hash: ``<node>|<user>`` = instance for every live member
``p:nr:<node>``     set: rooms ``node`` has live members in
``p:to:<node>``     the pub/sub channel of ``node``

Channels are per node, not per user or room: a node subscribes once, whatever its
sessions do, so an ``online`` costs no SUBSCRIBE and a reconnect resubscribes one
channel, not ten thousand. The price is that a sender must know the recipients' nodes;
the ``publish`` script reads them from the hashes above and publishes once per node, in
one round trip. Transitions (first node up, last node down) are decided inside Lua
scripts, so two nodes can never both announce a user's ``online`` or ``offline``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # txredisapi is the cluster extra: a single daemon must import this without it
    from .redisclient import RedisClient

# user_up: KEYS[1]=p:u:<user> KEYS[2]=p:nu:<node>; ARGV: node, instance, user, show, status, nick.
# Returns {first, show, status}: first is 1 when no node held the user before (the user
# came online cluster-wide, and their show is this node's), else 0 with the show and
# status the other nodes hold, which this node adopts or changes.
_USER_UP = """
local first = 1
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'n:' then first = 0 break end
end
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], ARGV[2], 's:' .. ARGV[1], '1')
if first == 1 then
  redis.call('HSET', KEYS[1], 'show', ARGV[4], 'status', ARGV[5], 'nick', ARGV[6])
end
redis.call('SADD', KEYS[2], ARGV[3])
return {first, redis.call('HGET', KEYS[1], 'show') or ARGV[4], redis.call('HGET', KEYS[1], 'status') or ''}
"""

# user_down: same KEYS; ARGV: node, instance, user. Returns 1 when this was the last node
# (the user went offline cluster-wide; the hash is deleted), 0 otherwise, -1 when the
# field was not ours (another instance of this node id, or already reaped).
_USER_DOWN = """
local mine = redis.call('HGET', KEYS[1], 'n:' .. ARGV[1])
redis.call('SREM', KEYS[2], ARGV[3])
if mine ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1], 's:' .. ARGV[1])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'n:' then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""

# sessions: KEYS[1]=p:u:<user>; ARGV: node, instance, 1 (has sessions here) or 0 (only
# the grace). Only while this instance holds the user.
_SESSIONS = """
if redis.call('HGET', KEYS[1], 'n:' .. ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 's:' .. ARGV[1], '1')
else redis.call('HDEL', KEYS[1], 's:' .. ARGV[1]) end
return 1
"""

# has_sessions: KEYS = user hashes. Returns 1/0 per key: an ``s:`` field exists.
_HAS_SESSIONS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = 0
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, 2) == 's:' then out[i] = 1 break end
  end
end
return out
"""

# publish_others: ARGV[1]=prefix, ARGV[2]=own node, ARGV[3]=payload. Every registered
# node but this one. Returns how many were published to.
_PUBLISH_OTHERS = """
local n = 0
for _, node in ipairs(redis.call('HKEYS', ARGV[1] .. ':nodes')) do
  if node ~= ARGV[2] then
    redis.call('PUBLISH', ARGV[1] .. ':to:' .. node, ARGV[3])
    n = n + 1
  end
end
return n
"""

# publish: KEYS = user hashes and room hashes; ARGV[1]=prefix, ARGV[2]=own node (skipped:
# the sender routes its own sessions directly), ARGV[3]=payload, ARGV[4]=number of user
# keys (the rest are rooms). Returns the number of other nodes published to.
_PUBLISH = """
local nodes, order = {}, {}
local users = tonumber(ARGV[4])
for i, key in ipairs(KEYS) do
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local node
    if i <= users then
      if string.sub(f, 1, 2) == 'n:' then node = string.sub(f, 3) end
    else
      node = string.match(f, '^([^|]+)|')
    end
    if node and node ~= ARGV[2] and not nodes[node] then
      nodes[node] = true
      order[#order + 1] = node
    end
  end
end
for _, node in ipairs(order) do
  redis.call('PUBLISH', ARGV[1] .. ':to:' .. node, ARGV[3])
end
return #order
"""

# reap: ARGV: prefix, node, instance. Removes everything the instance of node held.
# Returns user, show, nick, ... of the users that no node holds any more (they went
# offline cluster-wide).
_REAP = """
local p, node, inst = ARGV[1], ARGV[2], ARGV[3]
local gone = {}
local users = p .. ':nu:' .. node
for _, user in ipairs(redis.call('SMEMBERS', users)) do
  local key = p .. ':u:' .. user
  local holder = redis.call('HGET', key, 'n:' .. node)
  if holder == inst then
    local show, nick = redis.call('HGET', key, 'show'), redis.call('HGET', key, 'nick')
    redis.call('HDEL', key, 'n:' .. node, 's:' .. node)
    local left = 0
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if string.sub(f, 1, 2) == 'n:' then left = 1 break end
    end
    if left == 0 then
      redis.call('DEL', key)
      gone[#gone + 1] = user
      gone[#gone + 1] = show or 'available'
      gone[#gone + 1] = nick or user
    end
  end
  if holder == inst or not holder then redis.call('SREM', users, user) end
end
local rooms = p .. ':nr:' .. node
for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
  local key = p .. ':r:' .. room
  local kept = 0
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, #node + 1) == node .. '|' then
      if redis.call('HGET', key, f) == inst then redis.call('HDEL', key, f) else kept = 1 end
    end
  end
  if kept == 0 then redis.call('SREM', rooms, room) end
end
return gone
"""


class ClusterState:
    """This node's view of and writes to the cluster-wide live state.

    :param redis: a started :class:`~.redisclient.RedisClient`.
    :param prefix: ``[cluster] redis_prefix``.
    :param node_id: this node's id; ``instance`` tags what this process wrote, so a reap
        of a crashed predecessor never removes what a restarted node wrote since.
    All methods return coroutines and raise
    :class:`~.redisclient.RedisUnavailable` while Redis is down.
    """

    def __init__(self, redis: RedisClient, prefix: str, node_id: str, instance: str):
        self.redis = redis
        self.prefix = prefix
        self.node_id = node_id
        self.instance = instance

    # -- keys -----------------------------------------------------------------------
    def channel(self, node_id: str) -> str:
        """The pub/sub channel of ``node_id``."""
        return f"{self.prefix}:to:{node_id}"

    def _user(self, user_id: str) -> str:
        return f"{self.prefix}:u:{user_id}"

    def _room(self, room_id: str) -> str:
        return f"{self.prefix}:r:{room_id}"

    # -- users ----------------------------------------------------------------------
    async def user_up(self, user_id: str, show: str, status: str, nick: str) -> tuple[bool, str, str]:
        """This node now holds ``user_id``, whose show here is ``show``.

        :returns: ``(first, show, status)``: ``first`` is True when no node held them
            before (the caller announces ``online``, once cluster-wide, and the cluster
            records ``show``); otherwise ``show`` and ``status`` are what the other nodes
            hold, which the caller adopts or changes (docs/design.md#d8-presence)."""
        first, held_show, held_status = await self.redis.execute(
            "EVAL", _USER_UP, 2, self._user(user_id), f"{self.prefix}:nu:{self.node_id}",
            self.node_id, self.instance, user_id, show, status, nick)
        return first == 1, held_show, held_status

    async def user_down(self, user_id: str) -> bool:
        """This node no longer holds ``user_id`` (their grace ended here). :returns: True
        when no node holds them now: the caller announces ``offline``."""
        last = await self.redis.execute(
            "EVAL", _USER_DOWN, 2, self._user(user_id), f"{self.prefix}:nu:{self.node_id}",
            self.node_id, self.instance, user_id)
        return last == 1

    async def set_sessions(self, user_id: str, has_sessions: bool) -> None:
        """Whether this node holds an open session of ``user_id`` now (False: only the
        user grace). Ignored unless this instance holds the user."""
        await self.redis.execute("EVAL", _SESSIONS, 1, self._user(user_id), self.node_id,
                                 self.instance, "1" if has_sessions else "0")

    async def has_sessions(self, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` with an open session on some node: a message to them is
        delivered live (docs/design.md#d7-messages)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return set()
        flags = await self.redis.execute("EVAL", _HAS_SESSIONS, len(ids), *(self._user(u) for u in ids))
        return {u for u, flag in zip(ids, flags, strict=True) if flag}

    async def set_show(self, user_id: str, show: str, status: str) -> None:
        """Record a show/status change (the caller announces it)."""
        await self.redis.execute("HSET", self._user(user_id), "show", show, "status", status)

    async def presences(self, user_ids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
        """``{user_id: (show, status, nick)}`` of those of ``user_ids`` that some node holds.
        Invisible users are included with show ``invisible``: hiding them is the caller's
        rule (docs/design.md#d8-presence)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        script = ("local out = {} for i, k in ipairs(KEYS) do "
                  "out[i] = redis.call('HMGET', k, 'show', 'status', 'nick') end return out")
        rows = await self.redis.execute("EVAL", script, len(ids), *(self._user(u) for u in ids))
        return {u: (row[0], row[1] or "", row[2] or u) for u, row in zip(ids, rows, strict=True)
                if row and row[0] is not None}

    async def nodes_of(self, user_id: str) -> set[str]:
        """Node ids that hold ``user_id`` now."""
        fields = await self.redis.execute("HKEYS", self._user(user_id)) or []
        return {f[2:] for f in fields if f.startswith("n:")}

    # -- rooms ----------------------------------------------------------------------
    async def room_join(self, room_id: str, user_id: str) -> None:
        """``user_id`` is live-joined to ``room_id`` on this node."""
        await self.redis.execute("HSET", self._room(room_id), f"{self.node_id}|{user_id}", self.instance)
        await self.redis.execute("SADD", f"{self.prefix}:nr:{self.node_id}", room_id)

    async def room_leave(self, room_id: str, user_id: str) -> None:
        """``user_id`` left ``room_id`` on this node."""
        await self.redis.execute("HDEL", self._room(room_id), f"{self.node_id}|{user_id}")

    async def room_members(self, room_id: str) -> set[str]:
        """Ids of the room's live members on every node."""
        fields = await self.redis.execute("HKEYS", self._room(room_id)) or []
        return {f.split("|", 1)[1] for f in fields if "|" in f}

    # -- publishing -----------------------------------------------------------------
    async def publish(self, payload: dict[str, Any], users: Iterable[str] = (), rooms: Iterable[str] = ()) -> int:
        """Publish ``payload`` (JSON) once to every *other* node that holds one of ``users``
        or a live member of one of ``rooms``, in one round trip. Messages from one node
        arrive at each other node in the order they were published.

        :returns: how many nodes it was published to.
        """
        user_keys = [self._user(u) for u in dict.fromkeys(users)]
        room_keys = [self._room(r) for r in dict.fromkeys(rooms)]
        if not user_keys and not room_keys:
            return 0
        return await self.redis.execute(
            "EVAL", _PUBLISH, len(user_keys) + len(room_keys), *user_keys, *room_keys,
            self.prefix, self.node_id, _encode(payload), len(user_keys))

    async def publish_node(self, node_id: str, payload: dict[str, Any]) -> int:
        """Publish ``payload`` to one node's channel. :returns: 1 if it was listening."""
        return await self.redis.publish(self.channel(node_id), _encode(payload))

    async def publish_others(self, payload: dict[str, Any]) -> int:
        """Publish ``payload`` to every registered node but this one, in one round trip
        (broadcasts, directory changes). :returns: how many nodes."""
        return await self.redis.execute("EVAL", _PUBLISH_OTHERS, 0, self.prefix, self.node_id,
                                        _encode(payload))

    async def publish_all(self, payload: dict[str, Any], live_nodes: Iterable[str]) -> None:
        """Publish ``payload`` to every node in ``live_nodes`` but this one."""
        data = _encode(payload)
        for node_id in live_nodes:
            if node_id != self.node_id:
                await self.redis.publish(self.channel(node_id), data)

    # -- node death -----------------------------------------------------------------
    async def reap(self, node_id: str, instance: str) -> list[tuple[str, str, str]]:
        """Remove everything ``instance`` of ``node_id`` held. :returns: ``(user, show,
        nick)`` of the users no node holds any more, sorted by user, for whom the caller
        announces ``offline`` once (unless ``show`` is ``invisible``)."""
        flat = await self.redis.execute("EVAL", _REAP, 0, self.prefix, node_id, instance) or []
        return sorted(zip(flat[::3], flat[1::3], flat[2::3], strict=True))


def _encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def decode(data: bytes | str) -> dict[str, Any] | None:
    """A payload published by :meth:`ClusterState.publish`, or None when it is not one
    (a peer of another version, or garbage on the channel: logged by the caller)."""
    try:
        value = json.loads(data)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
