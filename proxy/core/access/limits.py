"""``limits.per_source_rps``: requests above the rate of their source IP get 503 with
``Retry-After`` (RFC 3261 21.5.4; RFC 6357 names the overload this keeps a stranger from
causing).

What costs is counted: every request that no live transaction matches (a retransmission is
absorbed by its transaction before this) and that nothing vouches for, To tag or not: a
CANCEL of no transaction (:mod:`proxy.core.cancel`), an ACK of no dialog
(:mod:`proxy.core.forward`), and a request the proxy would answer 400 (or 416, 420, 483 ...)
without parsing further (:func:`over_rate_unanswered`) too. A source is an IPv4 address or an
IPv6 /64 (:class:`proxy.core.access.RateLimiter`). A
request is vouched for by its source (an upstream or a ``trusted_relays`` host, judged by the
packet's source as everywhere in :mod:`proxy.core.access.sources`), by a dialog mark of ours for its
own Call-ID and tags (:mod:`proxy.core.access.trust`), or by a dialog the proxy holds
(:mod:`proxy.core.proxy.dialogs`); an invented To tag vouches for nothing. Responses are never
limited. The 503 is sent once, statelessly (:func:`proxy.core.txns.refuse`): it creates no
transaction, so an INVITE refused without an ACK gets one 503, not eleven retransmissions
over 32 s (no amplification). Each refusal is counted (``core.refusals.counts["rate"]``) and
logged at most once per source per minute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core import txns
from proxy.core.effects import WARNING, Out
from proxy.core.proxy import routing
from proxy.core.types import Source
from proxy.sip import SipMessage

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


RETRY_AFTER = ("Retry-After: 1",)


def over_rate(core: ProxyCore, msg: SipMessage, src: Source, now: float, out: Out,
              token: str | None = None) -> bool:
    """True when the request is over its source's rate and was refused (a stateless 503 in
    ``out``); the caller has checked that nothing vouches for it. A request with a flow token
    (``token``) that another proxy of the shared state forwarded is not refused: that node
    hands this one the calls for the flows it holds (checked only once over the rate)."""
    limiter = core.limiter
    if not limiter or limiter.allow(src.host, now):
        return False
    if token is not None and routing.peer_source(core, msg, src, now):
        return False
    core.stats["rate_limited"] += 1
    txns.refuse(core, None, msg, src, "rate", 503, "Service Unavailable", now, out,
                f"over {int(limiter.rate)} requests per second from this source",
                headers=RETRY_AFTER)
    return True


def over_rate_unanswered(core: ProxyCore, src: Source, now: float) -> bool:
    """For a request the proxy would refuse before any routing (malformed, invalid): True when
    its source, which nothing vouches for, is over its rate; it is then dropped without an
    answer (a refusal must cost less than the request), counted and logged like the others.
    (A request found malformed only while it was routed has been counted once already: it
    pays twice.)"""
    limiter = core.limiter
    if not limiter or routing.trusted_source(core, src) or limiter.allow(src.host, now):
        return False
    core.stats["rate_limited"] += 1
    if core.refusals.note("rate", src.host, now):
        core.note(WARNING, "dropped a malformed request from %s:%s: over %d requests per "
                  "second from this source (rate)", src.host, src.port, int(limiter.rate))
    return True
