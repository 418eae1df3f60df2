"""A bounded, signed HTTP client for calls to the host site (treq).

Each call is one signed request (:mod:`.signing`) that either gives a status and a body
of at most ``max_bytes`` within ``timeout_s`` seconds of the injected clock, or fails
with :class:`SiteError` naming why in a few words. Nothing here blocks the reactor:
connecting, sending and reading are treq/Agent Deferreds, the timeout is a
``Deferred.addTimeout`` on the clock (docs/design.md#d22-the-site-as-source-of-truth).

Redirects are not followed (a signed request must not be replayed to another host).
"""
from urllib.parse import urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from .signing import sign_headers

USER_AGENT = "nextim-twisted"


class SiteError(Exception):
    """A call to the site that gave no usable answer.

    :ivar reason: short text for logs (``"timeout after 5 s"``, ``"HTTP 500"`` …).
    :ivar kind: one of ``timeout``, ``connect``, ``status``, ``too_large``, ``malformed``
        (the ``result`` label of the metrics).
    """

    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _TooLarge(Exception):
    pass


def request_target(url):
    """The signed ``PATH`` of ``url``: its path (``/`` when empty) and ``?query``."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return target


class SiteClient:
    """Signed requests to one site.

    :param reactor: ``IReactorTCP``/``IReactorTime`` the Agent connects with.
    :param clock: ``IReactorTime`` for timestamps and timeouts (a ``Clock`` in tests).
    :param secret: the shared HMAC secret (str).
    :param timeout_s: seconds from sending to the whole body read.
    :param max_bytes: longest body read; a longer one fails with ``too_large``.
    """

    def __init__(self, reactor, clock, secret, timeout_s, max_bytes):
        self.clock = clock
        self.secret = secret
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        # A kept-alive connection the site closed meanwhile is retried once on a new one
        # (Twisted does so for GET only; a webhook POST is retried by its own backoff).
        self.pool.retryAutomatically = True
        self.http = HTTPClient(Agent(reactor, pool=self.pool, connectTimeout=timeout_s))

    def request(self, method, url, body=b"", headers=None):
        """Send one signed request.

        :param method: ``GET`` or ``POST``.
        :param url: absolute ``http(s)://`` URL.
        :param body: request body bytes.
        :param headers: extra headers ``{name: str}``.
        :returns: Deferred → ``(status int, body bytes)`` for any HTTP status.
        :raises SiteError: (via the Deferred) timeout, connection failure, body over
            ``max_bytes``.
        """
        d = defer.ensureDeferred(self._request(method, url, body, headers or {}))
        timed_out = []

        def expire():
            timed_out.append(True)
            d.cancel()
        call = self.clock.callLater(self.timeout_s, expire)

        def done(result):
            if call.active():
                call.cancel()
            return result
        d.addBoth(done)
        d.addErrback(self._explain, timed_out)
        return d

    async def _request(self, method, url, body, extra):
        hdrs = {"User-Agent": USER_AGENT, **extra,
                **sign_headers(self.secret, method, request_target(url), body, self.clock.seconds())}
        response = await self.http.request(method, url, data=body or None, unbuffered=True,
                                           allow_redirects=False,
                                           headers=Headers({k: [v] for k, v in hdrs.items()}))
        chunks = []
        # A Content-Length over the limit fails at the first chunk, before it is kept.
        size = [self.max_bytes + 1 if isinstance(response.length, int) and response.length > self.max_bytes else 0]

        def collect(data):
            size[0] += len(data)
            if size[0] > self.max_bytes:
                raise _TooLarge()  # treq closes the connection
            chunks.append(data)

        await treq.collect(response, collect)
        return response.code, b"".join(chunks)

    def _explain(self, failure, timed_out):
        if failure.check(SiteError):
            return failure
        if timed_out:
            raise SiteError("timeout", f"no answer within {self.timeout_s:g} s")
        if failure.check(_TooLarge):
            raise SiteError("too_large", f"answer over {self.max_bytes} bytes")
        raise SiteError("connect", f"{failure.type.__name__}: {failure.getErrorMessage()}"[:200])

    def close(self):
        """Close the pooled connections. Deferred → None."""
        return self.pool.closeCachedConnections()

