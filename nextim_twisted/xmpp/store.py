"""The XMPP bridge's tables (schema version 2, :mod:`nextim_twisted.store.schema`):
``xmpp_buddies`` (directory pairs web user ↔ bare JID with their RFC 3921
subscription state) and ``xmpp_rooms`` (room → XEP-0045 room JID).

Runs on :meth:`SQLStore.transaction <nextim_twisted.store.sql.SQLStore.transaction>`
(SQLite and PostgreSQL alike). Every method returns a Deferred.
"""
from .subscriptions import Subscription


class XmppStore:
    """:param store: a started :class:`~nextim_twisted.store.sql.SQLStore`."""

    def __init__(self, store):
        self.store = store

    def pairs(self):
        """Deferred → ``[{"user_id", "jid", "nick", "group", "subscription"}]`` for every
        pair, ``subscription`` a :class:`Subscription`; ordered by user then JID."""
        def q(c):
            rows = c.execute("SELECT user_id, jid, nick, grp, subscription, ask FROM xmpp_buddies "
                             "ORDER BY user_id, jid").all()
            return [{"user_id": str(r[0]), "jid": str(r[1]), "nick": r[2], "group": r[3],
                     "subscription": Subscription(r[4], bool(r[5]))} for r in rows]
        return self.store.transaction(q, write=False)

    def put_pair(self, user_id, jid, nick=None, group=None):
        """Create the pair (state ``none``) or update its nick and group, keeping the
        subscription state. Deferred → None."""
        def q(c):
            c.execute("INSERT INTO xmpp_buddies (user_id, jid, nick, grp) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (user_id, jid) DO UPDATE SET nick = excluded.nick, grp = excluded.grp",
                      (user_id, jid, nick, group))
        return self.store.transaction(q)

    def delete_pair(self, user_id, jid):
        """Deferred → bool (the pair existed)."""
        def q(c):
            return c.execute("DELETE FROM xmpp_buddies WHERE user_id = ? AND jid = ?",
                             (user_id, jid)).rowcount > 0
        return self.store.transaction(q)

    def delete_user(self, user_id):
        """Drop every pair of a web user. Deferred → number of pairs removed."""
        def q(c):
            return c.execute("DELETE FROM xmpp_buddies WHERE user_id = ?", (user_id,)).rowcount
        return self.store.transaction(q)

    def set_subscription(self, user_id, jid, sub):
        """Persist a pair's :class:`Subscription` (no-op for an unknown pair). Deferred → None."""
        def q(c):
            c.execute("UPDATE xmpp_buddies SET subscription = ?, ask = ? WHERE user_id = ? AND jid = ?",
                      (sub.state, 1 if sub.ask else 0, user_id, jid))
        return self.store.transaction(q)

    def rooms(self):
        """Deferred → ``{room_id: muc_room_jid}``."""
        def q(c):
            return {str(r[0]): str(r[1]) for r in c.execute("SELECT room_id, muc FROM xmpp_rooms").all()}
        return self.store.transaction(q, write=False)

    def put_room(self, room_id, muc):
        """Bridge ``room_id`` to the MUC room ``muc`` (bare JID). Deferred → None."""
        def q(c):
            c.execute("INSERT INTO xmpp_rooms (room_id, muc) VALUES (?, ?) "
                      "ON CONFLICT (room_id) DO UPDATE SET muc = excluded.muc", (room_id, muc))
        return self.store.transaction(q)

    def delete_room(self, room_id):
        """Deferred → bool (the room was bridged)."""
        def q(c):
            return c.execute("DELETE FROM xmpp_rooms WHERE room_id = ?", (room_id,)).rowcount > 0
        return self.store.transaction(q)
