"""The one delivery rule of a message, whatever its source (docs/design.md#d7-messages):

1. is the recipient live (a session open now, on any node of a cluster)?
2. store the message, ``delivered`` set to that answer; ``ok`` only after the commit;
3. re-check: a recipient who came online while the message was being stored may have
   taken it already as one of ``online``'s ``new_messages``. Whoever marks it delivered
   first hands it over, so it reaches the recipient exactly once
   (docs/design.md#d6-comet-envelope, docs/design.md#d10-history);
4. route it to the live sessions (and the sender's other sessions).

With ``[webhooks] url`` a unicast or multicast message's ``message`` event, and
``message.offline`` for a unicast stored undelivered, are written in the message's
own transaction (step 2): one more row in a commit that happens anyway, no wait for
the site (docs/design.md#d22-the-site-as-source-of-truth).

Used by ``webim/message`` (:mod:`.chat`), inbound XMPP chat (:mod:`.xmpp`) and the
admin broadcast (:mod:`.admin`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..errors import Conflict
from ..store import keys

if TYPE_CHECKING:
    from ..store.rows import Message
    from .context import Context

MessageType = Literal["unicast", "multicast", "broadcast"]


def _with(also):
    """``add_message``'s keyword for the webhook rows, only when there are some (a
    store without webhooks is called as before)."""
    return {"also": also} if also is not None else {}


async def store_message(ctx: Context, type_: MessageType, from_id: str, to: str, nick: str, body: str,
                        style: str, timestamp: int, delivered: bool, also=None,
                        client_id: str | None = None) -> Message | None:
    """Commit one message (with the webhook rows ``also`` in its transaction). With the
    sender's ``client_id`` (docs/design.md#d17-idempotent-sends) at most once: None when
    that key already names this same message (a retry: nothing stored, nothing to route,
    no webhook event).

    :raises Conflict: ``client_id_reused``, the key names another message; nothing stored.
    """
    if client_id is None:
        return await ctx.store.add_message(type_, from_id, to, nick, body, style, timestamp, delivered,
                                           **_with(also))
    found, msg = await keys.add_message_once(ctx.store, type_, from_id, to, nick, body, style, timestamp,
                                             delivered, client_id, also=also)
    if found == keys.NEW:
        return msg
    if found == keys.SAME:
        return None
    raise Conflict("client_id: already used for another message", code="client_id_reused")


async def deliver(ctx: Context, type_: MessageType, from_id: str, to: str, nick: str, body: str,
                  style: str = "", sender_ticket: str | None = None,
                  timestamp: int | None = None, client_id: str | None = None) -> tuple[Message | None, int]:
    """Store one message, then route it by the rule in the module docstring.

    :param type_: ``unicast`` (``to`` a user id or, from the XMPP side, a web user),
        ``multicast`` (``to`` a room id: the live members get it, stored delivered), or
        ``broadcast`` (``to`` the domain: every online user gets it unicast-shaped, stored
        delivered; a broadcast is for whoever is online, never kept for a later
        ``online``).
    :param from_id: sender: a user id, a JID, an occupant ``room@service/nick``, or the
        admin's ``broadcast_from``.
    :param sender_ticket: the sending session, which gets no copy of its own message.
    :param timestamp: ms since the epoch to store instead of now (a MUC room's own stamp
        for history replayed on join, XEP-0045 §7.2.15).
    :param client_id: the sender's key (:func:`store_message`): a retry of a message
        already stored stores and routes nothing and returns ``(None, 0)``.
    :returns: ``(stored message with "id", live recipients reached)``: for unicast 1 or 0
        (0: kept for the recipient's next ``online``), for a broadcast the number of
        users, for multicast 0 (not counted).
    :raises Conflict: ``client_id`` names another message.
    :raises: whatever the store raises; nothing is routed then.
    """
    router, store, hooks = ctx.router, ctx.store, ctx.webhooks
    when = ctx.now_ms() if timestamp is None else timestamp
    if type_ == "unicast":
        live = await ctx.live.has_sessions(to)
        also = hooks.message_rows(offline=not live) if hooks is not None else None
        msg = await store_message(ctx, "unicast", from_id, to, nick, body, style, when, live, also, client_id)
        if msg is None:
            return None, 0
        if hooks is not None and also is not None:
            hooks.kick()
        to_recipient = True
        if not live and to != from_id and await ctx.live.has_sessions(to):
            live = True
            to_recipient = bool(await store.mark_delivered([msg["id"]]))
        reached = router.route_unicast(msg, sender_ticket, to_recipient=to_recipient, recipient_live=live)
        return msg, int(reached)
    also = hooks.message_rows(offline=False) if hooks is not None and type_ == "multicast" else None
    msg = await store_message(ctx, type_, from_id, to, nick, body, style, when, True, also, client_id)
    if msg is None:
        return None, 0
    if hooks is not None and also is not None:
        hooks.kick()
    if type_ == "multicast":
        router.route_multicast(msg, sender_ticket)
        return msg, 0
    return msg, router.route_broadcast(msg)
