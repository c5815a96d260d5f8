"""The runtime: the only owner of the event loop.

It binds the listeners, feeds the sans-IO :class:`ProxyCore` with received messages and the
time, carries out its :class:`Send` instructions, keeps one ``loop.call_at`` armed at the
core's next deadline, reloads the policy on SIGHUP or when the file changes, and drains on
SIGTERM/SIGINT (stop taking new transactions, let running ones finish, bounded).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from proxy import __version__, build_kind
from proxy.config import Config
from proxy.core.access.sources import AddressSet
from proxy.core.context import ResponseContext
from proxy.core.core import CoreSettings, ProxyCore
from proxy.core.effects import Effects, StoreWrite
from proxy.core.proxy.redirect_guard import RedirectGuard
from proxy.core.registrar.digest import DigestAuth
from proxy.core.registrar.location import MemoryLocation
from proxy.core.types import Send, Source
from proxy.diagnostics import ConfigError, Diagnostic
from proxy.policy import Policy, load_policy
from proxy.runtime import http as http_side
from proxy.runtime import logs as log_lines
from proxy.runtime import overload as overload_meter
from proxy.runtime import signals, streams, upstream_control, workers
from proxy.runtime import tracing as tracing_taps
from proxy.runtime import upstreams as named_upstreams
from proxy.runtime.limits import MemoryTrim, flood_gate, raise_nofile
from proxy.runtime.memory import GcPolicy
from proxy.runtime.overload import LagTicker
from proxy.runtime.resolver import Resolver, Targets, resolver_for
from proxy.runtime.sends import MISS, SendResolver
from proxy.runtime.state import StateKeeper, default_node, is_shared
from proxy.runtime.watchers import FileWatcher, PolicyReloader
from proxy.runtime.workers import Worker
from proxy.sip import host_port_text
from proxy.store import LearnedRoute, StoreError, open_store
from proxy.transaction import TimerConfig
from proxy.transport.base import Transport
from proxy.transport.tcp import TcpManager
from proxy.transport.tls import TlsManager
from proxy.transport.udp import UdpEndpoint
from proxy.transport.udp_gate import FloodGate
from proxy.transport.udp_order import NewRequests
from proxy.transport.ws import WsManager

log = logging.getLogger("proxy")
#: what the runtime was doing when an entry point of the core raised (the log line says it)
_DOING = {"on_message": "handling a message", "on_timer": "in timers",
          "on_keepalive": "handling a keep-alive", "on_flow_closed": "handling a closed flow",
          "on_persisted": "after storing a learned route",
          "on_send_failure": "handling a transport failure",
          "start_probes": "probing the upstreams",
          "set_upstream_admin": "setting the state of an upstream",
          "set_upstream_targets": "setting the targets of an upstream"}
#: Start-up lines (listening, ready) show at every log level: scripts wait for them.
_NOTICE = logging.CRITICAL + 1
logging.addLevelName(_NOTICE, "NOTICE")


def registrar_settings(config: Config, secret: bytes) -> dict[str, Any]:
    """The registrar's and digest authentication's part of :class:`CoreSettings`."""
    auth = config.auth
    return {
        "registrar_networks": AddressSet(config.registrar_networks, "registrar_networks"),
        "registrar_max_contacts": config.registrar_max_contacts,
        "registrar_max_bindings": config.registrar_max_bindings,
        "path_always": config.path_mode == "always",
        "auth": (DigestAuth(auth.realm, auth.users, secret, algorithms=auth.algorithms)
                 if auth is not None else None),
    }


class Runtime:
    #: gives back the heap of closed connections (TLS handshakes above all); set by start()
    trim: MemoryTrim | None = None
    #: the tracing taps (recent calls, HEP) once started; None when neither is configured
    tap: tracing_taps.Tracer | None = None
    #: limits.udp_flood_rps: one gate for every UDP socket, made by start(); None: off
    gate: FloodGate | None = None
    load: LagTicker | None = None  # the measure of load of overload control (start())

    def __init__(self, config: Config, policy: Policy, *, resolver: Resolver | None = None,
                 upstreams: named_upstreams.Plan | None = None,
                 worker: Worker | None = None) -> None:
        """``upstreams``: resolved at start-up (:func:`_main`); else at their first send.
        ``worker``: this process is one of ``workers: N`` (:mod:`proxy.runtime.workers`)."""
        self.config, self.worker = config, worker
        self.loop = asyncio.get_running_loop()
        self.resolver = resolver or resolver_for(config, self.loop.time)
        self.sends = SendResolver(self.resolver, self.dispatch, self._unreachable)
        self._tasks: set[asyncio.Task[None]] = set()
        self.udp: dict[int, UdpEndpoint] = {}  # by address family
        self.held: list[NewRequests] = []  # the listeners' new requests not handled yet
        self.tcp: TcpManager | None = None
        self.tls: TlsManager | None = None  # listeners and/or connections to sips: next hops
        self.ws: WsManager | None = None  # ws: listeners (RFC 7118)
        self.wss: WsManager | None = None  # wss: listeners
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._stopping = asyncio.Event()
        self._policy_watch: FileWatcher | None = None
        self.errors = 0
        t = config.timers
        timers = TimerConfig(t1=t.t1, t2=t.t2, t4=t.t4, timer_c=t.timer_c)
        self.upstream_plan = plan = upstreams or named_upstreams.unresolved(config)
        local, announced = workers.local_addresses(config, worker)  # Via, Record-Route
        # Redirect safety (RFC 3261 26.1.2). The defaults name the upstreams by host;
        # a 3xx arrives from an address, so their resolved addresses join the defaults. A list
        # the operator wrote is taken as it is.
        up_ips = sorted({host for host, _ in plan.addresses})
        own = [(a.host, a.port) for a in local]
        for a in local:
            h, _, p = a.advertised.rpartition(":")
            own.append((h.strip("[]"), int(p)))
        red = config.redirects
        trusted = [*config.trusted_sources, *([] if red.trusted_sources else up_ips)]
        allowed = [*config.allow_targets, *([] if red.allow_targets else up_ips)]
        guard = RedirectGuard(trusted, allowed, own, trust_upstreams=not red.trusted_sources)
        # Key of flow tokens, branch MACs, digest nonces: the configured secret, else a random
        # one that start() replaces by the state store's before listening (state_key.py).
        secret = config.secret.encode() if config.secret else secrets.token_bytes(32)
        groups = named_upstreams.groups_of(config, plan)
        settings = CoreSettings(
            upstreams=groups[0][1],
            groups=groups,
            record_route=config.record_route,
            registrar_local=config.registrar == "local",
            domains=frozenset(d.lower() for d in config.domains),
            force_rport=config.force_rport,
            timers=timers,
            max_message_size=config.limits.max_message_size,
            max_headers=config.limits.max_headers,
            guard=guard,
            max_ttl=config.redirects.max_ttl,
            secret=secret,
            trusted_relays=AddressSet(config.trusted_relays, "trusted_relays"),
            **registrar_settings(config, secret),
            probe_interval=config.upstream_probe.interval,
            probe_timeout=config.upstream_probe.timeout,
            per_source_rps=config.limits.per_source_rps,
        )
        self.location = MemoryLocation()  # the view the hot path reads; StateKeeper persists it
        self.core = ProxyCore(settings, policy, local, self.location)
        self.core.set_debug(logging.getLogger("proxy.core").isEnabledFor(logging.DEBUG))
        self.tls_names = streams.tls_names(self)
        self.refresher = self._name_upstreams(plan)
        try:
            node = config.node or default_node(local)
            self.store = open_store(config.state, node=node)
        except (NotImplementedError, ValueError, StoreError) as exc:
            raise ConfigError([Diagnostic(str(config.path), 1, 1, f"state {config.state}: {exc}")]
                              ) from exc
        self.state = StateKeeper(self.store, self.core, self.location, config.state, node,
                                 announced, self._state_changed, secret, bool(config.secret))
        upstream_control.install(self)  # stored upstream states reach the core through _drive
        self._generation = -1
        #: /ready: listening, and the state store answers (the store's owner sets store_ok)
        self.store_ok, self.listening, self.started = True, False, time.time()
        self.reloads: Counter[str] = Counter()  # policy reloads: ok | refused
        self.http: http_side.HttpEndpoint | None = None

    # -------------------------------------------------------------- startup / shutdown

    async def start(self) -> None:
        cfg = self.config
        workers.install(self)  # the other workers are nodes known from the start
        try:
            # Loads the state and agrees on the key (core.rekey) before anything is minted;
            # a Redis store that is down is retried in the background.
            await self.state.start()
        except StoreError as exc:
            raise ConfigError([Diagnostic(str(cfg.path), 1, 1, f"state: {exc}")]) from exc
        if not is_shared(cfg.state):  # Redis tells of changes by pub/sub; sqlite is polled
            self._generation = await self.store.generation()
            self.loop.call_later(1.0, self._poll_store)
        tables = len({li.transport for li in cfg.listen} & {"tcp", "tls", "ws", "wss"}) or 1
        raise_nofile(tables * cfg.limits.tcp_max_connections + 64)  # a table per transport
        self.tap = await tracing_taps.install(self)  # before the first message can arrive
        self.gate = flood_gate(self.core, cfg.limits.udp_flood_rps, cfg.limits.per_source_rps)
        shared = self.worker is not None  # SO_REUSEPORT: the workers share each address
        for position, li in enumerate(cfg.listen):
            if li.transport == "udp":
                ep = await workers.open_udp(self, position, li)
                if cfg.limits.overload_lag_ms:  # calls in progress first (udp_order.py)
                    ep.order = NewRequests(self.loop, self.deliver_held)
                    self.held.append(ep.order)
                fam = socket.AF_INET6 if ":" in li.host else socket.AF_INET
                self.udp.setdefault(fam, ep)
            elif li.transport == "tcp":
                self.tcp = self.tcp or streams.tcp_manager(self)
                await self.tcp.listen(li.host, li.port, reuse_port=shared)
            elif li.transport == "ws":
                self.ws = self.ws or streams.ws_manager(self, "ws")
                await self.ws.listen(li.host, li.port, reuse_port=shared)
            elif li.transport == "wss":
                self.wss = self.wss or streams.ws_manager(self, "wss")
                await self.wss.listen(li.host, li.port, reuse_port=shared)
            else:
                self.tls = self.tls or streams.tls_manager(self)
                await self.tls.listen(li.host, li.port, reuse_port=shared)
            log.log(_NOTICE, "listening on %s:%s", li.transport, host_port_text(li.host, li.port))
        self.policy_reload = PolicyReloader(cfg.policy_path, self.core.view.policy, self.reloads,
                                            self._put_policy_in_force)
        self.trim = MemoryTrim(self.loop, lambda: streams.closed_total(self))
        self.trim.start()
        self.load = overload_meter.install(self)  # limits.overload_lag_ms, max_transactions
        signals.install(self.loop, self.request_stop, self.reload)
        if cfg.watch_policy and cfg.policy_path is not None:
            self._policy_watch = FileWatcher(
                cfg.policy_path, lambda: self.policy_reload.request("file changed on disk"))
            self.loop.call_later(1.0, self._watch_policy)
        if cfg.http is not None:
            self.http = http_side.start(self, *cfg.http)
            log.log(_NOTICE, "http on %s (/metrics /health /ready /status)",
                    host_port_text(cfg.http[0], self.http.port))
        self.listening = True
        self.refresher.start()
        self._drive(self.core.start_probes, self.loop.time())
        p = self.core.view.policy
        log.log(_NOTICE, "policy %s version %s (%d rules)", p.path or "builtin", p.version,
                len(p.rules))
        log.log(_NOTICE, "sip-policy-proxy %s, %s", __version__, build_kind())
        await workers.started(self)  # "sip-policy-proxy ready" (workers: the supervisor's)

    def request_stop(self) -> None:
        if signals.second_stop(self._stopping):
            return
        log.info("stopping: no new transactions, draining %d transactions and %d calls",
                 self.core.view.unanswered, self.core.view.calls)
        self._carry_out(self.core.drain(self.loop.time()))
        self._stopping.set()

    async def serve(self) -> None:
        await self._stopping.wait()
        deadline = self.loop.time() + self.config.drain_timeout
        while self._busy() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)  # polling the drain is bounded by drain_timeout
        left, calls = self.core.view.unanswered, self.core.view.calls
        if left or calls:
            log.warning("drain timeout: %d transactions and %d calls abandoned", left, calls)
        self.close()
        # The last part of the drain: every pending state change written (the writer has run
        # all along), within what is left of drain_timeout (StateKeeper.close).
        await self.state.close(deadline)
        log.info("stopped")

    def _busy(self) -> bool:
        """A drain waits for unanswered transactions and for calls up (dialogs)."""
        return bool(self.core.view.unanswered or self.core.view.calls)

    def close(self) -> None:
        self.refresher.stop()
        self.sends.close()
        if self.trim is not None:
            self.trim.stop()
        if self.load is not None:
            self.load.stop()
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.tap is not None:
            self.tap.close()
            self.tap = None
        if self._timer is not None:
            self._timer.cancel()
        for ep in self.udp.values():
            if ep.transport is not None:
                ep.transport.close()
        for m in streams.managers(self):
            m.close()

    # -------------------------------------------------------------- message flow

    def _drive(self, entry: Callable[..., Effects], *args: Any) -> None:
        """The one path into the core: feed it once (``entry(*args)``: a ProxyCore method,
        ``now`` its last argument) and carry out what it returns: the sends, the store
        writes, the log lines, the binding changes and the one timer re-armed at its next
        deadline. The process survives any internal error (logged, counted)."""
        try:
            fx = entry(*args)
        except Exception:  # noqa: BLE001 - the process must survive any message
            self._internal_error(entry, args)
            return
        self._carry_out(fx)

    def _internal_error(self, entry: Callable[..., Effects], args: tuple[Any, ...]) -> None:
        self.errors += 1
        name = getattr(entry, "__name__", "?")
        src = next((a for a in args if isinstance(a, Source)), None)
        where = "" if src is None else f" from {src.host}:{src.port}"
        log.exception("internal error %s%s", _DOING.get(name, name), where)
        self._arm()  # the timers go on whatever one call did

    def _carry_out(self, fx: Effects) -> None:
        tap = self.tap
        if fx.logs:
            log_lines.emit_calls(fx.logs)
            if tap is not None:
                tap.summaries(fx.logs)
        if fx.sends:
            self.dispatch(fx.sends)
        if fx.writes:
            if tap is not None:
                tap.learned(fx.writes)
            self._start_writes(fx.writes)
        if fx.bindings:
            self.state.bindings_changed(fx.bindings)  # write-behind: never waited for
        self._arm()

    def _state_changed(self, fx: Effects | None = None) -> None:
        """The state store changed the core's view (loaded, another node's change): carry
        out what the core said about it."""
        self.store_ok = self.state.up
        if fx is not None:
            self._carry_out(fx)
        else:
            self._arm()

    def deliver(self, data: bytes, src: Source, stale: bool = False) -> None:
        """One received message (from every transport): logged at debug, traced, and fed to
        the core by :meth:`_drive` like every other input (``stale``: :meth:`deliver_held`)."""
        if log_lines.messages_log.isEnabledFor(logging.DEBUG):
            log_lines.message_in(data, src)
        if self.tap is not None:
            self.tap.received(data, src, time.time())
        self._drive(self.core.on_message, data, src, self.loop.time(), stale)

    def deliver_held(self, data: bytes, src: Source, waited: float) -> None:
        """A new request held for after the calls in progress (``proxy.transport.udp_order``)
        that waited ``waited`` seconds since it was read: during an overload episode, when
        that and its wait in the socket's queue before it was read (the last tick's measure)
        pass the bound, the core refuses it if it may (``stale``:
        ``.core.access.overload.shed``)."""
        load = self.load
        self.deliver(data, src, load is not None and load.stale(waited))

    def keepalive(self, src: Source) -> None:
        self._drive(self.core.on_keepalive, src, self.loop.time())

    def flow_closed(self, conn_id: int) -> None:
        self._drive(self.core.on_flow_closed, conn_id, self.loop.time())

    # -------------------------------------------------------------- learned routes

    async def _load_routes(self) -> None:
        routes = await self.store.list_routes(time.time())
        self._generation = await self.store.generation()
        self._carry_out(self.core.load_learned(routes, self.loop.time()))
        self.state.note_routes(routes)
        if routes:
            log.info("learned routes loaded from %s: %d", self.config.state, len(routes))

    def _poll_store(self) -> None:
        """Notice routes changed by another process (``sip-policy-proxy routes remove``)."""
        if self._stopping.is_set():
            return
        task = self.loop.create_task(self._check_store())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.loop.call_later(1.0, self._poll_store)

    async def _check_store(self) -> None:
        try:
            gen = await self.store.generation()
            if gen == self.state.own_generation:
                self._generation = gen  # our own binding writes: nothing to reload
            elif gen != self._generation:
                await self._load_routes()
                log.info("learned routes reloaded from the store: %d (generation %d)",
                         len(self.core.view.learned), self._generation)
                await self.state.upstreams.load(merge=False)  # another process's drain
        except StoreError as exc:
            log.error("state store: %s", exc)

    def _start_writes(self, writes: tuple[StoreWrite, ...]) -> None:
        for route, ctx in writes:
            task = self.loop.create_task(self._persist(route, ctx))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _persist(self, route: LearnedRoute, ctx: ResponseContext) -> None:
        """Make a learned route durable, then let its response context go on."""
        ok = await self.state.put_route(route)
        if ok and not self.state.shared:
            try:
                self._generation = await self.store.generation()
            except StoreError as exc:
                log.error("state store: %s", exc)
        self._drive(self.core.on_persisted, ctx, ok, self.loop.time())

    def failed(self, token: object) -> None:
        self._drive(self.core.on_send_failure, token, self.loop.time())

    def dispatch(self, out: list[Send]) -> None:
        now = self.loop.time()
        if log_lines.messages_log.isEnabledFor(logging.DEBUG):
            for s in out:
                log_lines.message_out(s)
        literals = self.sends.literals
        udp = self.udp
        tap = self.tap
        inet, inet6 = socket.AF_INET, socket.AF_INET6
        for s in out:
            if s.transport == "tls" and s.server_name is None:
                s = streams.with_server_name(self, s)
            if s.host not in literals:  # a name (RFC 3263), or an IP seen for the first time
                r = self.sends.cached(s, now)
                if r is not s:
                    if r is MISS:
                        self.sends.park(s)  # dispatched again once looked up
                        continue
                    if r is None:
                        self._unreachable(s, "does not resolve")
                        continue
                    assert isinstance(r, Send)
                    s = r
            # The transport that carries s: the UDP socket of its address family, TCP, TLS,
            # or the WebSocket manager holding the browser's connection.
            kind = s.transport
            transport: Transport | None
            if kind == "udp":
                transport = udp.get(inet6 if ":" in s.host else inet)
            elif kind == "tcp":
                transport = self.tcp
            elif kind == "tls":
                self.tls = self.tls or streams.tls_manager(self)  # client side only
                transport = self.tls
            elif kind == "ws":
                transport = self.ws
            else:
                transport = self.wss if kind == "wss" else None
            if transport is not None:
                transport.send(s)
                if tap is not None:
                    tap.sent(s, time.time())
            else:
                log.info("no %s transport for %s:%s", s.transport, s.host, s.port)
                if s.token is not None:
                    self.loop.call_soon(self.failed, s.token)

    def _unreachable(self, s: Send, why: str) -> None:
        log.info("cannot send to %s:%s: %s", s.host, s.port, why)
        if s.token is not None:
            self.loop.call_soon(self.failed, s.token)

    def _name_upstreams(self, plan: named_upstreams.Plan) -> named_upstreams.Refresher:
        """Upstreams named by a domain (RFC 3263): sends to them resolve by NAPTR/SRV
        (sends.py); requests from their addresses are an upstream's (docs/BEHAVIOUR.md "No open
        relay"); their names are resolved again as their answers expire."""
        for n in plan.named:
            self.sends.upstream(n.hop)
        by_position = {n.position: n for n in plan.named}
        for position, answer in plan.found.items():
            self._set_targets(by_position[position], answer, self.loop.time())
        self._name_sources(plan.named, plan.found)
        return named_upstreams.Refresher(self.resolver, plan.named, self._upstream_answer,
                                         plan.found)

    def _name_sources(self, named: tuple[named_upstreams.Named, ...],
                      found: dict[int, Targets]) -> None:
        """A route's ``source: [GROUP]`` holds for the addresses the group's named upstreams
        resolved to (ProxyCore.set_source_addresses)."""
        resolved: dict[str, list[str]] = {}
        for n in named:
            answer = found.get(n.position)
            if answer is not None:
                resolved.setdefault(n.upstream.host.lower(), []).extend(
                    t.host for t in answer.targets)
        self._carry_out(self.core.set_source_addresses(resolved))

    def _upstream_answer(self, named: named_upstreams.Named, answer: Targets) -> None:
        """A named upstream resolved again (its answer expired)."""
        self._set_targets(named, answer, self.loop.time())
        self._name_sources(self.refresher.named, self.refresher.current)

    def _set_targets(self, named: named_upstreams.Named, answer: Targets, now: float) -> None:
        """Hand the core what a named upstream resolved to: each address is an upstream of its
        own (``set_upstream_targets``; the core never resolves); a TLS one is checked against
        the upstream's name (RFC 5922 7.2)."""
        u = named.upstream
        if u.transport == "tls" or any(t.transport == "tls" for t in answer.targets):
            self.tls_names.update(((t.host, t.port), u.host) for t in answer.targets
                                  if t.transport == "tls")
        self._drive(self.core.set_upstream_targets, u.uri, named_upstreams.core_targets(answer),
                    now)

    # -------------------------------------------------------------- timers

    def _arm(self) -> None:
        d = self.core.next_deadline()
        if d is None or d >= self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = d
        self._timer = self.loop.call_at(d, self._fire)

    def _fire(self) -> None:
        now = max(self.loop.time(), self._armed_at)
        self._timer = None
        self._armed_at = float("inf")
        self._drive(self.core.on_timer, now)

    # -------------------------------------------------------------- policy reload

    def _watch_policy(self) -> None:
        if self._stopping.is_set() or self._policy_watch is None:
            return
        self._policy_watch.check()
        self.loop.call_later(1.0, self._watch_policy)

    def reload(self) -> None:
        """SIGHUP: reload the policy (off the loop, swapped in atomically; a broken file
        leaves the old policy in force, an unchanged one is a no-op) and the certificates."""
        self.policy_reload.request("SIGHUP")
        if self.tls is not None and self.config.tls is not None:
            self.tls.reload()

    def _put_policy_in_force(self, policy: Policy) -> None:
        # new calls take it; a call in progress keeps its own
        self._carry_out(self.core.set_policy(policy))


async def _main(config: Config, policy: Policy, worker: Worker | None = None) -> int:
    resolver = resolver_for(config, asyncio.get_running_loop().time)
    plan = await named_upstreams.plan(config, resolver)  # RFC 3263, before the core is built
    rt = Runtime(config, policy, resolver=resolver, upstreams=plan, worker=worker)
    try:
        await rt.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        rt.close()
        return 1
    # Frozen only now, so that what start() built (listeners, a Redis client and its pool,
    # imported lazily) is never scanned again either; no automatic full passes (memory.py).
    collector = GcPolicy(rt.loop, load=lambda: rt.core.view.active_transactions)
    collector.start()
    log_lines.attach(rt.loop)  # call lines written a batch at a time (logs.BatchingHandler)
    try:
        await rt.serve()
    finally:
        collector.stop()
        log_lines.detach()
    return 0


def run_server(config: Config, policy: Policy | None = None, warnings: list[Diagnostic] | None = None,
               worker: Worker | None = None) -> int:
    """Run the proxy in the foreground until SIGTERM/SIGINT; returns the exit status.
    ``worker``: as one of ``workers: N``, forked by :func:`proxy.runtime.workers.supervise`."""
    log_lines.setup(config.log_level, config.log_format)
    for w in warnings or ():
        log.warning("%s", w)
    if policy is None:
        from proxy.policy import BUILTIN_POLICY

        if config.policy_path is not None:
            try:
                policy, _ = load_policy(Path(config.policy_path))
            except ConfigError as exc:
                for d in exc.diagnostics:
                    log.error("%s", d)
                return 1
        else:
            policy = BUILTIN_POLICY
    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        return runner(_main(config, policy, worker))
    except ConfigError as exc:
        for d in exc.diagnostics:
            log.error("%s", d)
        return 1
