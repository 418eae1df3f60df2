"""The HTTP face of the daemon, composed from its parts:

* :mod:`.webim`: ``webim/*`` and the ``/packets`` long poll (the hot path), answered
  by :class:`~nextim_twisted.web.webim.HotPathRoot` in front of everything else, which
  also hands the ``/ws`` handshake to :mod:`.websocket` (the WebSocket transport);
* :mod:`.admin`: the admin API, :mod:`.ops`: ``/metrics``, ``/health``,
  ``/openapi.json``, and here the bundled client (``/``, ``/static/``), all on one
  Klein app (:func:`routes`);
* :mod:`.server`: the tuned twisted.web ``Site`` (:func:`~nextim_twisted.web.server.make_site`).

Every answer is JSON, ``ok`` or JSONP; every refusal is the error envelope, unknown
paths and methods included, never an HTML page or a traceback
(docs/design.md#d2-errors).

Public entry points: ``WebApp(ctx)``, :meth:`WebApp.site`, :meth:`WebApp.resource`,
:attr:`WebApp.metrics`.
"""
import os
from typing import Optional

from klein import Klein
from twisted.web.resource import Resource
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from ..errors import MethodNotAllowed, NotFound
from . import admin, ops
from .encoding import render_error
from .metrics import Metrics
from .ops import OPENAPI_PATH  # noqa: F401  (where the served document lives; tests read it)
from .server import make_site
from .webim import WEBIM, HotPathRoot, Webim
from .websocket import SocketEndpoint

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


class _EnvelopeNotFound(Resource):
    """What ``/static/`` answers for a file it does not have: the 404 envelope."""

    isLeaf = True

    def render(self, request):
        return render_error(request, NotFound("no such file", code="unknown_path"))


def routes(ctx, ops_: Optional[ops.Ops], static_dir: str = STATIC_DIR) -> Klein:
    """The Klein app of everything but the hot path: admin API, operator routes, the
    bundled client, and the envelope for unknown paths and methods.

    ``ctx`` and ``ops_`` are only used when a route is called, so
    ``routes(None, None).url_map`` is the declared route table (tests/test_openapi.py).
    """
    app = Klein()
    admin.add_routes(app, ctx)
    ops.add_routes(app, ops_)

    @app.route("/", methods=["GET", "HEAD"])
    def index(request):
        # (``/?ticket=`` is a poll: HotPathRoot answers it before this.)
        path = os.path.join(static_dir, "index.html")
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
    def static(request):
        if any(b"\x00" in segment for segment in request.postpath):
            # File would stat() it: ValueError, a 500 HTML page and a traceback.
            return _EnvelopeNotFound()
        files = File(static_dir)
        files.childNotFound = _EnvelopeNotFound()  # a missing file is the envelope, not HTML
        return files

    @app.handle_errors(WerkzeugNotFound)
    def not_found(request, failure):
        return render_error(request, NotFound("no such path", code="unknown_path"))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(request, failure):
        return render_error(request, MethodNotAllowed("method not allowed for this path"))

    return app


class WebApp:
    """The web layer bound to a handler context.

    :param ctx: :class:`~nextim_twisted.handlers.context.Context` (``config``,
        ``store``, ``router``, ``auth``, ``clock``, ``shutting_down``).
    :param static_dir: the bundled client's files.

    :ivar metrics: :class:`~nextim_twisted.web.metrics.Metrics` of this daemon (the
        service's stall monitor feeds it too).
    :ivar webim: :class:`~nextim_twisted.web.webim.Webim`, the hot path.
    :ivar sockets: :class:`~nextim_twisted.web.websocket.SocketEndpoint`, the WebSocket
        transport, or None when ``[websocket] enabled = false``.
    """

    def __init__(self, ctx, static_dir=STATIC_DIR):
        self.ctx = ctx
        self.metrics = Metrics(ctx.router, ctx.store)
        self.webim = Webim(ctx, self.metrics)
        self.sockets = SocketEndpoint(ctx, self.metrics) if ctx.config.websocket.enabled else None
        if ctx.cluster is not None:
            ctx.cluster.run_call = self.webim.run_forwarded  # calls other nodes forward here
        self.klein = routes(ctx, ops.Ops(ctx, self.metrics), static_dir)

    def resource(self):
        """The root ``IResource``: the hot path in front of the Klein app."""
        return HotPathRoot(self.webim, self.klein.resource(), self.sockets)

    def site(self, reactor=None):
        """The ``twisted.web`` Site to listen with: :meth:`resource`, the tuned channel,
        one access-log event and the metrics of every request.

        :param reactor: ``IReactorTime`` for connection timeouts; default the
            context's clock.
        """
        return make_site(self.resource(), self.metrics, webim_names=set(WEBIM),
                         max_body_bytes=self.ctx.config.server.max_body_bytes,
                         reactor=reactor if reactor is not None else self.ctx.clock)
