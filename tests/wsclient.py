"""A small WebSocket client for the tests (wsproto over a Twisted TCP connection).

Unlike ``twisted.web.websocket.WebSocketClientEndpoint`` it can send any handshake
headers (``Origin``), stop answering pings (a dead peer), send binary and oversized
frames, and it records the close code the server sent.
"""
import json
from urllib.parse import urlsplit

from twisted.internet import defer, endpoints, protocol, reactor
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData,
                            Request, TextMessage)

#: Seconds a test waits for a frame or a close before it fails (never a timing assertion).
WAIT_S = 10


class Rejected(Exception):
    """The handshake was answered with an HTTP status: ``status``, ``headers``, ``body``."""

    def __init__(self, status, headers, body):
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)


class WSClient(protocol.Protocol):
    """One client socket. :attr:`accepted` fires with the ``AcceptConnection`` event or
    fails with :class:`Rejected`; :meth:`next` gives the next text frame (parsed JSON);
    :attr:`closed` fires with the server's close code (None: the TCP connection ended
    without a close frame)."""

    def __init__(self, host, path, headers=(), answer_pings=True):
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host, self.path, self.headers = host, path, list(headers)
        self.answer_pings = answer_pings
        self.accepted = defer.Deferred()
        self.closed = defer.Deferred()
        self.frames = defer.DeferredQueue()
        self.pings = 0
        self.close_code = None
        self._text = ""
        self._reject = None

    def connectionMade(self):
        self.transport.write(self.ws.send(Request(host=self.host, target=self.path, extra_headers=self.headers)))

    def dataReceived(self, data):
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted.callback(event)
            elif isinstance(event, RejectConnection):
                self._reject = Rejected(event.status_code, {k.decode().lower(): v.decode() for k, v in event.headers},
                                        b"")
                if not event.has_body:
                    self.accepted.errback(self._reject)
            elif isinstance(event, RejectData):
                self._reject.body += event.data
                if event.body_finished:
                    self.accepted.errback(self._reject)
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    text, self._text = self._text, ""
                    self.frames.put(json.loads(text))
            elif isinstance(event, Ping):
                self.pings += 1
                if self.answer_pings:
                    self.transport.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state is not ConnectionState.CLOSED:
                    self.transport.write(self.ws.send(event.response()))
                self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.accepted.called:
            self.accepted.errback(reason)
        if not self.closed.called:
            self.closed.callback(self.close_code)

    # -- the test's side --------------------------------------------------------------
    def send(self, text):
        """Send a text frame (a dict is sent as JSON)."""
        if not isinstance(text, str):
            text = json.dumps(text)
        self.transport.write(self.ws.send(TextMessage(text)))

    def send_bytes(self, data):
        self.transport.write(self.ws.send(BytesMessage(data)))

    def close(self, code=1000):
        """Start the closing handshake; :attr:`closed` fires when the server has closed."""
        if self.ws.state is ConnectionState.OPEN:
            self.transport.write(self.ws.send(CloseConnection(code)))
        return self.closed

    async def next(self):
        """The next text frame, parsed."""
        d = self.frames.get()
        d.addTimeout(WAIT_S, reactor)
        return await d

    async def wait_closed(self):
        """The server's close code (None when it only dropped the connection)."""
        if not self.closed.called:
            self.closed.addTimeout(WAIT_S, reactor)
        return await self.closed


async def connect(base, path="/ws", headers=(), answer_pings=True):
    """Open a socket to ``base`` (``http://host:port``) + ``path`` and wait for the
    handshake. :raises Rejected: the server answered the handshake with a status."""
    parts = urlsplit(base)
    client = WSClient(parts.netloc, path, headers, answer_pings)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, parts.hostname, parts.port)
    await endpoints.connectProtocol(endpoint, client)
    client.accepted.addTimeout(WAIT_S, reactor)
    await client.accepted
    return client


async def subscribe(base, ticket, ack=None, path="/ws", domain="test.local", **kw):
    """Connect, send ``subscribe``, and return ``(client, first envelope)``."""
    client = await connect(base, path, **kw)
    client.send(f"subscribe {domain} {ticket}" + (f" {ack}" if ack is not None else ""))
    return client, await client.next()


def fragment(client, text, finished):
    """Send ``text`` as one fragment of a message (``finished`` False: more follows)."""
    client.transport.write(client.ws.send(TextMessage(text, message_finished=finished)))
