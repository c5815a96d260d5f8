"""A pure simulator of one call through the policy: the route, then each branch's answer
through the rules, as the proxy core handles them. ``check`` runs a policy file's ``tests:``
with it, ``explain`` shows one step of it.

What it models (RFC 3261 16.6-16.7 as the core implements them):

* the route picks the first group (:meth:`Policy.route`); a request from an upstream (its
  source is an upstream's address) that no route matches goes to its Request-URI, as a
  request from an upstream always did (:data:`REQUEST_URI_TARGET`, a branch outside the
  groups); its upstreams are tried one at a
  time, first one first, each at most once per call (16.5), leaving out the ones held down
  (all of a group held down: all are tried);
* each answer is the final response of the branch in turn; its decision (:meth:`Policy.evaluate`,
  with the group of the branch) does what the core does with it:
  a 2xx ends the call; ``failover`` starts the next upstream of the group, or the first of
  group ``to``; ``stop`` ends the search; ``reply`` ends it with the reply's status;
  ``redirect`` of a 3xx makes the next answer the Contact's (a branch outside the groups;
  the 3xx is not kept, 16.7 step 4);
  ``forward`` and ``retry_flows`` (an upstream has no flows) end the branch, and with it the
  call: the caller gets the best response (16.7 step 6: a 6xx wins, else the lowest class,
  the first received; a real response before a synthesised one; a 503 chosen is sent as 500);
* ``hold_down`` keeps the upstream that answered out for ``Decision.hold_for`` seconds;
* ``no_answer`` as an answer: the route's timer fires (the branch rang ``after`` seconds),
  the group's branches are cancelled and the call goes on with the timer's group.

The simulation has its own clock: the request's time (0 without one), moved on by a
``no_answer`` timer. It never reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.policy.cases import CaseAnswer, CaseRequest, PolicyTest
from proxy.policy.match import AnswerView, RequestView
from proxy.policy.model import Action, Decision, Policy
from proxy.policy.route import Route

__all__ = ["NO_ANSWER_RULE", "REDIRECT_TARGET", "REQUEST_URI_TARGET", "Outcome", "Step",
           "Topology", "check_test", "simulate", "user_part"]

#: The rule name a ``no_answer`` step reads as.
NO_ANSWER_RULE = "no_answer"
#: Where the next answer comes from after a redirect (a Contact of the 3xx, no group).
REDIRECT_TARGET = "(a Contact of the 3xx)"
#: Where a request from an upstream that no route matches goes (its ``group`` too).
REQUEST_URI_TARGET = "(its Request-URI)"


class Topology:
    """The upstream groups of a configuration: ``[(name, [(uri, host), ...]), ...]`` in
    order, the first group the default."""

    __slots__ = ("groups", "names", "default", "_by_host")

    def __init__(self, groups: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        if not groups:
            raise ValueError("a topology needs at least one group")
        self.groups: dict[str, tuple[str, ...]] = {
            name: tuple(uri for uri, _ in members) for name, members in groups}
        self.names = tuple(self.groups)
        self.default = self.names[0]
        by_host: dict[str, set[str]] = {}
        for name, members in groups:
            for _, host in members:
                by_host.setdefault(host.lower(), set()).add(name)
        self._by_host = {host: frozenset(names) for host, names in by_host.items()}

    def groups_of(self, source: str) -> frozenset[str]:
        """The groups with an upstream at the address ``source``."""
        return self._by_host.get(source.lower().strip("[]"), frozenset())

    def members(self, group: str) -> tuple[str, ...]:
        return self.groups.get(group, ())


@dataclass(frozen=True, slots=True)
class Step:
    """One answer and what the policy made of it."""

    group: str | None  # the group of the branch that answered; None: not an upstream
    target: str  # the upstream (URI) or REDIRECT_TARGET
    answer: CaseAnswer
    decision: Decision
    held_for: float = 0.0  # seconds the upstream is held down after this answer


@dataclass(slots=True)
class Outcome:
    """A simulated call. ``final`` is the status the caller gets (None: the answers ended
    before the call did; ``waiting`` then says for what). ``error`` is set when an answer
    cannot happen (no branch left to give it, a ``no_answer`` without a timer)."""

    route: Route
    group: str
    steps: list[Step] = field(default_factory=list)
    final: int | None = None
    waiting: str = ""
    error: str | None = None
    held: dict[str, float] = field(default_factory=dict)

    @property
    def last(self) -> Decision | None:
        return self.steps[-1].decision if self.steps else None


def user_part(uri: str) -> str:
    """The user part of a SIP URI (``sip:1001@example.com`` -> ``1001``), the number of a
    ``tel:`` URI, ``""`` otherwise; a name-addr's ``<...>`` and display name are dropped."""
    text = uri.strip()
    start = text.find("<")
    if start >= 0:
        end = text.find(">", start)
        text = text[start + 1:end if end > start else len(text)]
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon:
        return ""
    if scheme == "tel":
        return rest.split(";", 1)[0]
    if scheme not in ("sip", "sips") or "@" not in rest:
        return ""
    return rest.rsplit("@", 1)[0].split(":", 1)[0]


def request_view(request: CaseRequest, topology: Topology) -> RequestView:
    return RequestView(
        request.method,
        user_part(request.ruri),
        user_part(request.from_uri),
        user_part(request.to_uri),
        request.source,
        topology.groups_of(request.source) if request.source else frozenset(),
        dict(request.headers),
    )


class _Call:
    """The state of one simulated call."""

    def __init__(self, policy: Policy, topology: Topology, request: CaseRequest,
                 held: dict[str, float] | None) -> None:
        self.policy = policy
        self.topology = topology
        self.method = request.method
        self.view = request_view(request, topology)
        self.wall = request.wall
        self.clock = request.wall if request.wall is not None else 0.0
        route = policy.route(self.view, request.wall)
        self.tried: set[str] = set()
        self.responses: list[tuple[int, bool]] = []  # (status, synthesised)
        self.done = False
        if route.name is None and self.view.source_groups:
            # From an upstream, no route: to its Request-URI (the routing order's step 4).
            self.outcome = Outcome(route, REQUEST_URI_TARGET, held=dict(held or {}))
            self.group: str | None = None
            self.timer_group: str | None = None
            self.queue: list[str] = [REQUEST_URI_TARGET]
            return
        self.outcome = Outcome(route, route.group_or(topology.default), held=dict(held or {}))
        self.group = self.outcome.group
        self.timer_group = self.outcome.group if route.no_answer else None
        self.queue = self._targets(self.outcome.group)

    def _targets(self, group: str) -> list[str]:
        members = [u for u in self.topology.members(group) if u not in self.tried]
        free = [u for u in members if self.outcome.held.get(u, float("-inf")) <= self.clock]
        return free or members

    def answer(self, number: int, answer: CaseAnswer) -> None:
        out = self.outcome
        if not self.queue:
            out.error = (f"expected a branch for answer {number} ({answer.text()}), got none: "
                         f"{self._nothing_left()}")
            self.done = True
            return
        target = self.queue.pop(0)
        self.tried.add(target)
        group = self.group if target not in (REDIRECT_TARGET, REQUEST_URI_TARGET) else None
        if answer.kind == "no_answer":
            self._no_answer(number, group, target, answer)
            return
        decision = self.policy.evaluate(answer.status, self.method, self.view,
                                        AnswerView(group, dict(answer.headers)), self.wall)
        held_for = 0.0
        if group is not None:
            held_for = decision.hold_for(answer.header("retry-after"))
            if held_for > 0:
                out.held[target] = self.clock + held_for
        out.steps.append(Step(group, target, answer, decision, held_for))
        self.responses.append((answer.status, answer.synthesised))
        self._act(answer.status, decision)

    def _no_answer(self, number: int, group: str | None, target: str,
                   answer: CaseAnswer) -> None:
        out = self.outcome
        no_answer = out.route.no_answer
        if no_answer is None or group is None or group != self.timer_group:
            where = f"group {group}" if group is not None else "a redirect target"
            out.error = (f"expected a no_answer timer for answer {number}, got none in {where}"
                         f" (route {out.route.name or '(none)'})")
            self.done = True
            return
        decision = Decision(Action.FAILOVER, NO_ANSWER_RULE, to=no_answer.to,
                            diversion=no_answer.diversion)
        out.steps.append(Step(group, target, answer, decision))
        self.clock += no_answer.after
        self.timer_group = None  # the timer belongs to the route's group only
        self._switch(no_answer.to)

    def _act(self, status: int, decision: Decision) -> None:
        if 200 <= status < 300:
            self._end(status)  # RFC 3261 16.7 step 5: a 2xx is forwarded at once
        elif decision.reply:
            self._end(decision.reply)
        elif decision.action is Action.STOP:
            self._end_best()
        elif decision.action is Action.FAILOVER:
            if decision.to is not None:
                self._switch(decision.to)
            if not self.queue:
                self._end_best()  # none left: forward
        elif decision.action is Action.REDIRECT and 300 <= status < 400:
            # 16.7 step 4: its Contact recursed on, the contact-less 3xx is not kept
            self.responses.pop()
            self.queue = [REDIRECT_TARGET]
        else:
            self._end_best()

    def _switch(self, group: str) -> None:
        self.group = group
        self.queue = self._targets(group)

    def _end(self, status: int) -> None:
        self.outcome.final = status
        self.done = True

    def _end_best(self) -> None:
        self._end(best_response(self.responses))

    def _nothing_left(self) -> str:
        final = self.outcome.final
        if final is not None:
            return f"the call ended with {final}"
        if self.group is None:
            return "its Request-URI answered"
        return f"group {self.group} has no upstream left"

    def finish(self) -> Outcome:
        out = self.outcome
        if not self.done and out.final is None:
            out.waiting = (f"{self.queue[0]} (group {self.group})" if self.queue
                           else f"group {self.group}")
        return out


def best_response(responses: Sequence[tuple[int, bool]]) -> int:
    """RFC 3261 16.7 step 6 as the core does it: a 6xx wins, else the lowest class, the first
    received, a real response before a synthesised one; a 503 chosen becomes 500; none: 408."""
    best: int | None = None
    best_rank = (99, 1)
    for status, synthesised in responses:
        cls = status // 100
        rank = (0 if cls == 6 else cls, 1 if synthesised else 0)
        if rank < best_rank:
            best, best_rank = status, rank
    if best is None:
        return 408
    return 500 if best == 503 else best


def simulate(policy: Policy, topology: Topology, request: CaseRequest,
             answers: Sequence[CaseAnswer], held: dict[str, float] | None = None) -> Outcome:
    """Route ``request`` and run ``answers`` through the rules; ``held`` (upstream ->
    until, on the simulation's clock) carries hold-downs from an earlier call."""
    call = _Call(policy, topology, request, held)
    for number, answer in enumerate(answers, start=1):
        if call.done:
            out = call.outcome
            out.error = (f"expected a branch for answer {number} ({answer.text()}), got none: "
                         f"{call._nothing_left()}")
            return out
        call.answer(number, answer)
    return call.finish()


def check_test(policy: Policy, topology: Topology, test: PolicyTest) -> str | None:
    """Run one test; None when it passes, else ``expected ..., got ...``."""
    out = simulate(policy, topology, test.request, test.answers)
    wanted: list[str] = []
    got: list[str] = []

    def compare(what: str, expected: str, actual: str) -> None:
        if expected != actual:
            wanted.append(f"{what} {expected}")
            got.append(f"{what} {actual}")

    if test.check_route:
        compare("route", test.route or "(none)", out.route.name or "(none)")
    if test.group is not None:
        compare("group", test.group, out.group)
    if out.error is not None:
        return out.error
    expect = test.expect
    if expect is not None:
        last = out.last
        if expect.rule is not None:
            compare("rule", expect.rule, _rule_name(last))
        if expect.action is not None:
            compare("action", expect.action, last.verb if last is not None else "(none)")
        if expect.to is not None:
            actual_to = last.to if last is not None else None
            compare("to", expect.to or "(none)", actual_to or "(none)")
        if expect.status is not None:
            final = str(out.final) if out.final is not None else f"none yet (next: {out.waiting})"
            compare("status", str(expect.status), final)
    if not wanted:
        return None
    return f"expected {', '.join(wanted)}, got {', '.join(got)}"


def _rule_name(decision: Decision | None) -> str:
    if decision is None:
        return "(no answer)"
    return decision.rule if decision.rule is not None else "(no rule)"
