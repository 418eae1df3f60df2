"""The operator's routes: ``GET /metrics`` (Prometheus), ``GET /health`` (load
balancers, systemd checks) and ``GET /openapi.json`` (this HTTP API described).

The metrics themselves (registry, histograms, the access log) are in :mod:`.metrics`.
"""
import hmac
import os
from typing import Optional

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger

from ..errors import NotFound, ProtocolError, Unauthorized
from .answer import bearer
from .encoding import render, render_error

log = Logger()

#: Seconds ``/health`` waits for ``store.ping()`` before it answers 503.
HEALTH_TIMEOUT_S = 5

#: The OpenAPI 3.1 description served at ``/openapi.json``; tests/test_openapi.py keeps
#: it in step with the routes.
OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")


class Ops:
    """``GET /metrics``, ``GET /health`` and ``GET /openapi.json``.

    :param ctx: the handler context (``config``, ``store``, ``clock``, ``shutting_down``).
    :param metrics: :class:`~nextim_twisted.web.metrics.Metrics`.
    """

    def __init__(self, ctx, metrics):
        self.ctx = ctx
        self.metrics = metrics

    def render_metrics(self, request):
        """The exposition, or the error envelope: 404 ``unknown_path`` when ``[metrics]
        enabled = false``; 401 ``bad_metrics_token`` without the right
        ``Authorization: Bearer <[metrics] token>`` when a token is set."""
        try:
            cfg = self.ctx.config.metrics
            if not cfg.enabled:
                raise NotFound("no such path", code="unknown_path")
            if cfg.token:
                given = bearer(request) or ""
                if not hmac.compare_digest(given.encode("utf-8"), cfg.token.encode("utf-8")):
                    raise Unauthorized("metrics token required: Authorization: Bearer <token>",
                                       code="bad_metrics_token")
        except ProtocolError as error:
            return render_error(request, error)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self.metrics.exposition()

    async def render_health(self, request):
        """200 ``{"status": "ok", "storage": "ok"}`` once ``store.ping()`` answers;
        503 ``{"status": "error", "storage": "error"}`` when it fails or takes over
        :data:`HEALTH_TIMEOUT_S` seconds (on the context clock); 503
        ``{"status": "shutting_down", ...}`` while the daemon stops
        (docs/design.md#d16-shutdown)."""
        if self.ctx.shutting_down:
            return render(request, {"status": "shutting_down", "storage": "unknown"}, status=503)
        try:
            d = self.ctx.store.ping()
            d.addTimeout(HEALTH_TIMEOUT_S, self.ctx.clock)
            await d
        except Exception as e:  # any storage failure is "not healthy", never a 500
            log.warn("health check failed: storage {error}", error=type(e).__name__)
            return render(request, {"status": "error", "storage": "error"}, status=503)
        cluster = self.ctx.cluster
        if cluster is not None:
            # A node that cannot reach Redis cannot route to or from the other nodes
            # (docs/design.md#d20-cluster): out of the balancer until it can.
            if not cluster.routing:
                return render(request, {"status": "error", "storage": "ok", "redis": "error"}, status=503)
            return render(request, {"status": "ok", "storage": "ok", "redis": "ok"})
        return render(request, {"status": "ok", "storage": "ok"})

    @staticmethod
    def render_openapi(request):
        """The bytes of ``web/openapi.json``."""
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        with open(OPENAPI_PATH, "rb") as f:
            return f.read()


def add_routes(app: Klein, ops: Optional[Ops]) -> None:
    """Declare ``/metrics``, ``/health`` and ``/openapi.json`` on ``app``.

    :param ops: :class:`Ops`; only used when a route is called (None is enough to read
        the url map).
    """

    @app.route("/metrics", methods=["GET"])
    def metrics(request):
        assert ops is not None
        return ops.render_metrics(request)

    @app.route("/health", methods=["GET", "HEAD"])
    def health(request):
        assert ops is not None
        return defer.ensureDeferred(ops.render_health(request))

    @app.route("/openapi.json", methods=["GET", "HEAD"])
    def openapi(request):
        return Ops.render_openapi(request)
