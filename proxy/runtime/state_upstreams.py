"""The upstreams' administrative states (up, drain, down) in the state store, the runtime's
side (README "Runtime control of upstreams").

The core holds the states in memory (``core.admin``) and is the only place routing reads
them. :class:`UpstreamStates` keeps the store in step with it, for the
:class:`~proxy.runtime.state.StateKeeper`:

- a state set on this node (``upstreams drain URI``, ``POST /upstreams/drain``) is applied to
  the core at once, then written to the store; when the store is away it is kept and written
  first thing once the store answers (before the store's view is loaded, so an outage does
  not undo it);
- at start, and whenever the store answers again, the stored states are loaded: a restarted
  proxy keeps an upstream drained; with Redis every other node's state arrives by pub/sub
  (:meth:`UpstreamStates.changed`), with sqlite by the runtime's one-second poll;
- a store that comes back reset gets the states this node set written back (memory is the
  truth for what this node set), then the others' are added, a newer one winning.

Every state read from the store reaches the core through ``apply`` (the runtime's
``set_upstream_admin`` call, whose Effects it carries out, logs included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.core.upstream_admin import AdminState
from proxy.store import StateStore, UpstreamState

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

log = logging.getLogger("proxy.state")

#: apply(state, origin): hand one state to the core ("here": set on this node; "store")
Apply = Callable[[UpstreamState, str], None]


def to_admin(s: UpstreamState) -> AdminState:
    return AdminState(s.upstream, s.state, s.since, s.node)


def to_stored(a: AdminState) -> UpstreamState:
    return UpstreamState(a.upstream, a.state, a.since, a.node)


class UpstreamStates:
    """See the module docstring. ``apply`` defaults to feeding the core directly (its
    Effects dropped: tests); the runtime passes its own, which carries them out."""

    def __init__(self, store: StateStore, core: ProxyCore, node: str, name: str,
                 memory: bool) -> None:
        self.store = store
        self.core = core
        self.node = node
        self.name = name
        self.memory = memory  # memory: the store would only hold a second copy
        self.apply: Apply = self._apply_direct
        #: set on this node and not written yet (the store was away), by upstream
        self.pending: dict[str, UpstreamState] = {}

    def _apply_direct(self, s: UpstreamState, origin: str) -> None:
        self.core.set_upstream_admin(to_admin(s), origin, 0.0)

    async def set(self, s: UpstreamState, up: bool) -> bool:
        """A state set on this node (already applied to the core): write it. False when it
        could not be written now (``up`` False: the store is away; or the write failed: it
        raises nothing, the caller learns it from the keeper's ``_lost``)."""
        if self.memory:
            return True
        self.pending[s.upstream] = s
        if not up:
            return False
        await self.flush()
        return True

    async def flush(self) -> None:
        """Write what was set here meanwhile (raises StoreError)."""
        while self.pending:
            upstream, s = next(iter(self.pending.items()))
            await self.store.put_upstream_state(s)
            if self.pending.get(upstream) is s:
                del self.pending[upstream]

    def changed(self, s: UpstreamState) -> None:
        """Another node set a state (Redis pub/sub)."""
        self._take(s)

    def _take(self, s: UpstreamState) -> bool:
        """Apply a stored state unless memory has it already or set it since."""
        mine = self.core.view.admin_states.get(s.upstream)
        if mine is not None and (mine.state, mine.since, mine.node) == (s.state, s.since, s.node):
            return False
        if s.upstream in self.pending:
            return False  # set here meanwhile, not written yet: memory wins
        self.apply(s, "store")
        return True

    async def load(self, *, merge: bool) -> int:
        """The stored states into memory (raises StoreError). ``merge`` (after a write-back
        into a reset store): only what memory lacks, or a newer state another node set."""
        if self.memory:
            return 0
        await self.flush()
        taken = 0
        for s in await self.store.list_upstream_states():
            mine = self.core.view.admin_states.get(s.upstream)
            if merge and mine is not None and (mine.node == self.node or mine.since >= s.since):
                continue
            taken += self._take(s)
        if taken:
            log.info("upstream states loaded from %s: %d", self.name, taken)
        return taken

    async def write_back(self) -> int:
        """Into a reset store: the states this node set (raises StoreError)."""
        if self.memory:
            return 0
        own = [to_stored(a) for a in self.core.view.admin_states.values() if a.node == self.node]
        for s in own:
            self.pending.setdefault(s.upstream, s)
        await self.flush()
        return len(own)
