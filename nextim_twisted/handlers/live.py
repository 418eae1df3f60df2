"""What the handlers ask about live state that may span several nodes
(docs/design.md#d20-cluster).

:class:`LiveView` answers from this process's router: the whole truth for a single
daemon. :class:`ClusterLiveView` answers from Redis, where every node records its
users, their shows and their live rooms, so a buddy's presence at ``online``, room
counts and members, and whether a message's recipient is live are the cluster's answer.
While Redis is down it answers from this node alone (a recipient live only elsewhere
then looks offline: their message is kept for their next ``online``, never lost).

Directory changes reach every node without Redis: each reads the shared
``directory_changes`` table (handlers/directory_changes.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from ..core.router import Router
    from ..hub.cluster import ClusterNode
    from ..hub.cluster_state import ClusterState

log = Logger()

#: ``(presence, show, status)`` as a viewer may see a user (docs/design.md#d8-presence).
Presence = tuple[str, str, str]
OFFLINE: Presence = ("offline", "unavailable", "")


class LiveView:
    """Live state of this process (the router). Methods are coroutines so that a
    cluster's answers, which need Redis, fit the same calls.

    :param router: the :class:`~nextim_twisted.core.router.Router`.
    """

    def __init__(self, router: Router) -> None:
        self.router = router

    async def has_sessions(self, user_id: str) -> bool:
        """True if the user has an open session now: a message to them is delivered
        live, not kept for ``online`` (docs/design.md#d7-messages)."""
        return self.router.has_sessions(user_id)

    async def presences(self, user_ids: Iterable[str], viewer_id: str) -> dict[str, Presence]:
        """``{id: (presence, show, status)}`` as ``viewer_id`` may see each of ``user_ids``
        (invisible users look offline to everyone but themselves)."""
        return {i: self.router.presence_of(i, viewer_id) for i in user_ids}

    async def room_members(self, room_id: str, viewer_id: str) -> list[dict[str, str]]:
        """Live members ``viewer_id`` may see, sorted by id: ``{"id", "nick", "presence", "show"}``."""
        return self.router.room_members(room_id, viewer_id)

    async def room_counts(self, room_ids: Iterable[str], viewer_id: str) -> dict[str, int]:
        """``{room_id: number of live members viewer_id can see}``."""
        return {r: self.router.room_count(r, viewer_id) for r in room_ids}


class ClusterLiveView(LiveView):
    """:class:`LiveView` of a cluster node: Redis first, this node alone while Redis
    is down.

    :param state: this node's :class:`~nextim_twisted.hub.cluster_state.ClusterState`.
    """

    def __init__(self, router: Router, state: ClusterState) -> None:
        # (imported here: txredisapi is the optional "cluster" extra)
        from ..hub.redisclient import RedisUnavailable
        super().__init__(router)
        self.state = state
        self.unavailable = RedisUnavailable

    async def has_sessions(self, user_id: str) -> bool:
        if self.router.has_sessions(user_id):
            return True  # no round trip when the recipient is here
        try:
            return user_id in await self.state.has_sessions([user_id])
        except self.unavailable:
            return False

    async def presences(self, user_ids: Iterable[str], viewer_id: str) -> dict[str, Presence]:
        ids = list(user_ids)
        try:
            rows = await self.state.presences(ids)
        except self.unavailable:
            return await super().presences(ids, viewer_id)
        out = {}
        for user_id in ids:
            row = rows.get(user_id)
            if row is None or (row[0] == "invisible" and user_id != viewer_id):
                out[user_id] = OFFLINE
            else:
                out[user_id] = ("online", row[0], row[1])
        return out

    async def room_members(self, room_id: str, viewer_id: str) -> list[dict[str, str]]:
        try:
            ids = sorted(await self.state.room_members(room_id))
            rows = await self.state.presences(ids)
        except self.unavailable:
            return await super().room_members(room_id, viewer_id)
        result = []
        for user_id in ids:
            row = rows.get(user_id)
            if row is None or (row[0] == "invisible" and user_id != viewer_id):
                continue
            result.append({"id": user_id, "nick": row[2], "presence": "online", "show": row[0]})
        return result

    async def room_counts(self, room_ids: Iterable[str], viewer_id: str) -> dict[str, int]:
        return {r: len(await self.room_members(r, viewer_id)) for r in room_ids}


# -- a cluster node's glue ------------------------------------------------------------------

class RoomMirror:
    """Router observer that records this node's live room members in Redis
    (:class:`~nextim_twisted.core.observers.ILiveStateObserver`)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def user_presence(self, user, type_) -> None:
        pass

    def room_joined(self, user, room_id: str) -> None:
        self._run(self.node.state.room_join(room_id, user.id))

    def room_left(self, user, room_id: str) -> None:
        self._run(self.node.state.room_leave(room_id, user.id))

    def _run(self, coro) -> None:
        from twisted.internet import defer
        defer.ensureDeferred(coro).addErrback(self.node.redis_failed, "recording a room member")


def attach_cluster(router: Router, node: ClusterNode) -> None:
    """Wire a cluster node to this node's router: room members mirrored into Redis;
    show changes and users reaped elsewhere applied here; the end of a Redis outage
    ends the sessions that lived through it. (Directory changes reach every node through
    the ``directory_changes`` table, handlers/directory_changes.py.)"""
    router.add_observer(RoomMirror(node))

    def show(payload: dict) -> None:
        # The user changed show on another node: keep this node's copy in step.
        user = router.user(str(payload.get("u")))
        if user is not None and isinstance(payload.get("show"), str):
            user.show = payload["show"]
            user.status = str(payload.get("status") or "")

    def gone(payload: dict) -> None:
        # Users no node holds any more (their node died or stopped): one ``offline``
        # each to their buddies and contacts live here.
        for entry in payload.get("users") or ():
            if not (isinstance(entry, list) and len(entry) == 2):
                continue
            user_id, nick = str(entry[0]), str(entry[1])
            if router.user(user_id) is not None:
                continue  # came back here meanwhile
            packet = {"type": "offline", "from": user_id, "nick": nick, "to": None,
                      "show": "unavailable", "status": ""}
            watchers = []
            for other_id in router.live_user_ids():
                other = router.user(other_id)
                if other is not None and user_id in other.related():
                    other.drop_contact(user_id)
                    watchers.append(other_id)
            if watchers and node.hub is not None:
                node.hub.local.to_users(watchers, "presences", packet)

    async def resync() -> None:
        n = router.end_all_sessions()
        log.info("ended {n} sessions that lived through the Redis outage (their clients go online again)", n=n)

    def contacts(kind: str, recipients: list[str], packet: dict) -> None:
        # What a node of one process learns in route_unicast and _go_offline, learnt
        # from packets of the other nodes: strangers who talk become contacts, and stop
        # being contacts when one goes offline (docs/design.md#d8-presence).
        type_, from_id = packet.get("type"), packet.get("from")
        if not isinstance(from_id, str):
            return
        if kind == "messages" and type_ == "unicast" and isinstance(packet.get("to"), str):
            for user_id in recipients:
                # The recipient's copy, or the sender's copy on their other node.
                router.met(user_id, packet["to"] if user_id == from_id else from_id)
        elif kind == "presences" and type_ == "offline":
            for user_id in recipients:
                router.parted(user_id, from_id)

    node.handlers.update({"show": show, "gone": gone})
    if node.hub is not None:
        node.hub.observe = contacts
    node.on_resync = resync
