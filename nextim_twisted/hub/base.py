"""The hub: the one way packets reach users' sessions (docs/design.md#d20-cluster).

The router decides *who* gets *what* (fan-out, sender copies, presence rules); the hub
only carries ready packets to recipients' live sessions. In one process that is
:class:`~nextim_twisted.hub.local.LocalHub`; a cluster's hub implements the same
:class:`IHub` over a message bus, so nothing above it changes.

A *packet* is the JSON-able dict a poll answers in ``messages``, ``presences`` or
``statuses`` (docs/design.md#d6-comet-envelope); its ``seq`` is added per session.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

#: Which list of the comet envelope a packet goes to.
Kind = Literal["messages", "presences", "statuses"]

#: A packet: string keys, JSON-able values.
Packet = dict[str, Any]


class IHub(Protocol):
    """Delivers packets to users' live sessions.

    Every method returns at once (no I/O is awaited) and never raises for a recipient
    who is not live: such recipients are skipped and not counted.
    """

    def to_user(self, user_id: str, kind: Kind, packet: Packet, except_ticket: str | None = None) -> bool:
        """Queue ``packet`` on every session of ``user_id`` except the session
        ``except_ticket`` (the one that sent it). :returns: True if a session took it."""
        ...

    def to_users(self, user_ids: Iterable[str], kind: Kind, packet: Packet) -> int:
        """Queue a copy on every session of each of ``user_ids``, each copy with ``to``
        set to its recipient (presence fan-out, docs/design.md#d8-presence).
        :returns: the number of users a session of whom took it."""
        ...

    def to_room(self, room_id: str, kind: Kind, packet: Packet, except_user: str | None = None,
                except_ticket: str | None = None) -> int:
        """Queue ``packet`` unchanged on the sessions of the room's live members
        (docs/design.md#d9-rooms), leaving out every session of ``except_user`` and the
        one session ``except_ticket``. :returns: the number of members reached."""
        ...

    def to_everyone(self, kind: Kind, packet: Packet) -> int:
        """Queue a copy on the sessions of every live user, each with ``to`` set to its
        recipient (admin broadcast, docs/design.md#d7-messages).
        :returns: the number of users reached."""
        ...


class SessionSink(Protocol):
    """What the local hub pushes into: a session (:class:`~nextim_twisted.core.session.Session`)."""

    ticket: str

    def push(self, kind: Kind, packet: Packet) -> bool:
        """Queue one packet; False if the session has ended."""
        ...


class LocalSessions(Protocol):
    """Who is live in this process: what :class:`~nextim_twisted.hub.local.LocalHub`
    asks (the router implements it)."""

    def sessions_of(self, user_id: str) -> Sequence[SessionSink]:
        """The user's open sessions (a copy: pushing may end one), ``[]`` if not live."""
        ...

    def live_members(self, room_id: str) -> list[str]:
        """Ids of the room's live members."""
        ...

    def live_user_ids(self) -> list[str]:
        """Ids of every live user (sessions or grace)."""
        ...
