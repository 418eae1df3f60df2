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


class Conflict(ProtocolError):
    """409: the request contradicts what is stored (a ``client_id`` reused for another
    message, docs/design.md#d17-idempotent-sends)."""

    status = 409
    code = "conflict"


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


#: Every ``error`` code the daemon can answer, with what it means to a client
#: (docs/protocol.md#error-codes). The HTTP status is that of the raising class (the
#: same code may be 403 or 404, e.g. ``not_member``). tests/test_error_codes.py checks this against every code raised in
#: the package and against the ``error`` enum of ``web/openapi.json``, both ways.
ERROR_CODES = {
    # the request itself (docs/design.md#d1-plain-and-jsonp, docs/design.md#d15-limits)
    "bad_request": "HTTP that twisted.web could not parse (bad request line or length headers), a GET /ws that "
                   "is not a WebSocket handshake, or a malformed or unknown WebSocket call",
    "bad_encoding": "a parameter, path or JSON string that is not valid UTF-8 text, or holds NUL",
    "bad_callback": "callback is not a JavaScript identifier path of at most 128 characters",
    "bad_json": "an admin body that is not a JSON object",
    "bad_parameter": "a parameter of the wrong type, length, range or characters",
    "missing_parameter": "a required parameter is absent",
    "body_too_large": "the request body (or a JSONP query string) is over [server] max_body_bytes",
    "request_too_large": "the request line is too long to be read at all",
    "body_too_long": "a message body over [limits] message_chars characters",
    "setting_too_large": "a settings object over its size limit",
    "method_not_allowed": "the path does not take this HTTP method",
    "unknown_path": "no such path (or /metrics disabled)",
    "unknown_endpoint": "no such webim/<name> endpoint (or webim/login without accounts auth)",
    "rate_limited": "too many calls; retry after the Retry-After seconds",
    "shutting_down": "the daemon is stopping; retry shortly (docs/design.md#d16-shutdown)",
    "id_clash": "with the XMPP bridge on, a new user id whose XMPP form equals an existing user's (409, names it)",
    "internal_error": "an unexpected failure, logged by the daemon",
    # identity (docs/design.md#d13-identity, docs/design.md#d4-tickets)
    "not_authenticated": "no usable credentials (none offered, an expired login cookie, password login off)",
    "invalid_token": "a site token that is forged, malformed or lacks sub",
    "token_expired": "a site token past its exp",
    "bad_credentials": "wrong username or password",
    "csrf": "a cookie-only state change that is not a POST from an allowed origin",
    "origin_not_allowed": "a WebSocket handshake from an Origin that is neither the daemon's own nor in "
                          "[server] allowed_origins (403)",
    "invalid_ticket": "the ticket is unknown or its session ended: go online again",
    "ticket_mismatch": "the ticket belongs to another user",
    "not_online": "the call needs a live session of the caller",
    # chat, rooms, directory (docs/design.md#d7-messages, docs/design.md#d9-rooms,
    # docs/design.md#d14-directory)
    "unknown_user": "no such user",
    "unknown_room": "no such room",
    "not_member": "the user is not a member of the room",
    "room_blocked": "the caller has left (blocked) this room",
    "not_buddies": "the two users are not buddies",
    "admin_only": "broadcast messages are for the admin API only",
    "id_conflict": "the id is already used by a user or a room",
    "client_id_reused": "this client_id already names another message of the sender (409); nothing stored",
    # the host site as the directory (docs/integration.md)
    "directory_unavailable": "the site's directory does not answer and nothing is cached; retry shortly",
    "directory_is_remote": "an admin directory write while the directory is the site's ([directory] provider)",
    # the admin API and the operator's routes
    "admin_disabled": "the admin API is off: no [admin] api_key",
    "bad_api_key": "a missing or wrong admin API key",
    "bad_metrics_token": "a missing or wrong [metrics] token",
    # the XMPP bridge
    "xmpp_disabled": "an XMPP feature was asked for but [xmpp] enabled is false",
    "xmpp_unavailable": "the XMPP bridge cannot take the message now; retry later",
    "bad_id": "a new user id that is not Unicode NFC or holds bidi or other format controls (docs/xmpp.md#user-ids)",
    "bad_jid": "an XMPP buddy or room address that is not a valid bare JID",
}
