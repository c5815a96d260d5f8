"""Response processing (RFC 3261 16.7) over the response context's state machine
(:data:`~proxy.core.context.CONTEXT_TABLE`).

1xx (but 100) and 2xx are forwarded at once (16.7 step 5); every final response of a branch,
received or synthesised (408 for Timers B, F, C; 503 for a transport error, 16.9), goes through
the one decision point :func:`branch_final`, which applies the policy and returns an
:class:`Outcome` (as Kamailio's tm does). The best response is chosen by
:func:`~proxy.core.context.select_best` (16.7 step 6). A response matching no branch is
forwarded statelessly when it is ours (16.11) and dropped otherwise (18.1.2).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.core import txns, upstream_targets
from proxy.core.access.trust import branch_lifetime, via_dest
from proxy.core.context import (
    Branch,
    BranchState,
    ContextEvent,
    Response,
    ResponseContext,
)
from proxy.core.effects import DEBUG, WARNING, Out
from proxy.core.observe.metrics import rule_name
from proxy.core.outbound import retry
from proxy.core.proxy import cancel, final, forward, redirects, steer
from proxy.core.registrar import glue as registrar_glue
from proxy.core.types import Send, Source
from proxy.policy import Action
from proxy.sip import SipMessage, strip_top_via
from proxy.transaction import Retransmit, SendAck, Terminated, Timeout

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore



class Outcome(enum.Enum):
    """What a branch's final response led to (RFC 3261 16.7 steps 4 to 6)."""

    LATE = "late"  # the context had sent its final already: nothing more
    FLOW_RETRY = "flow retry"  # RFC 5626 7: the instance's next flow was tried
    STOPPING = "stopping"  # policy stop: waiting (at most 4*T1) for the cancelled branches
    FAILOVER = "failover"  # the next target group was started
    NEXT_TARGET = "next target"  # RFC 3263 4.3: the next resolved target of the same name
    REDIRECTED = "redirected"  # 16.7 step 4: recursing on the 3xx's Contacts
    HELD = "held"  # a learned route is being written; the context goes on after it
    PENDING = "pending"  # other branches still have no final response
    NEXT_GROUP = "next group"  # serial (q-value) forking: the next group started
    FINAL = "final"  # the best response went to the caller (16.7 step 6)


def own_branch(msg: SipMessage) -> str | None:
    """The branch of the top Via when it reads as this proxy writes its own (``;branch=
    z9hG4bK...`` as written by :mod:`~proxy.core.proxy.forward`, up to the first comma: the first value of a
    line that joins several; a comma in a quoted string of another's Via only spoils the
    key), found without parsing the Via;
    None otherwise. Only a lookup key: a response is matched only if a client transaction
    has that branch (unguessable, signed: :mod:`~proxy.core.access.trust`), and anything else is matched
    through the fully parsed Via."""
    value = None
    for h in msg.headers:  # msg.get("via") without canonicalising the name each time
        if h.name == "via":
            value = h.value
            break
    if value is None:
        return None
    comma = value.find(",")
    if comma >= 0:  # Via values joined on one line (sipp's [last_Via:] does): ours is first
        value = value[:comma]
    i = value.find(";branch=z9hG4bK")
    if i < 0:
        return None
    start = i + 8
    end = value.find(";", start)
    return value[start:] if end < 0 else value[start:end]


def on_response(core: ProxyCore, msg: SipMessage, src: Source, now: float, out: Out) -> None:
    """RFC 3261 17.1.3: match the branch (the top Via's, RFC 3261 17.1.3 with the CSeq
    method); then 16.7 by the status class. The top Via of a response to a request this
    proxy forwarded is its own: its branch is looked up first without parsing the Via
    (:func:`own_branch`), and only a response matching no transaction that way is parsed."""
    method = msg.cseq[1]
    bid = own_branch(msg)
    br = core.table.match_branch(bid, method)
    if br is None:
        bid = msg.top_via.branch
        br = core.table.match_branch(bid, method)
    if br is None:
        if bid and method == "OPTIONS" and core.prober.on_response(core, bid, msg.status):
            return  # a probe's answer (proxy.core.probe): the upstream is up
        fwd = stateless_response(core, msg, src, now)
        if fwd is not None:
            out.send(fwd)
        return
    status = msg.status
    if src.conn_id is not None and br.conn is None:
        # The connection the transport opened for this branch carries its transaction.
        core.table.carried_on(br, src.conn_id)
    if method == "CANCEL" and br.ctx.method != "CANCEL":
        ctxn = br.cancel_txn
        if ctxn is not None:
            _, effects = ctxn.on_response(status, now)
            txns.cancel_effects(core, br, effects, out)
        return
    deliver, effects = br.txn.on_response(status, now)
    # the branch is queued once, after what the response led to (Timer C reset, the
    # branch ended): not once by its transaction's effects and again by what followed
    client_effects(core, br, effects, msg, now, out, False)
    if not deliver:
        core.stats["retransmissions_in"] += 1
    elif status < 200:
        provisional(core, br, msg, status, now, out)
    elif status < 300:
        success(core, br, msg, now, out)
    elif br.state is BranchState.PENDING:
        branch_final(core, br, status, msg, now, out, src)
    txns.schedule_branch(core, br)


def client_effects(
    core: ProxyCore, br: Branch, effects: Sequence[object], msg: SipMessage | None, now: float,
    out: Out, reschedule: bool = True,
) -> None:
    """What the branch's client transaction asked for (an ACK, a retransmission, a timeout,
    its end); then the branch is queued at its next deadline (unless ``reschedule`` is
    False: the caller queues it once it is done with it)."""
    for e in effects:
        if isinstance(e, SendAck):
            ack = txns.build_hop_request(br, "ACK", msg)
            br.txn.set_ack(ack)
            out.sends.append(br.dest.send(ack))
        elif isinstance(e, Retransmit):
            out.sends.append(br.dest.send(e.data, br))
        elif isinstance(e, Timeout):
            if br.state is BranchState.PENDING:
                # RFC 5626 5.3: no answer over a flow named by a token: the flow failed (430)
                status = 430 if br.target.by_token else 408
                branch_final(core, br, status, None, now, out)
        elif isinstance(e, Terminated):
            txns.drop_branch(core, br)
            txns.release(core, br.ctx)
    if br.txn.request is None:
        br.data = None  # a final arrived (its ACK is built): nothing reads the request again
    if reschedule:
        txns.schedule_branch(core, br)


def branch_timer(core: ProxyCore, br: Branch, now: float, out: Out) -> None:
    """A branch's timers: Timer C (RFC 3261 16.8), its client transaction, its CANCEL."""
    c = br.timer_c
    if c is not None and now >= c and br.state is BranchState.PENDING:
        # RFC 3261 16.8: Timer C.
        br.timer_c = None
        core.stats["timer_c"] += 1
        if br.cancel_txn is not None:
            # RFC 3261 9.1: cancelled 64*T1 ago and still no final response: the client
            # transaction is destroyed and the branch ends as if it got a 408.
            core.stats["cancel_unanswered"] += 1
            txns.drop_branch(core, br)
            branch_final(core, br, 408, None, now, out)
        elif br.provisional:
            cancel.cancel_branch(core, br, now, out)
        else:
            branch_final(core, br, 408, None, now, out)
    d = br.txn.deadline
    if d is not None and now >= d:
        client_effects(core, br, br.txn.on_timer(now), None, now, out)
    ct = br.cancel_txn
    if ct is not None and ct.deadline is not None and now >= ct.deadline:
        txns.cancel_effects(core, br, ct.on_timer(now), out)
    txns.schedule_branch(core, br)


def provisional(
    core: ProxyCore, br: Branch, msg: SipMessage, status: int, now: float, out: Out
) -> None:
    """RFC 3261 16.7 steps 2 and 5 for a 1xx."""
    ctx = br.ctx
    br.provisional = True
    if br.state is not BranchState.PENDING:
        return
    if br.cancel_wanted:
        cancel.cancel_branch(core, br, now, out)
    elif status > 100 and br.timer_c is not None:
        br.timer_c = now + core.timers.timer_c  # RFC 3261 16.7 step 2: reset Timer C
        txns.schedule_branch(core, br)
    if status > 100 and not ctx.final_sent and not ctx.cancelled:
        # 16.7 step 5: provisional responses other than 100 are forwarded at once.
        final.forward_response(core, ctx, msg, status, now, out)


def success(core: ProxyCore, br: Branch, msg: SipMessage, now: float, out: Out) -> None:
    """RFC 3261 16.7 step 5: every 2xx is forwarded at once; step 10: CANCEL the rest."""
    ctx = br.ctx
    if br.state is BranchState.PENDING:
        ctx.branch_ended(br, msg.status)
        txns.schedule_branch(core, br)
    if ctx.method == "REGISTER" and not core.settings.registrar_local:
        registrar_glue.learn_bindings(core, ctx, msg, now)
    # After a non-2xx final went upstream (policy stop) nothing follows it (GOT_2XX fails).
    if ctx.fire(ContextEvent.GOT_2XX):
        final.forward_response(core, ctx, msg, 200, now, out)
        if ctx.method == "INVITE":
            # The From tag is the request's (RFC 3261 8.2.6.2); the To tag is new.
            core.dialogs.opened(core, msg.call_id, ctx.from_tag, msg.to_tag, now, br.target)
            cancel.cancel_pending(core, ctx, now, out)
    if ctx.pending == 0 and ctx.request is not None:
        ctx.settle()


def branch_final(
    core: ProxyCore, br: Branch, status: int, msg: SipMessage | None, now: float, out: Out,
    src: Source | None = None,
) -> Outcome:
    """The one decision point for a final response (RFC 3261 16.7 steps 4 to 6).

    ``msg`` is None for a response the proxy synthesised: 408 for a timeout (Timer B, F or
    C), 503 for a transport error (16.9). The policy of the context decides.
    """
    ctx = br.ctx
    ctx.branch_ended(br, status)
    txns.schedule_branch(core, br)
    if ctx.final_sent:
        if ctx.pending == 0:
            ctx.settle()
        return Outcome.LATE
    if br.superseded:
        # CANCELled by a route's no_answer timer (RFC 3261 16.10): the call went on with
        # another group; this answer decides nothing and is not chosen (16.7 step 6).
        core.stats["superseded_finals"] += 1
    else:
        acted = _act(core, ctx, br, status, msg, now, out, src)
        if acted is not None:
            return acted
    if ctx.holding:
        return Outcome.HELD  # the learned route is being written; branches start after it
    if ctx.pending == 0 and not ctx.final_sent:
        if ctx.serial and ctx.may_branch and forward.next_group(core, ctx, now, out):
            return Outcome.NEXT_GROUP
        final.send_best(core, ctx, now, out)
        return Outcome.FINAL
    return Outcome.PENDING


def _act(
    core: ProxyCore, ctx: ResponseContext, br: Branch, status: int, msg: SipMessage | None,
    now: float, out: Out, src: Source | None,
) -> Outcome | None:
    """The policy's decision for a branch's final response and what it starts (16.7 steps
    4 and 5); None when the context goes on to choose its final response (step 6)."""
    decision = steer.decide(core, ctx, br, status, msg, now)
    ctx.responses.append(Response(status, msg, decision))
    action = decision.action
    core.metrics.decisions[(rule_name(decision.rule), decision.verb)] += 1
    if core.debug:
        core.note(DEBUG, "decision Call-ID %s: %s from %s:%s -> %s", ctx.live_request.call_id,
                  status, br.target.host, br.target.port, decision.describe())
    if ctx.cancelled:
        pass
    elif br.target.instance is not None and (
        msg is None or (status == 430 and action is Action.RETRY_FLOWS)
    ):
        # RFC 5626 7: a 430, a transport error or a timeout on a flow -> the same instance's
        # next flow, and the failed binding is removed.
        if retry.retry_flow(core, ctx, br, now, out):
            core.metrics.flow_retries += 1
            return Outcome.FLOW_RETRY
    elif action is Action.STOP:
        # Global failure (RFC 3261 16.7 step 5): CANCEL the pending branches and create no
        # new one. The 6xx is the final response once the cancelled branches end (step 6),
        # or after 4*T1 at the latest: a branch that never sent a provisional response
        # cannot be cancelled yet and must not hold the caller's answer back.
        # A reply rule: the caller gets its status instead (final.send_best), once the
        # branches end.
        if decision.reply:
            ctx.reply = (decision.reply, decision.reason)
        ctx.fire(ContextEvent.POLICY_STOP)
        core.stats["policy_reply" if decision.reply else "policy_stop"] += 1
        cancel.cancel_pending(core, ctx, now, out)
        if ctx.pending:
            ctx.deadline = now + 4 * core.timers.t1
            core.queue.schedule(ctx)
            return Outcome.STOPPING
    elif upstream_targets.next_target(core, ctx, br, status, msg is not None) and (
            forward.next_group(core, ctx, now, out)):
        return Outcome.NEXT_TARGET
    elif action is Action.FAILOVER and ctx.may_branch:
        core.stats["policy_failover"] += 1
        if steer.failover(core, ctx, decision, now, out):
            return Outcome.FAILOVER
    elif action is Action.REDIRECT and msg is not None and ctx.may_branch and status < 400:
        if redirects.redirect(core, ctx, br, status, msg, decision, src, now, out):
            return Outcome.HELD if ctx.holding else Outcome.REDIRECTED
    return None


def stateless_response(core: ProxyCore, msg: SipMessage, src: Source, now: float) -> Send | None:
    """RFC 3261 16.7 / 16.11, RFC 6026 7.2: a 1xx or 2xx matching no live client transaction
    is forwarded statelessly to its second Via only when its top Via is this proxy's and its
    branch proves a transaction (:mod:`~proxy.core.access.trust`): minted by this proxy for the response's CSeq
    method and for the hop the second Via names, at most :func:`~proxy.core.access.trust.branch_lifetime` ago.
    Anything else is dropped (RFC 3261 18.1.2), counted (``bad_messages_total`` reason
    ``forged_response`` or ``stale_response``) and logged once a minute per source: relaying
    it would make the proxy a reflector toward whatever host the second Via names."""
    vias = msg.vias
    top = vias[0]
    if top.sent_by() not in core.ours or len(vias) < 2:
        core.stats["responses_dropped"] += 1
        return None
    method = msg.cseq[1]
    dest = via_dest(vias[1])
    why = core.trust.check_branch(top.branch, method, dest, now,
                                  branch_lifetime(method, core.timers))
    if why is not None:
        core.stats["responses_" + why] += 1
        core.metrics.bad[why + "_response"] += 1
        core.stats["responses_dropped"] += 1
        if core.refusals.note(why + "_response", src.host, now):
            core.note(WARNING, "dropped %s %s from %s:%s: its top Via names this proxy with a branch "
                        "%s; counted, logged once a minute per source", msg.status, method,
                        src.host, src.port,
                        "that is not of a transaction of this method toward its second Via"
                        if why == "forged" else "whose transaction ended too long ago")
        return None
    if msg.status >= 300:
        # A stray non-2xx final (its branch ended: Timer B, or a CANCEL that timed out): its
        # response context has, or will have, its own final answer, and a second one would
        # reach the caller (RFC 6026 7.3: only a 2xx is forwarded without a transaction).
        core.stats["responses_stray_final"] += 1
        core.stats["responses_dropped"] += 1
        return None
    transport, host, port = dest.split("|")
    return Send(transport, host, int(port), strip_top_via(msg))
