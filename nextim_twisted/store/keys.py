"""Idempotent sends (schema version 3; docs/design.md#d17-idempotent-sends): a message
stored together with its sender's ``client_id``, at most once per (sender, client_id).

The key's record is the table ``message_keys``, written in the same transaction as the
message: a retry that finds the key stores nothing. ``digest`` fingerprints the content
(type, recipient, body, style), so a reuse of the key for another message is told apart
from a retry. Keys outlive the message row (clear history, retention) until
:func:`purge` drops those older than ``[limits] client_id_hours``.

Two retries at once: SQLite runs one write transaction at a time (``BEGIN IMMEDIATE``);
PostgreSQL makes the second ``INSERT ... ON CONFLICT DO NOTHING`` wait for the first
transaction and then see its row, so exactly one of them stores the message.

Every function is one transaction on :meth:`SQLStore.transaction
<nextim_twisted.store.sql.SQLStore.transaction>` and returns a Deferred.
"""
import hashlib
import json

#: What :func:`add_message_once` found.
NEW, SAME, OTHER = "new", "same", "other"


def digest(type_, to_id, body, style):
    """The content fingerprint of a message (hex SHA-256 of its JSON-encoded parts)."""
    text = json.dumps([type_, to_id, body, style or ""], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def add_message_once(store, type_, from_id, to_id, nick, body, style, timestamp, delivered, client_id,
                     also=None):
    """Store a message under its sender's ``client_id`` unless the key is known.

    :returns: Deferred → ``(NEW, message dict)`` when stored now (the dict as
        :meth:`~nextim_twisted.store.sql.SQLStore.add_message` returns it, with
        ``client_id``); ``(SAME, message id or None)`` when the key is known with the
        same content (nothing stored); ``(OTHER, message id or None)`` when the key was
        used for other content (nothing stored). The id is None if that message was
        deleted since. ``also(cursor, message)`` runs in the same transaction after a new
        message's insert, as for ``add_message`` (the webhook outbox).
    """
    style = style or ""
    timestamp = int(timestamp)
    fingerprint = digest(type_, to_id, body, style)

    def q(c):
        inserted = c.execute(
            "INSERT INTO message_keys (sender_id, client_id, digest, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (sender_id, client_id) DO NOTHING", (from_id, client_id, fingerprint, timestamp)).rowcount
        if not inserted:
            row = c.execute("SELECT digest, message_id FROM message_keys WHERE sender_id = ? AND client_id = ?",
                            (from_id, client_id)).one()
            found = int(row[1]) if row[1] is not None else None
            return (SAME if row[0] == fingerprint else OTHER), found
        row = c.execute(
            "INSERT INTO messages (type, from_id, to_id, nick, body, style, timestamp, delivered, client_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (type_, from_id, to_id, nick, body, style, timestamp, 1 if delivered else 0, client_id)).one()
        message_id = int(row[0])
        c.execute("UPDATE message_keys SET message_id = ? WHERE sender_id = ? AND client_id = ?",
                  (message_id, from_id, client_id))
        message = {"id": message_id, "type": type_, "from": from_id, "to": to_id, "nick": nick,
                   "body": body, "style": style, "timestamp": timestamp, "client_id": client_id}
        if also is not None:
            also(c, message)
        return NEW, message
    return store.transaction(q)


def find(store, from_id, client_id):
    """Deferred → ``(digest, message id or None)`` of a known key, or None."""
    def q(c):
        row = c.execute("SELECT digest, message_id FROM message_keys WHERE sender_id = ? AND client_id = ?",
                        (from_id, client_id)).one()
        return (row[0], int(row[1]) if row[1] is not None else None) if row else None
    return store.transaction(q, write=False)


def purge(store, older_than_ms):
    """Forget keys created before ``older_than_ms`` (epoch ms). Deferred → count."""
    def q(c):
        return max(0, c.execute("DELETE FROM message_keys WHERE created < ?", (int(older_than_ms),)).rowcount)
    return store.transaction(q)
