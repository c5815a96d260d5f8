"""SIP over WebSocket end to end (RFC 7118): the real proxy on loopback with ``ws:``/``wss:``
listeners, phones written with the ``websockets`` client, sipp on the UDP side.

* a phone over ws (and over wss, checking the proxy's ``tls:`` certificate) registers, is
  called by a sipp UAC over UDP and calls a sipp UAS over UDP; each call is record-routed on
  both sides (the ws side with ``;transport=ws`` and a flow token), and BYE crosses both ways;
* its connection closed, a call to it gets 480 at once and an in-dialog request routed to its
  flow 430 (RFC 5626 5.3), not a timeout;
* behind an upstream registrar, the PBX reaches it by the Path the proxy added (a flow token
  naming its WebSocket), and gets 430 once that connection closed;
* hostile clients: no subprotocol (400), a foreign Origin (403), a message over
  max_message_size (1009), an upgrade that trickles (closed at the handshake timeout), garbage
  in frames (400 or dropped, the connection and the process go on); each counted in
  ``/metrics`` and logged;
* a thousand idle connections: from one stranger, refused past ``tcp_per_source``; from 40
  sources, all accepted then closed at ``tcp_idle_timeout``; meanwhile a phone registers over
  ws and the proxy answers UDP at once.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port
from tests.e2e.test_observability_e2e import aget, metric
from tests.e2e.tls_peers import make_pki
from tests.e2e.wire import SipMessage, UdpPeer, build_request, build_response
from tests.e2e.ws_peers import WsPhone, upgrade_request

pytestmark = pytest.mark.e2e
ProxyFactory = Callable[..., ProxyProcess]
DOMAIN = "example.com"


def ws_proxy(proxy_factory: ProxyFactory, transport: str = "ws", *, tmp: Path | None = None,
             upstream: int | None = None, **extra: object) -> tuple[ProxyProcess, int, str]:
    """A proxy with udp+tcp on one port and ``transport`` (ws or wss) on another, the local
    registrar for example.com; returns it, the ws port and the CA file (wss)."""
    sip_port, ws_port = free_port(), free_port(udp=False)
    cfg: dict[str, object] = {
        "listen": [f"udp:{LOOPBACK}:{sip_port}", f"tcp:{LOOPBACK}:{sip_port}",
                   f"{transport}:{LOOPBACK}:{ws_port}"],
        "http": f"{LOOPBACK}:{free_port(udp=False)}", **extra}
    ca = ""
    if transport == "wss":
        assert tmp is not None
        pki = make_pki(tmp / "pki")
        cfg["tls"] = {"cert_file": str(pki.cert), "key_file": str(pki.key)}
        ca = str(pki.ca)
    ups = [f"sip:{LOOPBACK}:{upstream};transport=udp"] if upstream else []
    proxy = proxy_factory(port=sip_port, upstreams=ups, registrar="local", domains=[DOMAIN],
                          extra=cfg)
    return proxy, ws_port, ca


def request(phone: WsPhone, method: str, ruri: str, call_id: str, cseq: int, *extra: str,
            to_tag: str | None = None) -> str:
    to = f"<sip:service@example.net>{f';tag={to_tag}' if to_tag else ''}"
    return "\r\n".join([f"{method} {ruri} SIP/2.0", phone.via(), "Max-Forwards: 70",
                        f"From: <sip:{phone.user}@{DOMAIN}>;tag=ph1", f"To: {to}",
                        f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
                        f"Contact: {phone.contact}", *extra, "", ""])


def record_routes(msg: SipMessage) -> list[str]:
    return [v.strip() for line in msg.get_all("record-route") for v in line.split(",")]


# ------------------------------------------------------------------ calls both ways


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_a_ws_phone_registers_is_called_from_udp_and_calls_out_over_udp(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path, transport: str,
) -> None:
    uas_port = free_port()
    proxy, ws_port, ca = ws_proxy(proxy_factory, transport, tmp=tmp_path, upstream=uas_port)
    phone = await WsPhone.open(ws_port, secure=transport == "wss", ca=ca or None)
    try:
        assert phone.ws.subprotocol == "sip"
        ok = await phone.register()
        assert ok.status == 200 and "transport=ws" in (ok.get("contact") or "")

        # called from UDP: INVITE over the phone's connection, Via WS(S), two Record-Routes
        caller = await sipp.uac("uac_call.xml", proxy.addr, service="alice",
                                keys={"domain": DOMAIN}, duration_ms=300, name="caller")
        invite = await phone.recv_sip(10, lambda m: m.method == "INVITE")
        assert invite.vias[0].startswith(f"SIP/2.0/{transport.upper()} {LOOPBACK}:{ws_port};")
        assert invite.request_uri == f"sip:alice@{phone.host};transport=ws"
        rr = record_routes(invite)
        # each value carries its dialog mark (;d=, proxy.core.access.trust)
        assert re.fullmatch(rf"<sip:[^@]+@{LOOPBACK}:{ws_port};lr;transport={transport};d=[0-9a-f]{{16}}>",
                            rr[0]), rr
        # the caller's side names the caller's flow too (a UA calling a registered phone)
        assert re.fullmatch(rf"<sip:[^@]+@{LOOPBACK}:{proxy.port};lr;d=[0-9a-f]{{16}}>",
                            rr[1]), rr
        await phone.answer(invite, 180, "Ringing")
        await phone.answer(invite)
        await phone.recv_sip(5, lambda m: m.method == "ACK")
        bye = await phone.recv_sip(5, lambda m: m.method == "BYE")
        await phone.answer(bye)
        res = await caller.wait(20)
        assert res.successful == 1, res.describe()

        # calling out to the UAS over UDP: ACK and BYE by the route set cross the proxy
        pbx = await sipp.uas("uas_answer.xml", port=uas_port, calls=1, name="pbx")
        call_id = f"out-{os.urandom(4).hex()}"
        await phone.send(request(phone, "INVITE", "sip:service@example.net", call_id, 1))
        ok = await phone.final("INVITE", 10)
        assert ok.status == 200
        rr = record_routes(ok)
        assert re.fullmatch(rf"<sip:{LOOPBACK}:{proxy.port};lr;d=[0-9a-f]{{16}}>", rr[0]), rr
        assert re.fullmatch(rf"<sip:[^@]+@{LOOPBACK}:{ws_port};lr;transport={transport};d=[0-9a-f]{{16}}>",
                            rr[1]), rr
        target = re.sub(r"^.*<|>.*$", "", ok.get("contact") or "")
        tag = re.search(r"tag=([^;>\s]+)", ok.get("to") or "")
        assert tag is not None
        route = f"Route: {rr[1]}, {rr[0]}"  # RFC 3261 12.1.2: the reverse of Record-Route
        await phone.send(request(phone, "ACK", target, call_id, 1, route, to_tag=tag.group(1)))
        await phone.send(request(phone, "BYE", target, call_id, 2, route, to_tag=tag.group(1)))
        assert (await phone.final("BYE")).status == 200
        res = await pbx.wait(20)
        assert res.successful == 1, res.describe()
        got = next(m.sip for m in res.messages() if m.direction == "received"
                   and m.sip is not None and m.sip.method == "INVITE")
        assert got is not None and got.vias[1].startswith(f"SIP/2.0/{transport.upper()} ")
    finally:
        await phone.close()


# ------------------------------------------------------------------ a closed connection


async def test_a_closed_ws_connection_is_a_dead_flow_at_once(proxy_factory: ProxyFactory) -> None:
    """RFC 5626 5.3 / RFC 7118 5.3: the binding goes with the connection (480 at once), and a
    request of the dialog routed to that flow by its Record-Route token gets 430."""
    proxy, ws_port, _ = ws_proxy(proxy_factory)
    phone = await WsPhone.open(ws_port)
    assert (await phone.register()).status == 200
    async with await UdpPeer.bind() as caller:
        call_id = f"dead-{os.urandom(4).hex()}"
        await caller.send(build_request("INVITE", f"sip:alice@{DOMAIN}", via_host=LOOPBACK,
                                        via_port=caller.port, call_id=call_id), proxy.addr)
        invite = await phone.recv_sip(5, lambda m: m.method == "INVITE")
        await phone.answer(invite)
        ok, _ = await caller.recv_sip(5, lambda m: m.status == 200)
        rr = record_routes(ok)
        await phone.close()
        await proxy.await_log("closed: binding removed", 5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        to_tag = re.search(r";\s*tag=([^;>\s]+)", ok.get("to") or "")
        assert to_tag is not None, ok.get("to")
        await caller.send(build_request("BYE", f"sip:alice@{phone.host};transport=ws",
                                        via_host=LOOPBACK, via_port=caller.port, cseq=2,
                                        call_id=call_id, to_uri=f"sip:alice@{DOMAIN}",
                                        to_tag=to_tag.group(1),
                                        extra_headers=[f"Route: {rr[1]}, {rr[0]}"]), proxy.addr)
        final, _ = await caller.recv_sip(3, lambda m: (m.status or 0) >= 200
                                         and (m.cseq or (0, ""))[1] == "BYE")
        assert final.status == 430  # Flow Failed
        await caller.send(build_request("INVITE", f"sip:alice@{DOMAIN}", via_host=LOOPBACK,
                                        via_port=caller.port), proxy.addr)
        final, _ = await caller.recv_sip(3, lambda m: (m.status or 0) >= 200
                                         and (m.cseq or (0, ""))[1] == "INVITE"
                                         and m.call_id != call_id)
        assert final.status == 480
        assert loop.time() - start < 1.5


async def test_a_ws_phone_behind_an_upstream_registrar_is_reached_by_its_path(
        proxy_factory: ProxyFactory) -> None:
    """``registrar: upstream``: the PBX stores the Path the proxy adds (a flow token naming the
    phone's WebSocket, RFC 3327 / RFC 5626 5.1) and reaches the phone through it, whatever
    its .invalid Contact; once the connection closed, the same Path gets 430 at once."""
    async with await UdpPeer.bind() as pbx:
        sip_port, ws_port = free_port(), free_port(udp=False)
        proxy = proxy_factory(port=sip_port, upstreams=[f"sip:{LOOPBACK}:{pbx.port}"],
                              registrar="upstream", extra={"listen": [
                                  f"udp:{LOOPBACK}:{sip_port}", f"ws:{LOOPBACK}:{ws_port}"]})
        phone = await WsPhone.open(ws_port, user="bob")
        registering = asyncio.ensure_future(phone.register())
        reg, addr = await pbx.recv_sip(5, lambda m: m.method == "REGISTER")
        [path] = reg.get_all("path")
        assert re.fullmatch(rf"<sip:[^@]+@{LOOPBACK}:{sip_port};lr>", path), path
        await pbx.send(build_response(reg, 200, "OK", extra_headers=[
            f"Contact: {reg.get('contact')};expires=600"]), addr)
        assert (await registering).status == 200

        def invite() -> bytes:
            return build_request("INVITE", f"sip:bob@{phone.host};transport=ws",
                                 via_host=LOOPBACK, via_port=pbx.port,
                                 extra_headers=[f"Route: {path}"])

        await pbx.send(invite(), proxy.addr)
        got = await phone.recv_sip(5, lambda m: m.method == "INVITE")
        await phone.answer(got, 486, "Busy Here")
        await pbx.recv_sip(5, lambda m: m.status == 486)
        await phone.close()
        await proxy.await_log("closed: binding removed", 5)
        await pbx.send(invite(), proxy.addr)
        failed, _ = await pbx.recv_sip(3, lambda m: (m.status or 0) >= 200 and m.status != 486)
        assert failed.status == 430


# ------------------------------------------------------------------ hostile clients


async def test_hostile_websocket_clients_are_refused_or_closed_and_counted(
        proxy_factory: ProxyFactory) -> None:
    origin = "https://phone.example.com"
    proxy, ws_port, _ = ws_proxy(
        proxy_factory, ws_allowed_origins=[origin],
        limits={"max_message_size": 4096, "tls_handshake_timeout": 1,
                "tcp_message_timeout": 2})
    # no subprotocol: 400 (RFC 7118 4); a foreign origin: 403
    r, w = await asyncio.open_connection(LOOPBACK, ws_port)
    w.write(upgrade_request(None, origin))
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 400")
    w.close()
    with pytest.raises(InvalidStatus) as refused:
        await WsPhone.open(ws_port, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    # a message over max_message_size: closed with 1009
    big = await WsPhone.open(ws_port, origin=origin)
    await big.send("OPTIONS sip:x SIP/2.0\r\n" + "X-Pad: " + "a" * 5000 + "\r\n\r\n")
    with pytest.raises(ConnectionClosed):
        await big.recv_sip(5)
    assert big.ws.close_code == 1009
    # an upgrade that never ends: closed at the handshake timeout (1 s)
    r, w = await asyncio.open_connection(LOOPBACK, ws_port, local_addr=("127.0.0.2", 0))
    loop = asyncio.get_running_loop()
    start = loop.time()
    w.write(upgrade_request(origin=origin)[:40])
    assert await asyncio.wait_for(r.read(), 5) == b""
    assert 0.9 <= loop.time() - start < 3.0
    w.close()
    # garbage in frames: a broken request gets 400, bytes that are no SIP are dropped; the
    # connection carries SIP on
    phone = await WsPhone.open(ws_port, origin=origin)
    await phone.send(b"\x00\xff\xfe garbage \x01")  # type: ignore[arg-type]
    await phone.send("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;"
                     "branch=z9hG4bKg1\r\nCSeq: x INVITE\r\nCall-ID: g\r\nFrom: <sip:a@b>;tag=1"
                     "\r\nTo: <sip:bob@example.com>\r\nMax-Forwards: 70\r\n\r\n")
    bad = await phone.recv_sip(5)
    assert bad.status == 400
    assert (await phone.register()).status == 200
    await phone.close()
    # every refusal and close is counted, by transport and reason
    _, text = await aget(proxy, "/metrics")
    for name, reason, n in (("connections_refused_total", "subprotocol", 1),
                            ("connections_refused_total", "origin", 1),
                            ("connections_closed_total", "too_large", 1),
                            ("connections_closed_total", "handshake", 1)):
        assert metric(text, name, transport="ws", reason=reason) == n, (name, reason)
    proxy.assert_alive()
    lines = "\n".join(proxy.lines())
    assert "missing subprotocol" in lines and "not in ws_allowed_origins" in lines
    assert "closed with 1009" in lines and "WebSocket upgrade did not end in 1 s" in lines


async def test_a_thousand_idle_websocket_connections_leave_the_proxy_responsive(
        proxy_factory: ProxyFactory) -> None:
    """One stranger's thousand upgrades: ``tcp_per_source`` (32) are taken, the rest closed at
    accept. Forty strangers' thousand: all taken (under the table's 4096), all closed at
    ``tcp_idle_timeout``. Meanwhile a phone registers over ws and stays (its
    binding keeps it), and the proxy answers UDP at once. (``tcp_accept_rate`` is off here: the
    thousand connects come at once, faster than its 500 a second; the rate has its own test in
    tests/unit/test_transport_limits.py.)"""
    proxy, ws_port, _ = ws_proxy(proxy_factory, limits={"tcp_idle_timeout": 3,
                                                        "tcp_accept_rate": 0})
    loop = asyncio.get_running_loop()

    async def upgrade(src: str) -> tuple[asyncio.StreamWriter | None, bool]:
        try:
            r, w = await asyncio.open_connection(LOOPBACK, ws_port, local_addr=(src, 0))
        except OSError:
            return None, False
        w.write(upgrade_request())
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()
            return None, False
        return w, head.startswith(b"HTTP/1.1 101")

    async def responsive() -> float:
        async with await UdpPeer.bind() as peer:
            start = loop.time()
            await peer.send(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}",
                                          via_host=LOOPBACK, via_port=peer.port), proxy.addr)
            await peer.recv_sip(5, lambda m: m.status == 200)
            return loop.time() - start

    held: list[asyncio.StreamWriter] = []
    try:
        one = await asyncio.gather(*(upgrade("127.0.0.2") for _ in range(1000)))
        held += [w for w, _ in one if w is not None]
        assert sum(ok for _, ok in one) == 32
        many = await asyncio.gather(*(upgrade(f"127.0.0.{10 + i % 40}") for i in range(1000)))
        held += [w for w, _ in many if w is not None]
        assert sum(ok for _, ok in many) == 1000
        phone = await WsPhone.open(ws_port)
        assert (await phone.register()).status == 200
        assert await responsive() < 0.5
        _, text = await aget(proxy, "/metrics")
        assert metric(text, "connections", transport="ws", state="open") == 1033
        assert metric(text, "connections_refused_total", transport="ws",
                      reason="per_source") == 968
        # the idle ones go at the idle timeout; the registered phone stays
        deadline = loop.time() + 10
        while True:
            _, text = await aget(proxy, "/metrics")
            if metric(text, "connections", transport="ws", state="open") == 1:
                break
            assert loop.time() < deadline, metric(text, "connections", transport="ws",
                                                  state="open")
            await asyncio.sleep(0.2)  # polled: the closes raise no event here
        assert metric(text, "connections_closed_total", transport="ws", reason="idle") == 1032
        assert await responsive() < 0.5
        await asyncio.wait_for(await phone.ws.ping(), 3)
        await phone.close()
    finally:
        for w in held:
            w.close()
    proxy.assert_alive()
