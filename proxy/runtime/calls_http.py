"""``GET /calls``, ``GET /calls/CALL-ID`` and ``GET /calls/CALL-ID/ladder`` (the recent-calls
ring of :mod:`proxy.runtime.calls`). The Call-ID is one path segment, percent-encoded (a
Call-ID may hold ``/`` or ``?``, RFC 3261 25.1 ``word``): ``sip-policy-proxy trace`` encodes
it so. Answers are computed on the event loop from the ring when asked."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from proxy.runtime import calls_json
from proxy.runtime.calls import CallIndex
from proxy.runtime.http import Handler, as_json, response, text
from proxy.runtime.ladder_page import CSP, page


def _ring(rt: Any) -> CallIndex | None:
    tap = getattr(rt, "tap", None)
    return tap.calls if tap is not None else None


def calls_routes(rt: Any) -> dict[str, Handler]:
    """The route patterns of the calls pages, their handlers marked as needing the token."""

    async def listing(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return response(text(405, "method not allowed"), {"Allow": "GET, HEAD"})
        ring = _ring(rt)
        body = [calls_json.summary(t) for t in ring.newest_first()] if ring is not None else []
        return response(as_json(200, body), {"Cache-Control": "no-store"})

    async def one(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return response(text(405, "method not allowed"), {"Allow": "GET, HEAD"})
        segments = request.raw_path.split("?", 1)[0].split("/")[2:]
        ladder = len(segments) == 2 and segments[1] == "ladder"
        if not segments or not segments[0] or len(segments) > 2 or (len(segments) == 2
                                                                      and not ladder):
            return response(text(404, "not found; /calls/CALL-ID or /calls/CALL-ID/ladder"))
        call_id = unquote(segments[0], encoding="latin-1")
        ring = _ring(rt)
        trace = ring.get(call_id) if ring is not None else None
        if trace is None:
            why = "no such call among the recent calls" if ring is not None else \
                "tracing is off (http: absent or trace_calls: 0)"
            return response(as_json(404, {"error": why, "call_id": call_id}))
        call = calls_json.detail(trace)
        if not ladder:
            return response(as_json(200, call), {"Cache-Control": "no-store"})
        body = page(call).encode("utf-8")
        return response((200, "text/html; charset=utf-8", body),
                        {"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                         "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})

    for handler in (listing, one):
        handler.needs_token = True  # type: ignore[attr-defined]
    return {"/calls": listing, "/calls/{tail:.*}": one}

