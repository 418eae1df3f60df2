"""The id rules (docs/xmpp.md "User ids", docs/design.md#d13-identity): NFC, no format
controls, and with the XMPP bridge on no two users on one JID; at the admin API, in a
token's ``sub``, and in ``nextimctl ids check``."""
import pytest
import pytest_twisted

from urllib.parse import quote

from nextim_twisted import ids
from nextim_twisted.xmpp.bridge import Bridge
from tests.conftest import Harness, make_config
from tests.storefixtures import make_store
from tests.test_xmpp_rooms import FakeConnection

COMPOSED, DECOMPOSED = "d\u00e9", "de\u0301"     # é precomposed / e + combining acute
FULLWIDTH = "\uff46w"                              # ｆw
RLO = "ab\u202ecd"                                 # right-to-left override
# Paths are percent-encoded here: an IRI handed to treq came out NFC-normalised.


@pytest.mark.parametrize("user_id, ok", [
    ("alice", True), (COMPOSED, True), ("a@b.c", True), (DECOMPOSED, False), (RLO, False),
    ("zero\u200bwidth", False), ("\u2067isolate", False),
])
def test_problems(user_id, ok):
    assert (ids.problems(user_id) == []) is ok


@pytest.mark.parametrize("a, b", [(COMPOSED, DECOMPOSED), ("fw", FULLWIDTH), ("case", "Case"),
                                  ("ann@site.org", "Ann@Site.org")])
def test_look_alikes_share_an_xmpp_form(a, b):
    forms = ids.XmppForms()
    forms.add(a)
    assert forms.clash(b) == a
    assert forms.clash(a) is None       # an id does not clash with itself
    forms.remove(a)
    assert forms.clash(b) is None


def test_different_ids_do_not_clash():
    forms = ids.XmppForms()
    for uid in ("alice", "bob", "dé", "de", "a@b.c", "a b"):
        forms.add(uid)
    assert forms.clash("carol") is None and forms.clash("d") is None


@pytest_twisted.async_yield_fixture
async def bridged_daemon(tmp_path):
    """A daemon with the bridge on (no XMPP server needed) and users fw, dé, case."""
    config = make_config(xmpp={"enabled": True, "host": "127.0.0.1", "port": 5347,
                               "component_domain": "web.example.org", "secret": "s"})
    store, drop = await make_store("sqlite", tmp_path)
    h = Harness(store, config)
    for uid in ("fw", COMPOSED, "case"):
        await store.put_user(uid, uid)
    h.bridge = h.ctx.xmpp = Bridge(h.ctx, config.xmpp, h.clock, connection_factory=FakeConnection)
    await h.bridge.start()
    await h.start()
    try:
        yield h
    finally:
        await h.bridge.stop()
        await h.stop()
        await drop()


@pytest_twisted.ensureDeferred
async def test_admin_api_refuses_bad_and_clashing_ids(bridged_daemon):
    h = bridged_daemon
    for uid in (DECOMPOSED, RLO):
        resp = await h.admin("PUT", f"/admin/users/{quote(uid)}", {"nick": "x"})
        assert resp.status == 400 and resp.json["error"] == "bad_id", resp.text
    for uid, other in ((FULLWIDTH, "fw"), ("Case", "case")):
        resp = await h.admin("PUT", f"/admin/users/{quote(uid)}", {"nick": "x"})
        assert resp.status == 409 and resp.json["error"] == "id_clash", resp.text
        assert repr(other) in resp.json["error_msg"]
        assert await h.store.get_user(uid) is None
    resp = await h.admin("PUT", "/admin/users/fern", {"nick": "Fern"})
    assert resp.status == 200
    resp = await h.admin("PUT", "/admin/users/Fern", {"nick": "x"})   # clashes with the one just made
    assert resp.status == 409
    resp = await h.admin("PUT", "/admin/users/fw", {"nick": "still editable"})
    assert resp.status == 200


@pytest_twisted.ensureDeferred
async def test_token_sign_up_refuses_bad_and_clashing_subs(bridged_daemon):
    h = bridged_daemon
    for uid in (DECOMPOSED, RLO):
        resp = await h.call("online", user=uid)
        assert resp.status == 401 and resp.json["error"] == "invalid_token", resp.text
    resp = await h.call("online", user=FULLWIDTH)
    assert resp.status == 409 and resp.json["error"] == "id_clash"
    assert await h.store.get_user(FULLWIDTH) is None
    resp = await h.call("online", user="newcomer")
    assert resp.status == 200
    assert (await h.call("online", user="NewComer")).status == 409


@pytest_twisted.ensureDeferred
async def test_without_the_bridge_case_and_width_variants_are_separate_users(daemon):
    h = daemon
    assert (await h.admin("PUT", f"/admin/users/{quote(FULLWIDTH)}", {"nick": "x"})).status == 200
    assert (await h.admin("PUT", "/admin/users/Alice", {"nick": "x"})).status == 200
    assert (await h.admin("PUT", f"/admin/users/{quote(DECOMPOSED)}", {"nick": "x"})).status == 400


@pytest_twisted.ensureDeferred
async def test_broken_ids_lists_old_data(tmp_path):
    store, drop = await make_store("sqlite", tmp_path)
    try:
        for uid in ("alice", "fw", FULLWIDTH, DECOMPOSED, COMPOSED, RLO):
            await store.put_user(uid, uid)
        found = await ids.broken_ids(store, page=2)
    finally:
        await drop()
    by_id = {}
    for uid, problem in found:
        by_id.setdefault(uid, []).append(problem)
    assert set(by_id) == {FULLWIDTH, DECOMPOSED, COMPOSED, RLO}
    assert any("NFC" in p for p in by_id[DECOMPOSED])
    assert any("U+202E" in p for p in by_id[RLO])
    # each clash once, on the later id of the pair
    clashes = {uid: p for uid, ps in by_id.items() for p in ps if p.startswith("same XMPP address")}
    assert clashes == {FULLWIDTH: "same XMPP address as fw", COMPOSED: f"same XMPP address as {DECOMPOSED}"}


# -- nextimctl ids check, xmpp pair/unpair/list (a real subprocess) ------------------------
@pytest_twisted.ensureDeferred
async def test_nextimctl_lists_broken_ids_and_pairs_jids(tmp_path):
    from tests.storefixtures import new_store
    from tests.test_ctl import Ctl
    ctl = Ctl("sqlite", tmp_path)
    ctl.ok("migrate")
    ctl.ok("user", "add", "alice")
    assert "bad_id" not in ctl.refused("user", "add", DECOMPOSED) and "NFC" in ctl.refused("user", "add", DECOMPOSED)
    assert ctl.ok("ids", "check") == ""
    # old data, written before the rules
    store = new_store("sqlite", tmp_path, "nextim.sqlite")
    await store.start()
    for uid in ("fw", FULLWIDTH, RLO):
        await store.put_user(uid, uid)
    await store.close()
    r = ctl.run("ids", "check")
    assert r.returncode == 1 and r.stderr == "nextimctl: 2 user ids break the id rules (listed on stdout)\n"
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert ["\\uff46w", "same XMPP address as fw"] in lines
    assert ["ab\\u202ecd", "contains format control characters U+202E"] in lines

    assert ctl.ok("xmpp", "pair", "alice", "Romeo@Example.org", "--nick", "Romeo") == \
        "alice and romeo@example.org are paired\n"
    assert ctl.ok("xmpp", "list") == "alice\tromeo@example.org\tRomeo\t\tnone\n"
    assert "not a valid JID" in ctl.refused("xmpp", "pair", "alice", "@@")
    assert "unknown user" in ctl.refused("xmpp", "pair", "nobody", "romeo@example.org")
    ctl.ok("xmpp", "unpair", "alice", "romeo@example.org")
    assert ctl.ok("xmpp", "list", "alice") == ""
    assert "not paired" in ctl.refused("xmpp", "unpair", "alice", "romeo@example.org")
