"""Schema versions across releases (docs/operations.md): a database written by the first released
schema (version 1) opens with the current code with its data intact, by the daemon's
store and by ``nextimctl migrate``; a database newer than the code stops a real
``twistd nextim`` with one log line naming both versions."""
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys

import pytest
import pytest_twisted

from nextim_twisted.auth import hash_password, verify_password
from nextim_twisted.store import schema
from nextim_twisted.store.sql import SQLStore
from tests.storefixtures import POSTGRES_DSN, STORE_KINDS, _drop_schema, skip_unless_enabled
from tests.test_ctl import Ctl

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 1_700_000_000_000  # ms
PASSWORD_HASH = hash_password("alice's password")
SETTING = '{"blocked_rooms": ["attic"], "sound": true, "nick": "Ünïcode"}'


class RawDB:
    """A database reached with the plain driver (no nextim code), for one test."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.path = str(tmp_path / "nextim.sqlite")
        self.schema = "nextim_test_" + secrets.token_hex(6) if kind == "postgres" else None

    def connect(self):
        if self.kind == "sqlite":
            return sqlite3.connect(self.path)
        import psycopg
        conn = psycopg.connect(POSTGRES_DSN)
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        conn.execute(f'SET search_path TO "{self.schema}"')
        return conn

    def run(self, statements):
        """Run ``[(sql with ? placeholders, params)]`` in one transaction."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            for sql, params in statements:
                cur.execute(sql if self.kind == "sqlite" else sql.replace("?", "%s"), params)
            conn.commit()
        finally:
            conn.close()

    def query(self, sql):
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetchall()
        finally:
            conn.close()

    def store(self):
        if self.kind == "sqlite":
            return SQLStore.sqlite(self.path)
        return SQLStore.postgres(POSTGRES_DSN, schema=self.schema)

    def storage_toml(self):
        if self.kind == "sqlite":
            return f'backend = "sqlite"\npath = "{self.path}"\n'
        return f'backend = "postgres"\ndsn = "{POSTGRES_DSN}"\nschema = "{self.schema}"\n'

    def drop(self):
        if self.schema:
            _drop_schema(self.schema)


@pytest.fixture(params=STORE_KINDS)
def raw(request, tmp_path):
    skip_unless_enabled(request.param)
    db = RawDB(request.param, tmp_path)
    yield db
    db.drop()


def write_v1_database(db):
    """What release 1 left on disk: its DDL (``schema.ddl(1, ...)``, never edited by
    later releases), ``schema_version`` = 1, and rows in every table."""
    stmts = [(s, ()) for s in schema.ddl(1, db.kind)]
    stmts += [
        ("CREATE TABLE schema_version (version INTEGER NOT NULL)", ()),
        ("INSERT INTO schema_version (version) VALUES (1)", ()),
        ("INSERT INTO users (id, nick, pic_url, default_pic_url, url, password_hash, created) "
         "VALUES (?, ?, ?, ?, ?, ?, ?)",
         ("alice", "Alice", "http://site/a.png", None, "http://site/alice", PASSWORD_HASH, T)),
        ("INSERT INTO users (id, nick, created) VALUES (?, ?, ?)", ("bob", "Bob", T)),
        ("INSERT INTO buddies (user_id, buddy_id, grp) VALUES (?, ?, ?)", ("alice", "bob", "Friends")),
        ("INSERT INTO buddies (user_id, buddy_id, grp) VALUES (?, ?, ?)", ("bob", "alice", "Work")),
        ("INSERT INTO rooms (id, nick, pic_url, url) VALUES (?, ?, ?, ?)", ("lobby", "Lobby", None, None)),
        ("INSERT INTO room_members (room_id, user_id) VALUES (?, ?)", ("lobby", "alice")),
        ("INSERT INTO room_members (room_id, user_id) VALUES (?, ?)", ("lobby", "bob")),
        ("INSERT INTO settings (user_id, data) VALUES (?, ?)", ("alice", SETTING)),
        ("INSERT INTO notifications (user_id, text, link, time, read) VALUES (?, ?, ?, ?, ?)",
         ("bob", "Welcome", "http://site/w", T, 0)),
        ("INSERT INTO meta (key, value) VALUES (?, ?)", ("login_cookie_key", "c" * 64)),
    ]
    msg = ("INSERT INTO messages (type, from_id, to_id, nick, body, style, timestamp, delivered) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    stmts += [
        (msg, ("unicast", "alice", "bob", "Alice", "hi bob", "color: red", T + 1, 1)),
        (msg, ("multicast", "bob", "lobby", "Bob", "hello room", "", T + 2, 1)),
        (msg, ("unicast", "bob", "alice", "Bob", "see you", "", T + 3, 0)),
    ]
    db.run(stmts)


@pytest_twisted.inlineCallbacks
def test_first_release_database_opens_intact(raw):
    write_v1_database(raw)
    store = raw.store()
    yield store.start()
    try:
        assert store.schema_versions == (1, schema.SCHEMA_VERSION)
        assert (yield store.schema_version()) == schema.SCHEMA_VERSION

        alice = yield store.get_user("alice")
        assert (alice["nick"], alice["pic_url"], alice["url"]) == ("Alice", "http://site/a.png",
                                                                   "http://site/alice")
        assert verify_password(alice["password_hash"], "alice's password")
        assert (yield store.get_buddies("alice")) == [("bob", "Friends")]
        assert (yield store.get_buddies("bob")) == [("alice", "Work")]
        rooms = yield store.rooms_of_user("bob")
        assert [(r["id"], r["nick"], r["all_count"]) for r in rooms] == [("lobby", "Lobby", 2)]

        history = yield store.unicast_history("bob", "alice")
        assert [(m["body"], m["style"], m["timestamp"]) for m in history] == [
            ("hi bob", "color: red", T + 1), ("see you", "", T + 3)]  # bob's own undelivered one too
        assert [m["body"] for m in (yield store.undelivered("alice"))] == ["see you"]
        assert [m["body"] for m in (yield store.room_history("lobby"))] == ["hello room"]
        assert (yield store.get_setting("alice")) == SETTING
        notes = yield store.take_unread_notifications("bob")
        assert [(n["text"], n["link"], n["time"]) for n in notes] == [("Welcome", "http://site/w", T)]
        assert (yield store.get_or_create_meta("login_cookie_key", lambda: "new")) == "c" * 64

        # ids keep growing after the old rows (the id sequence survived the upgrade)
        new = yield store.add_message("unicast", "alice", "bob", "Alice", "after upgrade", "", T + 4, False)
        assert new["id"] > max(m["id"] for m in history)
    finally:
        yield store.close()

    again = raw.store()
    yield again.start()
    try:
        assert again.schema_versions == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
        assert (yield again.stats_counts()) == {"users": 2, "rooms": 1, "messages": 4, "undelivered": 2}
    finally:
        yield again.close()


def _ctl_for(raw, tmp_path):
    c = Ctl("sqlite", tmp_path)
    c.config_path.write_text(
        f"[storage]\n{raw.storage_toml()}\n[auth]\ntoken_secret = \"{'s' * 20}\"\n\n"
        f"[admin]\napi_key = \"{'k' * 20}\"\n", encoding="utf-8")
    return c


def test_nextimctl_migrate_upgrades_a_first_release_database(raw, tmp_path):
    write_v1_database(raw)
    ctl = _ctl_for(raw, tmp_path)
    assert ctl.ok("migrate") == f"schema version 1 -> {schema.SCHEMA_VERSION}" + (
        " (up to date)\n" if schema.SCHEMA_VERSION == 1 else "\n")
    assert raw.query("SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]
    assert ctl.ok("stats") == "users 2\nrooms 1\nmessages 3\nundelivered 1\n"
    assert ctl.ok("buddy", "list", "bob") == "alice\tWork\n"


def _newer_database(raw):
    """A database as a future release (version SCHEMA_VERSION + 1) would leave it."""
    newer = schema.SCHEMA_VERSION + 1
    conn = raw.connect()
    try:
        cur = conn.cursor()
        schema.migrate(cur.execute, cur.fetchone, raw.kind)
        cur.execute("UPDATE schema_version SET version = %d" % newer)
        cur.execute("CREATE TABLE from_the_future (x INTEGER)")
        conn.commit()
    finally:
        conn.close()
    return newer


def _twistd():
    exe = shutil.which("twistd")
    return [exe] if exe else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_daemon_refuses_a_newer_database(raw, tmp_path):
    newer = _newer_database(raw)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f"[server]\nlisten = \"tcp:0:interface=127.0.0.1\"\n\n[storage]\n{raw.storage_toml()}\n"
        f"[auth]\ntoken_secret = \"{'s' * 20}\"\n\n[admin]\napi_key = \"{'k' * 20}\"\n", encoding="utf-8")
    proc = subprocess.run(_twistd() + ["-n", "--pidfile=", "nextim", "--config", str(cfg)],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO_ROOT),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    lines = [line for line in output.splitlines() if "newer" in line]
    assert len(lines) == 1, output
    assert f"version {newer}" in lines[0] and f"version {schema.SCHEMA_VERSION}" in lines[0]
    assert "Traceback" not in output
    # nothing was changed: the version stays, the future table is still there
    assert raw.query("SELECT version FROM schema_version") == [(newer,)]
    assert raw.query("SELECT COUNT(*) FROM from_the_future") == [(0,)]

    # nextimctl refuses too, with the same line, exit 1
    ctl = _ctl_for(raw, tmp_path)
    msg = ctl.refused("migrate")
    assert f"version {newer}" in msg and f"version {schema.SCHEMA_VERSION}" in msg
