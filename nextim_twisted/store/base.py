"""The storage interface every backend implements; the SQL one is :mod:`.sql`.

All methods return Deferreds and never block the reactor thread (adbapi pool).
Rows come back as plain dicts so core and handlers stay free of SQL.

Shapes:
- user:   ``{"id", "nick", "pic_url", "default_pic_url", "url", "password_hash"}``
  (missing optional fields are ``None``).
- room:   ``{"id", "nick", "pic_url", "url", "all_count"}`` (``all_count`` = site members).
- message (logItem, docs/protocol.md#logitem): ``{"id", "type", "from", "to", "nick",
  "body", "style", "timestamp"}``; ``timestamp`` is integer milliseconds; ``id`` is
  the storage row id (an int, strictly increasing in insertion order).
- notification: ``{"id", "text", "link", "time"}`` (``time`` in ms).

The shapes are typed in :mod:`.rows`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred

from .rows import Message, Notification, Room, StatsCounts, User


class Store:
    """Abstract storage; see :mod:`nextim_twisted.store.sql` for the real one."""

    def start(self) -> Deferred[None]:
        """Open the database, create or upgrade the schema. Deferred → None.

        Raises (via the Deferred) :class:`SchemaError` if the database was written by
        a newer version of the code.
        """
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        """Close the pool. Deferred → None."""
        raise NotImplementedError

    def ping(self) -> Deferred[bool]:
        """Run a trivial query. Deferred → True; fails if storage is unreachable."""
        raise NotImplementedError

    # users ---------------------------------------------------------------
    def get_user(self, user_id: str) -> Deferred[User | None]:
        """Deferred → user dict or ``None``."""
        raise NotImplementedError

    def get_users(self, user_ids: Iterable[str]) -> Deferred[dict[str, User]]:
        """Deferred → ``{id: user dict}`` for the ids that exist (unknown ids absent)."""
        raise NotImplementedError

    def list_users(self, limit: int = 1000, offset: int = 0) -> Deferred[list[User]]:
        """Deferred → list of user dicts ordered by id."""
        raise NotImplementedError

    def put_user(self, user_id: str, nick: str, pic_url: str | None = None, default_pic_url: str | None = None,
                 url: str | None = None) -> Deferred[None]:
        """Create or update a user (upsert); keeps an existing password hash. Deferred → None."""
        raise NotImplementedError

    def set_password_hash(self, user_id: str, password_hash: str | None) -> Deferred[bool]:
        """Set (or with ``None`` clear) the password hash. Deferred → bool (user exists)."""
        raise NotImplementedError

    def delete_user(self, user_id: str) -> Deferred[bool]:
        """Delete a user with their buddies, room memberships, settings and notifications
        (their messages stay in other people's history). Deferred → bool (existed)."""
        raise NotImplementedError

    # buddies (symmetric) -------------------------------------------------
    def get_buddies(self, user_id: str) -> Deferred[list[tuple[str, str | None]]]:
        """Deferred → list of ``(buddy_id, group)`` for ``user_id``'s side, ordered by id."""
        raise NotImplementedError

    def put_buddy(self, user_id: str, buddy_id: str, group: str | None = None) -> Deferred[None]:
        """Make the two users buddies of each other. ``group`` is set on ``user_id``'s
        side; the other side keeps its own group, or gets the same one when new.
        Deferred → None."""
        raise NotImplementedError

    def delete_buddy(self, user_id: str, buddy_id: str) -> Deferred[bool]:
        """Remove the relation on both sides. Deferred → bool (existed)."""
        raise NotImplementedError

    # rooms ---------------------------------------------------------------
    def get_room(self, room_id: str) -> Deferred[Room | None]:
        """Deferred → room dict or ``None``."""
        raise NotImplementedError

    def get_rooms(self, room_ids: Iterable[str]) -> Deferred[dict[str, Room]]:
        """Deferred → ``{id: room dict}`` for the ids that exist."""
        raise NotImplementedError

    def list_rooms(self) -> Deferred[list[Room]]:
        """Deferred → list of room dicts ordered by id."""
        raise NotImplementedError

    def put_room(self, room_id: str, nick: str, pic_url: str | None = None,
                 url: str | None = None) -> Deferred[None]:
        """Create or update a room (upsert). Deferred → None."""
        raise NotImplementedError

    def delete_room(self, room_id: str) -> Deferred[bool]:
        """Delete a room and its memberships (history stays). Deferred → bool."""
        raise NotImplementedError

    def rooms_of_user(self, user_id: str) -> Deferred[list[Room]]:
        """Deferred → list of room dicts the user is a member of, ordered by id."""
        raise NotImplementedError

    def room_member_ids(self, room_id: str) -> Deferred[list[str]]:
        """Deferred → list of member user ids, ordered."""
        raise NotImplementedError

    def is_member(self, room_id: str, user_id: str) -> Deferred[bool]:
        """Deferred → bool."""
        raise NotImplementedError

    def put_member(self, room_id: str, user_id: str) -> Deferred[None]:
        """Add a member (idempotent). Deferred → None."""
        raise NotImplementedError

    def delete_member(self, room_id: str, user_id: str) -> Deferred[bool]:
        """Deferred → bool (was a member)."""
        raise NotImplementedError

    # messages (history) --------------------------------------------------
    def add_message(self, type: str, from_id: str, to_id: str, nick: str, body: str, style: str | None,
                    timestamp: int, delivered: bool,
                    also: Callable[[Any, Message], None] | None = None) -> Deferred[Message]:
        """Commit one message; returns only after the commit (docs/design.md#d7-messages). ``type`` is
        unicast, multicast or broadcast. ``also(cursor, message)`` runs in the same
        transaction after the insert (the webhook outbox's rows,
        docs/design.md#d22-the-site-as-source-of-truth). Deferred → message dict (with ``id``)."""
        raise NotImplementedError

    def undelivered(self, user_id: str, limit: int = 50) -> Deferred[list[Message]]:
        """Unicast messages to ``user_id`` not yet delivered, the *oldest* ``limit``,
        oldest first (docs/design.md#d10-history). Deferred → list of message dicts."""
        raise NotImplementedError

    def mark_delivered(self, message_ids: Iterable[int]) -> Deferred[list[int]]:
        """Mark undelivered messages delivered. Deferred → sorted list of the ids this
        call changed (an id already delivered, e.g. by a concurrent call, is not in it)."""
        raise NotImplementedError

    def mark_undelivered(self, message_ids: Iterable[int]) -> Deferred[None]:
        """Mark messages undelivered again (a backlog page that found its session ended,
        docs/design.md#d18-the-whole-backlog). Deferred → None."""
        raise NotImplementedError

    def unicast_history(self, user_id: str, other_id: str, limit: int = 30) -> Deferred[list[Message]]:
        """Messages between the two users, newest ``limit`` returned oldest first,
        without the ones ``user_id`` cleared and without undelivered ones addressed
        to ``user_id`` (they belong to ``new_messages``, docs/design.md#d10-history). Deferred → list."""
        raise NotImplementedError

    def room_history(self, room_id: str, limit: int = 30) -> Deferred[list[Message]]:
        """Multicast messages of a room, newest ``limit`` oldest first. Deferred → list."""
        raise NotImplementedError

    def clear_history(self, user_id: str, other_id: str) -> Deferred[None]:
        """Hide the unicast history between the two from ``user_id``'s side only;
        rows hidden from both sides are deleted (docs/protocol.md#webimclear_history). Deferred → None."""
        raise NotImplementedError

    def purge_messages(self, older_than_ms: int) -> Deferred[int]:
        """Delete every message with ``timestamp < older_than_ms`` (epoch ms), in one
        transaction (retention: ``[storage] retention_days``, ``nextimctl history
        purge``). Deferred → number of messages deleted (int)."""
        raise NotImplementedError

    def export_messages(self, user_id: str | None = None, since_ms: int | None = None, after_id: int = 0,
                        limit: int = 1000) -> Deferred[list[Message]]:
        """One page of messages in id order: ``id > after_id``, at most ``limit``;
        filtered to those sent by or addressed to ``user_id`` and to ``timestamp >=
        since_ms`` (ms) when given (``nextimctl history export``). Deferred → list of
        message dicts."""
        raise NotImplementedError

    def stats_counts(self) -> Deferred[StatsCounts]:
        """Deferred → ``{"users", "rooms", "messages", "undelivered"}`` (ints;
        undelivered = unicast messages not yet delivered, docs/design.md#d10-history)."""
        raise NotImplementedError

    # settings ------------------------------------------------------------
    def get_setting(self, user_id: str) -> Deferred[str | None]:
        """Deferred → the stored JSON text or ``None``."""
        raise NotImplementedError

    def put_setting(self, user_id: str, json_text: str) -> Deferred[None]:
        """Store the JSON text verbatim (docs/design.md#d11-settings). Deferred → None."""
        raise NotImplementedError

    # daemon metadata -----------------------------------------------------
    def get_or_create_meta(self, key: str, make_value: Callable[[], str]) -> Deferred[str]:
        """The value stored under ``key``; when absent, store ``make_value()`` (a str)
        first. Used for the login-cookie key. Deferred → str."""
        raise NotImplementedError

    # notifications -------------------------------------------------------
    def add_notification(self, user_id: str, text: str, link: str | None, time_ms: int) -> Deferred[Notification]:
        """Deferred → notification dict."""
        raise NotImplementedError

    def take_unread_notifications(self, user_id: str, limit: int = 50) -> Deferred[list[Notification]]:
        """Unread notifications newest first, marked read in the same transaction
        (docs/design.md#d12-notifications). Deferred → list of notification dicts."""
        raise NotImplementedError


class SchemaError(Exception):
    """The database cannot be used by this version of the code (e.g. it is newer)."""
