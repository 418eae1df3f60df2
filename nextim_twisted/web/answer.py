"""From a twisted.web request to an answer: its parameters, its JSONP callback, and the
one ``try`` that turns the work's result or refusal into the bytes to send.

Shared by the hot path (:mod:`.webim`) and the admin API (:mod:`.admin`), so every
refusal is the error envelope (docs/design.md#d2-errors) whichever part answered.
"""
import os
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger

from ..errors import BadRequest, InternalError, ProtocolError, ShuttingDown, TooLarge
from ..handlers.params import Params, is_storable
from .encoding import check_callback, render, render_error

log = Logger()


def header(request, name):
    """The request header ``name`` (bytes), or None when absent or empty."""
    value = request.getHeader(name)
    return value if value else None


def bearer(request):
    """The token of ``Authorization: Bearer <token>`` as text, or None."""
    auth = header(request, b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].strip().decode("latin-1")
    return None


def decode_params(request, max_body):
    """Query string and form body as :class:`Params` (first value of each name).

    :param max_body: bytes, the ``[server] max_body_bytes`` limit (docs/design.md#d15-limits).
    :raises TooLarge: body over ``max_body`` bytes.
    :raises BadRequest: a name or value that is not valid UTF-8, or holds NUL.
    """
    length = request.getHeader(b"content-length")
    if length and length.isdigit() and int(length) > max_body:
        raise TooLarge(f"request body over {max_body} bytes", code="body_too_large")
    if request.content is not None:
        request.content.seek(0, os.SEEK_END)
        if request.content.tell() > max_body:
            raise TooLarge(f"request body over {max_body} bytes", code="body_too_large")
        request.content.seek(0)
    query = request.uri.partition(b"?")[2]
    if len(unquote_to_bytes(query.replace(b"+", b" "))) > max_body:
        # A JSONP client's query string is its body (docs/design.md#d1-plain-and-jsonp):
        # the same limit.
        raise TooLarge(f"request over {max_body} bytes", code="body_too_large")
    values = {}
    for raw_name, raw_values in (request.args or {}).items():
        try:
            name = raw_name.decode("utf-8")
            value = raw_values[0].decode("utf-8") if raw_values else ""
        except UnicodeDecodeError:
            raise BadRequest("parameters must be UTF-8", code="bad_encoding") from None
        if "\x00" in value or "\x00" in name:
            raise BadRequest("parameters must not contain NUL characters", code="bad_encoding")
        values.setdefault(name, value)
    return Params(values)


def all_storable(value):
    """True if every string (keys included) in a parsed JSON value passes
    :func:`~nextim_twisted.handlers.params.is_storable`. Iterative: no depth limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_storable(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def raw_callback(request):
    """The ``callback`` parameter, read before anything else is decoded, so that even
    a refusal of the rest reaches a JSONP client (docs/design.md#d1-plain-and-jsonp).

    :raises BadRequest: ``bad_callback``, not a JavaScript identifier path.
    """
    raw = (request.args or {}).get(b"callback")
    if not raw:
        return None
    try:
        value = raw[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("callback: must be a JavaScript identifier path", code="bad_callback") from None
    return check_callback(value)


async def answer(ctx, request, work):
    """Run ``await work(params, callback)`` and return the bytes of its answer.

    A :class:`ProtocolError` becomes the envelope (JSONP-wrapped when a callback was
    given); anything else is logged and answered ``500 internal_error``, never a
    traceback. While the daemon stops, every call is ``503 shutting_down``
    (docs/design.md#d16-shutdown).
    """
    callback = None
    try:
        callback = raw_callback(request)
        if ctx.shutting_down:
            raise ShuttingDown("the server is shutting down; try again shortly")
        params = decode_params(request, ctx.config.server.max_body_bytes)
        result = await work(params, callback)
        body = render(request, result, callback)
    except ProtocolError as error:
        body = render_error(request, error, callback)
    except Exception:
        log.failure("unexpected error in {method} {path}", method=request.method, path=request.path)
        body = render_error(request, InternalError("internal error"), callback)
    return body  # the access event is written by web/metrics.ObservedSite
