"""Calls through the proxy: sipp caller -> proxy -> sipp PBX over UDP and TCP, under 10 % packet
loss, and a CANCEL after 180 (RFC 3261 16, 9.2, 16.10)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    ProxyProcess,
    Sipp,
    SippResult,
    free_port,
    via_is_proxy,
)
from tests.e2e.wire import SipMessage, via_sent_by

pytestmark = pytest.mark.e2e

DOMAIN = "example.net"  # not the proxy's: a call from outside goes to the upstream (BEHAVIOUR "Routing")


def received(result: SippResult, method: str) -> list[SipMessage]:
    return [m.sip for m in result.messages()
            if m.direction == "received" and m.sip is not None and m.sip.method == method]


def sent(result: SippResult, method: str) -> list[SipMessage]:
    return [m.sip for m in result.messages()
            if m.direction == "sent" and m.sip is not None and m.sip.method == method]


def routes_through(msg: SipMessage, proxy: ProxyProcess) -> bool:
    """The request carries the proxy's Record-Route as its Route (RFC 3261 12.2.1.1, lr)."""
    route = ",".join(msg.get_all("route"))
    return f"{LOOPBACK}:{proxy.port}" in route and ";lr" in route


async def run_calls(
    proxy_factory: Callable[..., ProxyProcess],
    sipp: Sipp,
    transport: str,
    calls: int,
    *,
    lost: int | None = None,
    rate: int = 50,
    timers: dict[str, int] | None = None,
) -> tuple[ProxyProcess, SippResult, SippResult]:
    pbx_port = free_port()
    suffix = ";transport=tcp" if transport == "tcp" else ""
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}{suffix}"], timers=timers)
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, transport=transport, lost=lost,
                         timeout=90, name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, transport=transport, calls=calls,
                            rate=rate, limit=100, keys={"domain": DOMAIN}, lost=lost,
                            timeout=90, name="caller")
    caller_res = await caller.wait()
    # timewait is 2 s; under loss a PBX call whose caller gave up waits forever for its BYE
    pbx_res = await pbx.stop(grace=3.0)
    proxy.assert_alive()
    return proxy, caller_res, pbx_res


async def check_200_calls(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, transport: str
) -> None:
    """200 calls at 50/s; every INVITE and BYE reaches the PBX with the proxy's Via on top, and
    the caller's ACK/BYE carry the proxy's Record-Route as Route (RFC 3261 16.6, 16.12)."""
    proxy, caller, pbx = await run_calls(proxy_factory, sipp, transport, 200)
    assert caller.returncode == 0 and caller.successful == 200 and caller.failed == 0, \
        caller.describe()
    # the PBX's scenario requires the BYE: 200 successes == 200 BYEs received and answered
    assert pbx.successful == 200 and pbx.failed == 0, pbx.describe()
    invites = received(pbx, "INVITE")
    byes = received(pbx, "BYE")
    assert len({m.call_id for m in byes}) == 200
    assert all(via_is_proxy(m, proxy, transport) for m in invites + byes)
    rr = f"{LOOPBACK}:{proxy.port}"
    assert all(rr in ",".join(m.get_all("record-route")) for m in invites)
    caller_byes = sent(caller, "BYE")
    assert len({m.call_id for m in caller_byes}) == 200
    assert all(routes_through(m, proxy) for m in caller_byes + sent(caller, "ACK"))


async def test_200_calls_udp_through_proxy(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    await check_200_calls(proxy_factory, sipp, "udp")


async def test_200_calls_tcp_through_proxy(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    await check_200_calls(proxy_factory, sipp, "tcp")


async def test_calls_survive_10_percent_loss(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    """``-lost 10`` on caller and PBX: retransmissions (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1)
    recover, so at least 95 of 100 calls complete."""
    proxy, caller, pbx = await run_calls(proxy_factory, sipp, "udp", 100, lost=10,
                                         timers={"t1_ms": 100})
    assert caller.successful is not None and caller.successful >= 95, caller.describe()
    assert caller.retransmissions, "10 % loss without a single retransmission?"
    proxy.assert_alive()


async def test_cancel_after_180(proxy_factory: Callable[..., ProxyProcess], sipp: Sipp) -> None:
    """The caller CANCELs after 180: it gets 200 for the CANCEL and 487 for the INVITE; the PBX
    receives the CANCEL from the proxy, answers 200 and 487 and gets the ACK (RFC 3261 16.10,
    9.2, 17.1.1.3)."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"])
    pbx = await sipp.uas("uas_cancel_after_180.xml", port=pbx_port, timeout=60, name="pbx")
    caller = await sipp.uac("uac_cancel_after_180.xml", proxy.addr, calls=20, rate=50,
                            keys={"domain": DOMAIN}, timeout=60, name="caller")
    caller_res = await caller.wait()
    pbx_res = await pbx.stop()
    assert caller_res.returncode == 0 and caller_res.successful == 20, caller_res.describe()
    assert pbx_res.successful == 20 and pbx_res.failed == 0, pbx_res.describe()
    cancels = received(pbx_res, "CANCEL")
    assert len({m.call_id for m in cancels}) == 20
    # the proxy's own CANCEL: its Via only, the branch of its INVITE (RFC 3261 9.1)
    invites = {m.call_id: m for m in received(pbx_res, "INVITE")}
    for c in cancels:
        assert len(c.vias) == 1 and via_is_proxy(c, proxy, "udp")
        assert via_sent_by(c.vias[0])[3].get("branch") == \
            via_sent_by(invites[c.call_id].vias[0])[3].get("branch")
    assert len({m.call_id for m in received(pbx_res, "ACK")}) == 20
