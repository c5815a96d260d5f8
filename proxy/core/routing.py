"""Route information preprocessing (RFC 3261 16.4) and the target set (16.5) in the
CONTRACT's routing order, with the access rules (who may name the next hop).

:func:`decide` maps a request, its :class:`RoutePrep` and the location / learned-route view to
one :class:`RouteDecision`: a target set to forward to, an answer, a refusal, or the local
registrar. It sends nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from proxy.core import outbound, redirects, shared
from proxy.core.registrar import Binding
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
    from proxy.core.proxy import ProxyCore

log = logging.getLogger("proxy.core")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, MESSAGE, SUBSCRIBE, NOTIFY, REFER"


class RoutePrep:
    """What route information preprocessing (RFC 3261 16.4) found."""

    __slots__ = ("append", "edits", "next_hop", "popped", "token")

    def __init__(self, edits: dict[int, str | None], append: list[str],
                 next_hop: NameAddr | None, popped: bool, token: str | None) -> None:
        self.edits = edits
        self.append = append
        self.next_hop = next_hop
        self.popped = popped
        self.token = token


class Forward:
    """A target set (RFC 3261 16.5): groups forked in parallel, one group after the other."""

    __slots__ = ("from_location", "groups", "serial")

    def __init__(self, groups: list[list[Target]], serial: bool = False,
                 from_location: bool = False) -> None:
        self.groups = groups
        self.serial = serial  # q-value forking: the next group when a group ends
        self.from_location = from_location


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
    for i, values in msg.route_lines:
        kept = values
        while kept and is_own_route(core, kept[0]):
            own = kept[0].uri
            if isinstance(own, SipUri) and own.user:
                token = own.user
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
    return RoutePrep(edits, append, next_hop, popped, token)


def decide(core: ProxyCore, msg: SipMessage, src: Source, prep: RoutePrep,
           now: float) -> RouteDecision:
    """The target set in the CONTRACT's routing order (RFC 3261 16.5, 16.6 step 7)."""
    token = prep.token
    uri = msg.uri
    flow = flow_target(core, token, src) if token is not None else None
    if isinstance(flow, int):
        core.stats[f"flow_token_{flow}"] += 1
        return Answer(flow, "Flow Failed" if flow == 430 else "Invalid Flow Token")
    # Who may choose the next hop by what the message names (a Route, the Request-URI):
    # an upstream or a trusted relay, judged by the packet's source (never by Via); or a
    # request of a dialog that passed this proxy, proven by the verified flow token of our
    # Record-Route (CONTRACT "TLS and access").
    trusted = trusted_source(core, src)
    in_dialog_ours = msg.to_tag is not None and token is not None
    if flow is not None:
        # RFC 5626 5.3: the edge proxy sends the request over the flow its token names.
        return Forward([[flow]])
    if prep.next_hop is not None:
        # 1. Loose routing (RFC 3261 16.4, 16.6 step 7): the next Route names the next hop.
        if not (trusted or in_dialog_ours):
            # A preloaded Route to another host from a stranger: no open relay.
            return Refuse("relay", 403, "Relaying Denied",
                          f"Route {prep.next_hop.uri} from an untrusted source")
        target = target_for_uri(prep.next_hop.uri, request_uri=None)
        if target is None:
            return Answer(404, "Route Not Resolvable")
        return Forward([[target]])
    if (
        prep.popped and isinstance(uri, SipUri) and not is_local_uri(core, uri)
        and (trusted or in_dialog_ours or msg.to_tag is not None)
    ):
        # 1b. The Route set ended with us: the Request-URI is the next hop (16.4, 16.6
        # step 7), e.g. a BYE of a record-routed dialog. A stranger's in-dialog request
        # without our token is refused; its initial one is routed as if it had no Route.
        if not (trusted or in_dialog_ours):
            return Refuse("relay", 403, "Relaying Denied",
                          f"in-dialog request to {uri} without this proxy's Record-Route")
        target = target_for_uri(uri, request_uri=None)
        assert target is not None
        return Forward([[target]])
    if msg.method == "REGISTER" and core.settings.registrar_local:
        # 2. The local registrar (RFC 3261 10.3).
        return LocalRegister()
    return _by_request_uri(core, msg, trusted, now)


def _by_request_uri(core: ProxyCore, msg: SipMessage, trusted: bool,
                    now: float) -> RouteDecision:
    """Routing order steps 3 to 5: learned rewrites, registered bindings, the Request-URI of a
    trusted source, the upstreams."""
    uri = msg.uri
    learned = redirects.learned_uri(core, msg.request_uri, now) if core.learned else None
    if learned is not None:
        # A permanent rewrite learned from a 301 replaces the Request-URI (CONTRACT).
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
    if is_local and (core.settings.registrar_local or trusted):
        # The proxy is responsible for this URI and nobody is registered for it.
        return Answer(480 if aor is not None and core.location.known(aor) else 404)
    if trusted and isinstance(uri, SipUri):
        # 4. From an upstream (or a trusted relay): to its Request-URI.
        target = target_for_uri(uri, request_uri=None)
        return Answer(404) if target is None else Forward([[target]])
    if core.settings.upstreams:
        # 5. Everything else: the upstreams, first one first (failover by policy).
        return Forward([[t] for t in core.prober.usable(core.settings.upstreams)])
    # No upstream, nobody registered: a stranger's Request-URI is never a next hop.
    return Answer(404)


def flow_target(core: ProxyCore, token: str, src: Source) -> Target | int | None:
    """RFC 5626 5.3: the flow a Route value of ours names.

    Returns the target over that flow; None when it is the flow the request came in on (then
    routing goes on as usual); 403 for a token that does not verify; 430 for a flow that is
    known to be dead.
    """
    flow = core.tokens.decode(token)
    if flow is None:
        return 403
    if flow.node is not None and flow.node != core.cluster.node:
        # Minted by another proxy of the shared state: that node holds the flow (RFC 5626 5).
        relay = shared.to_node(core, token, flow)
        return 430 if relay is None else relay
    if flow.remote_host == src.host and flow.remote_port == src.port:
        return None
    if flow.conn_id is not None and flow.conn_id in core.closed_conns:
        return 430
    return Target(flow.transport, flow.remote_host, flow.remote_port, None, flow.conn_id,
                  label=f"flow {flow.transport}:{flow.remote_host}:{flow.remote_port}",
                  via_flow=True)


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
    """CONTRACT access: an upstream (by the packet's source address and port, or the
    connection the proxy opened to it) or a ``trusted_relays`` host; never by Via."""
    return ((src.host, src.port) in core.upstream_addrs
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
            log.info("flow %s of %s silent for over %d s: binding removed", b.key, b.aor,
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
    if b.node is not None and shared.held_elsewhere(b):
        # Another proxy of the shared state holds this flow: through it (RFC 5626 5).
        via = shared.via_node(core, b)
        if via is not None:
            return via
    ruri = b.uri.split("?", 1)[0]  # RFC 3261 19.1.5: no headers in a Request-URI
    learned = redirects.learned_uri(core, ruri, now) if core.learned else None
    if learned is not None:
        # This binding answered 301 before: only it goes to its new address (CONTRACT).
        core.stats["learned_routes_applied"] += 1
        try:
            t = target_for_uri(parse_uri(learned), request_uri=learned, q=b.q)
        except ParseError:
            return None
        return None if t is None else t._replace(aor=b.aor, binding_key=b.key)
    if b.on_flow:
        # RFC 5626 5.3: requests for an outbound binding go over its flow; RFC 7118 5.3: so do
        # those for a WebSocket client's, whatever its Contact says.
        f = b.flow
        return Target(f.transport, f.host, f.port, ruri, f.conn_id, b.q, b.contact,
                      b.aor, b.instance, b.key, via_flow=True)
    try:
        uri = parse_uri(ruri)
    except ParseError:
        return None
    t = target_for_uri(uri, request_uri=ruri, q=b.q)
    return None if t is None else t._replace(aor=b.aor, instance=b.instance, binding_key=b.key)


def target_for_uri(
    uri: SipUri | AbsoluteUri, *, request_uri: str | None, q: float = 1.0
) -> Target | None:
    """RFC 3263 in its simplest form: transport param, host and port. A host name is left
    to the transport layer, which resolves it (A/AAAA) without blocking; a name that does
    not resolve is a transport error on the branch (RFC 3261 16.9)."""
    if not isinstance(uri, SipUri):
        return None
    host, port = uri.host_port()
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    if uri.scheme == "sips" and transport == "tcp":
        transport = "tls"  # RFC 3261 26.2.2 / RFC 5630: sips with transport=tcp is TLS over TCP
    return Target(transport, host, port, request_uri, None, q, str(uri),
                  fixed_transport=uri.transport is not None)
