"""The tracing keys of ``proxy.yaml``: ``hep: {to: udp:HOST:PORT, id: N}`` (HEPv3 export),
``trace_calls: N`` (recent calls kept for ``/calls``) and ``http_token`` (the bearer token of
``/calls*`` and of every POST), with the warning ``check`` gives when the HTTP side listens
beyond the loopback without a token."""

from __future__ import annotations

import ipaddress
from typing import Any

from proxy.config.model import HEP_KEYS, HepTarget
from proxy.config.syntax import split_hostport
from proxy.diagnostics import Reporter, YNode, check_keys, get_int, get_map, get_str

MAX_TRACE_CALLS = 100_000
MAX_CAPTURE_ID = 2**32 - 1  # HEP chunk 0x000c is an unsigned 32-bit integer
MIN_TOKEN_LENGTH = 16


def hep(report: Reporter, node: YNode) -> HepTarget | None:
    """``hep: {to: udp:HOST:PORT, id: N}``; ``id`` (the capture agent id) defaults to 1."""
    m = get_map(report, node, "hep")
    if m is None:
        return None
    found = check_keys(report, m, HEP_KEYS, ("to",), "hep")
    target: tuple[str, int] | None = None
    if (v := found.get("to")) is not None:
        target = _udp_target(report, v)
    capture_id = 1
    if (v := found.get("id")) is not None:
        got = get_int(report, v, "hep: id", 0, MAX_CAPTURE_ID)
        capture_id = got if got is not None else capture_id
    if target is None:
        return None
    return HepTarget(target[0], target[1], capture_id)


def _udp_target(report: Reporter, node: YNode) -> tuple[str, int] | None:
    text = get_str(report, node, "hep: to")
    if text is None:
        return None
    transport, sep, rest = text.strip().partition(":")
    if not sep or transport.lower() != "udp":
        report.error(node, f"hep: to {text!r}: expected udp:HOST:PORT, e.g. udp:10.0.0.5:9060 "
                     "(HEP goes over UDP)")
        return None
    parsed = split_hostport(rest)
    if isinstance(parsed, str) or parsed[1] is None:
        why = parsed if isinstance(parsed, str) else "the port is missing"
        report.error(node, f"hep: to {text!r}: {why}; expected udp:HOST:PORT")
        return None
    return parsed[0], parsed[1]


def trace_calls(report: Reporter, node: YNode) -> int | None:
    """``trace_calls: N``: how many recent calls ``/calls`` keeps (0 turns the ring off)."""
    return get_int(report, node, "trace_calls", 0, MAX_TRACE_CALLS)


def http_token(report: Reporter, node: YNode) -> str | None:
    """``http_token``: any non-empty string without spaces (it travels in a header)."""
    text = get_str(report, node, "http_token")
    if text is None:
        return None
    if not text.isprintable() or any(c.isspace() for c in text) or not text.isascii():
        report.error(node, "http_token must be printable ASCII without spaces (it is sent in "
                     "an Authorization header)")
        return None
    if len(text) < MIN_TOKEN_LENGTH:
        report.warning(node, f"http_token is short ({len(text)} characters): use at least "
                       f"{MIN_TOKEN_LENGTH} random ones, e.g. `openssl rand -hex 16`")
    return text


def is_loopback(host: str) -> bool:
    """``host`` (an IP or a name) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cross_check(report: Reporter, found: dict[str, YNode], values: dict[str, Any]) -> None:
    """``http:`` beyond the loopback without ``http_token``: /calls (raw SIP, digest
    credentials included) and the POSTs would be open to whoever reaches the port."""
    http = values.get("http")
    if http is not None and values.get("http_token") is None and not is_loopback(http[0]):
        report.warning(found["http"], f"http {http[0]}:{http[1]} listens beyond the loopback "
                       "without http_token: /calls (the raw SIP messages of recent calls) and "
                       "every POST are open to whoever reaches it; set http_token")
    if "http_token" in found and http is None and "http" not in found:
        report.warning(found["http_token"], "http_token without http: there is no HTTP side "
                       "to protect")
