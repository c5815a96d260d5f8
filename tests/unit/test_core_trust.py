"""The trust model of the core (issue 18), sans-IO with a fake clock: what a Record-Route
value, a flow token, a branch and a source prove, and what a stranger's request may cost.

A stranger is ``127.0.0.2``; the upstreams are ``127.0.0.1:5080`` and ``:5081``; the
"foreign host" a stranger would like to reach is ``127.0.0.1:16530``.
"""

from __future__ import annotations

from proxy.core.access.trust import TICK, Trust, branch_lifetime, via_dest
from proxy.core.core import CoreSettings, ProxyCore
from proxy.core.outbound.flowtoken import Flow, FlowTokens
from proxy.core.registrar.location import MemoryLocation
from proxy.core.types import Source
from proxy.sip import parse_message
from proxy.transaction import TimerConfig
from tests.unit.core_harness import (
    CALLER,
    LOCAL,
    Harness,
    default_policy,
    methods,
    own_route,
    request,
    response_to,
    statuses,
)
from tests.unit.test_core_edge_outbound import PHONE, outbound_register

STRANGER = Source("udp", "127.0.0.2", 6666)
PBX = Source("udp", "127.0.0.1", 5080)
FOREIGN = 16530
SECRET = b"s" * 32


def to_port(out: list, port: int) -> list:
    return [s for s in out if s.port == port]


def answered_call(h: Harness, src: Source = CALLER, call_id: str = "call-1@caller") -> bytes:
    """A call from ``src`` to the first upstream, answered 200 (RFC 3261 16.6, 16.7): the
    200 as the caller got it (with the proxy's Record-Route, RFC 3261 12.1.2)."""
    via = f"{src.host}:{src.port}"
    h.feed(request(call_id=call_id, via_host=via, branch=f"z9hG4bK{call_id[:6]}"), src)
    fwd = [s.data for s in h.sent if s.port == 5080 and s.data.startswith(b"INVITE")][-1]
    rr = parse_message(fwd).get_all("record-route")
    out = h.feed(response_to(fwd, 200, extra=tuple(f"Record-Route: {v}" for v in rr)), PBX)
    [ok] = [s.data for s in out if s.port == src.port]
    return ok


def route_of(ok: bytes) -> str:
    """The Route a caller builds from the 2xx's Record-Route (RFC 3261 12.1.2: reversed)."""
    values = [v.strip() for rr in parse_message(ok).get_all("record-route") for v in rr.split(",")]
    return ", ".join(reversed(values))


# ----------------------------------------------------------------- 1. a token proves a dialog


def test_a_harvested_record_route_with_a_new_call_id_gets_481_and_reaches_nobody() -> None:
    """Issue 18 case 1: the Record-Route of one real call, replayed with a new Call-ID and any
    To tag toward a foreign host, proves nothing: 481 once, statelessly, no transaction,
    counted and logged; nothing goes to the foreign host (before: relayed there)."""
    h = Harness.make()
    route = route_of(answered_call(h, STRANGER, "mallory-1"))
    assert ";d=" in route
    before = h.core.active_transactions
    out = h.feed(request("INVITE", ruri=f"sip:+19005550000@127.0.0.1:{FOREIGN}",
                         call_id="mallory-2", to_tag="invented", branch="z9hG4bKtoll",
                         via_host="127.0.0.2:6666", extra=(f"Route: {route}",)), STRANGER)
    assert to_port(out, FOREIGN) == [] and to_port(out, 5080) == []
    assert statuses(h.to(6666, out)) == [481]
    assert h.core.active_transactions == before
    assert h.core.refusals.counts["unproven"] == 1


def test_the_same_route_with_its_own_call_id_goes_to_no_foreign_host() -> None:
    """The mark proves the dialog; a UA's in-dialog request still never names a host that is
    not an upstream (no open relay through its own dialog): 403."""
    h = Harness.make()
    route = route_of(answered_call(h, STRANGER, "mallory-1"))
    out = h.feed(request("INVITE", ruri=f"sip:+19005550000@127.0.0.1:{FOREIGN}",
                         call_id="mallory-1", to_tag="callee1", cseq=2, branch="z9hG4bKreinv",
                         via_host="127.0.0.2:6666", extra=(f"Route: {route}",)), STRANGER)
    assert to_port(out, FOREIGN) == []
    assert statuses(h.to(6666, out)) == [403]


def test_a_bye_for_a_call_set_up_before_a_restart_still_passes() -> None:
    """Stateless: with a stable secret, a proxy started again proves the dialog of a call it
    never saw (RFC 3261 16.4) and relays its BYE to the PBX."""
    settings = CoreSettings(upstreams=Harness.make().core.settings.upstreams, secret=SECRET)
    first = Harness(ProxyCore(settings, default_policy(), LOCAL, MemoryLocation()))
    route = route_of(answered_call(first))
    second = Harness(ProxyCore(settings, default_policy(), LOCAL, MemoryLocation()))
    out = second.feed(request("BYE", ruri="sip:bob@127.0.0.1:5080", to_tag="callee1", cseq=2,
                              branch="z9hG4bKbye", extra=(f"Route: {route}",)))
    assert methods(second.to(5080, out)) == ["BYE"]


def test_the_callee_side_proves_the_dialog_by_its_to_tag() -> None:
    """A request from the callee's side carries the dialog's From tag in its To: the PBX's
    BYE (a trusted source anyway) and a UA callee's BYE are both proven; the callee's goes
    back over the caller's flow (RFC 5626 5.3)."""
    h = Harness.make()
    route = route_of(answered_call(h, STRANGER, "m-3"))
    # the callee side: From is the callee's tag, To the caller's ("from1")
    bye = (request("BYE", ruri="sip:mallory@127.0.0.2:6666", call_id="m-3", branch="z9hG4bKcb",
                   via_host="127.0.0.9:7000", to_tag="from1",
                   extra=("Route: " + ", ".join(reversed(route.split(", "))),))
           .replace(b"From: <sip:alice@example.com>;tag=from1",
                    b"From: <sip:bob@example.com>;tag=callee1"))
    out = h.feed(bye, Source("udp", "127.0.0.9", 7000))
    assert methods(h.to(6666, out)) == ["BYE"]


def test_a_path_token_from_a_stranger_grants_no_relay() -> None:
    """A Path value names a flow, not a dialog: a stranger's initial INVITE with a harvested
    Path is routed as any initial request of its source (the upstreams), not over the flow;
    with a To tag it is 481. From the PBX (trusted) the same Path reaches the flow."""
    h = Harness.make()
    path = outbound_register(h)
    out = h.feed(request(branch="z9hG4bKs1", via_host="127.0.0.2:6666", call_id="s1",
                         extra=(f"Route: {path}",)), STRANGER)
    assert [s for s in out if s.conn_id == PHONE.conn_id] == []
    assert methods(h.to(5080, out)) == ["INVITE"]
    out = h.feed(request(branch="z9hG4bKs2", via_host="127.0.0.2:6666", call_id="s2",
                         to_tag="x", extra=(f"Route: {path}",)), STRANGER)
    assert [s for s in out if s.conn_id == PHONE.conn_id] == []
    assert statuses(h.to(6666, out)) == [481]
    out = h.feed(request(branch="z9hG4bKp1", via_host="127.0.0.1:5080", call_id="p1",
                         extra=(f"Route: {path}",)), PBX)
    assert [s.conn_id for s in out if s.data.startswith(b"INVITE")] == [PHONE.conn_id]


def test_a_phone_calling_a_registered_phone_gets_both_flows_record_routed() -> None:
    """A UA that is not trusted calling a registered binding: two Record-Route values, each
    naming one side's flow and each with its mark, so that each side's in-dialog requests
    reach the other over its flow (not by a Request-URI the proxy would refuse)."""
    from tests.unit.test_core_registrar_forking import PHONE1, make, register

    h = make()
    assert register(h, PHONE1, "<sip:bob@127.0.0.1:7001>") == 200
    caller = Source("udp", "127.0.0.2", 6666)
    out = h.feed(request(via_host="127.0.0.2:6666", branch="z9hG4bKp2p"), caller)
    [inv] = [parse_message(s.data) for s in to_port(out, 7001)]
    rr = [na for na in inv.record_routes]
    assert len(rr) == 2
    flows = [h.core.tokens.decode(na.uri.user or "") for na in rr]
    assert [(f.remote_host, f.remote_port) for f in flows if f] == [
        ("127.0.0.1", 7001), ("127.0.0.2", 6666)]
    route = ", ".join(str(na) for na in rr)
    bye = (request("BYE", ruri="sip:alice@10.9.9.9:5060", branch="z9hG4bKpb", to_tag="from1",
                   via_host="127.0.0.1:7001", extra=(f"Route: {route}",))
           .replace(b"tag=from1\r\nTo", b"tag=callee1\r\nTo", 1))
    out = h.feed(bye, PHONE1)
    assert methods(h.to(6666, out)) == ["BYE"]


def test_a_flow_token_from_another_node_is_honoured_by_its_signed_via() -> None:
    """Another proxy of the shared state hands this node a request for a flow it holds
    (RFC 5626 5) with a top Via branch minted with the shared key: sent over the flow. The
    same request with a branch not minted with the key (anyone could write that Via) is
    routed as any initial request of its source: to the upstreams, not over the flow. The
    node's requests are not held to ``per_source_rps`` (it hands over every call for the
    flows this node holds)."""
    settings = CoreSettings(upstreams=Harness.make().core.settings.upstreams, secret=SECRET,
                            per_source_rps=1)
    h = Harness(ProxyCore(settings, default_policy(), LOCAL, MemoryLocation()))
    path = outbound_register(h)
    node_b = Source("udp", "127.0.0.5", 5060)
    pbx_via = "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKpbx9;rport"
    dest = via_dest(parse_message(request(via_host="127.0.0.1:5080")).top_via)
    forged = "z9hG4bKnodeb0." + "0" * 14

    def from_b(branch: str, call_id: str, src: Source = node_b,
               via: str = "127.0.0.5:5060") -> list:
        data = request(branch=branch, via_host=via, call_id=call_id, extra=(f"Route: {path}",))
        data = data.replace(b";rport\r\n", b";rport\r\n" + pbx_via.encode() + b"\r\n", 1)
        return h.feed(data, src)

    for i in range(3):
        signed = Trust(SECRET).mint_branch(f"z9hG4bKnodeb{i + 1}", "INVITE", dest, h.now)
        out = from_b(signed, f"viab{i}")
        assert [s.conn_id for s in out if s.data.startswith(b"INVITE")] == [PHONE.conn_id]
    assert h.core.refusals.counts["rate"] == 0
    h.advance(1.0)
    out = from_b(forged, "viab-forged")
    assert [s for s in out if s.conn_id == PHONE.conn_id] == []
    assert methods(h.to(5080, out)) == ["INVITE"]
    # a node's signed Via as a UA saw it in a request it got, replayed from the UA's address,
    # or one naming this proxy: no node's
    replay = Trust(SECRET).mint_branch("z9hG4bKnodeb9", "INVITE", dest, h.now)
    for src, via in ((STRANGER, "127.0.0.5:5060"), (Source("udp", "127.0.0.1", 5060),
                                                      "127.0.0.1:5060")):
        h.advance(1.0)
        out = from_b(replay, f"replay-{via}", src, via)
        assert [s for s in out if s.conn_id == PHONE.conn_id] == [], via


# ----------------------------------------------------------------- 2. flows of another start


def test_a_stream_token_of_an_earlier_start_gets_430_and_writes_nothing() -> None:
    """Issue 18 case 2: connection ids start again at 1, so a Path token from before a
    restart must not ring whichever connection has its id now: 430 (RFC 5626 5.3), once,
    statelessly, and nothing is sent over any connection. A UDP token of the earlier start
    still reaches its flow (it does not depend on the boot)."""
    settings = CoreSettings(upstreams=Harness.make().core.settings.upstreams, secret=SECRET)
    before = FlowTokens(SECRET)
    tcp = before.encode(Flow("tcp", "127.0.0.1", 5060, "127.0.0.1", 7010, 1))
    udp = before.encode(Flow("udp", "127.0.0.1", 5060, "127.0.0.1", 7020, None))
    h = Harness(ProxyCore(settings, default_policy(), LOCAL, MemoryLocation()))
    out = h.feed(request(branch="z9hG4bKold", via_host="127.0.0.1:5080",
                         extra=(f"Route: <sip:{tcp}@127.0.0.1:5060;lr;transport=tcp>",)), PBX)
    assert [s for s in out if s.conn_id is not None or s.data[:4] != b"SIP/"] == []
    assert statuses(h.to(5080, out)) == [430]
    assert h.core.active_transactions == 0
    out = h.feed(request(branch="z9hG4bKudp", via_host="127.0.0.1:5080",
                         extra=(f"Route: <sip:{udp}@127.0.0.1:5060;lr>",)), PBX)
    assert methods(h.to(7020, out)) == ["INVITE"]


def test_a_send_failure_or_silence_over_a_token_flow_is_430_not_500() -> None:
    """The transport refuses a Send whose connection's peer is not the token's (or that
    connection is gone): the branch ends 430 to the caller (RFC 5626 5.3), and so does no
    answer at all (Timer B)."""
    h = Harness.make()
    path = outbound_register(h)
    out = h.feed(request(branch="z9hG4bKsf", via_host="127.0.0.1:5080", call_id="sf",
                         extra=(f"Route: {path}",)), PBX)
    [s] = [s for s in out if s.conn_id == PHONE.conn_id]
    out = h.take(h.core.on_send_failure(s.token, h.now))
    assert statuses(h.to(5080, out)) == [430]
    out = h.feed(request(branch="z9hG4bKto", via_host="127.0.0.1:5080", call_id="to",
                         extra=(f"Route: {path}",)), PBX)
    out = h.advance(40.0)
    assert 430 in statuses(h.to(5080, out))


# ----------------------------------------------------------------- 3. a branch proves a txn


def _late(h: Harness) -> bytes:
    h.feed(request())
    fwd = [s.data for s in h.sent if s.port == 5080][-1]
    h.feed(response_to(fwd, 200), PBX)
    h.advance(64.0)
    assert h.core.active_transactions == 0
    return fwd


def test_a_reflected_response_after_the_transaction_ended_reaches_no_one() -> None:
    """Issue 18 case 3: our old top Via plus a second Via naming another host, a CSeq of
    another method, or a branch too old: dropped and counted; the genuine late 2xx still
    goes to the caller (RFC 6026 7.2)."""
    h = Harness.make()
    fwd = _late(h)
    good = response_to(fwd, 200)
    victim = good.replace(b"Via: SIP/2.0/UDP 127.0.0.1:6000", b"Via: SIP/2.0/UDP 127.0.0.1:16530")
    assert victim != good
    out = h.feed(victim, PBX)
    assert out == [] and h.core.metrics.bad["forged_response"] == 1
    other = good.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    assert h.feed(other, PBX) == [] and h.core.metrics.bad["forged_response"] == 2
    assert statuses(h.to(6000, h.feed(good, PBX))) == [200]
    h.advance(branch_lifetime("INVITE", h.core.timers) + 2 * TICK)
    assert h.feed(good, PBX) == [] and h.core.metrics.bad["stale_response"] == 1


def test_a_response_of_another_method_on_a_live_branch_is_not_relayed() -> None:
    """Issue 18 case 3, "at once with another CSeq method": the INVITE's transaction is live,
    a 200 with its branch and CSeq BYE matches nothing and is not relayed."""
    h = Harness.make()
    h.feed(request())
    fwd = [s.data for s in h.sent if s.port == 5080][-1]
    bad = response_to(fwd, 200).replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    assert h.feed(bad, STRANGER) == []


def test_branch_macs_cover_time_method_and_hop() -> None:
    trust = Trust(SECRET)
    via = parse_message(request()).top_via
    dest = via_dest(via)
    assert dest == "udp|127.0.0.1|6000"
    b = trust.mint_branch("z9hG4bKabc", "INVITE", dest, 1000.0)
    assert trust.check_branch(b, "INVITE", dest, 1000.0, 100) is None
    assert trust.check_branch(b, "BYE", dest, 1000.0, 100) == "forged"
    assert trust.check_branch(b, "INVITE", "udp|127.0.0.1|6001", 1000.0, 100) == "forged"
    assert trust.check_branch(b, "INVITE", dest, 1000.0 + 100 + 2 * TICK, 100) == "stale"
    assert trust.check_branch(b, "INVITE", dest, 900.0, 100) == "stale"  # from the future
    assert Trust(b"other").check_branch(b, "INVITE", dest, 1000.0, 100) == "forged"
    for junk in (None, "", "z9hG4bKabc", b + "0", b[:-1] + "g", "x." + "f" * 40):
        assert trust.check_branch(junk, "INVITE", dest, 1000.0, 100) == "forged", junk


# ----------------------------------------------------------------- 4. rate limits count what costs


def test_invented_to_tags_are_counted_and_refused_481_then_503() -> None:
    """Issue 18 case 4: requests with invented To tags are not exempt from per_source_rps:
    the first five get 481 (statelessly), the rest 503; none reaches the PBX and none holds a
    transaction. Another source, the PBX and a proven in-dialog request are not limited."""
    h = Harness.make(per_source_rps=5)
    got: list[int] = []
    for i in range(20):
        out = h.feed(request("INVITE", call_id=f"inv-{i}", to_tag=f"t{i}", branch=f"z9hG4bKi{i}",
                             via_host="127.0.0.2:6666"), STRANGER)
        assert to_port(out, 5080) == [] and to_port(out, 5081) == []
        got += statuses(h.to(6666, out))
    assert got == [481] * 5 + [503] * 15
    assert h.core.active_transactions == 0
    assert h.core.refusals.counts["rate"] == 15 and h.core.refusals.counts["unproven"] == 5
    for i in range(10):  # the PBX (trusted): never limited
        h.feed(request("BYE", call_id=f"pbx-{i}", to_tag="t", branch=f"z9hG4bKp{i}",
                       ruri="sip:a@127.0.0.1:6000", via_host="127.0.0.1:5080"), PBX)
    assert h.core.refusals.counts["rate"] == 15
    for i in range(10):  # proven in-dialog requests of a call through the proxy
        out = h.feed(request("INFO", to_tag="callee1", cseq=10 + i, branch=f"z9hG4bKinfo{i}",
                             ruri="sip:bob@127.0.0.1:5080", extra=(f"Route: {own_route(h)}",)))
        assert methods(h.to(5080, out)) == ["INFO"]


def test_a_rate_limited_invite_gets_exactly_one_503_and_holds_nothing() -> None:
    """Issue 18 case 8: the 503 is sent once, statelessly, with no 100 Trying first; no ACK
    comes and nothing is retransmitted over 64*T1; the ACK, when it comes, is absorbed."""
    h = Harness.make(per_source_rps=1)
    h.feed(request(call_id="ok", branch="z9hG4bKok", via_host="127.0.0.2:6666"), STRANGER)
    mark = len(h.sent)
    out = h.feed(request(call_id="r", branch="z9hG4bKr", via_host="127.0.0.2:6666"), STRANGER)
    [resp] = h.to(6666, out)
    assert resp.status == 503 and resp.get("retry-after") == "1"
    assert "r" not in "".join(e.key for e in h.core.table.servers())
    h.advance(64.0)
    assert [s for s in h.sent[mark + 1:] if s.port == 6666 and b"503" in s.data[:12]] == []
    ack = (request("ACK", call_id="r", branch="z9hG4bKr", via_host="127.0.0.2:6666",
                   to_tag=resp.to_tag))
    assert h.feed(ack, STRANGER) == [] and h.core.stats["acks_absorbed"] == 1


# ----------------------------------------------------------------- 5. stateless refusals


def test_a_thousand_unknown_cancels_leave_no_transaction() -> None:
    """Issue 18 case 7: each CANCEL of no transaction gets one 481 and holds nothing."""
    h = Harness.make()
    for i in range(1000):
        out = h.feed(request("CANCEL", call_id=f"c{i}", branch=f"z9hG4bKc{i}",
                             via_host="127.0.0.2:6666"), STRANGER)
        assert statuses(h.to(6666, out)) == [481]
    assert h.core.active_transactions == 0 and h.core.table.server_count == 0
    assert h.core.refusals.counts["cancel_unknown"] == 1000


def test_a_known_cancel_still_gets_200_and_487() -> None:
    h = Harness.make()
    h.feed(request())
    fwd = [s.data for s in h.sent if s.port == 5080][-1]
    h.feed(response_to(fwd, 180), PBX)
    out = h.feed(request("CANCEL"))
    assert 200 in statuses(h.to(6000, out))


def test_txns_refuse_is_stateless_for_the_registrar_too() -> None:
    """txns.refuse removes the server transaction the registrar created: a REGISTER from
    outside registrar_networks without auth gets 403 once and leaves no server transaction."""
    from proxy.core.access.sources import AddressSet

    h = Harness.make(registrar_local=True, registrar_networks=AddressSet(()))
    out = h.feed(request("REGISTER", ruri="sip:example.com", via_host="127.0.0.2:6666"),
                 STRANGER)
    assert statuses(h.to(6666, out)) == [403]
    assert h.core.table.server_count == 0 and h.core.active_transactions == 0


# ----------------------------------------------------------------- 6. connections in use


def test_conn_in_use_counts_live_transactions_per_connection() -> None:
    """A stream connection carries a transaction from its creation to its end (the transport
    keeps it open meanwhile); the count is kept where transactions are created and end."""
    from tests.unit.test_core_limits import TLS_UP, tls_core

    h = tls_core(TLS_UP)
    caller = Source("tcp", "127.0.0.1", 6000, conn_id=7)
    assert not h.core.conn_in_use(7)
    h.feed(request(ruri="sips:bob@example.com"), caller)
    assert h.core.conn_in_use(7)  # the INVITE's server transaction
    fwd = [s for s in h.sent if s.port == 5091][-1]
    assert fwd.conn_id is None and not h.core.conn_in_use(99)
    h.feed(response_to(fwd.data, 180), Source("tls", TLS_UP.host, TLS_UP.port, conn_id=99))
    assert h.core.conn_in_use(99)  # the branch's, learned from its first response
    h.feed(response_to(fwd.data, 486), Source("tls", TLS_UP.host, TLS_UP.port, conn_id=99))
    h.advance(64.0)
    assert h.core.active_transactions == 0
    assert not h.core.conn_in_use(7) and not h.core.conn_in_use(99)
    assert h.core.table.conns == {}


# ----------------------------------------------------------------- 7. ACK for a 2xx (issue 19)


def test_ack_and_bye_for_a_2xx_without_record_route_go_to_the_upstream() -> None:
    """Issue 19: the PBX did not copy Record-Route into its 200 (sipp's UAS): the caller's
    ACK and BYE carry no Route and name the PBX's Contact; the dialog is the proxy's (it
    forwarded the 2xx), so they go to the PBX. Toward another host they are refused."""
    h = Harness.make()
    h.feed(request(call_id="norr", branch="z9hG4bKnorr"))
    fwd = [s.data for s in h.sent if s.port == 5080][-1]
    h.feed(response_to(fwd, 200, extra=("Contact: <sip:pbx@127.0.0.1:5080>",)), PBX)
    ack = request("ACK", ruri="sip:pbx@127.0.0.1:5080", call_id="norr", to_tag="callee1",
                  branch="z9hG4bKnorrack")
    out = h.feed(ack)
    assert methods(h.to(5080, out)) == ["ACK"]
    foreign = request("ACK", ruri=f"sip:pbx@127.0.0.1:{FOREIGN}", call_id="norr",
                      to_tag="callee1", branch="z9hG4bKnorrack2")
    assert to_port(h.feed(foreign), FOREIGN) == []
    out = h.feed(request("BYE", ruri=f"sip:pbx@127.0.0.1:{FOREIGN}", call_id="norr",
                         to_tag="callee1", cseq=2, branch="z9hG4bKnb0"))
    assert to_port(out, FOREIGN) == [] and statuses(h.to(6000, out)) == [403]
    out = h.feed(request("BYE", ruri="sip:pbx@127.0.0.1:5080", call_id="norr",
                         to_tag="callee1", cseq=2, branch="z9hG4bKnb"))
    assert methods(h.to(5080, out)) == ["BYE"]
    # the dialog is closed by its BYE: a later ACK of it from a UA is dropped
    out = h.feed(request("ACK", ruri="sip:pbx@127.0.0.1:5080", call_id="norr",
                         to_tag="callee1", branch="z9hG4bKnorrack3"))
    assert to_port(out, 5080) == []


def test_ack_for_a_2xx_without_record_route_goes_to_the_registered_binding() -> None:
    """Issue 19, the other side: a registered phone answers a stranger's call with a 200
    without Record-Route; the caller's ACK names the phone's Contact and goes to that binding
    (the dialog the proxy holds was set up with it); toward another Contact it is dropped."""
    from tests.unit.test_core_registrar_forking import PHONE1, make, register

    h = make()
    assert register(h, PHONE1, "<sip:bob@127.0.0.1:7001>") == 200
    h.feed(request(via_host="127.0.0.2:6666", branch="z9hG4bKb2", call_id="b2"), STRANGER)
    [inv] = [s.data for s in h.sent if s.port == 7001 and s.data.startswith(b"INVITE")]
    h.feed(response_to(inv, 200, extra=("Contact: <sip:bob@127.0.0.1:7001>",)), PHONE1)
    ack = request("ACK", ruri="sip:bob@127.0.0.1:7001", call_id="b2", to_tag="callee1",
                  branch="z9hG4bKb2ack", via_host="127.0.0.2:6666")
    out = h.feed(ack, STRANGER)
    assert methods(h.to(7001, out)) == ["ACK"]
    other = ack.replace(b"ACK sip:bob@127.0.0.1:7001", b"ACK sip:bob@127.0.0.1:7009")
    assert h.feed(other.replace(b"b2ack", b"b2ack2"), STRANGER) == []


def test_a_register_with_a_to_tag_is_no_in_dialog_request() -> None:
    """RFC 3261 10.2: a REGISTER is never of a dialog; a To tag copied into a refresh does
    not get it 481 (it still counts against the rate of its source)."""
    from tests.unit.test_core_registrar_forking import PHONE1, make, register

    h = make()
    tagged = (b"To: <sip:bob@example.com>;tag=reg1",)
    assert register(h, PHONE1, "<sip:bob@127.0.0.1:7001>") == 200
    data = request("REGISTER", ruri="sip:example.com", branch="z9hG4bKrt", call_id="reg-7001",
                   cseq=2, via_host="127.0.0.1:7001", to_tag="reg1",
                   extra=("Expires: 600",)).replace(
        b"Contact: <sip:alice@127.0.0.1:6000>", b"Contact: <sip:bob@127.0.0.1:7001>")
    assert tagged[0] in data
    assert statuses(h.to(7001, h.feed(data, PHONE1))) == [200]


def test_an_ack_of_no_dialog_from_a_stranger_is_dropped() -> None:
    h = Harness.make()
    out = h.feed(request("ACK", ruri="sip:pbx@127.0.0.1:5080", call_id="nope", to_tag="x",
                         branch="z9hG4bKnope", via_host="127.0.0.2:6666"), STRANGER)
    assert out == [] and h.core.stats["acks_dropped"] == 1


def test_timers_used_in_the_bound_are_the_configured_ones() -> None:
    t = TimerConfig(t1=0.5, t4=5.0, timer_c=180.0)
    assert branch_lifetime("INVITE", t) == 180.0 + 3 * 32.0
    assert branch_lifetime("BYE", t) == 2 * 32.0 + 5.0


def test_every_refusal_is_a_metric_by_reason() -> None:
    """Each refusal is counted by reason in ``refusals_total`` (every known reason exported,
    at 0 until it happens), besides its rate-limited log line."""
    from tests.unit.test_runtime_observability import scraped, value

    h = Harness.make()
    h.feed(request("CANCEL", call_id="c", branch="z9hG4bKc", via_host="127.0.0.2:6666"),
           STRANGER)
    h.feed(request("BYE", call_id="b", to_tag="x", branch="z9hG4bKb",
                   via_host="127.0.0.2:6666"), STRANGER)
    found = scraped(h)
    assert value(found, "refusals_total", reason="cancel_unknown") == 1
    assert value(found, "refusals_total", reason="unproven") == 1
    assert value(found, "refusals_total", reason="rate") == 0


def test_a_rekey_that_keeps_the_old_key_still_proves_what_it_minted() -> None:
    """The key agreed through the state store replaces a start-up key (the store answered
    late): the dialog marks and branch MACs minted before keep verifying with ``previous``,
    what is minted now uses the new key, and without ``previous`` the old ones are refused."""
    old = Trust(b"started-with-this-random-key-000")
    mark = old.dialog_mark("c1@x", "tag1", "")
    dest = "udp|127.0.0.1|5060"
    branch = old.mint_branch("z9hG4bKabc", "INVITE", dest, 1000.0)
    kept = Trust(b"the-key-of-the-state-store-00000", previous=old)
    assert kept.proven("c1@x", "tag1", None, "", mark)
    assert kept.check_branch(branch, "INVITE", dest, 1001.0, 300.0) is None
    assert kept.check_branch(branch, "BYE", dest, 1001.0, 300.0) == "forged"
    fresh = kept.dialog_mark("c2@x", "tag2", "")
    assert fresh != Trust(b"started-with-this-random-key-000").dialog_mark("c2@x", "tag2", "")
    dropped = Trust(b"the-key-of-the-state-store-00000")
    assert not dropped.proven("c1@x", "tag1", None, "", mark)
    assert dropped.check_branch(branch, "INVITE", dest, 1001.0, 300.0) == "forged"
    # one generation is kept, not a chain
    again = Trust(b"a-third-key-000000000000000000000", previous=kept)
    assert not again.proven("c1@x", "tag1", None, "", mark)
