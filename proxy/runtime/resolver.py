"""Host names to addresses for the transport layer, and the address written into Via.

RFC 3263 reduced to A/AAAA lookups: IP literals are answered at once, names are looked up in
the event loop's executor (never blocking the loop) and cached, failures for a shorter time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from proxy.sip import Send, format_host

log = logging.getLogger("proxy")

#: :meth:`Resolver.cached` for a name not in the cache: look it up with :meth:`Resolver.resolve`.
MISS = object()
#: The most IP literals, and the most names, remembered (each table is emptied when full).
CACHE_LIMIT = 4096


class Resolver:
    """Host name to address (RFC 3263 reduced to A/AAAA lookups).

    IP literals are answered at once and remembered; names are looked up in the default
    executor (never blocking the loop) and cached for ``ttl`` seconds, failures for
    ``negative_ttl``. ``waiting`` holds the sends parked on a lookup in flight, by host.
    """

    def __init__(self, ttl: float = 60.0, negative_ttl: float = 5.0) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: dict[str, tuple[str | None, float]] = {}
        self.literals: dict[str, str] = {}  # IP literals seen: no parse on the next send
        self.waiting: dict[str, list[Send]] = {}

    def cached(self, host: str, now: float) -> object:
        """The address, None for a name known not to resolve, or :data:`MISS`."""
        if host in self.literals:
            return host
        hit = self._cache.get(host)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return MISS
        # Outsiders choose these (a Via's received address): bounded, forgotten all at once.
        if len(self.literals) >= CACHE_LIMIT:
            self.literals.clear()
        self.literals[host] = host
        return host

    def resolve_now(self, host: str) -> str | None:
        """Blocking lookup, for start-up only (upstreams)."""
        try:
            return str(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0])
        except OSError:
            return None

    async def resolve(self, host: str, now: float) -> str | None:
        """Look ``host`` up and cache the answer (a failure for ``negative_ttl``)."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
            ip: str | None = str(infos[0][4][0])
        except OSError as exc:
            log.info("cannot resolve %s: %s", host, exc)
            ip = None
        if len(self._cache) >= CACHE_LIMIT:  # names an outsider chose (a Contact, a Route)
            self._cache = {h: e for h, e in self._cache.items() if e[1] > now}
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
        self._cache[host] = (ip, now + (self.ttl if ip is not None else self.negative_ttl))
        return ip


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
