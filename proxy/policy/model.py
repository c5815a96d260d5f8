"""The policy model: where a new call goes, and what the proxy does with a final response.

A policy is an ordered list of rules; the first rule whose status set and method set contain
the response's status and the request's method, and whose other matches hold, decides
(RFC 3261 16.7 leaves the choice of "recursing" on 3xx and of new branches to the proxy; the
rules make that choice explicit). No matching rule: the response takes part in the normal
best-response selection (RFC 3261 16.7 step 6), i.e. ``forward``. Routes
(:mod:`proxy.policy.route`) pick the upstream group of a new call.

:meth:`Policy.evaluate` is pure and, for rules without conditions, O(1): the decisions are
precomputed per status (100..699) for every method that some rule names, plus one table for
all other methods. A rule with conditions (``upstream``, ``header``, ``time``, the request's
users or source) is checked only for the statuses where it comes before the first rule
without any.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from proxy.policy.cases import PolicyTest
from proxy.policy.match import AnswerView, Conditions, RequestView
from proxy.policy.route import DEFAULT_ROUTE, Route

__all__ = [
    "FALLBACK",
    "MAX_HOLD_DOWN",
    "MAX_STATUS",
    "MIN_STATUS",
    "Action",
    "Decision",
    "Policy",
    "Rule",
    "format_statuses",
]

MIN_STATUS = 100
MAX_STATUS = 699


class Action(str, Enum):
    """What the response context does with a final response (RFC 3261 16.7)."""

    REDIRECT = "redirect"  # follow the Contact(s) of a 3xx (16.5 "recursing")
    RETRY_FLOWS = "retry_flows"  # RFC 5626 430 Flow Failed: the instance's other flows
    STOP = "stop"  # 16.7 steps 5-6: CANCEL pending branches, no new branch
    FAILOVER = "failover"  # next upstream / next target; none left: forward
    FORWARD = "forward"  # 16.7 step 6: best-response selection

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`Policy.evaluate`.

    ``reply`` is the file's ``action: reply``: the action is :attr:`Action.STOP` (pending
    branches CANCELled, no new branch, RFC 3261 16.7 steps 5-6) and the caller gets the
    status ``reply`` (with ``reason``) instead of the response. ``to`` and ``diversion``
    belong to ``failover``: go on with that upstream group's targets, with a Diversion
    (RFC 5806) carrying the Request-URI the call had. ``hold_down`` (any action): the
    upstream that answered is skipped for the response's Retry-After or that many seconds
    (:meth:`hold_for`).
    """

    action: Action
    rule: str | None  # rule name, None for the implicit fallback
    permanent: bool = False  # redirect only: remember the rewrite (301)
    max_redirects: int = 3  # redirect only (1..10)
    max_attempts: int = 3  # retry_flows only (1..10)
    to: str | None = None  # failover: the upstream group to go on with
    diversion: str | None = None  # failover with `to`: the Diversion reason (RFC 5806)
    hold_down: float = 0.0  # seconds the answering upstream is skipped; 0: not held down
    reply: int = 0  # reply: the status the caller gets (action STOP); 0: not a reply
    reason: str | None = None  # reply: its reason phrase (None: the standard one)

    @property
    def verb(self) -> str:
        """The action as the file writes it: ``reply`` for a reply, else the action."""
        return "reply" if self.reply else self.action.value

    def describe(self) -> str:
        """``"moved-permanently: redirect (permanent, max_redirects=3)"``, ``"(no rule): forward"``."""
        name = self.rule if self.rule is not None else "(no rule)"
        return f"{name}: {self.verb}{self.options_text()}"

    def options_text(self) -> str:
        opts: list[str] = []
        if self.reply:
            opts.append(f"status={self.reply}")
            if self.reason is not None:
                opts.append(f"reason={self.reason!r}")
        elif self.action is Action.REDIRECT:
            if self.permanent:
                opts.append("permanent")
            opts.append(f"max_redirects={self.max_redirects}")
        elif self.action is Action.RETRY_FLOWS:
            opts.append(f"max_attempts={self.max_attempts}")
        if self.to is not None:
            opts.append(f"to={self.to}")
        if self.diversion is not None:
            opts.append(f"diversion={self.diversion}")
        if self.hold_down:
            opts.append(f"hold_down={self.hold_down:g}")
        return f" ({', '.join(opts)})" if opts else ""

    def hold_for(self, retry_after: str | None) -> float:
        """Seconds the upstream that answered is skipped; 0 when the rule has no hold_down.

        The response's Retry-After (RFC 3261 20.33, ``delta-seconds [comment] *(;param)``;
        RFC 3261 21.5.4 for 503) when it has a valid one, at most :data:`MAX_HOLD_DOWN`;
        otherwise ``hold_down``.
        """
        if not self.hold_down:
            return 0.0
        if retry_after is not None:
            m = _DELTA_SECONDS.match(retry_after)
            if m is not None:
                return float(min(int(m.group(1)), MAX_HOLD_DOWN))
        return self.hold_down


_DELTA_SECONDS: Final = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*(?:[(;]|$)")
#: The longest hold-down, in seconds, whatever a Retry-After asks for (one hour).
MAX_HOLD_DOWN = 3600


#: The decision when no rule matches.
FALLBACK = Decision(Action.FORWARD, None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy file.

    ``methods`` is None when the rule has no ``method`` (it matches every method).
    ``when`` holds the matches other than status and method (None: there are none).
    ``line``/``column`` locate the rule in its file (0 for rules not read from a file).
    """

    name: str
    statuses: frozenset[int]
    action: Action
    methods: frozenset[str] | None = None
    permanent: bool = False
    max_redirects: int = 3
    max_attempts: int = 3
    line: int = 0
    column: int = 0
    when: Conditions | None = None
    to: str | None = None
    diversion: str | None = None
    hold_down: float = 0.0
    reply: int = 0
    reason: str | None = None

    def matches(self, status: int, method: str) -> bool:
        """Status and method only (the conditions of ``when`` aside)."""
        return status in self.statuses and (self.methods is None or method in self.methods)

    @property
    def verb(self) -> str:
        return "reply" if self.reply else self.action.value

    @property
    def decision(self) -> Decision:
        return Decision(
            self.action,
            self.name,
            permanent=self.permanent,
            max_redirects=self.max_redirects,
            max_attempts=self.max_attempts,
            to=self.to,
            diversion=self.diversion,
            hold_down=self.hold_down,
            reply=self.reply,
            reason=self.reason,
        )

    def match_text(self) -> str:
        """The match as one line: ``status 600, 603-604 method INVITE, BYE``."""
        text = f"status {format_statuses(self.statuses)}"
        if self.methods is not None:
            text += f" method {', '.join(sorted(self.methods))}"
        if self.when is not None:
            text += f" {self.when.text()}"
        return text


def format_statuses(statuses: Iterable[int]) -> str:
    """``{500, 501, 502, 600}`` -> ``"500-502, 600"``; a whole class reads ``"5xx"``."""
    parts: list[str] = []
    ordered = sorted(set(statuses))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        lo, hi = ordered[i], ordered[j]
        if lo == hi:
            parts.append(str(lo))
        elif lo % 100 == 0 and hi == lo + 99:
            parts.append(f"{lo // 100}xx")
        else:
            parts.append(f"{lo}-{hi}")
        i = j + 1
    return ", ".join(parts)


_Table = tuple[Decision, ...]
#: The rules with conditions that come before a status's first rule without any, in order.
_Chain = tuple[tuple[Conditions, Decision], ...]
_Chains = tuple[_Chain | None, ...]
_SPAN = MAX_STATUS - MIN_STATUS + 1


class Policy:
    """Routes and rules, the file's tests, its version (sha256, 12 hex) and its file.

    What the core reads, besides :meth:`route` and :meth:`evaluate`, to build only the views
    the policy looks at: ``needs_request`` (a rule matches on the request), ``request_headers``
    (the request headers routes match on), ``response_headers`` (the response headers rules
    match on), ``uses_time`` (a route or rule matches on time: pass ``wall``), ``conditional``
    (a rule matches on more than status and method: pass the views).
    """

    __slots__ = ("rules", "version", "path", "routes", "tests", "needs_request",
                 "request_headers", "response_headers", "uses_time", "conditional", "_tables",
                 "_chains")

    def __init__(
        self,
        rules: tuple[Rule, ...],
        version: str,
        path: str | None,
        routes: tuple[Route, ...] = (),
        tests: tuple[PolicyTest, ...] = (),
    ) -> None:
        self.rules = rules
        self.version = version
        self.path = path
        self.routes = routes
        self.tests = tests
        rule_conditions = [r.when for r in rules if r.when is not None]
        route_conditions = [r.when for r in routes if r.when is not None]
        self.needs_request = any(c.reads_request for c in rule_conditions)
        self.request_headers = _unique(n for c in route_conditions for n in c.header_names())
        self.response_headers = _unique(n for c in rule_conditions for n in c.header_names())
        self.uses_time = any(c.time is not None for c in [*rule_conditions, *route_conditions])
        #: some rule matches on more than status and method: :meth:`evaluate` reads the views
        self.conditional = bool(rule_conditions)
        self._tables: dict[str | None, _Table] = {}
        self._chains: dict[str | None, _Chains] = {}
        self._build(bool(rule_conditions))

    def _build(self, conditional: bool) -> None:
        """One table per method some rule names, plus one for every other method: per status,
        the decision of the first rule without conditions that matches (or the fallback), and,
        when some rule has conditions, the chain of those that come before it."""
        decisions = [rule.decision for rule in self.rules]
        methods = sorted({m for rule in self.rules if rule.methods is not None
                          for m in rule.methods})
        keys: list[str | None] = [None, *methods]
        for key in keys:
            first: list[int | None] = [None] * _SPAN
            chains: list[list[int]] = [[] for _ in range(_SPAN)] if conditional else []
            for index, rule in enumerate(self.rules):
                if rule.methods is not None and (key is None or key not in rule.methods):
                    continue
                for status in rule.statuses:
                    slot = status - MIN_STATUS
                    if not 0 <= slot < _SPAN or first[slot] is not None:
                        continue
                    if rule.when is None:
                        first[slot] = index
                    else:
                        chains[slot].append(index)
            self._tables[key] = tuple(FALLBACK if i is None else decisions[i] for i in first)
            if conditional:
                self._chains[key] = tuple(
                    tuple((_when(self.rules[i]), decisions[i]) for i in chain) if chain else None
                    for chain in chains)

    def evaluate(
        self,
        status: int,
        method: str,
        request: RequestView | None = None,
        answer: AnswerView | None = None,
        wall: float | None = None,
    ) -> Decision:
        """The decision for a final ``status`` to a ``method`` request. Pure.

        First match wins; no match (or a status outside 100..699) -> ``forward``. Methods are
        case-sensitive (RFC 3261 7.1). A rule with conditions (upstream, header, time, the
        request's users or source) matches only when they hold for ``request``, ``answer`` and
        ``wall`` (Unix seconds); one on a view or time not given does not match. O(1) when no
        rule has conditions: the decisions are precomputed per status and method.
        """
        table = self._tables.get(method)
        key: str | None = method
        if table is None:
            table = self._tables[None]
            key = None
        index = status - MIN_STATUS
        if not 0 <= index < _SPAN:
            return FALLBACK
        if self._chains:
            chain = self._chains[key][index]
            if chain is not None:
                for conditions, decision in chain:
                    if conditions.holds(request, answer, wall):
                        return decision
        return table[index]

    def route(self, request: RequestView, wall: float | None = None) -> Route:
        """The first route whose matches hold for ``request`` at ``wall`` (Unix seconds), or
        :data:`DEFAULT_ROUTE` (the first upstream group). Pure."""
        for route in self.routes:
            if route.matches(request, wall):
                return route
        return DEFAULT_ROUTE

    def explain(self, status: int, method: str = "INVITE") -> str:
        """``"global-failure: stop"``, ``"moved-permanently: redirect (permanent, max_redirects=3)"``,
        ``"(no rule): forward"``."""
        return self.evaluate(status, method).describe()

    def rule(self, name: str) -> Rule | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    def find_route(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None

    @property
    def source(self) -> str:
        """The file name, or ``builtin``."""
        return self.path if self.path is not None else "builtin"

    def __repr__(self) -> str:
        return (f"Policy({self.source!r}, version={self.version!r}, {len(self.rules)} rules, "
                f"{len(self.routes)} routes, {len(self.tests)} tests)")


def _when(rule: Rule) -> Conditions:
    assert rule.when is not None
    return rule.when


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
