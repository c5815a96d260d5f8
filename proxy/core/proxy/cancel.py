"""CANCEL (RFC 3261 16.10, 9.1): answer the CANCEL hop by hop, then cancel every pending
branch of the INVITE's response context; the caller gets 487 once no branch is left. A CANCEL
that matches no INVITE the proxy is working on is answered 481 once, statelessly: it holds no
transaction (a flood of them would otherwise hold one each for 32 s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core import txns
from proxy.core.access import limits
from proxy.core.context import Branch, BranchState, ContextEvent, ResponseContext
from proxy.core.effects import Out
from proxy.core.proxy import final, routing
from proxy.core.types import Source
from proxy.sip import SipMessage
from proxy.transaction import NonInviteClientTransaction

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


def on_cancel(core: ProxyCore, msg: SipMessage, src: Source, now: float, out: Out) -> None:
    """RFC 3261 16.10: answer the CANCEL, then cancel every pending branch."""
    ckey, centry = core.table.match_server(msg, "CANCEL")
    if centry is not None:
        txns.server_effects(core, centry, centry.txn.on_retransmission(now), out)
        return
    inv = core.table.find_server(msg, "INVITE")
    ctx = inv.ctx if inv is not None else None
    if ctx is None:
        # RFC 3261 9.2: no matching transaction, 481; a request no transaction matches counts
        # against its source's rate (proxy.core.access.limits) like any other.
        if not routing.trusted_source(core, src) and limits.over_rate(core, msg, src, now, out):
            return
        txns.refuse(core, None, msg, src, "cancel_unknown", 481,
                    "Call/Transaction Does Not Exist", now, out,
                    "CANCEL of no transaction of this proxy")
        return
    centry = txns.new_server(core, ckey, msg, src, now)
    txns.respond(core, centry, msg, 200, now, out)
    if not ctx.fire(ContextEvent.CANCEL):
        return  # a final response went upstream already
    cancel_pending(core, ctx, now, out)
    if ctx.pending == 0:
        final.send_local(core, ctx, 487, now, out)


def cancel_pending(core: ProxyCore, ctx: ResponseContext, now: float, out: Out) -> None:
    """RFC 3261 16.7 step 10 / 16.10: CANCEL every branch still without a final response."""
    for br in ctx.branches:
        if br.state is BranchState.PENDING:
            cancel_branch(core, br, now, out)


def cancel_branch(core: ProxyCore, br: Branch, now: float, out: Out) -> None:
    """CANCEL one INVITE branch; before any provisional response it is only marked, and
    cancelled when one arrives (RFC 3261 9.1)."""
    if br.cancel_txn is not None or br.ctx.method != "INVITE":
        return
    if not br.provisional:
        br.cancel_wanted = True  # RFC 3261 9.1: wait for a provisional response
        return
    data = txns.build_hop_request(br, "CANCEL", None)
    reliable = br.dest.transport != "udp"
    br.cancel_txn = NonInviteClientTransaction(data, reliable=reliable, now=now,
                                               timers=core.timers)
    core.table.add_cancel(br)
    # RFC 3261 9.1: no final response 64*T1 after the CANCEL: the INVITE is over (Timer C
    # is reused for that bound; responses.branch_timer ends the branch).
    br.timer_c = now + 64 * core.timers.t1
    txns.schedule_branch(core, br)
    out.sends.append(br.dest.send(data))
