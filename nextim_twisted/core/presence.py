"""Presence values and the per-user live state (docs/design.md#d8-presence, docs/protocol.md#presence-model)."""

#: Shows a client may set (docs/design.md#d8-presence); ``unavailable`` is handled as "go offline".
SHOWS = ("available", "away", "chat", "dnd", "invisible")
#: Legacy spellings seen in the wild (docs/protocol.md#a14-show-values).
SHOW_ALIASES = {"busy": "dnd", "buzy": "dnd"}
OFFLINE_SHOW = "unavailable"


def normalize_show(value):
    """Map a client's ``show`` to a show value.

    :returns: one of :data:`SHOWS`, or ``"unavailable"``; ``None`` if ``value`` is unknown.
    """
    if value is None:
        return None
    value = value.strip().lower()
    value = SHOW_ALIASES.get(value, value)
    if value in SHOWS or value == OFFLINE_SHOW:
        return value
    return None


#: Shared empty ``contacts`` of users who never talked to a stranger: an empty set of
#: each user's own would cost 216 bytes per online user (RSS per idle user, docs/benchmarks.md).
NO_CONTACTS: frozenset[str] = frozenset()


class OnlineUser:
    """A user with at least one session, or inside the grace after the last one (docs/design.md#d5-timers).

    :ivar profile: ``{"id", "nick", "pic_url", "default_pic_url", "url"}`` from the directory.
    :ivar show: current show (one of :data:`SHOWS`).
    :ivar status: free status text.
    :ivar status_time: ms timestamp of the last show/status change.
    :ivar sessions: ``{ticket: Session}``.
    :ivar buddies: ids of directory buddies (symmetric relation, docs/design.md#d8-presence).
    :ivar contacts: ids of users this user exchanged messages with while online (docs/design.md#d8-presence).
    :ivar rooms: ids of rooms this user is live-joined to (docs/design.md#d9-rooms).
    """

    __slots__ = ("id", "profile", "show", "status", "status_time", "sessions", "buddies",
                 "contacts", "rooms", "grace_timer")

    def __init__(self, profile, show, status, status_time, buddies):
        self.id = profile["id"]
        self.profile = profile
        self.show = show
        self.status = status
        self.status_time = status_time
        self.sessions = {}
        self.buddies = set(buddies)
        self.contacts = NO_CONTACTS  # a set of its own from the first contact on
        self.rooms = set()
        self.grace_timer = None

    @property
    def nick(self):
        return self.profile.get("nick") or self.id

    @property
    def visible(self):
        """False when invisible: others see the user offline (docs/design.md#d8-presence)."""
        return self.show != "invisible"

    def add_contact(self, user_id):
        """``user_id`` exchanged a message with this user while both were online (docs/design.md#d8-presence)."""
        if self.contacts is NO_CONTACTS:
            self.contacts = set()
        self.contacts.add(user_id)

    def drop_contact(self, user_id):
        """``user_id`` went offline: no more presence to or from them as a contact."""
        if user_id in self.contacts:
            self.contacts.discard(user_id)

    def related(self):
        """Ids that receive this user's presence: buddies and contacts (docs/design.md#d8-presence)."""
        return self.buddies | self.contacts
