"""Warnings for routes and rules that cannot do what they say: shadowed by an earlier one,
an action that cannot apply to the statuses it lists.

Shadowing is decided soundly, never guessed: an earlier rule takes a later one's responses
only when its own conditions are implied by the later rule's (no condition, the same
regular expression, a superset of groups or networks, the same time window). A warning is
therefore always true; a rule shadowed in a way this cannot see (two different regular
expressions that happen to match the same values) is not reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.diagnostics import Reporter
from proxy.policy.match import Conditions
from proxy.policy.model import Action, Rule, format_statuses
from proxy.policy.route import Route

__all__ = ["implies", "lint_routes", "lint_rules"]


def lint_rules(rules: Sequence[Rule], report: Reporter) -> None:
    """Warnings for rules that can never match or cannot do what their action says."""
    plain = _Coverage()  # the earlier rules without conditions
    for index, rule in enumerate(rules):
        where = (rule.line, rule.column)
        if rule.when is None:
            shadowing = plain.takers(rule)
        else:
            coverage = _Coverage()
            for earlier in rules[:index]:
                if implies(rule.when, earlier.when):
                    coverage.add(earlier)
            shadowing = coverage.takers(rule)
        if rule.when is None:
            plain.add(rule)
        if shadowing is not None:
            names = ", ".join(repr(r.name) for r in shadowing)
            those = "earlier rule" if len(shadowing) == 1 else "earlier rules"
            verb = "matches" if len(shadowing) == 1 else "match"
            what = "status and method" if rule.when is None else "response"
            report.warning(where, f"rule {rule.name!r} can never match: {those} {names} "
                           f"already {verb} every {what} it matches")
            continue
        _action_warnings(rule, report)


def _action_warnings(rule: Rule, report: Reporter) -> None:
    where = (rule.line, rule.column)
    if rule.action is Action.REDIRECT:
        other = sorted(s for s in rule.statuses if not 300 <= s <= 399)
        if other:
            report.warning(where, f"rule {rule.name!r}: redirect needs the Contacts of a "
                           f"3xx (RFC 3261 21.3); {format_statuses(other)} cannot be "
                           "redirected")
    if rule.action is not Action.FORWARD:
        early = sorted(s for s in rule.statuses if s < 300)
        if early:
            report.warning(where, f"rule {rule.name!r}: action {rule.verb} does not "
                           f"apply to {format_statuses(early)}: 1xx and 2xx responses are never "
                           "held back (RFC 3261 16.7 step 5)")


def lint_routes(routes: Sequence[Route], report: Reporter) -> None:
    """A route that an earlier route always takes first."""
    for index, route in enumerate(routes):
        for earlier in routes[:index]:
            if (earlier.methods is None or (
                    route.methods is not None and route.methods <= earlier.methods)) and \
                    implies(route.when, earlier.when):
                report.warning((route.line, route.column),
                               f"route {route.name!r} can never match: earlier route "
                               f"{earlier.name!r} matches every request it matches")
                break


def implies(later: Conditions | None, earlier: Conditions | None) -> bool:
    """Whether ``later``'s conditions holding implies ``earlier``'s (sound, not complete)."""
    if earlier is None:
        return True
    if later is None:
        return False
    for a, b in ((later.ruri_user, earlier.ruri_user), (later.from_user, earlier.from_user),
                 (later.to_user, earlier.to_user)):
        if b is not None and (a is None or a.pattern != b.pattern):
            return False
    if earlier.has_source:
        if not later.has_source or not later.source_names <= earlier.source_names:
            return False
        for network in later.networks:
            if not any(network.version == e.version and network.subnet_of(e)  # type: ignore[arg-type]
                       for e in earlier.networks):
                return False
    later_headers = {name: p.pattern for name, p in later.headers}
    for name, pattern in earlier.headers:
        if later_headers.get(name) != pattern.pattern:
            return False
    if earlier.upstream is not None:
        if later.upstream is None or not later.upstream <= earlier.upstream:
            return False
    if earlier.time is not None:
        if later.time is None or not later.time.same_as(earlier.time):
            return False
    return True


class _Coverage:
    """Which earlier rule first takes each (status, method) pair; linear in the rule sizes.

    ``any_method[status]`` is the first rule without ``method`` that lists the status;
    ``by_method[(status, method)]`` the first rule naming that method. The first taker of a
    pair is the earlier of the two.
    """

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.any_method: dict[int, Rule] = {}
        self.by_method: dict[tuple[int, str], Rule] = {}

    def add(self, rule: Rule) -> None:
        self.order.setdefault(rule.name, len(self.order))
        for status in rule.statuses:
            if rule.methods is None:
                self.any_method.setdefault(status, rule)
            else:
                for method in rule.methods:
                    self.by_method.setdefault((status, method), rule)

    def takers(self, rule: Rule) -> list[Rule] | None:
        """The earlier rules that together take every pair of ``rule``, or None.

        A rule without ``method`` matches every method, an infinite set: only earlier rules
        without ``method`` can cover it.
        """
        found: dict[str, Rule] = {}
        for status in rule.statuses:
            generic = self.any_method.get(status)
            if rule.methods is None:
                if generic is None:
                    return None
                found[generic.name] = generic
                continue
            for method in rule.methods:
                specific = self.by_method.get((status, method))
                candidates = [r for r in (generic, specific) if r is not None]
                if not candidates:
                    return None
                first = min(candidates, key=lambda r: self.order[r.name])
                found[first.name] = first
        return sorted(found.values(), key=lambda r: self.order[r.name])
