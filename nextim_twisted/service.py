"""The daemon as one Twisted service tree: storage, the directory, the webhooks, the
XMPP bridge, the retention job, the web listener, the GC schedule and the stall
monitor, each a child service, started one after the other in that order and stopped
in the reverse order (docs/design.md#d16-shutdown): parked polls are answered and the
listener closed first, then the bridge, the webhooks (their last events written to the
outbox), storage last.

The parts themselves are built by :func:`nextim_twisted.compose.compose`.
"""
import os
import secrets

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from . import demo as demo_data
from . import logs
from .compose import compose
from .gcschedule import GcSchedule
from .retention import KeyRetention, Retention
from .store.base import SchemaError
from .web.metrics import StallMonitor

log = Logger()

#: Seconds the answers to parked polls get to leave the socket buffers before the
#: listener closes (docs/design.md#d16-shutdown).
DRAIN_S = 0.2


class StorageService(service.Service):
    """Opens the store (creating or upgrading the schema) and loads the login-cookie
    key; closes the store last on stop."""

    def __init__(self, store, auth):
        self.setName("storage")
        self.store = store
        self.auth = auth

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self):
        await self.store.start()
        key = await self.store.get_or_create_meta("login_cookie_key", lambda: secrets.token_hex(32))
        self.auth.set_cookie_key(key)

    def stopService(self):
        super().stopService()
        return self.store.close()


class DirectoryService(service.Service):
    """The directory (docs/integration.md): releases the HTTP provider's connections on
    stop (the local one holds none)."""

    def __init__(self, directory):
        self.setName("directory")
        self.directory = directory

    def startService(self):
        super().startService()
        return self.directory.start()

    def stopService(self):
        super().stopService()
        return self.directory.stop()


class BridgeService(service.Service):
    """The XMPP bridge: connects in the background once storage is up (the web side
    never waits for it); on stop tells XMPP every web user is gone."""

    def __init__(self, bridge):
        self.setName("xmpp")
        self.bridge = bridge

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self.bridge.start())

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self.bridge.stop())


class DirectoryWatchService(service.Service):
    """Reads the directory changes of ``nextimctl`` and other nodes once a second and
    applies them to live sessions (:class:`~nextim_twisted.handlers.directory.DirectoryWatch`,
    docs/design.md#d19-session-lifetime); starts after storage."""

    def __init__(self, watch):
        self.setName("directory-watch")
        self.watch = watch

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self.watch.start())

    def stopService(self):
        super().stopService()
        self.watch.stop()


class DemoDataService(service.Service):
    """``--demo``: seeds demo users and a room into an empty database before the
    listener opens. Nothing to stop."""

    def __init__(self, ctx):
        self.setName("demo")
        self.ctx = ctx

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self):
        ctx = self.ctx
        if await demo_data.seed(ctx.store, ctx.auth.blocking, ctx.now_ms()):
            log.info("demo data created: users {users} (each password equals the user name), room lobby",
                     users=", ".join(u for u, _ in demo_data.DEMO_USERS))


class WebService(service.Service):
    """Listens on ``[server] listen`` with the web app's site. On stop: refuses new
    calls, answers every parked poll with an empty batch and closes every WebSocket with
    1001 (docs/design.md#d21-websocket), lets the answers drain for
    :data:`DRAIN_S`, then stops listening (docs/design.md#d16-shutdown).

    :ivar port: the listening port once started (``getHost()`` tells the address).
    """

    def __init__(self, web, ctx, listen, reactor):
        self.setName("web")
        self.web = web
        self.ctx = ctx
        self.listen = listen
        self.reactor = reactor
        self.port = None

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._start())

    async def _start(self):
        endpoint = endpoints.serverFromString(self.reactor, self.listen)
        self.port = await endpoint.listen(self.web.site())  # access log + metrics per request

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        self.ctx.shutting_down = True
        router = self.ctx.router
        parked = router.stats()["parked_polls"]
        router.shutdown()  # subscribed WebSockets are closed with 1001 here
        sockets = self.web.sockets
        if sockets is not None:
            parked += sockets.close_all()  # and those that had not subscribed yet
        if parked:
            log.info("answered {n} parked polls and WebSockets before stopping", n=parked)
            await task.deferLater(self.reactor, DRAIN_S, lambda: None)
        if self.port is not None:
            await self.port.stopListening()


class StallMonitorService(service.Service):
    """Runs the web layer's :class:`~nextim_twisted.web.metrics.StallMonitor`
    (reactor lag and GC pause metrics) while the daemon serves."""

    def __init__(self, monitor):
        self.setName("stall-monitor")
        self.monitor = monitor

    def startService(self):
        super().startService()
        self.monitor.start()

    def stopService(self):
        super().stopService()
        self.monitor.stop()


class NextimService(service.MultiService):
    """The daemon: its parts from :func:`~nextim_twisted.compose.compose`, run as child
    services. Unlike a plain ``MultiService`` the children start one at a time, each
    after the previous one's Deferred fired, and stop one at a time in reverse order, so
    storage is open before anything uses it and closed after everything else.

    :param config: validated :class:`~nextim_twisted.config.Config`.
    :param reactor: the reactor (only ``tap.py`` and ``nextim.tac`` pass the global one).
    :param demo: seed demo data into an empty database (``twistd nextim --demo``).

    :ivar ready: Deferred of the start-up (None before :meth:`startService`); a start-up
        failure is logged and exits the process (non-zero).
    """

    def __init__(self, config, reactor, demo=False):
        super().__init__()
        self.setName("nextim")
        self.config = config
        self.reactor = reactor
        self.demo = demo
        self.parts = parts = compose(config, reactor)
        self.store, self.router, self.auth = parts.store, parts.router, parts.auth
        self.ctx, self.web, self.xmpp = parts.ctx, parts.web, parts.xmpp
        self.ready = None
        StorageService(parts.store, parts.auth).setServiceParent(self)
        DirectoryService(parts.directory).setServiceParent(self)
        if parts.cluster is not None:
            # After storage, before the listener: a node serves only once it holds its
            # id in the cluster; it stops after the listener (docs/design.md#d20-cluster).
            from .hub.cluster import ClusterService
            ClusterService(parts.cluster).setServiceParent(self)
        if parts.webhooks is not None:
            # After storage: delivers what the outbox kept from before the restart, and on
            # stop writes its last events before the store closes.
            parts.webhooks.setServiceParent(self)
        DirectoryWatchService(parts.watch).setServiceParent(self)
        # forget client_id keys older than [limits] client_id_hours, hourly
        KeyRetention(parts.store, reactor, config.limits.client_id_hours).setServiceParent(self)
        if parts.xmpp is not None:
            BridgeService(parts.xmpp).setServiceParent(self)
        self.retention = None
        if config.storage.retention_days > 0:
            # purge now and every 24 h ([storage] retention_days)
            self.retention = Retention(parts.store, reactor, config.storage.retention_days)
            self.retention.setServiceParent(self)
        if demo:
            DemoDataService(parts.ctx).setServiceParent(self)
        self.listener = WebService(parts.web, parts.ctx, config.server.listen, reactor)
        self.listener.setServiceParent(self)
        self.gc_schedule = None
        if config.server.gc_tuning:
            self.gc_schedule = GcSchedule(reactor)
            self.gc_schedule.setServiceParent(self)
        StallMonitorService(StallMonitor(parts.web.metrics, reactor)).setServiceParent(self)

    @property
    def port(self):
        """The listening port, once started."""
        return self.listener.port

    def setServiceParent(self, parent):
        """Attach to ``parent``; a twistd application also gets the ``[log]`` observer
        (format, level), which twistd uses instead of its own (see :mod:`.logs`)."""
        logs.install(parent, self.config.log)
        return super().setServiceParent(parent)

    def startService(self):
        service.Service.startService(self)  # not MultiService's: one child at a time
        self.ready = defer.ensureDeferred(self._start())
        self.ready.addErrback(self._failed)

    async def _start(self):
        for child in list(self):
            if not self.running:
                return  # stopped while starting: stopService stops what did start
            await defer.maybeDeferred(child.startService)
        log.info("nextim-twisted serving {url}/ (storage: {backend})", url=self.config.public_url,
                 backend=self.config.storage.backend)
        if self.demo:
            log.info("demo: open {url}/ and log in as alice/alice, bob/bob or carol/carol",
                     url=self.config.public_url)

    def _failed(self, failure):
        log.critical("nextim-twisted cannot start: {error}", error=failure.getErrorMessage() or failure.type.__name__)
        # A daemon that cannot serve must not look alive to systemd: exit non-zero. A schema
        # newer than the code cannot be fixed by restarting: exit 2, which the unit's
        # RestartPreventExitStatus does not restart (etc/nextim.service).
        status = 2 if failure.check(SchemaError) else 1
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        for child in reversed(list(self)):
            if child.running:
                await defer.maybeDeferred(child.stopService)
