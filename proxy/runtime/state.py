"""Durable and shared state, the runtime's side: the state store behind the core's memory.

:class:`StateKeeper` owns the store for the runtime:

* at start it opens the store and loads every unexpired learned route and binding into the
  core (a restarted proxy serves the phones registered before it at once);
* the core's binding changes (the location's journal, taken after every call into the core)
  are written in the background, in order, from a bounded queue: the hot path never waits
  for the store. A learned 301 is awaited, as the core asks (it goes on once it is durable);
* with a shared store (Redis), the changes every other proxy (or a ``routes`` /
  ``registrations`` command) makes arrive by pub/sub and are applied to the core's view at
  once; each node announces its SIP addresses (with a TTL) and learns the others';
* when the store cannot be reached (at start or mid-run) calls keep flowing on what is in
  memory: the loss is logged once, reconnects run in the background, and once the store is
  back what was learned meanwhile is written, then the view is reloaded (the changes
  published meanwhile were missed) and the recovery logged once. Only a store this code
  cannot use (a newer schema, a damaged file) stops the start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from proxy.core import shared
from proxy.core.registrar import BindingDelete, BindingWrite, MemoryLocation
from proxy.core.types import LocalAddress
from proxy.sip import host_port_text
from proxy.store import (
    CorruptStoreError,
    LearnedRoute,
    SchemaVersionError,
    StateStore,
    StoreError,
)

if TYPE_CHECKING:
    from proxy.core.proxy import ProxyCore

log = logging.getLogger("proxy.state")

QUEUE_LIMIT = 100_000  # pending writes kept while the store is away; beyond: resync from memory
ANNOUNCE_EVERY = 5.0  # seconds between two announcements of this node's addresses
ANNOUNCE_TTL = 15.0  # an announcement outlives three missed refreshes
RETRY_MIN, RETRY_MAX = 0.25, 5.0  # reconnect back-off, seconds

Write = Callable[[], Awaitable[None]]


def default_node(listen: list[LocalAddress] | tuple[LocalAddress, ...]) -> str:
    """``HOSTNAME:PORT`` of the first listener (CONTRACT ``node:`` default)."""
    return f"{socket.gethostname()}:{listen[0].port}"


def is_shared(spec: str) -> bool:
    """Whether a ``state:`` value names a store several proxies share live (Redis)."""
    return spec.partition("://")[0].lower() in ("redis", "rediss", "redis+cluster")


class StateKeeper:
    """The state store between the runtime and the core (see the module docstring)."""

    def __init__(self, store: StateStore, core: ProxyCore, location: MemoryLocation,
                 spec: str, node: str, local: tuple[LocalAddress, ...],
                 on_change: Callable[[], None]) -> None:
        self.store = store
        self.core = core
        self.location = location
        self.spec = spec
        self.node = node
        self.shared = is_shared(spec)
        self.local = local
        self.on_change = on_change  # the runtime re-arms its timer after a change applied
        self.up = False
        self._queue: deque[Write] = deque()
        self._overflow = False
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        #: the generation after this process's last written batch (sqlite: the runtime's
        #: poll tells its own writes from another process's by it)
        self.own_generation: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting = False
        self._closing = False
        self.loop = asyncio.get_running_loop()
        # memory: the store would only hold a second copy of the view: nothing to write
        location.journal = None if spec.strip() == "memory:" else []
        core.cluster.node = node
        core.cluster.shared = self.shared

    @property
    def name(self) -> str:
        from proxy.store.redis import redacted

        return redacted(self.spec) if self.shared else self.spec

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open and load; a shared store that cannot be reached is retried in the background.
        Raises :class:`StoreError` for a store that cannot be used (not for an absent one)."""
        try:
            await self.store.open()
            await self._load()
        except (SchemaVersionError, CorruptStoreError):
            raise
        except StoreError as exc:
            if not self.shared:
                raise
            self._lost(exc)
        else:
            self.up = True
            self.on_change()
            self._after_up()
        self._spawn(self._writer())

    async def close(self) -> None:
        """Write what is pending, then let go of the store; bounded (about 2.5 s at most):
        a store that does not answer is given up."""
        self._closing = True
        if self.up and self._queue:
            try:
                await asyncio.wait_for(self._flush(), 1.5)
            except (TimeoutError, StoreError) as exc:
                log.error("state store %s: %d changes not written at exit: %s", self.name,
                          len(self._queue), exc or "timeout")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=0.5)
        try:
            await asyncio.wait_for(self.store.close(), 0.5)
        except (TimeoutError, StoreError) as exc:
            log.error("closing the state store: %s", exc or "timeout")

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _after_up(self) -> None:
        if self.shared:
            self._spawn(self._watch())
            self._spawn(self._announce())

    # -------------------------------------------------------------- loading

    async def _load(self) -> None:
        now_wall = time.time()
        self.core.wall_offset = now_wall - self.loop.time()
        routes = await self.store.list_routes(now_wall)
        stored = await self.store.list_bindings(now_wall)
        now = self.loop.time()
        self.core.load_learned(routes, now)
        loaded = shared.load_bindings(self.core, stored, now)
        self.on_change()
        if routes:
            log.info("learned routes loaded from %s: %d", self.name, len(routes))
        if stored:
            log.info("registrations loaded from %s: %d bindings (%d new to memory)", self.name,
                     len(stored), loaded)

    # -------------------------------------------------------------- writes

    def bindings_changed(self) -> None:
        """Queue the core's binding changes for the store (call after every core call)."""
        changes = self.location.take_changes()
        if not changes:
            return
        store = self.store
        for c in changes:
            if isinstance(c, BindingWrite):
                self._enqueue(partial(store.put_binding, shared.to_stored(self.core, c.binding)))
            elif isinstance(c, BindingDelete):
                if c.key is None:
                    self._enqueue(partial(store.remove_bindings, c.aor))
                else:
                    self._enqueue(partial(store.remove_binding, c.aor, c.key))

    def _enqueue(self, write: Write) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            if not self._overflow:
                log.error("state store %s: more than %d changes pending; the oldest are "
                          "dropped and memory is written out whole once the store is back",
                          self.name, QUEUE_LIMIT)
            self._overflow = True
        self._queue.append(write)
        self._wake.set()

    async def put_route(self, route: LearnedRoute) -> bool:
        """Make a learned route durable now (the call waits for it); False when the store is
        away: the route is then written once it is back, and the call goes on."""
        if not self.up:
            self._enqueue(partial(self.store.put_route, route))
            return False
        try:
            await self._flush()  # earlier changes first: the store sees them in order
            await self.store.put_route(route)
            return True
        except StoreError as exc:
            self._enqueue(partial(self.store.put_route, route))
            self._lost(exc)
            return False

    async def _flush(self) -> None:
        """Write the queue in order; one writer at a time (the background writer, a learned
        route, the exit)."""
        async with self._flushing:
            while self._queue:
                await self._queue[0]()
                self._queue.popleft()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.up:
                continue
            try:
                await self._flush()
                if not self.shared:
                    self.own_generation = await self.store.generation()
            except StoreError as exc:
                self._lost(exc)

    # -------------------------------------------------------------- outages

    def _lost(self, exc: StoreError) -> None:
        """The store stopped answering: say so once, reconnect in the background."""
        if self._closing:
            return
        was_up, self.up = self.up, False
        self.on_change()
        if was_up or not self._reconnecting:
            log.error("state store %s unreachable (%s): relaying calls on what is in memory; "
                      "changes are kept and written when it answers again", self.name, exc)
        if not self._reconnecting:
            self._reconnecting = True
            for task in list(self._tasks):
                if task.get_coro().__name__ in ("_watch", "_announce"):  # type: ignore[union-attr]
                    task.cancel()
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RETRY_MIN
        while not self._closing:
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
            try:
                await self.store.close()
                await self.store.open()
                pending = len(self._queue)
                await self._flush()
                if self._overflow:
                    await self._rewrite_memory()
                await self._load()
            except StoreError:
                continue
            self._reconnecting = False
            self.up = True
            self.on_change()
            log.warning("state store %s is back: %d changes made meanwhile written", self.name,
                        pending)
            self._after_up()
            return

    async def _rewrite_memory(self) -> None:
        for b in self.location.bindings():
            await self.store.put_binding(shared.to_stored(self.core, b))
        self._overflow = False

    # -------------------------------------------------------------- several proxies

    async def _watch(self) -> None:
        """Apply the changes the other writers publish (Redis pub/sub)."""
        changes = getattr(self.store, "changes", None)
        if changes is None:
            return
        try:
            async for change in changes():
                if change.origin == self.node:
                    continue
                try:
                    shared.apply_change(self.core, change, self.loop.time())
                except Exception:  # noqa: BLE001 - a bad message must not end the watch
                    log.exception("state store %s: could not apply %s", self.name, change.op)
                self.on_change()
        except StoreError as exc:
            self._lost(exc)

    def addresses(self) -> list[str]:
        """This node's SIP addresses as announced: ``transport:host:port`` (advertised)."""
        out = []
        for a in self.local:
            host, _, port = a.advertised.rpartition(":")
            out.append(f"{a.transport}:{host_port_text(host.strip('[]'), int(port))}")
        return out

    async def _announce(self) -> None:
        publish = getattr(self.store, "publish_node", None)
        nodes = getattr(self.store, "nodes", None)
        if publish is None or nodes is None:
            return
        mine = self.addresses()
        try:
            while True:
                await publish(self.node, mine, ANNOUNCE_TTL)
                peers = shared.parse_peers(await nodes())
                peers.pop(self.node, None)
                self.core.cluster.peers = peers
                await asyncio.sleep(ANNOUNCE_EVERY)
        except StoreError as exc:
            self._lost(exc)
