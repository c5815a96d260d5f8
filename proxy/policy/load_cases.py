"""Reading ``tests:``: calls the policy is expected to handle a given way::

    tests:
      - name: a busy office phone goes to voicemail     # required, unique among tests
        request: {method: INVITE, ruri: "sip:1001@example.com", from: "sip:2000@example.com",
                  to: "sip:1001@example.com", source: 10.1.2.3,
                  time: "2026-03-02T09:30:00+01:00", headers: {X-Tenant: blue}}
        route: office           # the route expected to match (null: none), or
        group: pbx              # the group the call is expected to reach first
        answers: [486]          # the branches' answers in order: a status 200..699, timeout,
                                # unreachable, no_answer, or {status: 503, headers: {...}}
        expect: {rule: busy-to-voicemail, action: failover, to: voicemail, status: 486}

``expect`` is about the decision for the last answer and the status the caller gets. The
request's ``time`` (ISO 8601 with its offset) is required when a route or rule matches on
time: a test must not depend on when it runs.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime

from proxy.diagnostics import (
    YMap,
    YNode,
    YScalar,
    YSeq,
    describe,
    get_int,
    get_list,
    get_map,
    get_str,
)
from proxy.policy.cases import ANSWER_KINDS, CaseAnswer, CaseExpect, CaseRequest, PolicyTest
from proxy.policy.load_match import Loading, scalar_text
from proxy.policy.load_routes import entry_name
from proxy.policy.load_values import methods
from proxy.policy.match import canonical_header
from proxy.policy.model import Rule
from proxy.policy.route import Route
from proxy.policy.simulate import NO_ANSWER_RULE

__all__ = ["TEST_KEYS", "tests"]

TEST_KEYS = ("name", "request", "route", "group", "answers", "expect")
REQUEST_KEYS = ("method", "ruri", "from", "to", "source", "time", "headers")
EXPECT_KEYS = ("rule", "action", "to", "status")
ANSWER_KEYS = ("status", "headers")
ACTION_WORDS = ("redirect", "retry_flows", "stop", "failover", "forward", "reply")
NO_RULE = "(no rule)"
_URI_SCHEMES = ("sip:", "sips:", "tel:")


def tests(ld: Loading, node: YNode, rules: list[Rule], routes: list[Route],
          uses_time: bool) -> list[PolicyTest]:
    seq = get_list(ld.report, node, "'tests'")
    if seq is None:
        return []
    known = _Known({r.name for r in rules}, {r.name for r in routes if r.name is not None},
                   uses_time)
    result: list[PolicyTest] = []
    names: dict[str, YScalar] = {}
    for index, item in enumerate(seq.items, start=1):
        test = _test(ld, item, index, names, known)
        if test is not None:
            result.append(test)
    return result


class _Known:
    """What a test may name: the file's rules and routes."""

    __slots__ = ("rules", "routes", "uses_time")

    def __init__(self, rules: set[str], routes: set[str], uses_time: bool) -> None:
        self.rules = rules
        self.routes = routes
        self.uses_time = uses_time


def _test(ld: Loading, item: YNode, index: int, names: dict[str, YScalar],
          known: _Known) -> PolicyTest | None:
    where = f"test #{index}"
    if not isinstance(item, YMap):
        ld.report.error(item, f"{where} must be a mapping with name, request and what is "
                        f"expected, got {describe(item)}")
        return None
    name = entry_name(ld, item, where, names, "test")
    if name is not None:
        where = f"test {name!r}"
    found = ld.keys(item, TEST_KEYS, (), ("name", "request"), where)
    request = _request(ld, found["request"], where, known) if "request" in found else None
    check_route = "route" in found
    route = _route_name(ld, found["route"], where, known) if check_route else None
    group = ld.group(found["group"], f"{where}: group") if "group" in found else None
    answers: tuple[CaseAnswer, ...] | None = ()
    if (a := found.get("answers")) is not None:
        answers = _answers(ld, a, f"{where}: answers")
    expect: CaseExpect | None = None
    if (e := found.get("expect")) is not None:
        expect = _expect(ld, e, f"{where}: expect", known)
        if answers == ():
            ld.report.error(e, f"{where}: expect is about the answers; give 'answers'")
            return None
    if not any(key in found for key in ("route", "group", "expect")):
        ld.report.error(item, f"{where}: expects nothing; give route, group or expect")
        return None
    if name is None or request is None or answers is None or (
            "expect" in found and expect is None) or (
            check_route and route == "") or ("group" in found and group is None):
        return None
    return PolicyTest(name, request, check_route, route, group, answers, expect, item.line,
                      item.column)


def _route_name(ld: Loading, node: YNode, where: str, known: _Known) -> str | None:
    """The route expected: a route of the file, or null for none ("" after an error)."""
    if isinstance(node, YScalar) and node.value is None:
        return None
    if isinstance(node, YScalar) and isinstance(node.value, str) and node.value in known.routes:
        return node.value
    ld.report.error(node, f"{where}: route must name a route of this file "
                    f"({', '.join(sorted(known.routes)) or 'there are none'}) or be null for "
                    f"none, got {describe(node)}")
    return ""


def _request(ld: Loading, node: YNode, where: str, known: _Known) -> CaseRequest | None:
    what = f"{where}: request"
    mapping = get_map(ld.report, node, what)
    if mapping is None:
        return None
    found = ld.keys(mapping, REQUEST_KEYS, (), (), what)
    ok = True
    method = "INVITE"
    if (m := found.get("method")) is not None:
        parsed = methods(m, what, ld.report)
        if parsed is None or len(parsed) != 1 or isinstance(m, YSeq):
            if parsed is not None:
                ld.report.error(m, f"{what}: method must be one method, got {describe(m)}")
            ok = False
        else:
            method = next(iter(parsed))
    uris: dict[str, str] = {}
    for key in ("ruri", "from", "to"):
        if (u := found.get(key)) is not None:
            text = get_str(ld.report, u, f"{what}: {key}")
            if text is not None and not _bare_uri(text).lower().startswith(_URI_SCHEMES):
                ld.report.error(u, f"{what}: {key} must be a sip:, sips: or tel: URI, got "
                                f"{text!r}")
                text = None
            ok = ok and text is not None
            uris[key] = text or ""
    source = ""
    if (s := found.get("source")) is not None:
        text = scalar_text(s)
        try:
            source = str(ipaddress.ip_address((text or "").strip().strip("[]")))
        except ValueError:
            ld.report.error(s, f"{what}: source must be an IP address, got {describe(s)}")
            ok = False
    wall: float | None = None
    if (t := found.get("time")) is not None:
        wall = _instant(ld, t, f"{what}: time")
        ok = ok and wall is not None
    elif known.uses_time:
        ld.report.error(mapping, f"{what}: give 'time' (ISO 8601 with an offset): the policy "
                        "matches on time, and a test must not depend on when it runs")
        ok = False
    headers: tuple[tuple[str, str], ...] = ()
    if (h := found.get("headers")) is not None:
        read = _header_values(ld, h, f"{what}: headers")
        ok = ok and read is not None
        headers = read or ()
    if not ok:
        return None
    return CaseRequest(method, uris.get("ruri", ""), uris.get("from", ""), uris.get("to", ""),
                       source, wall, headers)


def _bare_uri(text: str) -> str:
    """The URI of ``"Alice" <sip:alice@example.com>``, or ``text`` stripped."""
    start = text.find("<")
    return text[start + 1:].strip() if start >= 0 else text.strip()


def _instant(ld: Loading, node: YNode, what: str) -> float | None:
    text = scalar_text(node)
    try:
        when = datetime.fromisoformat(text.strip()) if text else None
    except ValueError:
        when = None
    if when is None:
        ld.report.error(node, f"{what} must be an ISO 8601 date and time with its offset, like "
                        f"2026-03-02T09:30:00+01:00, got {describe(node)}")
        return None
    if when.tzinfo is None:
        ld.report.error(node, f"{what}: {text!r} has no offset; write it with one (Z for UTC, "
                        "or +01:00), or it would mean a different instant on each machine")
        return None
    return when.timestamp()


def _header_values(ld: Loading, node: YNode, what: str) -> tuple[tuple[str, str], ...] | None:
    mapping = get_map(ld.report, node, what)
    if mapping is None:
        return None
    result: list[tuple[str, str]] = []
    for key, value in mapping.items:
        text = scalar_text(value)
        if text is None:
            ld.report.error(value, f"{what}: {key.value} must be a value, got "
                            f"{describe(value)}")
            return None
        result.append((canonical_header(str(key.value)), text))
    return tuple(result)


def _answers(ld: Loading, node: YNode, what: str) -> tuple[CaseAnswer, ...] | None:
    seq = get_list(ld.report, node, what)
    if seq is None:
        return None
    if not seq.items:
        ld.report.error(seq, f"{what}: an empty list; leave 'answers' out for a test of the "
                        "route alone")
        return None
    result: list[CaseAnswer] = []
    for item in seq.items:
        answer = _answer(ld, item, what)
        if answer is None:
            return None
        result.append(answer)
    return tuple(result)


def _answer(ld: Loading, item: YNode, what: str) -> CaseAnswer | None:
    if isinstance(item, YScalar) and item.value in ANSWER_KINDS:
        kind = str(item.value)
        made_up = {"timeout": 408, "unreachable": 503}.get(kind, 0)
        return CaseAnswer(made_up, (), kind, item.line, item.column)
    headers: tuple[tuple[str, str], ...] = ()
    status_node: YNode = item
    if isinstance(item, YMap):
        found = ld.keys(item, ANSWER_KEYS, (), ("status",), f"{what}: an answer")
        if "status" not in found:
            return None
        status_node = found["status"]
        if (h := found.get("headers")) is not None:
            read = _header_values(ld, h, f"{what}: headers")
            if read is None:
                return None
            headers = read
    elif not (isinstance(item, YScalar) and type(item.value) is int):
        ld.report.error(item, f"{what}: an answer is a final status 200..699, one of "
                        f"{', '.join(ANSWER_KINDS)}, or {{status, headers}}; got "
                        f"{describe(item)}")
        return None
    status = get_int(ld.report, status_node, f"{what}: a final status", 200, 699)
    if status is None:
        return None
    return CaseAnswer(status, headers, "response", item.line, item.column)


def _expect(ld: Loading, node: YNode, what: str, known: _Known) -> CaseExpect | None:
    mapping = get_map(ld.report, node, what)
    if mapping is None:
        return None
    found = ld.keys(mapping, EXPECT_KEYS, (), (), what)
    if not found:
        ld.report.error(mapping, f"{what}: expects nothing; give rule, action, to or status")
        return None
    ok = True
    rule: str | None = None
    if (r := found.get("rule")) is not None:
        rule = r.value if isinstance(r, YScalar) and isinstance(r.value, str) else None
        if rule not in known.rules and rule not in (NO_RULE, NO_ANSWER_RULE):
            ld.report.error(r, f"{what}: rule must name a rule of this file, {NO_RULE!r} (the "
                            f"implicit forward) or {NO_ANSWER_RULE!r}; got {describe(r)}")
            ok = False
    action: str | None = None
    if (a := found.get("action")) is not None:
        action = a.value if isinstance(a, YScalar) and isinstance(a.value, str) else None
        if action not in ACTION_WORDS:
            ld.report.error(a, f"{what}: action must be one of: {', '.join(ACTION_WORDS)}; got "
                            f"{describe(a)}")
            ok = False
    to: str | None = None
    if (t := found.get("to")) is not None:
        if isinstance(t, YScalar) and t.value is None:
            to = ""  # expects no group
        else:
            to = ld.group(t, f"{what}: to")
            ok = ok and to is not None
    status: int | None = None
    if (s := found.get("status")) is not None:
        status = get_int(ld.report, s, f"{what}: status", 100, 699)
        ok = ok and status is not None
    return CaseExpect(rule, action, to, status) if ok else None
