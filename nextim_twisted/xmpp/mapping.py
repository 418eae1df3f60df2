"""Presence/show mapping between the web side (docs/design.md#d8-presence) and XMPP
(RFC 3921 §2.2, §5), and the mapping of web user ids to JIDs of the component domain
(XEP-0106 escaping).

Everything here is pure: no I/O (Twisted's JID class only for stringprep).
"""

#: Web show → XMPP ``<show/>`` text (``None``: no ``<show/>`` element, i.e. plain available).
_WEB_TO_XMPP = {"available": None, "chat": "chat", "away": "away", "dnd": "dnd"}
#: XMPP ``<show/>`` → web show (RFC 3921 §2.2.2.1); ``xa`` has no web equivalent: away.
_XMPP_TO_WEB = {None: "available", "": "available", "chat": "chat", "away": "away", "xa": "away", "dnd": "dnd"}
#: How "available" a web show is, for choosing among an XMPP contact's resources.
_RANK = {"chat": 0, "available": 1, "away": 2, "dnd": 3}


def web_to_xmpp(show):
    """The XMPP presence for a web user's ``show`` (docs/design.md#d8-presence).

    :param show: a web show (``available``, ``away``, ``chat``, ``dnd``, ``invisible``) or
        ``unavailable`` (offline).
    :returns: ``(type, show_text)``: ``type`` is ``None`` (available) or ``"unavailable"``;
        ``show_text`` is the ``<show/>`` text or ``None``. Invisible users are unavailable
        to XMPP (others see them offline). Unknown values count as ``available``.
    """
    if show in ("invisible", "unavailable", "offline"):
        return "unavailable", None
    return None, _WEB_TO_XMPP.get(show)


def xmpp_to_web(type_, show_text):
    """The web show for an XMPP presence.

    :param type_: the presence ``type`` attribute (``None`` for available).
    :param show_text: the ``<show/>`` text or ``None``.
    :returns: a web show, or ``"unavailable"`` for ``unavailable``/``error`` presences.
        An unknown ``<show/>`` value counts as ``available`` (RFC 3921 §2.2.2.1 lists
        only away, chat, dnd, xa).
    """
    if type_ in ("unavailable", "error"):
        return "unavailable"
    if type_ is not None:
        raise ValueError(f"not an availability presence: {type_!r}")
    return _XMPP_TO_WEB.get((show_text or "").strip(), "available")


def aggregate(resources):
    """The one presence the web shows for a contact with several resources online.

    :param resources: ``{resource: (show, status, priority)}`` of available resources
        (web shows, priority an int).
    :returns: ``(show, status)`` of the resource with the highest priority, ties broken
        by the most available show (chat, available, away, dnd) then by resource name;
        ``("unavailable", "")`` when there is none.
    """
    if not resources:
        return "unavailable", ""
    best = min(resources.items(), key=lambda kv: (-kv[1][2], _RANK.get(kv[1][0], 9), kv[0]))
    show, status, _ = best[1]
    return show, status or ""


# XEP-0106 JID escaping: a web id may contain characters a JID node may not.
_ESCAPES = {" ": "\\20", '"': "\\22", "&": "\\26", "'": "\\27", "/": "\\2f", ":": "\\3a",
            "<": "\\3c", ">": "\\3e", "@": "\\40", "\\": "\\5c"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def escape_node(user_id):
    """A web user id as a JID localpart (XEP-0106 §4.2). ``"a@b.c"`` → ``"a\\40b.c"``."""
    out = []
    for i, c in enumerate(user_id):
        if c == "\\":
            # Escape a backslash only where it would otherwise read as an escape sequence.
            out.append("\\5c" if user_id[i:i + 3].lower() in _UNESCAPES else c)
        else:
            out.append(_ESCAPES.get(c, c))
    return "".join(out)


def unescape_node(node):
    """Inverse of :func:`escape_node` (XEP-0106 §4.3)."""
    out, i = [], 0
    while i < len(node):
        seq = node[i:i + 3].lower()
        if node[i] == "\\" and seq in _UNESCAPES:
            out.append(_UNESCAPES[seq])
            i += 3
        else:
            out.append(node[i])
            i += 1
    return "".join(out)


def user_jid(user_id, component_domain, resource=None):
    """The JID of a web user on the XMPP side: ``<escaped id>@<component_domain>[/resource]``."""
    jid = f"{escape_node(user_id)}@{component_domain}"
    return f"{jid}/{resource}" if resource else jid


def normalize_contact(value, component_domain=None):
    """The bare JID of an XMPP contact, normalised (stringprep, RFC 3920 §3).

    :raises ValueError: (with a message for the operator) not a bare ``user@domain``
        JID, or one of the component domain (a web user's own address).
    """
    from twisted.words.protocols.jabber.jid import JID, InvalidFormat
    try:
        jid = JID(value)
    except (InvalidFormat, UnicodeError):
        raise ValueError("not a valid JID") from None
    if not jid.user or jid.resource or (component_domain and jid.host == component_domain):
        raise ValueError("an XMPP buddy must be a bare JID user@domain of another domain")
    return jid.full()


def nick_of(jid):
    """A display name for a JID without one: its localpart (or the whole JID)."""
    bare = jid.split("/", 1)[0]
    return bare.split("@", 1)[0] if "@" in bare else bare
