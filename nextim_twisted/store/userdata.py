"""Everything stored about one user, as one export or one erasure (schema version 3;
docs/operations.md "Erasure and export"), and the user's login epoch
(docs/design.md#d19-session-lifetime).

Runs on :meth:`SQLStore.transaction <nextim_twisted.store.sql.SQLStore.transaction>`
(SQLite and PostgreSQL alike): each function is one transaction. Every function
returns a Deferred.
"""

_MSG_COLS = ("id, type, from_id, to_id, nick, body, style, timestamp, delivered, "
             "from_cleared, to_cleared, client_id")


def _message(row):
    return {"id": int(row[0]), "type": row[1], "from": row[2], "to": row[3], "nick": row[4],
            "body": row[5], "style": row[6] or "", "timestamp": int(row[7]),
            "delivered": bool(row[8]), "from_cleared": bool(row[9]), "to_cleared": bool(row[10]),
            "client_id": row[11]}


def _their_messages(user_id):
    """WHERE clause and parameters of the user's messages: every message they sent
    (unicast, room, broadcast) and every unicast sent to them. Room messages of others
    and broadcasts are not theirs."""
    return ("(from_id = ? OR (to_id = ? AND type = 'unicast'))", (user_id, user_id))


def login_epoch(store, user_id):
    """Deferred → the user's login epoch (int), or None for an unknown user. A login
    cookie is good only while it carries the current epoch."""
    def q(c):
        row = c.execute("SELECT login_epoch FROM users WHERE id = ?", (user_id,)).one()
        return int(row[0]) if row else None
    return store.transaction(q, write=False)


def export_user(store, user_id):
    """Deferred → everything stored about the user, or None for an unknown user::

        {"user": {"id", "nick", "pic_url", "default_pic_url", "url", "created" (ms),
                  "has_password" (bool: the hash itself is a secret and stays out)},
         "buddies": [{"id", "group"}], "rooms": [room id, ...],
         "setting": the stored JSON text or None,
         "notifications": [{"id", "text", "link", "time" (ms), "read"}],
         "messages": [{"id", "type", "from", "to", "nick", "body", "style", "timestamp",
                       "delivered", "from_cleared", "to_cleared", "client_id"}] (by id),
         "xmpp_buddies": [{"jid", "nick", "group", "subscription"}]}

    Cleared messages are included: they are still stored until both sides cleared them.
    """
    def q(c):
        row = c.execute("SELECT id, nick, pic_url, default_pic_url, url, created, password_hash "
                        "FROM users WHERE id = ?", (user_id,)).one()
        if row is None:
            return None
        where, params = _their_messages(user_id)
        setting = c.execute("SELECT data FROM settings WHERE user_id = ?", (user_id,)).one()
        return {
            "user": {"id": str(row[0]), "nick": row[1], "pic_url": row[2], "default_pic_url": row[3],
                     "url": row[4], "created": int(row[5]), "has_password": bool(row[6])},
            "buddies": [{"id": str(r[0]), "group": r[1]} for r in c.execute(
                "SELECT buddy_id, grp FROM buddies WHERE user_id = ? ORDER BY buddy_id", (user_id,)).all()],
            "rooms": [str(r[0]) for r in c.execute(
                "SELECT room_id FROM room_members WHERE user_id = ? ORDER BY room_id", (user_id,)).all()],
            "setting": setting[0] if setting else None,
            "notifications": [{"id": int(r[0]), "text": r[1], "link": r[2], "time": int(r[3]),
                               "read": bool(r[4])} for r in c.execute(
                "SELECT id, text, link, time, read FROM notifications WHERE user_id = ? ORDER BY id",
                (user_id,)).all()],
            "messages": [_message(r) for r in c.execute(
                "SELECT %s FROM messages WHERE %s ORDER BY id" % (_MSG_COLS, where), params).all()],
            "xmpp_buddies": [{"jid": str(r[0]), "nick": r[1], "group": r[2], "subscription": r[3]}
                             for r in c.execute("SELECT jid, nick, grp, subscription FROM xmpp_buddies "
                                                "WHERE user_id = ? ORDER BY jid", (user_id,)).all()],
        }
    return store.transaction(q, write=False)


def erase_user(store, user_id):
    """Delete the user and everything stored about them, in one transaction: the
    directory entry, both sides of their buddy relations, room memberships, settings,
    notifications, XMPP pairings, every message they sent and every unicast sent to
    them. Their idempotency keys go too (nobody can send as an erased user).
    Deferred → bool (the user existed)."""
    def q(c):
        where, params = _their_messages(user_id)
        c.execute("DELETE FROM messages WHERE " + where, params)
        c.execute("DELETE FROM message_keys WHERE sender_id = ?", (user_id,))
        c.execute("DELETE FROM xmpp_buddies WHERE user_id = ?", (user_id,))
        c.execute("DELETE FROM buddies WHERE user_id = ? OR buddy_id = ?", (user_id, user_id))
        c.execute("DELETE FROM room_members WHERE user_id = ?", (user_id,))
        c.execute("DELETE FROM settings WHERE user_id = ?", (user_id,))
        c.execute("DELETE FROM notifications WHERE user_id = ?", (user_id,))
        return c.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0
    return store.transaction(q)
