"""Row shapes the store answers with: plain dicts, typed here for the seam between
storage and the layers above (docs/design.md#d7-messages for the message fields)."""
from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class User(TypedDict):
    """A directory user; optional fields are ``None`` when unset."""

    id: str
    nick: str
    pic_url: str | None
    default_pic_url: str | None
    url: str | None
    password_hash: str | None


class Room(TypedDict):
    """A directory room; ``all_count`` is the number of site members."""

    id: str
    nick: str
    pic_url: str | None
    url: str | None
    all_count: int


#: A stored message: a logItem plus its row ``id`` (``from`` is a Python keyword, hence
#: this form). ``timestamp`` is epoch milliseconds; ``id`` increases strictly in
#: insertion order; ``style`` may be ``None`` or ``""``.
Message = TypedDict("Message", {
    "id": int,
    "type": Literal["unicast", "multicast", "broadcast"],
    "from": str,
    "to": str,
    "nick": str,
    "body": str,
    "style": str | None,
    "timestamp": int,
    # the sender's key (docs/design.md#d17-idempotent-sends); None or absent without one
    "client_id": NotRequired[str | None],
})


class Notification(TypedDict):
    """A notification; ``time`` is epoch milliseconds, ``link`` may be ``None``."""

    id: int
    text: str
    link: str | None
    time: int


class StatsCounts(TypedDict):
    """Counts for ``GET /admin/stats`` and ``nextimctl stats``; ``undelivered`` is
    unicast messages not yet handed over (docs/design.md#d10-history)."""

    users: int
    rooms: int
    messages: int
    undelivered: int
