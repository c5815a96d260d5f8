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
