"""A real browser phone through the proxy (RFC 7118): JsSIP in Debian's headless chromium.

The proxy listens on udp, tcp and ``wss:`` (the ``tls:`` test certificate; chromium runs with
``--ignore-certificate-errors``), is the local registrar for example.com, accepts the page's
origin only (``ws_allowed_origins``) and has a sipp UAS as its upstream, over UDP. The page (tests/e2e/browser/phone.html, served on loopback) runs JsSIP with
chromium's fake microphone:

1. it registers over ``wss:`` (JsSIP's REGISTER: Via WSS, a ``.invalid`` Contact, reg-id and
   +sip.instance: RFC 5626 over WebSocket);
2. it calls a sipp UAS behind the proxy over UDP: the INVITE carries the browser's WebRTC
   offer, the UAS answers 200 with a WebRTC answer (DTLS-SRTP, ICE; no media flows), the
   browser confirms (ACK) and hangs up (BYE crosses the proxy, the UAS answers 200). The
   INVITE the UAS got was record-routed twice (the udp side and the wss side) and has the
   browser's Via ``SIP/2.0/WSS``;
3. a sipp UAC calls the browser from UDP (sip:alice@example.com): the page answers at once,
   the UAC hangs up after a second; the BYE reaches the browser over its connection;
4. the browser closes (its WebSocket goes): a call to alice is answered 480 at once, not
   after a timeout (RFC 5626 5.3: a closed connection is a dead flow).

This test runs in ``make test``; without chromium or JsSIP it fails and says what to install.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.browser_phone import Browser, PageServer, chromium, jssip
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port
from tests.e2e.tls_peers import make_pki
from tests.e2e.wire import UdpPeer, build_request

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]


@pytest_asyncio.fixture
async def page_server() -> AsyncIterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


async def test_a_jssip_phone_in_chromium_registers_calls_and_is_called_over_wss(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path, page_server: PageServer,
) -> None:
    chromium()
    jssip()
    pki = make_pki(tmp_path / "pki")
    uas_port, sip_port, wss_port = free_port(), free_port(), free_port(udp=False)
    proxy = proxy_factory(
        # ;transport=udp: the browser's INVITE (a WebRTC offer, about 3 KB) would otherwise go
        # over TCP (RFC 3261 18.1.1: over 1,300 bytes), which this UAS does not listen on
        upstreams=[f"sip:{LOOPBACK}:{uas_port};transport=udp"], registrar="local",
        domains=["example.com"],
        extra={"listen": [f"udp:{LOOPBACK}:{sip_port}", f"tcp:{LOOPBACK}:{sip_port}",
                          f"wss:{LOOPBACK}:{wss_port}"],
               "tls": {"cert_file": str(pki.cert), "key_file": str(pki.key)},
               "ws_allowed_origins": [page_server.origin]},
        port=sip_port)
    uas = await sipp.uas("webrtc_uas_answer.xml", port=uas_port, calls=1, name="pbx")
    url = page_server.url(ws=f"wss://{LOOPBACK}:{wss_port}", uri="sip:alice@example.com")
    browser = await Browser.open(url, tmp_path / "chromium", tmp_path / "chromium.log")
    try:
        # 1. registered over wss: through the local registrar
        await browser.wait_event("registered", 30)
        # 2. the browser calls the UAS behind the proxy, then hangs up
        mark = len(await browser.events())
        assert await browser.evaluate("phone.call('sip:service@example.net')") is True
        await browser.wait_event("confirmed", 30, mark)
        assert await browser.evaluate("phone.hangup()") is True
        ended = await browser.wait_event("ended", 15, mark)
        assert ended["detail"].startswith("local")
        res = await uas.wait(20)
        assert res.successful == 1, res.describe()
        invite = next(m.sip for m in res.messages() if m.direction == "received"
                      and m.sip is not None and m.sip.method == "INVITE")
        assert invite is not None
        rr = [v.strip() for line in invite.get_all("record-route") for v in line.split(",")]
        assert len(rr) == 2, rr
        # each value carries its dialog mark (;d=, proxy.core.access.trust)
        assert re.fullmatch(rf"<sip:{LOOPBACK}:{sip_port};lr;d=[0-9a-f]{{16}}>", rr[0]), rr
        assert re.fullmatch(rf"<sip:[^@]+@{LOOPBACK}:{wss_port};lr;transport=wss;d=[0-9a-f]{{16}}>",
                            rr[1]), rr
        vias = invite.vias
        assert vias[0].startswith(f"SIP/2.0/UDP {LOOPBACK}:{sip_port};")
        assert vias[1].startswith("SIP/2.0/WSS ") and ".invalid" in vias[1]
        assert "UDP/TLS/RTP/SAVPF" in invite.body.decode("latin-1")  # the browser's offer
        bye = next(m.sip for m in res.messages() if m.direction == "received"
                   and m.sip is not None and m.sip.method == "BYE")
        assert bye is not None

        # 3. a UDP caller reaches the browser: auto-answered, the caller hangs up
        mark = len(await browser.events())
        uac = await sipp.uac("webrtc_uac_call.xml", (LOOPBACK, sip_port), service="alice",
                             keys={"domain": "example.com"}, duration_ms=1000, name="caller")
        res = await uac.wait(40)
        assert res.successful == 1, res.describe()
        await browser.wait_event("incoming", 5, mark)
        await browser.wait_event("confirmed", 5, mark)
        ended = await browser.wait_event("ended", 10, mark)
        assert ended["detail"].startswith("remote")
        ok = next(m.sip for m in res.messages() if m.direction == "received"
                  and m.sip is not None and m.sip.status == 200)
        assert ok is not None and "UDP/TLS/RTP/SAVPF" in ok.body.decode("latin-1")
    finally:
        await browser.close()

    # 4. its connection is gone: a call to alice fails at once (RFC 5626 5.3), no timeout
    await proxy.await_log("closed: binding removed", 10)
    async with await UdpPeer.bind() as caller:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await caller.send(build_request("INVITE", "sip:alice@example.com", via_host=LOOPBACK,
                                        via_port=caller.port), proxy.addr)
        final, _ = await caller.recv_sip(5, lambda m: (m.status or 0) >= 200)
        assert final.status == 480
        assert loop.time() - start < 1.0
