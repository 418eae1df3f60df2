"""Packet delivery to live sessions: the interface (:mod:`.base`) and the in-process
implementation (:mod:`.local`). See docs/design.md#d20-cluster."""
from .base import IHub, Kind, Packet
from .local import LocalHub

__all__ = ["IHub", "Kind", "LocalHub", "Packet"]
