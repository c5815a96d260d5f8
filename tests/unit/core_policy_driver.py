"""A policy file's ``tests:`` run through the real proxy core (sans-IO, a fake clock): the
request of a test goes in as SIP from its source, each answer comes back from the branch the
core started, and what the core did is read back: the route and group, each answered branch
with the rule and action that decided, and the status the caller got. ``check`` runs the same
tests through :mod:`proxy.policy.simulate`; the two must agree (test_core_policy_agree.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from proxy.config import Config
from proxy.core.context import BranchState, ResponseContext
from proxy.core.types import Source, Target
from proxy.policy import CaseAnswer, CaseRequest, Policy, PolicyTest
from proxy.policy.simulate import REDIRECT_TARGET, REQUEST_URI_TARGET
from proxy.sip import parse_message
from tests.unit.core_harness import Harness, response_to

#: where a test's request comes from when it names no source (TEST-NET-3, RFC 5737)
NOWHERE = "203.0.113.99"
CALLER_PORT = 6000
#: a Contact of a 3xx answer (a branch outside the groups, as the simulation's)
REDIRECT_CONTACT = "<sip:redirected@198.51.100.99:5060>"


def groups_of(config: Config) -> tuple[tuple[str, tuple[Target, ...]], ...]:
    """The configuration's groups as the runtime hands them to the core (IP upstreams)."""
    return tuple((g.name, tuple(Target(u.transport, u.host, u.port, label=u.uri)
                                for u in g.upstreams)) for g in config.upstream_groups)


def harness_for(config: Config, policy: Policy, **settings: object) -> Harness:
    groups = groups_of(config)
    return Harness.make(upstreams=groups[0][1], groups=groups, policy=policy, **settings)


@dataclass
class CoreRun:
    """What the core did with one test's call."""

    route: str | None = None
    group: str | None = None  # the group of the first branch
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (target, rule, action)
    final: int | None = None  # the final status the caller got; None: none yet
    requests: list[bytes] = field(default_factory=list)  # every INVITE a branch carried
    error: str | None = None


def source_of(h: Harness, request: CaseRequest) -> Source:
    """The packet's source: the test's address, at port 5060 when an upstream is there (an
    upstream sends from its port), else a UA's port."""
    host = request.source or NOWHERE
    port = next((t.port for t in h.core.all_upstreams if t.host == host), CALLER_PORT)
    return Source("udp", host, port)


def request_bytes(request: CaseRequest, src: Source, call_id: str) -> bytes:
    ruri = request.ruri or "sip:someone@example.com"
    from_uri = request.from_uri or "sip:caller@example.com"
    to_uri = request.to_uri or ruri
    host = f"[{src.host}]" if ":" in src.host else src.host
    lines = [
        f"{request.method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{src.port};branch=z9hG4bK{call_id};rport",
        f"From: <{from_uri}>;tag=caller1",
        f"To: <{to_uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {request.method}",
        f"Contact: <sip:caller@{host}:{src.port}>",
        "Max-Forwards: 70",
        *(f"{name}: {value}" for name, value in request.headers),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def context(h: Harness) -> ResponseContext | None:
    for entry in h.core.table.servers():
        if entry.ctx is not None:
            return entry.ctx
    return None


def from_target(t: Target) -> Source:
    return Source(t.transport, t.host, t.port)


def answer_branch(h: Harness, ctx: ResponseContext, answer: CaseAnswer, policy: Policy) -> str:
    """Give the pending branch its answer; returns its target as the simulation names it."""
    pending = [br for br in ctx.branches
               if br.state is BranchState.PENDING and not br.superseded]
    if not pending:
        raise LookupError("no pending branch")
    br = pending[0]
    if br.upstream is not None:
        target = br.upstream.label
    elif br is ctx.branches[0] and ctx.group is None:
        target = REQUEST_URI_TARGET  # an upstream's request that no route matched
    else:
        target = REDIRECT_TARGET
    src = from_target(br.target)
    if answer.kind == "response":
        extra = tuple(f"{name}: {value}" for name, value in answer.headers)
        if 300 <= answer.status < 400:
            extra += (f"Contact: {REDIRECT_CONTACT}",)
        h.feed(response_to(br.data, answer.status, extra=extra), src)
    elif answer.kind == "unreachable":
        h.take(h.core.on_send_failure(br, h.now))  # RFC 3261 16.9: a transport error
    elif answer.kind == "timeout":
        h.advance(64 * h.core.timers.t1 + 0.1)  # Timer B: the proxy's 408
    else:  # no_answer: it rings until the route's timer cancels it
        h.feed(response_to(br.data, 180), src)
        route = ctx.route
        after = route.no_answer.after if route is not None and route.no_answer else 0.0
        before = len(h.sent)
        h.advance(after + 0.001)
        for s in h.sent[before:]:
            if s.data.startswith(b"CANCEL ") and s.port == br.target.port and \
                    s.host == br.target.host:
                # the callee's side of RFC 3261 9.2: 200 to the CANCEL, 487 to the INVITE
                h.feed(response_to(s.data, 200), src)
                h.feed(response_to(br.data, 487), src)
    return target


def run_on_core(config: Config, policy: Policy, test: PolicyTest, **settings: object) -> CoreRun:
    h = harness_for(config, policy, **settings)
    request = test.request
    h.core.set_wall_offset((request.wall - h.now) if request.wall is not None else 1.7e9)
    src = source_of(h, request)
    run = CoreRun()
    h.feed(request_bytes(request, src, "agree-1"), src)
    ctx = context(h)
    if ctx is None:
        run.error = "no response context (the request was answered at once)"
        run.final = final_status(h, src)
        return run
    run.route = ctx.route.name if ctx.route is not None else None
    run.group = ctx.branches[0].group if ctx.branches else None
    if run.group is None and ctx.group is None:
        run.group = REQUEST_URI_TARGET
    for answer in test.answers:
        if final_status(h, src) is not None:
            run.error = f"an answer ({answer.text()}) after the call ended"
            break
        before = Counter(h.core.metrics.decisions)
        try:
            target = answer_branch(h, ctx, answer, policy)
        except LookupError as exc:
            run.error = str(exc)
            break
        decided = Counter(h.core.metrics.decisions)
        decided.subtract(before)
        made = [key for key, n in decided.items() if n > 0]
        rule, action = made[-1] if made else ("(none)", "(none)")
        if answer.kind == "response" and 200 <= answer.status < 300:
            # RFC 3261 16.7 step 5: a 2xx goes to the caller at once, no rule decides it
            rule, action = ("(2xx)", "(2xx)") if not made else (rule, action)
        run.steps.append((target, rule, action))
    run.final = final_status(h, src)
    run.requests = [s.data for s in h.sent if s.data.startswith(b"INVITE ")]
    return run


def final_status(h: Harness, src: Source) -> int | None:
    for s in h.sent:
        if s.host == src.host and s.port == src.port and s.data.startswith(b"SIP/2.0 "):
            status = parse_message(s.data).status
            if status >= 200:
                return status
    return None
