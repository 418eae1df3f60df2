"""Protocol handlers: typed inputs (:class:`Identity`, :class:`Params`) → results.

A handler returns a JSON-able value, or :data:`OK` for the protocol's bare ``ok``
(docs/protocol.md#answers-and-content-types), and raises :class:`~nextim_twisted.errors.ProtocolError`
to refuse. No HTTP objects here (docs/architecture.md#rules-of-the-layers).
"""

#: The protocol's ``ok`` answer: ``ok`` in plain mode, ``cb("ok")`` under JSONP (docs/design.md#d1-plain-and-jsonp).
OK = object()
