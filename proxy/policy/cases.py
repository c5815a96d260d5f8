"""The ``tests:`` of a policy file, as values: a request, what its branches answer, and what
the policy is expected to do (run by :mod:`proxy.policy.simulate`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANSWER_KINDS", "CaseAnswer", "CaseExpect", "CaseRequest", "PolicyTest"]

#: What a branch may "answer" in a test besides a final response: ``timeout`` is the 408 the
#: proxy makes up when a branch never answers (Timer B/F), ``unreachable`` the 503 of a
#: transport error (RFC 3261 16.9), ``no_answer`` a branch that rings until the route's
#: ``no_answer`` timer cancels it.
ANSWER_KINDS = ("timeout", "unreachable", "no_answer")


@dataclass(frozen=True, slots=True)
class CaseAnswer:
    """One branch's answer: a final status with its headers, or one of :data:`ANSWER_KINDS`
    (``kind``; status 408 for ``timeout``, 503 for ``unreachable``, 0 for ``no_answer``)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value)
    kind: str = "response"
    line: int = 0
    column: int = 0

    @property
    def synthesised(self) -> bool:
        return self.kind != "response"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def text(self) -> str:
        return str(self.status) if self.kind == "response" else self.kind


@dataclass(frozen=True, slots=True)
class CaseRequest:
    """``request: {method, ruri, from, to, source, time, headers}``; ``wall`` is ``time`` as
    Unix seconds (None: not given)."""

    method: str = "INVITE"
    ruri: str = ""
    from_uri: str = ""
    to_uri: str = ""
    source: str = ""
    wall: float | None = None
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value)


@dataclass(frozen=True, slots=True)
class CaseExpect:
    """``expect: {rule, action, to, status}`` about the last answer's decision and the status
    the caller gets; None: not checked. ``rule`` ``"(no rule)"`` is the implicit forward;
    ``to`` ``""`` expects no group."""

    rule: str | None = None
    action: str | None = None
    to: str | None = None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """One test. ``route`` is checked when ``check_route`` (None: no route matches)."""

    name: str
    request: CaseRequest
    check_route: bool = False
    route: str | None = None
    group: str | None = None
    answers: tuple[CaseAnswer, ...] = ()
    expect: CaseExpect | None = None
    line: int = 0
    column: int = 0
