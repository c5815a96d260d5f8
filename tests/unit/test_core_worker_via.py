"""A worker's Via (README "Workers"): a local address with ``sent_by`` (the worker's own UDP
port) puts that port in the Via of what it forwards, so that the responses come back to the
worker holding the transaction (RFC 3261 18.2.2: a response goes to the Via's sent-by, 18.1.1),
while Record-Route keeps the shared address, so that in-dialog requests may reach any worker
(they are new transactions, RFC 3261 16.12 loose routing)."""

from __future__ import annotations

from proxy.core.core import CoreSettings, ProxyCore
from proxy.core.registrar.location import MemoryLocation
from proxy.core.types import LocalAddress
from proxy.sip import parse_message
from proxy.transaction import TimerConfig
from tests.unit.core_harness import UP1, UP2, Harness, default_policy, request, response_to

PRIVATE = 40123
WORKER_LOCAL = [
    LocalAddress("udp", "127.0.0.1", 5060, "127.0.0.1:5060", f"127.0.0.1:{PRIVATE}"),
    LocalAddress("tcp", "127.0.0.1", 5060, "127.0.0.1:5060"),
    LocalAddress("udp", "127.0.0.1", PRIVATE, f"127.0.0.1:{PRIVATE}"),  # its own address
]


def worker_harness() -> Harness:
    settings = CoreSettings(upstreams=(UP1, UP2), timers=TimerConfig())
    return Harness(ProxyCore(settings, default_policy(), WORKER_LOCAL, MemoryLocation()))


def test_via_names_the_worker_port_record_route_the_shared_address() -> None:
    h = worker_harness()
    h.feed(request())
    fwd = h.to(UP1.port)
    assert len(fwd) == 1
    top = fwd[0].vias[0]
    assert top.sent_by() == ("127.0.0.1", PRIVATE)
    rr = fwd[0].get_all("record-route")
    assert rr and all("@127.0.0.1:5060;lr" in v or "<sip:127.0.0.1:5060;lr" in v for v in rr), rr
    assert all(str(PRIVATE) not in v for v in rr)


def test_the_response_at_the_worker_port_completes_the_call() -> None:
    h = worker_harness()
    h.feed(request())
    fwd = h.sent[-1]
    h.sent.clear()
    h.feed(response_to(fwd.data, 200))
    back = [parse_message(s.data) for s in h.sent if s.port == 6000]
    assert [m.status for m in back] == [200]


def test_without_sent_by_the_via_is_the_advertised_address() -> None:
    h = Harness.make()
    h.feed(request())
    assert h.to(UP1.port)[0].vias[0].sent_by() == ("127.0.0.1", 5060)
