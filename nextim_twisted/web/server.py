"""Everything that tunes twisted.web for this daemon, in one place.

* :func:`channel_class`: the ``HTTPChannel`` that reads a JSONP request line as long
  as a request body may be, refuses over-long bodies while they arrive, answers
  requests twisted.web cannot parse with the error envelope, and keeps its
  per-connection ``__dict__`` compact (see the class's comments).
* :func:`install_tuning`: the process-wide part (a cache of Content-Type parsing),
  installed when a site is built (:func:`make_site`), never by importing this module.
* :data:`TWISTED_PRIVATE_NAMES`: every private name of Twisted this relies on.
  tests/test_server_tuning.py asserts each still exists on the installed Twisted, so a
  rename in a Twisted release fails a test instead of silently losing the memory and
  CPU savings measured in docs/benchmarks.md (8.8 KB instead of 15.5 KB per idle
  user; Content-Type parsing was 10–20 % of the CPU under message load).
"""
import functools
import json

from twisted.web import http

from ..errors import BadRequest, TooLarge
from .metrics import ObservedSite

#: Every private Twisted name this module relies on, as ``(owner, name)``. ``owner`` is
#: a dotted module or class path; an owner ending in ``()`` means the attribute is set
#: on an instance while it works (a channel connected and reading a request line), not
#: on the class.
TWISTED_PRIVATE_NAMES = (
    # install_tuning() wraps it in an lru_cache.
    ("twisted.web.http", "_parseContentType"),
    # Channel overrides this hook, called for requests twisted.web cannot parse.
    ("twisted.web.http.HTTPChannel", "_respondToBadRequestAndDisconnect"),
    # Channel.rawDataReceived reads it (is a request being handled?).
    ("twisted.web.http.HTTPChannel()", "_handlingRequest"),
    # In Channel.__slots__: set per request line, deleted after each request.
    ("twisted.web.http.HTTPChannel()", "_command"),
    ("twisted.web.http.HTTPChannel()", "_path"),
    ("twisted.web.http.HTTPChannel()", "_version"),
    # Preset by Channel.__init__ (CHANNEL_PRESETS), in that order.
    ("twisted.web.http.HTTPChannel", "_TimeoutMixin__timeoutCall"),
    ("twisted.web.http.HTTPChannel()", "_networkProducer"),
    ("twisted.web.http.HTTPChannel", "_busyReceiving"),
    ("twisted.web.http.HTTPChannel", "_buffer"),
    ("twisted.web.http.HTTPChannel", "_receivedHeaderSize"),
    ("twisted.web.http.HTTPChannel", "_HTTPChannel__first_line"),
    ("twisted.web.http.HTTPChannel", "_HTTPChannel__header"),
    ("twisted.web.http.HTTPChannel", "_receivedHeaderCount"),
    ("twisted.web.http.HTTPChannel", "_savedTimeOut"),
    # Preset on the TCP transport by Channel.makeConnection (TRANSPORT_PRESETS):
    # undocumented attributes of FileDescriptor that writing sets.
    ("twisted.internet.abstract.FileDescriptor", "producer"),
    ("twisted.internet.abstract.FileDescriptor", "streamingProducer"),
    ("twisted.internet.abstract.FileDescriptor", "dataBuffer"),
    ("twisted.internet.abstract.FileDescriptor", "offset"),
)

#: HTTPChannel's per-connection attributes, in the order :func:`channel_class` presets
#: them. Not ``callLater``: its class value is a method, and a bound method of the
#: channel kept in its own dict would be a reference cycle (the factory sets it, always
#: in one place).
CHANNEL_PRESETS = (
    "factory", "timeOut", "requestFactory", "site", "connected", "transport",
    "_TimeoutMixin__timeoutCall", "_networkProducer", "_busyReceiving", "_buffer",
    "_receivedHeaderSize", "_HTTPChannel__first_line", "_HTTPChannel__header",
    "_receivedHeaderCount", "length", "persistent", "line_mode", "_savedTimeOut",
)

#: The TCP transport's attributes that writing adds later, preset in this order.
TRANSPORT_PRESETS = ("producer", "streamingProducer", "dataBuffer", "offset")

#: HTTPChannel attributes deleted after every request, kept in slots instead.
CHANNEL_SLOTS = ("_command", "_path", "_version")


def install_tuning():
    """Install the process-wide tuning of twisted.web; idempotent.

    twisted.web parses the Content-Type of every form POST through the email package
    (``EmailMessage``), which cost about a tenth of the daemon's CPU under message
    load (docs/benchmarks.md). The result depends only on the header line, so it is
    remembered (256 distinct lines).

    :returns: True when the cache is in place (False only if Twisted no longer has
        ``http._parseContentType``; tests/test_server_tuning.py fails then).
    """
    parse = getattr(http, "_parseContentType", None)
    if parse is None:
        return False
    if not hasattr(parse, "cache_info"):
        http._parseContentType = functools.lru_cache(maxsize=256)(parse)
    return True


def channel_class(max_body_bytes):
    """An ``HTTPChannel`` whose request line may carry a whole request body.

    JSONP clients send every call, long messages included, as a GET
    (docs/design.md#d1-plain-and-jsonp): the query string is their body. twisted.web's
    default line limit (16 KiB) silently dropped the connection of such a request: a
    10 000-character message percent-encodes to up to 90 KB. Lines up to three times
    ``max_body_bytes`` (percent-encoding triples a byte) plus 4 KiB are read;
    :func:`~nextim_twisted.web.answer.decode_params` then applies ``max_body_bytes`` to
    the decoded query. A longer line is answered with the 413 envelope, then closed.

    Bodies get the same limit while they arrive, not after
    (docs/design.md#d15-limits): a ``Content-Length`` over ``max_body_bytes`` is refused
    (413, no ``100 Continue``) before any of it is read, and a chunked body is cut off
    once more than ``max_body_bytes`` of it has come in. twisted.web would otherwise
    read any body to its end (spooled to a temporary file) before it could be refused.
    Requests twisted.web itself rejects while parsing (a bad request line, bad or
    conflicting length headers) get the 400 envelope instead of a bare status line.

    :param max_body_bytes: int, bytes.
    """
    line_limit = 3 * max_body_bytes + 4096

    class Channel(http.HTTPChannel):
        # HTTPChannel deletes these three per request; deleting from an instance dict
        # turns CPython's compact shared-key dict into a full one (~0.8 KB instead of
        # ~0.3 KB, per connection). In slots they come and go for free.
        __slots__ = CHANNEL_SLOTS
        MAX_LENGTH = line_limit
        totalHeadersSize = line_limit + 16384
        _nextim_refused = False

        def __init__(self):
            super().__init__()
            # Insert every attribute twisted.web sets later, in one fixed order, so that
            # all channels share one key table whatever their first request (a POST and
            # a GET set them in different orders, and the first different order turns
            # the dict into a full one). Values are the class defaults.
            for name in CHANNEL_PRESETS:
                if name not in self.__dict__:
                    setattr(self, name, getattr(self, name, None))

        def makeConnection(self, transport):
            # The same for the TCP transport's attributes that writing adds later.
            attrs = getattr(transport, "__dict__", None)
            if attrs is not None:
                for name in TRANSPORT_PRESETS:
                    if name not in attrs and hasattr(transport, name):
                        setattr(transport, name, getattr(transport, name))
            super().makeConnection(transport)

        def _refuse_too_large(self, error):
            self._refuse(b"413 Request Entity Too Large", error)

        def _respondToBadRequestAndDisconnect(self):
            # twisted.web's hook for requests it cannot parse (its own answer: a bare
            # "400 Bad Request" line); it may be called more than once per connection.
            if not self._nextim_refused:
                self._refuse(b"400 Bad Request", BadRequest("malformed HTTP request"))

        def _refuse(self, status, error):
            self._nextim_refused = True
            body = json.dumps(error.envelope()).encode()
            self.transport.write(b"HTTP/1.1 " + status + b"\r\n"
                                 b"Content-Type: application/json; charset=utf-8\r\n"
                                 b"Cache-Control: no-store\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.transport.loseConnection()

        def lineLengthExceeded(self, line):
            self._refuse_too_large(TooLarge(f"request line over {line_limit} bytes", code="request_too_large"))

        def allHeadersReceived(self):
            if self.length is not None and self.length > max_body_bytes:
                return self._refuse_too_large(TooLarge(f"request body over {max_body_bytes} bytes",
                                                       code="body_too_large"))
            super().allHeadersReceived()

        def rawDataReceived(self, data):
            if self._nextim_refused:
                return
            content = getattr(self.requests[-1], "content", None) if self.requests else None
            if not getattr(self, "_handlingRequest", False) and content is not None and content.tell() > max_body_bytes:
                return self._refuse_too_large(TooLarge(f"request body over {max_body_bytes} bytes",
                                                       code="body_too_large"))
            super().rawDataReceived(data)

    return Channel


def make_site(resource, metrics, *, webim_names, max_body_bytes, reactor=None):
    """The tuned ``Site``: :func:`install_tuning`, an
    :class:`~nextim_twisted.web.metrics.ObservedSite` (access log, metrics) and
    :func:`channel_class` as its protocol.

    :param resource: the root ``IResource``.
    :param metrics: :class:`~nextim_twisted.web.metrics.Metrics`.
    :param webim_names: the ``webim/<name>`` names, for bounded metric labels.
    :param max_body_bytes: int, bytes (docs/design.md#d15-limits).
    :param reactor: ``IReactorTime`` for connection timeouts (a ``Clock`` in tests).
    """
    install_tuning()
    site = ObservedSite(resource, metrics, webim_names=webim_names, reactor=reactor)
    site.protocol = channel_class(max_body_bytes)
    return site
