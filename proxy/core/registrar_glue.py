"""The core's registrar glue: the local registrar (RFC 3261 10.3) with its access rules and
digest authentication (22.4, RFC 8760), Path / Outbound for an upstream registrar
(RFC 3327, RFC 5626 5.1, 6), bindings learned from an upstream's 2xx, and the expiry timer of
the location service (CONTRACT registrar)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from proxy.core import forward, outbound, routing, txns
from proxy.core.context import ResponseContext, ServerEntry
from proxy.core.digest import AuthOutcome, may_register
from proxy.core.effects import Out
from proxy.core.registrar import (
    RegistrarError,
    aor_of,
    binding_from_contact,
    contact_lines,
    register,
)
from proxy.core.types import Source
from proxy.sip import ParseError, SipMessage, SipUri

if TYPE_CHECKING:
    from proxy.core.proxy import ProxyCore

log = logging.getLogger("proxy.core")


class Expiry:
    """The location service's timer: expired bindings leave memory when it fires (CONTRACT
    registrar), on whole seconds so that many bindings expire in one pass."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline: float | None = None


def _outbound_reg(msg: SipMessage) -> bool:
    return any("reg-id" in c.params for c in msg.contacts)


def local_register(
    core: ProxyCore, entry: ServerEntry, msg: SipMessage, src: Source, now: float, out: Out
) -> None:
    """RFC 3261 10.3: the local registrar answers the REGISTER."""
    s = core.settings
    try:
        if s.domains:
            to_uri = msg.to.uri
            if isinstance(to_uri, SipUri) and to_uri.host not in s.domains:
                raise RegistrarError(404, "Domain Not Served")
        if src.host not in s.registrar_networks and not registrar_auth(
                core, entry, msg, src, now, out):
            return
        _, bindings = register(core.location, msg, src, now,
                               max_contacts=s.registrar_max_contacts)
    except RegistrarError as exc:
        if exc.status == 403 and core.refusals.note("registrar_limit", src.host, now):
            log.warning("REGISTER for %s from %s:%s refused: %s", msg.get("to"), src.host,
                        src.port, exc.reason)
        txns.respond(core, entry, msg, exc.status, now, out, reason=exc.reason,
                     headers=exc.headers)
        return
    schedule_expiry(core)
    headers = contact_lines(bindings, now)
    if src.transport == "udp" and _outbound_reg(msg):
        core.udp_flows[(src.host, src.port)] = now
    if routing.supports(msg, "outbound") and _outbound_reg(msg):
        # RFC 5626 6: the registrar supports outbound; Flow-Timer tells the UA how often to
        # send its keep-alives (4.4.1).
        headers += ["Require: outbound", f"Flow-Timer: {outbound.FLOW_TIMER}"]
    txns.respond(core, entry, msg, 200, now, out, headers=tuple(headers))


def registrar_auth(
    core: ProxyCore, entry: ServerEntry, msg: SipMessage, src: Source, now: float, out: Out
) -> bool:
    """CONTRACT registrar: from outside ``registrar_networks`` a REGISTER needs valid
    digest credentials (RFC 3261 22.4, RFC 8760) of the user whose AOR it registers.
    True: go on; False: answered (401 with a challenge, or 403)."""
    auth = core.settings.auth
    if auth is None:
        txns.refuse(core, entry, msg, src, "registrar", 403, "Forbidden", now, out,
                    "not from registrar_networks and no auth configured")
        return False
    result = auth.check(msg, now)
    if result.outcome is AuthOutcome.OK:
        assert result.user is not None
        if may_register(result.user, aor_of(msg)):
            return True
        txns.refuse(core, entry, msg, src, "registrar", 403, "Forbidden", now, out,
                    f"user {result.user} may not register {aor_of(msg)}")
        return False
    if result.outcome is AuthOutcome.FORBIDDEN:
        txns.refuse(core, entry, msg, src, "registrar", 403, "Forbidden", now, out,
                    result.reason)
        return False
    core.stats["registrar_challenges"] += 1
    stale = result.outcome is AuthOutcome.STALE
    txns.respond(core, entry, msg, 401, now, out, reason="Unauthorized",
                 headers=auth.challenge(now, stale=stale))
    return False


def upstream_path(core: ProxyCore, msg: SipMessage, src: Source) -> tuple[str, str] | None:
    """RFC 3327 5.2 / RFC 5626 5.1: a REGISTER to an upstream registrar gets Path with the
    flow token of the UA's flow, and ";ob" for an outbound registration; each branch names
    the proxy as its registrar reaches it (forward.branch_bytes)."""
    if msg.method != "REGISTER" or core.settings.registrar_local or not routing.supports(
            msg, "path"):
        return None
    ob = ";ob" if _outbound_reg(msg) else ""
    return (forward.token_for(core, src, forward.local_for_source(core, src)), ob)


def learn_bindings(core: ProxyCore, ctx: ResponseContext, msg: SipMessage, now: float) -> None:
    """registrar: upstream: learn the AOR's bindings from the registrar's 2xx."""
    req = ctx.live_request
    location = core.location
    try:
        uri = req.to.uri
        if not isinstance(uri, SipUri):
            return
        aor = uri.aor
        sent = {str(c.uri): c for c in req.contacts}
        known = {b.uri: b for b in location.lookup(aor, now)}
        location.remove_all(aor)
        for c in msg.contacts[: core.settings.registrar_max_contacts]:
            raw = c.params.get("expires")
            expires = int(raw) if raw is not None and raw.isdigit() else (msg.expires or 0)
            key = str(c.uri)
            if expires <= 0:
                continue
            if key in sent:
                # This REGISTER's own contact: its flow is where the REGISTER came from.
                location.save(binding_from_contact(
                    aor, sent[key], expires, req, req.cseq[0], ctx.source, now))
            elif key in known:
                # Another device's binding, learned from its own REGISTER: keep its flow.
                b = known[key]
                b.expires_at = now + expires
                location.save(b)
            # A contact registered elsewhere has no flow through this proxy: not ours.
    except (ParseError, RegistrarError) as exc:
        log.info("could not learn bindings from REGISTER 2xx: %s", exc)
    schedule_expiry(core)


def schedule_expiry(core: ProxyCore) -> None:
    nxt = core.location.next_expiry()
    if nxt is None:
        return
    d = float(math.ceil(nxt))
    cur = core.expiry.deadline
    if cur is None or d < cur:
        core.expiry.deadline = d
        core.queue.schedule(core.expiry)


def expire(core: ProxyCore, now: float) -> None:
    """The expiry timer fired: expired bindings leave the location service."""
    core.expiry.deadline = None
    gone = core.location.expire(now)
    core.stats["bindings_expired"] += len(gone)
    schedule_expiry(core)
