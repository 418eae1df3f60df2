"""``join``, ``leave``, ``members`` and ``rooms`` (docs/design.md#d9-rooms; docs/protocol.md#rooms)."""
from .. import model
from . import OK
from .chat import check_room_member
from .context import blocked_rooms, require_live, session_of


async def join(ctx, identity, params):
    """``webim/join``: live-join a room the user belongs to (un-block). → roomInfo
    with the live ``count``."""
    session_of(identity)
    room_id = params.ident("id")
    room = await check_room_member(ctx, room_id, identity.user_id)
    require_live(ctx, identity)
    ctx.router.join_room(identity.user_id, room_id)
    counts = await ctx.live.room_counts([room_id], identity.user_id)
    return model.room_info(room, counts[room_id], False)


async def leave(ctx, identity, params):
    """``webim/leave``: live-leave (block); the site membership stays (docs/protocol.md#a10-join-and-leave)."""
    session_of(identity)
    room_id = params.ident("id")
    require_live(ctx, identity)
    ctx.router.leave_room(identity.user_id, room_id)
    return OK


async def members(ctx, identity, params):
    """``webim/members``: online members ``[{id, nick, presence, show}]`` (docs/protocol.md#a9-the-members-answer)."""
    room_id = params.ident("id")
    await check_room_member(ctx, room_id, identity.user_id)
    members = await ctx.live.room_members(room_id, identity.user_id)
    if ctx.xmpp is not None:
        members += ctx.xmpp.room_occupants(room_id)  # XMPP occupants of a bridged room (docs/xmpp.md)
    return members


async def rooms(ctx, identity, params):
    """``webim/rooms``: roomInfo of the given ``ids`` among the caller's rooms (docs/protocol.md#webimrooms)."""
    params.required("ids")
    ids = set(params.ids("ids"))
    blocked = blocked_rooms(await ctx.settings_of(identity.user_id))
    mine = [r for r in await ctx.directory.rooms_of(identity.user_id) if r["id"] in ids]
    counts = await ctx.live.room_counts([r["id"] for r in mine], identity.user_id)
    return [model.room_info(r, counts[r["id"]], r["id"] in blocked) for r in mine]
