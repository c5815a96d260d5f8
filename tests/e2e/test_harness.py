"""Self-tests of the e2e harness, without the proxy: the scenarios sipp-to-sipp (or against a
tiny Python peer), the raw-socket helpers against in-test echoes, and ProxyProcess against fake
proxies.  A failure here is a harness bug, not a proxy bug."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port
from tests.e2e.wire import (
    RecordingUpstream,
    SipMessage,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    parse_sip,
    tcp_exchange,
    via_sent_by,
)

pytestmark = pytest.mark.e2e


def branch_of(via: str) -> str | None:
    return via_sent_by(via)[3].get("branch")


# ----------------------------------------------------------------------------- ports


def test_free_port_is_free_for_udp_and_tcp_and_never_reused() -> None:
    seen: set[int] = set()
    for _ in range(5):
        p = free_port()
        assert p not in seen
        seen.add(p)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind((LOOPBACK, p))
            t.bind((LOOPBACK, p))
        finally:
            u.close()
            t.close()
    p = free_port(span=4, tcp=False)
    assert not seen & set(range(p, p + 4))


# ----------------------------------------------------------------------------- wire helpers


def test_lenient_reader_unfolds_and_expands_compact_forms() -> None:
    raw = (b"INVITE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h1:5060;branch=z9hG4bK1 ,\r\n"
           b"  SIP/2.0/TCP [::1]:5070;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP h3;received=1.2.3.4\r\n"
           b"i: abc@h\r\nf: <sip:c@d>;tag=9\r\nt: <sip:a@b>\r\nCSeq:  7   INVITE\r\nl: 3\r\n\r\nxyz")
    m = parse_sip(raw)
    assert m.is_request and m.method == "INVITE" and m.request_uri == "sip:a@b"
    assert m.call_id == "abc@h" and m.cseq == (7, "INVITE") and m.body == b"xyz"
    assert len(m.vias) == 3
    assert via_sent_by(m.vias[1])[:3] == ("TCP", "[::1]", 5070)
    assert via_sent_by(m.vias[2])[3] == {"received": "1.2.3.4"}
    resp = parse_sip(build_response(m, 486, "Busy Here"))
    assert resp.status == 486 and resp.vias == m.vias and "tag=e2eup" in (resp.get("to") or "")
    ack = parse_sip(build_ack("sip:a@b", resp))
    assert ack.method == "ACK" and ack.cseq == (7, "ACK") and branch_of(ack.vias[0]) == \
        "z9hG4bK1"


async def test_udp_peer_against_echo() -> None:
    async with await UdpPeer.bind() as echo, await UdpPeer.bind() as me:

        async def serve() -> None:
            while True:
                d = await echo.recv(5)
                await echo.send(d.data, d.addr)

        task = asyncio.create_task(serve())
        try:
            await me.send(b"garbage", echo.addr)
            req = build_request("OPTIONS", "sip:x@y", via_host=LOOPBACK, via_port=me.port)
            await me.send(req, echo.addr)
            # the matching datagram is found even though the garbage came back first
            msg, addr = await me.recv_sip(2, lambda m: m.method == "OPTIONS")
            assert addr == echo.addr and msg.call_id == parse_sip(req).call_id
            left = await me.quiet(0.1)
            assert [d.data for d in left] == [b"garbage"]
            with pytest.raises(TimeoutError):
                await me.recv(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_recording_upstream_answers_and_records() -> None:
    up = await RecordingUpstream.start()
    try:
        async with await UdpPeer.bind() as me:
            inv = build_request("INVITE", "sip:x@y", via_host=LOOPBACK, via_port=me.port)
            await me.send(inv, (LOOPBACK, up.port))
            resp, _ = await me.recv_sip(2)
            assert resp.status == 480 and resp.call_id == parse_sip(inv).call_id
            await me.send(build_ack("sip:x@y", resp), (LOOPBACK, up.port))
            ack = await up.wait_for(lambda m: m.method == "ACK", 2)
            assert ack.cseq is not None and ack.cseq[1] == "ACK"
            opt = build_request("OPTIONS", "sip:x@y", via_host=LOOPBACK, via_port=me.port)
            await me.send(opt, (LOOPBACK, up.port))
            resp, _ = await me.recv_sip(2)
            assert resp.status == 200
            assert [d.sip.method for d in up.records if d.sip] == ["INVITE", "ACK", "OPTIONS"]
            assert await me.quiet(0.1) == []  # the ACK was not answered
    finally:
        await up.close()


async def test_tcp_exchange_sees_responses_closes_and_silence() -> None:
    async def answer_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    async def close_at_once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(10)
        w.close()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100000)
        await r.read(100000)  # until the client closes
        w.close()

    for handler, expect_closed, expect_status in (
        (answer_then_close, True, 400), (close_at_once, True, None), (silent, False, None)
    ):
        server = await asyncio.start_server(handler, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            out = await tcp_exchange(LOOPBACK, port, b"OPTIONS x SIP/2.0\r\n\r\n", timeout=0.5)
        finally:
            server.close()
            await server.wait_closed()
        assert out.closed is expect_closed, handler.__name__
        statuses = [m.status for m in out.responses]
        assert statuses == ([expect_status] if expect_status else []), handler.__name__


# ----------------------------------------------------------------------------- ProxyProcess


FAKE_PROXY = """\
import signal, sys
mode = {mode!r}
def term(*_):
    if mode == "crash-on-term":
        print("Traceback (most recent call last):", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
if mode != "never-ready":
    print("INFO proxy: listening on udp:127.0.0.1:1", file=sys.stderr, flush=True)
    print("INFO proxy: sip-policy-proxy ready", file=sys.stderr, flush=True)
while True:
    signal.pause()  # until SIGTERM, which the harness sends
"""


@pytest.mark.parametrize(
    ("mode", "problem"),
    [("clean", None), ("crash-on-term", "Traceback"), ("never-ready", "no line matching")],
)
def test_proxy_process_detects_crashes(tmp_path: Path, mode: str, problem: str | None) -> None:
    script = tmp_path / "fake_proxy.py"
    script.write_text(textwrap.dedent(FAKE_PROXY.format(mode=mode)))
    cmd = [sys.executable, str(script)]
    if mode == "never-ready":
        with pytest.raises(AssertionError, match=problem or ""):
            ProxyProcess.launch(tmp_path / "p", command=cmd, ready_timeout=1.0)
        return
    proxy = ProxyProcess.launch(tmp_path / "p", command=cmd, upstreams=["sip:127.0.0.1:9"])
    assert proxy.alive() and any("listening on" in line for line in proxy.lines())
    assert "upstreams:" in proxy.config_path.read_text()
    assert proxy.stop() == (0 if problem is None else 1)
    found = "; ".join(proxy.problems())
    assert (problem in found) if problem else found == ""


# ----------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_call_scenarios_sipp_to_sipp(sipp: Sipp, transport: str) -> None:
    uas = await sipp.uas("uas_answer.xml", transport=transport, timeout=30)
    uac = await sipp.uac("uac_call.xml", (LOOPBACK, uas.port), transport=transport, calls=20,
                         rate=100, keys={"domain": "example.net"}, timeout=30)
    res = await uac.wait()
    pbx = await uas.stop()
    assert res.returncode == 0 and res.successful == 20 and res.failed == 0, res.describe()
    # over TCP the caller closes its connection when its last call ends, which fails the
    # PBX's calls still in timewait (sipp-to-sipp only: with the proxy the PBX's connection
    # belongs to the proxy)
    closed = int(pbx.counters.get("FailedTcpClosed(C)", "0")) if transport == "tcp" else 0
    assert pbx.successful is not None and pbx.successful + closed == 20, pbx.describe()
    assert pbx.failed == closed, pbx.describe()
    byes = [m.sip for m in pbx.messages() if m.direction == "received" and m.sip
            and m.sip.method == "BYE"]
    assert len(byes) == 20
    invites = [m.sip for m in res.messages() if m.direction == "sent" and m.sip
               and m.sip.method == "INVITE"]
    assert invites and invites[0].request_uri == "sip:service@example.net"


async def test_webrtc_call_scenarios_sipp_to_sipp(sipp: Sipp) -> None:
    """The browser phone test's scenarios (test_browser_phone_e2e.py) pair up on their own:
    the offer and the answer are DTLS-SRTP with ICE credentials, the call ends with a BYE."""
    uas = await sipp.uas("webrtc_uas_answer.xml", calls=2, timeout=30)
    uac = await sipp.uac("webrtc_uac_call.xml", (LOOPBACK, uas.port), calls=2,
                         keys={"domain": "example.com"}, timeout=30)
    res = await uac.wait()
    pbx = await uas.wait(20)
    assert res.successful == 2 and pbx.successful == 2, res.describe() + pbx.describe()
    for result, direction, first in ((res, "sent", "INVITE"), (pbx, "sent", "SIP/2.0 200")):
        sdp = [m.sip.body.decode() for m in result.messages() if m.direction == direction
               and m.sip and m.sip.start_line.startswith(first) and m.sip.body]
        assert sdp and all("UDP/TLS/RTP/SAVPF 111" in b and "a=fingerprint:sha-256 " in b
                           and "a=ice-pwd:" in b for b in sdp)


async def test_cancel_scenarios_sipp_to_sipp(sipp: Sipp) -> None:
    uas = await sipp.uas("uas_cancel_after_180.xml", timeout=30)
    uac = await sipp.uac("uac_cancel_after_180.xml", (LOOPBACK, uas.port), calls=5, rate=50,
                         keys={"domain": "example.net"}, timeout=30)
    res = await uac.wait()
    pbx = await uas.stop()
    assert res.returncode == 0 and res.successful == 5, res.describe()
    assert pbx.successful == 5 and pbx.failed == 0, pbx.describe()
    sent = [m.sip for m in res.messages() if m.direction == "sent" and m.sip]
    by_call: dict[str | None, dict[str, str | None]] = {}
    for m in sent:
        assert m.method is not None
        by_call.setdefault(m.call_id, {})[m.method] = branch_of(m.vias[0])
    assert len(by_call) == 5
    for branches in by_call.values():
        # RFC 3261 9.1 / 17.1.1.3: CANCEL and the non-2xx ACK reuse the INVITE's branch
        assert branches["INVITE"] == branches["CANCEL"] == branches["ACK"]


@pytest.mark.parametrize("merged", [False, True])
async def test_cancel_pbx_returns_the_whole_via_list(sipp: Sipp, merged: bool) -> None:
    """What the proxy does to uas_cancel_after_180: INVITE with its Via on top of the caller's,
    then a CANCEL with only its own Via; the 487 must carry both Vias (RFC 3261 8.2.6.2)."""
    uas = await sipp.uas("uas_cancel_after_180.xml", calls=1, timeout=20)
    async with await UdpPeer.bind() as px:
        top = f"SIP/2.0/UDP {LOOPBACK}:{px.port};branch=z9hG4bKproxy1"
        below = "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKcaller1;received=192.0.2.7"
        vias = [f"Via: {top}, {below}"] if merged else [f"Via: {top}", f"Via: {below}"]
        head = [
            "INVITE sip:bob@example.net SIP/2.0", *vias,
            "Record-Route: <sip:127.0.0.1:1;lr>", "Max-Forwards: 69",
            "From: <sip:a@example.net>;tag=f1", "To: <sip:bob@example.net>",
            "Call-ID: cancel-via-test", "CSeq: 42 INVITE", "Content-Length: 0",
        ]
        await px.send(("\r\n".join(head) + "\r\n\r\n").encode(), (LOOPBACK, uas.port))
        ringing, _ = await px.recv_sip(5, lambda m: m.status == 180)
        cancel = "\r\n".join([
            "CANCEL sip:bob@example.net SIP/2.0", f"Via: {top}", "Max-Forwards: 70",
            "From: <sip:a@example.net>;tag=f1", "To: <sip:bob@example.net>",
            "Call-ID: cancel-via-test", "CSeq: 42 CANCEL", "Content-Length: 0",
        ]) + "\r\n\r\n"
        await px.send(cancel.encode(), (LOOPBACK, uas.port))
        ok, _ = await px.recv_sip(5, lambda m: m.status == 200)
        assert ok.cseq == (42, "CANCEL")
        final, _ = await px.recv_sip(5, lambda m: m.status == 487)
        assert final.cseq == (42, "INVITE")
        assert [v.replace(" ", "") for v in final.vias] == [top.replace(" ", ""),
                                                             below.replace(" ", "")]
        await px.send(build_ack("sip:bob@example.net", final), (LOOPBACK, uas.port))
        res = await uas.wait(10)
    assert res.returncode == 0 and res.successful == 1, res.describe()
    assert ringing.vias == final.vias


@pytest.mark.parametrize(("scenario", "status"),
                         [("uac_expect_404.xml", 404), ("uac_max_forwards_0.xml", 483)])
async def test_reject_scenarios_against_stub(sipp: Sipp, scenario: str, status: int) -> None:
    """A Python UAS refusing every INVITE with ``status``; the scenario must ACK it with the
    INVITE's branch (RFC 3261 17.1.1.3)."""
    async with await UdpPeer.bind(free_port(tcp=False)) as stub:
        uac = await sipp.uac(scenario, (LOOPBACK, stub.port), calls=3, rate=50,
                             service="bob", keys={"domain": "example.com"}, timeout=20)
        invites: list[SipMessage] = []
        for _ in range(3):
            inv, addr = await stub.recv_sip(10, lambda m: m.method == "INVITE")
            invites.append(inv)
            if status == 483:
                assert inv.get("max-forwards") == "0"
            await stub.send(build_response(inv, 100, "Trying", to_tag=None), addr)
            await stub.send(build_response(inv, status, "Refused"), addr)
            ack, _ = await stub.recv_sip(10, lambda m: m.method == "ACK")
            assert ack.call_id == inv.call_id and ack.cseq == (1, "ACK")
            assert branch_of(ack.vias[0]) == branch_of(inv.vias[0])
            assert ack.request_uri == inv.request_uri == "sip:bob@example.com"
        res = await uac.wait()
    assert res.returncode == 0 and res.successful == 3, res.describe()


async def test_register_scenario_against_stub_registrar(sipp: Sipp) -> None:
    async with await UdpPeer.bind(free_port(tcp=False)) as stub:
        phone_port = free_port()
        uac = await sipp.uac("phone_register.xml", (LOOPBACK, stub.port), port=phone_port,
                             service="alice", keys={"domain": "example.com"}, timeout=20)
        reg, addr = await stub.recv_sip(10, lambda m: m.method == "REGISTER")
        assert addr == (LOOPBACK, phone_port)
        assert reg.request_uri == "sip:example.com"
        assert "sip:alice@example.com" in (reg.get("to") or "")
        assert f"sip:alice@{LOOPBACK}:{phone_port}" in (reg.get("contact") or "")
        await stub.send(build_response(reg, 200, "OK", extra_headers=[
            f"Contact: {reg.get('contact')};expires=3600"]), addr)
        res = await uac.wait()
    assert res.returncode == 0 and res.successful == 1, res.describe()
