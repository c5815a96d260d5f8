"""The core's registrar glue: the local registrar (RFC 3261 10.3) with its access rules and
digest authentication (22.4, RFC 8760), Path / Outbound for an upstream registrar
(RFC 3327, RFC 5626 5.1, 6), bindings learned from an upstream's 2xx, and the expiry timer of
the location service (README "Registrations and digest authentication").

Who may change which bindings (RFC 3261 10.3 steps 2-3 leave the authorization to the
registrar): a REGISTER from ``registrar_networks`` may register any address-of-record; any
other needs digest credentials, and an authenticated user registers only AORs whose user part
is its own name (written as the canonical escaped form, so that one user has one AOR per
domain) in a domain of ``domains``, or the realm when ``domains`` is empty. Bindings are
capped per AOR (``registrar_max_contacts``), per authenticated user over all its AORs (the
same number) and in total (``registrar_max_bindings``); a REGISTER past a cap gets 403 and
changes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core import txns
from proxy.core.context import ResponseContext, ServerEntry
from proxy.core.effects import INFO, WARNING, Out
from proxy.core.outbound import flows as outbound
from proxy.core.proxy import forward, routing
from proxy.core.registrar.digest import AuthOutcome, may_register
from proxy.core.registrar.expiry import schedule_expiry
from proxy.core.registrar.location import (
    RegistrarError,
    binding_from_contact,
    contact_lines,
    register,
)
from proxy.core.types import Source
from proxy.sip import ParseError, SipMessage, SipUri, unescape

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore



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
        user: str | None = None
        if src.host not in s.registrar_networks:
            user = registrar_auth(core, entry, msg, src, now, out)
            if user is None:
                return
        _, bindings = register(core.location, msg, src, now,
                               max_contacts=s.registrar_max_contacts,
                               room=room_for(core, user, now))
    except RegistrarError as exc:
        if exc.status == 403 and core.refusals.note("registrar_limit", src.host, now):
            core.note(WARNING, "REGISTER for %s from %s:%s refused: %s", msg.get("to"), src.host,
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


_USER_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                       "-_.!~*'()&=+$,;?/")  # RFC 3261 25.1: unreserved / user-unreserved


def user_part(user: str) -> str:
    """A user name as the user part of a SIP URI, in canonical form: what RFC 3261 25.1
    allows written as it is, everything else escaped (UTF-8, upper-case hex)."""
    if all(c in _USER_SAFE for c in user):
        return user
    return "".join(c if c in _USER_SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in user)


def user_domains(core: ProxyCore) -> frozenset[str]:
    """The domains an authenticated user may register in: ``domains``, or the realm."""
    s = core.settings
    if s.domains:
        return s.domains
    return frozenset((s.auth.realm.lower(),)) if s.auth is not None else frozenset()


def owner_refusal(core: ProxyCore, user: str, uri: SipUri) -> str | None:
    """Why ``user`` may not register ``uri`` (None: it may): its user part must be the
    user's name in canonical form, its host a domain of the user (:func:`user_domains`)."""
    if uri.user is None or unescape(uri.user) != user:
        return f"user {user} may not register {uri.aor} (not its own user part)"
    if uri.user != user_part(user):
        return f"user {user} may not register {uri.aor}: write its user part as {user_part(user)}"
    if uri.host.lower() not in user_domains(core):
        return f"user {user} may not register {uri.aor}: not a domain of the registrar"
    return None


def room_for(core: ProxyCore, user: str | None, now: float) -> int:
    """How many bindings a REGISTER may add: what is left of ``registrar_max_bindings`` and,
    for an authenticated user, of its ``registrar_max_contacts`` over all its AORs."""
    s = core.settings
    location = core.location
    held = -1
    if user is not None:
        name = user_part(user)
        held = sum(len(location.lookup(f"{name}@{d}", now)) for d in user_domains(core))
    room = s.registrar_max_bindings - location.count()
    if held >= 0:
        room = min(room, s.registrar_max_contacts - held)
    return room


def registrar_auth(
    core: ProxyCore, entry: ServerEntry, msg: SipMessage, src: Source, now: float, out: Out
) -> str | None:
    """README, registrations: from outside ``registrar_networks`` a REGISTER needs valid
    digest credentials (RFC 3261 22.4, RFC 8760) of the user whose AOR it registers.
    Returns the authenticated user (go on), or None: answered (401 with a challenge, or
    403). Every refusal is counted by reason and logged once a minute per source."""
    auth = core.settings.auth
    if auth is None:
        txns.refuse(core, entry, msg, src, "registrar", 403, "Forbidden", now, out,
                    "not from registrar_networks and no auth configured")
        return None
    uri = msg.to.uri
    if not isinstance(uri, SipUri):
        raise RegistrarError(400, "To is not a SIP or SIPS URI")  # RFC 4475 unksm2

    def holds(user: str) -> bool:
        # The source is where a phone of this user is registered from: a guesser elsewhere
        # cannot lock that phone out (proxy.core.registrar.auth_failures).
        return may_register(user, uri.aor) and any(
            b.flow.host == src.host for b in core.location.lookup(uri.aor, now))

    result = auth.check(msg, now, src.host, holds)
    outcome = result.outcome
    if outcome is AuthOutcome.OK:
        assert result.user is not None
        why = owner_refusal(core, result.user, uri)
        if why is None:
            return result.user
        txns.refuse(core, entry, msg, src, "registrar_owner", 403, "Forbidden", now, out, why)
        return None
    if outcome is AuthOutcome.FORBIDDEN or outcome is AuthOutcome.BLOCKED:
        reason = "auth_failed" if outcome is AuthOutcome.FORBIDDEN else "auth_blocked"
        txns.refuse(core, entry, msg, src, reason, 403, "Forbidden", now, out, result.reason)
        return None
    stale = outcome is AuthOutcome.STALE
    core.stats["registrar_stale" if stale else "registrar_challenges"] += 1
    txns.respond(core, entry, msg, 401, now, out, reason="Unauthorized",
                 headers=auth.challenge(now, stale=stale))
    return None


def upstream_path(core: ProxyCore, msg: SipMessage, src: Source) -> tuple[str, str] | None:
    """RFC 3327 5.2 / RFC 5626 5.1: a REGISTER to an upstream registrar gets Path with the
    flow token of the UA's flow, and ";ob" for an outbound registration; each branch names
    the proxy as its registrar reaches it (forward.branch_bytes).

    ``path: always`` (the default, as Kamailio's add_path): every REGISTER, so that the
    registrar routes requests for the phone through the proxy although most phones do not
    send ``Supported: path`` (RFC 3327 5.2 says a proxy SHOULD NOT add Path then; the
    registrar stores it all the same, and the proxy stays on the path of calls to the
    phone). ``path: when_supported``: only with ``Supported: path`` (RFC 3327's reading)."""
    s = core.settings
    if msg.method != "REGISTER" or s.registrar_local or (
            not s.path_always and not routing.supports(msg, "path")):
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
        s = core.settings
        # registrar_max_bindings bounds what the proxy holds, whatever the registrar accepts.
        room = s.registrar_max_bindings - (location.count() - len(known))
        location.remove_all(aor)
        dropped = 0
        for c in msg.contacts[: s.registrar_max_contacts]:
            raw = c.params.get("expires")
            expires = int(raw) if raw is not None and raw.isdigit() else (msg.expires or 0)
            key = str(c.uri)
            if expires <= 0:
                continue
            if key in sent:
                # This REGISTER's own contact: its flow is where the REGISTER came from.
                b = binding_from_contact(aor, sent[key], expires, req, req.cseq[0],
                                         ctx.source, now)
            elif key in known:
                # Another device's binding, learned from its own REGISTER: keep its flow.
                b = known[key]
                b.expires_at = now + expires
            else:
                continue  # a contact registered elsewhere has no flow through this proxy
            if room <= 0:
                dropped += 1
                continue
            room -= 1
            location.save(b)
        if dropped and core.refusals.note("registrar_limit", ctx.source.host, now):
            core.note(WARNING, "registrar_max_bindings (%d) reached: %d binding(s) of %s from the "
                        "registrar's 2xx not kept; counted, logged once a minute",
                        s.registrar_max_bindings, dropped, aor)
    except (ParseError, RegistrarError) as exc:
        core.note(INFO, "could not learn bindings from REGISTER 2xx: %s", exc)
    schedule_expiry(core)
