"""State stores: learned routes and registrations behind one Protocol (see :mod:`.base`).

Backends (``memory``, ``sqlite``, ``redis``) are imported only when :func:`open_store` picks
one; import them from their modules when a concrete type is needed.
"""

from __future__ import annotations

from proxy.store.base import (
    CorruptStoreError,
    LearnedRoute,
    SchemaVersionError,
    StateStore,
    StoreChange,
    StoredBinding,
    StoreError,
    UpstreamState,
)
from proxy.store.open import open_store

__all__ = [
    "CorruptStoreError",
    "LearnedRoute",
    "SchemaVersionError",
    "StateStore",
    "StoreChange",
    "StoreError",
    "StoredBinding",
    "UpstreamState",
    "open_store",
]
