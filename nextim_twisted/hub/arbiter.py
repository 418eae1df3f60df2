"""Who decides that a user came online or went offline: the router asks its arbiter
before it announces either (docs/design.md#d20-cluster).

In one process the router's own state is the whole truth, so
:class:`LocalArbiter` announces at once, exactly as the router always did. In a
cluster a user is online while *any* node holds one of their sessions, so only the
first node to take the user announces ``online`` and only the last one to let go
announces ``offline``; :class:`~nextim_twisted.hub.cluster.ClusterArbiter` asks
Redis, where that is decided atomically, and calls ``announce`` later, or never.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class LiveUser(Protocol):
    """What an arbiter reads of a live user (the router's ``OnlineUser``)."""

    id: str
    show: str
    status: str

    @property
    def nick(self) -> str: ...

    @property
    def visible(self) -> bool: ...


#: ``announce()``: send the presence change now; it checks visibility itself.
Announce = Callable[[], None]
#: ``joined(show, status)``: another node already held the user, with this show and
#: status; the router adopts them, or announces its own as a change.
Joined = Callable[[str, str], None]


class IPresenceArbiter(Protocol):
    """Decides presence transitions for the router. Every method returns at once."""

    def came_online(self, user: LiveUser, announce: Announce, joined: Joined) -> None:
        """``user`` got their first session on this node (they were not live here).
        Call ``announce`` if they were not online anywhere else, else ``joined`` with
        the show and status the other nodes hold."""
        ...

    def went_offline(self, user: LiveUser, announce: Announce) -> None:
        """``user`` is no longer live on this node (grace over, or removed). Call
        ``announce`` if no other node holds them."""
        ...

    def sessions_changed(self, user: LiveUser, has_sessions: bool) -> None:
        """A user live here got their first open session again (True, back from the
        grace) or lost their last one (False, the grace started)."""
        ...

    def show_changed(self, user: LiveUser) -> None:
        """``user``'s show or status changed here (the router announces it itself)."""
        ...


class LocalArbiter:
    """:class:`IPresenceArbiter` of a single daemon: this process is the whole truth."""

    def came_online(self, user: LiveUser, announce: Announce, joined: Joined) -> None:
        announce()

    def went_offline(self, user: LiveUser, announce: Announce) -> None:
        announce()

    def sessions_changed(self, user: LiveUser, has_sessions: bool) -> None:
        pass

    def show_changed(self, user: LiveUser) -> None:
        pass
