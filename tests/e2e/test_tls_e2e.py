"""TLS end to end (RFC 3261 18, 26.2; RFC 5922; RFC 5630): Python ``ssl`` peers on loopback
with a test CA (trustme).

* A call from a TLS client through the proxy to a TLS upstream (``sips:`` upstream): INVITE,
  200, ACK, BYE; the upstream sees ``Via: SIP/2.0/TLS`` of the proxy and a Record-Route with
  ``;transport=tls``; the caller's ACK and BYE follow the Record-Route back over TLS.
* Two Record-Route values when the transport changes (TLS caller, UDP upstream).
* Mutual TLS (``verify_client``): a client without a certificate is refused, one with it served.
* A ``sips:`` Request-URI is never sent over UDP or TCP: 480, the UDP/TCP upstream gets nothing.
* SIGHUP reloads the certificate: a new connection sees the new one.
"""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.e2e import kamailio_tls
from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.tls_peers import Pki, TlsUas, make_pki, tls_config
from tests.e2e.wire import RecordingUpstream, SipStream, build_request, new_call_id, via_sent_by

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]
WAIT = 5.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


async def tls_connect(pki: Pki, port: int, *, with_cert: bool = False) -> SipStream:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        LOOPBACK, port, ssl=pki.client_context(with_cert), server_hostname="localhost"), WAIT)
    return SipStream(reader, writer)


def rr_values(lines: list[str]) -> list[str]:
    return [v.strip() for line in lines for v in line.split(":", 1)[1].split(",")]


async def test_call_from_tls_client_through_the_proxy_to_a_tls_upstream(
        proxy_factory: ProxyFactory, pki: Pki) -> None:
    uas = await TlsUas(pki.server_context(), free_port(udp=False)).start()
    try:
        port, tls_port = free_port(), free_port(udp=False)
        proxy = proxy_factory(port=port, upstreams=[f"sips:{LOOPBACK}:{uas.port}"],
                              extra=tls_config(pki, tls_port, port))
        caller = await tls_connect(pki, tls_port)
        host, cport = caller.local
        call_id = new_call_id("tls")
        await caller.send(build_request(
            "INVITE", "sips:bob@example.net", via_host=host, via_port=cport, transport="TLS",
            call_id=call_id, from_uri="sips:alice@example.net",
            extra_headers=[f"Contact: <sips:alice@{host}:{cport};transport=tls>"]))
        ok = await caller.recv_sip(WAIT, lambda m: m.status == 200)
        inv = await uas.wait_for("INVITE")
        t, vhost, vport, _ = via_sent_by(inv.vias[0])
        assert (t, vhost, vport) == ("TLS", LOOPBACK, tls_port)
        [rr] = rr_values(inv.raw_lines("record-route"))
        # ;d=: the dialog mark (issue 18) after the proxy's own parameters
        assert re.search(rf"@{LOOPBACK}:{tls_port};lr;transport=tls;d=[0-9a-f]{{16}}>", rr), rr
        # The dialog: ACK and BYE along the Record-Route, over TLS both ways.
        route = [f"Route: {v}" for v in reversed(rr_values(ok.raw_lines("record-route")))]
        to = ok.get("to")
        contact = re.search(r"<([^>]+)>", ok.get("contact") or "")
        assert contact is not None and to is not None
        for method, cseq in (("ACK", 1), ("BYE", 2)):
            req = build_request(method, contact.group(1), via_host=host, via_port=cport,
                                transport="TLS", call_id=call_id, cseq=cseq,
                                from_uri="sips:alice@example.net", extra_headers=route)
            req = req.replace(b"To: <" + contact.group(1).encode() + b">",
                              b"To: " + to.encode())
            await caller.send(req)
        bye_ok = await caller.recv_sip(WAIT, lambda m: m.status == 200 and
                                       (m.cseq or (0, ""))[1] == "BYE")
        assert bye_ok.call_id == call_id
        await uas.wait_for("ACK")
        bye = await uas.wait_for("BYE")
        assert via_sent_by(bye.vias[0])[0] == "TLS"
        await caller.close()
        proxy.assert_alive()
    finally:
        await uas.close()


async def test_transport_change_gets_two_record_routes(
        proxy_factory: ProxyFactory, pki: Pki) -> None:
    upstream = await RecordingUpstream.start(free_port(tcp=False), invite_status=486)
    try:
        port, tls_port = free_port(), free_port(udp=False)
        proxy_factory(port=port, upstreams=[f"sip:{LOOPBACK}:{upstream.port}"],
                      extra=tls_config(pki, tls_port, port))
        caller = await tls_connect(pki, tls_port)
        host, cport = caller.local
        await caller.send(build_request("INVITE", "sip:bob@example.net", via_host=host,
                                        via_port=cport, transport="TLS"))
        final = await caller.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
        assert final.status == 486
        inv = await upstream.wait_for(lambda m: m.method == "INVITE", WAIT)
        assert via_sent_by(inv.vias[0])[0] == "UDP"
        first, second = rr_values(inv.raw_lines("record-route"))
        # each value with its dialog mark (;d=, issue 18)
        assert re.search(rf"{LOOPBACK}:{port};lr;d=[0-9a-f]{{16}}>", first), first
        assert ";transport=" not in first
        assert re.search(rf"{LOOPBACK}:{tls_port};lr;transport=tls;d=[0-9a-f]{{16}}>", second)
        await caller.close()
    finally:
        await upstream.close()


async def test_mutual_tls_refuses_a_client_without_certificate(
        proxy_factory: ProxyFactory, pki: Pki) -> None:
    port, tls_port = free_port(), free_port(udp=False)
    proxy_factory(port=port, extra=tls_config(pki, tls_port, port, verify_client=True))
    options = build_request("OPTIONS", f"sip:{LOOPBACK}:{tls_port}", via_host=LOOPBACK,
                            via_port=1, transport="TLS")
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError, TimeoutError)):
        stranger = await tls_connect(pki, tls_port)
        await stranger.send(options)  # TLS 1.3: the refusal shows on the first read
        await stranger.recv_sip(WAIT)
    friend = await tls_connect(pki, tls_port, with_cert=True)
    await friend.send(options)
    ok = await friend.recv_sip(WAIT)
    assert ok.status == 200
    await friend.close()


async def test_sips_request_uri_never_goes_over_udp_or_tcp(
        proxy_factory: ProxyFactory, pki: Pki) -> None:
    udp_up = await RecordingUpstream.start(free_port(tcp=False), invite_status=200)
    tcp_hits: list[bytes] = []

    async def tcp_pbx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tcp_hits.append(await reader.read(100))
        writer.close()

    tcp_port = free_port(udp=False)
    tcp_server = await asyncio.start_server(tcp_pbx, LOOPBACK, tcp_port)
    try:
        port, tls_port = free_port(), free_port(udp=False)
        proxy_factory(port=port, upstreams=[f"sip:{LOOPBACK}:{udp_up.port}",
                                            f"sip:{LOOPBACK}:{tcp_port};transport=tcp"],
                      extra=tls_config(pki, tls_port, port))
        caller = await tls_connect(pki, tls_port)
        host, cport = caller.local
        await caller.send(build_request("INVITE", "sips:bob@example.net", via_host=host,
                                        via_port=cport, transport="TLS"))
        final = await caller.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
        assert final.status == 480
        await asyncio.sleep(0.5)  # the window in which nothing must reach the upstreams
        assert [d for d in udp_up.since(0) if d.sip and d.sip.is_request] == []
        assert tcp_hits == []
        await caller.close()
    finally:
        tcp_server.close()
        await udp_up.close()


async def test_sighup_reloads_the_certificate(proxy_factory: ProxyFactory, pki: Pki) -> None:
    port, tls_port = free_port(), free_port(udp=False)
    proxy = proxy_factory(port=port, extra=tls_config(pki, tls_port, port))

    async def serial() -> int:
        s = await tls_connect(pki, tls_port)
        cert = s.writer.get_extra_info("ssl_object").getpeercert()
        await s.close()
        return int(cert["serialNumber"], 16)

    before = await serial()
    new = pki.authority.issue_cert(LOOPBACK, "localhost")
    new.cert_chain_pems[0].write_to_path(str(pki.cert))
    new.private_key_pem.write_to_path(str(pki.key))
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    await proxy.await_log("tls certificates reloaded", since=mark)
    assert await serial() not in (before,)
    assert isinstance(pki.authority, trustme.CA)


@pytest.mark.skipif(not kamailio_tls.available(), reason="make test installs kamailio and "
                    "kamailio-tls-modules (TEST_SYSDEPS)")
async def test_call_through_the_proxy_to_kamailio_over_tls(
        proxy_factory: ProxyFactory, pki: Pki, tmp_path: Path) -> None:
    """A real SIP implementation as the TLS PBX: Kamailio with its tls module (OpenSSL),
    verified by the proxy against the test CA (RFC 5922: its certificate names 127.0.0.1)."""
    kam = await kamailio_tls.KamailioTls(tmp_path / "kamailio", free_port(udp=False),
                                         pki.pbx).start()
    try:
        port, tls_port = free_port(), free_port(udp=False)
        proxy_factory(port=port, upstreams=[f"sips:{LOOPBACK}:{kam.port}"],
                      extra=tls_config(pki, tls_port, port))
        caller = await tls_connect(pki, tls_port)
        host, cport = caller.local
        call_id = new_call_id("kam")
        await caller.send(build_request(
            "INVITE", "sips:bob@example.net", via_host=host, via_port=cport, transport="TLS",
            call_id=call_id, from_uri="sips:alice@example.net",
            extra_headers=[f"Contact: <sips:alice@{host}:{cport};transport=tls>"]))
        ok = await caller.recv_sip(WAIT, lambda m: m.status == 200)
        route = [f"Route: {v}" for v in reversed(rr_values(ok.raw_lines("record-route")))]
        assert route, "the 200 lost the proxy's Record-Route"
        contact = re.search(r"<([^>]+)>", ok.get("contact") or "")
        assert contact is not None and ok.get("to") is not None
        for method, cseq in (("ACK", 1), ("BYE", 2)):
            req = build_request(method, contact.group(1), via_host=host, via_port=cport,
                                transport="TLS", call_id=call_id, cseq=cseq,
                                from_uri="sips:alice@example.net", extra_headers=route)
            req = req.replace(b"To: <" + contact.group(1).encode() + b">",
                              b"To: " + (ok.get("to") or "").encode())
            await caller.send(req)
        await caller.recv_sip(WAIT, lambda m: m.status == 200 and (m.cseq or (0, ""))[1] == "BYE")
        await caller.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT
        while len(kam.requests()) < 3 and loop.time() < end:
            await asyncio.sleep(0.05)  # kamailio's log is a file: bounded poll
        assert kam.requests() == [("INVITE", "tls"), ("ACK", "tls"), ("BYE", "tls")], kam.text()
    finally:
        await kam.stop()
