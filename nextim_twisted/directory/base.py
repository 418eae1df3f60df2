"""The directory interface (docs/design.md#d14-directory,
docs/design.md#d22-the-site-as-source-of-truth).

Every method returns a Deferred and never blocks the reactor. Shapes are those of
:mod:`nextim_twisted.store.base`:

- user:  ``{"id", "nick", "pic_url", "default_pic_url", "url"}`` (optional fields
  ``None``; the local directory adds ``password_hash``);
- room:  ``{"id", "nick", "pic_url", "url", "all_count"}`` (``all_count``: members
  in the directory, int).

A provider that cannot answer (the site is down and nothing is cached) fails the
Deferred with :class:`DirectoryUnavailable`, which the web layer answers with the 503
envelope.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from ..errors import ProtocolError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from ..store.rows import Room, User


class DirectoryUnavailable(ProtocolError):
    """503 ``directory_unavailable``: the site's directory gave no answer and none is
    cached (docs/integration.md#failures)."""

    status = 503
    code = "directory_unavailable"


class IDirectory(Protocol):
    """What the handlers read at ``online``, ``buddies``, ``rooms`` and ``members``, and
    for routing and membership checks. An implementation subclasses this class to
    declare it (:class:`~.local.LocalDirectory`, :class:`~.http.HTTPDirectory`)."""

    #: True if a site token's profile claims create and update the user here (the local
    #: directory, docs/design.md#d13-identity); False when the site answers for its
    #: users itself.
    provisions: bool

    def start(self) -> Deferred[None]:
        """Prepare (nothing to do for most providers)."""
        ...

    def stop(self) -> Deferred[None]:
        """Release connections."""
        ...

    def profile(self, user_id: str) -> Deferred[User | None]:
        """The user dict, or ``None`` for a user the directory does not know."""
        ...

    def profiles(self, user_ids: Iterable[str]) -> Deferred[dict[str, User]]:
        """``{id: user dict}`` for the known ids among ``user_ids``."""
        ...

    def buddies(self, user_id: str) -> Deferred[list[tuple[str, str | None]]]:
        """``[(buddy_id, group or None), ...]`` of ``user_id``'s side, ordered by id.
        Buddies are symmetric (docs/design.md#d8-presence)."""
        ...

    def rooms_of(self, user_id: str) -> Deferred[list[Room]]:
        """Room dicts of the rooms ``user_id`` is a member of, by id."""
        ...

    def room(self, room_id: str) -> Deferred[Room | None]:
        """The room dict or ``None``."""
        ...

    def member_ids(self, room_id: str) -> Deferred[list[str]]:
        """Sorted list of the room's member user ids."""
        ...

    def is_member(self, room_id: str, user_id: str) -> Deferred[bool]:
        """True if ``user_id`` is a member of ``room_id``."""
        ...

    def invalidate(self, user_ids: Iterable[str] = (), room_ids: Iterable[str] = ()) -> None:
        """Forget what is cached about these users (profile, buddies, rooms) and rooms
        (room, members), so the next read asks again."""
        ...
