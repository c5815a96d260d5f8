"""SIP over WebSocket (RFC 7118, proxy/transport/ws.py): the opening handshake, one SIP message
per WebSocket message, and the limits every stream connection obeys (proxy/transport/conns.py),
with the ``websockets`` client and raw sockets on loopback; strangers on 127.0.0.2."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from proxy.sip.transport import Send, Source
from proxy.transport.tls import server_context
from proxy.transport.ws import HANDSHAKE_MAX, WsManager
from tests.unit.tls_pki import make_pki, port_of, until

STRANGER = "127.0.0.2"
SIP = [Subprotocol("sip")]
OPTIONS = ("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n"
           "\r\n")


class Peer:
    """What a manager handed up: messages and closed flows."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Source]] = []
        self.failed: list[object] = []
        self.closed: list[int] = []


@pytest.fixture
def peer() -> Peer:
    return Peer()


_open: list[Any] = []


@pytest.fixture(autouse=True)
async def _cleanup() -> AsyncIterator[None]:
    """Every manager and client of a test is closed when it ends, failed or not."""
    yield
    while _open:
        thing = _open.pop()
        if isinstance(thing, WsManager):
            thing.close()
        elif isinstance(thing, asyncio.StreamWriter):
            thing.close()
        else:
            await thing.close()
    await asyncio.sleep(0)  # one loop turn: the transports' close callbacks run


async def ws_manager(peer: Peer, **kw: Any) -> WsManager:
    kw.setdefault("handshake_timeout", 2.0)
    m = WsManager(lambda d, s: peer.got.append((d, s)), peer.failed.append,
                  closed=peer.closed.append, **kw)
    await m.listen("127.0.0.1", 0)
    _open.append(m)
    return m


def url(m: WsManager) -> str:
    scheme = "wss" if m.server_ctx is not None else "ws"
    return f"{scheme}://127.0.0.1:{port_of(m)}/"


async def client(m: WsManager, src: str = "127.0.0.1", **kw: Any) -> ClientConnection:
    kw.setdefault("subprotocols", SIP)
    c = await asyncio.wait_for(connect(url(m), local_addr=(src, 0), compression=None,
                                       open_timeout=3, **kw), 5)
    _open.append(c)
    return c


async def raw(m: WsManager, src: str = "127.0.0.1") -> tuple[asyncio.StreamReader,
                                                              asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port_of(m), local_addr=(src, 0))
    _open.append(w)
    return r, w


def upgrade(protocol: str | None = "sip", origin: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET / HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer_of(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 3)


async def eof_within(r: asyncio.StreamReader, timeout: float) -> float:
    """Read until the proxy closes; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        while await asyncio.wait_for(r.read(4096), timeout):
            pass
    except ConnectionError:
        pass  # closed while we were still writing
    return loop.time() - start


def gone(r: asyncio.StreamReader) -> bool:
    return r.at_eof() or r.exception() is not None


def masked(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A client frame (RFC 6455 5.2), masked with a zero key; ``length`` may lie."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


# ------------------------------------------------------------------ handshake


async def test_a_sip_message_in_and_an_answer_out_over_the_same_connection(peer: Peer) -> None:
    """RFC 7118 4: the subprotocol sip is agreed; 5: a message is one SIP message, its
    Source names the ws transport and the connection; a Send naming it comes back as one
    text frame (a non-UTF-8 one as a binary frame)."""
    m = await ws_manager(peer)
    c = await client(m)
    assert c.subprotocol == "sip"
    await c.send(OPTIONS)  # no Content-Length: the WebSocket message is the boundary
    await until(lambda: peer.got)
    [(data, src)] = peer.got
    assert data == OPTIONS.encode()
    assert src.transport == "ws" and src.host == "127.0.0.1" and src.conn_id in m.conns
    m.send(Send("ws", src.host, src.port, b"SIP/2.0 200 OK\r\n\r\n", src.conn_id))
    assert await asyncio.wait_for(c.recv(), 3) == "SIP/2.0 200 OK\r\n\r\n"
    m.send(Send("ws", src.host, src.port, b"SIP/2.0 200 \xff\r\n\r\n", src.conn_id))
    assert await asyncio.wait_for(c.recv(), 3) == b"SIP/2.0 200 \xff\r\n\r\n"  # bytes: binary
    await c.send(b"SIP/2.0 180 Ringing\r\n\r\n")  # binary frames carry SIP too
    await until(lambda: len(peer.got) == 2)


@pytest.mark.parametrize("protocol", [None, "chat"])
async def test_an_upgrade_without_the_sip_subprotocol_is_refused_400(
        peer: Peer, protocol: str | None) -> None:
    """RFC 7118 4: a client that does not offer ``sip`` gets no WebSocket; counted."""
    m = await ws_manager(peer)
    r, w = await raw(m)
    w.write(upgrade(protocol))
    assert (await answer_of(r)).startswith(b"HTTP/1.1 400 ")
    assert await eof_within(r, 3) < 3
    assert m.stats.refused == {"subprotocol": 1}
    await until(lambda: not m.conns)
    assert not peer.got and not peer.closed


async def test_an_origin_not_allowed_is_refused_403_and_an_allowed_one_gets_in(
        peer: Peer) -> None:
    """``ws_allowed_origins``: a browser's Origin (RFC 6455 10.2) must be in the list."""
    m = await ws_manager(peer, origins=["https://phone.example.com"])
    with pytest.raises(InvalidStatus) as refused:
        await client(m, origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        await client(m)  # no Origin at all: not a page of the allowed origin either
    c = await client(m, origin=Origin("https://phone.example.com"))
    await c.send(OPTIONS)
    await until(lambda: peer.got)
    assert m.stats.refused == {"origin": 2}


async def test_what_is_not_an_upgrade_is_refused_and_closed(peer: Peer) -> None:
    m = await ws_manager(peer)
    r, w = await raw(m)
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # a plain HTTP request
    assert (await answer_of(r)).startswith(b"HTTP/1.1 426 ")
    r2, w2 = await raw(m)
    w2.write(OPTIONS.encode())  # SIP without the upgrade
    assert await eof_within(r2, 3) < 3
    r3, w3 = await raw(m)
    w3.write(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 2000 + b"\r\n" + b"X: y\r\n" * 4000)
    assert await eof_within(r3, 3) < 3  # over HANDSHAKE_MAX: closed before it ends
    assert m.stats.refused == {"upgrade": 3}
    assert HANDSHAKE_MAX < 2000 + 6 * 4000
    await until(lambda: not m.conns)


async def test_a_slow_upgrade_is_closed_at_the_handshake_timeout_and_counted(
        peer: Peer) -> None:
    """A connection holds a slot during its upgrade: it must end within the timeout,
    however it trickles."""
    m = await ws_manager(peer, handshake_timeout=0.6)
    # The clock starts before the connect: the proxy's starts at its accept, which a loaded
    # machine may let the client see some 150 ms later.
    start = asyncio.get_running_loop().time()
    r, w = await raw(m, STRANGER)
    request = upgrade()
    for i in range(0, 40):
        if gone(r):
            break
        w.write(request[i:i + 1])
        await asyncio.sleep(0.05)  # the trickle: one byte per 50 ms
    took = asyncio.get_running_loop().time() - start + await eof_within(r, 3)
    assert 0.6 <= took < 2.0
    assert m.stats.closed == {"handshake": 1}
    c = await client(m)  # a client that completes its upgrade gets in
    await c.send(OPTIONS)
    await until(lambda: peer.got)


# ------------------------------------------------------------------ frames and messages


async def test_a_message_over_max_size_closes_with_1009_whole_or_in_fragments(
        peer: Peer) -> None:
    m = await ws_manager(peer, max_size=2000)
    c = await client(m)
    await c.send("x" * 2001)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(c.recv(), 3)
    assert c.close_code == 1009
    c2 = await client(m)
    await c2.send(["x" * 1000, "x" * 1000, "x" * 1000])  # fragments add up
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(c2.recv(), 3)
    assert c2.close_code == 1009
    assert m.stats.closed == {"too_large": 2}
    assert not peer.got
    # a frame header announcing 2^40 bytes is refused as soon as it is read
    r, w = await raw(m)
    w.write(upgrade())
    await answer_of(r)
    w.write(masked(0x1, b"", length=1 << 40))
    assert await eof_within(r, 3) < 3
    assert m.stats.closed == {"too_large": 3}


async def test_fragments_make_one_sip_message(peer: Peer) -> None:
    m = await ws_manager(peer)
    c = await client(m)
    await c.send([OPTIONS[:10], OPTIONS[10:30], OPTIONS[30:]])
    await until(lambda: peer.got)
    assert [d for d, _ in peer.got] == [OPTIONS.encode()]


async def test_a_protocol_error_closes_with_1002_and_is_counted(peer: Peer) -> None:
    m = await ws_manager(peer)
    r, w = await raw(m)
    w.write(upgrade())
    await answer_of(r)
    w.write(b"\x81\x05hello")  # an unmasked client frame (RFC 6455 5.1)
    data = await asyncio.wait_for(r.read(64), 3)
    assert data[:1] == b"\x88" and int.from_bytes(data[2:4], "big") == 1002
    assert await eof_within(r, 3) < 3
    assert m.stats.closed == {"framing": 1}


async def test_garbage_in_a_frame_is_handed_up_as_it_is(peer: Peer) -> None:
    """The transport does not judge SIP: the core answers 400 or drops (its tests)."""
    m = await ws_manager(peer)
    c = await client(m)
    await c.send(b"\x00\xff garbage \r\n\r\n")
    await until(lambda: peer.got)
    assert peer.got[0][0] == b"\x00\xff garbage \r\n\r\n"


async def test_a_message_that_trickles_is_closed_at_the_message_timeout(peer: Peer) -> None:
    m = await ws_manager(peer, message_timeout=0.5)
    r, w = await raw(m, STRANGER)
    w.write(upgrade())
    await answer_of(r)
    frame = masked(0x1, OPTIONS.encode())
    start = asyncio.get_running_loop().time()
    for i in range(len(frame)):
        if gone(r):
            break
        w.write(frame[i:i + 1])
        await asyncio.sleep(0.05)  # the trickle's pace (what is tested), not a wait
    took = asyncio.get_running_loop().time() - start + await eof_within(r, 3)
    assert 0.5 <= took < 1.8
    assert m.stats.closed == {"incomplete": 1} and not peer.got


# ------------------------------------------------------------------ keep-alives and idle


async def test_pings_and_crlf_keepalives_are_answered_but_keep_no_strangers_slot(
        peer: Peer) -> None:
    """RFC 6455 5.5.2 pongs and the CRLF keep-alive of SIP.js are answered; neither is a SIP
    message, so an idle connection without a binding is closed at the idle timeout; one the
    core says carries a binding (a flow, RFC 5626) stays."""
    kept: set[int] = set()
    m = await ws_manager(peer, idle_timeout=0.8, in_use=lambda cid: cid in kept)
    stranger = await client(m, STRANGER)
    phone = await client(m)
    await phone.send(OPTIONS)
    await until(lambda: peer.got)
    phone_id = peer.got[0][1].conn_id
    assert phone_id is not None
    kept.add(phone_id)
    start = asyncio.get_running_loop().time()
    await stranger.send("\r\n\r\n")
    assert await asyncio.wait_for(stranger.recv(), 3) == "\r\n"
    with pytest.raises(ConnectionClosed):
        while True:
            pong = await stranger.ping()
            await asyncio.wait_for(pong, 3)
            await asyncio.sleep(0.1)  # a ping every 100 ms, and still closed
    took = asyncio.get_running_loop().time() - start
    assert 0.8 <= took < 2.5
    assert stranger.close_code == 1000
    assert m.stats.closed == {"idle": 1}
    assert len(peer.got) == 1  # keep-alives are not SIP messages
    await asyncio.wait_for(await phone.ping(), 3)  # the bound flow is still open
    assert phone_id in m.conns


async def test_a_closed_connection_is_a_closed_flow_at_once(peer: Peer) -> None:
    """RFC 5626 5.3 / RFC 7118 5.3: the core hears of the close (its flows die)."""
    m = await ws_manager(peer)
    c = await client(m)
    await c.send(OPTIONS)
    await until(lambda: peer.got)
    conn_id = peer.got[0][1].conn_id
    await c.close()
    await until(lambda: peer.closed == [conn_id])
    assert conn_id not in m.conns


# ------------------------------------------------------------------ sends


async def test_a_browser_is_reached_only_over_its_own_connection(peer: Peer) -> None:
    """No outgoing WebSocket: a Send without a connection to its peer fails (with its token,
    later); one naming a connection that is another peer's is not written there."""
    m = await ws_manager(peer)
    c = await client(m)
    await c.send(OPTIONS)
    await until(lambda: peer.got)
    src = peer.got[0][1]
    m.send(Send("ws", "127.0.0.9", 5060, b"INVITE", None, "t1"))
    m.send(Send("ws", "127.0.0.9", 5060, b"INVITE", src.conn_id, "t2"))
    await until(lambda: peer.failed == ["t1", "t2"])
    assert m.unsent == {"closed": 1, "other_peer": 1}
    m.send(Send("ws", src.host, src.port, b"SIP/2.0 200 OK\r\n\r\n"))  # by its address
    assert await asyncio.wait_for(c.recv(), 3) == "SIP/2.0 200 OK\r\n\r\n"


# ------------------------------------------------------------------ limits and wss


async def test_per_source_and_table_limits_apply_to_websocket_connections(peer: Peer) -> None:
    m = await ws_manager(peer, per_source=2, max_connections=3)
    mine = [await client(m, STRANGER) for _ in range(2)]
    r, _ = await raw(m, STRANGER)
    assert await eof_within(r, 3) < 3
    assert m.stats.refused == {"per_source": 1}
    mine.append(await client(m))
    r, _ = await raw(m, "127.0.0.3")
    assert await eof_within(r, 3) < 3
    assert m.stats.refused == {"per_source": 1, "limit": 1}
    for c in mine:
        await c.send(OPTIONS)
    await until(lambda: len(peer.got) == 3)


async def test_wss_carries_sip_over_tls_with_the_tls_certificate(
        peer: Peer, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ctx = server_context(pki["cert"], pki["key"], pki["ca"])
    m = await ws_manager(peer, server_ctx=ctx)
    assert m.name == "wss"
    c = await client(m, ssl=ssl.create_default_context(cafile=str(pki["ca"])))
    await c.send(OPTIONS)
    await until(lambda: peer.got)
    [(_, src)] = peer.got
    assert src.transport == "wss"
    m.send(Send("wss", src.host, src.port, b"SIP/2.0 200 OK\r\n\r\n", src.conn_id))
    assert await asyncio.wait_for(c.recv(), 3) == "SIP/2.0 200 OK\r\n\r\n"


async def test_a_wss_handshake_that_never_ends_is_closed_in_time(
        peer: Peer, tmp_path: Path) -> None:
    """TLS and the upgrade together must end within the handshake timeout."""
    pki = make_pki(tmp_path)
    m = await ws_manager(peer, handshake_timeout=0.5,
                         server_ctx=server_context(pki["cert"], pki["key"], pki["ca"]))
    r, w = await asyncio.open_connection(
        "127.0.0.1", port_of(m), ssl=ssl.create_default_context(cafile=str(pki["ca"])))
    _open.append(w)
    took = await eof_within(r, 3)  # TLS is up; no upgrade request follows
    assert 0.3 <= took < 2.0
    assert m.stats.closed == {"handshake": 1}
