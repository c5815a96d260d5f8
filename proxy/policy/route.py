"""Routes: which upstream group a new initial request goes to (``routes:`` of a policy file).

The first route whose matches hold picks the group (a route without ``method`` never takes
a REGISTER); when none does, the call goes to the first group of ``upstreams`` in proxy.yaml (:data:`DEFAULT_ROUTE`, whose ``group`` is None
because the policy does not know the configuration's groups). A route may carry
``no_answer``: when no 2xx arrived within ``after`` seconds of the request reaching the
route's group, its branches are CANCELled (RFC 3261 16.10) and the call goes on with the
group ``to``, with a Diversion (RFC 5806) of reason ``diversion`` when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.policy.match import Conditions, RequestView

__all__ = ["DEFAULT_ROUTE", "DIVERSION_REASONS", "NoAnswer", "Route"]

#: RFC 5806 4 ``diversion-reason``, the values a policy may give (the RFC also allows any
#: token; a typo there would reach the PBX silently, so the policy takes only these).
DIVERSION_REASONS = (
    "unknown", "user-busy", "no-answer", "unavailable", "unconditional", "time-of-day",
    "do-not-disturb", "deflection", "follow-me", "out-of-service", "away",
)


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """``no_answer: {after, to, diversion}`` of a route."""

    after: float  # seconds from the request reaching the group
    to: str  # the group to go on with
    diversion: str | None = None  # RFC 5806 reason of the Diversion added; None: none

    def text(self) -> str:
        diversion = f" with Diversion reason={self.diversion}" if self.diversion else ""
        return f"no 2xx within {self.after:g} s: CANCEL, then group {self.to}{diversion}"


@dataclass(frozen=True, slots=True)
class Route:
    """One route. ``name`` and ``group`` are None only for :data:`DEFAULT_ROUTE`."""

    name: str | None
    group: str | None
    methods: frozenset[str] | None = None
    when: Conditions | None = None
    no_answer: NoAnswer | None = None
    line: int = 0
    column: int = 0

    def matches(self, request: RequestView, wall: float | None) -> bool:
        """Whether the route takes ``request``. A route without ``method`` takes every
        method but REGISTER: registrations stay with the first group (where the registrar
        is) unless a route names REGISTER."""
        if self.methods is None:
            if request.method == "REGISTER":
                return False
        elif request.method not in self.methods:
            return False
        return self.when is None or self.when.holds(request, None, wall)

    def group_or(self, default: str) -> str:
        """The group, ``default`` (the configuration's first group) for the default route."""
        return self.group if self.group is not None else default

    def match_text(self) -> str:
        parts = []
        if self.methods is not None:
            parts.append(f"method {', '.join(sorted(self.methods))}")
        if self.when is not None:
            parts.append(self.when.text())
        return " ".join(parts) or "every request"


#: No route matched: the first upstream group.
DEFAULT_ROUTE = Route(None, None)
