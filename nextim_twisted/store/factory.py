"""The configured storage backend: ``[storage] backend`` picks SQLite or PostgreSQL."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .sql import SQLStore

if TYPE_CHECKING:
    from ..config import Config


def make_store(config: Config, reactor: Any) -> SQLStore:
    """The store ``config`` names, not started (:meth:`~.base.Store.start` opens it).

    :param config: validated config; its ``[storage]`` section is read.
    :param reactor: the reactor whose thread pool runs the queries.
    """
    storage = config.storage
    if storage.backend == "postgres":
        return SQLStore.postgres(storage.dsn, schema=storage.schema, reactor=reactor)
    return SQLStore.sqlite(os.path.abspath(storage.path), synchronous=storage.synchronous.upper(),
                           reactor=reactor)
