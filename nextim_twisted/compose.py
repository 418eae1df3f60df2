"""The composition root: the one place the daemon's parts are built and wired.

Dependency order (each part gets only what is built before it):

1. the store (``[storage]``, :func:`~nextim_twisted.store.make_store`), unless given;
2. the router with its hub (``[timers]``, ``[limits]``; the hub defaults to
   :class:`~nextim_twisted.hub.local.LocalHub`; with ``[cluster]`` it is the
   :class:`~nextim_twisted.hub.cluster.ClusterNode`'s hub and arbiter,
   docs/design.md#d20-cluster);
3. the authenticator (docs/design.md#d13-identity);
4. the directory (``[directory] provider``: the store's tables or the host site over
   HTTP) and the webhooks (``[webhooks] url``; a router observer), docs/integration.md;
5. the handlers' context, which builds the XMPP bridge when ``[xmpp] enabled``
   (the bridge needs the context, the context holds the bridge: the context calls the
   factory it is given, so nothing is set on it afterwards);
6. the web app (:class:`~nextim_twisted.web.app.WebApp`), whose metrics also read the
   directory's and the webhooks' counters.
7. the directory-changes watch, which applies directory changes made by ``nextimctl``
   or other nodes to live sessions
   (:class:`~nextim_twisted.handlers.directory_changes.DirectoryWatch`,
   docs/design.md#d19-session-lifetime).

Nothing here starts anything: :class:`~nextim_twisted.service.NextimService` starts and
stops the parts in order (docs/design.md#d16-shutdown); the tests' harness and
``nextimctl`` use the same parts without the service.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import threads
from twisted.internet.defer import Deferred

from .auth import Authenticator
from .directory import make_directory
from .directory.base import IDirectory
from .core.router import HubFactory, Router
from .handlers.context import Context
from .handlers.directory_changes import DirectoryWatch
from .hub.base import IHub
from .hub.local import LocalHub
from .store import make_store
from .store.base import Store

if TYPE_CHECKING:
    from .config import Config
    from .hub.cluster import ClusterNode
    from .webhooks.worker import Webhooks
    from .web.app import WebApp
    from .xmpp.bridge import Bridge

#: ``blocking(f, *args)`` runs ``f(*args)`` off the reactor thread: Deferred of its result.
Blocking = Callable[..., Deferred]


@dataclass
class Components:
    """The wired parts of one daemon (none started)."""

    config: Config
    store: Store
    router: Router
    hub: IHub
    auth: Authenticator
    ctx: Context
    xmpp: Bridge | None
    web: WebApp | None
    directory: IDirectory
    webhooks: Webhooks | None
    watch: DirectoryWatch
    cluster: ClusterNode | None = None


def compose(config: Config, reactor: Any, *, store: Store | None = None, clock: Any = None,
            blocking: Blocking | None = None, xmpp: bool | None = None, web: bool = True,
            hub: HubFactory = LocalHub) -> Components:
    """Build and wire the daemon's parts.

    :param config: validated :class:`~nextim_twisted.config.Config`.
    :param reactor: the reactor for network and threads (only ``tap.py`` and
        ``nextim.tac`` pass the global one).
    :param store: an existing store (tests); default: the configured one, not started.
    :param clock: ``IReactorTime`` for the router's timers, token expiry and timestamps;
        default ``reactor`` (tests pass a ``Clock``).
    :param blocking: how password hashing leaves the reactor thread; default the
        reactor's thread pool.
    :param xmpp: build the XMPP bridge; default ``[xmpp] enabled``.
    :param web: build the web app (``nextimctl`` does not serve).
    :param hub: the hub factory given to the router.
    """
    clock = reactor if clock is None else clock
    if store is None:
        store = make_store(config, reactor)
    if blocking is None:
        def blocking(f, *args):
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    timers, limits = config.timers, config.limits
    node = None
    arbiter = None
    node_id = ""
    if config.cluster.enabled:
        from .hub.cluster import ClusterNode
        node = ClusterNode(config.cluster, timers.user_grace, reactor)
        hub, arbiter, node_id = node.hub_factory, node.arbiter, node.node_id
    router = Router(clock, timers.poll_hold, timers.session_idle, timers.user_grace,
                    limits.queue_packets, config.server.room_presences, hub=hub,
                    session_max=timers.session_max, arbiter=arbiter, node_id=node_id)
    auth = Authenticator(config, store, router, blocking, clock)
    directory = make_directory(config, store, reactor, clock)
    webhooks = None
    if config.webhooks.url:
        from .webhooks.worker import Webhooks
        webhooks = Webhooks(config.webhooks, store, reactor, clock)
        router.add_observer(webhooks)
    bridge_factory = None
    if config.xmpp.enabled if xmpp is None else xmpp:
        from .xmpp.bridge import Bridge

        def bridge_factory(ctx: Context) -> Bridge:
            return Bridge(ctx, config.xmpp, reactor)
    ctx = Context(config, store, router, auth, clock, xmpp=bridge_factory, directory=directory,
                  webhooks=webhooks, cluster=node)
    if node is not None:
        from .handlers.live import attach_cluster
        attach_cluster(router, node)
    app = None
    if web:
        from .hostsite.metrics import SiteCollector
        from .web.app import WebApp
        app = WebApp(ctx)
        app.metrics.registry.register(SiteCollector(directory, webhooks))
    return Components(config=config, store=store, router=router, hub=router.hub, auth=auth, ctx=ctx,
                      xmpp=ctx.xmpp, web=app, directory=directory, webhooks=webhooks,
                      watch=DirectoryWatch(ctx, clock), cluster=node)
