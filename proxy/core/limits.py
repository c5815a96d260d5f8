"""``limits.per_source_rps``: initial requests above the rate of their source IP get 503 with
``Retry-After`` (RFC 3261 21.5.4; RFC 6357 names the overload this keeps a stranger from
causing).

Only initial requests count: responses, ACK, CANCEL and in-dialog requests (a To tag) are never
limited, and neither are the upstreams nor ``trusted_relays`` (they are judged by the packet's
source, as everywhere in :mod:`proxy.core.access`). An INVITE is refused through a server
transaction, so that its ACK and retransmissions are absorbed; any other request gets a
stateless 503, so that a flood creates no state. Each refusal is counted
(``core.refusals.counts["rate"]``) and logged at most once per source per minute.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.core import routing, txns
from proxy.core.effects import Out
from proxy.core.types import Source
from proxy.sip import SipMessage

if TYPE_CHECKING:
    from proxy.core.proxy import ProxyCore

log = logging.getLogger("proxy.core")

RETRY_AFTER = ("Retry-After: 1",)


def over_rate(core: ProxyCore, msg: SipMessage, src: Source, key: str, now: float,
              out: Out) -> bool:
    """True when the request was refused for its source's rate (and answered into ``out``)."""
    limiter = core.limiter
    if not limiter or msg.to_tag is not None or routing.trusted_source(core, src):
        return False
    if limiter.allow(src.host, now):
        return False
    core.stats["rate_limited"] += 1
    if core.refusals.note("rate", src.host, now):
        log.warning("refused %s %s from %s:%s (rate): 503, over %d initial requests per "
                    "second from this source; counted, logged once a minute per source",
                    msg.method, msg.request_uri, src.host, src.port, int(limiter.rate))
    if msg.method == "INVITE":
        entry = txns.new_server(core, key, msg, src, now)
        txns.respond(core, entry, msg, 503, now, out, headers=RETRY_AFTER)
    else:
        out.send(txns.reject(core, msg, src, 503, headers=RETRY_AFTER))
    return True
