"""The core's glue to its transactions (RFC 3261 17): matching keys, where responses go,
responses sent through a server transaction, and what the transactions' effects mean for
the proxy (retransmissions, ACKs, timeouts, the end of a transaction).

Every timer the core schedules comes from :class:`~proxy.transaction.TimerConfig` (the one
table of RFC 3261 timer values): the transaction timers and Timer C (16.8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from proxy.core.context import Branch, ResponseContext, ServerEntry
from proxy.core.effects import WARNING, Out
from proxy.core.observe import metrics as observe
from proxy.core.types import Dest, Send, Source
from proxy.sip import ParseError, SipMessage, make_response, parse_message
from proxy.transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    Retransmit,
    Terminated,
    Timeout,
    TransactionState,
)

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


#: server transaction states before a final response (compared by identity: an Enum's
#: ``.name`` is a Python-level property, a cost on every response)
UNANSWERED: Final = frozenset({TransactionState.TRYING, TransactionState.PROCEEDING})
_TERMINATED: Final = TransactionState.TERMINATED
ACCEPTED: Final = TransactionState.ACCEPTED


_DESTS: Final[dict[tuple[str, str, int, int | None], Dest]] = {}
_DESTS_MAX: Final = 4096


def shared_dest(transport: str, host: str, port: int, conn_id: int | None) -> Dest:
    """The :class:`Dest` of these four values, one shared object per address: every
    transaction with a peer (a caller's responses, a branch to an upstream) holds the same
    one, not a copy per call. Bounded as the parser's memos are (emptied when full); a
    Dest is never changed once made."""
    key = (transport, host, port, conn_id)
    d = _DESTS.get(key)
    if d is None:
        if len(_DESTS) >= _DESTS_MAX:
            _DESTS.clear()
        d = _DESTS[key] = Dest(transport, host, port, conn_id)
    return d


def reply_dest(core: ProxyCore, msg: SipMessage, src: Source) -> Dest:
    """RFC 3261 18.2.2 and RFC 3581: where responses to this request go."""
    if src.transport != "udp":
        return shared_dest(src.transport, src.host, src.port, src.conn_id)
    via = msg.top_via
    if core.settings.force_rport or via.rport is not None:
        return shared_dest("udp", src.host, src.port, None)
    return shared_dest("udp", src.host, via.port or 5060, None)


def new_server(core: ProxyCore, key: str, msg: SipMessage, src: Source, now: float) -> ServerEntry:
    """A server transaction (RFC 3261 17.2) for a new request, in the core's table."""
    reliable = src.transport != "udp"
    txn: InviteServerTransaction | NonInviteServerTransaction
    if msg.method == "INVITE":
        txn = InviteServerTransaction(reliable=reliable, now=now, timers=core.timers)
    else:
        txn = NonInviteServerTransaction(reliable=reliable, now=now, timers=core.timers)
    # Only an INVITE's request is kept (for its call line and time to final): a REGISTER
    # storm must not hold 50,000 messages for Timer J.
    entry = ServerEntry(key, txn, reply_dest(core, msg, src),
                        msg if msg.method == "INVITE" else None, now)
    core.table.add_server(entry, src.conn_id)
    return entry


def drop_server(core: ProxyCore, entry: ServerEntry) -> None:
    """Remove a server transaction from the core's table (it ended, or it is refused
    statelessly before it did anything: :func:`refuse`)."""
    core.table.drop_server(entry)
    entry.deadline = None


def drop_branch(core: ProxyCore, br: Branch) -> None:
    """Remove a branch's client transaction from the core's table (it ended, or Timer C gave
    up on it after a CANCEL)."""
    core.table.drop_branch(br)


def send_response(
    core: ProxyCore, entry: ServerEntry, status: int, data: bytes, now: float, out: Out
) -> None:
    """Send a response through its server transaction, which is the gatekeeper (as h11's
    state machine is): a response the transaction refuses (a second non-2xx final on a
    Completed transaction, a provisional after a final, anything once it ended: RFC 3261
    17.2.2, 16.7 step 5) is never sent, but counted (``responses_refused``) and logged."""
    txn = entry.txn
    first_final = status >= 200 and txn.state in UNANSWERED
    effects = txn.respond(status, data, now)  # None: refused, nothing changed
    if effects is None:
        core.stats["responses_refused"] += 1
        out.line(WARNING, "response %s not sent: its server transaction %s is %s (RFC 3261 "
                 "17.2.2)", status, entry.key, txn.state.value)
        return
    out.sends.append(entry.reply.send(data, entry))
    server_effects(core, entry, effects, out)
    if first_final:
        observe.final_sent(core, entry, status, now, out)
        ctx = entry.ctx
        if ctx is None:
            entry.request = None
        elif ctx.pending == 0:
            ctx.settle()


def respond(
    core: ProxyCore, entry: ServerEntry, msg: SipMessage, status: int, now: float, out: Out, *,
    reason: str | None = None, headers: Sequence[str] = (),
) -> None:
    """A response generated by the proxy itself, through the server transaction."""
    tag = core.new_tag() if msg.to_tag is None else None
    data = make_response(msg, status, reason, to_tag=tag, headers=headers)
    send_response(core, entry, status, data, now, out)


def refuse(
    core: ProxyCore, entry: ServerEntry | None, msg: SipMessage, src: Source, reason: str,
    status: int, phrase: str, now: float, out: Out, detail: str, *, headers: Sequence[str] = (),
) -> None:
    """Refuse work not yet accepted: one response, sent once and statelessly (RFC 3261 16.11
    lets a proxy answer without a transaction; 8.2.6 and 17.2: nothing retransmits it and
    nothing is held for Timer J or H), the request's server transaction (``entry``, if one
    was created) removed. Counted by ``reason`` (``core.refusals``, the ``refusals``
    metric) and logged at most once per source and reason per minute.

    A flood of refused requests therefore costs one response each and leaves nothing in
    the transaction table; a refused INVITE's ACK is absorbed by its To tag (:func:`~proxy.core.proxy.forward.on_ack`),
    and a retransmission of it is refused again."""
    if entry is not None:
        drop_server(core, entry)
    if core.refusals.note(reason, src.host, now):
        core.note(WARNING, "refused %s %s from %s:%s (%s): %s %s; counted, logged once a minute "
                    "per source", msg.method, msg.request_uri, src.host, src.port, reason,
                    status, detail)
    out.send(reject(core, msg, src, status, reason=phrase, headers=headers))


def reject(
    core: ProxyCore, msg: SipMessage, src: Source, status: int, *,
    reason: str | None = None, headers: Sequence[str] = (), to_tag: str | None = None,
) -> Send:
    """A stateless error response to a request that fails validation (RFC 3261 16.3);
    ``to_tag``: the To tag (else a new one of the proxy's)."""
    core.stats[f"rejected_{status}"] += 1
    core.metrics.responses[status] += 1
    if reason is not None and len(reason) > 80:
        reason = reason[:80]
    tag = to_tag or core.new_tag()
    try:
        data = make_response(msg, status, reason, to_tag=tag, headers=headers)
        to = reply_dest(core, msg, src)
    except ParseError:
        data = make_response(msg, status, reason, to_tag=tag, headers=headers)
        to = Dest(src.transport, src.host, src.port, src.conn_id)
    return to.send(data)


def server_effects(
    core: ProxyCore, entry: ServerEntry, effects: Sequence[object], out: Out
) -> None:
    for e in effects:
        if isinstance(e, Retransmit):
            out.sends.append(entry.reply.send(e.data))
        elif isinstance(e, Terminated):
            drop_server(core, entry)
            ctx = entry.ctx
            if ctx is not None:
                entry.ctx = None
                release(core, ctx)
            return
        elif isinstance(e, Timeout):
            core.stats["timer_h"] += 1
    schedule_server(core, entry)


def release(core: ProxyCore, ctx: ResponseContext) -> None:
    """Break the context's reference cycles once its server transaction and every branch's
    client transaction have ended, so that reference counting frees the whole call at once
    (no garbage collector pass: full collections over a busy proxy's heap cost more than
    the calls themselves). Nothing reads ``ctx.branches`` after that."""
    entry = ctx.server
    if core.table.holds_server(entry):
        return
    for b in ctx.branches:
        if b.txn.state is not _TERMINATED:
            return
    ctx.branches = ()


def cancel_effects(core: ProxyCore, br: Branch, effects: Sequence[object], out: Out) -> None:
    """The CANCEL client transaction of a branch (RFC 3261 9.1)."""
    for e in effects:
        if isinstance(e, Retransmit):
            out.sends.append(br.dest.send(e.data))
        elif isinstance(e, Terminated):
            core.table.drop_cancel(br)
    schedule_branch(core, br)


def schedule(core: ProxyCore, item: Branch | ServerEntry) -> None:
    """Queue ``item`` at its next deadline (:func:`schedule_branch`, :func:`schedule_server`)."""
    if isinstance(item, Branch):
        schedule_branch(core, item)
    else:
        schedule_server(core, item)


def schedule_branch(core: ProxyCore, br: Branch) -> None:
    """A branch's next deadline: the earliest of its client transaction's timers, Timer C
    (RFC 3261 16.8) and its CANCEL's timers; queued when it moved (typed: the compiled
    build reads and writes the slots natively)."""
    old = br.deadline
    d = br.txn.deadline
    c = br.timer_c
    if c is not None and (d is None or c < d):
        d = c
    ct = br.cancel_txn
    if ct is not None:
        cd = ct.deadline
        if cd is not None and (d is None or cd < d):
            d = cd
    br.deadline = d
    if d is not None and d != old:
        core.queue.schedule(br)


def schedule_server(core: ProxyCore, entry: ServerEntry) -> None:
    """A server transaction's next deadline, queued when it moved."""
    old = entry.deadline
    d = entry.txn.deadline
    entry.deadline = d
    if d is not None and d != old:
        core.queue.schedule(entry)


def build_hop_request(br: Branch, method: str, response: SipMessage | None) -> bytes:
    """CANCEL (RFC 3261 9.1) or ACK for a non-2xx final (17.1.1.3) on one branch."""
    if br.data is None:
        raise RuntimeError(f"branch {br.branch_id} let go of its request after its final")
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
