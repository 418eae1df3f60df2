"""Storage: the interface (:mod:`.base`), its row shapes (:mod:`.rows`), the SQL
backend (:mod:`.sql`) and :func:`make_store`, which builds the configured one."""
from .factory import make_store

__all__ = ["make_store"]
