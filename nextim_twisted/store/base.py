"""The storage interface every backend implements (DESIGN.md "storage & bridges").

All methods return Deferreds and never block the reactor thread (adbapi pool).
Rows come back as plain dicts so core and handlers stay free of SQL.

Shapes:
- user:   ``{"id", "nick", "pic_url", "default_pic_url", "url", "password_hash"}``
  (missing optional fields are ``None``).
- room:   ``{"id", "nick", "pic_url", "url", "all_count"}`` (``all_count`` = site members).
- message (logItem, protocol-reference §2.2): ``{"id", "type", "from", "to", "nick",
  "body", "style", "timestamp"}``; ``timestamp`` is integer milliseconds; ``id`` is
  the storage row id (an int, strictly increasing in insertion order).
- notification: ``{"id", "text", "link", "time"}`` (``time`` in ms).
"""


class Store:
    """Abstract storage; see :mod:`nextim_twisted.store.sql` for the real one."""

    def start(self):
        """Open the database, create or upgrade the schema. Deferred → None.

        Raises (via the Deferred) :class:`SchemaError` if the database was written by
        a newer version of the code.
        """
        raise NotImplementedError

    def close(self):
        """Close the pool. Deferred → None."""
        raise NotImplementedError

    def ping(self):
        """Run a trivial query. Deferred → True; fails if storage is unreachable."""
        raise NotImplementedError

    # users ---------------------------------------------------------------
    def get_user(self, user_id):
        """Deferred → user dict or ``None``."""
        raise NotImplementedError

    def get_users(self, user_ids):
        """Deferred → ``{id: user dict}`` for the ids that exist (unknown ids absent)."""
        raise NotImplementedError

    def list_users(self, limit=1000, offset=0):
        """Deferred → list of user dicts ordered by id."""
        raise NotImplementedError

    def put_user(self, user_id, nick, pic_url=None, default_pic_url=None, url=None):
        """Create or update a user (upsert); keeps an existing password hash. Deferred → None."""
        raise NotImplementedError

    def set_password_hash(self, user_id, password_hash):
        """Set (or with ``None`` clear) the password hash. Deferred → bool (user exists)."""
        raise NotImplementedError

    def delete_user(self, user_id):
        """Delete a user with their buddies, room memberships, settings and notifications
        (their messages stay in other people's history). Deferred → bool (existed)."""
        raise NotImplementedError

    # buddies (symmetric) -------------------------------------------------
    def get_buddies(self, user_id):
        """Deferred → list of ``(buddy_id, group)`` for ``user_id``'s side, ordered by id."""
        raise NotImplementedError

    def put_buddy(self, user_id, buddy_id, group=None):
        """Make the two users buddies of each other. ``group`` is set on ``user_id``'s
        side; the other side keeps its own group, or gets the same one when new.
        Deferred → None."""
        raise NotImplementedError

    def delete_buddy(self, user_id, buddy_id):
        """Remove the relation on both sides. Deferred → bool (existed)."""
        raise NotImplementedError

    # rooms ---------------------------------------------------------------
    def get_room(self, room_id):
        """Deferred → room dict or ``None``."""
        raise NotImplementedError

    def get_rooms(self, room_ids):
        """Deferred → ``{id: room dict}`` for the ids that exist."""
        raise NotImplementedError

    def list_rooms(self):
        """Deferred → list of room dicts ordered by id."""
        raise NotImplementedError

    def put_room(self, room_id, nick, pic_url=None, url=None):
        """Create or update a room (upsert). Deferred → None."""
        raise NotImplementedError

    def delete_room(self, room_id):
        """Delete a room and its memberships (history stays). Deferred → bool."""
        raise NotImplementedError

    def rooms_of_user(self, user_id):
        """Deferred → list of room dicts the user is a member of, ordered by id."""
        raise NotImplementedError

    def room_member_ids(self, room_id):
        """Deferred → list of member user ids, ordered."""
        raise NotImplementedError

    def is_member(self, room_id, user_id):
        """Deferred → bool."""
        raise NotImplementedError

    def put_member(self, room_id, user_id):
        """Add a member (idempotent). Deferred → None."""
        raise NotImplementedError

    def delete_member(self, room_id, user_id):
        """Deferred → bool (was a member)."""
        raise NotImplementedError

    # messages (history) --------------------------------------------------
    def add_message(self, type, from_id, to_id, nick, body, style, timestamp, delivered, also=None):
        """Commit one message; returns only after the commit (D7). ``type`` is
        unicast, multicast or broadcast. ``also(cursor, message)`` runs in the same
        transaction after the insert (webhook outbox rows). Deferred → message dict
        (with ``id``)."""
        raise NotImplementedError

    def undelivered(self, user_id, limit=50):
        """Unicast messages to ``user_id`` not yet delivered, the *oldest* ``limit``,
        oldest first (D10). Deferred → list of message dicts."""
        raise NotImplementedError

    def mark_delivered(self, message_ids):
        """Mark undelivered messages delivered. Deferred → sorted list of the ids this
        call changed (an id already delivered, e.g. by a concurrent call, is not in it)."""
        raise NotImplementedError

    def unicast_history(self, user_id, other_id, limit=30):
        """Messages between the two users, newest ``limit`` returned oldest first,
        without the ones ``user_id`` cleared and without undelivered ones addressed
        to ``user_id`` (they belong to ``new_messages``, D10). Deferred → list."""
        raise NotImplementedError

    def room_history(self, room_id, limit=30):
        """Multicast messages of a room, newest ``limit`` oldest first. Deferred → list."""
        raise NotImplementedError

    def clear_history(self, user_id, other_id):
        """Hide the unicast history between the two from ``user_id``'s side only;
        rows hidden from both sides are deleted (protocol-reference §2.3). Deferred → None."""
        raise NotImplementedError

    def purge_messages(self, older_than_ms):
        """Delete every message with ``timestamp < older_than_ms`` (epoch ms), in one
        transaction (retention: ``[storage] retention_days``, ``nextimctl history
        purge``). Deferred → number of messages deleted (int)."""
        raise NotImplementedError

    def export_messages(self, user_id=None, since_ms=None, after_id=0, limit=1000):
        """One page of messages in id order: ``id > after_id``, at most ``limit``;
        filtered to those sent by or addressed to ``user_id`` and to ``timestamp >=
        since_ms`` (ms) when given (``nextimctl history export``). Deferred → list of
        message dicts."""
        raise NotImplementedError

    def stats_counts(self):
        """Deferred → ``{"users", "rooms", "messages", "undelivered"}`` (ints;
        undelivered = unicast messages not yet delivered, D10)."""
        raise NotImplementedError

    # settings ------------------------------------------------------------
    def get_setting(self, user_id):
        """Deferred → the stored JSON text or ``None``."""
        raise NotImplementedError

    def put_setting(self, user_id, json_text):
        """Store the JSON text verbatim (D11). Deferred → None."""
        raise NotImplementedError

    # daemon metadata -----------------------------------------------------
    def get_or_create_meta(self, key, make_value):
        """The value stored under ``key``; when absent, store ``make_value()`` (a str)
        first. Used for the login-cookie key. Deferred → str."""
        raise NotImplementedError

    # notifications -------------------------------------------------------
    def add_notification(self, user_id, text, link, time_ms):
        """Deferred → notification dict."""
        raise NotImplementedError

    def take_unread_notifications(self, user_id, limit=50):
        """Unread notifications newest first, marked read in the same transaction
        (D12). Deferred → list of notification dicts."""
        raise NotImplementedError


class SchemaError(Exception):
    """The database cannot be used by this version of the code (e.g. it is newer)."""
