"""Policy.evaluate / explain: first match wins, method matching, options, fallback."""

from __future__ import annotations

import textwrap

import pytest

from proxy.policy import (
    FALLBACK,
    Action,
    Decision,
    Policy,
    Rule,
    format_statuses,
    parse_policy,
)


def _policy(text: str) -> Policy:
    policy, _ = parse_policy(textwrap.dedent(text).lstrip("\n"), file="p.yaml")
    return policy


PRECEDENCE = """
rules:
  - name: busy-invite
    match: {status: 486, method: INVITE}
    action: stop
  - name: specific
    match: {status: 503}
    action: failover
  - name: class
    match: {status: "5xx"}
    action: stop
  - name: range
    match: {status: "480-599"}
    action: failover
"""


@pytest.mark.parametrize(
    ("status", "method", "rule", "action"),
    [
        (503, "INVITE", "specific", Action.FAILOVER),  # listed in three rules: the first wins
        (500, "INVITE", "class", Action.STOP),  # 5xx comes before the range
        (599, "BYE", "class", Action.STOP),
        (486, "INVITE", "busy-invite", Action.STOP),  # method rule first
        (486, "BYE", "range", Action.FAILOVER),  # method rule skipped for BYE
        (480, "OPTIONS", "range", Action.FAILOVER),
        (479, "INVITE", None, Action.FORWARD),  # no rule: the implicit fallback
        (603, "INVITE", None, Action.FORWARD),
    ],
)
def test_first_match_wins(status: int, method: str, rule: str | None, action: Action) -> None:
    decision = _policy(PRECEDENCE).evaluate(status, method)
    assert (decision.rule, decision.action) == (rule, action)


def test_reordering_changes_the_winner() -> None:
    reordered = """
    rules:
      - name: class
        match: {status: "5xx"}
        action: stop
      - name: specific
        match: {status: 503}
        action: failover
    """
    assert _policy(reordered).evaluate(503, "INVITE").rule == "class"


METHODS = """
rules:
  - name: invite-timeout
    match: {status: 408, method: INVITE}
    action: failover
  - name: dialog-requests
    match: {status: 481, method: [BYE, UPDATE, INFO]}
    action: stop
  - name: rest
    match: {status: "4xx"}
    action: forward
"""


@pytest.mark.parametrize(
    ("status", "method", "rule"),
    [
        (408, "INVITE", "invite-timeout"),
        (408, "BYE", "rest"),
        (408, "invite", "rest"),  # methods are case-sensitive (RFC 3261 7.1)
        (481, "BYE", "dialog-requests"),
        (481, "UPDATE", "dialog-requests"),
        (481, "INFO", "dialog-requests"),
        (481, "INVITE", "rest"),
        (481, "MESSAGE", "rest"),
        (481, "X-UNKNOWN", "rest"),
    ],
)
def test_method_matching(status: int, method: str, rule: str) -> None:
    assert _policy(METHODS).evaluate(status, method).rule == rule


def test_unknown_methods_share_one_table() -> None:
    policy = _policy(METHODS)
    before = len(policy._tables)  # INVITE, BYE, UPDATE, INFO and "every other method"
    assert before == 5
    for i in range(200):
        assert policy.evaluate(408, f"X-M{i}").rule == "rest"
    assert len(policy._tables) == before  # no growth with methods seen on the wire


def test_evaluate_returns_the_precomputed_decision() -> None:
    policy = _policy(METHODS)
    first = policy.evaluate(408, "INVITE")
    assert policy.evaluate(408, "INVITE") is first


@pytest.mark.parametrize("status", [0, 99, 700, 999, -1, 10**6])
def test_out_of_range_status_falls_back_to_forward(status: int) -> None:
    catch_all = _policy("""
        rules:
          - name: all
            match: {status: "100-699"}
            action: stop
        """)
    assert catch_all.evaluate(status, "INVITE") == FALLBACK
    assert FALLBACK == Decision(Action.FORWARD, None)


def test_decision_carries_the_options() -> None:
    policy = _policy("""
        rules:
          - name: moved
            match: {status: 301}
            action: redirect
            permanent: true
            max_redirects: 5
          - name: flows
            match: {status: 430}
            action: retry_flows
            max_attempts: 7
        """)
    assert policy.evaluate(301, "INVITE") == Decision(
        Action.REDIRECT, "moved", permanent=True, max_redirects=5
    )
    assert policy.evaluate(430, "INVITE") == Decision(Action.RETRY_FLOWS, "flows", max_attempts=7)


@pytest.mark.parametrize(
    ("status", "method", "text"),
    [
        (301, "INVITE", "moved: redirect (permanent, max_redirects=5)"),
        (302, "INVITE", "temp: redirect (max_redirects=3)"),
        (430, "INVITE", "flows: retry_flows (max_attempts=7)"),
        (603, "INVITE", "decline: stop"),
        (503, "INVITE", "down: failover"),
        (503, "BYE", "(no rule): forward"),
        (404, "INVITE", "(no rule): forward"),
    ],
)
def test_explain(status: int, method: str, text: str) -> None:
    policy = _policy("""
        rules:
          - name: moved
            match: {status: 301}
            action: redirect
            permanent: true
            max_redirects: 5
          - name: temp
            match: {status: 302}
            action: redirect
          - name: flows
            match: {status: 430}
            action: retry_flows
            max_attempts: 7
          - name: decline
            match: {status: 603}
            action: stop
          - name: down
            match: {status: 503, method: INVITE}
            action: failover
        """)
    assert policy.explain(status, method) == text


def test_explain_defaults_to_invite() -> None:
    policy = _policy(METHODS)
    assert policy.explain(408) == "invite-timeout: failover"


def test_policy_built_in_code_evaluates_like_a_file() -> None:
    policy = Policy(
        rules=(
            Rule("a", frozenset({500}), Action.STOP, methods=frozenset({"INVITE"})),
            Rule("b", frozenset(range(500, 600)), Action.FAILOVER),
        ),
        version="test",
        path=None,
    )
    assert policy.evaluate(500, "INVITE").rule == "a"
    assert policy.evaluate(500, "BYE").rule == "b"
    assert policy.source == "builtin"
    assert policy.rule("b") is policy.rules[1]
    assert policy.rule("zzz") is None


def test_rule_match_text_and_format_statuses() -> None:
    rule = Rule("r", frozenset({600, 603, 604, *range(500, 600), 408}), Action.STOP,
                methods=frozenset({"INVITE", "BYE"}))
    assert rule.match_text() == "status 408, 500-600, 603-604 method BYE, INVITE"
    assert format_statuses([]) == ""
    assert format_statuses(range(100, 700)) == "100-699"
    assert format_statuses([301]) == "301"
    assert format_statuses([*range(600, 700), 408]) == "408, 6xx"


def test_action_values_are_the_file_words() -> None:
    assert [a.value for a in Action] == ["redirect", "retry_flows", "stop", "failover", "forward"]
    assert Action("retry_flows") is Action.RETRY_FLOWS
    assert str(Action.STOP) == "stop"


def _first_match(policy: Policy, status: int, method: str) -> Decision:
    """The definition of evaluate(), written as the plain scan it replaces."""
    for rule in policy.rules:
        if rule.matches(status, method):
            return rule.decision
    return FALLBACK


@pytest.mark.parametrize("text", [PRECEDENCE, METHODS], ids=["precedence", "methods"])
def test_tables_agree_with_a_plain_first_match_scan(text: str) -> None:
    policy = _policy(text)
    for method in ("INVITE", "BYE", "UPDATE", "INFO", "OPTIONS", "invite", "X"):
        for status in range(100, 700):
            assert policy.evaluate(status, method) == _first_match(policy, status, method)


def test_generic_rule_before_method_rule_wins_for_that_method() -> None:
    policy = _policy("""
        rules:
          - name: generic
            match: {status: 500}
            action: stop
          - name: invite
            match: {status: [500, 501], method: INVITE}
            action: failover
        """)
    assert policy.evaluate(500, "INVITE").rule == "generic"
    assert policy.evaluate(501, "INVITE").rule == "invite"
    assert policy.evaluate(501, "BYE").rule is None
