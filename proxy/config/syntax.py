"""The syntax of single ``proxy.yaml`` values (listen entries, upstream URIs, hosts): each
parser returns its value, or an error message (str)."""

from __future__ import annotations

import ipaddress
import re

from proxy.config.model import DEFAULT_PORT, LISTEN_TRANSPORTS, TRANSPORTS, Listen, Upstream

# Syntax of the individual values. Each parser returns its value, or an error message (str).

# RFC 1123 host names (RFC 3261 25.1 hostname: toplabel must not start with a digit, but
# numeric labels are common in practice; an all-digit name is read as an IPv4 address).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_IPV4ISH = re.compile(r"[0-9.]+")


def _check_host(host: str) -> str | None:
    """Error message for a host without brackets or port, or None when valid."""
    if not host:
        return "the host is missing"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"invalid IPv6 address {host!r}"
        return None
    if _IPV4ISH.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"invalid IPv4 address {host!r}"
        return None
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return f"invalid host name {host!r}"
    return None


def _parse_port(text: str) -> int | str:
    if not text.isdigit() or not text.isascii():
        return f"invalid port {text!r}"
    port = int(text)
    if not 1 <= port <= 65535:
        return f"port {port} is out of range 1..65535"
    return port


def split_hostport(text: str) -> tuple[str, int | None] | str:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` -> (host without brackets, port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return "missing ']' after the IPv6 address"
        host, rest = text[1:end], text[end + 1:]
        if ":" not in host:
            return f"only an IPv6 address goes in brackets, not {host!r}"
        if rest and not rest.startswith(":"):
            return f"unexpected {rest!r} after the IPv6 address"
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            return "an IPv6 address must be written in brackets, e.g. [::1]:5060"
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
    error = _check_host(host)
    if error:
        return error
    if port_text is None:
        return host, None
    port = _parse_port(port_text)
    if isinstance(port, str):
        return port
    return host, port


def parse_listen(text: str) -> Listen | str:
    """``TRANSPORT:HOST:PORT`` (``udp:[::1]:5060``); the port defaults to 5060 (tls 5061,
    ws 80, wss 443)."""
    transport, sep, rest = text.strip().partition(":")
    transport = transport.lower()
    if not sep or transport not in LISTEN_TRANSPORTS:
        return (f"expected TRANSPORT:HOST:PORT with TRANSPORT one of "
                f"{', '.join(LISTEN_TRANSPORTS)}, e.g. udp:127.0.0.1:5060")
    parsed = split_hostport(rest)
    if isinstance(parsed, str):
        return parsed
    host, port = parsed
    return Listen(transport, host, port if port is not None else DEFAULT_PORT[transport])


_URI_PARAMS = ("transport", "lr")


def parse_upstream(text: str) -> Upstream | str:
    """A SIP or SIPS URI naming a host (RFC 3261 19.1.1): ``sip:HOST[:PORT][;transport=T]``."""
    uri = text.strip()
    scheme, sep, rest = uri.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips"):
        return "expected a sip: or sips: URI, e.g. sip:127.0.0.1:5080"
    if "?" in rest:
        return "URI headers (?...) are not allowed in an upstream"
    hostport, *params = rest.split(";")
    if "@" in hostport:
        return "an upstream names a host, not a user: remove the 'user@' part"
    parsed = split_hostport(hostport)
    if isinstance(parsed, str):
        return parsed
    host, port = parsed
    transport: str | None = None
    for param in params:
        name, _, value = param.partition("=")
        name = name.strip().lower()
        if name == "transport":
            value = value.strip().lower()
            if value not in TRANSPORTS:
                return f"transport must be one of {', '.join(TRANSPORTS)}, got {value!r}"
            transport = value
        elif name == "lr":
            continue
        else:
            return f"unknown URI parameter {name!r}; allowed: {', '.join(_URI_PARAMS)}"
    if scheme == "sips":
        if transport == "udp":
            return "sips: requires TLS; transport=udp is not possible (RFC 3261 26.2.2)"
        transport = "tls"
    transport = transport or "udp"
    return Upstream(uri, host, port if port is not None else DEFAULT_PORT[transport], transport)


def plain_host(text: str) -> str:
    """A host without port, lowercased, or ``"!message"``."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    error = _check_host(host)
    if error:
        if ":" in text and not text.startswith("["):
            try:
                ipaddress.IPv6Address(text)
            except ValueError:
                return "!write the host without a port"
        return f"!{error}"
    if ":" in host:
        return str(ipaddress.IPv6Address(host))
    return host.lower().rstrip(".")


def host_or_network(text: str) -> str:
    """A host name, an IP address or a CIDR network (normalised), or ``"!message"``."""
    if "/" in text:
        network = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
        try:
            return str(network(text, strict=True))
        except ValueError as exc:
            try:
                loose = network(text, strict=False)
            except ValueError:
                return f"!invalid CIDR network ({exc})"
            return f"!host bits set in the network (did you mean {str(loose)!r}?)"
    if text.startswith("[") and not text.endswith("]"):
        return "!write the address without a port (ports are ignored)"
    host = text[1:-1] if text.startswith("[") else text
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            if host.count(":") == 1:
                return "!write the host without a port (ports are ignored)"
            return f"!invalid IPv6 address {host!r}"
    error = _check_host(host)
    if error:
        return f"!{error}"
    return host.lower().rstrip(".")

