"""``message``, ``status`` (typing), ``presence``, ``history`` and ``clear_history``
(D7, D8, D10, D15; protocol-reference §2.3, §3.5)."""
import re

from .. import model
from ..errors import BadRequest, Forbidden, NotFound, TooLarge
from . import OK
from . import xmpp as xmpp_handlers
from .context import parse_show, require_live, session_of

#: Type names a client may send, with v5 aliases (D7).
MESSAGE_TYPES = {"unicast": "unicast", "chat": "unicast", "multicast": "multicast", "grpchat": "multicast"}
_STATUS_TOKEN = re.compile(r"^[A-Za-z_]{1,20}$")


def message_type(value, default=None):
    """Normalize a message ``type``. :raises BadRequest: unknown; :raises Forbidden:
    ``broadcast`` (admins only, through the admin API, D7)."""
    value = value or default
    if value == "broadcast":
        raise Forbidden("broadcast is for admins only", code="admin_only")
    if value not in MESSAGE_TYPES:
        raise BadRequest("type: must be unicast or multicast", code="bad_parameter")
    return MESSAGE_TYPES[value]


async def check_room_member(ctx, room_id, user_id):
    """The room dict. :raises NotFound: no such room; :raises Forbidden: not a member."""
    room = await ctx.store.get_room(room_id)
    if room is None:
        raise NotFound("unknown room", code="unknown_room")
    if not await ctx.store.is_member(room_id, user_id):
        raise Forbidden("not a member of this room", code="not_member")
    return room


async def message(ctx, identity, params):
    """``webim/message`` (D7): commit, then route; ``ok`` only after the commit.

    Params: ``ticket``, ``type``, ``to``, ``body``, optional ``style``. ``from``,
    ``nick``, ``timestamp`` and ``offline`` are ignored: the server decides them.
    """
    session = session_of(identity)
    type_, _, body = params.required("type", "to", "body")
    type_ = message_type(type_)
    to = params.ident("to")
    if len(body) > ctx.config.limits.message_chars:
        raise TooLarge(f"body: at most {ctx.config.limits.message_chars} characters", code="body_too_long")
    style = model.sanitize_style(params.get("style", ""))
    user = require_live(ctx, identity)
    ctx.limiter.check("messages", identity.user_id)
    router, store = ctx.router, ctx.store
    if type_ == "unicast" and ctx.xmpp is not None and ctx.xmpp.is_buddy(identity.user_id, to):
        # XMPP bridge (issue 7): to a JID buddy — stored, then sent as an XMPP chat message.
        await xmpp_handlers.send_chat(ctx, user, session.ticket, to, body, style)
    elif type_ == "unicast":
        # A live user is a directory user (deleting one takes them offline): only an
        # offline recipient costs a lookup (issue 6: one SQL round trip per message).
        if to not in router.users and await store.get_user(to) is None:
            raise NotFound("unknown user", code="unknown_user")
        # Offline-ness is decided here from live sessions, not by the client (§7 A6).
        recipient = router.users.get(to)
        delivered = recipient is not None and bool(recipient.sessions)
        msg = await store.add_message("unicast", identity.user_id, to, user.nick, body, style,
                                      ctx.now_ms(), delivered)
        to_recipient = True
        recipient = router.users.get(to)
        if not delivered and recipient is not None and recipient.sessions and to != identity.user_id:
            # The recipient came online while the message was being stored. A concurrent
            # ``online`` may have taken it as a new message already: whoever marks it
            # delivered first hands it over, so it reaches the recipient once (D6, D10).
            to_recipient = bool(await store.mark_delivered([msg["id"]]))
        router.route_unicast(msg, session.ticket, to_recipient=to_recipient)
    else:
        # Live membership implies directory membership (admin removals leave the live
        # room too), so the two lookups are only needed to explain a refusal (issue 6).
        if not router.in_room(identity.user_id, to):
            await check_room_member(ctx, to, identity.user_id)
            raise Forbidden("room is blocked: join it first", code="room_blocked")
        msg = await store.add_message("multicast", identity.user_id, to, user.nick, body, style,
                                      ctx.now_ms(), True)
        router.route_multicast(msg, session.ticket)
        if ctx.xmpp is not None:
            ctx.xmpp.send_groupchat(to, identity.user_id, body)  # bridged room (issue 7)
    return OK


async def status(ctx, identity, params):
    """``webim/status``: relay a typing status (``typing``/``clear`` or another short
    token, §7 A15) to the online recipient; never stored, dropped for an offline one.

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
        ctx.xmpp.send_chat_state(identity.user_id, to, show)  # XEP-0085 (issue 7)
        return OK
    # As for ``message``: a live user is a directory user, only an offline one costs a
    # lookup; an unknown one is 404, not a silent ``ok`` (docs/guarantees.md).
    if to not in ctx.router.users and await ctx.store.get_user(to) is None:
        raise NotFound("unknown user", code="unknown_user")
    ctx.router.route_status(identity.user_id, to, show)
    return OK


async def presence(ctx, identity, params):
    """``webim/presence`` (D8): change show and status; ``unavailable`` ends this
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
    """``webim/history`` (D10, §7 A7): ``id`` (or the first of ``ids``) and ``type``;
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
    """``webim/clear_history`` (§7 A8): unicast only, this user's side only."""
    other = params.ident("id")
    type_ = message_type(params.get("type"), default="unicast")
    if type_ == "unicast":
        await ctx.store.clear_history(identity.user_id, other)
    return OK
