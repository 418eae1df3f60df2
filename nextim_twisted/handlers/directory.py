"""``POST /admin/directory/invalidate`` (docs/integration.md#invalidation): the site
changed users or rooms; forget what is cached about them and bring live sessions in
step at once, as the admin API does for the local directory
(docs/design.md#d22-the-site-as-source-of-truth)."""
from ..errors import BadRequest
from .context import blocked_rooms
from .params import check_id

#: Most ids of each list in one call.
MAX_INVALIDATE = 1000


def _ids(body, key):
    value = body.get(key, [])
    if not isinstance(value, list):
        raise BadRequest(f"{key}: must be an array of ids", code="bad_parameter")
    if len(value) > MAX_INVALIDATE:
        raise BadRequest(f"{key}: at most {MAX_INVALIDATE} ids per call", code="bad_parameter")
    return list(dict.fromkeys(check_id(i, key) for i in value))


async def invalidate(ctx, body):
    """``{"users": [ids], "rooms": [ids]}`` → ``{"success": true, "users": n, "rooms": n}``
    (how many of them were live and brought in step).

    For each live user: the profile is read again (a user the site no longer knows goes
    offline, as after ``DELETE /admin/users/{id}``), buddies added or removed change the
    live buddy sets of both sides, rooms joined or left are live-joined (unless blocked
    in the user's settings) or left. For each room with live members: members the site
    removed leave it live, online members it added join it.

    :raises BadRequest: a list that is not ids, or longer than :data:`MAX_INVALIDATE`.
    :raises DirectoryUnavailable: the site does not answer the reads (503; what was
        cached about these ids is forgotten all the same).
    """
    users, rooms = _ids(body, "users"), _ids(body, "rooms")
    directory, router = ctx.directory, ctx.router
    directory.invalidate(users, rooms)
    live_users = 0
    for user_id in users:
        if router.is_online(user_id):
            live_users += 1
            await _resync_user(ctx, user_id)
    live_rooms = 0
    for room_id in rooms:
        if router.live_members(room_id):
            live_rooms += 1
        await _resync_room(ctx, room_id)
    return {"success": True, "users": live_users, "rooms": live_rooms}


async def _resync_user(ctx, user_id):
    directory, router = ctx.directory, ctx.router
    profile = await directory.profile(user_id)
    if profile is None:
        router.user_offline(user_id)
        return
    buddies = {b for b, _ in await directory.buddies(user_id)}
    rooms = [r["id"] for r in await directory.rooms_of(user_id)]
    blocked = blocked_rooms(await ctx.settings_of(user_id))
    user = router.user(user_id)
    if user is None:  # went offline while we read
        return
    router.update_profile(user_id, profile)
    for buddy_id in buddies - user.buddies:
        router.buddies_changed(user_id, buddy_id, True)
    for buddy_id in user.buddies - buddies:
        router.buddies_changed(user_id, buddy_id, False)
    for room_id in set(user.rooms) - set(rooms):
        router.leave_room(user_id, room_id)
    for room_id in rooms:
        if room_id not in user.rooms and room_id not in blocked:
            router.join_room(user_id, room_id)


async def _resync_room(ctx, room_id):
    directory, router = ctx.directory, ctx.router
    room = await directory.room(room_id)
    members = set(await directory.member_ids(room_id)) if room is not None else set()
    live = set(router.live_members(room_id))
    for user_id in live - members:
        router.leave_room(user_id, room_id)
    for user_id in members - live:
        if not router.is_online(user_id):
            continue
        blocked = blocked_rooms(await ctx.settings_of(user_id))
        if room_id not in blocked and router.is_online(user_id):  # still online after the read
            router.join_room(user_id, room_id)
