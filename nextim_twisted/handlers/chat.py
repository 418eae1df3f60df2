"""``message``, ``status`` (typing), ``presence``, ``history`` and ``clear_history``
(docs/design.md#d7-messages, #d8-presence, #d10-history, #d15-limits; docs/protocol.md#endpoints)."""
import re

from .. import model
from ..errors import BadRequest, Forbidden, NotFound, RateLimited, TooLarge
from ..store import keys
from . import OK
from . import xmpp as xmpp_handlers
from .context import parse_show, require_live, session_of
from .delivery import deliver

#: Type names a client may send, with v5 aliases (docs/design.md#d7-messages).
MESSAGE_TYPES = {"unicast": "unicast", "chat": "unicast", "multicast": "multicast", "grpchat": "multicast"}
_STATUS_TOKEN = re.compile(r"^[A-Za-z_]{1,20}$")
#: A ``client_id``: 1–64 printable ASCII characters (docs/design.md#d17-idempotent-sends).
_CLIENT_ID = re.compile(r"^[\x20-\x7e]{1,64}$")


def client_id_of(params):
    """The optional ``client_id`` of a message, or None.
    :raises BadRequest: present but empty, longer than 64 or not printable ASCII."""
    value = params.values.get("client_id")
    if value is None:
        return None
    if not _CLIENT_ID.match(value):
        raise BadRequest("client_id: 1 to 64 printable ASCII characters", code="bad_parameter")
    return value


def message_type(value, default=None):
    """Normalize a message ``type``. :raises BadRequest: unknown; :raises Forbidden:
    ``broadcast`` (admins only, through the admin API, docs/design.md#d7-messages)."""
    value = value or default
    if value == "broadcast":
        raise Forbidden("broadcast is for admins only", code="admin_only")
    if value not in MESSAGE_TYPES:
        raise BadRequest("type: must be unicast or multicast", code="bad_parameter")
    return MESSAGE_TYPES[value]


async def check_room_member(ctx, room_id, user_id):
    """The room dict. :raises NotFound: no such room; :raises Forbidden: not a member."""
    room = await ctx.directory.room(room_id)
    if room is None:
        raise NotFound("unknown room", code="unknown_room")
    if not await ctx.directory.is_member(room_id, user_id):
        raise Forbidden("not a member of this room", code="not_member")
    return room


async def message(ctx, identity, params):
    """``webim/message`` (docs/design.md#d7-messages): commit, then route; ``ok`` only after the commit.

    Params: ``ticket``, ``type``, ``to``, ``body``, optional ``style`` and
    ``client_id``. ``from``, ``nick``, ``timestamp`` and ``offline`` are ignored: the
    server decides them. With ``client_id`` a retry of a stored message answers ``ok``
    again and stores and routes nothing, even over the rate limit (it costs nothing);
    the same ``client_id`` with other content is 409 ``client_id_reused``
    (docs/design.md#d17-idempotent-sends).
    """
    session = session_of(identity)
    type_, _, body = params.required("type", "to", "body")
    type_ = message_type(type_)
    to = params.ident("to")
    if len(body) > ctx.config.limits.message_chars:
        raise TooLarge(f"body: at most {ctx.config.limits.message_chars} characters", code="body_too_long")
    style = model.sanitize_style(params.get("style", ""))
    client_id = client_id_of(params)
    user = require_live(ctx, identity)
    try:
        ctx.limiter.check("messages", identity.user_id)
    except RateLimited:
        if client_id is not None:
            known = await keys.find(ctx.store, identity.user_id, client_id)
            if known is not None and known[0] == keys.digest(type_, to, body, style):
                return OK  # the retry of a stored message: answered as the first time
        raise
    router = ctx.router
    if type_ == "unicast" and ctx.xmpp is not None and ctx.xmpp.is_buddy(identity.user_id, to):
        # XMPP bridge (docs/xmpp.md): to a JID buddy — stored, then sent as an XMPP chat message.
        await xmpp_handlers.send_chat(ctx, user, session.ticket, to, body, style, client_id)
    elif type_ == "unicast":
        # A live user is a directory user (deleting one takes them offline): only an
        # offline recipient costs a lookup (one SQL round trip per message costs throughput, docs/benchmarks.md).
        if not router.is_online(to) and await ctx.directory.profile(to) is None:
            raise NotFound("unknown user", code="unknown_user")
        # Offline-ness is decided from live sessions by the delivery rule, never by the client.
        await deliver(ctx, "unicast", identity.user_id, to, user.nick, body, style, session.ticket,
                      client_id=client_id)
    else:
        # Live membership implies directory membership (admin removals leave the live
        # room too), so the two lookups are only needed to explain a refusal (docs/benchmarks.md).
        if not router.in_room(identity.user_id, to):
            await check_room_member(ctx, to, identity.user_id)
            raise Forbidden("room is blocked: join it first", code="room_blocked")
        msg, _ = await deliver(ctx, "multicast", identity.user_id, to, user.nick, body, style, session.ticket,
                               client_id=client_id)
        if ctx.xmpp is not None and msg is not None:
            ctx.xmpp.send_groupchat(to, identity.user_id, body)  # bridged room (docs/xmpp.md)
    return OK


async def status(ctx, identity, params):
    """``webim/status``: relay a typing status (``typing``/``clear`` or another short
    token, docs/protocol.md#a15-typing-values) to the online recipient; never stored,
    dropped for an offline one.

    :raises NotFound: ``unknown_user``, ``to`` is not in the directory.
    """
    session_of(identity)
    _, show = params.required("to", "show")
    to = params.ident("to")
    if not _STATUS_TOKEN.match(show):
        raise BadRequest("show: a short word such as typing or clear", code="bad_parameter")
    require_live(ctx, identity)
    ctx.limiter.check("presences", identity.user_id)
    if ctx.xmpp is not None and ctx.xmpp.is_buddy(identity.user_id, to):
        ctx.xmpp.send_chat_state(identity.user_id, to, show)  # XEP-0085 chat state
        return OK
    # As for ``message``: a live user is a directory user, only an offline one costs a
    # lookup; an unknown one is 404, not a silent ``ok`` (docs/guarantees.md).
    if not ctx.router.is_online(to) and await ctx.directory.profile(to) is None:
        raise NotFound("unknown user", code="unknown_user")
    ctx.router.route_status(identity.user_id, to, show)
    return OK


async def presence(ctx, identity, params):
    """``webim/presence`` (docs/design.md#d8-presence): change show and status; ``unavailable`` ends this
    tab's session like ``offline``."""
    session = session_of(identity)
    show = parse_show(params.required("show"))
    status = params.values.get("status")
    if status is not None:
        status = status[: ctx.config.limits.status_chars]
    if show == "unavailable":
        ctx.router.end_session(session.ticket)
        return OK
    require_live(ctx, identity)
    ctx.limiter.check("presences", identity.user_id)
    ctx.router.set_presence(identity.user_id, show, status)
    return OK


async def history(ctx, identity, params):
    """``webim/history`` (docs/protocol.md#a7-history-parameters): ``id`` (or the first of ``ids``) and ``type``;
    newest ``limits.history`` items oldest first. Room history needs membership."""
    other = params.ident("id", required=False) or (params.ids("ids") or [None])[0]
    if other is None:
        raise BadRequest("missing parameter: id", code="missing_parameter")
    type_ = message_type(params.get("type"), default="unicast")
    limit = ctx.config.limits.history
    if type_ == "multicast":
        await check_room_member(ctx, other, identity.user_id)
        rows = await ctx.store.room_history(other, limit)
    else:
        rows = await ctx.store.unicast_history(identity.user_id, other, limit)
    return [model.log_item(m) for m in rows]


async def clear_history(ctx, identity, params):
    """``webim/clear_history`` (docs/protocol.md#a8-clearing-history): unicast only, this user's side only."""
    other = params.ident("id")
    type_ = message_type(params.get("type"), default="unicast")
    if type_ == "unicast":
        await ctx.store.clear_history(identity.user_id, other)
    return OK
