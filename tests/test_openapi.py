"""The OpenAPI description (``nextim_twisted/web/openapi.json``) matches the code:
every endpoint of the one ``webim/*`` table (``web/webim.WEBIM``), the long poll, and
every Klein route (admin, operator routes, the bundled client) is in it and vice
versa; it is a valid OpenAPI 3.1 document, the daemon serves it, and real answers of
every operation validate against its response schemas.

Response bodies are checked with ``jsonschema`` (OpenAPI 3.1 schemas are JSON Schema
2020-12, so no OpenAPI-specific validator is needed for them); the document itself
with ``openapi-spec-validator``.
"""
import json
import re

import pytest
import pytest_twisted
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from nextim_twisted.web.app import routes
from nextim_twisted.web.ops import OPENAPI_PATH
from nextim_twisted.web.webim import POLL_METHODS, POLL_PATH, WEBIM
from tests.conftest import API_KEY
from tests import memweb

daemon = memweb.daemon  # these HTTP tests run in memory, their timers on a Clock (tests/memweb.py)
inline = pytest_twisted.ensureDeferred

with open(OPENAPI_PATH, encoding="utf-8") as _f:
    DOC = json.load(_f)

DOC_URI = "urn:nextim:openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource(contents=DOC, specification=DRAFT202012))  # type: ignore[call-arg]
METHODS = ("get", "post", "put", "delete", "patch")
JSONP = re.compile(r"^/\*\*/[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*\((.*)\);$", re.S)


def served_routes():
    """``{openapi path: set of methods}``: the ``webim/*`` table and the long poll
    (answered by ``web/webim.HotPathRoot``), then the Klein url map of the rest."""
    routes_ = {f"/webim/{name}": {"get", "post"} for name in WEBIM}  # each takes GET and POST
    routes_[POLL_PATH] = {m.decode().lower() for m in POLL_METHODS}
    for rule in routes(None, None).url_map.iter_rules():
        methods = {m.lower() for m in rule.methods} - {"head", "options"}
        assert not rule.rule.startswith(("/webim/", POLL_PATH)), f"{rule.rule} declared twice"
        if rule.rule.startswith("/static/"):
            routes_.setdefault("/static/{path}", set()).update(methods)
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes_.setdefault(path, set()).update(methods)
    return routes_


def documented():
    return {path: {m for m in item if m in METHODS} for path, item in DOC["paths"].items()}


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1")
    validate_spec(DOC)


def test_every_route_is_documented_and_every_documented_path_is_served():
    routes_, doc = served_routes(), documented()
    assert set(routes_) - set(doc) == set(), "routes missing from openapi.json"
    assert set(doc) - set(routes_) == set(), "openapi.json documents paths the code does not serve"
    for path, methods in routes_.items():
        assert methods == doc[path], path


def test_every_webim_endpoint_is_documented_with_get_and_post():
    for name in WEBIM:
        item = DOC["paths"][f"/webim/{name}"]
        assert set(item) >= {"get", "post"}, name
        for method in ("get", "post"):
            params = {p.get("name") or p["$ref"].rsplit("/", 1)[-1] for p in item[method].get("parameters", [])}
            assert "callback" in params, (name, method)  # JSONP everywhere
            assert "200" in item[method]["responses"]
            assert "application/javascript" in item[method]["responses"]["200"]["content"]


def test_every_error_response_is_the_envelope():
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for status, response in op["responses"].items():
                response = resolve(response)
                if status.startswith(("4", "5")) and not (path == "/health" and status == "503"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)


# -- answers against the schemas ----------------------------------------------------

def obj_ref_parts(ref):
    return [p.replace("~1", "/").replace("~0", "~") for p in ref.lstrip("#/").split("/")]


def resolve(obj):
    """Follow ``$ref`` pointers inside the document."""
    while isinstance(obj, dict) and "$ref" in obj:
        target = DOC
        for part in obj_ref_parts(obj["$ref"]):
            target = target[part]
        obj = target
    return obj


def check(path, method, resp, covered):
    """Validate one real answer against the document; record the operation as covered."""
    op = DOC["paths"][path][method.lower()]
    covered.add((path, method.lower()))
    responses = op["responses"]
    assert str(resp.status) in responses, (path, method, resp.status, resp.text[:200])
    response = resolve(responses[str(resp.status)])
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    content = response.get("content", {})
    assert ctype in content or "*/*" in content, (path, method, resp.status, ctype, list(content))
    if ctype == "application/json":
        body = resp.json
        pointer = "/".join(["#", "paths", path.replace("~", "~0").replace("/", "~1"), method.lower(),
                            "responses", str(resp.status), "content", "application~1json", "schema"])
        if "$ref" in responses[str(resp.status)]:
            pointer = responses[str(resp.status)]["$ref"] + "/content/application~1json/schema"
        validator = Draft202012Validator({"$ref": DOC_URI + pointer}, registry=REGISTRY)
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, (path, method, resp.status, [e.message for e in errors][:3], body)
    elif ctype == "application/javascript":
        inner = json.loads(JSONP.match(resp.text).group(1))
        json_schema = content.get("application/json", {}).get("schema")
        if isinstance(inner, dict) and inner.get("success") is False:
            json_schema = {"$ref": "#/components/schemas/Error"}
        if inner == "ok":
            json_schema = {"const": "ok"}
        if json_schema is not None:
            schema = json.loads(json.dumps(json_schema).replace('"#/', f'"{DOC_URI}#/'))
            errors = list(Draft202012Validator(schema, registry=REGISTRY).iter_errors(inner))
            assert not errors, (path, method, [e.message for e in errors][:3], inner)
    elif ctype == "text/plain" and "text/plain" in content and content["text/plain"]["schema"].get("const"):
        assert resp.text == content["text/plain"]["schema"]["const"]


@inline
async def test_served_document_is_the_file(daemon):
    resp = await daemon.request("GET", "/openapi.json")
    assert resp.status == 200 and resp.headers["content-type"].startswith("application/json")
    assert resp.json == DOC


@inline
async def test_real_answers_of_every_operation_match_the_document(daemon):
    covered = set()
    d = daemon

    async def webim(name, method="POST", user=None, **params):
        resp = await d.call(name, user=user, method=method, **params)
        check(f"/webim/{name}", method, resp, covered)
        return resp

    async def admin(method, path, template, body=None, key=API_KEY):
        resp = await d.admin(method, path, body, key=key)
        check(template, method, resp, covered)
        return resp

    # the directory
    await admin("PUT", "/admin/users/erin", "/admin/users/{user_id}", {"nick": "Erin", "url": "http://e"})
    await admin("PUT", "/admin/users/erin/buddies/alice", "/admin/users/{user_id}/buddies/{buddy_id}", {"group": "G"})
    await admin("PUT", "/admin/rooms/den", "/admin/rooms/{room_id}", {"nick": "Den"})
    await admin("PUT", "/admin/rooms/den/members/alice", "/admin/rooms/{room_id}/members/{user_id}")
    await admin("POST", "/admin/users/alice/notifications", "/admin/users/{user_id}/notifications", {"text": "hi"})
    await admin("PUT", "/admin/users/x", "/admin/users/{user_id}", {"nick": 5})  # 400
    await admin("GET", "/admin/stats", "/admin/stats", key="wrong")  # 401

    for method in ("POST", "GET"):
        a = (await webim("online", method, user="alice", buddy_ids="bob", room_ids="lobby")).json
        b = (await webim("online", method, user="bob", callback="cb"))
        bob = b.jsonp("cb")["connection"]["ticket"]
        ta = a["connection"]["ticket"]
        await webim("online", method)  # 401
        await webim("buddies", method, ticket=ta, ids="bob,erin")
        await webim("rooms", method, ticket=ta, ids="lobby,den")
        await webim("join", method, ticket=ta, id="den")
        await webim("members", method, ticket=ta, id="lobby")
        await webim("leave", method, ticket=ta, id="den")
        await webim("join", method, ticket=ta, id="nowhere")  # 404
        await webim("message", method, ticket=ta, type="unicast", to="bob", body="hello")
        await webim("message", method, ticket=ta, type="multicast", to="lobby", body="all")
        await webim("message", method, ticket=ta, type="unicast", to="bob")  # 400
        await webim("message", method, ticket=ta, type="unicast", to="bob", body="x" * 10001)  # 413
        await webim("history", method, ticket=ta, id="bob")
        await webim("history", method, ticket=ta, id="lobby", type="multicast", callback="cb")
        await webim("status", method, ticket=ta, to="bob", show="typing")
        await webim("presence", method, ticket=ta, show="away", status="brb")
        await webim("setting", method, ticket=ta, data='{"blocked_rooms": []}')
        await webim("setting", method, ticket=ta)
        await webim("notification", method, ticket=ta)
        await webim("notifications", method, ticket=ta, callback="cb")
        await webim("clear_history", method, ticket=ta, id="bob")
        poll = await d.request(method, "/packets", {"ticket": bob, "ack": 0})
        check("/packets", method, poll, covered)
        check("/packets", method, await d.request(method, "/packets", {"ticket": bob, "ack": 0, "callback": "cb"}),
              covered)
        check("/packets", method, await d.request(method, "/packets", {"ticket": "nope"}), covered)
        check("/packets", method, await d.request(method, "/packets", {"ticket": bob, "ack": "x"}), covered)
        await webim("refresh", method, ticket=bob)
        await webim("offline", method, ticket=ta)
        await webim("login", method, username="a", password="b")
        await webim("logout", method)

    ticket = (await d.online("alice"))["connection"]["ticket"]
    d.router.sessions[ticket].push("statuses", {"from": "bob", "nick": "Bob", "to": "alice", "show": "typing"})
    check("/", "GET", await d.request("GET", "/", {"ticket": ticket, "ack": 0}), covered)
    check("/", "GET", await d.request("GET", "/"), covered)
    check("/static/{path}", "GET", await d.request("GET", "/static/app.js"), covered)
    check("/openapi.json", "GET", await d.request("GET", "/openapi.json"), covered)
    check("/health", "GET", await d.request("GET", "/health"), covered)
    check("/metrics", "GET", await d.request("GET", "/metrics"), covered)

    await admin("POST", "/admin/broadcast", "/admin/broadcast", {"body": "maintenance"})
    await admin("GET", "/admin/stats", "/admin/stats")
    await admin("POST", "/admin/directory/invalidate", "/admin/directory/invalidate",
                {"users": ["alice", "nobody"], "rooms": ["lobby"]})
    await admin("POST", "/admin/directory/invalidate", "/admin/directory/invalidate", {"users": "alice"})  # 400
    await admin("DELETE", "/admin/rooms/den/members/alice", "/admin/rooms/{room_id}/members/{user_id}")
    await admin("DELETE", "/admin/rooms/den", "/admin/rooms/{room_id}")
    await admin("DELETE", "/admin/users/erin/buddies/alice", "/admin/users/{user_id}/buddies/{buddy_id}")
    await admin("GET", "/admin/users/erin/export", "/admin/users/{user_id}/export")
    await admin("DELETE", "/admin/users/erin", "/admin/users/{user_id}")
    await admin("DELETE", "/admin/users/erin", "/admin/users/{user_id}")  # 404
    await admin("GET", "/admin/users/erin/export", "/admin/users/{user_id}/export")  # 404

    every = {(path, m) for path, item in DOC["paths"].items() for m in item if m in METHODS}
    assert every - covered == set(), "operations no test answer exercised"


@pytest.mark.parametrize("path", ["/webim/online", "/packets", "/admin/stats"])
@inline
async def test_unknown_methods_answer_the_envelope(daemon, path):
    resp = await daemon.request("PATCH", path)
    assert resp.status in (404, 405) and resp.json["success"] is False
