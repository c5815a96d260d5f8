"""Redirects (RFC 3261 16.5 recursion, 16.7 step 4) and learned routes (docs/BEHAVIOUR.md, routing).

A followed 3xx puts its Contacts in front of the target set; a permanent one (or a 302 with
an expiry) is also learned as a Request-URI rewrite. A learned route must be durable before
the context goes on: :func:`redirect` hands a :class:`~proxy.core.effects.StoreWrite` out, and
the runtime calls back ``ProxyCore.on_persisted``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.context import Branch, ContextEvent, ResponseContext
from proxy.core.effects import ERROR, INFO, WARNING, Out, StoreWrite
from proxy.core.proxy import final, forward, routing
from proxy.core.proxy.final import no_headers
from proxy.core.types import Source, Target
from proxy.policy import Decision
from proxy.sip import (
    NameAddr,
    SipMessage,
    SipUri,
)
from proxy.store.base import LearnedRoute

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore



def redirect(
    core: ProxyCore, ctx: ResponseContext, br: Branch, status: int, msg: SipMessage,
    decision: Decision, src: Source | None, now: float, out: Out,
) -> bool:
    """Recurse on the Contacts of a 3xx; True when the context took them over.

    Each URI is tried at most once per context; never from SIPS down to SIP; URI headers
    are stripped (RFC 3261 8.1.3.4); only from trusted sources and to allowed targets
    (RFC 3261 26.1.2); at most ``max_redirects`` 3xx per context. A 3xx with no usable
    Contact stays in the context and is forwarded like any response.
    """
    guard = core.guard
    if src is not None and guard is not None and not guard.source_trusted(src.host) and not (
            guard.trust_upstreams and (src.host, src.port) in core._upstream_addrs):
        core.note(WARNING, "%s from %s:%s not followed: untrusted source "
                  "(redirects.trusted_sources)",
                    status, src.host, src.port)
        core.stats["redirects_refused"] += 1
        core.metrics.redirects["refused"] += 1
        return False
    if ctx.redirects >= decision.max_redirects:
        core.note(INFO, "%s not followed: max_redirects %d reached (Call-ID %s)", status,
                 decision.max_redirects, ctx.live_request.call_id)
        return False
    chosen = _usable_contacts(core, ctx, msg)
    if not chosen:
        return False
    ctx.redirects += 1
    core.stats["redirects_followed"] += 1
    core.metrics.redirects["followed"] += 1
    chosen.sort(key=lambda item: -item[0])
    if all(str(no_headers(c.uri)) in ctx.recursed for c in msg.contacts):
        ctx.drop_response(msg)  # 16.7 step 4: a contact-less 3xx is not kept
    by_q: dict[float, list[Target]] = {}
    for q, u, _ in chosen:
        t = routing.target_for_uri(u, request_uri=str(u), q=q)
        assert t is not None
        by_q.setdefault(q, []).append(t)
    ctx.groups[0:0] = [by_q[q] for q in sorted(by_q, reverse=True)]
    ttl = learn_ttl(core, status, msg, chosen[0][2], decision)
    if ttl > 0 and src is not None:
        # The rewrite of the URI this branch was sent to (docs/BEHAVIOUR.md, routing): one binding of
        # a forked user, or one link of a chain (A->B, then B->C), not the whole user.
        old = br.target.request_uri or ctx.live_request.request_uri
        new = str(chosen[0][1])
        wall = now + core._wall_offset
        route = LearnedRoute(old, new, f"{src.host}:{src.port}", ctx.live_request.call_id,
                             status, wall, wall + ttl)
        core._learned[old] = (new, now + ttl)
        out.write(StoreWrite(route, ctx))
        core.metrics.redirects["learned"] += 1
        ctx.fire(ContextEvent.STORE_WRITE)  # acted on once the write is durable
        core.note(INFO, "learned %s -> %s for %d s from %s:%s (%s)", old, new, ttl, src.host,
                 src.port, status)
        return True
    return forward.next_group(core, ctx, now, out)


def _usable_contacts(
    core: ProxyCore, ctx: ResponseContext, msg: SipMessage
) -> list[tuple[float, SipUri, NameAddr]]:
    """The 3xx's Contacts the context may recurse on (RFC 3261 16.5, 8.1.3.4, 26.1.2)."""
    guard = core.guard
    req_uri = ctx.live_request.uri
    sips = isinstance(req_uri, SipUri) and req_uri.scheme == "sips"
    chosen: list[tuple[float, SipUri, NameAddr]] = []
    for c in msg.contacts:
        u = c.uri
        if not isinstance(u, SipUri) or (sips and u.scheme != "sips"):
            continue
        u = u.without_headers()
        text = str(u)
        if text in ctx.recursed:
            continue
        reason = guard.check_target(u) if guard is not None else None
        if reason is not None:
            core.note(WARNING, "redirect to %s refused: %s", text, reason)
            core.stats["redirects_refused"] += 1
            core.metrics.redirects["refused"] += 1
            continue
        ctx.recurse(text)
        chosen.append((_q(c), u, c))
    return chosen


def learn_ttl(core: ProxyCore, status: int, msg: SipMessage, contact: NameAddr,
              decision: Decision) -> int:
    """How long a followed 3xx is remembered: a permanent rule's 301 until its expiry (or
    redirects.max_ttl); a 302 only for its own expires (RFC 3261 21.3.3)."""
    raw = contact.params.get("expires")
    expires: int | None = int(raw) if raw is not None and raw.isdigit() else msg.expires
    max_ttl = core.settings.max_ttl
    if decision.permanent:
        ttl = max_ttl if expires is None else expires
    elif status == 302 and expires is not None:
        ttl = expires
    else:
        return 0
    return max(0, min(ttl, max_ttl))


def persisted(core: ProxyCore, ctx: ResponseContext, ok: bool, now: float, out: Out) -> None:
    """The learned route of ``ctx`` was written (or the write failed): go on."""
    ctx.fire(ContextEvent.STORED)
    if not ok:
        core.note(ERROR, "learned route for %s could not be stored; following it anyway",
                  ctx.live_request.request_uri)
    if ctx.final_sent:
        return
    if ctx.may_branch and forward.next_group(core, ctx, now, out):
        return
    if ctx.pending == 0:
        final.send_best(core, ctx, now, out)


def _q(c: NameAddr) -> float:
    raw = c.params.get("q")
    try:
        return float(raw) if raw is not None else 1.0
    except ValueError:
        return 0.0
