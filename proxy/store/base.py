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

A store also knows which life it is in (:meth:`StateStore.incarnation`): an *epoch* made once
when the store is created empty, and the generation, which only grows within one epoch. A
Redis restarted without its data, or a sqlite file replaced under the proxy, has a new epoch
(or a generation that went back): the proxies then write what they hold into it again
instead of taking its emptiness for the truth (the store is a copy; each proxy's memory is
the truth for the registrations it holds).

Writes come in batches (:meth:`StateStore.write_batch`): a Redis pipeline or one sqlite
transaction for many changes, so that a burst of registrations (or the writes pending at
SIGTERM) costs round trips and fsyncs by the batch, not by the change.

And a store keeps the key that proxies without a configured ``secret`` share
(:meth:`StateStore.shared_key`): the first creates it, the others read it; and the
administrative state of each upstream an operator set (:class:`UpstreamState`, ``sip-policy-proxy
upstreams drain|down|up``), which never expires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BATCH_OPS",
    "CorruptStoreError",
    "check_batch",
    "Incarnation",
    "StoreChange",
    "LearnedRoute",
    "SchemaVersionError",
    "StateStore",
    "StoreError",
    "StoredBinding",
    "UpstreamState",
    "UPSTREAM_STATES",
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


#: the administrative states of an upstream (README "Runtime control of upstreams")
UPSTREAM_STATES = ("up", "drain", "down")


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """An upstream's administrative state as an operator set it: ``up``, ``drain`` (no new
    calls, calls in progress go on) or ``down``; ``since`` the wall-clock time it was set,
    ``node`` the proxy that set it. Keyed by ``upstream``, its URI as configured."""

    upstream: str
    state: str
    since: float  # unix time
    node: str = ""

    def __post_init__(self) -> None:
        if not self.upstream:
            raise ValueError("an upstream state needs the upstream")
        if self.state not in UPSTREAM_STATES:
            raise ValueError(f"not an upstream state: {self.state!r} (up, drain or down)")

    def as_dict(self) -> dict[str, object]:
        """As JSON stores it (Redis)."""
        return {"upstream": self.upstream, "state": self.state, "since": self.since,
                "node": self.node}

    @classmethod
    def from_dict(cls, d: object) -> UpstreamState:
        """From :meth:`as_dict`'s form; ValueError (KeyError, TypeError) when it is not."""
        if not isinstance(d, dict):
            raise ValueError("an upstream state is a JSON object")
        return cls(str(d["upstream"]), str(d["state"]), float(d["since"]),
                   str(d.get("node") or ""))


@dataclass(frozen=True, slots=True)
class StoreChange:
    """One write, as a shared store (Redis) tells the other proxies about it.

    ``op`` is the name of the write method (``put_route``, ``remove_route``, ``clear_routes``,
    ``put_binding``, ``remove_binding``, ``remove_bindings``, ``put_upstream_state``);
    ``origin`` the ``node`` of the writer (a proxy skips its own changes); the other fields
    are that method's arguments.
    """

    op: str
    origin: str
    route: LearnedRoute | None = None
    binding: StoredBinding | None = None
    aor: str | None = None
    key: str | None = None
    old_uri: str | None = None
    upstream: UpstreamState | None = None


#: the :class:`StoreChange` ops :meth:`StateStore.write_batch` takes
BATCH_OPS = frozenset({"put_binding", "remove_binding", "remove_bindings", "put_route",
                       "remove_route"})


_NEEDS = {
    "put_binding": ("binding",), "remove_binding": ("aor", "key"), "remove_bindings": ("aor",),
    "put_route": ("route",), "remove_route": ("old_uri",),
}


def check_batch(changes: Sequence[StoreChange]) -> None:
    """ValueError unless every change is a :data:`BATCH_OPS` op with its arguments (checked
    before a backend writes any of them)."""
    for c in changes:
        needs = _NEEDS.get(c.op)
        if needs is None:
            raise ValueError(f"not a batch op: {c.op!r}")
        if any(getattr(c, f) is None for f in needs):
            raise ValueError(f"{c.op} without its {', '.join(needs)}")


@dataclass(frozen=True, slots=True)
class Incarnation:
    """Which life of a store this is (see the module docstring).

    ``epoch`` is made once, when the store is found without one (created, or reset: emptied,
    restarted without its data, replaced); ``generation`` is the write counter, which only
    grows within an epoch.
    """

    epoch: str
    generation: int

    def reset_since(self, seen: Incarnation) -> bool:
        """Whether the store lost writes since ``seen`` was read from it: another epoch, or
        a generation that went back (a restored backup, a failover to a replica that missed
        writes)."""
        return self.epoch != seen.epoch or self.generation < seen.generation


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

    async def write_batch(self, changes: Sequence[StoreChange]) -> int:
        """Apply ``changes`` in order (ops of :data:`BATCH_OPS`, with the arguments of the
        method of that name) in one round trip: a Redis pipeline, one sqlite transaction.
        Bumps the generation once and returns it. Idempotent: after a failure the caller
        writes the same batch again."""
        ...

    async def incarnation(self) -> Incarnation:
        """The store's epoch and generation; a store found without an epoch (reset since it
        was opened) gets its schema and a new epoch here."""
        ...

    async def put_upstream_state(self, s: UpstreamState) -> None:
        """Remember ``s`` (replacing the state of the same upstream); bumps the generation."""
        ...

    async def list_upstream_states(self) -> list[UpstreamState]:
        """Every upstream state set so far, sorted by upstream."""
        ...

    async def shared_key(self, candidate: bytes | None) -> bytes | None:
        """The key proxies without a configured ``secret`` share: with ``candidate``, store it
        unless a key is there already (atomic create-if-absent) and return the stored one;
        with None only read it (None: there is none)."""
        ...
