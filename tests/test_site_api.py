"""docs/site-api.openapi.json (the host site's side, docs/integration.md) is a valid
OpenAPI 3.1 document, says what the code enforces (list and text limits, the paths
the HTTP directory asks), and the webhook bodies the daemon sends validate against it."""
import json
import os
import time

import pytest_twisted
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from twisted.internet import reactor, task

from nextim_twisted.directory import http as directory_http
from nextim_twisted.webhooks.worker import Webhooks
from tests.conftest import make_config
from tests.sitefixtures import FakeSite
from tests.storefixtures import make_store

inline = pytest_twisted.ensureDeferred
PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "site-api.openapi.json")
with open(PATH, encoding="utf-8") as _f:
    DOC = json.load(_f)
URI = "urn:nextim:site-api"
REGISTRY = Registry().with_resource(URI, Resource(contents=DOC, specification=DRAFT202012))  # type: ignore[call-arg]


def validator(name):
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"}, registry=REGISTRY)


def test_the_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1")
    validate_spec(DOC)


def test_the_limits_it_states_are_the_codes():
    schemas = DOC["components"]["schemas"]
    for name in ("UserList", "BuddyList", "RoomList", "MemberList"):
        (prop,) = schemas[name]["properties"].values()
        assert prop["maxItems"] == directory_http.MAX_LIST
    for key, limit in directory_http.TEXT_LIMITS.items():
        for schema in (schemas["User"], schemas["Room"], schemas["Buddy"]["allOf"][1]):
            if key in schema["properties"]:
                assert schema["properties"][key]["maxLength"] == limit, (key, schema)
    assert schemas["Id"]["maxLength"] == 64


def test_it_documents_every_path_the_directory_asks_and_every_event():
    assert set(DOC["paths"]) == {"/users/{id}", "/users", "/users/{id}/buddies", "/users/{id}/rooms",
                                 "/rooms/{id}", "/rooms/{id}/members"}
    assert set(DOC["webhooks"]) == set(make_config().webhooks.events)


def test_the_test_sites_answers_follow_it():
    site = FakeSite("x" * 16)
    site.add_user("alice", "Alice", pic_url="https://x.example/a.png")
    site.add_user("bob", "Bob")
    site.befriend("alice", "bob", "Friends")
    site.add_room("lobby", "Lobby", members=("alice", "bob"))
    for target, schema in (("/nextim/users/alice", "User"), ("/nextim/users?ids=alice,bob", "UserList"),
                           ("/nextim/users/alice/buddies", "BuddyList"), ("/nextim/users/alice/rooms", "RoomList"),
                           ("/nextim/rooms/lobby", "Room"), ("/nextim/rooms/lobby/members", "MemberList")):
        status, value = site.answer(target)
        assert status == 200
        validator(schema).validate(value)
    assert not validator("User").is_valid({"id": "a/b", "nick": "x"})
    assert not validator("User").is_valid({"id": " a", "nick": "x"})


@inline
async def test_the_webhook_bodies_follow_it(tmp_path):
    store, drop = await make_store("sqlite", tmp_path)
    site = await FakeSite("unused-secret-xxxxxxxx", webhook_secret="w" * 20).listen()
    clock = task.Clock()
    clock.advance(time.time())
    hooks = Webhooks(make_config(webhooks={"url": site.base + "/hook", "secret": "w" * 20}).webhooks,
                     store, reactor, clock)
    hooks.startService()
    try:
        user = type("U", (), {"id": "alice", "nick": "Alice", "show": "away", "status": "lunch"})()
        await store.add_message("unicast", "alice", "bob", "Alice", "hi", "", hooks.now_ms(), False,
                                also=hooks.message_rows(offline=True))
        hooks.user_presence(user, "show")
        hooks.room_joined(user, "lobby")
        hooks.room_left(user, "lobby")
        clock.advance(1)
        while hooks._flushing is not None or hooks._loop is not None or len(site.events) < 5:
            await (hooks._flushing or hooks._loop or site.next_request())
            clock.advance(0)
    finally:
        await hooks.stopService()
        await site.close()
        await drop()
    names = {"message": "MessageEvent", "message.offline": "MessageOfflineEvent", "presence": "PresenceEvent",
             "room.join": "RoomJoinEvent", "room.leave": "RoomLeaveEvent"}
    assert sorted(e["event"] for e in site.events) == sorted(names)
    for event in site.events:
        validator(names[event["event"]]).validate(event)
