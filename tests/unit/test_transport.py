"""The transport seam: UDP and TCP take the same Send (RFC 3261 18) and report failures alike."""

from __future__ import annotations

import asyncio

from proxy.core.types import LocalAddress as CoreLocalAddress
from proxy.core.types import Send as CoreSend
from proxy.core.types import Source as CoreSource
from proxy.sip.transport import LocalAddress, Send, Source
from proxy.transport.base import Transport
from proxy.transport.tcp import TcpManager
from proxy.transport.udp import UdpEndpoint


def test_core_and_transport_share_the_same_values() -> None:
    assert CoreSend is Send
    assert CoreSource is Source
    assert CoreLocalAddress is LocalAddress


def test_udp_and_tcp_are_transports() -> None:
    udp: Transport = UdpEndpoint(lambda data, src: None)
    tcp: Transport = TcpManager(lambda data, src: None, lambda token: None)
    assert callable(udp.send) and callable(tcp.send)


async def test_udp_send_failure_is_reported_later_with_its_token() -> None:
    failed: list[object] = []
    ep = UdpEndpoint(lambda data, src: None, failed=failed.append)  # never bound
    ep.send(Send("udp", "127.0.0.1", 5060, b"x", token="t1"))
    ep.send(Send("udp", "127.0.0.1", 5060, b"x"))  # no token: nothing to report
    assert failed == []  # never from inside send()
    await asyncio.sleep(0)
    assert failed == ["t1"]


async def test_udp_send_reaches_the_peer() -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[tuple[bytes, Source]] = loop.create_future()
    rx, _ = await loop.create_datagram_endpoint(
        lambda: UdpEndpoint(lambda d, s: got.done() or got.set_result((d, s))),
        local_addr=("127.0.0.1", 0))
    tx, ep = await loop.create_datagram_endpoint(
        lambda: UdpEndpoint(lambda d, s: None), local_addr=("127.0.0.1", 0))
    try:
        port = rx.get_extra_info("sockname")[1]
        ep.send(Send("udp", "127.0.0.1", port, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
        data, src = await asyncio.wait_for(got, 2)
        assert data == b"OPTIONS sip:x SIP/2.0\r\n\r\n"
        assert src.transport == "udp" and src.host == "127.0.0.1"
        assert src.port == tx.get_extra_info("sockname")[1]
    finally:
        rx.close()
        tx.close()


async def test_tcp_connect_failure_is_reported_with_its_token() -> None:
    failed: list[object] = []
    tcp = TcpManager(lambda d, s: None, failed.append, connect_timeout=2.0)
    # A port nobody listens on: the connect is refused.
    probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    tcp.send(Send("tcp", "127.0.0.1", port, b"x", token="t2"))
    assert failed == []
    for _ in range(100):
        if failed:
            break
        await asyncio.sleep(0.02)
    assert failed == ["t2"]
    tcp.close()
