"""The second form of the policy file (routes, conditions, new options, tests): every error
with its exact message and FILE:LINE:COLUMN, the warnings, and what a loaded file holds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.diagnostics import ConfigError
from proxy.policy import Action, Decision, NoAnswer, Policy, load_policy, parse_policy

GROUPS = ("pbx", "voicemail", "carrier")


def _load(text: str, groups: tuple[str, ...] | None = GROUPS) -> tuple[Policy, list[str]]:
    policy, warnings = parse_policy(textwrap.dedent(text).lstrip("\n"), file="p.yaml",
                                    groups=groups)
    return policy, [str(w) for w in warnings]


def _errors(text: str, groups: tuple[str, ...] | None = GROUPS) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(text, groups)
    assert all(d.severity == "error" for d in info.value.diagnostics)
    return [str(d) for d in info.value.diagnostics]


RULES = """
rules:
  - name: all
    match: {status: "100-699"}
    action: forward
"""

# (id, policy text, the one error expected)
ERRORS = [
    ("route-unknown-group", RULES + """routes:
  - name: r
    group: pbxx
""", ("p.yaml:7:12: route 'r': group: unknown upstream group 'pbxx' (did you mean 'pbx'?); "
      "the configuration's groups: pbx, voicemail, carrier")),
    ("route-missing-group", RULES + """routes:
  - name: r
    match: {ruri_user: "1"}
""", "p.yaml:6:5: route 'r': missing required key 'group'"),
    ("route-bad-group-name", RULES + """routes:
  - name: r
    group: "pbx a"
""", ("p.yaml:7:12: route 'r': group: 'pbx a' is not an upstream group name (letters, "
      "digits, '_', '.', '-')")),
    ("route-status", RULES + """routes:
  - name: r
    match: {status: 486}
    group: pbx
""", ("p.yaml:7:13: route 'r': match: 'status' is about responses: a route picks where a "
      "request goes; match on it in a rule")),
    ("route-unknown-match-key", RULES + """routes:
  - name: r
    match: {ruri: "1"}
    group: pbx
""", ("p.yaml:7:13: route 'r': match: unknown key 'ruri' (did you mean 'ruri_user'?); allowed "
      "keys: method, ruri_user, from_user, to_user, source, header, time")),
    ("route-duplicate-name", RULES + """routes:
  - name: r
    group: pbx
  - name: r
    group: voicemail
""", "p.yaml:8:11: duplicate route name 'r' (first at 6:11)"),
    ("regex-does-not-compile", RULES + """routes:
  - name: r
    match: {ruri_user: "(911|112"}
    group: pbx
""", ("p.yaml:7:24: route 'r': match: ruri_user: the regular expression '(911|112' does not "
      "compile: missing ), unterminated subpattern at position 0")),
    ("regex-not-a-string", RULES + """routes:
  - name: r
    match: {from_user: [a]}
    group: pbx
""", ("p.yaml:7:24: route 'r': match: from_user must be a regular expression (a string), "
      "got a list")),
    ("source-neither", RULES + """routes:
  - name: r
    match: {source: [10.0.0.0/8, "10.0.0.0/33"]}
    group: pbx
""", ("p.yaml:7:34: route 'r': match: source: '10.0.0.0/33' is neither an IP network (like "
      "10.0.0.0/8 or 192.0.2.7) nor an upstream group name")),
    ("source-unknown-group", RULES + """routes:
  - name: r
    match: {source: [carriers]}
    group: pbx
""", ("p.yaml:7:22: route 'r': match: source: unknown upstream group 'carriers' (did you mean "
      "'carrier'?); the configuration's groups: pbx, voicemail, carrier")),
    ("header-bad-name", RULES + """routes:
  - name: r
    match: {header: {"X Tenant": "a"}}
    group: pbx
""", "p.yaml:7:22: route 'r': match: header: 'X Tenant' is not a header name (RFC 3261 7.3.1)"),
    ("header-twice-compact", RULES + """routes:
  - name: r
    match: {header: {From: "a", f: "b"}}
    group: pbx
""", "p.yaml:7:33: route 'r': match: header: 'f' is the header 'From' again (first at 7:22)"),
    ("time-empty-window", RULES + """routes:
  - name: r
    match: {time: {between: "08:00-08:00"}}
    group: pbx
""", ("p.yaml:7:29: route 'r': match: time: between: '08:00-08:00' is empty and never matches "
      "(the end is excluded; the whole day is \"00:00-24:00\")")),
    ("time-bad-hour", RULES + """routes:
  - name: r
    match: {time: {between: "08:00-24:30"}}
    group: pbx
""", ("p.yaml:7:29: route 'r': match: time: between: '08:00-24:30' is not a time of day "
      "HH:MM-HH:MM (00:00 to 23:59, and 24:00 as the end)")),
    ("time-start-24", RULES + """routes:
  - name: r
    match: {time: {between: "24:00-08:00"}}
    group: pbx
""", ("p.yaml:7:29: route 'r': match: time: between: '24:00-08:00' is not a time of day "
      "HH:MM-HH:MM (00:00 to 23:59, and 24:00 as the end)")),
    ("time-between-unquoted-sexagesimal", RULES + """routes:
  - name: r
    match: {time: {between: 8:00}}
    group: pbx
""", ("p.yaml:7:29: route 'r': match: time: between must be a string like \"08:00-18:00\", got "
      "the integer 8:00")),
    ("time-no-days", RULES + """routes:
  - name: r
    match: {time: {days: []}}
    group: pbx
""", ("p.yaml:7:26: route 'r': match: time: days: an empty list never matches (leave 'days' "
      "out for every day)")),
    ("time-bad-day", RULES + """routes:
  - name: r
    match: {time: {days: [mon, funday]}}
    group: pbx
""", ("p.yaml:7:32: route 'r': match: time: days: expected a day (mon, tue, wed, thu, fri, "
      "sat, sun) or a span of days like mon-fri, got the string 'funday'")),
    ("time-tz-only", RULES + """routes:
  - name: r
    match: {time: {tz: Europe/Berlin}}
    group: pbx
""", "p.yaml:7:19: route 'r': match: time needs 'days', 'between' or both"),
    ("time-unknown-tz", RULES + """routes:
  - name: r
    match: {time: {days: [mon], tz: Europe/Berln}}
    group: pbx
""", ("p.yaml:7:37: route 'r': match: time: tz: unknown time zone 'Europe/Berln' (did you mean "
      "'Europe/Berlin'?); an IANA name like Europe/Berlin or America/New_York")),
    ("time-unknown-key", RULES + """routes:
  - name: r
    match: {time: {day: [mon]}}
    group: pbx
""", ("p.yaml:7:20: route 'r': match: time: unknown key 'day' (did you mean 'days'?); allowed "
      "keys: days, between, tz")),
    ("no-answer-missing-to", RULES + """routes:
  - name: r
    group: pbx
    no_answer: {after: 20}
""", "p.yaml:8:16: route 'r': no_answer: missing required key 'to'"),
    ("no-answer-after-range", RULES + """routes:
  - name: r
    group: pbx
    no_answer: {after: 0, to: voicemail}
""", "p.yaml:8:24: route 'r': no_answer: after must be between 1 and 3600, got 0"),
    ("no-answer-bad-diversion", RULES + """routes:
  - name: r
    group: pbx
    no_answer: {after: 20, to: voicemail, diversion: noanswer}
""", ("p.yaml:8:54: route 'r': no_answer: diversion: 'noanswer' is not a Diversion reason of "
      "RFC 5806 (did you mean 'no-answer'?); expected one of: unknown, user-busy, no-answer, "
      "unavailable, unconditional, time-of-day, do-not-disturb, deflection, follow-me, "
      "out-of-service, away")),
    ("rule-unknown-upstream", """
rules:
  - name: r
    match: {status: 486, upstream: [pbx, vm]}
    action: stop
""", ("p.yaml:3:42: rule 'r': match: upstream: unknown upstream group 'vm'; the "
      "configuration's groups: pbx, voicemail, carrier")),
    ("failover-unknown-to", """
rules:
  - name: r
    match: {status: 486}
    action: failover
    to: voicemai
""", ("p.yaml:5:9: rule 'r': to: unknown upstream group 'voicemai' (did you mean 'voicemail'?); "
      "the configuration's groups: pbx, voicemail, carrier")),
    ("to-on-stop", """
rules:
  - name: r
    match: {status: 486}
    action: stop
    to: voicemail
""", "p.yaml:5:5: rule 'r': 'to' applies only to action failover, not stop"),
    ("diversion-without-to", """
rules:
  - name: r
    match: {status: 486}
    action: failover
    diversion: user-busy
""", ("p.yaml:5:5: rule 'r': 'diversion' needs 'to': a Diversion tells the group the call goes "
      "on with where it was going (RFC 5806)")),
    ("diversion-bad-reason", """
rules:
  - name: r
    match: {status: 486}
    action: failover
    to: voicemail
    diversion: busy
""", ("p.yaml:6:16: rule 'r': diversion: 'busy' is not a Diversion reason of RFC 5806 (did "
      "you mean 'user-busy'?); "
      "expected one of: unknown, user-busy, no-answer, unavailable, unconditional, "
      "time-of-day, do-not-disturb, deflection, follow-me, out-of-service, away")),
    ("hold-down-range", """
rules:
  - name: r
    match: {status: 503}
    action: failover
    hold_down: 7200
""", "p.yaml:5:16: rule 'r': hold_down must be between 1 and 3600, got 7200"),
    ("reply-without-status", """
rules:
  - name: r
    match: {status: "3xx"}
    action: reply
""", "p.yaml:2:5: rule 'r': action reply needs 'status': the status the caller gets instead"),
    ("reply-2xx", """
rules:
  - name: r
    match: {status: "3xx"}
    action: reply
    status: 200
""", ("p.yaml:5:13: rule 'r': status 200: a reply must be a failure 400..699 (a 2xx would claim "
      "a call nobody answered, a 1xx is not final, a 3xx needs Contacts)")),
    ("reply-out-of-range", """
rules:
  - name: r
    match: {status: "3xx"}
    action: reply
    status: 999
""", "p.yaml:5:13: rule 'r': status must be between 100 and 699, got 999"),
    ("reply-reason-control", """
rules:
  - name: r
    match: {status: "3xx"}
    action: reply
    status: 404
    reason: "Not\\r\\nFound"
""", ("p.yaml:6:13: rule 'r': reason must be a phrase of printable characters, 1 to 128 "
      "(RFC 3261 25.1 Reason-Phrase), got the string 'Not\\r\\nFound'")),
    ("status-on-failover", """
rules:
  - name: r
    match: {status: 503}
    action: failover
    status: 480
""", "p.yaml:5:5: rule 'r': 'status' applies only to action reply, not failover"),
    ("permanent-on-reply", """
rules:
  - name: r
    match: {status: 301}
    action: reply
    status: 404
    permanent: true
""", "p.yaml:6:5: rule 'r': 'permanent' applies only to action redirect, not reply"),
    ("rule-header-not-mapping", """
rules:
  - name: r
    match: {status: 503, header: Retry-After}
    action: failover
""", "p.yaml:3:34: rule 'r': match: header must be a mapping, got the string 'Retry-After'"),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_validation_error(text: str, expected: str) -> None:
    assert _errors(text) == [expected]


def test_groups_are_not_checked_without_a_configuration() -> None:
    policy, warnings = _load(RULES + """routes:
  - name: r
    match: {source: [anything]}
    group: nowhere
""", groups=None)
    assert warnings == []
    assert policy.routes[0].group == "nowhere"


def test_unknown_group_in_a_test_expectation() -> None:
    assert _errors(RULES + """tests:
  - name: t
    request: {ruri: "sip:1@x"}
    group: pbz
""") == [("p.yaml:8:12: test 't': group: unknown upstream group 'pbz' (did you mean 'pbx'?); "
          "the configuration's groups: pbx, voicemail, carrier")]


# -- the first form's messages stay those of the first form ----------------------------------


def test_a_first_form_file_is_told_the_first_form_keys() -> None:
    assert _errors("""
        rules:
          - name: r
            match: {status: 503}
            action: failover
            comment: x
        """) == [("p.yaml:5:5: rule 'r': unknown key 'comment'; allowed keys: name, match, "
                  "action, permanent, max_redirects, max_attempts")]


def test_a_second_form_file_is_told_every_key() -> None:
    assert _errors("""
        rules:
          - name: r
            match: {status: 503}
            action: failover
            hold_down: 5
            comment: x
        """) == [("p.yaml:6:5: rule 'r': unknown key 'comment'; allowed keys: name, match, "
                  "action, permanent, max_redirects, max_attempts, to, diversion, hold_down, "
                  "status, reason")]


def test_a_misspelt_second_form_key_in_a_first_form_file_lists_every_key() -> None:
    assert _errors("""
        rules:
          - name: r
            match: {status: 503}
            action: failover
            hold_dwn: 5
        """) == [("p.yaml:5:5: rule 'r': unknown key 'hold_dwn' (did you mean 'hold_down'?); "
                  "allowed keys: name, match, action, permanent, max_redirects, max_attempts, "
                  "to, diversion, hold_down, status, reason")]


def test_a_misspelt_routes_key_is_not_taken_for_rules() -> None:
    assert _errors(RULES + "route: []\n") == [
        "p.yaml:5:1: unknown key 'route' (did you mean 'routes'?); allowed keys: rules, "
        "routes, tests"]


def test_unknown_action_lists_reply_in_a_second_form_file_or_when_close() -> None:
    assert _errors("""
        rules:
          - name: r
            match: {status: 503}
            action: replay
        """) == [("p.yaml:4:13: rule 'r': unknown action 'replay'; expected one of: redirect, "
                  "retry_flows, stop, failover, forward, reply")]
    assert _errors("""
        rules:
          - name: r
            match: {status: 503, upstream: pbx}
            action: reject
        """) == [("p.yaml:4:13: rule 'r': unknown action 'reject'; expected one of: redirect, "
                  "retry_flows, stop, failover, forward, reply")]


# -- what a loaded file holds -----------------------------------------------------------------


def test_the_options_of_the_new_actions_are_read() -> None:
    policy, warnings = _load("""
        rules:
          - name: busy
            match: {status: 486, upstream: pbx}
            action: failover
            to: voicemail
            diversion: user-busy
          - name: overloaded
            match: {status: 503}
            action: failover
            hold_down: 60
          - name: hide
            match: {status: "5xx", upstream: carrier}
            action: reply
            status: 480
            reason: Temporarily Unavailable
            hold_down: 2.5
        """)
    assert warnings == []
    busy, overloaded, hide = (r.decision for r in policy.rules)
    assert busy == Decision(Action.FAILOVER, "busy", to="voicemail", diversion="user-busy")
    assert overloaded == Decision(Action.FAILOVER, "overloaded", hold_down=60)
    assert hide == Decision(Action.STOP, "hide", reply=480, reason="Temporarily Unavailable",
                            hold_down=2.5)
    assert hide.verb == "reply" and busy.verb == "failover"
    assert busy.describe() == "busy: failover (to=voicemail, diversion=user-busy)"
    assert overloaded.describe() == "overloaded: failover (hold_down=60)"
    assert hide.describe() == ("hide: reply (status=480, reason='Temporarily Unavailable', "
                               "hold_down=2.5)")


def test_routes_are_read_in_order_with_their_no_answer() -> None:
    policy, _ = _load(RULES + """routes:
  - name: emergency
    match: {ruri_user: "(911|112)", method: [INVITE]}
    group: carrier
  - name: office
    match: {ruri_user: "1[0-9]{3}", source: [10.0.0.0/8, pbx], time: {days: [mon-fri]}}
    group: pbx
    no_answer: {after: 20, to: voicemail, diversion: no-answer}
""")
    emergency, office = policy.routes
    assert (emergency.name, emergency.group, emergency.methods) == (
        "emergency", "carrier", frozenset({"INVITE"}))
    assert office.no_answer == NoAnswer(20.0, "voicemail", "no-answer")
    assert office.match_text() == ("ruri_user 1[0-9]{3} source 10.0.0.0/8, pbx time mon-fri "
                                   "UTC")
    assert (office.line, office.column) == (9, 5)


def test_days_spans_over_the_end_of_the_week() -> None:
    policy, _ = _load(RULES + """routes:
  - name: r
    match: {time: {days: [fri-mon, Wed]}}
    group: pbx
""")
    window = policy.routes[0].when.time  # type: ignore[union-attr]
    assert window is not None
    assert [window.contains_local(d, 600) for d in range(7)] == [
        True, False, True, False, True, True, True]
    assert window.text() == "mon, wed, fri-sun UTC"


def test_the_flags_the_core_reads() -> None:
    first_form, _ = _load(RULES)
    assert (first_form.needs_request, first_form.request_headers, first_form.response_headers,
            first_form.uses_time) == (False, (), (), False)
    policy, _ = _load("""
        routes:
          - name: r
            match: {header: {X-Tenant: "blue", f: "x"}}
            group: pbx
        rules:
          - name: a
            match: {status: 503, header: {Retry-After: "[0-9]+"}}
            action: failover
          - name: b
            match: {status: 486, from_user: "1.*", time: {days: [sat]}}
            action: stop
        """)
    assert policy.request_headers == ("x-tenant", "from")
    assert policy.response_headers == ("retry-after",)
    assert policy.needs_request and policy.uses_time


# -- warnings -------------------------------------------------------------------------------


def test_a_conditional_rule_shadowed_by_a_weaker_earlier_one_warns() -> None:
    _, warnings = _load("""
        rules:
          - name: pbx-busy
            match: {status: [486, 600], upstream: [pbx, voicemail]}
            action: stop
          - name: pbx-busy-invite
            match: {status: 486, method: INVITE, upstream: pbx, time: {days: [mon]}}
            action: failover
          - name: rest
            match: {status: "100-699"}
            action: forward
        """)
    assert warnings == [("p.yaml:5:5: warning: rule 'pbx-busy-invite' can never match: earlier "
                         "rule 'pbx-busy' already matches every response it matches")]


def test_a_rule_with_a_stronger_earlier_condition_is_not_shadowed() -> None:
    _, warnings = _load("""
        rules:
          - name: pbx-busy
            match: {status: 486, upstream: pbx}
            action: stop
          - name: any-busy
            match: {status: 486}
            action: failover
          - name: night-busy
            match: {status: 486, upstream: [pbx, carrier], time: {days: [sun]}}
            action: failover
        """)
    # any-busy is taken for pbx only; night-busy is shadowed by any-busy (no conditions)
    assert warnings == [("p.yaml:8:5: warning: rule 'night-busy' can never match: earlier rule "
                         "'any-busy' already matches every response it matches")]


def test_a_shadowed_route_warns() -> None:
    _, warnings = _load(RULES + """routes:
  - name: tenants
    match: {source: [10.0.0.0/8]}
    group: pbx
  - name: tenant-1
    match: {source: [10.1.0.0/16], ruri_user: "1.*"}
    group: voicemail
  - name: other
    match: {source: [192.168.0.0/16]}
    group: voicemail
""")
    assert warnings == [("p.yaml:9:5: warning: route 'tenant-1' can never match: earlier route "
                         "'tenants' matches every request it matches")]


def test_a_regex_with_a_nested_repeat_warns() -> None:
    _, warnings = _load(RULES + """routes:
  - name: r
    match: {ruri_user: "(1[0-9]+)+", to_user: "[(]+a+", from_user: "(ab)+[0-9]*"}
    group: pbx
""")
    assert warnings == [(
        "p.yaml:7:24: warning: route 'r': match: ruri_user: the regular expression '(1[0-9]+)+' "
        "repeats a group that itself repeats (like (a+)+): matching it can take exponential "
        "time on a value a caller crafts; write it without the nesting")]


def test_tests_must_give_a_time_when_the_policy_matches_on_time() -> None:
    assert _errors("""
        rules:
          - name: night
            match: {status: 480, time: {between: "22:00-06:00"}}
            action: stop
        tests:
          - name: t
            request: {ruri: "sip:1@x"}
            answers: [480]
            expect: {rule: night}
        """) == [("p.yaml:7:14: test 't': request: give 'time' (ISO 8601 with an offset): the "
                  "policy matches on time, and a test must not depend on when it runs")]


TEST_ERRORS = [
    ("time-without-offset", "request: {ruri: \"sip:1@x\", time: \"2026-03-02T10:00:00\"}\n"
     "    group: pbx", ("p.yaml:7:38: test 't': request: time: '2026-03-02T10:00:00' has no "
                        "offset; write it with one (Z for UTC, or +01:00), or it would mean a "
                        "different instant on each machine")),
    ("bad-uri", "request: {ruri: \"1001@x\"}\n    group: pbx",
     "p.yaml:7:21: test 't': request: ruri must be a sip:, sips: or tel: URI, got '1001@x'"),
    ("bad-source", "request: {source: pbx}\n    group: pbx",
     "p.yaml:7:23: test 't': request: source must be an IP address, got the string 'pbx'"),
    ("provisional-answer", "request: {}\n    answers: [180]\n    expect: {status: 180}",
     "p.yaml:8:15: test 't': answers: a final status must be between 200 and 699, got 180"),
    ("unknown-rule", "request: {}\n    answers: [486]\n    expect: {rule: busy}",
     ("p.yaml:9:20: test 't': expect: rule must name a rule of this file, '(no rule)' (the "
      "implicit forward) or 'no_answer'; got the string 'busy'")),
    ("unknown-route", "request: {}\n    route: office",
     ("p.yaml:8:12: test 't': route must name a route of this file (there are none) or be "
      "null for none, got the string 'office'")),
    ("expect-without-answers", "request: {}\n    expect: {status: 200}",
     "p.yaml:8:13: test 't': expect is about the answers; give 'answers'"),
    ("expects-nothing", "request: {}\n    answers: [200]",
     "p.yaml:6:5: test 't': expects nothing; give route, group or expect"),
    ("bad-action", "request: {}\n    answers: [200]\n    expect: {action: bounce}",
     ("p.yaml:9:22: test 't': expect: action must be one of: redirect, retry_flows, stop, "
      "failover, forward, reply; got the string 'bounce'")),
    ("two-methods", "request: {method: [INVITE, BYE]}\n    group: pbx",
     ("p.yaml:7:23: test 't': request: method must be one method, got a list")),
]


@pytest.mark.parametrize(("body", "expected"), [e[1:] for e in TEST_ERRORS],
                         ids=[e[0] for e in TEST_ERRORS])
def test_test_errors(body: str, expected: str) -> None:
    assert _errors(RULES + f"tests:\n  - name: t\n    {body}\n") == [expected]


def test_tests_are_read() -> None:
    policy, _ = _load(RULES + """routes:
  - name: office
    group: pbx
tests:
  - name: busy
    request: {method: INVITE, ruri: "<sip:1001@example.com>", from: "\\"A\\" <sip:2@x>",
              to: "sip:1001@example.com", source: "::1", time: "2026-03-02T10:00:00+01:00",
              headers: {X-Tenant: blue, f: "sip:2@x"}}
    route: office
    group: pbx
    answers: [486, timeout, {status: 503, headers: {Retry-After: 30}}, no_answer, unreachable]
    expect: {rule: all, action: forward, to: null, status: 486}
""")
    (test,) = policy.tests
    assert (test.name, test.route, test.group, test.check_route, test.line) == (
        "busy", "office", "pbx", True, 9)
    assert test.request.wall == 1772442000.0
    assert test.request.source == "::1"
    assert test.request.headers == (("x-tenant", "blue"), ("from", "sip:2@x"))
    assert [(a.status, a.kind) for a in test.answers] == [
        (486, "response"), (408, "timeout"), (503, "response"), (0, "no_answer"),
        (503, "unreachable")]
    assert test.answers[2].header("retry-after") == "30"
    assert test.expect is not None and test.expect.to == ""


def test_load_policy_checks_groups_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(RULES + "routes:\n  - name: r\n    group: pbx\n")
    load_policy(path, ["pbx"])
    with pytest.raises(ConfigError) as info:
        load_policy(path, ["default"])
    assert [d.message for d in info.value.diagnostics] == [
        "route 'r': group: unknown upstream group 'pbx'; the configuration's groups: default"]
