"""The message ladder of one call, as a model and as text: what ``GET /calls/CALL-ID/ladder``
draws in SVG (:mod:`proxy.runtime.ladder_page`) and ``sip-policy-proxy trace CALL-ID`` prints,
both made from the JSON of ``GET /calls/CALL-ID``.

Columns: the caller (where the first INVITE came from), the proxy, then every other peer in
the order it first appears (the branches: upstreams, registered phones, redirect targets).
Rows: one arrow per message, in the order the proxy saw them, with its time since the first
one; after a message, the marks placed on it (the policy decisions, the routes learned).

Everything shown comes from the network: the text form replaces control characters, the HTML
form escapes everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

PROXY = 1  # the proxy's column
LABEL_MAX = 60


class Column(NamedTuple):
    title: str  # caller | proxy | the target's URI (or "peer")
    address: str  # HOST:PORT, empty for the proxy


class Arrow(NamedTuple):
    at: int  # the message's index in the call's messages
    offset: float  # seconds since the call's first message
    src: int  # column the arrow starts at
    dst: int  # column it points to
    label: str  # the first line, shortened
    transport: str


class Mark(NamedTuple):
    at: int | None  # the message it follows (None: not placed)
    kind: str  # decision | learned
    text: str


class Ladder(NamedTuple):
    columns: list[Column]
    rows: list[Arrow | Mark]

    @property
    def arrows(self) -> list[Arrow]:
        return [r for r in self.rows if isinstance(r, Arrow)]


def short_label(first_line: str) -> str:
    """``SIP/2.0 486 Busy Here`` -> ``486 Busy Here``; a request line without ``SIP/2.0``."""
    line = printable(first_line)
    if line.startswith("SIP/2.0 "):
        line = line[8:]
    elif line.endswith(" SIP/2.0"):
        line = line[:-8]
    return line if len(line) <= LABEL_MAX else line[:LABEL_MAX - 1] + "…"


def printable(text: str) -> str:
    """``text`` with every control character escaped (it came from the network)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def build(call: Mapping[str, Any]) -> Ladder:
    """The ladder of the JSON of ``GET /calls/CALL-ID``."""
    messages: Sequence[Mapping[str, Any]] = call.get("messages") or []
    caller = str(messages[0]["peer"]) if messages else ""
    columns = [Column("caller", caller), Column("proxy", "")]
    where: dict[str, int] = {caller: 0}
    tried = [str(t) for t in call.get("tried") or []]
    rows: list[Arrow | Mark] = []
    marks: dict[int | None, list[Mark]] = {}
    for m in call.get("marks") or []:
        index = m.get("message")
        marks.setdefault(index if isinstance(index, int) else None, []).append(
            Mark(index if isinstance(index, int) else None, str(m.get("kind", "")),
                 printable(str(m.get("text", "")))))
    for i, msg in enumerate(messages):
        peer = str(msg["peer"])
        col = where.get(peer)
        if col is None:
            col = where[peer] = len(columns)
            columns.append(Column(_title(peer, tried), peer))
        inbound = msg.get("direction") == "in"
        rows.append(Arrow(i, float(msg.get("offset", 0.0)), col if inbound else PROXY,
                          PROXY if inbound else col, short_label(str(msg.get("first_line", ""))),
                          str(msg.get("transport", ""))))
        rows.extend(marks.pop(i, []))
    for rest in marks.values():  # not placed on a message: at the end
        rows.extend(rest)
    return Ladder(columns, rows)


def _title(peer: str, tried: list[str]) -> str:
    """The tried target (URI) that names ``peer``, else ``peer``."""
    for target in tried:
        if peer in target:
            return printable(target)
    return "peer"


# ------------------------------------------------------------------ text


WIDTH = 26  # characters between two columns
TIME_WIDTH = 12


def times(timings: Mapping[str, Any]) -> str:
    """``trying +0.0002 s, forwarded +0.0003 s, ringing +0.1 s, final +2.3 s, ...`` (what
    happened, in the order it happens)."""
    shown = [f"{k} +{v:.6f} s" for k in ("trying", "forwarded", "ringing", "answered", "final",
                                          "ended")
             if isinstance(v := timings.get(k), int | float)]
    return ", ".join(shown) or "-"


def text(call: Mapping[str, Any]) -> str:
    """The ladder for a terminal: the call's header lines, then one line per row."""
    ladder = build(call)
    lines = [f"Call-ID: {printable(str(call.get('call_id', '')))}",
             f"From:    {printable(str(call.get('from', '')))}",
             f"To:      {printable(str(call.get('to', '')))}",
             f"Started: {call.get('started', '')}   Status: "
             f"{call.get('status') if call.get('status') is not None else 'in progress'}",
             f"Tried:   {', '.join(printable(str(t)) for t in call.get('tried') or []) or '-'}",
             f"Times:   {times(call.get('timings') or {})}",
             ""]
    ncol = len(ladder.columns)
    lines.append(_row_text([c.title for c in ladder.columns], ncol))
    lines.append(_row_text([c.address for c in ladder.columns], ncol))
    for row in ladder.rows:
        if isinstance(row, Arrow):
            lines.append(_arrow_text(row, ncol))
        else:
            sign = "*" if row.kind == "decision" else "+"
            bar = _bars(ncol)
            at = TIME_WIDTH + PROXY * WIDTH
            lines.append((bar[:at] + f"{sign} {row.text}").rstrip())
    dropped = call.get("messages_dropped") or 0
    if dropped:
        lines.append(f"({dropped} more messages not kept)")
    return "\n".join(lines)


def _row_text(cells: list[str], ncol: int) -> str:
    out = " " * TIME_WIDTH
    for i, cell in enumerate(cells):
        cell = printable(cell)
        room = WIDTH - 1 if i < ncol - 1 else len(cell)
        out += cell[:room].ljust(WIDTH)
    return out.rstrip()


def _bars(ncol: int) -> str:
    line = [" "] * (TIME_WIDTH + (ncol - 1) * WIDTH + 1)
    for c in range(ncol):
        line[TIME_WIDTH + c * WIDTH] = "|"
    return "".join(line)


def _arrow_text(a: Arrow, ncol: int) -> str:
    line = list(_bars(ncol))
    lo, hi = sorted((a.src, a.dst))
    x0, x1 = TIME_WIDTH + lo * WIDTH + 1, TIME_WIDTH + hi * WIDTH - 1
    span = x1 - x0 + 1
    for x in range(x0, x1 + 1):
        line[x] = "-"
    if a.dst > a.src:
        line[x1] = ">"
    else:
        line[x0] = "<"
    label = f" {a.label} "
    if len(label) > span - 2:
        label = label[:span - 3] + "… "
    start = x0 + 1 + (span - 2 - len(label)) // 2
    line[start:start + len(label)] = label
    stamp = f"+{a.offset:.6f}".ljust(TIME_WIDTH)
    return (stamp + "".join(line)[TIME_WIDTH:]).rstrip()
