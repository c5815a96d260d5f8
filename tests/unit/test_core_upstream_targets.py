"""Upstreams named by a domain: each resolved target is an upstream (RFC 3263, RFC 2782), in the
sans-IO core with the fake clock of core_harness. The runtime's resolver is not involved: the
targets are handed to the core as the runtime does (``set_upstream_targets``)."""

from __future__ import annotations

import random
from collections import Counter

from proxy.core.probe import Probe
from proxy.core.proxy import routing
from proxy.core.proxy.redirect_guard import RedirectGuard
from proxy.core.types import Send, Source, Target
from proxy.core.upstream_targets import UpstreamTarget, UpstreamTargets
from proxy.policy import Action, Policy, Rule
from proxy.sip import parse_message
from proxy.transaction import TimerConfig
from tests.unit.core_harness import (
    UP2,
    Harness,
    default_policy,
    methods,
    request,
    response_to,
    statuses,
)

NAMED = Target("udp", "carrier.test", 5060, label="sip:carrier.test")
URI = NAMED.label
A = UpstreamTarget("udp", "127.0.0.1", 5071, "a.carrier.test", 10, 60, "_sip._udp.carrier.test")
B = UpstreamTarget("udp", "127.0.0.1", 5072, "b.carrier.test", 20, 0, "_sip._udp.carrier.test")
PORT_A, PORT_B, PORT_UP2 = 5071, 5072, UP2.port
#: a policy that never fails over by itself: what RFC 3263 4.3 alone does
FORWARD_ONLY = Policy(rules=(Rule("all", frozenset(range(100, 700)), Action.FORWARD),),
                      version="forward-only", path=None)


def src(port: int) -> Source:
    return Source("udp", "127.0.0.1", port)


def named(*targets: UpstreamTarget, **kw: object) -> Harness:
    h = Harness.make(upstreams=(NAMED, UP2), timers=TimerConfig(t1=0.05), srv_seed=7, **kw)
    h.take(h.core.set_upstream_targets(URI, targets, h.now))
    return h


def invites(h: Harness, port: int) -> list[bytes]:
    return [s.data for s in h.sent if s.port == port and s.data.startswith(b"INVITE")]


def first_invite_port(h: Harness, n: int) -> int:
    out = h.feed(request(call_id=f"c{n}@caller", branch=f"z9hG4bKc{n}"))
    ports = [s.port for s in out if s.data.startswith(b"INVITE")]
    assert len(ports) == 1, ports
    return ports[0]


def test_a_call_goes_to_the_lowest_priority_target_not_to_the_name() -> None:
    h = named(B, A)  # the order given does not matter: priority 10 first (RFC 2782)
    h.feed(request())
    assert len(invites(h, PORT_A)) == 1
    assert invites(h, PORT_B) == [] and invites(h, 5060) == [] and invites(h, PORT_UP2) == []
    sent = [s for s in h.sent if s.data.startswith(b"INVITE")][0]
    assert (sent.transport, sent.host) == ("udp", "127.0.0.1")  # an address: nothing to resolve


def test_a_503_goes_to_the_next_target_of_the_name_then_to_the_next_upstream() -> None:
    h = named(A, B)
    h.feed(request())
    h.feed(response_to(invites(h, PORT_A)[0], 503), src(PORT_A))
    assert len(invites(h, PORT_B)) == 1 and invites(h, PORT_UP2) == []
    assert h.core.stats["upstream_target_failover"] == 1
    h.feed(response_to(invites(h, PORT_B)[0], 503), src(PORT_B))
    assert len(invites(h, PORT_UP2)) == 1  # the name's targets used up: the policy's failover
    h.feed(response_to(invites(h, PORT_UP2)[0], 200), src(PORT_UP2))
    assert 200 in statuses(h.to(6000))


def test_rfc3263_4_3_the_next_target_even_when_the_policy_does_not_fail_over() -> None:
    """RFC 3263 4.3: on a 503 the client SHOULD try the next element of the list; the policy
    (here: forward everything) decides only once the name's targets are used up."""
    h = named(A, B, policy=FORWARD_ONLY)
    h.feed(request())
    h.feed(response_to(invites(h, PORT_A)[0], 503), src(PORT_A))
    assert len(invites(h, PORT_B)) == 1
    h.feed(response_to(invites(h, PORT_B)[0], 486), src(PORT_B))
    assert invites(h, PORT_UP2) == []  # forward: no failover to the next upstream
    assert statuses(h.to(6000))[-1] == 486


def test_a_target_that_answers_a_final_other_than_503_ends_the_name() -> None:
    h = named(A, B, policy=FORWARD_ONLY)
    h.feed(request())
    h.feed(response_to(invites(h, PORT_A)[0], 480), src(PORT_A))
    assert invites(h, PORT_B) == []
    assert statuses(h.to(6000))[-1] == 480


def test_no_answer_at_all_timer_b_goes_to_the_next_target() -> None:
    h = named(A, B, policy=FORWARD_ONLY)
    h.feed(request())
    h.advance(64 * 0.05 + 0.01)  # Timer B: 64*T1 without any response (RFC 3261 17.1.1.2)
    assert len(invites(h, PORT_A)) > 1  # the retransmissions went to the same target
    assert len(invites(h, PORT_B)) == 1


def test_timer_c_after_a_provisional_is_not_a_failed_target() -> None:
    """A target that sent 180 answered: Timer C's 408 is the call's, not the server's."""
    h = Harness.make(upstreams=(NAMED, UP2), policy=FORWARD_ONLY, srv_seed=7,
                     timers=TimerConfig(t1=0.05, timer_c=200.0))
    h.take(h.core.set_upstream_targets(URI, (A, B), h.now))
    h.feed(request())
    h.feed(response_to(invites(h, PORT_A)[0], 180), src(PORT_A))
    h.advance(201)  # Timer C (RFC 3261 16.8): the branch is cancelled
    cancel = [s.data for s in h.sent if s.port == PORT_A and s.data.startswith(b"CANCEL")][0]
    h.feed(response_to(cancel, 200), src(PORT_A))
    h.feed(response_to(invites(h, PORT_A)[0], 487), src(PORT_A))
    assert invites(h, PORT_B) == []
    assert statuses(h.to(6000))[-1] == 487


def test_a_transport_error_goes_to_the_next_target() -> None:
    h = named(A, B, policy=FORWARD_ONLY)
    out = h.feed(request())
    [inv] = [s for s in out if s.data.startswith(b"INVITE")]
    h.take(h.core.on_send_failure(inv.token, h.now))
    assert len(invites(h, PORT_B)) == 1


def test_weighted_choice_within_a_priority_follows_the_weights() -> None:
    """RFC 2782: within a priority, a record is first with a probability of its weight over
    the sum (the draw is a uniform integer in [0, sum], so 61/101 and 40/101 for 60 and 40)."""
    heavy = UpstreamTarget("udp", "127.0.0.1", 5071, "a.test", 10, 60, "_sip._udp.test")
    light = UpstreamTarget("udp", "127.0.0.1", 5072, "b.test", 10, 40, "_sip._udp.test")
    backup = UpstreamTarget("udp", "127.0.0.1", 5073, "c.test", 20, 100, "_sip._udp.test")
    ts = UpstreamTargets(random.Random(12345))
    ts.set(NAMED, (backup, light, heavy))
    n = 20_000
    firsts: Counter[int] = Counter()
    for _ in range(n):
        order = ts.ordered(NAMED)
        assert order is not None and len(order) == 3
        assert order[2].port == 5073  # priority 20 always after both of priority 10
        firsts[order[0].port] += 1
    share = firsts[5071] / n
    # expected 61/101 = 0.604; the standard deviation of the share is 0.0035: a bound of
    # 0.02 (over 5 sigma) fails a fair draw once in millions, a draw ignoring weights always
    assert abs(share - 61 / 101) < 0.02, firsts
    assert firsts[5071] + firsts[5072] == n


def test_a_zero_weight_record_is_first_only_when_the_draw_is_zero() -> None:
    """RFC 2782: weight-0 records are placed first and chosen when the draw is 0: 1 time in
    (sum + 1); they have "a very small chance of being selected"."""
    zero = UpstreamTarget("udp", "127.0.0.1", 5071, "z.test", 10, 0, "_sip._udp.test")
    heavy = UpstreamTarget("udp", "127.0.0.1", 5072, "h.test", 10, 9, "_sip._udp.test")
    ts = UpstreamTargets(random.Random(99))
    ts.set(NAMED, (heavy, zero))
    n = 20_000
    first_zero = sum(1 for _ in range(n) if ts.ordered(NAMED)[0].port == 5071)  # type: ignore[index]
    assert abs(first_zero / n - 1 / 10) < 0.015, first_zero


def test_calls_share_the_targets_of_one_priority_by_weight() -> None:
    heavy = UpstreamTarget("udp", "127.0.0.1", 5071, "a.test", 10, 75, "_sip._udp.test")
    light = UpstreamTarget("udp", "127.0.0.1", 5072, "b.test", 10, 25, "_sip._udp.test")
    h = named(heavy, light)
    n = 600
    got = Counter(first_invite_port(h, i) for i in range(n))
    # expected 76/101 = 0.752; sd of the share 0.018: a bound of 0.08 is over 4 sigma
    assert abs(got[5071] / n - 76 / 101) < 0.08, got
    assert got[5071] + got[5072] == n


def test_the_addresses_of_one_srv_target_follow_each_other() -> None:
    """One SRV record whose target has two addresses: they are tried in turn, before the next
    record (RFC 3263 4.3: each address of the list)."""
    a1 = UpstreamTarget("udp", "127.0.0.2", 5071, "a.test", 10, 1, "_sip._udp.test")
    a2 = UpstreamTarget("udp", "127.0.0.3", 5071, "a.test", 10, 1, "_sip._udp.test")
    b = UpstreamTarget("udp", "127.0.0.4", 5072, "b.test", 10, 1000, "_sip._udp.test")
    ts = UpstreamTargets(random.Random(1))
    ts.set(NAMED, (a1, a2, b))
    for _ in range(200):
        order = [t.host for t in ts.ordered(NAMED) or ()]
        i = order.index("127.0.0.2")
        assert order[i + 1] == "127.0.0.3", order


def test_naptr_sets_keep_their_order_whatever_the_priorities() -> None:
    """Two SRV sets (two NAPTR records, TCP preferred): the TCP set first even if its
    priority number is higher; each target keeps its transport (RFC 3263 4.1)."""
    tcp = UpstreamTarget("tcp", "127.0.0.1", 5071, "a.test", 50, 1, "_sip._tcp.test")
    udp = UpstreamTarget("udp", "127.0.0.1", 5072, "b.test", 10, 1, "_sip._udp.test")
    ts = UpstreamTargets(random.Random(1))
    ts.set(NAMED, (tcp, udp))
    assert [(t.transport, t.port) for t in ts.ordered(NAMED) or ()] == [("tcp", 5071),
                                                                     ("udp", 5072)]


def test_each_target_is_probed_and_a_silent_one_is_skipped() -> None:
    h = named(A, B, probe_interval=10.0, probe_timeout=1.0)
    out = h.take(h.core.start_probes(h.now))
    probed = sorted(s.port for s in out if s.data.startswith(b"OPTIONS"))
    assert probed == [PORT_A, PORT_B, PORT_UP2]  # the targets, not the name
    assert parse_message([s for s in out if s.port == PORT_A][0].data).request_uri == \
        "sip:127.0.0.1:5071"
    for s in out:
        if s.port != PORT_A:
            h.feed(response_to(s.data, 200), src(s.port))
    h.advance(1.5)
    up = h.core.prober.up
    assert [alive for t, alive in up.items() if t.port == PORT_A] == [False]
    assert [alive for t, alive in up.items() if t.port == PORT_B] == [True]
    h.sent.clear()
    h.feed(request())
    assert methods(h.to(PORT_A)) == [] and methods(h.to(PORT_B)) == ["INVITE"]


def test_a_new_answer_changes_the_targets_of_new_calls_only() -> None:
    c = UpstreamTarget("udp", "127.0.0.5", 5073, "c.carrier.test", 10, 1, "_sip._udp.carrier.test")
    h = named(A, B, probe_interval=10.0, probe_timeout=1.0)
    h.take(h.core.start_probes(h.now))
    h.feed(request())  # in flight: A, then B
    assert routing.trusted_source(h.core, src(PORT_A))
    out = h.take(h.core.set_upstream_targets(URI, (c,), h.now))  # TTL expired: only C now
    assert [s.port for s in out if s.data.startswith(b"OPTIONS")] == [5073]  # probed at once
    assert {t.port for t in h.core.prober.up} == {5073, PORT_UP2}
    # the call in flight keeps its targets: A's 503 goes to B
    h.feed(response_to(invites(h, PORT_A)[0], 503), src(PORT_A))
    assert len(invites(h, PORT_B)) == 1
    # a new call goes to C; A is no longer an upstream for the access rules, C is
    h.feed(request(call_id="c2@caller", branch="z9hG4bKc2"))
    assert len(invites(h, 5073)) == 1 and len(invites(h, PORT_A)) == 1
    assert routing.trusted_source(h.core, Source("udp", "127.0.0.5", 5073))
    assert not routing.trusted_source(h.core, src(PORT_A))


def test_no_answer_means_the_upstream_stands_for_its_name_again() -> None:
    h = named(A, B)
    h.take(h.core.set_upstream_targets(URI, (), h.now))
    out = h.feed(request())
    [inv] = [s for s in out if s.data.startswith(b"INVITE")]
    assert (inv.host, inv.port) == ("carrier.test", 5060)  # the runtime resolves it at send


def test_an_unknown_upstream_uri_changes_nothing() -> None:
    h = Harness.make(upstreams=(NAMED, UP2))
    fx = h.core.set_upstream_targets("sip:other.test", (A,), h.now)
    assert fx.sends == [] and not h.core.upstream_targets.by_upstream
    assert not routing.trusted_source(h.core, src(PORT_A))


def test_a_request_from_a_target_is_an_upstreams() -> None:
    """Access rules by the packet's address and port (never by a header): a request from a
    resolved target is routed by its Request-URI like any upstream's (routing order step 4)."""
    h = named(A, B)
    out = h.feed(request(ruri="sip:bob@127.0.0.1:6100"), src(PORT_A))
    assert [s.port for s in out if s.data.startswith(b"INVITE")] == [6100]


def test_probes_of_a_target_gone_are_forgotten() -> None:
    h = named(A, B, probe_interval=10.0, probe_timeout=1.0)
    out = h.take(h.core.start_probes(h.now))
    pending = [s.token for s in out if isinstance(s.token, Probe)]
    assert len(pending) == 3
    h.take(h.core.set_upstream_targets(URI, (A,), h.now))
    assert {p.upstream.port for p in h.core.prober.pending.values()} == {PORT_A, PORT_UP2}
    h.advance(2)
    assert {t.port for t in h.core.prober.up} == {PORT_A, PORT_UP2}


def test_sends_to_targets_are_to_addresses() -> None:
    h = named(A)
    out = h.feed(request())
    assert all(isinstance(s, Send) and s.host == "127.0.0.1" for s in out)


def redirect_from_a(trust_upstreams: bool) -> Harness:
    guard = RedirectGuard((), ("127.0.0.9",), trust_upstreams=trust_upstreams)
    h = named(A, B, policy=default_policy(), guard=guard)
    h.feed(request())
    h.feed(response_to(invites(h, PORT_A)[0], 302,
                       extra=("Contact: <sip:bob@127.0.0.9:5090>",)), src(PORT_A))
    return h


def test_a_3xx_from_a_resolved_target_is_an_upstreams_by_default() -> None:
    """``redirects.trusted_sources`` left to its default trusts the upstreams: a resolved target
    too, by the address and port it answered from (whatever its answer is now)."""
    assert len(invites(redirect_from_a(True), 5090)) == 1
    # a trusted_sources list the operator wrote is taken as it is
    assert invites(redirect_from_a(False), 5090) == []


def test_the_status_table_names_each_resolved_address() -> None:
    from proxy.status_cli import status_table

    table = status_table({"probing": True, "upstreams": [
        {"upstream": URI, "target": "udp:127.0.0.1:5071", "resolved": True, "up": False},
        {"upstream": "sip:127.0.0.1:5081", "target": "udp:127.0.0.1:5081", "resolved": False,
         "up": True}]})
    assert "upstream sip:carrier.test target udp:127.0.0.1:5071" in table
    assert "upstream sip:127.0.0.1:5081 " in table and "target udp:127.0.0.1:5081" not in table


def test_the_call_summary_names_each_address_tried() -> None:
    h = named(A, B)
    fx = h.core.on_message(request(), Source("udp", "127.0.0.1", 6000), h.now)
    h.take(fx)
    h.take(h.core.on_message(response_to(invites(h, PORT_A)[0], 503), src(PORT_A), h.now))
    fx = h.core.on_message(response_to(invites(h, PORT_B)[0], 486), src(PORT_B), h.now)
    [line] = fx.logs
    assert line.targets == ("sip:carrier.test (udp:127.0.0.1:5071)",
                            "sip:carrier.test (udp:127.0.0.1:5072)")


def test_a_resolved_address_stands_for_its_configured_upstream() -> None:
    from proxy.core.upstream_targets import configured

    h = named(A, B)
    a = next(t for t in h.core.upstream_targets.owner if t.port == PORT_A)
    assert configured(h.core, a) == NAMED
    assert configured(h.core, UP2) == UP2
    assert configured(h.core, Target("udp", "127.0.0.1", 7000)) is None


def test_an_operators_drain_of_the_name_applies_to_every_address() -> None:
    """`upstreams drain sip:carrier.test`: new calls skip all its addresses; down: none of
    them is probed any more."""
    from proxy.core.upstream_admin import AdminState

    h = named(A, B, probe_interval=1.0, probe_timeout=0.5)
    h.take(h.core.set_upstream_admin(AdminState(URI, "drain", 1.0e9, "node-a"), "here", h.now))
    out = h.feed(request())
    assert [s.port for s in out if s.data.startswith(b"INVITE")] == [PORT_UP2]
    h.take(h.core.set_upstream_admin(AdminState(URI, "down", 1.0e9, "node-a"), "here", h.now))
    out = h.take(h.core.start_probes(h.now))
    assert [s.port for s in out if s.data.startswith(b"OPTIONS")] == [PORT_UP2]


def test_upstreams_list_shows_a_name_up_while_one_address_answers() -> None:
    from pathlib import Path
    from types import SimpleNamespace

    from proxy.config import Config, Upstream
    from proxy.runtime.upstream_control import listing

    h = named(A, B, probe_interval=10.0, probe_timeout=1.0)
    out = h.take(h.core.start_probes(h.now))
    probes = {s.port: s for s in out if s.data.startswith(b"OPTIONS")}
    h.take(h.core.on_send_failure(probes[PORT_A].token, h.now))  # A down
    cfg = Config(Path("proxy.yaml"), (), upstreams=(Upstream(URI, "carrier.test", 5060, "udp"),
                            Upstream(UP2.label, "127.0.0.1", PORT_UP2, "udp")))
    rt = SimpleNamespace(core=h.core, config=cfg, state=SimpleNamespace(node="n", name="memory"))
    rows = {r["upstream"]: r["probe"] for r in listing(rt)["upstreams"]}
    assert rows[URI] == "up"  # B answers (not yet marked down)
    h.take(h.core.on_send_failure(probes[PORT_B].token, h.now))
    rows = {r["upstream"]: r["probe"] for r in listing(rt)["upstreams"]}
    assert rows[URI] == "down"


def test_a_rule_sees_a_resolved_address_as_its_groups_upstream_and_holds_that_address() -> None:
    """Groups: the rule matches ``upstream: carrier`` for an answer from an address of
    sip:carrier.test, and its hold_down holds that address only (each resolved target is an
    upstream for hold-down): the next call starts at the other address."""
    from proxy.core.proxy.steer import upstream_states
    from proxy.policy import parse_policy

    policy, _ = parse_policy("""
rules:
  - name: carrier-busy
    match: {status: 503, upstream: carrier}
    action: failover
    hold_down: 60
""", groups=["carrier", "pbx"])
    h = Harness.make(upstreams=(NAMED,), groups=(("carrier", (NAMED,)), ("pbx", (UP2,))),
                     policy=policy, timers=TimerConfig(t1=0.05), srv_seed=7)
    h.take(h.core.set_upstream_targets(URI, (A, B), h.now))
    h.feed(request())
    h.feed(response_to(invites(h, PORT_A)[0], 503), src(PORT_A))
    assert len(invites(h, PORT_B)) == 1
    a = next(t for t in h.core.upstream_targets.owner if t.port == PORT_A)
    assert h.core.prober.held_until(a, h.now) == h.now + 60
    held = {s.target.port: s.held_for for s in upstream_states(h.core, h.now)}
    assert held == {PORT_A: 60.0, PORT_B: 0.0, PORT_UP2: 0.0}
    h.sent.clear()
    assert first_invite_port(h, 2) == PORT_B
