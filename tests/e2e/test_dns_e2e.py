"""Carriers by DNS (RFC 3263) end to end: the real proxy with ``upstreams: [sip:carrier.test]``
and ``dns: {servers: [127.0.0.1:PORT]}`` pointing at dnsmasq (tests/dns_servers.py), whose
NAPTR record names ``_sip._udp.carrier.test`` and whose SRV records name two UASes on loopback
at priority 10 and 20.

* Calls reach the priority-10 target, on its SRV port; the priority-20 one sees nothing
  (RFC 2782: lower priority first); the proxy asked dnsmasq NAPTR, then SRV, then A.
* When the priority-10 target answers 503, or is not there at all (no answer: Timer B), the
  call goes to the priority-20 target of the same name (RFC 3263 4.3: each resolved target is
  an upstream of its own), before the next upstream of the list, which sees nothing; when
  both targets fail, the next upstream takes the call.
* With ``upstream_probe``, each target is probed on its own: a silent one is marked down
  (``upstream_up{group="default",target="udp:127.0.0.1:PORT",upstream="sip:carrier.test"}
  0``) and calls go straight to the other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dns_servers import Dnsmasq
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, assert_calls, free_port
from tests.e2e.test_observability_e2e import aget, metric
from tests.e2e.test_policy_e2e import rejecting_pbx, requests
from tests.e2e.wire import RecordingUpstream, UdpPeer

pytestmark = pytest.mark.e2e

OUTSIDE = "example.net"  # not the proxy's domain: calls go to the upstreams


def carrier_dns(tmp_path: Path, p10: int, p20: int) -> Dnsmasq:
    return Dnsmasq(tmp_path, [
        "--naptr-record=carrier.test,10,50,S,SIP+D2U,,_sip._udp.carrier.test",
        f"--srv-host=_sip._udp.carrier.test,uas1.carrier.test,{p10},10,60",
        f"--srv-host=_sip._udp.carrier.test,uas2.carrier.test,{p20},20,60",
        f"--host-record=uas1.carrier.test,{LOOPBACK}",
        f"--host-record=uas2.carrier.test,{LOOPBACK}",
    ]).start()


async def test_calls_to_a_carrier_domain_reach_its_best_srv_target(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path
) -> None:
    p10, p20 = free_port(), free_port()
    dns = carrier_dns(tmp_path, p10, p20)
    second = await RecordingUpstream.start(p20, invite_status=200)
    try:
        proxy = proxy_factory(upstreams=["sip:carrier.test"],
                              extra={"dns": {"servers": [dns.server]}})
        assert proxy.wait_for_log(f"upstream sip:carrier.test: udp:{LOOPBACK}:{p10} "
                                  "(uas1.carrier.test, priority 10")
        pbx = await sipp.uas("uas_answer.xml", port=p10, calls=5, timeout=20, name="pbx10")
        caller = await sipp.uac("uac_call.xml", proxy.addr, calls=5, rate=10,
                                keys={"domain": OUTSIDE}, timeout=20, name="caller")
        caller_res = await caller.wait()
        pbx_res = await pbx.wait(25)
        proxy.assert_alive()
        assert_calls(caller_res, 5)
        assert_calls(pbx_res, 5)  # INVITE, 200, ACK and BYE of each call, through the proxy
        assert second.records == [], "the priority-20 target got a message"
        asked = dns.queries()
        order = [next(i for i, q in enumerate(asked) if q.startswith(kind)) for kind in
                 ("query[NAPTR] carrier.test", "query[SRV] _sip._udp.carrier.test",
                  "query[A] uas1.carrier.test")]
        assert order == sorted(order), asked
    finally:
        await second.close()
        dns.stop()


@pytest.mark.parametrize("first", ["503", "silent"])
async def test_when_the_best_target_fails_the_next_target_of_the_name_takes_the_call(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path, first: str
) -> None:
    """The priority-10 target answers 503, or nothing answers there (Timer B); the same call
    (one Call-ID) goes to the priority-20 target, not to the next upstream of the list."""
    p10, p20, p_next = free_port(), free_port(), free_port()
    dns = carrier_dns(tmp_path, p10, p20)
    silent: UdpPeer | None = None
    nxt = await RecordingUpstream.start(p_next, invite_status=200)
    try:
        proxy = proxy_factory(upstreams=["sip:carrier.test", f"sip:{LOOPBACK}:{p_next}"],
                              extra={"dns": {"servers": [dns.server]}},
                              timers={"t1_ms": 50})  # Timer B of the silent target: 3.2 s
        pbx10 = None
        if first == "503":
            pbx10 = await sipp.uas(str(rejecting_pbx(tmp_path, 503)), port=p10, calls=1,
                                   timeout=20, name="pbx10")
        else:
            silent = await UdpPeer.bind(p10)  # takes the INVITE, never answers
        pbx20 = await sipp.uas("uas_answer.xml", port=p20, calls=1, timeout=30, name="pbx20")
        caller = await sipp.uac("uac_call.xml", proxy.addr, keys={"domain": OUTSIDE},
                                timeout=30, name="caller")
        caller_res = await caller.wait()
        res20 = await pbx20.wait(35)
        proxy.assert_alive()
        assert_calls(caller_res, 1)
        assert_calls(res20, 1)
        inv20 = requests(res20, "received", "INVITE")[0].msg
        if pbx10 is not None:
            res10 = await pbx10.wait(25)
            assert_calls(res10, 1)  # INVITE, 503, ACK
            inv10 = requests(res10, "received", "INVITE")[0].msg
        else:
            assert silent is not None
            inv10, _ = await silent.recv_sip(1.0, lambda m: m.method == "INVITE")
        assert inv10.call_id == inv20.call_id
        assert nxt.records == [], "the next upstream got a message before the second target"
    finally:
        if silent is not None:
            silent.close()
        await nxt.close()
        dns.stop()


async def test_when_both_targets_fail_the_next_upstream_takes_the_call(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path
) -> None:
    p10, p20, p_next = free_port(), free_port(), free_port()
    dns = carrier_dns(tmp_path, p10, p20)
    try:
        proxy = proxy_factory(upstreams=["sip:carrier.test", f"sip:{LOOPBACK}:{p_next}"],
                              extra={"dns": {"servers": [dns.server]}})
        scenario = str(rejecting_pbx(tmp_path, 503))
        pbx10 = await sipp.uas(scenario, port=p10, calls=1, timeout=20, name="pbx10")
        pbx20 = await sipp.uas(scenario, port=p20, calls=1, timeout=20, name="pbx20")
        nxt = await sipp.uas("uas_answer.xml", port=p_next, calls=1, timeout=30, name="next")
        caller = await sipp.uac("uac_call.xml", proxy.addr, keys={"domain": OUTSIDE},
                                timeout=30, name="caller")
        caller_res = await caller.wait()
        proxy.assert_alive()
        assert_calls(caller_res, 1)
        ids = set()
        for pbx in (pbx10, pbx20, nxt):
            res = await pbx.wait(25)
            assert_calls(res, 1)
            ids.add(requests(res, "received", "INVITE")[0].msg.call_id)
        assert len(ids) == 1  # one call, three targets in order
    finally:
        dns.stop()


async def test_probing_marks_a_silent_target_down_and_calls_skip_it(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path
) -> None:
    p10, p20 = free_port(), free_port()
    dns = carrier_dns(tmp_path, p10, p20)
    silent = await UdpPeer.bind(p10)  # the priority-10 target: takes OPTIONS, never answers
    try:
        await sipp.uas("uas_answer_options.xml", port=p20, name="pbx20")  # answers OPTIONS
        proxy = proxy_factory(upstreams=["sip:carrier.test"], extra={
            "dns": {"servers": [dns.server]}, "http": f"{LOOPBACK}:{free_port(udp=False)}",
            "upstream_probe": {"interval": 1, "timeout": 1}})
        t10, t20 = f"udp:{LOOPBACK}:{p10}", f"udp:{LOOPBACK}:{p20}"
        await proxy.await_log(f"upstream sip:carrier.test target {t10} is down", timeout=8)
        probe, _ = await silent.recv_sip(1.0, lambda m: m.method == "OPTIONS")
        assert probe.request_uri == f"sip:{LOOPBACK}:{p10}"  # the target, not the name
        _, text = await aget(proxy, "/metrics")
        assert metric(text, "upstream_up", upstream="sip:carrier.test", group="default",
                      target=t10) == 0
        assert metric(text, "upstream_up", upstream="sip:carrier.test", group="default",
                      target=t20) == 1
        _, body = await aget(proxy, "/status")
        entries = {u["target"]: (u["resolved"], u["up"]) for u in json.loads(body)["upstreams"]}
        assert entries == {t10: (True, False), t20: (True, True)}
        t0 = time.monotonic()
        caller = await sipp.uac("uac_call.xml", proxy.addr, keys={"domain": OUTSIDE},
                                timeout=20, name="caller")
        res = await caller.wait()
        took = time.monotonic() - t0
        assert_calls(res, 1)
        assert took < 2.0, took  # straight to the live target, no Timer B on the dead one
        got = await silent.quiet(0.2)
        assert not any(d.sip is not None and d.sip.method == "INVITE" for d in got)
        proxy.assert_alive()
    finally:
        silent.close()
        dns.stop()
