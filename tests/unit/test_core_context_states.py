"""The response context's state machine (RFC 3261 16.7) read as its transition table, and the
outcome the one decision point for a branch's final response returns."""

from __future__ import annotations

from proxy.core.context import CONTEXT_TABLE, ContextEvent, ContextState, ResponseContext
from proxy.core.effects import Out
from proxy.core.proxy import responses
from proxy.core.proxy.responses import Outcome
from proxy.core.types import Source
from tests.unit.core_harness import Harness, request, response_to, statuses

S = ContextState
E = ContextEvent
UP = Source("udp", "127.0.0.1", 5080)


def _ctx(h: Harness) -> ResponseContext:
    [ctx] = [e.ctx for e in h.core.table.servers() if e.ctx is not None]
    return ctx


def test_only_live_states_may_branch_and_finals_are_terminal() -> None:
    h = Harness.make()
    h.feed(request())
    ctx = _ctx(h)
    assert ctx.state is S.PROCEEDING and ctx.may_branch and not ctx.final_sent
    for state in S:
        ctx.state = state
        assert ctx.may_branch == (state in (S.PROCEEDING, S.WAITING_STORE))
        assert ctx.final_sent == (state in (S.ANSWERED, S.COMPLETED))
        assert ctx.cancelled == (state in (S.CANCELLING, S.CANCELLING_STORE))
        assert ctx.holding == state.name.endswith("STORE")
    # Nothing leaves COMPLETED; only a further 2xx is taken in ANSWERED (16.7 step 5).
    assert not [k for k in CONTEXT_TABLE if k[0] is S.COMPLETED]
    assert [k for k in CONTEXT_TABLE if k[0] is S.ANSWERED] == [(S.ANSWERED, E.GOT_2XX)]


def test_a_2xx_after_a_non_2xx_final_is_not_forwarded() -> None:
    """The table has no (COMPLETED, GOT_2XX): fire() says so and nothing changes."""
    h = Harness.make()
    h.feed(request())
    ctx = _ctx(h)
    assert ctx.fire(E.FINAL_SENT) and ctx.state is S.COMPLETED
    assert not ctx.fire(E.GOT_2XX) and ctx.state is S.COMPLETED


def test_store_write_holds_the_final_and_cancel_keeps_the_hold() -> None:
    h = Harness.make()
    h.feed(request())
    ctx = _ctx(h)
    assert ctx.fire(E.STORE_WRITE) and ctx.state is S.WAITING_STORE and ctx.may_branch
    assert ctx.fire(E.CANCEL) and ctx.state is S.CANCELLING_STORE and not ctx.may_branch
    assert ctx.fire(E.STORED) and ctx.state is S.CANCELLING


def test_branch_final_returns_its_outcome() -> None:
    """Kamailio-style outcomes: a 503 fails over (default policy), a 486 on the last branch
    sends the best answer, a later final finds the context completed."""
    h = Harness.make()
    h.feed(request())
    ctx = _ctx(h)
    [br1] = ctx.branches
    assert responses.branch_final(h.core, br1, 503, None, h.now, Out()) is Outcome.FAILOVER
    br2 = ctx.branches[1]
    assert br2.target.port == 5081
    out = Out()
    assert responses.branch_final(h.core, br2, 486, None, h.now, out) is Outcome.FINAL
    assert ctx.state is S.COMPLETED and statuses(h.to(6000, out.sends)) == [486]
    assert responses.branch_final(h.core, br2, 487, None, h.now, Out()) is Outcome.LATE


def test_policy_stop_waits_for_the_cancelled_branch() -> None:
    """16.7 step 5: a 6xx on one of two parallel branches -> STOPPING until the other ends."""
    h = Harness.make()
    h.feed(request())
    ctx = _ctx(h)
    [br] = ctx.branches
    out = h.feed(response_to(br.data, 180), UP)
    assert statuses(h.to(6000, out)) == [180]
    ctx.pending += 1  # a second branch still pending, as after a parallel fork
    assert responses.branch_final(h.core, br, 603, None, h.now, Out()) is Outcome.STOPPING
    assert ctx.state is S.STOPPING and not ctx.may_branch
