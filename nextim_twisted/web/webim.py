"""The hot path: the ``webim/<name>`` endpoint table and the ``/packets`` long poll,
answered by one twisted.web resource (:class:`HotPathRoot`) without Klein.

Every delivered packet costs one poll answer and one new poll, and every message one
``webim/message`` call. Klein's routing (werkzeug matching, its Deferred plumbing) took
about a fifth of the CPU under load, and Klein and werkzeug left about 55 objects in
reference cycles per request, which only the cyclic collector frees (0.2 s pauses at
10 000 users and 200 messages/s; docs/benchmarks.md). So these paths are matched here,
by plain string tests, and everything else is passed to the Klein app of
:mod:`.app`. :data:`WEBIM` is the one table of ``webim/*`` endpoints: the dispatch
below, the metrics labels and tests/test_openapi.py all read it.
"""
from dataclasses import asdict, dataclass
from typing import Callable, Union
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..auth import Credentials
from ..errors import (BadRequest, Forbidden, InternalError, MethodNotAllowed, NotFound, ProtocolError,
                      ShuttingDown)
from ..hub.forward import OwnerUnreachable
from ..handlers import OK, chat, online, rooms, settings
from ..handlers.params import Params
from .answer import answer, bearer, decode_params, header, raw_callback
from .encoding import render, render_error

log = Logger()


@dataclass(frozen=True)
class Endpoint:
    """One ``webim/<name>`` endpoint (each takes GET and POST,
    docs/design.md#d1-plain-and-jsonp).

    :ivar handler: ``await handler(ctx, identity, params)`` → the answer (a JSON
        value or ``OK``); for an endpoint with ``identified=False``,
        ``await handler(webim, request, params, callback)`` instead.
    :ivar writes: whether a call changes state (cookie-only callers must then POST from
        an allowed origin, docs/design.md#d13-identity); a callable decides per call.
    :ivar allow_password: a username and password may identify the caller.
    :ivar identified: False for login and logout, which set the login cookie
        instead of acting as an identified user.
    """

    handler: Callable
    writes: Union[bool, Callable[[Params], bool]] = False
    allow_password: bool = False
    identified: bool = True

    def changes_state(self, params):
        if callable(self.writes):
            return self.writes(params)
        return self.writes


async def _login(webim, request, params, callback):
    """``POST webim/login`` (``[auth] method = "accounts"``): set the HttpOnly SameSite
    login cookie (docs/design.md#d13-identity)."""
    ctx = webim.ctx
    if ctx.config.auth.method != "accounts":
        raise NotFound("login is only available with [auth] method = \"accounts\"", code="unknown_endpoint")
    if request.method != b"POST" or callback is not None:
        raise Forbidden("log in with a POST", code="csrf")
    creds = webim.credentials(request, params, callback)
    # A login from a foreign page would plant our cookie there (login CSRF); a POST
    # without Origin (curl, old browsers) is let through.
    if creds.origin and not ctx.auth.origin_allowed(creds):
        raise Forbidden("origin not allowed", code="csrf")
    user_id, result = await online.login(ctx, params)
    webim.set_login_cookie(request, await ctx.auth.login_cookie(user_id), ctx.config.auth.session_ttl)
    return result


async def _logout(webim, request, params, callback):
    """``POST webim/logout``: end the sessions this login opened and clear the login
    cookie (docs/design.md#d19-session-lifetime)."""
    if request.method != b"POST":
        raise Forbidden("log out with a POST", code="csrf")
    creds = webim.credentials(request, params, callback)
    # A foreign page must not end the user's sessions (the cookie goes along).
    if creds.origin and not webim.ctx.auth.origin_allowed(creds):
        raise Forbidden("origin not allowed", code="csrf")
    online.logout(webim.ctx, creds.session_cookie)
    webim.set_login_cookie(request, "", 0)
    return OK


#: Every ``webim/<name>`` endpoint; ``<name>.php`` is the same endpoint (the 2010
#: client's URLs). Their parameters and answers: docs/protocol.md#endpoints.
WEBIM = {
    "online": Endpoint(online.online, writes=True, allow_password=True),
    "offline": Endpoint(online.offline, writes=True),
    "refresh": Endpoint(online.refresh, writes=True),
    "buddies": Endpoint(online.buddies),
    "rooms": Endpoint(rooms.rooms),
    "join": Endpoint(rooms.join, writes=True),
    "leave": Endpoint(rooms.leave, writes=True),
    "members": Endpoint(rooms.members),
    "history": Endpoint(chat.history),
    "message": Endpoint(chat.message, writes=True),
    "clear_history": Endpoint(chat.clear_history, writes=True),
    "presence": Endpoint(chat.presence, writes=True),
    "status": Endpoint(chat.status, writes=True),
    "setting": Endpoint(settings.setting, writes=lambda p: p.values.get("data") is not None),
    "notification": Endpoint(settings.notifications),
    "notifications": Endpoint(settings.notifications),
    "login": Endpoint(_login, writes=True, identified=False),
    "logout": Endpoint(_logout, writes=True, identified=False),
}

#: The long-poll paths and their methods: ``/packets``, and the bare ``/`` with a
#: ``ticket`` parameter (configs that poll the server URL itself). A cluster node also
#: serves ``/n/<its node id>/packets`` (docs/design.md#d20-cluster).
POLL_PATH = "/packets"
POLL_METHODS = (b"GET", b"POST")
#: The WebSocket path of a single daemon (docs/design.md#d21-websocket).
SOCKET_PATH = "/ws"
#: A cluster node's own paths are ``/n/<node_id>/<endpoint>`` (docs/design.md#d20-cluster):
#: the long poll and the WebSocket, named after what they serve.
NODE_PREFIX = "/n/"
NODE_ENDPOINTS = {"packets": "poll", "ws": "socket"}


def node_route(path: str) -> tuple[str, str] | None:
    """``(node_id, endpoint)`` of ``/n/<node_id>/packets`` or ``/n/<node_id>/ws``, else None."""
    if not path.startswith(NODE_PREFIX):
        return None
    node_id, slash, endpoint = path[len(NODE_PREFIX):].partition("/")
    if not slash or not node_id or endpoint not in NODE_ENDPOINTS:
        return None
    return node_id, endpoint


async def run_identified(ctx, endpoint: Endpoint, creds: Credentials, params: Params):
    """Identify ``creds`` and run an identified endpoint's handler: what a call that
    arrives without an HTTP request of its own does (forwarded by another node, or sent
    over a WebSocket), with the same rules as over HTTP (docs/design.md#d13-identity).

    :returns: the handler's answer (a JSON value or ``OK``).
    :raises ShuttingDown: the daemon is stopping (docs/design.md#d16-shutdown).
    :raises ProtocolError: the refusal of identification or of the handler.
    """
    if ctx.shutting_down:
        raise ShuttingDown("the server is shutting down; try again shortly")
    identity = await ctx.auth.identify(creds, endpoint.changes_state(params), endpoint.allow_password)
    return await endpoint.handler(ctx, identity, params)


class Webim:
    """``webim/*`` calls and ``/packets`` polls bound to a handler context.

    :param ctx: :class:`~nextim_twisted.handlers.context.Context`.
    :param metrics: :class:`~nextim_twisted.web.metrics.Metrics` (logins, packets).
    """

    def __init__(self, ctx, metrics):
        self.ctx = ctx
        self.metrics = metrics

    def credentials(self, request, params, callback):
        """What the request offers as identity (docs/design.md#d13-identity)."""
        host = header(request, b"host")
        scheme = "https" if request.isSecure() else "http"
        cfg = self.ctx.config.auth
        cookie = lambda name: (request.getCookie(name.encode()) or b"").decode("latin-1") or None  # noqa: E731
        return Credentials(
            bearer=bearer(request),
            token_param=params.get("token"),
            token_cookie=cookie(cfg.token_cookie),
            session_cookie=cookie(cfg.session_cookie),
            ticket=params.get("ticket"),
            username=params.get("username"),
            password=params.values.get("password"),
            method=request.method.decode("ascii", "replace"),
            origin=(header(request, b"origin") or b"").decode("latin-1") or None,
            request_origin=f"{scheme}://{host.decode('latin-1')}" if host else None,
            jsonp=callback is not None,
        )

    def set_login_cookie(self, request, value, max_age):
        """Set (or, with ``max_age`` 0, clear) the login cookie; ``max_age`` in seconds."""
        cfg = self.ctx.config.auth
        request.addCookie(cfg.session_cookie.encode(), value.encode(), path=b"/", max_age=str(max_age).encode(),
                          httpOnly=True, secure=cfg.cookie_secure, sameSite="lax")

    # -- webim/<name> ----------------------------------------------------------
    def call(self, request, name):
        """``webim/<name>``: a Deferred of the answer's bytes, refusals included
        (docs/design.md#d2-errors)."""
        if name.endswith(".php"):
            name = name[:-4]

        async def work(params, callback):
            if request.method not in (b"GET", b"POST"):
                raise MethodNotAllowed("use GET or POST")
            endpoint = WEBIM.get(name)
            if endpoint is None:
                raise NotFound(f"unknown endpoint webim/{name}", code="unknown_endpoint")
            if not endpoint.identified:
                return await endpoint.handler(self, request, params, callback)
            creds = self.credentials(request, params, callback)
            owner = self._owner_elsewhere(name, params)
            if owner is not None:
                return await self._forward(owner, name, creds, params)
            identity = await self.ctx.auth.identify(creds, endpoint.changes_state(params),
                                                    endpoint.allow_password)
            request.nextim_user_id = identity.user_id  # for the access log
            result = await endpoint.handler(self.ctx, identity, params)
            if name == "online":
                self.metrics.logged_in(identity.via)
            return result

        return defer.ensureDeferred(answer(self.ctx, request, work))

    # -- calls whose session lives on another node ------------------------------------
    def _owner_elsewhere(self, name, params):
        """The node id of the call's ticket when that is another node, else None. In a
        cluster every identified call whose ticket names another node is run by that
        node (docs/design.md#d20-cluster): only it can resolve the ticket."""
        cluster = self.ctx.cluster
        if cluster is None:
            return None
        node_id, dot, _ = (params.get("ticket") or "").partition(".")
        return node_id if dot and node_id != cluster.node_id else None

    async def _forward(self, owner, name, creds, params):
        """Run the call on the node that holds its session and answer what it answers
        (identification included: the owner applies every rule, so "never back to the
        sending session" holds across nodes). A node that does not answer is a dead
        ticket: 404, and the client goes online again."""
        try:
            answer = await self.ctx.cluster.forwarder.forward(
                owner, name, {"values": params.values, "creds": asdict(creds)})
        except OwnerUnreachable:
            raise NotFound("unknown or expired ticket", code="invalid_ticket") from None
        if answer.get("ok") is True:
            return OK
        if "result" in answer:
            return answer["result"]
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("status"), int):
            # The owner's refusal as it raised it (its code is one of its literals).
            refusal = ProtocolError(str(error.get("message")), headers=error.get("headers") or {})
            refusal.code, refusal.status = str(error.get("code")), error["status"]
            raise refusal
        raise InternalError("the owning node failed to run the call")

    async def run_forwarded(self, name, payload):
        """Run a call another node forwarded to this one (``ClusterNode.run_call``):
        ``{"ok": true}``, ``{"result": answer}`` or ``{"error": {status, code, message,
        headers}}``."""
        endpoint = WEBIM.get(name)
        if endpoint is None or not endpoint.identified:
            return {"error": {"status": 404, "code": "unknown_endpoint", "message": f"unknown endpoint webim/{name}"}}
        params = Params(dict(payload.get("values") or {}))
        try:
            result = await run_identified(self.ctx, endpoint, Credentials(**(payload.get("creds") or {})), params)
        except ProtocolError as error:
            return {"error": {"status": error.status, "code": error.code, "message": error.message,
                              "headers": error.headers}}
        return {"ok": True} if result is OK else {"result": result}

    # -- the long poll -----------------------------------------------------------
    def poll(self, request):
        """``GET /packets?ticket=&callback=&ack=``: park until packets arrive or the hold
        runs out (docs/design.md#d5-timers, docs/design.md#d6-comet-envelope).

        :returns: bytes (a refusal, answered at once) or a Deferred of the answer's
            bytes. An unknown ticket is a 404 in both plain and JSONP mode, so that a
            JSONP client's script error tells it to go online again.
        """
        callback = None
        try:
            callback = raw_callback(request)
            if self.ctx.shutting_down:
                raise ShuttingDown("the server is shutting down; try again shortly")
            params = decode_params(request, self.ctx.config.server.max_body_bytes)
            ack = params.integer("ack")
            session = self.ctx.router.session(params.get("ticket"))
        except NotFound as error:
            body = render_error(request, error, None)
            request.setResponseCode(404)
            return body
        except ProtocolError as error:
            return render_error(request, error, callback)
        request.nextim_user_id = session.user_id  # for the access log
        d = session.poll(ack)
        # The client went away: end the poll, the session lives on
        # (docs/design.md#d5-timers). A hook of ObservedRequest rather than
        # notifyFinish(), which costs a Deferred per poll.
        request.on_connection_lost = d.cancel
        d.addCallbacks(self._poll_answer, _poll_cancelled, callbackArgs=(request, callback))
        return d

    def _poll_answer(self, envelope, request, callback):
        self.metrics.polled(envelope)
        return render(request, envelope, callback)


def _poll_cancelled(failure):
    failure.trap(defer.CancelledError)
    return b""


def _write_answer(body, request):
    if request.channel is None:  # the client went away first (a closed long poll)
        return
    if body:
        request.write(body)
    request.finish()


def _answer_failed(failure, request):
    log.failure("answer failed for {path}", failure, path=request.path)
    if request.channel is not None and not request.finished:
        request.setResponseCode(500)
        request.finish()


class HotPathRoot(Resource):
    """The served root: answers ``/packets``, ``/?ticket=``, ``webim/<name>`` and the
    WebSocket handshake ``/ws`` itself and passes every other request to ``rest`` (the
    Klein app of :mod:`.app`).

    This is the one dispatch path of those requests: no Klein route shadows them. A
    path that is not UTF-8 once percent-decoded is the 400 ``bad_encoding`` envelope
    here (Klein answered it with an HTML page and logged a traceback).

    :param webim: :class:`Webim`.
    :param rest: the ``IResource`` for everything else.
    :param sockets: the :class:`~nextim_twisted.web.websocket.SocketEndpoint`, or None
        when ``[websocket] enabled = false`` (then ``/ws`` is an unknown path).
    """

    isLeaf = True

    def __init__(self, webim, rest, sockets=None):
        super().__init__()
        self.webim = webim
        self.rest = rest
        self.sockets = sockets
        cluster = webim.ctx.cluster
        #: This node's id in a cluster (its paths are ``/n/<node_id>/...``), else None.
        self.node_id = cluster.node_id if cluster is not None else None

    def render(self, request):
        try:
            path = unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return render_error(request, BadRequest("the path must be UTF-8", code="bad_encoding"))
        if path.startswith("/webim/") and len(path) > 7 and "/" not in path[7:]:
            result = self.webim.call(request, path[7:])
        elif path == POLL_PATH:
            if request.method not in POLL_METHODS:
                return render_error(request, MethodNotAllowed("use GET or POST"))
            result = self.webim.poll(request)
        elif self.node_id is not None and (route := node_route(path)) is not None:
            node_id, endpoint = route
            if node_id != self.node_id:
                # Another node's path: its sessions are not here. 404 (no upgrade), so the
                # client goes online again rather than waiting on a node that cannot answer it.
                request.setResponseCode(404)
                return render_error(request, NotFound(f"this {NODE_ENDPOINTS[endpoint]} belongs to another "
                                                      "node; go online again", code="invalid_ticket"))
            if endpoint == "ws":
                if self.sockets is None:
                    return self.rest.render(request)
                return self.sockets.handshake(request)  # docs/design.md#d21-websocket
            if request.method not in POLL_METHODS:
                return render_error(request, MethodNotAllowed("use GET or POST"))
            result = self.webim.poll(request)
        elif self.sockets is not None and self.node_id is None and path == SOCKET_PATH:
            return self.sockets.handshake(request)  # docs/design.md#d21-websocket
        elif path == "/" and request.method in (b"GET", b"HEAD") and (request.args or {}).get(b"ticket"):
            result = self.webim.poll(request)  # a config whose poll URL is the server URL itself
        else:
            return self.rest.render(request)
        if isinstance(result, bytes):
            return result
        # Module functions with arguments, not closures: a parked poll's Deferred is
        # held for up to 25 s by every online user (memory and GC per user).
        result.addCallbacks(_write_answer, _answer_failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET
