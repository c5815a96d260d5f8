"""The pure call simulator behind `check`'s policy tests: the route, each answer through the
rules, failover within a group and to another one, hold-downs, no_answer, best response."""

from __future__ import annotations

import textwrap

import pytest

from proxy.policy import (
    CaseAnswer,
    CaseExpect,
    CaseRequest,
    Policy,
    PolicyTest,
    Topology,
    check_test,
    parse_policy,
    simulate,
    user_part,
)
from proxy.policy.simulate import REQUEST_URI_TARGET

TOPOLOGY = Topology([
    ("pbx", [("sip:10.0.0.20", "10.0.0.20"), ("sip:10.0.0.21", "10.0.0.21")]),
    ("voicemail", [("sip:10.0.0.30", "10.0.0.30")]),
    ("carrier", [("sip:carrier.example.net", "carrier.example.net"),
                 ("sip:[2001:db8::7]", "2001:db8::7")]),
])

POLICY, _ = parse_policy(textwrap.dedent("""
    routes:
      - name: emergency
        match: {ruri_user: "112"}
        group: carrier
      - name: office
        match: {ruri_user: "1[0-9]{3}"}
        group: pbx
        no_answer: {after: 20, to: voicemail, diversion: no-answer}
    rules:
      - name: moved
        match: {status: 302}
        action: redirect
      - name: busy
        match: {status: 486, upstream: pbx}
        action: failover
        to: voicemail
        diversion: user-busy
      - name: overloaded
        match: {status: 503}
        action: failover
        hold_down: 60
      - name: timeout
        match: {status: 408}
        action: failover
      - name: hide
        match: {status: "5xx", upstream: carrier}
        action: reply
        status: 480
      - name: flows
        match: {status: 430}
        action: retry_flows
      - name: six
        match: {status: "6xx"}
        action: stop
    """).lstrip(), file="p.yaml")


def _answers(*items: int | str | tuple[int, dict[str, str]]) -> list[CaseAnswer]:
    out = []
    for item in items:
        if isinstance(item, tuple):
            out.append(CaseAnswer(item[0], tuple((k.lower(), v) for k, v in item[1].items())))
        elif isinstance(item, str):
            out.append(CaseAnswer({"timeout": 408, "unreachable": 503}.get(item, 0), (), item))
        else:
            out.append(CaseAnswer(item))
    return out


def _run(ruri: str, *answers: int | str | tuple[int, dict[str, str]], policy: Policy = POLICY,
         held: dict[str, float] | None = None, source: str = "", wall: float | None = None):
    return simulate(policy, TOPOLOGY, CaseRequest("INVITE", ruri, "", "", source, wall),
                    _answers(*answers), held)


def _trace(out) -> list[tuple[str | None, str, str]]:
    return [(s.group, s.target, s.decision.describe()) for s in out.steps]


def test_the_route_picks_the_group_and_no_route_is_the_first_group() -> None:
    assert (_run("sip:112@x").route.name, _run("sip:112@x").group) == ("emergency", "carrier")
    out = _run("sip:5551234@x")
    assert (out.route.name, out.group) == (None, "pbx")


def test_failover_to_another_group_with_diversion() -> None:
    out = _run("sip:1001@x", 486, 200)
    assert _trace(out) == [
        ("pbx", "sip:10.0.0.20", "busy: failover (to=voicemail, diversion=user-busy)"),
        ("voicemail", "sip:10.0.0.30", "(no rule): forward"),
    ]
    assert out.final == 200


def test_failover_goes_to_the_next_upstream_of_the_group_then_forwards_the_best() -> None:
    out = _run("sip:1001@x", 408, 408)
    assert [s.target for s in out.steps] == ["sip:10.0.0.20", "sip:10.0.0.21"]
    assert out.final == 408
    real_first = _run("sip:1001@x", "timeout", 404)  # a 4xx is not a failover: forward
    assert real_first.final == 404


def test_best_response_prefers_real_answers_and_sends_503_as_500() -> None:
    """RFC 3261 16.7 step 6, as the core's select_best: the lowest class first (a made-up
    408 beats a real 503), a real answer before a made-up one of the same class."""
    assert _run("sip:1001@x", "timeout", 503).final == 408
    assert _run("sip:1001@x", "unreachable", 502).final == 502
    assert _run("sip:1001@x", "unreachable", "unreachable").final == 500
    assert _run("sip:1001@x", 503, 603).final == 603  # a 6xx wins and stops


def test_hold_down_keeps_the_upstream_out_for_retry_after_or_hold_down() -> None:
    out = _run("sip:1001@x", (503, {"Retry-After": "120"}), wall=1000.0)
    assert out.held == {"sip:10.0.0.20": 1120.0}
    assert out.steps[0].held_for == 120.0
    assert _run("sip:1001@x", 503, wall=1000.0).held == {"sip:10.0.0.20": 1060.0}
    # a later call skips it until then, and no longer
    skipped = _run("sip:1001@x", 200, held=out.held, wall=1119.0)
    assert skipped.steps[0].target == "sip:10.0.0.21"
    back = _run("sip:1001@x", 200, held=out.held, wall=1120.0)
    assert back.steps[0].target == "sip:10.0.0.20"


def test_a_group_whose_upstreams_are_all_held_down_is_tried_anyway() -> None:
    held = {"sip:10.0.0.20": 500.0, "sip:10.0.0.21": 500.0}
    out = _run("sip:1001@x", 200, held=held, wall=100.0)
    assert out.steps[0].target == "sip:10.0.0.20"


def test_no_answer_cancels_and_goes_on_with_the_timer_group() -> None:
    out = _run("sip:1001@x", "no_answer", 200)
    assert _trace(out) == [
        ("pbx", "sip:10.0.0.20", "no_answer: failover (to=voicemail, diversion=no-answer)"),
        ("voicemail", "sip:10.0.0.30", "(no rule): forward"),
    ]
    assert out.final == 200


def test_no_answer_without_a_timer_is_an_error_of_the_test() -> None:
    out = _run("sip:5551234@x", "no_answer")  # the default route has no timer
    assert out.error == ("expected a no_answer timer for answer 1, got none in group pbx "
                         "(route (none))")
    out = _run("sip:1001@x", 486, "no_answer")  # the timer belongs to the route's group only
    assert out.error == ("expected a no_answer timer for answer 2, got none in group voicemail "
                         "(route office)")


def test_reply_ends_the_call_with_its_status() -> None:
    out = _run("sip:112@x", 502, 200)
    assert out.final == 480
    assert out.error == ("expected a branch for answer 2 (200), got none: the call ended with "
                         "480")


def test_stop_ends_the_call_with_the_best_response() -> None:
    out = _run("sip:1001@x", 408, 600)
    assert out.final == 600 and out.last is not None and out.last.rule == "six"


def test_redirect_makes_the_next_answer_the_contacts() -> None:
    out = _run("sip:1001@x", 302, 486)
    assert [(s.group, s.target) for s in out.steps] == [
        ("pbx", "sip:10.0.0.20"), (None, "(a Contact of the 3xx)")]
    # the Contact is not a pbx upstream: `busy` (upstream: pbx) does not apply; the 302
    # whose Contact was recursed on is not kept (16.7 step 4): the caller gets the 486
    assert out.steps[1].decision.rule is None and out.final == 486


def test_retry_flows_on_an_upstream_forwards() -> None:
    assert _run("sip:1001@x", 430).final == 430


def test_answers_that_run_out_leave_the_call_waiting() -> None:
    out = _run("sip:1001@x", 503)
    assert (out.final, out.waiting) == (None, "sip:10.0.0.21 (group pbx)")


def test_an_answer_with_no_branch_left_is_an_error() -> None:
    out = _run("sip:112@x", 408, 408, 200)
    assert out.final == 408
    assert out.error == ("expected a branch for answer 3 (200), got none: the call ended with "
                         "408")


def test_the_source_names_the_groups_it_belongs_to() -> None:
    policy, _ = parse_policy("rules: []\nroutes:\n  - name: in\n    match: {source: [carrier]}\n"
                             "    group: pbx\n")
    out = simulate(policy, TOPOLOGY, CaseRequest(ruri="sip:1@x", source="2001:db8::7"), [])
    assert out.route.name == "in"
    assert TOPOLOGY.groups_of("[2001:DB8::7]") == frozenset({"carrier"})
    assert TOPOLOGY.groups_of("10.0.0.31") == frozenset()


@pytest.mark.parametrize(
    ("uri", "user"),
    [("sip:1001@example.com", "1001"), ("sips:alice:secret@example.com;transport=tls", "alice"),
     ("\"Bob\" <sip:bob@example.com>;tag=1", "bob"), ("tel:+4930123;phone-context=x", "+4930123"),
     ("sip:example.com", ""), ("mailto:a@b", ""), ("", ""), ("<sip:a@b", "a")],
)
def test_user_part(uri: str, user: str) -> None:
    assert user_part(uri) == user


def _test(answers: list[CaseAnswer], expect: CaseExpect | None = None,
          route: str | None = None, check_route: bool = False,
          group: str | None = None) -> PolicyTest:
    return PolicyTest("t", CaseRequest(ruri="sip:1001@x"), check_route, route, group,
                      tuple(answers), expect)


def test_check_test_passes_and_reports_every_difference() -> None:
    passing = _test(_answers(486), CaseExpect("busy", "failover", "voicemail"), "office", True,
                    "pbx")
    assert check_test(POLICY, TOPOLOGY, passing) is None
    failing = _test(_answers(486), CaseExpect("overloaded", "reply", "", 486), None, True,
                    "carrier")
    assert check_test(POLICY, TOPOLOGY, failing) == (
        "expected route (none), group carrier, rule overloaded, action reply, to (none), "
        "status 486, got route office, group pbx, rule busy, action failover, to voicemail, "
        "status none yet (next: sip:10.0.0.30 (group voicemail))")


def test_check_test_reports_a_simulation_error() -> None:
    test = _test(_answers(486, "no_answer"), CaseExpect(status=200))
    assert check_test(POLICY, TOPOLOGY, test) == (
        "expected a no_answer timer for answer 2, got none in group voicemail (route office)")


def test_a_request_from_an_upstream_that_no_route_matches_goes_to_its_request_uri() -> None:
    """As the proxy routes it (README "Routes"): an upstream's request is routed by a route
    that matches, else by its Request-URI (the routing order's step 4), not to the first
    group; its branch has no group."""
    policy, _ = parse_policy("rules:\n  - {name: busy, match: {status: 486, upstream: pbx},"
                             " action: failover, to: voicemail}\nroutes:\n  - name: in\n"
                             "    match: {ruri_user: '9.*'}\n    group: pbx\n")
    out = simulate(policy, TOPOLOGY, CaseRequest(ruri="sip:1@x", source="10.0.0.30"),
                   [CaseAnswer(486)])
    assert out.route.name is None and out.group == REQUEST_URI_TARGET
    assert out.steps[0].target == REQUEST_URI_TARGET and out.steps[0].group is None
    assert out.last is not None and out.last.rule is None and out.final == 486
    routed = simulate(policy, TOPOLOGY, CaseRequest(ruri="sip:91@x", source="10.0.0.30"), [])
    assert routed.route.name == "in" and routed.group == "pbx"
    stranger = simulate(policy, TOPOLOGY, CaseRequest(ruri="sip:1@x", source="10.9.9.9"), [])
    assert stranger.group == "pbx"


def test_a_route_without_method_leaves_register_to_the_first_group() -> None:
    policy, _ = parse_policy("rules: []\nroutes:\n  - {name: all, group: voicemail}\n"
                             "  - {name: reg, match: {method: REGISTER, ruri_user: 'r.*'},"
                             " group: carrier}\n")
    invite = simulate(policy, TOPOLOGY, CaseRequest("INVITE", "sip:1@x"), [])
    register = simulate(policy, TOPOLOGY, CaseRequest("REGISTER", "sip:1@x"), [])
    named = simulate(policy, TOPOLOGY, CaseRequest("REGISTER", "sip:r1@x"), [])
    assert (invite.route.name, invite.group) == ("all", "voicemail")
    assert (register.route.name, register.group) == (None, "pbx")
    assert (named.route.name, named.group) == ("reg", "carrier")
