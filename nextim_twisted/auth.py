"""Who is calling: JWT tokens, login cookies, tickets and passwords (docs/design.md#d13-identity).

The web layer extracts :class:`Credentials` from a request; :class:`Authenticator`
decides which user it is, or refuses with 401/403/404. Tokens are HS256 JWTs
checked with PyJWT; passwords are argon2id hashes (argon2-cffi), verified off the
reactor thread.
"""
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import argon2
import jwt

from . import ids
from .errors import BadRequest, Forbidden, Unauthorized
from .handlers.params import check_id, is_storable
from .store import userdata

if TYPE_CHECKING:
    from .core.session import Session

_hasher = argon2.PasswordHasher()
_dummy_hash = None  # made on first use: an argon2 hash costs ~0.3 s, too much for every import


def _dummy():
    """A hash to verify against for unknown users, so timing does not reveal who exists."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("nextim: no such user")
    return _dummy_hash

#: Claims copied from a site token into the user's profile (docs/design.md#d13-identity).
PROFILE_CLAIMS = ("nick", "pic_url", "default_pic_url", "url")
#: Longest profile claim accepted (the admin API's limit for URLs; ``nick`` is cut to 100).
MAX_CLAIM_CHARS = 2000


def hash_password(password):
    """argon2id hash of ``password`` (str) for storage. Blocking: ~50 ms of CPU."""
    return _hasher.hash(password)


def verify_password(password_hash, password):
    """True if ``password`` matches ``password_hash``; False for any mismatch or a
    malformed hash. Blocking: ~50 ms of CPU."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


@dataclass
class Credentials:
    """Everything a request offers as identity. All fields are ``str`` or ``None``.

    ``method`` is the HTTP method; ``origin`` the ``Origin`` header; ``request_origin``
    the ``scheme://host`` the request was addressed to (same-origin check).
    """

    bearer: str | None = None
    token_param: str | None = None
    token_cookie: str | None = None
    session_cookie: str | None = None
    ticket: str | None = None
    username: str | None = None
    password: str | None = None
    method: str = "GET"
    origin: str | None = None
    request_origin: str | None = None
    jsonp: bool = False


@dataclass
class Identity:
    """The authenticated caller.

    :ivar user_id: the user's id.
    :ivar via: ``"ticket"``, ``"token"``, ``"session"`` (login cookie) or ``"password"``.
    :ivar claims: the verified JWT claims when ``via == "token"``, else ``None``.
    :ivar session: the :class:`~nextim_twisted.core.session.Session` named by the
        request's ticket, if any.
    :ivar login: the login cookie's ``jti`` when ``via == "session"``: the sessions
        opened with it end at ``logout`` (docs/design.md#d19-session-lifetime).
    """

    user_id: str
    via: str
    claims: dict | None = None
    session: "Session | None" = None
    login: str | None = None


class Authenticator:
    """Resolves :class:`Credentials` to an :class:`Identity` (docs/design.md#d13-identity).

    :param config: the daemon :class:`~nextim_twisted.config.Config`.
    :param store: storage (for password hashes).
    :param router: live state (for tickets).
    :param blocking: ``callable(f, *args) → Deferred`` running ``f`` off the reactor thread.
    :param clock: ``IReactorTime`` used for token expiry.
    """

    def __init__(self, config, store, router, blocking, clock):
        self.config = config
        self.store = store
        self.router = router
        self.blocking = blocking
        self.clock = clock
        self.method = config.auth.method
        secret = config.auth.token_secret or ""
        self._cookie_key = None
        if secret:
            self._cookie_key = hmac.new(secret.encode(), b"nextim login cookie", hashlib.sha256).hexdigest()
        self._allowed_origins = {config.own_origin, *config.server.allowed_origins}

    def set_cookie_key(self, key):
        """Key that signs login cookies when no ``token_secret`` is configured (from storage)."""
        if self._cookie_key is None:
            self._cookie_key = key

    # -- tokens --------------------------------------------------------------
    def verify_token(self, token):
        """Verify a site JWT (HS256 only). :returns: claims dict.
        :raises Unauthorized: bad signature, other algorithm, expired, no ``sub``."""
        try:
            claims = jwt.decode(token, self.config.auth.token_secret, algorithms=["HS256"],
                                options={"require": ["sub"]}, leeway=5)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token", code="invalid_token") from None
        sub = claims.get("sub")
        try:
            check_id(sub, "sub")  # the same rule as every other user id (no ",", "/", controls)
        except BadRequest:
            raise Unauthorized("invalid token: sub must be a non-empty user id", code="invalid_token") from None
        found = ids.problems(sub)  # one spelling per identity (docs/design.md#d13-identity)
        if found:
            raise Unauthorized(f"invalid token: sub is {'; '.join(found)}", code="invalid_token")
        for key in PROFILE_CLAIMS:
            if key in claims and not isinstance(claims[key], str):
                raise Unauthorized(f"invalid token: {key} must be a string", code="invalid_token")
            if key in claims and (not is_storable(claims[key]) or len(claims[key]) > MAX_CLAIM_CHARS):
                # a lone surrogate or NUL cannot be stored (the profile is saved from the claims)
                raise Unauthorized(f"invalid token: {key} must be text of at most {MAX_CLAIM_CHARS} characters",
                                   code="invalid_token")
        return claims

    def make_login_cookie(self, user_id, epoch=0):
        """A signed login cookie value for ``user_id`` valid ``auth.session_ttl`` seconds,
        with a random ``jti`` naming this login and the user's login ``epoch`` (``gen``):
        a password change moves the epoch on and so ends older cookies."""
        now = int(self.clock.seconds())
        return jwt.encode({"sub": user_id, "typ": "login", "iat": now, "jti": secrets.token_urlsafe(12),
                           "gen": int(epoch), "exp": now + self.config.auth.session_ttl},
                          self._cookie_key, algorithm="HS256")

    async def login_cookie(self, user_id):
        """:meth:`make_login_cookie` with the user's current login epoch from storage."""
        return self.make_login_cookie(user_id, await userdata.login_epoch(self.store, user_id) or 0)

    def login_cookie_claims(self, value):
        """The claims of a well-signed, unexpired login cookie (``sub``, ``jti`` …),
        without the epoch check. :raises Unauthorized: anything else."""
        if not value or not self._cookie_key:
            raise Unauthorized("not logged in", code="not_authenticated")
        try:
            claims = jwt.decode(value, self._cookie_key, algorithms=["HS256"], options={"require": ["sub", "exp"]})
        except jwt.PyJWTError:
            raise Unauthorized("login expired: log in again", code="not_authenticated") from None
        if claims.get("typ") != "login":
            raise Unauthorized("login expired: log in again", code="not_authenticated")
        return claims

    async def _login_cookie_identity(self, value):
        claims = self.login_cookie_claims(value)
        # A cookie from before the user's last password change (or of a deleted user)
        # no longer counts (docs/design.md#d19-session-lifetime).
        if await userdata.login_epoch(self.store, claims["sub"]) != claims.get("gen", 0):
            raise Unauthorized("login expired: log in again", code="not_authenticated")
        return Identity(claims["sub"], "session", login=claims.get("jti"))

    # -- identify ------------------------------------------------------------
    async def identify(self, creds, writes=False, allow_password=False):
        """Resolve the caller.

        :param writes: the call changes state: cookie-only authentication then must
            be a POST from an allowed origin (docs/design.md#d13-identity, no JSONP CSRF).
        :param allow_password: accept ``username``/``password`` (``online`` in
            ``accounts`` mode, as in the reference).
        :returns: :class:`Identity`.
        :raises Unauthorized: no or invalid credentials.
        :raises Forbidden: ticket of another user; cookie-only write from a foreign
            origin or by GET.
        :raises NotFound: unknown or expired ticket.
        """
        session = self.router.session(creds.ticket) if creds.ticket else None
        identity = None
        cookie_only = False
        if self.method == "token":
            token = creds.bearer or creds.token_param or creds.token_cookie
            if token:
                claims = self.verify_token(token)
                identity = Identity(claims["sub"], "token", claims=claims)
                cookie_only = not (creds.bearer or creds.token_param)
        else:
            if allow_password and creds.username:
                identity = Identity(await self.check_password(creds.username, creds.password), "password")
            elif creds.session_cookie and self._cookie_key:
                identity = await self._login_cookie_identity(creds.session_cookie)
                cookie_only = True
        if session is not None:
            if identity is not None and identity.user_id != session.user_id:
                raise Forbidden("ticket belongs to another user", code="ticket_mismatch")
            if identity is None:
                identity = Identity(session.user_id, "ticket")
            identity.session = session
            cookie_only = False
        if identity is None:
            raise Unauthorized("not authenticated", code="not_authenticated")
        if cookie_only and creds.jsonp:
            # A <script> from any site would carry the cookie: JSONP needs a ticket or token.
            raise Forbidden("JSONP calls must carry a ticket or token, not only a cookie", code="csrf")
        if writes and cookie_only:
            self._check_cookie_write(creds)
        return identity

    def origin_allowed(self, creds):
        """True if the request's ``Origin`` is the daemon's own (``public_url`` or the
        address the request came to) or listed in ``[server] allowed_origins`` (docs/design.md#d13-identity)."""
        origin = creds.origin
        return bool(origin) and (origin in self._allowed_origins or origin == creds.request_origin)

    def _check_cookie_write(self, creds):
        if creds.method != "POST":
            raise Forbidden("a cookie-authenticated change must be a POST", code="csrf")
        if not self.origin_allowed(creds):
            raise Forbidden("origin not allowed", code="csrf")

    async def check_password(self, username, password):
        """:returns: the user id. :raises Unauthorized: unknown user or wrong password
        (one message for both, so user names cannot be probed)."""
        if self.method != "accounts":
            raise Unauthorized("password login is not enabled", code="not_authenticated")
        user = await self.store.get_user(username or "")
        # An unknown user costs one hash too, so timing does not reveal who exists.
        stored = user["password_hash"] if user and user["password_hash"] else None
        ok = await self.blocking(lambda: verify_password(stored or _dummy(), password or ""))
        ok = ok and user is not None and bool(user["password_hash"])
        if not ok:
            raise Unauthorized("wrong user name or password", code="bad_credentials")
        return user["id"]
