"""Registers ``twistd nextim`` (docs/architecture.md: a ServiceMaker only)."""
from twisted.application.service import ServiceMaker

nextim = ServiceMaker(
    "nextim-twisted",
    "nextim_twisted.tap",
    "Web instant-messaging daemon speaking the NextIM protocol.",
    "nextim",
)
