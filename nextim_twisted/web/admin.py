"""The admin API under ``/admin/`` (docs/design.md#d14-directory): the site's backend
keeps the directory (users, buddies, rooms, members), sends notifications and
broadcasts, and reads stats. Declared on Klein (:func:`add_routes`); these are
low-rate calls, so Klein's routing cost does not matter here.

Every call needs ``Authorization: Bearer <[admin] api_key>``; bodies are JSON objects.
"""
import hmac
import json

from klein import Klein
from twisted.internet import defer

from ..errors import BadRequest, Forbidden, Unauthorized
from ..handlers import admin, directory
from .answer import all_storable, answer, bearer


def check_key(ctx, request):
    """:raises Forbidden: ``admin_disabled``, no ``[admin] api_key`` configured.
    :raises Unauthorized: ``bad_api_key``, a missing or wrong bearer key."""
    key = ctx.config.admin.api_key
    if not key:
        raise Forbidden("the admin API is disabled: set [admin] api_key", code="admin_disabled")
    given = bearer(request) or ""
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise Unauthorized("admin API key required: Authorization: Bearer <key>", code="bad_api_key")


def json_body(request):
    """The request body as a JSON object (``{}`` when empty).

    :raises BadRequest: ``bad_json``, not UTF-8 JSON or not an object;
        ``bad_encoding``, a string with NUL or a lone surrogate (as form parameters).
    """
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("body must be a JSON object", code="bad_json") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object", code="bad_json")
    if not all_storable(value):
        raise BadRequest("body: strings must be valid Unicode text without NUL", code="bad_encoding")
    return value


def add_routes(app: Klein, ctx) -> None:
    """Declare the admin routes on ``app`` under ``/admin``.

    :param ctx: the handler :class:`~nextim_twisted.handlers.context.Context`; only
        used when a route is called (so the url map can be read without one).
    """

    def call(request, fn, *args, body=False):
        async def work(params, callback):
            check_key(ctx, request)
            if body:
                return await fn(ctx, *args, json_body(request))
            return await fn(ctx, *args)
        return defer.ensureDeferred(answer(ctx, request, work))

    with app.subroute("/admin") as sub:
        @sub.route("/users/<string:user_id>", methods=["PUT"])
        def put_user(request, user_id):
            return call(request, admin.put_user, user_id, body=True)

        @sub.route("/users/<string:user_id>", methods=["DELETE"])
        def delete_user(request, user_id):
            # ?erase=true: everything stored about the user goes (docs/operations.md#erasure-and-export)
            erase = (request.args or {}).get(b"erase", [b""])[0].lower() in (b"true", b"1", b"yes")
            return call(request, admin.delete_user, user_id, erase)

        @sub.route("/users/<string:user_id>/export", methods=["GET"])
        def export_user(request, user_id):
            return call(request, admin.export_user, user_id)

        @sub.route("/users/<string:user_id>/buddies/<string:buddy_id>", methods=["PUT"])
        def put_buddy(request, user_id, buddy_id):
            return call(request, admin.put_buddy, user_id, buddy_id, body=True)

        @sub.route("/users/<string:user_id>/buddies/<string:buddy_id>", methods=["DELETE"])
        def delete_buddy(request, user_id, buddy_id):
            return call(request, admin.delete_buddy, user_id, buddy_id)

        @sub.route("/users/<string:user_id>/notifications", methods=["POST"])
        def notify(request, user_id):
            return call(request, admin.add_notification, user_id, body=True)

        @sub.route("/rooms/<string:room_id>", methods=["PUT"])
        def put_room(request, room_id):
            return call(request, admin.put_room, room_id, body=True)

        @sub.route("/rooms/<string:room_id>", methods=["DELETE"])
        def delete_room(request, room_id):
            return call(request, admin.delete_room, room_id)

        @sub.route("/rooms/<string:room_id>/members/<string:user_id>", methods=["PUT"])
        def put_member(request, room_id, user_id):
            return call(request, admin.put_member, room_id, user_id)

        @sub.route("/rooms/<string:room_id>/members/<string:user_id>", methods=["DELETE"])
        def delete_member(request, room_id, user_id):
            return call(request, admin.delete_member, room_id, user_id)

        @sub.route("/broadcast", methods=["POST"])
        def broadcast(request):
            return call(request, admin.broadcast, body=True)

        @sub.route("/directory/invalidate", methods=["POST"])
        def invalidate(request):
            """The site changed users or rooms (docs/integration.md#invalidation)."""
            return call(request, directory.invalidate, body=True)

        @sub.route("/stats", methods=["GET"])
        def stats(request):
            return call(request, admin.stats)
