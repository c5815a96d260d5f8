"""Runtime control of upstreams in the sans-IO core (README "Runtime control of upstreams"):
``drain`` and ``down`` take an upstream out of the target set of new calls (RFC 3261 16.5)
while calls in progress go on: their in-dialog requests follow the Route set (16.4, 12.2) and
responses their branch (17.1.3); ``down`` also stops its probing, ``up`` probes again."""

from __future__ import annotations

import pytest

from proxy.core.types import Source
from proxy.core.upstream_admin import AdminChange, AdminState
from proxy.sip import parse_message
from tests.unit.core_harness import (
    CALLER,
    UP1,
    UP2,
    Harness,
    methods,
    own_route,
    request,
    response_to,
    statuses,
)

PBX1 = Source("udp", "127.0.0.1", 5080)
PBX2 = Source("udp", "127.0.0.1", 5081)


def set_state(h: Harness, upstream: str, state: str, origin: str = "here") -> tuple[object, ...]:
    fx = h.core.set_upstream_admin(AdminState(upstream, state, 1.0e9 + h.now, "node-a"),
                                   origin, h.now)
    h.take(fx)
    return fx.logs


def invites_to(h: Harness, port: int, out: list | None = None) -> list:
    return [m for m in h.to(port, out) if m.is_request and m.method == "INVITE"]


def test_a_drained_upstream_gets_no_new_call_and_failover_skips_it() -> None:
    h = Harness.make()
    logs = set_state(h, UP1.label, "drain")
    assert logs == (AdminChange(UP1.label, "drain", "up", "node-a", "here"),)
    out = h.feed(request())
    assert invites_to(h, 5080, out) == []
    assert len(invites_to(h, 5081, out)) == 1
    # the only upstream left answers 503: no failover back to the drained one
    fwd = [s for s in out if s.port == 5081][0].data
    out = h.feed(response_to(fwd, 503), PBX2)
    assert invites_to(h, 5080, out) == []
    assert statuses(h.to(6000, out)) == [500]


def test_draining_keeps_the_call_in_progress_of_that_upstream() -> None:
    """A call set up to UP1, then UP1 drained: its 200, the caller's ACK and BYE (Route set,
    RFC 3261 16.4) and the PBX's own BYE (a trusted upstream) all still flow."""
    h = Harness.make()
    h.feed(request())
    fwd = [s for s in h.sent if s.port == 5080 and s.data.startswith(b"INVITE")][-1].data
    out = h.feed(response_to(fwd, 180), PBX1)
    set_state(h, UP1.label, "drain")
    out = h.feed(response_to(fwd, 200), PBX1)
    assert statuses(h.to(6000, out)) == [200]
    assert h.core.dialogs.per_upstream() == {UP1.label: 1}
    out = h.feed(request("BYE", to_tag="callee1", branch="z9hG4bKbye1", cseq=2,
                         ruri="sip:bob@127.0.0.1:5080", extra=(f"Route: {own_route(h)}",)))
    assert methods(h.to(5080, out)) == ["BYE"]
    bye = [s for s in out if s.port == 5080][0].data
    out = h.feed(response_to(bye, 200), PBX1)
    assert statuses(h.to(6000, out)) == [200]
    assert h.core.dialogs.per_upstream() == {}
    # a new call meanwhile goes to the other upstream
    out = h.feed(request(call_id="call-2@caller", branch="z9hG4bKcaller2"))
    assert invites_to(h, 5080, out) == [] and len(invites_to(h, 5081, out)) == 1


def test_every_upstream_out_of_service_answers_503() -> None:
    """RFC 3261 21.5.4: no upstream may take the call now."""
    h = Harness.make()
    set_state(h, UP1.label, "down")
    set_state(h, UP2.label, "drain")
    out = h.feed(request())
    assert statuses(h.to(6000, out)) == [100, 503]
    assert [s for s in out if s.port in (5080, 5081)] == []


def test_up_restores_the_upstream_for_new_calls() -> None:
    h = Harness.make()
    set_state(h, UP1.label, "down")
    logs = set_state(h, UP1.label, "up")
    assert logs == (AdminChange(UP1.label, "up", "down", "node-a", "here"),)
    out = h.feed(request())
    assert len(invites_to(h, 5080, out)) == 1


def test_the_same_state_again_is_no_change_and_logs_nothing() -> None:
    h = Harness.make()
    assert set_state(h, UP1.label, "drain", "store")
    assert set_state(h, UP1.label, "drain", "store") == ()
    assert h.core.admin.state(UP1.label) == "drain"
    assert h.core.admin.state(UP2.label) == "up"


def test_a_state_from_the_store_is_applied_as_one_set_here() -> None:
    h = Harness.make()
    logs = set_state(h, UP2.label, "down", "store")
    assert logs == (AdminChange(UP2.label, "down", "up", "node-a", "store"),)
    out = h.feed(request())
    assert len(invites_to(h, 5080, out)) == 1


def test_an_unknown_state_is_refused() -> None:
    h = Harness.make()
    with pytest.raises(ValueError, match="not an upstream state"):
        set_state(h, UP1.label, "maintenance")
    assert h.core.admin.states == {}


def probing(interval: float = 10.0) -> Harness:
    return Harness.make(probe_interval=interval, probe_timeout=1.0)


def options_to(out: list, port: int) -> int:
    return sum(1 for s in out if s.port == port and s.data.startswith(b"OPTIONS"))


def test_down_is_not_probed_drain_is_and_up_probes_at_once() -> None:
    h = probing(interval=10.0)
    out = h.take(h.core.start_probes(h.now))
    assert options_to(out, 5080) == 1 and options_to(out, 5081) == 1
    for s in out:  # both answer
        h.feed(response_to(s.data, 200), PBX1 if s.port == 5080 else PBX2)
    set_state(h, UP1.label, "down")
    set_state(h, UP2.label, "drain")
    out = h.advance(10.0)
    assert options_to(out, 5080) == 0  # down: probing leaves it alone
    assert options_to(out, 5081) == 1  # drained: still probed
    for s in out:
        h.feed(response_to(s.data, 200), PBX2)
    h.advance(2.0)
    assert h.core.prober.up[UP1] is True  # its state is the last one probing saw
    set_state(h, UP1.label, "up")
    out = h.advance(0.0)  # the next round at once, not 8 s later
    assert options_to(out, 5080) == 1
    # it does not answer: probing decides, it is down after the timeout
    h.advance(1.5)
    assert h.core.prober.up[UP1] is False


def test_probing_and_admin_state_together_pick_the_target() -> None:
    """UP2 drained and UP1 found down by probing: the call still goes to UP1 (probing's
    rule: when every admitted upstream is down, try them all); the drained one never."""
    h = probing(interval=10.0)
    h.take(h.core.start_probes(h.now))
    h.advance(1.5)  # nobody answered: both down
    assert h.core.prober.up == {UP1: False, UP2: False}
    set_state(h, UP2.label, "drain")
    out = h.feed(request())
    assert len(invites_to(h, 5080, out)) == 1 and invites_to(h, 5081, out) == []
    fwd = parse_message([s for s in out if s.port == 5080][0].data)
    assert fwd.method == "INVITE"
    assert CALLER.port == 6000
