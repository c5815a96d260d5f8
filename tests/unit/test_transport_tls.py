"""TLS over the TCP stream machinery (RFC 3261 18, 26.2; RFC 5922): real handshakes on
loopback with a test CA (trustme), no SIP peer needed. The limits of TCP and TLS connections
are in test_transport_limits.py."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from proxy.sip.transport import Send, Source
from tests.unit.tls_pki import OPTIONS, client_ctx, make_pki, manager, port_of, until


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path)


async def test_tls_listener_delivers_with_tls_source_and_answers_on_the_connection(
        pki: dict[str, Path]) -> None:
    got: list[tuple[bytes, Source]] = []
    m = manager(pki, got)
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port_of(m),
                                             ssl=client_ctx(pki, False), server_hostname="localhost")
        w.write(OPTIONS + b"\r\n\r\n")  # a message, then a CRLFCRLF keep-alive
        await until(lambda: got)
        data, src = got[0]
        assert data == OPTIONS and src.transport == "tls" and src.conn_id in m.conns
        assert await asyncio.wait_for(r.readexactly(2), 2) == b"\r\n"  # the pong
        m.send(Send("tls", src.host, src.port, b"SIP/2.0 200 OK\r\n\r\n", src.conn_id))
        assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2) == b"SIP/2.0 200 OK\r\n\r\n"
        w.close()
    finally:
        m.close()


async def test_mutual_tls_refuses_a_client_without_certificate(pki: dict[str, Path]) -> None:
    got: list[tuple[bytes, Source]] = []
    m = manager(pki, got, verify=True)
    await m.listen("127.0.0.1", 0)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            r, w = await asyncio.open_connection("127.0.0.1", port_of(m),
                                                 ssl=client_ctx(pki, False),
                                                 server_hostname="localhost")
            w.write(OPTIONS)  # TLS 1.3: the refusal shows on the first read
            await asyncio.wait_for(r.read(10), 2)
            raise ConnectionError("no data")  # EOF is a refusal too
        r, w = await asyncio.open_connection("127.0.0.1", port_of(m), ssl=client_ctx(pki, True),
                                             server_hostname="localhost")
        w.write(OPTIONS)
        await until(lambda: got)
        assert got[0][1].transport == "tls"
        w.close()
    finally:
        m.close()


async def test_client_side_checks_the_certificate_name(pki: dict[str, Path]) -> None:
    """RFC 5922 7.2: the upstream's certificate must name the host of its URI."""
    got: list[tuple[bytes, Source]] = []
    server = manager(pki, got)
    await server.listen("127.0.0.1", 0)
    failed: list[object] = []
    client = manager(pki, [], failed=failed)
    try:
        port = port_of(server)
        client.send(Send("tls", "127.0.0.1", port, OPTIONS, token="bad",
                         server_name="evil.example"))
        await until(lambda: failed)
        assert failed == ["bad"] and got == []
        client.send(Send("tls", "127.0.0.1", port, OPTIONS, token="ok",
                         server_name="proxy.example"))
        await until(lambda: got)
        assert failed == ["bad"]
    finally:
        client.close()
        server.close()


async def test_reload_swaps_the_certificate_for_new_connections(
        pki: dict[str, Path], tmp_path: Path) -> None:
    m = manager(pki, [])
    await m.listen("127.0.0.1", 0)
    try:
        async def serial() -> int:
            r, w = await asyncio.open_connection("127.0.0.1", port_of(m),
                                                 ssl=client_ctx(pki, False),
                                                 server_hostname="localhost")
            cert = w.get_extra_info("ssl_object").getpeercert()
            w.close()
            return int(cert["serialNumber"], 16)

        before = await serial()
        ca2 = trustme.CA()
        new = ca2.issue_cert("127.0.0.1", "localhost")
        new.cert_chain_pems[0].write_to_path(str(pki["cert"]))
        new.private_key_pem.write_to_path(str(pki["key"]))
        with open(pki["ca"], "ab") as f:
            f.write(ca2.cert_pem.bytes())
        assert m.reload()
        assert await serial() != before
        pki["key"].write_text("broken")
        assert not m.reload()  # the old certificate stays
        await serial()
    finally:
        m.close()


async def test_alias_reuses_the_connection_only_for_a_name_the_client_certificate_proves(
        pki: dict[str, Path]) -> None:
    """RFC 5923: ``;alias`` in the top Via makes the connection the one for the Via's sent-by,
    when the client's certificate names that host (mutual TLS); a bare claim does nothing."""
    got: list[tuple[bytes, Source]] = []
    m = manager(pki, got, verify=True)
    await m.listen("127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port_of(m), ssl=client_ctx(pki, True),
                                             server_hostname="localhost")
        for name in ("evil.example", "client.example"):
            w.write(OPTIONS.replace(b"127.0.0.1:1;branch=z9hG4bK1",
                                    name.encode() + b":5099;branch=z9hG4bK1;alias"))
        await until(lambda: len(got) == 2)
        assert ("evil.example", 5099) not in m.by_peer
        conn = m.by_peer[("client.example", 5099)]
        assert conn.conn_id == got[1][1].conn_id
        m.send(Send("tls", "client.example", 5099, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
        assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2) == \
            b"OPTIONS sip:x SIP/2.0\r\n\r\n"
        w.close()
        await until(lambda: ("client.example", 5099) not in m.by_peer)
    finally:
        m.close()


def test_a_tls_session_pair_handshakes_carries_data_and_says_goodbye_in_memory(
        pki: dict[str, Path]) -> None:
    """TlsSession is sans-IO: two of them, bytes passed by hand, no socket (RFC 5246/8446
    records between two MemoryBIO pairs)."""
    from proxy.transport.tls import client_context, server_context
    from proxy.transport.tlssession import TlsSession

    server = TlsSession(server_context(pki["cert"], pki["key"]), True)
    client = TlsSession(client_context(ca_file=pki["ca"]), False, "proxy.example")
    with pytest.raises(ssl.SSLError):
        client.wrap(b"too early")
    to_server, to_client = client.hello(), b""
    for _ in range(4):  # a TLS 1.3 handshake: two round trips at most
        plain, to_client = server.receive(to_server) if to_server else (b"", b"")
        assert plain == b""
        plain, to_server = client.receive(to_client) if to_client else (b"", b"")
        if client.done and server.done and not to_server:
            break
    assert client.done and server.done
    assert server.peercert() is None  # no client certificate asked
    assert client.peercert() is not None
    plain, _ = server.receive(client.wrap(OPTIONS))
    assert plain == OPTIONS
    plain, _ = client.receive(server.wrap(b"SIP/2.0 200 OK\r\n\r\n"))
    assert plain == b"SIP/2.0 200 OK\r\n\r\n"
    plain, _ = server.receive(client.goodbye())
    assert plain == b"" and server.eof
    with pytest.raises(ssl.SSLError):
        client.receive(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a forged record
    server.release()
    assert server.peercert() is None
