"""Live state of one daemon: online users, sessions by ticket, live room membership,
and the routing of messages, presences and typing statuses to session queues.

Rules: docs/design.md#d5-timers (timers, grace), #d6-comet-envelope (queues), #d7-messages
(fan-out and sender copies), #d8-presence (presence recipients, invisible), #d9-rooms (live
room membership), and docs/protocol.md#the-comet-long-poll. No I/O here: handlers load from storage and call in.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from ..errors import NotFound
from ..hub.arbiter import IPresenceArbiter, LocalArbiter
from ..hub.base import IHub, LocalSessions, Packet
from ..hub.local import LocalHub
from .observers import ILiveStateObserver, PresenceChange
from .presence import OnlineUser
from .session import SHUTDOWN, Session
from .timers import TimerWheel

if TYPE_CHECKING:
    from ..store.rows import Message

log = Logger()


class Clock(Protocol):
    """The part of ``IReactorTime`` the router uses (a reactor, or a ``Clock`` in tests)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...


#: Builds the router's hub from the router (who is live here): :class:`LocalHub` by default.
HubFactory = Callable[[LocalSessions], IHub]


def new_ticket(node_id: str = "") -> str:
    """An opaque random ticket of 192 bits (docs/design.md#d4-tickets); in a cluster ``<node_id>.<random>``, so
    any node can tell which node holds its session (docs/design.md#d20-cluster)."""
    random = secrets.token_urlsafe(24)
    return f"{node_id}.{random}" if node_id else random


class Router:
    """Registry of live users, sessions and rooms, and the packet router.

    :param clock: ``IReactorTime``; all timers go through it (sessions' hold and idle
        timers through one :class:`~.timers.TimerWheel`, at most 100 ms late).
    :param poll_hold: seconds a poll is held (docs/design.md#d5-timers).
    :param session_idle: seconds a session may go without a parked poll (docs/design.md#d5-timers).
    :param user_grace: seconds a user without sessions stays online (docs/design.md#d5-timers).
    :param max_queue: per-session queue bound in packets (docs/design.md#d6-comet-envelope).
    :param room_presences: send v5-style room ``join``/``leave`` presences (docs/design.md#d9-rooms).
    :param hub: builds the :class:`~nextim_twisted.hub.base.IHub` every packet leaves
        through, given this router (docs/design.md#d20-cluster).
    :param arbiter: decides whether a user coming online or going offline here is a
        change to announce (:class:`~nextim_twisted.hub.arbiter.IPresenceArbiter`;
        default: this process is the whole truth).
    :param node_id: a cluster node's id, the prefix of its tickets ("" alone).
    :param session_max: seconds a session may live however often it is polled; after
        that its ticket is unknown (docs/design.md#d19-session-lifetime).

    Outside ``core/`` the live state is read through methods (:meth:`user`,
    :meth:`has_sessions`, :meth:`session`, :meth:`live_members` …), never the dicts.
    """

    def __init__(self, clock: Clock, poll_hold: float = 25, session_idle: float = 10,
                 user_grace: float = 10, max_queue: int = 1000, room_presences: bool = False,
                 hub: HubFactory = LocalHub, session_max: float = 86400,
                 arbiter: IPresenceArbiter | None = None, node_id: str = "") -> None:
        self.clock = clock
        self.timers = TimerWheel(clock)
        self.poll_hold = poll_hold
        self.session_idle = session_idle
        self.user_grace = user_grace
        self.max_queue = max_queue
        self.room_presences = room_presences
        self.session_max = session_max
        self.users: dict[str, OnlineUser] = {}
        self.sessions: dict[str, Session] = {}  # by ticket
        self.rooms: dict[str, set[str]] = {}    # room id -> live member ids
        self.overflows = 0
        self.observers: list[ILiveStateObserver] = []
        # messages routed by type, read by the metrics collector (web/metrics.py)
        self.messages_routed = {"unicast": 0, "multicast": 0, "broadcast": 0}
        #: Where every packet goes out (docs/design.md#d20-cluster).
        self.hub: IHub = hub(self)
        #: Who decides presence transitions (docs/design.md#d20-cluster).
        self.arbiter: IPresenceArbiter = arbiter if arbiter is not None else LocalArbiter()
        #: True when the hub also reaches users live on other nodes (a cluster): then
        #: packets go to the hub for users not live here too.
        self.hub_reaches_other_nodes: bool = bool(getattr(self.hub, "reaches_other_nodes", False))
        self.node_id = node_id

    def add_observer(self, observer: ILiveStateObserver) -> None:
        """Tell ``observer`` about presence and room changes from now on (:mod:`.observers`)."""
        if observer not in self.observers:
            self.observers.append(observer)

    def remove_observer(self, observer: ILiveStateObserver) -> None:
        """Stop telling ``observer`` (idempotent)."""
        if observer in self.observers:
            self.observers.remove(observer)

    # -- queries (for handlers, the hub and the bridge) ------------------------
    def user(self, user_id: str) -> OnlineUser | None:
        """The live state of a user (sessions or inside the grace), or None."""
        return self.users.get(user_id)

    def sessions_of(self, user_id: str) -> list[Session]:
        """The user's open sessions, a copy (pushing may end one); ``[]`` when not live."""
        user = self.users.get(user_id)
        return list(user.sessions.values()) if user is not None else []

    def live_members(self, room_id: str) -> list[str]:
        """Ids of the room's live members, sorted (invisible ones included)."""
        return sorted(self.rooms.get(room_id, ()))

    def live_user_ids(self) -> list[str]:
        """Ids of every live user (sessions or grace), invisible ones included."""
        return list(self.users)

    def update_profile(self, user_id: str, profile: dict[str, Any]) -> None:
        """A live user's directory entry changed (admin API): later packets carry it."""
        user = self.users.get(user_id)
        if user is not None:
            user.profile = profile

    def now_ms(self) -> int:
        """Current time in integer milliseconds from the injected clock."""
        return int(self.clock.seconds() * 1000)

    # -- sessions ----------------------------------------------------------
    def open_session(self, profile: dict[str, Any], show: str | None, status: str | None,
                     buddy_ids: Iterable[str], room_ids: Iterable[str]) -> tuple[Session, OnlineUser]:
        """Create a session for a user (docs/design.md#d4-tickets: each ``online`` makes a new one).

        On the user's first session the user goes online: ``online`` presence to
        related online users (unless invisible) and live-join of ``room_ids``.
        If the user is already live (another tab, or inside the grace), the
        existing state is reused; a different ``show`` is applied as a change.

        :param profile: user dict from the directory (``id``, ``nick`` …).
        :param show: a normalized show, or None to keep the current one
            (``available`` for a new user).
        :param buddy_ids: directory buddy ids (refreshes the live set).
        :param room_ids: rooms to live-join (the user's rooms minus blocked ones).
        :returns: ``(session, user)``.
        """
        user = self.users.get(profile["id"])
        if user is None:
            user = OnlineUser(profile, show or "available", status or "", self.now_ms(), buddy_ids)
            self.users[user.id] = user
            for room_id in room_ids:
                self._join(user, room_id, announce=False)
            self.arbiter.came_online(user, lambda: self._announce_online(user))
            log.debug("user {user_id} online", user_id=user.id)
        else:
            self._cancel_grace(user)
            if not user.sessions:
                self.arbiter.sessions_changed(user, True)
            user.profile = profile
            user.buddies = set(buddy_ids)
            for room_id in room_ids:
                if room_id not in user.rooms:
                    self._join(user, room_id, announce=False)
            if show is not None and show != user.show:
                self.set_presence(user.id, show, user.status if status is None else status)
        ticket = new_ticket(self.node_id)
        session = Session(ticket, user.id, self.timers, self.poll_hold, self.session_idle,
                          self.max_queue, self._session_ended)
        session.expires_at = self.clock.seconds() + self.session_max
        user.sessions[ticket] = session
        self.sessions[ticket] = session
        return session, user

    def session(self, ticket: str | None) -> Session:
        """The live session of ``ticket``.

        :raises NotFound: unknown or ended ticket (a poll answers it with 404,
            docs/design.md#d2-errors), or a session older than ``session_max``, which
            this ends (docs/design.md#d19-session-lifetime): the client goes online
            again with a fresh token.
        """
        session = self.sessions.get(ticket) if ticket else None
        if session is None:
            raise NotFound("unknown or expired ticket", code="invalid_ticket")
        if self.clock.seconds() >= session.expires_at:
            session.stop()
            self._forget_session(session)
            raise NotFound("session too old: go online again", code="invalid_ticket")
        return session

    def end_session(self, ticket: str) -> None:
        """End a tab's session (``offline``/``refresh``): a parked poll gets
        ``stopped``; the user stays online through the grace (docs/protocol.md#a12-refresh-and-offline)."""
        session = self.session(ticket)
        session.stop()
        self._forget_session(session)

    def end_sessions(self, user_id: str, login: str | None = None) -> int:
        """End the sessions of a user: all of them (a password change), or only those
        opened with the login cookie ``login`` (its ``jti``, at ``logout``). Parked polls
        get ``stopped``; the user goes offline after the grace if none is left
        (docs/design.md#d19-session-lifetime). :returns: how many ended."""
        user = self.users.get(user_id)
        if user is None:
            return 0
        ended = [s for s in user.sessions.values() if login is None or s.login == login]
        for session in ended:
            session.stop()
            self._forget_session(session)
        return len(ended)

    def _session_ended(self, session, reason):
        if reason == "overflow":
            self.overflows += 1
        self._forget_session(session)

    def _forget_session(self, session):
        self.sessions.pop(session.ticket, None)
        user = self.users.get(session.user_id)
        if user is None:
            return
        if user.sessions.pop(session.ticket, None) is not None and not user.sessions:
            self.arbiter.sessions_changed(user, False)
        if not user.sessions and user.grace_timer is None:
            user.grace_timer = self.clock.callLater(self.user_grace, self._grace_expired, user.id)

    def _cancel_grace(self, user):
        if user.grace_timer is not None and user.grace_timer.active():
            user.grace_timer.cancel()
        user.grace_timer = None

    def _grace_expired(self, user_id):
        user = self.users.get(user_id)
        if user is None or user.sessions:
            return
        user.grace_timer = None
        self._go_offline(user)

    def _go_offline(self, user):
        for room_id in list(user.rooms):
            self._leave(user, room_id, announce=False)
        self.arbiter.went_offline(user, lambda: user.visible and self._announce(user, "offline"))
        del self.users[user.id]
        for other_id in user.contacts:
            other = self.users.get(other_id)
            if other is not None:
                other.drop_contact(user.id)
        log.debug("user {user_id} offline", user_id=user.id)

    def user_offline(self, user_id: str) -> None:
        """End every session of a user and take them offline now (admin removal,
        ``DELETE /admin/users/{id}``). The id also leaves every live buddy set, online
        or not: a user later created with the same id is nobody's buddy (docs/design.md#d8-presence)."""
        for other in self.users.values():
            other.buddies.discard(user_id)
        user = self.users.get(user_id)
        if user is None:
            return
        for session in list(user.sessions.values()):
            session.stop()
            self.sessions.pop(session.ticket, None)
        user.sessions.clear()
        self._cancel_grace(user)
        self._go_offline(user)

    # -- presence ----------------------------------------------------------
    def is_online(self, user_id: str) -> bool:
        """True if the user is live (sessions or grace), visible or not."""
        return user_id in self.users

    def has_sessions(self, user_id: str) -> bool:
        """True if the user has an open session now (not merely inside the grace): a
        message to them is delivered live, not kept for ``new_messages``."""
        user = self.users.get(user_id)
        return user is not None and bool(user.sessions)

    def presence_of(self, user_id: str, viewer_id: str | None = None) -> tuple[str, str, str]:
        """What ``viewer_id`` may see of a user: ``(presence, show, status)``
        with presence ``online``/``offline``; invisible users look offline to
        everyone but themselves (docs/design.md#d8-presence)."""
        user = self.users.get(user_id)
        if user is None or (not user.visible and viewer_id != user_id):
            return "offline", "unavailable", ""
        return "online", user.show, user.status

    def set_presence(self, user_id: str, show: str, status: str | None) -> None:
        """Apply a show/status change and tell related online users (docs/design.md#d8-presence):
        ``show`` normally, ``offline`` on going invisible, ``online`` on coming back."""
        user = self.users[user_id]
        was_visible = user.visible
        user.show = show
        if status is not None:
            user.status = status
        user.status_time = self.now_ms()
        self.arbiter.show_changed(user)
        if was_visible and user.visible:
            self._announce(user, "show")
        elif was_visible:
            self._announce(user, "offline")
        elif user.visible:
            self._announce(user, "online")

    def _presence_packet(self, user, type_, to):
        if type_ == "offline":
            show, status = "unavailable", ""
        else:
            show, status = user.show, user.status
        return {"type": type_, "from": user.id, "nick": user.nick, "to": to, "show": show,
                "status": status}

    def _notify(self, event: str, *args: Any) -> None:
        """Tell the :attr:`observers` about ``event`` (an :class:`ILiveStateObserver`
        method name); an observer's error is logged, never propagated into routing."""
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                log.failure("router observer {event} failed", event=event)

    def _announce_online(self, user: OnlineUser) -> None:
        # Called by the arbiter, maybe later: only if the user is still live here.
        if self.users.get(user.id) is user and user.visible:
            self._announce(user, "online")

    def _announce(self, user: OnlineUser, type_: PresenceChange) -> None:
        # online/show/offline as others see it (invisible is already offline here, docs/design.md#d8-presence).
        # A hub that reaches other nodes gets every related user, live here or not.
        self._notify("user_presence", user, type_)
        remote = self.hub_reaches_other_nodes
        others = [i for i in user.related() if i != user.id and (remote or i in self.users)]
        if others:
            self.hub.to_users(others, "presences", self._presence_packet(user, type_, None))

    def buddies_changed(self, user_id: str, buddy_id: str, added: bool) -> None:
        """Keep the live buddy sets in step with the directory (admin API, nextimctl).
        A removal stops presence both ways at once, also between users who had talked
        while online (contacts, docs/design.md#d8-presence)."""
        a, b = self.users.get(user_id), self.users.get(buddy_id)
        for one, other_id in ((a, buddy_id), (b, user_id)):
            if one is not None:
                (one.buddies.add if added else one.buddies.discard)(other_id)
                if not added:
                    one.drop_contact(other_id)

    # -- routing (through the hub) ----------------------------------------------
    def route_unicast(self, message: Message, sender_ticket: str | None = None,
                      to_recipient: bool = True) -> bool:
        """Deliver a committed unicast (or broadcast-shaped) message (docs/design.md#d7-messages): to every
        session of the recipient and to the sender's other sessions.

        :param to_recipient: False to send only the sender's copies (the recipient
            already got the message as one of ``online``'s ``new_messages``).
        :returns: True if at least one recipient session took it.
        """
        self.messages_routed["unicast"] += 1
        packet = message_packet(message)
        hub = self.hub
        to_id, from_id = message["to"], message["from"]
        recipient = self.users.get(to_id)
        sender = self.users.get(from_id)
        # A hub that reaches other nodes gets users not live here too.
        remote = self.hub_reaches_other_nodes
        if to_id == from_id:
            if recipient is None and not remote:
                return False
            # A note to oneself: each *other* session once, never the sending one (docs/design.md#d7-messages).
            return hub.to_user(to_id, "messages", packet, except_ticket=sender_ticket)
        delivered = False
        if to_recipient and (recipient is not None or remote):
            delivered = hub.to_user(to_id, "messages", packet)
        if sender is not None or remote:
            hub.to_user(from_id, "messages", packet, except_ticket=sender_ticket)
        if sender is not None and recipient is not None:
            # Strangers who talk see each other's presence from now on (docs/design.md#d8-presence).
            sender.add_contact(recipient.id)
            recipient.add_contact(sender.id)
        return delivered

    def route_multicast(self, message: Message, sender_ticket: str | None = None) -> int:
        """Deliver a committed room message to the live members (docs/design.md#d7-messages,
        docs/protocol.md#rooms): the sender gets copies on its other sessions only.
        :returns: members reached."""
        self.messages_routed["multicast"] += 1
        return self.hub.to_room(message["to"], "messages", message_packet(message), except_ticket=sender_ticket)

    def route_broadcast(self, message: Message) -> int:
        """Deliver an admin broadcast to every online user, unicast-shaped with ``to``
        rewritten to the recipient (docs/protocol.md#broadcast). Returns the count."""
        self.messages_routed["broadcast"] += 1
        return self.hub.to_everyone("messages", dict(message_packet(message), type="unicast"))

    def route_status(self, from_id: str, to_id: str, show: str) -> bool:
        """Relay a typing status to the recipient's sessions if online; never stored (docs/protocol.md#webimstatus)."""
        sender = self.users.get(from_id)
        if sender is None or (to_id not in self.users and not self.hub_reaches_other_nodes):
            return False
        packet = {"from": from_id, "nick": sender.nick, "to": to_id, "show": show}
        return self.hub.to_user(to_id, "statuses", packet)

    # -- rooms -------------------------------------------------------------
    def _join(self, user, room_id, announce=True):
        members = self.rooms.setdefault(room_id, set())
        if user.id in members:
            return
        members.add(user.id)
        user.rooms.add(room_id)
        self._notify("room_joined", user, room_id)
        if announce and self.room_presences and user.visible:
            self._room_presence(user, room_id, "join")

    def _leave(self, user, room_id, announce=True):
        members = self.rooms.get(room_id)
        if not members or user.id not in members:
            user.rooms.discard(room_id)
            return
        members.discard(user.id)
        user.rooms.discard(room_id)
        self._notify("room_left", user, room_id)
        if not members:
            del self.rooms[room_id]
        if announce and self.room_presences and user.visible:
            self._room_presence(user, room_id, "leave")

    def _room_presence(self, user: OnlineUser, room_id: str, type_: str) -> None:
        packet = {"type": type_, "from": user.id, "nick": user.nick, "to": room_id,
                  "show": user.show, "status": room_id}
        self.hub.to_room(room_id, "presences", packet, except_user=user.id)

    def join_room(self, user_id: str, room_id: str) -> None:
        """Live-join a room (docs/design.md#d9-rooms: ``join`` un-blocks)."""
        self._join(self.users[user_id], room_id)

    def leave_room(self, user_id: str, room_id: str) -> None:
        """Live-leave a room (docs/design.md#d9-rooms: ``leave`` blocks; site membership stays)."""
        self._leave(self.users[user_id], room_id)

    def in_room(self, user_id: str, room_id: str) -> bool:
        """True if the user is live-joined to the room."""
        return user_id in self.rooms.get(room_id, ())

    def room_members(self, room_id: str, viewer_id: str | None = None) -> list[dict[str, str]]:
        """Live members ``viewer_id`` may see (invisible ones hidden, docs/design.md#d8-presence), sorted by id:
        list of ``{"id", "nick", "presence", "show"}``."""
        result = []
        for member_id in sorted(self.rooms.get(room_id, ())):
            user = self.users.get(member_id)
            if user is None or (not user.visible and member_id != viewer_id):
                continue
            result.append({"id": user.id, "nick": user.nick, "presence": "online", "show": user.show})
        return result

    def room_count(self, room_id: str, viewer_id: str | None = None) -> int:
        """Number of live members ``viewer_id`` can see."""
        return len(self.room_members(room_id, viewer_id))

    # -- whole daemon ------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """``{"online_users", "sessions", "parked_polls", "websockets", "queue_overflows"}``:
        ``parked_polls`` counts subscribed WebSockets too (they count as parked polls,
        docs/design.md#d21-websocket); ``websockets`` those alone."""
        return {
            "online_users": len(self.users),
            "sessions": len(self.sessions),
            "parked_polls": sum(1 for s in self.sessions.values() if s.parked),
            "websockets": sum(1 for s in self.sessions.values() if s.streaming),
            "queue_overflows": self.overflows,
        }

    def end_all_sessions(self) -> int:
        """End every session so that its next poll is 404 and the client goes online
        again (a parked poll is answered empty first); the users stay live through the
        grace. For a cluster node whose routing had a gap (docs/design.md#d20-cluster).
        :returns: the number of sessions ended."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.stop({"status": "ok", "messages": [], "presences": [], "statuses": [],
                          "seq": session.last_seq})
            self._forget_session(session)
        return len(sessions)

    def shutdown(self) -> None:
        """Answer every parked poll with an empty batch, let every WebSocket go (closed
        with 1001 by the web layer) and cancel all timers (docs/design.md#d16-shutdown)."""
        for session in list(self.sessions.values()):
            session.stop({"status": "ok", "messages": [], "presences": [], "statuses": [],
                          "seq": session.last_seq}, reason=SHUTDOWN)
        self.sessions.clear()
        for user in self.users.values():
            self._cancel_grace(user)
            user.sessions.clear()
        self.users.clear()
        self.rooms.clear()


def message_packet(message: Message) -> Packet:
    """A logItem for the comet channel: the stored message with its storage ``id``, and
    its ``client_id`` when the sender gave one (docs/design.md#d17-idempotent-sends)."""
    return {k: v for k, v in message.items() if k != "client_id" or v is not None}
