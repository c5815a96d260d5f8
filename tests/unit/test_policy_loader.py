"""Policy file validation: every error with its exact message and FILE:LINE:COLUMN."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from proxy.diagnostics import ConfigError, Diagnostic
from proxy.policy import Action, Policy, load_policy, parse_policy
from proxy.policy.loader import STANDARD_METHODS


def _load(text: str) -> tuple[Policy, list[Diagnostic]]:
    return parse_policy(textwrap.dedent(text).lstrip("\n"), file="p.yaml")


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(text)
    assert all(d.severity == "error" for d in info.value.diagnostics)
    return [str(d) for d in info.value.diagnostics]


def _warnings(text: str) -> list[str]:
    _, warnings = _load(text)
    assert all(d.severity == "warning" for d in warnings)
    return [str(d) for d in warnings]


RULE = """
rules:
  - name: r
    match: {status: 503}
    action: failover
"""

# (id, policy text, the one error expected)
ERRORS = [
    ("top-not-mapping", "- 1\n- 2\n",
     "p.yaml:1:1: a policy file must be a mapping with a 'rules' list, got a list"),
    ("top-scalar", "hello\n",
     "p.yaml:1:1: a policy file must be a mapping with a 'rules' list, got the string 'hello'"),
    ("unknown-top-key", RULE + "defaults: {}\n",
     "p.yaml:5:1: unknown key 'defaults'; allowed keys: rules"),
    ("unknown-top-key-hint", RULE + "rulez: []\n",
     "p.yaml:5:1: unknown key 'rulez' (did you mean 'rules'?); allowed keys: rules"),
    ("missing-rules", "{}\n", "p.yaml:1:1: missing required key 'rules'"),
    ("rules-not-list", "rules: {name: a}\n",
     "p.yaml:1:8: 'rules' must be a list, got a mapping"),
    ("rules-null", "rules:\n", "p.yaml:1:7: 'rules' must be a list, got an empty value"),
    ("rule-not-mapping", "rules:\n  - stop\n",
     "p.yaml:2:5: rule #1 must be a mapping with name, match and action, got the string 'stop'"),
    ("name-missing", """
        rules:
          - match: {status: 503}
            action: failover
        """, "p.yaml:2:5: rule #1: missing required key 'name'"),
    ("name-not-string", """
        rules:
          - name: 503
            match: {status: 503}
            action: failover
        """, "p.yaml:2:11: rule #1: name must be a string (quote it), got the integer 503"),
    ("name-list", """
        rules:
          - name: [a]
            match: {status: 503}
            action: failover
        """, "p.yaml:2:11: rule #1: name must be a string, got a list"),
    ("name-empty", """
        rules:
          - name: ""
            match: {status: 503}
            action: failover
        """, "p.yaml:2:11: rule #1: name must not be empty"),
    ("name-duplicate", """
        rules:
          - name: same
            match: {status: 503}
            action: failover
          - name: same
            match: {status: 603}
            action: stop
        """, "p.yaml:5:11: duplicate rule name 'same' (first at 2:11)"),
    ("match-missing", """
        rules:
          - name: r
            action: failover
        """, "p.yaml:2:5: rule 'r': missing required key 'match'"),
    ("match-not-mapping", """
        rules:
          - name: r
            match: 503
            action: failover
        """, "p.yaml:3:12: rule 'r': match must be a mapping, got the integer 503"),
    ("match-unknown-key", """
        rules:
          - name: r
            match: {status: 503, methods: [INVITE]}
            action: failover
        """, ("p.yaml:3:26: rule 'r': match: unknown key 'methods' (did you mean 'method'?); "
             "allowed keys: status, method")),
    ("match-missing-status", """
        rules:
          - name: r
            match: {method: INVITE}
            action: failover
        """, "p.yaml:3:12: rule 'r': match: missing required key 'status'"),
    ("status-int-low", """
        rules:
          - name: r
            match: {status: 99}
            action: failover
        """, "p.yaml:3:21: rule 'r': status 99 is out of range 100..699"),
    ("status-int-high", """
        rules:
          - name: r
            match: {status: 700}
            action: failover
        """, "p.yaml:3:21: rule 'r': status 700 is out of range 100..699"),
    ("status-quoted-high", """
        rules:
          - name: r
            match: {status: "800"}
            action: failover
        """, "p.yaml:3:21: rule 'r': status 800 is out of range 100..699"),
    ("status-octal", """
        rules:
          - name: r
            match: {status: 0600}
            action: stop
        """, "p.yaml:3:21: rule 'r': status must be written in decimal, got '0600'"),
    ("status-class-out", """
        rules:
          - name: r
            match: {status: "7xx"}
            action: failover
        """, "p.yaml:3:21: rule 'r': status class '7xx' is out of range 1xx..6xx"),
    ("status-class-zero", """
        rules:
          - name: r
            match: {status: "0xx"}
            action: failover
        """, "p.yaml:3:21: rule 'r': status class '0xx' is out of range 1xx..6xx"),
    ("status-range-reversed", """
        rules:
          - name: r
            match: {status: "599-500"}
            action: failover
        """, "p.yaml:3:21: rule 'r': status range '599-500' is reversed (write \"500-599\")"),
    ("status-range-out", """
        rules:
          - name: r
            match: {status: "600-799"}
            action: stop
        """, "p.yaml:3:21: rule 'r': status range '600-799' is out of range 100..699"),
    ("status-bad-string", """
        rules:
          - name: r
            match: {status: five-oh-three}
            action: failover
        """, ("p.yaml:3:21: rule 'r': invalid status 'five-oh-three': expected an integer "
             "100..699, a class like \"6xx\" or a range like \"500-599\"")),
    ("status-float", """
        rules:
          - name: r
            match: {status: 503.0}
            action: failover
        """, ("p.yaml:3:21: rule 'r': status must be an integer 100..699, a class like \"6xx\" "
             "or a range like \"500-599\"; got the number 503.0")),
    ("status-bool", """
        rules:
          - name: r
            match: {status: true}
            action: failover
        """, ("p.yaml:3:21: rule 'r': status must be an integer 100..699, a class like \"6xx\" "
             "or a range like \"500-599\"; got the boolean true")),
    ("status-mapping", """
        rules:
          - name: r
            match: {status: {from: 500}}
            action: failover
        """, ("p.yaml:3:21: rule 'r': status must be an integer 100..699, a class like \"6xx\" "
             "or a range like \"500-599\", or a list of them; got a mapping")),
    ("status-empty-list", """
        rules:
          - name: r
            match: {status: []}
            action: failover
        """, "p.yaml:3:21: rule 'r': an empty status list matches nothing"),
    ("status-nested-list", """
        rules:
          - name: r
            match: {status: [503, [500]]}
            action: failover
        """, ("p.yaml:3:27: rule 'r': a status list item must be an integer 100..699, a class "
             "like \"6xx\" or a range like \"500-599\", got a list")),
    ("status-list-bad-item", """
        rules:
          - name: r
            match: {status: [503, 1000]}
            action: failover
        """, "p.yaml:3:27: rule 'r': status 1000 is out of range 100..699"),
    ("method-lowercase", """
        rules:
          - name: r
            match: {status: 503, method: invite}
            action: failover
        """, ("p.yaml:3:34: rule 'r': method 'invite' must be uppercase (SIP methods are "
             "case-sensitive, RFC 3261 7.1): 'INVITE'")),
    ("method-star", """
        rules:
          - name: r
            match: {status: 503, method: "*"}
            action: failover
        """, ("p.yaml:3:34: rule 'r': method '*' is not a wildcard; leave 'method' out to match "
             "every method")),
    ("method-not-token", """
        rules:
          - name: r
            match: {status: 503, method: "IN VITE"}
            action: failover
        """, ("p.yaml:3:34: rule 'r': invalid method 'IN VITE': a SIP method is a token such as "
             "INVITE (RFC 3261 25.1)")),
    ("method-empty-list", """
        rules:
          - name: r
            match: {status: 503, method: []}
            action: failover
        """, "p.yaml:3:34: rule 'r': an empty method list matches nothing"),
    ("method-int", """
        rules:
          - name: r
            match: {status: 503, method: [INVITE, 5]}
            action: failover
        """, ("p.yaml:3:43: rule 'r': method must be a SIP method name like INVITE, or a list of "
             "them; got the integer 5")),
    ("action-missing", """
        rules:
          - name: r
            match: {status: 503}
        """, "p.yaml:2:5: rule 'r': missing required key 'action'"),
    ("action-unknown", """
        rules:
          - name: r
            match: {status: 503}
            action: reject
        """, ("p.yaml:4:13: rule 'r': unknown action 'reject'; expected one of: redirect, "
             "retry_flows, stop, failover, forward")),
    ("action-case", """
        rules:
          - name: r
            match: {status: 503}
            action: Failover
        """, ("p.yaml:4:13: rule 'r': unknown action 'Failover'; expected one of: redirect, "
             "retry_flows, stop, failover, forward")),
    ("action-not-string", """
        rules:
          - name: r
            match: {status: 503}
            action: [stop]
        """, ("p.yaml:4:13: rule 'r': action must be one of: redirect, retry_flows, stop, "
             "failover, forward; got a list")),
    ("permanent-on-stop", """
        rules:
          - name: r
            match: {status: 603}
            action: stop
            permanent: true
        """, "p.yaml:5:5: rule 'r': 'permanent' applies only to action redirect, not stop"),
    ("max-redirects-on-retry", """
        rules:
          - name: r
            match: {status: 430}
            action: retry_flows
            max_redirects: 2
        """, ("p.yaml:5:5: rule 'r': 'max_redirects' applies only to action redirect, "
             "not retry_flows")),
    ("max-attempts-on-redirect", """
        rules:
          - name: r
            match: {status: 302}
            action: redirect
            max_attempts: 2
        """, ("p.yaml:5:5: rule 'r': 'max_attempts' applies only to action retry_flows, "
             "not redirect")),
    ("permanent-yes", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            permanent: yes
        """, "p.yaml:5:16: rule 'r': permanent must be true or false, got 'yes'"),
    ("permanent-quoted", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            permanent: "true"
        """, "p.yaml:5:16: rule 'r': permanent must be true or false, got 'true'"),
    ("permanent-int", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            permanent: 1
        """, "p.yaml:5:16: rule 'r': permanent must be true or false, got '1'"),
    ("max-redirects-zero", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirects: 0
        """, "p.yaml:5:20: rule 'r': max_redirects must be between 1 and 10, got 0"),
    ("max-redirects-eleven", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirects: 11
        """, "p.yaml:5:20: rule 'r': max_redirects must be between 1 and 10, got 11"),
    ("max-redirects-string", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirects: "3"
        """, "p.yaml:5:20: rule 'r': max_redirects must be an integer, got the string '3'"),
    ("max-redirects-float", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirects: 2.5
        """, "p.yaml:5:20: rule 'r': max_redirects must be an integer, got the number 2.5"),
    ("max-redirects-bool", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirects: true
        """, "p.yaml:5:20: rule 'r': max_redirects must be an integer, got the boolean true"),
    ("max-redirects-hex", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirects: 0x3
        """, "p.yaml:5:20: rule 'r': max_redirects must be a decimal integer, got '0x3'"),
    ("max-attempts-zero", """
        rules:
          - name: r
            match: {status: 430}
            action: retry_flows
            max_attempts: 0
        """, "p.yaml:5:19: rule 'r': max_attempts must be between 1 and 10, got 0"),
    ("max-attempts-high", """
        rules:
          - name: r
            match: {status: 430}
            action: retry_flows
            max_attempts: 42
        """, "p.yaml:5:19: rule 'r': max_attempts must be between 1 and 10, got 42"),
    ("unknown-rule-key", """
        rules:
          - name: r
            match: {status: 301}
            action: redirect
            max_redirect: 2
        """, ("p.yaml:5:5: rule 'r': unknown key 'max_redirect' (did you mean 'max_redirects'?); "
             "allowed keys: name, match, action, permanent, max_redirects, max_attempts")),
    ("unknown-rule-key-no-hint", """
        rules:
          - name: r
            match: {status: 503}
            action: failover
            comment: pbx down
        """, ("p.yaml:5:5: rule 'r': unknown key 'comment'; allowed keys: name, match, action, "
             "permanent, max_redirects, max_attempts")),
    ("duplicate-key", """
        rules:
          - name: r
            match: {status: 503}
            action: failover
            action: stop
        """, "p.yaml:5:5: duplicate key 'action' (first at 4:5)"),
    ("duplicate-key-flow", """
        rules:
          - name: r
            match: {status: 503, status: 500}
            action: failover
        """, "p.yaml:3:26: duplicate key 'status' (first at 3:13)"),
    ("key-not-string", """
        rules:
          - name: r
            match: {status: 503}
            action: failover
            3: x
        """, "p.yaml:5:5: a key must be a string, got the integer 3"),
    ("key-is-list", """
        rules:
          - name: r
            match: {status: 503}
            action: failover
            ? [a]
            : x
        """, "p.yaml:5:7: a key must be a plain string, not a list or mapping"),
    ("merge-key", """
        rules:
          - name: r
            <<: {action: stop}
            match: {status: 503}
            action: failover
        """, "p.yaml:3:5: YAML merge keys (<<) are not supported"),
    ("tag", """
        rules:
          - name: r
            match: {status: 503}
            action: !!python/name:os.system failover
        """, "p.yaml:4:13: unsupported YAML tag tag:yaml.org,2002:python/name:os.system"),
    ("syntax", """
        rules:
          - name: r
            match: {status: 503
            action: failover
        """, ("p.yaml:4:11: YAML syntax error: expected ',' or '}', but got ':' (while parsing a "
             "flow mapping at 3:12)")),
    ("tab", "rules:\n\t- name: r\n",
     ("p.yaml:2:1: YAML syntax error: found character '\\t' that cannot start any token "
     "(while scanning for the next token)")),
    ("two-documents", RULE + "---\n" + RULE.lstrip("\n"),
     ("p.yaml:5:1: YAML syntax error: expected a single document in the stream, but found "
     "another document")),
    ("empty-file", "", "p.yaml:1:1: the file is empty"),
    ("comments-only", "# nothing here\n", "p.yaml:1:1: the file is empty"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS],
                         ids=[i for i, _, _ in ERRORS])
def test_validation_error(text: str, expected: str) -> None:
    assert _errors(text) == [expected]


def test_anchor_and_alias_are_refused() -> None:
    text = """
        statuses: &fail [500, 503]
        rules:
          - name: r
            match: {status: *fail}
            action: failover
        """
    assert _errors(text) == [
        "p.yaml:1:11: YAML anchors are not supported (&fail): write the value out",
        "p.yaml:4:21: YAML aliases are not supported (*fail): write the value out",
    ]


def test_undefined_alias_is_a_syntax_error() -> None:
    errors = _errors("rules: *nothing\n")
    assert errors == ["p.yaml:1:8: YAML syntax error: found undefined alias 'nothing'"]


def test_every_error_is_reported_not_only_the_first() -> None:
    text = """
        rules:
          - name: a
            match: {status: 700}
            action: stop
          - name: b
            match: {status: 503}
            action: bounce
          - name: a
            match: {status: 500, method: bye}
            action: failover
        """
    assert _errors(text) == [
        "p.yaml:3:21: rule 'a': status 700 is out of range 100..699",
        ("p.yaml:7:13: rule 'b': unknown action 'bounce'; expected one of: redirect, "
        "retry_flows, stop, failover, forward"),
        "p.yaml:8:11: duplicate rule name 'a' (first at 2:11)",
        ("p.yaml:9:34: rule 'a': method 'bye' must be uppercase (SIP methods are case-sensitive, "
        "RFC 3261 7.1): 'BYE'"),
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_policy(missing)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{missing}:1:1: cannot read: No such file or directory"
    ]


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{tmp_path}:1:1: cannot read: Is a directory"
    ]


def test_not_utf8_names_the_position(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"rules:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_policy(f)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{f}:2:14: cannot read: the file is not valid UTF-8"
    ]


def test_relative_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("rules: 5\n")
    with pytest.raises(ConfigError) as info:
        load_policy("bad.yaml")
    assert [str(d) for d in info.value.diagnostics] == [
        "bad.yaml:1:8: 'rules' must be a list, got the integer 5"
    ]


# ---------------------------------------------------------------------------------------------
# Status forms


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("503", {503}),
        ("100", {100}),
        ("699", {699}),
        ('"503"', {503}),
        ("[500, 503]", {500, 503}),
        ('"6xx"', set(range(600, 700))),
        ('"1XX"', set(range(100, 200))),
        ("5xx", set(range(500, 600))),
        ('"500-599"', set(range(500, 600))),
        ('"480-480"', {480}),
        ('"100-699"', set(range(100, 700))),
        ('" 500 - 502 "', {500, 501, 502}),
        ('[408, "5xx", "600-603"]', {408, *range(500, 600), 600, 601, 602, 603}),
        ('[503, 503, "503-503"]', {503}),
    ],
)
def test_status_forms(form: str, expected: set[int]) -> None:
    policy, warnings = _load(f"""
        rules:
          - name: r
            match: {{status: {form}}}
            action: forward
        """)
    assert warnings == []
    assert policy.rules[0].statuses == frozenset(expected)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("INVITE", {"INVITE"}),
        ("[INVITE, BYE]", {"INVITE", "BYE"}),
        ("PUBLISH", {"PUBLISH"}),
        ("X-CUSTOM.1", {"X-CUSTOM.1"}),
    ],
)
def test_method_forms(form: str, expected: set[str]) -> None:
    policy, _ = _load(f"""
        rules:
          - name: r
            match: {{status: 503, method: {form}}}
            action: failover
        """)
    assert policy.rules[0].methods == frozenset(expected)


def test_rule_without_method_matches_every_method() -> None:
    policy, _ = _load(RULE)
    assert policy.rules[0].methods is None


def test_options_are_read() -> None:
    policy, warnings = _load("""
        rules:
          - name: moved
            match: {status: 301}
            action: redirect
            permanent: true
            max_redirects: 10
          - name: flows
            match: {status: 430}
            action: retry_flows
            max_attempts: 1
        """)
    assert warnings == []
    moved, flows = policy.rules
    assert (moved.action, moved.permanent, moved.max_redirects) == (Action.REDIRECT, True, 10)
    assert (flows.action, flows.max_attempts) == (Action.RETRY_FLOWS, 1)
    assert (moved.line, moved.column, flows.line, flows.column) == (2, 5, 7, 5)


def test_option_defaults() -> None:
    policy, _ = _load("""
        rules:
          - name: moved
            match: {status: 302}
            action: redirect
        """)
    rule = policy.rules[0]
    assert (rule.permanent, rule.max_redirects, rule.max_attempts) == (False, 3, 3)


# ---------------------------------------------------------------------------------------------
# Warnings


def test_shadowed_by_a_catch_all() -> None:
    assert _warnings("""
        rules:
          - name: catch-all
            match: {status: "100-699"}
            action: forward
          - name: never
            match: {status: 503}
            action: failover
        """) == [
        ("p.yaml:5:5: warning: rule 'never' can never match: earlier rule 'catch-all' already "
        "matches every status and method it matches")
    ]


def test_shadowed_by_several_rules_together() -> None:
    assert _warnings("""
        rules:
          - name: low
            match: {status: "500-549"}
            action: failover
          - name: unrelated
            match: {status: 404}
            action: forward
          - name: high
            match: {status: "550-599"}
            action: failover
          - name: all-5xx
            match: {status: "5xx"}
            action: stop
        """) == [
        ("p.yaml:11:5: warning: rule 'all-5xx' can never match: earlier rules 'low', 'high' "
        "already match every status and method it matches")
    ]


def test_partly_covered_rule_is_not_shadowed() -> None:
    assert _warnings("""
        rules:
          - name: some
            match: {status: [500, 503]}
            action: failover
          - name: all-5xx
            match: {status: "5xx"}
            action: forward
        """) == []


def test_method_specific_earlier_rule_does_not_shadow_a_generic_rule() -> None:
    assert _warnings("""
        rules:
          - name: invite-only
            match: {status: "5xx", method: [INVITE, BYE, REGISTER]}
            action: failover
          - name: any-method
            match: {status: 503}
            action: forward
        """) == []


def test_method_specific_rule_shadowed_by_earlier_method_rules() -> None:
    assert _warnings("""
        rules:
          - name: invite
            match: {status: 503, method: INVITE}
            action: failover
          - name: bye
            match: {status: "5xx", method: [BYE, OPTIONS]}
            action: forward
          - name: both
            match: {status: 503, method: [BYE, INVITE]}
            action: stop
        """) == [
        ("p.yaml:8:5: warning: rule 'both' can never match: earlier rules 'invite', 'bye' "
        "already match every status and method it matches")
    ]


def test_method_rule_shadowed_by_earlier_generic_rule() -> None:
    assert _warnings("""
        rules:
          - name: any
            match: {status: 503}
            action: failover
          - name: invite
            match: {status: 503, method: INVITE}
            action: stop
        """) == [
        ("p.yaml:5:5: warning: rule 'invite' can never match: earlier rule 'any' already matches "
        "every status and method it matches")
    ]


def test_redirect_on_non_3xx_warns() -> None:
    assert _warnings("""
        rules:
          - name: r
            match: {status: ["3xx", 404, "480-486"]}
            action: redirect
        """) == [
        ("p.yaml:2:5: warning: rule 'r': redirect needs the Contacts of a 3xx (RFC 3261 21.3); "
        "404, 480-486 cannot be redirected")
    ]


def test_non_forward_action_on_1xx_2xx_warns() -> None:
    assert _warnings("""
        rules:
          - name: everything-fails-over
            match: {status: "100-699"}
            action: failover
        """) == [
        ("p.yaml:2:5: warning: rule 'everything-fails-over': action failover does not apply to "
        "100-299: 1xx and 2xx responses are never held back (RFC 3261 16.7 step 5)")
    ]


def test_ack_and_cancel_methods_warn() -> None:
    assert _warnings("""
        rules:
          - name: r
            match: {status: 503, method: [INVITE, ACK, CANCEL]}
            action: failover
        """) == [
        ("p.yaml:3:43: warning: rule 'r': the policy never sees responses to ACK "
        "(RFC 3261 16.10, 17.1.1.3)"),
        ("p.yaml:3:48: warning: rule 'r': the policy never sees responses to CANCEL "
        "(RFC 3261 16.10, 17.1.1.3)"),
    ]


@pytest.mark.parametrize("method", sorted(set(STANDARD_METHODS) - {"ACK", "CANCEL"}))
def test_standard_methods_do_not_warn(method: str) -> None:
    assert _warnings(f"""
        rules:
          - name: r
            match: {{status: 503, method: {method}}}
            action: failover
        """) == []


def test_standard_methods_are_the_fourteen_of_the_sip_rfcs() -> None:
    assert sorted(STANDARD_METHODS) == sorted(
        "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER "
        "MESSAGE UPDATE".split()
    )


@pytest.mark.parametrize(
    ("method", "suggestion"),
    [
        ("INVTE", "INVITE"),
        ("INIVTE", "INVITE"),
        ("REGSITER", "REGISTER"),
        ("SUSCRIBE", "SUBSCRIBE"),
        ("OPTION", "OPTIONS"),
        ("MESAGE", "MESSAGE"),
        ("BYEE", "BYE"),
    ],
)
def test_misspelt_method_warns_with_the_closest_standard_method(
    method: str, suggestion: str
) -> None:
    policy, warnings = _load(f"""
        rules:
          - name: r
            match: {{status: 503, method: {method}}}
            action: failover
        """)
    assert policy.rules[0].methods == frozenset({method})  # allowed: only a warning
    assert [str(w) for w in warnings] == [
        f"p.yaml:3:34: warning: rule 'r': method {method!r} is not a standard SIP method; "
        f"did you mean {suggestion}?"
    ]


@pytest.mark.parametrize("method", ["FOO", "X-CUSTOM.1", "XYZZY"])
def test_extension_method_warns_without_a_suggestion(method: str) -> None:
    assert _warnings(f"""
        rules:
          - name: r
            match: {{status: 503, method: {method}}}
            action: failover
        """) == [
        f"p.yaml:3:34: warning: rule 'r': method {method!r} is not a standard SIP method "
        "(allowed as an extension method: check the spelling)"
    ]


def test_unknown_method_in_a_list_is_warned_at_its_position() -> None:
    assert _warnings("""
        rules:
          - name: r
            match:
              status: 503
              method:
                - INVITE
                - BYE
                - UPDTE
            action: failover
        """) == [
        ("p.yaml:8:11: warning: rule 'r': method 'UPDTE' is not a standard SIP method; did you "
         "mean UPDATE?")
    ]


def test_empty_rule_list_warns_and_forwards_everything() -> None:
    policy, warnings = _load("rules: []\n")
    assert [str(w) for w in warnings] == [
        "p.yaml:1:8: warning: the policy has no rules: every final response is forwarded"
    ]
    assert policy.evaluate(603, "INVITE").action is Action.FORWARD


def test_warning_text_has_the_warning_prefix() -> None:
    d = Diagnostic("f.yaml", 3, 7, "something odd", "warning")
    assert str(d) == "f.yaml:3:7: warning: something odd"
    assert str(Diagnostic("f.yaml", 3, 7, "bad")) == "f.yaml:3:7: bad"


# ---------------------------------------------------------------------------------------------
# Version


def test_version_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    data = textwrap.dedent(RULE).lstrip("\n").encode()
    f.write_bytes(data)
    policy, _ = load_policy(f)
    assert policy.version == hashlib.sha256(data).hexdigest()[:12]
    assert policy.path == str(f)


def test_version_changes_with_the_file_even_for_a_comment(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(RULE))
    v1 = load_policy(f)[0].version
    assert load_policy(f)[0].version == v1  # same bytes, same version
    f.write_text(textwrap.dedent(RULE) + "# tuned\n")
    v2 = load_policy(f)[0].version
    f.write_text(textwrap.dedent(RULE).replace("503", "500"))
    v3 = load_policy(f)[0].version
    assert len({v1, v2, v3}) == 3
    assert all(len(v) == 12 and int(v, 16) >= 0 for v in (v1, v2, v3))
