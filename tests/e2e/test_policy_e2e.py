"""The response policy end to end: the real proxy on loopback, sipp as caller, PBXes and phones.

What each test proves (shipped ``policies/default.yaml`` semantics, README "Policy files"):

* ``stop`` (6xx, RFC 3261 16.7 step 5): the 6xx of the first upstream is the caller's final
  response and no other upstream is tried; on a parallel fork the other ringing branch is
  CANCELled (RFC 3261 9.1, 16.10) and the 6xx goes up once that branch has ended (16.7 step 6).
* ``failover`` (503): the next upstream gets the INVITE on a new branch (RFC 3261 16.6 step 8)
  and the call completes, BYE included, through the proxy (Record-Route, RFC 3261 16.12).
* Reload: a changed file changes the next call's handling (mtime watcher + SIGHUP) while a call
  in progress completes; an invalid file is refused on SIGHUP with FILE:LINE:COLUMN lines and
  the old policy stays in force (README "Policy files", "Commands").

Scenario files: ``pol_uas_reject.xml`` (PBX rejecting with one final response, ACK required),
``pol_uac_expect_final.xml`` (caller that requires one final response and ACKs it),
``pol_uas_ring_then_reject.xml`` (phone: 180, 300 ms, 603, ACK required),
``pol_uas_ring_cancel_late_487.xml`` (phone: 180, CANCEL required, 200, 487 after 200 ms, ACK
required), ``pol_uas_busy_or_answer.xml`` (PBX: 486 for ``busy@``, answer + BYE otherwise) and
the harness's ``uac_call.xml``, ``uas_answer.xml``, ``phone_register.xml``.
:func:`test_pol_scenarios_pair_without_proxy` proves each pairing sipp-to-sipp, so a failure
of the other tests points at the proxy, not at a scenario.  sipp takes response codes only from
the scenario file, so the status of ``pol_uas_reject.xml`` / ``pol_uac_expect_final.xml`` (603 as
shipped) is changed per test in a copy under tmp_path by :func:`scenario_copy` (one exact,
asserted substitution).  Timing checks read the timestamps of sipp's -trace_msg files.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    SCENARIOS,
    ProxyProcess,
    Sipp,
    SippProcess,
    SippResult,
    Traced,
    assert_calls,
    branch,
    free_port,
    to_tag,
    traced,
    via_is_proxy,
)
from tests.e2e.wire import RecordingUpstream

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = REPO / "policies" / "default.yaml"
OUTSIDE = "example.net"  # not the proxy's domain: calls from outside go to the upstreams
FAST = {"t1_ms": 100}  # short retransmission timers (RFC 3261 17.1.1.2) for quick failures
REASONS = {
    486: "Busy Here",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}

# ----------------------------------------------------------------------------- helpers


def scenario_copy(dest: Path, name: str, old: str, new: str) -> Path:
    """A copy of ``scenarios/name`` in ``dest`` with the one occurrence of ``old`` replaced."""
    text = (SCENARIOS / name).read_text(encoding="latin-1")
    assert text.count(old) == 1, f"{name}: expected exactly one {old!r}"
    path = dest / f"{Path(name).stem}_{re.sub(r'[^0-9A-Za-z]+', '_', new).strip('_')}.xml"
    path.write_text(text.replace(old, new), encoding="latin-1")
    return path


def rejecting_pbx(dest: Path, status: int) -> Path:
    """pol_uas_reject.xml answering ``status`` instead of 603."""
    return scenario_copy(dest, "pol_uas_reject.xml", "SIP/2.0 603 Decline",
                         f"SIP/2.0 {status} {REASONS[status]}")


def caller_expecting(dest: Path, status: int) -> Path:
    """pol_uac_expect_final.xml requiring ``status`` instead of 603."""
    return scenario_copy(dest, "pol_uac_expect_final.xml", '<recv response="603">',
                         f'<recv response="{status}">')


def trace_of(result: SippResult) -> list[Traced]:
    return traced(result.files["msg"])


def requests(result: SippResult, direction: str, method: str) -> list[Traced]:
    return [t for t in trace_of(result) if t.direction == direction and t.msg.method == method]


def responses(result: SippResult, direction: str, *, final: bool = True) -> list[Traced]:
    return [t for t in trace_of(result)
            if t.direction == direction and t.msg.status is not None
            and (not final or t.msg.status >= 200) and (t.msg.cseq or (0, ""))[1] == "INVITE"]


async def nothing_reaches(upstream: RecordingUpstream, window: float) -> None:
    """The "nothing must arrive" window: fail if ``upstream`` records any SIP message."""
    try:
        msg = await upstream.wait_for(lambda m: True, window)
    except TimeoutError:
        assert upstream.records == [], [d.data[:80] for d in upstream.records]
        return
    raise AssertionError(f"upstream {upstream.port} got a message: {msg.start_line}")


async def established(call: SippProcess, timeout: float) -> None:
    """Wait (bounded) until the caller has ACKed a 200 for its INVITE: the call is up.

    sipp raises no event we could await; its -trace_msg file is written as messages go, so
    this polls that file (20 ms, like the harness's port-bound poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert call.proc.returncode is None, f"{call.name} ended before its call was up"
        if any(t.direction == "sent" and t.msg.method == "ACK" for t in traced(call.files["msg"])):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{call.name}: no 200 ACKed within {timeout} s")


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to a sibling and rename it over ``path``: the proxy's watcher (mtime +
    size) never sees a half-written file."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def upstream(port: int) -> str:
    return f"sip:{LOOPBACK}:{port}"


ProxyFactory = Callable[..., ProxyProcess]


# ----------------------------------------------------------------------------- scenarios


async def test_pol_scenarios_pair_without_proxy(sipp: Sipp, tmp_path: Path) -> None:
    """Each pol_* scenario against its counterpart directly (no proxy): they complete, and a
    caller expecting another final response than the one it gets fails (the scenarios can
    fail)."""
    async def pair(uas_scn: str, uac_scn: str, *, service: str = "service",
                   duration_ms: int = 0) -> tuple[SippResult, SippResult]:
        port = free_port()
        uas = await sipp.uas(uas_scn, port=port, calls=1, timeout=5, name="self-uas")
        uac = await sipp.uac(uac_scn, (LOOPBACK, port), service=service,
                             keys={"domain": OUTSIDE}, duration_ms=duration_ms, timeout=5,
                             name="self-uac")
        return await uac.wait(), await uas.wait(10)

    results = await asyncio.gather(
        pair(str(rejecting_pbx(tmp_path, 604)), str(caller_expecting(tmp_path, 604))),
        pair("pol_uas_ring_then_reject.xml", str(caller_expecting(tmp_path, 603))),
        pair("pol_uas_ring_cancel_late_487.xml", "uac_cancel_after_180.xml"),
        pair("pol_uas_busy_or_answer.xml", str(caller_expecting(tmp_path, 486)),
             service="busy"),
        pair("pol_uas_busy_or_answer.xml", "uac_call.xml", service="long"),
    )
    for uac_res, uas_res in results:
        assert_calls(uac_res, 1)
        assert_calls(uas_res, 1)
    # busy_or_answer took the branch the called user asks for
    assert [t.msg.status for t in responses(results[3][1], "sent")] == [486]
    assert 200 in {t.msg.status for t in responses(results[4][1], "sent")}
    assert requests(results[4][1], "received", "BYE")
    # the late 487 is late
    late = results[2][1]
    ok_cancel = [t for t in trace_of(late) if t.msg.status == 200]
    r487 = [t for t in responses(late, "sent") if t.msg.status == 487]
    assert ok_cancel and r487 and r487[0].at - ok_cancel[0].at >= 0.19

    wrong, _ = await pair(str(rejecting_pbx(tmp_path, 600)), str(caller_expecting(tmp_path, 604)))
    assert wrong.returncode != 0 and wrong.successful == 0 and wrong.failed == 1, \
        wrong.describe()


# ----------------------------------------------------------------------------- stop


@pytest.mark.parametrize("status", [600, 603, 604])
async def test_6xx_from_first_upstream_stops_and_reaches_caller(
    status: int, proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """global-failure -> stop: the first upstream's 6xx is ACKed by the proxy (RFC 3261
    17.1.1.3), relayed to the caller unchanged and no other upstream is tried (RFC 3261 16.7
    step 5: no new branch after a 6xx)."""
    first_port = free_port()
    second = await RecordingUpstream.start(free_port(), invite_status=200)
    try:
        proxy = proxy_factory(upstreams=[upstream(first_port), upstream(second.port)],
                              policy=str(SHIPPED_POLICY), timers=FAST)
        pbx = await sipp.uas(str(rejecting_pbx(tmp_path, status)), port=first_port, calls=1,
                             timeout=10, name="pbx1")
        caller = await sipp.uac(str(caller_expecting(tmp_path, status)), proxy.addr,
                                keys={"domain": OUTSIDE}, timeout=10, name="caller")
        caller_res = await caller.wait()
        pbx_res = await pbx.wait(15)
        # the 6xx went up already; a failover INVITE would have left before it
        await nothing_reaches(second, 0.3)
    finally:
        await second.close()
    proxy.assert_alive()

    # the PBX got one INVITE (via the proxy) and the proxy's ACK for its 6xx (scenario: ACK
    # required), on the INVITE's branch with the 6xx's To tag (RFC 3261 17.1.1.3)
    assert_calls(pbx_res, 1)
    invites = requests(pbx_res, "received", "INVITE")
    assert len({t.msg.call_id for t in invites}) == 1 and via_is_proxy(invites[0].msg, proxy)
    sent_final = responses(pbx_res, "sent")
    assert {t.msg.status for t in sent_final} == {status}
    acks = requests(pbx_res, "received", "ACK")
    assert acks and branch(acks[0].msg) == branch(invites[0].msg)
    assert to_tag(acks[0].msg) == to_tag(sent_final[0].msg)

    # the caller got exactly that 6xx -- the PBX's own (its To tag), not a proxy answer -- and
    # ACKed it (scenario: any other final response is unexpected and fails the call)
    assert_calls(caller_res, 1)
    finals = responses(caller_res, "received")
    assert {t.msg.status for t in finals} == {status}, [t.msg.start_line for t in finals]
    assert finals[0].msg.start_line.startswith(f"SIP/2.0 {status} {REASONS[status]}")
    assert to_tag(finals[0].msg) == to_tag(sent_final[0].msg)
    assert requests(caller_res, "sent", "ACK")


async def test_603_on_one_fork_branch_cancels_the_other_ringing_branch(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """Two phones registered for bob@example.com are forked in parallel (BEHAVIOUR "Routing",
    RFC 3261 16.6); both ring, phone A declines with 603 -> stop: phone B's pending branch is
    CANCELled (RFC 3261 16.7 step 5, 9.1: the INVITE's branch), B answers 200 + 487 (the 487
    200 ms late) and gets the ACK, and the PBX receives the 603 once B's branch has ended (16.7
    step 6; docs/BEHAVIOUR.md "The policy actions", `stop`)."""
    pbx_port, port_a, port_b = free_port(), free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(pbx_port)], registrar="local",
                          domains=["example.com"], policy=str(SHIPPED_POLICY), timers=FAST)
    for name, port in (("register-a", port_a), ("register-b", port_b)):
        reg = await sipp.uac("phone_register.xml", proxy.addr, port=port, service="bob",
                             keys={"domain": "example.com"}, timeout=10, name=name)
        assert_calls(await reg.wait(), 1)
    phone_a = await sipp.uas("pol_uas_ring_then_reject.xml", port=port_a, calls=1, timeout=10,
                             name="phone-a")
    # B: 180, must get the CANCEL, 200 at once, 487 200 ms later, must get the ACK
    phone_b = await sipp.uas("pol_uas_ring_cancel_late_487.xml", port=port_b, calls=1,
                             timeout=10, name="phone-b")
    # the PBX is bound on the upstream's port: the proxy sees its INVITE as from an upstream
    pbx = await sipp.uac(str(caller_expecting(tmp_path, 603)), proxy.addr, port=pbx_port,
                         service="bob", keys={"domain": "example.com"}, timeout=10, name="pbx")
    pbx_res = await pbx.wait()
    a_res = await phone_a.wait(15)
    b_res = await phone_b.wait(15)
    proxy.assert_alive()

    # both phones got the INVITE (each at its registered contact, via the proxy)
    for res, port in ((a_res, port_a), (b_res, port_b)):
        inv = requests(res, "received", "INVITE")
        assert len({t.msg.call_id for t in inv}) == 1, res.describe()
        assert inv[0].msg.request_uri is not None and \
            inv[0].msg.request_uri.startswith(f"sip:bob@{LOOPBACK}:{port}")
        assert via_is_proxy(inv[0].msg, proxy)
    assert requests(a_res, "received", "INVITE")[0].msg.call_id == \
        requests(b_res, "received", "INVITE")[0].msg.call_id

    # A: 180, 603, and the ACK (required by its scenario; a CANCEL would have failed it)
    assert_calls(a_res, 1)
    assert not requests(a_res, "received", "CANCEL")
    a_603 = [t for t in responses(a_res, "sent") if t.msg.status == 603]
    assert a_603

    # B rang before A declined, then got the CANCEL on its INVITE's branch (RFC 3261 9.1),
    # answered 200/487 and got the ACK for the 487 (all required by its scenario)
    assert_calls(b_res, 1)
    b_180 = [t for t in responses(b_res, "sent", final=False) if t.msg.status == 180]
    assert b_180 and b_180[0].at < a_603[0].at
    b_invite = requests(b_res, "received", "INVITE")[0].msg
    cancels = requests(b_res, "received", "CANCEL")
    assert cancels and branch(cancels[0].msg) == branch(b_invite)
    b_487 = [t for t in responses(b_res, "sent") if t.msg.status == 487]
    assert b_487 and requests(b_res, "received", "ACK")

    # the PBX: ringing relayed, then exactly A's 603 as the final response, ACKed
    assert_calls(pbx_res, 1)
    assert any(t.msg.status == 180 for t in responses(pbx_res, "received", final=False))
    finals = responses(pbx_res, "received")
    assert {t.msg.status for t in finals} == {603}, [t.msg.start_line for t in finals]
    assert to_tag(finals[0].msg) == to_tag(a_603[0].msg)
    # BEHAVIOUR.md, stop: "the response is the final one once the cancelled branches have ended".  B holds
    # its 487 for 200 ms after the CANCEL; sipp logs a sent message just after writing it, so
    # with a correct proxy the PBX may log the 603 some microseconds before B logs its 487,
    # never 100 ms before (a proxy that sends the 603 at once: about 200 ms before).
    early = b_487[0].at - finals[0].at
    assert early < 0.1, (
        f"the PBX got the 603 {early:.3f} s before phone B sent its 487: the proxy did not "
        "wait for the cancelled branch to end (RFC 3261 16.7 steps 5-6)")


# ----------------------------------------------------------------------------- failover


async def test_503_from_first_upstream_fails_over_to_second_and_call_succeeds(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """unavailable -> failover: the 503 is ACKed (RFC 3261 17.1.1.3) and not relayed, the second
    upstream gets the INVITE on a new branch, answers 200 and the call completes, BYE included,
    through the proxy (Record-Route, RFC 3261 16.12)."""
    p1, p2 = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(p1), upstream(p2)], policy=str(SHIPPED_POLICY),
                          timers=FAST)
    pbx1 = await sipp.uas(str(rejecting_pbx(tmp_path, 503)), port=p1, calls=1, timeout=10,
                          name="pbx1")
    pbx2 = await sipp.uas("uas_answer.xml", port=p2, calls=1, timeout=10, name="pbx2")
    caller = await sipp.uac("uac_call.xml", proxy.addr, keys={"domain": OUTSIDE}, timeout=10,
                            name="caller")
    caller_res = await caller.wait()
    pbx1_res = await pbx1.wait(15)
    pbx2_res = await pbx2.wait(15)
    proxy.assert_alive()

    assert_calls(pbx1_res, 1)  # INVITE, 503, ACK required
    assert_calls(pbx2_res, 1)  # INVITE, 180, 200, BYE required
    assert_calls(caller_res, 1)
    inv1 = requests(pbx1_res, "received", "INVITE")[0].msg
    inv2 = requests(pbx2_res, "received", "INVITE")[0].msg
    call_id = requests(caller_res, "sent", "INVITE")[0].msg.call_id
    assert inv1.call_id == inv2.call_id == call_id
    assert via_is_proxy(inv1, proxy) and via_is_proxy(inv2, proxy)
    assert branch(inv1) != branch(inv2)  # a new client transaction (RFC 3261 16.6 step 8)
    ack1 = requests(pbx1_res, "received", "ACK")
    assert ack1 and branch(ack1[0].msg) == branch(inv1)
    # the caller never saw the 503 (nor a 500 made of it, RFC 3261 16.7 step 6)
    assert {t.msg.status for t in responses(caller_res, "received")} == {200}
    byes = requests(pbx2_res, "received", "BYE")
    assert byes and byes[0].msg.call_id == call_id and via_is_proxy(byes[0].msg, proxy)
    assert not requests(pbx1_res, "received", "BYE")


# ----------------------------------------------------------------------------- reload

BUSY_FAILS_OVER = """\
  # Busy Here: this PBX's user is busy; the next PBX may have a free one.
  - name: busy-fails-over
    match: {status: 486}
    action: failover

"""

# line 3 holds the unknown action; were the file applied in part, 503 would be forwarded
BROKEN_POLICY = """\
rules:
  - name: broken-rule
    action: explode
    match: {status: 600}
  - name: unavailable-is-forwarded
    match: {status: 503}
    action: forward
"""


async def test_policy_changed_on_disk_changes_next_call_and_call_in_progress_completes(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """486 is `forward` (shipped policy): a busy call ends with 486 at the caller and the second
    upstream sees nothing.  A long call A is up when the file is rewritten with 486 ->
    `failover`; after `policy reloaded` the next busy call fails over to the second upstream
    and succeeds, and call A's BYE still completes (its dialog does not depend on the policy)."""
    shipped = SHIPPED_POLICY.read_text()
    assert shipped.count("  - name: everything-else") == 1
    changed = shipped.replace("  - name: everything-else", BUSY_FAILS_OVER
                              + "  - name: everything-else")
    p1, p2 = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(p1), upstream(p2)], policy_text=shipped,
                          timers=FAST)
    policy_path = proxy.workdir / "policy.yaml"
    assert policy_path.read_text() == shipped
    # pbx1: busy@ -> 486 (ACK required), anyone else -> 200 (BYE required); 3 calls
    pbx1 = await sipp.uas("pol_uas_busy_or_answer.xml", port=p1, calls=3, timeout=20,
                          name="pbx1")
    pbx2 = await sipp.uas("uas_answer.xml", port=p2, calls=1, timeout=20, name="pbx2")

    # old policy: the 486 reaches the caller, no failover
    busy_before = await sipp.uac(str(caller_expecting(tmp_path, 486)), proxy.addr,
                                 service="busy", keys={"domain": OUTSIDE}, timeout=10,
                                 name="busy-before")
    busy_before_res = await busy_before.wait()
    assert_calls(busy_before_res, 1)
    assert {t.msg.status for t in responses(busy_before_res, "received")} == {486}

    # call A: answered by pbx1, BYE after 3 s
    call_a = await sipp.uac("uac_call.xml", proxy.addr, service="long",
                            keys={"domain": OUTSIDE}, duration_ms=3000, timeout=15,
                            name="call-a")
    await established(call_a, 5.0)

    mark = proxy.mark()
    replace_file(policy_path, changed)
    proxy.send_signal(signal.SIGHUP)  # the watcher (1 s poll) would do too; both are supported
    reloaded = await proxy.await_log("policy reloaded", timeout=5.0, since=mark)
    assert not any("policy reload refused" in line for line in proxy.lines()[mark:]), reloaded
    assert call_a.proc.returncode is None, "call A ended before the reload"

    # new policy: the 486 fails over to pbx2, which answers; the call completes with its BYE
    busy_after = await sipp.uac("uac_call.xml", proxy.addr, service="busy",
                                keys={"domain": OUTSIDE}, timeout=10, name="busy-after")
    busy_after_res = await busy_after.wait()
    assert call_a.proc.returncode is None, "call A ended before the call after the reload"
    call_a_res = await call_a.wait()
    pbx1_res = await pbx1.wait(15)
    pbx2_res = await pbx2.wait(15)
    proxy.assert_alive()

    assert_calls(busy_after_res, 1)
    assert {t.msg.status for t in responses(busy_after_res, "received")} == {200}
    assert_calls(call_a_res, 1)  # 200 and its BYE answered 200: completed across the reload
    assert_calls(pbx1_res, 3)  # busy (ACK), A (BYE), busy (ACK)
    assert_calls(pbx2_res, 1)

    before_id = requests(busy_before_res, "sent", "INVITE")[0].msg.call_id
    a_id = requests(call_a_res, "sent", "INVITE")[0].msg.call_id
    after_id = requests(busy_after_res, "sent", "INVITE")[0].msg.call_id
    # pbx1 saw all three calls; it answered 486 to both busy ones
    assert {t.msg.call_id for t in requests(pbx1_res, "received", "INVITE")} == \
        {before_id, a_id, after_id}
    busy_sent = {t.msg.call_id for t in responses(pbx1_res, "sent") if t.msg.status == 486}
    assert busy_sent == {before_id, after_id}
    # pbx2 saw only the call after the reload: no failover before it
    assert {t.msg.call_id for t in requests(pbx2_res, "received", "INVITE")} == {after_id}
    assert {t.msg.call_id for t in requests(pbx2_res, "received", "BYE")} == {after_id}
    # call A's BYE went through the proxy to pbx1, after the call placed under the new policy
    a_byes = [t for t in requests(pbx1_res, "received", "BYE") if t.msg.call_id == a_id]
    assert a_byes and via_is_proxy(a_byes[0].msg, proxy)
    assert a_byes[0].at > requests(busy_after_res, "sent", "INVITE")[0].at


async def test_invalid_policy_on_sighup_is_refused_and_old_policy_stays(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """With the file watcher off, SIGHUP alone reloads: a file with an unknown action on line 3
    is refused (`policy reload refused` + a FILE:LINE:COLUMN line) and the old policy stays --
    a 503 still fails over (the broken file would forward it)."""
    p1, p2 = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(p1), upstream(p2)],
                          policy_text=SHIPPED_POLICY.read_text(), timers=FAST,
                          extra={"watch_policy": False})
    assert proxy.config.get("watch_policy") is False
    policy_path = proxy.workdir / "policy.yaml"

    mark = proxy.mark()
    replace_file(policy_path, BROKEN_POLICY)
    proxy.send_signal(signal.SIGHUP)
    await proxy.await_log("policy reload refused", timeout=5.0, since=mark)
    diag = await proxy.await_log(re.compile(r"policy\.yaml:\d+:\d+:"), timeout=5.0, since=mark)
    assert re.search(r"policy\.yaml:3:\d+:", diag), diag

    pbx1 = await sipp.uas(str(rejecting_pbx(tmp_path, 503)), port=p1, calls=1, timeout=10,
                          name="pbx1")
    pbx2 = await sipp.uas("uas_answer.xml", port=p2, calls=1, timeout=10, name="pbx2")
    caller = await sipp.uac("uac_call.xml", proxy.addr, keys={"domain": OUTSIDE}, timeout=10,
                            name="caller")
    caller_res = await caller.wait()
    pbx1_res = await pbx1.wait(15)
    pbx2_res = await pbx2.wait(15)
    proxy.assert_alive()

    assert_calls(caller_res, 1)
    assert {t.msg.status for t in responses(caller_res, "received")} == {200}
    assert_calls(pbx1_res, 1)
    assert_calls(pbx2_res, 1)
    call_id = requests(caller_res, "sent", "INVITE")[0].msg.call_id
    assert {t.msg.call_id for t in requests(pbx2_res, "received", "INVITE")} == {call_id}
    assert not any("policy reloaded" in line for line in proxy.lines()[mark:]), proxy.tail()


async def test_policy_saved_on_disk_is_reloaded_without_a_signal(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """The file watch alone (no SIGHUP): saving a valid policy swaps it (one `policy reloaded`
    line naming old and new version), and the next call follows it: the 503 is then forwarded
    (as 500, RFC 3261 16.7 step 6) instead of failing over."""
    p1, p2 = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(p1), upstream(p2)],
                          policy_text=SHIPPED_POLICY.read_text(), timers=FAST)
    policy_path = proxy.workdir / "policy.yaml"
    mark = proxy.mark()
    replace_file(policy_path, "rules:\n  - name: pass-everything\n"
                              "    match: {status: \"100-699\"}\n    action: forward\n")
    line = await proxy.await_log("policy reloaded", timeout=5.0, since=mark)
    assert re.search(r"policy reloaded: \w+ -> \w+ \(1 rules\)", line), line

    recorder = await RecordingUpstream.start(p2)
    try:
        pbx1 = await sipp.uas(str(rejecting_pbx(tmp_path, 503)), port=p1, calls=1, timeout=10,
                              name="pbx1")
        caller = await sipp.uac(str(caller_expecting(tmp_path, 500)), proxy.addr,
                                keys={"domain": OUTSIDE}, timeout=10, name="caller")
        caller_res = await caller.wait()
        pbx1_res = await pbx1.wait(15)
        await nothing_reaches(recorder, 0.3)
    finally:
        await recorder.close()
    proxy.assert_alive()
    assert_calls(caller_res, 1)
    assert_calls(pbx1_res, 1)
    assert {t.msg.status for t in responses(caller_res, "received")} == {500}
