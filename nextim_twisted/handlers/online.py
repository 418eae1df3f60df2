"""``online``, ``offline``, ``refresh``, ``buddies`` and the accounts login (docs/design.md#d3-online, #d13-identity;
docs/protocol.md#webimonline)."""
from twisted.logger import Logger

from .. import ids, model
from ..auth import PROFILE_CLAIMS
from ..core.router import message_packet
from ..errors import BadRequest, NotFound, Unauthorized
from ..store.snapshot import backlog_head, directory_snapshot
from . import OK
from .backlog import Backlog
from .context import blocked_rooms, parse_setting, parse_show, session_of

log = Logger()


_UNREAD = object()


async def profile_for(ctx, identity, profile=_UNREAD):
    """The caller's directory entry; a token for an unknown user creates it from the
    claims, and a token's profile claims update it (docs/design.md#d13-identity).
    With a directory that does not provision (the host site's, docs/integration.md)
    the site's answer is the profile and the claims change nothing.

    :param profile: the entry as already read (``None``: not in the directory), to
        spare a read; read here when not given.
    :raises NotFound: the user is not in the directory (accounts/ticket identities).
    :raises DirectoryUnavailable: the site does not answer and nothing is cached (503).
    """
    if profile is _UNREAD:
        profile = await ctx.directory.profile(identity.user_id)
    if identity.via == "token" and ctx.directory.provisions:
        claims = identity.claims
        wanted = {k: claims.get(k) for k in PROFILE_CLAIMS}
        wanted["nick"] = wanted["nick"] or (profile or {}).get("nick") or identity.user_id
        if profile is None:
            # A new id may not share a JID with an existing user (docs/xmpp.md "User ids").
            await ids.check_xmpp_clash(ctx, identity.user_id)
            if ctx.xmpp is not None:
                ctx.xmpp.forms.add(identity.user_id)
        if profile is None or any(wanted[k] is not None and wanted[k] != profile.get(k) for k in PROFILE_CLAIMS):
            merged = {k: (wanted[k] if wanted[k] is not None else (profile or {}).get(k)) for k in PROFILE_CLAIMS}
            await ctx.store.put_user(identity.user_id, merged["nick"][:100], merged["pic_url"],
                                     merged["default_pic_url"], merged["url"])
            profile = await ctx.directory.profile(identity.user_id)
    if profile is None:
        raise NotFound("unknown user", code="unknown_user")
    return profile


async def online(ctx, identity, params):
    """``webim/online`` (docs/design.md#d3-online): open a new session and answer everything the client
    needs to start: user, connection (``domain``, ``ticket``, ``server`` the poll URL,
    and ``websocket`` the socket URL unless ``[websocket] enabled = false``), buddies
    with presence, rooms, new messages, settings, presences.

    Params: ``show``, ``status``, ``buddy_ids`` and ``room_ids`` (csv, get embedded
    history), ``stranger_ids`` (csv of user ids).

    ``new_messages`` holds the oldest ``[limits] new_messages`` undelivered messages and
    ``new_messages_pending`` how many more there are: those follow on this session's
    comet at once, in order (docs/design.md#d18-the-whole-backlog).
    """
    store, router = ctx.store, ctx.router
    show = params.get("show")
    show = parse_show(show) if show is not None else None
    if show == "unavailable":
        show = None  # choosing a show while offline goes online (docs/protocol.md#webimonline)
    status = params.get("status")
    if status is not None:
        status = status[: ctx.config.limits.status_chars]
    buddy_ids = params.ids("buddy_ids")
    room_ids = params.ids("room_ids")
    stranger_ids = params.ids("stranger_ids")

    # Each online opens a session that lives until idle: a flood of them is refused (docs/design.md#d15-limits).
    ctx.limiter.check("onlines", identity.user_id)
    if ctx.directory.provisions:
        # The directory is the store's own tables: read it in one transaction
        # (store/snapshot.py: six reads, one hand-off, cheaper under a restart herd,
        # docs/benchmarks.md).
        snap = await directory_snapshot(store, identity.user_id, buddy_ids + stranger_ids)
        profile = await profile_for(ctx, identity, snap["profile"])
        settings = _setting(snap["setting"])
        buddies, rooms, known = snap["buddies"], snap["rooms"], snap["profiles"]
    else:  # the host site's directory (docs/integration.md), cached there
        profile = await profile_for(ctx, identity)
        settings = await ctx.settings_of(profile["id"])
        buddies = await ctx.directory.buddies(profile["id"])
        rooms = await ctx.directory.rooms_of(profile["id"])
        known = None
    uid = profile["id"]
    blocked = blocked_rooms(settings)
    groups = dict(buddies)

    session, user = router.open_session(profile, show, status, list(groups),
                                        [r["id"] for r in rooms if r["id"] not in blocked])
    session.login = identity.login  # logout ends the sessions of its login (docs/design.md#d19-session-lifetime)
    # Read after the session opened: a message stored meanwhile is either in here or
    # routed to the new session (the delivery rule, handlers/delivery.py).
    new_messages, undelivered = await backlog_head(store, uid, ctx.config.limits.new_messages)

    # Buddy list: directory buddies, open tabs, offline-message senders, strangers (docs/protocol.md#webimonline).
    active = list(dict.fromkeys(buddy_ids + [m["from"] for m in new_messages]))
    wanted = list(dict.fromkeys(list(groups) + active + stranger_ids))
    wanted = [i for i in wanted if i != uid]
    if known is not None:
        profiles = known
        unread = [i for i in wanted if i not in known and i in active]  # senders who are not buddies
        if unread:
            profiles = {**known, **await ctx.directory.profiles(unread)}
    else:
        profiles = await ctx.directory.profiles(wanted)
    # Presence of every listed buddy, on whichever node they are (docs/design.md#d8-presence).
    presence = await ctx.live.presences([i for i in wanted if i in profiles], uid)
    # XMPP bridge (docs/xmpp.md): the user's JID buddies, with the presence XMPP gave them.
    remote = ctx.xmpp.remote_buddies(uid) if ctx.xmpp is not None else {}
    wanted += [jid for jid in remote if jid not in wanted]
    buddy_list = []
    for buddy_id in wanted:
        buddy = profiles.get(buddy_id)
        if buddy is None and buddy_id not in remote:
            continue
        # Not a directory buddy: the UI sorts the "stranger" group last (docs/protocol.md#buddyinfo).
        info = remote.get(buddy_id) or model.buddy_info(buddy, groups.get(buddy_id, "stranger"),
                                                        presence[buddy_id])
        if buddy_id in active:
            info["history"] = [model.log_item(m) for m in
                               await store.unicast_history(uid, buddy_id, ctx.config.limits.history)]
        buddy_list.append(info)

    room_list = []
    counts = await ctx.live.room_counts([r["id"] for r in rooms], uid)
    for room in rooms:
        info = model.room_info(room, counts[room["id"]], room["id"] in blocked)
        if room["id"] in room_ids:
            info["history"] = [model.log_item(m) for m in
                               await store.room_history(room["id"], ctx.config.limits.history)]
        room_list.append(info)

    # Marked delivered only after the histories, so a message is never in both (docs/design.md#d10-history).
    # Of concurrent ``online`` calls of one user each message goes to the one call
    # that marks it (the others read it too): handed over exactly once (docs/design.md#d6-comet-envelope).
    if new_messages:
        taken = set(await store.mark_delivered([m["id"] for m in new_messages]))
        new_messages = [m for m in new_messages if m["id"] in taken]
    # The rest of the backlog follows on this session's comet, oldest first, in pages
    # within its queue; each message reaches one session (handlers/backlog.py). With
    # several tabs coming online at once the count is an upper bound for each.
    pending = max(0, undelivered - ctx.config.limits.new_messages)
    if pending:
        Backlog(store, session, message_packet).start()

    presences = {b["id"]: b["show"] for b in buddy_list if b["presence"] == "online"}
    connection = {"domain": ctx.config.server.domain, "ticket": session.ticket, "server": ctx.poll_url}
    websocket = ctx.websocket_url
    if websocket is not None:
        connection["websocket"] = websocket  # the socket transport (docs/design.md#d21-websocket)
    # debug, not info: the access event of the request already names the user, and
    # formatting a second event per online was a sixth of the daemon's CPU in a
    # restart herd (docs/benchmarks.md)
    log.debug("online {user_id} (sessions: {n})", user_id=uid, n=len(router.sessions_of(uid)))
    return {
        "success": True,
        "server_time": ctx.now_ms(),
        "user": model.user_info(profile, user.show, user.status, user.status_time),
        "connection": connection,
        "buddies": buddy_list,
        "rooms": room_list,
        "new_messages": [model.log_item(m) for m in new_messages],
        "new_messages_pending": pending,
        "setting": settings,
        "presences": presences,
    }


def _setting(text):
    """The stored settings text as a dict, ``{}`` when none or unreadable
    (as :meth:`~.context.Context.settings_of`)."""
    if not text:
        return {}
    try:
        return parse_setting(text)
    except BadRequest:
        return {}  # stored before the rules of parse_setting: never fail ``online`` for it


async def offline(ctx, identity, params):
    """``webim/offline`` and ``webim/refresh``: end this tab's session; the user goes
    offline for others only after the grace (docs/design.md#d5-timers)."""
    session = session_of(identity)
    ctx.router.end_session(session.ticket)
    return OK


refresh = offline


async def buddies(ctx, identity, params):
    """``webim/buddies``: buddyInfo (with presence and show, docs/protocol.md#buddyinfo) of the given ``ids``;
    unknown ids are left out."""
    params.required("ids")
    ids = params.ids("ids")
    profiles = await ctx.directory.profiles(ids)
    groups = dict(await ctx.directory.buddies(identity.user_id))
    remote = ctx.xmpp.remote_buddies(identity.user_id) if ctx.xmpp is not None else {}  # XMPP buddies (docs/xmpp.md)
    presence = await ctx.live.presences([i for i in ids if i in profiles and i not in remote], identity.user_id)
    return [remote[i] if i in remote else
            model.buddy_info(profiles[i], groups.get(i, "stranger"), presence[i])
            for i in ids if i in profiles or i in remote]


def logout(ctx, cookie):
    """``webim/logout``: end the sessions opened with this login cookie (its ``jti``),
    wherever they poll; a missing or invalid cookie ends nothing
    (docs/design.md#d19-session-lifetime). :returns: how many sessions ended."""
    try:
        claims = ctx.auth.login_cookie_claims(cookie)
    except Unauthorized:
        return 0
    if not claims.get("jti"):
        return 0  # a cookie from before logins were named
    return ctx.router.end_sessions(claims["sub"], login=claims["jti"])


async def login(ctx, params):
    """``POST webim/login`` (accounts, docs/protocol.md#webimlogin-and-webimlogout): check ``username``/``password``.

    :returns: ``(user_id, answer)``; the web layer sets the login cookie.
    """
    username, password = params.required("username", "password")
    user_id = await ctx.auth.check_password(username, password)
    profile = await ctx.store.get_user(user_id)
    return user_id, {"success": True, "user": model.user_info(profile, "unavailable", "")}
