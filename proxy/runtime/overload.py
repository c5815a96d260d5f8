"""The measure of load behind overload control (``limits.overload_lag_ms``,
``limits.max_transactions``; the refusals themselves: :mod:`proxy.core.access.overload`).

What a caller feels of a proxy's load is how long its message waits before the proxy handles
it. Over UDP that wait is mostly in the socket's receive queue, not in the process: the
event loop reads a bounded batch of datagrams per turn (libuv: 32), so its timers stay
nearly on time while requests wait seconds in the kernel, get retransmitted, and the
retransmissions fill the queue further (the collapse, RFC 6357 section 2). So each tick
(every :data:`TICK` seconds) the meter reads the **wait**: the age of the oldest datagram in
the receive queue of each UDP socket (the kernel stamps each datagram on arrival,
``SO_TIMESTAMPNS``; the tick peeks at the head of the queue, ``MSG_PEEK``: one system call,
nothing read: :class:`QueueAge`), or the tick's own lateness when that is more (the loop held
by long work: a large batch of timers, a stall, a stream transport's burst).

An earlier meter estimated the wait from ``rx_queue`` of ``/proc/net/udp`` (kernel memory,
some 1,280 bytes a datagram) times a smoothed cost per message (which also carried the
timers' work), plus the tick's lateness, smoothed over 100 ms: every factor an estimate, and
any queue over the bound started an episode, a queue that drains by itself included (a burst,
a collector pass). It refused 2,500 of 9,600 calls at a rate the proxy served with a p99 of
28 ms. Now the wait is measured, not estimated, and an episode starts only on a **standing
queue that does not drain** (the idea of CoDel, RFC 8289: the least wait over the last
:data:`WINDOW` ticks, 100 ms, is over ``overload_lag_ms``, and at the rate it changed over
them, it would still be over it :data:`HORIZON` seconds later; or, sooner, the wait of
each of the last :data:`RISING` ticks is over the bound and the last is longer than the
first: a queue that grows over them is a load past what the proxy carries). A proxy that
carries its load empties its queue between bursts, and drains the backlog of a stall (its
wait only falls after it): neither starts an episode. Once an episode is on, every new
request that waited past the bound (in the socket's queue, as the last tick measured it,
and held after the calls in progress, :mod:`proxy.transport.udp_order`, an order each tick
turns on while it measures a queue, a wait over :data:`ORDER` of the bound) is refused:
CoDel's drop from the front, so that the backlog that built up before the episode started
is cleared at the cost of a refusal each, not carried as calls.

During an episode the share of new INVITEs and REGISTERs refused (RFC 7339's loss-based
control, applied by the proxy to itself) is steered each tick towards a wait of a quarter
of the bound (:data:`TARGET`; a call's INVITE and its 200 both wait): it grows with the
rate the wait grows at (that rate is how far the load exceeds what the proxy can carry: a
wait growing 1 s per second is twice the load) and with how far the wait that stood over the
last :data:`RISING` ticks is over the target (a spike of a tick or two, a collector pass or
a burst, is no load: it raised the share 10 points a tick and let it down 1, and a proxy at
half a core refused two calls in three), and it shrinks as the wait falls and while it is
under the target; at most :data:`MAX_UP` more and :data:`MAX_DOWN` less a tick. The transactions bound
(``max_transactions``) adds :data:`MAX_DOWN` a tick while more are held, takes it back under
90 % of the bound. The wait is not measured in the first :data:`WARMUP` seconds after the start
(the first calls run through cold code paths and caches); the transactions are. The episode
ends when the share has been 0 for :data:`HOLD` seconds: an episode is one pair of log lines,
not a flapping stream, and a load that comes back within it meets the share at once (over
the target), not the start's test again (over the bound, for ticks: in the benchmark's 2x
step an episode that ended while the load went on cost a second start, with some 300 calls
admitted at over 100 ms).

:class:`LoadMeter` is the decision without the loop (a fake clock drives it in the unit
tests); :class:`LagTicker` is its timer on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("proxy")

#: seconds between two ticks
TICK = 0.02
#: ticks a standing queue is looked for over (CoDel's interval: 100 ms)
WINDOW = 5
#: ticks of a wait over the bound, the last longer than the first, that start an episode
#: before the window is over (at twice the load the proxy carries, 40 ms sooner); also the
#: ticks the share's wait must stand over (a spike of fewer is no load)
RISING = 3
#: seconds: a wait over the bound that would drain under it within this starts no episode
HORIZON = 1.0
#: seconds the share stays 0 before an episode ends
HOLD = 1.0
#: seconds after the start that are not measured (first calls through cold code paths)
WARMUP = 2.0
#: the share of new INVITEs and REGISTERs refused grows by at most this a tick ...
MAX_UP = 0.1
#: ... and shrinks by at most this a tick (half a second from all to none)
MAX_DOWN = 0.04
#: a change of the share this large is told to the core
STEP = 0.05
#: the share follows a fifth of the rate the wait grows at (per tick, in seconds a second) ...
SLOPE_GAIN = 0.2
#: ... and this much for each bound the wait is over its target ...
ERROR_GAIN = 0.04
#: ... this share of the bound (a call's INVITE and 200 both wait: 2 x 12.5 ms at 50 ms)
TARGET = 0.25
#: under the target, the share shrinks by up to this a tick (an empty queue: 0.5 a second)
DOWN_GAIN = 0.01
#: a tick's wait over this share of the bound turns on the order of the UDP listeners (calls
#: in progress first, :mod:`proxy.transport.udp_order`) until a tick measures less (5 ms at
#: the default 50 ms); an episode keeps it on
ORDER = 0.1


class LoadMeter:
    """The overload decision from each tick's wait and the transaction count: whether the
    proxy is overloaded (:attr:`reason`) and which share of the new INVITEs and REGISTERs it
    refuses (:attr:`share`)."""

    __slots__ = ("calm", "hold", "lag", "lag_bound", "max_transactions", "reason", "recent",
                 "reported", "share", "since")

    def __init__(self, lag_ms: int, max_transactions: int, hold: float = HOLD) -> None:
        self.lag_bound = lag_ms / 1000.0  # 0: the wait is not a measure of overload
        self.max_transactions = max_transactions  # 0: no bound
        self.hold = hold
        self.recent: deque[float] = deque(maxlen=WINDOW)  # the last ticks' waits, seconds
        self.lag = 0.0  # the standing wait: the least of the recent ones
        self.reason: str | None = None  # why overloaded, None when not
        self.share = 0.0  # of the new INVITEs and REGISTERs refused
        self.reported = 0.0  # the share last reported (a change of STEP is reported)
        self.since = 0.0
        self.calm = 0.0  # since when the share is 0 in an episode

    @property
    def on(self) -> bool:
        """Whether any bound is set (else no tick is needed)."""
        return self.lag_bound > 0 or self.max_transactions > 0

    def slope(self) -> float:
        """How fast the wait grew over the window, seconds a second (about the load over
        what the proxy carries while it is busy: 1.0 is twice that): the mean of its last
        two ticks against the mean of its first two (one tick's jitter counts half)."""
        r = self.recent
        n = len(r)
        if n < 4:
            return (r[-1] - r[0]) / ((n - 1) * TICK) if n > 1 else 0.0
        return (r[-1] + r[-2] - r[0] - r[1]) / (2 * (n - 2) * TICK)

    def sample(self, wait: float, transactions: int, now: float) -> bool:
        """One tick: the oldest message waiting has waited ``wait`` seconds, ``transactions``
        are held. True when the state or the share changed enough to tell the core
        (:attr:`reason`, :attr:`share`)."""
        self.recent.append(max(wait, 0.0))
        self.lag = min(self.recent) if len(self.recent) == WINDOW else 0.0
        if self.reason is None:
            why = self._over(transactions)
            if why is None:
                return False
            self.reason, self.since, self.calm = why, now, now
            self.share = max(self._step(transactions), STEP)
            self.reported = self.share
            return True
        before = self.share
        self.share = min(1.0, max(0.0, self.share + self._step(transactions)))
        if self.share == 0.0 < before:
            self.calm = now
        if self.share == 0.0 and now - self.calm >= self.hold:
            self.reason = None
            self.reported = 0.0
            return True
        if abs(self.share - self.reported) >= STEP - 1e-9 or (self.share == 0.0 < self.reported):
            self.reported = self.share
            return True
        return False

    def _rising(self, bound: float) -> float:
        """The least of the last :data:`RISING` waits when each is over ``bound`` and the
        last is longer than the first of them (the queue grows), else 0."""
        r = self.recent
        if len(r) < RISING or r[-1] <= r[-RISING]:
            return 0.0
        least = self._standing()
        return least if least > bound else 0.0

    def _standing(self) -> float:
        """The least of the last :data:`RISING` waits (the window holds at least that many)."""
        r = self.recent
        return min(r[i] for i in range(-RISING, 0))

    def _step(self, transactions: int) -> float:
        """How much the share changes this tick (may be negative)."""
        step = -MAX_DOWN  # no wait measured: the transactions alone say
        bound = self.lag_bound
        if bound > 0 and len(self.recent) == WINDOW:
            wait, target, slope = self.recent[-1], bound * TARGET, self.slope()
            standing = self._standing()  # a spike of fewer ticks is no load
            if standing > target:  # over the target: follow the load (the slope) and the excess
                step = (SLOPE_GAIN * slope / (1.0 + max(slope, 0.0))
                        + ERROR_GAIN * (standing - target) / bound)
            elif wait <= target:  # under it: admit more, the faster the emptier the queue
                step = -DOWN_GAIN * (target - wait) / target
            else:  # a spike over the target: wait and see
                step = 0.0
        most = self.max_transactions
        if most > 0:
            if transactions > most:
                step = max(step, 0.0) + MAX_DOWN
            elif transactions > most * 0.9:
                step = max(step, 0.0)
        return min(MAX_UP, max(-MAX_DOWN, step))

    def _over(self, transactions: int) -> str | None:
        """Why an episode starts now: a wait over the bound that does not drain within
        :data:`HORIZON`, standing over the whole window or growing over its last
        :data:`RISING` ticks (each over the bound, the last longer than the first: a load past
        what the proxy carries, never the backlog of a stall, which only drains); or more
        transactions than the bound."""
        bound = self.lag_bound
        r = self.recent
        if bound > 0 and r and r[-1] + self.slope() * HORIZON > bound:
            least = self.lag if self.lag > bound else self._rising(bound)
            if least > bound:
                return (f"messages wait {1000 * least:.0f} ms to be handled "
                        f"(bound {1000 * bound:.0f} ms)")
        most = self.max_transactions
        if most > 0 and transactions > most:
            return f"{transactions} transactions held (bound {most})"
        return None


#: SO_TIMESTAMPNS (Linux; Python's socket module does not name it)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_STAMP = struct.Struct("qq")


class QueueAge:
    """How long the oldest datagram waiting in the receive queue of any of these sockets
    has waited (seconds, 0 when every queue is empty): the kernel stamps each datagram on
    arrival (``SO_TIMESTAMPNS``, turned on here for these sockets) and each call peeks at
    the head of each queue (``MSG_PEEK``: nothing is read); or the oldest new request read
    but held for after the calls in progress (``held``: :mod:`proxy.transport.udp_order`),
    when that is more. Where that cannot be done (no
    such option, not Linux), always 0: the tick's lateness alone measures the wait."""

    def __init__(self, fds: Iterable[int], held: Iterable[Any] = ()) -> None:
        self.held = list(held)  # NewRequests (proxy.transport.udp_order): their age counts
        self.socks: list[socket.socket] = []
        for fd in fds:
            try:
                s = socket.socket(fileno=os.dup(fd))  # the same socket: its queue and options
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError as exc:
                log.info("overload control: cannot time the UDP receive queue (%s): the event "
                         "loop's lateness alone measures the wait", exc)
                continue
            self.socks.append(s)
        self.space = socket.CMSG_SPACE(_STAMP.size)
        #: the wait in the sockets' queues alone at the last call (seconds): what a datagram
        #: read since waited in the kernel before it was read, about (``Runtime.deliver_held``)
        self.sockets = 0.0

    def __call__(self) -> float:
        oldest = 0.0
        now = time.time()  # the stamps are on the real-time clock
        for s in self.socks:
            try:
                _, anc, _, _ = s.recvmsg(1, self.space, _PEEK)
            except OSError:  # BlockingIOError: empty; anything else: nothing to tell
                continue
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, ns = _STAMP.unpack_from(data)
                    oldest = max(oldest, now - (sec + ns * 1e-9))
        self.sockets = min(oldest, 60.0)
        for h in self.held:
            oldest = max(oldest, h.age())
        return min(oldest, 60.0)  # a clock step is no wait

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


def socket_fds(transports: Iterable[asyncio.BaseTransport | None]) -> list[int]:
    """The file descriptors of the sockets under these transports."""
    out = []
    for t in transports:
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is not None:
            try:
                out.append(sock.fileno())
            except OSError:
                pass
    return out


class LagTicker:
    """The tick on the event loop: feeds :class:`LoadMeter` and calls ``changed(reason,
    share, now)`` when the state or the share changes. ``queue()`` is the age of the oldest
    datagram waiting (:class:`QueueAge`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, meter: LoadMeter,
                 transactions: Callable[[], int], queue: Callable[[], float],
                 changed: Callable[[str | None, float, float], None],
                 tick: float = TICK, orders: Iterable[Any] = ()) -> None:
        """``orders``: the UDP listeners' orders (``udp_order.NewRequests``), turned on
        while a tick measures a queue (a wait over :data:`ORDER` of the bound) or an
        episode is on, off otherwise, and told of a backlog (an episode, or a wait over
        :data:`TARGET` of the bound: they handle fewer held requests a turn then)."""
        self.loop = loop
        self.orders = list(orders)
        self.ordered = (False, False)  # whether the orders are on, and told of a backlog
        self.meter = meter
        self.transactions = transactions
        self.queue = queue
        self.changed = changed
        self.tick = tick
        self._due = 0.0
        self._from = 0.0  # before this time the wait is not measured (WARMUP)
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.meter.on:
            self._due = self.loop.time() + self.tick
            self._from = self._due + WARMUP
            self._handle = self.loop.call_at(self._due, self._fire)

    def wait(self, late: float) -> float:
        """How long a message arriving now waits at least: the oldest datagram queued has
        waited this long, or the tick was this late."""
        if not self.meter.lag_bound:  # the wait is off: no system call
            return late
        return max(late, self.queue())

    def _fire(self) -> None:
        now = self.loop.time()
        wait = self.wait(now - self._due)
        if now < self._from:
            wait = 0.0  # cold code paths: the wait is not measured yet (the count is)
        meter = self.meter
        if meter.sample(wait, self.transactions(), now):
            self.changed(meter.reason, meter.share, now)
        episode = meter.reason is not None
        backlog = episode or wait > meter.lag_bound * TARGET
        ordered = backlog or wait > meter.lag_bound * ORDER
        if (ordered, backlog) != self.ordered and self.orders:
            self.ordered = (ordered, backlog)
            for order in self.orders:
                order.want(ordered, backlog)
        self._due = now + self.tick
        self._handle = self.loop.call_at(self._due, self._fire)

    def stale(self, held: float) -> bool:
        """Whether a new request held ``held`` seconds after it was read is to be refused
        as stale: during an episode, when that and its wait in the socket's queue before it
        was read (as the last tick measured the queue: ``QueueAge.sockets``) pass the
        bound (CoDel's drop from the front, RFC 8289 section 5)."""
        meter = self.meter
        return (meter.reason is not None
                and held + getattr(self.queue, "sockets", 0.0) > meter.lag_bound > 0)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        close = getattr(self.queue, "close", None)
        if close is not None:
            close()  # the duplicated descriptors of QueueAge


def install(rt: Any) -> LagTicker:
    """Start the load meter of a runtime (``limits.overload_lag_ms``, ``max_transactions``):
    its verdicts reach the core through ``ProxyCore.set_overload`` like every input."""
    lim = rt.config.limits
    meter = LoadMeter(lim.overload_lag_ms, lim.max_transactions)
    queue: Callable[[], float] = (
        QueueAge(socket_fds(ep.transport for ep in rt.udp.values()), rt.held)
        if meter.lag_bound else (lambda: 0.0))
    ticker = LagTicker(
        rt.loop, meter, lambda: rt.core.view.active_transactions, queue,
        lambda reason, share, now: rt._drive(rt.core.set_overload, reason, share, now),
        orders=rt.held)  # the listeners' orders: only with a wait bound (Runtime.start)
    ticker.start()
    return ticker
