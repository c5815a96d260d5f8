"""TLS handshakes off the event loop (proxy/transport/tlspool.py): the server side of a
handshake runs in a pool thread, the connection keeps its slot and its handshake timeout
while its step waits, and the loop hears of every step once it is done. Real sockets on
loopback, strangers on 127.0.0.2; a gate (an Event) holds the worker where a test needs a
step to stay out."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from proxy.sip.transport import Send, Source
from proxy.transport.tcp import HANDSHAKE_BUFFER, SipStream, TcpManager
from proxy.transport.tlspool import HandshakePool, Step
from tests.unit.tls_pki import OPTIONS, client_ctx, make_pki, manager, port_of, until

STRANGER = "127.0.0.2"
OTHER = "127.0.0.3"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every handshake step waits for this event (set at the test's end in any case) before
    it runs in its worker."""
    event = threading.Event()
    run = Step.run

    def gated(step: Step) -> None:
        event.wait(10)
        run(step)

    monkeypatch.setattr(Step, "run", gated)
    yield event
    event.set()


_socks: list[socket.socket] = []


@pytest.fixture(autouse=True)
async def _close_socks() -> AsyncIterator[None]:
    yield
    while _socks:
        _socks.pop().close()


class Client:
    """A TLS client over a raw non-blocking socket and memory BIOs: its bytes are sent when
    and how a test says (a ClientHello in two pieces, a Finished with data after it)."""

    def __init__(self, m: TcpManager, src: str, pki: dict[str, Path]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port_of(m)), timeout=2,
                                             source_address=(src, 0))
        self.sock.setblocking(False)
        _socks.append(self.sock)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_ctx(pki, False).wrap_bio(self.inc, self.out, server_side=False,
                                                   server_hostname="localhost")

    def flight(self) -> bytes:
        """The records the client has to send next (the ClientHello first)."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def read(self, timeout: float = 3.0) -> bytes:
        """What the proxy sent (b"" at its end of stream)."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        except ConnectionResetError:
            return b""

    def take(self, data: bytes) -> None:
        self.inc.write(data)


def conn_from(m: TcpManager, src: str) -> SipStream:
    [conn] = [c for c in m.conns.values() if c.peer[0] == src]
    return conn


@pytest.mark.parametrize("threads", [1, 0])
async def test_a_handshake_runs_in_a_pool_thread_and_the_connection_carries_sip(
        pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """With the pool (the default) every server handshake step runs off the loop's thread;
    with ``handshake_threads=0`` on it, as before. Either way the client's message reaches
    the core and the answer reaches the client."""
    where: list[int] = []
    run = Step.run

    def spy(step: Step) -> None:
        where.append(threading.get_ident())
        run(step)

    monkeypatch.setattr(Step, "run", spy)
    got: list[tuple[bytes, Source]] = []
    m = manager(pki, got, handshake_threads=threads)
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port_of(m),
                                             ssl=client_ctx(pki, False), server_hostname="localhost")
        w.write(OPTIONS)
        await until(lambda: got)
        data, src = got[0]
        assert data == OPTIONS and src.transport == "tls"
        m.send(Send("tls", src.host, src.port, b"SIP/2.0 200 OK\r\n\r\n", src.conn_id))
        assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2) == b"SIP/2.0 200 OK\r\n\r\n"
        if threads:
            assert len(where) >= 2  # the ClientHello, the client's Finished
            assert threading.get_ident() not in where
            assert m._pool is not None and m._pool.queued == 0 and m._pool.steps == len(where)
        else:
            assert where == [] and m._pool is None
        w.close()
    finally:
        m.close()


async def test_bytes_that_come_while_a_step_is_out_wait_for_it_in_order(
        pki: dict[str, Path], gate: threading.Event) -> None:
    """A ClientHello in two pieces, the second while the first is in the pool: the second
    waits on the connection, goes to the pool once the first is back, and the handshake and
    the message after it complete."""
    got: list[tuple[bytes, Source]] = []
    m = manager(pki, got)
    await m.listen("127.0.0.1", 0)
    try:
        c = Client(m, STRANGER, pki)
        hello = c.flight()
        await c.send(hello[:20])
        await until(lambda: m._pool is not None and m._pool.queued == 1)
        await c.send(hello[20:])
        conn = conn_from(m, STRANGER)
        await until(lambda: conn.hs_wait == bytearray(hello[20:]))
        gate.set()
        for _ in range(5):  # the server's flight may come in more than one read
            c.take(await c.read())
            if _done(c):
                break
        assert _done(c)
        c.obj.write(OPTIONS)  # after the client's Finished, in the same send
        await c.send(c.out.read())
        await until(lambda: got)
        assert got[0][0] == OPTIONS and conn.ready and conn.hs_wait is None
        assert m.stats.closed == {}
    finally:
        m.close()


def _done(c: Client) -> bool:
    try:
        c.obj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


async def test_a_step_held_in_the_pool_times_out_frees_its_slot_and_then_its_tls_state(
        pki: dict[str, Path], gate: threading.Event) -> None:
    """A handshake whose step never comes back in time (the pool held up) ends at the
    handshake timeout like any other: closed, counted, its slot of tcp_per_source free for
    the next connection at once; the TLS state goes when the step comes back, skipped."""
    m = manager(pki, [], handshake_timeout=0.5, per_source=1)
    await m.listen("127.0.0.1", 0)
    try:
        c = Client(m, STRANGER, pki)
        await c.send(c.flight())
        await until(lambda: m._pool is not None and m._pool.queued == 1)
        conn = conn_from(m, STRANGER)
        assert await c.read() == b""  # closed by the proxy, nothing written
        await until(lambda: not m.conns)
        assert m.stats.closed == {"handshake": 1} and m.stats.per_source == {}
        assert conn.tls is not None and conn.hs_wait is not None  # the step is still out
        again = Client(m, STRANGER, pki)  # the source's one slot is free again
        await until(lambda: len(m.conns) == 1)
        assert m.stats.refused == {}
        gate.set()
        await until(lambda: m._pool is not None and m._pool.queued == 0)
        assert conn.hs_wait is None and conn.tls._obj is None  # skipped, released
        again.sock.close()
    finally:
        m.close()


async def test_past_the_pool_bound_a_handshake_is_closed_and_counted_as_busy(
        pki: dict[str, Path], gate: threading.Event) -> None:
    """With one step allowed out, a second ClientHello meanwhile is closed at once
    (``connections_closed_total{reason="busy"}``); the first handshake goes on once the
    worker is free."""
    m = manager(pki, [])
    await m.listen("127.0.0.1", 0)
    try:
        m._pool = HandshakePool(asyncio.get_running_loop(), 1, max_queued=1)
        first, second = Client(m, STRANGER, pki), Client(m, OTHER, pki)
        await first.send(first.flight())
        await until(lambda: m._pool is not None and m._pool.queued == 1)
        await second.send(second.flight())
        assert await second.read() == b""
        assert m.stats.closed == {"busy": 1}
        gate.set()
        flight = await first.read()
        assert flight[:1] == b"\x16"  # a handshake record: the ServerHello
    finally:
        m.close()


async def test_too_many_bytes_while_a_step_is_out_close_the_connection(
        pki: dict[str, Path], gate: threading.Event) -> None:
    m = manager(pki, [])
    await m.listen("127.0.0.1", 0)
    try:
        c = Client(m, STRANGER, pki)
        await c.send(c.flight())
        await until(lambda: m._pool is not None and m._pool.queued == 1)
        await c.send(b"\x17" * (HANDSHAKE_BUFFER + 1))
        assert await c.read() == b""
        await until(lambda: not m.conns)
        assert m.stats.closed == {"tls": 1}
        conn_gone = m._pool
        gate.set()
        await until(lambda: conn_gone.queued == 0)
    finally:
        m.close()


class _FakeConn:
    def __init__(self, done: list[str]) -> None:
        self.closed = False
        self.done = done

    def handshaken(self, step: Step) -> None:
        self.done.append(step.data.decode())


class _FakeTls:
    """Records the order the worker runs steps in; the first waits for the gate."""

    def __init__(self, ran: list[str], gate: threading.Event) -> None:
        self.ran, self.gate = ran, gate

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        self.gate.wait(5)
        self.ran.append(data.decode())
        return b"", b""


async def test_the_pool_serves_sources_in_turn_and_trusted_peers_first() -> None:
    """Round robin over sources: a source with five handshakes waiting does not hold up
    another source's one for all five; a trusted peer's step (an upstream) goes first."""
    ran: list[str] = []
    done: list[str] = []
    gate = threading.Event()
    pool = HandshakePool(asyncio.get_running_loop(), 1)
    try:
        tls = _FakeTls(ran, gate)
        for i in range(1, 6):
            assert pool.submit(_FakeConn(done), tls, f"a{i}".encode(), "192.0.2.1")  # type: ignore[arg-type]
        assert pool.submit(_FakeConn(done), tls, b"b1", "192.0.2.2")  # type: ignore[arg-type]
        assert pool.submit(_FakeConn(done), tls, b"t1", "192.0.2.9", first=True)  # type: ignore[arg-type]
        closed = _FakeConn(done)
        assert pool.submit(closed, tls, b"c1", "192.0.2.3")  # type: ignore[arg-type]
        closed.closed = True  # gone before its turn: handed back without running
        assert pool.queued == 8
        gate.set()
        await until(lambda: len(done) == 8)
        # a1 and a2 were out (one running, one next) before the others came
        assert ran == ["a1", "a2", "t1", "a3", "b1", "a4", "a5"]
        assert "c1" in done and pool.queued == 0 and pool.steps == 8
    finally:
        pool.close()


async def test_no_session_is_made_while_the_contexts_are_reloaded(pki: dict[str, Path]) -> None:
    """A reload (SIGHUP) replaces the live contexts' key and certificate with the GIL
    released; a handshake thread makes no session from them meanwhile (CONTEXT_LOCK), and
    goes on once the reload is over."""
    from proxy.transport.tlssession import CONTEXT_LOCK

    m = manager(pki, [])
    await m.listen("127.0.0.1", 0)
    try:
        c = Client(m, STRANGER, pki)
        with CONTEXT_LOCK:  # what reload() holds while it loads the files
            await c.send(c.flight())
            await until(lambda: m._pool is not None and m._pool.queued == 1)
            with pytest.raises(TimeoutError):
                await c.read(0.3)  # the step waits for the lock: no ServerHello
            assert conn_from(m, STRANGER).tls._obj is None  # type: ignore[union-attr]
        assert (await c.read())[:1] == b"\x16"
        assert m.reload()  # takes the lock itself, and the next handshake still works
        r, w = await asyncio.open_connection("127.0.0.1", port_of(m),
                                             ssl=client_ctx(pki, False), server_hostname="localhost")
        w.close()
    finally:
        m.close()
