"""The stream transports of the runtime: the TCP and TLS connection managers, built from the
configuration (limits, certificates), and the host names TLS peers are checked against."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.diagnostics import ConfigError, Diagnostic
from proxy.sip.transport import Send
from proxy.transport.tcp import TcpManager
from proxy.transport.tls import TlsManager, client_context, server_context

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
    }


def _exempt(rt: Runtime) -> Callable[[str], bool]:
    """Hosts whose connections are held neither to ``limits.tcp_per_source`` nor to
    ``tcp_idle_timeout``: the upstreams' addresses and ``trusted_relays`` (the sources
    ``per_source_rps`` does not limit either)."""
    upstreams = frozenset(t.host for t in rt.core.settings.upstreams)
    relays = rt.core.settings.trusted_relays
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


def closed_total(rt: Runtime) -> int:
    """Connections closed since start, TCP and TLS (what :class:`MemoryTrim` watches)."""
    return sum(m.closed_total for m in (rt.tcp, rt.tls) if m is not None)


def tls_names(rt: Runtime) -> dict[tuple[str, int], str]:
    """Resolved address of each TLS upstream -> the host name its certificate must match
    (RFC 5922 7.2: the name of the URI, not the address it resolved to)."""
    names: dict[tuple[str, int], str] = {}
    for u, t in zip(rt.config.upstreams, rt.core.settings.upstreams, strict=True):
        if u.transport == "tls":
            names[(t.host, t.port)] = u.host
    return names


def with_server_name(rt: Runtime, s: Send) -> Send:
    """``s`` with the name a TLS peer's certificate is checked against, taken before the
    host is resolved to an address."""
    name = rt.tls_names.get((s.host, s.port), s.host)
    return s.with_server_name(name)
