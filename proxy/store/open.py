"""Pick a state store backend by the ``state:`` value of ``proxy.yaml``.

Kept apart from :mod:`proxy.store.base` (which the backends import) so that choosing a backend
imports it without an import cycle; backends are imported only when chosen.
"""

from __future__ import annotations

from pathlib import Path

from proxy.store.base import StateStore

__all__ = ["open_store"]


def open_store(spec: str, *, node: str = "cli") -> StateStore:
    """The (unopened) store named by a ``proxy.yaml`` ``state:`` value.

    ``"memory:"``, ``"sqlite:/abs/path"`` (the config loader makes a relative path absolute
    against the config file's directory), ``"redis://[:PASSWORD@]HOST:PORT/DB"``, ``"rediss://..."``
    or ``"redis+cluster://HOST:PORT[,HOST:PORT...]"``; ``node`` names the writer in a shared
    store's change messages. Backends are imported only when chosen. Raises
    :class:`ValueError` for a spec that names none of them.
    """
    text = spec.strip()
    if text == "memory:":
        from proxy.store.memory import MemoryStore

        return MemoryStore()
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:"):]
        if not rest:
            raise ValueError("state 'sqlite:' needs a file path: sqlite:/abs/path")
        path = Path(rest)
        if not path.is_absolute():
            raise ValueError(
                f"state {spec!r}: the sqlite path must be absolute here "
                "(resolve it against the config file's directory first)"
            )
        from proxy.store.sqlite import SqliteStore

        return SqliteStore(path)
    if text.partition("://")[0].lower() in ("redis", "rediss", "redis+cluster") and "://" in text:
        from proxy.store.redis import open_redis

        return open_redis(text, node=node)
    raise ValueError("state must be memory:, sqlite:PATH, redis://HOST:PORT/DB, rediss://... or "
                     f"redis+cluster://HOST:PORT[,HOST:PORT...]; got {spec!r}")
