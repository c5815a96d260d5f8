"""The observability keys of ``proxy.yaml``: ``http: HOST:PORT`` and
``upstream_probe: {interval, timeout}`` (``log_format`` is a plain choice in the loader)."""

from __future__ import annotations

from proxy.config.model import PROBE_KEYS, UpstreamProbe
from proxy.config.syntax import split_hostport
from proxy.diagnostics import Reporter, YNode, check_keys, get_map, get_number, get_str


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
