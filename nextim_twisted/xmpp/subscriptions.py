"""The RFC 3921 presence-subscription state machine of one pair: a web user (served
by the component) and an XMPP contact (a bare JID) that the directory made buddies.

The bridge plays both the web user's client and server (RFC 3921 §9): for a pair in
the directory it drives the subscription to ``both`` — it asks for the contact's
presence (``subscribe``) and approves the contact's request (``subscribed``); for a
JID that is *not* the web user's buddy it refuses requests (``unsubscribed``).

Pure: a :class:`Subscription` is an immutable value; each function takes one and
returns ``(new_subscription, actions)`` where ``actions`` is a tuple of what the
bridge must do, in order:

- :data:`SEND_SUBSCRIBE`, :data:`SEND_SUBSCRIBED`, :data:`SEND_UNSUBSCRIBE`,
  :data:`SEND_UNSUBSCRIBED`: send a presence of that type to the contact;
- :data:`SEND_PRESENCE`: send the web user's current presence to the contact
  (available or unavailable);
- :data:`SEND_UNAVAILABLE`: send ``unavailable`` to the contact;
- :data:`CONTACT_GONE`: forget the contact's presence (the web user sees them offline).
"""
from dataclasses import dataclass, replace

#: RFC 3921 §9 subscription states (from the web user's side: ``to`` = the web user
#: receives the contact's presence, ``from`` = the contact receives the web user's).
STATES = ("none", "to", "from", "both")

SEND_SUBSCRIBE = "subscribe"
SEND_SUBSCRIBED = "subscribed"
SEND_UNSUBSCRIBE = "unsubscribe"
SEND_UNSUBSCRIBED = "unsubscribed"
SEND_PRESENCE = "presence"
SEND_UNAVAILABLE = "unavailable"
CONTACT_GONE = "contact-gone"


@dataclass(frozen=True)
class Subscription:
    """State of one pair.

    :ivar state: one of :data:`STATES`.
    :ivar ask: True while our ``subscribe`` waits for an answer ("pending out",
        RFC 3921 §9.2 ``ask='subscribe'``).
    """

    state: str = "none"
    ask: bool = False

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"unknown subscription state: {self.state!r}")

    @property
    def has_to(self):
        """The web user receives the contact's presence."""
        return self.state in ("to", "both")

    @property
    def has_from(self):
        """The contact receives the web user's presence."""
        return self.state in ("from", "both")

    @property
    def label(self):
        """``state`` plus ``+pending`` while a request is out, e.g. ``from+pending``."""
        return self.state + ("+pending" if self.ask else "")

    def _with(self, to=None, from_=None, ask=None):
        t = self.has_to if to is None else to
        f = self.has_from if from_ is None else from_
        state = {(False, False): "none", (True, False): "to", (False, True): "from", (True, True): "both"}[(t, f)]
        return replace(self, state=state, ask=self.ask if ask is None else ask)


def ensure(sub):
    """Drive a directory pair towards ``both`` (on pairing and after every (re)connect):
    ask for the contact's presence unless we already have it. A request still pending
    is sent again (the stanza may have been lost with a connection; RFC 3921 §8.2 lets
    the contact's server treat a repeat as a no-op)."""
    if sub.has_to:
        return sub, ()
    return sub._with(ask=True), (SEND_SUBSCRIBE,)


def inbound(sub, type_, paired):
    """The contact sent a subscription presence of ``type_``.

    :param type_: ``subscribe``, ``subscribed``, ``unsubscribe`` or ``unsubscribed``.
    :param paired: the directory makes the two buddies.
    :returns: ``(subscription, actions)``.
    :raises ValueError: another ``type_``.

    - ``subscribe``: paired → approve (``subscribed``), send our presence, and ask
      back if we do not have theirs (RFC 3921 §8.2, §8.2.1); not paired → refuse
      (``unsubscribed``), state unchanged.
    - ``subscribed``: our request was approved (state gains ``to``) — only if we
      asked or the pair wants it; an unsolicited one is ignored (RFC 3921 §9.3).
    - ``unsubscribe``: the contact no longer wants our presence: state loses
      ``from``; acknowledge (``unsubscribed``) and send ``unavailable`` (RFC 3921 §8.4).
    - ``unsubscribed``: our subscription was cancelled or refused: loses ``to``,
      the request is no longer pending, the contact's presence is forgotten (RFC 3921 §8.2.1, §8.5).
    """
    if type_ == "subscribe":
        if not paired:
            return sub, (SEND_UNSUBSCRIBED,)
        new = sub._with(from_=True)
        actions = [SEND_SUBSCRIBED, SEND_PRESENCE]
        if not new.has_to and not new.ask:
            new = new._with(ask=True)
            actions.append(SEND_SUBSCRIBE)
        return new, tuple(actions)
    if type_ == "subscribed":
        if not (sub.ask or (paired and not sub.has_to)):
            return sub, ()
        return sub._with(to=True, ask=False), ()
    if type_ == "unsubscribe":
        if not sub.has_from:
            return sub, ()
        return sub._with(from_=False), (SEND_UNSUBSCRIBED, SEND_UNAVAILABLE)
    if type_ == "unsubscribed":
        if not sub.has_to and not sub.ask:
            return sub, ()
        return sub._with(to=False, ask=False), (CONTACT_GONE,)
    raise ValueError(f"not a subscription presence: {type_!r}")


def remove(sub):
    """The directory dropped the pair: cancel both directions (RFC 3921 §8.6: send
    ``unsubscribe`` if we had or asked for their presence, ``unsubscribed`` if they
    had ours). Returns ``(Subscription(), actions)``."""
    actions = []
    if sub.has_to or sub.ask:
        actions.append(SEND_UNSUBSCRIBE)
    if sub.has_from:
        actions.append(SEND_UNAVAILABLE)
        actions.append(SEND_UNSUBSCRIBED)
    return Subscription(), tuple(actions) + ((CONTACT_GONE,) if sub.has_to else ())


def may_see(sub):
    """True if the contact may receive the web user's presence (answer probes, send
    updates): the state has ``from`` (RFC 3921 §5.1.3, §5.1.2)."""
    return sub.has_from
