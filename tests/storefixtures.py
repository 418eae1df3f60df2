"""Helpers to get a started storage backend in tests (SQLite file or PostgreSQL).

``make_store(kind, tmp_path)`` → Deferred of ``(store, drop)``: a started
:class:`~nextim_twisted.store.sql.SQLStore` and a no-argument ``drop()`` → Deferred that
closes it and removes its data (PostgreSQL: ``DROP SCHEMA ... CASCADE``).

PostgreSQL: ``NEXTIM_TEST_POSTGRES_DSN`` (default
``host=127.0.0.1 port=5432 dbname=test user=postgres``), one fresh schema
``nextim_test_<hex>`` per store. ``NEXTIM_TEST_POSTGRES=0`` skips the postgres cases
(:func:`skip_unless_enabled`); otherwise they run, and fail if the server is down.

Use in a test module::

    @pytest.fixture(params=STORE_KINDS)
    def store(request, tmp_path):
        skip_unless_enabled(request.param)
        st, drop = pytest_twisted.blockon(make_store(request.param, tmp_path))
        yield st
        pytest_twisted.blockon(drop())
"""

import os
import secrets

import pytest
from twisted.internet import defer, threads

from nextim_twisted.store.sql import SQLStore

STORE_KINDS = ["sqlite", "postgres"]
POSTGRES_DSN = os.environ.get(
    "NEXTIM_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def postgres_enabled():
    """False only when NEXTIM_TEST_POSTGRES=0 (then postgres cases are skipped)."""
    return os.environ.get("NEXTIM_TEST_POSTGRES", "1") != "0"


def skip_unless_enabled(kind):
    """pytest.skip a postgres case when NEXTIM_TEST_POSTGRES=0; never skips sqlite."""
    if kind == "postgres" and not postgres_enabled():
        pytest.skip("NEXTIM_TEST_POSTGRES=0")


def _drop_schema(name):
    import psycopg
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % name)


def new_store(kind, tmp_path, name=None):
    """An unstarted SQLStore. sqlite: file ``tmp_path/<name or nextim.db>``;
    postgres: schema ``name`` (default a fresh ``nextim_test_<hex>``)."""
    if kind == "sqlite":
        return SQLStore.sqlite(str(tmp_path / (name or "nextim.db")))
    if kind == "postgres":
        return SQLStore.postgres(
            POSTGRES_DSN, schema=name or "nextim_test_" + secrets.token_hex(6))
    raise ValueError(kind)


def reopen(store):
    """An unstarted SQLStore on the same database as ``store`` (a restart)."""
    if store.dialect == "sqlite":
        return SQLStore.sqlite(store.location)
    return SQLStore.postgres(store.location, schema=store.schema)


@defer.inlineCallbacks
def make_store(kind, tmp_path):
    """Deferred → ``(started store, drop)``; ``drop()`` → Deferred (close + remove)."""
    store = new_store(kind, tmp_path)
    try:
        yield store.start()
    except BaseException:
        yield _cleanup(store)
        raise

    def drop():
        return _cleanup(store)
    return store, drop


@defer.inlineCallbacks
def _cleanup(store):
    yield store.close()
    if store.dialect == "postgres":
        yield threads.deferToThread(_drop_schema, store.schema)
