"""The HTTP face of the daemon (Klein): ``webim/*``, the ``/packets`` long-poll,
the admin API and the bundled client (D1, D2, D13, D14, D16).

Every answer is JSON, ``ok`` or JSONP; every refusal is the D2 envelope — unknown
paths and methods included, never an HTML page or a traceback.
"""
import functools
import hmac
import json
import os
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from ..auth import Credentials
from ..errors import (BadRequest, Forbidden, MethodNotAllowed, NotFound, ProtocolError, ShuttingDown,
                      TooLarge, Unauthorized)
from ..handlers import OK, admin, chat, online, rooms, settings
from ..handlers.params import Params, is_storable
from .encoding import check_callback, render, render_error
from .metrics import Metrics, ObservedSite, Ops

log = Logger()

# twisted.web parses the Content-Type of every form POST through the email package
# (EmailMessage), which cost about a tenth of the daemon's CPU under message load
# (bench/, issue 6). The result depends only on the header line, so remember it.
if hasattr(http, "_parseContentType") and not hasattr(http._parseContentType, "cache_info"):
    http._parseContentType = functools.lru_cache(maxsize=256)(http._parseContentType)

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")


class InternalError(ProtocolError):
    status = 500
    code = "internal_error"


class Endpoint:
    """One ``webim/<name>`` endpoint: its handler and whether it changes state (D13)."""

    def __init__(self, handler, writes=False, allow_password=False):
        self.handler = handler
        self.writes = writes
        self.allow_password = allow_password

    def changes_state(self, params):
        if callable(self.writes):
            return self.writes(params)
        return self.writes


#: protocol-reference §2, endpoints 1–15 (D1: each takes GET and POST).
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
}


def _header(request, name):
    value = request.getHeader(name)
    return value if value else None


def decode_params(request, max_body):
    """Query string and form body as :class:`Params` (first value of each name).

    :raises TooLarge: body over ``max_body`` bytes (D15).
    :raises BadRequest: a name or value that is not valid UTF-8.
    """
    length = request.getHeader(b"content-length")
    if length and length.isdigit() and int(length) > max_body:
        raise TooLarge(f"request body over {max_body} bytes", code="body_too_large")
    if request.content is not None:
        request.content.seek(0, os.SEEK_END)
        if request.content.tell() > max_body:
            raise TooLarge(f"request body over {max_body} bytes", code="body_too_large")
        request.content.seek(0)
    query = request.uri.partition(b"?")[2]
    if len(unquote_to_bytes(query.replace(b"+", b" "))) > max_body:
        # A JSONP client's query string is its body (D1): the same limit (D15).
        raise TooLarge(f"request over {max_body} bytes", code="body_too_large")
    values = {}
    for raw_name, raw_values in (request.args or {}).items():
        try:
            name = raw_name.decode("utf-8")
            value = raw_values[0].decode("utf-8") if raw_values else ""
        except UnicodeDecodeError:
            raise BadRequest("parameters must be UTF-8", code="bad_encoding") from None
        if "\x00" in value or "\x00" in name:
            raise BadRequest("parameters must not contain NUL characters", code="bad_encoding")
        values.setdefault(name, value)
    return Params(values)


def all_storable(value):
    """True if every string (keys included) in a parsed JSON value passes
    :func:`~nextim_twisted.handlers.params.is_storable`. Iterative: no depth limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_storable(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def raw_callback(request):
    """The ``callback`` parameter before anything else is decoded, validated (D1)."""
    raw = (request.args or {}).get(b"callback")
    if not raw:
        return None
    try:
        value = raw[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("callback: must be a JavaScript identifier path", code="bad_callback") from None
    return check_callback(value)


#: HTTPChannel's per-connection attributes, in the order :func:`channel_class` presets them.
#: Not ``callLater``: its class value is a method, and a bound method of the channel kept
#: in its own dict would be a reference cycle (the factory sets it, always in one place).
_CHANNEL_ATTRIBUTES = (
    "factory", "timeOut", "requestFactory", "site", "connected", "transport",
    "_TimeoutMixin__timeoutCall", "_networkProducer", "_busyReceiving", "_buffer",
    "_receivedHeaderSize", "_HTTPChannel__first_line", "_HTTPChannel__header",
    "_receivedHeaderCount", "length", "persistent", "line_mode", "_savedTimeOut",
)

_TRANSPORT_ATTRIBUTES = ("producer", "streamingProducer", "dataBuffer", "offset")


def channel_class(max_body_bytes):
    """An ``HTTPChannel`` whose request line may carry a whole request body (D15).

    JSONP clients send every call, long messages included, as a GET (D1): the query
    string is their body. twisted.web's default line limit (16 KiB) silently dropped
    the connection of such a request — a 10 000-character message percent-encodes to up
    to 90 KB. Lines up to three times ``max_body_bytes`` (percent-encoding triples a
    byte) plus 4 KiB are read; :func:`decode_params` then applies ``max_body_bytes`` to
    the decoded query. A longer line is answered with the 413 envelope, then closed.

    Bodies get the same limit while they arrive, not after: a ``Content-Length`` over
    ``max_body_bytes`` is refused (413, no ``100 Continue``) before any of it is read,
    and a chunked body is cut off once more than ``max_body_bytes`` of it has come in.
    twisted.web would otherwise read any body to its end (spooled to a temporary file)
    before :func:`decode_params` could refuse it. Requests twisted.web itself rejects
    while parsing (a bad request line, bad or conflicting length headers) get the 400
    envelope instead of a bare status line.
    """
    line_limit = 3 * max_body_bytes + 4096

    class Channel(http.HTTPChannel):
        # HTTPChannel deletes these three per request; deleting from an instance dict
        # turns CPython's compact shared-key dict into a full one (~0.8 KB instead of
        # ~0.3 KB, per connection). In slots they come and go for free (issue 6).
        __slots__ = ("_command", "_path", "_version")
        MAX_LENGTH = line_limit

        def __init__(self):
            super().__init__()
            # Insert every attribute twisted.web sets later, in one fixed order, so that
            # all channels share one key table whatever their first request (a POST and
            # a GET set them in different orders, and the first different order turns
            # the dict into a full one). Values are the class defaults.
            for name in _CHANNEL_ATTRIBUTES:
                if name not in self.__dict__:
                    setattr(self, name, getattr(self, name, None))

        def makeConnection(self, transport):
            # The same for the TCP transport's attributes that writing adds later.
            attrs = getattr(transport, "__dict__", None)
            if attrs is not None:
                for name in _TRANSPORT_ATTRIBUTES:
                    if name not in attrs and hasattr(transport, name):
                        setattr(transport, name, getattr(transport, name))
            super().makeConnection(transport)
        totalHeadersSize = line_limit + 16384
        _nextim_refused = False

        def _refuse_too_large(self, error):
            self._refuse(b"413 Request Entity Too Large", error)

        def _respondToBadRequestAndDisconnect(self):
            # twisted.web's hook for requests it cannot parse (its own answer: a bare
            # "400 Bad Request" line); it may be called more than once per connection.
            if not self._nextim_refused:
                self._refuse(b"400 Bad Request", BadRequest("malformed HTTP request"))

        def _refuse(self, status, error):
            self._nextim_refused = True
            body = json.dumps(error.envelope()).encode()
            self.transport.write(b"HTTP/1.1 " + status + b"\r\n"
                                 b"Content-Type: application/json; charset=utf-8\r\n"
                                 b"Cache-Control: no-store\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.transport.loseConnection()

        def lineLengthExceeded(self, line):
            self._refuse_too_large(TooLarge(f"request line over {line_limit} bytes", code="request_too_large"))

        def allHeadersReceived(self):
            if self.length is not None and self.length > max_body_bytes:
                return self._refuse_too_large(TooLarge(f"request body over {max_body_bytes} bytes",
                                                       code="body_too_large"))
            super().allHeadersReceived()

        def rawDataReceived(self, data):
            if self._nextim_refused:
                return
            content = getattr(self.requests[-1], "content", None) if self.requests else None
            if not getattr(self, "_handlingRequest", False) and content is not None and content.tell() > max_body_bytes:
                return self._refuse_too_large(TooLarge(f"request body over {max_body_bytes} bytes",
                                                       code="body_too_large"))
            super().rawDataReceived(data)

    return Channel


class _EnvelopeNotFound(Resource):
    """What ``/static/`` answers for a file it does not have: the D2 404 envelope."""

    isLeaf = True

    def render(self, request):
        return render_error(request, NotFound("no such file", code="unknown_path"))


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


def _poll_cancelled(failure):
    failure.trap(defer.CancelledError)
    return b""


class _Root(Resource):
    """The served root. The two hot paths are answered here, outside Klein (issue 6):

    * ``/packets`` (GET/POST) by :meth:`WebApp.poll`: every delivered packet costs one
      poll answer and one new poll, and Klein's routing (werkzeug matching, its Deferred
      plumbing) took about a fifth of the CPU under load;
    * ``/webim/<name>`` by :meth:`WebApp.webim_call`: Klein and werkzeug left about 55
      objects in reference cycles per request, which only the cyclic collector frees
      (0.2 s pauses at 10 000 users and 200 messages/s).

    Everything else goes to the Klein app. A path that is not UTF-8 once
    percent-decoded is the 400 ``bad_encoding`` envelope here (Klein answered it with an
    HTML page and logged a traceback).
    """

    isLeaf = True

    def __init__(self, web, klein_resource):
        super().__init__()
        self.web = web
        self.klein = klein_resource

    def render(self, request):
        try:
            path = unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return render_error(request, BadRequest("the path must be UTF-8", code="bad_encoding"))
        if path == "/packets" and request.method in (b"GET", b"POST"):
            result = self.web.poll(request)
        elif path.startswith("/webim/") and len(path) > 7 and "/" not in path[7:]:
            # what Klein's /webim/<string:name> matches: one decoded segment
            result = self.web.webim_call(request, path[7:])
        else:
            return self.klein.render(request)
        if isinstance(result, bytes):
            return result
        # Module functions with arguments, not closures: a parked poll's Deferred is
        # held for up to 25 s by every online user (memory and GC per user).
        result.addCallbacks(_write_answer, _answer_failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET


class WebApp:
    """Klein routes bound to a handler :class:`~nextim_twisted.handlers.context.Context`."""

    app = Klein()

    def __init__(self, ctx, static_dir=STATIC_DIR):
        self.ctx = ctx
        self.static_dir = static_dir
        self.metrics = Metrics(ctx.router, ctx.store)
        self.ops = Ops(ctx, self.metrics)

    def resource(self):
        """The root ``IResource`` to serve: :class:`_Root` answers ``/packets`` and
        ``/webim/<name>`` itself and passes the rest to the Klein app. Klein keeps its
        routes for those two as well: they are the declared route table that
        tests/test_openapi.py checks, and answer the methods and paths ``_Root`` passes on."""
        return _Root(self, self.app.resource())

    def site(self):
        """The ``twisted.web`` Site to listen with: :meth:`resource` plus one access-log
        event and the metrics of every request (issue 5, ``web/metrics.py``)."""
        site = ObservedSite(self.resource(), self.metrics, webim_names=set(WEBIM) | {"login", "logout"})
        site.protocol = channel_class(self.ctx.config.server.max_body_bytes)
        return site

    # -- plumbing ------------------------------------------------------------
    def credentials(self, request, params, callback):
        """What the request offers as identity (D13)."""
        auth = _header(request, b"authorization")
        bearer = None
        if auth and auth[:7].lower() == b"bearer ":
            bearer = auth[7:].strip().decode("latin-1")
        host = _header(request, b"host")
        scheme = "https" if request.isSecure() else "http"
        cfg = self.ctx.config.auth
        cookie = lambda name: (request.getCookie(name.encode()) or b"").decode("latin-1") or None  # noqa: E731
        return Credentials(
            bearer=bearer,
            token_param=params.get("token"),
            token_cookie=cookie(cfg.token_cookie),
            session_cookie=cookie(cfg.session_cookie),
            ticket=params.get("ticket"),
            username=params.get("username"),
            password=params.values.get("password"),
            method=request.method.decode("ascii", "replace"),
            origin=(_header(request, b"origin") or b"").decode("latin-1") or None,
            request_origin=f"{scheme}://{host.decode('latin-1')}" if host else None,
            jsonp=callback is not None,
        )

    async def guarded(self, request, work):
        """Run ``work(params, callback)`` and render its result or its refusal."""
        callback = None
        try:
            callback = raw_callback(request)
            if self.ctx.shutting_down:
                raise ShuttingDown("the server is shutting down; try again shortly")
            params = decode_params(request, self.ctx.config.server.max_body_bytes)
            result = await work(params, callback)
            body = render(request, result, callback)
        except ProtocolError as error:
            body = render_error(request, error, callback)
        except Exception:
            log.failure("unexpected error in {method} {path}", method=request.method, path=request.path)
            body = render_error(request, InternalError("internal error", code="internal_error"), callback)
        return body  # the access event is written by web/metrics.ObservedSite

    # -- webim/* ---------------------------------------------------------------
    @app.route("/webim/<string:name>", methods=["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
    def webim(self, request, name):
        """Klein's route for what :class:`_Root` does not answer itself."""
        return self.webim_call(request, name)

    def webim_call(self, request, name):
        """``webim/<name>`` (protocol-reference §2): a Deferred of the answer's bytes,
        refusals included (D2)."""
        if name.endswith(".php"):
            name = name[:-4]

        async def work(params, callback):
            if request.method not in (b"GET", b"POST"):
                raise MethodNotAllowed("use GET or POST")
            if name == "login":
                return await self.login(request, params, callback)
            if name == "logout":
                return self.logout(request, params, callback)
            endpoint = WEBIM.get(name)
            if endpoint is None:
                raise NotFound(f"unknown endpoint webim/{name}", code="unknown_endpoint")
            creds = self.credentials(request, params, callback)
            identity = await self.ctx.auth.identify(creds, endpoint.changes_state(params),
                                                    endpoint.allow_password)
            request.nextim_user_id = identity.user_id  # for the access log
            result = await endpoint.handler(self.ctx, identity, params)
            if name == "online":
                self.metrics.logged_in(identity.via)
            return result

        return defer.ensureDeferred(self.guarded(request, work))

    async def login(self, request, params, callback):
        """``POST webim/login`` (accounts): set the HttpOnly SameSite login cookie."""
        if self.ctx.config.auth.method != "accounts":
            raise NotFound("login is only available with [auth] method = \"accounts\"", code="unknown_endpoint")
        if request.method != b"POST" or callback is not None:
            raise Forbidden("log in with a POST", code="csrf")
        creds = self.credentials(request, params, callback)
        # A login from a foreign page would plant our cookie there (login CSRF); a POST
        # without Origin (curl, old browsers) is let through.
        if creds.origin and not self.ctx.auth.origin_allowed(creds):
            raise Forbidden("origin not allowed", code="csrf")
        user_id, answer = await online.login(self.ctx, params)
        self._set_cookie(request, await self.ctx.auth.login_cookie(user_id), self.ctx.config.auth.session_ttl)
        return answer

    def logout(self, request, params, callback):
        """``POST webim/logout``: end the sessions this login opened and clear the login
        cookie (docs/design.md#d19-session-lifetime)."""
        if request.method != b"POST":
            raise Forbidden("log out with a POST", code="csrf")
        creds = self.credentials(request, params, callback)
        # A foreign page must not end the user's sessions (the cookie goes along).
        if creds.origin and not self.ctx.auth.origin_allowed(creds):
            raise Forbidden("origin not allowed", code="csrf")
        online.logout(self.ctx, creds.session_cookie)
        self._set_cookie(request, "", 0)
        return OK

    def _set_cookie(self, request, value, max_age):
        cfg = self.ctx.config.auth
        request.addCookie(cfg.session_cookie.encode(), value.encode(), path=b"/", max_age=str(max_age).encode(),
                          httpOnly=True, secure=cfg.cookie_secure, sameSite="lax")

    # -- long poll -------------------------------------------------------------
    @app.route("/packets", methods=["GET", "POST"])
    def packets(self, request):
        return self.poll(request)

    def poll(self, request):
        """``GET /packets?ticket=&callback=&ack=`` (D5, D6): park until packets arrive or
        the hold runs out. An unknown ticket is a 404 in both modes (D2)."""
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
        # The client went away: end the poll, the session lives on (D5). A hook of
        # ObservedRequest rather than notifyFinish(), which costs a Deferred per poll.
        request.on_connection_lost = d.cancel
        d.addCallbacks(self._poll_answer, _poll_cancelled, callbackArgs=(request, callback))
        return d

    def _poll_answer(self, envelope, request, callback):
        self.metrics.polled(envelope)
        return render(request, envelope, callback)

    # -- admin API (D14) -------------------------------------------------------
    def check_admin(self, request):
        """:raises Forbidden: admin API disabled; :raises Unauthorized: wrong key."""
        key = self.ctx.config.admin.api_key
        if not key:
            raise Forbidden("the admin API is disabled: set [admin] api_key", code="admin_disabled")
        auth = (_header(request, b"authorization") or b"").decode("latin-1")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise Unauthorized("admin API key required: Authorization: Bearer <key>", code="bad_api_key")

    def admin_call(self, request, fn, *args, body=False):
        async def work(params, callback):
            self.check_admin(request)
            if body:
                return await fn(self.ctx, *args, self.json_body(request))
            return await fn(self.ctx, *args)
        return defer.ensureDeferred(self.guarded(request, work))

    def json_body(self, request):
        """The request body as a JSON object (``{}`` when empty).

        :raises BadRequest: not UTF-8 JSON, or not an object.
        """
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadRequest("body must be a JSON object", code="bad_json") from None
        if not isinstance(value, dict):
            raise BadRequest("body must be a JSON object", code="bad_json")
        if not all_storable(value):
            # Same rule as form parameters: no NUL, no lone surrogate (``"\ud800"``).
            raise BadRequest("body: strings must be valid Unicode text without NUL", code="bad_encoding")
        return value

    @app.route("/admin/users/<string:user_id>", methods=["PUT"])
    def admin_put_user(self, request, user_id):
        return self.admin_call(request, admin.put_user, user_id, body=True)

    @app.route("/admin/users/<string:user_id>", methods=["DELETE"])
    def admin_delete_user(self, request, user_id):
        erase = (request.args or {}).get(b"erase", [b""])[0].lower() in (b"true", b"1", b"yes")
        return self.admin_call(request, admin.delete_user, user_id, erase)

    @app.route("/admin/users/<string:user_id>/export", methods=["GET"])
    def admin_export_user(self, request, user_id):
        return self.admin_call(request, admin.export_user, user_id)

    @app.route("/admin/users/<string:user_id>/buddies/<string:buddy_id>", methods=["PUT"])
    def admin_put_buddy(self, request, user_id, buddy_id):
        return self.admin_call(request, admin.put_buddy, user_id, buddy_id, body=True)

    @app.route("/admin/users/<string:user_id>/buddies/<string:buddy_id>", methods=["DELETE"])
    def admin_delete_buddy(self, request, user_id, buddy_id):
        return self.admin_call(request, admin.delete_buddy, user_id, buddy_id)

    @app.route("/admin/users/<string:user_id>/notifications", methods=["POST"])
    def admin_notify(self, request, user_id):
        return self.admin_call(request, admin.add_notification, user_id, body=True)

    @app.route("/admin/rooms/<string:room_id>", methods=["PUT"])
    def admin_put_room(self, request, room_id):
        return self.admin_call(request, admin.put_room, room_id, body=True)

    @app.route("/admin/rooms/<string:room_id>", methods=["DELETE"])
    def admin_delete_room(self, request, room_id):
        return self.admin_call(request, admin.delete_room, room_id)

    @app.route("/admin/rooms/<string:room_id>/members/<string:user_id>", methods=["PUT"])
    def admin_put_member(self, request, room_id, user_id):
        return self.admin_call(request, admin.put_member, room_id, user_id)

    @app.route("/admin/rooms/<string:room_id>/members/<string:user_id>", methods=["DELETE"])
    def admin_delete_member(self, request, room_id, user_id):
        return self.admin_call(request, admin.delete_member, room_id, user_id)

    @app.route("/admin/broadcast", methods=["POST"])
    def admin_broadcast(self, request):
        return self.admin_call(request, admin.broadcast, body=True)

    @app.route("/admin/stats", methods=["GET"])
    def admin_stats(self, request):
        return self.admin_call(request, admin.stats)

    # -- operations (issue 5, web/metrics.py) -------------------------------------
    @app.route("/metrics", methods=["GET"])
    def metrics_page(self, request):
        """Prometheus exposition; ``[metrics] enabled`` / ``token`` guard it."""
        return self.ops.render_metrics(request)

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request):
        """200 when storage answers, 503 otherwise (load balancers, systemd checks)."""
        return defer.ensureDeferred(self.ops.render_health(request))

    @app.route("/openapi.json", methods=["GET", "HEAD"])
    def openapi(self, request):
        """The OpenAPI 3.1 description of this HTTP API (``web/openapi.json``, kept in
        step with the routes by tests/test_openapi.py)."""
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        with open(OPENAPI_PATH, "rb") as f:
            return f.read()

    # -- the bundled client ------------------------------------------------------
    @app.route("/", methods=["GET", "HEAD"])
    def index(self, request):
        if (request.args or {}).get(b"ticket"):
            return self.poll(request)  # seed-literal configs poll the bare server URL (§7 A3)
        path = os.path.join(self.static_dir, "index.html")
        if not os.path.exists(path):
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"nextim-twisted is running; the web client is not installed.\n"
        # Not File(path): Klein leaves postpath [b""] for "/", and a File of a regular
        # file answers that child with Twisted's HTML 404 page.
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        with open(path, "rb") as f:
            return f.read()

    @app.route("/static/", branch=True, methods=["GET", "HEAD"])
    def static(self, request):
        if any(b"\x00" in segment for segment in request.postpath):
            # File would stat() it: ValueError, a 500 HTML page and a traceback.
            return _EnvelopeNotFound()
        files = File(self.static_dir)
        files.childNotFound = _EnvelopeNotFound()  # D1: a missing file is the D2 envelope, not HTML
        return files

    # -- everything else: the D2 envelope ------------------------------------------
    @app.handle_errors(WerkzeugNotFound)
    def not_found(self, request, failure):
        return render_error(request, NotFound("no such path", code="unknown_path"))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request, failure):
        return render_error(request, MethodNotAllowed("method not allowed for this path"))
