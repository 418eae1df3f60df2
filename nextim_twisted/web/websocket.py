"""The WebSocket transport: ``GET /ws`` (a cluster node: ``/n/<node_id>/ws``) upgraded to
a WebSocket (RFC 6455) that streams a session's comet envelopes and takes its calls
(docs/design.md#d21-websocket, the frames in docs/protocol.md#websocket-transport).

This is the one module that uses ``twisted.web.websocket`` (Twisted's own, on wsproto).
It does the RFC 6455 handshake, frames, masking, fragment reassembly and answers pings;
what it leaves out is closed here, each gap where it is handled:

* **No Origin check and no refusal.** ``WebSocketResource`` upgrades every valid
  handshake (its factory must return a protocol), and a broken one is a ``text/plain``
  400 and an error logged. :meth:`SocketEndpoint.handshake` therefore decides first:
  the method, shutdown (503), a foreign ``Origin`` (403) and the handshake headers
  themselves (checked with wsproto's own ``H11Handshake``, 400), each answered with the
  error envelope; only then is the request handed to ``WebSocketResource.render_GET``.
* **No limit on a message's size.** It reassembles fragments until a message ends, with
  no bound. The channel's ``dataReceived`` (which the upgrade pointed at the wire
  protocol) is wrapped (:meth:`SocketSession.data_received`): after each read the
  reassembly buffers are measured and a message over ``[server] max_body_bytes`` is
  closed with 1009 (RFC 6455 section 7.4.1), at most one TCP read (64 KiB) past it.
* **Sending after the close raises.** wsproto raises ``LocalProtocolError`` for a frame
  sent once the closing handshake started (the peer's close arrives in the same turn
  as a packet for it), and so does data that arrives after it closed. Every send and
  every read goes through :class:`SocketSession`, which catches it: a packet pushed
  into a closing socket must never fail the sender's ``webim/message``.
* **Bytes after the handshake in the same read are lost.** The channel's line parser
  hands them to ``rawDataReceived``, which buffers them for a next HTTP request that
  never comes; it is pointed at the socket too.
* **The upgraded request is never finished.** twisted.web keeps it in
  ``channel.requests`` for the connection's life and writes no access event. The
  handshake is logged and counted as ``101`` at once (endpoint ``websocket``) and the
  request dropped, so an idle socket does not hold it (memory per idle user,
  docs/benchmarks.md).
* **No keepalive.** :class:`SocketSession` pings every ``[timers] poll_hold`` seconds
  on the router's timer wheel (the injected clock) and aborts a peer that sent nothing,
  not even a pong, since the previous ping (RFC 6455 section 5.5.2).

permessage-deflate is never negotiated: ``AcceptConnection`` is sent without extensions
(why: docs/design.md#d21-websocket). The private Twisted names this relies on are in
:data:`TWISTED_PRIVATE_NAMES`; tests/test_websocket.py checks them against the
installed Twisted, so a rename fails a test instead of silently losing the size limit.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET
from twisted.web.websocket import WebSocketResource
from wsproto import ConnectionType
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..auth import Credentials
from ..core.session import REPLACED, SHUTDOWN
from ..errors import (BadRequest, Forbidden, InternalError, MethodNotAllowed, NotFound, ProtocolError,
                      ShuttingDown)
from ..handlers import OK
from ..handlers.params import Params, is_storable
from .answer import header
from .encoding import render_error
from .metrics import ObservedSite
from .webim import WEBIM, run_identified

if TYPE_CHECKING:
    from ..core.session import Session
    from ..handlers.context import Context
    from .metrics import Metrics

log = Logger()

#: The private names of ``twisted.web`` this module relies on, as ``(owner, name)``
#: (an owner ending in ``()``: set on instances). Checked by tests/test_websocket.py.
TWISTED_PRIVATE_NAMES = (
    # WebSocketResource.render_GET calls it to hand the connection to the wire protocol.
    ("twisted.web.http.HTTPChannel", "_protocolUpgradeForWebsockets"),
    # The wire protocol's reassembly buffers, measured for the size limit.
    ("twisted.web._websocket_impl._WebSocketWireProtocol()", "_textBuffer"),
    ("twisted.web._websocket_impl._WebSocketWireProtocol()", "_bytesBuffer"),
    ("twisted.web._websocket_impl.Buffer()", "data"),
)

#: The calls a socket takes (docs/protocol.md#websocket-transport): the ``webim/*``
#: endpoints of the same name, their handlers, rules and rate limits.
SOCKET_CALLS = ("message", "status", "presence", "refresh", "offline")
#: Calls that end the socket's session: the reply is sent, then the socket closes (1000).
ENDING_CALLS = ("refresh", "offline")

# Close codes (docs/protocol.md#websocket-transport).
NORMAL, GOING_AWAY, UNSUPPORTED, TOO_BIG = 1000, 1001, 1003, 1009
BAD_FRAME, UNKNOWN_TICKET, REPLACED_CODE = 4400, 4404, 4409

_SCALARS = (str, int, float, bool, type(None))


def _no_constant(name):
    raise ValueError(name)


def _json_text(value: Any) -> str:
    """Compact strict JSON text (a frame's payload)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class SocketEndpoint:
    """``/ws``: answers the handshake and builds one :class:`SocketSession` per socket.

    :param ctx: the handler :class:`~nextim_twisted.handlers.context.Context` (router,
        auth, config, limiter, ``shutting_down``).
    :param metrics: :class:`~nextim_twisted.web.metrics.Metrics` (``nextim_websockets``,
        ``nextim_websocket_frames_total``, packets, errors).

    :ivar open: the open sockets (subscribed or not).
    """

    def __init__(self, ctx: Context, metrics: Metrics) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.open: set[SocketSession] = set()
        self.resource = WebSocketResource(self)
        self._built: SocketSession | None = None
        self.frames_in = metrics.websocket_frames.labels("in")
        self.frames_out = metrics.websocket_frames.labels("out")
        metrics.websockets.set_function(lambda: len(self.open))

    # -- the handshake (RFC 6455 section 4.2) -----------------------------------------
    def handshake(self, request) -> bytes | int:
        """Answer ``GET /ws``: the 101 upgrade, or the error envelope (405 not a GET, 503
        shutting down, 403 ``origin_not_allowed``, 400 ``bad_request`` for anything
        that is not a WebSocket handshake). A handshake without ``Origin`` is a
        non-browser client and allowed: the ticket is the only credential, cookies are
        never read (docs/design.md#d21-websocket).

        :returns: the refusal's bytes, or ``NOT_DONE_YET`` once upgraded.
        """
        try:
            if request.method != b"GET":
                raise MethodNotAllowed("a WebSocket handshake is a GET")
            if self.ctx.shutting_down:
                raise ShuttingDown("the server is shutting down; try again shortly")
            origin = (header(request, b"origin") or b"").decode("latin-1")
            if origin:
                host = header(request, b"host")
                scheme = "https" if request.isSecure() else "http"
                creds = Credentials(origin=origin,
                                    request_origin=f"{scheme}://{host.decode('latin-1')}" if host else None)
                if not self.ctx.auth.origin_allowed(creds):
                    raise Forbidden("origin not allowed for the WebSocket", code="origin_not_allowed")
            raw = request.requestHeaders.getAllRawHeaders()
            try:
                H11Handshake(ConnectionType.SERVER).initiate_upgrade_connection(
                    [(name, value) for name, values in raw for value in values], request.path)
            except RemoteProtocolError:
                raise BadRequest("expected a WebSocket handshake (RFC 6455 section 4.2.1)") from None
        except ProtocolError as error:
            return render_error(request, error)
        self.resource.render_GET(request)
        socket, self._built = self._built, None
        assert socket is not None, "WebSocketResource did not build the protocol"
        channel = request.channel
        # The upgrade pointed the channel's dataReceived at the wire protocol: read
        # through the socket instead (size limit, data after the close).
        socket.wire_receive = channel.dataReceived
        channel.dataReceived = socket.data_received
        # Bytes that came in the same read as the handshake (a client that sends its
        # subscribe frame without waiting for the 101) are handed by the line parser to
        # rawDataReceived once this returns, which would buffer them for a next request.
        channel.rawDataReceived = socket.data_received
        request.setResponseCode(101)
        site = getattr(request, "site", None)
        if isinstance(site, ObservedSite):
            site.observe(request)
        del channel.requests[:]  # never finished: do not keep it for the socket's life
        return NOT_DONE_YET

    def buildProtocol(self, request) -> SocketSession:
        """``WebSocketServerFactory``: the protocol of one upgraded request."""
        socket = self._built = SocketSession(self)
        return socket

    def close_all(self, code: int = GOING_AWAY) -> int:
        """Close every open socket (on shutdown 1001, docs/design.md#d16-shutdown);
        :returns: how many."""
        sockets = [socket for socket in self.open if not socket.closed]
        for socket in sockets:
            socket.close(code, "server shutting down")
        return len(sockets)


class SocketSession:
    """One WebSocket: a ``WebSocketProtocol`` for Twisted and a
    :class:`~nextim_twisted.core.session.Subscriber` for the session it subscribed to.

    Before the subscribe frame only ``subscribe <domain> <ticket> [<ack>]`` is
    accepted (anything else: 4400; an unknown ticket: 4404). After it: ``ack <N>``
    frames (drop acked packets, no answer) and JSON calls answered with reply frames.
    """

    __slots__ = ("endpoint", "transport", "wire_receive", "session", "closed", "heard", "_timer", "_ending",
                 "_ended_by_call", "__weakref__")

    def __init__(self, endpoint: SocketEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: Any = None        # the WebSocketTransport (Twisted's wire protocol)
        self.wire_receive: Any = None     # the wire protocol's own dataReceived
        self.session: Session | None = None
        self.closed = False
        self.heard = False                # any frame or pong since the last ping
        self._timer: Any = None
        self._ending = 0                  # offline/refresh calls running
        self._ended_by_call = False

    # -- WebSocketProtocol --------------------------------------------------------------
    def negotiationStarted(self, transport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        # Envelopes are small writes that follow each other: with Nagle's algorithm on, a
        # second one waits for the peer's (delayed, ~40 ms) ACK of the first. bench/wsload.py
        # measured p50 44 ms -> 2 ms at 1000 users with TCP_NODELAY (docs/benchmarks.md).
        no_delay = getattr(self.transport.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.endpoint.open.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Every byte of the upgraded connection, before Twisted's wire protocol: none
        once closed; a message growing over ``[server] max_body_bytes`` closes 1009."""
        if self.closed:
            return
        try:
            self.wire_receive(data)
        except LocalProtocolError:
            return  # data after the closing handshake: nothing to read
        wire = self.transport
        if not self.closed and (len(wire._textBuffer.data) + len(wire._bytesBuffer.data)
                                > self.endpoint.ctx.config.server.max_body_bytes):
            self.close(TOO_BIG, "frame too large")

    def textMessageReceived(self, text: str) -> None:
        if self.closed:
            return
        self.heard = True
        self.endpoint.frames_in.inc()
        limit = self.endpoint.ctx.config.server.max_body_bytes
        if len(text) * 4 > limit and len(text.encode("utf-8")) > limit:
            return self.close(TOO_BIG, "frame too large")
        if self.session is None:
            return self._subscribe(text)
        if text.startswith("ack "):
            return self._ack(text[4:])
        self._call(text)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        if not self.closed:
            self.endpoint.frames_in.inc()
            self.close(UNSUPPORTED, "binary frames are not accepted")

    def pongReceived(self, payload: bytes) -> None:
        self.heard = True

    def connectionLost(self, reason) -> None:
        self.closed = True
        self._disarm()
        self.endpoint.open.discard(self)
        self._detach()

    def _detach(self) -> None:
        """Unsubscribe from the session, whose idle timer starts (docs/design.md#d5-timers)."""
        session, self.session = self.session, None
        if session is not None:
            session.unsubscribe(self)

    # -- Subscriber -----------------------------------------------------------------------
    def deliver(self, envelope: dict) -> None:
        """Send one comet envelope frame (docs/design.md#d6-comet-envelope)."""
        if self.closed:
            return
        self.endpoint.metrics.polled(envelope)
        self._send(envelope)

    def session_closed(self, reason: str) -> None:
        """The session let this socket go: 4409 replaced, 1001 shutdown, 4404 ended
        (after the reply when this socket's own offline/refresh ended it)."""
        self.session = None
        if reason == REPLACED:
            self.close(REPLACED_CODE, "replaced by a newer poll or socket")
        elif reason == SHUTDOWN:
            self.close(GOING_AWAY, "server shutting down")
        elif self._ending:
            self._ended_by_call = True  # closed with 1000 once the reply is out
        else:
            self.close(UNKNOWN_TICKET, "session ended: go online again")

    # -- frames ---------------------------------------------------------------------------
    def _subscribe(self, text: str) -> None:
        parts = text.split(" ")
        if parts[0] != "subscribe" or len(parts) not in (3, 4) or not parts[1] or not parts[2]:
            return self.close(BAD_FRAME, "the first frame must be: subscribe <domain> <ticket> [<ack>]")
        ack = None
        if len(parts) == 4:
            ack = self._number(parts[3])
            if ack is None:
                return self.close(BAD_FRAME, "ack: must be a non-negative integer")
        ctx = self.endpoint.ctx
        if ctx.shutting_down:
            return self.close(GOING_AWAY, "server shutting down")
        try:
            session = ctx.router.session(parts[2])
        except NotFound:
            return self.close(UNKNOWN_TICKET, "unknown or expired ticket: go online again")
        self.session = session
        session.subscribe(self, ack)

    @staticmethod
    def _number(text: str) -> int | None:
        if not text.isascii() or not text.isdigit() or len(text) > 16:
            return None
        number = int(text)
        return number if number <= 2**53 else None

    def _ack(self, text: str) -> None:
        ack = self._number(text)
        if ack is None:
            return self._send({"reply": None, "error": BadRequest("ack: must be a non-negative integer").envelope()})
        if self.session is not None:
            self.session.ack(ack)

    def _call(self, text: str) -> None:
        """A JSON call frame: ``{"id", "call", "params"}``; a malformed one is a
        ``bad_request`` error reply (``reply`` null when its id cannot be read)."""
        try:
            frame = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            frame = None
        if not isinstance(frame, dict) or "id" not in frame or not isinstance(frame["id"], _SCALARS):
            return self._refuse(None, BadRequest('a call is a JSON object {"id": <scalar>, "call": <name>, '
                                                 '"params": {...}}'))
        call_id, name, params = frame["id"], frame.get("call"), frame.get("params", {})
        if name not in SOCKET_CALLS:
            return self._refuse(call_id, BadRequest(f"unknown call; one of {', '.join(SOCKET_CALLS)}"))
        if not isinstance(params, dict):
            return self._refuse(call_id, BadRequest("params: must be a JSON object"))
        values = {}
        for key, value in params.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = json.dumps(value)
            elif value is None:
                continue
            elif not isinstance(value, str):
                return self._refuse(call_id, BadRequest(f"params: {key[:40]} must be a string or number",
                                                        code="bad_parameter"))
            if not is_storable(value) or not is_storable(key):
                return self._refuse(call_id, BadRequest("params must be UTF-8 text without NUL",
                                                        code="bad_encoding"))
            values[key] = value
        if self.session is None:  # its session ended (the socket closes)
            return self._refuse(call_id, NotFound("unknown or expired ticket", code="invalid_ticket"))
        values["ticket"] = self.session.ticket  # implied by the socket
        d = defer.ensureDeferred(self._run(call_id, name, Params(values)))
        d.addErrback(lambda f: log.failure("socket call {name} failed", f, name=name))

    async def _run(self, call_id, name: str, params: Params) -> None:
        """Run one call through the ``webim/<name>`` handler, as over HTTP (identity
        from the socket's ticket, same rate limits, ``client_id`` idempotency), and
        send its reply; a ``message`` reply only after the commit (docs/design.md#d7-messages)."""
        ctx, endpoint = self.endpoint.ctx, WEBIM[name]
        started = time.perf_counter()
        ending = name in ENDING_CALLS
        self._ending += ending
        error, status = None, 200
        try:
            try:
                result = await run_identified(ctx, endpoint, Credentials(ticket=params.values["ticket"],
                                                                          method="POST"), params)
                reply = {"reply": call_id, "result": "ok" if result is OK else result}
            except ProtocolError as refusal:
                error, status = refusal.code, refusal.status
                reply = {"reply": call_id, "error": refusal.envelope()}
            except Exception:
                log.failure("unexpected error in socket call {name}", name=name)
                error, status = "internal_error", 500
                reply = {"reply": call_id, "error": InternalError("internal error").envelope()}
        finally:
            self._ending -= ending
        self.endpoint.metrics.observe_request("websocket_" + name, status, time.perf_counter() - started, error)
        self._send(reply)
        if self._ended_by_call and not self._ending:
            self.close(NORMAL, "session ended")

    def _refuse(self, call_id, error: ProtocolError) -> None:
        self.endpoint.metrics.errors.labels(error.code).inc()
        self._send({"reply": call_id, "error": error.envelope()})

    def _send(self, value: Any) -> None:
        if self.closed:
            return
        try:
            try:
                self.transport.sendTextMessage(_json_text(value))
            except UnicodeEncodeError:  # a lone surrogate: escape it instead
                self.transport.sendTextMessage(json.dumps(value, separators=(",", ":"), allow_nan=False))
        except LocalProtocolError:
            # The closing handshake began (the peer's close came first): nothing more
            # goes out, and packets wait in the session for its next poll or socket.
            self.closed = True
            self._detach()
            return
        self.endpoint.frames_out.inc()

    # -- closing and keepalive -------------------------------------------------------------
    def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (docs/protocol.md#websocket-transport); idempotent. A
        subscribed session is unsubscribed now, so its idle timer starts."""
        if self.closed:
            return
        self.closed = True
        self._disarm()
        self._detach()
        try:
            self.transport.loseConnection(code, reason)
        except LocalProtocolError:
            self.transport.transport.loseConnection()

    def _arm(self) -> None:
        router = self.endpoint.ctx.router
        self._timer = router.timers.callLater(router.poll_hold, self._keepalive)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _keepalive(self) -> None:
        """Every ``poll_hold`` seconds: abort a peer silent since the last ping (so a
        dead one is gone within twice the hold), end a session past ``session_max``
        (docs/design.md#d19-session-lifetime), else ping again."""
        self._timer = None
        if self.closed:
            return
        if not self.heard:
            self.closed = True
            self._detach()  # packets from now on wait in the session
            self.transport.transport.abortConnection()
            return
        session = self.session
        if session is not None and self.endpoint.ctx.router.clock.seconds() >= session.expires_at:
            try:
                self.endpoint.ctx.router.session(session.ticket)  # ends it: 4404 through session_closed
            except NotFound:
                return
        self.heard = False
        try:
            self.transport.ping(b"")
        except LocalProtocolError:
            return
        self._arm()
