"""The daemon as one Twisted service: storage, live state, handlers and the web
listener, started and stopped in order (D16)."""
import os
import secrets

from twisted.application import service
from twisted.internet import defer, endpoints, task, threads
from twisted.logger import Logger

from . import demo, logs
from .gcschedule import GcSchedule
from .auth import Authenticator
from .core.router import Router
from .handlers.context import Context
from .handlers.directory import DirectoryWatch
from .retention import Retention
from .store.base import SchemaError
from .store.sql import SQLStore
from .web.app import WebApp
from .web.metrics import StallMonitor

log = Logger()


def make_store(config, reactor):
    """The configured storage backend (not started)."""
    storage = config.storage
    if storage.backend == "postgres":
        return SQLStore.postgres(storage.dsn, schema=storage.schema, reactor=reactor)
    return SQLStore.sqlite(os.path.abspath(storage.path), synchronous=storage.synchronous.upper(),
                           reactor=reactor)


class NextimService(service.Service):
    """Starts storage, then listens; on stop answers parked polls, stops listening,
    then closes storage (D16).

    :param config: validated :class:`~nextim_twisted.config.Config`.
    :param reactor: the reactor (only ``tap.py`` passes the global one).
    :param demo: seed demo data into an empty database (issue 3).
    """

    name = "nextim"

    def __init__(self, config, reactor, demo=False):
        self.config = config
        self.reactor = reactor
        self.demo = demo
        self.store = make_store(config, reactor)
        timers, limits = config.timers, config.limits
        self.router = Router(reactor, timers.poll_hold, timers.session_idle, timers.user_grace,
                             limits.queue_packets, config.server.room_presences, timers.session_max)
        blocking = lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)  # noqa: E731
        self.auth = Authenticator(config, self.store, self.router, blocking, reactor)
        self.ctx = Context(config, self.store, self.router, self.auth, reactor)
        # XMPP bridge (issue 7): built here, connected once storage is up.
        self.xmpp = None
        if config.xmpp.enabled:
            from .xmpp.bridge import Bridge
            self.xmpp = self.ctx.xmpp = Bridge(self.ctx, config.xmpp, reactor)
        self.web = WebApp(self.ctx)
        self.port = None
        self.ready = None
        self.retention = None
        self.stalls = StallMonitor(self.web.metrics, reactor)
        self.gc_schedule = None  # [server] gc_tuning (gcschedule.py)
        # nextimctl's (and other nodes') directory changes reach live sessions within a second
        self.directory_watch = DirectoryWatch(self.ctx, reactor)

    def setServiceParent(self, parent):
        """Attach to ``parent``; a twistd application also gets the ``[log]`` observer
        (format, level), which twistd uses instead of its own (see :mod:`.logs`)."""
        logs.install(parent, self.config.log)
        super().setServiceParent(parent)

    def startService(self):
        super().startService()
        self.ready = defer.ensureDeferred(self._start())
        self.ready.addErrback(self._failed)

    async def _start(self):
        await self.store.start()
        key = await self.store.get_or_create_meta("login_cookie_key", lambda: secrets.token_hex(32))
        self.auth.set_cookie_key(key)
        await self.directory_watch.start()
        if self.xmpp is not None:
            await self.xmpp.start()  # connects in the background; the web side never waits for it
        if self.config.storage.retention_days > 0:
            # purge now and every 24 h (issue 5: [storage] retention_days)
            self.retention = Retention(self.store, self.reactor, self.config.storage.retention_days)
            self.retention.start()
        if self.demo and await demo.seed(self.store, self.auth.blocking, self.ctx.now_ms()):
            log.info("demo data created: users {users} (each password equals the user name), room lobby",
                     users=", ".join(u for u, _ in demo.DEMO_USERS))
        site = self.web.site()  # access log + metrics per request (web/metrics.py)
        endpoint = endpoints.serverFromString(self.reactor, self.config.server.listen)
        self.port = await endpoint.listen(site)
        if self.config.server.gc_tuning:
            self.gc_schedule = GcSchedule(self.reactor).start()
        self.stalls.start()
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
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        self.ctx.shutting_down = True
        self.stalls.stop()
        self.directory_watch.stop()
        if self.gc_schedule is not None:
            self.gc_schedule.stop()
        if self.retention is not None:
            self.retention.stop()
        parked = self.router.stats()["parked_polls"]
        self.router.shutdown()
        if parked:
            log.info("answered {n} parked polls before stopping", n=parked)
            # Let the answers leave the socket buffers before connections are dropped.
            await task.deferLater(self.reactor, 0.2, lambda: None)
        if self.port is not None:
            await self.port.stopListening()
        if self.xmpp is not None:
            await self.xmpp.stop()
        await self.store.close()
