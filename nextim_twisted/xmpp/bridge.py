"""The XMPP bridge: glue between the component connection, the live router and the
handlers (issue 7; operator docs in ``docs/xmpp.md``).

Data flows one way, as everywhere in the daemon: web → handlers → core/store and the
bridge (this module sends stanzas); XMPP in → this module parses stanzas → the
handler entry points in :mod:`nextim_twisted.handlers.xmpp` → core/store.

What it keeps in memory (rebuilt from storage at start, from XMPP after reconnecting):

- ``pairs``: ``{user_id: {jid: Pair}}`` — directory pairs with their RFC 3921
  subscription (:mod:`.subscriptions`), written through to ``xmpp_buddies``;
- ``presence``: ``{(user_id, jid): {resource: (show, status, priority)}}`` of the
  XMPP contacts' available resources;
- ``rooms``: ``{room_id: muc_jid}``; ``joined``: ``{room_id: {user_id: Occupancy}}``
  (web users in the MUC through the component); ``occupants``: ``{room_id: {nick: show}}``
  (the XMPP occupants).
"""
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import InvalidFormat, JID
from twisted.words.xish import domish

from ..core.observers import ILiveStateObserver
from ..errors import BadRequest, NotFound, ProtocolError
from ..handlers import xmpp as entry
from . import mapping, subscriptions
from .component import ComponentConnection
from .store import XmppStore

log = Logger()

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_NICK = "http://jabber.org/protocol/nick"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"

#: Resource of every web user's JID on the XMPP side.
RESOURCE = "web"
#: XEP-0085 state → web typing status, and back (composing/paused ↔ typing/clear).
_STATE_TO_STATUS = {"composing": "typing", "paused": "clear", "active": "clear", "inactive": "clear",
                    "gone": "clear"}
_STATUS_TO_STATE = {"typing": "composing", "clear": "paused"}


class XmppUnavailable(ProtocolError):
    """503: the bridge cannot take a message now (issue 7: a clear failure answer)."""

    status = 503
    code = "xmpp_unavailable"


@dataclass
class Pair:
    """A directory pair web user ↔ XMPP contact."""

    jid: str
    nick: str
    group: str
    sub: subscriptions.Subscription


@dataclass
class Occupancy:
    """A web user in a MUC room through the component."""

    nick: str
    inside: bool = False     # the room confirmed the join (self-presence)
    retried: bool = False    # already retried with another nick after a conflict


def _bare(jid):
    return jid.userhost()


def _error_condition(element):
    """``(condition, text)`` of a stanza's ``<error/>`` (RFC 3920 §9.3)."""
    for child in element.elements():
        if child.name == "error":
            condition, text = "undefined-condition", None
            for c in child.elements():
                if c.name == "text":
                    text = str(c)
                elif c.uri == NS_STANZAS:
                    condition = c.name
            return condition, text
    return "undefined-condition", None


def _child(element, name, uri=None):
    for c in element.elements():
        if c.name == name and (uri is None or c.uri == uri):
            return c
    return None


class Bridge(ILiveStateObserver):
    """The XMPP bridge of one daemon.

    :param ctx: the handlers' :class:`~nextim_twisted.handlers.context.Context`.
    :param cfg: the ``[xmpp]`` config section.
    :param reactor: ``IReactorTCP`` + ``IReactorTime``.
    :param connection_factory: builds the :class:`.component.ComponentConnection`
        (tests may substitute).
    """

    def __init__(self, ctx, cfg, reactor, connection_factory=ComponentConnection):
        self.ctx = ctx
        self.domain = cfg.component_domain
        self.muc_domain = cfg.muc_domain
        self.store = XmppStore(ctx.store)
        self.pairs = {}
        self.presence = {}
        self.rooms = {}
        self.joined = {}
        self.occupants = {}
        self._nodes = {}          # lower-case JID localpart → web user id (Prosody lower-cases nodes)
        self._writes = defer.DeferredLock()
        self._configured = set()  # rooms whose configuration we submitted on this connection
        self.conn = connection_factory(reactor, cfg.host, cfg.port, cfg.component_domain, cfg.secret,
                                       self._stanza, self._connected, self._disconnected,
                                       min_backoff=cfg.min_backoff, max_backoff=cfg.max_backoff,
                                       max_queue=cfg.queue_stanzas)

    # -- lifecycle -----------------------------------------------------------
    async def start(self):
        """Load pairs and bridged rooms, observe the router, start connecting."""
        for row in await self.store.pairs():
            self._cache_pair(row["user_id"], Pair(row["jid"], row["nick"] or mapping.nick_of(row["jid"]),
                                                  row["group"] or "", row["subscription"]))
        self.rooms = await self.store.rooms()
        self.ctx.router.add_observer(self)
        self.conn.start()

    async def stop(self):
        """Tell XMPP every web user is gone (unavailable to subscribers, leave rooms),
        then close the stream."""
        self.ctx.router.remove_observer(self)
        if self.conn.connected:
            for user_id, pairs in self.pairs.items():
                for pair in pairs.values():
                    if subscriptions.may_see(pair.sub):
                        self._send_presence(user_id, pair.jid, "unavailable")
            for room_id, occupancies in self.joined.items():
                for user_id, occ in occupancies.items():
                    self._send_presence(user_id, f"{self.rooms[room_id]}/{occ.nick}", "unavailable")
        self.joined.clear()
        await self.conn.stop()

    # -- addresses -----------------------------------------------------------
    def jid_of(self, user_id, resource=RESOURCE):
        """The full JID of a web user on the XMPP side."""
        node = mapping.escape_node(user_id)
        self._nodes[node.lower()] = user_id
        return mapping.user_jid(user_id, self.domain, resource)

    def _user_of(self, jid):
        """The web user id a JID of the component domain stands for, or None."""
        if jid.host != self.domain or not jid.user:
            return None
        return self._nodes.get(jid.user.lower()) or mapping.unescape_node(jid.user)

    def parse_contact(self, value):
        """A bare JID of an XMPP contact, normalized (stringprep).

        :raises BadRequest: not a bare ``user@domain`` JID, or one of the component domain.
        """
        try:
            jid = JID(value)
        except (InvalidFormat, UnicodeError):
            raise BadRequest("not a valid JID", code="bad_jid") from None
        if not jid.user or jid.resource or jid.host == self.domain:
            raise BadRequest("an XMPP buddy must be a bare JID user@domain of another domain", code="bad_jid")
        return jid.full()

    def muc_jid(self, value):
        """A MUC room JID from ``"room"`` (+ ``[xmpp] muc_domain``) or ``"room@service"``.

        :raises BadRequest: not a bare room JID, or a bare name without ``muc_domain``.
        """
        if "@" not in value:
            if not self.muc_domain:
                raise BadRequest("muc: give room@service (no [xmpp] muc_domain is set)", code="bad_jid")
            value = f"{value}@{self.muc_domain}"
        try:
            jid = JID(value)
        except (InvalidFormat, UnicodeError):
            raise BadRequest("muc: not a valid room JID", code="bad_jid") from None
        if not jid.user or jid.resource:
            raise BadRequest("muc: must be a bare room JID room@service", code="bad_jid")
        return jid.full()

    # -- directory (admin API) -------------------------------------------------
    def _cache_pair(self, user_id, pair):
        self.pairs.setdefault(user_id, {})[pair.jid] = pair
        self.jid_of(user_id)

    def pair(self, user_id, jid):
        """The :class:`Pair` or None."""
        return self.pairs.get(user_id, {}).get(jid)

    def is_buddy(self, user_id, jid):
        """True if the directory pairs the web user with the XMPP contact ``jid``."""
        return jid in self.pairs.get(user_id, ())

    async def add_buddy(self, user_id, jid, nick=None, group=None):
        """Pair a web user with an XMPP contact (``PUT /admin/users/{id}/buddies/{jid}``)
        and start the subscription handshake. Returns the normalized JID."""
        jid = self.parse_contact(jid)
        await self.store.put_pair(user_id, jid, nick, group)
        pair = self.pair(user_id, jid)
        if pair is None:
            pair = Pair(jid, nick or mapping.nick_of(jid), group or "", subscriptions.Subscription())
            self._cache_pair(user_id, pair)
        else:
            pair.nick, pair.group = nick or mapping.nick_of(jid), group or ""
        self._apply(user_id, pair, *subscriptions.ensure(pair.sub))
        return jid

    async def remove_buddy(self, user_id, jid):
        """Unpair (``DELETE …/buddies/{jid}``): cancel the subscriptions both ways.

        :raises NotFound: not paired.
        """
        pair = self.pairs.get(user_id, {}).pop(jid, None)
        if pair is None or not await self.store.delete_pair(user_id, jid):
            raise NotFound("not buddies", code="not_buddies")
        _, actions = subscriptions.remove(pair.sub)
        self._run_actions(user_id, pair, actions)

    async def user_deleted(self, user_id):
        """A web user left the directory: unpair all their XMPP buddies, leave rooms."""
        for jid in list(self.pairs.get(user_id, ())):
            await self.remove_buddy(user_id, jid)
        self.pairs.pop(user_id, None)

    async def set_room(self, room_id, muc):
        """Bridge a room to a MUC room (``"muc"`` of ``PUT /admin/rooms/{id}``; ``None``
        unbridges). Live visible members join (or leave) at once."""
        old = self.rooms.get(room_id)
        if muc is None:
            if old is not None:
                self._leave_all(room_id)
                del self.rooms[room_id]
                await self.store.delete_room(room_id)
            return
        muc = self.muc_jid(muc)
        if old == muc:
            return
        if old is not None:
            self._leave_all(room_id)
        await self.store.put_room(room_id, muc)
        self.rooms[room_id] = muc
        for member_id in self.ctx.router.live_members(room_id):
            user = self.ctx.router.user(member_id)
            if user is not None and user.visible:
                self._join_muc(user, room_id)

    async def room_deleted(self, room_id):
        """A room left the directory: forget its bridge."""
        await self.set_room(room_id, None)

    # -- what handlers ask -------------------------------------------------------
    def remote_buddies(self, user_id):
        """The user's XMPP buddies as buddyInfo dicts (§2.2) with their live presence,
        ordered by JID: ``{jid: info}``."""
        result = {}
        for jid, pair in sorted(self.pairs.get(user_id, {}).items()):
            show, status = mapping.aggregate(self.presence.get((user_id, jid), {}))
            presence = ("offline", "unavailable", "") if show == "unavailable" else ("online", show, status)
            result[jid] = entry.remote_buddy_info(jid, pair.nick, pair.group, presence)
        return result

    def room_occupants(self, room_id):
        """XMPP occupants of a bridged room as ``members`` entries, by nick:
        ``[{"id": "<room jid>/<nick>", "nick", "presence": "online", "show"}]``."""
        muc = self.rooms.get(room_id)
        if muc is None:
            return []
        return [{"id": f"{muc}/{nick}", "nick": nick, "presence": "online", "show": show}
                for nick, show in sorted(self.occupants.get(room_id, {}).items())]

    def check_can_send(self):
        """:raises XmppUnavailable: the bridge cannot take a stanza now."""
        if not self.conn.can_send():
            reason = ("the XMPP bridge is off: its configuration was refused" if self.conn.fatal else
                      "the XMPP server is unreachable and the send queue is full")
            raise XmppUnavailable(reason)

    def send_chat(self, user_id, jid, body, message):
        """Send a stored web unicast to an XMPP buddy as a ``chat`` message (queued while
        disconnected). The id ``nextim-<row id>`` comes back on an error reply."""
        el = self._stanza_el("message", user_id, jid, "chat")
        el["id"] = f"nextim-{message.get('id', '')}"
        el.addElement("body", content=body)
        el.addElement((NS_CHATSTATES, "active"))
        if not self.conn.send(el):
            entry.delivery_failed(self.ctx, user_id, jid, self._nick(user_id, jid), "remote-server-timeout",
                                  "the XMPP server is unreachable and the send queue is full")

    def send_chat_state(self, user_id, jid, show):
        """A web typing status as a XEP-0085 chat state (typing → composing, clear →
        paused); other tokens are not mapped. Never queued."""
        state = _STATUS_TO_STATE.get(show)
        if state is None:
            return
        el = self._stanza_el("message", user_id, jid, "chat")
        el.addElement((NS_CHATSTATES, state))
        self.conn.send(el, queue=False)

    def send_groupchat(self, room_id, user_id, body):
        """A web multicast in a bridged room as a groupchat from the sender's occupant.
        Only for senders inside the MUC (an invisible sender is not, D8)."""
        muc = self.rooms.get(room_id)
        occ = self.joined.get(room_id, {}).get(user_id)
        if muc is None or occ is None:
            return
        el = self._stanza_el("message", user_id, muc, "groupchat")
        el.addElement("body", content=body)
        if not self.conn.send(el):
            entry.delivery_failed(self.ctx, user_id, room_id, room_id, "remote-server-timeout",
                                  "the XMPP server is unreachable and the send queue is full")

    # -- router observer (web presence → XMPP) ---------------------------------------
    def user_presence(self, user, type_):
        """Router event: ``online``/``show``/``offline`` as others see the user (D8:
        invisible arrives as offline). Presence goes to every contact allowed to see it;
        MUC rooms are joined, updated or left."""
        # The user is still in the router while "offline" is announced: use type_.
        show = "unavailable" if type_ == "offline" else user.show
        xtype, _ = mapping.web_to_xmpp(show)
        for pair in self.pairs.get(user.id, {}).values():
            if subscriptions.may_see(pair.sub):
                self._send_presence(user.id, pair.jid, xtype, show, user.status, queue=False)
        if type_ == "offline":
            for room_id in list(self.joined):
                self._leave_muc(user.id, room_id)
        else:
            for room_id in list(user.rooms):
                if room_id in self.rooms:
                    if user.id in self.joined.get(room_id, {}):
                        occ = self.joined[room_id][user.id]
                        self._send_presence(user.id, f"{self.rooms[room_id]}/{occ.nick}", None, user.show,
                                            user.status, queue=False)
                    else:
                        self._join_muc(user, room_id)

    def room_joined(self, user, room_id):
        """Router event: live-joined a room; a visible user joins its MUC (XEP-0045 §7.2)."""
        if room_id in self.rooms and user.visible:
            self._join_muc(user, room_id)

    def room_left(self, user, room_id):
        """Router event: left (or blocked, or went offline): leave the MUC (XEP-0045 §7.14)."""
        self._leave_muc(user.id, room_id)

    # -- connection events ---------------------------------------------------------------
    def _connected(self):
        """After each handshake: probe contacts, push every pair towards ``both``, send
        every web user's presence to those allowed to see it, rejoin rooms. Queued
        stanzas are flushed right after."""
        for user_id, pairs in self.pairs.items():
            for pair in pairs.values():
                self._apply(user_id, pair, *subscriptions.ensure(pair.sub))
                if pair.sub.has_to:
                    self._send_presence(user_id, pair.jid, "probe", queue=False)
                if subscriptions.may_see(pair.sub):
                    self._send_current_presence(user_id, pair.jid)
        self.joined.clear()
        self._configured.clear()
        for room_id in self.rooms:
            for member_id in self.ctx.router.live_members(room_id):
                user = self.ctx.router.user(member_id)
                if user is not None and user.visible:
                    self._join_muc(user, room_id)

    def _disconnected(self):
        """The stream is gone: XMPP contacts and occupants are unknown until we are back,
        so web users see them offline now (the web side keeps working)."""
        for (user_id, jid), resources in list(self.presence.items()):
            if resources:
                self._contact_changed(user_id, jid, {})
        self.presence.clear()
        for room_id, occupants in list(self.occupants.items()):
            muc = self.rooms.get(room_id)
            for nick in list(occupants):
                entry.room_occupant(self.ctx, room_id, f"{muc}/{nick}", nick, False, "unavailable")
        self.occupants.clear()
        for occupancies in self.joined.values():
            for occ in occupancies.values():
                occ.inside = False

    # -- stanzas in -------------------------------------------------------------------------
    def _stanza(self, el):
        try:
            frm = JID(el.getAttribute("from", ""))
            to = JID(el.getAttribute("to", ""))
        except (InvalidFormat, UnicodeError):
            log.debug("XMPP stanza with a bad address ignored")
            return
        if el.name == "iq":
            self._iq(el, frm, to)
            return
        room_id = self._room_of(frm)
        user_id = self._user_of(to)
        if user_id is None:
            if el.name == "message" and el.getAttribute("type") != "error":
                self._bounce(el, "service-unavailable")
            return
        if room_id is not None:
            (self._muc_message if el.name == "message" else self._muc_presence)(el, room_id, frm, user_id)
        elif el.name == "message":
            self._message(el, frm, user_id)
        elif el.name == "presence":
            self._presence(el, frm, user_id)

    def _room_of(self, jid):
        bare = _bare(jid)
        for room_id, muc in self.rooms.items():
            if muc == bare:
                return room_id
        return None

    def _iq(self, el, frm, to):
        type_ = el.getAttribute("type")
        if type_ not in ("get", "set"):
            return
        reply = domish.Element((None, "iq"))
        reply["from"], reply["to"], reply["id"] = to.full(), frm.full(), el.getAttribute("id", "")
        query = _child(el, "query", NS_DISCO_INFO)
        if type_ == "get" and (_child(el, "ping", NS_PING) is not None or query is not None):
            reply["type"] = "result"
            if query is not None:
                q = reply.addElement((NS_DISCO_INFO, "query"))
                ident = q.addElement("identity")
                ident["category"], ident["type"], ident["name"] = (
                    ("gateway", "web", "nextim web users") if to.user is None else ("account", "registered", ""))
                for var in (NS_DISCO_INFO, NS_PING, NS_CHATSTATES, NS_MUC):
                    q.addElement("feature")["var"] = var
        else:
            reply["type"] = "error"
            err = reply.addElement("error")
            err["type"] = "cancel"
            err.addElement((NS_STANZAS, "service-unavailable"))
        self.conn.send(reply, queue=False)

    def _bounce(self, el, condition):
        """Answer a message we cannot take with an error (RFC 3920 §9.3)."""
        reply = domish.Element((None, el.name))
        reply["from"], reply["to"], reply["type"] = el.getAttribute("to", ""), el.getAttribute("from", ""), "error"
        if el.hasAttribute("id"):
            reply["id"] = el["id"]
        err = reply.addElement("error")
        err["type"] = "cancel"
        err.addElement((NS_STANZAS, condition))
        self.conn.send(reply, queue=False)

    def _message(self, el, frm, user_id):
        jid = _bare(frm)
        type_ = el.getAttribute("type", "normal")
        pair = self.pair(user_id, jid)
        if type_ == "error":
            condition, text = _error_condition(el)
            entry.delivery_failed(self.ctx, user_id, jid, pair.nick if pair else mapping.nick_of(jid),
                                  condition, text)
            return
        if type_ not in ("chat", "normal"):
            return
        if pair is None:
            # Only directory buddies may write to a web user (docs/xmpp.md).
            self._bounce(el, "service-unavailable")
            return
        body = _child(el, "body")
        if body is not None and str(body).strip():
            d = defer.ensureDeferred(entry.incoming_chat(self.ctx, user_id, jid, pair.nick, str(body)))
            d.addErrback(lambda f: log.failure("storing an XMPP message failed", f))
            return
        for child in el.elements():
            if child.uri == NS_CHATSTATES and child.name in _STATE_TO_STATUS:
                entry.incoming_status(self.ctx, user_id, jid, pair.nick, _STATE_TO_STATUS[child.name])
                return

    def _presence(self, el, frm, user_id):
        jid = _bare(frm)
        type_ = el.getAttribute("type")
        pair = self.pair(user_id, jid)
        if type_ in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            sub = pair.sub if pair else subscriptions.Subscription()
            new, actions = subscriptions.inbound(sub, type_, pair is not None)
            if pair is None:
                for action in actions:
                    self._send_presence(user_id, jid, action)
                if type_ == "subscribe":
                    log.info("refused an XMPP subscription request to a web user from a JID that is not "
                             "their buddy")
            else:
                self._apply(user_id, pair, new, actions)
            return
        if pair is None:
            return
        if type_ == "probe":
            if subscriptions.may_see(pair.sub):
                self._send_current_presence(user_id, jid)
            return
        resources = dict(self.presence.get((user_id, jid), {}))
        resource = frm.resource or ""
        if type_ in ("unavailable", "error"):
            if type_ == "error" or not resource:
                resources.clear()
            else:
                resources.pop(resource, None)
        elif type_ is None:
            show_el, status_el, prio_el = _child(el, "show"), _child(el, "status"), _child(el, "priority")
            try:
                priority = int(str(prio_el)) if prio_el is not None else 0
            except ValueError:
                priority = 0
            resources[resource] = (mapping.xmpp_to_web(None, str(show_el) if show_el is not None else None),
                                   str(status_el)[:200] if status_el is not None else "", priority)
        else:
            return
        self._contact_changed(user_id, jid, resources)

    def _contact_changed(self, user_id, jid, resources):
        """Store a contact's resources and tell the web user when what they see changes."""
        before = mapping.aggregate(self.presence.get((user_id, jid), {}))
        if resources:
            self.presence[(user_id, jid)] = resources
        else:
            self.presence.pop((user_id, jid), None)
        after = mapping.aggregate(resources)
        if before == after:
            return
        if after[0] == "unavailable":
            type_ = "offline"
        elif before[0] == "unavailable":
            type_ = "online"
        else:
            type_ = "show"
        entry.buddy_presence(self.ctx, user_id, jid, self._nick(user_id, jid), type_, after[0], after[1])

    # -- MUC (XEP-0045) -------------------------------------------------------------------------
    def _join_muc(self, user, room_id, nick=None, retried=False):
        occupancies = self.joined.setdefault(room_id, {})
        if user.id in occupancies and nick is None:
            return
        nick = nick or user.nick
        occupancies[user.id] = Occupancy(nick, retried=retried)
        el = self._presence_el(user.id, f"{self.rooms[room_id]}/{nick}", None, user.show, user.status)
        x = el.addElement((NS_MUC, "x"))
        x.addElement("history")["maxstanzas"] = "0"
        self.conn.send(el, queue=False)

    def _leave_muc(self, user_id, room_id):
        occ = self.joined.get(room_id, {}).pop(user_id, None)
        if occ is None:
            return
        if not self.joined[room_id]:
            del self.joined[room_id]
            # Nobody of ours is left inside: we no longer learn who is there.
            for nick in list(self.occupants.pop(room_id, {})):
                entry.room_occupant(self.ctx, room_id, f"{self.rooms[room_id]}/{nick}", nick, False, "unavailable")
        if room_id in self.rooms:
            self._send_presence(user_id, f"{self.rooms[room_id]}/{occ.nick}", "unavailable", queue=False)

    def _leave_all(self, room_id):
        for user_id in list(self.joined.get(room_id, {})):
            self._leave_muc(user_id, room_id)

    def _listener(self, room_id):
        """The one web occupant whose copy of each room message we take (every one of our
        occupants gets a copy): the smallest user id among those inside."""
        inside = [u for u, occ in self.joined.get(room_id, {}).items() if occ.inside]
        return min(inside) if inside else None

    def _muc_presence(self, el, room_id, frm, user_id):
        nick = frm.resource
        if nick is None:
            return
        occupancies = self.joined.get(room_id, {})
        occ = occupancies.get(user_id)
        type_ = el.getAttribute("type")
        x = _child(el, "x", NS_MUC_USER)
        codes = {s.getAttribute("code") for s in x.elements() if s.name == "status"} if x is not None else set()
        if type_ == "error":
            if occ is None or occ.nick != nick:
                return
            condition, text = _error_condition(el)
            user = self.ctx.router.user(user_id)
            if condition == "conflict" and not occ.retried and user is not None:
                # Nick taken in the room: once more as "<nick> (<id>)".
                self._join_muc(user, room_id, nick=f"{user.nick} ({user_id})", retried=True)
                return
            occupancies.pop(user_id, None)
            entry.delivery_failed(self.ctx, user_id, room_id, room_id, condition,
                                  text or f"could not join the XMPP room ({condition})")
            return
        ours = {o.nick: u for u, o in occupancies.items()}
        if nick in ours:
            if "110" in codes or ours[nick] == user_id:
                mine = occupancies[ours[nick]]
                if type_ != "unavailable":
                    mine.inside = True
                    if ours[nick] == user_id and room_id not in self._configured:
                        # Once per room and connection: a room we created (status 201), or
                        # one the server restored still locked, opens only once its owner
                        # submits a configuration; a non-owner's submit is refused, harmlessly.
                        self._configured.add(room_id)
                        self._configure_instant_room(user_id, self.rooms[room_id])
            return
        show_el = _child(el, "show")
        show = mapping.xmpp_to_web(None, str(show_el) if show_el is not None else None) \
            if type_ is None else "unavailable"
        occupants = self.occupants.setdefault(room_id, {})
        occupant_id = f"{self.rooms[room_id]}/{nick}"
        if type_ == "unavailable":
            if occupants.pop(nick, None) is not None:
                entry.room_occupant(self.ctx, room_id, occupant_id, nick, False, "unavailable")
        elif type_ is None:
            joined = nick not in occupants
            occupants[nick] = show
            if joined:
                entry.room_occupant(self.ctx, room_id, occupant_id, nick, True, show)

    def _configure_instant_room(self, user_id, muc):
        """We created the room: accept the default configuration (XEP-0045 §10.1.2)."""
        iq = domish.Element((None, "iq"))
        iq["type"], iq["id"] = "set", "nextim-create"
        iq["from"], iq["to"] = self.jid_of(user_id), muc
        query = iq.addElement((NS_MUC_OWNER, "query"))
        query.addElement(("jabber:x:data", "x"))["type"] = "submit"
        self.conn.send(iq, queue=False)

    def _muc_message(self, el, room_id, frm, user_id):
        type_ = el.getAttribute("type", "normal")
        if type_ == "error":
            condition, text = _error_condition(el)
            entry.delivery_failed(self.ctx, user_id, room_id, room_id, condition, text)
            return
        if type_ != "groupchat" or frm.resource is None:
            return
        body = _child(el, "body")
        if body is None or not str(body).strip() or _child(el, "delay", NS_DELAY) is not None:
            return  # subjects, chat states and history replays are not bridged
        if user_id != self._listener(room_id):
            return
        nick = frm.resource
        if nick in {o.nick for o in self.joined.get(room_id, {}).values()}:
            return  # the room reflecting a web user's own message: already routed
        d = defer.ensureDeferred(entry.incoming_groupchat(self.ctx, room_id, f"{self.rooms[room_id]}/{nick}", nick,
                                                          str(body)))
        d.addErrback(lambda f: log.failure("storing an XMPP room message failed", f))

    # -- stanzas out ----------------------------------------------------------------------------
    def _nick(self, user_id, jid):
        pair = self.pair(user_id, jid)
        return pair.nick if pair else mapping.nick_of(jid)

    def _stanza_el(self, name, user_id, to, type_=None):
        el = domish.Element((None, name))
        el["from"] = self.jid_of(user_id)
        el["to"] = to
        if type_:
            el["type"] = type_
        return el

    def _presence_el(self, user_id, to, type_, show=None, status=None):
        el = self._stanza_el("presence", user_id, to, type_)
        if type_ is None:
            _, show_text = mapping.web_to_xmpp(show or "available")
            if show_text:
                el.addElement("show", content=show_text)
            if status:
                el.addElement("status", content=status)
        return el

    def _send_presence(self, user_id, to, type_, show=None, status=None, queue=None):
        """Send a presence; subscription stanzas are queued while down, others are not
        (they are rebuilt after reconnecting)."""
        el = self._presence_el(user_id, to, type_, show, status)
        if type_ == "subscribe":
            user = self.ctx.router.user(user_id)
            if user is not None:
                el.addElement((NS_NICK, "nick"), content=user.nick)  # XEP-0172
        if queue is None:
            queue = type_ in ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
        return self.conn.send(el, queue=queue)

    def _send_current_presence(self, user_id, jid):
        _, show, status = self.ctx.router.presence_of(user_id)
        type_, _ = mapping.web_to_xmpp(show)
        self._send_presence(user_id, jid, type_, show, status, queue=False)

    def _apply(self, user_id, pair, new, actions):
        if new != pair.sub:
            pair.sub = new
            d = self._writes.run(self.store.set_subscription, user_id, pair.jid, new)
            d.addErrback(lambda f: log.failure("saving an XMPP subscription failed", f))
        self._run_actions(user_id, pair, actions)

    def _run_actions(self, user_id, pair, actions):
        for action in actions:
            if action == subscriptions.SEND_PRESENCE:
                self._send_current_presence(user_id, pair.jid)
            elif action == subscriptions.CONTACT_GONE:
                self._contact_changed(user_id, pair.jid, {})
            else:
                self._send_presence(user_id, pair.jid, action)
