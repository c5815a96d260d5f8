"""Process resources of the stream transports: the file-descriptor soft limit set at start
(every TCP/TLS connection is a descriptor, so ``limits.tcp_max_connections`` needs as many),
and the heap that closed connections leave behind (:class:`MemoryTrim`); and the UDP flood
gate of ``limits.udp_flood_rps`` (:func:`flood_gate`)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.transport.udp_gate import FloodGate

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

log = logging.getLogger("proxy")


def flood_gate(core: ProxyCore, udp_flood_rps: int, per_source_rps: int) -> FloodGate | None:
    """The gate in front of every UDP socket (:mod:`proxy.transport.udp_gate`), or None when
    ``limits.udp_flood_rps`` is 0. Its rate is never below twice ``per_source_rps``: the gate
    counts every datagram, the rate limit only the requests that cost. Exempt: the hosts of
    the upstreams (every port: the core still trusts only the upstream's own port) and the
    ``trusted_relays``, read when a source crosses the rate (the upstreams' addresses change
    with DNS)."""
    if udp_flood_rps <= 0:
        return None
    view = core.view
    relays = view.settings.trusted_relays

    def exempt(host: str, port: int) -> bool:
        return host in relays or any(h == host for h, _ in view.upstream_addrs)

    return FloodGate(max(udp_flood_rps, 2 * per_source_rps), exempt=exempt)


def raise_nofile(wanted: int) -> int:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit; log the figure and warn when it
    is below ``wanted`` (connections plus some room). Returns the soft limit in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft,
                        target, exc)
    log.info("file descriptors: soft limit %d (hard %s)", soft,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)
    if soft < wanted:
        log.warning("file descriptor limit %d is below limits.tcp_max_connections (for TCP "
                    "and for TLS) + 64 (%d): connections past it will fail to be accepted",
                    soft, wanted)
    return soft


#: connections closed since the last trim that make the next check trim
TRIM_AFTER = 256
#: seconds between two checks (and so between two trims, at most one per check)
TRIM_INTERVAL = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library: nothing to call)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class MemoryTrim:
    """Gives the heap that closed connections freed back to the system.

    A TLS handshake holds some 45 KB of OpenSSL state (ClientHello answered, Finished
    awaited); when a flood of them is cut off at the handshake timeout, everything is freed
    (the garbage collector finds nothing), but glibc keeps the freed heap: measured with 3,000
    handshakes left half-open, the proxy's RSS went from 33 MB to 175 MB and stayed there.
    ``malloc_trim(0)`` returns the free pages of every arena (madvise, not only the top of the
    heap). It runs on the event loop, at most once per :data:`TRIM_INTERVAL` seconds: when at
    least :data:`TRIM_AFTER` connections closed since the last trim, or when some did and none
    closed during the last interval (a burst is over); how long it took is logged at debug.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, closed: Callable[[], int],
                 interval: float = TRIM_INTERVAL, after: int = TRIM_AFTER,
                 trim: Callable[[int], int] | None = None) -> None:
        self.loop = loop
        self.closed = closed  # connections closed since start, all transports
        self.interval = interval
        self.after = after
        self.trims = 0
        self._seen = 0  # the count at the last trim
        self._last = 0  # the count at the last check
        self._trim = trim or _malloc_trim()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._trim is not None:
            self._handle = self.loop.call_later(self.interval, self.check)

    def check(self) -> bool:
        """Trim if enough connections closed since the last trim; whether it did."""
        self._handle = self.loop.call_later(self.interval, self.check)
        n = self.closed()
        quiet, self._last = n == self._last, n
        if self._trim is None or n == self._seen or (n - self._seen < self.after and not quiet):
            return False
        self._seen = n
        t0 = time.perf_counter()
        self._trim(0)
        self.trims += 1
        log.debug("malloc_trim after %d closed connections: %.1f ms", n,
                  1000 * (time.perf_counter() - t0))
        return True

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
