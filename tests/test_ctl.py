"""``nextimctl`` run as a real subprocess (``python -m nextim_twisted.ctl``) against a
temporary config: SQLite file, and PostgreSQL (one schema per test, ``[storage] schema``)."""
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from nextim_twisted.auth import verify_password
from nextim_twisted.retention import DAY_MS
from nextim_twisted.store import schema
from tests.storefixtures import POSTGRES_DSN, STORE_KINDS, _drop_schema, skip_unless_enabled

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Ctl:
    """One database and config file; ``run(*args)`` → CompletedProcess (text)."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.dir = tmp_path
        self.config_path = tmp_path / "nextim.toml"
        self.schema = None
        if kind == "sqlite":
            storage = f'backend = "sqlite"\npath = "{tmp_path / "nextim.sqlite"}"\n'
        else:
            self.schema = "nextim_test_" + secrets.token_hex(6)
            storage = f'backend = "postgres"\ndsn = "{POSTGRES_DSN}"\nschema = "{self.schema}"\n'
        self.config_path.write_text(
            f"[storage]\n{storage}\n[auth]\ntoken_secret = \"{'s' * 20}\"\n\n"
            f"[admin]\napi_key = \"{'k' * 20}\"\n", encoding="utf-8")

    def run(self, *args, stdin="", config=True, env=None):
        argv = [sys.executable, "-m", "nextim_twisted.ctl"]
        if config:
            argv += ["--config", str(self.config_path)]
        full_env = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env or {}))
        return subprocess.run(argv + list(args), input=stdin, capture_output=True, text=True,
                              cwd=self.dir, env=full_env, timeout=60)

    def ok(self, *args, stdin=""):
        """Run; assert exit 0 and nothing on stderr; return stdout."""
        r = self.run(*args, stdin=stdin)
        assert r.returncode == 0 and r.stderr == "", (args, r.returncode, r.stderr)
        return r.stdout

    def refused(self, *args, status=1, stdin=""):
        """Run; assert exit ``status`` with a one-line message and no traceback; return it."""
        r = self.run(*args, stdin=stdin)
        assert r.returncode == status, (args, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
        if status == 1:
            assert r.stderr.startswith("nextimctl: ") and r.stderr.count("\n") == 1, r.stderr
        return r.stderr.strip()

    def sql(self, query, params=()):
        """Run one statement directly on the database (``?`` placeholders); → rows."""
        if self.kind == "sqlite":
            import sqlite3
            with sqlite3.connect(self.dir / "nextim.sqlite") as conn:
                return conn.execute(query, params).fetchall()
        import psycopg
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            cur = conn.execute(query.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    def cleanup(self):
        if self.schema:
            _drop_schema(self.schema)


@pytest.fixture(params=STORE_KINDS)
def ctl(request, tmp_path):
    skip_unless_enabled(request.param)
    c = Ctl(request.param, tmp_path)
    yield c
    c.cleanup()


@pytest.fixture
def lite(tmp_path):
    c = Ctl("sqlite", tmp_path)
    c.ok("migrate")
    return c


def test_directory_workflow(ctl):
    assert ctl.ok("migrate") == f"schema version 0 -> {schema.SCHEMA_VERSION}\n"
    assert ctl.ok("user", "add", "alice", "--nick", "Alice", "--url", "http://site/alice",
                  "--password-stdin", stdin="s3cret pass\n") == "user alice added\n"
    ctl.ok("user", "add", "bob", "--url", "http://site/bob")
    ctl.ok("user", "set", "bob", "--pic-url", "http://site/b.png", "--url", "")  # '' clears
    ctl.ok("buddy", "add", "alice", "bob", "--group", "Friends")
    ctl.ok("room", "add", "lobby", "--nick", "Lobby")
    ctl.ok("member", "add", "lobby", "bob")
    assert ctl.ok("notify", "bob", "Welcome", "--link", "http://site/w").startswith("notification ")
    ctl.ok("user", "passwd", "bob", stdin="another\n")

    assert ctl.ok("user", "list") == "alice\tAlice\tpassword\nbob\tbob\tpassword\n"
    assert ctl.ok("buddy", "list", "bob") == "alice\tFriends\n"  # symmetric, same group when new
    assert ctl.ok("room", "list") == "lobby\tLobby\t1\n"
    assert ctl.ok("room", "list", "lobby") == "bob\n"
    assert ctl.ok("stats") == "users 2\nrooms 1\nmessages 0\nundelivered 0\n"

    users = {r[0]: r[1:] for r in ctl.sql("SELECT id, nick, url, pic_url, password_hash FROM users")}
    assert verify_password(users["alice"][3], "s3cret pass")  # the line ending is not part of it
    assert verify_password(users["bob"][3], "another")
    assert users["alice"][:2] == ("Alice", "http://site/alice")
    assert users["bob"][:3] == ("bob", None, "http://site/b.png")  # nick defaults to the id
    assert ctl.sql("SELECT user_id, text, link, read FROM notifications") == [
        ("bob", "Welcome", "http://site/w", 0)]

    # deleting a user takes their buddies, memberships and notifications along
    assert ctl.ok("user", "delete", "bob") == "user bob deleted\n"
    assert ctl.sql("SELECT COUNT(*) FROM buddies")[0][0] == 0
    assert ctl.sql("SELECT COUNT(*) FROM room_members")[0][0] == 0
    assert ctl.sql("SELECT COUNT(*) FROM notifications")[0][0] == 0
    assert ctl.ok("stats") == "users 1\nrooms 1\nmessages 0\nundelivered 0\n"


def test_history_export_and_purge(lite):
    ctl = lite
    now = int(time.time() * 1000)

    for row in (("unicast", "alice", "bob", "Alice", "old one", now - 40 * DAY_MS, 1),
                ("unicast", "bob", "alice", "Bob", "Grüße 你好", now - 2 * DAY_MS, 0),
                ("multicast", "carol", "lobby", "Carol", "room talk", now - DAY_MS, 1)):
        ctl.sql("INSERT INTO messages (type, from_id, to_id, nick, body, timestamp, delivered) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    lines = ctl.ok("history", "export").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["body"] for r in rows] == ["old one", "Grüße 你好", "room talk"]
    assert set(rows[0]) == {"id", "type", "from", "to", "nick", "body", "style", "timestamp", "client_id"}
    assert rows[0]["timestamp"] == now - 40 * DAY_MS

    alice = [json.loads(x)["body"] for x in ctl.ok("history", "export", "--user", "alice").splitlines()]
    assert alice == ["old one", "Grüße 你好"]
    since = datetime.fromtimestamp((now - 3 * DAY_MS) / 1000, timezone.utc).date().isoformat()
    recent = [json.loads(x)["body"] for x in ctl.ok("history", "export", "--since", since).splitlines()]
    assert recent == ["Grüße 你好", "room talk"]

    assert ctl.ok("stats") == "users 0\nrooms 0\nmessages 3\nundelivered 1\n"
    out = ctl.ok("history", "purge", "--older-than", "30")
    assert out.startswith("deleted 1 messages older than 30 days (before ")
    assert ctl.ok("history", "purge", "--older-than", "30").startswith("deleted 0 messages")
    assert ctl.ok("stats") == "users 0\nrooms 0\nmessages 2\nundelivered 1\n"


def test_user_mistakes_are_one_line_errors(lite):
    lite.ok("user", "add", "alice")
    lite.ok("room", "add", "lobby")
    assert lite.refused("user", "add", "alice") == "nextimctl: user alice already exists (use: user set)"
    assert lite.refused("user", "delete", "zed") == "nextimctl: user delete zed: unknown user"
    assert lite.refused("user", "passwd", "alice", stdin="\n") == "nextimctl: empty password"
    # the admin API's id rules: a room id may not equal a user id, and back
    assert "already used by a user" in lite.refused("room", "add", "alice")
    assert "already used by a room" in lite.refused("user", "add", "lobby")
    assert lite.refused("member", "add", "lobby", "zed") == "nextimctl: member add lobby zed: unknown user"
    assert "at most 100 characters" in lite.refused("user", "set", "alice", "--nick", "n" * 101)
    # bad ids and values are usage errors (exit 2), named by argparse
    for args in (["user", "add", "a/b"], ["history", "purge", "--older-than", "0"],
                 ["history", "export", "--since", "yesterday"]):
        r = lite.run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "usage:" in r.stderr, (args, r.stderr)
    # no password option on the command line: a stray value is refused
    assert lite.run("user", "set", "alice", "--password", "secret").returncode == 2
    assert lite.ok("user", "list") == "alice\talice\t-\n"


def test_missing_sqlite_database_is_not_created_silently(tmp_path):
    c = Ctl("sqlite", tmp_path)
    msg = c.refused("stats")
    assert "does not exist" in msg and "nextimctl migrate" in msg
    assert not (tmp_path / "nextim.sqlite").exists()


def test_empty_database_is_refused_until_migrate(ctl):
    if ctl.kind == "sqlite":
        (ctl.dir / "nextim.sqlite").touch()
        tables = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
    else:
        tables = f"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{ctl.schema}'"
    assert "no nextim tables" in ctl.refused("user", "add", "alice")
    assert ctl.sql(tables) == [(0,)]
    ctl.ok("migrate")
    ctl.ok("user", "add", "alice")


def test_check_config(tmp_path):
    c = Ctl("sqlite", tmp_path)
    r = c.run("check-config")
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")
    assert not (tmp_path / "nextim.sqlite").exists()  # checks the file only

    # NEXTIM_CONFIG is the default --config
    r = c.run("check-config", config=False, env={"NEXTIM_CONFIG": str(c.config_path)})
    assert (r.returncode, r.stdout) == (0, "ok\n")

    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nretention_days = "forever"\n', encoding="utf-8")
    r = c.run("--config", str(bad), "check-config", config=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "[storage] retention_days" in r.stderr

    r = c.run("--config", str(tmp_path / "missing.toml"), "stats", config=False)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_postgres_is_one_line(tmp_path):
    c = Ctl("sqlite", tmp_path)
    c.config_path.write_text(
        '[storage]\nbackend = "postgres"\ndsn = "host=127.0.0.1 port=1 dbname=x connect_timeout=2"\n'
        f"[auth]\ntoken_secret = \"{'s' * 20}\"\n[admin]\napi_key = \"{'k' * 20}\"\n", encoding="utf-8")
    assert c.refused("stats").startswith("nextimctl: cannot open the database: ")
