"""What the router tells about live state changes, for whoever mirrors that state
elsewhere (the XMPP bridge: web presence and room membership as XMPP presence,
docs/design.md#d8-presence, docs/design.md#d9-rooms).

Observers are registered with :meth:`~nextim_twisted.core.router.Router.add_observer`.
They are called synchronously while the router changes its state, so they must not
call back into the router to change it; an observer's exception is logged and never
reaches the routing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from .presence import OnlineUser

#: How others see a presence change: ``online`` (came online or out of invisible),
#: ``show`` (show or status changed), ``offline`` (went offline or invisible).
PresenceChange = Literal["online", "show", "offline"]


class ILiveStateObserver(Protocol):
    """The router's observer contract. An implementation subclasses this class to
    declare it (the XMPP bridge, :class:`~nextim_twisted.xmpp.bridge.Bridge`)."""

    def user_presence(self, user: OnlineUser, type_: PresenceChange) -> None:
        """``user``'s presence as others see it changed (invisible arrives as
        ``offline``). During ``offline`` the user is still in the router."""

    def room_joined(self, user: OnlineUser, room_id: str) -> None:
        """``user`` live-joined ``room_id``."""

    def room_left(self, user: OnlineUser, room_id: str) -> None:
        """``user`` left ``room_id`` live (left, blocked it, or went offline)."""
