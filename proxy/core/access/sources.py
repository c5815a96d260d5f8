"""Who may make the proxy do what: address sets and refusal bookkeeping (README "Security
defaults"; RFC 3261 26.1.2 and 26.4.4 leave the defence against abuse to the element).

Every decision here is taken on the address a packet came from (``Source.host``, the IP the
socket reported), never on what the message's headers claim (Via, From, Contact).

* :class:`AddressSet`: host names, IPs and CIDR networks (ports ignored), for
  ``trusted_relays`` and ``registrar_networks``; membership of an IP is cached.
* :class:`Refusals`: counts every refusal by reason and tells the caller whether to log it:
  at most one line per source and reason per minute, so that a flood cannot flood the log.
* :class:`RateLimiter`: a token bucket per source (an IPv4 address, an IPv6 /64;
  ``limits.per_source_rps``) for the initial requests a source may make per second; bounded
  in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Final

from proxy.core.proxy.redirect_guard import RedirectGuard, _parse_ip
from proxy.core.registrar.auth_failures import source_key

__all__ = ["REFUSAL_REASONS", "AddressSet", "RateLimiter", "Refusals"]

LOG_INTERVAL = 60.0  # seconds between two log lines for the same source and reason
_MAX_REMEMBERED: Final = 4096  # sources remembered for log rate limiting (and IP membership cache)


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


#: The default of ``registrar_networks`` (README "proxy.yaml"): loopback and private ranges.
PRIVATE_NETWORKS = (
    "127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
)


#: The reasons a refusal is counted under (the ``refusals_total{reason}`` metric; a reason
#: not listed is counted too): ``rate`` (limits.per_source_rps, 503), ``relay`` (a next hop a
#: source may not name, 403, or a stranger's ACK dropped), ``unproven`` (an in-dialog request
#: of no dialog through this proxy, 481), ``cancel_unknown`` (a CANCEL of no transaction,
#: 481), ``loop`` (482), ``draining`` (503 while stopping), ``flow_failed`` (a flow token of a
#: closed connection or an earlier start, 430), ``flow_token`` (a flow token that does not
#: verify, 403), ``forged_response`` / ``stale_response`` (a response naming this proxy's Via
#: whose branch proves no transaction, dropped), ``registrar`` and ``registrar_limit`` (the
#: local registrar's 403s), ``overload`` (:mod:`proxy.core.access.overload`).
REFUSAL_REASONS: Final = (
    "rate", "relay", "unproven", "cancel_unknown", "loop", "draining", "flow_failed",
    "flow_token", "forged_response", "stale_response", "registrar", "registrar_limit",
    "overload",
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



class RateLimiter:
    """A token bucket per source: ``rate`` initial requests per second, bursts of ``rate``.

    A source is an IPv4 address, or the /64 of an IPv6 address (a host is given a /64,
    RFC 4291 2.5.1: counting single addresses would give it 2^64 buckets).
    :meth:`allow` takes one token from the bucket of ``host`` at ``now`` (seconds, the caller's
    clock) and says whether there was one. ``rate`` 0 allows everything. Memory is bounded:
    past ``max_sources`` buckets, the ones full again (idle for a second or more, so
    forgetting them changes nothing) are dropped; if none is, the oldest half goes (a
    forgotten source starts again with a full bucket, which at worst lets one burst more
    through).
    """

    __slots__ = ("_buckets", "_keys", "burst", "max_sources", "rate")

    def __init__(self, rate: float, *, burst: float | None = None,
                 max_sources: int = 65536) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1))
        self.max_sources = max_sources
        #: source -> (tokens left, time of the last update)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._keys: dict[str, str] = {}  # IPv6 address -> its /64 (cleared when full)

    def __bool__(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, host: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        if ":" in host:
            key = self._keys.get(host)
            if key is None:
                if len(self._keys) >= _MAX_REMEMBERED:
                    self._keys.clear()
                key = self._keys[host] = source_key(host)
            host = key
        entry = self._buckets.get(host)
        if entry is None:
            if len(self._buckets) >= self.max_sources:
                self._evict(now)
            tokens = self.burst
        else:
            tokens, last = entry
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[host] = (tokens - 1.0, now)
            return True
        self._buckets[host] = (tokens, now)
        return False

    def _evict(self, now: float) -> None:
        full = self.burst / self.rate
        stale = [h for h, (_, last) in self._buckets.items() if now - last >= full]
        for h in stale:
            del self._buckets[h]
        if len(self._buckets) >= self.max_sources:
            for h in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[h]
