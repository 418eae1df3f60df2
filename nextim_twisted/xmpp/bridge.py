"""The XMPP bridge: glue between the component connection, the live router and the
handlers (operator docs in ``docs/xmpp.md``).

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
from dataclasses import dataclass, field
from datetime import datetime, timezone

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import InvalidFormat, JID
from twisted.words.xish import domish

from ..core.observers import ILiveStateObserver
from ..errors import BadRequest, NotFound, ProtocolError
from ..ids import XmppForms, xmpp_forms
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

# Bridged rooms (docs/xmpp.md "Rooms"). A web user's join to a MUC room is retried after
# these delays (seconds) when refused or unanswered; after the last one it has failed
# for good: about 30 s of retries, plus JOIN_TIMEOUT per unanswered attempt.
JOIN_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15)
#: Seconds a join may go unanswered before it counts as refused.
JOIN_TIMEOUT = 10
#: Seconds to wait for the answer to an instant-room configuration before letting the others join.
CONFIG_TIMEOUT = 5
#: Multicasts held per web user and room while the user is not in the XMPP room; beyond it,
#: each further one gets a failure packet at once.
HOLD_MESSAGES = 100
#: Seconds after the first held multicast at which everything still held gets failure packets.
HOLD_SECONDS = 120
#: Seconds the room may take to reflect a multicast (XEP-0045 §7.4) before its sender is told
#: that XMPP may not have got it.
ACK_SECONDS = 30
#: Join errors that retrying cannot cure (XEP-0045 §7.2.6–§7.2.8, §7.2.10).
PERMANENT_JOIN_ERRORS = frozenset({"forbidden", "not-authorized", "registration-required", "not-allowed",
                                   "jid-malformed", "not-acceptable"})
WAITING, JOINING, BACKOFF, INSIDE = "waiting", "joining", "backoff", "inside"


class XmppUnavailable(ProtocolError):
    """503: the bridge cannot take a message now; refused before anything is stored, so
    the sender knows (docs/design.md#d7-messages: ``ok`` only for what will be delivered)."""

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
    """A web user who is, or should be, in a MUC room through the component.

    ``held``: bodies of the user's multicasts waiting for the join (at most
    :data:`HOLD_MESSAGES`, for at most :data:`HOLD_SECONDS`); ``unacked``: ``{stanza id:
    (body, IDelayedCall)}`` sent but not yet reflected by the room.
    """

    nick: str
    state: str = WAITING
    nick_retried: bool = False   # already retried with "<nick> (<id>)" after a conflict
    attempts: int = 0            # refused or unanswered joins in a row
    timer: object = None         # the join's answer timeout or its retry
    history_since: int | None = None  # ms: this join asked for the room's history newer than this
    held: list = field(default_factory=list)
    hold_timer: object = None
    unacked: dict = field(default_factory=dict)

    @property
    def inside(self):
        """The room confirmed the join (XEP-0045 §7.2.3 self-presence)."""
        return self.state == INSIDE


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


def _xmpp_stamp(ms):
    """XEP-0082 date-time (UTC, seconds) of an epoch time in ms."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(text):
    """Epoch ms of a XEP-0082 date-time (XEP-0203 ``stamp``), or None."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


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
        self._nodes = {}          # nodeprep'd JID localpart → web user id (the server prepares nodes)
        self.forms = XmppForms()  # every directory id's XMPP forms, for the id-clash rule (ids.py)
        self._jids = set()        # user ids whose localpart is in _nodes
        self._writes = defer.DeferredLock()
        self._history = defer.DeferredLock()  # MUC history imports, one at a time, in order
        self.clock = reactor              # retries, holds and acknowledgement timeouts
        self._room_state = {}             # room_id → None / "opening" / "open", per connection
        self._opener = {}                 # room_id → the user whose join opens the room
        self._config_wait = {}            # room_id → (iq id, timeout) of the instant-room configuration
        self._config_ids = 0
        self._stanza_ids = 0
        self._seen_until = {}             # room_id → ms up to which the web side has the room's messages
        self.conn = connection_factory(reactor, cfg.host, cfg.port, cfg.component_domain, cfg.secret,
                                       self._stanza, self._connected, self._disconnected,
                                       min_backoff=cfg.min_backoff, max_backoff=cfg.max_backoff,
                                       max_queue=cfg.queue_stanzas)

    # -- lifecycle -----------------------------------------------------------
    async def start(self):
        """Load user ids, pairs and bridged rooms, observe the router, start connecting."""
        await self.forms.load(self.ctx.store)
        for row in await self.store.pairs():
            self._cache_pair(row["user_id"], Pair(row["jid"], row["nick"] or mapping.nick_of(row["jid"]),
                                                  row["group"] or "", row["subscription"]))
        self.rooms = await self.store.rooms()
        for room_id in self.rooms:
            await self._load_seen_until(room_id)
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
                    if occ.state in (JOINING, INSIDE):
                        self._send_presence(user_id, f"{self.rooms[room_id]}/{occ.nick}", "unavailable")
        for occupancies in self.joined.values():
            for occ in occupancies.values():
                self._cancel(occ, acks=True)
        for _, timer in self._config_wait.values():
            if timer.active():
                timer.cancel()
        self._config_wait.clear()
        self.joined.clear()
        await self.conn.stop()

    async def _load_seen_until(self, room_id):
        """What the web side has of a room, for the history asked on join: the newest
        stored multicast's time plus 2 s (our own last messages are stamped a little
        later by the room; XMPP messages within those 2 s were stored when they came)."""
        rows = await self.ctx.store.room_history(room_id, 1)
        self._seen_until[room_id] = rows[-1]["timestamp"] + 2000 if rows else 0

    def _xmpp_now(self):
        """Now in ms on the bridge's clock (the one compared with the XMPP server's
        history stamps, XEP-0203)."""
        return int(self.clock.seconds() * 1000)

    # -- addresses -----------------------------------------------------------
    def jid_of(self, user_id, resource=RESOURCE):
        """The full JID of a web user on the XMPP side."""
        if user_id not in self._jids:
            self._jids.add(user_id)
            prepped = xmpp_forms(user_id)[0]
            if prepped is not None:
                self._nodes[prepped] = user_id
        return mapping.user_jid(user_id, self.domain, resource)

    def _user_of(self, jid):
        """The web user id a JID of the component domain stands for, or None."""
        if jid.host != self.domain or not jid.user:
            return None
        return self._nodes.get(jid.user) or self.forms.node_user(jid.user) or mapping.unescape_node(jid.user)

    def parse_contact(self, value):
        """A bare JID of an XMPP contact, normalized (stringprep).

        :raises BadRequest: not a bare ``user@domain`` JID, or one of the component domain.
        """
        try:
            return mapping.normalize_contact(value, self.domain)
        except ValueError as e:
            raise BadRequest(str(e), code="bad_jid") from None

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
        self.forms.remove(user_id)

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
        await self._load_seen_until(room_id)
        self.rooms[room_id] = muc
        for member_id in self.ctx.router.live_members(room_id):
            user = self.ctx.router.user(member_id)
            if user is not None and user.visible:
                self.joined.setdefault(room_id, {}).setdefault(member_id, Occupancy(user.nick))
        self._advance(room_id)  # one opener; the others once the room is open

    async def room_deleted(self, room_id):
        """A room left the directory: forget its bridge."""
        await self.set_room(room_id, None)

    # -- what handlers ask -------------------------------------------------------
    def remote_buddies(self, user_id):
        """The user's XMPP buddies as buddyInfo dicts (docs/protocol.md) with their live presence,
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
        """A stored web multicast in a bridged room, as a groupchat from the sender's
        occupant. Never silence after ``ok``: sent now when the sender is inside the
        MUC; held (bounded, see :data:`HOLD_MESSAGES`) while their join is under way or
        the XMPP server is away, and sent once they are in; otherwise (invisible, join
        failed for good, hold full or expired, no reflection within
        :data:`ACK_SECONDS`) the sender gets a failure packet for it."""
        if room_id not in self.rooms:
            return
        occ = self.joined.get(room_id, {}).get(user_id)
        if occ is None:
            user = self.ctx.router.user(user_id)
            if user is not None and user.visible:
                self._join_muc(user, room_id)
                occ = self.joined.get(room_id, {}).get(user_id)
        if occ is None:
            # Invisible users are not in the MUC (docs/design.md#d8-presence).
            self._fail_one(room_id, user_id, "not-acceptable", "you are invisible, so not in the XMPP room", body)
        elif occ.state == INSIDE and self.conn.connected:
            self._send_groupchat_now(room_id, user_id, occ, body)
        elif self.conn.fatal:
            self._fail_one(room_id, user_id, "service-unavailable", "the XMPP bridge is off", body)
        else:
            self._hold(room_id, user_id, occ, body)

    # -- router observer (web presence → XMPP) ---------------------------------------
    def user_presence(self, user, type_):
        """Router event: ``online``/``show``/``offline`` as others see the user (docs/design.md#d8-presence:
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
                    occ = self.joined.get(room_id, {}).get(user.id)
                    if occ is None:
                        self._join_muc(user, room_id)
                    elif occ.state == INSIDE:
                        self._send_presence(user.id, f"{self.rooms[room_id]}/{occ.nick}", None, user.show,
                                            user.status, queue=False)

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
        # Rooms: every live visible member joins again, one room opener first (the room
        # may be gone with the server's restart); what they held is sent once inside.
        self._room_state.clear()
        self._opener.clear()
        for room_id in self.rooms:
            occupancies = self.joined.setdefault(room_id, {})
            for member_id in self.ctx.router.live_members(room_id):
                user = self.ctx.router.user(member_id)
                if user is not None and user.visible and member_id not in occupancies:
                    occupancies[member_id] = Occupancy(user.nick)
            if not occupancies:
                del self.joined[room_id]
                continue
            for occ in occupancies.values():
                self._cancel(occ)
                occ.state, occ.attempts = WAITING, 0
            self._advance(room_id)

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
        now = self._xmpp_now()
        for _, timer in self._config_wait.values():
            if timer.active():
                timer.cancel()
        self._config_wait.clear()
        self._room_state.clear()
        self._opener.clear()
        for room_id, occupancies in self.joined.items():
            if any(o.state == INSIDE for o in occupancies.values()):
                self._seen_until[room_id] = now
            for user_id, occ in occupancies.items():
                self._cancel(occ)
                occ.state = WAITING
                # Sent, but the room never confirmed it before the stream died: it may or
                # may not have reached the occupants, and is not sent twice.
                for _stanza_id, (body, timer) in list(occ.unacked.items()):
                    if timer.active():
                        timer.cancel()
                    self._fail_one(room_id, user_id, "remote-server-timeout",
                                   "the XMPP server went away before the room confirmed it", body)
                occ.unacked.clear()

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
        if type_ in ("result", "error"):
            self._config_answered(el.getAttribute("id", ""))
            return
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
                before = pair.sub
                self._apply(user_id, pair, new, actions)
                if type_ in ("unsubscribe", "unsubscribed") and before.state != "none" and new.state == "none":
                    self._removed_there(user_id, pair)
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

    def _removed_there(self, user_id, pair):
        """The contact's side cancelled every subscription the pair had: they removed the
        web user from their roster (RFC 3921 §8.6 sends ``unsubscribe`` and
        ``unsubscribed``). The pair leaves the directory too, so the bridge does not ask
        again at every reconnect; the web user already sees the buddy offline, and no
        longer in the list at the next ``online``."""
        if self.pairs.get(user_id, {}).pop(pair.jid, None) is None:
            return
        log.info("an XMPP contact removed a web user from their roster; the pair is removed")
        d = self._writes.run(self.store.delete_pair, user_id, pair.jid)
        d.addErrback(lambda f: log.failure("removing an XMPP pair failed", f))

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
    #
    # Joins to one room are serialised per connection (XEP-0045 §10.1.1: the first join
    # creates the room, which stays locked until its owner configures it, and refuses
    # everybody else with item-not-found meanwhile). ``_room_state[room_id]`` is None
    # (nobody of ours has tried on this connection), "opening" (the opener's join, or the
    # instant-room configuration, is under way) or "open" (others may join at once).
    # Every Occupancy is WAITING (for the room to open, or for the connection), JOINING
    # (join sent, answer due within JOIN_TIMEOUT), BACKOFF (refused; retried later) or
    # INSIDE (self-presence seen, XEP-0045 §7.2.3).

    def _join_muc(self, user, room_id):
        """A live visible member should be in the bridged room: add an Occupancy (it keeps
        whatever is held for it) and let :meth:`_advance` send the join when it may."""
        occupancies = self.joined.setdefault(room_id, {})
        if user.id not in occupancies:
            occupancies[user.id] = Occupancy(user.nick)
        self._advance(room_id)

    def _advance(self, room_id):
        """Send the joins the room's state allows: the opener's when nobody has tried yet,
        everyone else's once the room is open."""
        if not self.conn.connected or room_id not in self.rooms:
            return
        waiting = sorted(u for u, o in self.joined.get(room_id, {}).items() if o.state == WAITING)
        if not waiting:
            return
        state = self._room_state.get(room_id)
        if state == "open":
            for user_id in waiting:
                self._send_join(room_id, user_id)
        elif state is None:
            self._room_state[room_id] = "opening"
            self._opener[room_id] = waiting[0]
            self._send_join(room_id, waiting[0], history=True)

    def _send_join(self, room_id, user_id, history=False):
        occ = self.joined[room_id][user_id]
        user = self.ctx.router.user(user_id)
        if user is None or not user.visible:
            self._drop_occupancy(room_id, user_id, "not-acceptable", "you are not online and visible")
            return
        el = self._presence_el(user_id, f"{self.rooms[room_id]}/{occ.nick}", None, user.show, user.status)
        x = el.addElement((NS_MUC, "x"))
        h = x.addElement("history")
        if history:
            # Only what the web side does not have yet (XEP-0045 §7.2.15), so nothing shows twice.
            since = self._seen_until.get(room_id, 0)
            h["since"] = _xmpp_stamp(since)
            h["maxstanzas"] = str(self.ctx.config.limits.history)
            occ.history_since = since
        else:
            h["maxstanzas"] = "0"
            occ.history_since = None
        occ.state = JOINING
        self._cancel(occ)
        occ.timer = self.clock.callLater(JOIN_TIMEOUT, self._join_refused, room_id, user_id, occ,
                                         "remote-server-timeout", "the XMPP room did not answer the join")
        if not self.conn.send(el, queue=False):
            self._cancel(occ)
            occ.state = WAITING

    def _join_refused(self, room_id, user_id, occ, condition, text):
        """A join was refused (or went unanswered): retry with backoff, or give up."""
        if self.joined.get(room_id, {}).get(user_id) is not occ:
            return
        self._cancel(occ)
        opener = self._opener.get(room_id) == user_id and self._room_state.get(room_id) == "opening"
        user = self.ctx.router.user(user_id)
        if condition == "conflict" and not occ.nick_retried and user is not None:
            # Nick taken in the room: once more as "<nick> (<id>)" (XEP-0045 §7.2.9).
            occ.nick, occ.nick_retried = f"{user.nick} ({user_id})", True
            self._send_join(room_id, user_id, history=opener)
            return
        inside = [o for o in self.joined[room_id].values() if o.state == INSIDE]
        if opener or (condition == "item-not-found" and not inside):
            # The room is not there (destroyed, or the server restarted): whoever joins
            # next creates it again.
            self._room_state.pop(room_id, None)
            self._opener.pop(room_id, None)
        elif condition == "item-not-found" and self._room_state.get(room_id) == "open":
            # One of ours is inside, yet the room refuses: it is still locked (restored
            # unconfigured). Configure it from inside, then let the others in again.
            self._configure_instant_room(room_id, min(u for u, o in self.joined[room_id].items()
                                                       if o.state == INSIDE))
        occ.attempts += 1
        if condition in PERMANENT_JOIN_ERRORS or occ.attempts > len(JOIN_RETRY_DELAYS) or user is None:
            log.warn("XMPP room {muc} refused web user {user_id} for good: {condition}", muc=self.rooms[room_id],
                     user_id=user_id, condition=condition)
            self._drop_occupancy(room_id, user_id, condition, text or f"could not join the XMPP room ({condition})")
        else:
            occ.state = BACKOFF
            occ.timer = self.clock.callLater(JOIN_RETRY_DELAYS[occ.attempts - 1], self._retry_join, room_id,
                                             user_id, occ)
        self._advance(room_id)

    def _retry_join(self, room_id, user_id, occ):
        if self.joined.get(room_id, {}).get(user_id) is occ and occ.state == BACKOFF:
            occ.timer = None
            occ.state = WAITING
            self._advance(room_id)

    def _drop_occupancy(self, room_id, user_id, condition, reason):
        """The user will not be in the XMPP room: forget the Occupancy and tell the sender
        of every held multicast (or, with none held, the user once) that XMPP did not get it."""
        occ = self.joined.get(room_id, {}).pop(user_id, None)
        if occ is None:
            return
        self._cancel(occ, acks=True)
        if occ.held:
            self._fail_held(room_id, user_id, occ, condition, reason)
        else:
            entry.delivery_failed(self.ctx, user_id, room_id, room_id, condition, reason)
        if not self.joined[room_id]:
            self._room_emptied(room_id)

    def _room_emptied(self, room_id):
        del self.joined[room_id]
        self._room_state.pop(room_id, None)
        self._opener.pop(room_id, None)
        self._seen_until[room_id] = self._xmpp_now()
        # Nobody of ours is left inside: we no longer learn who is there.
        for nick in list(self.occupants.pop(room_id, {})):
            entry.room_occupant(self.ctx, room_id, f"{self.rooms[room_id]}/{nick}", nick, False, "unavailable")

    def _cancel(self, occ, acks=False):
        if occ.timer is not None and occ.timer.active():
            occ.timer.cancel()
        occ.timer = None
        if acks:
            if occ.hold_timer is not None and occ.hold_timer.active():
                occ.hold_timer.cancel()
            occ.hold_timer = None
            for _, timer in occ.unacked.values():
                if timer.active():
                    timer.cancel()
            occ.unacked.clear()

    def _leave_muc(self, user_id, room_id):
        occ = self.joined.get(room_id, {}).pop(user_id, None)
        if occ is None:
            return
        was_in = occ.state in (JOINING, INSIDE)
        # A multicast sent before the leave was handled by the room before it (one stream,
        # in order): it counts as delivered; a held one was never sent.
        held = list(occ.held)
        self._cancel(occ, acks=True)
        if held:
            self._fail_held(room_id, user_id, occ, "not-acceptable", "you left the room before XMPP got it",
                            held)
        if self._opener.get(room_id) == user_id and self._room_state.get(room_id) == "opening":
            self._room_state.pop(room_id, None)
            self._opener.pop(room_id, None)
        if not self.joined[room_id]:
            self._room_emptied(room_id)
        elif room_id in self.rooms:
            self._advance(room_id)
        if was_in and room_id in self.rooms:
            self._send_presence(user_id, f"{self.rooms[room_id]}/{occ.nick}", "unavailable", queue=False)

    def _leave_all(self, room_id):
        for user_id in list(self.joined.get(room_id, {})):
            self._leave_muc(user_id, room_id)

    def _listener(self, room_id):
        """The one web occupant whose copy of each room message we take (every one of our
        occupants gets a copy): the smallest user id among those inside."""
        inside = [u for u, occ in self.joined.get(room_id, {}).items() if occ.state == INSIDE]
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
            if occ is not None and occ.nick == nick and occ.state == JOINING:
                condition, text = _error_condition(el)
                self._join_refused(room_id, user_id, occ, condition, text)
            return
        if occ is None:
            return  # we learn who is in the room only through our own occupants
        ours = {o.nick: u for u, o in occupancies.items()}
        if nick in ours:
            if ours[nick] != user_id:
                return  # another of our web users, as this one sees them
            if type_ == "unavailable":
                self._self_unavailable(room_id, user_id, occ, codes, x)
            elif occ.state == JOINING:
                self._inside(room_id, user_id, occ, "201" in codes)
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

    def _inside(self, room_id, user_id, occ, created):
        """The room confirmed a join (self-presence): send what was held; the opener of a
        room we created submits the instant-room configuration first (XEP-0045 §10.1.2)."""
        self._cancel(occ)
        occ.state, occ.attempts = INSIDE, 0
        if self._room_state.get(room_id) == "opening" and self._opener.get(room_id) == user_id:
            if created:
                self._configure_instant_room(room_id, user_id)
            else:
                self._room_open(room_id)
        held, occ.held = occ.held, []
        if occ.hold_timer is not None and occ.hold_timer.active():
            occ.hold_timer.cancel()
        occ.hold_timer = None
        for body in held:
            self._send_groupchat_now(room_id, user_id, occ, body)

    def _self_unavailable(self, room_id, user_id, occ, codes, x):
        """The room let one of ours out without our asking: kicked or banned (XEP-0045
        §9.1, XEP-0045 §9.4: given up, the user is told) or the room went away
        (XEP-0045 §10.9, or a shutdown): joined again with backoff."""
        if occ.state != INSIDE:
            return
        occ.state = JOINING
        if codes & {"301", "307", "321", "322"}:
            self._drop_occupancy(room_id, user_id, "forbidden", "removed from the XMPP room by its moderators")
        else:
            self._room_state.pop(room_id, None)
            self._join_refused(room_id, user_id, occ, "item-not-found", "the XMPP room went away")

    def _configure_instant_room(self, room_id, user_id):
        """Accept the default configuration of a room we created (XEP-0045 §10.1.2); the
        room opens for the others when the server answers, or after CONFIG_TIMEOUT."""
        self._config_ids += 1
        iq_id = f"nextim-config-{self._config_ids}"
        iq = domish.Element((None, "iq"))
        iq["type"], iq["id"] = "set", iq_id
        iq["from"], iq["to"] = self.jid_of(user_id), self.rooms[room_id]
        query = iq.addElement((NS_MUC_OWNER, "query"))
        query.addElement(("jabber:x:data", "x"))["type"] = "submit"
        self._room_state[room_id] = "opening"
        old = self._config_wait.pop(room_id, None)
        if old is not None and old[1].active():
            old[1].cancel()
        self._config_wait[room_id] = (iq_id, self.clock.callLater(CONFIG_TIMEOUT, self._room_open, room_id))
        self.conn.send(iq, queue=False)

    def _room_open(self, room_id):
        wait = self._config_wait.pop(room_id, None)
        if wait is not None and wait[1].active():
            wait[1].cancel()
        if room_id in self.joined:
            self._room_state[room_id] = "open"
            self._advance(room_id)

    def _config_answered(self, iq_id):
        """An answer (result or error) to our instant-room configuration."""
        for room_id, (wanted, _) in list(self._config_wait.items()):
            if wanted == iq_id:
                self._room_open(room_id)
                return True
        return False

    # -- multicasts to XMPP: held until joined, acknowledged by the room's reflection ----------
    def _hold(self, room_id, user_id, occ, body):
        if len(occ.held) >= HOLD_MESSAGES:
            self._fail_one(room_id, user_id, "resource-constraint",
                           f"more than {HOLD_MESSAGES} messages are waiting for the XMPP room", body)
            return
        occ.held.append(body)
        if occ.hold_timer is None:
            occ.hold_timer = self.clock.callLater(HOLD_SECONDS, self._hold_expired, room_id, user_id, occ)

    def _hold_expired(self, room_id, user_id, occ):
        occ.hold_timer = None
        if self.joined.get(room_id, {}).get(user_id) is occ and occ.held:
            self._fail_held(room_id, user_id, occ, "remote-server-timeout",
                            f"could not join the XMPP room within {HOLD_SECONDS} s")

    def _fail_held(self, room_id, user_id, occ, condition, reason, held=None):
        held = occ.held if held is None else held
        bodies, occ.held = list(held), []
        for body in bodies:
            self._fail_one(room_id, user_id, condition, reason, body)

    def _fail_one(self, room_id, user_id, condition, reason, body):
        """One failure packet for one multicast that XMPP did not (or may not) get."""
        snippet = body if len(body) <= 60 else body[:59] + "…"
        entry.delivery_failed(self.ctx, user_id, room_id, room_id, condition,
                              f"not sent to the XMPP room: {reason} (“{snippet}”)")

    def _send_groupchat_now(self, room_id, user_id, occ, body):
        self._stanza_ids += 1
        stanza_id = f"nextim-g{self._stanza_ids}"
        el = self._stanza_el("message", user_id, self.rooms[room_id], "groupchat")
        el["id"] = stanza_id
        el.addElement("body", content=body)
        if not self.conn.send(el, queue=False):
            self._hold(room_id, user_id, occ, body)
            return
        occ.unacked[stanza_id] = (body, self.clock.callLater(ACK_SECONDS, self._unconfirmed, room_id, user_id,
                                                              occ, stanza_id))

    def _unconfirmed(self, room_id, user_id, occ, stanza_id):
        item = occ.unacked.pop(stanza_id, None)
        if item is not None and self.joined.get(room_id, {}).get(user_id) is occ:
            self._fail_one(room_id, user_id, "remote-server-timeout",
                           f"the XMPP room did not confirm it within {ACK_SECONDS} s", item[0])

    def _acked(self, occ, el, body):
        """True if ``el`` is the room's reflection of one of ``occ``'s multicasts
        (XEP-0045 §7.4: the sender gets its own message back, with its id)."""
        stanza_id = el.getAttribute("id")
        if stanza_id not in occ.unacked:
            # A room that rewrites ids: the oldest unconfirmed message with this body.
            stanza_id = next((i for i, (b, _) in occ.unacked.items() if b == body), None)
            if stanza_id is None:
                return False
        _, timer = occ.unacked.pop(stanza_id)
        if timer.active():
            timer.cancel()
        return True

    def _muc_message(self, el, room_id, frm, user_id):
        type_ = el.getAttribute("type", "normal")
        occ = self.joined.get(room_id, {}).get(user_id)
        if type_ == "error":
            condition, text = _error_condition(el)
            item = occ.unacked.pop(el.getAttribute("id"), None) if occ is not None else None
            if item is not None:
                if item[1].active():
                    item[1].cancel()
                self._fail_one(room_id, user_id, condition, text or condition.replace("-", " "), item[0])
            else:
                entry.delivery_failed(self.ctx, user_id, room_id, room_id, condition, text)
            return
        if type_ != "groupchat" or frm.resource is None:
            return
        body = _child(el, "body")
        if body is None or not str(body).strip():
            return  # subjects and chat states are not bridged
        body, nick = str(body), frm.resource
        if occ is not None and nick == occ.nick and self._acked(occ, el, body):
            self._seen_until[room_id] = self._xmpp_now()
            return
        if nick in {o.nick for o in self.joined.get(room_id, {}).values()}:
            return  # the room reflecting a web user's own message: already routed
        delay = _child(el, "delay", NS_DELAY)
        occupant_id = f"{self.rooms[room_id]}/{nick}"
        if delay is not None:
            # History replayed on join: only to the join that asked for it, and only what
            # is newer than what the web side has (XEP-0045 §7.2.15).
            stamp = _parse_stamp(delay.getAttribute("stamp", ""))
            if occ is None or occ.history_since is None or stamp is None:
                return
            since = occ.history_since
            if stamp < since - since % 1000:
                return
            # Rooms stamp in whole seconds: one stamped in the second of ``since`` may be
            # one the web side stored already; the lock keeps the room's order.
            d = self._history.run(self._import_history, room_id, occupant_id, nick, body, stamp,
                                  stamp <= since)
        else:
            if user_id != self._listener(room_id):
                return
            d = defer.ensureDeferred(entry.incoming_groupchat(self.ctx, room_id, occupant_id, nick, body))
        self._seen_until[room_id] = max(self._seen_until.get(room_id, 0), self._xmpp_now())
        d.addErrback(lambda f: log.failure("storing an XMPP room message failed", f))

    async def _import_history(self, room_id, occupant_id, nick, body, stamp, maybe_stored):
        if maybe_stored:
            recent = await self.ctx.store.room_history(room_id, 50)
            if any(m["from"] == occupant_id and m["body"] == body[: self.ctx.config.limits.message_chars]
                   for m in recent):
                return
        await entry.incoming_groupchat(self.ctx, room_id, occupant_id, nick, body, timestamp=stamp)

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
