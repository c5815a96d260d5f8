"""The registrar (RFC 3261 10.3) and the memory location service, sans-IO: the contact cap,
all-or-nothing REGISTER processing, linear cost, timer-driven expiry and flow removal
(RFC 5626 5.3). The clock is a number passed in."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.registrar.location import (
    MIN_EXPIRES,
    Binding,
    MemoryLocation,
    RegistrarError,
    register,
)
from proxy.core.types import Source
from proxy.sip import SipMessage, parse_message

AOR = "bob@example.com"
UDP = Source("udp", "192.0.2.1", 5060)
T0 = 1000.0
INST = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def reg(contacts: list[str], *, cseq: int = 1, call_id: str = "reg-1", expires: int | None = 600,
        user: str = "bob") -> SipMessage:
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKr1",
        f"From: <sip:{user}@example.com>;tag=f1",
        f"To: <sip:{user}@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if contacts:
        lines.append("Contact: " + ", ".join(contacts))
    lines.append("Content-Length: 0")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode(), max_size=1 << 20)


def phones(n: int, start: int = 0) -> list[str]:
    return [f"<sip:bob@10.0.{i // 250}.{i % 250 + 1}:5060>" for i in range(start, start + n)]


def uris(store: MemoryLocation, now: float = T0) -> list[str]:
    return sorted(b.uri for b in store.lookup(AOR, now))


class CountingStore:
    """A MemoryLocation, wrapped, that counts the calls register() makes (a wrapper rather than
    a subclass: the compiled build's classes cannot be subclassed by interpreted code)."""

    def __init__(self) -> None:
        self.inner = MemoryLocation()
        self.calls = {"lookup": 0, "save": 0, "remove": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def lookup(self, aor: str, now: float) -> list[Binding]:
        self.calls["lookup"] += 1
        return self.inner.lookup(aor, now)

    def save(self, binding: Binding) -> None:
        self.calls["save"] += 1
        self.inner.save(binding)

    def remove(self, aor: str, key: str) -> None:
        self.calls["remove"] += 1
        self.inner.remove(aor, key)


def binding(aor: str, uri: str, expires_at: float, *, flow: Source = UDP,
            instance: str | None = None, reg_id: int | None = None) -> Binding:
    return Binding(aor=aor, contact=f"<{uri}>", uri=uri, expires_at=expires_at, q=1.0,
                   call_id="c", cseq=1, flow=flow, registered_at=expires_at - 600,
                   instance=instance, reg_id=reg_id)


# ---- the contact cap --------------------------------------------------------------------------

def test_ten_contacts_are_accepted_the_eleventh_is_403_and_changes_nothing() -> None:
    store = MemoryLocation()
    aor, bound = register(store, reg(phones(10)), UDP, T0)
    assert (aor, len(bound)) == (AOR, 10)
    with pytest.raises(RegistrarError) as exc:
        register(store, reg(phones(1, start=10), cseq=2), UDP, T0 + 1)
    assert (exc.value.status, exc.value.reason) == (403, "Too Many Contacts")
    assert uris(store, T0 + 1) == sorted(c[1:-1] for c in phones(10))
    assert store.count() == 10


def test_more_contact_values_than_the_cap_are_refused_up_front() -> None:
    """Even when most of them remove bindings: the REGISTER itself is too big."""
    store = MemoryLocation()
    register(store, reg(phones(2)), UDP, T0)
    removals = [c + ";expires=0" for c in phones(11)]
    with pytest.raises(RegistrarError) as exc:
        register(store, reg(removals, cseq=2), UDP, T0)
    assert exc.value.status == 403
    assert store.count() == 2


def test_cap_counts_the_resulting_set() -> None:
    """5 bound + 6 new = 11 > 10: refused; removing one of the 5 in the same REGISTER: 10."""
    store = MemoryLocation()
    register(store, reg(phones(5)), UDP, T0)
    with pytest.raises(RegistrarError):
        register(store, reg(phones(6, start=5), cseq=2), UDP, T0)
    assert store.count() == 5
    drop_one = [phones(1)[0] + ";expires=0", *phones(6, start=5)]
    _, bound = register(store, reg(drop_one, cseq=3), UDP, T0)
    assert len(bound) == 10 and store.count() == 10
    assert phones(1)[0][1:-1] not in uris(store)


def test_max_contacts_is_a_parameter() -> None:
    store = MemoryLocation()
    register(store, reg(phones(3)), UDP, T0, max_contacts=3)
    with pytest.raises(RegistrarError):
        register(store, reg(phones(1, start=3), cseq=2), UDP, T0, max_contacts=3)


# ---- all or nothing -------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "status"), [
    (";expires=30", 423),  # RFC 3261 10.3 step 7: Interval Too Brief
    (";q=abc", 400),
    (";q=1.5", 400),  # RFC 3261 20.10: q is 0 to 1
    (';+sip.instance="<urn:uuid:1>";reg-id=x', 400),  # RFC 5626 6: reg-id with an instance
])
def test_a_bad_third_contact_changes_nothing(bad: str, status: int) -> None:
    store = MemoryLocation()
    register(store, reg(phones(1, start=50)), UDP, T0)
    before = uris(store)
    contacts = phones(3)
    contacts[2] += bad
    with pytest.raises(RegistrarError) as exc:
        register(store, reg([phones(1, start=50)[0] + ";expires=0", *contacts], cseq=2), UDP, T0)
    assert exc.value.status == status
    assert uris(store) == before and store.count() == 1
    if status == 423:
        assert exc.value.headers == (f"Min-Expires: {MIN_EXPIRES}",)


def test_out_of_order_cseq_on_a_later_contact_changes_nothing() -> None:
    """RFC 3261 10.3 step 7: same Call-ID, CSeq not higher -> 500; the new contacts before it
    in the same REGISTER are not bound either."""
    store = MemoryLocation()
    register(store, reg(phones(1, start=9), cseq=5), UDP, T0)
    with pytest.raises(RegistrarError) as exc:
        register(store, reg([*phones(2), phones(1, start=9)[0]], cseq=3), UDP, T0)
    assert exc.value.status == 500
    assert uris(store) == [phones(1, start=9)[0][1:-1]]


def test_same_contact_twice_in_one_register_is_not_out_of_order() -> None:
    store = MemoryLocation()
    c = phones(1)[0]
    _, bound = register(store, reg([c + ";expires=600", c + ";expires=900"]), UDP, T0)
    assert [b.expires_at for b in bound] == [T0 + 900]


def test_wildcard_rules() -> None:
    """RFC 3261 10.3 step 6: '*' only with Expires: 0 and alone; it removes every binding."""
    store = MemoryLocation()
    register(store, reg(phones(3)), UDP, T0)
    for msg in (reg(["*"], cseq=2, expires=60), reg(["*", phones(1)[0]], cseq=2, expires=0)):
        with pytest.raises(RegistrarError) as exc:
            register(store, msg, UDP, T0)
        assert exc.value.status == 400
    with pytest.raises(RegistrarError) as exc:
        register(store, reg(["*"], cseq=1, expires=0), UDP, T0)  # CSeq not higher
    assert exc.value.status == 500
    assert store.count() == 3
    assert register(store, reg(["*"], cseq=2, expires=0), UDP, T0) == (AOR, [])
    assert store.count() == 0


def test_query_lists_the_bindings_and_changes_nothing() -> None:
    store = MemoryLocation()
    register(store, reg(phones(2)), UDP, T0)
    _, bound = register(store, reg([], cseq=2), UDP, T0 + 10)
    assert len(bound) == 2 and store.count() == 2


# ---- linear cost ------------------------------------------------------------------------------

def test_two_thousand_contacts_cost_one_lookup() -> None:
    """The AOR's bindings are looked up once per REGISTER, not once per Contact."""
    store = CountingStore()
    msg = reg(phones(2000))
    _, bound = register(store, msg, UDP, T0, max_contacts=2000)
    assert len(bound) == 2000 and store.count() == 2000
    assert store.calls == {"lookup": 1, "save": 2000, "remove": 0}
    refresh = reg(phones(2000), cseq=2)
    register(store, refresh, UDP, T0 + 1, max_contacts=2000)
    assert store.calls["lookup"] == 2


# ---- expiry by timer ------------------------------------------------------------------------

def test_expire_removes_due_bindings_and_empty_aors() -> None:
    store = MemoryLocation()
    store.save(binding(AOR, "sip:bob@10.0.0.1", T0 + 60))
    store.save(binding(AOR, "sip:bob@10.0.0.2", T0 + 120))
    store.save(binding("carol@example.com", "sip:carol@10.0.0.3", T0 + 90))
    assert store.next_expiry() == T0 + 60
    assert store.expire(T0 + 59) == []
    gone = store.expire(T0 + 90)
    assert sorted(b.uri for b in gone) == ["sip:bob@10.0.0.1", "sip:carol@10.0.0.3"]
    assert store.known(AOR) and not store.known("carol@example.com")
    assert store.count() == 1 and store.next_expiry() == T0 + 120
    assert [b.uri for b in store.expire(T0 + 120)] == ["sip:bob@10.0.0.2"]
    assert not store.known(AOR)
    assert store.count() == 0 and store.aor_count() == 0 and store.next_expiry() is None


def test_refreshed_binding_is_not_expired_at_its_old_time() -> None:
    store = MemoryLocation()
    register(store, reg(phones(1), expires=60), UDP, T0)
    register(store, reg(phones(1), cseq=2, expires=3600), UDP, T0 + 50)
    assert store.expire(T0 + 61) == []
    assert store.known(AOR) and store.count() == 1
    assert store.next_expiry() == T0 + 50 + 3600


def test_aor_emptied_by_removal_stays_known_until_expire_reaches_its_old_expiry() -> None:
    """known() means 'has an entry': an AOR that lost its bindings (a failed flow, a
    Contact: * ) is still known (480, not 404) until expire() drops the empty entry."""
    store = MemoryLocation()
    register(store, reg(phones(1), expires=600), UDP, T0)
    store.remove_all(AOR)
    assert store.lookup(AOR, T0) == [] and store.known(AOR)
    assert store.expire(T0 + 599) == [] and store.known(AOR)
    assert store.expire(T0 + 600) == []
    assert not store.known(AOR) and store.aor_count() == 0


def test_fifty_thousand_aors_are_all_gone_after_expire() -> None:
    store = MemoryLocation()
    n = 50_000
    for i in range(n):
        store.save(binding(f"u{i}@example.com", f"sip:u{i}@10.1.{i // 250}.{i % 250}",
                           T0 + 60 + i % 7))
    assert store.count() == n and store.aor_count() == n
    assert len(store.expire(T0 + 60)) == len(range(0, n, 7))  # only what is due
    gone = store.expire(T0 + 10_000)
    assert len(gone) + len(range(0, n, 7)) == n
    assert store.count() == 0 and store.aor_count() == 0
    assert not store.known("u1@example.com")
    assert store.next_expiry() is None


def test_refreshes_do_not_grow_the_expiry_heap_without_bound() -> None:
    """Every refresh leaves a stale heap entry; compaction keeps the heap near the number of
    bindings (white box: the heap's size)."""
    store = MemoryLocation()
    for i in range(20_000):
        store.save(binding(AOR, "sip:bob@10.0.0.1", T0 + 600 + i))
    assert store.count() == 1
    assert len(store._heap) <= 2048
    assert store.next_expiry() == T0 + 600 + 19_999
    assert store.expire(T0 + 600 + 19_998) == []
    assert len(store.expire(T0 + 600 + 19_999)) == 1


def test_empty_aor_still_leaves_after_a_heap_compaction() -> None:
    store = MemoryLocation()
    store.save(binding(AOR, "sip:bob@10.0.0.1", T0 + 60))
    store.remove(AOR, "sip:bob@10.0.0.1")
    for i in range(5000):  # refreshes of another AOR compact the heap several times
        store.save(binding("carol@example.com", "sip:carol@10.0.0.2", T0 + 600 + i))
    assert store.known(AOR)
    store.expire(T0 + 60)
    assert not store.known(AOR) and store.known("carol@example.com")


def test_lookup_hides_expired_bindings_before_the_timer_runs() -> None:
    store = MemoryLocation()
    register(store, reg(phones(1), expires=60), UDP, T0)
    assert store.lookup(AOR, T0 + 61) == []
    assert store.known(AOR)
    store.expire(T0 + 61)
    assert not store.known(AOR)


# ---- connections ------------------------------------------------------------------------------

def test_closed_connection_drops_outbound_bindings_only() -> None:
    """RFC 5626 5.3: an outbound binding (+sip.instance, reg-id) dies with its connection; a
    plain RFC 3261 binding registered over TCP stays (the proxy connects to its Contact)."""
    store = MemoryLocation()
    tcp7 = Source("tcp", "192.0.2.7", 40000, conn_id=7)
    tcp8 = Source("tcp", "192.0.2.8", 40001, conn_id=8)
    register(store, reg(["<sip:bob@192.0.2.7:5060;transport=tcp>"]), tcp7, T0)
    register(store, reg([f"<sip:bob@192.0.2.7:40000;transport=tcp;ob>;{INST};reg-id=1"],
                        call_id="ob-1"), tcp7, T0)
    register(store, reg([f"<sip:bob@192.0.2.8:40001;transport=tcp;ob>;{INST};reg-id=2"],
                        call_id="ob-2"), tcp8, T0)
    gone = store.remove_flow(7)
    assert [(b.reg_id, b.flow.conn_id) for b in gone] == [(1, 7)]
    left = {(b.reg_id, b.flow.conn_id) for b in store.lookup(AOR, T0)}
    assert left == {(None, 7), (2, 8)}
    assert store.count() == 2
    assert store.remove_flow(7) == []


def test_outbound_binding_moved_to_a_new_connection_survives_the_old_ones_close() -> None:
    """The same instance and reg-id re-registered over connection 9: closing 7 keeps it."""
    store = MemoryLocation()
    contact = f"<sip:bob@192.0.2.7:40000;transport=tcp;ob>;{INST};reg-id=1"
    register(store, reg([contact]), Source("tcp", "192.0.2.7", 40000, conn_id=7), T0)
    register(store, reg([contact], cseq=2), Source("tcp", "192.0.2.7", 40002, conn_id=9), T0)
    assert store.remove_flow(7) == []
    assert [b.flow.conn_id for b in store.lookup(AOR, T0)] == [9]
    assert [b.reg_id for b in store.remove_flow(9)] == [1]
    assert store.known(AOR) and store.count() == 0
