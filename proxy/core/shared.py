"""Durable and shared state, the core's side (sans-IO): bindings to and from the state store,
changes made by other proxies, and the requests for a flow another proxy holds.

The location service in memory (:class:`~proxy.core.registrar.location.MemoryLocation`) stays the only
view the hot path reads. The runtime writes what the core changed (the location's journal)
to the store in the background, loads the stored bindings at start, and hands the changes
another proxy published to :func:`apply_change`. Times cross the seam as wall-clock seconds
(the store's) and are turned into the core's clock with ``core._wall_offset``.

Several proxies as one (README "Durable and shared state"; RFC 5626 5, several edge
proxies): a binding whose flow is held by another node (its TCP/TLS connection, or a UDP
flow behind NAT, or any SIP Outbound flow) is reached through that node: the request goes to
the node's SIP address with a Route naming it, whose user part is the flow token (RFC 5626
5.2) of the phone's flow there. The node pops its own Route and sends the request over the
flow the token names, as it does for a Path it wrote itself. Tokens verify on every node:
the nodes share one key (the configured ``secret``, or the one shared through the store).
Whether a binding is reached over its flow or at its Contact is one rule for every node
(:mod:`proxy.core.outbound.reach`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.core.outbound import reach
from proxy.core.outbound.flowtoken import Flow
from proxy.core.registrar.expiry import schedule_expiry
from proxy.core.registrar.location import Binding
from proxy.core.types import Source, Target
from proxy.sip.transport import WS_TRANSPORTS
from proxy.store.base import LearnedRoute, StoreChange, StoredBinding

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


#: the connection id of a stream flow that died with the process that held it: an outbound
#: binding with it is a dead flow (RFC 5626 5.3, 430 handling)
DEAD_FLOW = -1


@dataclass(slots=True)
class Cluster:
    """This proxy among those sharing one state: its name and the others' SIP addresses."""

    node: str = ""
    #: several proxies share the state: flow tokens name this node (RFC 5626 5)
    shared: bool = False
    #: node name -> its listeners as (transport, host, port), refreshed by the runtime
    peers: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)

    def address(self, node: str, transport: str) -> tuple[str, str, int] | None:
        """Where to send a request for ``node``: its listener of ``transport``, else its
        first one; None when the node is unknown (not announced, or gone)."""
        entries = self.peers.get(node)
        if not entries:
            return None
        for e in entries:
            if e[0] == transport:
                return e
        return entries[0]

    @property
    def token_node(self) -> str | None:
        """The node written into the flow tokens this proxy mints (None: a lone proxy)."""
        return self.node if self.shared and self.node else None


def parse_peers(announced: dict[str, list[str]]) -> dict[str, list[tuple[str, str, int]]]:
    """``{"a": ["udp:127.0.0.1:5060", "tcp:[::1]:5060"]}`` -> the :attr:`Cluster.peers` form;
    entries that do not parse are skipped."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    for node, addresses in announced.items():
        parsed: list[tuple[str, str, int]] = []
        for text in addresses:
            transport, _, rest = text.partition(":")
            host, _, port = rest.rpartition(":")
            if transport and host and port.isdigit():
                parsed.append((transport, host.strip("[]"), int(port)))
        if parsed:
            out[node] = parsed
    return out


def to_stored(core: ProxyCore, b: Binding) -> StoredBinding:
    """``b`` as persisted: wall-clock times, the flow without its connection id, the node."""
    off = core._wall_offset
    f = b.flow
    return StoredBinding(
        aor=b.aor, key=b.key, contact=b.contact, uri=b.uri, expires_at=b.expires_at + off,
        q=b.q, call_id=b.call_id, cseq=b.cseq, flow_transport=f.transport, flow_host=f.host,
        flow_port=f.port, registered_at=b.registered_at + off, instance=b.instance,
        reg_id=b.reg_id, node=b.node or core._cluster.node,
    )


def from_stored(core: ProxyCore, sb: StoredBinding) -> Binding:
    """The in-memory binding of a stored one.

    A binding held by another node keeps that node's name. One of this node (or of no
    node: an older store) was written by an earlier process: an outbound (RFC 5626) binding
    over TCP/TLS (or any binding over WebSocket, RFC 7118 5.3) lost its connection with it
    and is a dead flow; a plain one is reached over a new connection to its Contact (RFC 3261
    18.1.1)."""
    off = core._wall_offset
    node = sb.node if sb.node and sb.node != core._cluster.node else None
    conn_id: int | None = None
    on_flow = sb.reg_id is not None or sb.flow_transport in WS_TRANSPORTS
    if node is None and on_flow and sb.flow_transport != "udp":
        conn_id = DEAD_FLOW
    return Binding(
        aor=sb.aor, contact=sb.contact, uri=sb.uri, expires_at=sb.expires_at - off, q=sb.q,
        call_id=sb.call_id, cseq=sb.cseq,
        flow=Source(sb.flow_transport, sb.flow_host, sb.flow_port, conn_id),
        registered_at=sb.registered_at - off, instance=sb.instance, reg_id=sb.reg_id, node=node,
    )


def _schedule(core: ProxyCore) -> None:
    schedule_expiry(core)


def load_bindings(core: ProxyCore, stored: list[StoredBinding], now: float) -> int:
    """Make the location view what the store holds (start-up, or the store is back after an
    outage and its changes may have been missed). A binding this process holds with the
    same registration (its live connection id) is kept as it is. Returns how many were
    loaded or replaced."""
    location = core.location
    wanted: dict[tuple[str, str], StoredBinding] = {(sb.aor, sb.key): sb for sb in stored}
    held = {(b.aor, b.key): b for b in _all(core)}
    changed = 0
    for k, b in held.items():
        if k not in wanted:
            location.apply_remove(b.aor, b.key)
    for k, sb in wanted.items():
        mine = held.get(k)
        if (mine is not None and mine.node is None and mine.call_id == sb.call_id
                and mine.cseq == sb.cseq and (sb.node in ("", core._cluster.node))):
            continue
        b = from_stored(core, sb)
        if b.expires_at > now:
            location.apply_save(b)
            changed += 1
    _schedule(core)
    return changed


def merge_bindings(core: ProxyCore, stored: list[StoredBinding], now: float) -> int:
    """Add to the location view what a store that was reset holds after this node wrote its
    own bindings back into it: the bindings other nodes wrote back. Nothing is dropped (this
    node's memory is the truth for its own bindings; another node's that is not there yet
    comes when that node writes it back). Returns how many were added or replaced."""
    location = core.location
    held = {(b.aor, b.key): b for b in _all(core)}
    changed = 0
    for sb in stored:
        mine = held.get((sb.aor, sb.key))
        if (mine is not None and mine.node is None) or sb.node == core._cluster.node:
            continue  # this node's: memory wins
        b = from_stored(core, sb)
        if b.expires_at > now:
            location.apply_save(b)
            changed += 1
    _schedule(core)
    return changed


def _all(core: ProxyCore) -> list[Binding]:
    return core.location.bindings()


def apply_change(core: ProxyCore, change: StoreChange, now: float) -> None:
    """Apply a change another proxy (or the ``routes`` / ``registrations`` command) made."""
    location = core.location
    op = change.op
    if op == "put_binding" and change.binding is not None:
        b = from_stored(core, change.binding)
        if b.expires_at > now:
            location.apply_save(b)
            _schedule(core)
    elif op == "remove_binding" and change.aor is not None and change.key is not None:
        location.apply_remove(change.aor, change.key)
    elif op == "remove_bindings" and change.aor is not None:
        location.apply_remove_all(change.aor)
    elif op == "put_route" and change.route is not None:
        apply_route(core, change.route, now)
    elif op == "remove_route" and change.old_uri is not None:
        core._learned.pop(change.old_uri, None)
    elif op == "clear_routes":
        core._learned.clear()


def apply_route(core: ProxyCore, r: LearnedRoute, now: float) -> None:
    expires = r.expires_at - core._wall_offset
    if expires > now:
        core._learned[r.old_uri] = (r.new_uri, expires)


def held_elsewhere(b: Binding) -> bool:
    """Whether requests for ``b`` must go through the node that holds its flow: one held by
    another node that is reached over its flow, not at its Contact (:func:`reach.over_flow`:
    any SIP Outbound flow, a UA behind NAT, a stream whose Contact is its connection). A
    binding reached at its Contact is reached there from every node."""
    return b.node is not None and reach.over_flow(b)


def between_nodes(transport: str) -> str:
    """How one node reaches another for a flow that node holds: over UDP for a UDP flow, over
    TCP for a stream one (TLS, and WebSocket: nodes open no WebSocket to each other)."""
    return "udp" if transport == "udp" else "tcp"


def to_node(core: ProxyCore, token: str, flow: Flow) -> Target | None:
    """A request whose flow token names another node (a Path or Record-Route that node wrote
    reached this one, e.g. through DNS): on to that node, with the same token in a Route.
    None when the node is not known (gone): its flows are dead with it."""
    assert flow.node is not None
    hop = core._cluster.address(flow.node, between_nodes(flow.transport))
    if hop is None:
        return None
    transport, host, port = hop
    shown = f"[{host}]" if ":" in host else host
    params = "" if transport == "udp" else f";transport={transport}"
    return Target(transport, host, port, None, None, 1.0, f"node {flow.node}",
                  route=f"<sip:{token}@{shown}:{port};lr{params}>")


def via_node(core: ProxyCore, b: Binding) -> Target | None:
    """The target that reaches ``b`` through the node holding its flow; None when that node
    is not known (then the caller falls back to the binding itself)."""
    assert b.node is not None
    f = b.flow
    hop = core._cluster.address(b.node, between_nodes(f.transport))
    if hop is None:
        return None
    there = core._cluster.address(b.node, f.transport) or hop
    token = core.tokens.encode(Flow(f.transport, there[1], there[2], f.host, f.port, None,
                                    b.node))
    transport, host, port = hop
    shown = f"[{host}]" if ":" in host else host
    params = "" if transport == "udp" else f";transport={transport}"
    ruri = b.uri.split("?", 1)[0]
    return Target(transport, host, port, ruri, None, b.q, f"node {b.node} for {b.contact}",
                  b.aor, b.instance, b.key, route=f"<sip:{token}@{shown}:{port};lr{params}>")
