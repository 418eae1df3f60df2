"""Typed access to a request's parameters (already decoded to ``str``).

The web layer builds :class:`Params` from the query string and form body; handlers
read what they need and get a :class:`~nextim_twisted.errors.BadRequest` with the
parameter's name when it is missing or malformed.
"""
from ..errors import BadRequest

#: Longest id (user or room) accepted anywhere.
MAX_ID = 64


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
            ``Empty get <names>`` (protocol-reference §1.2).
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
        """A comma-separated id list (arrays arrive as ``1,2,3``, §1.1), de-duplicated
        in order; empty items dropped; at most 500 ids."""
        raw = self.get(name, "")
        result = []
        for item in raw.split(","):
            item = item.strip()
            if item and item not in result:
                check_id(item, name)
                result.append(item)
        if len(result) > 500:
            raise BadRequest(f"{name}: too many ids (at most 500)", code="bad_parameter")
        return result

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
    if any(ord(c) < 32 or ord(c) == 127 or c in ",/" for c in value) or value != value.strip():
        raise BadRequest(f"{name}: contains characters not allowed in an id", code="bad_parameter")
    return value
