"""SIP Outbound (RFC 5626) at the edge: flow liveness, flow failover, closed connections."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.core.context import Branch, ResponseContext
from proxy.core.effects import Out
from proxy.core.proxy import forward, routing
from proxy.core.registrar.location import Binding
from proxy.core.shared import DEAD_FLOW
from proxy.core.types import Source
from proxy.policy import Action

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

log = logging.getLogger("proxy.core")

FLOW_TIMER = 120  # seconds between keep-alives asked of outbound UAs (RFC 5626 4.4.1)
DEFAULT_FLOW_ATTEMPTS = 3  # flows tried per instance when the policy names no max_attempts


def retry_flow(core: ProxyCore, ctx: ResponseContext, br: Branch, now: float, out: Out) -> bool:
    """RFC 5626 7: the flow of ``br`` failed; remove its binding and try the same instance's
    next live flow, newest first. True when a branch was started."""
    t = br.target
    assert t.aor is not None and t.instance is not None and t.binding_key is not None
    core.location.remove(t.aor, t.binding_key)
    core.stats["flows_failed"] += 1
    log.info("flow %s of %s failed (%s): binding removed", t.binding_key, t.aor,
             br.final_status)
    if not ctx.may_branch:
        return False
    rule = ctx.policy.evaluate(430, ctx.method)
    limit = rule.max_attempts if rule.action is Action.RETRY_FLOWS else DEFAULT_FLOW_ATTEMPTS
    tried = ctx.flow_attempts.get(t.instance, 1)
    if tried >= limit:
        return False
    candidates = sorted(
        (b for b in core.location.lookup(t.aor, now)
         if b.instance == t.instance and flow_alive(core, b, now)),
        key=lambda b: -b.registered_at,
    )
    for b in candidates:
        nt = routing.target_for_binding(core, b, now)
        if nt is None:
            continue
        label = f"{nt.request_uri or ''}@{nt.host}:{nt.port}/{nt.transport}"
        if label in ctx.tried:
            continue
        ctx.tried.add(label)
        ctx.flow_attempts[t.instance] = tried + 1
        forward.fork(core, ctx, nt, now, out)
        return True
    return False


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
        log.info("flow %s of %s closed: binding removed", b.key, b.aor)
