"""Tracing end to end, with real peers and real decoders: the HEPv3 packets of a sipp call
decoded by Kamailio's sipcapture (every chunk) and by sngrep then tshark (the SIP inside, with
its addresses), each message matched byte for byte against what sipp logged on the wire; the
recent calls over HTTP and ``sip-policy-proxy trace``; HEP to a dead collector never slowing
the calls. (The ladder page in a real browser: test_ladder_browser_e2e.py.)"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e import hep_decoders
from tests.e2e.harness import (
    LOOPBACK,
    REPO,
    ProxyProcess,
    Sipp,
    SippProcess,
    free_port,
    parse_trace,
)
from tests.e2e.wire import UdpPeer, parse_sip

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdef"
CAPTURE_ID = 4242
DOMAIN = "example.net"


def http_get(proxy: ProxyProcess, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    url = f"http://{proxy.config['http']}{path}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token
                                 else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def aget(proxy: ProxyProcess, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, proxy, path, token)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sip_policy_proxy_" + name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wire_messages(sipp: SippProcess, peer: int, proxy_port: int) -> Counter[tuple[str, bytes]]:
    """What sipp logged on the wire (-trace_msg) as (leg, bytes): ``sport>dport`` of each
    message it sent to or received from the proxy."""
    out: Counter[tuple[str, bytes]] = Counter()
    for m in parse_trace(sipp.files["msg"].read_text("latin-1")):
        leg = f"{peer}>{proxy_port}" if m.direction == "sent" else f"{proxy_port}>{peer}"
        out[(leg, m.text.encode("latin-1").rstrip(b"\r\n"))] += 1
    return out


async def collect(peer: UdpPeer, enough: Callable[[list[bytes]], bool], timeout: float = 10.0
                  ) -> list[tuple[float, bytes]]:
    """HEP datagrams until ``enough`` holds (bounded)."""
    got: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not enough([d for _, d in got]):
        left = deadline - loop.time()
        assert left > 0, f"{len(got)} HEP packets after {timeout} s"
        d = await peer.recv(left)
        got.append((time.time(), d.data))
    return got


async def one_call(proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, hep_port: int,
                   transport: str = "udp") -> tuple[ProxyProcess, SippProcess, SippProcess]:
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], extra={
        "http": f"{LOOPBACK}:{free_port(udp=False)}", "http_token": TOKEN,
        "hep": {"to": f"udp:{LOOPBACK}:{hep_port}", "id": CAPTURE_ID}})
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, calls=1, name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, transport=transport, calls=1,
                            keys={"domain": DOMAIN}, name="caller")
    res = await caller.wait()
    assert res.successful == 1, res.describe()
    assert (await pbx.wait(15)).successful == 1
    return proxy, caller, pbx


async def test_hep_of_a_call_decodes_in_kamailio_and_sngrep_and_tshark(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path,
) -> None:
    async with await UdpPeer.bind() as collector:
        t0 = time.time()
        proxy, caller, pbx = await one_call(proxy_factory, sipp, collector.port)
        on_wire = wire_messages(caller, caller.port, proxy.port) + \
            wire_messages(pbx, pbx.port, proxy.port)
        expected = sum(on_wire.values())
        got = await collect(collector, lambda ds: len(ds) >= expected)
        t1 = time.time()
    packets = [d for _, d in got]
    artefact = tmp_path / "hep.pcap"
    hep_decoders.write_hep_pcap(artefact, got, collector.port)
    print(f"HEP packets of the call (a pcap for a HEP-aware Wireshark): {artefact}")

    decoded = await hep_decoders.kamailio_decode(tmp_path / "kamailio", packets, free_port())
    seen: Counter[tuple[str, bytes]] = Counter()
    call_id = parse_sip(next(iter(on_wire))[1] + b"\r\n\r\n").call_id
    for d in decoded:
        assert (d.version, d.family, d.proto, d.type) == (3, 2, 17, 1), d
        assert d.capture_id == CAPTURE_ID
        assert d.src == d.dst == LOOPBACK
        assert t0 - 1 <= d.sec + d.usec / 1e6 <= t1 + 1
        assert d.correlation == call_id == parse_sip(d.payload).call_id
        seen[(f"{d.sport}>{d.dport}", d.payload.rstrip(b"\r\n"))] += 1
    # every message sipp saw on the wire, once, byte for byte, on its leg; nothing else
    assert seen == on_wire
    # microseconds, not milliseconds (uvloop's clock ticks in milliseconds): the intervals
    # between the packets are not whole milliseconds
    stamps = [d.sec * 1_000_000 + d.usec for d in decoded]
    assert any((s - stamps[0]) % 1000 not in (0, 1, 999) for s in stamps), stamps

    pcap = await hep_decoders.sngrep_decapsulate(tmp_path, packets, free_port())
    frames = hep_decoders.tshark_sip(pcap)
    assert len(frames) == expected, frames
    by_tshark = Counter((f"{f['udp.srcport']}>{f['udp.dstport']}",
                         f["sip.Request-Line"] or f["sip.Status-Line"]) for f in frames)
    by_sipp = Counter((leg, raw.split(b"\r\n", 1)[0].decode()) for leg, raw in on_wire.elements())
    assert by_tshark == by_sipp
    assert {f["sip.Call-ID"] for f in frames} == {call_id}
    assert {(f["ip.src"], f["ip.dst"]) for f in frames} == {(LOOPBACK, LOOPBACK)}
    _, text = await aget(proxy, "/metrics", token=None)
    assert metric(text.decode(), "hep_sent_total") == expected


async def test_hep_of_a_tcp_caller_says_tcp_and_the_proxy_listening_port(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path,
) -> None:
    async with await UdpPeer.bind() as collector:
        proxy, caller, pbx = await one_call(proxy_factory, sipp, collector.port, "tcp")
        expected = len(parse_trace(caller.files["msg"].read_text("latin-1"))) + \
            len(parse_trace(pbx.files["msg"].read_text("latin-1")))
        got = await collect(collector, lambda ds: len(ds) >= expected)
    decoded = await hep_decoders.kamailio_decode(tmp_path / "kamailio", [d for _, d in got],
                                                 free_port())
    legs = Counter((d.proto, d.sport if d.dport == proxy.port else d.dport) for d in decoded
                   if proxy.port in (d.sport, d.dport))
    # the caller's leg over TCP (6), the PBX's over UDP (17); the proxy's port both ways
    assert set(legs) == {(6, caller.port), (17, pbx.port)}, legs


async def test_recent_calls_over_http_and_the_trace_command(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp,
) -> None:
    async with await UdpPeer.bind() as collector:
        proxy, caller, pbx = await one_call(proxy_factory, sipp, collector.port)
    assert (await aget(proxy, "/calls", token=None))[0] == 401
    status, body = await aget(proxy, "/calls")
    assert status == 200
    [call] = json.loads(body)
    sent = parse_trace(caller.files["msg"].read_text("latin-1"))
    invite = parse_sip(sent[0].text.encode("latin-1"))
    assert call["call_id"] == invite.call_id
    assert call["from"] == invite.get("from") and call["to"] == invite.get("to")
    assert call["status"] == 200 and call["decisions"] == []
    assert call["tried"] == [f"sip:{LOOPBACK}:{pbx.port}"]
    status, body = await aget(proxy, "/calls/" + quote(call["call_id"], safe=""))
    assert status == 200
    detail = json.loads(body)
    on_wire = wire_messages(caller, caller.port, proxy.port) + \
        wire_messages(pbx, pbx.port, proxy.port)
    kept = Counter()
    for m in detail["messages"]:
        port = int(m["peer"].rsplit(":", 1)[1])
        leg = f"{port}>{proxy.port}" if m["direction"] == "in" else f"{proxy.port}>{port}"
        assert m["transport"] == "udp" and not m["truncated"]
        assert m["first_line"] == m["raw"].split("\r\n", 1)[0]
        kept[(leg, m["raw"].encode("latin-1").rstrip(b"\r\n"))] += 1
    assert kept == on_wire  # every message of the call, in order of time
    times = [m["offset"] for m in detail["messages"]]
    assert times == sorted(times) and times[0] == 0.0
    assert any(round(x * 1e6) % 1000 for x in times), times  # microseconds

    # the same ladder as text in a terminal
    cmd = [sys.executable, "-m", "proxy", "trace", call["call_id"], "--http",
           proxy.config["http"], "--token", TOKEN]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                   timeout=30, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"Call-ID: {call['call_id']}"
    arrows = [ln for ln in lines if ln.startswith("+")]
    assert len(arrows) == len(detail["messages"])
    for ln, m in zip(arrows, detail["messages"], strict=True):
        label = m["first_line"].removeprefix("SIP/2.0 ").removesuffix(" SIP/2.0")
        assert label[:12] in ln, (ln, m["first_line"])
    refused = await asyncio.to_thread(subprocess.run, [*cmd[:-1], "wrong"], capture_output=True,
                                      text=True, timeout=30, cwd=REPO, check=False)
    assert refused.returncode == 1 and "refused the token (401)" in refused.stderr


@pytest.mark.parametrize("collector", ["closed port", "never reads"])
async def test_hep_to_a_dead_collector_never_slows_the_calls(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, collector: str,
) -> None:
    """200 calls at 100/s with HEP to a port nobody listens on (every packet refused by an
    ICMP port unreachable) or to a socket that never reads: every call completes, none is
    retransmitted, and the refusals are counted."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((LOOPBACK, 0))
    hep_port = sink.getsockname()[1]
    if collector == "closed port":
        sink.close()
    try:
        pbx_port = free_port()
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], extra={
            "http": f"{LOOPBACK}:{free_port(udp=False)}",
            "hep": {"to": f"udp:{LOOPBACK}:{hep_port}", "id": 1}})
        pbx = await sipp.uas("uas_answer.xml", port=pbx_port, name="pbx")
        caller = await sipp.uac("uac_call.xml", proxy.addr, calls=200, rate=100, limit=200,
                                keys={"domain": DOMAIN}, trace_msg=False, name="caller")
        res = await caller.wait()
        assert res.successful == 200 and res.failed == 0, res.describe()
        assert res.retransmissions == 0, res.describe()
        await pbx.stop(grace=2.0)
        _, text = await aget(proxy, "/metrics", token=None)
        sent, dropped = metric(text.decode(), "hep_sent_total"), \
            metric(text.decode(), "hep_dropped_total")
        assert sent + dropped >= 200 * 13  # every message of every call went to HEP
        if collector == "closed port":
            assert dropped > 0
            assert any("HEP packets dropped: send_error" in ln for ln in proxy.lines())
    finally:
        sink.close()
