"""Versioned database schema shared by SQLite and PostgreSQL (docs/architecture.md#store).

The DDL is written once with ``{autoid}`` standing for the auto-increment primary key,
which :func:`ddl` substitutes per dialect. Every step of :data:`MIGRATIONS` is keyed by
the schema version it brings the database to; a later version only *appends* a step,
never edits an earlier one. :func:`migrate` runs inside one transaction (the caller's),
so a database is either fully upgraded or untouched.

The table ``schema_version(version INTEGER)`` holds a single row with the version the
database is at. A database at a version newer than :data:`SCHEMA_VERSION` (written by a
newer release) is refused with :class:`~nextim_twisted.store.base.SchemaError`.

Time columns (``users.created``, ``messages.timestamp``, ``notifications.time``) are
integer milliseconds since the epoch; flags (``delivered``, ``from_cleared``,
``to_cleared``, ``read``) are INTEGER 0/1 so both dialects agree.
"""

from nextim_twisted.store.base import SchemaError

#: Per-dialect substitutions for the portable DDL.
DIALECTS = {
    # AUTOINCREMENT so an id is never reused after the newest row is deleted
    # (message ids must be strictly increasing, base.py).
    "sqlite": {"autoid": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"autoid": "BIGSERIAL PRIMARY KEY"},
}

_V1 = (
    """CREATE TABLE users (
        id TEXT PRIMARY KEY,
        nick TEXT,
        pic_url TEXT,
        default_pic_url TEXT,
        url TEXT,
        password_hash TEXT,
        created BIGINT NOT NULL
    )""",
    # Two rows per symmetric relation, one per side, each with its own group.
    """CREATE TABLE buddies (
        user_id TEXT NOT NULL,
        buddy_id TEXT NOT NULL,
        grp TEXT,
        PRIMARY KEY (user_id, buddy_id)
    )""",
    "CREATE INDEX buddies_buddy ON buddies (buddy_id)",
    """CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        nick TEXT,
        pic_url TEXT,
        url TEXT
    )""",
    """CREATE TABLE room_members (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    )""",
    "CREATE INDEX room_members_user ON room_members (user_id, room_id)",
    """CREATE TABLE messages (
        id {autoid},
        type TEXT NOT NULL,
        from_id TEXT NOT NULL,
        to_id TEXT NOT NULL,
        nick TEXT,
        body TEXT NOT NULL,
        style TEXT NOT NULL DEFAULT '',
        timestamp BIGINT NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        from_cleared INTEGER NOT NULL DEFAULT 0,
        to_cleared INTEGER NOT NULL DEFAULT 0
    )""",
    # new_messages at online: WHERE to_id = ? AND delivered = 0 ORDER BY id (docs/design.md#d10-history).
    "CREATE INDEX messages_undelivered ON messages (to_id, delivered, id)",
    # unicast history: one range scan per direction of the pair, newest first.
    "CREATE INDEX messages_pair ON messages (from_id, to_id, id)",
    # room history: WHERE type = 'multicast' AND to_id = ? ORDER BY id DESC.
    "CREATE INDEX messages_room ON messages (type, to_id, id)",
    """CREATE TABLE settings (
        user_id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    )""",
    """CREATE TABLE notifications (
        id {autoid},
        user_id TEXT NOT NULL,
        text TEXT NOT NULL,
        link TEXT,
        time BIGINT NOT NULL,
        read INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX notifications_user ON notifications (user_id, read, time)",
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)

# Version 2: the XMPP bridge's tables (docs/xmpp.md, nextim_twisted/xmpp/store.py).
_V2 = (
    # A web user paired with an XMPP contact (bare JID) by the directory, with the
    # RFC 3921 subscription state from the web user's side: none/to/from/both, and
    # ask = 1 while our subscribe request is pending.
    """CREATE TABLE xmpp_buddies (
        user_id TEXT NOT NULL,
        jid TEXT NOT NULL,
        nick TEXT,
        grp TEXT,
        subscription TEXT NOT NULL DEFAULT 'none',
        ask INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, jid)
    )""",
    "CREATE INDEX xmpp_buddies_jid ON xmpp_buddies (jid)",
    # A room bridged to a XEP-0045 room (bare JID of the MUC room).
    """CREATE TABLE xmpp_rooms (
        room_id TEXT PRIMARY KEY,
        muc TEXT NOT NULL
    )""",
)

# Version 3: the second round of guarantees (docs/guarantees.md).
_V3 = (
    # Idempotent sends (docs/design.md#d17-idempotent-sends): the sender's key, shown
    # in history and packets ...
    "ALTER TABLE messages ADD COLUMN client_id TEXT",
    # ... and the key's record, unique per sender, kept [limits] client_id_hours even
    # when the message row itself is gone (cleared from both sides, erased): a retry
    # must never store twice. ``digest`` is of the content (type, to, body, style), so a
    # reuse with other content is told apart; ``message_id`` is NULL only inside the
    # storing transaction.
    """CREATE TABLE message_keys (
        sender_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        message_id BIGINT,
        created BIGINT NOT NULL,
        PRIMARY KEY (sender_id, client_id)
    )""",
    "CREATE INDEX message_keys_created ON message_keys (created)",
    # Session lifetime (docs/design.md#d19-session-lifetime): a login cookie carries the
    # epoch it was issued in; a password change moves the epoch on, so older cookies fail.
    "ALTER TABLE users ADD COLUMN login_epoch INTEGER NOT NULL DEFAULT 0",
    # Directory changes made outside a daemon (nextimctl, another node): each daemon
    # reads the rows after the last one it saw, about once a second, and applies them
    # to its live sessions. ``origin`` names the writer, so a daemon skips its own.
    """CREATE TABLE directory_changes (
        id {autoid},
        origin TEXT NOT NULL,
        kind TEXT NOT NULL,
        a TEXT NOT NULL,
        b TEXT,
        time BIGINT NOT NULL
    )""",
)

# Version 4: the webhook outbox (nextim_twisted/webhooks/outbox.py, docs/integration.md#webhooks).
_V4 = (
    # One row per event not yet taken by the site (answered 2xx). ``body`` is the JSON
    # POSTed, kept verbatim so every attempt sends the same bytes; ``created`` and
    # ``next_attempt`` are ms. A row is claimed by pushing ``next_attempt`` past the
    # request's timeout, so two daemons on one database do not send it at once.
    """CREATE TABLE webhook_outbox (
        id {autoid},
        event_id TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        created BIGINT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt BIGINT NOT NULL,
        last_error TEXT
    )""",
    # the worker's "what is due": WHERE next_attempt <= now ORDER BY id
    "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt, id)",
    # dropping what is older than [webhooks] max_age
    "CREATE INDEX webhook_outbox_created ON webhook_outbox (created)",
)

#: ``[(version, (statement, ...)), ...]`` in increasing version order. Append only.
MIGRATIONS = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
]

#: The schema version this code writes and understands.
SCHEMA_VERSION = 4

assert MIGRATIONS[-1][0] == SCHEMA_VERSION
assert [v for v, _ in MIGRATIONS] == sorted({v for v, _ in MIGRATIONS})


def ddl(version, dialect):
    """The statements of migration step ``version`` for ``dialect`` ("sqlite" or
    "postgres"), with the dialect substitutions applied. Raises KeyError for an
    unknown version or dialect."""
    subst = DIALECTS[dialect]
    for v, statements in MIGRATIONS:
        if v == version:
            return [s.format(**subst) for s in statements]
    raise KeyError(version)


def migrate(execute, fetchone, dialect):
    """Create or upgrade the schema in the caller's open transaction.

    ``execute(sql)`` runs one statement (no parameters, no placeholders);
    ``fetchone()`` returns the next row of the last statement. Returns
    ``(old_version, new_version)``; ``old_version`` is 0 for an empty database.

    Raises :class:`SchemaError` (message names both versions) if the database is at a
    version newer than :data:`SCHEMA_VERSION`; the caller rolls back.
    """
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    execute("SELECT MAX(version) FROM schema_version")
    row = fetchone()
    current = row[0] if row and row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise SchemaError(
            "database schema version %d is newer than this code's schema version %d; "
            "run a newer nextim-twisted (downgrades are not supported)"
            % (current, SCHEMA_VERSION))
    for version, _ in MIGRATIONS:
        if version <= current:
            continue
        for statement in ddl(version, dialect):
            execute(statement)
    if current != SCHEMA_VERSION:
        execute("DELETE FROM schema_version")
        execute("INSERT INTO schema_version (version) VALUES (%d)" % SCHEMA_VERSION)
    return current, SCHEMA_VERSION
