"""Route information preprocessing (RFC 3261 16.4) and the target set (16.5) in the
routing order of docs/BEHAVIOUR.md, routing, with the access rules (who may name the next hop).

:func:`decide` maps a request, its :class:`RoutePrep` and the location / learned-route view to
one :class:`RouteDecision`: a target set to forward to, an answer, a refusal, or the local
registrar. It sends nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias

from proxy.core import shared
from proxy.core.access.trust import DIALOG_PARAM, branch_lifetime, via_dest
from proxy.core.effects import INFO
from proxy.core.outbound import flows as outbound
from proxy.core.outbound import reach
from proxy.core.proxy import routes
from proxy.core.proxy.learned import learned_uri
from proxy.core.registrar.location import Binding
from proxy.core.types import Source, Target
from proxy.sip import (
    AbsoluteUri,
    NameAddr,
    ParseError,
    SipMessage,
    SipUri,
    parse_uri,
)

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, MESSAGE, SUBSCRIBE, NOTIFY, REFER"


class RoutePrep:
    """What route information preprocessing (RFC 3261 16.4) found."""

    __slots__ = ("append", "edits", "marks", "next_hop", "popped", "token", "vouched")

    def __init__(self, edits: dict[int, str | None], append: list[str],
                 next_hop: NameAddr | None, popped: bool, token: str | None,
                 marks: list[tuple[str, str]] | None = None) -> None:
        self.edits = edits
        self.append = append
        self.next_hop = next_hop
        self.popped = popped
        self.token = token  # the flow token of the last removed value of ours that had one
        #: (flow token or "", dialog mark) of each removed value of ours with a mark
        self.marks = marks
        #: the flow token of a removed value whose dialog mark verified (:func:`prove`)
        self.vouched: str | None = None


class Forward:
    """A target set (RFC 3261 16.5): groups forked in parallel, one group after the other."""

    __slots__ = ("from_location", "groups", "routed", "serial")

    def __init__(self, groups: list[list[Target]], serial: bool = False,
                 from_location: bool = False, routed: routes.Routed | None = None) -> None:
        self.groups = groups
        self.serial = serial  # q-value forking: the next group when a group ends
        self.from_location = from_location
        self.routed = routed  # to an upstream group, by the policy's routes


class Answer(NamedTuple):
    """The proxy answers the request itself."""

    status: int
    reason: str | None = None
    headers: tuple[str, ...] = ()


class Refuse(NamedTuple):
    """The request is refused by the access rules (counted, logged once a minute)."""

    why: str  # the Refusals key
    status: int
    phrase: str
    detail: str


class LocalRegister(NamedTuple):
    """A REGISTER for the local registrar (RFC 3261 10.3)."""


RouteDecision: TypeAlias = Forward | Answer | Refuse | LocalRegister


def preprocess_routes(core: ProxyCore, msg: SipMessage) -> RoutePrep:
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
    marks: list[tuple[str, str]] | None = None
    for i, values in msg.route_lines:
        kept = values
        while kept and is_own_route(core, kept[0]):
            own = kept[0].uri
            if isinstance(own, SipUri):
                if own.user:
                    token = own.user
                mark = own.params.get(DIALOG_PARAM)
                if mark:
                    if marks is None:
                        marks = []
                    marks.append((own.user or "", mark))
            kept = kept[1:]
        if len(kept) != len(values):
            popped = True
            edits[i] = None if not kept else "Route: " + ", ".join(str(v) for v in kept)
        if kept:
            next_hop = kept[0]
            break
    mf_index = msg.find("max-forwards")
    mf = msg.max_forwards
    if mf_index >= 0 and mf is not None:
        edits[mf_index] = f"Max-Forwards: {mf - 1}"
    else:
        append.append("Max-Forwards: 70")
    return RoutePrep(edits, append, next_hop, popped, token, marks)


def prove(core: ProxyCore, msg: SipMessage, prep: RoutePrep) -> bool:
    """Whether ``msg`` is an in-dialog request (a To tag, RFC 3261 12.2) of a dialog that this
    proxy record-routed: a Route value of ours it carries has a dialog mark minted for its own
    Call-ID and one of its tags (:mod:`~proxy.core.access.trust`). Sets ``prep.vouched`` to the flow token of a
    value that verified: the only token such a request may use (RFC 5626 5.3)."""
    marks = prep.marks
    if not marks:
        return False
    to_tag = msg.to_tag
    if to_tag is None:
        return False
    call_id, from_tag = msg.call_id, msg.from_tag
    proven = False
    for token, mark in marks:
        if core.trust.proven(call_id, from_tag, to_tag, token, mark):
            proven = True
            if token:
                prep.vouched = token
    return proven


def decide(core: ProxyCore, msg: SipMessage, src: Source, prep: RoutePrep, now: float,
           trusted: bool, proven: bool, held: str | None) -> RouteDecision:
    """The target set in the routing order (docs/BEHAVIOUR.md; RFC 3261 16.5, 16.6 step 7), by what
    vouches for the request: ``trusted`` (its packet came from an upstream or a trusted relay,
    :func:`trusted_source`), ``proven`` (an in-dialog request with a dialog mark of ours for its
    Call-ID and tags, :func:`prove`), ``held`` (the key of a dialog the proxy holds that it did
    not record-route, :mod:`~proxy.core.proxy.dialogs`).

    A flow token (RFC 5626 5.3) is honoured only from a trusted source (or another proxy of
    the shared state) or for a proven request (then only a token whose mark verified); any
    other is ignored, and the request is routed as an initial request from its source. An
    in-dialog request that is neither trusted, proven nor held is refused 481 (RFC 3261
    12.2.2, 16). A request that is not trusted never names a next hop other than an upstream,
    a trusted relay, a redirect target the rules allow, or a flow of a dialog it proved (no
    open relay)."""
    uri = msg.uri
    if trusted:
        token = prep.token
    elif proven:
        token = prep.vouched
    elif prep.token is not None and peer_source(core, msg, src, now):
        token = prep.token
    else:
        token = None
    if token is not None:
        flow = flow_target(core, token, src)
        if isinstance(flow, int):
            core.stats[f"flow_token_{flow}"] += 1
            if flow == 430:
                return Refuse("flow_failed", 430, "Flow Failed",
                              "the flow its token names is closed or of an earlier start")
            return Refuse("flow_token", 403, "Invalid Flow Token",
                          "a Route of this proxy whose flow token does not verify")
        if flow is not None:
            # RFC 5626 5.3: the edge proxy sends the request over the flow its token names.
            return Forward([[flow]])
    # RFC 3261 10.2, 8.1.1.2: a REGISTER is never of a dialog; a To tag some phones copy into
    # their refreshes does not make it one (it is still counted by the rate limit)
    in_dialog = msg.to_tag is not None and msg.method != "REGISTER"
    if in_dialog and not (trusted or proven):
        if held is None:
            return Refuse("unproven", 481, "Call/Transaction Does Not Exist",
                          "in-dialog request of no dialog through this proxy (no Route of "
                          "this proxy for its Call-ID and tags)")
        return _held(core, msg, prep, held)
    if prep.next_hop is not None:
        # 1. Loose routing (RFC 3261 16.4, 16.6 step 7): the next Route names the next hop.
        if not (trusted or proven):
            # A preloaded Route to another host from a stranger: no open relay.
            return Refuse("relay", 403, "Relaying Denied",
                          f"Route {prep.next_hop.uri} from an untrusted source")
        target = target_for_uri(prep.next_hop.uri, request_uri=None)
        if target is None:
            return Answer(404, "Route Not Resolvable")
        if not (trusted or may_relay(core, target, prep.next_hop.uri)):
            return Refuse("relay", 403, "Relaying Denied",
                          f"in-dialog Route {prep.next_hop.uri}: not an upstream")
        return Forward([[target]])
    if prep.popped and isinstance(uri, SipUri) and not is_local_uri(core, uri) and (
            trusted or in_dialog):
        # 1b. The Route set ended with us: the Request-URI is the next hop (16.4, 16.6
        # step 7), e.g. a BYE of a record-routed dialog. A UA's goes only to an upstream or a
        # trusted relay (its peer's flow, if any, was named by the token above); a stranger's
        # initial request is routed as if it had no Route.
        target = target_for_uri(uri, request_uri=None)
        assert target is not None
        if not (trusted or may_relay(core, target, uri)):
            return Refuse("relay", 403, "Relaying Denied",
                          f"in-dialog request to {uri}: not an upstream")
        return Forward([[target]])
    if msg.method == "REGISTER" and core.settings.registrar_local:
        # 2. The local registrar (RFC 3261 10.3).
        return LocalRegister()
    return _by_request_uri(core, msg, src, trusted, now)


def _held(core: ProxyCore, msg: SipMessage, prep: RoutePrep, held: str) -> RouteDecision:
    """An in-dialog request of a dialog the proxy holds but did not record-route (the UAS
    did not copy Record-Route into its 2xx, RFC 3261 12.1.1, as sipp's built-in UAS does; or
    ``record_route: false``): no Route of ours proves it, and its Request-URI is the peer's
    Contact. It goes there when that is an upstream or a trusted relay (by address and port),
    or the registered binding the dialog was set up with (over its flow); never to any other
    host."""
    hop = prep.next_hop.uri if prep.next_hop is not None else msg.uri
    target = target_for_uri(hop, request_uri=None)
    if target is not None:
        if may_relay(core, target, hop):
            return Forward([[target]])
        end = core.dialogs.end(held)
        if end is not None and end[0] == (target.host, target.port):
            return Forward([[end[1]]])
    return Refuse("relay", 403, "Relaying Denied",
                  f"in-dialog request to {hop} of a dialog not record-routed: not an upstream")


def may_relay(core: ProxyCore, target: Target, uri: SipUri | AbsoluteUri) -> bool:
    """Whether a request that no trusted source sent may go to ``target`` (``uri``, the
    Request-URI or Route that names it): an upstream (its resolved address and port), a
    trusted relay (README "Security defaults"), or a host a redirect may lead a call to
    (``redirects.allow_targets``, by default the upstreams' hosts and ``domains``: a dialog
    set up through a followed 3xx has its peer there, RFC 3261 16.5)."""
    if (target.host, target.port) in core._upstream_addrs:
        return True
    if target.host in core.settings.trusted_relays:
        return True
    guard = core.guard
    return guard is not None and guard.check_target(uri) is None


def peer_source(core: ProxyCore, msg: SipMessage, src: Source, now: float) -> bool:
    """Whether ``msg`` was forwarded by another proxy of the shared state (RFC 5626 5: it hands
    this node the requests for the flows this node holds, with their tokens): its top Via
    names the address the packet came from (or an announced node's) and not this proxy, and
    carries a branch that only a proxy with this one's key mints (:mod:`~proxy.core.access.trust`), fresh, for
    this method and for the hop below it. A Via of a node copied from a request the proxy
    forwarded (a UA sees them) does not pass from the UA's own address. Checked only for a
    request with a flow token of ours that nothing else vouches for."""
    vias = msg.vias
    if len(vias) < 2:
        return False
    top = vias[0]
    sent_by = top.sent_by()
    if sent_by in core.ours:
        return False
    if sent_by[0] != src.host and not any(
            host == src.host for entries in core._cluster.peers.values()
            for _, host, _ in entries):
        return False
    method = msg.method
    return core.trust.check_branch(top.branch, method, via_dest(vias[1]), now,
                                   branch_lifetime(method, core.timers)) is None


def _by_request_uri(core: ProxyCore, msg: SipMessage, src: Source, trusted: bool,
                    now: float) -> RouteDecision:
    """Routing order steps 3 to 5: learned rewrites, registered bindings, a route of the
    policy that matches (an initial request), the Request-URI of a trusted source, the
    upstream group of the policy's route (none matches: the first group)."""
    uri = msg.uri
    learned = learned_uri(core, msg.request_uri, now) if core._learned else None
    if learned is not None:
        # A permanent rewrite learned from a 301 replaces the Request-URI (docs/BEHAVIOUR.md, routing).
        uri = parse_uri(learned)
        core.stats["learned_routes_applied"] += 1
    is_local = is_local_uri(core, uri)
    if is_local and msg.method == "OPTIONS" and isinstance(uri, SipUri) and uri.user is None:
        # An OPTIONS for the proxy itself (keep-alive pings of trunks): answer it.
        return Answer(200, None, (f"Allow: {ALLOW}", "Accept: application/sdp"))
    bindings: list[Binding] = []
    aor: str | None = None
    if isinstance(uri, SipUri) and uri.user is not None:
        aor = uri.aor
        bindings = core.location.lookup(aor, now)
    if bindings:
        # 3. A registered address-of-record: its bindings, forked by q-value.
        return Forward(binding_groups(core, bindings, now), serial=True, from_location=True)
    if learned is not None and isinstance(uri, SipUri):
        # ... and a request so rewritten goes to its new Request-URI (as in step 4).
        target = target_for_uri(uri, request_uri=learned)
        assert target is not None
        return Forward([[target]])
    initial = msg.to_tag is None
    if initial and core._policy.routes:
        # A route of the policy that matches names the group, whoever sent the request (a
        # carrier's call routed by its source to the PBX; README "Routes").
        routed = routes.route(core, msg, src, now, match_routes=True)
        if routed is not None:
            return _to_group(routed)
    if is_local and (core.settings.registrar_local or trusted):
        # The proxy is responsible for this URI and nobody is registered for it.
        return Answer(480 if aor is not None and core.location.known(aor) else 404)
    if trusted and isinstance(uri, SipUri):
        # 4. From an upstream (or a trusted relay): to its Request-URI.
        target = target_for_uri(uri, request_uri=None)
        return Answer(404) if target is None else Forward([[target]])
    if core.all_upstreams:
        # 5. Everything else: the first upstream group (no route of the policy matched,
        # or an in-dialog request), first one first (failover by policy), without those
        # drained or down by an operator (:mod:`.upstream_admin`); none left: 503 (RFC 3261
        # 21.5.4), as when every one failed.
        if initial:
            routed = routes.route(core, msg, src, now, match_routes=False)
            if routed is not None:
                return _to_group(routed)
        targets = routes.usable(core, core.groups[core.default_group], now)
        if not targets:
            return Answer(503, "Upstreams Out Of Service")
        return Forward([[t] for t in targets])
    # No upstream, nobody registered: a stranger's Request-URI is never a next hop.
    return Answer(404)


def _to_group(routed: routes.Routed) -> RouteDecision:
    """The target set of a routed group; 503 when an operator drained or downed all of its
    upstreams (no new call goes there, :mod:`.upstream_admin`)."""
    if not routed.targets:
        return Answer(503, "Upstreams Out Of Service")
    return Forward([[t] for t in routed.targets], routed=routed)


def flow_target(core: ProxyCore, token: str, src: Source) -> Target | int | None:
    """RFC 5626 5.3: the flow a Route value of ours names.

    Returns the target over that flow; None when it is the flow the request came in on (then
    routing goes on as usual); 403 for a token that does not verify; 430 for a flow that is
    known to be dead: a connection known closed, or one of an earlier start of the process
    (the token's boot id is not this start's, :class:`~proxy.core.outbound.flowtoken.FlowTokens`).
    The transport sends over the connection only if its peer is still the token's address.
    """
    flow = core.tokens.decode(token)
    if flow is None:
        return 403
    if flow.node is not None and flow.node != core._cluster.node:
        # Minted by another proxy of the shared state: that node holds the flow (RFC 5626 5).
        relay = shared.to_node(core, token, flow)
        return 430 if relay is None else relay
    if flow.remote_host == src.host and flow.remote_port == src.port:
        return None
    if flow.conn_id is not None and (
            not core.tokens.this_start(flow) or flow.conn_id in core.closed_conns):
        # A connection of an earlier start (ids start again at 1: this id may now be another
        # UA's connection) or one known closed: the flow is gone (RFC 5626 5.3).
        return 430
    return Target(flow.transport, flow.remote_host, flow.remote_port, None, flow.conn_id,
                  label=f"flow {flow.transport}:{flow.remote_host}:{flow.remote_port}",
                  via_flow=True, by_token=True)


def is_own_route(core: ProxyCore, na: NameAddr) -> bool:
    uri = na.uri
    if not isinstance(uri, SipUri):
        return False
    host, port = uri.host_port()
    return (host.lower(), port) in core.ours


def is_local_uri(core: ProxyCore, uri: SipUri | AbsoluteUri) -> bool:
    if not isinstance(uri, SipUri):
        return False
    host, port = uri.host_port()
    host = host.lower()
    if (host, port) in core.ours:
        return True
    return host in core.settings.domains


def trusted_source(core: ProxyCore, src: Source) -> bool:
    """README "Security defaults": an upstream (by the packet's source address and port, or the
    connection the proxy opened to it) or a ``trusted_relays`` host; never by Via."""
    return ((src.host, src.port) in core._upstream_addrs
            or src.host in core.settings.trusted_relays)


def supports(msg: SipMessage, tag: str) -> bool:
    for v in msg.get_all("supported"):
        if tag in (t.strip().lower() for t in v.split(",")):
            return True
    return False


def binding_groups(core: ProxyCore, bindings: list[Binding], now: float) -> list[list[Target]]:
    """RFC 3261 16.6 / 16.7 q-value forking; RFC 5626 7: one flow per instance, newest first."""
    newest: dict[str, Binding] = {}
    plain: list[Binding] = []
    for b in bindings:
        if b.reg_id is not None and not outbound.flow_alive(core, b, now):
            core.note(INFO, "flow %s of %s silent for over %d s: binding removed", b.key, b.aor,
                     2 * outbound.FLOW_TIMER + 10)
            core.location.remove(b.aor, b.key)
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
        t = target_for_binding(core, b, now)
        if t is not None:
            by_q.setdefault(b.q, []).append(t)
    return [by_q[q] for q in sorted(by_q, reverse=True)]


def target_for_binding(core: ProxyCore, b: Binding, now: float) -> Target | None:
    """The target of one binding: over its flow or at its Contact by :func:`reach.over_flow`,
    the one rule every node follows, so that a call reaches a phone at the same address
    whichever node of a shared state it arrives at."""
    flow = reach.over_flow(b)
    if flow and b.node is not None:
        # Another proxy of the shared state holds this flow: through it (RFC 5626 5).
        via = shared.via_node(core, b)
        if via is not None:
            return via
    ruri = b.uri.split("?", 1)[0]  # RFC 3261 19.1.5: no headers in a Request-URI
    learned = learned_uri(core, ruri, now) if core._learned else None
    if learned is not None:
        # This binding answered 301 before: only it goes to its new address (docs/BEHAVIOUR.md, routing).
        core.stats["learned_routes_applied"] += 1
        try:
            t = target_for_uri(parse_uri(learned), request_uri=learned, q=b.q)
        except ParseError:
            return None
        return None if t is None else t._replace(aor=b.aor, binding_key=b.key)
    if flow:
        # RFC 5626 5.3: an outbound binding, a UA behind NAT or a WebSocket client (RFC 7118
        # 5.3), over its flow.
        f = b.flow
        return Target(f.transport, f.host, f.port, ruri, f.conn_id, b.q, b.contact,
                      b.aor, b.instance, b.key, via_flow=True)
    try:
        uri = parse_uri(ruri)
    except ParseError:
        return None
    t = target_for_uri(uri, request_uri=ruri, q=b.q)
    return None if t is None else t._replace(aor=b.aor, instance=b.instance, binding_key=b.key)


#: id(uri) -> (uri, its target) for a next hop named by a URI alone (a Route, the
#: Request-URI of an in-dialog request): the parser hands out one URI per text, so each
#: branch to the same hop (every BYE to a callee's Contact) holds one shared Target, not a
#: copy per call. The URI is kept with it, so its id is not reused while it is here; bounded
#: as the parser's memos are (emptied when full).
_HOPS: Final[dict[int, tuple[SipUri | AbsoluteUri, Target | None]]] = {}
_HOPS_MAX: Final = 4096


def target_for_uri(
    uri: SipUri | AbsoluteUri, *, request_uri: str | None, q: float = 1.0
) -> Target | None:
    """RFC 3263 in its simplest form: transport param, host and port. A host name is left
    to the transport layer, which resolves it (A/AAAA) without blocking; a name that does
    not resolve is a transport error on the branch (RFC 3261 16.9)."""
    if request_uri is not None or q != 1.0:
        return _target_for_uri(uri, request_uri, q)
    key = id(uri)
    hit = _HOPS.get(key)
    if hit is not None and hit[0] is uri:
        return hit[1]
    target = _target_for_uri(uri, None, 1.0)
    if len(_HOPS) >= _HOPS_MAX:
        _HOPS.clear()
    _HOPS[key] = (uri, target)
    return target


def _target_for_uri(
    uri: SipUri | AbsoluteUri, request_uri: str | None, q: float
) -> Target | None:
    if not isinstance(uri, SipUri):
        return None
    host, port = uri.host_port()
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    if uri.scheme == "sips" and transport == "tcp":
        transport = "tls"  # RFC 3261 26.2.2 / RFC 5630: sips with transport=tcp is TLS over TCP
    return Target(transport, host, port, request_uri, None, q, str(uri),
                  fixed_transport=uri.transport is not None)
