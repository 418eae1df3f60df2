"""Plain and JSONP answers (docs/design.md#d1-plain-and-jsonp) and the error envelope
(docs/design.md#d2-errors), on twisted.web requests."""
import json
import re

from ..errors import BadRequest
from ..handlers import OK

#: A JSONP callback name, dotted paths allowed (``parent.jsonp123``; docs/protocol.md#jsonp).
CALLBACK = re.compile(r"^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$", re.ASCII)
MAX_CALLBACK = 128


def check_callback(value):
    """The callback name, or None. :raises BadRequest: not a safe JavaScript name
    (docs/protocol.md#jsonp)."""
    if value is None or value == "":
        return None
    if len(value) > MAX_CALLBACK or not CALLBACK.match(value):
        raise BadRequest("callback: must be a JavaScript identifier path of at most 128 characters",
                         code="bad_callback")
    return value


def dumps(value):
    """Compact strict JSON as UTF-8 bytes. U+2028/U+2029 are escaped so the text is
    also valid inside a JSONP script; lone surrogates fall back to ``\\u`` escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


def _common_headers(request):
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")


def render(request, value, callback=None, status=200):
    """Write ``value`` as the answer: JSON (or ``ok``) in plain mode, ``/**/cb(json);``
    under JSONP (docs/design.md#d1-plain-and-jsonp). Returns the body bytes.

    Every answer carries ``Content-Length``, also those written later (a parked poll, a
    call that waited for storage): an HTTP/1.0 client, such as nginx talking to its
    upstream by default, gets no chunked encoding and would otherwise have to read to
    the connection's end."""
    _common_headers(request)
    if callback is not None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/javascript; charset=utf-8")
        payload = b'"ok"' if value is OK else dumps(value)
        body = b"/**/" + callback.encode("ascii") + b"(" + payload + b");"
    else:
        request.setResponseCode(status)
        if value is OK:
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            body = b"ok"
        else:
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            body = dumps(value)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def render_error(request, error, callback=None):
    """The error envelope for a :class:`ProtocolError`: its status in plain mode, 200 under
    JSONP (a browser does not run a script answered with an error status).
    The code is also left on ``request.nextim_error`` for the access log and
    ``nextim_errors_total`` (web/metrics.py)."""
    request.nextim_error = error.code
    for name, value in error.headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return render(request, error.envelope(), callback, status=error.status)
