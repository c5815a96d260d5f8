"""Who may make the proxy do what: address sets and refusal bookkeeping (CONTRACT "TLS and
access"; RFC 3261 26.1.2 and 26.4.4 leave the defence against abuse to the element).

Every decision here is taken on the address a packet came from (``Source.host``, the IP the
socket reported), never on what the message's headers claim (Via, From, Contact).

* :class:`AddressSet`: host names, IPs and CIDR networks (ports ignored), for
  ``trusted_relays`` and ``registrar_networks``; membership of an IP is cached.
* :class:`Refusals`: counts every refusal by reason and tells the caller whether to log it:
  at most one line per source and reason per minute, so that a flood cannot flood the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from proxy.core.redirect_guard import RedirectGuard, _parse_ip

__all__ = ["AddressSet", "Refusals"]

LOG_INTERVAL = 60.0  # seconds between two log lines for the same source and reason
_MAX_REMEMBERED = 4096  # sources remembered for log rate limiting (and IP membership cache)


class AddressSet:
    """Hosts, IPs and CIDR networks; ``host in s`` for the IP a packet came from.

    Raises :class:`ValueError` for an entry that is none of those (the config loader has
    already reported it with its position).
    """

    __slots__ = ("_cache", "_ips", "_names", "_nets", "entries")

    def __init__(self, entries: Iterable[str], what: str = "addresses") -> None:
        self.entries = tuple(entries)
        names, ips, nets = RedirectGuard._split(self.entries, what)
        self._names = names
        self._ips = ips
        self._nets = nets
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str) or not self.entries:
            return False
        hit = self._cache.get(host)
        if hit is not None:
            return hit
        ip = _parse_ip(host)
        if ip is None:
            found = host.lower().rstrip(".") in self._names
        else:
            found = ip in self._ips or any(
                ip.version == net.version and ip in net for net in self._nets
            )
        if len(self._cache) >= _MAX_REMEMBERED:
            self._cache.clear()
        self._cache[host] = found
        return found


#: The CONTRACT default of ``registrar_networks``: loopback and private ranges.
PRIVATE_NETWORKS = (
    "127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
)


class Refusals:
    """Counts refusals by reason; :meth:`note` says whether this one should be logged.

    One line per (source, reason) per :data:`LOG_INTERVAL` seconds at most; the memory of
    when a source was last logged is bounded (forgotten wholesale past 4096 sources, which
    at worst logs a source once more).
    """

    __slots__ = ("_last", "counts")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._last: dict[tuple[str, str], float] = {}

    def note(self, reason: str, host: str, now: float) -> bool:
        """Count a refusal of ``reason`` for a packet from ``host``; True: log it now."""
        self.counts[reason] += 1
        key = (host, reason)
        last = self._last.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        if len(self._last) >= _MAX_REMEMBERED:
            self._last.clear()
        self._last[key] = now
        return True

