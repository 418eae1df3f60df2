"""The one module that knows txredisapi: a command connection and a subscriber
connection to one Redis server, with the library's known gaps closed here.

txredisapi speaks RESP well, but four of its habits do not fit a daemon that must not
lose a subscription or hang on a dead peer; each is handled in this module only:

1. **It imports the global reactor** (``LineReceiver.callLater``, its pool's
   ``ClientService`` and zero-delay calls). Here only its protocol classes are used: the
   connections are made by our own :class:`~twisted.application.internet.ClientService`
   on the injected reactor, and every protocol's ``callLater`` is the injected one, so
   reply timeouts, reconnect back-off and keepalives all run on a ``Clock`` in tests.
2. **No resubscribe after a reconnect.** A new subscriber connection starts with no
   channels; :class:`RedisClient` remembers its channels and subscribes to all of them
   again before it reports itself up. Messages published while it was down are lost
   (Redis pub/sub is at-most-once), so every reconnect is reported to ``on_state`` and
   the caller refills the gap from durable storage (docs/design.md#d20-cluster).
3. **No keepalive.** A peer that vanishes without a FIN (a dropped route, a paused VM)
   leaves the connection open for ever. :class:`RedisClient` sends ``PING`` on both
   connections every ``keepalive`` seconds; an answer that does not come within
   ``reply_timeout`` aborts the connection, which reconnects.
4. **It stops for good after an error during AUTH** (it calls ``stopTrying`` on its
   factory). Here AUTH is sent by our protocol subclass, a refusal is logged and the
   connection dropped, and the reconnect back-off goes on: a password fixed on the server
   is picked up without restarting the daemon.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

log = Logger()

#: Raised by :meth:`RedisClient.execute` while the command connection is down.
RedisUnavailable = txredisapi.ConnectionError

OnMessage = Callable[[str, bytes], None]
OnState = Callable[[bool], None]


class RedisURLError(ValueError):
    """A ``redis_url`` that cannot be used; ``str(err)`` says what is wrong with it."""


def parse_redis_url(url: str) -> dict:
    """``redis://[[user]:password@]host[:port][/db]`` → ``{host, port, db, username, password}``.

    Only plain TCP (``redis://``) is supported: the daemon's nodes and Redis share a
    private network, and a TLS terminator can sit in front of Redis if they do not.

    :raises RedisURLError: another scheme, a bad port or a database that is not a number.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise RedisURLError(f"must start with redis:// (got {parts.scheme or 'no'} scheme)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise RedisURLError("bad port") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise RedisURLError(f"database must be a number, got {path!r}")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "db": int(path) if path else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }


class _ConnectionFactory(Factory):
    """Builds one kind of txredisapi protocol for our ClientService.

    It also stands in for the txredisapi factory the protocol talks back to: its
    ``stopTrying`` only logs, so nothing in the library can end our reconnecting.
    """

    isLazy = False
    #: The subscriber factory's ``on_message(channel, payload)``.
    on_message: OnMessage | None = None

    def __init__(self, protocol_class: type, reactor: IReactorTime, options: dict, reply_timeout: float):
        self.protocol_class = protocol_class
        self.reactor = reactor
        self.options = options
        self.reply_timeout = reply_timeout

    def buildProtocol(self, addr):
        proto = self.protocol_class(replyTimeout=self.reply_timeout, dbid=self.options["db"] or None)
        proto.factory = self
        proto.callLater = self.reactor.callLater  # gap 1: the injected reactor, not the global one
        proto.auth_as = (self.options["username"], self.options["password"])
        return proto

    def stopTrying(self):
        log.debug("txredisapi asked to stop reconnecting; the client keeps trying")

    def connectionError(self, why):
        log.warn("Redis connection error: {why}", why=why)


class _AuthMixin:
    """AUTH sent by us, so that a refusal drops this connection and the reconnect goes on
    (gap 4). ``auth_as`` is ``(username, password)``; SELECT is left to txredisapi."""

    auth_as: tuple = (None, None)

    @defer.inlineCallbacks
    def connectionMade(self):
        username, password = self.auth_as
        if password is not None:
            try:
                reply = yield self.auth(password, username)
                if isinstance(reply, Exception):
                    raise reply
            except Exception as e:
                log.error("Redis refused AUTH ({error}); retrying with back-off", error=str(e))
                self.transport.loseConnection()
                return
        yield super().connectionMade()


class _CommandProtocol(_AuthMixin, txredisapi.RedisProtocol):
    pass


class _SubscriberProtocol(_AuthMixin, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.on_message(channel.decode() if isinstance(channel, bytes) else channel, message)


class RedisClient:
    """A command connection and a subscriber connection to one Redis server.

    :param reactor: the injected reactor (``IReactorTime`` and ``IReactorTCP``).
    :param url: ``redis://[[user]:password@]host[:port][/db]`` (:func:`parse_redis_url`).
    :param on_message: ``on_message(channel: str, payload: bytes)`` for each pub/sub message.
    :param on_state: ``on_state(up: bool)``: ``True`` once both connections are up and every
        remembered channel is subscribed again, ``False`` when either is lost. Between a
        ``False`` and the next ``True``, published messages were missed.
    :param keepalive: seconds between PINGs on each connection (gap 3).
    :param reply_timeout: seconds a command may take before its connection is aborted.
    :raises RedisURLError: from the constructor, for a bad ``url``.
    """

    def __init__(self, reactor, url: str, on_message: OnMessage, on_state: OnState | None = None,
                 keepalive: float = 5.0, reply_timeout: float = 5.0):
        self.reactor = reactor
        self.options = parse_redis_url(url)
        self.on_state = on_state or (lambda up: None)
        self.keepalive = keepalive
        self.channels: set[str] = set()
        self.command: _CommandProtocol | None = None
        self.subscriber: _SubscriberProtocol | None = None
        self.up = False
        self._stopping = False
        self._waiters: list[defer.Deferred] = []
        # Connections that were made but never became usable (AUTH refused): counted so
        # that the back-off keeps growing instead of restarting at each TCP connect.
        self._unusable = {"command": 0, "subscriber": 0}
        endpoint = HostnameEndpoint(reactor, self.options["host"], self.options["port"], timeout=reply_timeout)
        backoff = backoffPolicy(initialDelay=0.5, maxDelay=10.0)

        def retry_as(role: str):
            return lambda attempt: backoff(max(attempt, self._unusable[role]))
        cmd_factory = _ConnectionFactory(_CommandProtocol, reactor, self.options, reply_timeout)
        sub_factory = _ConnectionFactory(_SubscriberProtocol, reactor, self.options, reply_timeout)
        sub_factory.on_message = on_message
        # (mypy does not see zope's implementer: the endpoint and factories provide the
        # interfaces ClientService asks for.)
        self._services = [
            ClientService(endpoint, cmd_factory, retryPolicy=retry_as("command"),  # type: ignore[arg-type]
                          clock=reactor, prepareConnection=self._command_made),
            ClientService(endpoint, sub_factory, retryPolicy=retry_as("subscriber"),  # type: ignore[arg-type]
                          clock=reactor, prepareConnection=self._subscriber_made),
        ]
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = reactor

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting with back-off) in the background."""
        self._stopping = False
        for service in self._services:
            service.startService()
        if self.keepalive:
            self._pinger.start(self.keepalive, now=False)

    def when_up(self, timeout: float | None = None) -> defer.Deferred:
        """Deferred that fires once both connections are ready and resubscribed. With
        ``timeout`` seconds it fails with :class:`RedisUnavailable` when they are not."""
        if self.up:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, self.reactor)

            def unavailable(failure):
                failure.trap(defer.TimeoutError)
                raise RedisUnavailable(f"Redis not reachable within {timeout} s")
            d.addErrback(unavailable)
        return d

    def stop(self) -> defer.Deferred:
        """Close both connections and stop reconnecting; fires when they are closed."""
        self._stopping = True
        if self._pinger.running:
            self._pinger.stop()
        return defer.gatherResults([s.stopService() for s in self._services], consumeErrors=True)

    # -- commands -------------------------------------------------------------------

    def execute(self, *args) -> defer.Deferred:
        """Run one Redis command on the command connection.

        :returns: Deferred with the reply (bytes decoded as UTF-8 by txredisapi).
        :raises RedisUnavailable: (as the Deferred's failure) while the connection is down.
        """
        if self.command is None or not self.command.connected:
            return defer.fail(RedisUnavailable("Redis is not connected"))
        return self.command.execute_command(*args)

    def publish(self, channel: str, payload: bytes | str) -> defer.Deferred:
        """``PUBLISH``; Deferred of the number of subscribers that received it."""
        return self.execute("PUBLISH", channel, payload)

    def subscribe(self, channels: Iterable[str]) -> defer.Deferred:
        """Remember ``channels`` and subscribe to them now if connected; they are
        subscribed again after every reconnect (gap 2)."""
        new = [c for c in channels if c not in self.channels]
        self.channels.update(new)
        if new and self.subscriber is not None and self.subscriber.connected:
            return self.subscriber.subscribe(new)
        return defer.succeed(None)

    def unsubscribe(self, channels: Iterable[str]) -> defer.Deferred:
        """Forget ``channels`` and unsubscribe from them if connected."""
        gone = [c for c in channels if c in self.channels]
        self.channels.difference_update(gone)
        if gone and self.subscriber is not None and self.subscriber.connected:
            return self.subscriber.unsubscribe(gone)
        return defer.succeed(None)

    # -- connection events ------------------------------------------------------------

    # ClientService's prepareConnection hooks must not wait for AUTH: a connection lost
    # while they wait would leave its state machine with no transition. They only arm
    # callbacks for when the connection becomes usable.

    def _command_made(self, proto):
        self._unusable["command"] += 1
        proto.whenConnected().addCallback(self._ready, "command")

    def _subscriber_made(self, proto):
        self._unusable["subscriber"] += 1

        def resubscribe(_):
            if self.channels:
                return proto.subscribe(sorted(self.channels))
        d = proto.whenConnected().addCallback(resubscribe)
        d.addCallback(lambda _: self._ready(proto, "subscriber"))
        d.addErrback(lambda f: log.warn("Redis resubscribe failed: {e}", e=f.getErrorMessage()))

    def _ready(self, proto, role: str):
        self._unusable[role] = 0
        setattr(self, role, proto)
        lost = proto.connectionLost

        def connection_lost(reason):
            try:
                return lost(reason)
            finally:
                self._lost(proto, role)
        proto.connectionLost = connection_lost
        self._update()

    def _lost(self, proto, role: str):
        if getattr(self, role) is proto:
            setattr(self, role, None)
        if not self._stopping:
            log.warn("Redis {role} connection lost; reconnecting", role=role)
        self._update()

    def _update(self):
        up = self.command is not None and self.subscriber is not None
        if up != self.up:
            self.up = up
            self.on_state(up)
            if up:
                waiters, self._waiters = self._waiters, []
                for d in waiters:
                    d.callback(None)

    def _ping(self):
        for proto in (self.command, self.subscriber):
            if proto is not None and proto.connected:
                # A missing answer aborts the connection after reply_timeout (gap 3); a
                # failure here is that abort, which reconnects: nothing more to do.
                proto.ping().addErrback(lambda f: None)
