"""Typed access to a request's parameters (already decoded to ``str``).

The web layer builds :class:`Params` from the query string and form body; handlers
read what they need and get a :class:`~nextim_twisted.errors.BadRequest` with the
parameter's name when it is missing or malformed.
"""
from ..errors import BadRequest

#: Longest id (user or room) accepted anywhere.
MAX_ID = 64
#: Most ids a comma-separated list parameter may carry.
MAX_IDS = 500


class Params:
    """Parameters of one call: ``{name: str}`` (first value wins)."""

    def __init__(self, values):
        self.values = values

    def get(self, name, default=None):
        """The value, or ``default`` when absent or empty."""
        value = self.values.get(name)
        return default if value is None or value == "" else value

    def required(self, *names):
        """Values of required parameters (a str for one name, a tuple for several).

        :raises BadRequest: names every missing one, like the reference's
            ``Empty get <names>`` (docs/protocol.md#answers-and-content-types).
        """
        missing = [n for n in names if self.get(n) is None]
        if missing:
            raise BadRequest(f"missing parameter: {', '.join(missing)}", code="missing_parameter")
        values = tuple(self.values[n] for n in names)
        return values[0] if len(names) == 1 else values

    def ident(self, name, required=True):
        """A user or room id: non-empty, at most :data:`MAX_ID` characters, no control characters."""
        value = self.required(name) if required else self.get(name)
        if value is not None:
            check_id(value, name)
        return value

    def ids(self, name):
        """A comma-separated id list (arrays arrive as ``1,2,3``, docs/protocol.md#conventions), de-duplicated
        in order; empty items dropped; at most 500 ids."""
        raw = self.get(name, "")
        result = {}  # a dict keeps the order and makes the de-duplication O(1)
        for item in raw.split(","):
            item = item.strip()
            if item and item not in result:
                if len(result) == MAX_IDS:
                    # Fail at the first id too many: a 40 KB list is not walked (docs/design.md#d15-limits).
                    raise BadRequest(f"{name}: too many ids (at most {MAX_IDS})", code="bad_parameter")
                check_id(item, name)
                result[item] = None
        return list(result)

    def integer(self, name, minimum=0):
        """An optional non-negative integer parameter, or None."""
        value = self.get(name)
        if value is None:
            return None
        try:
            number = int(value, 10)
        except ValueError:
            raise BadRequest(f"{name}: must be an integer", code="bad_parameter") from None
        if number < minimum or number > 2**53:
            raise BadRequest(f"{name}: out of range", code="bad_parameter")
        return number


def check_id(value, name="id"):
    """:raises BadRequest: if ``value`` is not an acceptable user/room id."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise BadRequest(f"{name}: must be 1 to {MAX_ID} characters", code="bad_parameter")
    if (any(ord(c) < 32 or ord(c) == 127 or c in ",/" for c in value) or value != value.strip()
            or not is_storable(value)):
        raise BadRequest(f"{name}: contains characters not allowed in an id", code="bad_parameter")
    return value


def is_storable(text):
    """True if ``text`` (str) can be stored and sent as UTF-8 text: no NUL character
    (PostgreSQL text refuses it) and no lone surrogate (not encodable as UTF-8; a JSON
    ``"\\ud800"`` escape decodes to one). Form parameters cannot carry either (they
    are strict UTF-8 without NUL); JSON bodies and token claims can."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
