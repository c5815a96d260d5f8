"""Several proxies on one shared state store (Redis), the runtime's side: the part of
:class:`proxy.runtime.state.StateKeeper` that subscribes to the changes the other nodes
publish and applies them, and announces this node (its SIP addresses and the id of its key)
and learns the others' (RFC 5626 5, several edge proxies; README "Running several
proxies").

The subscription is confirmed before the view is loaded, so that no change published after
the load is missed. A node's announcement is written and the others' read before it says
ready (a node started later finds it at once), again every :data:`ANNOUNCE_EVERY` seconds,
and at once when a change names a node not heard of yet (it started since).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from proxy.sip import host_port_text
from proxy.store import StoreChange, StoreError

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore
    from proxy.core.types import LocalAddress
    from proxy.runtime.state_key import KeyKeeper
    from proxy.runtime.state_upstreams import UpstreamStates
    from proxy.store import LearnedRoute, StateStore

log = logging.getLogger("proxy.state")

ANNOUNCE_EVERY = 5.0  # seconds between two announcements of this node's addresses
ANNOUNCE_TTL = 15.0  # an announcement outlives three missed refreshes
_WATCHERS = ("_watch", "_announce", "_refresh_peers")  # the tasks of a connection to the store


class SharedNodes:
    """Pub/sub and announcements of a :class:`~proxy.runtime.state.StateKeeper` (a mixin:
    the attributes below are the keeper's)."""

    store: StateStore
    core: ProxyCore
    node: str
    local: tuple[LocalAddress, ...]
    keys: KeyKeeper
    upstreams: UpstreamStates
    loop: asyncio.AbstractEventLoop
    routes: dict[str, LearnedRoute]
    on_change: Any
    _tasks: set[asyncio.Task[None]]
    _peers_read: float
    #: nodes known without an announcement: the other workers of this proxy (README
    #: "Workers"), whose addresses the supervisor bound before any of them started
    siblings: dict[str, list[str]] = {}  # noqa: RUF012 - never changed in place

    @property
    def name(self) -> str:
        raise NotImplementedError

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        raise NotImplementedError

    def _lost(self, exc: StoreError) -> None:
        raise NotImplementedError

    def _stop_watching(self) -> None:
        for task in list(self._tasks):
            if task.get_coro().__name__ in _WATCHERS:  # type: ignore[union-attr]
                task.cancel()

    async def _subscribe(self) -> None:
        """Start applying the changes other writers publish; returns once subscribed."""
        changes = getattr(self.store, "changes", None)
        if changes is None:
            return
        self._stop_watching()
        ready = asyncio.Event()
        watch = self._spawn(self._watch(ready))
        waiter = self.loop.create_task(ready.wait())
        try:
            await asyncio.wait({watch, waiter}, timeout=10.0,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not ready.is_set():
            watch.cancel()
            raise StoreError(f"state store {self.name}: could not subscribe to its changes")

    async def _watch(self, ready: asyncio.Event) -> None:
        """Apply the changes the other writers publish (Redis pub/sub)."""
        try:
            async for change in self.store.changes(ready.set):  # type: ignore[attr-defined]
                if change.origin == self.node:
                    continue
                fx = None
                try:
                    fx = self.core.apply_store_change(change, self.loop.time())
                    if change.op == "put_upstream_state" and change.upstream is not None:
                        self.upstreams.changed(change.upstream)
                    self._note_route_change(change)
                    self._peer_unknown(change)
                except Exception:  # noqa: BLE001 - a bad message must not end the watch
                    log.exception("state store %s: could not apply %s", self.name, change.op)
                self.on_change(fx)
        except StoreError as exc:
            if ready.is_set():
                self._lost(exc)

    def _note_route_change(self, change: StoreChange) -> None:
        if change.op == "put_route" and change.route is not None:
            self.routes[change.route.old_uri] = change.route
        elif change.op == "remove_route" and change.old_uri is not None:
            self.routes.pop(change.old_uri, None)
        elif change.op == "clear_routes":
            self.routes.clear()

    def addresses(self) -> list[str]:
        """This node's SIP addresses as announced: ``transport:host:port`` (advertised)."""
        out = []
        for a in self.local:
            host, _, port = a.advertised.rpartition(":")
            out.append(f"{a.transport}:{host_port_text(host.strip('[]'), int(port))}")
        return out

    async def _announce_once(self) -> None:
        """Announce this node (addresses, key id) and read the others'."""
        publish = getattr(self.store, "publish_node", None)
        nodes = getattr(self.store, "nodes", None)
        if publish is None or nodes is None:
            return
        await publish(self.node, self.addresses(), ANNOUNCE_TTL, self.keys.key_id)
        infos = await nodes()
        infos.pop(self.node, None)
        peers = dict(self.siblings)
        peers.update((name, info.addresses) for name, info in infos.items())
        self.core.set_peers(peers)
        self._peers_read = self.loop.time()
        self.keys.compare(infos)

    async def _announce(self) -> None:
        try:
            while True:
                await asyncio.sleep(ANNOUNCE_EVERY)
                await self._announce_once()
        except StoreError as exc:
            self._lost(exc)

    def _peer_unknown(self, change: StoreChange) -> None:
        """A binding held by a node this one has not heard of (it started since the last
        announcement was read): read the announcements now (at most once a second)."""
        b = change.binding
        if (b is None or not b.node or b.node == self.node or b.node in self.core.view.peers
                or self.loop.time() - self._peers_read < 1.0):
            return
        self._peers_read = self.loop.time()
        self._spawn(self._refresh_peers())

    async def _refresh_peers(self) -> None:
        try:
            await self._announce_once()
        except StoreError as exc:
            self._lost(exc)
