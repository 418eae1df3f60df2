"""What ``online`` reads, in two read transactions (docs/design.md#d3-online).

``online`` used to make six storage calls (user, settings, buddies, rooms, undelivered
messages, buddy profiles), each a transaction of its own on the pool thread. Under a
restart herd the SQLite thread, which serialises them, was the bottleneck and the
reactor waited on it (bench/, recovery phase, docs/benchmarks.md): the directory part
is one transaction (:func:`directory_snapshot`), read before the session opens, and the
undelivered messages another (:func:`backlog_head`), read after it opens, so that a
message stored meanwhile is either in it or routed to the new session.

Runs on :meth:`SQLStore.transaction <nextim_twisted.store.sql.SQLStore.transaction>`;
the row shapes are those of :mod:`nextim_twisted.store.sql`.
"""
from . import sql


def directory_snapshot(store, user_id, extra_ids=()):
    """Deferred → ``{"profile": user dict or None, "setting": stored JSON text or None,
    "buddies": [(buddy id, group or None)] by id, "rooms": [room dict] by id,
    "profiles": {id: user dict}}`` for the buddies and ``extra_ids`` that exist: what
    ``online`` needs before it opens the session, in one read transaction."""
    extra_ids = list(extra_ids)

    def q(c):
        row = c.execute("SELECT %s FROM users WHERE id = ?" % sql._USER_COLS, (user_id,)).one()
        setting = c.execute("SELECT data FROM settings WHERE user_id = ?", (user_id,)).one()
        buddies = [(str(r[0]), r[1]) for r in c.execute(
            "SELECT buddy_id, grp FROM buddies WHERE user_id = ? ORDER BY buddy_id", (user_id,)).all()]
        rooms = [sql._room(r) for r in c.execute(
            sql._ROOM_SELECT + " JOIN room_members m ON m.room_id = r.id "
            "WHERE m.user_id = ? ORDER BY r.id", (user_id,)).all()]
        wanted = sorted({b for b, _ in buddies} | set(extra_ids))
        return {"profile": sql._user(row) if row else None, "setting": setting[0] if setting else None,
                "buddies": buddies, "rooms": rooms, "profiles": _users(c, wanted)}
    return store.transaction(q, write=False)


def backlog_head(store, user_id, limit):
    """Deferred → ``(the oldest `limit` undelivered unicasts to the user, oldest first,
    how many undelivered there are in all)``: ``new_messages`` and, from the count,
    ``new_messages_pending`` (docs/design.md#d18-the-whole-backlog), in one read."""
    def q(c):
        rows = [sql._message(r) for r in c.execute(
            "SELECT %s FROM messages WHERE to_id = ? AND delivered = 0 "
            "AND type = 'unicast' ORDER BY id LIMIT ?" % sql._MSG_COLS, (user_id, int(limit))).all()]
        total = len(rows)
        if total >= int(limit):
            total = int(c.execute("SELECT COUNT(*) FROM messages WHERE to_id = ? AND delivered = 0 "
                                  "AND type = 'unicast'", (user_id,)).one()[0])
        return rows, total
    return store.transaction(q, write=False)


def _users(c, ids):
    profiles = {}
    for part in sql._chunks(ids):
        for r in c.execute("SELECT %s FROM users WHERE id IN (%s)"
                           % (sql._USER_COLS, sql._marks(len(part))), part).all():
            u = sql._user(r)
            profiles[u["id"]] = u
    return profiles
