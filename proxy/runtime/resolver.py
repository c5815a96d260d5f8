"""Locating SIP servers (RFC 3263 4.1-4.2, and section 5 for responses) and the address
written into Via.

:meth:`Resolver.targets` turns what a SIP URI names (a :class:`Hop`: host, port and transport
when given, sips:) into the ordered addresses to try (:class:`Targets`):

- a numeric IP: itself; a port: A/AAAA only (4.2); a transport: its SRV only, no NAPTR (4.1);
- otherwise NAPTR (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T`` for the transports the proxy has;
  order, then preference; a sips: URI takes ``SIPS+D2T`` only), then the SRV records the
  chosen NAPTR records name, or, without NAPTR, ``_sip._udp``, ``_sip._tcp`` and ``_sips._tcp``
  of the domain; then A/AAAA of each SRV target; without any SRV record, A/AAAA of the domain
  on the default port (5060, 5061 for TLS);
- SRV order (RFC 2782): lowest priority first; within a priority a weighted random order
  (zero weights first, then the running-sum draw), with the ``rng`` given (seeded in tests).
  A target of "." means the service is not offered (no A/AAAA fallback).

The questions go through :class:`~proxy.runtime.dns.DnsClient` (its cache, bounds and
failure handling). :class:`~proxy.runtime.sends.SendResolver` uses this for each
:class:`Send` whose host is a name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable
from typing import NamedTuple

from proxy.config import Config
from proxy.core.upstream_targets import weighted_order
from proxy.runtime.dns import MAX_RECORDS, Answer, DnsClient, DnsFailure, Naptr, Srv
from proxy.sip import format_host

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
#: RFC 3263 4.1 / RFC 3403: the NAPTR services this proxy can use, and their transport
NAPTR_SERVICES = {"sip+d2u": "udp", "sip+d2t": "tcp", "sips+d2t": "tls"}
#: RFC 3263 4.1: the SRV names without NAPTR (TLS: "_sips" over TCP, for sip: URIs too)
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
#: the most addresses one resolution returns, and the most SRV targets it looks up
MAX_TARGETS = 32
#: NAPTR records followed per resolution (each names one SRV set)
MAX_NAPTR = 4


class Hop(NamedTuple):
    """What RFC 3263 resolves: the host of a SIP URI, and its port and transport as written
    (None when the URI names none); ``secure`` for a sips: URI."""

    host: str
    port: int | None = None
    transport: str | None = None
    secure: bool = False


class Resolved(NamedTuple):
    """One address to try: transport, IP, port; ``name`` is the host it is the address of
    (the SRV target, or the URI's host), with the SRV record's priority and weight, and
    ``service`` the SRV name the record is of ("" without SRV)."""

    transport: str
    host: str
    port: int
    name: str
    priority: int = 0
    weight: int = 0
    service: str = ""


class Targets(NamedTuple):
    """The addresses of a :class:`Hop` in the order to try them; ``expires`` (the client's
    clock) is the smallest TTL of the answers used; ``failed``: some question got no answer
    (a server failed), so an empty list may not be the last word."""

    targets: tuple[Resolved, ...]
    expires: float
    failed: bool = False


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def srv_order(records: tuple[Srv, ...] | list[Srv], rng: random.Random) -> list[Srv]:
    """RFC 2782 "Usage rules": lowest priority first; within a priority, records of weight 0
    first, then the weighted draw (:func:`proxy.core.upstream_targets.weighted_order`)."""
    out: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight > 0)
        out.extend(group[i] for i in weighted_order([r.weight for r in group], rng))
    return out


class Resolver:
    """RFC 3263 over a :class:`DnsClient`: :meth:`targets`.

    ``transports``: what the proxy can send over (its listeners); ``families``: the address
    records to ask ("A" for IPv4, "AAAA" for IPv6, in order of preference); ``rng`` draws the
    SRV weights (RFC 2782).
    """

    def __init__(self, client: DnsClient | None = None, *,
                 transports: tuple[str, ...] = TRANSPORTS,
                 families: tuple[str, ...] = ("A", "AAAA"),
                 rng: random.Random | None = None) -> None:
        self.dns = client if client is not None else DnsClient()
        self.transports = transports
        self.families = families
        self.rng = rng if rng is not None else random.Random()

    async def targets(self, hop: Hop, transports: tuple[str, ...] | None = None,
                      limit: int = MAX_TARGETS) -> Targets:
        """The addresses to try for ``hop`` over ``transports`` (default: the proxy's), at
        most ``limit`` (the first one is enough to send a message)."""
        run = _Run(self, min(limit, MAX_TARGETS))
        allowed = tuple(t for t in (transports or self.transports) if t in TRANSPORTS)
        if hop.secure:
            allowed = tuple(t for t in allowed if t == "tls")  # RFC 3261 26.2.2
        if hop.transport is not None:
            allowed = (hop.transport,) if hop.transport in allowed else ()
        if not allowed:
            return Targets((), self.dns.clock() + 60.0)
        host = hop.host.lower().rstrip(".")
        first = "tls" if hop.secure else ("udp" if "udp" in allowed else allowed[0])
        if is_ip(host):  # 4.1: numeric, the URI's or the default transport and port
            t = hop.transport or first
            return Targets((Resolved(t, host, hop.port or DEFAULT_PORT[t], host),),
                           self.dns.clock() + 86400.0)
        if hop.port is not None:  # 4.2: a port: A/AAAA only
            await run.addresses(host, hop.port, hop.transport or first)
        elif hop.transport is not None:  # 4.1: a transport: its SRV only
            await run.srv([(SRV_PREFIX[hop.transport] + host, hop.transport)])
        else:
            services = await run.naptr(host, allowed)
            # 4.1: without NAPTR, the SRV of each transport the proxy has
            await run.srv(services or [(SRV_PREFIX[t] + host, t) for t in allowed])
        if hop.port is None and not (run.srv_found or run.srv_failed):
            # 4.2: no SRV record: A/AAAA of the domain, default port
            t = hop.transport or first
            await run.addresses(host, DEFAULT_PORT[t], t)
        return run.result()


def resolver_for(config: Config, clock: Callable[[], float]) -> Resolver:
    """The resolver of a running proxy: the configured DNS servers (or the system's), the
    transports it listens on, the address families of its listeners (IPv4 first)."""
    listen = config.listen
    transports = tuple(t for t in TRANSPORTS if any(li.transport == t for li in listen))
    families = tuple(f for f, ok in (("A", any(":" not in li.host for li in listen)),
                                     ("AAAA", any(":" in li.host for li in listen))) if ok)
    return Resolver(DnsClient(config.dns.servers, clock=clock), transports=transports,
                    families=families)


class _Run:
    """One resolution: the addresses found so far, the earliest expiry, whether any question
    failed."""

    __slots__ = ("expires", "failed", "limit", "out", "resolver", "srv_failed", "srv_found")

    def __init__(self, resolver: Resolver, limit: int) -> None:
        self.resolver = resolver
        self.limit = limit
        self.out: list[Resolved] = []
        self.expires = resolver.dns.clock() + 86400.0
        self.failed = False
        self.srv_found = False  # some SRV record (even ".") exists: no A/AAAA fallback
        self.srv_failed = False  # some SRV question got no answer: no A/AAAA fallback either

    def result(self) -> Targets:
        return Targets(tuple(self.out), self.expires, self.failed)

    async def _ask(self, name: str, rdtype: str) -> Answer | None:
        try:
            answer = await self.resolver.dns.ask(name, rdtype)
        except DnsFailure:
            self.failed = True
            return None
        self.expires = min(self.expires, answer.expires)
        self.failed = self.failed or answer.stale
        return answer

    async def naptr(self, host: str, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
        """RFC 3263 4.1: (SRV name, transport) of the usable NAPTR records: flag "S", a
        service for a transport in ``allowed``; of the lowest order among them (RFC 3403 4.1),
        by preference."""
        if self.resolver.dns.resolver is None:
            return []
        answer = await self._ask(host, "NAPTR")
        usable: list[Naptr] = []
        for r in answer.records if answer is not None else ():
            assert isinstance(r, Naptr)
            t = NAPTR_SERVICES.get(r.service.lower())
            if r.flags.lower() == "s" and t in allowed and r.replacement not in ("", "."):
                usable.append(r)
        if not usable:
            return []
        lowest = min(r.order for r in usable)
        chosen = sorted((r for r in usable if r.order == lowest), key=lambda r: r.preference)
        return [(r.replacement, NAPTR_SERVICES[r.service.lower()]) for r in chosen[:MAX_NAPTR]]

    async def srv(self, names: list[tuple[str, str]]) -> None:
        """RFC 2782: the SRV records of each (name, transport), asked at once, then in the
        order given: each name's records in SRV order, each target's addresses in turn."""
        if self.resolver.dns.resolver is None:
            return
        answers = await asyncio.gather(*(self._ask(name, "SRV") for name, _ in names))
        for (service, transport), answer in zip(names, answers, strict=True):
            if answer is None:
                self.srv_failed = True  # not "no SRV records": no A/AAAA fallback (4.2)
                continue
            records = [r for r in answer.records if isinstance(r, Srv)]
            self.srv_found = self.srv_found or bool(records)
            for r in srv_order(records, self.resolver.rng)[:MAX_RECORDS]:
                if len(self.out) >= self.limit:
                    return
                if r.target not in ("", "."):  # ".": the service is decidedly not offered
                    await self.addresses(r.target, r.port, transport, r.priority, r.weight,
                                         service)

    async def addresses(self, name: str, port: int, transport: str, priority: int = 0,
                        weight: int = 0, service: str = "") -> None:
        """A/AAAA of ``name`` (the families the proxy has, in its order); without configured
        servers, the system's lookup (``/etc/hosts``, then DNS: getaddrinfo, off the loop)."""
        resolver = self.resolver
        found: list[str] = []
        if resolver.dns.system:
            a = await self._ask(name, "SYSTEM")
            v6, v4 = "AAAA" in resolver.families, "A" in resolver.families
            found = [str(r) for r in (a.records if a else ()) if (v6 if ":" in str(r) else v4)]
        else:
            answers = await asyncio.gather(*(self._ask(name, f) for f in resolver.families))
            for answer in answers:
                if answer is not None:
                    found.extend(str(r) for r in answer.records)
        for ip in found:
            if len(self.out) >= self.limit:
                return
            self.out.append(Resolved(transport, ip, port, name, priority, weight, service))


def advertised(host: str, port: int, advertise: str | None) -> str:
    """The host:port written into Via and Record-Route for a listener on ``host:port``.

    ``advertise`` (the config's public name or address) replaces the host; when it names a
    port of its own, that port is kept. IPv6 is bracketed (RFC 3261 25.1 IPv6reference).
    """
    a = advertise or host
    if a.startswith("["):
        return a if "]:" in a else f"{a}:{port}"
    if a.count(":") > 1:
        return f"{format_host(a)}:{port}"
    if advertise and a.count(":") == 1:
        return a
    return f"{a}:{port}"
