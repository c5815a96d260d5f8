"""Values that cross the boundary between the sans-IO core and the transport layer.

The core never touches a socket: it is fed received bytes with a :class:`Source` and returns
:class:`Send` instructions. The runtime reports failed sends back with the ``token`` of the
:class:`Send` (RFC 3261 16.9: a transport error on a branch is treated as a 503).
"""

from __future__ import annotations

from typing import NamedTuple


class Source(NamedTuple):
    """Where a message came from: its transport, the peer address and, on streams, the connection."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str  # peer IP, IPv6 without brackets
    port: int
    conn_id: int | None = None  # stream connection the message arrived on


class Send(NamedTuple):
    """An instruction to the transport layer: send ``data`` to ``host:port`` over ``transport``.

    On streams, ``conn_id`` names the connection to use when it is still open; otherwise the
    transport reuses a connection to ``host:port`` or opens one (RFC 3261 18.2.2, 18.1.1).
    ``token`` is handed back to :meth:`ProxyCore.on_send_failure` if the send fails.
    """

    transport: str
    host: str
    port: int
    data: bytes
    conn_id: int | None = None
    token: object | None = None


class LocalAddress(NamedTuple):
    """One of the proxy's own listening addresses, as it is written in Via and Record-Route."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str  # IP as bound, IPv6 without brackets
    port: int
    advertised: str  # "host:port" or "[v6]:port" written into Via / Record-Route


class Target(NamedTuple):
    """A place a request is forwarded to (RFC 3261 16.5 target set, 16.6 step 7 next hop).

    ``request_uri`` replaces the Request-URI when not None (a registered contact, a redirect
    target). The destination is ``transport``/``host``/``port``; ``conn_id`` pins a flow
    (RFC 5626) when the binding was learned on a connection.
    """

    transport: str
    host: str
    port: int
    request_uri: str | None = None
    conn_id: int | None = None
    q: float = 1.0
    label: str = ""  # for logs: the upstream URI or contact this target stands for
    aor: str | None = None  # set for a registered binding (RFC 5626 flows)
    instance: str | None = None  # its +sip.instance
    binding_key: str | None = None  # its key in the location store
    via_flow: bool = False  # sent over a UA's flow (RFC 5626): Record-Route names that flow
    #: the URI named its transport (``;transport=udp``): never switched to TCP (RFC 3261 18.1.1)
    fixed_transport: bool = False
