"""Protocol errors: every refusal the daemon gives, in the one error envelope.

Handlers and core raise these; the web layer turns them into
``{"success": false, "error": code, "error_msg": text}`` with ``status`` in plain
mode and 200 under JSONP (docs/design.md#d2-errors). Nothing else should reach a client.

:data:`ERROR_CODES` is the whole vocabulary of ``error``: tests/test_error_codes.py
checks it against every code the package raises and against ``web/openapi.json``.
"""


class ProtocolError(Exception):
    """A refusal with an HTTP status, a short machine code and a human message.

    :param message: human text for ``error_msg`` (never contains secrets or bodies).
    :param code: machine code for ``error``; defaults to the class's ``code``.
    :param headers: extra response headers, e.g. ``{"Retry-After": "3"}``
        (docs/design.md#d15-limits).
    """

    status = 400
    code = "bad_request"

    def __init__(self, message, code=None, headers=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def envelope(self):
        """The envelope as a dict."""
        return {"success": False, "error": self.code, "error_msg": self.message}


class BadRequest(ProtocolError):
    status = 400
    code = "bad_request"


class Unauthorized(ProtocolError):
    status = 401
    code = "not_authenticated"


class Forbidden(ProtocolError):
    status = 403
    code = "forbidden"


class NotFound(ProtocolError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ProtocolError):
    status = 405
    code = "method_not_allowed"


class TooLarge(ProtocolError):
    status = 413
    code = "too_large"


class RateLimited(ProtocolError):
    """429 with ``Retry-After`` in whole seconds (docs/design.md#d15-limits)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message, retry_after_s):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})
        self.retry_after_s = retry_after_s


class ShuttingDown(ProtocolError):
    status = 503
    code = "shutting_down"


class InternalError(ProtocolError):
    """500: an unexpected exception, logged; the client sees only this code."""

    status = 500
    code = "internal_error"
