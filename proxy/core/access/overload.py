"""Overload control: while the runtime says the proxy is overloaded (its event loop lags, or
it holds more transactions than ``limits.max_transactions``: :mod:`proxy.runtime.overload`),
new INVITEs and REGISTERs get ``503 Service Unavailable`` with ``Retry-After`` (RFC 3261
21.5.4) before any work is spent on them; everything else goes on.

The decision is taken in :meth:`ProxyCore.on_message` right after the parse, before
validation, the rate limit, routing or any transaction: a request that is neither an INVITE
nor a REGISTER, or that has a To tag (in a dialog, RFC 3261 12.2), an ACK, a CANCEL and every
response are served as always, so the calls already admitted complete (RFC 6357 section 2:
a server that sheds the work that would complete calls in progress collapses). A request
from an upstream (or a ``trusted_relays`` host) is served too: the PBX's own calls are the
ones the proxy exists to carry. A retransmission of a request already admitted (its server
transaction is held) is absorbed by it as usual, not refused.

The runtime says which share of those requests to refuse (RFC 7339's loss-based algorithm,
applied by the proxy itself: the share grows while the load stays over its bound and shrinks
as it falls, :mod:`proxy.runtime.overload`); the refusals are spread evenly over the requests
by an accumulator (a share of 0.25 refuses every fourth), no random draw.

The refusal is stateless (RFC 3261 16.11 lets a proxy answer without a transaction; nothing
retransmits it, nothing is held for Timer J or H): one response per request, counted as
``refusals_total{reason="overload"}``. Its To tag is the proxy's with a mark of its own
(:meth:`Overload.tag`), so that the caller's ACK of the 503 (RFC 3261 17.1.1.3: it ends at
this hop, 17.2.1) is recognised in the datagram's bytes and absorbed before it is parsed
(:func:`absorb_ack`): a refusal costs the INVITE's parse and one response, not a second
parse. An ACK that is not found so (the tag written ``tag = ...``) is absorbed as before, by
the proxy's tag, after the parse. ``Retry-After`` spreads the retries over
:data:`RETRY_AFTER` seconds (RFC 6357 section 3.3: senders told the same delay come back
together). One log line when an episode starts and one when it ends, with how many requests
were refused (:func:`set_state`), handed out as :class:`~proxy.core.effects.LogLine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.core import txns
from proxy.core.effects import INFO, WARNING, Out
from proxy.core.proxy import routing
from proxy.core.types import Source
from proxy.sip import SipMessage

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

#: the methods that start work refused in overload (a call, a registration)
SHED: Final = frozenset(("INVITE", "REGISTER"))
#: the ``Retry-After`` headers, one after the other (2 to 5 seconds)
RETRY_AFTER: Final = tuple((f"Retry-After: {n}",) for n in (2, 3, 4, 5))


class Overload:
    """The episode in progress, if any: why, since when, the share of new INVITEs and
    REGISTERs to refuse, how many it refused and admitted."""

    __slots__ = ("admitted", "credit", "episodes", "mark", "prefix", "reason", "refused",
                 "share", "since", "stale")

    def __init__(self, tag_prefix: str = "") -> None:
        #: the To tags of the refusals: the proxy's ``tag_prefix``, then ``o`` (its other
        #: tags go on in hex digits: none of them starts so) ...
        self.prefix = f"{tag_prefix}o"
        #: ... and so what the bytes of an ACK of a refusal hold
        self.mark = f"tag={self.prefix}".encode("ascii")
        self.reason: str | None = None
        self.since = 0.0
        self.share = 0.0  # of the new INVITEs and REGISTERs refused, 0 < share <= 1
        self.credit = 0.0  # the accumulator spreading the refusals
        self.refused = 0
        self.stale = 0  # of the refused: for having waited past the bound
        self.admitted = 0
        self.episodes = 0

    def tag(self) -> str:
        """The To tag of the next refusal."""
        return f"{self.prefix}{self.refused:x}"


def absorb_ack(core: ProxyCore) -> Out:
    """An ACK of a refusal (its bytes hold :attr:`Overload.mark`): it ends here (RFC 3261
    17.2.1; no transaction was made), counted like every request and nothing else."""
    core.stats["requests_in"] += 1
    core.metrics.request("ACK")
    core.stats["acks_absorbed"] += 1
    return Out()


def set_state(core: ProxyCore, reason: str | None, share: float, now: float, out: Out) -> Out:
    """Start or go on with (``reason``: what the runtime measured; ``share``: of the new
    INVITEs and REGISTERs to refuse) or end (None) an overload episode; one log line at each
    edge; returns ``out``."""
    ov = core.overload
    if reason is not None and ov.reason is None:
        ov.since, ov.refused, ov.admitted, ov.credit, ov.stale = now, 0, 0, 0.0, 0
        ov.episodes += 1
        out.line(WARNING, "overload: %s; new INVITEs and REGISTERs get 503 with Retry-After "
                 "(as many as needed) until it passes", reason)
    elif reason is None and ov.reason is not None:
        out.line(INFO, "overload over after %.1f s: %d new INVITEs and REGISTERs refused (%d "
                 "of them for having waited past the bound), %d admitted (%s)", now - ov.since,
                 ov.refused, ov.stale, ov.admitted, ov.reason)
    ov.reason = reason
    ov.share = min(max(share, 0.0), 1.0) if reason is not None else 0.0
    core.shedding = reason is not None
    return out


def shed(core: ProxyCore, msg: SipMessage, src: Source, now: float, out: Out,
         stale: bool = False) -> bool:
    """Refuse ``msg`` (a request, the proxy overloaded) if it is a new INVITE or REGISTER
    from a source not trusted: its share of them, and every one that is ``stale`` (it
    waited in the proxy past the bound: CoDel's drop from the front, RFC 8289 5; admitting
    it would give a call whose set-up already took longer than the bound allows, and its
    place to a fresher one); True when refused (a stateless 503 in ``out``)."""
    if msg.method not in SHED or msg.to_tag is not None or routing.trusted_source(core, src):
        return False
    if core.table.find_server(msg, msg.method) is not None:
        return False  # a retransmission of a request admitted: its transaction absorbs it
    ov = core.overload
    if stale:
        ov.stale += 1
    else:
        ov.credit += ov.share
        if ov.credit < 1.0:
            ov.admitted += 1
            return False
        ov.credit -= 1.0
    ov.refused += 1
    core.refusals.counts["overload"] += 1
    out.send(txns.reject(core, msg, src, 503, reason="Service Unavailable",
                         headers=RETRY_AFTER[ov.refused & 3], to_tag=ov.tag()))
    return True
