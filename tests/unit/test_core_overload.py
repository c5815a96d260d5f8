"""Overload control on the sans-IO core with a fake clock (proxy.core.access.overload) and
the load meter's decision (proxy.runtime.overload.LoadMeter): while overloaded, a new INVITE
or REGISTER gets one stateless 503 with Retry-After (RFC 3261 21.5.4) and nothing else is
done for it; in-dialog requests, ACK, CANCEL, responses, retransmissions of admitted requests
and the upstreams' own requests are served as always."""

from __future__ import annotations

import os
import socket

from proxy.core.effects import INFO, WARNING, LogLine
from proxy.core.types import Source
from proxy.runtime.overload import UP, LoadMeter, UdpBacklog, datagram_memory
from proxy.sip import parse_message
from tests.unit.core_harness import (
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
    assert end.level == INFO and "2.5 s" in text and "1 new INVITEs and REGISTERs refused, 2 " \
        "admitted" in text, text
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
          step: float = 0.02) -> tuple[float, list[tuple[str | None, float]]]:
    changes = []
    for _ in range(n):
        t += step
        if m.sample(wait, txns, t):
            changes.append((m.reason, m.share))
    return t, changes


def test_the_meter_enters_on_a_sustained_wait_not_on_one_late_tick() -> None:
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=1.0)
    t, ch = ticks(m, 0.001, 100, 0.0)
    assert ch == []
    assert not m.sample(0.200, 0, t)  # one 200 ms stall (a GC pass): smoothed to 40 ms
    t, ch = ticks(m, 0.001, 50, t)
    assert ch == [] and m.reason is None
    t, ch = ticks(m, 0.120, 3, t)  # messages wait 120 ms, tick after tick
    assert len(ch) == 1 and ch[0][0] is not None and "wait" in ch[0][0]
    assert ch[0][1] == UP  # a small share first
    t, ch = ticks(m, 0.120, 60, t)  # not draining: the share grows, reported by STEP
    assert m.share == 1.0 and all(r is not None for r, _ in ch) and len(ch) >= 10
    # the queue drains: the share stays (between the margins), then shrinks to 0, over
    t, ch = ticks(m, 0.040, 20, t)
    assert m.share == 1.0 and ch == []
    t, ch = ticks(m, 0.0, 200, t)
    assert ch[-1] == (None, 0.0) and m.reason is None
    assert [s for _, s in ch] == sorted((s for _, s in ch), reverse=True)


def test_a_draining_queue_gets_no_more_refusals() -> None:
    """Over the bound but falling: the share stays where it is."""
    m = LoadMeter(lag_ms=50, max_transactions=0, hold=0.0)
    t, _ = ticks(m, 1.0, 3, 0.0)  # a burst: the wait rises past the bound
    share = m.share
    assert 0 < share < 1
    for wait in (0.3, 0.25, 0.2, 0.15, 0.12, 0.1):
        t, _ = ticks(m, wait, 1, t)
    assert m.lag > 0.05 and m.share == share
    t, _ = ticks(m, 1.0, 1, t)  # rising again: more refusals
    assert m.share > share


def test_the_meter_bounds_the_transactions_with_hysteresis() -> None:
    m = LoadMeter(lag_ms=0, max_transactions=1000, hold=0.0)
    t, ch = ticks(m, 5.0, 10, 0.0, txns=1000)  # the wait is off (0): never a reason
    assert ch == []
    t, ch = ticks(m, 0.0, 1, t, txns=1001)
    assert ch == [("1001 transactions held (bound 1000)", UP)]
    t, ch = ticks(m, 0.0, 40, t, txns=950)  # above 90 %: the share stays
    assert ch == [] and m.share == UP
    t, ch = ticks(m, 0.0, 10, t, txns=899)
    assert ch == [(None, 0.0)]


def test_a_meter_with_both_bounds_off_never_overloads() -> None:
    m = LoadMeter(lag_ms=0, max_transactions=0)
    assert not m.on
    _, ch = ticks(m, 1.0, 100, 0.0, txns=10**7)
    assert ch == []


def test_the_udp_backlog_is_read_from_proc_by_inode() -> None:
    """A socket nobody reads: its queue shows in /proc/net/udp (Linux), 1,280 bytes or more
    a datagram (:func:`datagram_memory`)."""
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.bind(("127.0.0.1", 0))
        backlog = UdpBacklog([os.fstat(r.fileno()).st_ino])
        assert backlog() == 0
        for _ in range(10):
            s.sendto(b"x" * 500, r.getsockname())
        queued = backlog()
        assert round(queued / datagram_memory(500)) == 10, queued
    finally:
        r.close()
        s.close()
