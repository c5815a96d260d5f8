"""The flood gate in front of the UDP parser (``limits.udp_flood_rps``), sans-IO.

A refusal must cost less than the request. The core's refusals (``per_source_rps``, 481s,
403s) are cheap, but each still parses the datagram and sends an answer: measured at some
25 µs of CPU for a stateless 481 to an unknown CANCEL. One source sending faster than the
proxy answers fills the socket's receive queue (one FIFO for everyone), and every message
behind the flood waits: 25,000 CANCELs a second from one address delayed a legitimate call
by up to 438 ms (docs/SECURITY.md, attack 7b).

This gate counts every datagram per source before it is parsed, as Kamailio's ``pike``
module does: an IPv4 address, or the /64 of an IPv6 address (a host is given a /64,
RFC 4291 2.5.1). A source that sends more than ``rate`` datagrams within one window
(``window`` seconds, from its first datagram in it) starts an *episode*: its datagrams are
dropped before they are parsed (a dictionary lookup and an increment: no parse, no answer,
no state but its tally) until a whole window passes in which it sent no more than ``rate``.
A flood that goes on is dropped entirely after its first window; one that stops is forgotten
a window later.

* The upstreams and ``trusted_relays`` are never held back (``exempt``: asked once a window,
  when a source crosses the rate, never per datagram).
* Every datagram counts: requests, responses, keep-alives, a proven dialog's requests. The
  figure is a ceiling far above what one phone or one NAT'd office sends (``per_source_rps``
  is the fine limit, on the requests that cost); 0 turns the gate off.
* Memory is bounded: at most ``max_sources`` tallies. Past it, those whose window ended and
  that are not in an episode are forgotten first (that changes nothing); if none is, the
  oldest half goes (a forgotten flooder gets one more window of ``rate`` datagrams).
* What it dropped is counted (:attr:`FloodGate.dropped`, :attr:`FloodGate.episodes`: the
  ``refusals_total{reason="flood"}`` and ``flood_episodes_total`` metrics); :meth:`admit`
  tells the caller when an episode starts and when one ends, so it logs one line each, never
  one per datagram.

Nothing here reads a clock: ``now`` (seconds, any monotonic origin) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from proxy.transport.conns import source_key

__all__ = ["ADMIT", "DROP", "ENDED", "STARTED", "FloodGate"]

#: :meth:`FloodGate.admit`'s verdicts. Only ADMIT and DROP happen per datagram; the other two
#: once per episode (the caller logs them).
ADMIT: Final = 0
DROP: Final = 1
STARTED: Final = 2  # dropped: the first datagram of an episode
ENDED: Final = 3  # admitted: the source's episode is over

_MAX_SOURCES: Final = 65536
_MAX_KEYS: Final = 4096  # IPv6 address -> /64 key, remembered (cleared when full)


class _Tally:
    """One source's count in its current window, and its episode if any."""

    __slots__ = ("count", "dropped", "exempt", "since", "start")

    def __init__(self, now: float) -> None:
        self.start = now  # the start of the current window
        self.count = 0  # datagrams in the current window
        self.since = -1.0  # the episode's start; -1.0: not in one
        self.dropped = 0  # datagrams dropped in the episode
        self.exempt = False  # crossed the rate in this window, and exempt


class FloodGate:
    """Per-source datagram counts and the episodes of sources far over ``rate`` (module doc).

    ``exempt(host, port)``: True for a source never to hold back (the upstreams, the trusted
    relays); asked when a source crosses the rate, at most once a window.
    """

    __slots__ = ("_keys", "_sources", "dropped", "ended", "episodes", "exempt", "max_sources",
                 "rate", "window")

    def __init__(self, rate: float, *, window: float = 1.0,
                 exempt: Callable[[str, int], bool] | None = None,
                 max_sources: int = _MAX_SOURCES) -> None:
        self.rate = float(rate)
        self.window = float(window)
        self.exempt = exempt
        self.max_sources = max_sources
        self._sources: dict[str, _Tally] = {}
        self._keys: dict[str, str] = {}
        self.dropped = 0  # datagrams dropped, all episodes
        self.episodes = 0  # episodes started
        #: the episode that ended last (when :meth:`admit` said ENDED): the source's key, its
        #: start, the start of its last window over the rate, and the datagrams it dropped
        self.ended: tuple[str, float, float, int] = ("", 0.0, 0.0, 0)

    def __bool__(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._sources)

    def key(self, host: str) -> str:
        """What ``host`` counts under: itself (IPv4), or its /64 (IPv6, remembered)."""
        if ":" not in host:
            return host
        key = self._keys.get(host)
        if key is None:
            if len(self._keys) >= _MAX_KEYS:
                self._keys.clear()
            key = self._keys[host] = source_key(host)
        return key

    def admit(self, host: str, port: int, now: float) -> int:
        """The verdict on one datagram from ``host``:``port`` at ``now``: :data:`ADMIT`,
        :data:`DROP`, :data:`STARTED` (dropped) or :data:`ENDED` (admitted)."""
        if self.rate <= 0:
            return ADMIT
        key = host if ":" not in host else self.key(host)
        t = self._sources.get(key)
        verdict = ADMIT
        if t is None:
            if len(self._sources) >= self.max_sources:
                self._forget(now)
            t = self._sources[key] = _Tally(now)
        elif now - t.start >= self.window:
            if t.since >= 0.0 and (t.count <= self.rate or now - t.start >= 2 * self.window):
                # a whole window at or under the rate: the episode is over
                self.ended = (key, t.since, t.start, t.dropped)
                t.since = -1.0
                t.dropped = 0
                verdict = ENDED
            t.start = now
            t.count = 0
            t.exempt = False
        t.count += 1
        if t.since >= 0.0:
            t.dropped += 1
            self.dropped += 1
            return DROP
        if t.count <= self.rate or t.exempt:
            return verdict
        if self.exempt is not None and self.exempt(host, port):
            t.exempt = True
            return verdict
        t.since = now
        t.dropped = 1
        self.dropped += 1
        self.episodes += 1
        return STARTED

    def blocked(self, host: str) -> bool:
        """Whether ``host``'s datagrams are being dropped (its source is in an episode)."""
        t = self._sources.get(self.key(host))
        return t is not None and t.since >= 0.0

    def _forget(self, now: float) -> None:
        window = self.window
        calm = [k for k, t in self._sources.items() if t.since < 0.0 and now - t.start >= window]
        for k in calm:
            del self._sources[k]
        if len(self._sources) >= self.max_sources:
            for k in list(self._sources)[: len(self._sources) // 2 + 1]:
                del self._sources[k]
