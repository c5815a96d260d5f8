"""Flow tokens for an edge proxy (RFC 5626 5.2, SIP Outbound).

An edge proxy that Record-Routes or Paths a request from a UA behind NAT must later send
requests back over the *same* flow. RFC 5626 5.2 lets it keep no state for that: it writes a
flow token into the user part of its Path / Record-Route URI, and the token, when a request
comes back with it, names the flow. The token must not be forgeable (RFC 5626 5.2: "the
proxy ... MUST be able to determine if the flow token has been tampered with"), so it carries
an HMAC; and it must fit a SIP URI user part (RFC 3261 25.1 ``user``), so it is base64url
without padding (RFC 4648 5: ``A-Z a-z 0-9 - _``, all ``unreserved``).

Layout, before base64url (network byte order)::

    version    1 byte   (1)
    flags      1 byte   transport (3 bits) | local host kind (2) | remote host kind (2) |
                        conn_id present (1)
    local host          4 bytes (IPv4), 16 bytes (IPv6) or 1-byte length + UTF-8 text
    local port 2 bytes
    remote host         as local host
    remote port 2 bytes
    conn_id             1-byte length + minimal big-endian unsigned integer (when present)
    boot       8 bytes  version 3 only: the boot id of the process that minted it
    node                version 2: 1-byte length + UTF-8 name of the proxy holding the
                        flow (several proxies sharing one state, RFC 5626 5); version 3: the
                        same, a length of 0 meaning no node
    mac        12 bytes HMAC-SHA256(key, everything above), truncated (RFC 2104 5)

A flow over a connection (a ``conn_id``: TCP, TLS) is written as version 3, with the random
**boot id** of the process (one per start): connection ids start again at 1 in a new process,
so a token minted before a restart must never name whichever connection has that id now
(RFC 5626 5.3: the flow is gone, 430). A flow without a connection (UDP, or a stream flow
named by address only) does not depend on the boot: version 1 without a node (the tokens of a
single proxy are unchanged), version 2 with one. Versions 1 and 2 still decode; a stream flow
from them has no boot id, that is, it is from another start.

``key`` is derived from the configured secret (HMAC-SHA256 of a fixed label), so that the
same secret used elsewhere never yields the same MAC. An IPv4 flow without a connection id is
26 bytes, 35 characters; an IPv6 one 50 bytes, 67 characters (a connection id below 256 adds
11 bytes: the id, the boot id and the empty node).

Hosts come back in canonical form (``2001:db8::1``; IPv4-mapped as ``::ffff:192.0.2.1``, as
the socket layer writes them). A host that is not a plain IP address (an IPv6 address with a
zone, ``fe80::1%eth0``) is carried as text.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Final

__all__ = ["CACHE_SIZE", "MAC_SIZE", "MAX_TOKEN_LENGTH", "Flow", "FlowTokens"]

VERSION = 1
VERSION_NODE = 2  # the layout with the node field
VERSION_BOOT = 3  # the layout of a flow over a connection: boot id, optional node
BOOT_SIZE = 8  # bytes of the per-start boot id
MAC_SIZE = 12  # bytes of HMAC-SHA256 kept: 96 bits
MAX_TOKEN_LENGTH = 1024  # characters; longer input is refused before any work
CACHE_SIZE = 4096  # flows (and verified tokens) remembered, each way
_KEY_LABEL: Final = b"sip-policy-proxy flow token v1 (RFC 5626 5.2)"

# transport code <-> name (3 bits)
_TRANSPORTS: Final = ("udp", "tcp", "tls", "sctp", "ws", "wss")
_TRANSPORT_CODE: Final = {name: code for code, name in enumerate(_TRANSPORTS)}

# host kinds (2 bits)
_IPV4: Final = 0
_IPV6: Final = 1
_TEXT: Final = 2


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow (RFC 5626 3.1 / 5.2): the proxy's socket and the peer's, and on streams the
    connection. ``transport`` is lower case; hosts are IP addresses without brackets."""

    transport: str  # "udp" | "tcp" | "tls" | "sctp" | "ws" | "wss"
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    conn_id: int | None = None
    #: the proxy (``node:``) whose socket this is, when several share one state; None: any
    node: str | None = None
    #: the boot id of the process whose connection ``conn_id`` names (decoded tokens only;
    #: None for a flow without a connection or from an old token); not part of equality
    boot: bytes | None = field(default=None, compare=False)


def _pack_host(host: str, what: str) -> tuple[int, bytes]:
    """(kind, bytes) for a host; raises ValueError when it cannot be carried."""
    if host and (host[0].isdigit() or ":" in host):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv4Address):
            return _IPV4, ip.packed
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is None:
            return _IPV6, ip.packed
    raw = host.encode("utf-8")
    if not raw or len(raw) > 255:
        raise ValueError(f"flow {what} host {host!r}: empty or longer than 255 bytes")
    return _TEXT, bytes((len(raw),)) + raw


def _port(port: int, what: str) -> bytes:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"flow {what} port {port!r} is not 0..65535")
    return port.to_bytes(2, "big")


def _show_v6(packed: bytes) -> str:
    ip = ipaddress.IPv6Address(packed)
    mapped = ip.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


class FlowTokens:
    """Encodes a :class:`Flow` into a token and back (RFC 5626 5.2). Sans-IO.

    ``secret`` (the ``secret`` of ``proxy.yaml``, or random bytes per start) keys the MAC;
    tokens made with another secret do not decode. ``boot`` (random per instance unless
    given) goes into every token of a flow over a connection: :meth:`this_start` tells a
    token of this process from one of an earlier one (RFC 5626 5.3).

    A token is computed once per flow and verified once per token: both directions are
    remembered (the same flow Record-Routes every call of a caller, and every request of a
    dialog brings its token back). Only tokens that verified are remembered, so a stranger's
    forgeries never enter the cache; each cache is emptied when it reaches
    :data:`CACHE_SIZE` entries, so its memory is bounded whatever the traffic.
    """

    __slots__ = ("_key", "_old_key", "_tokens", "_flows", "boot")

    def __init__(self, secret: bytes | str, boot: bytes | None = None) -> None:
        self._key = _derive(secret)
        self._old_key: bytes | None = None
        if boot is None:
            boot = secrets.token_bytes(BOOT_SIZE)
        if len(boot) != BOOT_SIZE:
            raise ValueError(f"a boot id is {BOOT_SIZE} bytes")
        self.boot = bytes(boot)
        self._tokens: dict[tuple[str, str, int, str, int, int | None, str | None], str] = {}
        self._flows: dict[str, Flow] = {}

    def rekey(self, secret: bytes | str, keep_old: bool) -> None:
        """Mint with ``secret`` from now on (the key agreed through a shared state store);
        with ``keep_old`` the tokens minted so far still decode (they sit in the Paths and
        Record-Routes of registrations and calls already made), otherwise they no longer do."""
        key = _derive(secret)
        if key == self._key:
            return
        self._old_key = self._key if keep_old else None
        self._key = key
        self._tokens.clear()
        if not keep_old:
            self._flows.clear()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, "sha256")[:MAC_SIZE]

    def this_start(self, flow: Flow) -> bool:
        """Whether ``flow`` (decoded) can name a connection of this process: it has no
        connection id, or it was minted with this process's boot id (RFC 5626 5.3: a token
        of an earlier start names a connection that is gone)."""
        return flow.conn_id is None or flow.boot == self.boot

    def encode(self, flow: Flow) -> str:
        """The token for ``flow``: base64url without padding, usable as a SIP URI user part.

        Raises ValueError for a flow that cannot be carried (unknown transport, port out of
        range, negative connection id).
        """
        return self.token(flow.transport, flow.local_host, flow.local_port, flow.remote_host,
                          flow.remote_port, flow.conn_id, flow.node)

    def token(self, transport: str, local_host: str, local_port: int, remote_host: str,
              remote_port: int, conn_id: int | None = None, node: str | None = None) -> str:
        """:meth:`encode` of the flow these fields make, without building a :class:`Flow`
        when the token is known: the cache is keyed by the plain tuple of the fields (a
        frozen dataclass hashes and compares in interpreted code, 20,000 instructions a
        lookup against 300)."""
        key = (transport, local_host, local_port, remote_host, remote_port, conn_id, node)
        token = self._tokens.get(key)
        if token is None:
            token = self._encode(Flow(*key))
            if len(self._tokens) >= CACHE_SIZE:
                self._tokens.clear()
            self._tokens[key] = token
        return token

    def _encode(self, flow: Flow) -> str:
        code = _TRANSPORT_CODE.get(flow.transport.lower())
        if code is None:
            raise ValueError(f"flow transport {flow.transport!r} is not one of "
                             f"{', '.join(_TRANSPORTS)}")
        local_kind, local = _pack_host(flow.local_host, "local")
        remote_kind, remote = _pack_host(flow.remote_host, "remote")
        conn_id = flow.conn_id
        flags = code << 5 | local_kind << 3 | remote_kind << 1 | (conn_id is not None)
        if conn_id is not None:
            version = VERSION_BOOT
        else:
            version = VERSION if flow.node is None else VERSION_NODE
        parts = [bytes((version, flags)), local, _port(flow.local_port, "local"),
                 remote, _port(flow.remote_port, "remote")]
        if conn_id is not None:
            if not isinstance(conn_id, int) or conn_id < 0 or conn_id.bit_length() > 64:
                raise ValueError(f"flow conn_id {conn_id!r} is not an unsigned 64-bit integer")
            n = (conn_id.bit_length() + 7) // 8
            parts.append(bytes((n,)) + conn_id.to_bytes(n, "big"))
            parts.append(self.boot)
        if flow.node is not None:
            name = flow.node.encode("utf-8")
            if not 0 < len(name) <= 255:
                raise ValueError(f"flow node {flow.node!r}: empty or longer than 255 bytes")
            parts.append(bytes((len(name),)) + name)
        elif version == VERSION_BOOT:
            parts.append(b"\0")
        payload = b"".join(parts)
        token = base64.urlsafe_b64encode(payload + self._mac(payload))
        return token.rstrip(b"=").decode("ascii")

    def decode(self, token: object) -> Flow | None:
        """The flow ``token`` names; None when it is not one of ours or was tampered with
        (not base64url, truncated, extended, wrong MAC, another secret)."""
        if not isinstance(token, str):
            return None
        flow = self._flows.get(token)
        if flow is None:
            flow = self._verify(token)
            if flow is not None:
                if len(self._flows) >= CACHE_SIZE:
                    self._flows.clear()
                self._flows[token] = flow
        return flow

    def _verify(self, token: str) -> Flow | None:
        if not 0 < len(token) <= MAX_TOKEN_LENGTH:
            return None
        if len(token) % 4 == 1 or not token.isascii():
            return None
        text = token.encode("ascii")
        try:
            data = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_",
                                    validate=True)
        except (binascii.Error, ValueError):
            return None
        # One spelling per token: refuse non-zero trailing bits (another string, same bytes).
        if base64.urlsafe_b64encode(data).rstrip(b"=") != text:
            return None
        if len(data) <= MAC_SIZE + 2:
            return None
        payload, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            old = self._old_key
            if old is None or not hmac.compare_digest(
                    mac, hmac.digest(old, payload, "sha256")[:MAC_SIZE]):
                return None
        return _parse(payload)


def _derive(secret: bytes | str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("a flow-token secret must not be empty")
    return hmac.digest(raw, _KEY_LABEL, "sha256")


def _parse(p: bytes) -> Flow | None:
    """The flow in an authenticated payload; None for a layout this code does not know."""
    version = p[0]
    if version not in (VERSION, VERSION_NODE, VERSION_BOOT):
        return None
    flags = p[1]
    if version == VERSION_BOOT and not flags & 1:
        return None  # version 3 is the layout of a flow over a connection only
    code = flags >> 5
    if code >= len(_TRANSPORTS):
        return None
    i = 2
    hosts: list[str] = []
    ports: list[int] = []
    for kind in ((flags >> 3) & 3, (flags >> 1) & 3):
        if kind == _IPV4:
            end = i + 4
            if end > len(p):
                return None
            hosts.append(str(ipaddress.IPv4Address(p[i:end])))
        elif kind == _IPV6:
            end = i + 16
            if end > len(p):
                return None
            hosts.append(_show_v6(p[i:end]))
        elif kind == _TEXT:
            if i >= len(p):
                return None
            end = i + 1 + p[i]
            if end > len(p):
                return None
            try:
                hosts.append(p[i + 1:end].decode("utf-8"))
            except UnicodeDecodeError:
                return None
        else:
            return None
        if end + 2 > len(p):
            return None
        ports.append(int.from_bytes(p[end:end + 2], "big"))
        i = end + 2
    conn_id: int | None = None
    if flags & 1:
        if i >= len(p):
            return None
        end = i + 1 + p[i]
        if end > len(p) or p[i] > 8:
            return None
        conn_id = int.from_bytes(p[i + 1:end], "big")
        i = end
    boot: bytes | None = None
    if version == VERSION_BOOT:
        end = i + BOOT_SIZE
        if end > len(p):
            return None
        boot = p[i:end]
        i = end
    node: str | None = None
    if version == VERSION_BOOT and i < len(p) and p[i] == 0:
        i += 1  # no node
    elif version != VERSION:
        if i >= len(p) or p[i] == 0:
            return None
        end = i + 1 + p[i]
        if end > len(p):
            return None
        try:
            node = p[i + 1:end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        i = end
    if i != len(p):
        return None
    return Flow(_TRANSPORTS[code], hosts[0], ports[0], hosts[1], ports[1], conn_id, node, boot)
