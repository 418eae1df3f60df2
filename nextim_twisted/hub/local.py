"""In-process delivery: packets go straight into this process's session queues."""
from __future__ import annotations

from collections.abc import Iterable

from .base import IHub, Kind, LocalSessions, Packet


class LocalHub(IHub):
    """:class:`~.base.IHub` for a single daemon.

    :param sessions: who is live here (the router).
    """

    def __init__(self, sessions: LocalSessions) -> None:
        self.sessions = sessions

    def to_user(self, user_id: str, kind: Kind, packet: Packet, except_ticket: str | None = None) -> bool:
        delivered = False
        for session in self.sessions.sessions_of(user_id):
            if session.ticket != except_ticket and session.push(kind, packet):
                delivered = True
        return delivered

    def to_users(self, user_ids: Iterable[str], kind: Kind, packet: Packet) -> int:
        count = 0
        for user_id in user_ids:
            sessions = self.sessions.sessions_of(user_id)
            if not sessions:
                continue
            copy = dict(packet, to=user_id)
            delivered = False
            for session in sessions:
                if session.push(kind, copy):
                    delivered = True
            count += delivered
        return count

    def to_room(self, room_id: str, kind: Kind, packet: Packet, except_user: str | None = None,
                except_ticket: str | None = None) -> int:
        count = 0
        for member_id in self.sessions.live_members(room_id):
            if member_id != except_user and self.to_user(member_id, kind, packet, except_ticket):
                count += 1
        return count

    def to_everyone(self, kind: Kind, packet: Packet) -> int:
        return self.to_users(self.sessions.live_user_ids(), kind, packet)
