"""Value shapes of the protocol (docs/protocol.md#data-shapes) built from storage rows and
live state, and the ``style`` sanitizer (docs/design.md#d15-limits)."""
import re


def user_info(profile, show, status, status_time=None):
    """userInfo: ``{id, nick, pic_url, default_pic_url, url, show, status, status_time}``."""
    return {
        "id": profile["id"],
        "nick": profile.get("nick") or profile["id"],
        "pic_url": profile.get("pic_url") or "",
        "default_pic_url": profile.get("default_pic_url") or "",
        "url": profile.get("url") or "",
        "show": show,
        "status": status or "",
        "status_time": status_time,
    }


def buddy_info(profile, group, presence):
    """buddyInfo (docs/protocol.md#buddyinfo): userInfo plus ``group`` and ``presence``.

    :param presence: ``(presence, show, status)`` as :meth:`Router.presence_of` gives it.
    """
    state, show, status = presence
    info = user_info(profile, show, status)
    del info["status_time"]
    info["group"] = group or ""
    info["presence"] = state
    return info


def room_info(room, count, blocked=False):
    """roomInfo (docs/protocol.md#roominfo) ``{id, nick, pic_url, default_pic_url, url, all_count, count, blocked}``."""
    return {
        "id": room["id"],
        "nick": room.get("nick") or room["id"],
        "pic_url": room.get("pic_url") or "",
        "default_pic_url": "",
        "url": room.get("url") or "",
        "all_count": room.get("all_count", 0),
        "count": count,
        "blocked": bool(blocked),
    }


def log_item(message):
    """logItem (docs/protocol.md#logitem) from a stored message, with its storage ``id``
    and, when the sender gave one, its ``client_id`` (docs/design.md#d17-idempotent-sends):
    a client matches its own retried or echoed messages by them."""
    item = {
        "id": message["id"],
        "type": message["type"],
        "from": message["from"],
        "to": message["to"],
        "nick": message["nick"],
        "body": message["body"],
        "style": message.get("style") or "",
        "timestamp": message["timestamp"],
    }
    if message.get("client_id") is not None:
        item["client_id"] = message["client_id"]
    return item


_STYLE_PROPERTIES = {
    "color", "background-color", "background", "font", "font-family", "font-size",
    "font-style", "font-weight", "font-variant", "text-decoration",
}
_STYLE_FORBIDDEN = ("url(", "expression", "javascript:", "<", ">", '"', "\\", "@", "/*")
_STYLE_VALUE = re.compile(r"^[\w\s#%.,'()+-]*$")


def sanitize_style(style, max_length=150):
    """Keep only simple ``property: value`` pairs of colour, background colour, font and
    text decoration; drop pairs containing ``url(``, ``expression``, ``javascript:``,
    ``<``, ``>``, ``"`` or ``\\`` (docs/design.md#d15-limits). Returns normalized CSS (``"a:b;c:d"``) of at most
    ``max_length`` characters (whole pairs only)."""
    if not style:
        return ""
    kept = []
    for part in style.split(";"):
        if ":" not in part:
            continue
        prop, value = part.split(":", 1)
        prop, value = prop.strip().lower(), value.strip()
        lowered = value.lower()
        if prop not in _STYLE_PROPERTIES or not value:
            continue
        if any(bad in lowered for bad in _STYLE_FORBIDDEN) or not _STYLE_VALUE.match(value):
            continue
        pair = f"{prop}:{value}"
        if len(";".join(kept + [pair])) > max_length:
            break
        kept.append(pair)
    return ";".join(kept)
