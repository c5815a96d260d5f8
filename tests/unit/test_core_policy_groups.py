"""The second form of the policy applied by the core (README "Routes, upstream groups and
richer rules"), one test or more per row of the table that issue 21 closes: routes by
number, source, header and time pick the group of a new call; rules match the group of the
branch and the response's headers; failover to a group adds a Diversion (RFC 5806); a
hold-down keeps an upstream out for its Retry-After (RFC 3261 21.5.4); a reply rule maps the
status; a route's no_answer timer CANCELs (RFC 3261 16.10) and goes on with another group.
"""

from __future__ import annotations

from datetime import datetime

from proxy.core.proxy.steer import upstream_states
from proxy.core.types import Source, Target
from proxy.core.upstream_admin import AdminState
from proxy.policy import Policy, parse_policy
from proxy.sip import SipMessage, parse_message
from tests.unit.core_harness import Harness, request, response_to

PBX1 = Target("udp", "10.0.0.20", 5060, label="sip:10.0.0.20:5060")
PBX2 = Target("udp", "10.0.0.21", 5060, label="sip:10.0.0.21:5060")
VM = Target("udp", "10.0.0.30", 5060, label="sip:10.0.0.30:5060")
CARRIER = Target("udp", "192.0.2.10", 5060, label="sip:192.0.2.10:5060")
GROUPS = (("pbx", (PBX1, PBX2)), ("voicemail", (VM,)), ("carrier", (CARRIER,)))
PHONE = Source("udp", "203.0.113.5", 6000)
PHONE_VIA = "203.0.113.5:6000"


def policy(text: str) -> Policy:
    return policy_for([name for name, _ in GROUPS], text)


def policy_for(groups: list[str], text: str) -> Policy:
    p, _ = parse_policy(text, groups=groups)
    return p


def make(text: str, **kw: object) -> Harness:
    return Harness.make(upstreams=GROUPS[0][1], groups=GROUPS, policy=policy(text), **kw)


def call(h: Harness, ruri: str = "sip:1001@pbx.example.com", src: Source = PHONE,
         call_id: str = "c1@phone", extra: tuple[str, ...] = ()) -> None:
    via = f"{src.host}:{src.port}"
    h.feed(request(ruri=ruri, via_host=via, call_id=call_id, branch=f"z9hG4bK{call_id}",
                   extra=extra), src)


def invites_to(h: Harness, t: Target) -> list[bytes]:
    return [s.data for s in h.sent
            if (s.host, s.port) == (t.host, t.port) and s.data.startswith(b"INVITE ")]


def last_invite(h: Harness) -> tuple[Target, bytes]:
    for s in reversed(h.sent):
        if s.data.startswith(b"INVITE "):
            return Target("udp", s.host, s.port), s.data
    raise AssertionError("no INVITE was forwarded")


def answer(h: Harness, t: Target, data: bytes, status: int, *extra: str) -> None:
    h.feed(response_to(data, status, extra=extra), Source("udp", t.host, t.port))


def to_phone(h: Harness, src: Source = PHONE) -> list[SipMessage]:
    return [parse_message(s.data) for s in h.sent
            if (s.host, s.port) == (src.host, src.port) and s.data.startswith(b"SIP/2.0")]


def finals(h: Harness, src: Source = PHONE) -> list[tuple[int, str]]:
    return [(m.status, m.reason) for m in to_phone(h, src) if m.status >= 200]


ROUTES = """
routes:
  - name: international
    match: {ruri_user: "00[1-9][0-9]{5,14}"}
    group: carrier
  - name: from-carrier
    match: {source: [carrier]}
    group: pbx
  - name: office-net
    match: {source: [198.51.100.0/24]}
    group: voicemail
  - name: tagged
    match: {header: {X-Route: "vm"}}
    group: voicemail
rules:
  - name: everything-else
    match: {status: "100-699"}
    action: forward
"""


def test_a_route_by_prefix_reaches_its_group_and_no_route_the_first_group() -> None:
    """lcr / dialplan: a number matching the route's regex (whole user part) goes to its
    group; one that does not, to the first group."""
    h = make(ROUTES)
    call(h, "sip:0044201234567@pbx.example.com")
    assert len(invites_to(h, CARRIER)) == 1 and not invites_to(h, PBX1)
    call(h, "sip:1001@pbx.example.com", call_id="c2@phone")
    assert len(invites_to(h, PBX1)) == 1
    call(h, "sip:x0044201234567@pbx.example.com", call_id="c3@phone")  # not a full match
    assert len(invites_to(h, PBX1)) == 2 and len(invites_to(h, CARRIER)) == 1


def test_a_route_by_source_reads_the_packets_address_never_a_header() -> None:
    """permissions: the carrier's own address (an upstream: trusted, routed by the route and
    not by its Request-URI) goes to the PBX; a stranger writing the carrier's address in its
    Via and From is routed as the stranger it is."""
    h = make(ROUTES)
    from_carrier = Source("udp", CARRIER.host, CARRIER.port)
    call(h, "sip:1001@elsewhere.example.net", src=from_carrier)
    assert len(invites_to(h, PBX1)) == 1
    forged = ("X-Forwarded-For: 192.0.2.10",)
    h.feed(request(ruri="sip:1001@pbx.example.com", via_host="192.0.2.10:5060",
                   call_id="c2@phone", branch="z9hG4bKforged", extra=forged), PHONE)
    assert len(invites_to(h, PBX1)) == 2  # the default group, not "from-carrier"'s by name
    office = Source("udp", "198.51.100.7", 5060)
    call(h, src=office, call_id="c3@phone")
    assert len(invites_to(h, VM)) == 1  # a CIDR source


def test_a_route_by_request_header() -> None:
    h = make(ROUTES)
    call(h, extra=("X-Route: vm",))
    assert len(invites_to(h, VM)) == 1
    call(h, call_id="c2@phone", extra=("X-Route: vmx",))  # the whole value must match
    assert len(invites_to(h, PBX1)) == 1


def _wall(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


TIMES = """
routes:
  - name: office
    match: {time: {days: [mon-fri], between: "08:00-18:00", tz: Europe/Berlin}}
    group: pbx
  - name: closed
    group: voicemail
rules:
  - name: lunch
    match: {status: 486, upstream: pbx,
            time: {days: [mon-fri], between: "12:00-13:00", tz: Europe/Berlin}}
    action: failover
    to: voicemail
    diversion: time-of-day
"""


def test_time_of_day_comes_from_the_cores_clock_and_a_window_for_another_time_does_not_match(
) -> None:
    """tmrec: the wall time is the core's clock plus wall_offset (sans-IO, no clock read)."""
    h = make(TIMES)
    h.core.set_wall_offset(_wall("2026-03-04T10:00:00+01:00") - h.now)  # Wednesday 10:00
    call(h)
    assert len(invites_to(h, PBX1)) == 1
    h.core.set_wall_offset(_wall("2026-03-04T19:00:00+01:00") - h.now)  # Wednesday 19:00
    call(h, call_id="c2@phone")
    assert len(invites_to(h, VM)) == 1
    # a 486 at 14:00 is not the lunch rule's: the caller hears 486
    h.core.set_wall_offset(_wall("2026-03-04T14:00:00+01:00") - h.now)
    call(h, call_id="c3@phone", src=Source("udp", "203.0.113.6", 6000))
    t, data = last_invite(h)
    answer(h, t, data, 486)
    assert [s for s, _ in finals(h, Source("udp", "203.0.113.6", 6000))] == [486]
    # the same 486 at 12:15 is: on to voicemail with reason time-of-day
    h.core.set_wall_offset(_wall("2026-03-04T12:15:00+01:00") - h.now)
    call(h, call_id="c4@phone", src=Source("udp", "203.0.113.7", 6000))
    t, data = last_invite(h)
    answer(h, t, data, 486)
    vm = parse_message(invites_to(h, VM)[-1])
    assert vm.get("diversion") == "<sip:1001@pbx.example.com>;reason=time-of-day;counter=1"


VOICEMAIL = """
routes:
  - name: extensions
    match: {ruri_user: "[1-9][0-9]{2,3}"}
    group: pbx
    no_answer: {after: 20, to: voicemail, diversion: no-answer}
rules:
  - name: busy
    match: {status: 486, method: INVITE, upstream: pbx}
    action: failover
    to: voicemail
    diversion: user-busy
  - name: pbx-down
    match: {status: [500, 503], upstream: pbx}
    action: failover
    hold_down: 60
  - name: vm-failed
    match: {status: "5xx", upstream: voicemail}
    action: reply
    status: 480
    reason: Temporarily Unavailable
  - name: block-3xx
    match: {status: "3xx"}
    action: reply
    status: 404
  - name: overload-header
    match: {status: 480, header: {Reason: ".*cause=34.*"}}
    action: failover
    to: carrier
"""


def test_busy_goes_to_voicemail_with_the_diversion_of_the_old_target() -> None:
    """WITH_VOICEMAIL + the diversion module: 486 from the PBX -> the voicemail group, the
    INVITE carrying ``Diversion: <the Request-URI the call had>;reason=user-busy;counter=1``
    (RFC 5806 4) above any Diversion it had; the other PBX is not tried."""
    h = make(VOICEMAIL)
    call(h, extra=("Diversion: <sip:2000@pbx.example.com>;reason=unconditional;counter=1",))
    [first] = invites_to(h, PBX1)
    assert parse_message(first).get_all("diversion") == [
        "<sip:2000@pbx.example.com>;reason=unconditional;counter=1"]
    answer(h, PBX1, first, 486)
    assert not invites_to(h, PBX2)
    [vm] = invites_to(h, VM)
    assert parse_message(vm).get_all("diversion") == [
        "<sip:1001@pbx.example.com>;reason=user-busy;counter=1",
        "<sip:2000@pbx.example.com>;reason=unconditional;counter=1"]
    answer(h, VM, vm, 200)
    assert [s for s, _ in finals(h)] == [200]
    assert h.core.metrics.decisions[("busy", "failover")] == 1


def test_no_answer_cancels_the_group_and_goes_on_to_voicemail() -> None:
    """t_set_fr + failure_route: no 2xx 20 s after the call reached the PBX: CANCEL its
    branch (RFC 3261 16.10), then voicemail with reason no-answer; the PBX's 487 decides
    nothing and never reaches the caller."""
    h = make(VOICEMAIL)
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 180)
    h.advance(19.9)
    assert not invites_to(h, VM)
    out = h.advance(0.2)
    cancels = [s for s in out if s.data.startswith(b"CANCEL ")]
    assert [(s.host, s.port) for s in cancels] == [(PBX1.host, PBX1.port)]
    [vm] = invites_to(h, VM)
    assert parse_message(vm).get("diversion") == (
        "<sip:1001@pbx.example.com>;reason=no-answer;counter=1")
    answer(h, PBX1, cancels[0].data, 200)
    answer(h, PBX1, inv, 487)
    assert finals(h) == []  # voicemail still rings
    answer(h, VM, vm, 180)
    answer(h, VM, vm, 200)
    assert [s for s, _ in finals(h)] == [200]
    assert h.core.metrics.decisions[("no_answer", "failover")] == 1
    assert ("(no rule)", "forward") not in h.core.metrics.decisions  # 487 decided nothing


def test_the_no_answer_timer_is_of_the_routes_group_only() -> None:
    """A call that went on to voicemail (busy) is not cancelled by the PBX's timer; an
    answered call is not either."""
    h = make(VOICEMAIL)
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 486)
    [vm] = invites_to(h, VM)
    answer(h, VM, vm, 180)
    out = h.advance(25)
    assert not [s for s in out if s.data.startswith(b"CANCEL ")]
    call(h, call_id="c2@phone")
    inv2 = invites_to(h, PBX1)[-1]
    answer(h, PBX1, inv2, 200)
    out = h.advance(25)
    assert not [s for s in out if s.data.startswith(b"CANCEL ")]
    assert len(invites_to(h, VM)) == 1


def test_503_with_retry_after_holds_the_upstream_out_of_every_call_for_that_long() -> None:
    """RFC 3261 21.5.4 / ds_mark_dst: the 503's Retry-After (120 s) holds PBX1 down: the
    next call starts at PBX2, upstream_up shows 0; after 120 s PBX1 is back."""
    h = make(VOICEMAIL)
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 503, "Retry-After: 120 (maintenance)")
    [second] = invites_to(h, PBX2)  # failover within the group
    answer(h, PBX2, second, 200)
    states = {s.target: s for s in upstream_states(h.core, h.now)}
    assert not states[PBX1].up and states[PBX1].probed_up
    assert states[PBX1].held_for == 120 and states[PBX1].groups == ("pbx",)
    h.now += 119
    call(h, call_id="c2@phone")
    assert len(invites_to(h, PBX1)) == 1 and len(invites_to(h, PBX2)) == 2
    h.now += 1.5
    call(h, call_id="c3@phone")
    assert len(invites_to(h, PBX1)) == 2
    assert upstream_states(h.core, h.now)[0].up


def test_a_hold_down_without_retry_after_is_the_rules_seconds_and_at_most_an_hour() -> None:
    h = make(VOICEMAIL)
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 500)
    assert h.core.prober.held_until(PBX1, h.now) == h.now + 60
    answer(h, PBX2, invites_to(h, PBX2)[0], 503, "Retry-After: 999999")
    assert h.core.prober.held_until(PBX2, h.now) == h.now + 3600


def test_all_held_down_is_tried_anyway() -> None:
    h = make(VOICEMAIL)
    h.core.prober.hold(h.core, PBX1, 60, h.now)
    h.core.prober.hold(h.core, PBX2, 60, h.now)
    call(h)
    assert len(invites_to(h, PBX1)) == 1


def test_reply_maps_a_302_to_404_and_a_voicemail_5xx_to_480() -> None:
    """WITH_BLOCK3XX: a 302 is not followed, the caller gets 404; a failing voicemail server
    is shown as 480 with the rule's reason."""
    h = make(VOICEMAIL)
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 302, "Contact: <sip:elsewhere@198.51.100.9>")
    assert finals(h) == [(404, "Not Found")]
    assert len([s for s in h.sent if s.data.startswith(b"INVITE ")]) == 1  # not followed
    other = Source("udp", "203.0.113.6", 6000)
    call(h, src=other, call_id="c2@phone")
    answer(h, PBX1, invites_to(h, PBX1)[-1], 486)
    answer(h, VM, invites_to(h, VM)[-1], 500)
    assert finals(h, other) == [(480, "Temporarily Unavailable")]
    assert h.core.metrics.decisions[("vm-failed", "reply")] == 1


def test_a_rule_on_a_response_header() -> None:
    h = make(VOICEMAIL)
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 480, "Reason: Q.850;cause=34")
    assert len(invites_to(h, CARRIER)) == 1 and not invites_to(h, PBX2)
    other = Source("udp", "203.0.113.6", 6000)
    call(h, src=other, call_id="c2@phone")
    answer(h, PBX1, invites_to(h, PBX1)[-1], 480, "Reason: Q.850;cause=17")
    assert len(invites_to(h, CARRIER)) == 1  # no match: forwarded
    assert [s for s, _ in finals(h, other)] == [480]


def test_a_rule_on_the_group_does_not_match_a_branch_outside_the_groups() -> None:
    """A redirect target has no group: ``upstream: pbx`` does not match its 486."""
    h = make("""
rules:
  - {name: follow, match: {status: 302}, action: redirect}
  - {name: busy, match: {status: 486, upstream: pbx}, action: failover, to: voicemail}
""")
    call(h)
    [inv] = invites_to(h, PBX1)
    answer(h, PBX1, inv, 302, "Contact: <sip:1001@198.51.100.9>")
    t, data = last_invite(h)
    assert t.host == "198.51.100.9"
    answer(h, t, data, 486)
    assert not invites_to(h, VM)
    assert [s for s, _ in finals(h)] == [486]


def test_every_groups_upstreams_are_probed_and_trusted() -> None:
    """Every group's upstreams are probed (upstream_up{upstream,group}) and are upstreams for
    the access rules: a request from the voicemail server is trusted (routed by its
    Request-URI), and may be relayed to."""
    h = make(VOICEMAIL, probe_interval=10.0)
    h.take(h.core.start_probes(h.now))
    probed = {(s.host, s.port) for s in h.sent if s.data.startswith(b"OPTIONS ")}
    assert probed == {(t.host, t.port) for t in (PBX1, PBX2, VM, CARRIER)}
    assert (VM.host, VM.port) in h.core.view.upstream_addrs
    vm_src = Source("udp", VM.host, VM.port)
    h.feed(request(ruri="sip:mwi@203.0.113.80:5070", via_host="10.0.0.30:5060",
                   call_id="n1@vm", branch="z9hG4bKn1", method="NOTIFY"), vm_src)
    assert [(s.host, s.port) for s in h.sent if s.data.startswith(b"NOTIFY ")] == [
        ("203.0.113.80", 5070)]


def test_a_first_form_policy_still_fails_over_within_the_first_group() -> None:
    h = make("""
rules:
  - {name: next, match: {status: 503}, action: failover}
""")
    call(h)
    answer(h, PBX1, invites_to(h, PBX1)[0], 503)
    answer(h, PBX2, invites_to(h, PBX2)[0], 503)
    assert not invites_to(h, VM) and not invites_to(h, CARRIER)
    assert [s for s, _ in finals(h)] == [500]
    assert parse_message(invites_to(h, PBX2)[0]).get("diversion") is None


def test_a_source_group_of_an_upstream_named_by_a_domain_holds_for_its_addresses() -> None:
    """A carrier named by a domain sends from the addresses its name resolves to (RFC 3263):
    the runtime hands them over, and ``source: [carrier]`` holds for a request from them."""
    named = Target("udp", "sbc.carrier.example", 5060, label="sip:sbc.carrier.example")
    h = Harness.make(upstreams=(PBX1,), groups=(("pbx", (PBX1,)), ("carrier", (named,))),
                     policy=policy_for(["pbx", "carrier"], """
rules: []
routes:
  - {name: in, match: {source: [carrier]}, group: carrier}
"""))
    src = Source("udp", "192.0.2.77", 6000)
    call(h, src=src)
    assert len(invites_to(h, PBX1)) == 1  # not yet known as the carrier's
    h.take(h.core.set_source_addresses({"sbc.carrier.example": ["192.0.2.77"]}))
    call(h, src=src, call_id="c2@phone")
    assert [(s.host, s.port) for s in h.sent if s.data.startswith(b"INVITE ")][-1] == (
        "sbc.carrier.example", 5060)


def test_a_route_without_method_leaves_register_to_the_first_group() -> None:
    """registrar: upstream: a REGISTER goes to the first group, where the registrar is, even
    when a catch-all route (night service) takes every call."""
    h = make("""
rules: []
routes:
  - {name: night, group: voicemail}
""")
    h.feed(request("REGISTER", ruri="sip:pbx.example.com", via_host=PHONE_VIA,
                   call_id="r1@phone", branch="z9hG4bKr1"), PHONE)
    assert [(s.host, s.port) for s in h.sent if s.data.startswith(b"REGISTER ")] == [
        (PBX1.host, PBX1.port)]
    call(h)
    assert len(invites_to(h, VM)) == 1


def test_an_operators_drain_applies_to_routed_groups_and_to_failover() -> None:
    """README "Runtime control of upstreams": a drained upstream takes no new call, whatever
    group a route or a failover leads to; a group all drained answers 503."""
    h = make(VOICEMAIL)
    for t, state in ((PBX1, "drain"), (VM, "down")):
        h.take(h.core.set_upstream_admin(AdminState(t.label, state, 1.0e9, "node-a"), "here",
                                         h.now))
    call(h)
    assert not invites_to(h, PBX1) and len(invites_to(h, PBX2)) == 1
    answer(h, PBX2, invites_to(h, PBX2)[0], 486)  # busy: voicemail, which is down
    assert not invites_to(h, VM)
    assert [s for s, _ in finals(h)] == [486]
    other = Source("udp", "203.0.113.6", 6000)
    h.take(h.core.set_upstream_admin(AdminState(PBX2.label, "drain", 1.0e9, "node-a"),
                                     "here", h.now))
    call(h, src=other, call_id="c2@phone")
    assert finals(h, other) == [(503, "Upstreams Out Of Service")]
