"""What a stream connection must do to keep its slot, and the counts behind the limits.

A TCP, TLS or WebSocket (ws, wss) connection holds a file descriptor and memory, so a stranger
must not be able to hold many for long (docs/SECURITY.md):

* at most ``limits.tcp_max_connections`` connections in the table (each transport its own)
  and at most ``limits.tcp_per_source`` accepted from one source (an IPv4 address, or an IPv6
  /64: one host's share of a network); a TLS connection counts from the moment it is
  accepted, handshake included. Past either, an accepted connection is closed at once;
* a TLS handshake (and a WebSocket upgrade) must end within its timeout; the bytes of a
  message must complete within ``limits.tcp_message_timeout`` seconds of its first byte
  (trickling bytes do not restart that clock);
* a connection that carries no binding and no transaction (asked of the core) is closed once
  ``limits.tcp_idle_timeout`` seconds passed without a complete SIP message in either
  direction; CRLFCRLF keep-alives (RFC 5626 4.4.1) and WebSocket pings are answered but never
  restart that clock, so only a connection that carries a registered flow lives on
  keep-alives alone;
* the connections of the configured upstreams and ``trusted_relays`` (by the peer's address,
  which TCP proves) are held neither to the per-source figure nor to the idle rule: they are
  configured peers, and a trunk's connection carries calls whose in-dialog requests come back
  over it.

Each refusal and each close for one of these reasons is counted by reason
(:attr:`ConnStats.refused`, :attr:`ConnStats.closed`: the ``connections_refused_total`` and
``connections_closed_total`` metrics) and logged, at most one line per reason a minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from proxy.sip.transport import source_key

__all__ = ["LOG_INTERVAL", "ConnStats", "RateLimitedLog", "source_key"]

#: seconds between two log lines of one kind (refusals, closes of one reason)
LOG_INTERVAL = 60.0


class RateLimitedLog:
    """One log line per kind and interval; the ones held back are counted into the next."""

    __slots__ = ("_held", "_last", "every", "interval", "log")

    def __init__(self, log: logging.Logger, interval: float = LOG_INTERVAL,
                 every: str = "once a minute") -> None:
        self.log = log
        self.interval = interval
        self.every = every  # how often, in words, for the end of each line
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def __call__(self, kind: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, float("-inf")) < self.interval:
            self._held[kind] += 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            msg += " (%d more like it since the last line)"
            args = (*args, held)
        self.log.log(level, msg + "; logged " + self.every, *args)


class ConnStats:
    """The per-source counts of one connection table and what was refused or closed, by
    reason (read by the ``/metrics`` collector)."""

    __slots__ = ("closed", "per_source", "refused")

    def __init__(self) -> None:
        self.per_source: dict[str, int] = {}
        #: refused at accept: ``limit`` (tcp_max_connections), ``per_source``, ``rate`` and
        #: ``source_rate`` (tcp_accept_rate); at a WebSocket upgrade: ``origin``,
        #: ``subprotocol``, ``upgrade``
        self.refused: Counter[str] = Counter()
        #: closed by the proxy: ``idle``, ``incomplete`` (tcp_message_timeout), ``handshake``
        #: (TLS handshake or WebSocket upgrade timeout), ``tls`` (failed handshake or record),
        #: ``framing``, ``too_large`` (a WebSocket message over max_message_size), ``busy``
        #: (no room in the TLS handshake pool, :mod:`proxy.transport.tlspool`)
        self.closed: Counter[str] = Counter()

    def count(self, key: str) -> int:
        return self.per_source.get(key, 0)

    def add(self, key: str) -> None:
        self.per_source[key] = self.per_source.get(key, 0) + 1

    def remove(self, key: str) -> None:
        n = self.per_source.get(key, 0) - 1
        if n > 0:
            self.per_source[key] = n
        else:
            self.per_source.pop(key, None)


class AcceptRate:
    """Token buckets on new connections (``limits.tcp_accept_rate``): ``rate`` a second for
    the whole table, and the table's ``per_source`` a second for one source (an address, an
    IPv6 /64), each with bursts of as many. A connection over either is closed at accept,
    before a byte is read (before any TLS state exists): a flood of connections, from one
    source or from many, costs the loop a bounded share of its time (a TLS handshake costs
    about half a millisecond of CPU), whatever the number of connections offered. ``rate`` 0
    turns it off. The sources remembered are bounded (full buckets are forgotten first)."""

    __slots__ = ("_sources", "_total", "max_sources", "per_source", "rate")

    def __init__(self, rate: float, per_source: float, max_sources: int = 65536) -> None:
        self.rate = float(rate)
        self.per_source = float(per_source)
        self.max_sources = max_sources
        self._total = (self.rate, 0.0)  # (tokens, time of the last update)
        self._sources: dict[str, tuple[float, float]] = {}

    def allow(self, source: str, now: float) -> str | None:
        """None when a new connection from ``source`` may be served at ``now``; else why not:
        ``rate`` (the table's) or ``source_rate``."""
        if self.rate <= 0:
            return None
        tokens, last = self._total
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        entry = self._sources.get(source)
        if entry is None:
            if len(self._sources) >= self.max_sources:
                self._forget(now)
            mine = self.per_source
        else:
            mine = min(self.per_source, entry[0] + (now - entry[1]) * self.per_source)
        if tokens < 1.0:
            self._total = (tokens, now)
            return "rate"
        if mine < 1.0:
            self._sources[source] = (mine, now)
            return "source_rate"
        self._total = (tokens - 1.0, now)
        self._sources[source] = (mine - 1.0, now)
        return None

    def _forget(self, now: float) -> None:
        full = 1.0  # a bucket idle this long is full again: forgetting it changes nothing
        stale = [k for k, (_, last) in self._sources.items() if now - last >= full]
        for k in stale:
            del self._sources[k]
        if len(self._sources) >= self.max_sources:
            for k in list(self._sources)[: len(self._sources) // 2 + 1]:
                del self._sources[k]
