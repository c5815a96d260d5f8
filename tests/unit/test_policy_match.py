"""Routes and rules with conditions: each match, time windows in their zones (DST edges, over
midnight), the per-status chains of Policy.evaluate, and the first form through the new path."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy import (
    DEFAULT_ROUTE,
    FALLBACK,
    Action,
    AnswerView,
    Decision,
    Policy,
    RequestView,
    Rule,
    TimeWindow,
    parse_policy,
)
from tests.unit import hypothesis_profiles  # noqa: F401  (registers and loads the profile)


def _policy(text: str) -> Policy:
    policy, _ = parse_policy(textwrap.dedent(text).lstrip("\n"), file="p.yaml")
    return policy


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _route(policy: Policy, wall: float | None = None, **fields: object) -> str | None:
    return policy.route(RequestView(**fields), wall).name  # type: ignore[arg-type]


ROUTES = _policy("""
    rules:
      - name: all
        match: {status: "100-699"}
        action: forward
    routes:
      - name: emergency
        match: {ruri_user: "(911|112)"}
        group: carrier
      - name: from-carrier
        match: {source: [carrier, 203.0.113.0/24, "2001:db8::/32"]}
        group: pbx
      - name: tenant
        match: {header: {X-Tenant: "blue|green"}, method: [INVITE]}
        group: pbx
      - name: caller
        match: {from_user: "\\\\+49.*", to_user: "1[0-9]{3}"}
        group: pbx
    """)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"method": "INVITE", "ruri_user": "112"}, "emergency"),
        ({"method": "INVITE", "ruri_user": "1120"}, None),  # full match, not a search
        ({"method": "INVITE", "ruri_user": "0112"}, None),
        ({"method": "MESSAGE", "ruri_user": "911"}, "emergency"),
        ({"method": "INVITE", "source_groups": frozenset({"carrier", "pbx"})}, "from-carrier"),
        ({"method": "INVITE", "source_groups": frozenset({"pbx"})}, None),
        ({"method": "INVITE", "source": "203.0.113.77"}, "from-carrier"),
        ({"method": "INVITE", "source": "::ffff:203.0.113.77"}, "from-carrier"),
        ({"method": "INVITE", "source": "2001:db8::5"}, "from-carrier"),
        ({"method": "INVITE", "source": "203.0.114.1"}, None),
        ({"method": "INVITE", "source": "not an address"}, None),
        ({"method": "INVITE", "headers": {"x-tenant": "green"}}, "tenant"),
        ({"method": "INVITE", "headers": {"x-tenant": "greenish"}}, None),
        ({"method": "MESSAGE", "headers": {"x-tenant": "blue"}}, None),  # INVITE only
        ({"method": "INVITE", "headers": {}}, None),  # absent: no match, even for ".*"
        ({"method": "INVITE", "from_user": "+4930123", "to_user": "1001"}, "caller"),
        ({"method": "INVITE", "from_user": "+4930123", "to_user": "100"}, None),
        ({"method": "INVITE", "from_user": "4930123", "to_user": "1001"}, None),
    ],
)
def test_each_route_match(fields: dict[str, object], expected: str | None) -> None:
    assert _route(ROUTES, None, **fields) == expected


def test_no_route_is_the_default_route() -> None:
    route = ROUTES.route(RequestView("INVITE", "5551234"))
    assert route is DEFAULT_ROUTE
    assert (route.name, route.group, route.group_or("pbx")) == (None, None, "pbx")


def test_a_policy_without_routes_routes_everything_to_the_first_group() -> None:
    policy = _policy("rules: []\n")
    assert policy.route(RequestView("INVITE", "112")) is DEFAULT_ROUTE


RULES = _policy("""
    rules:
      - name: pbx-busy
        match: {status: 486, upstream: pbx}
        action: failover
        to: voicemail
        diversion: user-busy
      - name: retry-later
        match: {status: 503, header: {Retry-After: "[0-9]+.*"}}
        action: failover
        hold_down: 60
      - name: vip
        match: {status: [486, 503], from_user: "100[0-9]"}
        action: stop
      - name: weekend-night
        match: {status: "4xx", time: {days: [sat, sun], between: "22:00-06:00", tz: Europe/Berlin}}
        action: reply
        status: 480
      - name: rest
        match: {status: "100-699"}
        action: forward
    """)

SAT_23H_BERLIN = _wall("2026-03-07T23:00:00+01:00")
MON_03H_BERLIN = _wall("2026-03-09T03:00:00+01:00")  # the morning after Sunday night
SAT_03H_BERLIN = _wall("2026-03-07T03:00:00+01:00")  # the morning after Friday night
WED_12H = _wall("2026-03-04T12:00:00+01:00")


@pytest.mark.parametrize(
    ("status", "request_view", "answer", "wall", "rule"),
    [
        (486, None, AnswerView("pbx"), None, "pbx-busy"),
        (486, None, AnswerView("carrier"), None, "rest"),
        (486, None, AnswerView(None), None, "rest"),  # a phone's branch: no group
        (486, None, None, None, "rest"),  # no view: a condition on it does not hold
        (503, None, AnswerView("pbx", {"retry-after": "120 (maintenance)"}), None, "retry-later"),
        (503, None, AnswerView("pbx", {"retry-after": "soon"}), None, "rest"),
        (503, None, AnswerView("pbx"), None, "rest"),
        (503, RequestView("INVITE", from_user="1004"), AnswerView("pbx"), None, "vip"),
        (486, RequestView("INVITE", from_user="1004"), AnswerView("pbx"), None, "pbx-busy"),
        (486, RequestView("INVITE", from_user="1004"), AnswerView("x"), None, "vip"),
        (404, None, None, SAT_23H_BERLIN, "weekend-night"),
        (404, None, None, MON_03H_BERLIN, "weekend-night"),  # Sunday 22:00 runs into Monday
        (404, None, None, SAT_03H_BERLIN, "rest"),  # Friday night is not a weekend night
        (404, None, None, WED_12H, "rest"),
        (404, None, None, None, "rest"),  # no time given: a time condition does not hold
    ],
)
def test_each_rule_condition(status: int, request_view: RequestView | None,
                             answer: AnswerView | None, wall: float | None, rule: str) -> None:
    assert RULES.evaluate(status, "INVITE", request_view, answer, wall).rule == rule


def test_a_conditional_rule_never_slows_the_statuses_it_does_not_list() -> None:
    """The chain exists only where a conditional rule precedes the first plain taker."""
    chains = RULES._chains["INVITE" if "INVITE" in RULES._chains else None]
    with_chain = {100 + i for i, chain in enumerate(chains) if chain is not None}
    assert with_chain == {486, 503, *range(400, 500)}
    # statuses no conditional rule lists come straight from the table, the same object
    assert RULES.evaluate(200, "INVITE") is RULES.evaluate(200, "INVITE", None, None, 0.0)


def test_reply_is_stop_with_the_status_replaced() -> None:
    decision = RULES.evaluate(404, "INVITE", None, None, SAT_23H_BERLIN)
    assert (decision.action, decision.reply, decision.verb) == (Action.STOP, 480, "reply")
    assert decision.describe() == "weekend-night: reply (status=480)"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 60.0), ("120", 120.0), ("120 (maintenance);duration=60", 120.0), (" 5", 5.0),
     ("0", 0.0), ("99999999", 3600.0), ("soon", 60.0), ("-5", 60.0), ("", 60.0)],
)
def test_hold_for_prefers_retry_after(retry_after: str | None, expected: float) -> None:
    """RFC 3261 20.33 / 21.5.4: Retry-After delta-seconds, bounded to an hour."""
    decision = Decision(Action.FAILOVER, "r", hold_down=60)
    assert decision.hold_for(retry_after) == expected
    assert Decision(Action.FAILOVER, "r").hold_for("120") == 0.0  # no hold_down: never held


# -- time windows ---------------------------------------------------------------------------


def _window(days: int = 0x7F, start: int = 0, end: int = 1440, tz: str = "UTC") -> TimeWindow:
    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    return TimeWindow(days, start, end, tz, zone)


BERLIN_WORK = _window(0b0011111, 8 * 60, 18 * 60, "Europe/Berlin")


@pytest.mark.parametrize(
    ("instant", "inside"),
    [
        ("2026-01-12T07:00:00Z", True),  # Monday 08:00 CET: the start is included
        ("2026-01-12T06:59:59Z", False),
        ("2026-01-12T17:00:00Z", False),  # 18:00 CET: the end is excluded
        ("2026-07-13T06:00:00Z", True),  # 08:00 CEST: summer time is followed
        ("2026-07-13T16:00:00Z", False),  # 18:00 CEST
        ("2026-03-27T07:00:00Z", True),  # Friday before the change, 08:00 CET
        ("2026-03-30T06:00:00Z", True),  # Monday after it, 08:00 CEST
        ("2026-03-30T06:59:00Z", True),
        ("2026-03-28T09:00:00Z", False),  # Saturday
        ("2026-10-26T07:00:00Z", True),  # Monday after winter time: 08:00 CET
        ("2026-10-23T06:00:00Z", True),  # Friday before it: 08:00 CEST
    ],
)
def test_a_window_follows_its_zone_and_its_summer_time(instant: str, inside: bool) -> None:
    assert BERLIN_WORK.contains(_wall(instant)) is inside


def test_the_hour_skipped_in_spring_never_matches_and_the_repeated_one_matches_twice() -> None:
    window = _window(0x7F, 2 * 60 + 30, 2 * 60 + 45, "Europe/Berlin")  # 02:30-02:45 local
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; no instant of that day is 02:30 local
    spring = [_wall("2026-03-29T00:00:00Z") + 60 * m for m in range(180)]
    assert not any(window.contains(t) for t in spring)
    # 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 local happens twice
    autumn = [_wall("2026-10-25T00:00:00Z") + 60 * m for m in range(180)]
    inside = [t for t in autumn if window.contains(t)]
    assert len(inside) == 30
    assert {datetime.fromtimestamp(t, UTC).hour for t in inside} == {0, 1}


def test_a_window_over_midnight_belongs_to_the_day_it_starts() -> None:
    friday_night = _window(1 << 4, 22 * 60, 6 * 60)  # fri 22:00 - sat 06:00, UTC
    assert friday_night.contains(_wall("2026-03-06T22:00:00Z"))  # Friday
    assert friday_night.contains(_wall("2026-03-07T05:59:00Z"))  # Saturday morning
    assert not friday_night.contains(_wall("2026-03-07T06:00:00Z"))
    assert not friday_night.contains(_wall("2026-03-07T22:30:00Z"))  # Saturday night
    assert not friday_night.contains(_wall("2026-03-06T05:00:00Z"))  # Friday morning


def test_the_whole_day_and_24_00() -> None:
    day = _window(1 << 5, 0, 1440)  # Saturday
    assert day.contains(_wall("2026-03-07T00:00:00Z"))
    assert day.contains(_wall("2026-03-07T23:59:59Z"))
    assert not day.contains(_wall("2026-03-08T00:00:00Z"))
    late = _window(0x7F, 22 * 60, 1440)
    assert late.contains(_wall("2026-03-07T23:59:00Z")) and not late.contains(
        _wall("2026-03-08T00:00:00Z"))


def test_the_answer_is_remembered_for_the_minute() -> None:
    window = _window(0x7F, 10 * 60, 10 * 60 + 1)
    t = _wall("2026-03-07T10:00:00Z")
    assert window.contains(t) and window.contains(t + 59.9)
    assert not window.contains(t + 60)
    assert window.contains(t + 30)  # a new minute: computed again


@given(st.integers(0, 6), st.integers(0, 1439), st.integers(0, 127), st.integers(0, 1439),
       st.integers(1, 1440))
def test_contains_local_is_the_definition(weekday: int, minute: int, days: int, start: int,
                                          end: int) -> None:
    """A window is the set of (day, minute) from each named day's start up to its end, the
    end on the next day when it is before the start."""
    if start == end % 1440 and end != 1440:
        return
    window = _window(days, start, end)
    length = (end - start) % 1440 or 1440
    expected = False
    for day in range(7):
        if days >> day & 1:
            offset = ((weekday - day) % 7) * 1440 + minute - start
            if 0 <= offset < length:
                expected = True
    assert window.contains_local(weekday, minute) is expected


# -- the first form through the new path ------------------------------------------------------

STATUS_SETS = st.one_of(
    st.sets(st.integers(100, 699), min_size=1, max_size=5),
    st.integers(1, 6).map(lambda c: set(range(c * 100, c * 100 + 100))),
    st.tuples(st.integers(100, 699), st.integers(0, 150)).map(
        lambda t: set(range(t[0], min(699, t[0] + t[1]) + 1))),
)
METHODS = ("INVITE", "BYE", "MESSAGE", "X-EXT")
PLAIN_RULES = st.lists(
    st.tuples(STATUS_SETS, st.sampled_from(list(Action)),
              st.one_of(st.none(), st.sets(st.sampled_from(METHODS), min_size=1))),
    min_size=0, max_size=8)


def _plain_policy(specs: list[tuple[set[int], Action, set[str] | None]]) -> Policy:
    rules = tuple(Rule(f"r{i}", frozenset(s), a, None if m is None else frozenset(m))
                  for i, (s, a, m) in enumerate(specs))
    return Policy(rules, "v", None)


@given(PLAIN_RULES, st.integers(90, 710), st.sampled_from([*METHODS, "OPTIONS"]),
       st.floats(0, 2e9), st.sampled_from([None, "pbx", "carrier"]))
def test_a_first_form_policy_decides_the_same_through_the_new_path(
    specs: list[tuple[set[int], Action, set[str] | None]], status: int, method: str,
    wall: float, group: str | None,
) -> None:
    policy = _plain_policy(specs)
    old = policy.evaluate(status, method)
    new = policy.evaluate(status, method, RequestView(method, "1001", "2002", "1001", "10.0.0.1"),
                          AnswerView(group, {"retry-after": "5"}), wall)
    assert new is old
    scan = next((r.decision for r in policy.rules if r.matches(status, method)), FALLBACK)
    assert old == scan


CONDITIONS = st.sampled_from([
    None,
    "upstream: pbx",
    "upstream: [pbx, carrier]",
    "from_user: \"1.*\"",
    "header: {Retry-After: \"[0-9]+\"}",
    "time: {days: [sat, sun]}",
    "time: {between: \"22:00-06:00\"}",
])


@given(st.lists(st.tuples(STATUS_SETS, CONDITIONS), min_size=1, max_size=6),
       st.integers(100, 699), st.sampled_from([None, "pbx", "carrier"]),
       st.sampled_from(["1001", "2002"]), st.sampled_from([None, "30", "x"]),
       st.floats(0, 2e9))
def test_chains_agree_with_a_plain_scan_of_the_conditions(
    specs: list[tuple[set[int], str | None]], status: int, group: str | None, user: str,
    retry_after: str | None, wall: float,
) -> None:
    lines = ["rules:"]
    for i, (statuses, condition) in enumerate(specs):
        extra = f", {condition}" if condition else ""
        lines.append(f"  - name: r{i}\n    match: {{status: {sorted(statuses)}{extra}}}\n"
                     "    action: stop")
    policy, _ = parse_policy("\n".join(lines) + "\n")
    request = RequestView("INVITE", "x", user)
    answer = AnswerView(group, {} if retry_after is None else {"retry-after": retry_after})
    expected = FALLBACK
    for rule in policy.rules:
        if rule.matches(status, "INVITE") and (
                rule.when is None or rule.when.holds(request, answer, wall)):
            expected = rule.decision
            break
    assert policy.evaluate(status, "INVITE", request, answer, wall) == expected
