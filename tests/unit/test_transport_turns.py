"""The stream messages read in one turn of the event loop are bounded (TcpManager.per_turn):
past the budget a connection's bytes wait, with its reading paused, for the next turn, in
the order they came; a connection that goes first has its waiting bytes read, before the
core hears it is gone (RFC 5626 5.3: a flow's messages, then its end). Fake transports: the
turns are the loop's, the bytes are fed by hand."""

from __future__ import annotations

import asyncio

from proxy.sip.transport import Source
from proxy.transport.tcp import SipStream, TcpManager


class _Transport:
    def __init__(self, host: str, port: int) -> None:
        self.peer = (host, port)
        self.paused = False
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _msg(n: int) -> bytes:
    return (f"OPTIONS sip:x SIP/2.0\r\nCall-ID: c{n}\r\nContent-Length: 0\r\n\r\n").encode()


def _conn(m: TcpManager, host: str, port: int) -> tuple[SipStream, _Transport]:
    s = m.stream()
    t = _Transport(host, port)
    s.connection_made(t)  # type: ignore[arg-type]
    return s, t


async def _turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_past_the_turns_budget_bytes_wait_for_the_next_turn_in_order() -> None:
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None)
    m.per_turn = 2
    try:
        a, ta = _conn(m, "192.0.2.1", 1000)
        b, tb = _conn(m, "192.0.2.2", 1000)
        c, tc = _conn(m, "192.0.2.3", 1000)
        a.data_received(_msg(1) + _msg(2))  # the budget is spent
        b.data_received(_msg(3))  # waits, reading paused
        b.data_received(_msg(4))  # after the bytes that wait (a read already under way)
        c.data_received(_msg(5))
        assert [d for d, _ in got] == [_msg(1), _msg(2)]
        assert tb.paused and tc.paused and not ta.paused
        await _turn()
        assert [d for d, _ in got] == [_msg(n) for n in range(1, 6)]
        assert not tb.paused and not tc.paused and b.held is None and c.held is None
        assert [s.host for _, s in got[2:]] == ["192.0.2.2", "192.0.2.2", "192.0.2.3"]
    finally:
        m.close()


async def test_a_connection_gone_with_bytes_waiting_is_read_before_its_end_is_told() -> None:
    got: list[tuple[bytes, Source]] = []
    events: list[str] = []
    m = TcpManager(lambda d, s: events.append(d.split(b"\r\n")[1].decode()),
                   lambda t: None, closed=lambda cid: events.append(f"closed {cid}"))
    m.per_turn = 1
    try:
        a, _ = _conn(m, "192.0.2.1", 1000)
        b, _ = _conn(m, "192.0.2.2", 1000)
        a.data_received(_msg(1))
        b.data_received(_msg(2))
        assert events == ["Call-ID: c1"] and b.held is not None
        b.connection_lost(None)
        assert events == ["Call-ID: c1", "Call-ID: c2", f"closed {b.conn_id}"]
        await _turn()  # the next turn finds nothing left of it
        assert len(events) == 3 and not got
    finally:
        m.close()


async def test_within_the_budget_nothing_waits() -> None:
    got: list[bytes] = []
    m = TcpManager(lambda d, s: got.append(d), lambda t: None)
    try:
        conns = [_conn(m, f"192.0.2.{i}", 1000) for i in range(1, 11)]
        for i, (s, _) in enumerate(conns):
            s.data_received(_msg(i))
        assert len(got) == 10 and not any(t.paused for _, t in conns)
        await _turn()
        assert m.spent == 0  # a new turn, a new budget
    finally:
        m.close()


async def test_a_sweep_closes_a_bounded_number_and_the_next_one_comes_at_once() -> None:
    """Connections past their idle deadline are closed sweep_closes at a time, a turn of the
    loop between two slices, until none is left."""
    m = TcpManager(lambda d, s: None, lambda t: None, idle_timeout=30)
    m.sweep_closes = 3
    try:
        conns = [_conn(m, f"192.0.2.{i}", 1000) for i in range(1, 9)]
        assert m._sweep is not None
        m._sweep.cancel()  # the sweep is driven by hand from here
        m._sweep = None
        for s, _ in conns:
            s.last_sip -= 31  # idle for longer than tcp_idle_timeout
        m._sweep_conns()
        assert sum(t.closing for _, t in conns) == 3
        assert m._sweep is not None and m._sweep.when() <= asyncio.get_running_loop().time()
        for _ in range(20):
            await asyncio.sleep(0)
            if all(t.closing for _, t in conns):
                break
        assert all(t.closing for _, t in conns) and m.stats.closed == {"idle": 8}
    finally:
        m.close()


class _PlainTls:
    """A TLS session whose handshake is over: records are the plaintext; ``eof`` once the
    peer's close_notify came (set by the test)."""

    server_side = True
    done = True

    def __init__(self) -> None:
        self.eof = False
        self.close_after = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        self.eof = self.close_after
        return data, b""

    def goodbye(self) -> bytes:
        return b""

    def release(self) -> None:
        pass


async def test_bytes_that_wait_are_read_before_the_last_ones_of_a_closing_tls_peer() -> None:
    """close_notify with the last message: the bytes that waited for the next turn are read
    first, then the last ones, then the connection closes (order kept, nothing lost)."""
    got: list[bytes] = []
    m = TcpManager(lambda d, s: got.append(d), lambda t: None)
    m.per_turn = 1
    try:
        a, _ = _conn(m, "192.0.2.1", 1000)
        tls = _PlainTls()
        b = SipStream(m, False, tls)  # type: ignore[arg-type]
        tb = _Transport("192.0.2.2", 1000)
        b.connection_made(tb)  # type: ignore[arg-type]
        a.data_received(_msg(1))
        b.data_received(_msg(2))  # waits
        tls.close_after = True
        b.data_received(_msg(3))  # the last, with the peer's close_notify
        assert got == [_msg(1), _msg(2), _msg(3)] and tb.closing and b.held is None
    finally:
        m.close()
