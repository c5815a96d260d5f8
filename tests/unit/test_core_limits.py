"""limits.per_source_rps (a token bucket per source IP) and the SIPS rules (RFC 3261 26.2.2,
RFC 5630: never a sips: request over UDP or TCP; Via SIP/2.0/TLS and Record-Route
;transport=tls over TLS), on the sans-IO core with a fake clock."""

from __future__ import annotations

from proxy.core.access.sources import RateLimiter
from proxy.core.core import CoreSettings, ProxyCore
from proxy.core.registrar.location import MemoryLocation
from proxy.core.types import LocalAddress, Source, Target
from proxy.sip import parse_message
from tests.unit.core_harness import UP1, Harness, default_policy, request, response_to, statuses


def test_bucket_allows_rate_then_refills() -> None:
    rl = RateLimiter(20)
    assert sum(rl.allow("10.0.0.1", 100.0) for _ in range(200)) == 20
    assert not rl.allow("10.0.0.1", 100.0)
    assert rl.allow("10.0.0.2", 100.0)  # another source has its own bucket
    assert sum(rl.allow("10.0.0.1", 100.5) for _ in range(50)) == 10  # half a second: 10 more
    assert not RateLimiter(0) and all(RateLimiter(0).allow("x", 0) for _ in range(1000))


def test_bucket_memory_is_bounded() -> None:
    rl = RateLimiter(5, max_sources=100)
    for i in range(10_000):
        rl.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1000.0 + i * 1e-4)
    assert len(rl) <= 100


def options(i: int, host: str = "127.0.0.1") -> bytes:
    return request("OPTIONS", ruri="sip:127.0.0.1:5060", branch=f"z9hG4bKo{i}",
                   call_id=f"opt-{i}", via_host=f"{host}:6000")


def test_burst_from_one_source_gets_503_and_another_source_is_served() -> None:
    h = Harness.make(per_source_rps=20)
    a = Source("udp", "127.0.0.1", 6000)
    got = [statuses(h.to(6000, h.feed(options(i), a))) for i in range(200)]
    ok = sum(1 for s in got if s == [200])
    limited = [s for s in got if s == [503]]
    assert ok == 20 and len(limited) == 180
    last = parse_message(h.sent[-1].data)
    assert last.get("retry-after") == "1"
    b = Source("udp", "127.0.0.2", 6000)
    assert statuses(h.to(6000, h.feed(options(1000, "127.0.0.2"), b))) == [200]
    assert h.core.refusals.counts["rate"] == 180
    # Stateless: the refused OPTIONS left no transaction behind.
    assert h.core.table.server_count == 21


def test_refusal_logged_once_per_source_per_minute(caplog) -> None:  # type: ignore[no-untyped-def]
    h = Harness.make(per_source_rps=1)
    a = Source("udp", "127.0.0.1", 6000)
    with caplog.at_level("WARNING", logger="proxy.core"):
        for i in range(30):
            h.feed(options(i), a)
    assert len([r for r in caplog.records if "(rate)" in r.getMessage()]) == 1


def test_in_dialog_requests_responses_and_upstreams_are_never_limited() -> None:
    h = Harness.make(per_source_rps=1)
    caller = Source("udp", "127.0.0.1", 6000)
    out = h.feed(request(branch="z9hG4bKinv1", call_id="c1"), caller)
    [inv] = [s.data for s in out if s.port == 5080]
    # the upstream's answers are responses: never limited
    for status in (180, 200):
        out = h.feed(response_to(inv, status), Source("udp", "127.0.0.1", 5080))
        assert status in statuses(h.to(6000, out))
    # a new INVITE from the same source is over the rate: 503 through a transaction
    out = h.feed(request(branch="z9hG4bKinv2", call_id="c2"), caller)
    assert statuses(h.to(6000, out)) == [503]
    assert h.core.table.server_count  # its ACK and retransmissions are absorbed by the transaction
    # in-dialog requests (To tag) are not counted
    for i in range(5):
        h.feed(request("INFO", branch=f"z9hG4bKinfo{i}", call_id="c1", to_tag="callee1",
                       cseq=10 + i), caller)
    assert h.core.stats["rate_limited"] == 1
    # requests from an upstream are not limited
    up = Source("udp", "127.0.0.1", 5080)
    for i in range(5):
        out = h.feed(options(100 + i, "127.0.0.1").replace(b"6000", b"5080"), up)
        assert 503 not in statuses(h.to(5080, out))


TLS_LOCAL = [
    LocalAddress("udp", "127.0.0.1", 5060, "127.0.0.1:5060"),
    LocalAddress("tcp", "127.0.0.1", 5060, "127.0.0.1:5060"),
    LocalAddress("tls", "127.0.0.1", 5061, "127.0.0.1:5061"),
]
TLS_UP = Target("tls", "127.0.0.1", 5091, label="sips:127.0.0.1:5091")


def tls_core(*upstreams: Target) -> Harness:
    settings = CoreSettings(upstreams=upstreams)
    return Harness(ProxyCore(settings, default_policy(), TLS_LOCAL, MemoryLocation()))


def test_sips_request_uri_never_goes_over_udp_or_tcp() -> None:
    for up in (UP1, Target("tcp", "127.0.0.1", 5080, label="sip:127.0.0.1:5080;transport=tcp")):
        h = tls_core(up)
        out = h.feed(request(ruri="sips:bob@example.com"))
        assert [s for s in out if s.port == up.port] == []
        assert statuses(h.to(6000, out)) == [100, 480]
        assert h.core.stats["sips_without_tls"] == 1


def test_sips_route_from_trusted_source_goes_over_tls_only() -> None:
    h = tls_core(UP1)
    pbx = Source("udp", "127.0.0.1", 5080)
    out = h.feed(request(ruri="sip:bob@example.com",
                         extra=("Route: <sips:127.0.0.1:5099;lr>",), via_host="127.0.0.1:5080"),
                 pbx)
    [fwd] = [s for s in out if s.port == 5099]
    assert fwd.transport == "tls"
    # ;transport=udp on a sips: URI is no TLS path: 480, nothing sent
    out = h.feed(request(ruri="sip:bob@example.com", branch="z9hG4bKx2", call_id="c2",
                         extra=("Route: <sips:127.0.0.1:5098;lr;transport=udp>",),
                         via_host="127.0.0.1:5080"), pbx)
    assert [s for s in out if s.port == 5098] == []
    assert 480 in statuses(h.to(5080, out))


def test_tls_hop_gets_tls_via_and_two_record_routes_when_the_transport_changes() -> None:
    h = tls_core(TLS_UP)
    caller = Source("tcp", "127.0.0.1", 6000, conn_id=7)
    out = h.feed(request(ruri="sips:bob@example.com"), caller)
    [fwd] = [s for s in out if s.port == 5091]
    assert fwd.transport == "tls"
    msg = parse_message(fwd.data)
    assert msg.top_via.transport.upper() == "TLS"
    assert "127.0.0.1:5061" in (msg.get("via") or "")
    rr = msg.get_all("record-route")
    rr_text = ", ".join(rr)
    assert rr_text.count("<sip:") == 2, rr
    first, second = [v.strip() for v in rr_text.split(",")][:2]
    assert "127.0.0.1:5061;lr;transport=tls" in first
    assert ";transport=tcp" in second


def test_a_tls_connection_is_a_flow_like_tcp() -> None:
    """RFC 5626 over TLS: an outbound binding registered over a TLS connection is reached over
    that connection (Via SIP/2.0/TLS), and when the connection closes the binding is gone."""
    from tests.unit.test_core_registrar_forking import pbx_invite, register

    settings = CoreSettings(upstreams=(UP1,), registrar_local=True,
                            domains=frozenset({"example.com"}))
    h = Harness(ProxyCore(settings, default_policy(), TLS_LOCAL, MemoryLocation()))
    phone = Source("tls", "127.0.0.1", 7001, conn_id=42)
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    assert register(h, phone, f"<sip:bob@127.0.0.1:7001;transport=tls;ob>;{inst};reg-id=1") \
        == 200
    assert h.core.conn_in_use(42) and not h.core.conn_in_use(43)
    out = pbx_invite(h)
    [inv] = [s for s in out if s.port == 7001]
    assert (inv.transport, inv.conn_id) == ("tls", 42)
    assert parse_message(inv.data).top_via.transport.upper() == "TLS"
    h.take(h.core.on_flow_closed(42, h.now))
    assert not h.core.conn_in_use(42)
    out = pbx_invite(h, "z9hG4bKpbx2")
    assert [s for s in out if s.port == 7001] == []
    assert statuses(h.to(5080, out))[-1] in (404, 480)


# ------------------------------------------- what per_source_rps counts (issue 18, "what costs")


def test_an_ipv6_host_counts_per_64_and_an_ipv4_host_per_address() -> None:
    """A host is given a /64 (RFC 4291 2.5.1): 20 addresses of one /64 share one bucket."""
    rl = RateLimiter(20)
    allowed = [rl.allow(f"2001:db8:5:6::{i:x}", 10.0) for i in range(1, 41)]
    assert sum(allowed) == 20 and not any(allowed[20:])
    assert not rl.allow("2001:db8:5:6:abcd::1", 10.0)  # anywhere in that /64
    assert rl.allow("2001:db8:5:7::1", 10.0)  # the next /64 is another host
    assert len(rl) == 2
    assert sum(rl.allow(f"192.0.2.{i}", 10.0) for i in range(1, 41)) == 40  # IPv4: per address


def test_unknown_cancels_are_counted_and_refused_503_over_the_rate() -> None:
    h = Harness.make(per_source_rps=5)
    stranger = Source("udp", "127.0.0.2", 6666)
    got = [statuses(h.to(6666, h.feed(request("CANCEL", call_id=f"c{i}", branch=f"z9hG4bKc{i}",
                                               via_host="127.0.0.2:6666"), stranger)))
           for i in range(20)]
    assert got == [[481]] * 5 + [[503]] * 15
    assert h.core.refusals.counts["rate"] == 15 and h.core.active_transactions == 0


def test_malformed_requests_are_counted_and_dropped_unanswered_over_the_rate() -> None:
    """A request refused before routing (unparsable: 400; invalid: 483 for Max-Forwards 0)
    costs an answer: it counts against its source, and over the rate it is dropped without one
    (a refusal costs less than the request); an upstream's are never counted."""
    h = Harness.make(per_source_rps=5)
    stranger = Source("udp", "127.0.0.2", 6666)
    broken = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:6666;branch=z9hG4bKb"
              b"\r\nCSeq: x\r\nContent-Length: 0\r\n\r\n")
    answered = [h.to(6666, h.feed(broken, stranger)) for _ in range(10)]
    assert [len(a) for a in answered] == [1] * 5 + [0] * 5
    assert answered[0][0].status == 400
    assert h.core.refusals.counts["rate"] == 5
    h2 = Harness.make(per_source_rps=5)
    hops = [statuses(h2.to(6666, h2.feed(
        request("OPTIONS", call_id=f"m{i}", branch=f"z9hG4bKm{i}", via_host="127.0.0.2:6666",
                max_forwards=0), stranger))) for i in range(10)]
    assert hops == [[483]] * 5 + [[]] * 5
    assert h2.core.refusals.counts["rate"] == 5
    pbx = Source("udp", "127.0.0.1", 5080)
    for _ in range(10):
        assert len(h2.to(5080, h2.feed(broken.replace(b"127.0.0.2:6666", b"127.0.0.1:5080"),
                                       pbx))) == 1
