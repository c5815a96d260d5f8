"""The sans-IO proxy core (RFC 3261 section 16) with a fake clock and no sockets."""

from __future__ import annotations

from proxy.core.types import Source, Target
from proxy.sip import parse_message
from proxy.transaction import TimerConfig
from tests.unit.core_harness import (
    CALLER,
    UP1,
    Harness,
    methods,
    own_route,
    request,
    response_to,
    statuses,
)

PBX = Source("udp", "127.0.0.1", 5080)


def forwarded_invite(h: Harness, port: int = 5080) -> bytes:
    sends = [s for s in h.sent if s.port == port and s.data.startswith(b"INVITE")]
    assert sends, f"no INVITE reached port {port}"
    return sends[-1].data


def test_invite_gets_100_and_is_forwarded_to_first_upstream_with_via_and_record_route() -> None:
    """RFC 3261 16.2 (100 Trying), 16.6 steps 3, 4, 8 (Max-Forwards, Record-Route, Via)."""
    h = Harness.make()
    out = h.feed(request())
    assert statuses(h.to(6000, out)) == [100]
    fwd = parse_message(forwarded_invite(h))
    assert fwd.top_via.branch and fwd.top_via.branch.startswith("z9hG4bK")
    assert fwd.top_via.sent_by() == ("127.0.0.1", 5060)
    assert len(fwd.vias) == 2
    assert fwd.max_forwards == 69
    [rr] = fwd.record_routes
    # the dialog mark (RFC 3261 12.2.2 / 16.4, proxy.core.access.trust): the Call-ID, From tag, token
    mark = h.core.trust.dialog_mark("call-1@caller", "from1", rr.uri.user or "")
    assert str(rr.uri).endswith(f"@127.0.0.1:5060;lr;d={mark}")
    # RFC 5626 5.3: the caller-facing Record-Route carries the caller's flow token.
    flow = h.core.tokens.decode(rr.uri.user or "")
    assert flow is not None and (flow.remote_host, flow.remote_port) == ("127.0.0.1", 6000)
    assert fwd.request_uri == "sip:bob@example.com"
    assert not [s for s in out if s.port == 5081]


def test_missing_max_forwards_is_added_as_70() -> None:
    """RFC 3261 16.6 step 3."""
    h = Harness.make()
    h.feed(request(max_forwards=None))
    assert parse_message(forwarded_invite(h)).max_forwards == 70


def test_max_forwards_zero_gets_483_and_nothing_is_forwarded() -> None:
    """RFC 3261 16.3 step 3."""
    h = Harness.make()
    out = h.feed(request(max_forwards=0))
    assert statuses(h.to(6000, out)) == [483]
    assert not [s for s in out if s.port in (5080, 5081)]


def test_unknown_proxy_require_gets_420_with_unsupported() -> None:
    """RFC 3261 16.3 step 6; RFC 4475 3.3.5 (bext01)."""
    h = Harness.make()
    out = h.feed(request(extra=("Proxy-Require: foo, bar",)))
    [resp] = h.to(6000, out)
    assert resp.status == 420
    assert resp.get("unsupported") == "foo, bar"


def test_unknown_uri_scheme_gets_416() -> None:
    """RFC 3261 16.3 step 2; RFC 4475 3.3.2 (unkscm)."""
    h = Harness.make()
    out = h.feed(request(ruri="nobodyknows:thisperson"))
    assert statuses(h.to(6000, out)) == [416]


def test_retransmitted_invite_is_absorbed_and_answered_with_last_response() -> None:
    """RFC 3261 17.2.1: the server transaction absorbs retransmissions."""
    h = Harness.make()
    h.feed(request())
    out = h.feed(request())
    assert statuses(h.to(6000, out)) == [100]
    assert not [s for s in out if s.port == 5080]


def test_180_and_200_are_forwarded_at_once_without_the_proxy_via() -> None:
    """RFC 3261 16.7 steps 3 and 5."""
    h = Harness.make()
    h.feed(request())
    fwd = forwarded_invite(h)
    out = h.feed(response_to(fwd, 180), PBX)
    [ringing] = h.to(6000, out)
    assert ringing.status == 180 and len(ringing.vias) == 1
    assert ringing.top_via.branch == "z9hG4bKcaller1"
    out = h.feed(response_to(fwd, 200), PBX)
    assert statuses(h.to(6000, out)) == [200]


def test_503_fails_over_to_the_second_upstream_and_its_200_reaches_the_caller() -> None:
    """Policy `failover` on 503 (default.yaml); the 503 is ACKed hop by hop (17.1.1.3)."""
    h = Harness.make()
    h.feed(request())
    fwd1 = forwarded_invite(h, 5080)
    out = h.feed(response_to(fwd1, 503), PBX)
    assert methods(h.to(5080, out)) == ["ACK"]
    fwd2 = parse_message(forwarded_invite(h, 5081))
    assert fwd2.top_via.branch != parse_message(fwd1).top_via.branch
    assert not statuses(h.to(6000, out))
    out = h.feed(response_to(forwarded_invite(h, 5081), 200), Source("udp", "127.0.0.1", 5081))
    assert statuses(h.to(6000, out)) == [200]


def test_503_from_every_upstream_becomes_500_for_the_caller() -> None:
    """RFC 3261 16.7 step 6: a 503 chosen as best response is sent as 500."""
    h = Harness.make()
    h.feed(request())
    h.feed(response_to(forwarded_invite(h, 5080), 503), PBX)
    out = h.feed(response_to(forwarded_invite(h, 5081), 503), Source("udp", "127.0.0.1", 5081))
    assert statuses(h.to(6000, out)) == [500]


def test_603_stops_without_failover() -> None:
    """Policy `stop` on 603: forwarded at once, no second upstream (RFC 3261 16.7 step 5)."""
    h = Harness.make()
    h.feed(request())
    out = h.feed(response_to(forwarded_invite(h, 5080), 603), PBX)
    assert statuses(h.to(6000, out)) == [603]
    assert methods(h.to(5080, out)) == ["ACK"]
    assert not [s for s in h.sent if s.port == 5081]


def test_404_is_forwarded_without_failover() -> None:
    """Policy `forward`: the best (only) response goes to the caller."""
    h = Harness.make()
    h.feed(request())
    out = h.feed(response_to(forwarded_invite(h, 5080), 404), PBX)
    assert statuses(h.to(6000, out)) == [404]
    assert not [s for s in h.sent if s.port == 5081]


def test_timer_b_without_answer_fails_over_after_exactly_64_t1() -> None:
    """RFC 3261 17.1.1.2: Timer B = 64*T1 -> 408, which the default policy fails over."""
    h = Harness.make(timers=TimerConfig(t1=0.1))
    h.feed(request())
    start = h.now
    h.advance(6.4 - 0.001)
    assert not [s for s in h.sent if s.port == 5081]
    retrans = [s for s in h.sent if s.port == 5080 and s.data.startswith(b"INVITE")]
    assert len(retrans) == 7  # sent at 0, then Timer A at 0.1, 0.3, 0.7, 1.5, 3.1 (+ original) ...
    h.advance(0.002)
    assert [s for s in h.sent if s.port == 5081]
    assert h.now - start > 6.4


def test_cancel_gets_200_and_the_487_from_downstream_reaches_the_caller() -> None:
    """RFC 3261 16.10 and 9.2."""
    h = Harness.make()
    h.feed(request())
    fwd = forwarded_invite(h)
    h.feed(response_to(fwd, 180), PBX)
    out = h.feed(request("CANCEL", extra=()))
    assert statuses(h.to(6000, out)) == [200]
    cancels = [m for m in h.to(5080, out) if m.method == "CANCEL"]
    assert len(cancels) == 1
    assert cancels[0].top_via.branch == parse_message(fwd).top_via.branch
    out = h.feed(response_to(fwd, 487), PBX)
    assert statuses(h.to(6000, out)) == [487]


def test_cancel_for_unknown_transaction_gets_481() -> None:
    """RFC 3261 9.2."""
    h = Harness.make()
    out = h.feed(request("CANCEL", branch="z9hG4bKnothing"))
    assert statuses(h.to(6000, out)) == [481]


def test_ack_for_non_2xx_is_absorbed_hop_by_hop() -> None:
    """RFC 3261 17.2.1: the ACK for a non-2xx final is part of the INVITE transaction."""
    h = Harness.make()
    h.feed(request())
    h.feed(response_to(forwarded_invite(h), 404), PBX)
    n = len(h.sent)
    out = h.feed(request("ACK", to_tag="callee1"))
    assert out == [] and len(h.sent) == n


def test_ack_for_2xx_is_forwarded_along_its_route() -> None:
    """RFC 3261 16.4 loose routing of an in-dialog ACK; our own Route value is removed."""
    h = Harness.make()
    out = h.feed(request(
        "ACK", ruri="sip:bob@127.0.0.1:5080", branch="z9hG4bKack2", to_tag="callee1",
        extra=(f"Route: {own_route(h)}",),
    ))
    [ack] = h.to(5080, out)
    assert ack.method == "ACK" and ack.get("route") is None
    assert len(ack.vias) == 2


def test_loose_route_to_next_hop_keeps_request_uri() -> None:
    """RFC 3261 16.4 / 16.6 step 7: the next Route value is the next hop (here the second
    upstream: a UA's in-dialog request goes to an upstream only, proxy.core.proxy.routing)."""
    h = Harness.make()
    out = h.feed(request(
        "BYE", ruri="sip:bob@10.0.0.9:5099", to_tag="t1", branch="z9hG4bKbye",
        extra=(f"Route: {own_route(h)}, <sip:127.0.0.1:5081;lr>",),
    ))
    [bye] = h.to(5081, out)
    assert bye.request_uri == "sip:bob@10.0.0.9:5099"
    assert bye.get("route") == "<sip:127.0.0.1:5081;lr>"


def test_request_that_comes_back_unchanged_is_a_loop_482() -> None:
    """RFC 3261 16.3 step 4: our Via with the same loop hash -> 482."""
    h = Harness.make(upstreams=(Target("udp", "127.0.0.1", 5080),))
    h.feed(request())
    # The PBX routes it straight back, adding its own Via (as any proxy would).
    looped = forwarded_invite(h).replace(
        b"\r\nVia: ", b"\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKpbxloop;rport\r\nVia: ", 1)
    out = h.feed(looped, PBX)
    # refused before any transaction: once, statelessly, without 100 Trying (issue 18)
    assert statuses(h.to(5080, out)) == [482]
    assert h.core.refusals.counts["loop"] == 1
    assert not [s for s in out if s.port == 5081]


def test_timer_c_cancels_a_ringing_branch() -> None:
    """RFC 3261 16.8: Timer C fires -> CANCEL a branch that had a provisional response."""
    h = Harness.make(timers=TimerConfig(timer_c=181.0))
    h.feed(request())
    fwd = forwarded_invite(h)
    h.feed(response_to(fwd, 180), PBX)
    out = h.advance(180.9)
    assert "CANCEL" not in methods(h.to(5080, out))
    out = h.advance(0.2)
    assert methods(h.to(5080, out)) == ["CANCEL"]


def test_registrar_local_binds_and_routes_pbx_call_to_phone() -> None:
    """RFC 3261 10.3 (REGISTER), docs/BEHAVIOUR.md, routing (registered AOR)."""
    h = Harness.make(registrar_local=True, domains=frozenset({"example.com"}))
    phone = Source("udp", "127.0.0.1", 7000)
    out = h.feed(request(
        "REGISTER", ruri="sip:example.com", branch="z9hG4bKreg1",
        extra=("Expires: 600",),
    ).replace(b"<sip:alice@127.0.0.1:6000>", b"<sip:bob@127.0.0.1:7000>"), phone)
    [ok] = h.to(7000, out)
    assert ok.status == 200
    assert "expires=600" in (ok.get("contact") or "")
    out = h.feed(request(branch="z9hG4bKpbx1", via_host="127.0.0.1:5080"), PBX)
    [inv] = [m for m in h.to(7000, out) if m.is_request]
    assert inv.request_uri == "sip:bob@127.0.0.1:7000"


def test_unknown_user_in_our_domain_gets_404() -> None:
    """docs/BEHAVIOUR.md, routing: a request for a domain of ours with no registration -> 404."""
    h = Harness.make(registrar_local=True, domains=frozenset({"example.com"}))
    out = h.feed(request(branch="z9hG4bKpbx2", via_host="127.0.0.1:5080"), PBX)
    assert statuses(h.to(5080, out)) == [100, 404]


def test_bad_request_gets_400_and_bad_response_is_dropped() -> None:
    """RFC 3261 16.3 / 8.2: a broken request is answered 400; a broken response dropped."""
    h = Harness.make()
    broken = request().replace(b"CSeq: 1 INVITE", b"CSeq: abc INVITE")
    out = h.feed(broken)
    assert statuses(h.to(6000, out)) == [400]
    out = h.feed(b"SIP/2.0 200 OK\r\nVia: garbage;;;\r\n\r\n", PBX)
    assert out == []
    assert h.core.stats["responses_dropped"] == 1


def test_transport_error_on_branch_acts_as_503_and_fails_over() -> None:
    """RFC 3261 16.9: a transport error is a 503 to the response context."""
    h = Harness.make()
    out = h.feed(request())
    token = [s for s in out if s.port == 5080][0].token
    out = h.core.on_send_failure(token, h.now).sends
    h.sent.extend(out)
    assert [s for s in out if s.port == 5081]


def test_transactions_are_released_after_a_completed_call() -> None:
    """No leak: after final responses and timers, the core holds no transaction."""
    h = Harness.make()
    h.feed(request())
    fwd = forwarded_invite(h)
    h.feed(response_to(fwd, 200), PBX)
    h.feed(request("BYE", to_tag="callee1", branch="z9hG4bKbye1", cseq=2,
                   ruri="sip:bob@127.0.0.1:5080", extra=(f"Route: {own_route(h)}",)))
    bye = [s for s in h.sent if s.port == 5080 and s.data.startswith(b"BYE")][-1].data
    h.feed(response_to(bye, 200), PBX)
    assert h.core.active_transactions > 0
    h.advance(64.0)
    assert h.core.active_transactions == 0
    assert UP1.port == 5080
    assert CALLER.port == 6000


def test_drain_waits_only_for_unanswered_requests() -> None:
    """SIGTERM drain: a request still waiting for its final response counts; a transaction
    that only absorbs retransmissions (RFC 6026 Accepted, 17.2.2 Completed) does not."""
    h = Harness.make()
    h.feed(request())
    assert h.core.unanswered == 1
    h.feed(response_to(forwarded_invite(h), 200), PBX)
    assert h.core.unanswered == 0
    assert h.core.active_transactions > 0


def test_draining_core_refuses_new_calls_but_relays_in_dialog_requests() -> None:
    """README "Operations": SIGTERM stops taking new transactions; calls in progress still end."""
    h = Harness.make()
    h.core.drain(h.now)
    out = h.feed(request())
    assert statuses(h.to(6000, out)) == [503]  # stateless, no 100 Trying first
    out = h.feed(request("BYE", ruri="sip:bob@127.0.0.1:5080", to_tag="t9", branch="z9hG4bKbye9",
                         extra=(f"Route: {own_route(h)}",)))
    assert methods(h.to(5080, out)) == ["BYE"]
