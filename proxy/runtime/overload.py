"""The measure of load behind overload control (``limits.overload_lag_ms``,
``limits.max_transactions``; the refusals themselves: :mod:`proxy.core.access.overload`).

What a caller feels of a proxy's load is how long its message waits before the proxy handles
it. Over UDP that wait is mostly in the socket's receive queue, not in the process: the
event loop reads a bounded batch of datagrams per turn (libuv: 32), so its timers stay
nearly on time while requests wait seconds in the kernel, get retransmitted, and the
retransmissions fill the queue further (the collapse, RFC 6357 section 2). So each tick
(every :data:`TICK` seconds) the meter adds two waits:

* the **queue**: the datagrams waiting in the receive queues of the proxy's UDP sockets
  (Linux: ``rx_queue`` of ``/proc/net/udp`` and ``udp6``, by the sockets' inodes:
  :class:`UdpBacklog`; in bytes of kernel memory, :func:`datagram_memory`) times what one
  takes to handle (the runtime adds up the messages and bytes it reads and the time it
  spends handling messages and timers);
* the **lateness** of the tick's own timer: the loop held by long work (a large batch of
  timers, a stall, a stream transport's burst).

The sum is smoothed (an exponentially weighted mean over about :data:`ALPHA`:sup:`-1`
ticks, so that one garbage collection pass or one burst does not start an episode). Past
``overload_lag_ms``, or with more than ``max_transactions`` transactions held, the proxy is
overloaded and refuses a share of the new INVITEs and REGISTERs (RFC 7339's loss-based
control, applied by the proxy to itself): the share grows by :data:`UP` each tick the load is
over a bound and not falling (a queue that drains needs no more refusals) and shrinks by :data:`DOWN` each tick it is clear of every bound by its margin
(the wait under half its bound, the transactions under 90 % of theirs); in between it stays.
So the proxy settles where it admits what it can carry with a short queue. The wait is not
measured in the first :data:`WARMUP` seconds after the start (the first calls run through
cold code paths and caches); the transactions are. The episode ends
when the share is back to 0, at least :data:`HOLD` seconds after it started (an episode is
one pair of log lines, not a flapping stream).

:class:`LoadMeter` is the decision without the loop (a fake clock drives it in the unit
tests); :class:`LagTicker` is its timer on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("proxy")

#: seconds between two ticks
TICK = 0.02
#: weight of the newest tick in the smoothed wait (about 5 ticks: 100 ms)
ALPHA = 0.2
#: seconds an episode lasts at least
HOLD = 1.0
#: seconds after the start that are not measured (first calls through cold code paths)
WARMUP = 2.0
#: the share of new INVITEs and REGISTERs refused grows by this a tick over a bound ...
UP = 0.02
#: ... and shrinks by this a tick clear of every bound
DOWN = 0.02
#: a change of the share this large is told to the core
STEP = 0.05


class LoadMeter:
    """The overload decision from each tick's wait and the transaction count: whether the
    proxy is overloaded (:attr:`reason`) and which share of the new INVITEs and REGISTERs it
    refuses (:attr:`share`)."""

    __slots__ = ("hold", "lag", "lag_bound", "max_transactions", "reason", "reported",
                 "share", "since")

    def __init__(self, lag_ms: int, max_transactions: int, hold: float = HOLD) -> None:
        self.lag_bound = lag_ms / 1000.0  # 0: the wait is not a measure of overload
        self.max_transactions = max_transactions  # 0: no bound
        self.hold = hold
        self.lag = 0.0  # the smoothed wait, seconds
        self.reason: str | None = None  # why overloaded, None when not
        self.share = 0.0  # of the new INVITEs and REGISTERs refused
        self.reported = 0.0  # the share last reported (a change of STEP is reported)
        self.since = 0.0

    @property
    def on(self) -> bool:
        """Whether any bound is set (else no tick is needed)."""
        return self.lag_bound > 0 or self.max_transactions > 0

    def sample(self, wait: float, transactions: int, now: float) -> bool:
        """One tick: a message waits ``wait`` seconds (the queue and the tick's lateness),
        ``transactions`` are held. True when the state or the share changed enough to tell
        the core (:attr:`reason`, :attr:`share`)."""
        before = self.lag
        self.lag += ALPHA * (max(wait, 0.0) - self.lag)
        why = self._over(transactions)
        if why is not None:
            if self.reason is None:
                self.reason, self.since, self.share = why, now, UP
                self.reported = self.share
                return True
            if self.lag >= before:  # not draining yet: refuse more
                self.share = min(1.0, self.share + UP)
        elif self.reason is not None and self._under(transactions):
            self.share = max(0.0, self.share - DOWN)
            if self.share == 0.0 and now - self.since >= self.hold:
                self.reason = None
                self.reported = 0.0
                return True
        if self.reason is not None and abs(self.share - self.reported) >= STEP - 1e-9:
            self.reported = self.share
            return True
        return False

    def _over(self, transactions: int) -> str | None:
        if self.lag_bound > 0 and self.lag > self.lag_bound:
            return (f"messages wait {1000 * self.lag:.0f} ms to be handled "
                    f"(bound {1000 * self.lag_bound:.0f} ms)")
        most = self.max_transactions
        if most > 0 and transactions > most:
            return f"{transactions} transactions held (bound {most})"
        return None

    def _under(self, transactions: int) -> bool:
        """Clear of every bound by its margin: the share may shrink."""
        return not ((self.lag_bound > 0 and self.lag > self.lag_bound / 2)
                    or (self.max_transactions > 0 and transactions > self.max_transactions * 0.9))


def datagram_memory(size: float) -> float:
    """What one queued datagram of ``size`` bytes counts in ``rx_queue`` (the kernel counts
    a buffer's true size: measured on loopback, 1,280 bytes up to some 700 bytes of payload,
    2,120 for 1,200): an estimate, the queue's length in datagrams being what matters."""
    return max(1280.0, 1.8 * size)


class UdpBacklog:
    """The bytes waiting in the receive queues of the sockets with these inodes (Linux:
    ``/proc/net/udp`` and ``udp6``); 0 where the files cannot be read (the queue is then not
    part of the measure, only the loop's lateness)."""

    FILES = ("/proc/net/udp", "/proc/net/udp6")

    def __init__(self, inodes: Iterable[int]) -> None:
        self.inodes = {str(i) for i in inodes}
        self.readable = bool(self.inodes)

    def __call__(self) -> int:
        if not self.readable:
            return 0
        total = 0
        try:
            for name in self.FILES:
                with open(name, encoding="ascii") as f:
                    next(f, None)  # the header
                    for line in f:
                        fields = line.split()
                        if len(fields) > 9 and fields[9] in self.inodes:
                            total += int(fields[4].partition(":")[2], 16)
        except (OSError, ValueError) as exc:
            log.info("overload control: cannot read the UDP receive queues (%s): the event "
                     "loop's lateness alone measures the wait", exc)
            self.readable = False
            return 0
        return total


def udp_inodes(transports: Iterable[asyncio.BaseTransport | None]) -> list[int]:
    """The inodes of the sockets under these transports (their lines in /proc/net/udp)."""
    out = []
    for t in transports:
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is not None:
            try:
                out.append(os.fstat(sock.fileno()).st_ino)
            except OSError:
                pass
    return out


class LagTicker:
    """The tick on the event loop: feeds :class:`LoadMeter` and calls ``changed(reason,
    share, now)`` when the state or the share changes. ``work()`` is what the runtime
    handled so far: (seconds spent handling messages and timers, bytes read, messages)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, meter: LoadMeter,
                 transactions: Callable[[], int], work: Callable[[], tuple[float, int, int]],
                 backlog: Callable[[], int],
                 changed: Callable[[str | None, float, float], None],
                 tick: float = TICK) -> None:
        self.loop = loop
        self.meter = meter
        self.transactions = transactions
        self.work = work
        self.backlog = backlog
        self.changed = changed
        self.tick = tick
        self.cost = 0.0  # seconds of work per message (smoothed)
        self.size = 0.0  # bytes per message (smoothed)
        self._due = 0.0
        self._last = (0.0, 0, 0)  # work() at the last tick
        self._from = 0.0  # before this time the wait is not measured (WARMUP)
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.meter.on:
            self._last = self.work()
            self._due = self.loop.time() + self.tick
            self._from = self._due + WARMUP
            self._handle = self.loop.call_at(self._due, self._fire)

    def wait(self, late: float) -> float:
        """How long a message arriving now waits: the tick's lateness plus the queue (the
        datagrams queued times the time one takes to handle)."""
        worked, read, count = self.work()
        worked0, read0, count0 = self._last
        self._last = (worked, read, count)
        if count - count0 >= 8:  # enough messages in the tick to tell a cost
            n = count - count0
            self.cost += 0.2 * ((worked - worked0) / n - self.cost)
            self.size += 0.2 * ((read - read0) / n - self.size)
        if self.cost <= 0 or not self.meter.lag_bound:  # lag off: no /proc/net/udp read
            return late
        return late + self.backlog() / datagram_memory(self.size) * self.cost

    def _fire(self) -> None:
        now = self.loop.time()
        wait = self.wait(now - self._due)
        if now < self._from:
            wait = 0.0  # cold code paths: the wait is not measured yet (the count is)
        meter = self.meter
        if meter.sample(wait, self.transactions(), now):
            self.changed(meter.reason, meter.share, now)
        self._due = now + self.tick
        self._handle = self.loop.call_at(self._due, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def install(rt: Any) -> LagTicker:
    """Start the load meter of a runtime (``limits.overload_lag_ms``, ``max_transactions``):
    its verdicts reach the core through ``ProxyCore.set_overload`` like every input."""
    lim = rt.config.limits
    ticker = LagTicker(
        rt.loop, LoadMeter(lim.overload_lag_ms, lim.max_transactions),
        lambda: rt.core.view.active_transactions, lambda: (rt.worked, rt.read, rt.received),
        UdpBacklog(udp_inodes(ep.transport for ep in rt.udp.values())),
        lambda reason, share, now: rt._drive(rt.core.set_overload, reason, share, now))
    ticker.start()
    return ticker
