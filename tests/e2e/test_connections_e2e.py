"""Connections earn their slot, end to end (issue 18 items 2, 6, 7; docs/SECURITY.md): the real
proxy on loopback, strangers on 127.0.0.2 and up, small timeouts.

* connections that send nothing but CRLFCRLF keep-alives are closed at ``tcp_idle_timeout``,
  pongs and all, while a registered outbound flow that sends the same keep-alives stays and
  still carries SIP (RFC 5626 4.4.1: keep-alives keep a flow, not a stranger's slot);
* a slow sender (one OPTIONS, then one byte at a time) is closed at ``tcp_message_timeout``;
* past ``tcp_per_source`` (default 32) connections from 127.0.0.2 are closed at once, while
  127.0.0.1 still connects and completes a call;
* connections to the TLS port that never finish a handshake count toward ``tcp_per_source``
  and are closed at ``tls_handshake_timeout``; a TLS client from 127.0.0.1 gets in meanwhile;
* after 2,000 TLS handshakes left half-open from 100 sources the proxy's RSS returns within
  20% of its idle figure (it grew by tens of MB, and stayed there, before);
* a flow token from before a restart names a connection id that now belongs to another peer:
  the request is not written to that peer's connection (RFC 5626 5.3).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import Callable

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port, rss_kib
from tests.e2e.test_edge_outbound_e2e import (
    AOR_URI,
    DOMAIN,
    USER,
    new_instance,
    outbound_contact,
    pbx_invite,
    pbx_registrar_answers,
    the_path,
)
from tests.e2e.test_limits_e2e import call_over_tcp, options
from tests.e2e.tls_peers import make_pki, tls_config
from tests.e2e.wire import SipMessage, SipStream, UdpPeer, build_ack, build_request

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]
STRANGER = "127.0.0.2"
WAIT = 5.0
PING = b"\r\n\r\n"


class Conn:
    """A raw client connection and when it was opened."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 opened: float) -> None:
        self.reader, self.writer, self.opened = reader, writer, opened

    @classmethod
    async def open(cls, addr: tuple[str, int], src: str = LOOPBACK,
                   **kw: object) -> Conn:
        r, w = await asyncio.wait_for(asyncio.open_connection(*addr, local_addr=(src, 0), **kw),
                                      WAIT)
        return cls(r, w, asyncio.get_running_loop().time())

    async def closed_after(self, timeout: float) -> float | None:
        """Read until the proxy closes (whatever it sent first): seconds since opened, or None
        when the connection is still open after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while await asyncio.wait_for(self.reader.read(4096), max(0.01, end - loop.time())):
                pass
        except TimeoutError:
            return None
        except (ConnectionError, OSError):
            pass
        return loop.time() - self.opened

    def close(self) -> None:
        self.writer.close()


async def ping_until_closed(c: Conn, every: float, limit: float) -> float:
    """Send CRLFCRLF every ``every`` s and read the pongs until the proxy closes the
    connection (or ``limit`` s passed); seconds from open to close, or ``limit``."""
    loop = asyncio.get_running_loop()
    while loop.time() - c.opened < limit:
        try:
            c.writer.write(PING)
            pong = await asyncio.wait_for(c.reader.read(64), every + 1)
        except (ConnectionError, OSError):
            pong = b""
        if not pong:
            return loop.time() - c.opened
        assert pong.strip(b"\r\n") == b"", pong
        await asyncio.sleep(every)  # the keep-alives' pace (what is tested), not a wait
    return limit


async def register_over_tcp(proxy: ProxyProcess) -> SipStream:
    """An outbound REGISTER (RFC 5626 4.2) over a raw TCP connection that stays open: the local
    registrar binds it to that connection (a registered flow)."""
    phone = await SipStream.connect(*proxy.addr, timeout=WAIT)
    host, port = phone.local
    contact = outbound_contact(f"sip:{USER}@{host}:{port};transport=tcp;ob", new_instance())
    await phone.send(build_request(
        "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
        from_uri=AOR_URI, to_uri=AOR_URI, from_tag="flowreg",
        extra_headers=[f"Contact: {contact}", "Expires: 3600", "Supported: outbound, path"]))
    ok = await phone.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
    assert ok.status == 200, ok.start_line
    return phone


async def test_keepalives_keep_a_registered_flow_but_no_strangers_slot(
        proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{free_port()}"], registrar="local",
                          domains=[DOMAIN], limits={"tcp_idle_timeout": 2})
    phone = await register_over_tcp(proxy)
    strangers = [await Conn.open(proxy.addr, STRANGER) for _ in range(10)]
    try:
        lived = await asyncio.gather(*(ping_until_closed(c, 0.3, 8) for c in strangers))
        # closed at tcp_idle_timeout (2 s) after opening, a sweep later at most, pings or not
        assert all(1.9 <= t < 5 for t in lived), lived
        await proxy.await_log("closed 10 idle tcp connections (limits.tcp_idle_timeout 2 s)")
        for _ in range(3):  # the flow pings too, and outlives the timeout (over 4 s in all)
            await phone.send(PING)
            await asyncio.sleep(0.5)  # the pace: time must pass for the idle rule to act
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:
            await phone.send(PING)
            await asyncio.sleep(0.25)  # the pace: time must pass for the idle rule to act
        host, port = phone.local
        await phone.send(options(host, port, proxy.addr, "TCP", cid="still-here"))
        ok = await phone.recv_sip(WAIT, lambda m: m.call_id == "still-here")
        assert ok.status == 200
    finally:
        for c in strangers:
            c.close()
        await phone.close()
    proxy.assert_alive()


async def test_a_slow_sender_is_closed_at_the_message_timeout(
        proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(limits={"tcp_message_timeout": 1.5})
    s = await SipStream.connect(*proxy.addr, timeout=WAIT)
    try:
        host, port = s.local
        await s.send(options(host, port, proxy.addr, "TCP", cid="first"))
        assert (await s.recv_sip(WAIT)).status == 200  # one complete message is fine
        loop = asyncio.get_running_loop()
        start = loop.time()
        closed = False
        for byte in options(host, port, proxy.addr, "TCP", cid="slow")[:-4]:
            try:
                s.writer.write(bytes([byte]))
                if not await asyncio.wait_for(s.reader.read(10), 0.4):
                    closed = True
                    break
            except TimeoutError:
                continue  # nothing came back: the proxy waits for the rest
            except (ConnectionError, OSError):
                closed = True
                break
        took = loop.time() - start
        assert closed and 1.4 <= took < 4, (closed, took)
        await proxy.await_log("whose message did not complete in 1.5 s "
                              "(limits.tcp_message_timeout)")
    finally:
        await s.close()
    proxy.assert_alive()


async def test_one_source_gets_tcp_per_source_connections_and_others_still_call(
        proxy_factory: ProxyFactory, sipp: Sipp) -> None:
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port};transport=tcp"])
    conns = [await Conn.open(proxy.addr, STRANGER) for _ in range(40)]
    try:
        # each watched for 0.3 s, all at once (one after the other the 32 held took 9.6 s)
        lived = await asyncio.gather(*(c.closed_after(0.3) for c in conns))
        assert lived[:32] == [None] * 32, lived  # 32 held (the default tcp_per_source) ...
        assert all(t is not None for t in lived[32:]), lived  # ... the 8 others closed at once
        await call_over_tcp(proxy, sipp, pbx_port)  # 127.0.0.1 still gets in, and calls
        lines = [line for line in proxy.lines() if "limits.tcp_per_source" in line]
        assert len(lines) == 1 and f"from {STRANGER}:" in lines[0], lines  # once a minute
    finally:
        for c in conns:
            c.close()
    proxy.assert_alive()


def tls_proxy(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory,
              **limits: float) -> tuple[ProxyProcess, int, ssl.SSLContext]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    port, tls_port = free_port(), free_port()
    proxy = proxy_factory(port=port, extra=tls_config(pki, tls_port, port), limits=limits)
    return proxy, tls_port, pki.client_context()


async def tls_options(tls_port: int, ctx: ssl.SSLContext, cid: str) -> SipMessage:
    r, w = await asyncio.wait_for(asyncio.open_connection(
        LOOPBACK, tls_port, ssl=ctx, server_hostname="localhost"), WAIT)
    s = SipStream(r, w)
    try:
        host, port = s.local
        await s.send(options(host, port, (LOOPBACK, tls_port), "TLS", cid=cid))
        return await s.recv_sip(WAIT, lambda m: m.call_id == cid)
    finally:
        await s.close()


async def test_half_open_tls_handshakes_count_and_end_at_the_handshake_timeout(
        proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    proxy, tls_port, ctx = tls_proxy(proxy_factory, tmp_path_factory,
                                     tls_handshake_timeout=1.5)
    silent = [await Conn.open((LOOPBACK, tls_port), STRANGER) for _ in range(40)]
    try:
        assert (await tls_options(tls_port, ctx, "during")).status == 200
        ended = await asyncio.gather(*(c.closed_after(6) for c in silent))
        assert None not in ended, ended
        lived = [t for t in ended if t is not None]
        quick = sorted(lived)[:8]
        held = sorted(lived)[8:]
        assert max(quick) < 1.0, lived  # past tcp_per_source (32): closed at accept
        assert all(1.4 <= t < 4.5 for t in held), lived  # at the handshake timeout
        await proxy.await_log("closed 32 tls connections whose TLS handshake did not end "
                              "in 1.5 s")
        assert (await tls_options(tls_port, ctx, "after")).status == 200
    finally:
        for c in silent:
            c.close()
    proxy.assert_alive()


def client_hellos(port: int, sources: list[str], per_source: int) -> list[socket.socket]:
    """Connect and send one ClientHello each, then stay silent (blocking; run in a thread)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    socks = []
    for src in sources:
        for _ in range(per_source):
            s = socket.socket()
            s.bind((src, 0))
            s.connect((LOOPBACK, port))
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            s.sendall(outgoing.read())
            socks.append(s)
    return socks


async def test_rss_returns_after_many_half_open_tls_handshakes(
        proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each handshake that got its ClientHello answered holds OpenSSL state until its timeout;
    when they are closed the memory must come back (issue 18 item 7: 63,000 of them took RSS
    from 35 MB to 1,634 MB, never returned)."""
    # tcp_accept_rate out of the way: this test is about what an answered handshake holds,
    # and at the default (500 a second) how many of the 2,000 connects are handshaken at all
    # depends on how fast this machine makes them (under load: too few to measure).
    proxy, tls_port, ctx = tls_proxy(proxy_factory, tmp_path_factory, tls_handshake_timeout=1,
                                     tcp_per_source=20, tcp_accept_rate=100_000)
    assert proxy.proc is not None
    pid = proxy.proc.pid
    assert (await tls_options(tls_port, ctx, "warm")).status == 200
    idle = rss_kib(pid)
    sources = [f"127.0.0.{i}" for i in range(2, 102)]
    socks = await asyncio.to_thread(client_hellos, tls_port, sources, 20)
    try:
        loop = asyncio.get_running_loop()
        peak, end = idle, loop.time() + 6
        while loop.time() < end and "closed" not in " ".join(proxy.lines()[-3:]):
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.1)  # RSS sampled while the handshakes are held
        peak = max(peak, rss_kib(pid))
        # The attack did cost memory (KiB): some 10 KB to 25 KB a handshake answered, how
        # many of the 2,000 are answered before the first times out depends on the machine.
        assert peak - idle > 10_000, (idle, peak)
        await proxy.await_log("whose TLS handshake did not end in 1 s", timeout=10)
        end = loop.time() + 20
        while rss_kib(pid) > 1.2 * idle and loop.time() < end:
            await asyncio.sleep(0.25)  # bounded poll: memory given back raises no event
        after = rss_kib(pid)
        assert after <= 1.2 * idle, (idle, peak, after)
    finally:
        for s in socks:
            s.close()
    assert (await tls_options(tls_port, ctx, "after")).status == 200
    proxy.assert_alive()


async def test_a_flow_token_from_before_a_restart_never_reaches_another_peer(
        proxy_factory: ProxyFactory) -> None:
    """Issue 18 item 2 / RFC 5626 5.3: a phone registers over TCP through the edge proxy
    (its Path token names connection 1); the proxy restarts with the same secret and bob's
    connections from 127.0.0.2 now have ids 1, 2, 3; the PBX's INVITE by that Path must not
    reach bob, and the PBX gets a final error."""
    pbx_port = free_port()
    secret = uuid.uuid4().hex * 2
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="upstream",
                          extra={"secret": secret})
    async with await UdpPeer.bind(pbx_port) as pbx:
        phone = await SipStream.connect(*proxy.addr, timeout=WAIT)
        try:
            host, port = phone.local
            contact = outbound_contact(f"sip:{USER}@192.0.2.55:5060;transport=tcp;ob",
                                       new_instance())
            await phone.send(build_request(
                "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
                from_uri=AOR_URI, to_uri=AOR_URI, from_tag="tcpreg",
                extra_headers=[f"Contact: {contact}", "Expires: 3600",
                               "Supported: outbound, path"]))
            path = the_path(await pbx_registrar_answers(pbx, proxy), proxy, "udp")
            assert (await phone.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)).status == 200
        finally:
            await phone.close()
        proxy.stop()
        again = proxy_factory(port=proxy.port, upstreams=[f"sip:{LOOPBACK}:{pbx_port}"],
                              registrar="upstream", extra={"secret": secret})
        bob = [SipStream(*await asyncio.open_connection(*again.addr, local_addr=(STRANGER, 0)))
               for _ in range(3)]
        try:
            for i, b in enumerate(bob):  # each carries SIP: the core knows its id
                bhost, bport = b.local
                await b.send(options(bhost, bport, again.addr, "TCP", cid=f"bob-{i}"))
                assert (await b.recv_sip(WAIT)).status == 200
            call_id = f"restart-{uuid.uuid4().hex[:8]}"
            await pbx.send(pbx_invite(pbx, path.raw, call_id), again.addr)
            final, _ = await pbx.recv_sip(
                WAIT, lambda m: m.call_id == call_id and (m.status or 0) >= 200)
            assert final.status is not None and final.status >= 400, final.start_line
            await pbx.send(build_ack("sip:bob@192.0.2.55:5060", final), again.addr)
            for b in bob:  # nothing at all reached bob (not even a close)
                assert not b.pending and not b.buffer.strip(), (b.pending, b.buffer)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(b.reader.read(65536), 1.0)
        finally:
            for b in bob:
                await b.close()
    again.assert_alive()
