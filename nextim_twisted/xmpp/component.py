"""The XEP-0114 component connection: connect, authenticate with the shared secret,
reconnect with exponential backoff, and queue outgoing stanzas (bounded) while down.

Built on ``twisted.words.protocols.jabber`` (component authenticator, XmlStream) and
``twisted.application.internet.ClientService`` (reconnect with a backoff policy).
A refusal of the handshake (``not-authorized``: wrong secret; ``host-unknown``: the
server has no such component) is logged once, critically, and the connection stops
for good: retrying with the same secret cannot help, and an operator needs one clear
log line rather than a loop.
"""
from collections import deque

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.words.protocols.jabber import component, error, xmlstream

log = Logger()

#: Stream errors during the handshake that mean "the configuration is wrong".
FATAL_CONDITIONS = {"not-authorized": "wrong [xmpp] secret", "host-unknown": "unknown [xmpp] component_domain"}


class ComponentConnection:
    """One component stream to the XMPP server.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime`` (retries use it).
    :param host: XMPP server host; :param port: its component port (XEP-0114, often 5347).
    :param domain: the component's domain (``[xmpp] component_domain``).
    :param secret: the shared secret.
    :param on_stanza: ``callable(element)`` for every top-level stanza received.
    :param on_connected: ``callable()`` after each successful handshake, before the
        queue is flushed (the bridge re-sends presence and rejoins rooms there).
    :param on_disconnected: ``callable()`` when an authenticated stream ends.
    :param min_backoff: first retry delay in seconds; :param max_backoff: the largest.
    :param max_queue: stanzas kept while disconnected; beyond that :meth:`send` refuses.
    """

    def __init__(self, reactor, host, port, domain, secret, on_stanza, on_connected=None,
                 on_disconnected=None, min_backoff=1.0, max_backoff=60.0, max_queue=1000):
        self.reactor = reactor
        self.host, self.port, self.domain = host, port, domain
        self.on_stanza = on_stanza
        self.on_connected = on_connected or (lambda: None)
        self.on_disconnected = on_disconnected or (lambda: None)
        self.max_queue = max_queue
        self.queue = deque()
        self.xs = None            # the authenticated XmlStream, or None
        self.fatal = None         # the configuration error that stopped us, or None
        self.connections = 0      # successful handshakes so far
        self.dropped = 0          # stanzas refused because the queue was full
        self.refused = 0          # stanzas not sent because the configuration was refused
        self._was_up = False
        factory = component.componentFactory(domain, secret)
        factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._authenticated)
        factory.addBootstrap(xmlstream.STREAM_ERROR_EVENT, self._stream_error)
        factory.addBootstrap(xmlstream.STREAM_END_EVENT, self._ended)
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=10)
        self.service = ClientService(endpoint, factory, clock=reactor,
                                     retryPolicy=backoffPolicy(initialDelay=min_backoff, maxDelay=max_backoff))

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        """Start connecting (and reconnecting) in the background."""
        log.info("XMPP component {domain} connecting to {host}:{port}", domain=self.domain, host=self.host,
                 port=self.port)
        self.service.startService()

    def stop(self):
        """Close the stream and stop reconnecting. Deferred → None."""
        if self.xs is not None:
            self.xs.sendFooter()
        if not self.service.running:
            from twisted.internet import defer
            return defer.succeed(None)
        return self.service.stopService()

    @property
    def connected(self):
        """True while the stream is authenticated."""
        return self.xs is not None

    # -- sending -----------------------------------------------------------
    def can_send(self):
        """True if :meth:`send` with ``queue=True`` would take a stanza now."""
        return self.fatal is None and (self.xs is not None or len(self.queue) < self.max_queue)

    def send(self, element, queue=True):
        """Send a stanza now, or keep it for the next connection.

        :param queue: keep it while disconnected (messages, subscription requests);
            False for what is rebuilt after reconnecting anyway (presence, MUC joins).
        :returns: True if sent or queued; False if dropped (disconnected and not
            queued, the queue full, or stopped for a configuration error).
        """
        if self.xs is not None:
            self.xs.send(element)
            return True
        if self.fatal is not None:
            # Say the real cause, once: the bridge is off, not full.
            if not self.refused:
                log.warn("XMPP bridge is off ({condition}: {hint}); stanzas for XMPP are not sent until the "
                         "configuration is fixed and the daemon restarted", condition=self.fatal,
                         hint=FATAL_CONDITIONS[self.fatal])
            self.refused += 1
            return False
        if not queue:
            return False
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            log.warn("XMPP server unreachable and the send queue is full ({n} stanzas); dropping one",
                     n=len(self.queue))
            return False
        self.queue.append(element)
        return True

    # -- stream events -----------------------------------------------------
    def _authenticated(self, xs):
        self.xs = xs
        self.connections += 1
        xs.addObserver("/*", self._element)
        if self._was_up:
            log.info("XMPP component {domain} reconnected to {host}:{port}", domain=self.domain,
                     host=self.host, port=self.port)
        else:
            log.info("XMPP component {domain} connected to {host}:{port}", domain=self.domain,
                     host=self.host, port=self.port)
        self._was_up = True
        try:
            self.on_connected()
        except Exception:
            log.failure("XMPP on_connected failed")
        while self.queue and self.xs is xs:
            xs.send(self.queue.popleft())

    def _element(self, element):
        # Only stanzas: stream errors are dispatched as events, not elements.
        if element.name not in ("message", "presence", "iq"):
            return
        try:
            self.on_stanza(element)
        except Exception:
            log.failure("XMPP stanza handling failed")

    def _stream_error(self, reason):
        exc = reason.value
        condition = getattr(exc, "condition", None)
        if isinstance(exc, error.StreamError) and self.xs is None and condition in FATAL_CONDITIONS:
            self.fatal = condition
            log.critical("XMPP component {domain} refused by {host}:{port}: {condition} ({hint}); "
                         "the bridge stays off until the configuration is fixed and the daemon restarted",
                         domain=self.domain, host=self.host, port=self.port, condition=condition,
                         hint=FATAL_CONDITIONS[condition])
            self.queue.clear()
            self.service.stopService()
        else:
            log.warn("XMPP stream error from {host}:{port}: {condition}", host=self.host, port=self.port,
                     condition=condition or reason.getErrorMessage())

    def _ended(self, reason):
        if self.xs is None:
            return
        self.xs = None
        if self.service.running:
            log.warn("XMPP component {domain} lost its connection to {host}:{port}; reconnecting with backoff",
                     domain=self.domain, host=self.host, port=self.port)
        try:
            self.on_disconnected()
        except Exception:
            log.failure("XMPP on_disconnected failed")
