"""The recent calls (``trace_calls``, default 1000): a bounded ring of the last calls, each
with its messages as they went on the wire and the policy decisions the core reported, for
``GET /calls``, ``/calls/CALL-ID`` and the ladder.

Cost on the message path: one Call-ID byte search (:func:`~proxy.runtime.callid.call_id_of`),
one dict look-up and, for a message of a call in the ring, one tuple appended to that call's
list. Everything else (From, To, first lines, JSON) is worked out when someone asks.

A call enters the ring with an INVITE the proxy receives whose Call-ID is not in the ring
yet; messages of other Call-IDs (REGISTER, OPTIONS, calls already pushed out) are not kept.
Bounds, whatever the peers send:

- at most ``max_calls`` calls: the oldest (by its first INVITE) goes first;
- at most :data:`MAX_MESSAGES` messages per call (later ones are counted, not kept);
- each message kept up to its first :data:`RAW_LIMIT` bytes (headers and the start of the
  body);
- at most ``max_bytes`` in all (kept bytes plus :data:`MESSAGE_OVERHEAD` per message): past
  it the oldest calls go, whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.runtime.callid import call_id_of

RAW_LIMIT = 4096
MAX_MESSAGES = 256
MESSAGE_OVERHEAD = 160  # bytes a kept message costs besides its raw bytes (tuple, strings)
BYTES_PER_CALL = 32 * 1024  # the default byte budget is this per call of trace_calls
MAX_SUMMARIES = 16  # INVITE transactions (initial and re-INVITEs) summarised per call
MAX_MARKS = 16  # learned routes marked per call

#: one kept message: (Unix time, received?, transport, peer host, peer port, raw, full size)
Message = tuple[float, bool, str, str, int, bytes, int]


class CallTrace:
    """One call of the ring: its messages and what the core said about it."""

    __slots__ = ("call_id", "dropped", "marks", "messages", "size", "started", "summaries")

    def __init__(self, call_id: bytes, started: float) -> None:
        self.call_id = call_id
        self.started = started
        self.messages: list[Message] = []
        self.size = 0  # bytes counted against the ring's budget
        self.dropped = 0  # messages past MAX_MESSAGES
        self.summaries: list[Any] = []  # CallLog values, one per finished INVITE transaction
        self.marks: list[tuple[int, float, str, str]] = []  # (message index, time, kind, text)


class CallRing:
    """The ring; :meth:`message` is the tap, the rest runs when ``/calls`` is read."""

    def __init__(self, max_calls: int, max_bytes: int | None = None) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes if max_bytes is not None else max_calls * BYTES_PER_CALL
        self.calls: dict[bytes, CallTrace] = {}  # insertion order: the oldest call first
        self.bytes = 0
        self.evicted = 0

    def message(self, data: bytes, t: float, inbound: bool, transport: str, host: str,
                port: int) -> None:
        """The tap: keep ``data`` with its call, or start a call on a received INVITE."""
        cid = call_id_of(data)
        if cid is None:
            return
        trace = self.calls.get(cid)
        if trace is None:
            if not inbound or not data.startswith(b"INVITE "):
                return
            trace = self._start(cid, t)
        if len(trace.messages) >= MAX_MESSAGES:
            trace.dropped += 1
            return
        size = len(data)
        raw = data if size <= RAW_LIMIT else data[:RAW_LIMIT]
        trace.messages.append((t, inbound, transport, host, port, raw, size))
        cost = len(raw) + MESSAGE_OVERHEAD
        trace.size += cost
        self.bytes += cost
        if self.bytes > self.max_bytes:
            self._shrink(keep=trace)

    def _start(self, cid: bytes, t: float) -> CallTrace:
        calls = self.calls
        while len(calls) >= self.max_calls:
            self._evict_oldest()
        trace = CallTrace(cid, t)
        trace.size = MESSAGE_OVERHEAD + len(cid)
        self.bytes += trace.size
        calls[cid] = trace
        return trace

    def _evict_oldest(self) -> None:
        oldest = next(iter(self.calls))
        self.bytes -= self.calls.pop(oldest).size
        self.evicted += 1

    def _shrink(self, keep: CallTrace) -> None:
        """Past the byte budget: the oldest calls go (never the one being written, which
        MAX_MESSAGES and RAW_LIMIT bound on their own)."""
        while self.bytes > self.max_bytes and len(self.calls) > 1:
            if next(iter(self.calls)) == keep.call_id:
                self.calls.pop(keep.call_id)  # move it to the newest end
                self.calls[keep.call_id] = keep
            self._evict_oldest()

    # ------------------------------------------------------------------ what the core said

    def summaries(self, records: Iterable[object]) -> None:
        """The per-call summaries of one Effects (CallLog: tried targets, decisions, status)."""
        for rec in records:
            call_id = getattr(rec, "call_id", None)
            if not isinstance(call_id, str):
                continue
            trace = self.calls.get(_key(call_id))
            if trace is not None and len(trace.summaries) < MAX_SUMMARIES:
                trace.summaries.append(rec)

    def learned(self, call_id: str, old_uri: str, new_uri: str, status: int, t: float) -> None:
        """A route learned from a 3xx of this call: marked after the call's latest message
        (the 3xx itself: the core reports it while handling that message)."""
        trace = self.calls.get(_key(call_id))
        if trace is not None and len(trace.marks) < MAX_MARKS:
            trace.marks.append((len(trace.messages) - 1, t, "learned",
                                f"learned ({status}): {old_uri} -> {new_uri}"))

    def get(self, call_id: str) -> CallTrace | None:
        return self.calls.get(_key(call_id))

    def newest_first(self) -> list[CallTrace]:
        return list(reversed(self.calls.values()))


def _key(call_id: str) -> bytes:
    """The ring's key of a Call-ID the core decoded (latin-1, as the parser reads headers)."""
    try:
        return call_id.strip().encode("latin-1")
    except UnicodeEncodeError:
        return b""
