"""How the running proxy uses CPython's garbage collector.

A call is freed by reference counting the moment its last transaction ends: the core breaks
its reference cycles itself (:func:`proxy.core.txns.release`). The cyclic collector is then
only a safety net, and its automatic full passes are what must not run: on a busy proxy the
old generation holds every call in flight (hundreds of thousands of objects), and a full
pass over it stalls every call for hundreds of milliseconds, long enough for UDP peers to
retransmit (RFC 3261 17.1.1.2, T1 = 500 ms). Measured with the sipp benchmark (2026-12-01,
compiled build): with thresholds (20000, 50, 100) the p99 INVITE to 200 time was 424 ms at
800 calls/s and 1,000 calls/s was no longer clean; with the policy below, 1,200 calls/s was
clean with a p99 of 32 ms.

A young pass costs in proportion to the young objects it scans (about 0.5 to 1 µs each: they
are scattered over the heap), so the thresholds bound the longest pause. With (10000, 5) a
generation-1 pass scanned some 50,000 objects, 50 to 60 ms every 2 s at 400 calls/s, and the
p99 INVITE to 200 time there was 48 ms; with (2000, 4) no pass took more than a few
milliseconds and the p99 was 8 to 12 ms, at the same CPU per call (the total scanned is the
same: each surviving object is scanned once per young generation whatever the thresholds).
What a finished call keeps for its last timers is kept small for the same reason
(:meth:`proxy.core.context.ResponseContext.settle`).

So:

* what start-up built is frozen (never scanned again);
* young collections stay frequent and small (``YOUNG``): cycles made and dropped quickly
  (an exception's traceback) are still found at once;
* automatic full passes are off (``OLD`` is out of reach), and one full pass runs every
  :data:`FULL_INTERVAL` seconds instead, logged with what it found: a non-zero count means
  some path keeps a cycle alive, which is a bug to report, not a reason to pause every call;
* young passes also run every :data:`YOUNG_INTERVAL` seconds, whatever the counts say: the
  gen-0 count is allocations minus deallocations, and at steady state the calls that expire
  free as much as the new ones allocate, so the count stops reaching its threshold and the
  young generations grow until a pass scans tens of thousands of objects (at 800 calls/s for
  100 s: pauses of 50 to 350 ms every 2 s or so once the first calls expired, a p99 of
  156 ms); a pass every quarter second scans only what a quarter second left alive;
* and the full pass waits for a quiet moment, but not for ever: it scans every object of
  every call in flight, and a finished call waiting for its last timers (Timers J, K, L, M)
  holds 12.7 objects the collector tracks (bench/replay.py --hold 20000 --rate 800, pure
  build, 2026-12-07; 37 before transactions let go of what they never resend, settled
  contexts shared empty containers and far timers became tuples of numbers, 17.8 after
  that: the pause of a full pass over those 20,000 calls, 64,000 transactions, went from
  771 ms to about 260 ms, and bytes per call from 8,938 to 4,602, then 3,252 once far
  timers became bare deadlines and peers' addresses were shared). So when more than
  :data:`QUIET_TRANSACTIONS` transactions are held (about 80 ms of pause) the pass is put
  off, by
  :data:`RETRY_INTERVAL` at a time, and logged once per interval; it runs when the load dips,
  and after :data:`MAX_PUT_OFF` seconds of waiting it runs whatever the load (logged with
  its pause): a proxy that is never quiet still finds a leaking cycle within the hour, at
  the price of one pause an hour (a quarter of a second at 800 calls/s, under T1: no peer
  retransmits for it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

__all__ = ["FULL_INTERVAL", "MAX_PUT_OFF", "QUIET_TRANSACTIONS", "RETRY_INTERVAL", "YOUNG_INTERVAL", "GcPolicy"]

log = logging.getLogger("proxy.runtime")

#: gen-0 threshold and gen-1 threshold (young collections: about 2,000 and 8,000
#: allocations apart, each scanning at most that many young objects: a few milliseconds)
YOUNG = (2_000, 4)
#: gen-2 threshold out of reach: no automatic full pass
OLD = 1 << 30
#: seconds between two young passes run by the clock (generations 0 and 1)
YOUNG_INTERVAL = 0.25
#: seconds between two full passes
FULL_INTERVAL = 600.0
#: a full pass runs early only while the core holds at most this many transactions
#: (at 12.7 tracked objects per call of 3.2 transactions: some 60 ms of pause)
QUIET_TRANSACTIONS = 20_000
#: seconds a pass is put off by load at most: then it runs whatever the load
MAX_PUT_OFF = 3_600.0
#: seconds between two tries of a pass put off by load
RETRY_INTERVAL = 30.0


class GcPolicy:
    """Applies the thresholds above and runs the periodic full pass on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = FULL_INTERVAL,
                 load: Callable[[], int] = lambda: 0) -> None:
        self.loop = loop
        self.interval = interval
        self.load = load  # the transactions the core holds now
        self.passes = 0
        self.put_off = 0  # tries put off by load, in all
        self.found = 0  # unreachable objects the full passes found, in all
        self.young_passes = 0
        self._handle: asyncio.TimerHandle | None = None
        self._young: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None  # when the last put-off line was logged
        self._due_since: float | None = None  # when the pass put off now was first due

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*YOUNG, OLD)
        self._handle = self.loop.call_later(self.interval, self.due)
        self._young = self.loop.call_later(YOUNG_INTERVAL, self.young_pass)

    def young_pass(self) -> None:
        """Collect generations 0 and 1 (what the last quarter second left alive)."""
        gc.collect(1)
        self.young_passes += 1
        self._young = self.loop.call_later(YOUNG_INTERVAL, self.young_pass)

    def due(self) -> int | None:
        """The full pass if the proxy is quiet enough or the pass has waited
        :data:`MAX_PUT_OFF` seconds (its count of unreachable objects), or None when it is
        put off (and retried in :data:`RETRY_INTERVAL` seconds)."""
        held = self.load()
        now = self.loop.time()
        if self._due_since is None:
            self._due_since = now
        if held <= QUIET_TRANSACTIONS or now - self._due_since >= MAX_PUT_OFF:
            if held > QUIET_TRANSACTIONS:
                log.info("garbage collection: full pass put off for %.0f s, runs with %d "
                         "transactions held", now - self._due_since, held)
            self._waiting_since = self._due_since = None
            return self.full_pass()
        if self._waiting_since is None or now - self._waiting_since >= self.interval:
            log.info("garbage collection: full pass put off, %d transactions held (it runs "
                     "at %d or fewer)", held, QUIET_TRANSACTIONS)
            self._waiting_since = now  # logged once per interval while put off
        self.put_off += 1
        self._handle = self.loop.call_later(RETRY_INTERVAL, self.due)
        return None

    def full_pass(self) -> int:
        t0 = time.perf_counter()
        found = gc.collect()
        ms = 1000 * (time.perf_counter() - t0)
        self.passes += 1
        self.found += found
        log.info("garbage collection: full pass, %d unreachable objects, %.0f ms", found, ms)
        self._handle = self.loop.call_later(self.interval, self.due)
        return found

    def stop(self) -> None:
        for handle in (self._handle, self._young):
            if handle is not None:
                handle.cancel()
        self._handle = self._young = None
