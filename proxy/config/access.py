"""The access keys of ``proxy.yaml`` that :mod:`proxy.config.loader` reads with these helpers:
``limits.per_source_rps``, ``limits.tcp_max_connections``, ``limits.tcp_idle_timeout``,
``limits.tcp_per_source``, ``limits.tcp_message_timeout``, ``limits.tls_handshake_timeout``,
``limits.tcp_accept_rate``, ``limits.udp_flood_rps``, ``limits.overload_lag_ms``,
``limits.max_transactions``, ``tls.verify_client`` and ``ws_allowed_origins``."""

from __future__ import annotations

import re
from typing import Any

from proxy.diagnostics import Reporter, YNode, get_bool, get_int, get_list, get_number, get_str

#: an origin as a browser sends it (RFC 6454 6.2): scheme "://" host [":" port], no path
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")


def access_limits(report: Reporter, found: dict[str, YNode]) -> dict[str, Any]:
    """``limits.per_source_rps``, ``tcp_max_connections``, ``tcp_idle_timeout``,
    ``tcp_per_source``, ``tcp_message_timeout``, ``tls_handshake_timeout``,
    ``tcp_accept_rate``, ``udp_flood_rps``, ``overload_lag_ms``, ``max_transactions``."""
    out: dict[str, Any] = {}
    if (v := found.get("per_source_rps")) is not None:
        rps = get_int(report, v, "limits: per_source_rps", 0, 1_000_000)
        if rps is not None:
            out["per_source_rps"] = rps
    if (v := found.get("tcp_max_connections")) is not None:
        conns = get_int(report, v, "limits: tcp_max_connections", 1, 1_000_000)
        if conns is not None:
            out["tcp_max_connections"] = conns
    if (v := found.get("tcp_idle_timeout")) is not None:
        idle = get_number(report, v, "limits: tcp_idle_timeout", 1, 86400)
        if idle is not None:
            out["tcp_idle_timeout"] = float(idle)
    if (v := found.get("tcp_per_source")) is not None:
        per = get_int(report, v, "limits: tcp_per_source", 1, 1_000_000)
        if per is not None:
            out["tcp_per_source"] = per
    if (v := found.get("tcp_message_timeout")) is not None:
        bound = get_number(report, v, "limits: tcp_message_timeout", 0.5, 3600)
        if bound is not None:
            out["tcp_message_timeout"] = float(bound)
    if (v := found.get("tls_handshake_timeout")) is not None:
        bound = get_number(report, v, "limits: tls_handshake_timeout", 0.5, 300)
        if bound is not None:
            out["tls_handshake_timeout"] = float(bound)
    if (v := found.get("tcp_accept_rate")) is not None:
        rate = get_int(report, v, "limits: tcp_accept_rate", 0, 1_000_000)
        if rate is not None:
            out["tcp_accept_rate"] = rate
    if (v := found.get("udp_flood_rps")) is not None:
        rate = get_int(report, v, "limits: udp_flood_rps", 0, 10_000_000)
        if rate is not None:
            out["udp_flood_rps"] = rate
    if (v := found.get("overload_lag_ms")) is not None:
        lag = get_int(report, v, "limits: overload_lag_ms", 0, 10_000)
        if lag is not None:
            out["overload_lag_ms"] = lag
    if (v := found.get("max_transactions")) is not None:
        most = get_int(report, v, "limits: max_transactions", 0, 100_000_000)
        if most is not None:
            out["max_transactions"] = most
    return out


def verify_client(report: Reporter, found: dict[str, YNode]) -> bool:
    """``tls.verify_client`` (mutual TLS); it needs ``ca_file``."""
    v = found.get("verify_client")
    if v is None:
        return False
    verify = bool(get_bool(report, v, "tls: verify_client"))
    if verify and "ca_file" not in found:
        report.error(v, "tls: verify_client needs ca_file (the CA that signs the clients' "
                     "certificates)")
    return verify


def ws_origins(report: Reporter, node: YNode) -> tuple[str, ...]:
    """``ws_allowed_origins``: the ``Origin`` values (``https://phone.example.com``, RFC 6454)
    a WebSocket upgrade may carry; a browser sends the origin of the page that opened it."""
    seq = get_list(report, node, "ws_allowed_origins")
    if seq is None:
        return ()
    found: list[str] = []
    for item in seq.items:
        text = get_str(report, item, "an entry of ws_allowed_origins")
        if text is None:
            continue
        origin = text.strip().lower().rstrip("/")
        if _ORIGIN.fullmatch(origin) is None:
            report.error(item, f"ws_allowed_origins: {text!r} is not an origin: write "
                         "SCHEME://HOST[:PORT] as a browser sends it, e.g. "
                         "https://phone.example.com (no path)")
            continue
        found.append(origin)
    return tuple(dict.fromkeys(found))
