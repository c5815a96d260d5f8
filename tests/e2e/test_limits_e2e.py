"""Limits against strangers, end to end: limits.per_source_rps, limits.tcp_idle_timeout and
limits.tcp_max_connections on a running proxy.

* 200 OPTIONS in a burst from one source with ``per_source_rps: 20``: most get 503 with
  Retry-After, the refusal is logged once; another source (127.0.0.2) still gets 200.
* 500 idle TCP connections are closed after ``tcp_idle_timeout``; a sipp call over TCP works
  while they are open and after they were closed.
* Connections past ``tcp_max_connections`` are closed at once; the ones already open keep
  working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, assert_calls, free_port
from tests.e2e.wire import SipStream, UdpPeer, build_request

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]
WAIT = 5.0


def options(peer_host: str, peer_port: int, target: tuple[str, int], transport: str = "UDP",
            cid: str | None = None) -> bytes:
    return build_request("OPTIONS", f"sip:{target[0]}:{target[1]}", via_host=peer_host,
                         via_port=peer_port, transport=transport, call_id=cid)


async def test_burst_from_one_source_gets_503_and_another_source_gets_200(
        proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(limits={"per_source_rps": 20})
    async with await UdpPeer.bind(free_port(tcp=False)) as a, \
            await UdpPeer.bind(0, "127.0.0.2") as b:
        mark = proxy.mark()
        ids = [f"burst-{i}" for i in range(200)]
        for cid in ids:
            await a.send(options(LOOPBACK, a.port, proxy.addr, cid=cid), proxy.addr)
        statuses: dict[str, int] = {}
        while len(statuses) < 200:
            msg, _ = await a.recv_sip(WAIT, lambda m: m.call_id in ids)
            assert msg.status is not None
            statuses.setdefault(msg.call_id or "", msg.status)
            if msg.status == 503:
                assert msg.get("retry-after") is not None
        limited = sum(1 for s in statuses.values() if s == 503)
        assert limited >= 150 and set(statuses.values()) == {200, 503}, statuses
        await b.send(options("127.0.0.2", b.port, proxy.addr, cid="other"), proxy.addr)
        msg, _ = await b.recv_sip(WAIT, lambda m: m.call_id == "other")
        assert msg.status == 200
        lines = [line for line in proxy.lines()[mark:] if "(rate)" in line]
        assert len(lines) == 1 and f"from {LOOPBACK}:{a.port}" in lines[0], lines


async def call_over_tcp(proxy: ProxyProcess, sipp: Sipp, pbx_port: int) -> None:
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, transport="tcp", timeout=30,
                         name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, transport="tcp", calls=1, timeout=30,
                            name="caller")
    assert_calls(await caller.wait(), 1)
    await pbx.stop(grace=3.0)


async def test_idle_tcp_connections_are_closed_and_calls_still_work(
        proxy_factory: ProxyFactory, sipp: Sipp) -> None:
    pbx_port = free_port()
    # The idle connections are a stranger's (127.0.0.2): connections from the upstream's
    # address (127.0.0.1 here) are exempt from the idle rule; tcp_per_source is raised so that
    # only the idle rule closes them.
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port};transport=tcp"],
                          limits={"tcp_idle_timeout": 3, "tcp_per_source": 600})
    idle = [await asyncio.open_connection(*proxy.addr, local_addr=("127.0.0.2", 0))
            for _ in range(500)]
    loop = asyncio.get_running_loop()
    opened = loop.time()
    await call_over_tcp(proxy, sipp, pbx_port)  # during
    closed = await asyncio.gather(*(asyncio.wait_for(r.read(10), 15) for r, _ in idle))
    assert closed == [b""] * 500  # EOF from the proxy on every idle connection
    assert loop.time() - opened >= 2.9
    for _, w in idle:
        w.close()
    await proxy.await_log("idle tcp connections (limits.tcp_idle_timeout 3 s)")
    await call_over_tcp(proxy, sipp, pbx_port)  # after (a new PBX process on the same port)
    proxy.assert_alive()


async def test_connections_past_the_limit_are_refused_and_open_ones_keep_working(
        proxy_factory: ProxyFactory) -> None:
    # One source here: tcp_per_source is raised so that only tcp_max_connections refuses.
    proxy = proxy_factory(limits={"tcp_max_connections": 50, "tcp_per_source": 100})
    kept = [await SipStream.connect(*proxy.addr) for _ in range(50)]
    for i, s in enumerate(kept):
        await s.send(options(*s.local, proxy.addr, "TCP", cid=f"kept-{i}"))
        assert (await s.recv_sip(WAIT)).status == 200
    extra = [await asyncio.open_connection(*proxy.addr) for _ in range(30)]
    assert await asyncio.gather(*(asyncio.wait_for(r.read(10), WAIT) for r, _ in extra)) \
        == [b""] * 30
    for _, w in extra:
        w.close()
    for i, s in enumerate(kept):
        await s.send(options(*s.local, proxy.addr, "TCP", cid=f"again-{i}"))
        assert (await s.recv_sip(WAIT)).status == 200
        await s.close()
    assert len([line for line in proxy.lines() if "refused tcp connection" in line]) == 1
