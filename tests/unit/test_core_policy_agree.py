"""``check`` and the running proxy agree: every ``tests:`` case of the shipped examples
(policies/examples/*) is run twice, once by the simulation ``check`` runs
(proxy.policy.simulate) and once through the real core (tests/unit/core_policy_driver.py:
the request as SIP from its source, each answer from the branch the core started), and both
must pick the same route and group, send each answer's branch to the same upstream, decide
it by the same rule and action, and give the caller the same status."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, load_config_and_policy
from proxy.policy import Policy, PolicyTest, Step, simulate
from proxy.policy_check import topology
from tests.unit.core_policy_driver import run_on_core

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent for p in (ROOT / "policies" / "examples").glob("*/proxy.yaml"))


def loaded(example: Path) -> tuple[Config, Policy]:
    config, policy, _ = load_config_and_policy(example / "proxy.yaml")
    return config, policy


CASES = [(example, test) for example in EXAMPLES for test in loaded(example)[1].tests]


def step(s: Step) -> tuple[str, str, str]:
    """A simulated step as the driver reads the core's. The simulation names a rule for a
    2xx too, but it has no effect there (a 2xx ends the call); the core forwards a 2xx at
    once without asking the policy (RFC 3261 16.7 step 5)."""
    if s.answer.kind == "response" and 200 <= s.answer.status < 300:
        return (s.target, "(2xx)", "(2xx)")
    return (s.target, s.decision.rule or "(no rule)", s.decision.verb)


def test_every_example_has_tests_to_agree_on() -> None:
    assert {e.name for e in EXAMPLES} == {"pbx-voicemail", "least-cost", "office-hours"}
    assert len(CASES) >= 25


@pytest.mark.parametrize(("example", "test"), CASES,
                         ids=[f"{e.name}:{t.name}" for e, t in CASES])
def test_the_core_does_what_check_says(example: Path, test: PolicyTest) -> None:
    config, policy = loaded(example)
    sim = simulate(policy, topology(config), test.request, test.answers)
    assert sim.error is None, sim.error
    core = run_on_core(config, policy, test)
    assert core.error is None, core.error
    assert core.route == sim.route.name
    assert core.group == sim.group
    assert core.steps == [step(s) for s in sim.steps]
    assert core.final == sim.final


OWN_CASES = """
routes:
  - name: extensions
    match: {ruri_user: "[1-9][0-9]{2,3}"}
    group: pbx
    no_answer: {after: 20, to: voicemail, diversion: no-answer}
rules:
  - {name: follow, match: {status: 302}, action: redirect}
  - {name: busy, match: {status: 486, upstream: pbx}, action: failover, to: voicemail,
     diversion: user-busy}
  - {name: down, match: {status: [408, 503], upstream: pbx}, action: failover, hold_down: 30}
  - {name: hide, match: {status: 500, upstream: voicemail}, action: reply, status: 480}
  - {name: header, match: {status: 480, header: {Reason: ".*cause=17.*"}}, action: stop}
tests:
  - name: from an upstream, no route, its Request-URI
    request: {ruri: "sip:alice@elsewhere.example.net", source: 10.0.0.30}
    answers: [486]
    expect: {status: 486}
  - name: from an upstream, a route matches
    request: {ruri: "sip:1001@pbx.example.com", source: 10.0.0.30}
    answers: [486, 200]
    expect: {status: 200}
  - name: timeout then unreachable then voicemail fails
    request: {ruri: "sip:alice@pbx.example.com"}
    answers: [timeout, unreachable]
    expect: {status: 500}
  - name: a redirect target's 486 is not the pbx's
    request: {ruri: "sip:1001@pbx.example.com"}
    answers: [302, 486]
    expect: {status: 486}
  - name: no answer then voicemail fails
    request: {ruri: "sip:1001@pbx.example.com"}
    answers: [no_answer, 500]
    expect: {status: 480}
  - name: a response header
    request: {ruri: "sip:1001@pbx.example.com"}
    answers: [{status: 480, headers: {Reason: "Q.850;cause=17"}}]
    expect: {rule: header, status: 480}
"""


def test_the_core_agrees_on_cases_the_examples_do_not_have(tmp_path: Path) -> None:
    """Answers the examples' tests do not give (timeout, unreachable, a redirect, a header)
    and a request from an upstream that no route matches (its Request-URI)."""
    (tmp_path / "proxy.yaml").write_text(
        "listen: [udp:127.0.0.1:5060]\nupstreams:\n"
        "  pbx: [sip:10.0.0.20:5060, sip:10.0.0.21:5060]\n  voicemail: [sip:10.0.0.30:5060]\n"
        "policy: policy.yaml\n")
    (tmp_path / "policy.yaml").write_text(OWN_CASES)
    config, policy = loaded(tmp_path)
    assert len(policy.tests) == 6
    for test in policy.tests:
        sim = simulate(policy, topology(config), test.request, test.answers)
        assert sim.error is None, (test.name, sim.error)
        core = run_on_core(config, policy, test)
        assert core.error is None, (test.name, core.error)
        assert (core.route, core.group) == (sim.route.name, sim.group), test.name
        assert core.steps == [step(s) for s in sim.steps], test.name
        assert core.final == sim.final, test.name
