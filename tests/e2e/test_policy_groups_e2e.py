"""The second form of the policy end to end (README "Routes, upstream groups and richer
rules"): the real proxy on loopback with named upstream groups, sipp as caller, PBX,
voicemail server and carrier.

* a route by dialled prefix reaches its group, another number the first group (lcr);
* a 486 from the PBX goes on to the voicemail group, whose INVITE carries
  ``Diversion: <the Request-URI the call had>;reason=user-busy;counter=1`` (RFC 5806);
* a route's ``no_answer`` timer CANCELs the ringing PBX (RFC 3261 16.10) and the call is
  answered by voicemail, with ``reason=no-answer``;
* a 503 with Retry-After (RFC 3261 21.5.4) holds that PBX down: the next call goes straight
  to the other one, and once the Retry-After is over the first one is tried again (and
  ``upstream_up{upstream,group}`` shows it 0, then 1);
* a reply rule answers the caller 404 for the PBX's 302 (not followed);
* a time rule matches now and a rule for another time does not;
* a route by source sends the trunk's call (from 127.0.0.2) to its group, a phone's to the first.

Scenarios: the harness's ``uac_call.xml``, ``uas_answer.xml``, ``uas_cancel_after_180.xml``,
``rd_uas_302.xml`` and test_policy_e2e.py's ``pol_uas_reject.xml`` /
``pol_uac_expect_final.xml`` copies (their pairing without the proxy is proven by
test_harness.py and test_policy_e2e.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    ProxyProcess,
    Sipp,
    assert_calls,
    free_port,
    via_is_proxy,
)
from tests.e2e.test_observability_e2e import aget, metric
from tests.e2e.test_policy_e2e import (
    caller_expecting,
    rejecting_pbx,
    requests,
    responses,
    scenario_copy,
)

pytestmark = pytest.mark.e2e

ProxyFactory = Callable[..., ProxyProcess]
DOMAIN = "example.net"  # not the proxy's: calls go to the upstream groups
FAST = {"t1_ms": 100}


def up(port: int) -> str:
    return f"sip:{LOOPBACK}:{port}"


def groups(**members: list[int]) -> dict[str, object]:
    """``upstreams:`` as named groups (proxy.yaml), each a list of loopback ports; the
    policy's three (pbx, voicemail, carrier), a group not given at a port nobody serves."""
    for name in ("pbx", "voicemail", "carrier"):
        members.setdefault(name, [free_port()])
    return {"upstreams": {name: [up(p) for p in ports] for name, ports in members.items()}}


VOICEMAIL_POLICY = """\
routes:
  - name: extensions
    match: {ruri_user: "[1-9][0-9]{2,3}"}
    group: pbx
    no_answer: {after: 1, to: voicemail, diversion: no-answer}
  - name: international
    match: {ruri_user: "00[1-9][0-9]{5,14}"}
    group: carrier
rules:
  - name: busy-to-voicemail
    match: {status: 486, method: INVITE, upstream: pbx}
    action: failover
    to: voicemail
    diversion: user-busy
  - name: pbx-unavailable
    match: {status: 503, upstream: pbx}
    action: failover
    hold_down: 60
  - name: block-3xx
    match: {status: "3xx"}
    action: reply
    status: 404
  - name: everything-else
    match: {status: "100-699"}
    action: forward
"""


async def test_a_route_by_prefix_reaches_its_group(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """0044...: route international -> group carrier; 1001 matches no prefix of carrier and
    goes to the PBX (route extensions)."""
    pbx_port, carrier_port, vm_port = free_port(), free_port(), free_port()
    proxy = proxy_factory(policy_text=VOICEMAIL_POLICY, timers=FAST,
                          extra=groups(pbx=[pbx_port], voicemail=[vm_port],
                                       carrier=[carrier_port]))
    carrier = await sipp.uas("uas_answer.xml", port=carrier_port, calls=1, timeout=15,
                             name="carrier")
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, calls=1, timeout=15, name="pbx")
    intl = await sipp.uac("uac_call.xml", proxy.addr, service="0044201234567",
                          keys={"domain": DOMAIN}, timeout=10, name="intl")
    assert_calls(await intl.wait(), 1)
    carrier_res = await carrier.wait(15)
    assert_calls(carrier_res, 1)
    inv = requests(carrier_res, "received", "INVITE")[0].msg
    assert inv.request_uri == f"sip:0044201234567@{DOMAIN}" and via_is_proxy(inv, proxy)
    local = await sipp.uac("uac_call.xml", proxy.addr, service="1001",
                           keys={"domain": DOMAIN}, timeout=10, name="local")
    assert_calls(await local.wait(), 1)
    pbx_res = await pbx.wait(15)
    assert_calls(pbx_res, 1)
    assert [t.msg.request_uri for t in requests(pbx_res, "received", "INVITE")] == [
        f"sip:1001@{DOMAIN}"]
    proxy.assert_alive()


async def test_busy_goes_to_voicemail_with_diversion(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """WITH_VOICEMAIL: the PBX's 486 is ACKed and not relayed; the voicemail server gets the
    INVITE with the Diversion Asterisk reads (mailbox 1001, busy greeting) and answers."""
    pbx_port, vm_port = free_port(), free_port()
    proxy = proxy_factory(policy_text=VOICEMAIL_POLICY, timers=FAST,
                          extra=groups(pbx=[pbx_port], voicemail=[vm_port]))
    pbx = await sipp.uas(str(rejecting_pbx(tmp_path, 486)), port=pbx_port, calls=1,
                         timeout=15, name="pbx")
    vm = await sipp.uas("uas_answer.xml", port=vm_port, calls=1, timeout=15, name="voicemail")
    caller = await sipp.uac("uac_call.xml", proxy.addr, service="1001",
                            keys={"domain": DOMAIN}, timeout=10, name="caller")
    caller_res = await caller.wait()
    assert_calls(caller_res, 1)
    assert_calls(await pbx.wait(15), 1)  # INVITE, 486, ACK required
    vm_res = await vm.wait(15)
    assert_calls(vm_res, 1)
    inv = requests(vm_res, "received", "INVITE")[0].msg
    assert inv.get_all("diversion") == [f"<sip:1001@{DOMAIN}>;reason=user-busy;counter=1"]
    assert {t.msg.status for t in responses(caller_res, "received")} == {200}
    proxy.assert_alive()


async def test_no_answer_cancels_the_pbx_and_voicemail_answers(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """t_set_fr: the PBX rings (180) and does not answer within the route's 1 s: it gets a
    CANCEL (and answers 487, ACKed by the proxy), the voicemail server gets the INVITE with
    reason=no-answer and answers; the caller gets its 200 and never the 487."""
    pbx_port, vm_port = free_port(), free_port()
    proxy = proxy_factory(policy_text=VOICEMAIL_POLICY, timers=FAST,
                          extra=groups(pbx=[pbx_port], voicemail=[vm_port]))
    pbx = await sipp.uas("uas_cancel_after_180.xml", port=pbx_port, calls=1, timeout=15,
                         name="pbx")
    vm = await sipp.uas("uas_answer.xml", port=vm_port, calls=1, timeout=15, name="voicemail")
    caller = await sipp.uac("uac_call.xml", proxy.addr, service="1001",
                            keys={"domain": DOMAIN}, timeout=15, name="caller")
    caller_res = await caller.wait()
    assert_calls(caller_res, 1)
    pbx_res = await pbx.wait(15)
    assert_calls(pbx_res, 1)  # INVITE, 180, CANCEL required, 200, 487, ACK required
    pbx_invite = requests(pbx_res, "received", "INVITE")[0]
    cancel = requests(pbx_res, "received", "CANCEL")[0]
    waited = cancel.at - pbx_invite.at
    assert 0.9 <= waited <= 3.0, waited
    vm_res = await vm.wait(15)
    assert_calls(vm_res, 1)
    inv = requests(vm_res, "received", "INVITE")[0].msg
    assert inv.get("diversion") == f"<sip:1001@{DOMAIN}>;reason=no-answer;counter=1"
    assert {t.msg.status for t in responses(caller_res, "received")} == {200}
    proxy.assert_alive()


async def upstream_up(proxy: ProxyProcess, port: int) -> float | None:
    status, text = await aget(proxy, "/metrics")
    assert status == 200, text
    return metric(text, "upstream_up", group="pbx", upstream=up(port),
                  target=f"udp:{LOOPBACK}:{port}")


async def test_503_retry_after_holds_the_pbx_down_for_that_long_and_no_longer(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """RFC 3261 21.5.4: PBX1's 503 with Retry-After: 2 fails over to PBX2 and holds PBX1 down
    (upstream_up 0) although the rule says 60 s: the second call goes straight to PBX2; once
    the 2 s are over (upstream_up 1 again), the third call tries PBX1 first again."""
    p1, p2 = free_port(), free_port()
    proxy = proxy_factory(policy_text=VOICEMAIL_POLICY, timers=FAST,
                          extra={**groups(pbx=[p1, p2]),
                                 "http": f"{LOOPBACK}:{free_port(udp=False)}"})
    scenario = scenario_copy(tmp_path, "pol_uas_reject.xml", "SIP/2.0 603 Decline",
                             "SIP/2.0 503 Service Unavailable\n      Retry-After: 2")
    pbx1 = await sipp.uas(str(scenario), port=p1, calls=2, timeout=30, name="pbx1")
    pbx2 = await sipp.uas("uas_answer.xml", port=p2, calls=3, timeout=30, name="pbx2")
    loop = asyncio.get_running_loop()
    for n in (1, 2):
        call = await sipp.uac("uac_call.xml", proxy.addr, service="1001",
                              keys={"domain": DOMAIN}, timeout=10, name=f"call{n}")
        assert_calls(await call.wait(), 1)
        if n == 1:
            held_at = loop.time()
            assert await upstream_up(proxy, p1) == 0
            assert await upstream_up(proxy, p2) == 1
    deadline = loop.time() + 10
    while await upstream_up(proxy, p1) != 1:
        assert loop.time() < deadline, "PBX1 still held down 10 s after a Retry-After of 2"
        await asyncio.sleep(0.1)  # polling the metric: the condition waited on
    assert loop.time() - held_at >= 1.5  # not before its Retry-After
    call = await sipp.uac("uac_call.xml", proxy.addr, service="1001",
                          keys={"domain": DOMAIN}, timeout=10, name="call3")
    assert_calls(await call.wait(), 1)
    pbx1_res = await pbx1.wait(20)
    pbx2_res = await pbx2.wait(20)
    assert_calls(pbx1_res, 2)  # calls 1 and 3, not 2
    assert_calls(pbx2_res, 3)
    ids1 = [t.msg.call_id for t in requests(pbx1_res, "received", "INVITE")]
    ids2 = [t.msg.call_id for t in requests(pbx2_res, "received", "INVITE")]
    assert ids1 == [ids2[0], ids2[2]]
    proxy.assert_alive()


async def test_a_reply_rule_answers_404_for_a_302(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """WITH_BLOCK3XX: the PBX's 302 is ACKed, not followed and not relayed; the caller gets
    404 (and ACKs it)."""
    pbx_port = free_port()
    proxy = proxy_factory(policy_text=VOICEMAIL_POLICY, timers=FAST,
                          extra=groups(pbx=[pbx_port], voicemail=[free_port()]))
    pbx = await sipp.uas("rd_uas_302.xml", port=pbx_port, calls=1, timeout=15, name="pbx",
                         extra=["-key", "rd_contact", f"<sip:bob@{LOOPBACK}:{free_port()}>"])
    caller = await sipp.uac(str(caller_expecting(tmp_path, 404)), proxy.addr, service="1001",
                            keys={"domain": DOMAIN}, timeout=10, name="caller")
    caller_res = await caller.wait()
    assert_calls(caller_res, 1)
    assert_calls(await pbx.wait(15), 1)  # INVITE, 302, ACK required
    assert [t.msg.status for t in responses(caller_res, "received")] == [404]
    proxy.assert_alive()


def _span(start_hours: float, end_hours: float) -> str:
    """``"HH:MM-HH:MM"`` (UTC) from ``start_hours`` to ``end_hours`` after now (a span over
    midnight is allowed)."""
    now = datetime.now(UTC)
    a, b = now + timedelta(hours=start_hours), now + timedelta(hours=end_hours)
    return f"{a:%H:%M}-{b:%H:%M}"


async def test_a_time_rule_matches_and_a_rule_for_another_time_does_not(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path
) -> None:
    """tmrec: of two rules for the PBX's 486, the one whose window (UTC) holds now sends the
    call to voicemail; the one for three hours later (listed first) does not match, so the
    carrier never sees the call. The proxy takes the time from its own clock."""
    policy = f"""\
rules:
  - name: later
    match: {{status: 486, time: {{between: "{_span(3, 4)}", tz: UTC}}}}
    action: failover
    to: carrier
  - name: now
    match: {{status: 486, time: {{between: "{_span(-1, 1)}", tz: UTC}}}}
    action: failover
    to: voicemail
    diversion: time-of-day
"""
    pbx_port, vm_port = free_port(), free_port()
    proxy = proxy_factory(policy_text=policy, timers=FAST,
                          extra=groups(pbx=[pbx_port], voicemail=[vm_port]))
    pbx = await sipp.uas(str(rejecting_pbx(tmp_path, 486)), port=pbx_port, calls=1,
                         timeout=15, name="pbx")
    vm = await sipp.uas("uas_answer.xml", port=vm_port, calls=1, timeout=15, name="voicemail")
    caller = await sipp.uac("uac_call.xml", proxy.addr, service="1001",
                            keys={"domain": DOMAIN}, timeout=10, name="caller")
    assert_calls(await caller.wait(), 1)
    assert_calls(await pbx.wait(15), 1)
    vm_res = await vm.wait(15)
    assert_calls(vm_res, 1)
    inv = requests(vm_res, "received", "INVITE")[0].msg
    assert inv.get("diversion") == f"<sip:1001@{DOMAIN}>;reason=time-of-day;counter=1"
    line = proxy.wait_for_log("proxy.calls")
    assert "now:failover(486)" in line and "later:" not in line, line
    proxy.assert_alive()


async def test_a_route_by_source_sends_a_trunks_call_to_its_group(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """permissions' allow_source_address: the same number dialled from the trunk's address
    (127.0.0.2, matched by the packet's source, never a header) reaches the carrier group,
    and from 127.0.0.1 the first group (no route matches)."""
    policy = """\
routes:
  - name: from-trunk
    match: {source: [127.0.0.2/32]}
    group: carrier
rules:
  - name: everything-else
    match: {status: "100-699"}
    action: forward
"""
    pbx_port, carrier_port = free_port(), free_port()
    proxy = proxy_factory(policy_text=policy, timers=FAST,
                          extra=groups(pbx=[pbx_port], carrier=[carrier_port]))
    carrier = await sipp.uas("uas_answer.xml", port=carrier_port, calls=1, timeout=15,
                             name="carrier")
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, calls=1, timeout=15, name="pbx")
    trunk = await sipp.uac("uac_call.xml", proxy.addr, service="1001", timeout=10,
                           keys={"domain": DOMAIN}, extra=["-i", "127.0.0.2"], name="trunk")
    assert_calls(await trunk.wait(), 1)
    carrier_res = await carrier.wait(15)
    assert_calls(carrier_res, 1)
    [inv] = requests(carrier_res, "received", "INVITE")
    assert inv.msg.request_uri == f"sip:1001@{DOMAIN}" and via_is_proxy(inv.msg, proxy)
    assert "127.0.0.2" in inv.msg.vias[1], inv.msg.vias  # the trunk's Via below the proxy's
    phone = await sipp.uac("uac_call.xml", proxy.addr, service="1001", timeout=10,
                           keys={"domain": DOMAIN}, name="phone")
    assert_calls(await phone.wait(), 1)
    assert_calls(await pbx.wait(15), 1)
    proxy.assert_alive()
