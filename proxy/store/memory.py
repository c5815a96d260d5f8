"""The ``memory:`` backend of :class:`proxy.store.StateStore`: dicts, gone with the process.

Behaves as the persistent backends do (same ordering, expiry and generation rules, same
errors before :meth:`MemoryStore.open`), so that code tested against it works against them.
"""

from __future__ import annotations

from typing import Self

from proxy.store.base import LearnedRoute, StoredBinding, StoreError

__all__ = ["MemoryStore"]


class MemoryStore:
    """In-process state: routes by ``old_uri``, bindings by ``aor`` then ``key``."""

    __slots__ = ("_bindings", "_generation", "_open", "_routes")

    def __init__(self) -> None:
        self._routes: dict[str, LearnedRoute] = {}
        self._bindings: dict[str, dict[str, StoredBinding]] = {}
        self._generation = 0
        self._open = False

    def __repr__(self) -> str:
        return "MemoryStore()"

    def _check(self) -> None:
        if not self._open:
            raise StoreError("memory state store: not open")

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- learned routes (RFC 3261 21.3.2) ---------------------------------------------------

    async def put_route(self, r: LearnedRoute) -> None:
        self._check()
        self._routes[r.old_uri] = r
        self._generation += 1

    async def get_route(self, old_uri: str, now: float) -> LearnedRoute | None:
        self._check()
        r = self._routes.get(old_uri)
        if r is None:
            return None
        if r.expired(now):
            del self._routes[old_uri]
            return None
        return r

    async def remove_route(self, old_uri: str) -> bool:
        self._check()
        self._generation += 1
        return self._routes.pop(old_uri, None) is not None

    async def list_routes(self, now: float) -> list[LearnedRoute]:
        self._check()
        self._purge_routes(now)
        return [self._routes[k] for k in sorted(self._routes)]

    async def clear_routes(self) -> int:
        self._check()
        count = len(self._routes)
        self._routes.clear()
        self._generation += 1
        return count

    # -- registrations (RFC 3261 10.3, RFC 5626) --------------------------------------------

    async def put_binding(self, b: StoredBinding) -> None:
        self._check()
        self._bindings.setdefault(b.aor, {})[b.key] = b
        self._generation += 1

    async def remove_binding(self, aor: str, key: str) -> None:
        self._check()
        entries = self._bindings.get(aor)
        if entries is not None:
            entries.pop(key, None)
            if not entries:
                del self._bindings[aor]
        self._generation += 1

    async def remove_bindings(self, aor: str) -> None:
        self._check()
        self._bindings.pop(aor, None)
        self._generation += 1

    async def list_bindings(self, now: float) -> list[StoredBinding]:
        self._check()
        self._purge_bindings(now)
        return [
            self._bindings[aor][key]
            for aor in sorted(self._bindings)
            for key in sorted(self._bindings[aor])
        ]

    # -- housekeeping -----------------------------------------------------------------------

    async def purge_expired(self, now: float) -> int:
        self._check()
        return self._purge_routes(now) + self._purge_bindings(now)

    async def generation(self) -> int:
        self._check()
        return self._generation

    def _purge_routes(self, now: float) -> int:
        expired = [k for k, r in self._routes.items() if r.expired(now)]
        for k in expired:
            del self._routes[k]
        return len(expired)

    def _purge_bindings(self, now: float) -> int:
        count = 0
        for aor in list(self._bindings):
            entries = self._bindings[aor]
            expired = [k for k, b in entries.items() if b.expired(now)]
            for k in expired:
                del entries[k]
            count += len(expired)
            if not entries:
                del self._bindings[aor]
        return count
