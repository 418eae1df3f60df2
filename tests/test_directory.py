"""The directory providers (nextim_twisted/directory/): the local one over the store,
and the HTTP one against a real site on loopback (tests/sitefixtures.py): signed
requests, caching, invalidation, and every way the site can fail
(docs/integration.md#failures)."""
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from nextim_twisted.directory.base import DirectoryUnavailable, IDirectory
from nextim_twisted.directory.http import MAX_LIST, HTTPDirectory
from nextim_twisted.directory.local import LocalDirectory
from nextim_twisted.hostsite import signing
from nextim_twisted.hostsite.client import SiteClient
from tests.sitefixtures import FakeSite
from tests.storefixtures import STORE_KINDS, make_store, skip_unless_enabled

inline = pytest_twisted.ensureDeferred
SECRET = "directory-secret-" + "d" * 16


# -- signing ---------------------------------------------------------------------

def test_signature_is_hmac_of_method_path_timestamp_body():
    import hashlib
    import hmac
    given = signing.signature(SECRET, "post", "/hooks?x=1", 1700000000, b'{"a":1}')
    expected = hmac.new(SECRET.encode(), b'POST\n/hooks?x=1\n1700000000\n{"a":1}', hashlib.sha256).hexdigest()
    assert given == "sha256=" + expected


def test_verify_refuses_other_secret_body_path_and_old_timestamps():
    now = 1700000000
    h = signing.sign_headers(SECRET, "GET", "/nextim/users/alice", b"", now)
    ts, sig = h[signing.TIMESTAMP_HEADER], h[signing.SIGNATURE_HEADER]
    assert signing.verify(SECRET, "GET", "/nextim/users/alice", b"", ts, sig, now + 10)
    assert not signing.verify("another-secret-xxxxxxxx", "GET", "/nextim/users/alice", b"", ts, sig, now)
    assert not signing.verify(SECRET, "GET", "/nextim/users/bob", b"", ts, sig, now)
    assert not signing.verify(SECRET, "POST", "/nextim/users/alice", b"", ts, sig, now)
    assert not signing.verify(SECRET, "GET", "/nextim/users/alice", b"x", ts, sig, now)
    assert not signing.verify(SECRET, "GET", "/nextim/users/alice", b"", ts, sig, now + 301)
    assert not signing.verify(SECRET, "GET", "/nextim/users/alice", b"", "soon", sig, now)


# -- the local directory -------------------------------------------------------------

@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    skip_unless_enabled(request.param)
    st, drop = pytest_twisted.blockon(make_store(request.param, tmp_path))
    yield st
    pytest_twisted.blockon(drop())


@inline
async def test_local_directory_reads_the_store(store):
    directory = LocalDirectory(store)
    assert IDirectory in type(directory).__mro__
    await store.put_user("alice", "Alice")
    await store.put_user("bob", "Bob")
    await store.put_buddy("alice", "bob", "Friends")
    await store.put_room("lobby", "Lobby")
    await store.put_member("lobby", "alice")
    assert (await directory.profile("alice"))["nick"] == "Alice"
    assert await directory.profile("nobody") is None
    assert set(await directory.profiles(["alice", "bob", "nobody"])) == {"alice", "bob"}
    assert await directory.buddies("alice") == [("bob", "Friends")]
    assert [r["id"] for r in await directory.rooms_of("alice")] == ["lobby"]
    assert (await directory.room("lobby"))["all_count"] == 1
    assert await directory.member_ids("lobby") == ["alice"]
    assert await directory.is_member("lobby", "alice") and not await directory.is_member("lobby", "bob")
    assert directory.provisions


# -- the HTTP directory --------------------------------------------------------------

class Env:
    def __init__(self, site, directory, clock):
        self.site, self.directory, self.clock = site, directory, clock

    def asked(self):
        return [t for m, t in self.site.requests if m == "GET"]


@pytest_twisted.async_yield_fixture
async def env():
    site = await FakeSite(SECRET).listen()
    site.add_user("alice", "Alice", pic_url="https://site.example/alice.png")
    site.add_user("bob", "Bob")
    site.add_user("carol", "Carol")
    site.befriend("alice", "bob", "Friends")
    site.add_room("lobby", "Lobby", members=("alice", "bob"))
    clock = task.Clock()
    clock.advance(time.time())
    client = SiteClient(reactor, clock, SECRET, 5, 2 * 1024 * 1024)
    directory = HTTPDirectory(client, site.url, clock, cache_seconds=60)
    try:
        yield Env(site, directory, clock)
    finally:
        await directory.stop()
        await site.close()


@inline
async def test_answers_of_the_site_reach_the_caller_signed(env):
    d = env.directory
    assert IDirectory in type(d).__mro__ and not d.provisions
    alice = await d.profile("alice")
    assert alice == {"id": "alice", "nick": "Alice", "pic_url": "https://site.example/alice.png",
                     "default_pic_url": None, "url": None}
    assert await d.profile("nobody") is None
    assert await d.buddies("alice") == [("bob", "Friends")]
    assert [(r["id"], r["all_count"]) for r in await d.rooms_of("alice")] == [("lobby", 2)]
    assert (await d.room("lobby"))["nick"] == "Lobby"
    assert await d.room("nowhere") is None
    assert await d.member_ids("lobby") == ["alice", "bob"]
    assert await d.is_member("lobby", "bob") and not await d.is_member("lobby", "carol")
    assert set(await d.profiles(["carol", "nobody", "zed"])) == {"carol"}  # nobody: cached unknown
    assert env.site.bad_signatures == 0
    assert ("GET", "/nextim/users?ids=carol%2Czed") in env.site.requests


@inline
async def test_ids_are_percent_encoded_in_paths(env):
    env.site.add_user("j@x y", "Odd")
    assert (await env.directory.profile("j@x y"))["nick"] == "Odd"
    assert env.asked()[-1] == "/nextim/users/j%40x%20y"


@inline
async def test_an_answer_is_cached_for_cache_seconds(env):
    d = env.directory
    await d.profile("alice")
    env.site.users["alice"]["nick"] = "Alice II"
    assert (await d.profile("alice"))["nick"] == "Alice"
    env.clock.advance(60)
    assert (await d.profile("alice"))["nick"] == "Alice II"
    assert env.asked().count("/nextim/users/alice") == 2


@inline
async def test_buddies_answer_fills_the_profiles_of_the_buddies(env):
    await env.directory.buddies("alice")
    assert set(await env.directory.profiles(["bob"])) == {"bob"}
    assert not any(t.startswith("/nextim/users?") for t in env.asked())


@inline
async def test_concurrent_reads_of_one_answer_share_one_request(env):
    env.site.mode = "hang"
    first, second = env.directory.profile("alice"), env.directory.profile("alice")
    await env.site.next_request()
    env.site.mode = None
    request = env.site.hanging.pop()
    request.write(b'{"id": "alice", "nick": "Alice"}')
    request.finish()
    assert (await first)["nick"] == (await second)["nick"] == "Alice"
    assert env.asked().count("/nextim/users/alice") == 1


@inline
async def test_invalidate_asks_again_at_once(env):
    d = env.directory
    assert await d.buddies("alice") == [("bob", "Friends")]
    env.site.unfriend("alice", "bob")
    assert await d.buddies("alice") == [("bob", "Friends")]
    d.invalidate(user_ids=["alice"])
    assert await d.buddies("alice") == []
    await d.member_ids("lobby")
    env.site.members["lobby"].add("carol")
    d.invalidate(room_ids=["lobby"])
    assert await d.member_ids("lobby") == ["alice", "bob", "carol"]


@inline
async def test_invalidate_during_a_read_does_not_cache_the_old_answer(env):
    env.site.mode = "hang"
    reading = env.directory.profile("alice")
    await env.site.next_request()
    env.directory.invalidate(user_ids=["alice"])
    request = env.site.hanging.pop()
    request.write(b'{"id": "alice", "nick": "Old Alice"}')
    request.finish()
    assert (await reading)["nick"] == "Old Alice"  # the caller that asked gets its answer
    env.site.mode = None
    assert (await env.directory.profile("alice"))["nick"] == "Alice"


# -- failures --------------------------------------------------------------------------

async def expect_unavailable(call):
    with pytest.raises(DirectoryUnavailable) as exc:
        await call
    assert exc.value.status == 503 and exc.value.code == "directory_unavailable"
    return exc.value.message


@inline
async def test_a_500_with_nothing_cached_is_unavailable(env):
    env.site.mode = "500"
    message = await expect_unavailable(env.directory.profile("alice"))
    assert "HTTP 500" in message and "try again" in message
    assert env.directory.unavailable == {"user": 1}
    assert env.directory.requests[("user", "status")] == 1


@inline
async def test_a_500_with_a_warm_cache_serves_the_cached_answer(env):
    d = env.directory
    await d.profile("alice")
    await d.rooms_of("alice")
    env.clock.advance(200)  # expired (the site checks timestamps within 300 s)
    env.site.mode = "500"
    assert (await d.profile("alice"))["nick"] == "Alice"
    assert [r["id"] for r in await d.rooms_of("alice")] == ["lobby"]
    assert await d.is_member("lobby", "alice")
    assert d.stale_served == {"user": 1, "rooms": 2}
    env.site.mode = None
    env.site.users["alice"]["nick"] = "Back"
    assert (await d.profile("alice"))["nick"] == "Back"  # asked again once it answers


@inline
async def test_a_site_that_hangs_past_the_timeout_fails_on_the_clock(env):
    env.site.mode = "hang"
    reading = env.directory.profile("alice")
    await env.site.next_request()
    assert not reading.called
    env.clock.advance(4.9)
    assert not reading.called
    env.clock.advance(0.2)
    message = await expect_unavailable(reading)
    assert "no answer within 5 s" in message
    assert env.directory.requests[("user", "timeout")] == 1


@inline
async def test_a_hanging_site_with_a_warm_cache_serves_the_cached_answer(env):
    await env.directory.buddies("alice")
    env.clock.advance(61)
    env.site.mode = "hang"
    reading = env.directory.buddies("alice")
    await env.site.next_request()
    env.clock.advance(5)
    assert await reading == [("bob", "Friends")]
    assert env.directory.stale_served == {"buddies": 1}


@inline
async def test_malformed_json_is_refused(env):
    env.site.mode = "malformed"
    assert "not JSON" in await expect_unavailable(env.directory.profile("alice"))
    assert env.directory.requests[("user", "malformed")] == 1


@inline
async def test_a_10_mb_list_is_refused_unread(env):
    env.site.mode = "huge"
    assert "over 2097152 bytes" in await expect_unavailable(env.directory.buddies("alice"))
    assert env.directory.requests[("buddies", "too_large")] == 1


@pytest.mark.parametrize("answer, rule", [
    ({"buddies": [{"id": f"u{i}", "nick": "U"} for i in range(MAX_LIST + 1)]}, "at most 5000"),
    ({"buddies": [{"id": "bo/b", "nick": "Bob"}]}, "buddies[0].id"),
    ({"buddies": [{"id": "bob,carol", "nick": "Bob"}]}, "buddies[0].id"),
    ({"buddies": [{"id": "x" * 65, "nick": "Bob"}]}, "buddies[0].id"),
    ({"buddies": [{"id": 7, "nick": "Bob"}]}, "buddies[0].id"),
    ({"buddies": [{"id": "bob", "nick": 7}]}, "nick: must be a string"),
    ({"buddies": [{"id": "bob"}]}, "nick: required"),
    ({"buddies": [{"id": "bob", "nick": "B" * 101}]}, "nick: longer than 100"),
    ({"buddies": [{"id": "bob", "nick": "Bob\x00"}]}, "nick: must be non-empty text"),
    ({"buddies": [{"id": "bob", "nick": "Bob", "group": ["a"]}]}, "group: must be a string"),
    ({"buddies": [{"id": "alice", "nick": "Me"}]}, "not their own buddy"),
    ({"buddies": {"bob": "Bob"}}, "buddies: must be an array"),
    ([{"id": "bob", "nick": "Bob"}], "must be a JSON object"),
])
@inline
async def test_answers_that_break_the_contract_are_refused_with_the_rule(env, answer, rule):
    env.site.mode = lambda target: (200, answer)
    message = await expect_unavailable(env.directory.buddies("alice"))
    assert "malformed answer" in message and rule in message
    assert env.directory.requests[("buddies", "malformed")] == 1
    assert ("buddies", "alice") not in env.directory._cache  # junk is never kept


@inline
async def test_a_profile_for_another_id_or_an_unasked_user_is_refused(env):
    env.site.mode = lambda target: (200, {"id": "bob", "nick": "Bob"})
    assert "'bob' answered for 'alice'" in await expect_unavailable(env.directory.profile("alice"))
    env.site.mode = lambda target: (200, {"users": [{"id": "mallory", "nick": "M"}]})
    assert "not asked for" in await expect_unavailable(env.directory.profiles(["carol"]))
    env.site.mode = lambda target: (200, {"id": "lobby", "nick": "Lobby", "all_count": -1})
    assert "all_count" in await expect_unavailable(env.directory.room("lobby"))


@inline
async def test_a_site_that_is_down_cold_and_warm(env):
    d = env.directory
    await d.profile("alice")
    await env.site.close()
    env.clock.advance(61)
    assert (await d.profile("alice"))["nick"] == "Alice"  # warm: the cached answer
    assert "ConnectionRefusedError" in await expect_unavailable(d.profile("bob"))  # cold
    assert d.stale_served == {"user": 1} and d.unavailable == {"user": 1}
    assert d.requests[("user", "connect")] == 2


@inline
async def test_profiles_of_many_users_is_one_request_per_hundred(env):
    for i in range(150):
        env.site.add_user(f"u{i}", f"U{i}")
    found = await env.directory.profiles([f"u{i}" for i in range(150)] + ["nobody"])
    assert len(found) == 150
    assert len([t for t in env.asked() if t.startswith("/nextim/users?")]) == 2
    await env.directory.profiles(["nobody", "u3"])  # unknown ids are cached too
    assert len([t for t in env.asked() if t.startswith("/nextim/users?")]) == 2


@inline
async def test_a_wrong_secret_is_refused_by_the_site(env):
    client = SiteClient(reactor, env.clock, "not-the-site-secret-xxxx", 5, 1024)
    other = HTTPDirectory(client, env.site.url, env.clock)
    try:
        assert "HTTP 401" in await expect_unavailable(other.profile("alice"))
    finally:
        await other.stop()
    assert env.site.bad_signatures == 1


@inline
async def test_invalidating_a_room_forgets_the_room_lists_of_its_old_and_new_members(env):
    d = env.directory
    for uid in ("alice", "bob", "carol"):
        await d.rooms_of(uid)
    await d.member_ids("lobby")
    env.site.members["lobby"] = {"alice", "carol"}
    d.invalidate(room_ids=["lobby"])
    assert await d.member_ids("lobby") == ["alice", "carol"]
    assert await d.is_member("lobby", "carol") and not await d.is_member("lobby", "bob")
    assert [r["id"] for r in await d.rooms_of("carol")] == ["lobby"]
    assert await d.rooms_of("bob") == []
