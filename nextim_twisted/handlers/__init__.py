"""Protocol handlers: typed inputs (:class:`Identity`, :class:`Params`) → results.

A handler returns a JSON-able value, or :data:`OK` for the protocol's bare ``ok``
(docs/protocol.md#answers-and-content-types), and raises :class:`~nextim_twisted.errors.ProtocolError`
to refuse. No HTTP objects here (docs/architecture.md#rules-of-the-layers).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..auth import Identity
    from .context import Context
    from .params import Params

#: A ``webim/<name>`` handler: ``await handler(ctx, identity, params)`` → a JSON-able
#: answer or :data:`OK`; refuses by raising :class:`~nextim_twisted.errors.ProtocolError`.
Handler = Callable[["Context", "Identity", "Params"], Awaitable[Any]]

#: The protocol's ``ok`` answer: ``ok`` in plain mode, ``cb("ok")`` under JSONP (docs/design.md#d1-plain-and-jsonp).
OK = object()
