"""The resolver on the send path (proxy/runtime/sends.py), the upstreams named by a domain
(proxy/runtime/upstreams.py) and Runtime.dispatch sending to names, against a real DNS server
on loopback (tests/dns_servers.py), with mock transports in place of the SIP sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.config import Config, DnsSettings, Listen, Upstream
from proxy.core.types import Send, Source
from proxy.diagnostics import ConfigError
from proxy.policy import BUILTIN_POLICY
from proxy.runtime import upstreams
from proxy.runtime.dns import RETRY, DnsClient
from proxy.runtime.resolver import Hop, Resolver, resolver_for
from proxy.runtime.sends import CACHE_LIMIT, MAX_PARKED, MISS, SendResolver
from proxy.runtime.server import Runtime
from proxy.sip import parse_message
from tests.dns_servers import DnsResponder
from tests.unit.core_harness import request

CALLER = Source("udp", "127.0.0.1", 6000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect:
    """The SendResolver's two callbacks, recorded."""

    def __init__(self) -> None:
        self.sent: list[Send] = []
        self.failed: list[tuple[Send, str]] = []
        self.event = asyncio.Event()

    def resolved(self, sends: list[Send]) -> None:
        self.sent.extend(sends)
        self.event.set()

    def unreachable(self, s: Send, why: str) -> None:
        self.failed.append((s, why))
        self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), 5)
        self.event.clear()


@pytest.fixture
async def zone() -> AsyncIterator[DnsResponder]:
    server = await DnsResponder().start()
    server.add("carrier.test", "NAPTR", '10 50 "S" "SIP+D2U" "" _sip._udp.carrier.test.',
               '10 60 "S" "SIP+D2T" "" _sip._tcp.carrier.test.')
    server.add("_sip._udp.carrier.test", "SRV", "20 0 5072 uas2.carrier.test.",
               "10 0 5071 uas1.carrier.test.", ttl=30)
    server.add("_sip._tcp.carrier.test", "SRV", "10 0 5081 uas1.carrier.test.", ttl=30)
    server.add("uas1.carrier.test", "A", "192.0.2.1", ttl=30)
    server.add("uas2.carrier.test", "A", "192.0.2.2", ttl=30)
    server.add("carrier.test", "A", "192.0.2.99", ttl=30)
    yield server
    server.close()


def make(zone: DnsResponder, clock: Clock, collect: Collect) -> SendResolver:
    client = DnsClient((zone.server,), clock=clock, timeout=0.2)
    r = Resolver(client, transports=("udp", "tcp"), families=("A",), rng=random.Random(1))
    return SendResolver(r, collect.resolved, collect.unreachable)


def invite_to(ruri: str, route: str | None = None) -> bytes:
    lines = [f"INVITE {ruri} SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp1",
             "Max-Forwards: 69", "From: <sip:a@x.test>;tag=1", "To: <sip:b@carrier.test>",
             "Call-ID: c1", "CSeq: 1 INVITE", "Content-Length: 0"]
    if route:
        lines.insert(2, f"Route: {route}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_via(via: str) -> bytes:
    return ("SIP/2.0 200 OK\r\n" f"Via: {via}\r\n" "From: <sip:a@x.test>;tag=1\r\n"
            "To: <sip:b@y.test>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n").encode()


# ----------------------------------------------------------------------------- what a send names


@pytest.mark.parametrize(("data", "hop"), [
    # a request: its next hop is the Request-URI (no Route); no port: NAPTR/SRV (4.1)
    (invite_to("sip:bob@carrier.test"), Hop("carrier.test", None, None, False)),
    (invite_to("sip:bob@carrier.test;transport=tcp"), Hop("carrier.test", None, "tcp", False)),
    # a port (or another host): A/AAAA on the send's port (4.2)
    (invite_to("sip:bob@carrier.test:5060"), Hop("carrier.test", 5060, "udp", False)),
    (invite_to("sip:bob@elsewhere.test"), Hop("carrier.test", 5060, "udp", False)),
    # the first Route is the next hop (RFC 3261 16.12 loose routing)
    (invite_to("sip:bob@elsewhere.test", "<sip:carrier.test;lr>"),
     Hop("carrier.test", None, None, False)),
    # a response (RFC 3263 5): a Via sent-by name without port: the SRV of its transport
    (response_via("SIP/2.0/UDP carrier.test;branch=z9hG4bK2"), Hop("carrier.test", None, "udp")),
    (response_via("SIP/2.0/UDP carrier.test:5060;branch=z9hG4bK2"),
     Hop("carrier.test", 5060, "udp")),
    (response_via("SIP/2.0/UDP carrier.test;rport=5060;branch=z9hG4bK2"),
     Hop("carrier.test", 5060, "udp")),
    (b"garbage", Hop("carrier.test", 5060, "udp")),
])
def test_what_a_send_to_a_name_asks_dns(data: bytes, hop: Hop) -> None:
    sends = SendResolver(Resolver(DnsClient((("127.0.0.1", 9),))), print, print)
    assert sends.hop_of(Send("udp", "carrier.test", 5060, data)) == (hop, ("udp",))


def test_an_upstream_named_by_a_domain_is_registered_under_each_transport() -> None:
    r = Resolver(DnsClient((("127.0.0.1", 9),)), transports=("udp", "tcp", "tls"))
    sends = SendResolver(r, print, print)
    sends.upstream(Hop("carrier.test"))
    sends.upstream(Hop("pbx.test", 5080))  # a port: A/AAAA, nothing to register
    assert set(sends.hops) == {("udp", "carrier.test", 5060), ("tcp", "carrier.test", 5060),
                               ("tls", "carrier.test", 5061)}
    s = Send("tcp", "carrier.test", 5060, invite_to("sip:bob@elsewhere.test"))
    assert sends.hop_of(s) == (Hop("carrier.test"), ("tcp",))


# ----------------------------------------------------------------------------- cached / park


async def test_a_name_is_looked_up_once_and_then_answered_from_the_cache(
        zone: DnsResponder) -> None:
    """A miss parks the sends (one lookup for all); they leave for the best SRV target with its
    port; later sends are a dict lookup until the TTL (30 s) is over."""
    clock, got = Clock(), Collect()
    sends = make(zone, clock, got)
    s = Send("udp", "carrier.test", 5060, invite_to("sip:bob@carrier.test"), token="t")
    assert sends.cached(s, clock.now) is MISS
    sends.park(s)
    sends.park(s)
    await got.wait()
    assert [(x.host, x.port, x.token) for x in got.sent] == [("192.0.2.1", 5071, "t")] * 2
    assert zone.asked("_sip._udp.carrier.test") == 1
    hit = sends.cached(s, clock.now + 29)
    assert isinstance(hit, Send) and (hit.host, hit.port, hit.data) == ("192.0.2.1", 5071, s.data)
    assert len(zone.questions) == 3  # NAPTR, SRV, A


async def test_an_expired_answer_is_used_while_it_is_looked_up_again(zone: DnsResponder) -> None:
    """Past its TTL, the last answer still goes out (no send waits on DNS) and a refresh runs
    once in the background; its result is used from then on."""
    clock, got = Clock(), Collect()
    sends = make(zone, clock, got)
    s = Send("udp", "carrier.test", 5060, invite_to("sip:bob@carrier.test"))
    sends.park(s)
    await got.wait()
    zone.set("_sip._udp.carrier.test", "SRV", "10 0 5099 uas2.carrier.test.", ttl=30)
    clock.now += 31
    for _ in range(3):
        hit = sends.cached(s, clock.now)
        assert isinstance(hit, Send) and (hit.host, hit.port) == ("192.0.2.1", 5071)
    for _ in range(100):  # the background refresh (bounded wait)
        await asyncio.sleep(0.01)
        hit = sends.cached(s, clock.now)
        if isinstance(hit, Send) and hit.port == 5099:
            break
    assert isinstance(hit, Send) and (hit.host, hit.port) == ("192.0.2.2", 5099)
    assert zone.asked("_sip._udp.carrier.test") == 2


async def test_a_failing_server_keeps_the_last_answer_then_gives_up(zone: DnsResponder) -> None:
    clock, got = Clock(), Collect()
    sends = make(zone, clock, got)
    s = Send("udp", "carrier.test", 5060, invite_to("sip:bob@carrier.test"))
    sends.park(s)
    await got.wait()
    zone.mode = "servfail"
    clock.now += 31
    sends.cached(s, clock.now)  # the last answer, and a refresh that fails
    assert sends.busy
    await wait_for(lambda: not sends.busy)
    assert zone.asked("_sip._udp.carrier.test") == 2
    hit = sends.cached(s, clock.now + RETRY - 0.1)
    assert isinstance(hit, Send) and hit.host == "192.0.2.1"
    assert not sends.busy  # not asked again within RETRY
    clock.now += 31 + 300  # past TTL + grace
    assert sends.cached(s, clock.now) is MISS


async def test_a_name_that_does_not_resolve_fails_its_sends(zone: DnsResponder) -> None:
    """NXDOMAIN: the parked sends are reported unreachable (the core treats it as a transport
    error, RFC 3261 16.9), and the name is known not to resolve for the negative TTL."""
    clock, got = Clock(), Collect()
    sends = make(zone, clock, got)
    s = Send("udp", "nowhere.test", 5060, invite_to("sip:bob@nowhere.test"), token="t")
    sends.park(s)
    await got.wait()
    assert [(f.token, why) for f, why in got.failed] == [("t", "does not resolve")]
    assert sends.cached(s, clock.now + 1) is None


async def test_held_sends_and_names_in_flight_are_bounded(zone: DnsResponder) -> None:
    """Think like an attacker: at most MAX_PARKED sends wait on one name; the rest fail at once
    (and every literal seen stays within CACHE_LIMIT)."""
    clock, got = Clock(), Collect()
    sends = make(zone, clock, got)
    s = Send("udp", "carrier.test", 5060, invite_to("sip:bob@carrier.test"))
    for _ in range(MAX_PARKED + 5):
        sends.park(s)
    assert len(got.failed) == 5 and len(sends.waiting[("udp", "carrier.test", 5060)]) == MAX_PARKED
    await wait_for(lambda: len(got.sent) == MAX_PARKED)
    for i in range(2 * CACHE_LIMIT):
        lit = Send("udp", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5060, b"")
        assert sends.cached(lit, 0.0) is lit
        assert len(sends.literals) <= CACHE_LIMIT


# ----------------------------------------------------------------------------- start-up plan


def config(tmp_path: Path, zone: DnsResponder, *uris: str,
           listen: tuple[Listen, ...] = (Listen("udp", "127.0.0.1", 5060),)) -> Config:
    from proxy.config import parse_upstream

    ups = tuple(u for u in (parse_upstream(x) for x in uris) if isinstance(u, Upstream))
    return Config(path=tmp_path / "proxy.yaml", listen=listen, upstreams=ups,
                  dns=DnsSettings((zone.server,)))


async def test_the_start_up_plan_takes_the_transport_naptr_chooses(
        zone: DnsResponder, tmp_path: Path) -> None:
    """The core writes the transport into the Via, so NAPTR chooses it at start-up among the
    proxy's listeners; the target keeps the name; every address found is an upstream's."""
    clock = asyncio.get_running_loop().time
    cfg = config(tmp_path, zone, "sip:carrier.test", "sip:127.0.0.1:5090",
                 listen=(Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060)))
    plan = await upstreams.plan(cfg, resolver_for(cfg, clock))
    assert [(t.transport, t.host, t.port, t.label) for t in plan.targets] == [
        ("udp", "carrier.test", 5060, "sip:carrier.test"),
        ("udp", "127.0.0.1", 5090, "sip:127.0.0.1:5090")]
    # NAPTR UDP (preference 50) then TCP (60): the addresses of both SRV sets
    assert plan.addresses == {("192.0.2.1", 5071), ("192.0.2.2", 5072), ("192.0.2.1", 5081),
                              ("127.0.0.1", 5090)}
    zone.set("carrier.test", "NAPTR", '10 10 "S" "SIP+D2T" "" _sip._tcp.carrier.test.')
    tcp_first = await upstreams.plan(cfg, resolver_for(cfg, clock))
    assert tcp_first.targets[0][:3] == ("tcp", "carrier.test", 5060)


async def test_a_name_without_records_is_refused_at_start_up_a_silent_server_is_not(
        zone: DnsResponder, tmp_path: Path) -> None:
    clock = asyncio.get_running_loop().time
    cfg = config(tmp_path, zone, "sip:nowhere.test")
    with pytest.raises(ConfigError, match="cannot resolve nowhere.test"):
        await upstreams.plan(cfg, resolver_for(cfg, clock))
    zone.mode = "silent"
    cfg = config(tmp_path, zone, "sip:carrier.test")
    plan = await upstreams.plan(cfg, resolver_for(cfg, clock))
    assert plan.targets[0][:3] == ("udp", "carrier.test", 5060) and not plan.addresses


# ----------------------------------------------------------------------------- Runtime.dispatch


class MockTransport:
    transport = None

    def __init__(self) -> None:
        self.sent: list[Send] = []

    def send(self, s: Send) -> None:
        self.sent.append(s)


async def wait_for(cond: Callable[[], bool]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def runtime(tmp_path: Path, zone: DnsResponder, *uris: str) -> tuple[Runtime, MockTransport]:
    cfg = config(tmp_path, zone, *uris)
    resolver = resolver_for(cfg, asyncio.get_running_loop().time)
    rt = Runtime(cfg, BUILTIN_POLICY, resolver=resolver,
                 upstreams=await upstreams.plan(cfg, resolver))
    mock = MockTransport()
    rt.udp[socket.AF_INET] = mock  # type: ignore[assignment]
    return rt, mock


async def test_a_call_to_an_upstream_named_by_a_domain_reaches_the_best_srv_target(
        zone: DnsResponder, tmp_path: Path) -> None:
    """upstreams: [sip:carrier.test]: the INVITE goes to the SRV target of priority 10 on its
    SRV port; the second call's INVITE too, from the cache (no new question)."""
    rt, mock = await runtime(tmp_path, zone, "sip:carrier.test")
    try:
        rt.deliver(request(), CALLER)
        await wait_for(lambda: any(s.data.startswith(b"INVITE") for s in mock.sent))
        [inv] = [s for s in mock.sent if s.data.startswith(b"INVITE")]
        assert (inv.host, inv.port) == ("192.0.2.1", 5071)
        asked = len(zone.questions)
        rt.deliver(request(call_id="second@x", branch="z9hG4bKcaller2"), CALLER)
        invites = [s for s in mock.sent if s.data.startswith(b"INVITE")]
        assert [(s.host, s.port) for s in invites] == [("192.0.2.1", 5071)] * 2
        assert len(zone.questions) == asked
        # requests from the SRV targets' addresses are an upstream's (README "Security defaults")
        assert ("192.0.2.2", 5072) in rt.core.view.upstream_addrs
    finally:
        rt.close()


async def test_a_response_to_a_via_naming_a_host_goes_to_its_srv(
        zone: DnsResponder, tmp_path: Path) -> None:
    """RFC 3263 5: a response whose Via sent-by is a name without port (and no received)
    goes to the SRV target of the Via's transport."""
    rt, mock = await runtime(tmp_path, zone, "sip:127.0.0.1:5090")
    try:
        data = response_via("SIP/2.0/UDP carrier.test;branch=z9hG4bK2")
        rt.dispatch([Send("udp", "carrier.test", 5060, data)])
        await wait_for(lambda: bool(mock.sent))
        assert [(s.host, s.port, s.data) for s in mock.sent] == [("192.0.2.1", 5071, data)]
        assert parse_message(mock.sent[0].data).status == 200
        assert zone.asked(rdtype="NAPTR") == 0  # section 5: SRV only
    finally:
        rt.close()


async def test_the_upstream_addresses_follow_the_refreshed_answer(
        zone: DnsResponder, tmp_path: Path) -> None:
    """A named upstream is resolved again when its answer expires; the new addresses are an
    upstream's and the targets of the next calls (Refresher -> core.set_upstream_targets)."""
    rt, mock = await runtime(tmp_path, zone, "sip:carrier.test")
    try:
        zone.set("_sip._udp.carrier.test", "SRV", "10 0 5077 uas2.carrier.test.", ttl=30)
        rt.resolver.dns.clear()  # as if the TTL were over
        rt.refresher.start()
        await wait_for(lambda: ("192.0.2.2", 5077) in rt.core.view.upstream_addrs)
        assert ("192.0.2.1", 5071) not in rt.core.view.upstream_addrs
        rt.deliver(request(), CALLER)
        invites = [s for s in mock.sent if s.data.startswith(b"INVITE")]
        assert [(s.transport, s.host, s.port) for s in invites] == [("udp", "192.0.2.2", 5077)]
    finally:
        rt.close()


async def test_a_tls_target_of_a_named_upstream_is_checked_against_the_upstreams_name(
        zone: DnsResponder, tmp_path: Path) -> None:
    """sips:secure.test by SRV (_sips._tcp): the core sends to the target's address over TLS,
    and the certificate is checked against secure.test, the URI's domain (RFC 5922 7.2), not
    against the SRV target's name or the address."""
    from proxy.config import TlsSettings
    from tests.unit.tls_pki import make_pki

    zone.add("_sips._tcp.secure.test", "SRV", "10 0 5061 uas1.carrier.test.", ttl=30)
    pki = make_pki(tmp_path)
    cfg = config(tmp_path, zone, "sips:secure.test",
                 listen=(Listen("udp", "127.0.0.1", 5060), Listen("tls", "127.0.0.1", 5061)))
    cfg = dataclasses.replace(cfg, tls=TlsSettings(pki["cert"], pki["key"]))
    resolver = resolver_for(cfg, asyncio.get_running_loop().time)
    rt = Runtime(cfg, BUILTIN_POLICY, resolver=resolver,
                 upstreams=await upstreams.plan(cfg, resolver))
    tls = MockTransport()
    rt.tls = tls  # type: ignore[assignment]
    try:
        rt.deliver(request(), CALLER)
        await wait_for(lambda: any(s.data.startswith(b"INVITE") for s in tls.sent))
        [inv] = [s for s in tls.sent if s.data.startswith(b"INVITE")]
        assert (inv.transport, inv.host, inv.port, inv.server_name) == (
            "tls", "192.0.2.1", 5061, "secure.test")
    finally:
        rt.tls = None
        rt.close()
