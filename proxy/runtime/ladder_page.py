"""``GET /calls/CALL-ID/ladder``: one static HTML page with the call's ladder drawn in inline
SVG (:mod:`proxy.ladder` for the layout), the policy decisions and learned routes marked on
the proxy's line where they happened, and every message below it (``<details>``, no script).

No script, no external font, style sheet or image: the page is served with a
Content-Security-Policy that allows inline styles and nothing else. Every text comes from the
network and is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from proxy.ladder import PROXY, Arrow, Ladder, Mark, build, printable, times

CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
COL = 250  # pixels between two columns
LEFT = 90  # the time column
TOP = 76  # below the column heads
ROW = 34  # one message
MARK_ROW = 30  # one mark

STYLE = """
body{font-family:sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 8px} table.info td{padding:1px 10px 1px 0;font-size:13px}
td.k{color:#666} code,pre{font-family:monospace}
svg text{font-family:monospace;font-size:12px}
.head rect{fill:#eef2f7;stroke:#6b7f99} .head text{font-size:12px}
.life{stroke:#9aa;stroke-dasharray:4 3} .proxyline{stroke:#456;stroke-width:2}
.arrow{stroke:#2b5797;stroke-width:1.5} .arrow.resp{stroke:#287a3e}
.arrow.fail{stroke:#b3261e} .label{fill:#111} .time{fill:#666;font-size:11px}
.decision rect{fill:#fff3cd;stroke:#b7791f} .learned rect{fill:#e0f2fe;stroke:#0369a1}
.mark text{font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px;margin:4px 0 10px}
details summary{cursor:pointer;font-family:monospace;font-size:12px}
"""


def page(call: Mapping[str, Any]) -> str:
    """The HTML page of the JSON of ``GET /calls/CALL-ID``."""
    ladder = build(call)
    status = call.get("status")
    info = [("Call-ID", call.get("call_id", "")), ("From", call.get("from", "")),
            ("To", call.get("to", "")), ("Started", call.get("started", "")),
            ("Status", "in progress" if status is None else status),
            ("Tried", ", ".join(str(t) for t in call.get("tried") or []) or "-"),
            ("Times", times(call.get("timings") or {})),
            ("Decisions", "; ".join(f"{d['rule']}: {d['action']} ({d['status']})"
                                    for d in call.get("decisions") or []) or "-")]
    rows = "".join(f'<tr><td class="k">{escape(k)}</td><td>{_esc(v)}</td></tr>'
                   for k, v in info)
    title = _esc(call.get("call_id", ""))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Call {title}</title><style>{STYLE}</style></head><body>"
        f"<h1>Call {title}</h1><table class=\"info\">{rows}</table>"
        f"{svg(ladder)}{_messages(call)}</body></html>\n")


def svg(ladder: Ladder) -> str:
    """The ladder as one inline ``<svg>``: column heads, life lines, arrows, marks."""
    ncol = len(ladder.columns)
    width = max(_x(ncol - 1) + COL // 2 + 10, _x(PROXY) + 540)
    y = TOP
    body: list[str] = []
    for row in ladder.rows:
        if isinstance(row, Arrow):
            y += ROW
            body.append(_arrow(row, y))
        else:
            y += MARK_ROW
            body.append(_mark(row, y))
    height = y + 30
    parts = [f'<svg class="ladder" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="message ladder">',
             '<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
             'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
             'fill="context-stroke"/></marker></defs>']
    for i, col in enumerate(ladder.columns):
        x = _x(i)
        cls = "proxyline" if i == PROXY else "life"
        parts.append(f'<line class="{cls}" x1="{x}" y1="{TOP - 14}" x2="{x}" y2="{height - 10}"/>')
        parts.append(f'<g class="head"><rect x="{x - COL // 2 + 8}" y="8" width="{COL - 16}" '
                     f'height="50" rx="6"/><text x="{x}" y="29" text-anchor="middle">'
                     f'{_esc(_fit(col.title, 32))}</text><text x="{x}" y="47" '
                     f'text-anchor="middle">{_esc(col.address)}</text></g>')
    parts.extend(body)
    parts.append("</svg>")
    return "".join(parts)


def _x(col: int) -> int:
    return LEFT + COL // 2 + col * COL


def _arrow(a: Arrow, y: int) -> str:
    x1, x2 = _x(a.src), _x(a.dst)
    response = a.label[:1].isdigit()
    code = int(a.label[:3]) if response and a.label[:3].isdigit() else 0
    kind = "arrow resp" + (" fail" if code >= 300 else "") if response else "arrow req"
    room = max(12, abs(x2 - x1) // 7 - 2)
    mid = (x1 + x2) // 2
    return (f'<g class="msg" id="msg-{a.at}"><a href="#raw-{a.at}">'
            f'<line class="{kind}" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" '
            'marker-end="url(#head)"/>'
            f'<text class="label" x="{mid}" y="{y - 6}" text-anchor="middle">'
            f'{_esc(_fit(a.label, room))}</text></a>'
            f'<text class="time" x="8" y="{y + 4}">+{a.offset:.6f}s</text></g>')


def _mark(m: Mark, y: int) -> str:
    x = _x(PROXY)
    text = _fit(m.text, 70)
    w = 14 + 7 * len(text)
    kind = "decision" if m.kind == "decision" else "learned"
    return (f'<g class="mark {kind}"><rect x="{x - 10}" y="{y - 17}" width="{w}" height="22" '
            f'rx="4"/><text x="{x - 3}" y="{y - 2}">{_esc(text)}</text></g>')


def _messages(call: Mapping[str, Any]) -> str:
    out = ["<h2 style=\"font-size:16px\">Messages</h2>"]
    for i, m in enumerate(call.get("messages") or []):
        arrow = "&larr;" if m.get("direction") == "in" else "&rarr;"
        note = (f" (first {len(m.get('raw', ''))} of {m.get('size')} bytes)"
                if m.get("truncated") else "")
        out.append(f'<details id="raw-{i}"><summary>#{i} +{float(m.get("offset", 0)):.6f}s '
                   f'{arrow} {_esc(m.get("peer", ""))}/{_esc(m.get("transport", ""))} '
                   f'{_esc(m.get("first_line", ""))}{note}</summary>'
                   f'<pre>{escape(_text_block(str(m.get("raw", ""))))}</pre></details>')
    dropped = call.get("messages_dropped") or 0
    if dropped:
        out.append(f"<p>{int(dropped)} more messages not kept.</p>")
    return "".join(out)


def _text_block(raw: str) -> str:
    """A message for a ``<pre>``: its lines kept, every other control character escaped."""
    return "\n".join(printable(line) for line in raw.replace("\r\n", "\n").split("\n"))


def _fit(text: str, room: int) -> str:
    return text if len(text) <= room else text[:max(1, room - 1)] + "…"


def _esc(value: object) -> str:
    return escape(printable(str(value)), quote=True)
