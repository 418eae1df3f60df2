"""One node of a cluster: the hub that reaches the other nodes' sessions through Redis,
the arbiter that lets Redis decide presence transitions, and the node's life in the
cluster (heartbeat, its channel, reaping dead peers, a Redis outage)
(docs/design.md#d20-cluster, docs/scaling.md).

Each node routes its own sessions directly (:class:`~.local.LocalHub`) and publishes
every packet once to each *other* node that holds a recipient, on that node's channel
``<prefix>:to:<node>`` (:class:`~.cluster_state.ClusterState`). The receiving node hands
the packet to its own LocalHub, which skips users it does not hold, so every session
gets it once, and in the order the sending node routed it (one connection publishes,
one connection receives).

What this module cannot do itself (it sits below the router and the handlers) is
registered by the layers above: ``node.handlers[kind]`` for payloads other than packets
and calls (directory changes, users reaped elsewhere, show changes),
``node.run_call`` for calls forwarded to this node, and ``node.on_resync`` for the end
of a Redis outage.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from .arbiter import Announce, Joined, LiveUser
from .base import IHub, Kind, LocalSessions, Packet
from .cluster_state import ClusterState, decode
from .forward import CallForwarder
from .local import LocalHub
from .nodes import NodeRegistry
from .redisclient import RedisClient, RedisUnavailable

log = Logger()

#: Seconds a start-up waits for Redis before the daemon gives up (and exits).
REDIS_START_TIMEOUT = 10.0


class ClusterHub(IHub):
    """:class:`~.base.IHub` of a cluster node: local sessions at once, the other nodes
    through one publish per packet (never awaited: routing returns at once).

    :param sessions: who is live on this node (the router).
    :param node: the :class:`ClusterNode` that publishes.
    """

    #: The router hands this hub users that are not live on this node too.
    reaches_other_nodes = True

    def __init__(self, sessions: LocalSessions, node: ClusterNode) -> None:
        self.local = LocalHub(sessions)
        self.node = node
        #: ``observe(kind, recipients, packet)`` after a packet another node published to
        #: users here (``t`` ``u`` or ``us``) was delivered: the live state learns from
        #: it who talked with whom (handlers/live.py).
        self.observe: Callable[[Kind, list[str], Packet], None] | None = None

    def to_user(self, user_id: str, kind: Kind, packet: Packet, except_ticket: str | None = None) -> bool:
        delivered = self.local.to_user(user_id, kind, packet, except_ticket)
        self.node.publish({"t": "u", "u": user_id, "k": kind, "p": packet, "x": except_ticket}, users=(user_id,))
        return delivered

    def to_users(self, user_ids: Iterable[str], kind: Kind, packet: Packet) -> int:
        ids = list(user_ids)
        count = self.local.to_users(ids, kind, packet)
        if ids:
            self.node.publish({"t": "us", "u": ids, "k": kind, "p": packet}, users=ids)
        return count

    def to_room(self, room_id: str, kind: Kind, packet: Packet, except_user: str | None = None,
                except_ticket: str | None = None) -> int:
        count = self.local.to_room(room_id, kind, packet, except_user, except_ticket)
        self.node.publish({"t": "r", "r": room_id, "k": kind, "p": packet, "xu": except_user,
                           "x": except_ticket}, rooms=(room_id,))
        return count

    def to_everyone(self, kind: Kind, packet: Packet) -> int:
        count = self.local.to_everyone(kind, packet)
        self.node.publish_others({"t": "all", "k": kind, "p": packet})
        return count

    def received(self, payload: dict[str, Any]) -> bool:
        """Deliver a packet another node published to this node's local sessions.
        :returns: False when ``payload`` is not a packet."""
        kind, t = payload.get("k"), payload.get("t")
        packet = payload.get("p")
        if t not in ("u", "us", "r", "all") or kind not in ("messages", "presences", "statuses") \
                or not isinstance(packet, dict):
            return False
        if t == "u":
            user_id = str(payload.get("u"))
            self.local.to_user(user_id, kind, packet, payload.get("x"))
            if self.observe is not None:
                self.observe(kind, [user_id], packet)
        elif t == "us" and isinstance(payload.get("u"), list):
            ids = [str(u) for u in payload["u"]]
            self.local.to_users(ids, kind, packet)
            if self.observe is not None:
                self.observe(kind, ids, packet)
        elif t == "r":
            self.local.to_room(str(payload.get("r")), kind, packet, payload.get("xu"), payload.get("x"))
        elif t == "all":
            self.local.to_everyone(kind, packet)
        return True


class ClusterArbiter:
    """:class:`~.arbiter.IPresenceArbiter` of a cluster node: Redis decides whether this
    node is the first to hold a user (announce ``online``) or the last to let go
    (announce ``offline``), in one Lua script each, so the change goes out once
    cluster-wide whichever node sees it (docs/design.md#d8-presence).

    While Redis is down nothing can be decided: the change is announced to this node's
    own sessions (better a repeated ``online`` than a missing one), and the sessions
    that lived through the outage end when it returns (:meth:`ClusterNode.resync`).

    :ivar held: the users live on this node, by id (a clean stop and a resync read it).
    """

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.held: dict[str, LiveUser] = {}

    def came_online(self, user: LiveUser, announce: Announce, joined: Joined) -> None:
        self.held[user.id] = user
        d = defer.ensureDeferred(self.node.state.user_up(user.id, user.show, user.status, user.nick))
        d.addCallbacks(_first_or_joined, self._unsure, callbackArgs=(announce, joined), errbackArgs=(announce,))

    def went_offline(self, user: LiveUser, announce: Announce) -> None:
        if self.held.get(user.id) is user:
            del self.held[user.id]
        d = defer.ensureDeferred(self.node.state.user_down(user.id))
        d.addCallbacks(lambda last: announce() if last else None, self._unsure, errbackArgs=(announce,))

    def sessions_changed(self, user: LiveUser, has_sessions: bool) -> None:
        d = defer.ensureDeferred(self.node.state.set_sessions(user.id, has_sessions))
        d.addErrback(self.node.redis_failed, "recording sessions")

    def show_changed(self, user: LiveUser) -> None:
        d = defer.ensureDeferred(self.node.state.set_show(user.id, user.show, user.status))
        d.addErrback(self.node.redis_failed, "recording a show")
        # The user's other nodes keep their copy in step (no announcement there).
        self.node.publish({"t": "show", "u": user.id, "show": user.show, "status": user.status},
                          users=(user.id,))

    def _unsure(self, failure, announce: Announce) -> None:
        self.node.redis_failed(failure, "deciding a presence change")
        announce()

    async def reregister(self) -> list[list[str]]:
        """Write every user held here into Redis again (after an outage Redis may have
        restarted empty), announcing nothing: the other nodes saw them before. Users
        Redis still lists for this node that left during the outage are removed.

        :returns: ``[user_id, nick]`` of those removed that no node holds now (their
            ``offline`` could not reach the other nodes during the outage)."""
        state = self.node.state
        listed = await state.redis.execute("SMEMBERS", f"{state.prefix}:nu:{state.node_id}") or []
        gone = []
        for user_id in sorted(set(listed) - set(self.held)):
            row = (await state.presences([user_id])).get(user_id)
            if await state.user_down(user_id) and row is not None and row[0] != "invisible":
                gone.append([user_id, row[2]])
        for user in list(self.held.values()):
            await self.node.state.user_up(user.id, user.show, user.status, user.nick)
            if not getattr(user, "sessions", None):
                await self.node.state.set_sessions(user.id, False)
            for room_id in sorted(getattr(user, "rooms", ())):
                await self.node.state.room_join(room_id, user.id)
        return gone


def _first_or_joined(up: tuple[bool, str, str], announce: Announce, joined: Joined) -> None:
    first, show, status = up
    if first:
        announce()
    else:
        joined(show, status)


#: ``handler(payload)`` for one payload kind published to this node (``payload["t"]``).
PayloadHandler = Callable[[dict], None]
#: ``await run(call, params) -> answer`` for a call forwarded to this node (:mod:`.forward`).
RunCall = Callable[[str, dict], Awaitable[dict]]


class ClusterNode:
    """This node's place in the cluster: its Redis connections, heartbeat
    (:class:`~.nodes.NodeRegistry`), live state (:class:`~.cluster_state.ClusterState`),
    channel, forwarded calls (:class:`~.forward.CallForwarder`), hub and arbiter.

    :param cluster: the ``[cluster]`` section (``node_id``, ``redis_url``,
        ``redis_prefix``, ``node_timeout`` in seconds).
    :param user_grace: ``[timers] user_grace`` in seconds: a clean stop keeps this
        node's users online that long, so a reload onto another node does not flap.
    :param reactor: the injected reactor (network and time).

    Build the router with :meth:`hub_factory` and :attr:`arbiter`; then :meth:`start`.
    """

    def __init__(self, cluster, user_grace: float, reactor) -> None:
        self.node_id: str = cluster.node_id
        self.user_grace = user_grace
        self.reactor = reactor
        self.redis = RedisClient(reactor, cluster.redis_url, self._on_message, self._on_state)
        self.registry = NodeRegistry(self.redis, reactor, cluster.redis_prefix, cluster.node_id,
                                     float(cluster.node_timeout), self._peer_dead)
        self.state = ClusterState(self.redis, cluster.redis_prefix, cluster.node_id, self.registry.instance)
        self.forwarder = CallForwarder(self.state, reactor, self._run_call)
        self.arbiter = ClusterArbiter(self)
        self.hub: ClusterHub | None = None
        self.handlers: dict[str, PayloadHandler] = {}
        self.run_call: RunCall | None = None
        self.on_resync: Callable[[], Awaitable[None]] | None = None
        self.started = False
        self.stopping = False
        self._gap = False
        self._warned = False
        # Until then, peers whose heartbeat key is missing are not reaped: after an
        # outage every node needs one heartbeat period to write its key again.
        self._reap_quiet_until = 0.0
        self.timeout = float(cluster.node_timeout)

    # -- wiring ----------------------------------------------------------------------
    def hub_factory(self, sessions: LocalSessions) -> ClusterHub:
        """The router's hub factory (``Router(hub=node.hub_factory)``)."""
        self.hub = ClusterHub(sessions, self)
        return self.hub

    @property
    def routing(self) -> bool:
        """True while packets can reach the other nodes (Redis connected); ``/health``
        answers 503 otherwise."""
        return self.redis.up

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, claim the node id, subscribe this node's channel, start the heartbeat.

        :raises RedisUnavailable: Redis not reachable within :data:`REDIS_START_TIMEOUT`.
        :raises ~.nodes.NodeIdTaken: another live node has this id.
        """
        self.redis.start()
        try:
            await self.redis.when_up(timeout=REDIS_START_TIMEOUT)
        except RedisUnavailable:
            await self.redis.stop()
            raise RedisUnavailable(f"[cluster] redis_url: Redis not reachable within "
                                   f"{REDIS_START_TIMEOUT:g} s") from None
        try:
            await self.registry.claim()
            await self.redis.subscribe([self.state.channel(self.node_id)])
        except BaseException:
            await self.redis.stop()
            raise
        self.registry.start()
        self.started = True
        log.info("cluster node {node} up (instance {instance})", node=self.node_id,
                 instance=self.registry.instance)

    async def stop(self) -> None:
        """A clean stop (SIGTERM), after the router answered the parked polls and ended
        every session here: this node's users stay online for the user grace (a reload
        onto another node does not flap), then whatever this node held is removed and
        each user no other node holds goes ``offline`` once (docs/design.md#d16-shutdown)."""
        if not self.started:
            return
        self.stopping = True
        if self.arbiter.held and self.redis.up and self.user_grace > 0:
            await task.deferLater(self.reactor, self.user_grace, lambda: None)
        try:
            await self.reap(self.node_id, self.registry.instance)
        except RedisUnavailable:
            log.warn("Redis down at stop: node {node} will be reaped after its timeout", node=self.node_id)
        await self.registry.stop(release=True)
        await self.redis.stop()
        self.started = False

    # -- publishing ------------------------------------------------------------------
    def publish(self, payload: dict, users: Iterable[str] = (), rooms: Iterable[str] = ()) -> None:
        """Publish ``payload`` to the other nodes holding ``users`` or live members of
        ``rooms``; returns at once (a failure is logged and counts as a gap)."""
        d = defer.ensureDeferred(self.state.publish(payload, users=users, rooms=rooms))
        d.addErrback(self.redis_failed, "publishing")

    def publish_others(self, payload: dict) -> None:
        """Publish ``payload`` to every other node; returns at once."""
        d = defer.ensureDeferred(self.state.publish_others(payload))
        d.addErrback(self.redis_failed, "publishing")

    def redis_failed(self, failure, doing: str) -> None:
        """Errback for fire-and-forget Redis commands: logged once per outage."""
        if failure.check(RedisUnavailable):
            self._gap = True
            if not self._warned:
                self._warned = True
                log.warn("Redis unavailable while {doing}: other nodes miss packets until it "
                         "returns; sessions here are ended then", doing=doing)
            return None
        log.failure("cluster: {doing} failed", failure, doing=doing)
        return None

    # -- receiving -------------------------------------------------------------------
    def _on_message(self, channel: str, data: bytes) -> None:
        payload = decode(data)
        if payload is None:
            log.warn("dropped a payload that is not JSON on {channel}", channel=channel)
            return
        try:
            if self.hub is not None and self.hub.received(payload):
                return
            if self.forwarder.received(payload):
                return
            handler = self.handlers.get(str(payload.get("t")))
            if handler is None:
                log.warn("dropped a payload of unknown kind {t!r}", t=payload.get("t"))
                return
            handler(payload)
        except Exception:
            log.failure("cluster payload {t!r} failed", t=payload.get("t"))

    async def _run_call(self, call: str, params: dict) -> dict:
        if self.run_call is None or self.stopping:
            return {"status": 503, "body": {"success": False, "error": "unavailable",
                                            "error_msg": "the owning node is stopping"}}
        return await self.run_call(call, params)

    # -- outages and deaths ------------------------------------------------------------
    def _on_state(self, up: bool) -> None:
        if not up:
            if self.started:
                self._gap = True
                log.warn("Redis connection lost: routing to other nodes stops until it returns")
            return
        if self.started and self._gap and not self.stopping:
            self._reap_quiet_until = self.reactor.seconds() + self.timeout
            self._gap = False
            self._warned = False
            defer.ensureDeferred(self.resync()).addErrback(self.redis_failed, "resyncing after an outage")

    async def resync(self) -> None:
        """Redis is back after an outage: packets published meanwhile are lost
        (pub/sub is at-most-once). Every user held here is written into Redis again
        (it may have restarted empty), then the layer above ends every local session
        that lived through the gap (``on_resync``), so each of those clients goes
        online again and reloads what it missed from PostgreSQL
        (docs/design.md#d20-cluster)."""
        log.info("Redis is back: re-registering {n} users and ending the sessions that "
                 "lived through the outage", n=len(self.arbiter.held))
        gone = await self.arbiter.reregister()
        if gone:
            await self.state.publish_others({"t": "gone", "users": gone})
        if self.on_resync is not None:
            await self.on_resync()

    async def _peer_dead(self, node_id: str, instance: str) -> bool:
        if node_id != self.node_id and self.reactor.seconds() < self._reap_quiet_until:
            return False  # every heartbeat stopped during the outage: wait for them
        await self.reap(node_id, instance)
        return True

    async def reap(self, node_id: str, instance: str) -> None:
        """Remove what ``instance`` of ``node_id`` held (it died, or this node stops);
        each user no node holds any more goes ``offline`` once for their buddies on
        every node (payload ``gone``, handled by ``handlers["gone"]``)."""
        gone = await self.state.reap(node_id, instance)
        visible = [[user_id, nick] for user_id, show, nick in gone if show != "invisible"]
        log.info("reaped node {node}: {n} users went offline", node=node_id, n=len(gone))
        if not visible:
            return
        payload = {"t": "gone", "users": visible}
        await self.state.publish_others(payload)
        handler = self.handlers.get("gone")
        if handler is not None:
            handler(payload)


class ClusterService(service.Service):
    """Runs a :class:`ClusterNode` as a child of the daemon's service: started after
    storage and before the listener, stopped after the listener (docs/design.md#d16-shutdown)."""

    def __init__(self, node: ClusterNode) -> None:
        self.setName("cluster")
        self.node = node

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self.node.start())

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self.node.stop())
