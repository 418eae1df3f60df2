"""Protocol handlers: typed inputs (:class:`Identity`, :class:`Params`) → results.

A handler returns a JSON-able value, or :data:`OK` for the protocol's bare ``ok``
(protocol-reference §1.2), and raises :class:`~nextim_twisted.errors.ProtocolError`
to refuse. No HTTP objects here (DESIGN.md layers).
"""

#: The protocol's ``ok`` answer: ``ok`` in plain mode, ``cb("ok")`` under JSONP (D1).
OK = object()
