"""Location service and the local registrar (RFC 3261 10.3), sans-IO.

Bindings are keyed by address-of-record and, when the UA gives them, by its ``+sip.instance``
and ``reg-id`` (RFC 5626 6): one binding per flow of an instance, so that SIP Outbound can
later try the other flows of the same instance. Without an instance the key is the contact
URI, as in RFC 3261 10.3 step 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from proxy.core.types import Source
from proxy.sip import NameAddr, SipMessage, SipUri

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

    @property
    def key(self) -> str:
        if self.instance is not None and self.reg_id is not None:
            return f"{self.instance}|{self.reg_id}"
        return self.uri


class LocationStore(Protocol):
    """The seam to the location state (memory now; SQLite/Redis backends later)."""

    def lookup(self, aor: str, now: float) -> list[Binding]: ...

    def known(self, aor: str) -> bool: ...

    def save(self, binding: Binding) -> None: ...

    def remove(self, aor: str, key: str) -> None: ...

    def remove_all(self, aor: str) -> None: ...

    def remove_flow(self, conn_id: int) -> list[Binding]: ...


@dataclass(slots=True)
class MemoryLocation:
    """In-process location service. Expired bindings are dropped when looked up."""

    _by_aor: dict[str, dict[str, Binding]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)

    def lookup(self, aor: str, now: float) -> list[Binding]:
        entries = self._by_aor.get(aor)
        if not entries:
            return []
        expired = [k for k, b in entries.items() if b.expires_at <= now]
        for k in expired:
            del entries[k]
        return list(entries.values())

    def known(self, aor: str) -> bool:
        return aor in self._seen

    def save(self, binding: Binding) -> None:
        self._seen.add(binding.aor)
        self._by_aor.setdefault(binding.aor, {})[binding.key] = binding

    def remove(self, aor: str, key: str) -> None:
        entries = self._by_aor.get(aor)
        if entries is not None:
            entries.pop(key, None)

    def remove_all(self, aor: str) -> None:
        self._by_aor.pop(aor, None)

    def remove_flow(self, conn_id: int) -> list[Binding]:
        """Drop every binding learned over the stream connection ``conn_id`` (RFC 5626 5.3:
        a flow whose connection closed is dead)."""
        gone: list[Binding] = []
        for entries in self._by_aor.values():
            for key in [k for k, b in entries.items() if b.flow.conn_id == conn_id]:
                gone.append(entries.pop(key))
        return gone


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
    try:
        value = int(raw)
    except ValueError:
        return default  # RFC 4475 scalar02 note: a bad expiry may default
    return value


def binding_from_contact(
    aor: str, contact: NameAddr, expires: int, msg: SipMessage, cseq: int, src: Source, now: float
) -> Binding:
    q_raw = contact.params.get("q")
    try:
        q = float(q_raw) if q_raw is not None else 1.0
    except ValueError:
        raise RegistrarError(400, "Bad q value") from None
    instance = _unquote(contact.params.get("+sip.instance"))
    reg_raw = contact.params.get("reg-id")
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
    store: LocationStore, msg: SipMessage, src: Source, now: float
) -> tuple[str, list[Binding]]:
    """Apply a REGISTER to the location store (RFC 3261 10.3 steps 5 to 8).

    Returns the AOR and its current bindings for the 200 response. Raises RegistrarError for
    a request to refuse (400, 423 with Min-Expires, 500 for an out-of-order CSeq).
    """
    aor = aor_of(msg)
    header_expires = msg.expires
    default = header_expires if header_expires is not None else DEFAULT_EXPIRES
    cseq = msg.cseq[0]
    call_id = msg.call_id
    if msg.contact_star:
        # RFC 3261 10.3 step 6: "*" only with Expires: 0 and no other Contact.
        if header_expires != 0 or msg.contacts:
            raise RegistrarError(400, "Wildcard Contact needs Expires: 0 and no other contact")
        for b in store.lookup(aor, now):
            if b.call_id == call_id and cseq <= b.cseq:
                raise RegistrarError(500, "Out of order CSeq")
        store.remove_all(aor)
        return aor, []
    for contact in msg.contacts:
        expires = min(_expires_of(contact, default), MAX_EXPIRES)
        if 0 < expires < MIN_EXPIRES:
            raise RegistrarError(423, "Interval Too Brief", (f"Min-Expires: {MIN_EXPIRES}",))
        binding = binding_from_contact(aor, contact, expires, msg, cseq, src, now)
        current = {b.key: b for b in store.lookup(aor, now)}
        existing = current.get(binding.key)
        if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
            raise RegistrarError(500, "Out of order CSeq")  # RFC 3261 10.3 step 7
        if expires == 0:
            store.remove(aor, binding.key)
        else:
            store.save(binding)
    return aor, store.lookup(aor, now)


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
