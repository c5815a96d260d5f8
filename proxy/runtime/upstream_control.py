"""Runtime control of upstreams over HTTP (README "Runtime control of upstreams"):
``GET /upstreams`` lists every upstream with its probe and administrative state, and
``POST /upstreams/drain``, ``/upstreams/down``, ``/upstreams/up`` (the upstream's URI in the
body: ``upstream=URI`` form-encoded, or ``{"upstream": "URI"}``) set one, as Kamailio's
``dispatcher.set_state`` does. ``sip-policy-proxy upstreams ...`` is their client.

A state set here is applied to the core at once (:meth:`ProxyCore.set_upstream_admin`: new
calls skip it from the answer on), then written to the state store, from which every other
node applies it (Redis at once, sqlite within a second) and a restart loads it
(:mod:`proxy.runtime.state_upstreams`). Access: every POST needs ``http_token`` when one is
set; without one a POST is taken from the loopback only (:mod:`proxy.runtime.http_access`).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from proxy.config import Upstream
from proxy.core.upstream_admin import STATES
from proxy.runtime.http import Handler, as_json, response, text
from proxy.runtime.state_upstreams import to_admin
from proxy.sip import ParseError, SipUri, parse_uri
from proxy.store import StoreError, UpstreamState

MAX_URI = 512


def install(rt: Any) -> None:
    """States read from the store reach the core through the runtime (its Effects, the
    log line of each change, carried out)."""

    def apply(s: UpstreamState, origin: str) -> None:
        rt._drive(rt.core.set_upstream_admin, to_admin(s), origin, rt.loop.time())

    rt.state.upstreams.apply = apply


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def listing(rt: Any) -> dict[str, Any]:
    """What ``GET /upstreams`` answers: each upstream of each group (in config order), its
    probe state (up, down, off: probing is off, not probed: down by an operator; every group
    is probed), its administrative state, since when and set by which node, and the
    calls up that were sent to it."""
    view = rt.core.view
    probed: dict[str, bool] = {}
    for t, alive in view.upstream_up.items():  # a name (RFC 3263): up while one address is
        name = t.label or f"sip:{t.host}:{t.port}"
        probed[name] = probed.get(name, False) or alive
    calls = view.calls_per_upstream()
    out = []
    for group in rt.config.upstream_groups:
        for u in group.upstreams:
            entry = view.admin_states.get(u.uri)
            admin = "up" if entry is None else entry.state
            if not view.probing:
                probe = "off"
            elif admin == "down" or u.uri not in probed:
                probe = "not probed"
            else:
                probe = "up" if probed[u.uri] else "down"
            out.append({
                "upstream": u.uri, "group": group.name, "probe": probe, "admin": admin,
                "since": None if entry is None else iso(entry.since),
                "by": None if entry is None else entry.node,
                "calls": calls.get(u.uri, 0),
            })
    spec = rt.config.state
    return {"node": rt.state.node, "state": rt.state.name,
            "persistent": spec.strip() != "memory:", "upstreams": out}


def find(upstreams: tuple[Upstream, ...], given: str) -> Upstream | str:
    """The configured upstream ``given`` names: its URI as written in proxy.yaml, or a URI
    (or ``host:port``) with the same host and, when it names them, port and transport. A
    string: why none (or several) match."""
    given = given.strip()
    for u in upstreams:
        if u.uri.strip() == given:
            return u
    text_ = given if given.lower().startswith(("sip:", "sips:")) else f"sip:{given}"
    try:
        uri = parse_uri(text_)
    except ParseError:
        uri = None
    if not isinstance(uri, SipUri):
        return f"{given!r} is not a SIP URI"
    host = uri.host.strip("[]").lower()
    found = {u.uri: u for u in upstreams
             if u.host.lower() == host and (uri.port is None or uri.port == u.port)
             and (uri.transport is None or uri.transport == u.transport)}
    if len(found) == 1:
        return next(iter(found.values()))
    if found:
        return f"{given} matches several upstreams: {', '.join(found)}; give one as written"
    return f"{given} is not an upstream; the upstreams are: " + ", ".join(
        u.uri for u in upstreams)


async def _named(request: web.Request) -> str | None:
    """The upstream a POST names: ``upstream=`` in the query, a form or a JSON body."""
    if "upstream" in request.query:
        return request.query["upstream"]
    raw = await request.read()
    if not raw:
        return None
    body = raw.decode("utf-8", "replace")
    if request.content_type == "application/json" or body.lstrip().startswith("{"):
        try:
            value = json.loads(body)
        except ValueError:
            return None
        got = value.get("upstream") if isinstance(value, dict) else None
        return got if isinstance(got, str) else None
    got_list = parse_qs(body).get("upstream")
    return got_list[0] if got_list else None


async def set_state(rt: Any, upstream: Upstream, state: str) -> dict[str, Any]:
    """Set ``upstream`` to ``state`` on this node and in the store; the answer of a POST."""
    before = rt.core.view.admin_state(upstream.uri)
    s = UpstreamState(upstream.uri, state, time.time(), rt.state.node)
    rt._drive(rt.core.set_upstream_admin, to_admin(s), "here", rt.loop.time())
    stored = await rt.state.put_upstream_state(s)
    if stored and not rt.state.shared and not rt.state.memory:
        try:  # our own write: the sqlite poll need not reload for it
            rt._generation = await rt.store.generation()
        except StoreError:
            pass
    return {"upstream": upstream.uri, "admin": state, "before": before, "since": iso(s.since),
            "by": s.node, "stored": stored or rt.state.memory,
            "persistent": not rt.state.memory}


def upstream_routes(rt: Any) -> dict[str, Handler]:
    """``/upstreams`` (GET) and ``/upstreams/{up|drain|down}`` (POST)."""

    async def show(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return response(text(405, "method not allowed: POST /upstreams/drain, /down or "
                                 "/up with upstream=URI"), {"Allow": "GET, HEAD"})
        return response(as_json(200, listing(rt)), {"Cache-Control": "no-store"})

    async def change(request: web.Request) -> web.StreamResponse:
        state = request.match_info.get("state", "")
        if state not in STATES:
            return response(text(404, "not found; POST /upstreams/drain, /down or /up"))
        if request.method != "POST":
            return response(text(405, "method not allowed"), {"Allow": "POST"})
        given = await _named(request)
        if not given or len(given) > MAX_URI:
            return response(as_json(400, {"error": "name the upstream: upstream=URI in the "
                                          "body (form or JSON) or the query"}))
        upstream = find(rt.config.all_upstreams, given)
        if isinstance(upstream, str):
            return response(as_json(404, {"error": upstream}))
        return response(as_json(200, await set_state(rt, upstream, state)),
                        {"Cache-Control": "no-store"})

    return {"/upstreams": show, "/upstreams/{state}": change}
