"""A host site on loopback for the tests of the HTTP directory and the webhooks
(docs/integration.md): a small twisted.web server that answers the directory contract
from in-memory tables, receives webhook POSTs, and checks every signature.

    site = FakeSite(SECRET)
    await site.listen()                    # site.url: "http://127.0.0.1:<port>/nextim"
    site.add_user("alice", "Alice"); site.befriend("alice", "bob", "Friends")
    site.mode = "500"                      # or "hang", "malformed", "huge", None (normal)
    site.events                            # webhook bodies received, parsed, in order
    await site.close()

A request whose signature does not verify is answered 401 and counted in
:attr:`FakeSite.bad_signatures`; tests assert it stays 0.
"""
import json
import time
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet import defer, endpoints, reactor
from twisted.web import server
from twisted.web.resource import Resource

from nextim_twisted.hostsite import signing

PREFIX = "/nextim"


class FakeSite(Resource):
    """The site's side of the contract. Attributes tests change: :attr:`users`
    ``{id: profile}``, :attr:`buddy_groups` ``{id: {buddy_id: group}}``,
    :attr:`rooms` ``{id: room}``, :attr:`members` ``{room_id: set}``, :attr:`mode`,
    :attr:`webhook_status` (the status webhook POSTs get)."""

    isLeaf = True

    def __init__(self, secret, webhook_secret=None):
        super().__init__()
        self.secret = secret
        self.webhook_secret = webhook_secret or secret
        self.users = {}
        self.buddy_groups = {}
        self.rooms = {}
        self.members = {}
        self.mode = None
        self.webhook_status = 200
        self.requests = []        # (method, target) of every signed-correctly request
        self.events = []          # parsed webhook bodies, in arrival order
        self.event_headers = []   # their X-Nextim-Event headers
        self.bad_signatures = 0
        self.hanging = []
        self._waiters = []
        self.port = None

    # -- data ------------------------------------------------------------------
    def add_user(self, user_id, nick=None, **fields):
        self.users[user_id] = {"id": user_id, "nick": nick or user_id.title(), **fields}

    def befriend(self, a, b, group=None):
        self.buddy_groups.setdefault(a, {})[b] = group
        self.buddy_groups.setdefault(b, {})[a] = group

    def unfriend(self, a, b):
        self.buddy_groups.get(a, {}).pop(b, None)
        self.buddy_groups.get(b, {}).pop(a, None)

    def add_room(self, room_id, nick=None, members=()):
        self.rooms[room_id] = {"id": room_id, "nick": nick or room_id.title()}
        self.members[room_id] = set(members)

    # -- serving ---------------------------------------------------------------
    async def listen(self):
        connections = self.connections = []

        class Site(server.Site):
            noisy = False

            def buildProtocol(self, addr):
                protocol = super().buildProtocol(addr)
                connections.append(protocol)
                return protocol
        site = Site(self)
        self.port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.url = self.base + PREFIX
        return self

    async def close(self):
        for request in self.hanging:
            if not request.finished and request.channel is not None:
                request.setResponseCode(503)
                request.finish()
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
            self.port = None
        for protocol in self.connections:  # down means down: kept-alive connections too
            transport = getattr(protocol, "transport", None) or getattr(protocol._channel, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def next_request(self):
        """Deferred → ``(method, target)`` of the next request to arrive, fired once
        it is answered or (mode ``hang``) parked in :attr:`hanging`."""
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def render(self, request):
        body = request.content.read() if request.content is not None else b""
        method = request.method.decode()
        target = request.uri.decode()
        secret = self.webhook_secret if method == "POST" else self.secret
        if not signing.verify(secret, method, target, body,
                              (request.getHeader(signing.TIMESTAMP_HEADER) or ""),
                              request.getHeader(signing.SIGNATURE_HEADER), time.time()):
            self.bad_signatures += 1
            request.setResponseCode(401)
            return b'{"error": "bad signature"}'
        self.requests.append((method, target))
        waiters, self._waiters = self._waiters, []
        for d in waiters:  # after this request is answered or parked
            reactor.callLater(0, d.callback, (method, target))
        if method == "POST":
            return self.webhook(request, body)
        mode = self.mode
        if mode == "hang":
            self.hanging.append(request)
            return server.NOT_DONE_YET
        if mode == "500":
            request.setResponseCode(500)
            return b"oops"
        if mode == "malformed":
            return b'{"id": "alice", "nick": '
        if mode == "huge":
            # about 10 MB of buddies
            entry = b'{"id": "u%07d", "nick": "A user with a long enough name"},'
            return b'{"buddies": [' + b"".join(entry % i for i in range(200_000)) + b'{"id": "z", "nick": "Z"}]}'
        if callable(mode):
            status, value = mode(target)
            request.setResponseCode(status)
            return json.dumps(value).encode()
        status, value = self.answer(target)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(value).encode()

    def answer(self, target):
        """``(status, JSON value)`` of a directory GET, from the tables."""
        parts = urlsplit(target)
        if not parts.path.startswith(PREFIX + "/"):
            return 404, {"error": "no such path"}
        segments = [unquote(s) for s in parts.path[len(PREFIX) + 1:].split("/")]
        not_found = (404, {"error": "not found"})
        if segments == ["users"]:
            ids = parse_qs(parts.query).get("ids", [""])[0].split(",")
            return 200, {"users": [self.users[i] for i in ids if i in self.users]}
        if len(segments) >= 2 and segments[0] == "users":
            uid = segments[1]
            if uid not in self.users:
                return not_found
            if len(segments) == 2:
                return 200, self.users[uid]
            if segments[2:] == ["buddies"]:
                return 200, {"buddies": [dict(self.users[b], group=g)
                                         for b, g in sorted(self.buddy_groups.get(uid, {}).items())
                                         if b in self.users]}
            if segments[2:] == ["rooms"]:
                return 200, {"rooms": [dict(self.rooms[r], all_count=len(m))
                                       for r, m in sorted(self.members.items()) if uid in m]}
        if len(segments) >= 2 and segments[0] == "rooms":
            rid = segments[1]
            if rid not in self.rooms:
                return not_found
            if len(segments) == 2:
                return 200, dict(self.rooms[rid], all_count=len(self.members[rid]))
            if segments[2:] == ["members"]:
                return 200, {"members": sorted(self.members[rid])}
        return not_found

    def webhook(self, request, body):
        if self.mode == "hang":
            self.hanging.append(request)
            return server.NOT_DONE_YET
        status = self.webhook_status
        if 200 <= status < 300:
            # Only events the site accepted count as received (a 500 means "not taken").
            self.events.append(json.loads(body))
            self.event_headers.append(request.getHeader(b"x-nextim-event"))
        request.setResponseCode(status)
        return b"{}"
