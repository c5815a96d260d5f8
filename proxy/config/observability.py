"""The observability keys of ``proxy.yaml``: ``http: HOST:PORT`` and
``upstream_probe: {interval, timeout}`` (``log_format`` is a plain choice in the loader); and
``dns: {servers: [HOST:PORT, ...]}``, where host names are looked up."""

from __future__ import annotations

import ipaddress

from proxy.config.model import DNS_KEYS, PROBE_KEYS, DnsSettings, UpstreamProbe
from proxy.config.syntax import split_hostport
from proxy.diagnostics import (
    Reporter,
    YNode,
    check_keys,
    get_list,
    get_map,
    get_number,
    get_str,
)

#: the most DNS servers listed (each is asked in turn when the one before fails)
MAX_DNS_SERVERS = 8


def http_address(report: Reporter, node: YNode) -> tuple[str, int] | None:
    """``http: HOST:PORT``: where /metrics, /health, /ready and /status are served."""
    text = get_str(report, node, "http")
    if text is None:
        return None
    parsed = split_hostport(text.strip())
    if isinstance(parsed, str) or parsed[1] is None:
        why = parsed if isinstance(parsed, str) else "the port is missing"
        report.error(node, f"http {text!r}: {why}; expected HOST:PORT, e.g. 127.0.0.1:9090")
        return None
    return parsed[0], parsed[1]


def probe(report: Reporter, node: YNode) -> UpstreamProbe | None:
    """``upstream_probe: {interval: SECONDS, timeout: SECONDS}``; interval 0 turns it off."""
    m = get_map(report, node, "upstream_probe")
    if m is None:
        return None
    found = check_keys(report, m, PROBE_KEYS, (), "upstream_probe")
    d = UpstreamProbe()
    interval, timeout = d.interval, d.timeout
    if (v := found.get("interval")) is not None:
        got = get_number(report, v, "upstream_probe: interval", 0, 3600)
        interval = got if got is not None else interval
    if (v := found.get("timeout")) is not None:
        got = get_number(report, v, "upstream_probe: timeout", 0.1, 60)
        timeout = got if got is not None else timeout
    return UpstreamProbe(interval, timeout)


def dns(report: Reporter, node: YNode) -> DnsSettings | None:
    """``dns: {servers: [HOST:PORT, ...]}``: the DNS servers names are looked up at (RFC 3263),
    each an IP address (a name would need a server to find it), port 53 when left out."""
    m = get_map(report, node, "dns")
    if m is None:
        return None
    found = check_keys(report, m, DNS_KEYS, (), "dns")
    seq_node = found.get("servers")
    if seq_node is None:
        return DnsSettings()
    seq = get_list(report, seq_node, "dns: servers")
    if seq is None:
        return None
    if len(seq.items) > MAX_DNS_SERVERS:
        report.error(seq, f"dns: servers: at most {MAX_DNS_SERVERS} servers, got "
                     f"{len(seq.items)}")
        return None
    servers: list[tuple[str, int]] = []
    for item in seq.items:
        text = get_str(report, item, "a dns server")
        if text is None:
            continue
        parsed = split_hostport(text.strip())
        if isinstance(parsed, str):
            report.error(item, f"dns server {text!r}: {parsed}; expected IP:PORT, e.g. "
                         "127.0.0.1:53 or [::1]:53")
            continue
        host, port = parsed
        try:
            ipaddress.ip_address(host)
        except ValueError:
            report.error(item, f"dns server {text!r}: must be an IP address, not a name "
                         "(a name would need a DNS server to find it)")
            continue
        server = (host, port if port is not None else 53)
        if server in servers:
            report.error(item, f"dns server {text!r}: listed twice")
            continue
        servers.append(server)
    return DnsSettings(tuple(servers))
