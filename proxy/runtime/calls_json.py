"""The JSON of ``GET /calls`` and ``GET /calls/CALL-ID``, worked out from the ring when asked.

``/calls`` (newest first)::

    [{call_id, from, to, started, status, decisions: [{rule, action, status}], tried: [...],
      messages: N}]

``/calls/CALL-ID`` adds ``messages: [{time, offset, direction: in|out, peer, transport,
first_line, raw, size, truncated}]``, ``marks: [{message, time, offset, kind, text}]``, the
policy decisions and learned routes placed on the message where they happened, and
``timings`` (:func:`timings`). ``status`` is the final status the caller got for the first
INVITE (null while it is in progress).

A decision (``rule, action, status``, from the core's per-call summary) is placed on the
response with that status that the proxy received from a branch (not from the caller), the
first such response after the previous decision's; a learned route on the 3xx it came from.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from proxy.runtime.calls import CallTrace, Message
from proxy.sip import host_port_text

_HEADER = re.compile(r"^(from|f|to|t)[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_FIRST_LINE_MAX = 200


def iso(t: float) -> str:
    """Unix seconds -> ``2026-12-01T10:00:00.123456Z``."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def first_line(raw: bytes) -> str:
    eol = raw.find(b"\r\n")
    line = raw[:eol if eol >= 0 else _FIRST_LINE_MAX][:_FIRST_LINE_MAX]
    return line.decode("latin-1")


def status_of(raw: bytes) -> int | None:
    """The status code of a response (``SIP/2.0 486 Busy Here``), None for a request."""
    if raw.startswith(b"SIP/2.0 ") and raw[8:11].isdigit():
        return int(raw[8:11])
    return None


def peer_of(m: Message) -> str:
    return host_port_text(m[3], m[4])


def _from_to(trace: CallTrace) -> tuple[str, str]:
    """From and To of the call: the core's summary, else the first INVITE's header values."""
    if trace.summaries:
        s = trace.summaries[0]
        return str(s.from_), str(s.to)
    found: dict[str, str] = {}
    if trace.messages:
        raw = trace.messages[0][5]
        head = raw[:raw.find(b"\r\n\r\n")].decode("latin-1")
        for m in _HEADER.finditer(head):
            name = m.group(1).lower()[0]  # f | t
            found.setdefault(name, m.group(2))
    return found.get("f", ""), found.get("t", "")


def decisions(trace: CallTrace) -> list[dict[str, Any]]:
    return [{"rule": r, "action": a, "status": s}
            for summary in trace.summaries for r, a, s in summary.decisions]


def tried(trace: CallTrace) -> list[str]:
    seen: dict[str, None] = {}
    for summary in trace.summaries:
        for target in summary.targets:
            seen.setdefault(str(target), None)
    return list(seen)


def summary(trace: CallTrace) -> dict[str, Any]:
    """One entry of ``GET /calls``."""
    from_, to = _from_to(trace)
    return {
        "call_id": trace.call_id.decode("latin-1"),
        "from": from_,
        "to": to,
        "started": iso(trace.started),
        "status": trace.summaries[0].status if trace.summaries else None,
        "decisions": decisions(trace),
        "tried": tried(trace),
        "messages": len(trace.messages),
    }


def detail(trace: CallTrace) -> dict[str, Any]:
    """``GET /calls/CALL-ID``: the summary, every kept message, and the marks."""
    out = summary(trace)
    out["messages"] = [{
        "time": iso(t),
        "offset": round(t - trace.started, 6),
        "direction": "in" if inbound else "out",
        "peer": host_port_text(host, port),
        "transport": transport,
        "first_line": first_line(raw),
        "raw": raw.decode("latin-1"),
        "size": size,
        "truncated": size > len(raw),
    } for t, inbound, transport, host, port, raw, size in trace.messages]
    out["messages_dropped"] = trace.dropped
    out["marks"] = marks(trace)
    for m in out["marks"]:
        at = m["message"]
        m["offset"] = None if at is None else out["messages"][at]["offset"]
    out["timings"] = timings(trace)
    return out


def timings(trace: CallTrace) -> dict[str, float | None]:
    """Seconds from the caller's INVITE, as the messages kept show them: to the first
    response the caller got (``trying``, the proxy's 100), the first ringing one (``ringing``:
    an 18x, the post-dial delay), the final one (``final``) and a 2xx (``answered``), to the
    first INVITE sent on (``forwarded``: the proxy's routing and policy time) and to the first
    BYE (``ended``); ``final_core``: INVITE to final as the core timed it (the
    ``final_response_seconds`` histogram). None: it did not happen, or is not among the
    messages kept."""
    msgs = trace.messages
    found: dict[str, float | None] = dict.fromkeys(
        ("trying", "ringing", "final", "answered", "forwarded", "ended"))
    caller = peer_of(msgs[0]) if msgs else ""
    for t, inbound, _, host, port, raw, _ in msgs:
        offset = round(t - trace.started, 6)
        status = status_of(raw)
        if status is None:
            key = ("forwarded" if not inbound and raw.startswith(b"INVITE ") else
                   "ended" if raw.startswith(b"BYE ") else None)
        elif inbound or host_port_text(host, port) != caller:
            continue
        else:
            key = "trying" if status == 100 else "ringing" if status < 200 else None
            if status >= 200 and found["final"] is None:
                found["final"] = offset
                key = "answered" if status < 300 else None
        if key is not None and found[key] is None:
            found[key] = offset
    found["final_core"] = round(trace.summaries[0].seconds, 6) if trace.summaries else None
    return found


def marks(trace: CallTrace) -> list[dict[str, Any]]:
    """The decisions and learned routes, each on the message where it happened."""
    msgs = trace.messages
    caller = peer_of(msgs[0]) if msgs else ""
    out: list[dict[str, Any]] = []
    at = 0
    for d in decisions(trace):
        where = None
        for i in range(at, len(msgs)):
            m = msgs[i]
            if m[1] and peer_of(m) != caller and status_of(m[5]) == d["status"]:
                where = i
                break
        if where is not None:
            at = where + 1
        out.append({"message": where, "time": iso(msgs[where][0]) if where is not None else None,
                    "kind": "decision",
                    "text": f"{d['rule']}: {d['action']} ({d['status']})"})
    for index, t, kind, text in trace.marks:
        out.append({"message": index if index >= 0 else None, "time": iso(t), "kind": kind,
                    "text": text})
    out.sort(key=lambda m: -1 if m["message"] is None else m["message"])
    return out
