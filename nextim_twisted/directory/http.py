"""The host site as the directory (``[directory] provider = "http"``;
docs/integration.md#the-directory-over-http,
docs/design.md#d22-the-site-as-source-of-truth).

The daemon asks the site with signed GETs (:mod:`nextim_twisted.hostsite.signing`)
under ``[directory] url``:

=================================  ==========================================  =========
request                            200 answer                                  404 means
=================================  ==========================================  =========
``GET /users/{id}``                a user object                               no user
``GET /users?ids=a,b``             ``{"users": [user, ...]}`` (unknown left out)  —
``GET /users/{id}/buddies``        ``{"buddies": [user + "group", ...]}``      no user
``GET /users/{id}/rooms``          ``{"rooms": [room, ...]}``                  no user
``GET /rooms/{id}``                a room object                               no room
``GET /rooms/{id}/members``        ``{"members": ["id", ...]}``                no room
=================================  ==========================================  =========

Each answer is cached ``cache_seconds`` per request (buddies' and rooms' entries also
as the profiles and rooms they describe). Concurrent reads of one answer share one
request. When the site fails (timeout, connection refused, a status other than 200
and 404, an answer that does not pass :func:`check_user` and friends), a cached
answer of any age is served, logged and counted; with none,
:class:`~.base.DirectoryUnavailable` (503).
"""
import json
from collections import OrderedDict
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import BadRequest
from ..handlers.params import check_id, is_storable
from ..hostsite.client import SiteClient, SiteError
from .base import DirectoryUnavailable, IDirectory

log = Logger()

#: Longest answer read from the site, in bytes; a longer one is refused.
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
#: Most entries in one list of an answer (buddies, rooms, members, users).
MAX_LIST = 5000
#: Most ids asked in one ``GET /users?ids=`` (longer requests are split).
BATCH_IDS = 100
#: Cached answers kept (least recently used dropped first).
MAX_ENTRIES = 100_000
#: Text limits of the fields of an answer (characters), as the admin API's.
TEXT_LIMITS = {"nick": 100, "pic_url": 2000, "default_pic_url": 2000, "url": 2000, "group": 100}
#: Seconds between two log lines about the same kind of failure (the count of the
#: ones in between is in the next line and always in the metrics).
LOG_EVERY_S = 10

#: The ``kind`` label of every request (metrics) and the cache keys.
KINDS = ("user", "users", "buddies", "rooms", "room", "members")


class Malformed(Exception):
    """An answer that breaks the contract; ``str()`` says which rule."""


def _text(obj, key, required=False):
    value = obj.get(key)
    if value is None:
        if required:
            raise Malformed(f"{key}: required")
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key}: must be a string, got {type(value).__name__}")
    if len(value) > TEXT_LIMITS[key]:
        raise Malformed(f"{key}: longer than {TEXT_LIMITS[key]} characters")
    if not is_storable(value) or (required and not value.strip()):
        raise Malformed(f"{key}: must be non-empty text without NUL")
    return value


def _id(value, what):
    try:
        return check_id(value, what)
    except BadRequest as e:
        raise Malformed(f"{what}: {e.message.split(': ', 1)[-1]}: {str(value)[:80]!r}") from None


def _object(value, what="answer"):
    if not isinstance(value, dict):
        raise Malformed(f"{what}: must be a JSON object")
    return value


def _list(obj, key):
    value = obj.get(key)
    if not isinstance(value, list):
        raise Malformed(f"{key}: must be an array")
    if len(value) > MAX_LIST:
        raise Malformed(f"{key}: {len(value)} entries, at most {MAX_LIST}")
    return value


def check_user(value, what="user"):
    """A user object of an answer → the user dict of :mod:`.base`.

    :raises Malformed: not an object, bad ``id``, ``nick`` missing or not text, an
        optional field that is neither a string nor null, a text over its limit.
    """
    obj = _object(value, what)
    return {"id": _id(obj.get("id"), what + ".id"), "nick": _text(obj, "nick", required=True),
            "pic_url": _text(obj, "pic_url"), "default_pic_url": _text(obj, "default_pic_url"),
            "url": _text(obj, "url")}


def check_room(value, what="room"):
    """A room object of an answer → the room dict of :mod:`.base`
    (``all_count`` defaults to 0). :raises Malformed: as :func:`check_user`; an
    ``all_count`` that is not a non-negative integer."""
    obj = _object(value, what)
    count = obj.get("all_count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 10**9:
        raise Malformed(f"{what}.all_count: must be a non-negative integer")
    return {"id": _id(obj.get("id"), what + ".id"), "nick": _text(obj, "nick", required=True),
            "pic_url": _text(obj, "pic_url"), "url": _text(obj, "url"), "all_count": count}


def _unique(items):
    seen = {}
    for item in items:
        seen.setdefault(item["id"] if isinstance(item, dict) else item, item)
    return list(seen.values())


class _Entry:
    __slots__ = ("time", "value")

    def __init__(self, value, time):
        self.value = value
        self.time = time


class _Throttle:
    """At most one log line per ``key`` every :data:`LOG_EVERY_S` seconds."""

    def __init__(self, clock):
        self.clock = clock
        self.last = {}
        self.skipped = {}

    def __call__(self, key, emit, fmt, **kw):
        now = self.clock.seconds()
        if now - self.last.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return
        self.last[key] = now
        skipped = self.skipped.pop(key, 0)
        if skipped:
            fmt += " ({skipped} more like it in the last {every} s)"
        emit(fmt, skipped=skipped, every=LOG_EVERY_S, **kw)


class HTTPDirectory(IDirectory):
    """:class:`~.base.IDirectory` answered by the host site, cached.

    :param client: a :class:`~nextim_twisted.hostsite.client.SiteClient`.
    :param base_url: ``[directory] url`` (no trailing slash needed).
    :param clock: ``IReactorTime`` the cache ages on.
    :param cache_seconds: how long an answer is used without asking again.

    Counters for the metrics (``web/metrics.py``), all plain dicts:
    :attr:`requests` ``{(kind, result): n}`` with result ``ok``, ``not_found``,
    ``timeout``, ``connect``, ``status``, ``too_large`` or ``malformed``;
    :attr:`stale_served` ``{kind: n}`` (cached answers served while the site failed);
    :attr:`unavailable` ``{kind: n}`` (failures with nothing cached: 503s).
    """

    provisions = False

    def __init__(self, client, base_url, clock, cache_seconds=60):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache = OrderedDict()   # (kind, id) -> _Entry
        self._inflight = {}           # (kind, id) -> [waiting Deferreds]
        self.requests = {}
        self.stale_served = {}
        self.unavailable = {}
        self._log = _Throttle(clock)

    @classmethod
    def from_config(cls, cfg, reactor, clock):
        """From the ``[directory]`` section (``url``, ``secret``, ``cache_seconds``, ``timeout``)."""
        client = SiteClient(reactor, clock, cfg.secret, cfg.timeout, MAX_RESPONSE_BYTES)
        return cls(client, cfg.url, clock, cfg.cache_seconds)

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return self.client.close()

    # -- IDirectory ----------------------------------------------------------
    def profile(self, user_id):
        return defer.ensureDeferred(self._read("user", user_id, self._fetch_user))

    def buddies(self, user_id):
        return defer.ensureDeferred(self._read("buddies", user_id, self._fetch_buddies))

    def rooms_of(self, user_id):
        return defer.ensureDeferred(self._read("rooms", user_id, self._fetch_rooms))

    def room(self, room_id):
        return defer.ensureDeferred(self._read("room", room_id, self._fetch_room))

    def member_ids(self, room_id):
        async def members():
            return await self._read("members", room_id, self._fetch_members) or []
        return defer.ensureDeferred(members())

    def is_member(self, room_id, user_id):
        async def member():
            return any(r["id"] == room_id for r in await self._read("rooms", user_id, self._fetch_rooms) or ())
        return defer.ensureDeferred(member())

    def profiles(self, user_ids):
        return defer.ensureDeferred(self._profiles(list(dict.fromkeys(user_ids))))

    def invalidate(self, user_ids=(), room_ids=()):
        """Also forgets the room lists of the users a room's change concerns: its
        members as last cached (or, when not cached, every cached list that has it);
        members it gained are caught when its members are read again."""
        for kinds, ids in ((("user", "buddies", "rooms"), user_ids), (("room", "members"), room_ids)):
            for id_ in ids:
                if "members" in kinds:
                    self._forget_room_lists(id_)
                for kind in kinds:
                    self._cache.pop((kind, id_), None)
                    self._inflight.pop((kind, id_), None)  # a read under way must not be cached

    def _forget_room_lists(self, room_id):
        members = self._cache.get(("members", room_id))
        if members is not None and members.value is not None:
            concerned = [("rooms", u) for u in members.value]
        else:
            concerned = [k for k, e in self._cache.items() if k[0] == "rooms"
                         and any(r["id"] == room_id for r in e.value or ())]
        for key in concerned:
            self._cache.pop(key, None)

    # -- the cache -------------------------------------------------------------
    def _fresh(self, key):
        entry = self._cache.get(key)
        if entry is not None and self.clock.seconds() - entry.time < self.cache_seconds:
            self._cache.move_to_end(key)
            return entry
        return None

    def _put(self, key, value):
        self._cache[key] = _Entry(value, self.clock.seconds())
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)

    async def _read(self, kind, id_, fetch):
        """The answer for ``(kind, id_)``: fresh from the cache, else asked (one request
        for all concurrent readers), else stale from the cache, else 503."""
        key = (kind, id_)
        entry = self._fresh(key)
        if entry is not None:
            return entry.value
        try:
            return await self._shared(key, fetch)
        except SiteError as error:
            return self._fallback(kind, key, error)

    def _fallback(self, kind, key, error):
        """The cached value of ``key`` of any age (counted as stale for ``kind``).

        :raises DirectoryUnavailable: nothing cached.
        """
        id_ = key[1]
        entry = self._cache.get(key)
        if entry is not None:
            self.stale_served[kind] = self.stale_served.get(kind, 0) + 1
            self._log(("stale", kind), log.warn,
                      "directory site failed ({reason}): serving the cached {kind} answer for {id} "
                      "from {age} s ago", reason=error.reason, kind=kind, id=id_,
                      age=int(self.clock.seconds() - entry.time))
            return entry.value
        self.unavailable[kind] = self.unavailable.get(kind, 0) + 1
        self._log(("unavailable", kind), log.error,
                  "directory site failed ({reason}) and nothing is cached for {kind} {id}: answering 503",
                  reason=error.reason, kind=kind, id=id_)
        raise DirectoryUnavailable(f"the site's user directory is not answering ({error.reason}); "
                                   "try again shortly")

    async def _shared(self, key, fetch):
        waiters = self._inflight.get(key)
        if waiters is not None:
            d = defer.Deferred()
            waiters.append(d)
            return await d
        waiters = self._inflight[key] = []
        try:
            value = await fetch(key[1])
        except BaseException as error:
            if self._inflight.get(key) is waiters:
                del self._inflight[key]
            for d in waiters:
                d.errback(error)
            raise
        if self._inflight.get(key) is waiters:  # not invalidated meanwhile
            del self._inflight[key]
            self._put(key, value)
        for d in waiters:
            d.callback(value)
        return value

    # -- requests ------------------------------------------------------------
    async def _get(self, kind, path):
        """GET ``path`` → parsed JSON, or ``None`` for a 404.

        :raises SiteError: no usable answer (counted and logged here).
        """
        url = self.base_url + path
        try:
            status, body = await self.client.request("GET", url)
            if status == 404:
                self._count(kind, "not_found")
                return None
            if status != 200:
                raise SiteError("status", f"HTTP {status}")
            try:
                value = json.loads(body)
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise SiteError("malformed", "answer is not JSON") from None
        except SiteError as error:
            self._count(kind, error.kind)
            raise
        return value

    def _checked(self, kind, path, check, value):
        """``check(value)``, or :class:`SiteError` ``malformed`` (logged with the rule)."""
        try:
            return check(value)
        except Malformed as error:
            self._count(kind, "malformed")
            self._log(("malformed", kind), log.error,
                      "directory site: refused the answer to GET {path}: {rule}", path=path, rule=str(error))
            raise SiteError("malformed", f"malformed answer: {error}") from None

    def _count(self, kind, result):
        self.requests[(kind, result)] = self.requests.get((kind, result), 0) + 1

    async def _fetch_user(self, user_id):
        path = "/users/" + quote(user_id, safe="")
        value = await self._get("user", path)
        if value is None:
            return None

        def check(v):
            user = check_user(v)
            if user["id"] != user_id:
                raise Malformed(f"id: {user['id']!r} answered for {user_id!r}")
            return user
        user = self._checked("user", path, check, value)
        self._count("user", "ok")
        return user

    async def _fetch_buddies(self, user_id):
        path = "/users/" + quote(user_id, safe="") + "/buddies"
        value = await self._get("buddies", path)
        if value is None:
            return []

        def check(v):
            entries = _list(_object(v), "buddies")
            out = []
            for i, item in enumerate(entries):
                user = check_user(item, f"buddies[{i}]")
                if user["id"] == user_id:
                    raise Malformed(f"buddies[{i}].id: the user is not their own buddy")
                out.append((user, _text(item, "group")))
            return _unique_pairs(out)
        pairs = self._checked("buddies", path, check, value)
        self._count("buddies", "ok")
        for user, _ in pairs:
            self._put(("user", user["id"]), user)
        return sorted(((u["id"], g) for u, g in pairs), key=lambda p: p[0])

    async def _fetch_rooms(self, user_id):
        path = "/users/" + quote(user_id, safe="") + "/rooms"
        value = await self._get("rooms", path)
        if value is None:
            return []

        def check(v):
            return _unique([check_room(r, f"rooms[{i}]") for i, r in enumerate(_list(_object(v), "rooms"))])
        rooms = self._checked("rooms", path, check, value)
        self._count("rooms", "ok")
        for room in rooms:
            self._put(("room", room["id"]), room)
        return sorted(rooms, key=lambda r: r["id"])

    async def _fetch_room(self, room_id):
        path = "/rooms/" + quote(room_id, safe="")
        value = await self._get("room", path)
        if value is None:
            return None

        def check(v):
            room = check_room(v)
            if room["id"] != room_id:
                raise Malformed(f"id: {room['id']!r} answered for {room_id!r}")
            return room
        room = self._checked("room", path, check, value)
        self._count("room", "ok")
        return room

    async def _fetch_members(self, room_id):
        path = "/rooms/" + quote(room_id, safe="") + "/members"
        value = await self._get("members", path)
        if value is None:
            return None

        def check(v):
            return sorted({_id(m, f"members[{i}]") for i, m in enumerate(_list(_object(v), "members"))})
        members = self._checked("members", path, check, value)
        self._count("members", "ok")
        for user_id in members:  # a cached room list that misses this room is out of date
            entry = self._cache.get(("rooms", user_id))
            if entry is not None and not any(r["id"] == room_id for r in entry.value or ()):
                del self._cache[("rooms", user_id)]
        return members

    async def _profiles(self, ids):
        out, missing = {}, []
        for id_ in ids:
            entry = self._fresh(("user", id_))
            if entry is None:
                missing.append(id_)
            elif entry.value is not None:
                out[id_] = entry.value
        for i in range(0, len(missing), BATCH_IDS):
            part = missing[i:i + BATCH_IDS]
            try:
                found = await self._fetch_users(part)
            except SiteError as error:
                for id_ in part:
                    user = self._fallback("users", ("user", id_), error)  # stale, or 503
                    if user is not None:
                        out[id_] = user
                continue
            for id_ in part:
                user = found.get(id_)
                self._put(("user", id_), user)  # None: the site does not know them
                if user is not None:
                    out[id_] = user
        return out

    async def _fetch_users(self, ids):
        path = "/users?ids=" + quote(",".join(ids), safe="")
        value = await self._get("users", path)
        if value is None:
            raise SiteError("status", "HTTP 404")
        wanted = set(ids)

        def check(v):
            users = [check_user(u, f"users[{i}]") for i, u in enumerate(_list(_object(v), "users"))]
            extra = [u["id"] for u in users if u["id"] not in wanted]
            if extra:
                raise Malformed(f"users: {extra[0]!r} was not asked for")
            return {u["id"]: u for u in users}
        found = self._checked("users", path, check, value)
        self._count("users", "ok")
        return found


def _unique_pairs(pairs):
    seen = {}
    for user, group in pairs:
        seen.setdefault(user["id"], (user, group))
    return list(seen.values())
