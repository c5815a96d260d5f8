"""No open relay, no reflection, no silent oversized forwards (README "Security defaults";
RFC 3261 16.4, 16.5, 18.1.1, 26.1), in the sans-IO core with a fake clock.

A stranger is any source that is neither an upstream (by its packet's address and port) nor
in ``trusted_relays``. It may reach the upstreams and registered users, never a host that its
Route or Request-URI names.
"""

from __future__ import annotations

from proxy.core.types import Source, Target
from proxy.sip import parse_message
from tests.unit.core_harness import (
    Harness,
    methods,
    own_route,
    request,
    response_to,
    statuses,
)
from tests.unit.test_core_redirect_flows import commit_writes
from tests.unit.test_core_registrar_forking import PHONE1, PHONE2, make, pbx_invite, register

STRANGER = Source("udp", "127.0.0.2", 6666)
VICTIM = 16530
PBX = Source("udp", "127.0.0.1", 5080)


def sent_to(h: Harness, port: int, out: list) -> list:
    return [s for s in out if s.port == port]


def test_preloaded_route_to_another_host_from_a_stranger_gets_403() -> None:
    """README "Security defaults": an initial request whose Route names another host is refused (403),
    counted, and nothing goes to that host; INVITE and MESSAGE alike."""
    h = Harness.make()
    for i, method in enumerate(("INVITE", "MESSAGE")):
        out = h.feed(request(method, branch=f"z9hG4bKrel{i}", call_id=f"rel{i}",
                             extra=(f"Route: <sip:127.0.0.1:{VICTIM};lr>",)), STRANGER)
        assert not sent_to(h, VICTIM, out)
        assert statuses(h.to(6666, out))[-1] == 403
        assert not sent_to(h, 5080, out) and not sent_to(h, 5081, out)
    assert h.core.refusals.counts["relay"] == 2


def test_route_naming_a_host_by_name_is_refused_too() -> None:
    """``Route: <sip:localhost:PORT;lr>`` is another host, whatever it resolves to."""
    h = Harness.make()
    out = h.feed(request(extra=(f"Route: <sip:localhost:{VICTIM};lr>",)), STRANGER)
    assert not [s for s in out if s.host == "localhost"]
    assert statuses(h.to(6666, out))[-1] == 403


def test_ack_with_a_preloaded_route_from_a_stranger_is_dropped() -> None:
    """An ACK cannot be answered (RFC 3261 17.1.1.3): a stranger's is dropped and counted."""
    h = Harness.make()
    out = h.feed(request("ACK", to_tag="x", extra=(f"Route: <sip:127.0.0.1:{VICTIM};lr>",)),
                 STRANGER)
    assert out == []
    assert h.core.stats["acks_dropped"] == 1 and h.core.refusals.counts["relay"] == 1


def test_route_to_the_proxy_with_a_foreign_request_uri_goes_to_the_upstreams() -> None:
    """``Route: <sip:PROXY;lr>`` + ``INVITE sip:someone@VICTIM``: our Route value is removed
    (16.4) and the stranger's request is routed as any other: to the upstreams (step 5)."""
    h = Harness.make()
    out = h.feed(request(ruri=f"sip:someone@127.0.0.1:{VICTIM}",
                         extra=("Route: <sip:127.0.0.1:5060;lr>",)), STRANGER)
    assert not sent_to(h, VICTIM, out)
    [inv] = h.to(5080, out)
    assert inv.method == "INVITE" and inv.get("route") is None


def test_forged_via_naming_an_upstream_does_not_make_an_upstream() -> None:
    """'From an upstream' is the packet's source, never its Via: a stranger whose top Via
    names the PBX still goes to the upstreams, not to its Request-URI (routing step 4)."""
    h = Harness.make()
    out = h.feed(request(ruri=f"sip:someone@127.0.0.1:{VICTIM}", via_host="127.0.0.1:5080"),
                 STRANGER)
    assert not sent_to(h, VICTIM, out)
    assert methods(h.to(5080, out)) == ["INVITE"]


def test_the_upstreams_own_requests_still_route_by_request_uri() -> None:
    """Routing step 4: a request whose packet came from an upstream goes to its Request-URI."""
    h = Harness.make()
    out = h.feed(request(ruri="sip:carol@127.0.0.1:7444", via_host="127.0.0.1:5080"), PBX)
    assert methods(h.to(7444, out)) == ["INVITE"]


def test_trusted_relay_may_preload_a_route_and_route_by_request_uri() -> None:
    """``trusted_relays`` (hosts or CIDR networks): their Route and Request-URI are obeyed."""
    h = Harness.make(trusted_relays=("127.0.0.0/30",))
    out = h.feed(request(extra=(f"Route: <sip:127.0.0.1:{VICTIM};lr>",)), STRANGER)
    assert methods(h.to(VICTIM, out)) == ["INVITE"]
    out = h.feed(request(ruri="sip:carol@127.0.0.1:7444", branch="z9hG4bKt2", call_id="t2"),
                 STRANGER)
    assert methods(h.to(7444, out)) == ["INVITE"]


def test_in_dialog_request_without_our_token_from_a_stranger_gets_481() -> None:
    """A BYE that claims a dialog (To tag) but whose Route to us carries no dialog mark of
    ours did not come through this proxy's Record-Route: 481 (RFC 3261 12.2.2), statelessly
    (issue 18: it was 403 through a server transaction)."""
    h = Harness.make()
    out = h.feed(request("BYE", ruri=f"sip:bob@127.0.0.1:{VICTIM}", to_tag="t1",
                         extra=("Route: <sip:127.0.0.1:5060;lr>",)), STRANGER)
    assert not sent_to(h, VICTIM, out)
    assert statuses(h.to(6666, out)) == [481]
    assert h.core.active_transactions == 0


def test_in_dialog_request_with_our_record_route_token_is_relayed() -> None:
    """The caller's BYE of a dialog through the proxy carries our Record-Route (with the flow
    token naming the caller's flow and the dialog's mark): it goes to its Request-URI, the
    PBX's Contact (RFC 3261 16.4)."""
    h = Harness.make()
    out = h.feed(request("BYE", ruri="sip:bob@127.0.0.1:5080", to_tag="t1",
                         extra=(f"Route: {own_route(h, STRANGER)}",)), STRANGER)
    assert methods(h.to(5080, out)) == ["BYE"]


def test_a_proven_in_dialog_request_from_a_ua_goes_to_no_foreign_host() -> None:
    """The dialog mark proves the dialog, not the Request-URI: the UA of a call through the
    proxy replaying its own Call-ID and tags toward another host (toll fraud with its own
    dialog) gets 403, by Request-URI or by a Route after ours; nothing is sent there."""
    h = Harness.make()
    for ruri, extra in ((f"sip:+19005550000@127.0.0.1:{VICTIM}", ""),
                        ("sip:bob@127.0.0.1:5080", f", <sip:127.0.0.1:{VICTIM};lr>")):
        out = h.feed(request("INVITE", ruri=ruri, to_tag="t1", cseq=2,
                             extra=(f"Route: {own_route(h, STRANGER)}{extra}",)), STRANGER)
        assert not sent_to(h, VICTIM, out)
        assert statuses(h.to(6666, out)) == [403]
    assert h.core.active_transactions == 0 and h.core.refusals.counts["relay"] == 2


def test_forged_response_reaches_no_one() -> None:
    """A 200 whose top Via names the proxy with a made-up branch is dropped and counted: the
    proxy never reflects it to the second Via's host."""
    h = Harness.make()
    forged = (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKmadeup\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{VICTIM};branch=z9hG4bKvictim\r\n"
        "From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: forged\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    out = h.feed(forged, STRANGER)
    assert out == []
    assert h.core.stats["responses_forged"] == 1


def test_late_response_with_our_branch_is_forwarded_statelessly() -> None:
    """RFC 3261 16.7: a response to a branch we did generate (its transaction gone) still goes
    to the second Via: the branch's MAC verifies."""
    h = Harness.make()
    h.feed(request())
    fwd = [s.data for s in h.sent if s.port == 5080][-1]
    h.feed(response_to(fwd, 200), PBX)
    h.advance(64.0)  # the client transaction is gone
    assert h.core.active_transactions == 0
    out = h.feed(response_to(fwd, 200), PBX)
    assert statuses(h.to(6000, out)) == [200]
    # The same response with one character of the branch changed is forged.
    top = parse_message(fwd).top_via.branch
    assert top is not None
    out = h.feed(response_to(fwd, 200).replace(top.encode(), top[:-1].encode() + b"0"
                                               if top[-1] != "0" else top[:-1].encode() + b"1"), PBX)
    assert out == []


def test_request_over_1300_bytes_goes_over_tcp() -> None:
    """RFC 3261 18.1.1: larger than 1300 bytes, path MTU unknown -> TCP, and the Via says so."""
    h = Harness.make()
    out = h.feed(request(body="v=0\r\n" + "a=x\r\n" * 300))
    [s] = sent_to(h, 5080, out)
    assert s.transport == "tcp"
    assert parse_message(s.data).top_via.transport.upper() == "TCP"


def test_request_too_large_for_a_datagram_without_tcp_gets_513_at_once() -> None:
    """RFC 3261 18.1.1 / 21.5.14: no TCP towards the next hop and over a datagram's size: 513
    at once, not a 408 after Timer B."""
    from proxy.core.types import LocalAddress

    h = Harness.make()
    h.core.local = (LocalAddress("udp", "127.0.0.1", 5060, "127.0.0.1:5060"),)
    h.core.has_tcp = False
    out = h.feed(request(body="x" * 65200), Source("tcp", "127.0.0.1", 6000, 3))
    assert not sent_to(h, 5080, out) and not sent_to(h, 5081, out)
    assert statuses(h.to(6000, out)) == [100, 513]
    assert h.core.active_transactions == 1  # the server transaction only, absorbing retransmissions


def test_udp_flow_target_is_never_switched_to_tcp() -> None:
    """A UA's UDP flow (RFC 5626) is the only way to reach it: a large request stays on it."""
    t = Target("udp", "127.0.0.1", 7777, "sip:x@127.0.0.1:7777", via_flow=True)
    h = Harness.make(upstreams=(t,))
    out = h.feed(request(body="v=0\r\n" + "a=x\r\n" * 300))
    [s] = sent_to(h, 7777, out)
    assert s.transport == "udp"


def test_301_on_one_fork_branch_rewrites_only_that_binding() -> None:
    """docs/BEHAVIOUR.md, routing: a 301 teaches the rewrite of the URI its own branch was sent to. With
    two phones forked in parallel, phone 1's 301 moves phone 1 only: phone 2 rings on the next
    call too."""
    h = make()
    h.core.guard = None  # follow every 3xx (the redirect guard has its own tests)
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>")
    pbx_invite(h, "z9hG4bKfirst")
    inv1 = [s.data for s in h.sent if s.port == 7001 and s.data.startswith(b"INVITE")][-1]
    h.feed(response_to(inv1, 301, extra=("Contact: <sip:bob@127.0.0.1:7009>",)), PHONE1)
    [(route, _)] = h.take_writes()
    assert (route.old_uri, route.new_uri) == ("sip:bob@127.0.0.1:7001", "sip:bob@127.0.0.1:7009")
    out = pbx_invite(h, "z9hG4bKsecond")
    assert methods(h.to(7009, out)) == ["INVITE"]
    assert methods(h.to(7002, out)) == ["INVITE"], "phone 2 still rings"
    assert not h.to(7001, out)


def test_redirect_chain_is_learned_link_by_link() -> None:
    """A->B then B->C is learned as two rules, not as A->C overwriting A->B."""
    up = (Target("udp", "127.0.0.1", 5080, label="sip:127.0.0.1:5080"),)
    h = Harness.make(upstreams=up)
    h.core.guard = None
    h.feed(request())
    inv = [s.data for s in h.sent if s.port == 5080][-1]
    h.feed(response_to(inv, 301, extra=("Contact: <sip:b@127.0.0.1:5071>",)), PBX)
    commit_writes(h)
    inv_b = [s.data for s in h.sent if s.port == 5071][-1]
    h.feed(response_to(inv_b, 301, extra=("Contact: <sip:c@127.0.0.1:5072>",)),
           Source("udp", "127.0.0.1", 5071))
    commit_writes(h)
    learned = {k: v[0] for k, v in h.core.view.learned.items()}
    assert learned == {"sip:bob@example.com": "sip:b@127.0.0.1:5071",
                       "sip:b@127.0.0.1:5071": "sip:c@127.0.0.1:5072"}
