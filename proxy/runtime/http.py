"""The HTTP side (``http: HOST:PORT``): ``/metrics``, ``/health``, ``/ready``, ``/status`` and
the recent calls (``/calls``, ``/calls/CALL-ID``, ``/calls/CALL-ID/ladder``), served by an
aiohttp application on the proxy's own event loop: every handler runs on the loop, so
``/health`` proves that the loop runs and the core's counters are read where they are written.

Access (:mod:`proxy.runtime.http_access`): with ``http_token``, ``/calls*`` and every request
other than GET/HEAD need ``Authorization: Bearer TOKEN`` (or HTTP Basic with the token as the
password, for a browser); ``/metrics``, ``/health``, ``/ready`` and ``/status`` stay open.

It faces operators, but whoever reaches the port can try anything, so it is bounded: at most
:data:`MAX_CONNECTIONS` connections at once (past it a new one is closed at once, counted and
logged), each closed :data:`CONNECTION_LIFETIME` seconds after it was accepted (once its
request in progress is answered; :data:`GRACE` seconds later whatever it does), request lines and header fields of at most
:data:`MAX_LINE` bytes, :data:`MAX_HEADERS` header fields, request bodies of at most
:data:`MAX_BODY` bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.runtime.http_access import Access

log = logging.getLogger("proxy")

Answer = tuple[int, str, bytes]  # status, content type, body
MAX_CONNECTIONS = 64
CONNECTION_LIFETIME = 30.0  # seconds a connection may stay open (keep-alive included)
GRACE = 5.0  # seconds past its lifetime a connection gets to finish its request
KEEPALIVE = 5.0  # seconds an idle keep-alive connection waits for its next request
MAX_LINE = 4096
MAX_HEADERS = 64
MAX_BODY = 64 * 1024
BACKLOG = 128
SERVER = "sip-policy-proxy"


def text(status: int, body: str) -> Answer:
    return status, "text/plain; charset=utf-8", (body + "\n").encode()


def as_json(status: int, obj: Any) -> Answer:
    return status, "application/json", (json.dumps(obj, indent=1) + "\n").encode()


def response(answer: Answer, headers: dict[str, str] | None = None) -> web.Response:
    status, ctype, body = answer
    return web.Response(status=status, body=body,
                        headers={"Content-Type": ctype, "X-Content-Type-Options": "nosniff",
                                 **(headers or {})})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refused(asyncio.Protocol):
    """A connection past :data:`MAX_CONNECTIONS`: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class HttpEndpoint:
    """Serves ``routes`` (GET path -> function returning an :data:`Answer`) and ``extra``
    (path pattern -> aiohttp handler, any method) on ``host:port``. The socket is bound here;
    :meth:`start` begins serving on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                 routes: dict[str, Callable[[], Answer]],
                 extra: dict[str, Handler] | None = None, access: Access | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 lifetime: float = CONNECTION_LIFETIME) -> None:
        self.loop = loop
        self.access = access or Access(None)
        self.max_connections = max_connections
        self.lifetime = lifetime
        bare = host.strip("[]")
        self.sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET,
                                  socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((bare, port))
            self.sock.listen(BACKLOG)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self.access.middleware])
        for path, fn in routes.items():
            app.router.add_get(path, _answering(fn))
        for pattern, handler in (extra or {}).items():
            app.router.add_route("*", pattern, handler)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        app.on_response_prepare.append(_server_header)
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE,
                                    max_line_size=MAX_LINE, max_field_size=MAX_LINE,
                                    max_headers=MAX_HEADERS)
        self.server: asyncio.AbstractServer | None = None
        self._born: dict[RequestHandler, float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = self.loop.create_task(self._open())

    async def _open(self) -> None:
        await self.runner.setup()
        if self._closed:
            return
        self.server = await self.loop.create_server(self._protocol, sock=self.sock,
                                                    backlog=BACKLOG)
        self._sweep = self.loop.call_later(self._period, self._expire)

    def _protocol(self) -> asyncio.BaseProtocol:
        web_server = self.runner.server
        assert web_server is not None  # _open set it up before serving
        if len(web_server.connections) >= self.max_connections:
            self.access.refused("connections", f"more than {self.max_connections} open "
                                "connections: new ones are closed")
            return _Refused()
        handler = web_server()
        if len(self._born) >= 4 * self.max_connections:
            self._prune()
        self._born[handler] = self.loop.time()
        return handler

    def _prune(self) -> None:
        open_ = set(self.runner.server.connections) if self.runner.server is not None else set()
        for h in [h for h in self._born if h not in open_]:
            del self._born[h]

    def _expire(self) -> None:
        """Close the connections older than ``lifetime`` (after their request in progress)."""
        self._prune()
        now = self.loop.time()
        limit, hard = now - self.lifetime, now - self.lifetime - min(GRACE, self.lifetime)
        for h, born in list(self._born.items()):
            if born < hard:  # still open a grace period later (idle, or a slow client)
                h.force_close()
                del self._born[h]
            elif born < limit:
                h.close()  # when its request in progress (if any) is answered
        if not self._closed:
            self._sweep = self.loop.call_later(self._period, self._expire)

    @property
    def _period(self) -> float:
        return min(1.0, self.lifetime / 4)

    def close(self) -> None:
        """Stop listening and close every connection now; the application's clean-up runs
        in the background."""
        if self._closed:
            return
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()
        if self.runner.server is not None:
            for h in self.runner.server.connections:
                h.force_close()
        self._born.clear()
        if self.loop.is_running():
            self.loop.create_task(self.runner.cleanup())


def _answering(fn: Callable[[], Answer]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return response(fn())
        except Exception as exc:  # noqa: BLE001 - an answer never takes the proxy down
            log.exception("http %s", request.path)
            return response(text(500, f"internal error: {exc}"))
    return handle


async def _not_found(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return response(text(405, "method not allowed"), {"Allow": "GET, HEAD"})
    return response(text(404, "not found; try /metrics, /health, /ready, /status, /calls or "
                         "/upstreams"))


async def _server_header(request: web.Request, resp: web.StreamResponse) -> None:
    resp.headers["Server"] = SERVER


# ------------------------------------------------------------------ the proxy's endpoints


def status_of(rt: Any) -> dict[str, Any]:
    """What ``sip-policy-proxy status`` prints (``/status``)."""
    import time

    from proxy.core.probe import target_name, upstream_name

    core = rt.core
    return {
        # up: probed up and not held down; held_for: seconds a policy rule still holds it;
        # admin: the state an operator set (up, drain, down); a named upstream (RFC 3263):
        # one entry per resolved address (target; "resolved": true)
        "upstreams": [{"upstream": upstream_name(s.target), "groups": list(s.groups),
                       "target": target_name(s.target),
                       "resolved": s.target in core.view.resolved_targets,
                       "up": s.up, "probed_up": s.probed_up, "held_for": round(s.held_for, 1),
                       "admin": core.view.admin_state(upstream_name(s.target))}
                      for s in core.view.upstream_states(rt.loop.time())],
        "probing": core.view.probing,
        "registrations": core.view.registrations,
        "learned_routes": len(core.view.learned),
        "transactions": core.view.active_transactions,
        "dialogs": core.view.calls,
        "policy_version": str(core.view.policy.version),
        "policy": str(core.view.policy.path or "builtin"),
        "uptime_seconds": round(time.time() - rt.started, 3),
        "draining": core.view.draining,
        "store_ok": bool(rt.store_ok),
    }


def ready_of(rt: Any) -> Answer:
    """200 when listening and the state store answers; 503 while draining or without store."""
    if rt.core.view.draining:
        return text(503, "draining")
    if not rt.listening:
        return text(503, "starting")
    if not rt.store_ok:
        return text(503, "state store unreachable")
    return text(200, "ready")


def start(rt: Any, host: str, port: int) -> HttpEndpoint:
    """Serve the runtime ``rt`` on ``host:port`` (bound now; served once the loop runs)."""
    from proxy.runtime import streams
    from proxy.runtime.calls_http import calls_routes
    from proxy.runtime.metrics import CONTENT_TYPE, make_registry, render
    from proxy.runtime.tracing import TracingCollector
    from proxy.runtime.upstream_control import upstream_routes

    registry = make_registry(rt.core, rt.reloads, rt.started,
                             lambda: streams.managers(rt), rt.loop.time,
                             getattr(rt, "gate", None))
    registry.register(TracingCollector(rt))  # type: ignore[arg-type]
    handoff = getattr(getattr(rt, "worker", None), "handoff", None)
    if handoff is not None:  # workers: N (proxy.runtime.handoff)
        registry.register(handoff.collector())  # type: ignore[arg-type]
    config = getattr(rt, "config", None)
    access = Access(getattr(config, "http_token", None))
    registry.register(access.collector())  # type: ignore[arg-type]
    endpoint = HttpEndpoint(rt.loop, host, port, {
        "/metrics": lambda: (200, CONTENT_TYPE, render(registry)),
        "/health": lambda: text(200, "ok"),
        "/ready": lambda: ready_of(rt),
        "/status": lambda: as_json(200, status_of(rt)),
    }, {**calls_routes(rt), **upstream_routes(rt)}, access)
    endpoint.start()
    return endpoint
