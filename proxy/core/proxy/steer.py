"""The policy of the second form applied to calls: routes, upstream groups, rules on the
group and the response's headers, ``failover`` to a group with a Diversion, ``hold_down``,
``reply`` and a route's ``no_answer`` timer (README "Routes, upstream groups and richer
rules"), exactly as :mod:`proxy.policy.simulate` models them (a policy file's ``tests:``
run through this core agree with ``check``: tests/unit/test_core_policy_agree.py).

Sans-IO: the wall time a route or rule matches on is the core's clock plus
``core._wall_offset`` (the runtime's difference between the two); no clock is read here.

- :mod:`.routes` picks the group of a new initial request (:meth:`Policy.route`);
  :func:`begin` arms its route's ``no_answer`` timer.
- :func:`decide` is the policy's decision for a branch's final response, with the group of
  the branch (``upstream``) and the response's headers; a ``hold_down`` holds the upstream
  that answered (:meth:`.probe.Prober.hold`) for its Retry-After (RFC 3261 21.5.4, at most
  an hour) or the rule's seconds.
- :func:`switch` goes on with another group (``failover`` ``to``, ``no_answer``), with
  ``Diversion: <the Request-URI the call had>;reason=R;counter=1`` (RFC 5806) on every later
  branch when a reason is given.
- :func:`no_answer` is the route's timer: no 2xx within ``after`` seconds of the group being
  tried: CANCEL its branches (RFC 3261 16.10; their final responses decide nothing and are
  not chosen, 16.7 step 6) and :func:`switch` to ``to``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from proxy.core.context import Branch, BranchState, NoAnswerTimer, ResponseContext
from proxy.core.effects import Out
from proxy.core.proxy import cancel, forward
from proxy.core.proxy.routes import Routed, request_view, source_groups, usable, wall
from proxy.core.types import Target
from proxy.policy import Action, AnswerView, Decision
from proxy.policy.match import NO_HEADERS
from proxy.policy.simulate import NO_ANSWER_RULE  # the rule a no_answer timer counts under
from proxy.sip import SipMessage

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

def name_sources(core: ProxyCore, resolved: Mapping[str, Iterable[str]]) -> None:
    """The runtime resolved the upstreams named by a domain (RFC 3263): ``resolved`` maps
    each name (lower case) to its addresses now; a route's ``source: [GROUP]`` holds for a
    request from any of them."""
    core.source_groups = source_groups(core, resolved)


def begin(core: ProxyCore, ctx: ResponseContext, routed: Routed | None, now: float) -> None:
    """A new context: when it forwards to a routed group, remember the group and arm the
    route's ``no_answer`` timer (INVITE only: CANCEL exists for INVITE, RFC 3261 9); when
    its rules match on the request, keep the request's view for them."""
    if routed is None:
        policy = ctx.policy
        if policy.needs_request and ctx.request is not None:
            ctx.view = request_view(core, policy, ctx.request, ctx.source)
        return
    ctx.group = routed.group
    ctx.route = routed.route
    ctx.view = routed.view
    no_answer = routed.route.no_answer
    if no_answer is not None and ctx.method == "INVITE":
        ctx.timer = NoAnswerTimer(ctx, routed.group, now + no_answer.after)
        core.queue.schedule(ctx.timer)


def decide(core: ProxyCore, ctx: ResponseContext, br: Branch, status: int,
           msg: SipMessage | None, now: float) -> Decision:
    """The policy's decision for the final ``status`` of ``br`` (``msg`` None: synthesised),
    with the group of the branch and the response's headers; applies its ``hold_down``."""
    policy = ctx.policy
    if not policy.conditional:
        decision = policy.evaluate(status, ctx.method)  # status and method only: O(1)
    else:
        headers = NO_HEADERS
        if policy.response_headers and msg is not None:
            headers = {}
            for name in policy.response_headers:
                values = msg.get_all(name)
                if values:
                    headers[name] = ", ".join(values)
        decision = policy.evaluate(status, ctx.method, ctx.view,
                                   AnswerView(br.group, headers), wall(core, now))
    if decision.hold_down and br.upstream is not None:
        seconds = decision.hold_for(msg.get("retry-after") if msg is not None else None)
        if seconds > 0:
            core.prober.hold(core, br.upstream, seconds, now)
            core.stats["policy_hold_down"] += 1
    return decision


def targets_of(core: ProxyCore, ctx: ResponseContext, group: str, now: float) -> list[Target]:
    """The upstreams of ``group`` not tried yet in this context (RFC 3261 16.5: each at
    most once) that may take a new branch (:func:`.routes.usable`)."""
    members = [t for t in core.groups.get(group, ()) if forward.label(t) not in ctx.tried]
    return usable(core, members, now)


def switch(core: ProxyCore, ctx: ResponseContext, group: str, diversion: str | None,
           now: float) -> None:
    """Go on with ``group`` instead of what is left of the current one; with a Diversion
    (RFC 5806 4: ``<the Request-URI the call had>;reason=...;counter=1``) on every later
    branch when ``diversion`` names a reason."""
    ctx.group = group
    ctx.groups = [[t] for t in targets_of(core, ctx, group, now)]
    if diversion is not None:
        ctx.diversion = (f"Diversion: <{ctx.live_request.request_uri}>;reason={diversion}"
                         ";counter=1")


def failover(core: ProxyCore, ctx: ResponseContext, decision: Decision, now: float,
             out: Out) -> bool:
    """``failover``: the next upstream of the group, or the first of group ``to``; False
    when none is left (the best response then goes to the caller)."""
    if decision.to is not None:
        switch(core, ctx, decision.to, decision.diversion, now)
    return forward.next_group(core, ctx, now, out)


def no_answer(core: ProxyCore, timer: NoAnswerTimer, now: float, out: Out) -> None:
    """The route's ``no_answer`` timer fired: when the context still forwards to the
    route's group, nothing was answered and it may branch, CANCEL the group's pending
    branches (RFC 3261 16.10) and go on with ``to``."""
    timer.deadline = None
    ctx = timer.ctx
    ctx.timer = None
    route = ctx.route
    if (route is None or route.no_answer is None or ctx.group != timer.group
            or ctx.final_sent or not ctx.may_branch or ctx.request is None):
        return
    spec = route.no_answer
    for br in ctx.branches:
        if br.state is BranchState.PENDING and br.group == timer.group:
            br.superseded = True
            cancel.cancel_branch(core, br, now, out)
    core.stats["policy_no_answer"] += 1
    core.metrics.decisions[(NO_ANSWER_RULE, Action.FAILOVER.value)] += 1
    switch(core, ctx, spec.to, spec.diversion, now)
    forward.next_group(core, ctx, now, out)


class UpstreamState:
    """One upstream as ``status`` and ``upstream_up`` show it: its groups, whether probing
    finds it up, and the seconds it is still held down by a rule (0: not held)."""

    __slots__ = ("target", "groups", "probed_up", "held_for")

    def __init__(self, target: Target, groups: tuple[str, ...], probed_up: bool,
                 held_for: float) -> None:
        self.target = target
        self.groups = groups
        self.probed_up = probed_up
        self.held_for = held_for

    @property
    def up(self) -> bool:
        return self.probed_up and self.held_for <= 0


def upstream_states(core: ProxyCore, now: float) -> list[UpstreamState]:
    """Every upstream of every group at ``now`` (the core's clock), in order; one named by a
    domain by each of the addresses it resolved to (RFC 3263, :mod:`.upstream_targets`)."""
    states: list[UpstreamState] = []
    prober = core.prober
    for u in core.all_upstreams:
        groups = tuple(name for name, members in core.members.items() if u in members)
        for t in core.upstream_targets.targets_of(u) or (u,):
            until = prober.held_until(t, now)
            states.append(UpstreamState(t, groups, prober.up.get(t, True),
                                        0.0 if until is None else until - now))
    return states
