"""The ``directory_changes`` table (schema version 3): directory changes made outside
a daemon (``nextimctl``, another node's admin API), read by every running daemon so
that they act on live sessions at once (docs/design.md#d19-session-lifetime).

A change is ``(id, origin, kind, a, b)``: ``origin`` names the writer (a daemon skips
its own), ``kind`` one of :data:`KINDS`, ``a``/``b`` the ids it concerns. Rows are
append-only; :func:`purge` drops old ones. Every function is one transaction on
:meth:`SQLStore.transaction <nextim_twisted.store.sql.SQLStore.transaction>` and
returns a Deferred.
"""

#: kind → what ``a`` and ``b`` are.
KINDS = {
    "user_updated": ("user", None),
    "user_deleted": ("user", None),
    "password_changed": ("user", None),
    "buddy_added": ("user", "buddy"),
    "buddy_removed": ("user", "buddy"),
    "member_added": ("room", "user"),
    "member_removed": ("room", "user"),
    "room_deleted": ("room", None),
}


def add(store, origin, kind, a, b=None, time_ms=0):
    """Record one change. Deferred → its id (int). :raises ValueError: unknown kind."""
    if kind not in KINDS:
        raise ValueError(kind)

    def q(c):
        row = c.execute("INSERT INTO directory_changes (origin, kind, a, b, time) VALUES (?, ?, ?, ?, ?) "
                        "RETURNING id", (origin, kind, a, b, int(time_ms))).one()
        return int(row[0])
    return store.transaction(q)


def last_id(store):
    """Deferred → the id of the newest change (0 when none): where a starting daemon
    begins to read (its live state is empty, older changes are already in the tables)."""
    def q(c):
        row = c.execute("SELECT MAX(id) FROM directory_changes").one()
        return int(row[0]) if row and row[0] is not None else 0
    return store.transaction(q, write=False)


def after(store, change_id, limit=500):
    """Deferred → up to ``limit`` changes with ``id > change_id``, oldest first, as
    ``[{"id", "origin", "kind", "a", "b"}]``."""
    def q(c):
        return [{"id": int(r[0]), "origin": r[1], "kind": r[2], "a": r[3], "b": r[4]}
                for r in c.execute("SELECT id, origin, kind, a, b FROM directory_changes WHERE id > ? "
                                   "ORDER BY id LIMIT ?", (int(change_id), int(limit))).all()]
    return store.transaction(q, write=False)


def purge(store, older_than_ms):
    """Delete changes recorded before ``older_than_ms`` (epoch ms). Deferred → count."""
    def q(c):
        return max(0, c.execute("DELETE FROM directory_changes WHERE time < ?",
                                (int(older_than_ms),)).rowcount)
    return store.transaction(q)
