"""The recent calls (``trace_calls``, default 1000), indexed when someone asks.

On the message path the tap (:class:`proxy.sip.capture.Capture`) only appends each message
to a bounded ring of recent messages: no Call-ID is looked for there. This index finds the
Call-IDs of the messages added since it last looked (one byte search each), groups the ring's
messages by Call-ID and keeps what the core reported about each call (its per-call summaries
and learned routes). A call is a Call-ID whose first message in the ring is an INVITE the
proxy received; ``GET /calls`` lists the newest ``trace_calls`` of them.

Bounds: the ring holds at most ``trace_calls`` x :data:`MESSAGES_PER_CALL` messages and
``trace_calls`` x :data:`BYTES_PER_CALL` bytes (each message cut at
:data:`~proxy.sip.capture.RAW_LIMIT`); the summaries and marks of at most 2 x ``trace_calls``
calls are kept; a call shows at most :data:`MAX_MESSAGES` messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any

from proxy.sip.capture import Capture, Captured, call_id_of

MESSAGES_PER_CALL = 16  # the ring's size per call of trace_calls (a call is some 12-14)
BYTES_PER_CALL = 16 * 1024
MAX_MESSAGES = 256  # messages shown per call
MAX_SUMMARIES = 16  # INVITE transactions (initial and re-INVITEs) summarised per call
MAX_MARKS = 16  # learned routes marked per call

#: one message of a call: (Unix time, received?, transport, peer host, peer port, raw, size)
Message = tuple[float, bool, str, str, int, bytes, int]


class CallTrace:
    """One call as the index sees it now: its messages and what the core said about it."""

    __slots__ = ("call_id", "dropped", "marks", "messages", "started", "summaries")

    def __init__(self, call_id: bytes, messages: list[Message], dropped: int,
                 summaries: list[Any], marks: list[tuple[int, float, str, str]]) -> None:
        self.call_id = call_id
        self.started = messages[0][0] if messages else 0.0
        self.messages = messages
        self.dropped = dropped  # messages past MAX_MESSAGES
        self.summaries = summaries  # CallLog values, one per finished INVITE transaction
        self.marks = marks  # (message index, time, kind, text)


class CallIndex:
    """The calls of the capture ring; :meth:`summaries` and :meth:`learned` are fed by the
    runtime from each Effects, the rest runs when ``/calls`` is read."""

    def __init__(self, capture: Capture, max_calls: int) -> None:
        self.capture = capture
        self.max_calls = max_calls
        self._summaries: dict[bytes, list[Any]] = {}
        self._marks: dict[bytes, list[tuple[int, float, str, str]]] = {}  # (seq, t, kind, text)
        self._cids: deque[bytes | None] = deque()  # the Call-ID of each message of the ring
        self._indexed = 0  # capture.appended when _cids was brought up to date

    # ------------------------------------------------------------------ what the core said

    def summaries(self, records: Iterable[object]) -> None:
        """The per-call summaries of one Effects (CallLog: tried targets, decisions, status)."""
        for rec in records:
            call_id = getattr(rec, "call_id", None)
            if isinstance(call_id, str):
                kept = self._entry(self._summaries, _key(call_id))
                if len(kept) < MAX_SUMMARIES:
                    kept.append(rec)

    def learned(self, call_id: str, old_uri: str, new_uri: str, status: int, t: float) -> None:
        """A route learned from a 3xx of this call, marked on the call's latest message (the
        3xx itself: the core reports it while handling that message)."""
        kept = self._entry(self._marks, _key(call_id))
        if len(kept) < MAX_MARKS:
            kept.append((self.capture.appended - 1, t, "learned",
                         f"learned ({status}): {old_uri} -> {new_uri}"))

    def _entry(self, table: dict[bytes, list[Any]], key: bytes) -> list[Any]:
        found = table.get(key)
        if found is None:
            while len(table) >= 2 * self.max_calls:
                del table[next(iter(table))]  # the oldest call's
            found = table[key] = []
        return found

    # ------------------------------------------------------------------ the index

    def _refresh(self) -> list[Captured]:
        """The ring as a list, with the Call-IDs of the messages added since the last time."""
        ring = self.capture.ring
        items = list(ring) if ring is not None else []
        new = min(self.capture.appended - self._indexed, len(items))
        for item in islice(items, len(items) - new, None):
            self._cids.append(call_id_of(item[5]))
        self._indexed = self.capture.appended
        while len(self._cids) > len(items):
            self._cids.popleft()
        return items

    def _groups(self) -> tuple[list[Captured], dict[bytes, list[int]]]:
        items = self._refresh()
        groups: dict[bytes, list[int]] = {}
        for i, cid in enumerate(self._cids):
            if cid is not None:
                found = groups.get(cid)
                if found is None:
                    groups[cid] = [i]
                else:
                    found.append(i)
        return items, groups

    def newest_first(self) -> list[CallTrace]:
        """The calls in the ring, newest first, at most ``max_calls``."""
        items, groups = self._groups()
        starts = sorted(((positions[0], cid) for cid, positions in groups.items()
                         if _starts_a_call(items[positions[0]])), reverse=True)
        return [self._trace(cid, items, groups[cid]) for _, cid in starts[:self.max_calls]]

    def get(self, call_id: str) -> CallTrace | None:
        key = _key(call_id)
        items, groups = self._groups()
        positions = groups.get(key)
        if positions is None or not _starts_a_call(items[positions[0]]):
            return None
        return self._trace(key, items, positions)

    def _trace(self, cid: bytes, items: list[Captured], positions: list[int]) -> CallTrace:
        first_seq = self.capture.appended - len(items)
        shown = positions[:MAX_MESSAGES]
        messages: list[Message] = [
            (it[0], it[1], it[2], it[3], it[4], it[5], it[7]) for it in (items[i] for i in shown)]
        marks = []
        for seq, t, kind, text in self._marks.get(cid, ()):
            at = -1  # the call's last message at or before the one marked
            for n, i in enumerate(shown):
                if first_seq + i <= seq:
                    at = n
            marks.append((at, t, kind, text))
        return CallTrace(cid, messages, len(positions) - len(shown),
                         list(self._summaries.get(cid, ())), marks)


def _starts_a_call(item: Captured) -> bool:
    return item[1] and item[5].startswith(b"INVITE ")


def _key(call_id: str) -> bytes:
    """The index's key of a Call-ID the core decoded (latin-1, as the parser reads headers)."""
    try:
        return call_id.strip().encode("latin-1")
    except UnicodeEncodeError:
        return b""
