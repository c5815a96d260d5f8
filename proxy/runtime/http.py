"""The HTTP side: ``/metrics``, ``/health``, ``/ready`` and ``/status`` (for
``sip-policy-proxy status``), served by the standard library's ``ThreadingHTTPServer`` on a
thread of its own (no HTTP parsing here).

Every answer is computed on the event loop (``call_soon_threadsafe``), so ``/health`` proves
that the loop runs, and the core's counters are only ever read by the thread that writes them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("proxy")

Answer = tuple[int, str, bytes]  # status, content type, body
LOOP_TIMEOUT = 5.0  # seconds an answer may wait for the event loop


def text(status: int, body: str) -> Answer:
    return status, "text/plain; charset=utf-8", (body + "\n").encode()


def as_json(status: int, obj: Any) -> Answer:
    return status, "application/json", (json.dumps(obj, indent=1) + "\n").encode()


class HttpEndpoint:
    """Serves ``routes`` (path -> function returning an :data:`Answer`, run on ``loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                 routes: dict[str, Callable[[], Answer]]) -> None:
        self.loop = loop
        self.routes = routes
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "sip-policy-proxy"

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                status, ctype, body = endpoint.answer(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http %s", format % args)

        family_host = host.strip("[]")
        server_cls = ThreadingHTTPServer
        if ":" in family_host:
            import socket

            class V6Server(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_cls = V6Server
        self.server = server_cls((family_host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def answer(self, path: str) -> Answer:
        route = self.routes.get(path)
        if route is None:
            return text(404, "not found; try /metrics, /health, /ready or /status")
        fut: concurrent.futures.Future[Answer] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(route())
            except BaseException as exc:  # noqa: BLE001 - handed to the HTTP thread
                fut.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
            return fut.result(LOOP_TIMEOUT)
        except RuntimeError:
            return text(503, "the event loop is closed")
        except concurrent.futures.TimeoutError:
            return text(503, f"the event loop did not answer in {LOOP_TIMEOUT:g} s")
        except Exception as exc:  # noqa: BLE001
            log.exception("http %s", path)
            return text(500, f"internal error: {exc}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ the proxy's endpoints


def status_of(rt: Any) -> dict[str, Any]:
    """What ``sip-policy-proxy status`` prints (``/status``)."""
    import time

    from proxy.core.probe import upstream_name

    core = rt.core
    return {
        "upstreams": [{"upstream": upstream_name(t), "up": bool(alive)}
                      for t, alive in core.prober.up.items()],
        "probing": core.prober.enabled,
        "registrations": core.location.count(),
        "learned_routes": len(core.learned),
        "transactions": core.active_transactions,
        "dialogs": len(core.dialogs),
        "policy_version": str(core.policy.version),
        "policy": str(core.policy.path or "builtin"),
        "uptime_seconds": round(time.time() - rt.started, 3),
        "draining": core.draining,
        "store_ok": bool(rt.store_ok),
    }


def ready_of(rt: Any) -> Answer:
    """200 when listening and the state store answers; 503 while draining or without store."""
    if rt.core.draining:
        return text(503, "draining")
    if not rt.listening:
        return text(503, "starting")
    if not rt.store_ok:
        return text(503, "state store unreachable")
    return text(200, "ready")


def start(rt: Any, host: str, port: int) -> HttpEndpoint:
    """Serve the runtime ``rt`` on ``host:port``."""
    from proxy.runtime import streams
    from proxy.runtime.metrics import CONTENT_TYPE, make_registry, render

    registry = make_registry(rt.core, rt.reloads, rt.started,
                             lambda: streams.managers(rt))
    endpoint = HttpEndpoint(rt.loop, host, port, {
        "/metrics": lambda: (200, CONTENT_TYPE, render(registry)),
        "/health": lambda: text(200, "ok"),
        "/ready": lambda: ready_of(rt),
        "/status": lambda: as_json(200, status_of(rt)),
    })
    endpoint.start()
    return endpoint
