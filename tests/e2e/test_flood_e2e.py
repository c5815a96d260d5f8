"""The UDP flood gate end to end (limits.udp_flood_rps, issue 18): a stranger on 127.0.0.2
floods the proxy's UDP port with CANCELs of no transaction (each would get a stateless 481)
while a legitimate caller on 127.0.0.1 sends OPTIONS. Over the rate, the stranger's datagrams
are dropped before they are parsed — it gets no more answers, the proxy logs one line for the
episode and counts the drops in ``refusals_total{reason="flood"}`` — and the caller's every
OPTIONS is answered. Once the stranger has been quiet for a second, it is served again.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.wire import UdpPeer, build_request

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]

STRANGER = "127.0.0.2"
RATE = 200  # limits.udp_flood_rps here: a flood the test can offer many times over
WAIT = 3.0  # bound for an answer on loopback (a loaded machine included)


def metric(proxy: ProxyProcess, pattern: str) -> float:
    host, port = proxy.config["http"].rsplit(":", 1)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^sip_policy_proxy_{pattern} (\S+)$", text, re.M)
    assert m is not None, f"no {pattern} in /metrics"
    return float(m.group(1))


def flood(dst: tuple[str, int], seconds: float, rate: int) -> tuple[int, int]:
    """CANCELs of no transaction from 127.0.0.2 at ``rate`` a second for ``seconds``; the
    datagrams sent and the answers received (read meanwhile and for 0.5 s after)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((STRANGER, 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    sent = answers = 0

    def drain() -> int:
        n = 0
        while True:
            try:
                sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return n
            n += 1

    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) < seconds:
            while sent < int(elapsed * rate) + 1:
                data = build_request("CANCEL", "sip:alice@example.com", via_host=STRANGER,
                                     via_port=port, call_id=f"flood-{sent}")
                try:
                    sock.sendto(data, dst)
                except BlockingIOError:
                    pass
                sent += 1
            answers += drain()
            time.sleep(0.002)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            answers += drain()
            time.sleep(0.01)
    finally:
        sock.close()
    return sent, answers


async def test_a_flooding_stranger_is_dropped_unparsed_while_a_caller_is_served(
        proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(limits={"udp_flood_rps": RATE},
                          extra={"http": f"{LOOPBACK}:{free_port(udp=False)}"})
    mark = proxy.mark()
    async with await UdpPeer.bind(0) as caller:
        attack = asyncio.create_task(asyncio.to_thread(flood, proxy.addr, 3.0, 10 * RATE))
        latencies: list[float] = []
        i = 0
        while not attack.done():
            cid = f"legit-{i}"
            t0 = time.monotonic()
            await caller.send(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}",
                                            via_host=LOOPBACK, via_port=caller.port,
                                            call_id=cid), proxy.addr)
            msg, _ = await caller.recv_sip(WAIT, lambda m, c=cid: m.call_id == c)
            assert msg.status == 200
            latencies.append(time.monotonic() - t0)
            i += 1
            await asyncio.sleep(0.1)
        sent, answers = await attack
    # the stranger: its first second's RATE datagrams answered (481), the rest dropped unparsed
    assert sent >= 5 * RATE
    assert 0 < answers <= 2 * RATE, (sent, answers)
    dropped = await asyncio.to_thread(metric, proxy, 'refusals_total{reason="flood"}')
    assert dropped >= sent - 2 * RATE - answers, (sent, answers, dropped)
    assert await asyncio.to_thread(metric, proxy, "flood_episodes_total") == 1
    lines = [ln for ln in proxy.lines()[mark:] if "dropping the datagrams of" in ln]
    assert len(lines) == 1 and STRANGER in lines[0] and "limits.udp_flood_rps" in lines[0]
    # the caller: every OPTIONS answered during the flood, none held back by it
    assert len(latencies) >= 10 and max(latencies) < 1.0, latencies
    # quiet for over a second, the stranger is served again; the episode's end is logged
    await asyncio.sleep(2.2)
    async with await UdpPeer.bind(0, STRANGER) as again:
        await again.send(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}",
                                       via_host=STRANGER, via_port=again.port,
                                       call_id="after"), proxy.addr)
        msg, _ = await again.recv_sip(WAIT, lambda m: m.call_id == "after")
        assert msg.status == 200
    proxy.wait_for_log(f"datagrams of {STRANGER} admitted again", timeout=WAIT, since=mark)
    proxy.assert_alive()
