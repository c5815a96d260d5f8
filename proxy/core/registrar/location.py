"""Location service and the local registrar (RFC 3261 10.3), sans-IO.

Bindings are keyed by address-of-record and, when the UA gives them, by its ``+sip.instance``
and ``reg-id`` (RFC 5626 6): one binding per flow of an instance, so that SIP Outbound can
later try the other flows of the same instance. Without an instance the key is the contact
URI, as in RFC 3261 10.3 step 8.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeAlias

from proxy.core.types import Source
from proxy.sip import NameAddr, SipMessage, SipUri
from proxy.sip.transport import WS_TRANSPORTS

DEFAULT_EXPIRES = 3600
MIN_EXPIRES = 60
MAX_EXPIRES = 86400


@dataclass(slots=True)
class Binding:
    """One registered contact of an address-of-record (RFC 3261 10.3 step 8)."""

    aor: str
    contact: str  # the contact as it is returned in the 200 (name-addr with its params)
    uri: str  # the contact URI
    expires_at: float
    q: float
    call_id: str
    cseq: int
    flow: Source  # where the REGISTER came from
    registered_at: float
    instance: str | None = None
    reg_id: int | None = None
    #: the proxy of a shared state whose socket holds the flow; None: this one (README
    #: "Durable and shared state", RFC 5626 5 with several edge proxies)
    node: str | None = None

    @property
    def on_flow(self) -> bool:
        """Whether the binding lives on the flow it was registered over: an outbound one
        (RFC 5626 6: +sip.instance and reg-id), or one over WebSocket, whose Contact is not
        an address anyone can reach (RFC 7118 5.3: ``...@xxxx.invalid;transport=ws``)."""
        return self.reg_id is not None or self.flow.transport in WS_TRANSPORTS

    @property
    def key(self) -> str:
        if self.instance is not None and self.reg_id is not None:
            return f"{self.instance}|{self.reg_id}"
        return self.uri


class BindingWrite(NamedTuple):
    """A binding saved by this proxy (a REGISTER, a 2xx learned from the upstream registrar):
    the runtime writes it to the state store in the background (write-behind)."""

    binding: Binding


class BindingDelete(NamedTuple):
    """A binding (``key``), or every binding of ``aor`` (``key`` None), removed by this proxy."""

    aor: str
    key: str | None


BindingChange: TypeAlias = BindingWrite | BindingDelete


class LocationStore(Protocol):
    """The seam to the location state (memory now; SQLite/Redis backends later).

    An AOR has an *entry* from its first binding until :meth:`expire` finds it without any
    binding; :meth:`known` tells whether it has one (a registered user that lost its bindings
    gets 480 rather than 404, RFC 3261 21.4.18)."""

    def lookup(self, aor: str, now: float) -> list[Binding]: ...

    def known(self, aor: str) -> bool: ...

    def save(self, binding: Binding) -> None: ...

    def remove(self, aor: str, key: str) -> None: ...

    def remove_all(self, aor: str) -> None: ...

    def remove_flow(self, conn_id: int) -> list[Binding]: ...

    def has_conn(self, conn_id: int) -> bool: ...

    def expire(self, now: float) -> list[Binding]: ...

    def next_expiry(self) -> float | None: ...

    def count(self) -> int: ...

    # Shared state (proxy.core.shared): changes from the store, applied without recording.

    def apply_save(self, binding: Binding) -> None: ...

    def apply_remove(self, aor: str, key: str) -> None: ...

    def apply_remove_all(self, aor: str) -> None: ...

    def bindings(self) -> list[Binding]: ...

    #: changes to record for a state store (None: record nothing), taken by take_changes
    journal: list[BindingChange] | None

    def take_changes(self) -> list[BindingChange]: ...


@dataclass(slots=True)
class MemoryLocation:
    """In-process location service (RFC 3261 10.3).

    Expired bindings leave by :meth:`expire`, which the owner calls from a timer (at
    :meth:`next_expiry`, or periodically); :meth:`lookup` never returns an expired one. A heap
    of ``(expires_at, aor, key)`` with lazy deletion makes ``expire`` cost only what is due
    (O(k log n) for k removals); refreshes leave stale heap entries behind, compacted when the
    heap has grown to twice its size after the last compaction. Outbound bindings are indexed
    by connection so that :meth:`remove_flow` costs only the flows of that connection.

    An AOR whose bindings were all removed (``remove``, ``remove_all``, a closed flow) keeps its
    empty entry, so :meth:`known` stays true, until ``expire`` reaches the expiry time one of
    its former bindings had; then the entry is dropped.
    """

    _by_aor: dict[str, dict[str, Binding]] = field(default_factory=dict)
    _heap: list[tuple[float, str, str]] = field(default_factory=list)
    _by_conn: dict[int, set[tuple[str, str]]] = field(default_factory=dict)
    _count: int = 0
    _compact_at: int = 1024
    #: the changes made through the LocationStore methods since :meth:`take_changes`, for the
    #: state store; None (the default) records nothing. Expiry and lookups record nothing
    #: (the store expires bindings itself), nor do the ``apply_*`` methods (changes that came
    #: from the store).
    journal: list[BindingChange] | None = None

    # ---- internal: every binding enters by _put and leaves by _drop ------------------------

    def _put(self, b: Binding) -> None:
        entries = self._by_aor.setdefault(b.aor, {})
        key = b.key
        old = entries.get(key)
        if old is None:
            self._count += 1
        else:
            self._unindex(old, key)
        entries[key] = b
        if b.on_flow and b.flow.conn_id is not None:
            self._by_conn.setdefault(b.flow.conn_id, set()).add((b.aor, key))
        heap = self._heap
        heapq.heappush(heap, (b.expires_at, b.aor, key))
        if len(heap) > self._compact_at:
            self._compact()

    def _drop(self, entries: dict[str, Binding], key: str) -> Binding:
        b = entries.pop(key)
        self._count -= 1
        self._unindex(b, key)
        return b

    def _unindex(self, b: Binding, key: str) -> None:
        conn_id = b.flow.conn_id
        if not b.on_flow or conn_id is None:
            return
        keys = self._by_conn.get(conn_id)
        if keys is not None:
            keys.discard((b.aor, key))
            if not keys:
                del self._by_conn[conn_id]

    def _compact(self) -> None:
        """Rebuild the heap from what it must still fire for: each binding's expiry, and for
        an AOR left empty the latest expiry its former bindings had (when the entry goes)."""
        by_aor = self._by_aor
        empty_until: dict[str, float] = {}
        for t, aor, _ in self._heap:
            entries = by_aor.get(aor)
            if entries is not None and not entries and t > empty_until.get(aor, -math.inf):
                empty_until[aor] = t
        live = [(b.expires_at, aor, key)
                for aor, entries in by_aor.items() for key, b in entries.items()]
        live.extend((t, aor, "") for aor, t in empty_until.items())
        heapq.heapify(live)
        self._heap = live
        self._compact_at = max(1024, 2 * len(live))

    def _stale(self, item: tuple[float, str, str]) -> bool:
        """A heap entry that will remove nothing when it fires."""
        t, aor, key = item
        entries = self._by_aor.get(aor)
        if entries is None:
            return True
        if not entries:
            return False  # it drops the empty entry
        b = entries.get(key)
        return b is None or b.expires_at != t

    # ---- LocationStore ---------------------------------------------------------------------

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The unexpired bindings of ``aor`` (RFC 3261 10.3 step 8); expired ones are dropped
        (the entry stays until :meth:`expire`)."""
        entries = self._by_aor.get(aor)
        if not entries:
            return []
        expired = [k for k, b in entries.items() if b.expires_at <= now]
        for k in expired:
            self._drop(entries, k)
        return list(entries.values())

    def known(self, aor: str) -> bool:
        """True while ``aor`` has an entry: it has bindings, or lost them (removal, closed
        flow) and :meth:`expire` has not yet passed the expiry they had."""
        return aor in self._by_aor

    def save(self, binding: Binding) -> None:
        """Add or replace the binding of ``binding.aor`` with the same key."""
        self._put(binding)
        if self.journal is not None:
            self.journal.append(BindingWrite(binding))

    def remove(self, aor: str, key: str) -> None:
        entries = self._by_aor.get(aor)
        if entries is not None and key in entries:
            self._drop(entries, key)
            if self.journal is not None:
                self.journal.append(BindingDelete(aor, key))

    def remove_all(self, aor: str) -> None:
        """Remove every binding of ``aor`` (RFC 3261 10.3 step 6, Contact: *)."""
        entries = self._by_aor.get(aor)
        if entries:
            for key in list(entries):
                self._drop(entries, key)
            if self.journal is not None:
                self.journal.append(BindingDelete(aor, None))

    def take_changes(self) -> list[BindingChange]:
        """The changes recorded since the last call (see :attr:`journal`)."""
        changes = self.journal
        if not changes:
            return []
        self.journal = []
        return changes

    # ---- changes that came from the state store: applied, never recorded -------------------

    def apply_save(self, binding: Binding) -> None:
        self._put(binding)

    def apply_remove(self, aor: str, key: str) -> None:
        entries = self._by_aor.get(aor)
        if entries is not None and key in entries:
            self._drop(entries, key)

    def apply_remove_all(self, aor: str) -> None:
        entries = self._by_aor.get(aor)
        if entries:
            for key in list(entries):
                self._drop(entries, key)

    def bindings(self) -> list[Binding]:
        """Every binding held (expired ones included until :meth:`expire` removes them)."""
        return [b for entries in self._by_aor.values() for b in entries.values()]

    def has_conn(self, conn_id: int) -> bool:
        """Whether a binding was learned over stream connection ``conn_id`` (one lookup)."""
        return conn_id in self._by_conn

    def remove_flow(self, conn_id: int) -> list[Binding]:
        """The stream connection ``conn_id`` closed: drop the outbound bindings learned over it
        (RFC 5626 5.3: a flow whose connection closed is dead; the UA registers a new one).

        Only outbound bindings (``reg_id`` set: +sip.instance and reg-id, RFC 5626 6) and
        bindings over WebSocket (RFC 7118 5.3) live and die with their connection
        (:attr:`Binding.on_flow`). A plain binding (RFC 3261 10) stays: requests for it go to
        its Contact URI over a new connection (RFC 3261 18.1.1)."""
        keys = self._by_conn.pop(conn_id, None)
        gone: list[Binding] = []
        if not keys:
            return gone
        for aor, key in keys:
            entries = self._by_aor.get(aor)
            b = entries.get(key) if entries else None
            if entries is not None and b is not None and b.flow.conn_id == conn_id:
                gone.append(entries.pop(key))
                self._count -= 1
                if self.journal is not None:
                    self.journal.append(BindingDelete(aor, key))
        gone.sort(key=lambda b: b.registered_at)
        return gone

    def expire(self, now: float) -> list[Binding]:
        """Remove every binding expired at ``now`` and every AOR entry left without a binding
        (RFC 3261 10.3: a binding lasts its expiration interval); returns the removed bindings.
        Costs O(k log n) for the k heap entries due."""
        heap = self._heap
        by_aor = self._by_aor
        gone: list[Binding] = []
        while heap and heap[0][0] <= now:
            _, aor, key = heapq.heappop(heap)
            entries = by_aor.get(aor)
            if entries is None:
                continue
            b = entries.get(key)
            if b is not None and b.expires_at <= now:
                gone.append(self._drop(entries, key))
            if not entries:
                del by_aor[aor]
        return gone

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has something to do, None when nothing is stored."""
        heap = self._heap
        while heap and self._stale(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def count(self) -> int:
        """The number of bindings (expired ones included until they are removed)."""
        return self._count

    def aor_count(self) -> int:
        """The number of AOR entries, empty ones included."""
        return len(self._by_aor)


class RegistrarError(Exception):
    """A REGISTER the registrar refuses: carries the status and extra header lines to answer."""

    def __init__(self, status: int, reason: str | None = None, headers: tuple[str, ...] = ()):
        super().__init__(f"{status} {reason or ''}".strip())
        self.status = status
        self.reason = reason
        self.headers = headers


def _unquote(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def _expires_of(contact: NameAddr, default: int) -> int:
    raw = contact.params.get("expires")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        return default  # RFC 4475 scalar02 note: a bad expiry may default
    return int(raw) if len(raw) <= 10 else MAX_EXPIRES


def binding_from_contact(
    aor: str, contact: NameAddr, expires: int, msg: SipMessage, cseq: int, src: Source, now: float
) -> Binding:
    """The binding a Contact of a REGISTER asks for (RFC 3261 10.3 step 7; RFC 5626 6 for
    +sip.instance and reg-id). RegistrarError(400) for a bad q (RFC 3261 20.10: 0 to 1) or
    reg-id."""
    q_raw = contact.params.get("q")
    try:
        q = float(q_raw) if q_raw is not None else 1.0
    except ValueError:
        raise RegistrarError(400, "Bad q value") from None
    if not 0.0 <= q <= 1.0:  # also refuses nan
        raise RegistrarError(400, "Bad q value")
    instance = _unquote(contact.params.get("+sip.instance"))
    # RFC 5626 6: reg-id without +sip.instance is a plain RFC 3261 binding.
    reg_raw = contact.params.get("reg-id") if instance is not None else None
    reg_id: int | None = None
    if reg_raw is not None:
        try:
            reg_id = int(reg_raw)
        except ValueError:
            raise RegistrarError(400, "Bad reg-id") from None
    return Binding(
        aor=aor,
        contact=str(contact),
        uri=str(contact.uri),
        expires_at=now + expires,
        q=q,
        call_id=msg.call_id,
        cseq=cseq,
        flow=src,
        registered_at=now,
        instance=instance,
        reg_id=reg_id,
    )


def aor_of(msg: SipMessage) -> str:
    """The address-of-record of a REGISTER: its To URI, canonical (RFC 3261 10.3 step 5)."""
    uri = msg.to.uri
    if not isinstance(uri, SipUri):
        raise RegistrarError(400, "To is not a SIP or SIPS URI")  # RFC 4475 unksm2
    return uri.aor


def register(
    store: LocationStore, msg: SipMessage, src: Source, now: float, *, max_contacts: int = 10,
    room: int | None = None,
) -> tuple[str, list[Binding]]:
    """Apply a REGISTER to the location store (RFC 3261 10.3 steps 5 to 8), all or nothing.

    Every Contact is validated against the AOR's bindings, looked up once, before anything
    changes: the cost is linear in the number of contacts. Returns the AOR and its bindings
    after the change, for the 200 response. Raises RegistrarError, leaving the store as it
    was, for a request to refuse: 400 (bad wildcard use, q or reg-id), 423 with Min-Expires
    (step 7), 500 for an out-of-order CSeq (step 7), 403 "Too Many Contacts" when the REGISTER
    carries more than ``max_contacts`` Contact values or would leave the AOR with more than
    ``max_contacts`` bindings (a local policy, RFC 3261 10.3 step 3), 403 "Too Many
    Bindings" when it would add more than ``room`` bindings (None: no bound), the room left
    under the registrar's caps per user and in total.
    """
    aor = aor_of(msg)
    header_expires = msg.expires
    default = header_expires if header_expires is not None else DEFAULT_EXPIRES
    cseq = msg.cseq[0]
    call_id = msg.call_id
    contacts = msg.contacts
    if msg.contact_star:
        # RFC 3261 10.3 step 6: "*" only with Expires: 0 and no other Contact.
        if header_expires != 0 or contacts:
            raise RegistrarError(400, "Wildcard Contact needs Expires: 0 and no other contact")
        for b in store.lookup(aor, now):
            if b.call_id == call_id and cseq <= b.cseq:
                raise RegistrarError(500, "Out of order CSeq")
        store.remove_all(aor)
        return aor, []
    if len(contacts) > max_contacts:
        raise RegistrarError(403, "Too Many Contacts")
    current = {b.key: b for b in store.lookup(aor, now)}
    if not contacts:
        return aor, list(current.values())  # a query (RFC 3261 10.2.3, 10.3 step 8)
    result = dict(current)  # key -> binding after the request; dict order as in the store
    for contact in contacts:
        expires = min(_expires_of(contact, default), MAX_EXPIRES)
        if 0 < expires < MIN_EXPIRES:
            raise RegistrarError(423, "Interval Too Brief", (f"Min-Expires: {MIN_EXPIRES}",))
        binding = binding_from_contact(aor, contact, expires, msg, cseq, src, now)
        key = binding.key
        existing = current.get(key)
        if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
            raise RegistrarError(500, "Out of order CSeq")  # RFC 3261 10.3 step 7
        if expires == 0:
            result.pop(key, None)
        else:
            result[key] = binding
    if len(result) > max_contacts:
        raise RegistrarError(403, "Too Many Contacts")
    if room is not None and len(result) - len(current) > room:
        raise RegistrarError(403, "Too Many Bindings")
    for key in current:
        if key not in result:
            store.remove(aor, key)
    for key, b in result.items():
        if current.get(key) is not b:
            store.save(b)
    return aor, list(result.values())


def contact_lines(bindings: list[Binding], now: float) -> list[str]:
    """The Contact header lines of a REGISTER 200, each with its remaining expires (10.3 step 8)."""
    lines = []
    for b in bindings:
        remaining = max(0, int(b.expires_at - now + 0.5))
        lines.append(f"Contact: {_with_expires(b.contact, remaining)}")
    return lines


def _with_expires(contact: str, remaining: int) -> str:
    # Drop an expires param the UA sent and append the granted one.
    parts = contact.split(">", 1)
    if len(parts) == 2:
        params = [p for p in parts[1].split(";") if p and not p.strip().lower().startswith("expires=")]
        tail = "".join(";" + p for p in params)
        return f"{parts[0]}>{tail};expires={remaining}"
    return f"{contact};expires={remaining}"
