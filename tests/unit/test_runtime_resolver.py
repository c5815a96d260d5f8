"""RFC 3263 client side (proxy/runtime/resolver.py) and its DNS cache (proxy/runtime/dns.py),
against a DNS server on loopback (tests/dns_servers.py: a dnspython-built authoritative
server for ``test.``, on a UDP port of the test's event loop). The cache runs on a clock the
test moves. The same procedure against dnsmasq, an independent implementation in a process
of its own: tests/system/test_dns_dnsmasq.py."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from proxy.runtime.dns import GRACE, MAX_RECORDS, NEGATIVE_TTL, RETRY, DnsClient, DnsFailure
from proxy.runtime.resolver import Hop, Resolved, Resolver, srv_order
from tests.dns_servers import DnsResponder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def zone() -> AsyncIterator[DnsResponder]:
    server = await DnsResponder().start()
    yield server
    server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(zone: DnsResponder, clock: Clock, *, transports: tuple[str, ...] = ("udp", "tcp", "tls"),
         families: tuple[str, ...] = ("A",), seed: int = 7, **kw: float) -> Resolver:
    client = DnsClient((zone.server,), clock=clock, timeout=0.2, **kw)  # type: ignore[arg-type]
    return Resolver(client, transports=transports, families=families, rng=random.Random(seed))


def carrier(zone: DnsResponder, ttl: int = 60) -> None:
    """carrier.test: NAPTR UDP (order 10) then TCP (order 20); two UDP SRV targets."""
    zone.add("carrier.test", "NAPTR", '10 50 "S" "SIP+D2U" "" _sip._udp.carrier.test.',
             '20 50 "S" "SIP+D2T" "" _sip._tcp.carrier.test.', ttl=ttl)
    zone.add("_sip._udp.carrier.test", "SRV", "20 60 5072 uas2.carrier.test.",
             "10 60 5071 uas1.carrier.test.", ttl=ttl)
    zone.add("_sip._tcp.carrier.test", "SRV", "10 60 5073 uas1.carrier.test.", ttl=ttl)
    zone.add("uas1.carrier.test", "A", "192.0.2.1", ttl=ttl)
    zone.add("uas2.carrier.test", "A", "192.0.2.2", ttl=ttl)


def addrs(targets: tuple[Resolved, ...]) -> list[tuple[str, str, int]]:
    return [(t.transport, t.host, t.port) for t in targets]


# ----------------------------------------------------------------------------- RFC 3263 4.1-4.2


async def test_naptr_then_srv_then_a_in_priority_order(zone: DnsResponder, clock: Clock) -> None:
    """RFC 3263 4.1: no port, no transport: NAPTR; the lowest order's record (RFC 3403 4.1)
    names the SRV set; SRV priority 10 before 20 (RFC 2782); A of each target."""
    carrier(zone)
    found = await make(zone, clock).targets(Hop("carrier.test"))
    assert addrs(found.targets) == [("udp", "192.0.2.1", 5071), ("udp", "192.0.2.2", 5072)]
    assert [(t.name, t.priority) for t in found.targets] == [
        ("uas1.carrier.test", 10), ("uas2.carrier.test", 20)]
    assert not found.failed and found.expires == clock.now + 60
    assert zone.questions == [("carrier.test", "NAPTR"), ("_sip._udp.carrier.test", "SRV"),
                              ("uas1.carrier.test", "A"), ("uas2.carrier.test", "A")]


async def test_naptr_preference_and_the_transports_the_proxy_has(
        zone: DnsResponder, clock: Clock) -> None:
    """Same order: the lower preference first (TCP here); a transport the proxy does not have
    is discarded (RFC 3263 4.1), so a UDP-only proxy takes the UDP record."""
    zone.add("pref.test", "NAPTR", '10 20 "s" "SIP+D2U" "" _sip._udp.pref.test.',
             '10 10 "s" "SIP+D2T" "" _sip._tcp.pref.test.')
    zone.add("_sip._udp.pref.test", "SRV", "0 0 5060 u.pref.test.")
    zone.add("_sip._tcp.pref.test", "SRV", "0 0 5060 t.pref.test.")
    zone.add("u.pref.test", "A", "192.0.2.10")
    zone.add("t.pref.test", "A", "192.0.2.11")
    both = await make(zone, clock).targets(Hop("pref.test"))
    assert addrs(both.targets) == [("tcp", "192.0.2.11", 5060), ("udp", "192.0.2.10", 5060)]
    udp_only = await make(zone, clock, transports=("udp",)).targets(Hop("pref.test"))
    assert addrs(udp_only.targets) == [("udp", "192.0.2.10", 5060)]


async def test_a_sips_uri_takes_only_sips_d2t(zone: DnsResponder, clock: Clock) -> None:
    """RFC 3263 4.1: for a SIPS URI only SIPS+D2T records (TLS over TCP, _sips._tcp)."""
    zone.add("secure.test", "NAPTR", '10 10 "S" "SIP+D2U" "" _sip._udp.secure.test.',
             '20 10 "S" "SIPS+D2T" "" _sips._tcp.secure.test.')
    zone.add("_sip._udp.secure.test", "SRV", "0 0 5060 a.secure.test.")
    zone.add("_sips._tcp.secure.test", "SRV", "0 0 5061 a.secure.test.")
    zone.add("a.secure.test", "A", "192.0.2.20")
    found = await make(zone, clock).targets(Hop("secure.test", secure=True))
    assert addrs(found.targets) == [("tls", "192.0.2.20", 5061)]


async def test_an_explicit_port_means_a_records_only(zone: DnsResponder, clock: Clock) -> None:
    """RFC 3263 4.2: a port in the URI: A/AAAA of the host, that port; no NAPTR, no SRV."""
    carrier(zone)
    zone.add("carrier.test", "A", "192.0.2.99")
    found = await make(zone, clock).targets(Hop("carrier.test", 5080))
    assert addrs(found.targets) == [("udp", "192.0.2.99", 5080)]
    assert zone.questions == [("carrier.test", "A")]


async def test_an_explicit_transport_skips_naptr(zone: DnsResponder, clock: Clock) -> None:
    """RFC 3263 4.1: a transport parameter: the SRV of that transport only."""
    carrier(zone)
    found = await make(zone, clock).targets(Hop("carrier.test", None, "tcp"))
    assert addrs(found.targets) == [("tcp", "192.0.2.1", 5073)]
    assert zone.asked(rdtype="NAPTR") == 0
    assert zone.asked("_sip._udp.carrier.test") == 0


async def test_without_naptr_srv_of_each_transport_then_a(zone: DnsResponder,
                                                          clock: Clock) -> None:
    """RFC 3263 4.1: no NAPTR: the SRV of each transport the proxy has; no SRV at all (4.2):
    A/AAAA of the domain on 5060 over UDP."""
    zone.add("plain.test", "A", "192.0.2.30")
    zone.add("_sip._tcp.srvonly.test", "SRV", "5 0 5090 plain.test.")
    r = make(zone, clock, transports=("udp", "tcp"))
    assert addrs((await r.targets(Hop("srvonly.test"))).targets) == [("tcp", "192.0.2.30", 5090)]
    assert zone.asked("_sip._udp.srvonly.test", "SRV") == 1
    assert addrs((await r.targets(Hop("plain.test"))).targets) == [("udp", "192.0.2.30", 5060)]
    assert {q for q in zone.questions if q[0].endswith("plain.test")} >= {
        ("plain.test", "NAPTR"), ("_sip._udp.plain.test", "SRV"),
        ("_sip._tcp.plain.test", "SRV"), ("plain.test", "A")}


async def test_a_srv_target_of_dot_means_no_service(zone: DnsResponder, clock: Clock) -> None:
    """RFC 2782: target "." = the service is decidedly not available: no A fallback."""
    zone.add("_sip._udp.closed.test", "SRV", "0 0 0 .")
    zone.add("closed.test", "A", "192.0.2.40")
    found = await make(zone, clock, transports=("udp",)).targets(Hop("closed.test"))
    assert found.targets == () and not found.failed
    assert zone.asked("closed.test", "A") == 0


async def test_ip_literals_need_no_question(zone: DnsResponder, clock: Clock) -> None:
    found = await make(zone, clock).targets(Hop("192.0.2.5", None, None, True))
    assert addrs(found.targets) == [("tls", "192.0.2.5", 5061)]
    assert zone.questions == []


# ----------------------------------------------------------------------------- RFC 2782 weights


async def test_weights_share_the_first_place_within_a_priority(zone: DnsResponder,
                                                               clock: Clock) -> None:
    """RFC 2782: within priority 10, weights 60/30/10 share the first place about 60/30/10
    (the running-sum draw over [0, 100]); priority 20 is always last, whatever its weight.
    One SRV question: the order is drawn again from the cached answer each time."""
    zone.add("_sip._udp.w.test", "SRV", "10 60 5060 a.w.test.", "10 30 5060 b.w.test.",
             "10 10 5060 c.w.test.", "20 100 5060 d.w.test.")
    for i, n in enumerate("abcd"):
        zone.add(f"{n}.w.test", "A", f"192.0.2.{50 + i}")
    r = make(zone, clock, transports=("udp",), seed=2782)
    first: Counter[str] = Counter()
    runs = 2000
    for _ in range(runs):
        found = await r.targets(Hop("w.test", None, "udp"))
        names = [t.name[0] for t in found.targets]
        assert sorted(names) == ["a", "b", "c", "d"] and names[-1] == "d"
        first[names[0]] += 1
    share = {k: v / runs for k, v in first.items()}
    assert abs(share["a"] - 61 / 101) < 0.04, share
    assert abs(share["b"] - 30 / 101) < 0.04, share
    assert abs(share["c"] - 10 / 101) < 0.03, share
    assert zone.asked("_sip._udp.w.test", "SRV") == 1


def test_srv_order_puts_zero_weights_first_and_is_reproducible_with_a_seed() -> None:
    """RFC 2782: records of weight 0 are placed first before the draw, so with another record
    of weight > 0 a zero-weight one is picked only when the draw is 0; the same seed gives
    the same order."""
    from proxy.runtime.dns import Srv

    records = [Srv(1, 0, 1, "zero"), Srv(1, 1000, 2, "heavy"), Srv(0, 5, 3, "best")]
    orders = [tuple(r.target for r in srv_order(records, random.Random(s))) for s in range(200)]
    assert all(o[0] == "best" for o in orders)
    assert Counter(o[1] for o in orders)["heavy"] > 190
    assert orders == [tuple(r.target for r in srv_order(records, random.Random(s)))
                      for s in range(200)]


# ----------------------------------------------------------------------------- cache


async def test_answers_are_cached_for_their_ttl(zone: DnsResponder, clock: Clock) -> None:
    """Each answer is used for its own TTL (SRV 30 s, A 120 s here) on the client's clock;
    a changed record is seen once its TTL is over."""
    zone.add("_sip._udp.ttl.test", "SRV", "10 0 5071 one.ttl.test.", ttl=30)
    zone.add("one.ttl.test", "A", "192.0.2.60", ttl=120)
    zone.add("two.ttl.test", "A", "192.0.2.61", ttl=120)
    r = make(zone, clock, transports=("udp",))
    hop = Hop("ttl.test", None, "udp")
    assert addrs((await r.targets(hop)).targets) == [("udp", "192.0.2.60", 5071)]
    zone.set("_sip._udp.ttl.test", "SRV", "10 0 5072 two.ttl.test.", ttl=30)
    clock.now += 29.9
    found = await r.targets(hop)
    assert addrs(found.targets) == [("udp", "192.0.2.60", 5071)]
    assert found.expires == 1030.0
    assert zone.asked("_sip._udp.ttl.test") == 1 and zone.asked("one.ttl.test") == 1
    clock.now += 0.2
    assert addrs((await r.targets(hop)).targets) == [("udp", "192.0.2.61", 5072)]
    assert zone.asked("_sip._udp.ttl.test") == 2


async def test_a_negative_answer_is_cached_for_the_soa_negative_ttl(clock: Clock) -> None:
    """RFC 2308: NXDOMAIN and NODATA are remembered for the SOA's negative TTL (capped), an
    empty answer that is not a failure."""
    server = await DnsResponder(negative_ttl=20).start()
    try:
        r = make(server, clock)
        hop = Hop("nothing.test", 5060)
        found = await r.targets(hop)
        assert found.targets == () and not found.failed and found.expires == clock.now + 20
        clock.now += 19
        await r.targets(hop)
        assert server.asked("nothing.test", "A") == 1
        clock.now += 2
        server.add("nothing.test", "A", "192.0.2.70")  # it appears later
        assert addrs((await r.targets(hop)).targets) == [("udp", "192.0.2.70", 5060)]
        assert server.asked("nothing.test", "A") == 2
        assert NEGATIVE_TTL >= 20
    finally:
        server.close()


async def test_a_failing_server_leaves_the_last_answer_in_use_and_logs_once(
        zone: DnsResponder, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A failure (SERVFAIL, then no answer at all) keeps the last good answer for its TTL plus
    the grace; the name is asked again every RETRY s, not at every call; one warning per name;
    past the grace: no target, a failure (not "no such name"); recovery is logged."""
    caplog.set_level(logging.WARNING, "proxy")
    zone.add("_sip._udp.flaky.test", "SRV", "10 0 5071 a.flaky.test.", ttl=30)
    zone.add("a.flaky.test", "A", "192.0.2.80", ttl=30)
    r = make(zone, clock, transports=("udp",))
    hop = Hop("flaky.test", None, "udp")
    good = addrs((await r.targets(hop)).targets)
    zone.mode = "servfail"
    clock.now += 31
    for _ in range(5):  # five calls within RETRY: one question per name
        found = await r.targets(hop)
        assert addrs(found.targets) == good and found.failed
    assert zone.asked("_sip._udp.flaky.test") == 2
    zone.mode = "silent"  # a timeout now (dnspython tries again within its lifetime)
    for _ in range(3):
        clock.now += RETRY
        before = zone.asked("_sip._udp.flaky.test")
        assert addrs((await r.targets(hop)).targets) == good
        assert zone.asked("_sip._udp.flaky.test") > before
        before = zone.asked("_sip._udp.flaky.test")
        for _ in range(3):  # within RETRY: from the cache
            assert addrs((await r.targets(hop)).targets) == good
        assert zone.asked("_sip._udp.flaky.test") == before
    warnings = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING]
    assert sum("_sip._udp.flaky.test" in w for w in warnings) == 1, warnings
    assert sum("a.flaky.test" in w for w in warnings) == 1, warnings
    clock.now = 1000 + 30 + GRACE + 1
    found = await r.targets(hop)
    assert found.targets == () and found.failed
    zone.mode = "answer"
    clock.now += RETRY
    assert addrs((await r.targets(hop)).targets) == good
    assert any("_sip._udp.flaky.test answers again" in m.getMessage() for m in caplog.records)


async def test_a_failure_without_any_answer_yet_is_not_asked_again_at_once(
        zone: DnsResponder, clock: Clock) -> None:
    zone.mode = "servfail"
    client = DnsClient((zone.server,), clock=clock, timeout=0.2)
    for _ in range(3):
        with pytest.raises(DnsFailure):
            await client.ask("down.test", "A")
    assert zone.asked("down.test") == 1
    clock.now += RETRY
    with pytest.raises(DnsFailure):
        await client.ask("down.test", "A")
    assert zone.asked("down.test") == 2


async def test_no_a_fallback_when_the_srv_question_fails(zone: DnsResponder,
                                                         clock: Clock) -> None:
    """A failed SRV question is not "no SRV records" (RFC 3263 4.2): the domain's A record
    (maybe a web server) is not used in its place."""
    zone.add("www.test", "A", "192.0.2.90")
    r = make(zone, clock, transports=("udp",))
    zone.mode = "servfail"
    found = await r.targets(Hop("www.test", None, "udp"))
    assert found.targets == () and found.failed
    assert zone.asked("www.test", "A") == 0


async def test_identical_questions_at_once_share_one_query(zone: DnsResponder,
                                                           clock: Clock) -> None:
    carrier(zone)
    r = make(zone, clock)
    results = await asyncio.gather(*(r.targets(Hop("carrier.test")) for _ in range(20)))
    assert len({addrs(x.targets)[0] for x in results}) == 1
    assert zone.asked("carrier.test", "NAPTR") == 1
    assert zone.asked("_sip._udp.carrier.test", "SRV") == 1


async def test_the_answers_an_outsider_names_stay_bounded(zone: DnsResponder,
                                                          clock: Clock) -> None:
    """Think like an attacker: the cache holds at most max_entries answers (expired ones go
    first), and one answer at most MAX_RECORDS records, however many the zone holds."""
    client = DnsClient((zone.server,), clock=clock, timeout=0.2, max_entries=50)
    for i in range(200):
        await client.ask(f"n{i}.test", "A")
        assert len(client) <= 50
    zone.add("_sip._udp.big.test", "SRV",
             *(f"{i % 3} 1 {6000 + i} t{i}.big.test." for i in range(40)))
    for i in range(40):
        zone.add(f"t{i}.big.test", "A", f"198.51.100.{i}")
    r = Resolver(DnsClient((zone.server,), clock=clock, timeout=0.2), families=("A",),
                 transports=("udp",), rng=random.Random(1))
    found = await r.targets(Hop("big.test", None, "udp"))
    assert len(found.targets) == MAX_RECORDS
    assert [t.priority for t in found.targets] == sorted(t.priority for t in found.targets)
    assert zone.asked(rdtype="A") - 200 <= MAX_RECORDS


async def test_the_system_lookup_finds_etc_hosts_names() -> None:
    """Without configured servers, a name DNS has no address for is also looked up by the
    system (/etc/hosts, nsswitch), off the event loop."""
    client = DnsClient(())
    answer = await client.ask("localhost", "SYSTEM")
    assert "127.0.0.1" in answer.records or "::1" in answer.records
