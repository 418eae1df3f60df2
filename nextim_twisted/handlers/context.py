"""What every handler works with: config, storage, live state, auth, clock, limits."""
from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.presence import normalize_show
from ..core.ratelimit import RateLimiter
from ..errors import BadRequest, Forbidden
from .live import ClusterLiveView, LiveView

if TYPE_CHECKING:
    from ..auth import Authenticator
    from ..config import Config
    from ..core.router import Clock, Router
    from ..directory.base import IDirectory
    from ..hub.base import IHub
    from ..hub.cluster import ClusterNode
    from ..store.base import Store
    from ..webhooks.worker import Webhooks
    from ..xmpp.bridge import Bridge


class Context:
    """Shared collaborators of the handlers.

    :param config: :class:`~nextim_twisted.config.Config`.
    :param store: a :class:`~nextim_twisted.store.base.Store`.
    :param router: the :class:`~nextim_twisted.core.router.Router`.
    :param auth: the :class:`~nextim_twisted.auth.Authenticator`.
    :param clock: ``IReactorTime``.
    :param xmpp: builds the XMPP bridge from this context (``callable(ctx)``), or None
        when the bridge is off; :mod:`nextim_twisted.compose` passes it.
    :param directory: where users, buddies and rooms are read
        (:class:`~nextim_twisted.directory.base.IDirectory`); default the store's own
        tables (:class:`~nextim_twisted.directory.local.LocalDirectory`).
    :param webhooks: the :class:`~nextim_twisted.webhooks.worker.Webhooks` when
        ``[webhooks] url`` is set, else None (docs/integration.md).
    """

    def __init__(self, config: Config, store: Store, router: Router, auth: Authenticator, clock: Clock,
                 xmpp: Callable[[Context], Bridge] | None = None, directory: IDirectory | None = None,
                 webhooks: Webhooks | None = None,
                 cluster: ClusterNode | None = None) -> None:
        self.config = config
        self.store = store
        self.router = router
        self.auth = auth
        self.clock = clock
        self.limiter = RateLimiter(clock, {
            "messages": config.limits.messages_per_minute,
            "presences": config.limits.presences_per_minute,
            "onlines": config.limits.onlines_per_minute,
        })
        self.shutting_down = False
        #: The cluster node, or None for a single daemon.
        self.cluster = cluster
        #: Live state as the handlers ask it: this process's, or the cluster's.
        self.live = LiveView(router) if cluster is None else ClusterLiveView(router, cluster.state)
        if directory is None:
            from ..directory.local import LocalDirectory
            directory = LocalDirectory(store)
        self.directory: IDirectory = directory
        self.webhooks = webhooks
        #: Names this process as the origin of the directory changes it records
        #: (handlers/directory_changes.py): a daemon skips its own rows. ``nextimctl`` sets
        #: ``"nextimctl"``.
        self.node_id = "daemon-" + secrets.token_hex(6)
        #: The XMPP bridge (:class:`~nextim_twisted.xmpp.bridge.Bridge`) when ``[xmpp] enabled``,
        #: else None.
        self.xmpp: Bridge | None = xmpp(self) if xmpp is not None else None

    @property
    def hub(self) -> IHub:
        """The :class:`~nextim_twisted.hub.base.IHub` packets leave through: for packets
        that are not routed messages (XMPP presences, statuses, failure notices)."""
        return self.router.hub

    def now_ms(self) -> int:
        """Integer milliseconds from the injected clock (docs/design.md#d7-messages timestamps)."""
        return int(self.clock.seconds() * 1000)

    @property
    def poll_url(self):
        """``connection.server``: the full long-poll URL (docs/design.md#d3-online); a cluster node's own path
        ``/n/<node_id>/packets``, which a balancer sends to this node
        (docs/design.md#d20-cluster)."""
        if self.cluster is not None:
            return f"{self.config.public_url}/n/{self.cluster.node_id}/packets"
        return self.config.public_url + "/packets"

    @property
    def websocket_url(self) -> str | None:
        """``connection.websocket``: the WebSocket URL (docs/design.md#d21-websocket),
        ``[server] public_url`` with ``http`` → ``ws`` and ``https`` → ``wss``, plus
        ``/ws``, or a cluster node's own ``/n/<node_id>/ws``; None when
        ``[websocket] enabled = false``."""
        if not self.config.websocket.enabled:
            return None
        scheme, rest = self.config.public_url.split(":", 1)  # validated: http or https
        base = ("wss:" if scheme.lower() == "https" else "ws:") + rest
        if self.cluster is not None:
            return f"{base}/n/{self.cluster.node_id}/ws"
        return base + "/ws"

    async def settings_of(self, user_id):
        """The user's stored settings object (docs/design.md#d11-settings), ``{}`` when none or unreadable."""
        text = await self.store.get_setting(user_id)
        if not text:
            return {}
        try:
            return parse_setting(text)
        except BadRequest:
            return {}  # stored before the rules of parse_setting: never fail ``online`` for it


#: Deepest nesting of arrays/objects accepted in a settings object (docs/design.md#d11-settings).
MAX_SETTING_DEPTH = 32


def parse_setting(text):
    """Parse a settings text (docs/design.md#d11-settings) into a dict that can always be answered again.

    Refused, so that one stored value can never break later answers: anything but a
    JSON object; ``NaN``/``Infinity`` and numbers out of float range such as ``1e400``
    (strict JSON cannot carry them); nesting deeper than :data:`MAX_SETTING_DEPTH`
    (a deep value parses at one stack depth and not at another).

    :raises BadRequest: ``data: ...`` naming the rule broken.
    """
    def no_constant(name):
        raise ValueError(name)

    def finite(literal):
        number = float(literal)
        if number in (float("inf"), float("-inf")):
            raise ValueError(literal)
        return number

    try:
        value = json.loads(text, parse_constant=no_constant, parse_float=finite)
    except (ValueError, RecursionError):
        raise BadRequest("data: must be a JSON object (strict JSON: no NaN or Infinity)",
                         code="bad_parameter") from None
    if not isinstance(value, dict):
        raise BadRequest("data: must be a JSON object", code="bad_parameter")
    level = [value]
    for _ in range(MAX_SETTING_DEPTH):
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item)
                 if isinstance(v, (dict, list))]
        if not level:
            return value
    raise BadRequest(f"data: nested deeper than {MAX_SETTING_DEPTH} levels", code="bad_parameter")


def session_of(identity):
    """The session a ticket-bearing call refers to.

    :raises BadRequest: when the call carried no ticket (docs/protocol.md#endpoints: ``ticket`` required).
    """
    if identity.session is None:
        raise BadRequest("missing parameter: ticket", code="missing_parameter")
    return identity.session


def parse_show(value, allow_offline=True):
    """A show value from a parameter.

    :raises BadRequest: unknown value.
    """
    show = normalize_show(value)
    if show is None or (show == "unavailable" and not allow_offline):
        raise BadRequest("show: must be one of available, away, chat, dnd, invisible, unavailable",
                         code="bad_parameter")
    return show


def blocked_rooms(settings):
    """Room ids from the ``blocked_rooms`` setting (docs/design.md#d9-rooms); ignores non-string entries."""
    value = settings.get("blocked_rooms")
    if not isinstance(value, list):
        return set()
    return {str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool)}


def require_live(ctx, identity):
    """The caller's live user state. :raises Forbidden: the user has no live session."""
    user = ctx.router.user(identity.user_id)
    if user is None:
        raise Forbidden("go online first", code="not_online")
    return user
