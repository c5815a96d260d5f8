"""Values of the sans-IO core: where a request goes (:class:`Target`), where a transaction's
messages go (:class:`Dest`).

:class:`Source`, :class:`Send` and :class:`LocalAddress` cross the boundary between the core
and the transport layer; they live in :mod:`proxy.sip.transport` (which both sides may import)
and are re-exported here so that core modules keep importing them from one place.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from proxy.sip.transport import LocalAddress, Send, Source

__all__ = ["Dest", "LocalAddress", "Send", "Source", "Target"]


class Dest:
    """Where a transaction's messages go: the address responses to a request go to (RFC 3261
    18.2.2, RFC 3581) or a branch's next hop (16.6 step 7); ``conn_id`` pins a stream
    connection (None: any, or UDP). A slotted class with its own ``__init__``, not a
    NamedTuple: the compiled build constructs it natively (one per transaction)."""

    __slots__ = ("transport", "host", "port", "conn_id")

    def __init__(self, transport: str, host: str, port: int, conn_id: int | None) -> None:
        # Final: one Dest is shared by every transaction to the same address
        # (txns.shared_dest), so nothing may change one (mypy refuses an assignment).
        self.transport: Final = transport
        self.host: Final = host
        self.port: Final = port
        self.conn_id: Final = conn_id

    def send(self, data: bytes, token: object = None) -> Send:
        """``data`` to this destination (``token``: what a failure is reported with)."""
        return Send(self.transport, self.host, self.port, data, self.conn_id, token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dest) and (
            self.transport, self.host, self.port, self.conn_id) == (
            other.transport, other.host, other.port, other.conn_id)

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port, self.conn_id))

    def __repr__(self) -> str:
        return f"Dest({self.transport!r}, {self.host!r}, {self.port!r}, {self.conn_id!r})"


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
    #: a Route value pushed on top of the request's (a binding held by another proxy of a
    #: shared state is reached through it, :mod:`proxy.core.shared`)
    route: str | None = None
    #: the flow was named by a flow token (RFC 5626 5.3): a send failure or no answer over it
    #: means the flow failed, 430 to the caller
    by_token: bool = False
