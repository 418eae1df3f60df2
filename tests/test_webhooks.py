"""Webhooks through the outbox (nextim_twisted/webhooks/) against a real site on
loopback (tests/sitefixtures.py), on SQLite and PostgreSQL: each event once, retries
with backoff on the injected clock, delivery after a restart, signatures the site
checks, and the documented drop past ``max_age`` (docs/integration.md#webhooks)."""
import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from nextim_twisted.webhooks.outbox import Outbox
from nextim_twisted.webhooks.worker import MAX_BACKOFF_S, Webhooks, backoff_s
from tests.conftest import make_config
from tests.sitefixtures import FakeSite
from tests.storefixtures import STORE_KINDS, make_store, reopen, skip_unless_enabled

inline = pytest_twisted.ensureDeferred
SECRET = "webhook-secret-" + "w" * 16


def test_backoff_doubles_up_to_five_minutes():
    assert [backoff_s(n) for n in (1, 2, 3, 4, 10, 100)] == [1, 2, 4, 8, 300, 300]
    assert MAX_BACKOFF_S == 300


@pytest.fixture(params=STORE_KINDS)
def kind(request):
    skip_unless_enabled(request.param)
    return request.param


class Env:
    def __init__(self, store, site, clock):
        self.store, self.site, self.clock = store, site, clock
        self.hooks = []

    def webhooks(self, store=None, **cfg):
        values = {"url": self.site.base + "/nextim/events", "secret": SECRET, **cfg}
        hooks = Webhooks(make_config(webhooks=values).webhooks, store or self.store, reactor, self.clock)
        hooks.startService()
        self.hooks.append(hooks)
        return hooks

    async def round(self, hooks, advance=0):
        """Advance the clock by ``advance`` s and let the loop's due round finish."""
        self.clock.advance(advance)
        while hooks._flushing is not None or hooks._loop is not None:
            if hooks._flushing is not None:
                await hooks._flushing
            if hooks._loop is not None:
                await hooks._loop
            self.clock.advance(0)

    async def drain(self, hooks):
        """Rounds until the outbox is empty or nothing is due (time stands still)."""
        for _ in range(20):
            await self.round(hooks)
            count, due = await hooks.outbox.summary()
            if count == 0 or due > hooks.now_ms():
                return count
        raise AssertionError("the loop never settled")


@pytest_twisted.async_yield_fixture
async def env(kind, tmp_path):
    store, drop = await make_store(kind, tmp_path)
    site = await FakeSite("unused-directory-secret-xx", webhook_secret=SECRET).listen()
    clock = task.Clock()
    clock.advance(time.time())
    e = Env(store, site, clock)
    try:
        yield e
    finally:
        for hooks in e.hooks:
            if hooks.running:
                await hooks.stopService()
        await site.close()
        await drop()


def presence(user_id, show="available"):
    return SimpleNamespace(id=user_id, nick=user_id.title(), show=show, status="")


async def send_message(env, hooks, offline, to="bob"):
    message = await env.store.add_message("unicast", "alice", to, "Alice", "hi " + to, "", hooks.now_ms(),
                                          not offline, also=hooks.message_rows(offline))
    hooks.kick()
    return message


@inline
async def test_each_event_reaches_the_site_once_signed(env):
    hooks = env.webhooks()
    message = await send_message(env, hooks, offline=True)
    hooks.user_presence(presence("alice"), "online")
    hooks.room_joined(presence("alice"), "lobby")
    hooks.room_left(presence("alice"), "lobby")
    await env.round(hooks, 0.5)  # the buffered events' flush
    assert await env.drain(hooks) == 0
    await env.round(hooks, 10)
    await env.round(hooks, 10)
    events = {e["event"]: e for e in env.site.events}
    assert sorted(e["event"] for e in env.site.events) == [
        "message", "message.offline", "presence", "room.join", "room.leave"]
    assert env.site.bad_signatures == 0
    assert len({e["id"] for e in env.site.events}) == 5
    assert all(e["id"].startswith("evt_") and abs(e["timestamp"] - hooks.now_ms()) < 30_000 for e in env.site.events)
    assert events["message.offline"]["data"] == {
        "id": message["id"], "type": "unicast", "from": "alice", "to": "bob", "nick": "Alice", "body": "hi bob",
        "style": "", "timestamp": message["timestamp"]}
    assert events["presence"]["data"] == {"user": "alice", "nick": "Alice", "type": "online",
                                          "show": "available", "status": ""}
    assert events["room.leave"]["data"] == {"user": "alice", "room": "lobby"}
    assert sorted(env.site.event_headers) == sorted(e["event"].encode() for e in env.site.events)
    assert hooks.delivered == 5 and hooks.failures == 0


@inline
async def test_only_the_configured_events_are_written(env):
    hooks = env.webhooks(events=["message.offline"])
    assert hooks.message_rows(offline=False) is None
    await send_message(env, hooks, offline=False)
    await send_message(env, hooks, offline=True, to="carol")
    hooks.user_presence(presence("alice"), "online")
    await env.round(hooks, 0.5)
    await env.drain(hooks)
    assert [(e["event"], e["data"]["to"]) for e in env.site.events] == [("message.offline", "carol")]


@inline
async def test_a_failing_site_gets_the_event_again_with_backoff(env):
    hooks = env.webhooks()
    env.site.webhook_status = 500
    await send_message(env, hooks, offline=False)
    await env.round(hooks)
    assert env.site.events == [] and hooks.failures == 1
    posts = len(env.site.requests)
    await env.round(hooks, 0.9)
    assert len(env.site.requests) == posts  # not before its backoff (1 s)
    await env.round(hooks, 0.1)
    assert len(env.site.requests) == posts + 1 and hooks.failures == 2
    env.site.webhook_status = 204
    await env.round(hooks, 1.9)
    assert env.site.events == []  # the second wait is 2 s
    await env.round(hooks, 0.1)
    assert [e["event"] for e in env.site.events] == ["message"]
    assert await env.drain(hooks) == 0
    first = env.site.requests[0]
    assert all(r == first for r in env.site.requests)  # the same request every time


@inline
async def test_a_site_that_hangs_is_retried_after_the_timeout(env):
    hooks = env.webhooks(timeout=2)
    env.site.mode = "hang"
    await send_message(env, hooks, offline=False)
    arrived = env.site.next_request()
    env.clock.advance(0)
    await arrived
    env.clock.advance(2)
    await env.round(hooks)
    assert hooks.failures == 1
    env.site.mode = None
    await env.round(hooks, 1)
    assert [e["event"] for e in env.site.events] == ["message"]


@inline
async def test_events_in_the_outbox_are_delivered_after_a_restart(env):
    env.site.webhook_status = 503
    hooks = env.webhooks()
    await send_message(env, hooks, offline=True)
    hooks.user_presence(presence("alice"), "offline")
    await env.round(hooks)  # the message events are tried once and fail
    await hooks.stopService()  # writes the buffered presence
    await env.store.close()
    again = reopen(env.store)
    await again.start()
    try:
        env.site.webhook_status = 200
        restarted = env.webhooks(store=again)
        await env.round(restarted, 1)
        assert await env.drain(restarted) == 0
        assert sorted(e["event"] for e in env.site.events) == ["message", "message.offline", "presence"]
    finally:
        await restarted.stopService()
        await again.close()


@inline
async def test_a_wrong_secret_is_refused_by_the_site_and_retried(env):
    hooks = env.webhooks(secret="not-the-webhook-secret-xxx")
    await send_message(env, hooks, offline=False)
    await env.round(hooks)
    assert env.site.bad_signatures == 1 and env.site.events == []
    assert (await hooks.outbox.summary())[0] == 1


@inline
async def test_events_past_max_age_are_dropped_and_counted(env):
    env.site.webhook_status = 500
    hooks = env.webhooks(max_age=120)
    await send_message(env, hooks, offline=True)
    await env.round(hooks)
    for _ in range(4):
        await env.round(hooks, 60)
    assert hooks.dropped == {"max_age": 2}
    assert (await hooks.outbox.summary())[0] == 0
    env.site.webhook_status = 200
    await env.round(hooks, 60)
    assert env.site.events == []


@inline
async def test_a_claimed_event_is_not_taken_by_a_second_worker(env):
    outbox = Outbox(env.store)
    hooks = env.webhooks()
    await hooks.stopService()
    await env.store.add_message("unicast", "alice", "bob", "Alice", "x", "", 1000, True,
                                also=hooks.message_rows(offline=False))
    now = hooks.now_ms()
    first = await outbox.claim(now, 35_000, 10)
    assert [r["attempts"] for r in first] == [1]
    assert await outbox.claim(now, 35_000, 10) == []
    assert [r["id"] for r in await outbox.claim(now + 35_000, 35_000, 10)] == [first[0]["id"]]


@inline
async def test_a_message_whose_transaction_fails_leaves_no_event(env):
    hooks = env.webhooks()
    also = hooks.message_rows(offline=True)

    def failing(cursor, message):
        also(cursor, message)
        raise RuntimeError("the message is not stored")
    with pytest.raises(RuntimeError):
        await env.store.add_message("unicast", "alice", "bob", "Alice", "x", "", 1000, False, also=failing)
    assert (await hooks.outbox.summary())[0] == 0


@inline
async def test_a_stop_during_a_claim_starts_no_post_and_keeps_the_events(env):
    hooks = env.webhooks()
    await send_message(env, hooks, offline=False)
    env.clock.advance(0)  # the round starts: its claim is on a database thread
    assert hooks._loop is not None
    await hooks.stopService()
    assert env.site.requests == []
    again = env.webhooks()
    await env.round(again)
    assert [e["event"] for e in env.site.events] == ["message"]
