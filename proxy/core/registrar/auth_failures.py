"""Failed digest authentications, limited per source and per user, sans-IO.

RFC 3261 22.4 and RFC 7616 5.x leave the defence against online password guessing to the
server: a digest response can be checked as fast as the server computes a hash (7,273
guesses a second on one nonce were measured before this limit). Here every failed
authentication (a wrong response, an unknown user) counts against the source address and,
for a user of the realm, against that user: ``max_failures`` failures within ``window``
seconds block the key for ``block`` seconds. While a key is blocked, its requests get 403
without a challenge and without their response being checked, so a blocked guesser learns
nothing; every further attempt that carries credentials extends the block (a guesser that
keeps trying stays blocked).

* A source is an IPv4 address, or the /64 of an IPv6 address (one host usually owns a whole
  /64, and would otherwise get a fresh budget per address).
* The per-user block stops guessing spread over many addresses. The caller may exempt a
  source from it (``exempt`` in :meth:`FailureLimiter.user_blocked`), e.g. the address a
  phone of that user is registered from, so that a guesser cannot lock the real phone out.
* Memory is bounded: at most ``max_entries`` keys per table. Past it, keys that neither
  block nor count any more are forgotten first (that changes nothing); if none is, the
  oldest half goes (a forgotten key starts with a fresh budget: at worst one more round of
  ``max_failures`` guesses for an attacker with that many addresses).

Nothing here reads a clock: ``now`` (seconds, any monotonic origin) is passed in.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from proxy.sip.transport import source_key

__all__ = ["BLOCK", "MAX_FAILURES", "WINDOW", "FailureLimiter", "source_key"]

MAX_FAILURES: Final = 10  # failed authentications per key ...
WINDOW: Final = 60.0  # ... within this many seconds block the key ...
BLOCK: Final = 60.0  # ... for this long after its last attempt
_MAX_ENTRIES: Final = 65536

#: count, start of the counting window, blocked until (0.0: not blocked)
_Tally: TypeAlias = tuple[int, float, float]


class FailureLimiter:
    """Counts failed authentications per source and per user; says who is blocked."""

    __slots__ = ("_sources", "_users", "block", "max_entries", "max_failures", "window")

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW,
                 block: float = BLOCK, *, max_entries: int = _MAX_ENTRIES) -> None:
        if max_failures < 1 or not window > 0 or not block > 0 or max_entries < 2:
            raise ValueError("bad failure limits")
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.max_entries = max_entries
        self._sources: dict[str, _Tally] = {}
        self._users: dict[str, _Tally] = {}

    def __len__(self) -> int:
        return len(self._sources) + len(self._users)

    # ---- queries -----------------------------------------------------------------------

    def source_blocked(self, host: str, now: float, *, extend: bool = False) -> bool:
        """True while the source of ``host`` is blocked; ``extend``: this attempt carries
        credentials, so the block runs ``block`` seconds from now."""
        return self._blocked(self._sources, source_key(host), now, extend)

    def user_blocked(self, user: str, now: float, *, extend: bool = False) -> bool:
        """True while ``user`` is blocked (see :meth:`source_blocked` for ``extend``)."""
        return self._blocked(self._users, user, now, extend)

    def _blocked(self, table: dict[str, _Tally], key: str, now: float, extend: bool) -> bool:
        tally = table.get(key)
        if tally is None or tally[2] <= now:
            return False
        if extend:
            table[key] = (tally[0], tally[1], now + self.block)
        return True

    # ---- counting ----------------------------------------------------------------------

    def failed(self, host: str, user: str | None, now: float) -> None:
        """One failed authentication from ``host``, for ``user`` when it is a user of the
        realm (None for an unknown name: counting those would let anyone fill the table
        with invented names)."""
        self._count(self._sources, source_key(host), now)
        if user is not None:
            self._count(self._users, user, now)

    def _count(self, table: dict[str, _Tally], key: str, now: float) -> None:
        tally = table.get(key)
        if tally is None:
            if len(table) >= self.max_entries:
                self._evict(table, now)
            count, start, until = 1, now, 0.0
        elif now - tally[1] >= self.window:
            count, start, until = 1, now, tally[2]
        else:
            count, start, until = tally[0] + 1, tally[1], tally[2]
        if count >= self.max_failures:
            until = max(until, now + self.block)
        table[key] = (count, start, until)

    def _evict(self, table: dict[str, _Tally], now: float) -> None:
        idle = [k for k, (_, start, until) in table.items()
                if until <= now and now - start >= self.window]
        for k in idle:
            del table[k]
        if len(table) >= self.max_entries:
            for k in list(table)[: len(table) // 2 + 1]:
                del table[k]
