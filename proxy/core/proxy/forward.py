"""Forwarding a request (RFC 3261 16.6): one branch per target, each a copy of the request
rewritten by splicing bytes (Request-URI, Via, Record-Route, Path, Max-Forwards, Route), sent
over its own client transaction (17.1); and the stateless forwarding of an ACK for a 2xx
(16.11). Branch ids carry a keyed MAC so that a response naming one can be told from a forged
one without state (README "Security defaults").
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final
from zlib import crc32

from proxy.core import txns, upstream_targets
from proxy.core.access.trust import via_dest
from proxy.core.context import Branch, Response, ResponseContext
from proxy.core.effects import INFO, WARNING, Out
from proxy.core.proxy import routing
from proxy.core.types import LocalAddress, Send, Source, Target
from proxy.sip import SipMessage, rewrite
from proxy.transaction import InviteClientTransaction, NonInviteClientTransaction

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


#: Requests that may create a dialog, so that the proxy record-routes them (RFC 3261 16.6 step 4).
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
#: RFC 3261 18.1.1: larger requests go over a congestion-controlled transport (TCP), the path
#: MTU being unknown (1500 - 200 bytes).
UDP_SIZE_LIMIT = 1300
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4 (65535 - 8 - 20)
_S: Final = ("s", "S")


def label(target: Target) -> str:
    """What makes two targets the same one (RFC 3261 16.5: each at most once per context)."""
    return f"{target.request_uri or ''}@{target.host}:{target.port}/{target.transport}"


def next_group(core: ProxyCore, ctx: ResponseContext, now: float, out: Out) -> bool:
    """Start the next group of targets; False when none is left."""
    while ctx.groups:
        group = ctx.groups.pop(0)
        started = False
        for target in group:
            key = label(target)
            if key in ctx.tried:
                continue  # RFC 3261 16.5: each target at most once per response context
            ctx.tried.add(key)
            started = fork(core, ctx, target, now, out) or started
        if started:
            return True
    return False


def fork(core: ProxyCore, ctx: ResponseContext, target: Target, now: float, out: Out) -> bool:
    """RFC 3261 16.6: copy, rewrite and send the request on a new branch.

    RFC 3261 18.1.1: a request over 1300 bytes goes over TCP when the proxy has TCP and
    the target takes it (not a UA's UDP flow, no explicit ``;transport=udp``); one that
    does not fit a datagram at all and cannot go over TCP is answered 513 at once (False:
    no branch was started).
    """
    if target.transport != "tls" and needs_tls(ctx.live_request.request_uri, target):
        # RFC 3261 26.2.2, RFC 5630 3.1.3: a SIPS request goes over TLS on every hop; no
        # downgrade to UDP or TCP, whatever the target set says.
        core.note(INFO, "%s %s: no TLS path to %s:%s/%s for a sips: URI: 480", ctx.method,
                 target.request_uri or ctx.live_request.request_uri, target.host, target.port,
                 target.transport)
        core.stats["sips_without_tls"] += 1
        ctx.responses.append(Response(480, None, ctx.policy.evaluate(480, ctx.method)))
        return False
    origin = target  # as configured: the upstream a hold-down names
    core.n += 1
    # The branch proves the transaction (:mod:`~proxy.core.access.trust`): signed with the time, the method and
    # where its responses go, so that a response matching no live transaction is relayed only
    # back to the hop this request came from, and only while it can be an answer to it.
    bid = core.trust.mint_branch(f"z9hG4bK{core.prefix}{ctx.loop_hash}{hex(core.n)[2:]}", ctx.method,
                                 via_dest(ctx.live_request.top_via), now)
    data = branch_bytes(core, ctx, target, bid)
    if target.transport == "udp" and len(data) > UDP_SIZE_LIMIT:
        if core.has_tcp and not (target.via_flow or target.fixed_transport):
            target = target._replace(transport="tcp", conn_id=None)
            data = branch_bytes(core, ctx, target, bid)
            core.stats["udp_to_tcp"] += 1
        elif len(data) > MAX_DATAGRAM:
            core.note(WARNING, "%s of %d bytes for %s:%s does not fit a UDP datagram and the next "
                        "hop cannot be reached over TCP: 513", ctx.method, len(data),
                        target.host, target.port)
            core.stats["too_large"] += 1
            decision = ctx.policy.evaluate(513, ctx.method)
            ctx.responses.append(Response(513, None, decision))
            return False
    method = ctx.method
    reliable = target.transport != "udp"
    txn: InviteClientTransaction | NonInviteClientTransaction
    if method == "INVITE":
        txn = InviteClientTransaction(data, reliable=reliable, now=now, timers=core.timers)
    else:
        txn = NonInviteClientTransaction(data, reliable=reliable, now=now, timers=core.timers)
    dest = txns.shared_dest(target.transport, target.host, target.port, target.conn_id)
    br = Branch(ctx, bid, target, txn, data, dest)
    group = ctx.group
    if group is not None and (origin in core.members[group] or upstream_targets.in_group(
            core, origin, core.members[group])):  # a resolved address of a named upstream
        br.group = group  # a branch to an upstream of the context's group (a rule's upstream)
        br.upstream = origin
    if method == "INVITE":
        br.timer_c = now + core.timers.timer_c  # RFC 3261 16.6 step 11
    core.table.add_branch(br, target.conn_id)
    ctx.branch_started(br)
    txns.schedule_branch(core, br)
    core.stats["branches"] += 1
    out.sends.append(Send(target.transport, target.host, target.port, data, target.conn_id, br))
    return True


def needs_tls(request_uri: str, target: Target) -> bool:
    """Whether a request for ``target`` may only leave over TLS: its Request-URI (the
    target's, or the request's own) or the next hop (a Route, an upstream) is a sips: URI."""
    ruri = target.request_uri or request_uri
    label = target.label
    # a sips: URI has an "s" where a sip: one has its ":": most are told by that one character
    return ((ruri[3:4] in _S and ruri[:5].lower() == "sips:")
            or (label[3:4] in _S and label[:5].lower() == "sips:"))


def branch_bytes(core: ProxyCore, ctx: ResponseContext, target: Target, bid: str) -> bytes:
    """The request as sent on one branch (RFC 3261 16.6 steps 2 to 8), by splicing."""
    msg = ctx.live_request
    local = local_for(core, target)
    insert = [f"Via: SIP/2.0/{local.transport.upper()} {local.sent_by or local.advertised}"
              f";branch={bid}"]
    method = ctx.method
    if core.settings.record_route and method in DIALOG_METHODS and msg.to_tag is None:
        insert.extend(record_route(core, msg, local, ctx.source, target))
    if ctx.path is not None:
        # RFC 3327 5.1: in front of any Path already there, naming the proxy as the
        # registrar reaches it (this branch's transport and address).
        token, ob = ctx.path
        insert.append(f"Path: <sip:{token}@{local.advertised};lr{ob}{tp(local)}>")
    if ctx.diversion is not None:
        insert.append(ctx.diversion)  # RFC 5806 4: above any Diversion already there
    if target.route is not None:
        insert.append(f"Route: {target.route}")  # through the node holding the flow
    start = f"{method} {target.request_uri} SIP/2.0" if target.request_uri else None
    return rewrite(msg, start_line=start, insert_top=insert, edits=ctx.edits, append=ctx.append)


def record_route(core: ProxyCore, msg: SipMessage, out_local: LocalAddress, src: Source,
                 target: Target) -> list[str]:
    """RFC 3261 16.6 step 4; two values when the request changes transport or address, or
    when each side's value names a flow.

    Each value carries a flow token (RFC 5626 5.2) naming a UA's flow: the callee's when the
    target is a registered flow (``via_flow``), the caller's otherwise; and both when a UA
    that is not an upstream or a trusted relay calls a registered binding, so that each
    side's in-dialog requests reach the other over its flow (the proxy relays a UA's
    in-dialog request by its Request-URI only to an upstream, :func:`~proxy.core.proxy.routing.decide`). A
    request of the dialog that comes from the flow its token names is routed as usual; one
    from the other side goes over that flow, whatever its Request-URI says.

    Each value carries the dialog mark (``;d=``, :mod:`~proxy.core.access.trust`): a MAC over this request's
    Call-ID, its From tag and the value's token, which an in-dialog request must bring back
    for its own Call-ID and tags to be loose-routed (RFC 3261 12.2.2, 16.4).
    """
    in_local = local_for_source(core, src)
    trusted_caller = routing.trusted_source(core, src)
    out_tok = in_tok = ""
    if target.via_flow:
        out_tok = core.tokens.token(target.transport, out_local.host, out_local.port,
                                    target.host, target.port, target.conn_id,
                                    core._cluster.token_node)
        if not trusted_caller:
            in_tok = token_for(core, src, in_local)
    else:
        in_tok = token_for(core, src, in_local)
        if target.aor is not None and not trusted_caller:
            out_tok = core.tokens.token(target.transport, out_local.host, out_local.port,
                                        target.host, target.port, target.conn_id,
                                        core._cluster.token_node)
    call_id, tag = msg.call_id, msg.from_tag or ""
    trust = core.trust
    if in_local == out_local and not (in_tok and out_tok):
        user = out_tok or in_tok
        return [f"Record-Route: <sip:{user}{'@' if user else ''}{out_local.advertised};lr"
                f"{tp(out_local)};d={trust.mint_mark(call_id, tag, user)}>"]
    out_user = out_tok + "@" if out_tok else ""
    in_user = in_tok + "@" if in_tok else ""
    return [f"Record-Route: <sip:{out_user}{out_local.advertised};lr{tp(out_local)}"
            f";d={trust.mint_mark(call_id, tag, out_tok)}>",
            f"Record-Route: <sip:{in_user}{in_local.advertised};lr{tp(in_local)}"
            f";d={trust.mint_mark(call_id, tag, in_tok)}>"]


def token_for(core: ProxyCore, src: Source, local: LocalAddress) -> str:
    """The flow token (RFC 5626 5.2) of the flow ``src`` reached ``local`` over."""
    return core.tokens.token(src.transport, local.host, local.port, src.host, src.port,
                             src.conn_id, core._cluster.token_node)


def tp(local: LocalAddress) -> str:
    return "" if local.transport == "udp" else f";transport={local.transport}"


def local_for(core: ProxyCore, target: Target) -> LocalAddress:
    v6 = ":" in target.host
    for a in core.local:
        if a.transport == target.transport and (":" in a.host) == v6:
            return a
    for a in core.local:
        if a.transport == target.transport:
            return a
    return core.local[0]


def local_for_source(core: ProxyCore, src: Source) -> LocalAddress:
    v6 = ":" in src.host
    for a in core.local:
        if a.transport == src.transport and (":" in a.host) == v6:
            return a
    return core.local[0]


def signed_branch(core: ProxyCore, base: str) -> str:
    """A branch of a request that no response is relayed for (an upstream probe,
    :mod:`~proxy.core.probe`): ``base`` and a keyed MAC of it (BLAKE2s, 40 bits)."""
    mac = hashlib.blake2s(base.encode(), key=core.branch_key, digest_size=5).hexdigest()
    return f"{base}.{mac}"


def ack_target(core: ProxyCore, msg: SipMessage, src: Source, prep: routing.RoutePrep,
               now: float) -> Target | None:
    """Where an ACK for a 2xx goes (RFC 3261 16.11, 13.2.2.4), or None to drop it.

    An ACK names its next hop only when it comes from a trusted source (an upstream, a
    trusted relay), or is proven to be of a dialog through this proxy (a Route value of ours
    whose dialog mark verifies for its Call-ID and tags, :mod:`~proxy.core.access.trust`), or is of a dialog the
    proxy holds (:mod:`~proxy.core.proxy.dialogs`: the UAS did not copy Record-Route into its 2xx, RFC 3261
    12.1.1, so the ACK has no Route). A UA's ACK goes to an upstream or a registered binding
    only (:func:`~proxy.core.proxy.routing.decide`); a stranger's is dropped, counted against its source's
    rate (no open relay)."""
    trusted = routing.trusted_source(core, src)
    proven = not trusted and routing.prove(core, msg, prep)
    held = None if trusted or proven else core.dialogs.find(msg)
    if not (trusted or proven or held is not None):
        if core.limiter and not core.limiter.allow(src.host, now):
            core.stats["rate_limited"] += 1
            core.refusals.note("rate", src.host, now)
        elif core.refusals.note("relay", src.host, now):
            core.note(WARNING, "dropped ACK %s from %s:%s: not of a dialog through this proxy",
                        msg.request_uri, src.host, src.port)
        return None
    core.dialogs.on_request(msg, now)
    decision = routing.decide(core, msg, src, prep, now, trusted, proven, held)
    if isinstance(decision, routing.Forward) and decision.groups and decision.groups[0]:
        return decision.groups[0][0]
    if isinstance(decision, routing.Refuse) and core.refusals.note(decision.why, src.host, now):
        core.note(WARNING, "dropped ACK %s from %s:%s (%s): %s", msg.request_uri, src.host, src.port,
                    decision.why, decision.detail)
    return None


def on_ack(core: ProxyCore, msg: SipMessage, src: Source, now: float, out: Out) -> None:
    """RFC 3261 17.2.1: the ACK for a non-2xx final ends at this hop; the ACK for a 2xx is end
    to end (13.2.2.4) and is forwarded statelessly (16.11). The ACK for a final response the
    proxy sent statelessly (a refusal, :func:`~proxy.core.txns.refuse`) carries the proxy's own To tag
    and ends here too."""
    entry = core.table.find_server(msg, "INVITE")
    if entry is not None and entry.txn.state is not txns.ACCEPTED:
        txns.server_effects(core, entry, entry.txn.on_ack(now), out)
        return
    to_tag = msg.to_tag
    if to_tag is not None and to_tag.startswith(core.tag_prefix):
        core.stats["acks_absorbed"] += 1
        return
    prep = routing.preprocess_routes(core, msg)
    target = ack_target(core, msg, src, prep, now)
    if target is not None and target.transport != "tls" and needs_tls(msg.request_uri, target):
        target = None  # RFC 3261 26.2.2: never a SIPS request over UDP or TCP
    if target is None:
        core.stats["acks_dropped"] += 1
        return
    local = local_for(core, target)
    top = msg.top_via
    digest = crc32(f"{top.branch}|{top.host}|{top.port}".encode("latin-1", "replace"))
    # the branch: "z9hG4bK", the prefix, "s" and the CRC's 8 digits, padded (one string built)
    data = rewrite(
        msg,
        insert_top=[f"Via: SIP/2.0/{local.transport.upper()} {local.sent_by or local.advertised}"
                    f";branch=z9hG4bK{core.prefix}s{hex(digest | 0x100000000)[3:]}"],
        edits=prep.edits, append=prep.append,
    )
    out.sends.append(Send(target.transport, target.host, target.port, data, target.conn_id))
