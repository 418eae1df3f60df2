"""What ``online`` reads, in one read transaction (docs/design.md#d3-online).

``online`` used to make six storage calls (user, settings, buddies, rooms, undelivered
messages, buddy profiles), each a transaction of its own on the pool thread. Under a
restart herd the SQLite thread, which serialises them, was the bottleneck and the
reactor waited on it (bench/, recovery phase): one transaction for all six reads
costs one thread hand-off and one BEGIN instead of six, and reads one consistent
state.

Runs on :meth:`SQLStore.transaction <nextim_twisted.store.sql.SQLStore.transaction>`;
the row shapes are those of :mod:`nextim_twisted.store.sql`.
"""
from . import sql


def online_snapshot(store, user_id, new_limit, extra_ids=()):
    """Deferred → ``{"profile": user dict or None, "setting": stored JSON text or None,
    "buddies": [(buddy id, group or None)] by id, "rooms": [room dict] by id,
    "undelivered": the oldest ``new_limit`` undelivered unicasts to the user (message
    dicts, oldest first), "profiles": {id: user dict}}``.

    ``profiles`` holds the users among the buddies, the senders of ``undelivered`` and
    ``extra_ids`` (the tabs and strangers the client asked for) that exist.
    """
    new_limit = int(new_limit)
    extra_ids = list(extra_ids)

    def q(c):
        row = c.execute("SELECT %s FROM users WHERE id = ?" % sql._USER_COLS, (user_id,)).one()
        setting = c.execute("SELECT data FROM settings WHERE user_id = ?", (user_id,)).one()
        buddies = [(str(r[0]), r[1]) for r in c.execute(
            "SELECT buddy_id, grp FROM buddies WHERE user_id = ? ORDER BY buddy_id", (user_id,)).all()]
        rooms = [sql._room(r) for r in c.execute(
            sql._ROOM_SELECT + " JOIN room_members m ON m.room_id = r.id "
            "WHERE m.user_id = ? ORDER BY r.id", (user_id,)).all()]
        undelivered = [sql._message(r) for r in c.execute(
            "SELECT %s FROM messages WHERE to_id = ? AND delivered = 0 "
            "AND type = 'unicast' ORDER BY id LIMIT ?" % sql._MSG_COLS, (user_id, new_limit)).all()]
        wanted = sorted({b for b, _ in buddies} | {m["from"] for m in undelivered} | set(extra_ids))
        profiles = {}
        for part in sql._chunks(wanted):
            for r in c.execute("SELECT %s FROM users WHERE id IN (%s)"
                               % (sql._USER_COLS, sql._marks(len(part))), part).all():
                u = sql._user(r)
                profiles[u["id"]] = u
        return {"profile": sql._user(row) if row else None, "setting": setting[0] if setting else None,
                "buddies": buddies, "rooms": rooms, "undelivered": undelivered, "profiles": profiles}
    return store.transaction(q, write=False)
