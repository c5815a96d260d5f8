"""The ``memory:`` backend of :class:`proxy.store.StateStore`: dicts, gone with the process.

Behaves as the persistent backends do (same ordering, expiry and generation rules, same
errors before :meth:`MemoryStore.open`), so that code tested against it works against them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Self

from proxy.store.base import (
    Incarnation,
    LearnedRoute,
    StoreChange,
    StoredBinding,
    StoreError,
    UpstreamState,
    check_batch,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """In-process state: routes by ``old_uri``, bindings by ``aor`` then ``key``."""

    __slots__ = ("_bindings", "_epoch", "_generation", "_key", "_open", "_routes", "_upstreams")

    def __init__(self) -> None:
        self._routes: dict[str, LearnedRoute] = {}
        self._bindings: dict[str, dict[str, StoredBinding]] = {}
        self._generation = 0
        self._open = False
        self._epoch = secrets.token_hex(8)
        self._key: bytes | None = None
        self._upstreams: dict[str, UpstreamState] = {}

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

    async def write_batch(self, changes: Sequence[StoreChange]) -> int:
        self._check()
        check_batch(changes)
        for c in changes:
            await _apply(self, c)
        self._generation += 1 - len(changes)  # one bump for the batch
        return self._generation

    async def incarnation(self) -> Incarnation:
        self._check()
        return Incarnation(self._epoch, self._generation)

    async def put_upstream_state(self, s: UpstreamState) -> None:
        self._check()
        self._upstreams[s.upstream] = s
        self._generation += 1

    async def list_upstream_states(self) -> list[UpstreamState]:
        self._check()
        return [self._upstreams[k] for k in sorted(self._upstreams)]

    async def shared_key(self, candidate: bytes | None) -> bytes | None:
        self._check()
        if self._key is None and candidate is not None:
            self._key = bytes(candidate)
        return self._key

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


async def _apply(store: MemoryStore, c: StoreChange) -> None:
    """One change of a batch (checked by :func:`check_batch`), by the method of its name."""
    if c.op == "put_binding" and c.binding is not None:
        await store.put_binding(c.binding)
    elif c.op == "remove_binding" and c.aor is not None and c.key is not None:
        await store.remove_binding(c.aor, c.key)
    elif c.op == "remove_bindings" and c.aor is not None:
        await store.remove_bindings(c.aor)
    elif c.op == "put_route" and c.route is not None:
        await store.put_route(c.route)
    elif c.op == "remove_route" and c.old_uri is not None:
        await store.remove_route(c.old_uri)
