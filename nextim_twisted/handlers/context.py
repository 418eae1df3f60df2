"""What every handler works with: config, storage, live state, auth, clock, limits."""
import json

from ..core.presence import normalize_show
from ..core.ratelimit import RateLimiter
from ..errors import BadRequest, Forbidden


class Context:
    """Shared collaborators of the handlers.

    :param config: :class:`~nextim_twisted.config.Config`.
    :param store: a :class:`~nextim_twisted.store.base.Store`.
    :param router: the :class:`~nextim_twisted.core.router.Router`.
    :param auth: the :class:`~nextim_twisted.auth.Authenticator`.
    :param clock: ``IReactorTime``.
    """

    def __init__(self, config, store, router, auth, clock):
        self.config = config
        self.store = store
        self.router = router
        self.auth = auth
        self.clock = clock
        self.limiter = RateLimiter(clock, {
            "messages": config.limits.messages_per_minute,
            "presences": config.limits.presences_per_minute,
        })
        self.shutting_down = False

    def now_ms(self):
        """Integer milliseconds from the injected clock (D7 timestamps)."""
        return int(self.clock.seconds() * 1000)

    @property
    def poll_url(self):
        """``connection.server``: the full long-poll URL (D3)."""
        return self.config.public_url + "/packets"

    async def settings_of(self, user_id):
        """The user's stored settings object (D11), ``{}`` when none or unreadable."""
        text = await self.store.get_setting(user_id)
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def session_of(identity):
    """The session a ticket-bearing call refers to.

    :raises BadRequest: when the call carried no ticket (§2 table: ``ticket`` required).
    """
    if identity.session is None:
        raise BadRequest("missing parameter: ticket", code="missing_parameter")
    return identity.session


def parse_show(value, allow_offline=True):
    """A D8 show from a parameter.

    :raises BadRequest: unknown value.
    """
    show = normalize_show(value)
    if show is None or (show == "unavailable" and not allow_offline):
        raise BadRequest("show: must be one of available, away, chat, dnd, invisible, unavailable",
                         code="bad_parameter")
    return show


def blocked_rooms(settings):
    """Room ids from the ``blocked_rooms`` setting (D9); ignores non-string entries."""
    value = settings.get("blocked_rooms")
    if not isinstance(value, list):
        return set()
    return {str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool)}


def require_live(ctx, identity):
    """The caller's live user state. :raises Forbidden: the user has no live session."""
    user = ctx.router.users.get(identity.user_id)
    if user is None:
        raise Forbidden("go online first", code="not_online")
    return user
