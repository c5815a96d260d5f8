"""SIP Outbound (RFC 5626) at the edge: flow liveness and closed connections (the failover to
the next flow: :mod:`.retry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.effects import INFO
from proxy.core.registrar.location import Binding
from proxy.core.shared import DEAD_FLOW
from proxy.core.types import Source

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


FLOW_TIMER = 120  # seconds between keep-alives asked of outbound UAs (RFC 5626 4.4.1)
DEFAULT_FLOW_ATTEMPTS = 3  # flows tried per instance when the policy names no max_attempts


def seen(core: ProxyCore, src: Source, now: float) -> None:
    """A sign of life (a message, a STUN Binding, CRLFCRLF) on a UDP flow (RFC 5626 4.4)."""
    key = (src.host, src.port)
    if key in core.udp_flows:
        core.udp_flows[key] = now


def flow_alive(core: ProxyCore, b: Binding, now: float) -> bool:
    """A UDP outbound flow is dead when nothing, not even a keep-alive, came over it for
    twice the Flow-Timer it was given (RFC 5626 4.4.1); TCP flows die with their
    connection (:func:`flow_closed`)."""
    f = b.flow
    if f.transport != "udp":
        return f.conn_id != DEAD_FLOW  # a flow of the process before a restart is dead
    if b.node is not None:
        return True  # another node's flow: that node judges it
    last = core.udp_flows.get((f.host, f.port))
    return last is None or now - last <= 2 * FLOW_TIMER + 10


def flow_closed(core: ProxyCore, conn_id: int) -> None:
    """A stream connection closed: its flows are dead at once (RFC 5626 5.3)."""
    if len(core.closed_conns) > 100_000:
        core.closed_conns.clear()  # ids only grow: old ones no longer matter
    core.closed_conns.add(conn_id)
    gone = core.location.remove_flow(conn_id)
    for b in gone:
        core.note(INFO, "flow %s of %s closed: binding removed", b.key, b.aor)
