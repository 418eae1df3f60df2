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
from zope.interface import Attribute, Interface

from ..errors import ProtocolError


class DirectoryUnavailable(ProtocolError):
    """503 ``directory_unavailable``: the site's directory gave no answer and none is
    cached (docs/integration.md#failures)."""

    status = 503
    code = "directory_unavailable"


class IDirectory(Interface):
    """What the handlers read at ``online``, ``buddies``, ``rooms`` and ``members``, and
    for routing and membership checks."""

    provisions = Attribute(
        "True if a site token's profile claims create and update the user here (the "
        "local directory, docs/design.md#d13-identity); False when the site answers "
        "for its users itself.")

    def start():
        """Prepare (nothing to do for most providers). Deferred → None."""

    def stop():
        """Release connections. Deferred → None."""

    def profile(user_id):
        """Deferred → user dict, or ``None`` for a user the directory does not know."""

    def profiles(user_ids):
        """Deferred → ``{id: user dict}`` for the known ids among ``user_ids``."""

    def buddies(user_id):
        """Deferred → ``[(buddy_id, group or None), ...]`` of ``user_id``'s side,
        ordered by id. Buddies are symmetric (docs/design.md#d8-presence)."""

    def rooms_of(user_id):
        """Deferred → room dicts of the rooms ``user_id`` is a member of, by id."""

    def room(room_id):
        """Deferred → room dict or ``None``."""

    def member_ids(room_id):
        """Deferred → sorted list of the room's member user ids."""

    def is_member(room_id, user_id):
        """Deferred → bool."""

    def invalidate(user_ids=(), room_ids=()):
        """Forget what is cached about these users (profile, buddies, rooms) and rooms
        (room, members), so the next read asks again. Returns None."""
