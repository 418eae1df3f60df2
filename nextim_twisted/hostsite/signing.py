"""HMAC-SHA256 signatures of the requests the daemon sends to the host site
(docs/integration.md#signed-requests, docs/design.md#d22-the-site-as-source-of-truth).

Every request carries two headers:

``X-Nextim-Timestamp``
    the sending time, integer seconds since the epoch;
``X-Nextim-Signature``
    ``sha256=`` and the lower-case hex HMAC-SHA256, keyed with the shared secret, of

    ``METHOD + "\\n" + PATH + "\\n" + TIMESTAMP + "\\n" + BODY``

    where ``METHOD`` is upper case (``GET``, ``POST``), ``PATH`` the request target as
    sent (path and query string, percent-encoded, e.g. ``/nextim/users?ids=a%2Cb``),
    ``TIMESTAMP`` the header's value and ``BODY`` the raw body bytes (empty for a GET).

A site checks a request in a few lines (this module's :func:`verify` does the same)::

    import hashlib, hmac, time
    ts = request.headers["X-Nextim-Timestamp"]
    msg = b"\\n".join([request.method.encode(), request.full_path.encode(), ts.encode(), request.body])
    good = "sha256=" + hmac.new(SECRET, msg, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(good, request.headers["X-Nextim-Signature"]) and abs(time.time() - int(ts)) <= 300

The timestamp in the signed text lets the site refuse replays older than a few minutes.
"""
import hashlib
import hmac

TIMESTAMP_HEADER = "X-Nextim-Timestamp"
SIGNATURE_HEADER = "X-Nextim-Signature"
#: Seconds a signature stays acceptable to :func:`verify` (either side of now).
TOLERANCE_S = 300


def signed_text(method, path, timestamp, body):
    """The bytes that are signed: ``METHOD\\nPATH\\nTIMESTAMP\\nBODY``.

    :param method: HTTP method (str, any case; upper-cased).
    :param path: request target, path and query (str or bytes, as sent).
    :param timestamp: integer seconds since the epoch (int or its decimal str).
    :param body: raw body (bytes; ``b""`` for none).
    """
    if isinstance(path, str):
        path = path.encode("utf-8")
    return b"\n".join([method.upper().encode("ascii"), path, str(int(timestamp)).encode("ascii"), body or b""])


def signature(secret, method, path, timestamp, body):
    """``sha256=<hex>``: the ``X-Nextim-Signature`` value (``secret`` a str or bytes)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, signed_text(method, path, timestamp, body), hashlib.sha256).hexdigest()


def sign_headers(secret, method, path, body, now_s):
    """The two headers for a request sent at ``now_s`` (seconds, float or int).

    :returns: ``{TIMESTAMP_HEADER: str, SIGNATURE_HEADER: str}``.
    """
    timestamp = int(now_s)
    return {TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret, method, path, timestamp, body)}


def verify(secret, method, path, body, timestamp, given, now_s, tolerance_s=TOLERANCE_S):
    """True if ``given`` (the ``X-Nextim-Signature`` value) signs this request and
    ``timestamp`` (the ``X-Nextim-Timestamp`` value, str) is within ``tolerance_s``
    seconds of ``now_s``. Never raises for malformed header values (False)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now_s - ts) > tolerance_s or not isinstance(given, str):
        return False
    return hmac.compare_digest(signature(secret, method, path, ts, body), given)
