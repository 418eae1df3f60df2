"""Directory admin API (docs/design.md#d14-directory): users, buddies, rooms, members,
notifications, broadcast, stats. Inputs are parsed JSON objects from the web layer."""
from .. import auth, ids
from ..errors import BadRequest, NotFound, ProtocolError, TooLarge
from ..store import userdata
from .delivery import deliver
from .directory_changes import changed
from .params import check_id


class DirectoryIsRemote(ProtocolError):
    """409: the directory is the host site's (``[directory] provider = "http"``); the
    admin API's tables are not read then, so writing them would change nothing."""

    status = 409
    code = "directory_is_remote"


def _local_only(ctx):
    """:raises DirectoryIsRemote: the directory does not come from the admin API."""
    if not ctx.directory.provisions:
        raise DirectoryIsRemote("the directory is the site's ([directory] provider = \"http\"): change it "
                                "there and call POST /admin/directory/invalidate")

_TEXT_LIMITS = {"nick": 100, "pic_url": 2000, "default_pic_url": 2000, "url": 2000, "group": 100,
                "link": 2000, "password": 1000}


def _text(body, key, required=False, limit=None):
    """A string field of a JSON body. :raises BadRequest: missing, not a string, too long."""
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key}: required", code="missing_parameter")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key}: must be a string", code="bad_parameter")
    limit = limit or _TEXT_LIMITS.get(key, 10000)
    if len(value) > limit:
        raise BadRequest(f"{key}: at most {limit} characters", code="bad_parameter")
    if required and not value.strip():
        raise BadRequest(f"{key}: must not be empty", code="bad_parameter")
    return value


async def put_user(ctx, user_id, body):
    """``PUT /admin/users/{id}`` ``{"nick", "pic_url"?, "default_pic_url"?, "url"?, "password"?}``.

    A new id must follow the id rules of :mod:`nextim_twisted.ids` (400 ``bad_id``; with
    the XMPP bridge on, 409 ``id_clash`` naming the user it would share a JID with);
    an existing one may still be updated (docs/design.md#d13-identity)."""
    _local_only(ctx)
    check_id(user_id)
    nick = _text(body, "nick", required=True)
    password = _text(body, "password")
    if await ctx.store.get_room(user_id) is not None:
        raise BadRequest("id is already used by a room", code="id_conflict")
    new = await ctx.store.get_user(user_id) is None
    if new:
        ids.check_new_id(user_id)
        await ids.check_xmpp_clash(ctx, user_id)
    await ctx.store.put_user(user_id, nick, _text(body, "pic_url"), _text(body, "default_pic_url"),
                             _text(body, "url"))
    if new and ctx.xmpp is not None:
        ctx.xmpp.forms.add(user_id)  # later look-alikes clash with this one
    await changed(ctx, "user_updated", user_id)
    if password is not None:
        await set_password(ctx, user_id, password)
    return {"success": True}


async def set_password(ctx, user_id, password):
    """Set a user's password (``PUT /admin/users/{id}`` with ``password``, ``nextimctl
    user passwd``). Login cookies issued before stop counting and the user's sessions
    end, here and on every daemon (docs/design.md#d19-session-lifetime): whoever knew
    the old password is out. :returns: False for an unknown user.
    :raises BadRequest: a password over the length limit."""
    _text({"password": password}, "password")
    password_hash = await ctx.auth.blocking(auth.hash_password, password)
    if not await ctx.store.set_password_hash(user_id, password_hash):
        return False
    await changed(ctx, "password_changed", user_id)
    return True


async def delete_user(ctx, user_id, erase=False):
    """``DELETE /admin/users/{id}[?erase=true]``: also ends the user's sessions at once
    (their buddies see one ``offline``). Messages stay in the other side's history,
    unless ``erase``: then the user's messages, settings, notifications and XMPP
    pairings go too (docs/operations.md#erasure-and-export)."""
    _local_only(ctx)
    check_id(user_id)
    remove = userdata.erase_user(ctx.store, user_id) if erase else ctx.store.delete_user(user_id)
    if not await remove:
        raise NotFound("unknown user", code="unknown_user")
    await changed(ctx, "user_deleted", user_id)
    return {"success": True}


async def export_user(ctx, user_id):
    """``GET /admin/users/{id}/export``: everything stored about the user, as
    :func:`nextim_twisted.store.userdata.export_user` gives it, with ``success``.
    :raises NotFound: unknown user."""
    check_id(user_id)
    data = await userdata.export_user(ctx.store, user_id)
    if data is None:
        raise NotFound("unknown user", code="unknown_user")
    return {"success": True, **data}


async def _both_users(ctx, user_id, buddy_id):
    check_id(user_id)
    check_id(buddy_id, "buddy_id")
    if user_id == buddy_id:
        raise BadRequest("a user cannot be their own buddy", code="bad_parameter")
    users = await ctx.store.get_users([user_id, buddy_id])
    for i in (user_id, buddy_id):
        if i not in users:
            raise NotFound(f"unknown user: {i}", code="unknown_user")


async def _xmpp_buddy(ctx, user_id, buddy_id):
    """True if ``buddy_id`` names an XMPP contact (a JID, not a web user) and the XMPP
    bridge is on (docs/xmpp.md). :raises NotFound: unknown web user."""
    if ctx.xmpp is None or "@" not in buddy_id:
        return False
    check_id(user_id)
    check_id(buddy_id, "buddy_id")
    if await ctx.store.get_user(buddy_id) is not None:
        return False
    if await ctx.store.get_user(user_id) is None:
        raise NotFound(f"unknown user: {user_id}", code="unknown_user")
    return True


async def put_buddy(ctx, user_id, buddy_id, body):
    """``PUT /admin/users/{id}/buddies/{buddy_id}`` ``{"group"?}`` (symmetric).

    With the XMPP bridge on, ``buddy_id`` may be a bare JID (``{"group"?, "nick"?}``):
    the bridge pairs them and runs the RFC 3921 subscription handshake (docs/xmpp.md)."""
    if await _xmpp_buddy(ctx, user_id, buddy_id):
        jid = await ctx.xmpp.add_buddy(user_id, buddy_id, _text(body, "nick"), _text(body, "group"))
        return {"success": True, "jid": jid}
    _local_only(ctx)
    await _both_users(ctx, user_id, buddy_id)
    await ctx.store.put_buddy(user_id, buddy_id, _text(body, "group"))
    await changed(ctx, "buddy_added", user_id, buddy_id)
    return {"success": True}


async def delete_buddy(ctx, user_id, buddy_id):
    """``DELETE /admin/users/{id}/buddies/{buddy_id}``."""
    check_id(user_id)
    check_id(buddy_id, "buddy_id")
    if ctx.xmpp is not None and ctx.xmpp.is_buddy(user_id, buddy_id):
        await ctx.xmpp.remove_buddy(user_id, buddy_id)  # an XMPP buddy (docs/xmpp.md)
        return {"success": True}
    _local_only(ctx)
    if not await ctx.store.delete_buddy(user_id, buddy_id):
        raise NotFound("not buddies", code="not_buddies")
    await changed(ctx, "buddy_removed", user_id, buddy_id)
    return {"success": True}


async def put_room(ctx, room_id, body):
    """``PUT /admin/rooms/{id}`` ``{"nick", "pic_url"?, "url"?}``. Room ids may not
    equal user ids (docs/protocol.md#identifiers-and-times)."""
    _local_only(ctx)
    check_id(room_id)
    nick = _text(body, "nick", required=True)
    # "muc": bridge to a XEP-0045 room ("room@service", or "room" on [xmpp] muc_domain;
    # null unbridges), docs/xmpp.md.
    muc = _text(body, "muc", limit=300)
    if "muc" in body:
        if ctx.xmpp is None:
            raise BadRequest("muc: the XMPP bridge is not enabled ([xmpp] enabled)", code="xmpp_disabled")
        muc = ctx.xmpp.muc_jid(muc) if muc is not None else None
    if await ctx.store.get_user(room_id) is not None:
        raise BadRequest("id is already used by a user", code="id_conflict")
    await ctx.store.put_room(room_id, nick, _text(body, "pic_url"), _text(body, "url"))
    if "muc" in body:
        await ctx.xmpp.set_room(room_id, muc)
    return {"success": True}


async def delete_room(ctx, room_id):
    """``DELETE /admin/rooms/{id}``: live members are removed from it too."""
    _local_only(ctx)
    check_id(room_id)
    if not await ctx.store.delete_room(room_id):
        raise NotFound("unknown room", code="unknown_room")
    if ctx.xmpp is not None:
        await ctx.xmpp.room_deleted(room_id)  # leave its MUC room (docs/xmpp.md)
    await changed(ctx, "room_deleted", room_id)
    return {"success": True}


async def put_member(ctx, room_id, user_id):
    """``PUT /admin/rooms/{id}/members/{user_id}``; an online member joins live."""
    _local_only(ctx)
    check_id(room_id)
    check_id(user_id, "user_id")
    if await ctx.store.get_room(room_id) is None:
        raise NotFound("unknown room", code="unknown_room")
    if await ctx.store.get_user(user_id) is None:
        raise NotFound("unknown user", code="unknown_user")
    await ctx.store.put_member(room_id, user_id)
    await changed(ctx, "member_added", room_id, user_id)
    return {"success": True}


async def delete_member(ctx, room_id, user_id):
    """``DELETE /admin/rooms/{id}/members/{user_id}``."""
    _local_only(ctx)
    check_id(room_id)
    check_id(user_id, "user_id")
    if not await ctx.store.delete_member(room_id, user_id):
        raise NotFound("not a member", code="not_member")
    await changed(ctx, "member_removed", room_id, user_id)
    return {"success": True}


async def add_notification(ctx, user_id, body):
    """``POST /admin/users/{id}/notifications`` ``{"text", "link"?}`` (docs/design.md#d12-notifications)."""
    check_id(user_id)
    text = _text(body, "text", required=True, limit=10000)
    if await ctx.directory.profile(user_id) is None:
        raise NotFound("unknown user", code="unknown_user")
    row = await ctx.store.add_notification(user_id, text, _text(body, "link"), ctx.now_ms())
    return {"success": True, "id": row["id"]}


async def broadcast(ctx, body):
    """``POST /admin/broadcast`` ``{"body", "nick"?}``: stored once (type broadcast),
    delivered to each online user unicast-shaped (docs/design.md#d7-messages, docs/protocol.md#broadcast)."""
    text = _text(body, "body", required=True, limit=ctx.config.limits.message_chars + 1)
    if len(text) > ctx.config.limits.message_chars:
        raise TooLarge("body too long", code="body_too_long")
    nick = _text(body, "nick") or "System"
    sender = ctx.config.admin.broadcast_from
    _, delivered = await deliver(ctx, "broadcast", sender, ctx.config.server.domain, nick, text)
    return {"success": True, "delivered": delivered}


async def stats(ctx):
    """``GET /admin/stats``: ``{"online_users", "sessions", "parked_polls", "websockets",
    "queue_overflows"}`` (``parked_polls`` counts subscribed WebSockets too)."""
    return dict(ctx.router.stats(), success=True)
