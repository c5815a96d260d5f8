"""Overload control on a running proxy driven past its bound by real load (README
"Overload control"): ``limits.max_transactions`` small, sipp placing calls faster than the
transactions expire. The excess INVITEs get ``503`` with ``Retry-After`` (RFC 3261 21.5.4)
and reach nobody; the calls admitted complete, their in-dialog BYEs served while the proxy
refuses new calls; one log line starts the episode and one ends it with the count.

T1 is 50 ms here so that a transaction is held 64*T1 = 3.2 s (RFC 3261 17.1.2.2 Timer F,
17.2.1 Timer L): the episode ends a few seconds after the load stops.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.harness import ProxyProcess, Sipp, Traced, free_port, traced

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]
OVERLOAD_UAC = Path(__file__).resolve().parents[2] / "bench" / "uac_rr_overload.xml"
CALLS = 300
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def stamp(line: str) -> float:
    m = _STAMP.match(line)
    assert m is not None, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def test_past_max_transactions_new_calls_get_503_and_admitted_calls_complete(
        proxy_factory: ProxyFactory, sipp: Sipp) -> None:
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:127.0.0.1:{pbx_port}"], timers={"t1_ms": 50},
                          limits={"max_transactions": 40, "overload_lag_ms": 0})
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    mark = proxy.mark()
    # 300 calls at 100/s, each admitted one up for 1.5 s: its BYE comes while new calls
    # are still being refused
    caller = await sipp.uac(str(OVERLOAD_UAC), proxy.addr, calls=CALLS, rate=100, limit=CALLS,
                            duration_ms=1500, timeout=60, name="caller")
    result = await caller.wait()
    assert result.returncode == 0 and not result.timed_out, result.describe()
    refused = int(result.counters["refused(C)"])
    completed = int(result.counters["completed(C)"])
    assert refused + completed == CALLS, result.describe()
    assert completed >= 20 and refused >= CALLS // 3, result.describe()
    start = await proxy.await_log("overload: ", since=mark)
    assert "transactions held (bound 40)" in start
    end = await proxy.await_log("overload over after", timeout=20, since=mark)
    assert re.search(rf"\b{refused} new INVITEs and REGISTERs refused", end), end
    assert len([ln for ln in proxy.lines()[mark:] if "overload" in ln]) == 2
    # every 503 carries Retry-After; nothing refused reached the PBX
    got = traced(result)
    unavailable = [t.msg for t in got if t.direction == "received" and t.msg.status == 503]
    assert len(unavailable) >= refused
    assert all(m.get("retry-after") in ("2", "3", "4", "5") for m in unavailable)
    await pbx.stop(grace=3.0)
    at_pbx = traced(pbx)
    invites = {t.msg.call_id for t in at_pbx if t.direction == "received"
               and t.msg.method == "INVITE"}
    assert len(invites) == completed
    assert not invites & {m.call_id for m in unavailable}
    # BYEs of admitted calls reached the PBX during the episode, and were answered
    during = [t for t in at_pbx if t.direction == "received" and t.msg.method == "BYE"
              and stamp(start) < t.at < stamp(end)]
    assert during, (stamp(start), stamp(end))
    byes_ok = {t.msg.call_id for t in got if t.direction == "received" and t.msg.status == 200
               and t.msg.cseq[1] == "BYE"}
    assert {t.msg.call_id for t in during} <= byes_ok
    proxy.assert_alive()


async def test_a_pause_the_proxy_drains_by_itself_refuses_nothing(
        proxy_factory: ProxyFactory, sipp: Sipp) -> None:
    """The wait bound on by default (``overload_lag_ms: 50``): the proxy stopped for 300 ms
    under load (as by a long collector pass or a busy neighbour) finds a backlog in its
    receive queue and a late timer, drains it in a few milliseconds, and refuses nothing
    (the meter starts an episode only on a standing queue that does not drain; the first
    one, on a wait over the bound smoothed over 100 ms, started one here)."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:127.0.0.1:{pbx_port}"])
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    mark = proxy.mark()
    calls = 400
    caller = await sipp.uac(str(OVERLOAD_UAC), proxy.addr, calls=calls, rate=100, limit=calls,
                            timeout=60, name="caller")
    await asyncio.sleep(2.5)  # past the meter's warm-up, calls flowing
    assert proxy.proc is not None
    for _ in range(2):
        proxy.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.3)
        proxy.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.5)
    result = await caller.wait()
    assert result.returncode == 0 and not result.timed_out, result.describe()
    assert int(result.counters["completed(C)"]) == calls, result.describe()
    assert int(result.counters["refused(C)"]) == 0, result.describe()
    assert not [ln for ln in proxy.lines()[mark:] if "overload" in ln], proxy.tail()
    await pbx.stop(grace=3.0)
    proxy.assert_alive()


def inversions(caller: list[Traced], pbx: list[Traced], since: float, until: float) -> int:
    """Pairs (INVITE, BYE) the caller sent in [since, until), the INVITE first, that reached
    the PBX the other way round (first copies only)."""
    sent: dict[tuple[str, str], float] = {}
    for t in caller:
        if t.direction == "sent" and t.msg.method in ("INVITE", "BYE"):
            sent.setdefault((t.msg.method, t.msg.call_id), t.at)
    got: dict[tuple[str, str], float] = {}
    for t in pbx:
        if t.direction == "received" and t.msg.method in ("INVITE", "BYE"):
            got.setdefault((t.msg.method, t.msg.call_id), t.at)
    queued = [(at, key) for key, at in sent.items() if since <= at < until and key in got]
    invites = [(at, got[key]) for at, key in queued if key[0] == "INVITE"]
    byes = [(at, got[key]) for at, key in queued if key[0] == "BYE"]
    return sum(1 for i_sent, i_got in invites for b_sent, b_got in byes
               if i_sent < b_sent and b_got < i_got)


@pytest.mark.parametrize("lag_ms", [50, 0])
async def test_a_backlog_is_handled_calls_in_progress_first(
        proxy_factory: ProxyFactory, sipp: Sipp, lag_ms: int) -> None:
    """README "Overload control": with it on, new INVITEs read from the socket are handled
    after the other messages of the same loop turn (proxy/transport/udp_order.py). The proxy
    stopped for 300 ms under load finds INVITEs and BYEs queued in arrival order; with the
    order on, BYEs sent after an INVITE reach the PBX before it; with overload control off
    (``overload_lag_ms: 0``) the socket's order holds: never."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:127.0.0.1:{pbx_port}"],
                          limits={"overload_lag_ms": lag_ms})
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    calls = 400
    caller = await sipp.uac(str(OVERLOAD_UAC), proxy.addr, calls=calls, rate=100, limit=calls,
                            duration_ms=200, timeout=60, name="caller")
    await asyncio.sleep(2.5)  # calls flowing, each up for 200 ms: BYEs among the INVITEs
    proxy.send_signal(signal.SIGSTOP)
    since = time.time()  # sipp's traces are on the wall clock
    await asyncio.sleep(0.3)
    proxy.send_signal(signal.SIGCONT)
    until = time.time()
    result = await caller.wait()
    assert result.returncode == 0 and not result.timed_out, result.describe()
    assert int(result.counters["completed(C)"]) == calls, result.describe()
    await pbx.stop(grace=3.0)
    swapped = inversions(traced(result), traced(pbx), since, until)
    if lag_ms:
        assert swapped > 0, "no BYE overtook an INVITE queued before it"
    else:
        assert swapped == 0, f"{swapped} BYEs overtook INVITEs with the order off"
    proxy.assert_alive()
