"""Transaction timer values (RFC 3261 17.1.1.1, Table 4; RFC 6026 Timers L and M) and the
one timer heap the runtime keeps armed with a single ``loop.call_at``.

Sans-IO: nothing here reads a clock. Every deadline is an absolute ``now``-based float
(seconds, monotonic) handed in by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush
from typing import Any, Final, Protocol

__all__ = ["BUCKET", "BUCKETS_PER_SECOND", "TIMER_NAMES", "Timed", "TimerConfig", "TimerQueue"]

#: the transaction timers of RFC 3261 Table 4 and RFC 6026 ("C" is the proxy's, 16.8)
TIMER_NAMES = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M")


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1/T2/T4 and the timers derived from them (RFC 3261 17.1.1.1 and Table 4).

    The ``timer_*`` properties give the value for an *unreliable* transport (UDP); use
    :meth:`duration` for the value that applies to a given transport.
    """

    t1: float = 0.5
    """RTT estimate (RFC 3261 17.1.1.1); the base of every retransmission and timeout timer."""
    t2: float = 4.0
    """Maximum retransmit interval for non-INVITE requests and INVITE responses (17.1.2.2)."""
    t4: float = 5.0
    """Maximum time a message stays in the network (17.1.2.2)."""
    timer_c: float = 180.0
    """Proxy INVITE timer (RFC 3261 16.8: greater than 3 minutes); used by the proxy core."""
    durations: dict[tuple[str, bool], float | None] = field(
        init=False, repr=False, compare=False, hash=False)
    """:meth:`duration` of every timer on both kinds of transport, computed once."""
    by_letter: tuple[dict[str, float | None], dict[str, float | None]] = field(
        init=False, repr=False, compare=False, hash=False)
    """:attr:`durations` by timer letter, unreliable ones first then reliable ones: the
    transactions' lookup, with no key tuple built per lookup."""

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_c"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"TimerConfig.{name} must be a positive finite number, got {value!r}"
                )
        if self.t2 < self.t1:
            raise ValueError(f"TimerConfig.t2 ({self.t2}) must not be smaller than t1 ({self.t1})")
        # Every transaction reads a timer value when it enters a state: one dict lookup on
        # the hot path instead of the match in duration().
        table = {(name, reliable): self._duration(name, reliable)
                 for name in TIMER_NAMES for reliable in (False, True)}
        object.__setattr__(self, "durations", table)
        object.__setattr__(self, "by_letter", tuple(
            {name: table[(name, reliable)] for name in TIMER_NAMES} for reliable in (False, True)))

    # Retransmission timers: initial interval (unreliable transports only).
    @property
    def timer_a(self) -> float:
        """INVITE request retransmit, initially T1, doubling (RFC 3261 17.1.1.2)."""
        return self.t1

    @property
    def timer_e(self) -> float:
        """Non-INVITE request retransmit, initially T1, capped at T2 (RFC 3261 17.1.2.2)."""
        return self.t1

    @property
    def timer_g(self) -> float:
        """INVITE response retransmit, initially T1, capped at T2 (RFC 3261 17.2.1)."""
        return self.t1

    # Transaction timeouts: 64*T1 on every transport.
    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout (RFC 3261 17.1.1.2)."""
        return 64 * self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction timeout (RFC 3261 17.1.2.2)."""
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        """Wait time for the ACK to a non-2xx final (RFC 3261 17.2.1)."""
        return 64 * self.t1

    @property
    def timer_l(self) -> float:
        """Wait time in Accepted for INVITE retransmissions / ACK (RFC 6026 7.1)."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """Wait time in Accepted for 2xx retransmissions (RFC 6026 7.2)."""
        return 64 * self.t1

    # Wait timers: these values on unreliable transports, 0 on reliable ones.
    @property
    def timer_d(self) -> float:
        """Wait time for response retransmissions in Completed (RFC 3261 17.1.1.2): "at least
        32 seconds". The server retransmits its final until its Timer H (64*T1), so with a
        T1 raised above 0.5 s the value grows to 64*T1 to keep absorbing them."""
        return max(32.0, 64 * self.t1)

    @property
    def timer_i(self) -> float:
        """Wait time for ACK retransmissions in Confirmed (RFC 3261 17.2.1)."""
        return self.t4

    @property
    def timer_j(self) -> float:
        """Wait time for non-INVITE request retransmissions (RFC 3261 17.2.2)."""
        return 64 * self.t1

    @property
    def timer_k(self) -> float:
        """Wait time for non-INVITE response retransmissions (RFC 3261 17.1.2.2)."""
        return self.t4

    def duration(self, timer: str, reliable: bool) -> float | None:
        """The value of Timer ``timer`` ("A".."M") on a reliable or unreliable transport, as in
        RFC 3261 Table 4 (+ RFC 6026 L, M; "C" is the proxy's Timer C, 16.8). ``None``: the
        timer is not started at all (retransmission timers A, E, G on reliable transports)."""
        try:
            return self.durations[(timer, reliable)]
        except KeyError:
            raise ValueError(f"unknown transaction timer {timer!r}") from None

    def _duration(self, timer: str, reliable: bool) -> float | None:
        match timer:
            case "A" | "E" | "G":
                return None if reliable else self.t1
            case "B" | "F" | "H" | "L" | "M":
                return 64 * self.t1
            case "C":
                return self.timer_c
            case "D":
                return 0.0 if reliable else self.timer_d
            case "I" | "K":
                return 0.0 if reliable else self.t4
            case "J":
                return 0.0 if reliable else 64 * self.t1
        raise ValueError(f"unknown transaction timer {timer!r}")


class Timed(Protocol):
    """Anything the :class:`TimerQueue` can hold: it exposes its next deadline (or None)."""

    @property
    def deadline(self) -> float | None: ...


_COMPACT_MIN: Final = 256
"""Below this many queued entries the queue never bothers compacting."""

BUCKETS_PER_SECOND: Final = 16
"""Far buckets a second: a power of two, so that a deadline times it and a bucket's edge
(:func:`bucket_of`, ``TimerQueue._edge``) are exact floats. A bucket is poured into the heap
at once when its time comes: with one-second buckets that was every 32-second timer (J, L,
M) of a second of calls, some 10,000 heap pushes at 2,400 calls/s, a stall of several
milliseconds once a second that every message arriving then waited for (the proxy's p99
INVITE to 200 at 1,200 calls/s was 4 to 8 ms against Kamailio's 2, 2026-12-07); a sixteenth
of that now, sixteen times a second."""

BUCKET: Final = 1.0 / BUCKETS_PER_SECOND
"""Seconds of deadlines per far bucket of the :class:`TimerQueue`."""


def bucket_of(deadline: float) -> int:
    """The far bucket of a finite ``deadline``: ``int(deadline // BUCKET)``, the floor of
    the deadline times :data:`BUCKETS_PER_SECOND` (exact: a power of two), without a float
    division (``int()`` truncates towards zero: one less for a negative deadline between two
    bucket edges)."""
    x = deadline * BUCKETS_PER_SECOND
    b = int(x)
    return b - 1 if b > x else b


_Entry = tuple[float, int, list[Any]]


class TimerQueue:
    """Deadlines in one small heap of ``(deadline, seq, slot)`` plus far buckets, with lazy
    cancellation.

    The runtime keeps ONE ``loop.call_at`` armed at :meth:`next_deadline`. Contract: call
    :meth:`schedule` after every call that may have changed ``item.deadline`` (scheduling an
    unchanged deadline again is cheap and pushes nothing). Cancelling is just setting the
    item's deadline to ``None`` (or another value) and calling :meth:`schedule`: the old
    entry becomes stale and is skipped silently.

    Most deadlines are far and most are moved or cancelled before they come: Timer C (3
    minutes, RFC 3261 16.8) until the answer, the 32-second Timers J, L, M of every finished
    call. A single heap of all of them is large (a busy proxy holds 100,000 entries), and
    each pop walks it from top to bottom through cache misses. So only deadlines before
    ``_edge`` go into the heap; later ones are appended to the bucket of their
    :data:`BUCKET` slice, a sixteenth of a second (an entry made stale leaves its bucket at once), and a
    bucket is poured into the heap when the heap has nothing due before it (a two-level timing wheel, as Kamailio's
    tm and the kernel keep). The heap holds about a bucket of deadlines.

    A heap entry holds its item through a one-element ``slot`` list, emptied the moment the
    entry goes stale: a stale entry never keeps its item alive (a branch's 3-minute Timer C
    entry would otherwise hold the whole call, messages and all, for 3 minutes instead of
    32 seconds). A far entry is the item itself in its bucket (``id(item) -> item``), and
    its line in ``_live`` is its deadline, the very float the item holds (its bucket is
    that deadline's): nothing is allocated per far entry but the two dict slots, no
    container the cyclic garbage collector scans, and the 32-second timers of every call
    in flight wait there (``proxy.runtime.memory``). Its heap entry, slot and sequence
    number are made when its bucket is poured.

    Entries are validated on the way out: an entry is live only if its slot still holds the
    item and ``item.deadline`` still equals its deadline. Hence an item is returned at most
    once per deadline, even when it was scheduled several times.

    Items are keyed by identity, so they need not be hashable.
    """

    __slots__ = ("_heap", "_live", "_seq", "_far", "_far_keys", "_far_count", "_edge")

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        #: id(item) -> its latest entry: the heap entry itself, or for a far entry its
        #: deadline alone (its bucket: ``bucket_of(deadline)``)
        self._live: dict[object, _Entry | float] = {}
        self._seq = 0  # the sequence number of the last heap entry made
        #: bucket number (:func:`bucket_of`) -> its items by id; every one of them is at
        #: or after ``_edge``, and an entry made stale by :meth:`schedule` leaves its bucket
        #: at once (a stale far entry is never kept: Timer C's 3 minutes, for every call)
        self._far: dict[int, dict[object, Any]] = {}
        self._far_keys: list[int] = []  # a heap of the bucket numbers in ``_far``
        self._far_count = 0
        self._edge = -math.inf

    def schedule(self, item: Timed) -> None:
        """Queue ``item`` at ``item.deadline``; ``None`` cancels whatever was queued for it."""
        deadline = item.deadline
        key: object = id(item)  # boxed once (the compiled build boxes an int at every use)
        live = self._live
        current = live.get(key)
        if current is not None:
            if isinstance(current, tuple):
                if current[0] == deadline:
                    return  # already queued for exactly this deadline
                current[2][0] = None  # that heap entry is stale now: it lets go of the item
            else:
                if current == deadline:
                    return
                # a far entry is in the bucket of its deadline until that bucket is poured
                # (which replaces its line by the heap entry): it leaves the bucket at once
                del self._far[bucket_of(current)][key]
                self._far_count -= 1
        if deadline is None:
            if current is not None:
                del live[key]
            return
        if deadline < self._edge:
            self._seq = seq = self._seq + 1
            entry = (deadline, seq, [item])
            heappush(self._heap, entry)
            live[key] = entry
        else:
            b = bucket_of(deadline)
            bucket = self._far.get(b)
            if bucket is None:
                self._far[b] = {key: item}
                heappush(self._far_keys, b)
            else:
                bucket[key] = item
            self._far_count += 1
            if current is not None:
                # the index keeps the key it was first given: one int for both dicts
                del live[key]
            live[key] = deadline  # the item's own float: nothing allocated per far entry
        heap = self._heap
        if len(heap) > max(_COMPACT_MIN, 2 * (len(live) - self._far_count)):
            self._compact()

    def pop_due(self, now: float) -> list[Any]:
        """Remove and return every item whose live deadline is ``<= now``, earliest first
        (ties in scheduling order). Stale entries are dropped silently."""
        heap = self._heap
        live = self._live
        due: list[Any] = []
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                return due
            _, _, slot = heappop(heap)
            item = slot[0]
            slot[0] = None
            del live[id(item)]
            due.append(item)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or ``None`` when nothing is queued. Stale entries at the
        head are discarded while peeking, and the next bucket is poured in when the heap has
        nothing before it; afterwards the heap's head (if any) is that live deadline."""
        heap = self._heap
        while True:
            while heap:
                deadline, _, slot = heap[0]
                item = slot[0]
                if item is not None:
                    if item.deadline == deadline:
                        break
                    slot[0] = None  # the item moved without being rescheduled: drop it
                    del self._live[id(item)]
                heappop(heap)
            if self._far_keys and (not heap or heap[0][0] >= self._edge):
                self._pour()
                continue
            return heap[0][0] if heap else None

    def __len__(self) -> int:
        """Number of items currently queued (stale entries are not counted)."""
        return len(self._live)

    def entries(self) -> int:
        """Entries held, stale ones included (what compaction bounds)."""
        return len(self._heap) + self._far_count

    def _pour(self) -> None:
        """Move the earliest bucket's live items into the heap (each with its slot now), in
        the order they were scheduled (their sequence numbers are given here: ties between
        equal deadlines, which share a bucket, keep that order)."""
        b = heappop(self._far_keys)
        bucket = self._far.pop(b)
        self._far_count -= len(bucket)
        self._edge = (b + 1) * BUCKET
        heap = self._heap
        live = self._live
        seq = self._seq
        for key, item in bucket.items():
            deadline = live[key]
            assert not isinstance(deadline, tuple)
            if item.deadline != deadline:  # moved without being rescheduled: drop it
                del live[key]
                continue
            seq += 1
            entry = (deadline, seq, [item])
            heappush(heap, entry)
            live[key] = entry
        self._seq = seq

    def _keep(self, entry: _Entry) -> bool:
        """Whether ``entry`` is live; a stale one lets go of its item."""
        slot = entry[2]
        item = slot[0]
        if item is None:
            return False
        if item.deadline == entry[0]:
            return True
        slot[0] = None
        del self._live[id(item)]
        return False

    def _compact(self) -> None:
        """Drop the heap's stale entries in one pass once they make up more than half of it
        (amortised O(1) per push; the heap holds about a bucket of deadlines, so the pass is
        short; the buckets hold no stale entry)."""
        kept = [e for e in self._heap if self._keep(e)]
        heapify(kept)
        self._heap = kept
