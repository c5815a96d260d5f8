"""Overload control on the sans-IO core with a fake clock (proxy.core.access.overload) and
the load meter's decision (proxy.runtime.overload.LoadMeter): while overloaded, a new INVITE
or REGISTER gets one stateless 503 with Retry-After (RFC 3261 21.5.4) and nothing else is
done for it; in-dialog requests, ACK, CANCEL, responses, retransmissions of admitted requests
and the upstreams' own requests are served as always."""

from __future__ import annotations

import socket
import time
from typing import Any

from proxy.core.effects import INFO, WARNING, LogLine
from proxy.core.types import Source
from proxy.runtime.overload import (
    MAX_DOWN,
    MAX_UP,
    ORDER,
    RISING,
    STEP,
    TARGET,
    TICK,
    WINDOW,
    LagTicker,
    LoadMeter,
    QueueAge,
)
from proxy.sip import parse_message
from tests.unit.core_harness import (
    CALLER,
    Harness,
    methods,
    request,
    response_to,
    statuses,
)

PBX = Source("udp", "127.0.0.1", 5080)


def overloaded(h: Harness, reason: str | None = "messages wait 80 ms to be handled",
               share: float = 1.0) -> list[LogLine]:
    fx = h.core.set_overload(reason, share, h.now)
    return [r for r in fx.logs if isinstance(r, LogLine)]


def test_a_new_invite_and_register_get_one_stateless_503_with_retry_after() -> None:
    h = Harness.make()
    overloaded(h)
    out = h.feed(request(branch="z9hG4bKov1", call_id="ov-1"))
    assert statuses(h.to(6000, out)) == [503]  # no 100 Trying: no work was spent on it
    answer = parse_message(out[0].data)
    assert 2 <= int(answer.get("retry-after") or 0) <= 5
    assert answer.to_tag is not None  # RFC 3261 8.2.6.2: a tag on a final response
    assert h.to(5080, out) == []
    out = h.feed(request("REGISTER", ruri="sip:example.com", branch="z9hG4bKov2",
                         call_id="ov-2"))
    assert statuses(h.to(6000, out)) == [503] and h.to(5080, out) == []
    assert len(h.core.table) == 0  # stateless: nothing held, no Timer J or H
    assert h.core.refusals.counts["overload"] == 2
    # nothing retransmits the 503 (no transaction): the clock runs, nothing is sent
    assert h.advance(40.0) == []


def test_the_ack_of_a_refusal_ends_here_before_any_parse() -> None:
    """RFC 3261 17.1.1.3 / 17.2.1: the caller ACKs the 503 with its To tag; the ACK ends at
    the proxy that sent the 503. The refusal's tag is marked, and the ACK is recognised by
    its bytes: even one the parser would refuse is absorbed, counted, and nothing is sent."""
    h = Harness.make()
    overloaded(h)
    out = h.feed(request(branch="z9hG4bKack1", call_id="ack-1"))
    tag = parse_message(out[0].data).to_tag
    assert tag is not None and tag.startswith(h.core.tag_prefix + "o")
    parse_errors = h.core.metrics.bad["unparsable"]
    ack = request("ACK", branch="z9hG4bKack1", call_id="ack-1", to_tag=tag)
    assert h.feed(ack.replace(b"Call-ID", b"Call ID")) == []  # no parse: no 400 either
    assert h.core.metrics.bad["unparsable"] == parse_errors
    assert h.core.stats["acks_absorbed"] == 1
    # over: the ACK of a late 503 is still absorbed; another ACK is not taken for one
    overloaded(h, None)
    assert h.feed(ack) == [] and h.core.stats["acks_absorbed"] == 2
    other = request("ACK", branch="z9hG4bKack2", call_id="ack-2",
                    to_tag=h.core.tag_prefix + "1f")
    h.feed(other)
    assert h.core.stats["acks_absorbed"] == 3  # the proxy's own tag: absorbed after the parse
    assert h.core.stats["requests_in"] == 4


def test_retry_after_is_spread_over_the_refusals() -> None:
    """RFC 6357 3.3: senders all told the same delay come back together."""
    h = Harness.make()
    overloaded(h)
    values = {parse_message(h.feed(request(branch=f"z9hG4bKs{i}", call_id=f"s-{i}"))[0].data)
              .get("retry-after") for i in range(8)}
    assert values == {"2", "3", "4", "5"}


def test_calls_admitted_before_go_on_acks_byes_cancels_and_responses_are_served() -> None:
    h = Harness.make()
    # call A answered before the overload, call B still ringing
    h.feed(request(branch="z9hG4bKa", call_id="a"))
    fwd_a = [s.data for s in h.sent if s.port == 5080 and s.data.startswith(b"INVITE")][-1]
    rr = parse_message(fwd_a).get_all("record-route")
    ok = h.feed(response_to(fwd_a, 200, extra=tuple(f"Record-Route: {v}" for v in rr)), PBX)
    assert statuses(h.to(6000, ok)) == [200]
    h.feed(request(branch="z9hG4bKb", call_id="b"))
    fwd_b = [s.data for s in h.sent if s.port == 5080 and s.data.startswith(b"INVITE")][-1]
    assert overloaded(h)[0].level == WARNING
    # a retransmission of the admitted INVITE B is absorbed by its transaction (100 again)
    out = h.feed(request(branch="z9hG4bKb", call_id="b"))
    assert 503 not in statuses(h.to(6000, out))
    # B's 180 is relayed; B's CANCEL is served (200 to the CANCEL, CANCEL to the PBX)
    assert statuses(h.to(6000, h.feed(response_to(fwd_b, 180), PBX))) == [180]
    out = h.feed(request("CANCEL", branch="z9hG4bKb", call_id="b"))
    assert statuses(h.to(6000, out)) == [200] and methods(h.to(5080, out)) == ["CANCEL"]
    # A's ACK and in-dialog BYE go to the PBX, and the BYE's 200 comes back
    route = ", ".join(reversed([v.strip() for r in parse_message(ok[0].data)
                                .get_all("record-route") for v in r.split(",")]))
    out = h.feed(request("ACK", ruri="sip:bob@127.0.0.1:5080", branch="z9hG4bKaack",
                         call_id="a", to_tag="callee1", extra=(f"Route: {route}",)))
    assert methods(h.to(5080, out)) == ["ACK"]
    out = h.feed(request("BYE", ruri="sip:bob@127.0.0.1:5080", branch="z9hG4bKabye", cseq=2,
                         call_id="a", to_tag="callee1", extra=(f"Route: {route}",)))
    [bye] = h.to(5080, out)
    assert bye.method == "BYE"
    fwd_bye = [s.data for s in out if s.port == 5080][0]
    assert statuses(h.to(6000, h.feed(response_to(fwd_bye, 200), PBX))) == [200]
    assert h.core.refusals.counts["overload"] == 0


def test_a_stale_new_request_is_refused_whatever_the_share() -> None:
    """CoDel's drop from the front (RFC 8289 5): during an episode a new INVITE that waited
    in the proxy past the bound (the runtime says ``stale``) is refused even when the share
    admits it; a stale request within a dialog, an upstream's, or any request outside an
    episode is served."""
    h = Harness.make()
    overloaded(h, share=0.0)  # an episode that refuses no share
    fresh = h.feed(request(branch="z9hG4bKf1", call_id="f-1"))
    assert 503 not in statuses(h.to(6000, fresh))
    stale = h.take(h.core.on_message(request(branch="z9hG4bKst1", call_id="st-1"), CALLER,
                                     h.now, True))
    assert statuses(h.to(6000, stale)) == [503] and h.to(5080, stale) == []
    assert h.core.overload.stale == 1 and h.core.refusals.counts["overload"] == 1
    in_dialog = h.take(h.core.on_message(
        request(branch="z9hG4bKst2", call_id="f-1", cseq=2, to_tag="callee1"), CALLER, h.now,
        True))
    assert 503 not in statuses(h.to(6000, in_dialog))
    pbx = h.take(h.core.on_message(
        request(ruri="sip:carol@127.0.0.1:5081", branch="z9hG4bKst3", call_id="st-3",
                via_host="127.0.0.1:5080"), PBX, h.now, True))
    assert 503 not in statuses(h.to(5080, pbx))
    overloaded(h, None)
    after = h.take(h.core.on_message(request(branch="z9hG4bKst4", call_id="st-4"), CALLER,
                                     h.now, True))
    assert 503 not in statuses(h.to(6000, after)) and h.core.overload.stale == 1


def test_other_methods_and_the_upstreams_own_requests_are_served() -> None:
    h = Harness.make()
    overloaded(h)
    out = h.feed(request("OPTIONS", ruri="sip:127.0.0.1:5060", branch="z9hG4bKo",
                         call_id="o"))
    assert 503 not in statuses(h.to(6000, out))
    # the PBX calls a user: trusted, served (its INVITE is forwarded, not refused)
    out = h.feed(request(ruri="sip:carol@127.0.0.1:5081", branch="z9hG4bKpbx", call_id="p",
                         via_host="127.0.0.1:5080"), PBX)
    assert 503 not in statuses(h.to(5080, out))
    assert h.core.refusals.counts["overload"] == 0


def test_one_log_line_at_each_edge_of_an_episode_with_the_count() -> None:
    h = Harness.make()
    [start] = overloaded(h, "messages wait 61 ms to be handled (bound 50 ms)")
    assert start.level == WARNING and "61 ms" in start.message % start.args
    assert overloaded(h, "messages wait 61 ms to be handled (bound 50 ms)", 0.5) == []
    for i in range(3):
        h.feed(request(branch=f"z9hG4bKe{i}", call_id=f"e-{i}"))
    h.now += 2.5
    [end] = overloaded(h, None)
    text = end.message % end.args
    assert end.level == INFO and "2.5 s" in text and "1 new INVITEs and REGISTERs refused (0 " \
        "of them for having waited past the bound), 2 admitted" in text, text
    assert overloaded(h, None) == []
    assert h.core.overload.episodes == 1 and not h.core.shedding
    # over: served again
    out = h.feed(request(branch="z9hG4bKafter", call_id="after"))
    assert statuses(h.to(6000, out)) == [100] and methods(h.to(5080, out)) == ["INVITE"]


def test_a_share_refuses_that_share_spread_evenly() -> None:
    """RFC 7339's loss-based idea: a share of 0.25 refuses every fourth new INVITE, no
    random draw; the others are served as always."""
    h = Harness.make()
    overloaded(h, share=0.25)
    got = [statuses(h.to(6000, h.feed(request(branch=f"z9hG4bKq{i}", call_id=f"q-{i}"))))
           for i in range(40)]
    assert got.count([503]) == 10 and got.count([100]) == 30
    assert [i for i, g in enumerate(got) if g == [503]] == list(range(3, 40, 4))
    assert h.core.overload.admitted == 30 and h.core.refusals.counts["overload"] == 10


# ----------------------------------------------------------------- the load meter


def ticks(m: LoadMeter, wait: float, n: int, t: float, txns: int = 0,
          step: float = TICK, grow: float = 0.0) -> tuple[float, list[tuple[str | None, float]]]:
    """n ticks of the meter: the oldest datagram queued has waited ``wait`` seconds, plus
    ``grow`` more each tick."""
    changes = []
    for _ in range(n):
        t += step
        if m.sample(wait, txns, t):
            changes.append((m.reason, m.share))
        wait += grow
    return t, changes


def test_a_queue_that_drains_starts_no_episode() -> None:
    """A stall (a collector pass, a burst) leaves a backlog the proxy drains by itself:
    no refusals, however long the wait was (the false alarm of the first meter)."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, ch = ticks(m, 0.002, 100, 0.0)  # the queue empties between bursts: a few ms
    assert ch == []
    # a 250 ms stall at 80 % load: 200 ms of backlog, draining 0.2 s a second
    t, ch = ticks(m, 0.200, 40, t, grow=-0.2 * TICK)
    assert ch == [] and m.reason is None
    # one late tick among quiet ones
    t, ch = ticks(m, 0.002, 10, t)
    t, ch2 = ticks(m, 0.500, 1, t)
    t, ch3 = ticks(m, 0.002, 10, t)
    assert ch == ch2 == ch3 == [] and m.reason is None


def test_a_standing_queue_that_grows_starts_an_episode_within_the_window() -> None:
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, _ = ticks(m, 0.002, 20, 0.0)
    # twice the load the proxy carries: the wait grows by a tick each tick (1 s a second)
    t, ch = ticks(m, 0.030, 8, t, grow=TICK)
    assert ch and ch[0][0] is not None and "wait" in ch[0][0] and "(bound 50 ms)" in ch[0][0]
    assert m.lag > 0.05  # the least wait over the window was over the bound
    assert ch[0][1] >= STEP  # the share starts large enough to tell
    # the wait keeps growing: the share grows fast, at most MAX_UP a tick
    before = m.share
    t, _ = ticks(m, m.recent[-1], 3, t, grow=TICK)
    assert before < m.share <= min(1.0, before + 3 * MAX_UP + 1e-9)


def test_a_wait_growing_tick_after_tick_starts_an_episode_before_the_window_is_over() -> None:
    """Twice the load the proxy carries, from one tick to the next (sipp's step): the wait
    grows a tick each tick. RISING ticks over the bound, the last longer than the first,
    start the episode while the least wait of the window is still under the bound: the
    calls admitted meanwhile wait 40 ms less (2 ticks) than with the window alone."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, _ = ticks(m, 0.002, 20, 0.0)
    t, ch = ticks(m, 0.021, 4, t, grow=TICK)  # 21, 41, 61, 81 ms: two over the bound
    assert ch == [] and m.reason is None
    t, ch = ticks(m, 0.101, 1, t)  # the third: 61, 81, 101
    assert ch and ch[0][0] == "messages wait 61 ms to be handled (bound 50 ms)"
    assert m.lag < m.lag_bound  # the window alone (WINDOW ticks over it) would still wait
    assert RISING < WINDOW


def test_a_wait_over_the_bound_that_does_not_grow_waits_for_the_window() -> None:
    """Over the bound but not growing: a stall's backlog that drains starts nothing; a level
    one starts an episode once the whole window stood over the bound (the standing rule)."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, _ = ticks(m, 0.002, 20, 0.0)
    t, ch = ticks(m, 0.080, 8, t, grow=-0.005)  # 80, 75, ... 45 ms: draining
    assert ch == [] and m.reason is None
    t, _ = ticks(m, 0.002, 20, t)
    for _ in range(WINDOW - 1):  # level at 60 ms: never longer than RISING ticks before
        t, ch = ticks(m, 0.060, 1, t)
        assert ch == [] and m.reason is None
    t, ch = ticks(m, 0.060, 1, t)  # the window stands over the bound
    assert ch and ch[0][0] == "messages wait 60 ms to be handled (bound 50 ms)"


class _Queue:
    """QueueAge's place in a LagTicker: the socket queue's wait at the last tick."""

    def __init__(self, sockets: float) -> None:
        self.sockets = sockets

    def __call__(self) -> float:
        return self.sockets


def test_a_held_request_is_stale_by_its_wait_in_the_socket_and_after_it() -> None:
    """During an episode a new request is refused as stale when the time it was held after
    it was read plus the socket queue's wait (the last tick's measure) pass the bound: the
    backlog that filled the socket before the episode started is what is refused, though
    each request of it was held only a moment once read (the first version of the check
    saw the moment only, and refused none: '0 of them for having waited past the bound'
    in the benchmark's 2x steps). Outside an episode nothing is stale."""
    meter = LoadMeter(lag_ms=50, max_transactions=0)
    queue = _Queue(0.045)
    ticker = LagTicker(None, meter, lambda: 0, queue, lambda *a: None)  # type: ignore[arg-type]
    assert not ticker.stale(0.010)  # no episode: never
    meter.reason = "messages wait 51 ms to be handled (bound 50 ms)"
    assert ticker.stale(0.010)  # 45 ms in the socket, 10 ms held
    assert not ticker.stale(0.004)  # 49 ms in all
    queue.sockets = 0.0  # the backlog is gone
    assert not ticker.stale(0.040) and ticker.stale(0.051)
    off = LagTicker(None, LoadMeter(lag_ms=0, max_transactions=10), lambda: 0,
                    lambda: 0.0, lambda *a: None)  # type: ignore[arg-type]
    off.meter.reason = "11 transactions held (bound 10)"
    assert not off.stale(5.0)  # the wait is no measure: no bound to pass


class _Order:
    """A listener's order (udp_order.NewRequests) as the ticker sees it."""

    def __init__(self) -> None:
        self.wanted: list[tuple[bool, bool]] = []

    def want(self, on: bool, backlog: bool = False) -> None:
        self.wanted.append((on, backlog))


class _TimerLoop:
    def __init__(self) -> None:
        self.now = 10.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Any) -> None:
        return None


def test_the_udp_order_is_on_while_a_tick_finds_a_queue_or_an_episode() -> None:
    """proxy/transport/udp_order.py: new requests are held after the calls in progress only
    while there is a queue to pass: a tick that measures a wait over ORDER of the bound
    turns the listeners' order on, one under it off (told once per change); an episode
    keeps it on whatever the wait. A wait over TARGET of the bound, or an episode, is told to
    the orders as a backlog (they handle fewer held requests a turn then)."""
    loop = _TimerLoop()
    meter = LoadMeter(lag_ms=50, max_transactions=0)
    queue = _Queue(0.0)
    order = _Order()
    ticker = LagTicker(loop, meter, lambda: 0, queue, lambda *a: None,  # type: ignore[arg-type]
                       orders=[order])
    ticker._from = 0.0  # past the warm-up

    def tick(wait: float) -> None:
        loop.now += TICK
        ticker._due = loop.now  # on time: the queue alone is the wait
        queue.sockets = wait
        ticker._fire()

    tick(0.001)
    tick(0.050 * ORDER * 0.9)
    assert order.wanted == []  # no queue: the order stays off, nothing told
    tick(0.050 * ORDER * 1.1)
    assert order.wanted == [(True, False)]
    tick(0.050 * TARGET * 0.9)
    assert order.wanted == [(True, False)]  # told once
    tick(0.050 * TARGET * 1.1)  # over the target: a backlog builds
    assert order.wanted == [(True, False), (True, True)]
    tick(0.002)
    assert order.wanted == [(True, False), (True, True), (False, False)]
    meter.reason = "messages wait 60 ms to be handled (bound 50 ms)"
    meter.share = 0.5
    tick(0.0)
    # an episode keeps it on, queue or not, as a backlog (BATCH held requests a turn)
    assert order.wanted[-1] == (True, True) and len(order.wanted) == 4
    off = LagTicker(loop, LoadMeter(lag_ms=0, max_transactions=10), lambda: 0,  # type: ignore[arg-type]
                    lambda: 0.0, lambda *a: None)
    assert off.orders == []  # no wait bound: no order (install passes none)


def test_the_share_settles_where_the_wait_holds_at_its_target() -> None:
    """A plant: the wait grows by (load - 1) a second, the load falls as the share rises
    (a refusal costs a fifth of a call); the share settles near the share that carries
    the load, the wait near half the bound, and over when the load passes."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    offered, cost_of_refusal = 2.0, 0.2
    wait, t, shares, waits = 0.0, 0.0, [], []
    for i in range(500):  # 10 s
        share = m.share if m.reason is not None else 0.0
        load = offered * (1 - share) + offered * share * cost_of_refusal
        wait = max(0.0, wait + (load - 1.0) * TICK)
        t += TICK
        m.sample(wait, 0, t)
        if i >= 250:
            shares.append(m.share)
            waits.append(wait)
    carried = (offered - 1.0) / (offered * (1 - cost_of_refusal))  # load 1: 0.625
    assert abs(sum(shares) / len(shares) - carried) < 0.1
    assert max(waits) < 0.1 and sum(waits) / len(waits) < 0.05
    t, ch = ticks(m, 0.0, 150, t)  # the load is gone: the share falls, then HOLD at 0
    assert ch[-1] == (None, 0.0) and m.reason is None
    assert [s for _, s in ch] == sorted((s for _, s in ch), reverse=True)


def test_an_episode_ends_after_its_share_stayed_0_for_hold_and_a_load_back_meets_it() -> None:
    """The share back to 0 does not end the episode: HOLD seconds of it do. A load that comes
    back meanwhile raises the share as soon as the wait passes the target, a quarter of the
    bound, instead of waiting for the start's test (over the bound for ticks) again: no
    second start, no second set of calls admitted while the wait grew."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, _ = ticks(m, 0.002, 20, 0.0)
    t, ch = ticks(m, 0.021, 5, t, grow=TICK)
    assert ch and ch[0][0] is not None and m.reason is not None
    reason = m.reason
    for _ in range(100):  # the load is gone: the share falls to 0 ...
        t, _ = ticks(m, 0.0, 1, t)
        if m.share == 0.0:
            break
    assert m.share == 0.0 and m.reason == reason
    t, ch = ticks(m, 0.0, int(0.5 / TICK), t)  # ... and stays 0 for half the hold
    assert ch == [] and m.reason == reason
    t, ch = ticks(m, 0.020, 6, t, grow=0.002)  # back: 20-30 ms, under the bound, over the target
    assert m.reason == reason and m.share >= STEP and ch and ch[-1][0] == reason
    t, ch = ticks(m, 0.0, 200, t)  # gone for good: one end
    assert ch[-1] == (None, 0.0) and [c for c in ch if c[0] is None] == [(None, 0.0)]


def test_spikes_of_one_or_two_ticks_do_not_raise_the_share() -> None:
    """In an episode the share follows the wait that stands over RISING ticks, not the last
    tick's: a collector pass or a burst (a tick or two at 30 ms, the queue empty between)
    raised the share by 10 points each and let it down by 1 a tick, so that a proxy at half a
    core refused two calls in three (the benchmark's 2x step, 2026-12-07). With spikes the
    share now falls as it would without them; a wait that stands over the target raises it."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, _ = ticks(m, 0.002, 20, 0.0)
    t, _ = ticks(m, 0.021, 5, t, grow=TICK)
    t, _ = ticks(m, 0.100, 5, t)
    assert m.reason is not None
    start = m.share
    for _ in range(10):  # two ticks at 30 ms in every ten, the queue empty otherwise
        t, _ = ticks(m, 0.030, 2, t)
        t, _ = ticks(m, 0.0, 8, t)
    assert m.share < start
    low = m.share
    t, _ = ticks(m, 0.030, 4, t)  # standing at 30 ms: over the target (12.5 ms)
    assert m.share > low


def test_a_draining_queue_lowers_the_share() -> None:
    """Over the bound but falling fast: once the window shows the drain, the share comes
    down (no more refusals than it takes), MAX_DOWN a tick, while the wait is still over the
    bound."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=0.0)
    t, _ = ticks(m, 0.1, 10, 0.0, grow=0.01)  # growing past the bound: an episode
    assert m.reason is not None and 0 < m.share
    t, _ = ticks(m, 0.2, 1, t)
    t, _ = ticks(m, 0.2, 4, t, grow=-0.025)  # falling 1.25 s a second: the window fills
    share = m.share
    t, _ = ticks(m, 0.1, 2, t, grow=-0.025)
    assert m.recent[-1] > 0.05 and abs(m.share - (share - 2 * MAX_DOWN)) < 1e-9


def test_the_meter_bounds_the_transactions_with_hysteresis() -> None:
    m = LoadMeter(lag_ms=0, max_transactions=1000, hold=0.0)
    t, ch = ticks(m, 5.0, 10, 0.0, txns=1000)  # the wait is off (0): never a reason
    assert ch == []
    t, ch = ticks(m, 0.0, 1, t, txns=1001)
    assert ch == [("1001 transactions held (bound 1000)", STEP)]
    t, ch = ticks(m, 0.0, 40, t, txns=950)  # above 90 %: the share stays
    assert ch == [] and m.share == STEP
    t, ch = ticks(m, 0.0, 10, t, txns=899)
    assert ch == [(None, 0.0)]


def test_a_meter_with_both_bounds_off_never_overloads() -> None:
    m = LoadMeter(lag_ms=0, max_transactions=0)
    assert not m.on
    _, ch = ticks(m, 1.0, 100, 0.0, txns=10**7)
    assert ch == []


def test_the_queue_age_is_the_wait_of_the_oldest_datagram_nothing_read() -> None:
    """A socket nobody reads: the kernel's arrival stamp of the head of its queue
    (SO_TIMESTAMPNS, MSG_PEEK) tells how long it has waited; peeking reads nothing."""
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    age = QueueAge([r.fileno()])
    try:
        r.bind(("127.0.0.1", 0))
        assert age() == 0.0  # empty
        deadline = time.monotonic() + 5
        while age() < 0.03 and time.monotonic() < deadline:  # the stamp may start late
            s.sendto(b"x" * 500, r.getsockname())
            time.sleep(0.01)
        oldest = age()
        assert 0.03 <= oldest < 5, oldest
        assert age.sockets == oldest  # nothing held: the sockets' wait is the whole wait
        assert age() >= oldest  # still there, older: nothing was read
        r.setblocking(False)
        while True:
            try:
                r.recv(2000)
            except BlockingIOError:
                break
        assert age() == 0.0
    finally:
        age.close()
        r.close()
        s.close()
