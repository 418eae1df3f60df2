"""Live state of one daemon: online users, sessions by ticket, live room membership,
and the routing of messages, presences and typing statuses to session queues.

Rules: D5 (timers, grace), D6 (queues), D7 (fan-out and sender copies), D8
(presence recipients, invisible), D9 (live room membership), protocol-reference
§3.3–§4.2. No I/O here: handlers load from storage and call in.
"""
import secrets

from twisted.logger import Logger

from ..errors import NotFound
from .presence import OnlineUser
from .session import Session
from .timers import TimerWheel

log = Logger()


def new_ticket():
    """An opaque random ticket of 192 bits (D4)."""
    return secrets.token_urlsafe(24)


class Router:
    """Registry of live users, sessions and rooms, and the packet router.

    :param clock: ``IReactorTime``; all timers go through it (sessions' hold and idle
        timers through one :class:`~.timers.TimerWheel`, at most 100 ms late).
    :param poll_hold: seconds a poll is held (D5).
    :param session_idle: seconds a session may go without a parked poll (D5).
    :param user_grace: seconds a user without sessions stays online (D5).
    :param max_queue: per-session queue bound in packets (D6).
    :param room_presences: send v5-style room ``join``/``leave`` presences (D9).
    :param session_max: seconds a session may live however often it is polled; after
        that its ticket is unknown (docs/design.md#d19-session-lifetime).
    """

    def __init__(self, clock, poll_hold=25, session_idle=10, user_grace=10, max_queue=1000,
                 room_presences=False, session_max=86400):
        self.clock = clock
        self.timers = TimerWheel(clock)
        self.poll_hold = poll_hold
        self.session_idle = session_idle
        self.user_grace = user_grace
        self.max_queue = max_queue
        self.room_presences = room_presences
        self.session_max = session_max
        self.users = {}      # user id -> OnlineUser
        self.sessions = {}   # ticket -> Session
        self.rooms = {}      # room id -> set of live member ids
        self.overflows = 0
        # Observers of live state (the XMPP bridge, issue 7): objects with any of
        # user_presence(user, type_), room_joined(user, room_id), room_left(user, room_id).
        self.observers = []
        # messages routed by type, read by the metrics collector (web/metrics.py)
        self.messages_routed = {"unicast": 0, "multicast": 0, "broadcast": 0}

    def now_ms(self):
        """Current time in integer milliseconds from the injected clock."""
        return int(self.clock.seconds() * 1000)

    # -- sessions ----------------------------------------------------------
    def open_session(self, profile, show, status, buddy_ids, room_ids):
        """Create a session for a user (D4: each ``online`` makes a new one).

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
            if user.visible:
                self._announce(user, "online")
            log.debug("user {user_id} online", user_id=user.id)
        else:
            self._cancel_grace(user)
            user.profile = profile
            user.buddies = set(buddy_ids)
            for room_id in room_ids:
                if room_id not in user.rooms:
                    self._join(user, room_id, announce=False)
            if show is not None and show != user.show:
                self.set_presence(user.id, show, user.status if status is None else status)
        ticket = new_ticket()
        session = Session(ticket, user.id, self.timers, self.poll_hold, self.session_idle,
                          self.max_queue, self._session_ended)
        session.expires_at = self.clock.seconds() + self.session_max
        user.sessions[ticket] = session
        self.sessions[ticket] = session
        return session, user

    def session(self, ticket):
        """The live session of ``ticket``.

        :raises NotFound: unknown or ended ticket (a poll answers it with 404, D2), or
            a session older than ``session_max``, which this ends
            (docs/design.md#d19-session-lifetime): the client goes online again with a
            fresh token.
        """
        session = self.sessions.get(ticket) if ticket else None
        if session is None:
            raise NotFound("unknown or expired ticket", code="invalid_ticket")
        if self.clock.seconds() >= session.expires_at:
            session.stop()
            self._forget_session(session)
            raise NotFound("session too old: go online again", code="invalid_ticket")
        return session

    def end_session(self, ticket):
        """End a tab's session (``offline``/``refresh``): a parked poll gets
        ``stopped``; the user stays online through the grace (D5, §7 A12)."""
        session = self.session(ticket)
        session.stop()
        self._forget_session(session)

    def end_sessions(self, user_id, login=None):
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
        user.sessions.pop(session.ticket, None)
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
        if user.visible:
            self._announce(user, "offline")
        del self.users[user.id]
        for other_id in user.contacts:
            other = self.users.get(other_id)
            if other is not None:
                other.drop_contact(user.id)
        log.debug("user {user_id} offline", user_id=user.id)

    def user_offline(self, user_id):
        """End every session of a user and take them offline now (admin removal,
        ``DELETE /admin/users/{id}``). The id also leaves every live buddy set, online
        or not: a user later created with the same id is nobody's buddy (D8)."""
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
    def is_online(self, user_id):
        """True if the user is live (sessions or grace), visible or not."""
        return user_id in self.users

    def presence_of(self, user_id, viewer_id=None):
        """What ``viewer_id`` may see of a user: ``(presence, show, status)``
        with presence ``online``/``offline``; invisible users look offline to
        everyone but themselves (D8)."""
        user = self.users.get(user_id)
        if user is None or (not user.visible and viewer_id != user_id):
            return "offline", "unavailable", ""
        return "online", user.show, user.status

    def set_presence(self, user_id, show, status):
        """Apply a show/status change and tell related online users (D8):
        ``show`` normally, ``offline`` on going invisible, ``online`` on coming back."""
        user = self.users[user_id]
        was_visible = user.visible
        user.show = show
        if status is not None:
            user.status = status
        user.status_time = self.now_ms()
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

    def _notify(self, event, *args):
        """Tell the :attr:`observers` about ``event``; an observer's error is logged, never
        propagated into routing."""
        for observer in self.observers:
            method = getattr(observer, event, None)
            if method is not None:
                try:
                    method(*args)
                except Exception:
                    log.failure("router observer {event} failed", event=event)

    def deliver(self, user_id, kind, packet):
        """Push a ready-made packet (``kind`` ∈ messages, presences, statuses) to every
        session of a live user; for sources that are not live users (the XMPP bridge).
        :returns: True if a session took it."""
        user = self.users.get(user_id)
        return user is not None and self._push_user(user, kind, packet)

    def _announce(self, user, type_):
        # online/show/offline as others see it (invisible is already offline here, D8)
        self._notify("user_presence", user, type_)
        for other_id in user.related():
            other = self.users.get(other_id)
            if other is not None and other_id != user.id:
                self._push_user(other, "presences", self._presence_packet(user, type_, other_id))

    def buddies_changed(self, user_id, buddy_id, added):
        """Keep the live buddy sets in step with the directory (admin API, nextimctl).
        A removal stops presence both ways at once, also between users who had talked
        while online (contacts, D8)."""
        a, b = self.users.get(user_id), self.users.get(buddy_id)
        for one, other_id in ((a, buddy_id), (b, user_id)):
            if one is not None:
                (one.buddies.add if added else one.buddies.discard)(other_id)
                if not added:
                    one.drop_contact(other_id)

    # -- routing -----------------------------------------------------------
    def _push_user(self, user, kind, packet, except_ticket=None):
        delivered = False
        for ticket, session in list(user.sessions.items()):
            if ticket != except_ticket and session.push(kind, packet):
                delivered = True
        return delivered

    def route_unicast(self, message, sender_ticket=None, to_recipient=True):
        """Deliver a committed unicast (or broadcast-shaped) message (D7): to every
        session of the recipient and to the sender's other sessions.

        :param to_recipient: False to send only the sender's copies (the recipient
            already got the message as one of ``online``'s ``new_messages``).
        :returns: True if at least one recipient session took it.
        """
        self.messages_routed["unicast"] += 1
        packet = _packet(message)
        recipient = self.users.get(message["to"])
        sender = self.users.get(message["from"])
        delivered = False
        if recipient is not None and recipient is sender:
            # A note to oneself: each *other* session once, never the sending one (D7).
            return self._push_user(recipient, "messages", packet, except_ticket=sender_ticket)
        if recipient is not None and to_recipient:
            delivered = self._push_user(recipient, "messages", packet)
        if sender is not None and sender is not recipient:
            self._push_user(sender, "messages", packet, except_ticket=sender_ticket)
            if recipient is not None:
                # Strangers who talk see each other's presence from now on (D8).
                sender.add_contact(recipient.id)
                recipient.add_contact(sender.id)
        return delivered

    def route_multicast(self, message, sender_ticket=None):
        """Deliver a committed room message to the live members (D7, §4.2): the sender
        gets copies on its other sessions only."""
        self.messages_routed["multicast"] += 1
        packet = _packet(message)
        for member_id in self.rooms.get(message["to"], ()):
            member = self.users.get(member_id)
            if member is None:
                continue
            except_ticket = sender_ticket if member_id == message["from"] else None
            self._push_user(member, "messages", packet, except_ticket=except_ticket)

    def route_broadcast(self, message):
        """Deliver an admin broadcast to every online user, unicast-shaped with ``to``
        rewritten to the recipient (protocol-reference §4.2). Returns the count."""
        self.messages_routed["broadcast"] += 1
        count = 0
        for user in list(self.users.values()):
            packet = dict(_packet(message), type="unicast", to=user.id)
            if self._push_user(user, "messages", packet):
                count += 1
        return count

    def route_status(self, from_id, to_id, show):
        """Relay a typing status to the recipient's sessions if online; never stored (§3.5)."""
        sender = self.users.get(from_id)
        recipient = self.users.get(to_id)
        if recipient is None or sender is None:
            return False
        packet = {"from": from_id, "nick": sender.nick, "to": to_id, "show": show}
        return self._push_user(recipient, "statuses", packet)

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

    def _room_presence(self, user, room_id, type_):
        for member_id in self.rooms.get(room_id, ()):
            member = self.users.get(member_id)
            if member is not None and member_id != user.id:
                packet = {"type": type_, "from": user.id, "nick": user.nick, "to": room_id,
                          "show": user.show, "status": room_id}
                self._push_user(member, "presences", packet)

    def join_room(self, user_id, room_id):
        """Live-join a room (D9: ``join`` un-blocks)."""
        self._join(self.users[user_id], room_id)

    def leave_room(self, user_id, room_id):
        """Live-leave a room (D9: ``leave`` blocks; site membership stays)."""
        self._leave(self.users[user_id], room_id)

    def in_room(self, user_id, room_id):
        """True if the user is live-joined to the room."""
        return user_id in self.rooms.get(room_id, ())

    def room_members(self, room_id, viewer_id=None):
        """Live members ``viewer_id`` may see (invisible ones hidden, D8), sorted by id:
        list of ``{"id", "nick", "presence", "show"}``."""
        result = []
        for member_id in sorted(self.rooms.get(room_id, ())):
            user = self.users.get(member_id)
            if user is None or (not user.visible and member_id != viewer_id):
                continue
            result.append({"id": user.id, "nick": user.nick, "presence": "online", "show": user.show})
        return result

    def room_count(self, room_id, viewer_id=None):
        """Number of live members ``viewer_id`` can see."""
        return len(self.room_members(room_id, viewer_id))

    # -- whole daemon ------------------------------------------------------
    def stats(self):
        """``{"online_users", "sessions", "parked_polls", "queue_overflows"}``."""
        return {
            "online_users": len(self.users),
            "sessions": len(self.sessions),
            "parked_polls": sum(1 for s in self.sessions.values() if s.parked),
            "queue_overflows": self.overflows,
        }

    def shutdown(self):
        """Answer every parked poll with an empty batch and cancel all timers (D16)."""
        for session in list(self.sessions.values()):
            session.stop({"status": "ok", "messages": [], "presences": [], "statuses": [],
                          "seq": session.last_seq})
        self.sessions.clear()
        for user in self.users.values():
            self._cancel_grace(user)
            user.sessions.clear()
        self.users.clear()
        self.rooms.clear()


def _packet(message):
    """A logItem for the comet channel: the stored message without its row id."""
    return {k: v for k, v in message.items() if k != "id"}
