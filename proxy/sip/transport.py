"""Transport addressing values (RFC 3261 18): what crosses the seam between the sans-IO layers
and the socket layer.

The core never touches a socket: it is fed received bytes with a :class:`Source` and returns
:class:`Send` instructions; a transport (``proxy.transport``) turns a :class:`Send` into bytes
on a wire. Both sides import these values from here, so neither imports the other. The runtime
reports failed sends back with the ``token`` of the :class:`Send` (RFC 3261 16.9: a transport
error on a branch is treated as a 503).

Standard library only, no IO.
"""

from __future__ import annotations

import ipaddress
from typing import Final, NamedTuple

__all__ = ["MESSAGE_TRANSPORTS", "WS_TRANSPORTS", "LocalAddress", "Send", "Source", "source_key"]

#: SIP over WebSocket (RFC 7118), plain and over TLS
WS_TRANSPORTS: Final = frozenset(("ws", "wss"))
#: transports that carry one SIP message per datagram or WebSocket message, so that its
#: length is known without Content-Length (RFC 3261 18.3 is for byte streams; RFC 7118 5)
MESSAGE_TRANSPORTS: Final = frozenset(("udp", "ws", "wss"))


def source_key(host: str) -> str:
    """What a source address counts under, for every per-source bound (the UDP flood gate,
    ``limits.per_source_rps``, ``limits.tcp_per_source``, failed authentications): an IPv4
    address itself (an IPv4-mapped IPv6 peer of a dual-stack socket is that IPv4 address), or
    the /64 of an IPv6 address (a host is given a /64, RFC 4291 2.5.1; counting single
    addresses would let one host be 2^64 sources). Brackets and a zone index are ignored."""
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


class Source(NamedTuple):
    """Where a message came from: its transport, the peer address and, on streams, the connection."""

    transport: str  # "udp" | "tcp" | "tls" | "ws" | "wss"
    host: str  # peer IP, IPv6 without brackets
    port: int
    conn_id: int | None = None  # stream connection the message arrived on


class Send:
    """An instruction to the transport layer: send ``data`` to ``host:port`` over ``transport``.

    On streams, ``conn_id`` names the connection to use when it is still open; otherwise the
    transport reuses a connection to ``host:port`` or opens one (RFC 3261 18.2.2, 18.1.1).
    ``token`` is handed back to the core's ``on_send_failure`` if the send fails.

    A slotted class, not a NamedTuple: the core makes seven per call, and the compiled build
    constructs a class natively (a NamedTuple goes through an interpreted ``__new__``).
    """

    __slots__ = ("conn_id", "data", "host", "port", "server_name", "token", "transport")

    def __init__(self, transport: str, host: str, port: int, data: bytes,
                 conn_id: int | None = None, token: object | None = None,
                 server_name: str | None = None) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.data = data
        self.conn_id = conn_id
        self.token = token
        #: TLS: the host name the peer's certificate must match (RFC 5922 7.2): the host of
        #: the URI the request is sent to, before it was resolved to ``host``; None: ``host``
        self.server_name = server_name

    def with_host(self, host: str) -> Send:
        """The same send to another address (``host`` resolved to an IP)."""
        return Send(self.transport, host, self.port, self.data, self.conn_id, self.token,
                    self.server_name)

    def with_server_name(self, server_name: str | None) -> Send:
        return Send(self.transport, self.host, self.port, self.data, self.conn_id, self.token,
                    server_name)

    def __repr__(self) -> str:
        return (f"Send({self.transport!r}, {self.host!r}, {self.port}, {len(self.data)} bytes, "
                f"conn_id={self.conn_id!r}, server_name={self.server_name!r})")


class LocalAddress(NamedTuple):
    """One of the proxy's own listening addresses, as it is written in Via and Record-Route."""

    transport: str  # "udp" | "tcp" | "tls" | "ws" | "wss"
    host: str  # IP as bound, IPv6 without brackets
    port: int
    advertised: str  # "host:port" or "[v6]:port" written into Via / Record-Route
    #: the Via sent-by when it is not ``advertised``: a worker's own UDP port, so that the
    #: responses to what it forwards come back to it (RFC 3261 18.2.2; README "Workers")
    sent_by: str = ""
