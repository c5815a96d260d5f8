"""The stream transports of the runtime: the TCP, TLS and WebSocket (``ws``, ``wss``)
connection managers, built from the configuration (limits, certificates, allowed origins), and
the host names TLS peers are checked against."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.diagnostics import ConfigError, Diagnostic
from proxy.sip.transport import Send
from proxy.transport.tcp import TcpManager
from proxy.transport.tls import TlsManager, client_context, server_context
from proxy.transport.ws import WsManager

if TYPE_CHECKING:
    from proxy.runtime.server import Runtime

log = logging.getLogger("proxy")


def _limits(rt: Runtime) -> dict[str, Any]:
    """The arguments both managers share: the limits of ``limits:`` and the core's answers."""
    lim = rt.config.limits
    return {
        "max_size": lim.max_message_size, "message_timeout": lim.tcp_message_timeout,
        "closed": rt.flow_closed, "max_connections": lim.tcp_max_connections,
        "per_source": lim.tcp_per_source, "idle_timeout": lim.tcp_idle_timeout,
        "in_use": rt.core.conn_in_use, "exempt": _exempt(rt),
        "accept_rate": lim.tcp_accept_rate,
    }


def _exempt(rt: Runtime) -> Callable[[str], bool]:
    """Hosts whose connections are held neither to ``limits.tcp_per_source`` nor to
    ``tcp_idle_timeout``: the upstreams' addresses and ``trusted_relays`` (the sources
    ``per_source_rps`` does not limit either)."""
    upstreams = frozenset(t.host for t in rt.core.view.all_upstreams)
    relays = rt.core.view.settings.trusted_relays
    return lambda host: host in upstreams or host in relays


def tcp_manager(rt: Runtime) -> TcpManager:
    return TcpManager(rt.deliver, rt.failed, **_limits(rt))


def tls_manager(rt: Runtime) -> TlsManager:
    """The TLS manager: a server context when ``tls:`` names a certificate, and always a client
    context (``tls.ca_file`` or the system CAs) for ``sips:`` / ``;transport=tls`` next hops."""
    cfg = rt.config
    tls = cfg.tls
    try:
        server = (server_context(tls.cert_file, tls.key_file, tls.ca_file, tls.verify_client)
                  if tls is not None else None)
        client = (client_context(tls.cert_file, tls.key_file, tls.ca_file)
                  if tls is not None else client_context())
    except OSError as exc:  # ssl.SSLError too
        raise ConfigError([Diagnostic(str(cfg.path), 1, 1, f"tls: {exc}")]) from exc
    files = (tls.cert_file, tls.key_file, tls.ca_file) if tls is not None else (None, None, None)
    return TlsManager(rt.deliver, rt.failed, server_ctx=server, client_ctx=client, files=files,
                      handshake_timeout=cfg.limits.tls_handshake_timeout, **_limits(rt))


def ws_manager(rt: Runtime, transport: str) -> WsManager:
    """The ``ws:`` or ``wss:`` listeners' manager: the stream limits of ``limits:`` (a table of
    its own, like TCP and TLS), the upgrade bounded by ``limits.tls_handshake_timeout``, and
    ``wss:`` with the ``tls:`` certificate (the TLS manager's server context, so that SIGHUP
    reloads both)."""
    ctx = None
    if transport == "wss":
        rt.tls = rt.tls or tls_manager(rt)
        ctx = rt.tls.server_ctx
        if ctx is None:
            raise OSError("wss listen: no certificate configured (tls: cert_file, key_file)")
    cfg = rt.config
    return WsManager(rt.deliver, rt.failed, origins=cfg.ws_allowed_origins or None,
                     handshake_timeout=cfg.limits.tls_handshake_timeout, server_ctx=ctx,
                     **_limits(rt))


def managers(rt: Runtime) -> list[TcpManager]:
    """The stream managers that exist (what ``/metrics`` reports on)."""
    return [m for m in (rt.tcp, rt.tls, rt.ws, rt.wss) if m is not None]


def closed_total(rt: Runtime) -> int:
    """Connections closed since start, every stream transport (what :class:`MemoryTrim`
    watches)."""
    return sum(m.closed_total for m in managers(rt))


def tls_names(rt: Runtime) -> dict[tuple[str, int], str]:
    """Resolved address of each TLS upstream -> the host name its certificate must match
    (RFC 5922 7.2: the name of the URI, not the address it resolved to)."""
    names: dict[tuple[str, int], str] = {}
    for u, t in zip(rt.config.all_upstreams, rt.upstream_plan.targets, strict=True):
        if u.transport == "tls":
            names[(t.host, t.port)] = u.host
    return names


def with_server_name(rt: Runtime, s: Send) -> Send:
    """``s`` with the name a TLS peer's certificate is checked against, taken before the
    host is resolved to an address."""
    name = rt.tls_names.get((s.host, s.port), s.host)
    return s.with_server_name(name)
