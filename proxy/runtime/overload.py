"""The measure of load behind overload control (``limits.overload_lag_ms``,
``limits.max_transactions``; the refusals themselves: :mod:`proxy.core.access.overload`).

Each tick (every :data:`TICK` seconds) a timer of the event loop fires; how late it fires is
the time the loop spent on other work past its turn, the queueing delay every message meets
on its way through the proxy. The lateness is smoothed (an exponentially weighted mean over
about :data:`ALPHA`:sup:`-1` ticks, so one garbage collection pass or one burst does not
start an episode). The proxy is overloaded when the smoothed lag passes ``overload_lag_ms``
or the core holds more than ``max_transactions`` transactions; it stays so until the lag is
under half the bound and the transactions under 90 % of theirs, and for at least
:data:`HOLD` seconds (hysteresis: one episode is one pair of log lines, not a flapping
stream of them). The runtime tells the core through ``ProxyCore.set_overload`` and carries out
the Effects (the episode's log lines).

:class:`LoadMeter` is the decision without the loop (a fake clock drives it in the unit
tests); :class:`LagTicker` is its timer on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: seconds between two ticks
TICK = 0.005
#: weight of the newest lateness in the smoothed lag
ALPHA = 0.1
#: seconds an episode lasts at least
HOLD = 1.0


class LoadMeter:
    """The overload decision from the ticks' lateness and the transaction count."""

    __slots__ = ("hold", "lag", "lag_bound", "max_transactions", "reason", "since")

    def __init__(self, lag_ms: int, max_transactions: int, hold: float = HOLD) -> None:
        self.lag_bound = lag_ms / 1000.0  # 0: the lag is not a measure of overload
        self.max_transactions = max_transactions  # 0: no bound
        self.hold = hold
        self.lag = 0.0  # the smoothed lag, seconds
        self.reason: str | None = None  # why overloaded, None when not
        self.since = 0.0

    def sample(self, late: float, transactions: int, now: float) -> bool:
        """One tick: ``late`` seconds after it was due, ``transactions`` held. True when the
        state changed (:attr:`reason` says the new one)."""
        self.lag += ALPHA * (max(late, 0.0) - self.lag)
        lag_over = self.lag_bound > 0 and self.lag > self.lag_bound
        most = self.max_transactions
        txn_over = most > 0 and transactions > most
        if lag_over or txn_over:
            why = (f"event loop {1000 * self.lag:.0f} ms late (bound {1000 * self.lag_bound:.0f})"
                   if lag_over else f"{transactions} transactions held (bound {most})")
            if self.reason is None:
                self.reason, self.since = why, now
                return True
            return False
        if self.reason is None or now - self.since < self.hold:
            return False
        if (self.lag_bound > 0 and self.lag > self.lag_bound / 2) or (
                most > 0 and transactions > most * 0.9):
            return False
        self.reason = None
        return True


class LagTicker:
    """The tick on the event loop: feeds :class:`LoadMeter` and calls ``changed(reason,
    now)`` when the state changes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, meter: LoadMeter,
                 transactions: Callable[[], int],
                 changed: Callable[[str | None, float], None], tick: float = TICK) -> None:
        self.loop = loop
        self.meter = meter
        self.transactions = transactions
        self.changed = changed
        self.tick = tick
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.meter.lag_bound > 0 or self.meter.max_transactions > 0:
            self._due = self.loop.time() + self.tick
            self._handle = self.loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        meter = self.meter
        if meter.sample(now - self._due, self.transactions(), now):
            self.changed(meter.reason, now)
        self._due = now + self.tick
        self._handle = self.loop.call_at(self._due, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
