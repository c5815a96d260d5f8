"""The shipped policy files: their decision for every status, and the built-in policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.policy import BUILTIN_POLICY, Action, Decision, Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
SHIPPED = sorted(POLICIES.glob("*.yaml"))


def _load(name: str) -> Policy:
    policy, warnings = load_policy(POLICIES / name)
    assert warnings == []
    return policy


DEFAULT = _load("default.yaml")


def _default_expected(status: int) -> Decision:
    """The default policy (README's excerpt, docs/BEHAVIOUR.md "The policy actions") with the
    refinements of later issues, written out independently."""
    if status == 301:
        return Decision(Action.REDIRECT, "moved-permanently", permanent=True, max_redirects=3)
    if status == 302:
        return Decision(Action.REDIRECT, "moved-temporarily", permanent=False, max_redirects=3)
    if status == 430:
        return Decision(Action.RETRY_FLOWS, "flow-failed", max_attempts=3)
    if status in (600, 603, 604, 606, 607, 608):
        return Decision(Action.STOP, "global-failure")
    if status in (408, 500, 503):
        return Decision(Action.FAILOVER, "unavailable")
    return Decision(Action.FORWARD, "everything-else")


@pytest.mark.parametrize("status", range(300, 700))
def test_default_policy_for_every_invite_status(status: int) -> None:
    assert DEFAULT.evaluate(status, "INVITE") == _default_expected(status)


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (301, "moved-permanently: redirect (permanent, max_redirects=3)"),
        (302, "moved-temporarily: redirect (max_redirects=3)"),
        (408, "unavailable: failover"),
        (430, "flow-failed: retry_flows (max_attempts=3)"),
        (481, "everything-else: forward"),
        (503, "unavailable: failover"),
        (603, "global-failure: stop"),
        (605, "everything-else: forward"),
    ],
)
def test_default_policy_for_bye(status: int, text: str) -> None:
    assert DEFAULT.explain(status, "BYE") == text
    assert DEFAULT.evaluate(status, "BYE") == _default_expected(status)


def test_default_policy_forwards_provisional_and_success() -> None:
    for status in (100, 180, 183, 200, 202, 299):
        assert DEFAULT.evaluate(status, "INVITE") == Decision(Action.FORWARD, "everything-else")


def test_default_policy_explains_604_as_global_failure() -> None:
    assert DEFAULT.explain(604) == "global-failure: stop"


@pytest.mark.parametrize("method", ["INVITE", "BYE", "REGISTER", "SUBSCRIBE", "X-OTHER"])
def test_builtin_policy_is_default_yaml(method: str) -> None:
    assert BUILTIN_POLICY.version == "builtin"
    assert BUILTIN_POLICY.path is None
    for status in range(100, 700):
        assert BUILTIN_POLICY.evaluate(status, method) == DEFAULT.evaluate(status, method), status
    assert [r.name for r in BUILTIN_POLICY.rules] == [r.name for r in DEFAULT.rules]


@pytest.mark.parametrize("status", range(300, 700))
def test_no_redirects_policy(status: int) -> None:
    policy = _load("no-redirects.yaml")
    decision = policy.evaluate(status, "INVITE")
    if 300 <= status <= 399:
        assert decision == Decision(Action.FORWARD, "redirects-to-caller")
    else:
        assert decision == _default_expected(status)


@pytest.mark.parametrize("status", range(300, 700))
def test_pbx_pair_policy(status: int) -> None:
    decision = _load("pbx-pair.yaml").evaluate(status, "INVITE")
    if status == 408 or 500 <= status <= 599:
        assert decision == Decision(Action.FAILOVER, "pbx-unavailable")
    elif 600 <= status <= 699:
        assert decision == Decision(Action.STOP, "global-failure")
    elif status in (301, 302, 430):
        assert decision == _default_expected(status)
    else:
        assert decision == Decision(Action.FORWARD, "everything-else")


def test_every_shipped_policy_is_commented_and_loads_without_warnings() -> None:
    assert [p.name for p in SHIPPED] == ["default.yaml", "no-redirects.yaml", "pbx-pair.yaml"]
    for path in SHIPPED:
        text = path.read_text()
        assert text.startswith("# "), path
        _rules, warnings = load_policy(path)
        assert warnings == [], path
        # every rule is preceded by a comment telling the operator what it is for
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- name:"):
                assert lines[i - 1].strip().startswith("#"), (path.name, i + 1)


# ---------------------------------------------------------------------------------------------
# policies/examples: one folder per example, a proxy.yaml naming its groups and policy.yaml


EXAMPLES = sorted(p.parent for p in (POLICIES / "examples").glob("*/proxy.yaml"))


def test_the_examples_are_the_three_of_the_readme() -> None:
    assert [e.name for e in EXAMPLES] == ["least-cost", "office-hours", "pbx-voicemail"]
    for example in EXAMPLES:
        assert sorted(p.name for p in example.iterdir()) == ["policy.yaml", "proxy.yaml"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_checks_with_its_tests_passing(
    example: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `make test` asks of every shipped example: `check --config` exits 0, every test of
    the policy file runs against the example's groups and passes, and nothing is warned."""
    from proxy.cli import main
    from proxy.config import load_config_and_policy

    config, policy, warnings = load_config_and_policy(example / "proxy.yaml")
    assert warnings == []
    assert len(policy.tests) >= 8
    assert set(config.group_names) >= {r.group for r in policy.routes if r.group}
    monkeypatch.chdir(REPO)
    assert main(["check", "--config", f"policies/examples/{example.name}/proxy.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == f"tests: {len(policy.tests)} passed"
    assert err == ""


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_is_commented(example: Path) -> None:
    text = (example / "policy.yaml").read_text()
    assert text.startswith("# ")
    assert f"check --config policies/examples/{example.name}/proxy.yaml" in text
    lines = text.split("\ntests:\n")[0].splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- name:"):  # every route and rule says what it is for
            assert lines[i - 1].strip().startswith("#"), (example.name, i + 1)


def test_the_examples_cover_what_the_readme_says_they_show() -> None:
    from proxy.config import load_config_and_policy

    loaded = {e.name: load_config_and_policy(e / "proxy.yaml")[1] for e in EXAMPLES}
    voicemail = loaded["pbx-voicemail"]
    diversions = {r.diversion for r in voicemail.rules if r.diversion}
    assert diversions == {"user-busy", "unavailable"}
    assert [r.no_answer.diversion for r in voicemail.routes if r.no_answer] == ["no-answer"]
    least_cost = loaded["least-cost"]
    assert any(r.when is not None and r.when.ruri_user is not None for r in least_cost.routes)
    assert all(r.hold_down == 60 for r in least_cost.rules if 503 in r.statuses
               and r.when is not None and r.when.upstream is not None and r.verb == "failover")
    office = loaded["office-hours"]
    assert office.uses_time
    assert any(r.when is not None and r.when.time is not None for r in office.rules)
