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
  some path keeps a cycle alive, which is a bug to report, not a reason to pause every call.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

__all__ = ["FULL_INTERVAL", "GcPolicy"]

log = logging.getLogger("proxy.runtime")

#: gen-0 threshold and gen-1 threshold (young collections: about 2,000 and 8,000
#: allocations apart, each scanning at most that many young objects: a few milliseconds)
YOUNG = (2_000, 4)
#: gen-2 threshold out of reach: no automatic full pass
OLD = 1 << 30
#: seconds between two full passes
FULL_INTERVAL = 600.0


class GcPolicy:
    """Applies the thresholds above and runs the periodic full pass on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = FULL_INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self.passes = 0
        self.found = 0  # unreachable objects the full passes found, in all
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*YOUNG, OLD)
        self._handle = self.loop.call_later(self.interval, self.full_pass)

    def full_pass(self) -> int:
        t0 = time.perf_counter()
        found = gc.collect()
        ms = 1000 * (time.perf_counter() - t0)
        self.passes += 1
        self.found += found
        log.info("garbage collection: full pass, %d unreachable objects, %.0f ms", found, ms)
        self._handle = self.loop.call_later(self.interval, self.full_pass)
        return found

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
