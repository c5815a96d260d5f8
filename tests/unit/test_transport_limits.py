"""What a TCP or TLS connection must do to keep its slot (proxy/transport/conns.py), and that a
Send naming a connection reaches only that connection's peer (RFC 5626 5.3): real sockets on
loopback, strangers on 127.0.0.2, small timeouts."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.core.registrar.auth_failures import source_key as auth_source_key
from proxy.sip.transport import Send, Source
from proxy.transport.conns import RateLimitedLog, source_key
from proxy.transport.tcp import SipStream, TcpManager
from tests.unit.tls_pki import OPTIONS, client_ctx, make_pki, manager, port_of, until

STRANGER = "127.0.0.2"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path)


_writers: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Every client connection of a test is closed when it ends, failed or not."""
    yield
    while _writers:
        _writers.pop().close()
    await asyncio.sleep(0)  # one loop turn: the transports' close callbacks run


async def connect(m: TcpManager, src: str = "127.0.0.1", **kw: object) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port_of(m), local_addr=(src, 0), **kw)
    _writers.append(w)
    return r, w


async def closed_by_peer(r: asyncio.StreamReader, timeout: float) -> float:
    """Read until EOF (pongs and answers are skipped); the time it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await asyncio.wait_for(r.read(4096), timeout):
        pass
    return loop.time() - start


def conn_of(m: TcpManager, w: asyncio.StreamWriter) -> SipStream:
    """The proxy's side of the client connection `w`, by the client's address and port: two
    clients on different loopback addresses (127.0.0.1 and the stranger's 127.0.0.2) may be
    given the same port."""
    host, port = w.get_extra_info("sockname")[:2]
    [conn] = [c for c in m.conns.values() if tuple(c.peer[:2]) == (host, port)]
    return conn


# ------------------------------------------------------------------ sources


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # a dual-stack listener's IPv4 peer
    ("fe80::1%eth0", "fe80::/64"),
    ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),  # as a Via or a URI writes it
    ("not-an-address", "not-an-address"),
])
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(host: str, key: str) -> None:
    assert source_key(host) == key
    # one rule for every per-source bound: the core's rate limits and failed authentications
    # count a source as the transports do
    assert auth_source_key(host) == key


def test_a_rate_limited_log_says_how_many_lines_it_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    say = RateLimitedLog(logging.getLogger("t"), interval=3600)
    with caplog.at_level(logging.INFO, "t"):
        for i in range(5):
            say("a", logging.INFO, "event %d", i)
        say("b", logging.INFO, "other")
        say.interval = 0
        say("a", logging.INFO, "event %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "event 0; logged once a minute", "other; logged once a minute",
        "event 5 (4 more like it since the last line); logged once a minute"]


# ------------------------------------------------------------------ admission


async def test_connections_past_the_limit_are_refused_and_the_open_ones_keep_working() -> None:
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None, max_connections=3)
    await m.listen("127.0.0.1", 0)
    try:
        conns = [await connect(m) for _ in range(3)]
        await until(lambda: len(m.conns) == 3)
        r4, w4 = await connect(m)
        assert await closed_by_peer(r4, 2) < 2  # closed at once
        assert m.stats.refused == {"limit": 1} and len(m.conns) == 3
        for _, w in conns:
            w.write(OPTIONS)
        await until(lambda: len(got) == 3)
        for _, w in [*conns, (r4, w4)]:
            w.close()
    finally:
        m.close()


async def test_one_source_gets_at_most_per_source_connections_and_others_still_connect(
        caplog: pytest.LogCaptureFixture) -> None:
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None, per_source=3,
                   exempt=lambda host: host == "127.0.0.3")
    await m.listen("127.0.0.1", 0)
    try:
        mine = [await connect(m, STRANGER) for _ in range(3)]
        await until(lambda: len(m.conns) == 3)
        extra = [await connect(m, STRANGER) for _ in range(4)]
        for r, _ in extra:
            assert await closed_by_peer(r, 2) < 2
        assert m.stats.refused == {"per_source": 4}
        assert m.stats.per_source == {STRANGER: 3}
        lines = [r.getMessage() for r in caplog.records if "tcp_per_source" in r.getMessage()]
        assert len(lines) == 1 and f"from {STRANGER}" in lines[0]  # logged once a minute
        others = [await connect(m) for _ in range(3)] + [await connect(m, "127.0.0.3")
                                                         for _ in range(5)]  # exempt
        await until(lambda: len(m.conns) == 11)
        for _, w in others:
            w.write(OPTIONS)
        await until(lambda: len(got) == 8)
        mine[0][1].close()  # a slot of the stranger's is free again
        await until(lambda: m.stats.per_source.get(STRANGER) == 2)
        r, w = await connect(m, STRANGER)
        await until(lambda: m.stats.per_source.get(STRANGER) == 3)
        assert m.stats.refused == {"per_source": 4}
        for _, w2 in [*mine, *extra, *others, (r, w)]:
            w2.close()
    finally:
        m.close()


async def test_tls_handshakes_in_progress_count_and_end_at_the_handshake_timeout(
        pki: dict[str, Path]) -> None:
    """A connection to the TLS port is in the table (and its limits) from the TCP connect;
    one that never finishes its handshake is closed once the handshake timeout is over."""
    m = manager(pki, [], handshake_timeout=0.6, per_source=2)
    await m.listen("127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        silent = [await connect(m, STRANGER) for _ in range(2)]
        await until(lambda: len(m.conns) == 2)
        assert not any(c.ready for c in m.conns.values())
        r3, _ = await connect(m, STRANGER)
        assert await closed_by_peer(r3, 2) < 0.5  # the third one: refused at once
        assert m.stats.refused == {"per_source": 1}
        for r, _ in silent:
            await closed_by_peer(r, 5)
        assert 0.55 < loop.time() - opened < 2.5  # handshake_timeout 0.6 s, a sweep later
        await until(lambda: not m.conns)
        assert m.stats.closed == {"handshake": 2} and m.stats.per_source == {}
        r, w = await connect(m, STRANGER, ssl=client_ctx(pki, False),
                             server_hostname="localhost")  # a real client still gets in
        w.write(OPTIONS)
        await until(lambda: len(m.conns) == 1 and next(iter(m.conns.values())).delivered)
        for _, w2 in silent:
            w2.close()
        w.close()
    finally:
        m.close()


async def test_a_failed_handshake_closes_and_frees_the_tls_state(pki: dict[str, Path]) -> None:
    m = manager(pki, [])
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await connect(m, STRANGER)
        await until(lambda: m.conns)
        conn = next(iter(m.conns.values()))
        w.write(b"\x16\x03\x01\x00\x05hello")  # a record header, then garbage
        assert await closed_by_peer(r, 2) < 2
        await until(lambda: not m.conns)
        assert m.stats.closed == {"tls": 1}
        assert conn.tls is not None and conn.tls.peercert() is None
        assert conn.tls._obj is None and conn.transport is None  # nothing left to hold memory
        w.close()
    finally:
        m.close()


# ------------------------------------------------------------------ earning the slot


async def test_keepalives_alone_never_keep_a_connection_without_a_binding() -> None:
    """RFC 5626 4.4.1 pings are answered, but only a connection that carries a binding (or a
    transaction) outlives tcp_idle_timeout on them."""
    bound: set[int] = set()
    m = TcpManager(lambda d, s: None, lambda t: None, idle_timeout=0.8,
                   in_use=lambda cid: cid in bound)
    await m.listen("127.0.0.1", 0)
    try:
        pinger = await connect(m, STRANGER)
        flow = await connect(m)
        await until(lambda: len(m.conns) == 2)
        bound.add(conn_of(m, flow[1]).conn_id)  # a registered flow
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 2.0 and not pinger[0].at_eof():
            for r, w in (pinger, flow):
                w.write(b"\r\n\r\n")
                assert await asyncio.wait_for(r.read(2), 1) in (b"\r\n", b"")
            await asyncio.sleep(0.1)  # the keep-alives' pace (what is tested), not a wait
        assert pinger[0].at_eof()
        assert 0.7 < loop.time() - start < 1.6  # at tcp_idle_timeout, pings or not
        assert len(m.conns) == 1 and m.stats.closed == {"idle": 1}
        flow[1].write(b"\r\n\r\n")
        assert await asyncio.wait_for(flow[0].readexactly(2), 1) == b"\r\n"  # still open
        for _, w in (pinger, flow):
            w.close()
    finally:
        m.close()


async def test_an_upstreams_connection_is_not_closed_for_being_idle() -> None:
    """A trunk's connection carries calls whose in-dialog requests come back over it: the
    configured upstreams and trusted_relays (``exempt``) keep theirs; a stranger does not."""
    m = TcpManager(lambda d, s: None, lambda t: None, idle_timeout=0.5, in_use=lambda c: False,
                   exempt=lambda host: host == "127.0.0.3")
    await m.listen("127.0.0.1", 0)
    try:
        trunk = await connect(m, "127.0.0.3")
        stranger = await connect(m, STRANGER)
        assert await closed_by_peer(stranger[0], 3) < 1.2
        trunk[1].write(b"\r\n\r\n")
        assert await asyncio.wait_for(trunk[0].readexactly(2), 1) == b"\r\n"
        assert len(m.conns) == 1 and m.stats.closed == {"idle": 1}
    finally:
        m.close()


async def test_an_idle_connection_closes_tcp_idle_timeout_after_its_last_sip_message() -> None:
    m = TcpManager(lambda d, s: None, lambda t: None, idle_timeout=0.8, in_use=lambda c: False)
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await connect(m)
        loop = asyncio.get_running_loop()
        for _ in range(3):  # a message every half timeout keeps it
            w.write(OPTIONS)
            await asyncio.sleep(0.5)  # the messages' pace (what is tested), not a wait
        assert len(m.conns) == 1
        last = loop.time() - 0.5
        await closed_by_peer(r, 3)
        assert 0.75 < loop.time() - last < 1.6
        w.close()
    finally:
        m.close()


async def test_a_connection_with_a_transaction_stays_and_closes_once_it_ends() -> None:
    busy = {"yes": True}
    m = TcpManager(lambda d, s: None, lambda t: None, idle_timeout=0.4,
                   in_use=lambda c: busy["yes"])
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await connect(m)
        # the "nothing must happen" window: over twice the timeout, with a live transaction
        await asyncio.sleep(1.0)
        assert len(m.conns) == 1 and not r.at_eof()
        busy["yes"] = False
        assert await closed_by_peer(r, 3) < 1.2
        w.close()
    finally:
        m.close()


async def test_bytes_that_never_complete_a_message_close_at_the_message_timeout() -> None:
    """A byte every 0.2 s after a complete message: the clock runs from the first byte of the
    unfinished message and trickling bytes do not restart it."""
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None, message_timeout=0.8,
                   idle_timeout=60, in_use=lambda c: False)
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await connect(m, STRANGER)
        w.write(OPTIONS)
        await until(lambda: got)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for byte in OPTIONS[:-4]:
            if r.at_eof() or w.is_closing():
                break
            try:
                w.write(bytes([byte]))
                await w.drain()
            except ConnectionError:
                break
            try:
                if not await asyncio.wait_for(r.read(10), 0.2):
                    break
            except TimeoutError:
                continue
        assert 0.7 < loop.time() - start < 1.6
        await until(lambda: not m.conns)
        assert m.stats.closed == {"incomplete": 1} and len(got) == 1
        w.close()
    finally:
        m.close()


async def test_a_complete_message_restarts_the_message_clock() -> None:
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None, message_timeout=0.6)
    await m.listen("127.0.0.1", 0)
    try:
        _, w = await connect(m)
        for i in range(4):  # each message takes 0.4 s to arrive, 1.6 s in all
            w.write(OPTIONS[:20])
            await asyncio.sleep(0.4)  # the message's pace (what is tested), not a wait
            w.write(OPTIONS[20:])
            await until(lambda n=i: len(got) == n + 1)
        assert len(m.conns) == 1 and m.stats.closed == {}
        w.close()
    finally:
        m.close()


async def test_the_core_hears_of_a_closed_connection_only_if_it_carried_a_message() -> None:
    closed: list[int] = []
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None, closed=closed.append)
    await m.listen("127.0.0.1", 0)
    try:
        _, w1 = await connect(m)
        _, w2 = await connect(m)
        await until(lambda: len(m.conns) == 2)
        w2.write(OPTIONS)
        await until(lambda: got)
        w1.close()
        w2.close()
        await until(lambda: not m.conns)
        assert closed == [got[0][1].conn_id]
        assert m.closed_total == 2
    finally:
        m.close()


# ------------------------------------------------------------------ sends (RFC 5626 5.3)


async def test_a_send_naming_a_connection_is_written_only_to_that_connections_peer() -> None:
    got: list[tuple[bytes, Source]] = []
    failed: list[object] = []
    m = TcpManager(lambda d, s: got.append((d, s)), failed.append)
    await m.listen("127.0.0.1", 0)
    try:
        alice = await connect(m)
        bob = await connect(m, STRANGER)
        for _, w in (alice, bob):
            w.write(OPTIONS)
        await until(lambda: len(got) == 2)
        a_src = next(s for _, s in got if s.host == "127.0.0.1")
        b_src = next(s for _, s in got if s.host == STRANGER)
        # A flow token of alice's naming the id bob's connection has now (a restart):
        m.send(Send("tcp", a_src.host, a_src.port, b"INVITE for alice", b_src.conn_id,
                    token="to-alice"))
        m.send(Send("tcp", a_src.host, a_src.port, b"for alice\r\n\r\n", a_src.conn_id,
                    token="ok"))
        assert failed == []  # never from inside send()
        assert await asyncio.wait_for(alice[0].readexactly(13), 2) == b"for alice\r\n\r\n"[:13]
        await until(lambda: failed)
        assert failed == ["to-alice"] and m.unsent == {"closed": 0, "other_peer": 1}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bob[0].read(100), 0.3)  # nothing reached bob
        alice[1].close()
        await until(lambda: a_src.conn_id not in m.conns)
        m.send(Send("tcp", a_src.host, a_src.port, b"again", a_src.conn_id, token="gone"))
        await until(lambda: len(failed) == 2)
        assert failed[1] == "gone" and m.unsent["closed"] == 1
        bob[1].close()
    finally:
        m.close()


async def test_a_send_over_tls_checks_the_peer_as_well(pki: dict[str, Path]) -> None:
    got: list[tuple[bytes, Source]] = []
    failed: list[object] = []
    m = manager(pki, got, failed=failed)
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await connect(m, STRANGER, ssl=client_ctx(pki, False),
                             server_hostname="localhost")
        w.write(OPTIONS)
        await until(lambda: got)
        src = got[0][1]
        m.send(Send("tls", "127.0.0.1", 5060, b"elsewhere", src.conn_id, token="t"))
        await until(lambda: failed == ["t"])
        m.send(Send("tls", src.host, src.port, b"SIP/2.0 200 OK\r\n\r\n", src.conn_id))
        assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2) == b"SIP/2.0 200 OK\r\n\r\n"
        w.close()
    finally:
        m.close()


def test_an_ipv6_peer_written_another_way_is_the_same_peer() -> None:
    s = SipStream.__new__(SipStream)
    s.peer = ("2001:db8::1", 5070)
    s.aliases = []
    assert s.stands_for("2001:db8::1", 5070)
    assert s.stands_for("2001:0db8:0:0::1", 5070)
    assert not s.stands_for("2001:db8::2", 5070)
    assert not s.stands_for("2001:db8::1", 5071)


async def test_a_connect_with_no_listener_frees_nothing_it_did_not_take() -> None:
    failed: list[object] = []
    m = TcpManager(lambda d, s: None, failed.append, connect_timeout=2.0)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    m.send(Send("tcp", "127.0.0.1", port, b"x", token="t"))
    await until(lambda: failed)
    assert failed == ["t"] and m.conns == {} and m.closed_total == 0
    m.close()


async def test_the_metrics_show_the_table_and_every_refusal_and_close_by_reason(
        pki: dict[str, Path]) -> None:
    from proxy.runtime.metrics import StreamCollector

    m = manager(pki, [], per_source=1, handshake_timeout=30)
    await m.listen("127.0.0.1", 0)
    try:
        r1, _ = await connect(m, STRANGER)
        await until(lambda: m.conns)
        r2, _ = await connect(m, STRANGER)
        await closed_by_peer(r2, 2)
        m.send(Send("tls", STRANGER, 1, b"x", 999_999, token="t"))
        found = {(s.name, s.labels["transport"], s.labels.get("state") or s.labels["reason"]):
                 s.value for f in StreamCollector(lambda: [m]).collect() for s in f.samples}
        prefix = "sip_policy_proxy_"
        assert found[(prefix + "connections", "tls", "handshake")] == 1
        assert found[(prefix + "connections", "tls", "open")] == 0
        assert found[(prefix + "connections_refused_total", "tls", "per_source")] == 1
        assert found[(prefix + "connections_refused_total", "tcp", "per_source")] == 0
        assert found[(prefix + "connections_closed_total", "tls", "handshake")] == 0
        assert found[(prefix + "connection_sends_failed_total", "tls", "closed")] == 1
        assert {k[2] for k in found if k[0].endswith("closed_total")} == {
            "idle", "incomplete", "handshake", "tls", "framing", "too_large", "busy"}
        assert {k[2] for k in found if k[0].endswith("refused_total")} == {
            "limit", "per_source", "rate", "source_rate", "origin", "subprotocol", "upgrade"}
        assert {k[1] for k in found} == {"tcp", "tls", "ws", "wss"}
        r1.feed_eof()
    finally:
        m.close()


class _ResetTransport:
    """A transport whose connection was reset before its accept was handled: uvloop then
    reports no peer name."""

    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return None

    def abort(self) -> None:
        self.aborted = True


async def test_a_connection_reset_before_it_was_made_is_dropped_without_a_traceback(
        pki: dict[str, Path]) -> None:
    """bench/hostile.py (60,000 TLS handshakes) found connection_made raising TypeError on a
    peer name of None, a traceback per connection: such a connection is aborted, never
    counted, and leaves nothing in the table."""
    got: list[tuple[bytes, Source]] = []
    m = manager(pki, got)
    before = dict(m.conns)
    stream = SipStream(m)
    t = _ResetTransport()
    stream.connection_made(t)  # type: ignore[arg-type]
    assert t.aborted and stream.refused
    stream.connection_lost(None)
    assert m.conns == before


def test_new_connections_are_rate_limited_per_table_and_per_source() -> None:
    """limits.tcp_accept_rate: a flood of connects (bench/hostile.py: 60,000 TLS handshakes,
    a legitimate call delayed by a second) is cut at accept: at most ``rate`` a second in
    all and ``per_source`` a second from one source, with bursts of as many."""
    from proxy.transport.conns import AcceptRate

    a = AcceptRate(10, 3)
    assert [a.allow("192.0.2.1", 100.0) for _ in range(4)] == [None, None, None, "source_rate"]
    # other sources share the table's 10 (3 used): 7 more, then the table is full
    got = [a.allow(f"192.0.2.{i}", 100.0) for i in range(2, 12)]
    assert got == [None] * 7 + ["rate"] * 3
    # the buckets refill with time: a second later the first source is served again
    assert a.allow("192.0.2.1", 101.0) is None
    assert AcceptRate(0, 3).allow("192.0.2.1", 0.0) is None  # 0: off


def test_the_sources_an_accept_rate_remembers_are_bounded() -> None:
    from proxy.transport.conns import AcceptRate

    a = AcceptRate(1_000_000, 5, max_sources=100)
    for i in range(1000):
        assert a.allow(f"10.0.{i // 256}.{i % 256}", 50.0 + i / 1e6) is None
    assert len(a._sources) <= 100


async def test_a_connect_flood_past_the_accept_rate_is_closed_at_accept(
        pki: dict[str, Path]) -> None:
    """Real sockets: with tcp_accept_rate 5, of 20 connects at once from a stranger 5 are
    kept (per_source is 32 here: the table's rate decides) and the rest are closed before any
    byte; the refusals are counted by reason."""
    got: list[tuple[bytes, Source]] = []
    m = TcpManager(lambda d, s: got.append((d, s)), lambda t: None, accept_rate=5,
                   per_source=32)
    await m.listen("127.0.0.1", 0)
    try:
        conns = [await connect(m, STRANGER) for _ in range(20)]
        await until(lambda: m.stats.refused["rate"] + m.stats.refused["source_rate"] >= 15)
        assert len(m.conns) == 5
        closed = 0
        for r, _ in conns:
            try:
                if await asyncio.wait_for(r.read(1), 0.5) == b"":
                    closed += 1
            except TimeoutError:
                pass
        assert closed == 15
    finally:
        m.close()
