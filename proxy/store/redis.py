"""The ``redis://HOST:PORT/DB`` backend of :class:`proxy.store.StateStore`: not written yet.

Imported only when a ``proxy.yaml`` names a redis state, so the redis client library stays an
optional dependency.
"""

from __future__ import annotations

from proxy.store.base import StateStore


def open_redis(spec: str) -> StateStore:
    """The redis store for ``spec``; raises NotImplementedError until the backend exists."""
    raise NotImplementedError("redis backend: later issue")
