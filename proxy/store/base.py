"""The state-store seam: what the proxy remembers across restarts, behind one Protocol.

Two kinds of state live here:

* **learned routes**: permanent Request-URI rewrites learned from a 301 Moved Permanently
  (RFC 3261 21.3.2: "the requestor SHOULD update any local directories, address books, and
  user location caches with this new value"), or from a 302 that carried an expiry
  (RFC 3261 21.3.3, 20.19);
* **registrations**: the bindings of an address-of-record (RFC 3261 10.3 step 8), one per
  flow of an instance when the UA uses SIP Outbound (RFC 5626 6, ``+sip.instance`` and
  ``reg-id``). Connection ids are process-local and are never persisted: after a restart a
  binding's flow is only its transport/host/port.

Every backend (``memory:``, ``sqlite:PATH``, ``redis://HOST:PORT/DB``, ``rediss://``,
``redis+cluster://HOST:PORT,...``) implements
:class:`StateStore`; :func:`proxy.store.open.open_store` picks one by its spec and imports it
lazily. Every method is a coroutine and a write is durable when its ``await`` returns (for
the sqlite backend: committed and fsync'd). Times are wall-clock unix seconds, passed in as ``now`` so
that tests step the clock and nothing here reads it.

A store has a :meth:`StateStore.generation`: a counter that every write call bumps (in the
sqlite backend, in the same transaction as the write, whatever process makes it). A running
proxy that caches routes polls it on a timer and reloads when it moved, which is how it
notices a ``sip-policy-proxy routes remove`` run from another process. Dropping rows that
have already expired (on a lookup, a listing or :meth:`StateStore.purge_expired`) is
housekeeping and does not bump it: no reader with a current clock can see the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CorruptStoreError",
    "StoreChange",
    "LearnedRoute",
    "SchemaVersionError",
    "StateStore",
    "StoreError",
    "StoredBinding",
]

ROUTE_STATUSES = (301, 302)


class StoreError(Exception):
    """Base class of every error raised by :mod:`proxy.store`.

    The message is one line an operator can act on (it names the store); the backend's own
    exception, when there is one, is chained as ``__cause__`` for the logs.
    """


class SchemaVersionError(StoreError):
    """The store was written by a newer sip-policy-proxy: its schema is unknown to this code."""


class CorruptStoreError(StoreError):
    """The store is damaged, or is not a sip-policy-proxy state store at all."""


@dataclass(frozen=True, slots=True)
class LearnedRoute:
    """A Request-URI rewrite learned from a 3xx (RFC 3261 21.3.2 301, 21.3.3 302 with expires).

    Requests whose Request-URI is ``old_uri`` (canonical text, the lookup key) go to
    ``new_uri`` until ``expires_at``.
    """

    old_uri: str
    new_uri: str
    source: str  # "host:port" of the element that sent the 3xx
    call_id: str  # Call-ID of the call that taught it
    status: int  # 301 or 302
    created_at: float  # unix time
    expires_at: float  # unix time

    def __post_init__(self) -> None:
        if not self.old_uri or not self.new_uri:
            raise ValueError("a learned route needs an old_uri and a new_uri")
        if self.status not in ROUTE_STATUSES:
            raise ValueError(f"a learned route comes from a 301 or a 302, not a {self.status}")

    def expired(self, now: float) -> bool:
        """True once ``now`` has reached ``expires_at``."""
        return self.expires_at <= now


@dataclass(frozen=True, slots=True)
class StoredBinding:
    """One registered contact of an address-of-record, as persisted (RFC 3261 10.3 step 8).

    ``key`` identifies the binding within its AOR: ``"instance|reg_id"`` for a SIP Outbound
    flow (RFC 5626 6), the contact URI otherwise (the core's ``Binding.key``). ``flow_*`` is
    where the REGISTER came from (the core's ``Binding.flow`` without its connection id).
    """

    aor: str
    key: str
    contact: str  # name-addr with its params, as returned in the 200
    uri: str  # the contact URI
    expires_at: float  # unix time
    q: float
    call_id: str
    cseq: int
    flow_transport: str  # "udp" | "tcp" | "tls"
    flow_host: str  # IPv6 without brackets
    flow_port: int
    registered_at: float  # unix time
    instance: str | None = None  # +sip.instance, unquoted (RFC 5626 4.1)
    reg_id: int | None = None  # reg-id (RFC 5626 4.2)
    #: the proxy (``node:``) whose socket holds the flow; "" when unknown (an older store)
    node: str = ""

    def __post_init__(self) -> None:
        if not self.aor or not self.key:
            raise ValueError("a binding needs an aor and a key")

    def expired(self, now: float) -> bool:
        """True once ``now`` has reached ``expires_at`` (as the core's location lookup)."""
        return self.expires_at <= now


@dataclass(frozen=True, slots=True)
class StoreChange:
    """One write, as a shared store (Redis) tells the other proxies about it.

    ``op`` is the name of the write method (``put_route``, ``remove_route``, ``clear_routes``,
    ``put_binding``, ``remove_binding``, ``remove_bindings``); ``origin`` the ``node`` of the
    writer (a proxy skips its own changes); the other fields are that method's arguments.
    """

    op: str
    origin: str
    route: LearnedRoute | None = None
    binding: StoredBinding | None = None
    aor: str | None = None
    key: str | None = None
    old_uri: str | None = None


class StateStore(Protocol):
    """The persistent state behind learned routing and registrations.

    Every method is a coroutine; a write is durable when its ``await`` returns. Calling any
    method other than :meth:`open` before :meth:`open` (or after :meth:`close`) raises
    :class:`StoreError`. Backends raise only :class:`StoreError` (and its subclasses) for
    failures of the store itself.
    """

    async def open(self) -> None:
        """Open the store, creating or migrating its schema (idempotent).

        Raises :class:`SchemaVersionError` for a schema newer than this code knows and
        :class:`CorruptStoreError` for a damaged store or one that is not ours.
        """
        ...

    async def close(self) -> None:
        """Release the store (idempotent)."""
        ...

    async def put_route(self, r: LearnedRoute) -> None:
        """Remember ``r``, replacing any route with the same ``old_uri``."""
        ...

    async def get_route(self, old_uri: str, now: float) -> LearnedRoute | None:
        """The live route for ``old_uri``; an expired one is deleted and None returned."""
        ...

    async def remove_route(self, old_uri: str) -> bool:
        """Forget the route for ``old_uri``; True when there was one (even an expired one)."""
        ...

    async def list_routes(self, now: float) -> list[LearnedRoute]:
        """Every unexpired route, sorted by ``old_uri``."""
        ...

    async def clear_routes(self) -> int:
        """Forget every route; returns how many rows were removed (expired ones included)."""
        ...

    async def put_binding(self, b: StoredBinding) -> None:
        """Save ``b``, replacing the binding with the same ``(aor, key)``."""
        ...

    async def remove_binding(self, aor: str, key: str) -> None:
        """Remove one binding of ``aor`` (RFC 3261 10.3 step 8, expires 0)."""
        ...

    async def remove_bindings(self, aor: str) -> None:
        """Remove every binding of ``aor`` (RFC 3261 10.3 step 6, ``Contact: *``)."""
        ...

    async def list_bindings(self, now: float) -> list[StoredBinding]:
        """Every unexpired binding, sorted by ``(aor, key)``."""
        ...

    async def purge_expired(self, now: float) -> int:
        """Delete expired routes and bindings; returns how many. Does not bump the generation."""
        ...

    async def generation(self) -> int:
        """A counter bumped by every write call, whichever process made it."""
        ...
