"""SQLStore behaviour on SQLite and PostgreSQL (store/base.py; docs/design.md#d7-messages to #d14-directory)."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from nextim_twisted.store import schema
from nextim_twisted.store.base import SchemaError
from nextim_twisted.store.sql import SQLStore, translate
from tests.storefixtures import (
    STORE_KINDS, make_store, reopen, skip_unless_enabled)


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    """A started SQLStore per backend, dropped after the test."""
    skip_unless_enabled(request.param)
    st, drop = pytest_twisted.blockon(make_store(request.param, tmp_path))
    yield st
    pytest_twisted.blockon(drop())


@pytest.fixture(params=STORE_KINDS)
def kind(request):
    skip_unless_enabled(request.param)
    return request.param


@defer.inlineCallbacks
def send(store, frm, to, body, ts, delivered=False, type="unicast", style=None):
    m = yield store.add_message(type, frm, to, frm.upper(), body, style, ts, delivered)
    return m


def bodies(msgs):
    return [m["body"] for m in msgs]


# lifecycle -----------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_ping_and_schema_version(store):
    assert (yield store.ping()) is True
    assert (yield store.schema_version()) == schema.SCHEMA_VERSION


@pytest_twisted.inlineCallbacks
def test_start_twice_is_a_noop_upgrade(store):
    # Running the migration again on an up-to-date database changes nothing.
    yield store.put_user("u1", "One")
    other = reopen(store)
    yield other.start()
    try:
        assert (yield other.get_user("u1"))["nick"] == "One"
        assert (yield other.schema_version()) == schema.SCHEMA_VERSION
    finally:
        yield other.close()


@pytest_twisted.inlineCallbacks
def test_newer_database_is_refused(store):
    yield store.pool.runOperation("UPDATE schema_version SET version = 99")
    yield store.close()
    again = reopen(store)
    with pytest.raises(SchemaError) as exc:
        yield again.start()
    assert "99" in str(exc.value) and str(schema.SCHEMA_VERSION) in str(exc.value)
    assert not again.pool.running
    yield again.close()  # idempotent after a failed start


@pytest_twisted.inlineCallbacks
def test_restart_keeps_data(kind, tmp_path):
    st, drop = yield make_store(kind, tmp_path)
    try:
        yield st.put_user("u1", "One")
        yield st.put_buddy("u1", "u2", "friends")
        m = yield send(st, "u1", "u2", "hi", 1000)
        yield st.put_setting("u1", '{"a":1}')
        yield st.close()
        st2 = reopen(st)
        yield st2.start()
        try:
            assert (yield st2.get_user("u1"))["nick"] == "One"
            assert (yield st2.get_buddies("u2")) == [("u1", "friends")]
            assert (yield st2.undelivered("u2")) == [m]
            assert (yield st2.get_setting("u1")) == '{"a":1}'
            m2 = yield send(st2, "u1", "u2", "again", 2000)
            assert m2["id"] > m["id"]
        finally:
            yield st2.close()
    finally:
        yield drop()


@pytest_twisted.inlineCallbacks
def test_sqlite_memory_keeps_data_between_interactions():
    st = SQLStore.sqlite(":memory:")
    yield st.start()
    try:
        yield st.put_user("u1", "One")
        for _ in range(3):
            assert (yield st.get_user("u1"))["nick"] == "One"
    finally:
        yield st.close()


def test_sqlite_rejects_bad_synchronous_and_postgres_bad_schema():
    with pytest.raises(ValueError):
        SQLStore.sqlite(":memory:", synchronous="FULL; DROP TABLE users")
    with pytest.raises(ValueError):
        SQLStore.postgres("dbname=x", schema='a"; DROP')


def test_translate_placeholders():
    assert translate("a = ? AND b = ?", "postgres") == "a = %s AND b = %s"
    assert translate("a = ?", "sqlite") == "a = ?"


def test_ddl_substitutes_per_dialect():
    pg = " ".join(schema.ddl(1, "postgres"))
    lite = " ".join(schema.ddl(1, "sqlite"))
    assert "BIGSERIAL PRIMARY KEY" in pg and "{autoid}" not in pg
    assert "INTEGER PRIMARY KEY" in lite and "BIGSERIAL" not in lite


@pytest_twisted.inlineCallbacks
def test_write_is_atomic(store):
    # A failing statement inside a write leaves nothing half-stored.
    def half(c):
        c.execute("INSERT INTO settings (user_id, data) VALUES (?, ?)", ("u1", "{}"))
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        yield store._run(half)
    assert (yield store.get_setting("u1")) is None


# users ----------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_user_upsert_keeps_password_hash(store):
    assert (yield store.get_user("u1")) is None
    assert (yield store.set_password_hash("u1", "h")) is False
    yield store.put_user("u1", "One", pic_url="p.png")
    assert (yield store.set_password_hash("u1", "$argon2$x")) is True
    yield store.put_user("u1", "Uno", url="http://u1")
    u = yield store.get_user("u1")
    assert u == {"id": "u1", "nick": "Uno", "pic_url": None, "default_pic_url": None,
                 "url": "http://u1", "password_hash": "$argon2$x"}
    yield store.set_password_hash("u1", None)
    assert (yield store.get_user("u1"))["password_hash"] is None


@pytest_twisted.inlineCallbacks
def test_get_users_and_list_users(store):
    for i in (3, 1, 2):
        yield store.put_user("u%d" % i, "N%d" % i)
    got = yield store.get_users(["u1", "u3", "nobody", "u1"])
    assert sorted(got) == ["u1", "u3"] and got["u3"]["nick"] == "N3"
    assert (yield store.get_users([])) == {}
    assert [u["id"] for u in (yield store.list_users())] == ["u1", "u2", "u3"]
    assert [u["id"] for u in (yield store.list_users(limit=1, offset=1))] == ["u2"]


@pytest_twisted.inlineCallbacks
def test_get_users_many_ids(store):
    ids = ["u%04d" % i for i in range(1200)]
    for i in ids[:5]:
        yield store.put_user(i, i)
    got = yield store.get_users(ids)
    assert sorted(got) == ids[:5]


@pytest_twisted.inlineCallbacks
def test_delete_user_removes_relations_but_keeps_messages(store):
    for u in ("a", "b", "c"):
        yield store.put_user(u, u.upper())
    yield store.put_buddy("a", "b")
    yield store.put_buddy("c", "a")
    yield store.put_buddy("b", "c")
    yield store.put_room("r1", "Room")
    yield store.put_member("r1", "a")
    yield store.put_member("r1", "b")
    yield store.put_setting("a", "{}")
    yield store.add_notification("a", "t", None, 1)
    yield send(store, "a", "b", "hello", 1, delivered=True)

    assert (yield store.delete_user("a")) is True
    assert (yield store.delete_user("a")) is False
    assert (yield store.get_user("a")) is None
    assert (yield store.get_buddies("a")) == []
    assert (yield store.get_buddies("b")) == [("c", None)]
    assert (yield store.get_buddies("c")) == [("b", None)]
    assert (yield store.room_member_ids("r1")) == ["b"]
    assert (yield store.get_setting("a")) is None
    assert (yield store.take_unread_notifications("a")) == []
    assert bodies((yield store.unicast_history("b", "a"))) == ["hello"]


# buddies --------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_buddies_symmetric_with_per_side_groups(store):
    yield store.put_buddy("a", "b", "friends")
    assert (yield store.get_buddies("a")) == [("b", "friends")]
    assert (yield store.get_buddies("b")) == [("a", "friends")]   # new side gets it
    yield store.put_buddy("b", "a", "work")
    assert (yield store.get_buddies("b")) == [("a", "work")]
    assert (yield store.get_buddies("a")) == [("b", "friends")]   # other side kept
    yield store.put_buddy("a", "c")
    assert (yield store.get_buddies("a")) == [("b", "friends"), ("c", None)]
    assert (yield store.delete_buddy("b", "a")) is True
    assert (yield store.delete_buddy("b", "a")) is False
    assert (yield store.get_buddies("a")) == [("c", None)]
    assert (yield store.get_buddies("b")) == []


# rooms ----------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_rooms_members_and_all_count(store):
    yield store.put_room("r2", "Two", pic_url="r2.png")
    yield store.put_room("r1", "One", url="http://r1")
    for u in ("a", "b", "c"):
        yield store.put_member("r1", u)
    yield store.put_member("r1", "a")  # idempotent
    yield store.put_member("r2", "a")
    rooms = yield store.rooms_of_user("a")
    assert rooms == [
        {"id": "r1", "nick": "One", "pic_url": None, "url": "http://r1", "all_count": 3},
        {"id": "r2", "nick": "Two", "pic_url": "r2.png", "url": None, "all_count": 1}]
    assert [r["id"] for r in (yield store.rooms_of_user("b"))] == ["r1"]
    assert (yield store.rooms_of_user("zz")) == []
    assert (yield store.get_room("r1"))["all_count"] == 3
    assert (yield store.get_room("nope")) is None
    assert sorted((yield store.get_rooms(["r1", "r2", "x"]))) == ["r1", "r2"]
    assert [r["id"] for r in (yield store.list_rooms())] == ["r1", "r2"]
    assert (yield store.room_member_ids("r1")) == ["a", "b", "c"]
    assert (yield store.is_member("r1", "b")) is True
    assert (yield store.is_member("r2", "b")) is False
    assert (yield store.delete_member("r1", "b")) is True
    assert (yield store.delete_member("r1", "b")) is False
    yield store.put_room("r1", "Uno")
    assert (yield store.get_room("r1"))["nick"] == "Uno"
    assert (yield store.delete_room("r1")) is True
    assert (yield store.delete_room("r1")) is False
    assert (yield store.room_member_ids("r1")) == []
    assert [r["id"] for r in (yield store.rooms_of_user("a"))] == ["r2"]


# messages -------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_add_message_shape(store):
    m = yield store.add_message("unicast", "a", "b", "A", "hi <b>", None, 1700000000123,
                                False)
    assert set(m) == {"id", "type", "from", "to", "nick", "body", "style", "timestamp", "client_id"}
    assert isinstance(m["id"], int) and m["style"] == "" and m["client_id"] is None
    assert m["timestamp"] == 1700000000123
    (got,) = yield store.undelivered("b")
    assert got == m
    m2 = yield store.add_message("unicast", "a", "b", "A", "x", "color:red", 1, True)
    assert m2["id"] > m["id"] and m2["style"] == "color:red"
    assert (yield store.message_count()) == 2


@pytest_twisted.inlineCallbacks
def test_undelivered_oldest_50_then_mark_delivered(store):
    for i in range(60):
        yield send(store, "a", "b", "m%d" % i, 1000 + i)
    yield send(store, "a", "c", "other", 5000)
    yield send(store, "a", "b", "seen", 6000, delivered=True)
    yield send(store, "a", "b", "room", 7000, type="multicast")
    first = yield store.undelivered("b")
    assert bodies(first) == ["m%d" % i for i in range(50)]
    yield store.mark_delivered([m["id"] for m in first])
    rest = yield store.undelivered("b")
    assert bodies(rest) == ["m%d" % i for i in range(50, 60)]
    yield store.mark_delivered([m["id"] for m in rest])
    yield store.mark_delivered([])
    assert (yield store.undelivered("b")) == []
    assert bodies((yield store.undelivered("c"))) == ["other"]


@pytest_twisted.inlineCallbacks
def test_unicast_history_newest_30_oldest_first(store):
    for i in range(40):
        frm, to = ("a", "b") if i % 2 == 0 else ("b", "a")
        yield send(store, frm, to, "m%d" % i, 1000 + i, delivered=True)
    yield send(store, "a", "c", "elsewhere", 9000, delivered=True)
    h = yield store.unicast_history("a", "b")
    assert bodies(h) == ["m%d" % i for i in range(10, 40)]
    assert [m["id"] for m in h] == sorted(m["id"] for m in h)
    assert bodies((yield store.unicast_history("b", "a", limit=3))) == ["m37", "m38", "m39"]


@pytest_twisted.inlineCallbacks
def test_unicast_history_undelivered_directions(store):
    yield send(store, "a", "b", "old", 1, delivered=True)
    yield send(store, "b", "a", "pending-in", 2, delivered=False)
    yield send(store, "a", "b", "pending-out", 3, delivered=False)
    # a does not see undelivered incoming (it is new_messages), sees its own pending.
    assert bodies((yield store.unicast_history("a", "b"))) == ["old", "pending-out"]
    assert bodies((yield store.unicast_history("b", "a"))) == ["old", "pending-in"]


@pytest_twisted.inlineCallbacks
def test_clear_history_per_side_and_delete_when_both(store):
    yield send(store, "a", "b", "1", 1, delivered=True)
    yield send(store, "b", "a", "2", 2, delivered=True)
    yield send(store, "a", "c", "keep", 3, delivered=True)
    yield store.clear_history("a", "b")
    assert (yield store.unicast_history("a", "b")) == []
    assert bodies((yield store.unicast_history("b", "a"))) == ["1", "2"]
    assert (yield store.message_count()) == 3
    yield send(store, "b", "a", "3", 4, delivered=True)
    assert bodies((yield store.unicast_history("a", "b"))) == ["3"]
    yield store.clear_history("b", "a")
    assert (yield store.unicast_history("b", "a")) == []
    assert bodies((yield store.unicast_history("a", "b"))) == ["3"]
    # 1 and 2 were cleared by both sides: gone; "3" only by b; "keep" untouched.
    assert (yield store.message_count()) == 2
    assert bodies((yield store.unicast_history("a", "c"))) == ["keep"]


@pytest_twisted.inlineCallbacks
def test_clear_history_keeps_undelivered_incoming(store):
    yield send(store, "b", "a", "unseen", 1, delivered=False)
    yield store.clear_history("a", "b")
    (m,) = yield store.undelivered("a")
    assert m["body"] == "unseen"
    yield store.mark_delivered([m["id"]])
    assert bodies((yield store.unicast_history("a", "b"))) == ["unseen"]


@pytest_twisted.inlineCallbacks
def test_ids_not_reused_after_delete(store):
    m1 = yield send(store, "a", "b", "1", 1, delivered=True)
    yield store.clear_history("a", "b")
    yield store.clear_history("b", "a")
    assert (yield store.message_count()) == 0
    m2 = yield send(store, "a", "b", "2", 2, delivered=True)
    assert m2["id"] > m1["id"]


@pytest_twisted.inlineCallbacks
def test_room_history(store):
    for i in range(35):
        yield send(store, "u%d" % (i % 3), "r1", "r%d" % i, 100 + i, type="multicast",
                   delivered=True)
    yield send(store, "u1", "r2", "elsewhere", 500, type="multicast")
    yield send(store, "u1", "r1", "direct", 600)  # unicast to a user named like the room
    h = yield store.room_history("r1")
    assert bodies(h) == ["r%d" % i for i in range(5, 35)]
    assert h[-1]["type"] == "multicast" and h[-1]["to"] == "r1" and h[-1]["from"] == "u1"
    assert bodies((yield store.room_history("r1", limit=2))) == ["r33", "r34"]
    assert (yield store.room_history("none")) == []


# settings -------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_settings_verbatim(store):
    assert (yield store.get_setting("a")) is None
    text = json.dumps({"blocked_rooms": ["r1"], "name": "Zoë 中文 😀🧑‍🚀", "n": 1.50},
                      ensure_ascii=False, indent=1)
    yield store.put_setting("a", text)
    assert (yield store.get_setting("a")) == text
    yield store.put_setting("a", '{ "x" : 1 }')
    assert (yield store.get_setting("a")) == '{ "x" : 1 }'
    big = '{"k":"' + "é" * 4000 + '"}'
    yield store.put_setting("b", big)
    assert (yield store.get_setting("b")) == big


# notifications ----------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_notifications_newest_first_and_marked_read(store):
    n1 = yield store.add_notification("a", "first", "http://x/1", 1000)
    n2 = yield store.add_notification("a", "second", None, 3000)
    n3 = yield store.add_notification("a", "third", "http://x/3", 2000)
    yield store.add_notification("b", "not yours", None, 5000)
    assert n1 == {"id": n1["id"], "text": "first", "link": "http://x/1", "time": 1000}
    got = yield store.take_unread_notifications("a")
    assert got == [n2, n3, n1]
    assert (yield store.take_unread_notifications("a")) == []
    n4 = yield store.add_notification("a", "fourth", None, 4000)
    assert (yield store.take_unread_notifications("a")) == [n4]
    assert bodies_of(((yield store.take_unread_notifications("b", limit=10)))) == [
        "not yours"]


def bodies_of(notes):
    return [n["text"] for n in notes]


@pytest_twisted.inlineCallbacks
def test_notifications_limit(store):
    for i in range(5):
        yield store.add_notification("a", "n%d" % i, None, i)
    assert bodies_of((yield store.take_unread_notifications("a", limit=2))) == ["n4", "n3"]
    assert bodies_of((yield store.take_unread_notifications("a"))) == ["n2", "n1", "n0"]


# concurrency ---------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_concurrent_writes_all_committed(store):
    ds = [store.add_message("unicast", "a", "b", "A", "m%d" % i, None, i, False)
          for i in range(40)]
    msgs = yield defer.gatherResults(ds, consumeErrors=True)
    assert len({m["id"] for m in msgs}) == 40
    assert len((yield store.undelivered("b", limit=100))) == 40
