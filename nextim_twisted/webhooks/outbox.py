"""The webhook outbox table (schema version 4, :mod:`nextim_twisted.store.schema`):
events wait here until the site takes them, so they survive a restart
(docs/integration.md#webhooks).

Runs on :meth:`SQLStore.transaction <nextim_twisted.store.sql.SQLStore.transaction>`
(SQLite and PostgreSQL alike); :func:`insert` also runs inside another transaction
(a message's, ``add_message(..., also=...)``). Times are integer ms.
"""
import json
import secrets

#: An outbox row as the worker sees it.
#: ``{"id": int, "event_id": str, "event": str, "body": bytes, "attempts": int}``


def make_event(event, data, now_ms):
    """A new event as an outbox row ``(event_id, event, created_ms, body)``.

    The body is the JSON POSTed to the site:
    ``{"id": "evt_<32 hex>", "event": event, "timestamp": now_ms, "data": data}``.
    """
    event_id = "evt_" + secrets.token_hex(16)
    body = json.dumps({"id": event_id, "event": event, "timestamp": now_ms, "data": data},
                      ensure_ascii=False, separators=(",", ":"))
    return event_id, event, int(now_ms), body


def insert(cursor, rows):
    """Add ``rows`` (from :func:`make_event`) in the caller's transaction, due at once."""
    for event_id, event, created, body in rows:
        cursor.execute("INSERT INTO webhook_outbox (event_id, event, created, body, next_attempt) "
                       "VALUES (?, ?, ?, ?, ?)", (event_id, event, created, body, created))


class Outbox:
    """The outbox of one database. :param store: a started ``SQLStore``."""

    def __init__(self, store):
        self.store = store

    def add(self, rows):
        """Insert ``rows`` in one transaction. Deferred → None."""
        return self.store.transaction(insert, list(rows))

    def claim(self, now_ms, lease_ms, limit):
        """Take up to ``limit`` due rows (``next_attempt <= now_ms``), oldest first, and
        push their ``next_attempt`` to ``now_ms + lease_ms`` with ``attempts`` + 1, so no
        other worker takes them meanwhile; a worker that dies holding them lets them come
        due again after the lease. Deferred → list of row dicts (see module)."""
        def q(c):
            ids = [int(r[0]) for r in c.execute(
                "SELECT id FROM webhook_outbox WHERE next_attempt <= ? ORDER BY id LIMIT ?",
                (int(now_ms), int(limit))).all()]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            # ``next_attempt <= ?`` again: of two workers that read the same ids (PostgreSQL,
            # read committed) the second sees the first's update and takes nothing.
            rows = c.execute(
                "UPDATE webhook_outbox SET next_attempt = ?, attempts = attempts + 1 "
                "WHERE id IN (%s) AND next_attempt <= ? "
                "RETURNING id, event_id, event, body, attempts" % marks,
                (int(now_ms + lease_ms), *ids, int(now_ms))).all()
            return sorted(({"id": int(r[0]), "event_id": str(r[1]), "event": str(r[2]),
                            "body": str(r[3]).encode("utf-8"), "attempts": int(r[4])} for r in rows),
                          key=lambda row: row["id"])
        return self.store.transaction(q)

    def delivered(self, ids):
        """Remove rows the site took. Deferred → None."""
        ids = [int(i) for i in ids]

        def q(c):
            if ids:
                c.execute("DELETE FROM webhook_outbox WHERE id IN (%s)" % ", ".join("?" * len(ids)), ids)
        return self.store.transaction(q)

    def retry_at(self, failures):
        """``failures``: ``[(id, next_attempt_ms, error text)]``. Deferred → None."""
        def q(c):
            for id_, at, error in failures:
                c.execute("UPDATE webhook_outbox SET next_attempt = ?, last_error = ? WHERE id = ?",
                          (int(at), error[:500], int(id_)))
        return self.store.transaction(q)

    def drop_older_than(self, cutoff_ms):
        """Delete rows created before ``cutoff_ms``. Deferred → ``{event: n}`` removed."""
        def q(c):
            counts = {str(r[0]): int(r[1]) for r in c.execute(
                "SELECT event, COUNT(*) FROM webhook_outbox WHERE created < ? GROUP BY event",
                (int(cutoff_ms),)).all()}
            if counts:
                c.execute("DELETE FROM webhook_outbox WHERE created < ?", (int(cutoff_ms),))
            return counts
        return self.store.transaction(q)

    def summary(self):
        """Deferred → ``(rows waiting, earliest next_attempt ms or None)``."""
        def q(c):
            row = c.execute("SELECT COUNT(*), MIN(next_attempt) FROM webhook_outbox").one()
            return int(row[0]), (int(row[1]) if row[1] is not None else None)
        return self.store.transaction(q, write=False)

    def next_due(self):
        """Deferred → the earliest ``next_attempt`` (ms), or None when empty."""
        def q(c):
            row = c.execute("SELECT MIN(next_attempt) FROM webhook_outbox").one()
            return int(row[0]) if row and row[0] is not None else None
        return self.store.transaction(q, write=False)
