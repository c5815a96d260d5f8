"""SIP Outbound flow failover (RFC 5626 7): a failed flow's binding is removed and the same
instance's next live flow is tried."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.context import Branch, ResponseContext
from proxy.core.effects import INFO, Out
from proxy.core.outbound.flows import DEFAULT_FLOW_ATTEMPTS, flow_alive
from proxy.core.proxy import forward, routing
from proxy.policy import Action

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore



def retry_flow(core: ProxyCore, ctx: ResponseContext, br: Branch, now: float, out: Out) -> bool:
    """RFC 5626 7: the flow of ``br`` failed; remove its binding and try the same instance's
    next live flow, newest first. True when a branch was started."""
    t = br.target
    assert t.aor is not None and t.instance is not None and t.binding_key is not None
    core.location.remove(t.aor, t.binding_key)
    core.stats["flows_failed"] += 1
    core.note(INFO, "flow %s of %s failed (%s): binding removed", t.binding_key, t.aor,
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
        key = forward.label(nt)
        if key in ctx.tried:
            continue
        ctx.tried.add(key)
        ctx.flow_attempted(t.instance, tried + 1)
        forward.fork(core, ctx, nt, now, out)
        return True
    return False
