"""Rules for new user ids: one spelling per identity, one identity per JID
(docs/design.md#d13-identity, docs/xmpp.md "User ids").

- A user id is kept in Unicode NFC: ``dé`` written as ``e`` + U+0301 is refused, so
  the two spellings of ``dé`` cannot be two users (Unicode Standard Annex #15).
- No format controls (general category ``Cf``: the bidi controls U+202A–U+202E and
  U+2066–U+2069, zero-width joiners and spaces, …): they change how an id looks, not
  what it is, and an id with U+202E shows reversed.
- With the XMPP bridge on, a new id whose XMPP address equals an existing user's is
  refused (409). Two forms are compared: the nodeprep profile of stringprep
  (RFC 3920 Appendix A, which Prosody and ejabberd apply: NFKC and case folding, so
  ``ｆw`` is ``fw`` and ``Case`` is ``case``) and the PRECIS UsernameCaseMapped profile
  of RFC 7622 §3.3 (width mapping, lower case, NFC). Case-only differences are
  refused too: the XMPP server folds case, so ``case`` and ``Case`` would share one
  JID and replies would reach the wrong user.

Existing ids that break a rule keep working (they are not refused when used); the
``nextimctl ids check`` command lists them. Pure, except :func:`check_xmpp_clash`
and :meth:`XmppForms.load`, which read the directory.
"""
import unicodedata

from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from .errors import BadRequest, ProtocolError
from .xmpp.mapping import escape_node


class IdClash(ProtocolError):
    """409: the id would share its XMPP address with an existing user."""

    status = 409
    code = "id_clash"


def problems(user_id):
    """What is wrong with ``user_id`` as a new id, as short English phrases (``[]``:
    nothing). Covers NFC and format controls; see :func:`xmpp_forms` for clashes."""
    found = []
    if unicodedata.normalize("NFC", user_id) != user_id:
        found.append("not in Unicode NFC (normalise it: "
                     f"{unicodedata.normalize('NFC', user_id).encode('unicode_escape').decode()})")
    controls = sorted({c for c in user_id if unicodedata.category(c) == "Cf"})
    if controls:
        found.append("contains format control characters " + ", ".join(f"U+{ord(c):04X}" for c in controls))
    return found


def check_new_id(user_id, name="id"):
    """:raises BadRequest: (400, ``bad_id``) ``user_id`` is not NFC or contains format
    controls. Returns ``user_id``."""
    found = problems(user_id)
    if found:
        raise BadRequest(f"{name}: {'; '.join(found)}", code="bad_id")
    return user_id


def _precis_username(node):
    """RFC 7622 §3.3 / RFC 8265 §3.3 UsernameCaseMapped, as far as it changes what
    two ids compare as: fullwidth/halfwidth to their decompositions, lower case, NFC."""
    mapped = "".join(unicodedata.normalize("NFKC", c)
                     if unicodedata.decomposition(c).startswith(("<wide>", "<narrow>")) else c for c in node)
    return unicodedata.normalize("NFC", mapped.lower())


def xmpp_forms(user_id):
    """The forms an XMPP server may turn the id's JID localpart into:
    ``(nodeprep form or None, PRECIS form)``. ``None``: nodeprep refuses the id (it
    has characters stringprep prohibits), so Prosody and ejabberd cannot address it."""
    node = escape_node(user_id)
    try:
        prepped = nodeprep.prepare(node)
    except UnicodeError:
        prepped = None
    return prepped, _precis_username(node)


class XmppForms:
    """``{xmpp form: user id}`` of the directory, to find clashes without a scan.

    The bridge keeps one (loaded at start, kept in step by the admin API and token
    sign-ups); users written by ``nextimctl`` while the daemon runs are seen at the
    daemon's next start.
    """

    def __init__(self):
        self._by_form = {}

    async def load(self, store, page=1000):
        """Read every user id from ``store`` (``list_users`` pages)."""
        offset = 0
        while True:
            users = await store.list_users(limit=page, offset=offset)
            for u in users:
                self.add(u["id"])
            if len(users) < page:
                return
            offset += len(users)

    def add(self, user_id):
        """Remember an existing id (the first one keeps a form two old ids share)."""
        for form in xmpp_forms(user_id):
            if form is not None:
                self._by_form.setdefault(form, user_id)

    def remove(self, user_id):
        for form in xmpp_forms(user_id):
            if self._by_form.get(form) == user_id:
                del self._by_form[form]

    def clash(self, user_id):
        """The existing user id ``user_id`` would share an XMPP address with, or None."""
        for form in xmpp_forms(user_id):
            other = self._by_form.get(form)
            if other is not None and other != user_id:
                return other
        return None

    def node_user(self, node):
        """The user id whose (nodeprep) localpart is ``node``, or None."""
        return self._by_form.get(node)


def raise_clash(user_id, other):
    """:raises IdClash: naming both ids."""
    raise IdClash(f"id: {user_id!r} would have the same XMPP address as the existing user {other!r} "
                  "(XMPP servers normalise case, width and composed characters)")


async def check_xmpp_clash(ctx, user_id):
    """With the bridge on, refuse a new id that shares its XMPP address with an
    existing user. Uses the bridge's :class:`XmppForms`; without a running bridge
    (``nextimctl`` with ``[xmpp] enabled``) reads the directory.

    :raises IdClash: 409, naming the clash; :raises BadRequest: 400 ``bad_id`` when
        the XMPP server could not address the id at all.
    """
    if ctx.xmpp is None and not ctx.config.xmpp.enabled:
        return
    if xmpp_forms(user_id)[0] is None:
        raise BadRequest("id: has characters an XMPP address may not contain (RFC 3920 Appendix A)",
                         code="bad_id")
    if ctx.xmpp is not None:
        forms = ctx.xmpp.forms
    else:
        forms = XmppForms()
        await forms.load(ctx.store)
    other = forms.clash(user_id)
    if other is not None:
        raise_clash(user_id, other)


async def broken_ids(store, page=1000):
    """Every stored user id that breaks a rule: ``[(user_id, problem)]`` in id order,
    clashes listed on the later id of each pair (for ``nextimctl ids check``)."""
    result, forms, offset = [], XmppForms(), 0
    while True:
        users = await store.list_users(limit=page, offset=offset)
        for u in users:
            uid = u["id"]
            result += [(uid, p) for p in problems(uid)]
            if xmpp_forms(uid)[0] is None:
                result.append((uid, "cannot be an XMPP address (stringprep prohibits a character)"))
            other = forms.clash(uid)
            if other is not None:
                result.append((uid, f"same XMPP address as {other}"))
            forms.add(uid)
        if len(users) < page:
            return result
        offset += len(users)
