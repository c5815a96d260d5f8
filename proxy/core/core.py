"""The transaction-stateful proxy core (RFC 3261 section 16), sans-IO: the dispatcher.

``ProxyCore`` is fed bytes with their :class:`Source` and the current time; every entry point
returns one :class:`~proxy.core.effects.Effects` (what to send, what to store). The runtime
arms one timer at :meth:`ProxyCore.next_deadline`. Nothing here calls time, asyncio or sockets.

Request path: parse -> validate (16.3, :mod:`~proxy.core.access.validate`) -> server transaction (17.2,
:mod:`~proxy.core.txns`) -> route information preprocessing and target set (16.4, 16.5, :mod:`~proxy.core.proxy.routing`)
-> forward each branch (16.6, :mod:`~proxy.core.proxy.forward`). Response path: match the branch (17.1.3) ->
response context (16.7, :mod:`~proxy.core.proxy.responses`, its state machine in :mod:`~proxy.core.context`). CANCEL:
:mod:`~proxy.core.proxy.cancel` (16.10). Redirects and learned routes: :mod:`~proxy.core.proxy.redirects`. SIP Outbound:
:mod:`~proxy.core.outbound.flows` (RFC 5626). Registrar: :mod:`~proxy.core.registrar.glue`.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from traceback import format_exc

from proxy.core import shared, txns, upstream_targets
from proxy.core.access import limits, overload, validate
from proxy.core.access.sources import (
    PRIVATE_NETWORKS,
    AddressSet,
    RateLimiter,
    Refusals,
)
from proxy.core.access.trust import Trust
from proxy.core.context import (
    Branch,
    BranchState,
    NoAnswerTimer,
    ResponseContext,
    ServerEntry,
)
from proxy.core.effects import ERROR, INFO, Effects, LogLine, Out
from proxy.core.observe.metrics import Metrics
from proxy.core.outbound import flows as outbound
from proxy.core.outbound.flowtoken import FlowTokens
from proxy.core.probe import Probe, Prober
from proxy.core.proxy import (
    cancel,
    final,
    forward,
    learned,
    redirects,
    responses,
    routes,
    routing,
    steer,
)
from proxy.core.proxy.dialogs import Dialogs
from proxy.core.proxy.redirect_guard import RedirectGuard
from proxy.core.registrar import expiry
from proxy.core.registrar import glue as registrar_glue
from proxy.core.registrar.digest import DigestAuth
from proxy.core.registrar.location import LocationStore
from proxy.core.shared import Cluster
from proxy.core.table import TransactionTable
from proxy.core.types import LocalAddress, Source, Target
from proxy.core.upstream_admin import AdminState, UpstreamAdmin, set_state
from proxy.core.upstream_targets import UpstreamTarget, UpstreamTargets
from proxy.core.view import CoreView
from proxy.policy import Policy
from proxy.sip import ParseError, SipMessage, make_response, parse_message
from proxy.sip.transport import MESSAGE_TRANSPORTS
from proxy.store.base import LearnedRoute, StoreChange, StoredBinding
from proxy.transaction import TimerConfig, TimerQueue


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """What the core needs from proxy.yaml, already resolved."""

    upstreams: tuple[Target, ...] = ()
    #: every upstream group in order, the first the default: ``((name, targets), ...)``;
    #: () is the one group ``default`` of ``upstreams``
    groups: tuple[tuple[str, tuple[Target, ...]], ...] = ()
    record_route: bool = True
    registrar_local: bool = False
    domains: frozenset[str] = frozenset()
    force_rport: bool = False
    timers: TimerConfig = field(default_factory=TimerConfig)
    max_message_size: int = 65535
    max_headers: int = 256
    guard: RedirectGuard | None = None  # None: follow every 3xx the policy says to
    secret: bytes | None = None  # flow-token key (RFC 5626 5.2); None: random per start
    max_ttl: int = 86400  # redirects.max_ttl
    #: sources (besides the upstreams) that may route by Route or Request-URI (README "Security defaults")
    trusted_relays: AddressSet = field(default_factory=lambda: AddressSet(()))
    #: sources whose REGISTER the local registrar serves without credentials
    registrar_networks: AddressSet = field(
        default_factory=lambda: AddressSet(PRIVATE_NETWORKS, "registrar_networks"))
    registrar_max_contacts: int = 10
    registrar_max_bindings: int = 100_000  # every binding held (registrar_glue.room_for)
    path_always: bool = True  # path: always (True) | when_supported (registrar_glue)
    auth: DigestAuth | None = None  # digest credentials the local registrar accepts (RFC 3261 22)
    probe_interval: float = 0.0  # upstream_probe.interval: OPTIONS to each upstream; 0 = off
    probe_timeout: float = 2.0  # upstream_probe.timeout: no answer by then = down
    per_source_rps: int = 0  # limits.per_source_rps: initial requests per second per IP; 0 = off
    srv_seed: int | None = None  # seed of the SRV weighted draw (tests); None: from the OS


class ProxyCore:
    """RFC 3261 section 16 proxy behaviour over section 17 transactions: holds the tables and
    dispatches each input to the module of its RFC section."""

    def __init__(
        self,
        settings: CoreSettings,
        policy: Policy,
        local: Sequence[LocalAddress],
        location: LocationStore,
    ) -> None:
        if not local:
            raise ValueError("the core needs at least one local address")
        #: the lines for the log since the last entry point returned (:meth:`note`)
        self._lines: list[LogLine] = []
        #: debug lines are wanted (:meth:`set_debug`): the core never asks ``logging``
        self.debug = False
        self.settings = settings
        self._policy = policy
        self.location = location
        self.timers = settings.timers
        self._draining = False
        self.metrics = Metrics()  # read by the runtime's collector at scrape time
        self.stats: Counter[str] = self.metrics.events  # one set of counters (observe)
        self.local = tuple(local)
        self.ours: set[tuple[str, int]] = {(a.host.lower(), a.port) for a in local}
        for a in local:
            host, _, port = a.advertised.rpartition(":")
            self.ours.add((host.strip("[]").lower(), int(port)))
        self.adv = tuple({a.advertised for a in local})
        groups = settings.groups or (("default", settings.upstreams),)
        #: upstream groups by name, in order (routes, failover ``to``, README "Routes")
        self.groups: dict[str, tuple[Target, ...]] = dict(groups)
        self.default_group = groups[0][0]
        self.members = {name: frozenset(ts) for name, ts in groups}
        #: every upstream of every group, once, in order: probed, and upstreams for the
        #: access rules (a request from one is trusted, one may be relayed to)
        self.all_upstreams = tuple(dict.fromkeys(t for _, ts in groups for t in ts))
        #: by host (lower case): the groups with an upstream there (a route's ``source``);
        #: an upstream named by a domain adds its addresses (:func:`.steer.name_sources`)
        self.source_groups: dict[str, frozenset[str]] = routes.source_groups(self, {})
        self._upstream_addrs = {(t.host, t.port) for t in self.all_upstreams}
        self.has_tcp = any(a.transport == "tcp" for a in local)
        self.refusals = Refusals()
        self.limiter = RateLimiter(settings.per_source_rps)
        self.queue = TimerQueue()
        #: the server and client transactions (:mod:`.table`: the only code matching them)
        self.table = TransactionTable()
        self.prefix = secrets.token_hex(3)
        self.tag_prefix = secrets.token_hex(4)
        self.overload, self.shedding = overload.Overload(self.tag_prefix), False  # (.access.overload)
        self.n = 0  # counter of the branches and tags this proxy generates
        self.guard = settings.guard
        #: learned Request-URI rewrites: old URI -> (new URI, expiry on the core's clock)
        self._learned: dict[str, tuple[str, float]] = {}
        #: wall clock minus the core's clock, for the times a learned route is stored with
        self._wall_offset = 0.0
        secret = settings.secret or secrets.token_bytes(32)
        #: flow tokens (RFC 5626 5.2) with a boot id of this start (:mod:`~proxy.core.outbound.flowtoken`)
        self.tokens = FlowTokens(secret)
        #: dialog marks and branch MACs (:mod:`~proxy.core.access.trust`)
        self.trust = Trust(secret)
        #: key of the MAC of the probes' branches (:func:`~proxy.core.proxy.forward.signed_branch`)
        self.branch_key = _branch_key(secret)
        self.closed_conns: set[int] = set()  # stream connections known to be closed
        #: last sign of life (any message or keep-alive) of each UDP outbound flow (RFC 5626 4.4.1)
        self.udp_flows: dict[tuple[str, int], float] = {}
        self.expiry = expiry.Expiry()
        #: this proxy among several sharing one state (:mod:`~proxy.core.shared`), set by the runtime
        self._cluster = Cluster()
        self.prober = Prober(self.all_upstreams, settings.probe_interval,
                             settings.probe_timeout)
        #: what the upstreams named by a domain resolved to (RFC 3263, :mod:`.upstream_targets`);
        #: its generator draws the SRV weights (seeded in tests through ``srv_seed``)
        self.upstream_targets = UpstreamTargets(random.Random(settings.srv_seed))
        self.dialogs = Dialogs(settings.timers.timer_c)  # calls up, for metrics and the drain
        #: the operators' up / drain / down of each upstream (:mod:`~proxy.core.upstream_admin`)
        self.admin = UpstreamAdmin()
        #: what the runtime and the HTTP side read (they change the core only by its methods)
        self.view = CoreView(self)

    # ------------------------------------------------------------------ entry points

    def on_message(self, data: bytes, src: Source, now: float, stale: bool = False) -> Effects:
        """Handle one framed message (a datagram, or one cut from a stream); ``stale``: it
        waited past the overload bound in an episode (:func:`.access.overload.shed`)."""
        s = self.settings
        if self.udp_flows and src.transport == "udp":
            outbound.seen(self, src, now)
        if self.overload.episodes and data[:4] == b"ACK " and self.overload.mark in data:
            return self._effects(overload.absorb_ack(self))  # the ACK of a refusal, unparsed
        try:
            msg = parse_message(
                data, max_size=s.max_message_size, max_headers=s.max_headers,
                datagram=src.transport in MESSAGE_TRANSPORTS,
            )
        except ParseError as exc:
            self.metrics.bad["unparsable"] += 1
            answer = validate.bad_message(self, data, src, exc)
            out = Out()
            if answer is not None and not limits.over_rate_unanswered(self, src, now):
                out.send(answer)
            return self._effects(out)
        out = Out()
        try:
            if msg.is_request:
                self.stats["requests_in"] += 1
                self.metrics.request(msg.method)
                if not (self.shedding and overload.shed(self, msg, src, now, out, stale)):
                    self._on_request(msg, src, now, out)
            else:
                self.stats["responses_in"] += 1
                responses.on_response(self, msg, src, now, out)
        except ParseError as exc:
            self.metrics.bad["malformed_header"] += 1
            if not msg.is_request or msg.method == "ACK":
                self.stats["responses_dropped"] += 1
                self.note(INFO, "dropped bad %s from %s:%s: %s",
                         "ACK" if msg.is_request else "response", src.host, src.port, exc.message)
            elif not limits.over_rate_unanswered(self, src, now):
                self.stats["requests_rejected"] += 1
                self.note(INFO, "bad request from %s:%s: %s", src.host, src.port, exc.message)
                out.send(txns.reject(self, msg, src, exc.status, reason=exc.message))
        return self._effects(out)

    def on_timer(self, now: float) -> Effects:
        """Fire every timer due at ``now`` (transaction timers A..M, Timer C, the bound on a
        policy stop, binding expiry)."""
        out = Out()
        for item in self.queue.pop_due(now):
            if isinstance(item, Branch):
                responses.branch_timer(self, item, now, out)
            elif item is self.expiry:
                expiry.expire(self, now)
            elif item is self.prober:
                self.prober.on_timer(self, now, out)
            elif item is self.dialogs:
                self.dialogs.on_timer(self, now)
            elif isinstance(item, NoAnswerTimer):
                steer.no_answer(self, item, now, out)
            elif isinstance(item, ResponseContext):
                item.deadline = None
                if not item.final_sent:
                    final.send_best(self, item, now, out)
            else:
                txns.server_effects(self, item, item.txn.on_timer(now), out)
        return self._effects(out)

    def on_send_failure(self, token: object, now: float) -> Effects:
        """A send failed (no route, connection refused or lost): RFC 3261 16.9, 17.1.4."""
        out = Out()
        if isinstance(token, Probe):
            self.prober.on_send_failure(self, token)
        elif isinstance(token, Branch) and token.state is BranchState.PENDING:
            self.stats["transport_errors"] += 1
            br = token
            responses.client_effects(self, br, br.txn.on_transport_error(now), None, now, out)
            if br.state is BranchState.PENDING:
                # RFC 5626 5.3: a flow named by a token that cannot be used (closed, or its
                # connection now has another peer) failed: 430, not a transport error (500)
                status = 430 if br.target.by_token else 503
                responses.branch_final(self, br, status, None, now, out)
        return self._effects(out)

    def on_persisted(self, ctx: ResponseContext, ok: bool, now: float) -> Effects:
        """The learned route of ``ctx`` was written (or the write failed): go on."""
        out = Out()
        redirects.persisted(self, ctx, ok, now, out)
        return self._effects(out)

    def on_flow_closed(self, conn_id: int, now: float) -> Effects:
        """A stream connection closed: its flows are dead at once (RFC 5626 5.3), and it is no
        longer counted for the transactions it carried (ids are never reused in a process)."""
        outbound.flow_closed(self, conn_id)
        self.table.conn_closed(conn_id)
        return self._effects(Out())

    def conn_in_use(self, conn_id: int) -> bool:
        """Whether a stream connection carries a binding (an RFC 5626 flow) or a live server
        or client transaction: the transport does not close it for being idle
        (``limits.tcp_idle_timeout``). Two dictionary lookups: the transactions are counted
        per connection where they are created and where they end (:mod:`.table`)."""
        return self.table.conn_in_use(conn_id) or self.location.has_conn(conn_id)

    def on_keepalive(self, src: Source, now: float) -> Effects:
        """A keep-alive (STUN Binding, CRLFCRLF) arrived on a flow (RFC 5626 4.4)."""
        outbound.seen(self, src, now)
        return self._effects(Out())

    def start_probes(self, now: float) -> Effects:
        """The first round of upstream OPTIONS (:mod:`~proxy.core.probe`); later rounds are timers."""
        out = Out()
        self.prober.start(self, now, out)
        return self._effects(out)

    def _effects(self, out: Out) -> Effects:
        """What one entry point produced, with the binding changes the location recorded
        meanwhile (the runtime writes them to a state store: :meth:`record_bindings`)."""
        fx = out.effects()
        journal = self.location.journal
        if journal:
            fx.bindings = tuple(self.location.take_changes())
        lines = self._lines
        if lines:
            fx.logs += tuple(lines)
            lines.clear()
        return fx

    def note(self, level: int, message: str, *args: object) -> None:
        """A line for the log (``proxy.core``), handed out in the Effects of this call
        (:class:`~proxy.core.effects.LogLine`): the core itself never writes a log."""
        self._lines.append(LogLine(level, message, args))

    # ------------------------------------------------------------------ control inputs
    # The runtime's other inputs: it never assigns a field of the core (tests/unit/
    # test_architecture.py), it calls one of these and carries out the Effects.

    def set_debug(self, on: bool) -> Effects:
        """Whether the runtime's log takes debug lines (the per-decision ones)."""
        self.debug = on
        return self._effects(Out())

    def drain(self, now: float) -> Effects:
        """Stop taking new transactions (SIGTERM): new requests outside a dialog get 503."""
        self._draining = True
        return self._effects(Out())

    def set_overload(self, reason: str | None, share: float, now: float) -> Effects:
        """Overloaded for ``reason`` (None: no more): a ``share`` of new INVITEs and REGISTERs
        gets 503 (:mod:`.access.overload`, measured by :mod:`proxy.runtime.overload`)."""
        return self._effects(overload.set_state(self, reason, share, now, Out()))

    def set_policy(self, policy: Policy) -> Effects:
        """A reloaded policy: new calls take it; a call in progress keeps its own."""
        self._policy = policy
        return self._effects(Out())

    def set_source_addresses(self, resolved: Mapping[str, Iterable[str]]) -> Effects:
        """The addresses the upstreams named by a domain resolved to (RFC 3263), by name
        (lower case): a route's ``source: [GROUP]`` holds for a request from any of them."""
        steer.name_sources(self, resolved)
        return self._effects(Out())

    def join_cluster(self, node: str, is_shared: bool) -> Effects:
        """This proxy's name among the nodes of a state store, and whether they share it."""
        self._cluster.node = node
        self._cluster.shared = is_shared
        return self._effects(Out())

    def set_peers(self, announced: dict[str, list[str]]) -> Effects:
        """The other nodes' announced SIP addresses (:func:`~proxy.core.shared.parse_peers`)."""
        self._cluster.peers = shared.parse_peers(announced)
        return self._effects(Out())

    def set_wall_offset(self, offset: float) -> Effects:
        """Wall clock minus the core's clock (learned routes are stored in wall time)."""
        self._wall_offset = offset
        return self._effects(Out())

    def record_bindings(self, on: bool) -> Effects:
        """Whether binding changes are handed out in :attr:`Effects.bindings` (a state
        store keeps a copy of them) or not (memory is the only copy)."""
        self.location.journal = [] if on else None
        return self._effects(Out())

    def apply_store_change(self, change: StoreChange, now: float) -> Effects:
        """A change another proxy (or a command) made to the shared state."""
        shared.apply_change(self, change, now)
        return self._effects(Out())

    def apply_learned_route(self, route: LearnedRoute, now: float) -> Effects:
        shared.apply_route(self, route, now)
        return self._effects(Out())

    def load_bindings(self, stored: list[StoredBinding], now: float, *, merge: bool) -> int:
        """The store's bindings into memory, replacing (or, ``merge``, adding to) the view;
        how many were loaded or replaced (:func:`~proxy.core.shared.load_bindings`)."""
        if merge:
            return shared.merge_bindings(self, stored, now)
        return shared.load_bindings(self, stored, now)

    def set_upstream_targets(self, upstream: str, targets: Sequence[UpstreamTarget],
                             now: float) -> Effects:
        """RFC 3263: the runtime resolved the upstream whose URI (as in ``upstreams``) is
        ``upstream`` to ``targets``, in the resolver's order; none: it has no answer now and
        stands for itself. Each target is an upstream from now on, for routing, failover,
        probing and the access rules (:mod:`.upstream_targets`); requests in flight keep the
        targets they have. The core never resolves a name itself."""
        out = Out()
        upstream_targets.update(self, upstream, targets, now, out)
        return self._effects(out)

    def set_upstream_admin(self, entry: AdminState, origin: str, now: float) -> Effects:
        """An upstream's administrative state (up, drain, down), set on this node
        (``origin`` "here") or read from the state store ("store"): new calls skip a drained
        or down upstream from now on, calls in progress go on (:mod:`.upstream_admin`). A
        change is reported in ``Effects.logs`` (:class:`~.upstream_admin.AdminChange`).
        Raises ValueError for a state other than up, drain, down."""
        out = Out()
        set_state(self, entry, origin, now, out)
        return self._effects(out)

    def rekey(self, secret: bytes, keep_old: bool) -> Effects:
        """Use ``secret`` for flow tokens, branch MACs and digest nonces from now on: the key
        proxies without a configured ``secret`` share through the state store (the runtime
        agrees on it before listening, or when the store first answers). ``keep_old``: flow
        tokens minted with the key used so far keep verifying (see ``FlowTokens.rekey``)."""
        self.tokens.rekey(secret, keep_old)
        self.trust = Trust(secret, self.trust if keep_old else None)
        self.branch_key = _branch_key(secret)
        if self.settings.auth is not None:
            self.settings.auth.rekey(secret)
        return self._effects(Out())

    def load_learned(self, routes: Sequence[LearnedRoute], now: float) -> Effects:
        """Replace the learned-route cache (start-up, or the store changed underneath)."""
        self._learned = learned.learned_view(routes, now, self._wall_offset)
        return self._effects(Out())

    def next_deadline(self) -> float | None:
        return self.queue.next_deadline()

    @property
    def active_transactions(self) -> int:
        """Every transaction the core holds, including those only absorbing retransmissions."""
        return len(self.table)

    @property
    def unanswered(self) -> int:
        """Server transactions still waiting for their final response (what a drain waits for)."""
        return sum(1 for e in self.table.servers() if e.txn.state in txns.UNANSWERED)

    def new_tag(self) -> str:
        self.n += 1
        return self.tag_prefix + hex(self.n)[2:]  # not f"{n:x}": a str.format call compiled

    # ------------------------------------------------------------------ requests

    def _on_request(self, msg: SipMessage, src: Source, now: float, out: Out) -> None:
        """RFC 3261 16.3 validation, then ACK (16.11, 17.2.1), CANCEL (16.10), a
        retransmission (17.2), or a new request (:meth:`_on_new_request`)."""
        method = msg.method
        rejection = validate.check_request(msg)
        if rejection is not None:
            self.metrics.bad["invalid_request"] += 1
            if method != "ACK" and not limits.over_rate_unanswered(self, src, now):
                out.send(txns.reject(self, msg, src, rejection.status,
                                     headers=rejection.headers))
            return
        if method == "ACK":
            forward.on_ack(self, msg, src, now, out)
            return
        if method == "CANCEL":
            cancel.on_cancel(self, msg, src, now, out)
            return
        key, entry = self.table.match_server(msg, method)
        if entry is not None:
            # RFC 3261 17.2.1 / 17.2.2: a retransmission is absorbed by its transaction.
            self.stats["retransmissions_in"] += 1
            txns.server_effects(self, entry, entry.txn.on_retransmission(now), out)
            return
        self._on_new_request(msg, src, key, now, out)

    def _on_new_request(self, msg: SipMessage, src: Source, key: str, now: float,
                        out: Out) -> None:
        """A request no transaction matches. What vouches for it (a trusted source, a dialog
        mark of ours, a dialog the proxy holds: :func:`~proxy.core.proxy.routing.decide`), the rate limit of
        its source for anything nothing vouches for, the refusals, all decided before any
        transaction exists and sent statelessly (:func:`~proxy.core.txns.refuse`); then a server
        transaction (17.2), 100 Trying for an INVITE (16.2) and the routing decision."""
        trusted = routing.trusted_source(self, src)
        prep = routing.preprocess_routes(self, msg)
        proven = held = None
        if msg.to_tag is not None and not trusted:
            proven = routing.prove(self, msg, prep)
            if not proven:
                held = self.dialogs.find(msg)
        if not (trusted or proven or held is not None) and limits.over_rate(
                self, msg, src, now, out, prep.token):
            return
        # 16.3 step 4: loop detection.
        loop_hash = validate.loop_hash(msg)
        if validate.looped(self, msg, loop_hash):
            txns.refuse(self, None, msg, src, "loop", 482, "Loop Detected", now, out,
                        "a Via of this proxy with this request's loop hash")
            return
        if self._draining and msg.to_tag is None:
            txns.refuse(self, None, msg, src, "draining", 503, "Service Unavailable", now, out,
                        "stopping: no new transactions", headers=("Retry-After: 5",))
            return
        try:
            decision = routing.decide(self, msg, src, prep, now, trusted, bool(proven), held)
        except ParseError:
            raise  # a header the router needed was malformed: 400 (on_message), stateless
        except Exception:
            self.note(ERROR, "internal error routing %s %s\n%s", msg.method, msg.request_uri,
                      format_exc())
            self.stats["internal_errors"] += 1
            out.send(txns.reject(self, msg, src, 500))
            return
        if isinstance(decision, routing.Refuse):
            txns.refuse(self, None, msg, src, decision.why, decision.status, decision.phrase,
                        now, out, decision.detail)
            return
        if msg.to_tag is not None:
            self.dialogs.on_request(msg, now)
        entry = txns.new_server(self, key, msg, src, now)
        if msg.method == "INVITE":
            # RFC 3261 16.2: a stateful proxy answers an INVITE with 100 at once.
            txns.send_response(self, entry, 100, make_response(msg, 100), now, out)
        try:
            self._route(entry, msg, src, prep, decision, loop_hash, now, out)
        except ParseError as exc:
            # A header the router needed was malformed (parsed lazily): answer it.
            if entry.ctx is None or not entry.ctx.final_sent:
                txns.respond(self, entry, msg, exc.status, now, out, reason=exc.message[:80])
        except Exception:
            # Never leave a server transaction without an answer (it would leak): 500.
            self.note(ERROR, "internal error routing %s %s\n%s", msg.method, msg.request_uri,
                      format_exc())
            self.stats["internal_errors"] += 1
            if entry.ctx is None or not entry.ctx.final_sent:
                txns.respond(self, entry, msg, 500, now, out)

    def _route(
        self, entry: ServerEntry, msg: SipMessage, src: Source, prep: routing.RoutePrep,
        decision: routing.RouteDecision, loop_hash: str, now: float, out: Out,
    ) -> None:
        """Carry out the routing decision (RFC 3261 16.5): answer, register, or create the
        response context and start forwarding (16.6)."""
        if isinstance(decision, routing.Answer):
            txns.respond(self, entry, msg, decision.status, now, out, reason=decision.reason,
                         headers=decision.headers)
            return
        if isinstance(decision, routing.LocalRegister):
            registrar_glue.local_register(self, entry, msg, src, now, out)
            return
        assert isinstance(decision, routing.Forward)
        ctx = ResponseContext(
            entry, msg, src, self._policy, decision.groups, from_location=decision.from_location,
            serial=decision.serial, loop_hash=loop_hash,
        )
        ctx.edits = prep.edits
        ctx.append = prep.append
        ctx.path = registrar_glue.upstream_path(self, msg, src)
        entry.ctx = ctx
        steer.begin(self, ctx, decision.routed, now)
        forward.next_group(self, ctx, now, out)
        if ctx.pending == 0 and not ctx.final_sent:
            final.send_best(self, ctx, now, out)


def _branch_key(secret: bytes) -> bytes:
    return hashlib.sha256(b"sip-policy-proxy branch mac v1|" + secret).digest()
