"""Accepting stream connections (proxy/transport/conns.py, Listener): a burst of connects is
taken at most ACCEPTS_PER_TURN a turn of the event loop, and a connection refused at accept
(the accept rate, the table, the source's share) is closed right after ``accept()``, before any
transport, protocol or TLS state is made for it (bench/hostile.py attack 6: 3,700 connects
accepted and closed in one turn delayed a legitimate call by 212 ms). Real sockets on
loopback; strangers on 127.0.0.2."""

from __future__ import annotations

import asyncio
import socket

import pytest

from proxy.transport.conns import ACCEPTS_PER_TURN, Listener
from proxy.transport.tcp import SipStream, TcpManager

STRANGER = "127.0.0.2"


class Table:
    """A stand-in table that refuses every connection for its rate and counts what it sees."""

    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []
        self.taken: list[socket.socket] = []

    def at_accept(self, host: str) -> str | None:
        return "rate"

    def refused_at_accept(self, host: str, port: int, reason: str) -> None:
        self.refused.append((host, reason))

    def accepted(self, sock: socket.socket) -> None:
        self.taken.append(sock)


def pending(port: int, n: int) -> list[socket.socket]:
    """``n`` connections completed by the kernel and waiting in the listen queue."""
    out = []
    for _ in range(n):
        c = socket.socket()
        c.bind((STRANGER, 0))
        c.connect(("127.0.0.1", port))
        out.append(c)
    return out


async def test_a_burst_is_accepted_in_slices_of_accepts_per_turn() -> None:
    table = Table()
    listener = Listener.bind(table, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    clients = pending(port, 3 * ACCEPTS_PER_TURN + 10)
    try:
        listener._ready(listener.sockets[0])  # one turn's callback, called by hand
        assert len(table.refused) == ACCEPTS_PER_TURN  # the rest wait for the next turns
        for _ in range(50):  # the loop's own turns take the rest
            if len(table.refused) == len(clients):
                break
            await asyncio.sleep(0.01)
        assert len(table.refused) == len(clients)
        assert set(table.refused) == {(STRANGER, "rate")} and table.taken == []
        # each refused client reads the end of its stream: closed at accept
        clients[0].settimeout(2)
        assert clients[0].recv(1) == b""
    finally:
        listener.close()
        for c in clients:
            c.close()


async def test_a_connection_over_the_accept_rate_gets_no_protocol(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With tcp_accept_rate 5: of 100 connects at once, 5 get a protocol (SipStream) and a
    table entry; 95 are closed at accept without one."""
    made: list[SipStream] = []
    real = TcpManager.stream

    def counting(self: TcpManager, outgoing: bool = False,
                 server_name: str | None = None) -> SipStream:
        s = real(self, outgoing, server_name)
        made.append(s)
        return s

    monkeypatch.setattr(TcpManager, "stream", counting)
    m = TcpManager(lambda d, s: None, lambda t: None, accept_rate=5, per_source=32)
    await m.listen("127.0.0.1", 0)
    port = m.servers[0].sockets[0].getsockname()[1]
    clients = pending(port, 100)
    try:
        for _ in range(200):
            if sum(m.stats.refused.values()) >= 95 and len(m.conns) == 5:
                break
            await asyncio.sleep(0.01)
        assert len(m.conns) == 5 and len(made) == 5
        assert m.stats.refused["rate"] + m.stats.refused["source_rate"] == 95
    finally:
        m.close()
        for c in clients:
            c.close()
