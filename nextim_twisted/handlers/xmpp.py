"""Handler-level entry points of the XMPP bridge (docs/xmpp.md).

Incoming: the bridge (``nextim_twisted/xmpp/bridge.py``) parses stanzas and calls
these, so XMPP traffic is stored and routed exactly like web traffic (docs/design.md#d7-messages, #d10-history).
Outgoing: :func:`send_chat` is what ``webim/message`` does for a JID buddy.

The *failure packet* (errors from XMPP come back to the web sender): when
the XMPP side refuses a message (``service-unavailable``, an unknown user, a room that
refuses us …) every session of the web sender gets, in ``messages``::

    {"type": "unicast", "from": <jid or room id>, "to": <web user>, "nick": <their nick>,
     "body": "Not delivered: <reason>", "style": "color:#b00",
     "timestamp": <ms>, "error": <XMPP condition, e.g. "service-unavailable">,
     "error_msg": <reason>}

It is unicast-shaped so that every client shows it in the right conversation (a
v3-era client stops polling on an unknown message type, docs/protocol.md#envelope-and-packets);
newer clients recognise it by its ``error`` key. It is not stored in history.
"""
from .. import model
from .delivery import deliver, store_message

#: Style of the failure packet's body (safe under docs/design.md#d15-limits).
FAILURE_STYLE = "color:#b00"


async def send_chat(ctx, user, ticket, jid, body, style, client_id=None):
    """``webim/message`` to an XMPP buddy: commit (docs/design.md#d7-messages), copy to the sender's other
    sessions, then hand to the bridge as a ``chat`` message.

    :raises ProtocolError: 503 ``xmpp_unavailable`` before anything is stored when the
        bridge can take no more (stopped, or disconnected with a full queue).
    """
    ctx.xmpp.check_can_send()
    msg = await store_message(ctx, "unicast", user.id, jid, user.nick, body, style, ctx.now_ms(), True,
                              client_id=client_id)
    if msg is None:
        return None  # a retry of a message already sent (docs/design.md#d17-idempotent-sends)
    ctx.router.route_unicast(msg, ticket)
    ctx.xmpp.send_chat(user.id, jid, body, msg)
    return msg


async def incoming_chat(ctx, user_id, jid, nick, body):
    """A ``chat`` message from an XMPP buddy: stored like any unicast (docs/design.md#d7-messages), delivered
    live, or kept for ``new_messages`` at the user's next ``online``, once either way
    (the delivery rule, :mod:`.delivery`).
    Bodies beyond ``[limits] message_chars`` are cut. Returns the stored message."""
    body = body[: ctx.config.limits.message_chars]
    msg, _ = await deliver(ctx, "unicast", jid, user_id, nick, body)
    return msg


def incoming_status(ctx, user_id, jid, nick, show):
    """A XEP-0085 chat state as a typing status (``typing``/``clear``, docs/protocol.md#webimstatus): live
    only, never stored."""
    return ctx.hub.to_user(user_id, "statuses", {"from": jid, "nick": nick, "to": user_id, "show": show})


def buddy_presence(ctx, user_id, jid, nick, type_, show, status):
    """An XMPP buddy's presence as a web presence packet (docs/design.md#d8-presence): ``type_`` is
    ``online``, ``show`` or ``offline``."""
    if type_ == "offline":
        show, status = "unavailable", ""
    return ctx.hub.to_user(user_id, "presences", {"type": type_, "from": jid, "nick": nick, "to": user_id,
                                                  "show": show, "status": status or ""})


def delivery_failed(ctx, user_id, peer, nick, condition, text=None):
    """Tell the web sender that the XMPP side refused a message (the failure packet,
    see the module docstring). ``peer`` is the JID or room id the message went to."""
    reason = text or _REASONS.get(condition) or condition.replace("-", " ")
    packet = {"type": "unicast", "from": peer, "to": user_id, "nick": nick, "body": f"Not delivered: {reason}",
              "style": FAILURE_STYLE, "timestamp": ctx.now_ms(), "error": condition, "error_msg": reason}
    return ctx.hub.to_user(user_id, "messages", packet)


_REASONS = {
    "service-unavailable": "the XMPP user does not exist or cannot receive messages (service-unavailable)",
    "item-not-found": "no such XMPP user or room (item-not-found)",
    "remote-server-not-found": "the XMPP server of this contact cannot be reached (remote-server-not-found)",
    "not-acceptable": "the XMPP room did not accept the message (not-acceptable)",
    "forbidden": "not allowed by the XMPP server (forbidden)",
    "not-authorized": "not allowed by the XMPP server (not-authorized)",
    "recipient-unavailable": "the XMPP user is not available (recipient-unavailable)",
    "conflict": "the nickname is already taken in the XMPP room (conflict)",
}


async def incoming_groupchat(ctx, room_id, occupant_id, nick, body, timestamp=None):
    """A groupchat message from an XMPP occupant of a bridged room: stored as a
    ``multicast`` from the occupant (``<room jid>/<nick>``) and routed to the live
    web members (docs/design.md#d7-messages). ``timestamp`` (ms) is the room's own
    stamp for history replayed on join (XEP-0045 §7.2.15), else now. Returns the
    stored message."""
    body = body[: ctx.config.limits.message_chars]
    msg, _ = await deliver(ctx, "multicast", occupant_id, room_id, nick, body, timestamp=timestamp)
    return msg


def room_occupant(ctx, room_id, occupant_id, nick, joined, show):
    """An XMPP occupant came or went: v5-style ``join``/``leave`` presences to the live
    members when ``[server] room_presences`` is on (docs/design.md#d9-rooms); ``members`` lists occupants
    either way."""
    if not ctx.router.room_presences:
        return
    packet = {"type": "join" if joined else "leave", "from": occupant_id, "nick": nick, "to": room_id,
              "show": show if joined else "unavailable", "status": room_id}
    ctx.hub.to_room(room_id, "presences", packet)


def remote_buddy_info(jid, nick, group, presence):
    """buddyInfo (docs/protocol.md#buddyinfo) of an XMPP buddy: ``presence`` is ``(presence, show, status)``."""
    return model.buddy_info({"id": jid, "nick": nick}, group, presence)
