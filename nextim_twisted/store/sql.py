"""The SQL storage backend: SQLite (default) and PostgreSQL over adbapi.

One set of SQL text serves both dialects: queries are written with ``?`` placeholders
and :func:`translate` turns them into ``%s`` for psycopg. Every public method runs in
exactly one ``runInteraction`` (one transaction), so a write is either fully stored or
not at all, and a message is committed before its Deferred fires (docs/design.md#d7-messages).

Shapes of the returned rows are those of :mod:`nextim_twisted.store.base`.
"""

import re
import time

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger

from nextim_twisted.store import schema
from nextim_twisted.store.base import SchemaError, Store  # noqa: F401 (re-export)

log = Logger()

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA", "0", "1", "2", "3"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CHUNK = 500  # ids per IN (...) list

_USER_COLS = "id, nick, pic_url, default_pic_url, url, password_hash"
_ROOM_SELECT = (
    "SELECT r.id, r.nick, r.pic_url, r.url, "
    "(SELECT COUNT(*) FROM room_members c WHERE c.room_id = r.id) AS all_count "
    "FROM rooms r")
_MSG_COLS = "id, type, from_id, to_id, nick, body, style, timestamp, client_id"


def translate(sql, dialect):
    """Return ``sql`` (written with ``?`` placeholders) in the paramstyle of ``dialect``:
    unchanged for "sqlite" (qmark), ``?`` → ``%s`` for "postgres" (psycopg format).
    SQL text in this module never contains ``?`` or ``%`` in literals."""
    if dialect == "postgres":
        return sql.replace("?", "%s")
    return sql


def _user(row):
    return {"id": str(row[0]), "nick": row[1], "pic_url": row[2],
            "default_pic_url": row[3], "url": row[4], "password_hash": row[5]}


def _room(row):
    return {"id": str(row[0]), "nick": row[1], "pic_url": row[2], "url": row[3],
            "all_count": int(row[4])}


def _message(row):
    return {"id": int(row[0]), "type": row[1], "from": row[2], "to": row[3],
            "nick": row[4], "body": row[5], "style": row[6] or "",
            "timestamp": int(row[7]), "client_id": row[8]}


def _notification(row):
    return {"id": int(row[0]), "text": row[1], "link": row[2], "time": int(row[3])}


def _chunks(seq):
    seq = list(seq)
    for i in range(0, len(seq), _CHUNK):
        yield seq[i:i + _CHUNK]


def _marks(n):
    return ", ".join("?" * n)


def _operation(fn):
    """The store method a query function belongs to: ``SQLStore.get_user.<locals>.q``
    → ``get_user`` (one bounded metrics label per method)."""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "query")
    return qualname.split(".<locals>.")[0].rsplit(".", 1)[-1]


class _Cursor:
    """Thin wrapper over an adbapi Transaction: dialect placeholders, fetch helpers."""

    def __init__(self, trans, dialect):
        self._t = trans
        self._dialect = dialect

    def execute(self, sql, params=()):
        params = tuple(params)
        if self._dialect == "postgres":
            self._t.execute(translate(sql, "postgres"), params if params else None)
        else:
            self._t.execute(sql, params)
        return self

    def one(self):
        return self._t.fetchone()

    def all(self):
        return self._t.fetchall()

    @property
    def rowcount(self):
        return self._t.rowcount


class SQLStore(Store):
    """:class:`~nextim_twisted.store.base.Store` over ``twisted.enterprise.adbapi``.

    Build it with :meth:`sqlite` or :meth:`postgres`, then ``yield store.start()``
    (creates/upgrades the schema, raises :class:`SchemaError` for a newer database)
    and ``store.close()`` at shutdown.

    Attributes: ``dialect`` ("sqlite" or "postgres"), ``location`` (file path or DSN),
    ``schema`` (PostgreSQL schema name or ``None``), ``pool`` (the adbapi
    ConnectionPool, for tools and tests).

    Additions to the base interface: :meth:`message_count`, :meth:`schema_version`,
    :attr:`schema_versions` (set by :meth:`start`).
    """

    def __init__(self, pool, dialect, location, schema_name=None, clock=None):
        """Wrap an already-built (not yet started) ConnectionPool. Prefer the
        :meth:`sqlite`/:meth:`postgres` factories. ``clock`` is a callable → ms
        used for ``users.created`` (default: wall clock)."""
        self.pool = pool
        self.dialect = dialect
        self.location = location
        self.schema = schema_name
        self._now_ms = clock or (lambda: int(time.time() * 1000))
        self.schema_versions = None

    # construction --------------------------------------------------------
    @classmethod
    def sqlite(cls, path, synchronous="FULL", reactor=None, busy_timeout_ms=5000):
        """A store on the SQLite file ``path`` (":memory:" for a throw-away database).

        One connection on one thread (``cp_min = cp_max = 1``, never reconnected, so an
        in-memory database lives as long as the store), ``check_same_thread=False``,
        WAL journal, ``PRAGMA synchronous = <synchronous>`` (OFF, NORMAL, FULL or EXTRA;
        FULL by default so a committed message survives a power cut, docs/design.md#d7-messages), and a
        busy timeout so ``nextimctl`` may write the same file concurrently.
        Raises ValueError for an unknown ``synchronous`` value.
        """
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ValueError("synchronous must be one of OFF, NORMAL, FULL, EXTRA: %r"
                             % (synchronous,))
        timeout = int(busy_timeout_ms)

        def openfun(conn):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode = WAL")
            cur.fetchall()
            cur.execute("PRAGMA synchronous = %s" % sync)
            cur.execute("PRAGMA busy_timeout = %d" % timeout)
            cur.close()

        kw = {}
        if reactor is not None:
            kw["cp_reactor"] = reactor
        pool = adbapi.ConnectionPool(
            "sqlite3", path, check_same_thread=False,
            # autocommit at the driver level; every interaction issues its own BEGIN
            # so DDL and DML alike are transactional.
            isolation_level=None,
            cp_min=1, cp_max=1, cp_reconnect=False, cp_openfun=openfun, **kw)
        return cls(pool, "sqlite", path)

    @classmethod
    def postgres(cls, dsn, schema=None, reactor=None, cp_min=1, cp_max=5):
        """A store on PostgreSQL through psycopg 3 (libpq ``dsn``), pool of
        ``cp_min``..``cp_max`` connections, reconnecting after a lost connection.

        With ``schema`` (a plain identifier, else ValueError) every new connection
        creates the schema if missing and sets ``search_path`` to it, so several
        deployments or test runs share one database.
        """
        if schema is not None and not _IDENT.match(schema):
            raise ValueError("schema must be a plain SQL identifier: %r" % (schema,))

        def openfun(conn):
            if schema is None:
                return
            cur = conn.cursor()
            try:
                cur.execute('CREATE SCHEMA IF NOT EXISTS "%s"' % schema)
                conn.commit()
            except Exception:
                # lost a creation race with another connection, or no CREATE right
                conn.rollback()
            # committed so a later rollback cannot undo it
            cur.execute('SET search_path TO "%s"' % schema)
            conn.commit()
            cur.close()

        kw = {}
        if reactor is not None:
            kw["cp_reactor"] = reactor
        pool = adbapi.ConnectionPool(
            "psycopg", dsn, cp_min=cp_min, cp_max=cp_max, cp_reconnect=True,
            cp_openfun=openfun, **kw)
        return cls(pool, "postgres", dsn, schema)

    # plumbing ------------------------------------------------------------
    #: ``callable(operation, seconds)`` told how long each transaction took (pool wait
    #: included), ``operation`` being the store method's name (``get_user`` …); set by
    #: the metrics (docs/deployment.md#5-metrics, web/metrics.py). None: no timing.
    observe_query = None

    def _run(self, fn, *args, write=True):
        """Run ``fn(cursor, *args)`` in one transaction on a pool thread."""
        d = self.pool.runInteraction(self._interaction, fn, write, args)
        if self.observe_query is not None:
            d.addBoth(self._observed, _operation(fn), time.perf_counter())
        return d

    def _observed(self, result, operation, started):
        try:
            self.observe_query(operation, time.perf_counter() - started)
        except Exception:
            log.failure("observe_query failed")
        return result

    def transaction(self, fn, *args, write=True):
        """Public form of :meth:`_run` for add-on tables kept outside this module (the
        XMPP bridge's: ``nextim_twisted/xmpp/store.py``): ``fn(cursor, *args)``
        in one transaction; ``cursor.execute(sql, params)`` takes ``?`` placeholders and
        returns the cursor (``.one()``, ``.all()``, ``.rowcount``). Deferred → ``fn``'s result."""
        return self._run(fn, *args, write=write)

    def _interaction(self, trans, fn, write, args):
        if self.dialect == "sqlite":
            # IMMEDIATE takes the write lock up front: no deadlock-prone upgrade.
            trans.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        return fn(_Cursor(trans, self.dialect), *args)

    # lifecycle -----------------------------------------------------------
    def start(self):
        """Start the pool and create or upgrade the schema in one transaction
        (PostgreSQL: under an advisory lock, so concurrent starts are safe).
        Deferred → None; fails with SchemaError for a newer database, after
        closing the pool. Afterwards :attr:`schema_versions` is
        ``(version before, version after)`` (``nextimctl migrate`` prints it)."""
        if not self.pool.running:
            self.pool.start()

        def _migrate(c):
            if self.dialect == "postgres":
                c.execute("SELECT pg_advisory_xact_lock(7454113)")
                c.one()
            return schema.migrate(c.execute, c.one, self.dialect)

        def done(versions):
            self.schema_versions = versions
            old, new = versions
            if old != new:
                log.info("database schema {old} -> {new} ({dialect})",
                         old=old, new=new, dialect=self.dialect)

        def failed(f):
            self.pool.close()
            return f

        d = self._run(_migrate)
        d.addCallbacks(done, failed)
        return d

    def close(self):
        """Stop the pool threads and close the connections (waits for running
        queries). Idempotent. Deferred → None."""
        if self.pool.running or self.pool.connections:
            self.pool.close()
        return defer.succeed(None)

    def ping(self):
        """Deferred → True after a ``SELECT 1``; fails if the database is unreachable."""
        def q(c):
            c.execute("SELECT 1")
            c.one()
            return True
        return self._run(q, write=False)

    def schema_version(self):
        """Deferred → the schema version recorded in the database (int, 0 if none)."""
        def q(c):
            c.execute("SELECT MAX(version) FROM schema_version")
            row = c.one()
            return int(row[0]) if row and row[0] is not None else 0
        return self._run(q, write=False)

    # users ---------------------------------------------------------------
    def get_user(self, user_id):
        """Deferred → user dict or None."""
        def q(c):
            row = c.execute("SELECT %s FROM users WHERE id = ?" % _USER_COLS,
                            (user_id,)).one()
            return _user(row) if row else None
        return self._run(q, write=False)

    def get_users(self, user_ids):
        """Deferred → ``{id: user dict}`` for the ids that exist."""
        ids = sorted(set(user_ids))

        def q(c):
            out = {}
            for part in _chunks(ids):
                for row in c.execute("SELECT %s FROM users WHERE id IN (%s)"
                                     % (_USER_COLS, _marks(len(part))), part).all():
                    u = _user(row)
                    out[u["id"]] = u
            return out
        if not ids:
            return defer.succeed({})
        return self._run(q, write=False)

    def list_users(self, limit=1000, offset=0):
        """Deferred → list of user dicts ordered by id (``limit``/``offset`` paging)."""
        def q(c):
            return [_user(r) for r in c.execute(
                "SELECT %s FROM users ORDER BY id LIMIT ? OFFSET ?" % _USER_COLS,
                (int(limit), int(offset))).all()]
        return self._run(q, write=False)

    def put_user(self, user_id, nick, pic_url=None, default_pic_url=None, url=None):
        """Upsert: profile fields are replaced by the given values (None included);
        ``password_hash`` and ``created`` (ms) of an existing user are kept.
        Deferred → None."""
        def q(c):
            c.execute(
                "INSERT INTO users (id, nick, pic_url, default_pic_url, url, created) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "nick = excluded.nick, pic_url = excluded.pic_url, "
                "default_pic_url = excluded.default_pic_url, url = excluded.url",
                (user_id, nick, pic_url, default_pic_url, url, self._now_ms()))
        return self._run(q)

    def set_password_hash(self, user_id, password_hash):
        """Set (None clears) the hash and move the user's login epoch on, so that login
        cookies issued before no longer count (docs/design.md#d19-session-lifetime).
        Deferred → bool (the user exists)."""
        def q(c):
            return c.execute("UPDATE users SET password_hash = ?, login_epoch = login_epoch + 1 WHERE id = ?",
                             (password_hash, user_id)).rowcount > 0
        return self._run(q)

    def delete_user(self, user_id):
        """Delete the user, both sides of their buddy relations, their room
        memberships, settings and notifications; messages stay. Deferred → bool."""
        def q(c):
            c.execute("DELETE FROM buddies WHERE user_id = ? OR buddy_id = ?",
                      (user_id, user_id))
            c.execute("DELETE FROM room_members WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM settings WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM notifications WHERE user_id = ?", (user_id,))
            return c.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0
        return self._run(q)

    # buddies -------------------------------------------------------------
    def get_buddies(self, user_id):
        """Deferred → ``[(buddy_id, group or None), ...]`` ordered by buddy id."""
        def q(c):
            return [(str(r[0]), r[1]) for r in c.execute(
                "SELECT buddy_id, grp FROM buddies WHERE user_id = ? ORDER BY buddy_id",
                (user_id,)).all()]
        return self._run(q, write=False)

    def put_buddy(self, user_id, buddy_id, group=None):
        """Symmetric: ``group`` set on ``user_id``'s side; the other side keeps its
        group, or gets ``group`` when new. Deferred → None."""
        def q(c):
            c.execute("INSERT INTO buddies (user_id, buddy_id, grp) VALUES (?, ?, ?) "
                      "ON CONFLICT (user_id, buddy_id) DO UPDATE SET grp = excluded.grp",
                      (user_id, buddy_id, group))
            c.execute("INSERT INTO buddies (user_id, buddy_id, grp) VALUES (?, ?, ?) "
                      "ON CONFLICT (user_id, buddy_id) DO NOTHING",
                      (buddy_id, user_id, group))
        return self._run(q)

    def delete_buddy(self, user_id, buddy_id):
        """Remove both sides. Deferred → bool (either side existed)."""
        def q(c):
            return c.execute(
                "DELETE FROM buddies WHERE (user_id = ? AND buddy_id = ?) "
                "OR (user_id = ? AND buddy_id = ?)",
                (user_id, buddy_id, buddy_id, user_id)).rowcount > 0
        return self._run(q)

    # rooms ---------------------------------------------------------------
    def get_room(self, room_id):
        """Deferred → room dict (with ``all_count``) or None."""
        def q(c):
            row = c.execute(_ROOM_SELECT + " WHERE r.id = ?", (room_id,)).one()
            return _room(row) if row else None
        return self._run(q, write=False)

    def get_rooms(self, room_ids):
        """Deferred → ``{id: room dict}`` for the ids that exist."""
        ids = sorted(set(room_ids))

        def q(c):
            out = {}
            for part in _chunks(ids):
                for row in c.execute(_ROOM_SELECT + " WHERE r.id IN (%s)"
                                     % _marks(len(part)), part).all():
                    r = _room(row)
                    out[r["id"]] = r
            return out
        if not ids:
            return defer.succeed({})
        return self._run(q, write=False)

    def list_rooms(self):
        """Deferred → list of all room dicts ordered by id."""
        def q(c):
            return [_room(r) for r in c.execute(_ROOM_SELECT + " ORDER BY r.id").all()]
        return self._run(q, write=False)

    def put_room(self, room_id, nick, pic_url=None, url=None):
        """Upsert; fields replaced by the given values. Deferred → None."""
        def q(c):
            c.execute("INSERT INTO rooms (id, nick, pic_url, url) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (id) DO UPDATE SET nick = excluded.nick, "
                      "pic_url = excluded.pic_url, url = excluded.url",
                      (room_id, nick, pic_url, url))
        return self._run(q)

    def delete_room(self, room_id):
        """Delete the room and its memberships; history stays. Deferred → bool."""
        def q(c):
            c.execute("DELETE FROM room_members WHERE room_id = ?", (room_id,))
            return c.execute("DELETE FROM rooms WHERE id = ?", (room_id,)).rowcount > 0
        return self._run(q)

    def rooms_of_user(self, user_id):
        """Deferred → room dicts (with ``all_count``) the user belongs to, by id."""
        def q(c):
            return [_room(r) for r in c.execute(
                _ROOM_SELECT + " JOIN room_members m ON m.room_id = r.id "
                "WHERE m.user_id = ? ORDER BY r.id", (user_id,)).all()]
        return self._run(q, write=False)

    def room_member_ids(self, room_id):
        """Deferred → sorted list of member user ids."""
        def q(c):
            return [str(r[0]) for r in c.execute(
                "SELECT user_id FROM room_members WHERE room_id = ? ORDER BY user_id",
                (room_id,)).all()]
        return self._run(q, write=False)

    def is_member(self, room_id, user_id):
        """Deferred → bool."""
        def q(c):
            return c.execute("SELECT 1 FROM room_members WHERE room_id = ? "
                             "AND user_id = ?", (room_id, user_id)).one() is not None
        return self._run(q, write=False)

    def put_member(self, room_id, user_id):
        """Idempotent. Deferred → None."""
        def q(c):
            c.execute("INSERT INTO room_members (room_id, user_id) VALUES (?, ?) "
                      "ON CONFLICT (room_id, user_id) DO NOTHING", (room_id, user_id))
        return self._run(q)

    def delete_member(self, room_id, user_id):
        """Deferred → bool (was a member)."""
        def q(c):
            return c.execute("DELETE FROM room_members WHERE room_id = ? AND user_id = ?",
                             (room_id, user_id)).rowcount > 0
        return self._run(q)

    # messages ------------------------------------------------------------
    def add_message(self, type, from_id, to_id, nick, body, style, timestamp, delivered, also=None):
        """Insert and commit one message (docs/design.md#d7-messages); ``timestamp`` in ms, ``style`` None
        stored as "". ``also(cursor, message)``, when given, runs in the same
        transaction after the insert (the webhook outbox's rows,
        docs/design.md#d22-the-site-as-source-of-truth). Deferred (fires after COMMIT)
        → message dict with int ``id``."""
        style = style or ""
        timestamp = int(timestamp)

        def q(c):
            row = c.execute(
                "INSERT INTO messages (type, from_id, to_id, nick, body, style, "
                "timestamp, delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (type, from_id, to_id, nick, body, style, timestamp,
                 1 if delivered else 0)).one()
            message = {"id": int(row[0]), "type": type, "from": from_id, "to": to_id,
                       "nick": nick, "body": body, "style": style, "timestamp": timestamp,
                       "client_id": None}
            if also is not None:
                also(c, message)
            return message
        return self._run(q)

    def undelivered(self, user_id, limit=50):
        """The oldest ``limit`` undelivered unicast messages to ``user_id``, oldest
        first (docs/design.md#d10-history). Deferred → list of message dicts."""
        def q(c):
            return [_message(r) for r in c.execute(
                "SELECT %s FROM messages WHERE to_id = ? AND delivered = 0 "
                "AND type = 'unicast' ORDER BY id LIMIT ?" % _MSG_COLS,
                (user_id, int(limit))).all()]
        return self._run(q, write=False)

    def mark_delivered(self, message_ids):
        """Mark the messages delivered (one transaction). Deferred → sorted list of the
        ids this call changed from undelivered to delivered: of two concurrent callers
        with the same ids, each id is returned to one only (exactly-once hand-over of
        ``new_messages``, docs/design.md#d6-comet-envelope/docs/design.md#d10-history)."""
        ids = sorted({int(i) for i in message_ids})

        def q(c):
            taken = []
            for part in _chunks(ids):
                taken += [int(r[0]) for r in c.execute(
                    "UPDATE messages SET delivered = 1 WHERE delivered = 0 AND id IN (%s) "
                    "RETURNING id" % _marks(len(part)), part).all()]
            return sorted(taken)
        if not ids:
            return defer.succeed([])
        return self._run(q)

    def mark_undelivered(self, message_ids):
        """Give messages back for a later ``online``: a backlog page marked for a session
        that ended before it could be queued (docs/design.md#d18-the-whole-backlog).
        Deferred → None."""
        ids = sorted({int(i) for i in message_ids})

        def q(c):
            for part in _chunks(ids):
                c.execute("UPDATE messages SET delivered = 0 WHERE id IN (%s)" % _marks(len(part)), part)
        if not ids:
            return defer.succeed(None)
        return self._run(q)

    def unicast_history(self, user_id, other_id, limit=30):
        """Newest ``limit`` unicast messages between the two, oldest first, as seen
        by ``user_id``: without rows ``user_id`` cleared and without undelivered
        incoming ones (those are ``new_messages``, docs/design.md#d10-history); undelivered outgoing ones are
        included. Deferred → list of message dicts."""
        limit = int(limit)

        def q(c):
            out = ("SELECT %s FROM messages WHERE from_id = ? AND to_id = ? "
                   "AND type = 'unicast' AND from_cleared = 0 "
                   "ORDER BY id DESC LIMIT ?" % _MSG_COLS)
            if user_id == other_id:
                rows = c.execute(out, (user_id, user_id, limit)).all()
            else:
                inc = ("SELECT %s FROM messages WHERE from_id = ? AND to_id = ? "
                       "AND type = 'unicast' AND to_cleared = 0 AND delivered = 1 "
                       "ORDER BY id DESC LIMIT ?" % _MSG_COLS)
                rows = c.execute(
                    "SELECT * FROM (SELECT * FROM (%s) AS o UNION ALL "
                    "SELECT * FROM (%s) AS i) AS h ORDER BY id DESC LIMIT ?" % (out, inc),
                    (user_id, other_id, limit, other_id, user_id, limit, limit)).all()
            return [_message(r) for r in reversed(rows)]
        return self._run(q, write=False)

    def room_history(self, room_id, limit=30):
        """Newest ``limit`` multicast messages of the room, oldest first (membership
        is checked by the caller, docs/design.md#d10-history). Deferred → list of message dicts."""
        def q(c):
            rows = c.execute(
                "SELECT %s FROM messages WHERE type = 'multicast' AND to_id = ? "
                "ORDER BY id DESC LIMIT ?" % _MSG_COLS, (room_id, int(limit))).all()
            return [_message(r) for r in reversed(rows)]
        return self._run(q, write=False)

    def clear_history(self, user_id, other_id):
        """Hide the pair's unicast history from ``user_id``'s side: everything sent
        by ``user_id`` and everything *delivered* to them (undelivered incoming
        messages are not yet history, docs/design.md#d10-history, and stay). Rows hidden from both sides are
        deleted, in the same transaction. Deferred → None."""
        def q(c):
            c.execute("UPDATE messages SET from_cleared = 1 WHERE from_id = ? "
                      "AND to_id = ? AND type = 'unicast'", (user_id, other_id))
            c.execute("UPDATE messages SET to_cleared = 1 WHERE from_id = ? "
                      "AND to_id = ? AND type = 'unicast' AND delivered = 1",
                      (other_id, user_id))
            c.execute("DELETE FROM messages WHERE type = 'unicast' AND from_cleared = 1 "
                      "AND to_cleared = 1 AND ((from_id = ? AND to_id = ?) "
                      "OR (from_id = ? AND to_id = ?))",
                      (user_id, other_id, other_id, user_id))
        return self._run(q)

    def message_count(self):
        """Deferred → number of stored message rows (int), for tests and stats."""
        def q(c):
            return int(c.execute("SELECT COUNT(*) FROM messages").one()[0])
        return self._run(q, write=False)

    def purge_messages(self, older_than_ms):
        """Delete every message (any type, delivered or not) whose ``timestamp`` is
        before ``older_than_ms`` (epoch ms), in one transaction (docs/operations.md#history-retention).
        Deferred → number of rows deleted (int)."""
        cutoff = int(older_than_ms)

        def q(c):
            return max(0, c.execute("DELETE FROM messages WHERE timestamp < ?",
                                    (cutoff,)).rowcount)
        return self._run(q)

    def export_messages(self, user_id=None, since_ms=None, after_id=0, limit=1000):
        """One page of history for export, in id (insertion) order: up to ``limit``
        message dicts with ``id > after_id``; only those sent by or addressed to
        ``user_id`` when given, only those with ``timestamp >= since_ms`` (ms) when
        given. Page on with ``after_id`` = the last id returned. Cleared rows are
        included (an export is the operator's view, not a user's). Deferred → list."""
        where, params = ["id > ?"], [int(after_id)]
        if user_id is not None:
            where.append("(from_id = ? OR to_id = ?)")
            params += [user_id, user_id]
        if since_ms is not None:
            where.append("timestamp >= ?")
            params.append(int(since_ms))
        params.append(int(limit))

        def q(c):
            return [_message(r) for r in c.execute(
                "SELECT %s FROM messages WHERE %s ORDER BY id LIMIT ?"
                % (_MSG_COLS, " AND ".join(where)), params).all()]
        return self._run(q, write=False)

    def stats_counts(self):
        """Row counts in one (read) transaction: ``{"users", "rooms", "messages",
        "undelivered"}`` (ints; ``undelivered`` = unicast messages not yet delivered,
        the ones a user gets as ``new_messages``, docs/design.md#d10-history). Deferred → dict."""
        def q(c):
            def count(sql):
                return int(c.execute(sql).one()[0])
            return {
                "users": count("SELECT COUNT(*) FROM users"),
                "rooms": count("SELECT COUNT(*) FROM rooms"),
                "messages": count("SELECT COUNT(*) FROM messages"),
                "undelivered": count("SELECT COUNT(*) FROM messages "
                                     "WHERE type = 'unicast' AND delivered = 0"),
            }
        return self._run(q, write=False)

    # settings ------------------------------------------------------------
    def get_setting(self, user_id):
        """Deferred → the stored JSON text (str) or None."""
        def q(c):
            row = c.execute("SELECT data FROM settings WHERE user_id = ?",
                            (user_id,)).one()
            return row[0] if row else None
        return self._run(q, write=False)

    def put_setting(self, user_id, json_text):
        """Store the text verbatim, replacing the old one (docs/design.md#d11-settings; the 8 KB limit is the
        handler's). Deferred → None."""
        def q(c):
            c.execute("INSERT INTO settings (user_id, data) VALUES (?, ?) "
                      "ON CONFLICT (user_id) DO UPDATE SET data = excluded.data",
                      (user_id, json_text))
        return self._run(q)

    # daemon metadata -----------------------------------------------------
    def get_or_create_meta(self, key, make_value):
        """The value stored under ``key`` (str); when absent, store ``make_value()``
        first (one transaction, so concurrent starters agree). Deferred → str."""
        def q(c):
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                      (key, make_value()))
            return c.execute("SELECT value FROM meta WHERE key = ?", (key,)).one()[0]
        return self._run(q)

    # notifications -------------------------------------------------------
    def add_notification(self, user_id, text, link, time_ms):
        """Store an unread notification (``time_ms`` in ms). Deferred → notification
        dict ``{"id", "text", "link", "time"}``."""
        time_ms = int(time_ms)

        def q(c):
            row = c.execute("INSERT INTO notifications (user_id, text, link, time, read) "
                            "VALUES (?, ?, ?, ?, 0) RETURNING id",
                            (user_id, text, link, time_ms)).one()
            return {"id": int(row[0]), "text": text, "link": link, "time": time_ms}
        return self._run(q)

    def take_unread_notifications(self, user_id, limit=50):
        """Up to ``limit`` unread notifications, newest first (by time, then id), marked
        read in the same transaction (docs/design.md#d12-notifications). Deferred → list of notification dicts."""
        def q(c):
            rows = c.execute("SELECT id, text, link, time FROM notifications "
                             "WHERE user_id = ? AND read = 0 "
                             "ORDER BY time DESC, id DESC LIMIT ?",
                             (user_id, int(limit))).all()
            ids = [r[0] for r in rows]
            for part in _chunks(ids):
                c.execute("UPDATE notifications SET read = 1 WHERE id IN (%s)"
                          % _marks(len(part)), part)
            return [_notification(r) for r in rows]
        return self._run(q)
