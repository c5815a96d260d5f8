"""The transaction-stateful proxy core (RFC 3261 section 16), sans-IO.

``ProxyCore`` is fed bytes with their :class:`Source` and the current time, and returns
:class:`Send` instructions; the runtime arms one timer at :meth:`ProxyCore.next_deadline`.
Nothing here calls time, asyncio or sockets.

Request path: parse -> validate (16.3) -> server transaction (17.2) -> route information
preprocessing (16.4) -> target set (16.5, CONTRACT routing order) -> forward each branch
(16.6) with a client transaction (17.1). Response path: match the branch (17.1.3) -> response
context (16.7): 1xx and 2xx forwarded at once, finals go through the one decision point
:meth:`ProxyCore._branch_final`, which applies the policy.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.core.access import PRIVATE_NETWORKS, AddressSet, Refusals
from proxy.core.context import (
    Branch,
    BranchState,
    Response,
    ResponseContext,
    ServerEntry,
    select_best,
)
from proxy.core.digest import AuthOutcome, DigestAuth, may_register
from proxy.core.flowtoken import Flow, FlowTokens
from proxy.core.redirect_guard import RedirectGuard
from proxy.core.registrar import (
    Binding,
    LocationStore,
    RegistrarError,
    aor_of,
    binding_from_contact,
    contact_lines,
    register,
)
from proxy.core.types import LocalAddress, Send, Source, Target
from proxy.policy import Action, Decision, Policy
from proxy.sip import (
    AbsoluteUri,
    NameAddr,
    ParseError,
    SipMessage,
    SipUri,
    make_response,
    parse_message,
    parse_name_addr_list,
    parse_uri,
    rewrite,
    strip_top_via,
    validate_request,
)
from proxy.store.base import LearnedRoute
from proxy.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Retransmit,
    SendAck,
    Terminated,
    Timeout,
    TimerConfig,
    TimerQueue,
)

log = logging.getLogger("proxy.core")

#: Requests that may create a dialog, so that the proxy record-routes them (RFC 3261 16.6 step 4).
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, MESSAGE, SUBSCRIBE, NOTIFY, REFER"
ROUTE_SCHEMES = frozenset({"sip", "sips", "tel"})
_UNANSWERED = frozenset({"TRYING", "PROCEEDING"})
FLOW_TIMER = 120  # seconds between keep-alives asked of outbound UAs (RFC 5626 4.4.1)
#: RFC 3261 18.1.1: larger requests go over a congestion-controlled transport (TCP), the path
#: MTU being unknown (1500 - 200 bytes).
UDP_SIZE_LIMIT = 1300
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4 (65535 - 8 - 20)


class RoutePrep(NamedTuple):
    """What route information preprocessing (RFC 3261 16.4) found."""

    edits: dict[int, str | None]
    append: list[str]
    next_hop: NameAddr | None
    popped: bool
    token: str | None


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """What the core needs from proxy.yaml, already resolved."""

    upstreams: tuple[Target, ...] = ()
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
    #: sources (besides the upstreams) that may route by Route or Request-URI (CONTRACT access)
    trusted_relays: AddressSet = field(default_factory=lambda: AddressSet(()))
    #: sources whose REGISTER the local registrar serves without credentials
    registrar_networks: AddressSet = field(
        default_factory=lambda: AddressSet(PRIVATE_NETWORKS, "registrar_networks"))
    registrar_max_contacts: int = 10
    auth: DigestAuth | None = None  # digest credentials the local registrar accepts (RFC 3261 22)


class _Expiry:
    """The location service's timer: expired bindings leave memory when it fires (CONTRACT
    registrar), on whole seconds so that many bindings expire in one pass."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline: float | None = None


class ProxyCore:
    """RFC 3261 section 16 proxy behaviour over section 17 transactions."""

    def __init__(
        self,
        settings: CoreSettings,
        policy: Policy,
        local: Sequence[LocalAddress],
        location: LocationStore,
    ) -> None:
        if not local:
            raise ValueError("the core needs at least one local address")
        self.settings = settings
        self.policy = policy
        self.location = location
        self.timers = settings.timers
        self.draining = False
        self.stats: Counter[str] = Counter()
        self._local = tuple(local)
        self._ours: set[tuple[str, int]] = {(a.host.lower(), a.port) for a in local}
        for a in local:
            host, _, port = a.advertised.rpartition(":")
            self._ours.add((host.strip("[]").lower(), int(port)))
        self._adv = tuple({a.advertised for a in local})
        self._upstream_addrs = {(t.host, t.port) for t in settings.upstreams}
        self._has_tcp = any(a.transport == "tcp" for a in local)
        self.refusals = Refusals()
        self._queue = TimerQueue()
        self._server: dict[str, ServerEntry] = {}
        self._client: dict[str, Branch] = {}
        self._prefix = secrets.token_hex(3)
        self._tag_prefix = secrets.token_hex(4)
        self._n = 0
        self.guard = settings.guard
        #: learned Request-URI rewrites: old URI -> (new URI, expiry on the core's clock)
        self.learned: dict[str, tuple[str, float]] = {}
        #: learned routes the runtime must make durable before the context goes on
        self.writes: list[tuple[LearnedRoute, ResponseContext]] = []
        #: wall clock minus the core's clock, for the times a learned route is stored with
        self.wall_offset = 0.0
        secret = settings.secret or secrets.token_bytes(32)
        self.tokens = FlowTokens(secret)
        #: key of the MAC every branch this proxy generates carries (CONTRACT: forged responses)
        self._branch_key = hashlib.sha256(b"sip-policy-proxy branch mac v1|" + secret).digest()
        self._closed_conns: set[int] = set()  # stream connections known to be closed
        #: last sign of life (any message or keep-alive) of each UDP outbound flow (RFC 5626 4.4.1)
        self._udp_flows: dict[tuple[str, int], float] = {}
        self._expiry = _Expiry()

    # ------------------------------------------------------------------ entry points

    def on_message(self, data: bytes, src: Source, now: float) -> list[Send]:
        """Handle one framed message (a datagram, or one message cut from a stream)."""
        out: list[Send] = []
        s = self.settings
        if self._udp_flows and src.transport == "udp":
            key = (src.host, src.port)
            if key in self._udp_flows:
                self._udp_flows[key] = now
        try:
            msg = parse_message(
                data, max_size=s.max_message_size, max_headers=s.max_headers,
                datagram=src.transport == "udp",
            )
        except ParseError as exc:
            self._bad_message(data, src, exc, out)
            return out
        try:
            if msg.is_request:
                self.stats["requests_in"] += 1
                self._on_request(msg, src, now, out)
            else:
                self.stats["responses_in"] += 1
                self._on_response(msg, src, now, out)
        except ParseError as exc:
            if msg.is_request and msg.method != "ACK":
                self.stats["requests_rejected"] += 1
                log.info("bad request from %s:%s: %s", src.host, src.port, exc.message)
                self._reject(msg, src, exc.status, out, reason=exc.message)
            else:
                self.stats["responses_dropped"] += 1
                log.info("dropped bad %s from %s:%s: %s",
                         "ACK" if msg.is_request else "response", src.host, src.port, exc.message)
        return out

    def on_timer(self, now: float) -> list[Send]:
        """Fire every timer due at ``now`` (transaction timers A..M and Timer C)."""
        out: list[Send] = []
        for item in self._queue.pop_due(now):
            if isinstance(item, Branch):
                self._branch_timer(item, now, out)
            elif item is self._expiry:
                self._expiry.deadline = None
                gone = self.location.expire(now)
                self.stats["bindings_expired"] += len(gone)
                self._schedule_expiry()
            elif isinstance(item, ResponseContext):
                item.deadline = None
                if not item.final_sent:
                    self._send_best(item, now, out)
            else:
                self._server_effects(item, item.txn.on_timer(now), now, out)
        return out

    def on_send_failure(self, token: object, now: float) -> list[Send]:
        """A send failed (no route, connection refused or lost): RFC 3261 16.9, 17.1.4."""
        out: list[Send] = []
        if isinstance(token, Branch) and token.state is BranchState.PENDING:
            self.stats["transport_errors"] += 1
            br = token
            effects = br.txn.on_transport_error(now)
            self._client_effects(br, effects, None, now, out)
            if br.state is BranchState.PENDING:
                self._branch_final(br, 503, None, now, out)
        return out

    def next_deadline(self) -> float | None:
        return self._queue.next_deadline()

    @property
    def active_transactions(self) -> int:
        """Every transaction the core holds, including those only absorbing retransmissions."""
        return len(self._server) + len(self._client)

    @property
    def unanswered(self) -> int:
        """Server transactions still waiting for their final response (what a drain waits for)."""
        return sum(1 for e in self._server.values() if e.txn.state.name in _UNANSWERED)

    # ------------------------------------------------------------------ requests

    def _on_request(self, msg: SipMessage, src: Source, now: float, out: list[Send]) -> None:
        validate_request(msg)
        method = msg.method
        # RFC 3261 16.3 step 2: URI scheme.
        uri = msg.uri
        if isinstance(uri, AbsoluteUri) and uri.scheme not in ROUTE_SCHEMES:
            if method != "ACK":
                self._reject(msg, src, 416, out)
            return
        # 16.3 step 3: Max-Forwards.
        mf = msg.max_forwards
        if mf == 0:
            if method != "ACK":
                self._reject(msg, src, 483, out)
            return
        # 16.3 step 6: Proxy-Require; this proxy supports no option tag there.
        if method != "ACK" and method != "CANCEL":
            required = msg.get_all("proxy-require")
            if required:
                tags = ", ".join(t.strip() for v in required for t in v.split(",") if t.strip())
                self._reject(msg, src, 420, out, headers=(f"Unsupported: {tags}",))
                return
        if method == "ACK":
            self._on_ack(msg, src, now, out)
            return
        if method == "CANCEL":
            self._on_cancel(msg, src, now, out)
            return
        key = self._server_key(msg, method)
        entry = self._server.get(key)
        if entry is not None:
            # RFC 3261 17.2.1 / 17.2.2: a retransmission is absorbed by its transaction.
            self.stats["retransmissions_in"] += 1
            self._server_effects(entry, entry.txn.on_retransmission(now), now, out)
            return
        loop_hash = self._loop_hash(msg)
        reliable = src.transport != "udp"
        txn: InviteServerTransaction | NonInviteServerTransaction
        if method == "INVITE":
            txn = InviteServerTransaction(reliable=reliable, now=now, timers=self.timers)
        else:
            txn = NonInviteServerTransaction(reliable=reliable, now=now, timers=self.timers)
        entry = ServerEntry(key, txn, self._reply_dest(msg, src))
        self._server[key] = entry
        if method == "INVITE":
            # RFC 3261 16.2: a stateful proxy answers an INVITE with 100 at once.
            self._send_response(entry, 100, make_response(msg, 100), now, out)
        # 16.3 step 4: loop detection.
        if self._looped(msg, loop_hash):
            self._respond(entry, msg, 482, now, out)
            return
        if self.draining and msg.to_tag is None:
            self._respond(entry, msg, 503, now, out, headers=("Retry-After: 5",))
            return
        try:
            self._route(entry, msg, src, loop_hash, now, out)
        except ParseError as exc:
            # A header the router needed was malformed (parsed lazily): answer it.
            if entry.ctx is None or not entry.ctx.final_sent:
                self._respond(entry, msg, exc.status, now, out, reason=exc.message[:80])
        except Exception:
            # Never leave a server transaction without an answer (it would leak): 500.
            log.exception("internal error routing %s %s", method, msg.request_uri)
            self.stats["internal_errors"] += 1
            if entry.ctx is None or not entry.ctx.final_sent:
                self._respond(entry, msg, 500, now, out)

    def _route(
        self, entry: ServerEntry, msg: SipMessage, src: Source, loop_hash: str, now: float,
        out: list[Send],
    ) -> None:
        """Build the target set in the CONTRACT's routing order and start forwarding."""
        edits, append, next_hop, popped, token = self._preprocess_routes(msg)
        method = msg.method
        uri = msg.uri
        groups: list[list[Target]]
        serial = False
        from_location = False
        aor: str | None = None
        flow = self._flow_target(token, src) if token is not None else None
        if isinstance(flow, int):
            reason = "Flow Failed" if flow == 430 else "Invalid Flow Token"
            self.stats[f"flow_token_{flow}"] += 1
            self._respond(entry, msg, flow, now, out, reason=reason)
            return
        # Who may choose the next hop by what the message names (a Route, the Request-URI):
        # an upstream or a trusted relay, judged by the packet's source (never by Via); or a
        # request of a dialog that passed this proxy, proven by the verified flow token of our
        # Record-Route (CONTRACT "TLS and access").
        trusted = self._trusted_source(src)
        in_dialog_ours = msg.to_tag is not None and token is not None
        if flow is not None:
            # RFC 5626 5.3: the edge proxy sends the request over the flow its token names.
            groups = [[flow]]
        elif next_hop is not None:
            # 1. Loose routing (RFC 3261 16.4, 16.6 step 7): the next Route names the next hop.
            if not (trusted or in_dialog_ours):
                # A preloaded Route to another host from a stranger: no open relay.
                self._refuse(entry, msg, src, "relay", 403, "Relaying Denied", now, out,
                             f"Route {next_hop.uri} from an untrusted source")
                return
            target = self._target_for_uri(next_hop.uri, request_uri=None)
            if target is None:
                self._respond(entry, msg, 404, now, out, reason="Route Not Resolvable")
                return
            groups = [[target]]
        elif (
            popped and isinstance(uri, SipUri) and not self._is_local_uri(uri)
            and (trusted or in_dialog_ours or msg.to_tag is not None)
        ):
            # 1b. The Route set ended with us: the Request-URI is the next hop (16.4, 16.6
            # step 7), e.g. a BYE of a record-routed dialog. A stranger's in-dialog request
            # without our token is refused; its initial one is routed as if it had no Route.
            if not (trusted or in_dialog_ours):
                self._refuse(entry, msg, src, "relay", 403, "Relaying Denied", now, out,
                             f"in-dialog request to {uri} without this proxy's Record-Route")
                return
            target = self._target_for_uri(uri, request_uri=None)
            assert target is not None
            groups = [[target]]
        elif method == "REGISTER" and self.settings.registrar_local:
            # 2. The local registrar (RFC 3261 10.3).
            self._local_register(entry, msg, src, now, out)
            return
        else:
            learned = self._learned_uri(msg.request_uri, now) if self.learned else None
            if learned is not None:
                # A permanent rewrite learned from a 301 replaces the Request-URI (CONTRACT).
                uri = parse_uri(learned)
                self.stats["learned_routes_applied"] += 1
            is_local = self._is_local_uri(uri)
            if (
                is_local and method == "OPTIONS" and isinstance(uri, SipUri) and uri.user is None
            ):
                # An OPTIONS for the proxy itself (keep-alive pings of trunks): answer it.
                self._respond(entry, msg, 200, now, out, headers=(f"Allow: {ALLOW}",
                              "Accept: application/sdp"))
                return
            bindings: list[Binding] = []
            if isinstance(uri, SipUri) and uri.user is not None:
                aor = uri.aor
                bindings = self.location.lookup(aor, now)
            if bindings:
                # 3. A registered address-of-record: its bindings, forked by q-value.
                groups = self._binding_groups(bindings, now)
                serial = True
                from_location = True
            elif learned is not None and isinstance(uri, SipUri):
                # ... and a request so rewritten goes to its new Request-URI (as in step 4).
                target = self._target_for_uri(uri, request_uri=learned)
                assert target is not None
                groups = [[target]]
            elif is_local and (self.settings.registrar_local or trusted):
                # The proxy is responsible for this URI and nobody is registered for it.
                status = 480 if aor is not None and self.location.known(aor) else 404
                self._respond(entry, msg, status, now, out)
                return
            elif trusted and isinstance(uri, SipUri):
                # 4. From an upstream (or a trusted relay): to its Request-URI.
                target = self._target_for_uri(uri, request_uri=None)
                if target is None:
                    self._respond(entry, msg, 404, now, out)
                    return
                groups = [[target]]
            elif self.settings.upstreams:
                # 5. Everything else: the upstreams, first one first (failover by policy).
                groups = [[t] for t in self.settings.upstreams]
            else:
                # No upstream, nobody registered: a stranger's Request-URI is never a next hop.
                self._respond(entry, msg, 404, now, out)
                return
        ctx = ResponseContext(
            entry, msg, src, self.policy, groups, from_location=from_location, serial=serial,
            loop_hash=loop_hash,
        )
        ctx.edits = edits
        ctx.append = append
        if method == "REGISTER" and not self.settings.registrar_local and self._supports(msg, "path"):
            # RFC 3327 5.2 / RFC 5626 5.1: Path with the flow token of the UA's flow, and
            # ";ob" for an outbound registration; each branch names the proxy as its registrar
            # reaches it (_fork).
            ob = ";ob" if any("reg-id" in c.params for c in msg.contacts) else ""
            ctx.path = (self._token_for(src, self._local_for_source(src)), ob)
        entry.ctx = ctx
        self._next_group(ctx, now, out)
        if ctx.pending == 0 and not ctx.final_sent:
            self._send_best(ctx, now, out)

    def _preprocess_routes(self, msg: SipMessage) -> RoutePrep:
        """RFC 3261 16.4: drop the Route values that name this proxy; return the next hop.

        Returns the header edits (by header index), header lines to append, the first
        remaining Route, if any, whether a Route value of ours was removed, and the flow token
        (RFC 5626 5.3) a removed value of ours carried. Max-Forwards is decremented here too
        (16.6 step 3).
        """
        edits: dict[int, str | None] = {}
        append: list[str] = []
        next_hop: NameAddr | None = None
        popped = False
        token: str | None = None
        mf_index = -1
        popping = True
        for i, h in enumerate(msg.headers):
            name = h.name
            if name == "max-forwards":
                mf_index = i
            elif name == "route" and popping:
                values = parse_name_addr_list(h.value)
                kept = values
                while kept and self._is_own_route(kept[0]):
                    own = kept[0].uri
                    if isinstance(own, SipUri) and own.user:
                        token = own.user
                    kept = kept[1:]
                if len(kept) != len(values):
                    popped = True
                    edits[i] = None if not kept else "Route: " + ", ".join(str(v) for v in kept)
                if kept:
                    next_hop = kept[0]
                    popping = False
        mf = msg.max_forwards
        if mf_index >= 0 and mf is not None:
            edits[mf_index] = f"Max-Forwards: {mf - 1}"
        else:
            append.append("Max-Forwards: 70")
        return RoutePrep(edits, append, next_hop, popped, token)

    def _flow_target(self, token: str, src: Source) -> Target | int | None:
        """RFC 5626 5.3: the flow a Route value of ours names.

        Returns the target over that flow; None when it is the flow the request came in on (then
        routing goes on as usual); 403 for a token that does not verify; 430 for a flow that is
        known to be dead.
        """
        flow = self.tokens.decode(token)
        if flow is None:
            return 403
        if flow.remote_host == src.host and flow.remote_port == src.port:
            return None
        if flow.conn_id is not None and flow.conn_id in self._closed_conns:
            return 430
        return Target(flow.transport, flow.remote_host, flow.remote_port, None, flow.conn_id,
                      label=f"flow {flow.transport}:{flow.remote_host}:{flow.remote_port}",
                      via_flow=True)

    def _token_for(self, src: Source, local: LocalAddress) -> str:
        return self.tokens.encode(Flow(src.transport, local.host, local.port, src.host,
                                       src.port, src.conn_id))

    def _is_own_route(self, na: NameAddr) -> bool:
        uri = na.uri
        if not isinstance(uri, SipUri):
            return False
        host, port = uri.host_port()
        return (host.lower(), port) in self._ours

    def _is_local_uri(self, uri: SipUri | AbsoluteUri) -> bool:
        if not isinstance(uri, SipUri):
            return False
        host, port = uri.host_port()
        host = host.lower()
        if (host, port) in self._ours:
            return True
        return host in self.settings.domains

    def _trusted_source(self, src: Source) -> bool:
        """CONTRACT access: an upstream (by the packet's source address and port, or the
        connection the proxy opened to it) or a ``trusted_relays`` host; never by Via."""
        return (src.host, src.port) in self._upstream_addrs or src.host in self.settings.trusted_relays

    def _refuse(
        self, entry: ServerEntry, msg: SipMessage, src: Source, reason: str, status: int,
        phrase: str, now: float, out: list[Send], detail: str,
    ) -> None:
        """Answer a refused request, count it, and log it once per source per minute."""
        if self.refusals.note(reason, src.host, now):
            log.warning("refused %s %s from %s:%s (%s): %s %s; counted, logged once a minute "
                        "per source", msg.method, msg.request_uri, src.host, src.port, reason,
                        status, detail)
        self._respond(entry, msg, status, now, out, reason=phrase)

    @staticmethod
    def _supports(msg: SipMessage, tag: str) -> bool:
        for v in msg.get_all("supported"):
            if tag in (t.strip().lower() for t in v.split(",")):
                return True
        return False

    def _binding_groups(self, bindings: list[Binding], now: float) -> list[list[Target]]:
        """RFC 3261 16.6 / 16.7 q-value forking; RFC 5626 7: one flow per instance, newest first."""
        newest: dict[str, Binding] = {}
        plain: list[Binding] = []
        for b in bindings:
            if b.reg_id is not None and not self._flow_alive(b, now):
                log.info("flow %s of %s silent for over %d s: binding removed", b.key, b.aor,
                         2 * FLOW_TIMER + 10)
                self.location.remove(b.aor, b.key)
                continue
            if b.instance is None:
                plain.append(b)
            else:
                cur = newest.get(b.instance)
                if cur is None or b.registered_at > cur.registered_at:
                    newest[b.instance] = b
        chosen = plain + list(newest.values())
        by_q: dict[float, list[Target]] = {}
        for b in chosen:
            t = self._target_for_binding(b, now)
            if t is not None:
                by_q.setdefault(b.q, []).append(t)
        return [by_q[q] for q in sorted(by_q, reverse=True)]

    def _target_for_binding(self, b: Binding, now: float) -> Target | None:
        ruri = b.uri.split("?", 1)[0]  # RFC 3261 19.1.5: no headers in a Request-URI
        learned = self._learned_uri(ruri, now) if self.learned else None
        if learned is not None:
            # This binding answered 301 before: only it goes to its new address (CONTRACT).
            self.stats["learned_routes_applied"] += 1
            try:
                t = self._target_for_uri(parse_uri(learned), request_uri=learned, q=b.q)
            except ParseError:
                return None
            return None if t is None else t._replace(aor=b.aor, binding_key=b.key)
        if b.reg_id is not None:
            # RFC 5626 5.3: requests for an outbound binding go over its flow.
            f = b.flow
            return Target(f.transport, f.host, f.port, ruri, f.conn_id, b.q, b.contact,
                          b.aor, b.instance, b.key, via_flow=True)
        try:
            uri = parse_uri(ruri)
        except ParseError:
            return None
        t = self._target_for_uri(uri, request_uri=ruri, q=b.q)
        return None if t is None else t._replace(aor=b.aor, instance=b.instance, binding_key=b.key)

    @staticmethod
    def _target_for_uri(
        uri: SipUri | AbsoluteUri, *, request_uri: str | None, q: float = 1.0
    ) -> Target | None:
        """RFC 3263 in its simplest form: transport param, host and port. A host name is left
        to the transport layer, which resolves it (A/AAAA) without blocking; a name that does
        not resolve is a transport error on the branch (RFC 3261 16.9)."""
        if not isinstance(uri, SipUri):
            return None
        host, port = uri.host_port()
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
        return Target(transport, host, port, request_uri, None, q, str(uri),
                      fixed_transport=uri.transport is not None)

    # ------------------------------------------------------------------ forwarding

    def _next_group(self, ctx: ResponseContext, now: float, out: list[Send]) -> bool:
        """Start the next group of targets; False when none is left."""
        while ctx.groups:
            group = ctx.groups.pop(0)
            started = False
            for target in group:
                label = f"{target.request_uri or ''}@{target.host}:{target.port}/{target.transport}"
                if label in ctx.tried:
                    continue  # RFC 3261 16.5: each target at most once per response context
                ctx.tried.add(label)
                started = self._fork(ctx, target, now, out) or started
            if started:
                return True
        return False

    def _fork(self, ctx: ResponseContext, target: Target, now: float, out: list[Send]) -> bool:
        """RFC 3261 16.6: copy, rewrite and send the request on a new branch.

        RFC 3261 18.1.1: a request over 1300 bytes goes over TCP when the proxy has TCP and
        the target takes it (not a UA's UDP flow, no explicit ``;transport=udp``); one that
        does not fit a datagram at all and cannot go over TCP is answered 513 at once (False:
        no branch was started).
        """
        self._n += 1
        bid = self._signed_branch(f"z9hG4bK{self._prefix}{ctx.loop_hash}{self._n:x}")
        data = self._branch_bytes(ctx, target, bid)
        if target.transport == "udp" and len(data) > UDP_SIZE_LIMIT:
            if self._has_tcp and not (target.via_flow or target.fixed_transport):
                target = target._replace(transport="tcp", conn_id=None)
                data = self._branch_bytes(ctx, target, bid)
                self.stats["udp_to_tcp"] += 1
            elif len(data) > MAX_DATAGRAM:
                log.warning("%s of %d bytes for %s:%s does not fit a UDP datagram and the next "
                            "hop cannot be reached over TCP: 513", ctx.method, len(data),
                            target.host, target.port)
                self.stats["too_large"] += 1
                decision = ctx.policy.evaluate(513, ctx.method)
                ctx.responses.append(Response(513, None, decision))
                return False
        method = ctx.method
        reliable = target.transport != "udp"
        txn: InviteClientTransaction | NonInviteClientTransaction
        if method == "INVITE":
            txn = InviteClientTransaction(data, reliable=reliable, now=now, timers=self.timers)
        else:
            txn = NonInviteClientTransaction(data, reliable=reliable, now=now, timers=self.timers)
        dest = (target.transport, target.host, target.port, target.conn_id)
        br = Branch(ctx, bid, target, txn, data, dest)
        if method == "INVITE":
            br.timer_c = now + self.timers.timer_c  # RFC 3261 16.6 step 11
        self._client[bid + "|" + method] = br
        ctx.branches.append(br)
        ctx.pending += 1
        self._schedule(br)
        self.stats["branches"] += 1
        out.append(Send(target.transport, target.host, target.port, data, target.conn_id, br))
        return True

    def _branch_bytes(self, ctx: ResponseContext, target: Target, bid: str) -> bytes:
        """The request as sent on one branch (RFC 3261 16.6 steps 2 to 8), by splicing."""
        msg = ctx.request
        local = self._local_for(target)
        insert = [f"Via: SIP/2.0/{local.transport.upper()} {local.advertised};branch={bid}"]
        method = ctx.method
        if self.settings.record_route and method in DIALOG_METHODS and msg.to_tag is None:
            insert.extend(self._record_route(local, ctx.source, target))
        if ctx.path is not None:
            # RFC 3327 5.1: in front of any Path already there, naming the proxy as the
            # registrar reaches it (this branch's transport and address).
            token, ob = ctx.path
            insert.append(f"Path: <sip:{token}@{local.advertised};lr{ob}{self._tp(local)}>")
        start = f"{method} {target.request_uri} SIP/2.0" if target.request_uri else None
        return rewrite(msg, start_line=start, insert_top=insert, edits=ctx.edits, append=ctx.append)

    def _record_route(self, out_local: LocalAddress, src: Source, target: Target) -> list[str]:
        """RFC 3261 16.6 step 4; two values when the request changes transport or address.

        The Record-Route carries a flow token (RFC 5626 5.3) naming the UA's flow: the target's
        when the request goes out over a registered flow, the caller's otherwise. A request of
        the dialog that comes from that flow is routed as usual; one from the other side goes
        back over the flow, whatever its Request-URI (a UA's private Contact) says.
        """
        in_local = self._local_for_source(src)
        if target.via_flow:
            token = self.tokens.encode(Flow(target.transport, out_local.host, out_local.port,
                                            target.host, target.port, target.conn_id))
            out_user, in_user = token + "@", ""
        else:
            out_user, in_user = "", self._token_for(src, in_local) + "@"
        if in_local == out_local:
            user = out_user or in_user
            return [f"Record-Route: <sip:{user}{out_local.advertised};lr{self._tp(out_local)}>"]
        return [f"Record-Route: <sip:{out_user}{out_local.advertised};lr{self._tp(out_local)}>",
                f"Record-Route: <sip:{in_user}{in_local.advertised};lr{self._tp(in_local)}>"]

    @staticmethod
    def _tp(local: LocalAddress) -> str:
        return "" if local.transport == "udp" else f";transport={local.transport}"

    def _local_for(self, target: Target) -> LocalAddress:
        v6 = ":" in target.host
        for a in self._local:
            if a.transport == target.transport and (":" in a.host) == v6:
                return a
        for a in self._local:
            if a.transport == target.transport:
                return a
        return self._local[0]

    def _local_for_source(self, src: Source) -> LocalAddress:
        v6 = ":" in src.host
        for a in self._local:
            if a.transport == src.transport and (":" in a.host) == v6:
                return a
        return self._local[0]

    # ------------------------------------------------------------------ ACK and CANCEL

    def _on_ack(self, msg: SipMessage, src: Source, now: float, out: list[Send]) -> None:
        entry = self._server.get(self._server_key(msg, "INVITE"))
        if entry is not None and entry.txn.state.name != "ACCEPTED":
            # RFC 3261 17.2.1: the ACK for a non-2xx final response ends at this hop.
            self._server_effects(entry, entry.txn.on_ack(now), now, out)
            return
        # The ACK for a 2xx is end to end (RFC 3261 13.2.2.4): forward it statelessly (16.11).
        edits, append, next_hop, _, token = self._preprocess_routes(msg)
        uri = msg.uri
        target: Target | None
        flow = self._flow_target(token, src) if token is not None else None
        if isinstance(flow, int):
            self.stats["acks_dropped"] += 1
            return
        if flow is not None:
            target = flow
        elif not (self._trusted_source(src) or (msg.to_tag is not None and token is not None)):
            # Only an ACK of a dialog that passed this proxy (our Record-Route token) or from
            # a trusted source may name its next hop; a stranger's is dropped (no open relay).
            if self.refusals.note("relay", src.host, now):
                log.warning("dropped ACK %s from %s:%s: not of a dialog through this proxy",
                            msg.request_uri, src.host, src.port)
            target = None
        elif next_hop is not None:
            target = self._target_for_uri(next_hop.uri, request_uri=None)
        elif isinstance(uri, SipUri) and not self._is_local_uri(uri):
            target = self._target_for_uri(uri, request_uri=None)
        else:
            target = None
        if target is None:
            self.stats["acks_dropped"] += 1
            return
        local = self._local_for(target)
        top = msg.top_via
        digest = zlib.crc32(f"{top.branch}|{top.host}|{top.port}".encode("latin-1", "replace"))
        bid = f"z9hG4bK{self._prefix}s{digest:08x}"
        data = rewrite(
            msg,
            insert_top=[f"Via: SIP/2.0/{local.transport.upper()} {local.advertised};branch={bid}"],
            edits=edits, append=append,
        )
        out.append(Send(target.transport, target.host, target.port, data, target.conn_id))

    def _on_cancel(self, msg: SipMessage, src: Source, now: float, out: list[Send]) -> None:
        """RFC 3261 16.10: answer the CANCEL, then cancel every pending branch."""
        ckey = self._server_key(msg, "CANCEL")
        centry = self._server.get(ckey)
        if centry is not None:
            self._server_effects(centry, centry.txn.on_retransmission(now), now, out)
            return
        reliable = src.transport != "udp"
        txn = NonInviteServerTransaction(reliable=reliable, now=now, timers=self.timers)
        centry = ServerEntry(ckey, txn, self._reply_dest(msg, src))
        self._server[ckey] = centry
        inv = self._server.get(self._server_key(msg, "INVITE"))
        ctx = inv.ctx if inv is not None else None
        if ctx is None:
            self._respond(centry, msg, 481, now, out)
            return
        self._respond(centry, msg, 200, now, out)
        if ctx.final_sent:
            return
        ctx.cancelled = True
        self._cancel_pending(ctx, now, out)
        if ctx.pending == 0:
            self._send_local(ctx, 487, now, out)

    def _cancel_pending(self, ctx: ResponseContext, now: float, out: list[Send]) -> None:
        for br in ctx.branches:
            if br.state is BranchState.PENDING:
                self._cancel_branch(br, now, out)

    def _cancel_branch(self, br: Branch, now: float, out: list[Send]) -> None:
        if br.cancel_txn is not None or br.ctx.method != "INVITE":
            return
        if not br.provisional:
            br.cancel_wanted = True  # RFC 3261 9.1: wait for a provisional response
            return
        data = self._build_hop_request(br, "CANCEL", None)
        reliable = br.dest[0] != "udp"
        br.cancel_txn = NonInviteClientTransaction(data, reliable=reliable, now=now, timers=self.timers)
        self._client[br.branch_id + "|CANCEL"] = br
        br.timer_c = None
        self._schedule(br)
        t, h, p, c = br.dest
        out.append(Send(t, h, p, data, c))

    def _build_hop_request(self, br: Branch, method: str, response: SipMessage | None) -> bytes:
        """CANCEL (RFC 3261 9.1) or ACK for a non-2xx final (17.1.1.3) on one branch."""
        sent = parse_message(br.data, max_size=1 << 30, max_headers=1 << 16, datagram=True)
        ruri = sent.request_uri
        lines = [f"{method} {ruri} SIP/2.0"]
        for h in sent.headers:
            if h.name == "via":
                lines.append(f"Via: {h.value}")
                break
        for h in sent.headers:
            if h.name == "route":
                lines.append(f"Route: {h.value}")
        lines.append(f"From: {sent.get('from')}")
        to = response.get("to") if response is not None else sent.get("to")
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {sent.get('call-id')}")
        lines.append(f"CSeq: {sent.cseq[0]} {method}")
        lines.append("Max-Forwards: 70")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # ------------------------------------------------------------------ responses

    def _on_response(self, msg: SipMessage, src: Source, now: float, out: list[Send]) -> None:
        via = msg.top_via
        bid = via.branch
        method = msg.cseq[1]
        br = self._client.get(f"{bid}|{method}") if bid else None
        if br is None:
            self._stateless_response(msg, src, now, out)
            return
        status = msg.status
        if method == "CANCEL" and br.ctx.method != "CANCEL":
            ctxn = br.cancel_txn
            if ctxn is not None:
                _, effects = ctxn.on_response(status, now)
                for e in effects:
                    if isinstance(e, Terminated):
                        self._client.pop(br.branch_id + "|CANCEL", None)
                self._schedule(br)
            return
        deliver, effects = br.txn.on_response(status, now)
        self._client_effects(br, effects, msg, now, out)
        if not deliver:
            self.stats["retransmissions_in"] += 1
            return
        if status < 200:
            self._provisional(br, msg, status, now, out)
            return
        if status < 300:
            self._success(br, msg, now, out)
            return
        if br.state is BranchState.PENDING:
            self._branch_final(br, status, msg, now, out, src)

    def _provisional(
        self, br: Branch, msg: SipMessage, status: int, now: float, out: list[Send]
    ) -> None:
        ctx = br.ctx
        br.provisional = True
        if br.state is not BranchState.PENDING:
            return
        if br.cancel_wanted:
            self._cancel_branch(br, now, out)
        elif status > 100 and br.timer_c is not None:
            br.timer_c = now + self.timers.timer_c  # RFC 3261 16.7 step 2: reset Timer C
            self._schedule(br)
        if status > 100 and not ctx.final_sent and not ctx.cancelled:
            # 16.7 step 5: provisional responses other than 100 are forwarded at once.
            self._forward_response(ctx, msg, status, now, out)

    def _success(self, br: Branch, msg: SipMessage, now: float, out: list[Send]) -> None:
        """RFC 3261 16.7 step 5: every 2xx is forwarded at once; step 10: CANCEL the rest."""
        ctx = br.ctx
        if br.state is BranchState.PENDING:
            br.state = BranchState.DONE
            br.timer_c = None
            ctx.pending -= 1
            self._schedule(br)
        if ctx.method == "REGISTER" and not self.settings.registrar_local:
            self._learn_bindings(ctx, msg, now)
        if ctx.final_sent and not ctx.got_2xx:
            return  # a non-2xx final went upstream already (policy stop): nothing can follow
        ctx.got_2xx = True
        ctx.final_sent = True
        self._forward_response(ctx, msg, 200, now, out)
        if ctx.method == "INVITE":
            self._cancel_pending(ctx, now, out)

    def _branch_final(
        self, br: Branch, status: int, msg: SipMessage | None, now: float, out: list[Send],
        src: Source | None = None,
    ) -> None:
        """The one decision point for a final response (RFC 3261 16.7 steps 4 to 6).

        ``msg`` is None for a response the proxy synthesised: 408 for a timeout (Timer B, F or
        C), 503 for a transport error (16.9). The policy of the context decides.
        """
        ctx = br.ctx
        br.state = BranchState.DONE
        br.final_status = status
        br.timer_c = None
        ctx.pending -= 1
        self._schedule(br)
        if ctx.final_sent:
            return
        decision = ctx.policy.evaluate(status, ctx.method)
        ctx.responses.append(Response(status, msg, decision))
        action = decision.action
        if ctx.cancelled:
            pass
        elif br.target.instance is not None and (
            msg is None or (status == 430 and action is Action.RETRY_FLOWS)
        ):
            # RFC 5626 7: a 430, a transport error or a timeout on a flow -> the same instance's
            # next flow, and the failed binding is removed.
            if self._retry_flow(ctx, br, now, out):
                return
        elif action is Action.STOP:
            # Global failure (RFC 3261 16.7 step 5): CANCEL the pending branches and create no
            # new one. The 6xx is the final response once the cancelled branches end (step 6),
            # or after 4*T1 at the latest: a branch that never sent a provisional response
            # cannot be cancelled yet and must not hold the caller's answer back.
            ctx.stopped = True
            self.stats["policy_stop"] += 1
            self._cancel_pending(ctx, now, out)
            if ctx.pending:
                ctx.deadline = now + 4 * self.timers.t1
                self._queue.schedule(ctx)
                return
        elif action is Action.FAILOVER and ctx.may_branch:
            self.stats["policy_failover"] += 1
            if self._next_group(ctx, now, out):
                return
        elif action is Action.REDIRECT and msg is not None and ctx.may_branch and status < 400:
            if self._redirect(ctx, br, status, msg, decision, src, now, out):
                return
        if ctx.waiting:
            return  # the learned route is being written; branches start after it
        if ctx.pending == 0 and not ctx.final_sent:
            if ctx.serial and ctx.may_branch and self._next_group(ctx, now, out):
                return
            self._send_best(ctx, now, out)

    def _send_best(self, ctx: ResponseContext, now: float, out: list[Send]) -> None:
        best = select_best(ctx.responses)
        if best is None:
            self._send_local(ctx, 408, now, out)
            return
        if ctx.from_location and all(r.msg is None or r.status == 430 for r in ctx.responses):
            # Registered, but no binding (no flow, RFC 5626 7) could be reached.
            self._send_local(ctx, 480, now, out)
            return
        self._final_to_caller(ctx, best, now, out)

    # ------------------------------------------------------------------ redirects (16.5, 16.7 step 4)

    def _redirect(
        self, ctx: ResponseContext, br: Branch, status: int, msg: SipMessage, decision: Decision,
        src: Source | None, now: float, out: list[Send],
    ) -> bool:
        """Recurse on the Contacts of a 3xx; True when the context took them over.

        Each URI is tried at most once per context; never from SIPS down to SIP; URI headers
        are stripped (RFC 3261 8.1.3.4); only from trusted sources and to allowed targets
        (RFC 3261 26.1.2); at most ``max_redirects`` 3xx per context. A 3xx with no usable
        Contact stays in the context and is forwarded like any response.
        """
        guard = self.guard
        if src is not None and guard is not None and not guard.source_trusted(src.host):
            log.warning("%s from %s:%s not followed: untrusted source (redirects.trusted_sources)",
                        status, src.host, src.port)
            self.stats["redirects_refused"] += 1
            return False
        if ctx.redirects >= decision.max_redirects:
            log.info("%s not followed: max_redirects %d reached (Call-ID %s)", status,
                     decision.max_redirects, ctx.request.call_id)
            return False
        req_uri = ctx.request.uri
        sips = isinstance(req_uri, SipUri) and req_uri.scheme == "sips"
        chosen: list[tuple[float, SipUri, NameAddr]] = []
        for c in msg.contacts:
            u = c.uri
            if not isinstance(u, SipUri) or (sips and u.scheme != "sips"):
                continue
            u = u.copy()
            u.headers = None
            text = str(u)
            if text in ctx.recursed:
                continue
            reason = guard.check_target(u) if guard is not None else None
            if reason is not None:
                log.warning("redirect to %s refused: %s", text, reason)
                self.stats["redirects_refused"] += 1
                continue
            ctx.recursed.add(text)
            chosen.append((_q(c), u, c))
        if not chosen:
            return False
        ctx.redirects += 1
        self.stats["redirects_followed"] += 1
        chosen.sort(key=lambda item: -item[0])
        if all(str(_no_headers(c.uri)) in ctx.recursed for c in msg.contacts):
            ctx.drop_response(msg)  # 16.7 step 4: a contact-less 3xx is not kept
        by_q: dict[float, list[Target]] = {}
        for q, u, _ in chosen:
            t = self._target_for_uri(u, request_uri=str(u), q=q)
            assert t is not None
            by_q.setdefault(q, []).append(t)
        ctx.groups[0:0] = [by_q[q] for q in sorted(by_q, reverse=True)]
        ttl = self._learn_ttl(status, msg, chosen[0][2], decision)
        if ttl > 0 and src is not None:
            # The rewrite of the URI this branch was sent to (CONTRACT routing): one binding of
            # a forked user, or one link of a chain (A->B, then B->C), not the whole user.
            old = br.target.request_uri or ctx.request.request_uri
            new = str(chosen[0][1])
            wall = now + self.wall_offset
            route = LearnedRoute(old, new, f"{src.host}:{src.port}", ctx.request.call_id,
                                 status, wall, wall + ttl)
            self.learned[old] = (new, now + ttl)
            self.writes.append((route, ctx))
            ctx.waiting = True  # acted on once the write is durable
            log.info("learned %s -> %s for %d s from %s:%s (%s)", old, new, ttl, src.host,
                     src.port, status)
            return True
        return self._next_group(ctx, now, out)

    def _learn_ttl(self, status: int, msg: SipMessage, contact: NameAddr,
                   decision: Decision) -> int:
        """How long a followed 3xx is remembered: a permanent rule's 301 until its expiry (or
        redirects.max_ttl); a 302 only for its own expires (RFC 3261 21.3.3)."""
        raw = contact.params.get("expires")
        expires: int | None = int(raw) if raw is not None and raw.isdigit() else msg.expires
        if decision.permanent:
            ttl = self.settings.max_ttl if expires is None else expires
        elif status == 302 and expires is not None:
            ttl = expires
        else:
            return 0
        return max(0, min(ttl, self.settings.max_ttl))

    def on_persisted(self, ctx: ResponseContext, ok: bool, now: float) -> list[Send]:
        """The learned route of ``ctx`` was written (or the write failed): go on."""
        out: list[Send] = []
        ctx.waiting = False
        if not ok:
            log.error("learned route for %s could not be stored; following it anyway",
                      ctx.request.request_uri)
        if ctx.final_sent:
            return out
        if ctx.may_branch and self._next_group(ctx, now, out):
            return out
        if ctx.pending == 0:
            self._send_best(ctx, now, out)
        return out

    def take_writes(self) -> list[tuple[LearnedRoute, ResponseContext]]:
        writes, self.writes = self.writes, []
        return writes

    def _learned_uri(self, ruri: str, now: float) -> str | None:
        """The Request-URI after learned rewrites, chains followed at most 8 hops."""
        learned = self.learned
        seen = {ruri}
        current = ruri
        for _ in range(8):
            hit = learned.get(current)
            if hit is None:
                break
            new, expires = hit
            if expires <= now:
                del learned[current]
                break
            if new in seen:
                break  # a cycle: stop at the last new address
            seen.add(new)
            current = new
        return None if current == ruri else current

    def load_learned(self, routes: Sequence[LearnedRoute], now: float) -> None:
        """Replace the learned-route cache (start-up, or the store changed underneath)."""
        self.learned = {
            r.old_uri: (r.new_uri, now + (r.expires_at - (now + self.wall_offset)))
            for r in routes
        }

    def _without_recursed(self, ctx: ResponseContext, msg: SipMessage) -> bytes:
        """The 3xx to forward, without the Contacts the proxy already recursed on."""
        edits: dict[int, str | None] = {}
        for i, h in enumerate(msg.headers):
            if h.name != "contact":
                continue
            kept = [c for c in parse_name_addr_list(h.value)
                    if str(_no_headers(c.uri)) not in ctx.recursed]
            edits[i] = ("Contact: " + ", ".join(str(c) for c in kept)) if kept else None
        return strip_top_via(parse_message(rewrite(msg, edits=edits)))

    # ------------------------------------------------------------------ SIP Outbound (RFC 5626 7)

    def _retry_flow(self, ctx: ResponseContext, br: Branch, now: float, out: list[Send]) -> bool:
        t = br.target
        assert t.aor is not None and t.instance is not None and t.binding_key is not None
        self.location.remove(t.aor, t.binding_key)
        self.stats["flows_failed"] += 1
        log.info("flow %s of %s failed (%s): binding removed", t.binding_key, t.aor,
                 br.final_status)
        if not ctx.may_branch:
            return False
        rule = ctx.policy.evaluate(430, ctx.method)
        limit = rule.max_attempts if rule.action is Action.RETRY_FLOWS else 3
        tried = ctx.flow_attempts.get(t.instance, 1)
        if tried >= limit:
            return False
        candidates = sorted(
            (b for b in self.location.lookup(t.aor, now)
             if b.instance == t.instance and self._flow_alive(b, now)),
            key=lambda b: -b.registered_at,
        )
        for b in candidates:
            nt = self._target_for_binding(b, now)
            if nt is None:
                continue
            label = f"{nt.request_uri or ''}@{nt.host}:{nt.port}/{nt.transport}"
            if label in ctx.tried:
                continue
            ctx.tried.add(label)
            ctx.flow_attempts[t.instance] = tried + 1
            self._fork(ctx, nt, now, out)
            return True
        return False

    def on_keepalive(self, src: Source, now: float) -> None:
        """A keep-alive (STUN Binding, CRLFCRLF) arrived on a flow (RFC 5626 4.4)."""
        key = (src.host, src.port)
        if key in self._udp_flows:
            self._udp_flows[key] = now

    def _flow_alive(self, b: Binding, now: float) -> bool:
        """A UDP outbound flow is dead when nothing, not even a keep-alive, came over it for
        twice the Flow-Timer it was given (RFC 5626 4.4.1); TCP flows die with their
        connection (on_flow_closed)."""
        f = b.flow
        if f.transport != "udp":
            return True
        seen = self._udp_flows.get((f.host, f.port))
        return seen is None or now - seen <= 2 * FLOW_TIMER + 10

    def on_flow_closed(self, conn_id: int, now: float) -> list[Send]:
        """A stream connection closed: its flows are dead at once (RFC 5626 5.3)."""
        if len(self._closed_conns) > 100_000:
            self._closed_conns.clear()  # ids only grow: old ones no longer matter
        self._closed_conns.add(conn_id)
        gone = self.location.remove_flow(conn_id)
        for b in gone:
            log.info("flow %s of %s closed: binding removed", b.key, b.aor)
        return []

    def _final_to_caller(self, ctx: ResponseContext, r: Response, now: float, out: list[Send]) -> None:
        status = r.status
        if r.msg is None:
            if status == 503:  # a transport error of ours (16.9), never a 503 (16.7 step 6)
                self._send_local(ctx, 500, now, out, reason="Next Hop Unreachable")
            else:
                self._send_local(ctx, status, now, out)
            return
        ctx.final_sent = True
        if 300 <= status < 400 and ctx.recursed:
            data = self._without_recursed(ctx, r.msg)
        else:
            data = strip_top_via(r.msg)
        if status == 503:
            # RFC 3261 16.7 step 6: a 503 chosen as best becomes 500.
            eol = data.find(b"\r\n")
            data = b"SIP/2.0 500 Server Internal Error" + data[eol:]
            status = 500
        self._send_response(ctx.server, status, data, now, out)

    def _forward_response(
        self, ctx: ResponseContext, msg: SipMessage, status: int, now: float, out: list[Send]
    ) -> None:
        self._send_response(ctx.server, status, strip_top_via(msg), now, out)

    def _send_local(
        self, ctx: ResponseContext, status: int, now: float, out: list[Send],
        reason: str | None = None,
    ) -> None:
        ctx.final_sent = True
        if ctx.to_tag is None:
            ctx.to_tag = self._new_tag()
        data = make_response(ctx.request, status, reason, to_tag=ctx.to_tag)
        self._send_response(ctx.server, status, data, now, out)

    def _stateless_response(self, msg: SipMessage, src: Source, now: float, out: list[Send]) -> None:
        """RFC 3261 16.7 / 16.11: a response matching no branch is forwarded statelessly if its
        top Via is ours, and dropped otherwise (RFC 3261 18.1.2)."""
        vias = msg.vias
        top = vias[0]
        if top.sent_by() not in self._ours or len(vias) < 2:
            self.stats["responses_dropped"] += 1
            return
        if not self._branch_verifies(top.branch):
            # A response naming us with a branch we never generated: forged, and forwarding it
            # to its second Via would make the proxy a reflector (CONTRACT access).
            self.stats["responses_forged"] += 1
            self.stats["responses_dropped"] += 1
            if self.refusals.note("forged_response", src.host, now):
                log.warning("dropped %s from %s:%s: its top Via names this proxy with a branch "
                            "it did not generate", msg.status, src.host, src.port)
            return
        nxt = vias[1]
        host = (nxt.received or nxt.sent_by()[0]).strip("[]")
        rport = nxt.rport
        port = rport if isinstance(rport, int) and rport is not True else nxt.sent_by()[1]
        out.append(Send(nxt.transport.lower(), host, port, strip_top_via(msg)))

    def _learn_bindings(self, ctx: ResponseContext, msg: SipMessage, now: float) -> None:
        """registrar: upstream: learn the AOR's bindings from the registrar's 2xx."""
        req = ctx.request
        try:
            uri = req.to.uri
            if not isinstance(uri, SipUri):
                return
            aor = uri.aor
            sent = {str(c.uri): c for c in req.contacts}
            known = {b.uri: b for b in self.location.lookup(aor, now)}
            self.location.remove_all(aor)
            for c in msg.contacts[: self.settings.registrar_max_contacts]:
                raw = c.params.get("expires")
                expires = int(raw) if raw is not None and raw.isdigit() else (msg.expires or 0)
                key = str(c.uri)
                if expires <= 0:
                    continue
                if key in sent:
                    # This REGISTER's own contact: its flow is where the REGISTER came from.
                    self.location.save(binding_from_contact(
                        aor, sent[key], expires, req, req.cseq[0], ctx.source, now))
                elif key in known:
                    # Another device's binding, learned from its own REGISTER: keep its flow.
                    b = known[key]
                    b.expires_at = now + expires
                    self.location.save(b)
                # A contact registered elsewhere has no flow through this proxy: not ours.
        except (ParseError, RegistrarError) as exc:
            log.info("could not learn bindings from REGISTER 2xx: %s", exc)
        self._schedule_expiry()

    # ------------------------------------------------------------------ local registrar

    def _local_register(
        self, entry: ServerEntry, msg: SipMessage, src: Source, now: float, out: list[Send]
    ) -> None:
        s = self.settings
        try:
            if s.domains:
                to_uri = msg.to.uri
                if isinstance(to_uri, SipUri) and to_uri.host not in s.domains:
                    raise RegistrarError(404, "Domain Not Served")
            if src.host not in s.registrar_networks and not self._registrar_auth(
                    entry, msg, src, now, out):
                return
            _, bindings = register(self.location, msg, src, now,
                                   max_contacts=s.registrar_max_contacts)
        except RegistrarError as exc:
            if exc.status == 403 and self.refusals.note("registrar_limit", src.host, now):
                log.warning("REGISTER for %s from %s:%s refused: %s", msg.get("to"), src.host,
                            src.port, exc.reason)
            self._respond(entry, msg, exc.status, now, out, reason=exc.reason, headers=exc.headers)
            return
        self._schedule_expiry()
        headers = contact_lines(bindings, now)
        if src.transport == "udp" and any("reg-id" in c.params for c in msg.contacts):
            self._udp_flows[(src.host, src.port)] = now
        if self._supports(msg, "outbound") and any("reg-id" in c.params for c in msg.contacts):
            # RFC 5626 6: the registrar supports outbound; Flow-Timer tells the UA how often to
            # send its keep-alives (4.4.1).
            headers += ["Require: outbound", f"Flow-Timer: {FLOW_TIMER}"]
        self._respond(entry, msg, 200, now, out, headers=tuple(headers))

    def _registrar_auth(
        self, entry: ServerEntry, msg: SipMessage, src: Source, now: float, out: list[Send]
    ) -> bool:
        """CONTRACT registrar: from outside ``registrar_networks`` a REGISTER needs valid
        digest credentials (RFC 3261 22.4, RFC 8760) of the user whose AOR it registers.
        True: go on; False: answered (401 with a challenge, or 403)."""
        auth = self.settings.auth
        if auth is None:
            self._refuse(entry, msg, src, "registrar", 403, "Forbidden", now, out,
                         "not from registrar_networks and no auth configured")
            return False
        result = auth.check(msg, now)
        if result.outcome is AuthOutcome.OK:
            assert result.user is not None
            if may_register(result.user, aor_of(msg)):
                return True
            self._refuse(entry, msg, src, "registrar", 403, "Forbidden", now, out,
                         f"user {result.user} may not register {aor_of(msg)}")
            return False
        if result.outcome is AuthOutcome.FORBIDDEN:
            self._refuse(entry, msg, src, "registrar", 403, "Forbidden", now, out, result.reason)
            return False
        self.stats["registrar_challenges"] += 1
        stale = result.outcome is AuthOutcome.STALE
        self._respond(entry, msg, 401, now, out, reason="Unauthorized",
                      headers=auth.challenge(now, stale=stale))
        return False

    def _schedule_expiry(self) -> None:
        nxt = self.location.next_expiry()
        if nxt is None:
            return
        d = float(math.ceil(nxt))
        cur = self._expiry.deadline
        if cur is None or d < cur:
            self._expiry.deadline = d
            self._queue.schedule(self._expiry)

    # ------------------------------------------------------------------ transactions

    def _server_key(self, msg: SipMessage, method: str) -> str:
        """RFC 3261 17.2.3 matching key; the RFC 2543 fallback when the branch lacks the cookie."""
        via = msg.top_via
        branch = via.branch
        if branch is not None and branch.startswith("z9hG4bK") and len(branch) > 7:
            host, port = via.sent_by()
            return f"{branch}|{host}:{port}|{method}"
        return f"2543|{msg.call_id}|{msg.cseq[0]}|{msg.from_tag}|{msg.get('via')}|{method}"

    def _reply_dest(self, msg: SipMessage, src: Source) -> tuple[str, str, int, int | None]:
        """RFC 3261 18.2.2 and RFC 3581: where responses to this request go."""
        if src.transport != "udp":
            return (src.transport, src.host, src.port, src.conn_id)
        via = msg.top_via
        if self.settings.force_rport or via.rport is not None:
            return ("udp", src.host, src.port, None)
        return ("udp", src.host, via.port or 5060, None)

    def _send_response(
        self, entry: ServerEntry, status: int, data: bytes, now: float, out: list[Send]
    ) -> None:
        effects = entry.txn.send_response(status, data, now)
        t, h, p, c = entry.reply
        out.append(Send(t, h, p, data, c, entry))
        self._server_effects(entry, effects, now, out)

    def _respond(
        self, entry: ServerEntry, msg: SipMessage, status: int, now: float, out: list[Send], *,
        reason: str | None = None, headers: Sequence[str] = (),
    ) -> None:
        """A response generated by the proxy itself, through the server transaction."""
        tag = self._new_tag() if msg.to_tag is None else None
        data = make_response(msg, status, reason, to_tag=tag, headers=headers)
        self._send_response(entry, status, data, now, out)

    def _reject(
        self, msg: SipMessage, src: Source, status: int, out: list[Send], *,
        reason: str | None = None, headers: Sequence[str] = (),
    ) -> None:
        """A stateless error response to a request that fails validation (RFC 3261 16.3)."""
        self.stats[f"rejected_{status}"] += 1
        if reason is not None and len(reason) > 80:
            reason = reason[:80]
        try:
            data = make_response(msg, status, reason, to_tag=self._new_tag(), headers=headers)
            dest = self._reply_dest(msg, src)
        except ParseError:
            data = make_response(msg, status, reason, to_tag=self._new_tag(), headers=headers)
            dest = (src.transport, src.host, src.port, src.conn_id)
        t, h, p, c = dest
        out.append(Send(t, h, p, data, c))

    def _bad_message(self, data: bytes, src: Source, exc: ParseError, out: list[Send]) -> None:
        """A message the parser refused: answer a request if we can, drop a response."""
        if data[:4] == b"SIP/" or not data.strip():
            self.stats["responses_dropped"] += 1
            log.info("dropped unparsable response from %s:%s: %s", src.host, src.port, exc.message)
            return
        self.stats["requests_rejected"] += 1
        log.info("bad request from %s:%s: %s", src.host, src.port, exc.message)
        salvaged = _salvage_response(data, exc.status, exc.message)
        if salvaged is not None:
            out.append(Send(src.transport, src.host, src.port, salvaged, src.conn_id))

    def _server_effects(
        self, entry: ServerEntry, effects: Sequence[object], now: float, out: list[Send]
    ) -> None:
        for e in effects:
            if isinstance(e, Retransmit):
                t, h, p, c = entry.reply
                out.append(Send(t, h, p, e.data, c))
            elif isinstance(e, Terminated):
                if self._server.get(entry.key) is entry:
                    del self._server[entry.key]
                entry.deadline = None
                return
            elif isinstance(e, Timeout):
                self.stats["timer_h"] += 1
        self._schedule(entry)

    def _client_effects(
        self, br: Branch, effects: Sequence[object], msg: SipMessage | None, now: float,
        out: list[Send],
    ) -> None:
        for e in effects:
            if isinstance(e, SendAck):
                ack = self._build_hop_request(br, "ACK", msg)
                br.txn.set_ack(ack)
                t, h, p, c = br.dest
                out.append(Send(t, h, p, ack, c))
            elif isinstance(e, Retransmit):
                t, h, p, c = br.dest
                out.append(Send(t, h, p, e.data, c, br))
            elif isinstance(e, Timeout):
                if br.state is BranchState.PENDING:
                    self._branch_final(br, 408, None, now, out)
            elif isinstance(e, Terminated):
                self._client.pop(br.branch_id + "|" + br.ctx.method, None)
        self._schedule(br)

    def _branch_timer(self, br: Branch, now: float, out: list[Send]) -> None:
        c = br.timer_c
        if c is not None and now >= c and br.state is BranchState.PENDING:
            # RFC 3261 16.8: Timer C.
            br.timer_c = None
            self.stats["timer_c"] += 1
            if br.provisional:
                self._cancel_branch(br, now, out)
            else:
                self._branch_final(br, 408, None, now, out)
        d = br.txn.deadline
        if d is not None and now >= d:
            self._client_effects(br, br.txn.on_timer(now), None, now, out)
        ct = br.cancel_txn
        if ct is not None and ct.deadline is not None and now >= ct.deadline:
            for e in ct.on_timer(now):
                if isinstance(e, Retransmit):
                    t, h, p, cid = br.dest
                    out.append(Send(t, h, p, e.data, cid))
                elif isinstance(e, Terminated):
                    self._client.pop(br.branch_id + "|CANCEL", None)
        self._schedule(br)

    def _schedule(self, item: Branch | ServerEntry) -> None:
        old = item.deadline
        if isinstance(item, Branch):
            d = item.txn.deadline
            c = item.timer_c
            if c is not None and (d is None or c < d):
                d = c
            ct = item.cancel_txn
            if ct is not None and ct.deadline is not None and (d is None or ct.deadline < d):
                d = ct.deadline
        else:
            d = item.txn.deadline
        item.deadline = d
        if d is not None and d != old:
            self._queue.schedule(item)

    # ------------------------------------------------------------------ helpers

    def _signed_branch(self, base: str) -> str:
        """A branch this proxy generates: ``base`` and a keyed MAC of it (BLAKE2s, 40 bits),
        so that a response naming it can be told from a forged one without state."""
        mac = hashlib.blake2s(base.encode(), key=self._branch_key, digest_size=5).hexdigest()
        return f"{base}.{mac}"

    def _branch_verifies(self, branch: str | None) -> bool:
        if not branch:
            return False
        base, dot, mac = branch.rpartition(".")
        return bool(dot) and len(mac) == 10 and self._signed_branch(base) == branch

    def _new_tag(self) -> str:
        self._n += 1
        return f"{self._tag_prefix}{self._n:x}"

    def _loop_hash(self, msg: SipMessage) -> str:
        """RFC 3261 16.6 step 8: the loop-detection part of the branch."""
        key = "\0".join((
            msg.request_uri, msg.from_tag or "", msg.to_tag or "", msg.call_id, str(msg.cseq[0]),
            "|".join(msg.get_all("route")), "|".join(msg.get_all("proxy-require")),
        ))
        return f"{zlib.crc32(key.encode('latin-1', 'replace')):08x}"

    def _looped(self, msg: SipMessage, loop_hash: str) -> bool:
        """RFC 3261 16.3 step 4: a Via of ours with the same loop hash means a loop."""
        raw = msg.get_all("via")
        if not any(adv in v for v in raw for adv in self._adv):
            return False
        for via in msg.vias:
            b = via.branch
            if (
                b is not None and len(b) > 21 and b.startswith("z9hG4bK")
                and b[13:21] == loop_hash and via.sent_by() in self._ours
            ):
                return True
        return False


_SALVAGE = {
    "via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
    "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq",
}


def _salvage_response(data: bytes, status: int, reason: str) -> bytes | None:
    """Build an error response for a request too broken to parse (RFC 4475 3.1.2).

    Copies the Via, From, To, Call-ID and CSeq lines as they are; without a Via there is no one
    to answer, and the message is dropped.
    """
    from proxy.sip import REASONS

    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")[1:]
    kept: list[str] = []
    have_via = False
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        canon = _SALVAGE.get(name.strip().lower())
        if canon is None:
            continue
        have_via = have_via or canon == "Via"
        kept.append(f"{canon}: {value.strip()}")
    if not have_via:
        return None
    phrase = REASONS.get(status, "Bad Request")
    text = f"SIP/2.0 {status} {phrase}\r\n" + "".join(k + "\r\n" for k in kept)
    text += f"Warning: 399 sip-policy-proxy \"{reason[:80].replace(chr(34), '')}\"\r\n"
    text += "Content-Length: 0\r\n\r\n"
    return text.encode("latin-1", "replace")


def _q(c: NameAddr) -> float:
    raw = c.params.get("q")
    try:
        return float(raw) if raw is not None else 1.0
    except ValueError:
        return 0.0


def _no_headers(uri: SipUri | AbsoluteUri) -> SipUri | AbsoluteUri:
    if isinstance(uri, SipUri) and uri.headers is not None:
        uri = uri.copy()
        uri.headers = None
    return uri
