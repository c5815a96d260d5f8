"""The local registrar (RFC 3261 10.3) and forking to its bindings (16.5-16.7), sans-IO."""

from __future__ import annotations

from proxy.core.types import Source
from proxy.sip import parse_message
from tests.unit.core_harness import Harness, methods, request, response_to, statuses

PBX = Source("udp", "127.0.0.1", 5080)
PHONE1 = Source("udp", "127.0.0.1", 7001)
PHONE2 = Source("udp", "127.0.0.1", 7002)


def register(h: Harness, src: Source, contact: str, *, expires: str = "Expires: 600",
             cseq: int = 1, call_id: str | None = None, extra: tuple[str, ...] = ()) -> int:
    data = request(
        "REGISTER", ruri="sip:example.com", branch=f"z9hG4bKreg{src.port}{cseq}",
        call_id=call_id or f"reg-{src.port}", cseq=cseq, via_host=f"127.0.0.1:{src.port}",
        extra=((expires,) if expires else ()) + extra,
    ).replace(b"Contact: <sip:alice@127.0.0.1:6000>", f"Contact: {contact}".encode())
    data = data.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>")
    [resp] = h.to(src.port, h.feed(data, src))
    return resp.status


def contacts_of(h: Harness, src: Source, cseq: int) -> list[str]:
    data = request(
        "REGISTER", ruri="sip:example.com", branch=f"z9hG4bKq{src.port}{cseq}",
        call_id=f"reg-{src.port}", cseq=cseq, via_host=f"127.0.0.1:{src.port}",
    ).replace(b"Contact: <sip:alice@127.0.0.1:6000>\r\n", b"")
    [resp] = h.to(src.port, h.feed(data, src))
    assert resp.status == 200
    return [str(c.uri) for c in resp.contacts]


def pbx_invite(h: Harness, branch: str = "z9hG4bKpbx") -> list:
    return h.feed(request(branch=branch, via_host="127.0.0.1:5080", call_id=branch), PBX)


def make() -> Harness:
    return Harness.make(registrar_local=True, domains=frozenset({"example.com"}))


def test_register_then_query_lists_binding_with_remaining_expires() -> None:
    """RFC 3261 10.3 step 8: the 200 lists every current binding with its expires."""
    h = make()
    assert register(h, PHONE1, "<sip:bob@127.0.0.1:7001>") == 200
    h.now += 100
    assert contacts_of(h, PHONE1, 2) == ["sip:bob@127.0.0.1:7001"]
    resp = h.to(7001)[-1]
    assert "expires=500" in (resp.get("contact") or "")


def test_refresh_extends_and_expires_zero_removes() -> None:
    """RFC 3261 10.2.1 (refresh), 10.2.2 (removal with expires=0)."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>", expires="Expires: 60")
    h.now += 50
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>", expires="Expires: 60", cseq=2)
    h.now += 50
    assert contacts_of(h, PHONE1, 3) == ["sip:bob@127.0.0.1:7001"]
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>;expires=0", expires="", cseq=4)
    assert contacts_of(h, PHONE1, 5) == []


def test_binding_expires_by_itself() -> None:
    """RFC 3261 10.3 step 8: an expired binding is gone."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>", expires="Expires: 60")
    h.now += 61
    assert contacts_of(h, PHONE1, 2) == []


def test_wildcard_removes_every_binding_and_needs_expires_zero() -> None:
    """RFC 3261 10.2.2 / 10.3 step 6: Contact: * only with Expires: 0."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>")
    assert register(h, PHONE1, "*", expires="Expires: 60", cseq=2) == 400
    assert register(h, PHONE1, "*", expires="Expires: 0", cseq=3) == 200
    assert contacts_of(h, PHONE1, 4) == []


def test_too_brief_interval_gets_423_with_min_expires() -> None:
    """RFC 3261 10.3 step 7: 423 Interval Too Brief."""
    h = make()
    assert register(h, PHONE1, "<sip:bob@127.0.0.1:7001>", expires="Expires: 10") == 423
    assert h.to(7001)[-1].get("min-expires") == "60"


def test_out_of_order_cseq_is_refused() -> None:
    """RFC 3261 10.3 step 7: same Call-ID, CSeq not higher -> 500."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>", cseq=5)
    assert register(h, PHONE1, "<sip:bob@127.0.0.1:7001>", cseq=4) == 500


def test_register_for_foreign_domain_gets_404() -> None:
    """RFC 3261 10.3 step 1, with `domains` configured."""
    h = make()
    data = request("REGISTER", ruri="sip:other.org", branch="z9hG4bKforeign",
                   via_host="127.0.0.1:7001").replace(b"<sip:bob@example.com>", b"<sip:bob@other.org>")
    assert statuses(h.to(7001, h.feed(data, PHONE1))) == [404]


def test_two_bindings_same_q_are_forked_in_parallel() -> None:
    """RFC 3261 16.6: one branch per target of the highest-q group, at once."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>")
    out = pbx_invite(h)
    assert methods(h.to(7001, out)) == ["INVITE"]
    assert methods(h.to(7002, out)) == ["INVITE"]


def test_lower_q_binding_is_tried_only_after_higher_q_fails() -> None:
    """RFC 3261 16.6 / 16.7: q-value ordering, serial between groups."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>;q=1.0")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>;q=0.5")
    out = pbx_invite(h)
    assert methods(h.to(7001, out)) == ["INVITE"] and not h.to(7002, out)
    inv = [s.data for s in out if s.port == 7001][0]
    out = h.feed(response_to(inv, 486), PHONE1)
    assert methods(h.to(7002, out)) == ["INVITE"]
    assert 486 not in statuses(h.to(5080, out))


def test_603_on_one_branch_cancels_the_other_ringing_branch() -> None:
    """Policy `stop` (RFC 3261 16.7 steps 5 and 6, 16.10): the ringing branch gets a CANCEL,
    no new branch is created, and the 603 is the final response once that branch ends."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>")
    out = pbx_invite(h)
    inv1 = [s.data for s in out if s.port == 7001][0]
    inv2 = [s.data for s in out if s.port == 7002][0]
    h.feed(response_to(inv2, 180, to_tag="p2"), PHONE2)
    out = h.feed(response_to(inv1, 603, to_tag="p1"), PHONE1)
    assert statuses(h.to(5080, out)) == []
    assert methods(h.to(7002, out)) == ["CANCEL"]
    assert methods(h.to(7001, out)) == ["ACK"]
    # The cancelled branch ends with 487: now the 603 (any 6xx beats it) goes to the caller.
    out = h.feed(response_to(inv2, 487, to_tag="p2"), PHONE2)
    [final] = [m for m in h.to(5080, out) if not m.is_request]
    assert final.status == 603 and final.to_tag == "p1"
    assert methods(h.to(7002, out)) == ["ACK"]


def test_stop_does_not_wait_more_than_4_t1_for_a_branch_that_cannot_be_cancelled() -> None:
    """A branch without a provisional response cannot be cancelled yet (RFC 3261 9.1): the
    6xx still reaches the caller 4*T1 after it arrived, and no other branch starts."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>")
    out = pbx_invite(h)
    inv1 = [s.data for s in out if s.port == 7001][0]
    h.feed(response_to(inv1, 600, to_tag="p1"), PHONE1)
    out = h.advance(4 * 0.5 - 0.01)
    assert 600 not in statuses(h.to(5080, out))
    out = h.advance(0.02)
    assert statuses(h.to(5080, out)) == [600]


def test_200_on_one_branch_cancels_the_other() -> None:
    """RFC 3261 16.7 step 10: after a 2xx, CANCEL every pending branch."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    register(h, PHONE2, "<sip:bob@127.0.0.1:7002>")
    out = pbx_invite(h)
    inv1 = [s.data for s in out if s.port == 7001][0]
    inv2 = [s.data for s in out if s.port == 7002][0]
    h.feed(response_to(inv2, 180, to_tag="p2"), PHONE2)
    out = h.feed(response_to(inv1, 200, to_tag="p1"), PHONE1)
    assert statuses(h.to(5080, out)) == [200]
    assert methods(h.to(7002, out)) == ["CANCEL"]


def test_one_flow_per_instance_most_recent_first() -> None:
    """RFC 5626 7: one branch per instance, over its most recently registered flow."""
    h = make()
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    register(h, PHONE1, f"<sip:bob@127.0.0.1:7001;ob>;{inst};reg-id=1")
    h.now += 1
    register(h, PHONE2, f"<sip:bob@127.0.0.1:7002;ob>;{inst};reg-id=2", call_id="reg-x")
    out = pbx_invite(h)
    assert not h.to(7001, out)
    [inv] = h.to(7002, out)
    assert parse_message(inv.raw).request_uri == "sip:bob@127.0.0.1:7002;ob"


def test_all_bindings_unreachable_gives_480() -> None:
    """docs/BEHAVIOUR.md, routing: registered, but no binding reachable -> 480."""
    h = make()
    register(h, PHONE1, "<sip:bob@127.0.0.1:7001>")
    out = pbx_invite(h)
    token = [s for s in out if s.port == 7001][0].token
    out = h.core.on_send_failure(token, h.now).sends
    h.sent.extend(out)
    assert statuses(h.to(5080, out)) == [480]
