"""Expired bindings are removed by a timer, not only when looked up (README "Registrations and
digest authentication", docs/BEHAVIOUR.md "Registrar"; RFC 3261 10.3 step 7: 60 s is the
shortest Expires the local registrar takes), on the core's fake clock.

Thousands of AORs register from one source with ``Expires: 60``; nothing looks them up
afterwards. When the clock passes their expiry the core's own timer must have taken every
binding and AOR out of the location service: the ``registrations`` gauge of /metrics falls
from N to 0, the memory blocks the bindings held are freed, and an INVITE from the PBX gets
404 (the AOR is forgotten; 480 would mean it is still known with no binding, RFC 3261 16.5).
The same registrations over UDP to the real process, and a binding expiring in the real
process, are in tests/e2e/test_registrar_auth_e2e.py.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter

from proxy.core.types import Source
from proxy.runtime.metrics import CoreCollector
from tests.unit.core_harness import Harness, request

PHONES = Source("udp", "127.0.0.1", 7000)  # every REGISTER from one socket, as the e2e test
PBX = Source("udp", "127.0.0.1", 5080)  # core_harness's first upstream
AORS = 5000


def register(h: Harness, n: int) -> bytes:
    data = request(
        "REGISTER", ruri="sip:example.com", branch=f"z9hG4bKreg{n}", call_id=f"reg-{n}",
        via_host="127.0.0.1:7000", extra=("Expires: 60",),
    ).replace(b"<sip:alice@example.com>", f"<sip:user{n}@example.com>".encode()) \
     .replace(b"<sip:bob@example.com>", f"<sip:user{n}@example.com>".encode()) \
     .replace(b"<sip:alice@127.0.0.1:6000>", f"<sip:user{n}@127.0.0.1:{20000 + n % 40000}>"
              .encode())
    fx = h.core.on_message(data, PHONES, h.now)  # not h.feed: no list of 5000 answers
    [sent] = fx.sends
    return sent.data.split(b"\r\n", 1)[0]


def invite_status(h: Harness, n: int) -> int | str:
    """What an INVITE from the PBX for user N gets: a final status, or "forwarded"."""
    out = h.feed(request(ruri=f"sip:user{n}@example.com", branch=f"z9hG4bKpbx{n}{h.now}",
                         call_id=f"pbx-{n}-{h.now}", via_host="127.0.0.1:5080"), PBX)
    for send in out:
        first = send.data.split(b"\r\n", 1)[0]
        if first.startswith(b"SIP/2.0 ") and not first.startswith(b"SIP/2.0 100"):
            return int(first.split()[1])
        if first.startswith(b"INVITE sip:user"):
            return "forwarded"
    raise AssertionError(f"no answer and no branch for user{n}: {out}")


def registrations(h: Harness) -> float:
    """The ``registrations`` gauge, as /metrics reports it."""
    [fam] = [f for f in CoreCollector(h.core, Counter(), 0.0).collect()
             if f.name == "sip_policy_proxy_registrations"]
    return float(fam.samples[0].value)


def blocks() -> int:
    gc.collect()
    return sys.getallocatedblocks()


def test_expired_bindings_leave_memory_by_the_timer_without_a_lookup() -> None:
    h = Harness.make(registrar_local=True, domains=frozenset({"example.com"}))
    answers = Counter(register(h, n) for n in range(AORS))
    assert answers == {b"SIP/2.0 200 OK": AORS}, answers
    h.advance(59)  # the REGISTER transactions have ended (Timer J, 64*T1); the bindings stay
    assert registrations(h) == AORS
    held = blocks()
    h.advance(2)  # past the expiry: only the core's timer runs, nothing is looked up
    freed = held - blocks()
    assert registrations(h) == 0
    # each binding is several objects (the binding, its strings, its AOR's entry): freed
    assert freed >= AORS * 3, f"{freed} memory blocks freed for {AORS} bindings"
    # gone from the location service, AOR and all: 404, not 480 (known, no binding)
    for n in (0, 1, 7, AORS // 2, AORS - 1):
        assert invite_status(h, n) == 404, n


def test_a_binding_is_reached_until_it_expires() -> None:
    """The other side of the test above: before its expiry the binding takes calls, and
    lookups alone never keep it."""
    h = Harness.make(registrar_local=True, domains=frozenset({"example.com"}))
    assert register(h, 7) == b"SIP/2.0 200 OK"
    h.advance(59)
    assert invite_status(h, 7) == "forwarded"
    h.advance(2)
    assert invite_status(h, 7) == 404
