"""The daemon's own directory tables as the directory (``[directory] provider =
"local"``, the default; docs/design.md#d14-directory). The admin API writes them and
keeps live sessions in step itself; reads go straight to the store."""
from twisted.internet import defer

from .base import IDirectory


class LocalDirectory(IDirectory):
    """:class:`~.base.IDirectory` over a :class:`~nextim_twisted.store.base.Store`."""

    provisions = True

    def __init__(self, store):
        self.store = store

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def profile(self, user_id):
        return self.store.get_user(user_id)

    def profiles(self, user_ids):
        return self.store.get_users(user_ids)

    def buddies(self, user_id):
        return self.store.get_buddies(user_id)

    def rooms_of(self, user_id):
        return self.store.rooms_of_user(user_id)

    def room(self, room_id):
        return self.store.get_room(room_id)

    def member_ids(self, room_id):
        return self.store.room_member_ids(room_id)

    def is_member(self, room_id, user_id):
        return self.store.is_member(room_id, user_id)

    def invalidate(self, user_ids=(), room_ids=()):
        """Nothing is cached: every read is the store's current state."""
