"""What ``check`` and ``explain`` say about a policy with its configuration: the policy file's
``tests:`` run against the configuration's upstream groups, and the route and decision chain
of one call (``explain --config proxy.yaml --ruri URI STATUS``).

This is the command line's side of :mod:`proxy.policy.simulate` (which is pure); it may read
the clock (``explain`` without ``--time`` means now).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from proxy.config import Config
from proxy.diagnostics import display_path
from proxy.policy import (
    MAX_HOLD_DOWN,
    Action,
    AnswerView,
    Decision,
    Policy,
    Route,
    Topology,
    check_test,
    user_part,
)
from proxy.policy.match import RequestView

__all__ = ["explain_chain", "explain_route", "parse_instant", "run_tests", "topology"]


def topology(config: Config) -> Topology:
    """The configuration's upstream groups as the simulator sees them."""
    return Topology([(g.name, [(u.uri, u.host) for u in g.upstreams])
                     for g in config.upstream_groups])


def run_tests(config: Config, policy: Policy) -> tuple[int, list[str]]:
    """Run the policy file's tests: (how many passed, a ``FILE:LINE: test 'NAME': expected
    ..., got ...`` line per failure)."""
    where = display_path(Path(policy.path)) if policy.path is not None else policy.source
    topo = topology(config)
    failures = []
    for test in policy.tests:
        problem = check_test(policy, topo, test)
        if problem is not None:
            failures.append(f"{where}:{test.line}: test {test.name!r}: {problem}")
    return len(policy.tests) - len(failures), failures


def parse_instant(text: str) -> float:
    """``--time``: ISO 8601 with an offset -> Unix seconds (ValueError otherwise)."""
    when = datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no offset: write it with one (Z for UTC, or +01:00)")
    return when.timestamp()


def explain_route(
    config: Config, policy: Policy, status: int, method: str, ruri: str,
    from_uri: str, source: str, wall: float | None,
) -> list[str]:
    """Two lines: the route a request takes, and the decision for ``status`` from the first
    upstream of its group, with what follows from it."""
    topo = topology(config)
    user = user_part(ruri)
    request = RequestView(method, user, user_part(from_uri), user, source,
                          topo.groups_of(source) if source else frozenset())
    when = wall if wall is not None else time.time()
    route = policy.route(request, when)
    if route.name is None and request.source_groups:
        # From an upstream, no route: to its Request-URI (as the proxy routes it).
        decision = policy.evaluate(status, method, request, AnswerView(None), when)
        return [f"route: (none) -> its Request-URI {ruri} (from an upstream of "
                f"{', '.join(sorted(request.source_groups))}; no route matched)",
                f"{decision.describe()} -> {_consequence(config, decision, status, '', ruri)}"]
    group = route.group_or(topo.default)
    decision = policy.evaluate(status, method, request, AnswerView(group), when)
    return [_route_line(config, route, group),
            f"{decision.describe()} -> {_consequence(config, decision, status, group, ruri)}"]


def _route_line(config: Config, route: Route, group: str) -> str:
    if route.name is None:
        head = f"route: (none) -> group {group} (the first group)"
    else:
        head = f"route: {route.name} ({route.match_text()}) -> group {group}"
    text = f"{head}: {_members(config, group)}"
    if route.no_answer is not None:
        text += f"; {route.no_answer.text()}"
    return text


def _members(config: Config, group: str, skip: int = 0) -> str:
    found = config.group(group)
    uris = [u.uri for u in found.upstreams[skip:]] if found is not None else []
    return ", ".join(uris) if uris else "(no upstreams)"


def explain_chain(config: Config, policy: Policy, status: int, method: str = "INVITE") -> str:
    """The decision for ``status`` and what follows from it with ``config``, on one line.

    E.g. ``unavailable: failover -> next upstream sip:127.0.0.1:5081; none left: forward``.
    The failover chain is the one of a response from the first upstream of the first group
    (at this moment, for a rule that matches on time).
    """
    group = config.upstream_groups[0].name
    decision = policy.evaluate(status, method, None, AnswerView(group), time.time())
    head = decision.describe()
    return f"{head} -> {_consequence(config, decision, status, group, None)}"


def _consequence(config: Config, d: Decision, status: int, group: str, ruri: str | None) -> str:
    text = _action_consequence(config, d, status, group, ruri)
    if d.hold_down and status >= 300:
        first = config.group(group)
        who = first.upstreams[0].uri if first is not None and first.upstreams else "the upstream"
        text = (f"hold {who} down for the response's Retry-After (at most "
                f"{MAX_HOLD_DOWN} s) or {d.hold_down:g} s, in every group; {text}")
    return text


def _action_consequence(config: Config, d: Decision, status: int, group: str,
                        ruri: str | None) -> str:
    if status < 200:
        return "provisional: " + (
            "not forwarded (RFC 3261 16.7 step 5)" if status == 100
            else "forwarded to the caller at once (RFC 3261 16.7 step 5)"
        )
    if status < 300:
        return "forwarded to the caller at once (RFC 3261 16.7 step 5)"
    if d.reply:
        reason = f" {d.reason}" if d.reason else ""
        return (f"CANCEL the pending branches, no new branch; the caller gets {d.reply}{reason} "
                f"instead of the {status} (RFC 3261 16.7 steps 5-6)")
    if d.action is Action.STOP:
        return (f"CANCEL the pending branches, no new branch; the {status} goes to the caller "
                "(RFC 3261 16.7 steps 5-6)")
    if d.action is Action.FAILOVER:
        return _failover(config, d, group, ruri)
    if d.action is Action.REDIRECT:
        if not 300 <= status <= 399:
            return f"a {status} carries no redirect: forward"
        trusted = ", ".join(config.trusted_sources) or "(none)"
        targets = ", ".join(config.allow_targets) or "(none)"
        text = (f"follow the Contact if the {status} comes from {trusted} and the Contact "
                f"points to {targets}, at most {d.max_redirects} "
                f"redirect{'s' if d.max_redirects != 1 else ''}")
        if d.permanent:
            text += f"; remembered for at most {config.redirects.max_ttl} s"
        return text + "; otherwise: forward"
    if d.action is Action.RETRY_FLOWS:
        return (f"remove the failed binding, try the instance's other flows (at most "
                f"{d.max_attempts}); none left: forward")
    return "best response once every branch has ended (RFC 3261 16.7 step 6)"


def _failover(config: Config, d: Decision, group: str, ruri: str | None) -> str:
    if d.to is not None:
        text = f"group {d.to}: {_members(config, d.to)}"
        if d.diversion is not None:
            old = f"<{ruri}>" if ruri else "<the Request-URI>"
            text += f", with Diversion: {old};reason={d.diversion};counter=1 (RFC 5806)"
        return text + "; none left: forward"
    found = config.group(group)
    rest = [u.uri for u in found.upstreams[1:]] if found is not None else []
    if not rest:
        return "no other upstream; forward"
    return f"next upstream {', then '.join(rest)}; none left: forward"
