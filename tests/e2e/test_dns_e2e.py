"""Carriers by DNS (RFC 3263) end to end: the real proxy with ``upstreams: [sip:carrier.test]``
and ``dns: {servers: [127.0.0.1:PORT]}`` pointing at dnsmasq (tests/dns_servers.py), whose
NAPTR record names ``_sip._udp.carrier.test`` and whose SRV records name two UASes on loopback
at priority 10 and 20.

* Calls reach the priority-10 target, on its SRV port; the priority-20 one sees nothing
  (RFC 2782: lower priority first); the proxy asked dnsmasq NAPTR, then SRV, then A.
* When the priority-10 target answers 503, or is not there at all (no answer: Timer B, 408),
  the policy's ``failover`` takes the next upstream of the list, as for any upstream. Failing
  over between the SRV targets of one name is the core's part (each target an upstream of its
  own) and not done by this version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dns_servers import Dnsmasq
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, assert_calls, free_port
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
async def test_when_the_best_target_fails_the_next_upstream_takes_the_call(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path, first: str
) -> None:
    """The priority-10 target answers 503, or nothing listens there (Timer B: 408); the policy
    fails over to the next upstream of the list (``failover``), which answers."""
    p10, p20, p_next = free_port(), free_port(), free_port()
    dns = carrier_dns(tmp_path, p10, p20)
    silent: UdpPeer | None = None
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
        nxt = await sipp.uas("uas_answer.xml", port=p_next, calls=1, timeout=30, name="next")
        caller = await sipp.uac("uac_call.xml", proxy.addr, keys={"domain": OUTSIDE},
                                timeout=30, name="caller")
        caller_res = await caller.wait()
        nxt_res = await nxt.wait(35)
        proxy.assert_alive()
        assert_calls(caller_res, 1)
        assert_calls(nxt_res, 1)
        inv_next = requests(nxt_res, "received", "INVITE")[0].msg
        if pbx10 is not None:
            pbx10_res = await pbx10.wait(25)
            assert_calls(pbx10_res, 1)  # INVITE, 503, ACK
            inv10 = requests(pbx10_res, "received", "INVITE")[0].msg
        else:
            assert silent is not None
            got, _ = await silent.recv_sip(1.0, lambda m: m.method == "INVITE")
            inv10 = got
        assert inv10.call_id == inv_next.call_id
    finally:
        if silent is not None:
            silent.close()
        dns.stop()
