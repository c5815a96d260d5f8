"""Durable and shared state, the runtime's side: the state store behind the core's memory.

The store is a copy; memory is the truth for what this node holds. :class:`StateKeeper` owns
the store for the runtime:

* at start it opens the store, agrees on the key (:mod:`proxy.runtime.state_key`) and loads
  every unexpired learned route and binding into the core (a restarted proxy serves the
  phones registered before it at once);
* the core's binding changes (the location's journal, taken after every call into the core)
  are written in the background, in order, from a bounded queue, in batches (a Redis
  pipeline, one sqlite transaction): the hot path never waits for the store, and a burst of
  20,000 registrations is written in about a second. A learned 301 is awaited, as the core
  asks (it goes on once it is durable);
* SIGTERM writes every pending change before the process exits (:meth:`StateKeeper.close`,
  part of the drain);
* with a shared store (Redis), the changes every other proxy (or a ``routes`` /
  ``registrations`` command) makes arrive by pub/sub and are applied to the core's view at
  once; each node announces its SIP addresses and the id of its key (with a TTL) and learns
  the others' (:mod:`proxy.runtime.state_nodes`);
* when the store cannot be reached (at start or mid-run) calls keep flowing on what is in
  memory: the loss is logged once, reconnects run in the background, and once the store is
  back what was learned meanwhile is written, then the view is reloaded (the changes
  published meanwhile were missed) and the recovery logged once;
* a store that comes back *reset* (Redis restarted without its data or flushed, a sqlite file
  replaced; told by its epoch, or a generation that went back: :class:`Incarnation`) is not
  taken for the truth: this node writes back every binding it holds and every learned route
  it knows, and adds what the others wrote back, dropping nothing. A store that was alive
  all along is (a binding another node removed meanwhile stays removed). The store's
  incarnation is looked at every second, so a reset is seen even when the client reconnected
  without an error.

Only a store this code cannot use (a newer schema, a damaged file) stops the start.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from proxy.core import shared
from proxy.core.effects import Effects
from proxy.core.registrar.location import BindingChange, BindingDelete, BindingWrite, MemoryLocation
from proxy.core.types import LocalAddress
from proxy.runtime.state_key import KeyKeeper
from proxy.runtime.state_nodes import SharedNodes
from proxy.runtime.state_upstreams import UpstreamStates
from proxy.store import (
    CorruptStoreError,
    LearnedRoute,
    SchemaVersionError,
    StateStore,
    StoreChange,
    StoreError,
    UpstreamState,
)
from proxy.store.base import Incarnation

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

log = logging.getLogger("proxy.state")

QUEUE_LIMIT = 100_000  # pending writes kept while the store is away; beyond: resync from memory
BATCH = 500  # changes per write_batch unless the store says (its batch_size)
CHECK_EVERY = 1.0  # seconds between two looks at the store's incarnation (a reset store)
RETRY_MIN, RETRY_MAX = 0.25, 5.0  # reconnect back-off, seconds
EXIT_FLOOR = 5.0  # seconds the writes get at exit when the drain used up drain_timeout


def default_node(listen: list[LocalAddress] | tuple[LocalAddress, ...]) -> str:
    """``HOSTNAME:PORT`` of the first listener (the ``node:`` default)."""
    return f"{socket.gethostname()}:{listen[0].port}"


def is_shared(spec: str) -> bool:
    """Whether a ``state:`` value names a store several proxies share live (Redis)."""
    return spec.partition("://")[0].lower() in ("redis", "rediss", "redis+cluster")


class StateKeeper(SharedNodes):
    """The state store between the runtime and the core (see the module docstring).

    ``key`` is the key the core was built with (flow tokens, branch MACs, digest nonces) and
    ``configured`` whether it is the ``secret:`` of proxy.yaml (which always wins over the
    store's)."""

    def __init__(self, store: StateStore, core: ProxyCore, location: MemoryLocation,
                 spec: str, node: str, local: tuple[LocalAddress, ...],
                 on_change: Callable[[Effects | None], None], key: bytes, configured: bool) -> None:
        self.store = store
        self.core = core
        self.location = location
        self.spec = spec
        self.node = node
        self.shared = is_shared(spec)
        self.memory = spec.strip() == "memory:"
        self.local = local
        self.on_change = on_change  # the runtime re-arms its timer after a change applied
        self.up = False
        self._queue: deque[StoreChange] = deque()
        self._batch = int(getattr(store, "batch_size", BATCH))
        self._overflow = False
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        #: the generation after this process's last written batch (sqlite: the runtime's
        #: poll tells its own writes from another process's by it)
        self.own_generation: int | None = None
        #: the store's incarnation as last seen; None before the store first answered
        self._seen: Incarnation | None = None
        self._reset_seen = False  # a write returned a generation that went back
        #: the learned routes as stored (the core keeps only old -> new URI and expiry)
        self.routes: dict[str, LearnedRoute] = {}
        self.written = 0  # changes written since start
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting = False
        self._closing = False
        self._started = False
        self._peers_read = float("-inf")  # when the announcements were last read
        self.loop = asyncio.get_running_loop()
        self.keys = KeyKeeper(store, core, key, configured, self.name, self.memory)
        #: the upstreams' administrative states (:mod:`proxy.runtime.state_upstreams`)
        self.upstreams = UpstreamStates(store, core, node, self.name, self.memory)
        # memory: the store would only hold a second copy of the view: nothing to write
        core.record_bindings(not self.memory)
        core.join_cluster(node, self.shared)

    @property
    def name(self) -> str:
        from proxy.store.redis import redacted

        return redacted(self.spec) if self.shared else self.spec

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open, agree on the key and load; a shared store that cannot be reached is retried
        in the background. Raises :class:`StoreError` for a store that cannot be used (not
        for an absent one)."""
        try:
            await self.store.open()
            await self._come_up()
        except (SchemaVersionError, CorruptStoreError):
            raise
        except StoreError as exc:
            if not self.shared:
                raise
            self.keys.running_alone()
            self._lost(exc)
        self._started = True
        self._spawn(self._writer())
        if not self.memory:
            self._spawn(self._checker())

    async def close(self, deadline: float | None = None) -> None:
        """Write every pending change, then let go of the store (the end of the drain).

        The writes get until ``deadline`` (the loop's clock: SIGTERM + drain_timeout), and
        :data:`EXIT_FLOOR` seconds at least when the drain used it up; what was written and
        what was not is logged."""
        self._closing = True
        pending = len(self._queue)
        if pending and not self.up:
            log.error("state store %s unreachable: %d changes not written at exit", self.name,
                      pending)
        elif pending:
            start = self.loop.time()
            budget = max((deadline or start) - start, EXIT_FLOOR)
            written_before, error = self.written, ""
            try:
                await asyncio.wait_for(self._flush(), budget)
            except (TimeoutError, StoreError) as exc:
                error = str(exc) or f"not done within {budget:.1f} s"
            log.info("state store %s: %d changes written at exit in %.2f s", self.name,
                     self.written - written_before, self.loop.time() - start)
            if self._queue:
                log.error("state store %s: %d changes not written at exit: %s", self.name,
                          len(self._queue), error)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=0.5)
        try:
            await asyncio.wait_for(self.store.close(), 0.5)
        except (TimeoutError, StoreError) as exc:
            log.error("closing the state store: %s", exc or "timeout")

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------- coming up

    async def _come_up(self) -> None:
        """The store answers (at start, or again after an outage): agree on the key, tell a
        reset store from a live one, write what it lacks, load what it has."""
        seen = self._seen  # before the read: a generation read later is not older
        inc = await self.store.incarnation()
        await self.keys.agree(listening=self._started)
        if self.shared:
            await self._subscribe()  # first: no change published after the load is missed
        reset = seen is not None and (self._reset_seen or inc.reset_since(seen))
        if reset:
            await self._write_back(inc)
        else:
            async with self._flushing:
                if self._overflow:
                    self._resync()
                await self._flush_locked()
            await self._load(merge=False)
        self._seen = await self.store.incarnation()
        if self.shared:
            await self._announce_once()  # before ready: a node started later sees this one
        self.up = True
        self.on_change(None)
        if self.shared:
            self._spawn(self._announce())

    async def _write_back(self, inc: Incarnation) -> None:
        """The store lost writes (``inc`` is its new life): write what this node holds into
        it, then add what the other nodes wrote back; drop nothing."""
        log.warning("state store %s was reset (epoch %s, generation %d; it was %s, %d): "
                    "writing back what this node holds", self.name, inc.epoch, inc.generation,
                    self._seen.epoch if self._seen else "-",
                    self._seen.generation if self._seen else 0)
        self._seen, self._reset_seen = inc, False  # the new life: its generations from here
        async with self._flushing:
            bindings, routes = self._resync()
            await self._flush_locked()
        states = await self.upstreams.write_back()
        if states:
            log.warning("state store %s: %d upstream states this node set written back",
                        self.name, states)
        await self._load(merge=True)
        log.warning("state store %s: %d registrations and %d learned routes this node holds "
                    "written back", self.name, bindings, routes)

    async def _checker(self) -> None:
        """Look at the store's incarnation every second: a store reset while the client
        reconnected without an error (or a sqlite file replaced) is written back."""
        while True:
            await asyncio.sleep(CHECK_EVERY)
            if not self.up or self._seen is None:
                continue
            seen = self._seen  # before the read: a generation read later is not older
            try:
                inc = await self.store.incarnation()
                if self._reset_seen or inc.reset_since(seen):
                    await self.keys.agree(listening=True)
                    await self._write_back(inc)
                else:
                    self._observe(seen, inc.generation)
            except StoreError as exc:
                self._lost(exc)

    # -------------------------------------------------------------- loading

    async def _load(self, *, merge: bool) -> None:
        """The store's view into memory: replacing it (``merge`` False: at start, or a live
        store after an outage) or adding to it (after a write-back into a reset store)."""
        now_wall = time.time()
        self.core.set_wall_offset(now_wall - self.loop.time())
        routes = await self.store.list_routes(now_wall)
        stored = await self.store.list_bindings(now_wall)
        now = self.loop.time()
        if merge:
            for r in routes:
                if r.old_uri not in self.core.view.learned:
                    self.on_change(self.core.apply_learned_route(r, now))
                    self.routes[r.old_uri] = r
            loaded = self.core.load_bindings(stored, now, merge=True)
        else:
            self.on_change(self.core.load_learned(routes, now))
            self.note_routes(routes)
            loaded = self.core.load_bindings(stored, now, merge=False)
        await self.upstreams.load(merge=merge)
        self.on_change(None)
        if routes:
            log.info("learned routes loaded from %s: %d", self.name, len(routes))
        if stored:
            log.info("registrations loaded from %s: %d bindings (%d new to memory)", self.name,
                     len(stored), loaded)

    def note_routes(self, routes: list[LearnedRoute]) -> None:
        """The routes the core's learned view was (re)loaded with."""
        self.routes = {r.old_uri: r for r in routes}

    # -------------------------------------------------------------- writes

    def bindings_changed(self, changes: Iterable[BindingChange]) -> None:
        """Queue the core's binding changes (``Effects.bindings``) for the store."""
        node = self.node
        for c in changes:
            if isinstance(c, BindingWrite):
                self._enqueue(StoreChange("put_binding", node,
                                          binding=shared.to_stored(self.core, c.binding)))
            elif isinstance(c, BindingDelete):
                if c.key is None:
                    self._enqueue(StoreChange("remove_bindings", node, aor=c.aor))
                else:
                    self._enqueue(StoreChange("remove_binding", node, aor=c.aor, key=c.key))

    def _enqueue(self, change: StoreChange) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            # Memory is written out whole once the queue drains: later changes are in it.
            if not self._overflow:
                log.error("state store %s: more than %d changes pending; memory is written "
                          "out whole once the store takes them", self.name, QUEUE_LIMIT)
            self._overflow = True
            return
        self._queue.append(change)
        self._wake.set()

    async def put_route(self, route: LearnedRoute) -> bool:
        """Make a learned route durable now (the call waits for it); False when the store is
        away: the route is then written once it is back, and the call goes on."""
        self.routes[route.old_uri] = route
        change = StoreChange("put_route", self.node, route=route)
        if not self.up:
            self._enqueue(change)
            return False
        try:
            await self._flush()  # earlier changes first: the store sees them in order
            await self.store.put_route(route)
            return True
        except StoreError as exc:
            self._enqueue(change)
            self._lost(exc)
            return False

    async def put_upstream_state(self, s: UpstreamState) -> bool:
        """An upstream state set on this node (the core has it already): write it now; False
        when the store is away (it is written first thing once the store answers)."""
        try:
            return await self.upstreams.set(s, self.up)
        except StoreError as exc:
            self._lost(exc)
            return False

    async def _flush(self) -> None:
        """Write the queue in order; one writer at a time (the background writer, a learned
        route, the exit)."""
        async with self._flushing:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        queue = self._queue
        while queue:
            batch = list(itertools.islice(queue, self._batch))
            seen = self._seen
            generation = await self.store.write_batch(batch)
            for _ in batch:  # only the flusher (holding the lock) takes from the head
                queue.popleft()
            self.written += len(batch)
            self.own_generation = generation
            self._observe(seen, generation)

    def _observe(self, seen: Incarnation | None, generation: int) -> None:
        """A generation the store gave after ``seen`` was current: one that went back is a
        reset (the checker writes back); else it is the one seen now, unless a newer one was
        seen meanwhile or a write-back began a new life (another epoch)."""
        if seen is None:
            return
        if generation < seen.generation:
            self._reset_seen = True
            return
        now = self._seen
        if now is not None and now.epoch == seen.epoch and generation > now.generation:
            self._seen = Incarnation(seen.epoch, generation)

    def _resync(self) -> tuple[int, int]:
        """Replace the queue by everything this node holds (call with the flush lock held):
        its own unexpired bindings and the learned routes it knows. Returns their counts."""
        now = self.loop.time()
        own = [b for b in self.location.bindings() if b.node is None and b.expires_at > now]
        routes = [r for old, r in self.routes.items()
                  if (hit := self.core.view.learned.get(old)) is not None and hit[0] == r.new_uri
                  and hit[1] > now]
        self._queue.clear()
        self._overflow = False
        self._queue.extend(StoreChange("put_binding", self.node,
                                       binding=shared.to_stored(self.core, b)) for b in own)
        self._queue.extend(StoreChange("put_route", self.node, route=r) for r in routes)
        return len(own), len(routes)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.up:
                continue
            try:
                await self._flush()
                if self._overflow:
                    async with self._flushing:
                        self._resync()
                        await self._flush_locked()
            except StoreError as exc:
                self._lost(exc)

    # -------------------------------------------------------------- outages

    def _lost(self, exc: StoreError) -> None:
        """The store stopped answering: say so once, reconnect in the background."""
        if self._closing:
            return
        was_up, self.up = self.up, False
        self.on_change(None)
        if was_up or not self._reconnecting:
            log.error("state store %s unreachable (%s): relaying calls on what is in memory; "
                      "changes are kept and written when it answers again", self.name, exc)
        if not self._reconnecting:
            self._reconnecting = True
            self._stop_watching()
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
                await self._come_up()
            except StoreError:
                self._stop_watching()
                continue
            self._reconnecting = False
            log.warning("state store %s is back: %d changes made meanwhile written", self.name,
                        pending)
            return
