"""The policy model: what the proxy does with a final response, by status and method.

A policy is an ordered list of rules; the first rule whose status set and method set contain
the response's status and the request's method decides (RFC 3261 16.7 leaves the choice of
"recursing" on 3xx and of new branches to the proxy; the rules make that choice explicit).
No matching rule: the response takes part in the normal best-response selection
(RFC 3261 16.7 step 6), i.e. ``forward``.

:meth:`Policy.evaluate` is pure and O(1): the decisions are precomputed per status
(100..699) for every method that some rule names, plus one table for all other methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "FALLBACK",
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
    """The outcome of :meth:`Policy.evaluate`."""

    action: Action
    rule: str | None  # rule name, None for the implicit fallback
    permanent: bool = False  # redirect only: remember the rewrite (301)
    max_redirects: int = 3  # redirect only (1..10)
    max_attempts: int = 3  # retry_flows only (1..10)

    def describe(self) -> str:
        """``"moved-permanently: redirect (permanent, max_redirects=3)"``, ``"(no rule): forward"``."""
        name = self.rule if self.rule is not None else "(no rule)"
        return f"{name}: {self.action.value}{self.options_text()}"

    def options_text(self) -> str:
        if self.action is Action.REDIRECT:
            opts = ["permanent"] if self.permanent else []
            opts.append(f"max_redirects={self.max_redirects}")
            return f" ({', '.join(opts)})"
        if self.action is Action.RETRY_FLOWS:
            return f" (max_attempts={self.max_attempts})"
        return ""


#: The decision when no rule matches.
FALLBACK = Decision(Action.FORWARD, None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy file.

    ``methods`` is None when the rule has no ``method`` (it matches every method).
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

    def matches(self, status: int, method: str) -> bool:
        return status in self.statuses and (self.methods is None or method in self.methods)

    @property
    def decision(self) -> Decision:
        return Decision(
            self.action,
            self.name,
            permanent=self.permanent,
            max_redirects=self.max_redirects,
            max_attempts=self.max_attempts,
        )

    def match_text(self) -> str:
        """The match as one line: ``status 600, 603-604 method INVITE, BYE``."""
        text = f"status {format_statuses(self.statuses)}"
        if self.methods is not None:
            text += f" method {', '.join(sorted(self.methods))}"
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


@dataclass(frozen=True)
class Policy:
    """An ordered rule list, its version (sha256 of the file, 12 hex) and its file."""

    rules: tuple[Rule, ...]
    version: str
    path: str | None
    _tables: dict[str | None, _Table] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        # First taker per status among rules without `method`, and per (method, status) among
        # rules naming methods; a method's table takes whichever of the two comes first.
        span = MAX_STATUS - MIN_STATUS + 1
        generic: list[int | None] = [None] * span
        specific: dict[str, list[int | None]] = {}
        for index, rule in enumerate(self.rules):
            slots = [s - MIN_STATUS for s in rule.statuses if MIN_STATUS <= s <= MAX_STATUS]
            targets = [generic] if rule.methods is None else [
                specific.setdefault(m, [None] * span) for m in rule.methods
            ]
            for table in targets:
                for slot in slots:
                    if table[slot] is None:
                        table[slot] = index
        decisions = [rule.decision for rule in self.rules]

        def build(first: list[int | None]) -> _Table:
            return tuple(FALLBACK if i is None else decisions[i] for i in first)

        self._tables[None] = build(generic)
        for method, first in specific.items():
            merged = [
                g if s is None or (g is not None and g < s) else s
                for g, s in zip(generic, first, strict=True)
            ]
            self._tables[method] = build(merged)

    def evaluate(self, status: int, method: str) -> Decision:
        """The decision for a final ``status`` to a ``method`` request. Pure, O(1).

        First match wins; no match (or a status outside 100..699) -> ``forward``.
        Methods are case-sensitive (RFC 3261 7.1).
        """
        table = self._tables.get(method)
        if table is None:
            table = self._tables[None]
        index = status - MIN_STATUS
        if 0 <= index < len(table):
            return table[index]
        return FALLBACK

    def explain(self, status: int, method: str = "INVITE") -> str:
        """``"global-failure: stop"``, ``"moved-permanently: redirect (permanent, max_redirects=3)"``,
        ``"(no rule): forward"``."""
        return self.evaluate(status, method).describe()

    def rule(self, name: str) -> Rule | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    @property
    def source(self) -> str:
        """The file name, or ``builtin``."""
        return self.path if self.path is not None else "builtin"
