"""Tracing, unit by unit: the HEPv3 packets chunk by chunk against a reference written from
the HEP3 specification (rev. 12) table, the sender's bounded queue against a real socket that
stops reading and a closed port, the Call-ID byte search, the tap's ring of recent messages
(count and bytes, checked against what Python really allocates) and the calls index over it,
the decisions placed on the messages where they happened (a core driven by hand), the ladder
as text and as HTML, and the configuration keys (hep, trace_calls, http_token)."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_config
from proxy.core.types import Send, Source
from proxy.diagnostics import ConfigError
from proxy.ladder import build, text
from proxy.runtime import calls_json
from proxy.runtime.calls import MAX_MESSAGES, CallIndex
from proxy.runtime.hep import HepSender
from proxy.runtime.ladder_page import page
from proxy.runtime.tracing import attach
from proxy.sip.capture import MESSAGE_OVERHEAD, RAW_LIMIT, Capture, HepEncoder, call_id_of
from tests.unit.core_harness import CALLER, Harness, request, response_to

SIP = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.2.3:5062;branch=z9hG4bK1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
       b"Call-ID: abc123@10.1.2.3\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
LOCAL = {("udp", False): ("192.0.2.10", 5060), ("tcp", False): ("192.0.2.10", 5060),
         ("tls", True): ("2001:db8::1", 5061), ("udp", True): ("2001:db8::1", 5060)}


# ------------------------------------------------------------------ HEP


def reference(src: str, sport: int, dst: str, dport: int, t: float, proto: int, capture_id: int,
              payload: bytes, correlation: bytes | None) -> bytes:
    """A HEPv3 packet written chunk by chunk from the specification's table, independently
    of the proxy's encoder: (vendor 0, type, length with the 6-byte header, value), in the
    table's order (the proxy's order differs; a collector reads chunks in any order)."""
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET

    def chunk(kind: int, value: bytes) -> bytes:
        return struct.pack("!HHH", 0, kind, 6 + len(value)) + value

    sec = int(t)
    usec = min(999_999, int(round((t - sec) * 1e6)))
    body = b"".join([
        chunk(0x01, bytes([10 if v6 else 2])), chunk(0x02, bytes([proto])),
        chunk(0x05 if v6 else 0x03, socket.inet_pton(fam, src)),
        chunk(0x06 if v6 else 0x04, socket.inet_pton(fam, dst)),
        chunk(0x07, struct.pack("!H", sport)), chunk(0x08, struct.pack("!H", dport)),
        chunk(0x09, struct.pack("!I", sec)), chunk(0x0A, struct.pack("!I", usec)),
        chunk(0x0B, b"\x01"), chunk(0x0C, struct.pack("!I", capture_id)),
        *([chunk(0x11, correlation)] if correlation else []), chunk(0x0F, payload)])
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def chunks(packet: bytes) -> list[tuple[int, int, bytes]]:
    """(vendor, type, value) of every chunk, walked as a collector does: the header, then
    vendor (16) | type (16) | length (16, header included) | value until the total length."""
    assert packet[:4] == b"HEP3"
    total = struct.unpack("!H", packet[4:6])[0]
    assert total == len(packet)
    out, at = [], 6
    while at < total:
        vendor, kind, length = struct.unpack("!HHH", packet[at:at + 6])
        assert length >= 6 and at + length <= total, (kind, length)
        out.append((vendor, kind, packet[at + 6:at + length]))
        at += length
    assert at == total
    return out


def captured(data: bytes = SIP, t: float = 1796585733.123456, inbound: bool = True,
             transport: str = "udp", host: str = "10.1.2.3", port: int = 5062,
             conn_id: int | None = None) -> Any:
    return (t, inbound, transport, host, port, data, conn_id, len(data))


def test_a_hep3_packet_carries_every_chunk_of_the_specification() -> None:
    packet = HepEncoder(2001, LOCAL).packet(captured(), b"abc123@10.1.2.3")
    found = chunks(packet)
    assert all(vendor == 0 for vendor, _, _ in found)  # the generic vendor
    by_type = {kind: value for _, kind, value in found}
    # the time first (packed with the header), the payload last (any order is valid HEPv3)
    assert [kind for _, kind, _ in found] == [9, 10, 1, 2, 3, 4, 7, 8, 11, 12, 0x11, 0x0F]
    assert by_type[0x01] == bytes([socket.AF_INET])  # 2
    assert by_type[0x02] == bytes([17])  # UDP
    assert by_type[0x03] == socket.inet_aton("10.1.2.3")  # received: the peer is the source
    assert by_type[0x04] == socket.inet_aton("192.0.2.10")
    assert struct.unpack("!H", by_type[0x07]) == (5062,)
    assert struct.unpack("!H", by_type[0x08]) == (5060,)
    assert struct.unpack("!I", by_type[0x09]) == (1796585733,)
    assert struct.unpack("!I", by_type[0x0A]) == (123456,)
    assert by_type[0x0B] == b"\x01"  # SIP
    assert struct.unpack("!I", by_type[0x0C]) == (2001,)
    assert by_type[0x11] == b"abc123@10.1.2.3"
    assert by_type[0x0F] == SIP  # byte for byte
    lengths = {kind: len(value) + 6 for _, kind, value in found}
    assert [lengths[k] for k in (1, 2, 3, 4, 7, 8, 9, 10, 11, 12)] == [7, 7, 10, 10, 8, 8, 10,
                                                                       10, 7, 10]


@pytest.mark.parametrize(("c", "legs"), [
    (captured(), ("10.1.2.3", 5062, "192.0.2.10", 5060, 17)),
    (captured(inbound=False, t=1796585733.9999996), ("192.0.2.10", 5060, "10.1.2.3", 5062, 17)),
    (captured(transport="tcp", t=0.0000004), ("10.1.2.3", 5062, "192.0.2.10", 5060, 6)),
    (captured(transport="tls", host="2001:db8::7", port=5061, inbound=False, t=5.25),
     ("2001:db8::1", 5061, "2001:db8::7", 5061, 6)),
    (captured(data=b"OPTIONS sip:x SIP/2.0\r\n\r\n"), ("10.1.2.3", 5062, "192.0.2.10", 5060, 17)),
])
@pytest.mark.parametrize("correlation", [b"abc123@10.1.2.3", None])
def test_the_encoder_writes_the_reference_packets(c: Any, legs: tuple[Any, ...],
                                                  correlation: bytes | None) -> None:
    """Both directions, TCP and TLS (protocol 6), IPv6, an IPv4-mapped peer, no Call-ID:
    byte for byte the reference, also the second time (from the encoder's leg cache)."""
    enc = HepEncoder(4242, LOCAL)
    expected = reference(*legs[:4], c[0], legs[4], 4242, c[5], correlation)
    for packet in (enc.packet(c, correlation), enc.packet(c, correlation)):
        assert len(packet) == len(expected)
        assert sorted(chunks(packet)) == sorted(chunks(expected))  # the same chunks
        assert chunks(packet)[-1] == (0, 0x0F, c[5])  # the payload last


def test_an_ipv4_mapped_peer_beside_an_ipv4_address_is_written_as_ipv4() -> None:
    enc = HepEncoder(1, {("udp", True): ("192.0.2.10", 5060)})
    c = captured(host="::ffff:10.1.2.3")
    assert sorted(chunks(enc.packet(c, None))) == sorted(chunks(reference(
        "10.1.2.3", 5062, "192.0.2.10", 5060, c[0], 17, 1, SIP, None)))


def test_a_stream_message_uses_its_connection_local_end() -> None:
    enc = HepEncoder(1, LOCAL)
    enc.conn_local[7] = ("192.0.2.10", 41000)
    by_type = {k: v for _, k, v in chunks(enc.packet(captured(transport="tcp", conn_id=7,
                                                              inbound=False), None))}
    assert struct.unpack("!H", by_type[0x07]) == (41000,)


def test_a_message_too_big_or_from_a_name_is_refused() -> None:
    enc = HepEncoder(1, LOCAL)
    with pytest.raises(OverflowError):
        enc.packet(captured(data=b"x" * 65500), b"c")
    with pytest.raises(ValueError):
        enc.packet(captured(host="pbx.example.com"), None)


async def test_a_full_queue_drops_and_counts_and_never_blocks_the_loop() -> None:
    """A collector socket that never reads: a Unix datagram pair refuses (EAGAIN) once its
    queue is full. The sender waits for it without blocking the loop; past the tap's bound
    the tap drops and counts; once the peer reads again, what was queued goes out."""
    loop = asyncio.get_running_loop()
    ours, collector = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector.setblocking(False)
    sender = HepSender(loop, ours, HepEncoder(1, LOCAL))
    capture = Capture(0, 0, 50, sender.wake)
    attach(sender, capture)
    try:
        for _ in range(100):  # bursts of messages, the loop running between them
            for _ in range(20):
                capture.received(SIP, Source("udp", "10.1.2.3", 5062), 1.0)
            await asyncio.sleep(0.002)
        ticks = 0
        deadline = loop.time() + 2.0
        while loop.time() < deadline and ticks < 20:  # the loop is not blocked by HEP
            await asyncio.sleep(0.001)
            ticks += 1
        assert ticks == 20
        dropped = sender.dropped()["queue_full"]
        assert dropped == capture.hep_full > 0
        assert 0 < sender.sent < 2000 and len(sender.queue) == 50
        assert sender.sent + len(sender.queue) + dropped == 2000
        got = 0
        while sender.queue or got < sender.sent:  # the collector reads: the rest goes out
            try:
                collector.recv(65535)
                got += 1
            except BlockingIOError:
                await asyncio.sleep(0.001)
            assert loop.time() < deadline + 5
        assert got == sender.sent and not sender.queue
    finally:
        sender.close()
        collector.close()


async def test_a_closed_collector_port_pauses_the_export_and_counts() -> None:
    """HEP to a UDP port nobody listens on: the ICMP port unreachable comes back as
    ECONNREFUSED on the connected socket; for a second nothing is encoded or sent, what is
    queued is dropped and counted; then the collector is tried again."""
    loop = asyncio.get_running_loop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sender = HepSender.connect(loop, "127.0.0.1", port, HepEncoder(1, LOCAL))
    capture = Capture(0, 0, 100, sender.wake)
    attach(sender, capture)

    def accounted() -> int:
        d = sender.dropped()
        return sender.sent + d["send_error"] + d["refused"]

    try:
        for _ in range(40):
            capture.sent(Send("udp", "10.1.2.3", 5062, SIP), 1.0)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.02)  # the last drain
        dropped = sender.dropped()
        assert dropped["send_error"] == 1 and dropped["refused"] > 0
        assert accounted() == 40
        assert sender.sent <= 3 and capture.hep_paused  # refused: paused at the tap
        assert capture.hep_refused > 0 and capture.hep is not None and not capture.hep
        deadline = loop.time() + 3
        while capture.hep_paused:  # the pause ends after PAUSE seconds: tried again
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        sent = sender.sent
        capture.sent(Send("udp", "10.1.2.3", 5062, SIP), 1.0)
        await asyncio.sleep(0.05)
        assert sender.sent == sent + 1 and accounted() == 41
    finally:
        sender.close()


# ------------------------------------------------------------------ Call-ID


@pytest.mark.parametrize(("data", "expected"), [
    (SIP, b"abc123@10.1.2.3"),
    (b"BYE sip:x SIP/2.0\r\ni: compact-1\r\nCSeq: 2 BYE\r\n\r\n", b"compact-1"),
    (b"BYE sip:x SIP/2.0\r\ncall-id :  spaced  \r\n\r\n", b"spaced"),
    (b"BYE sip:x SIP/2.0\r\nCALL-ID:upper\r\n\r\n", b"upper"),
    (b"NOTIFY sip:x SIP/2.0\r\nCall-ID: head\r\n\r\nSIP/2.0 200 OK\r\nCall-ID: frag\r\n",
     b"head"),
    (b"BYE sip:x SIP/2.0\r\nVia: x\r\n\r\ni: in-body", None),
    (b"garbage", None),
])
def test_the_call_id_byte_search(data: bytes, expected: bytes | None) -> None:
    assert call_id_of(data) == expected


# ------------------------------------------------------------------ the ring and the index


def invite(i: int, size: int = 500) -> bytes:
    head = f"INVITE sip:b@x SIP/2.0\r\nCall-ID: call-{i}\r\nCSeq: 1 INVITE\r\n\r\n".encode()
    return head + b"v" * max(0, size - len(head))


def accounted(capture: Capture) -> int:
    assert capture.ring is not None
    return sum(len(item[5]) + MESSAGE_OVERHEAD for item in capture.ring)


def feed_calls(capture: Capture, calls: int, per_call: int = 10, size: int = 500,
               first: int = 0) -> None:
    src = Source("udp", "10.0.0.1", 5060)
    for i in range(first, first + calls):
        data = invite(i, size)
        capture.received(data, src, float(i))
        for k in range(per_call - 1):
            reply = bytes(bytearray(data.replace(b"INVITE sip:b@x", b"SIP/2.0 100")))
            if k % 2:
                capture.received(reply, src, float(i))
            else:
                capture.sent(Send("udp", "10.0.0.2", 5070, reply), float(i))


def test_the_ring_holds_its_bound_in_messages_and_bytes() -> None:
    capture = Capture(1000, 10**9, 0, None)
    feed_calls(capture, 5000)
    assert capture.ring is not None and len(capture.ring) == 1000
    assert capture.appended == 50_000
    assert capture.bytes == accounted(capture)
    capture = Capture(10**6, 300_000, 0, None)
    feed_calls(capture, 5000)
    assert capture.bytes == accounted(capture) <= 300_000
    assert capture.ring is not None and capture.ring[-1][5].startswith(b"SIP/2.0 100")


def test_a_big_message_is_cut_in_the_ring_and_whole_in_the_hep_queue() -> None:
    capture = Capture(10, 10**6, 10, lambda: None)
    big = invite(1, 20_000)
    capture.received(big, Source("udp", "10.0.0.1", 5060), 1.0)
    assert capture.ring is not None and capture.hep is not None
    kept, queued = capture.ring[0], capture.hep[0]
    assert len(kept[5]) == RAW_LIMIT and kept[7] == 20_000
    assert queued[5] is big


def test_the_index_lists_the_newest_calls_and_only_calls() -> None:
    capture = Capture(10_000, 10**8, 0, None)
    index = CallIndex(capture, max_calls=50)
    src = Source("udp", "10.0.0.1", 5060)
    capture.received(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: o1\r\n\r\n", src, 0.0)
    capture.received(b"REGISTER sip:x SIP/2.0\r\nCall-ID: r1\r\n\r\n", src, 0.0)
    capture.sent(Send("udp", "10.0.0.2", 1, invite(-1)), 0.0)  # one the proxy sent
    feed_calls(capture, 80)
    listed = index.newest_first()
    assert [t.call_id for t in listed[:2]] == [b"call-79", b"call-78"]
    assert len(listed) == 50 and all(len(t.messages) == 10 for t in listed)
    assert index.get("o1") is None and index.get("r1") is None and index.get("call--1") is None
    feed_calls(capture, 3, first=100)  # indexed again: only the new messages are searched
    assert [t.call_id for t in index.newest_first()[:1]] == [b"call-102"]
    trace = index.get("call-102")
    assert trace is not None and len(trace.messages) == 10


def test_one_call_shows_at_most_max_messages() -> None:
    capture = Capture(10_000, 10**8, 0, None)
    index = CallIndex(capture, max_calls=10)
    feed_calls(capture, 1, per_call=MAX_MESSAGES + 50)
    trace = index.get("call-0")
    assert trace is not None
    assert len(trace.messages) == MAX_MESSAGES and trace.dropped == 50


def test_the_memory_really_held_stays_within_the_budget() -> None:
    """What tracemalloc sees allocated by a full ring is within the bytes it accounts for
    (the overhead per message is not an underestimate)."""
    capture = Capture(3000, 10**9, 0, None)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed_calls(capture, 3000, per_call=12, size=600)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert capture.ring is not None and len(capture.ring) == 3000
    assert held <= capture.bytes * 1.2, (held, capture.bytes)


# ------------------------------------------------------------------ decisions where they happened


def traced_call() -> tuple[Harness, CallIndex]:
    """A core driven by hand with the tap and the index fed as the runtime feeds them: the
    caller's INVITE, 503 from the first upstream (unavailable: failover), 603 from the second
    (global-failure: stop), the 603 to the caller and its ACK."""
    h = Harness.make()
    capture = Capture(1000, 10**7, 0, None)
    index = CallIndex(capture, max_calls=10)
    t = [100.0]

    def feed(data: bytes, src: Source) -> list[Any]:
        t[0] += 0.01
        capture.received(data, src, t[0])
        fx = h.core.on_message(data, src, h.now)
        index.summaries(fx.logs)
        for s in fx.sends:
            t[0] += 0.001
            capture.sent(s, t[0])
        h.take(fx)
        return fx.sends

    feed(request(), CALLER)
    inv1 = [s for s in h.sent if s.port == 5080][-1]
    feed(response_to(inv1.data, 503), Source("udp", "127.0.0.1", 5080))
    inv2 = [s for s in h.sent if s.port == 5081][-1]
    feed(response_to(inv2.data, 603), Source("udp", "127.0.0.1", 5081))
    final = [s for s in h.sent if s.port == CALLER.port and s.data.startswith(b"SIP/2.0 603")]
    assert final
    feed(request("ACK", to_tag="callee1"), CALLER)
    return h, index


def traced_detail() -> dict[str, Any]:
    _, index = traced_call()
    trace = index.get("call-1@caller")
    assert trace is not None
    return calls_json.detail(trace)


def test_each_decision_is_placed_on_the_response_that_caused_it() -> None:
    call = traced_detail()
    assert call["status"] == 603 and call["from"] == "<sip:alice@example.com>;tag=from1"
    assert call["tried"] == ["sip:127.0.0.1:5080", "sip:127.0.0.1:5081"]
    assert call["decisions"] == [{"rule": "unavailable", "action": "failover", "status": 503},
                                 {"rule": "global-failure", "action": "stop", "status": 603}]
    firsts = [m["first_line"] for m in call["messages"]]
    marks = {m["text"]: m["message"] for m in call["marks"]}
    at503 = marks["unavailable: failover (503)"]
    at603 = marks["global-failure: stop (603)"]
    assert firsts[at503].startswith("SIP/2.0 503") and call["messages"][at503]["direction"] == "in"
    assert call["messages"][at503]["peer"] == "127.0.0.1:5080"
    assert firsts[at603].startswith("SIP/2.0 603") and call["messages"][at603]["peer"] == \
        "127.0.0.1:5081"
    # the INVITE to the second upstream follows the failover decision
    assert any(f.startswith("INVITE") and m["peer"] == "127.0.0.1:5081"
               for f, m in zip(firsts[at503:], call["messages"][at503:], strict=True))


def test_the_timings_of_a_call_are_read_from_its_messages() -> None:
    """INVITE at 100.01 (the caller's), the proxy's 100 and INVITE 1 ms apart each, the 503
    10 ms later, the second INVITE, the 603 and the 603 to the caller (traced_call's clock)."""
    call = traced_detail()
    t = call["timings"]
    offsets = [m["offset"] for m in call["messages"]]
    firsts = [m["first_line"] for m in call["messages"]]
    assert t["trying"] == offsets[firsts.index("SIP/2.0 100 Trying")]
    assert t["forwarded"] == offsets[next(i for i, f in enumerate(firsts)
                                          if f.startswith("INVITE") and i > 0)]
    to_caller = [i for i, m in enumerate(call["messages"])
                 if m["first_line"].startswith("SIP/2.0 603") and m["direction"] == "out"]
    assert t["final"] == offsets[to_caller[0]] > t["forwarded"] > 0
    assert t["ringing"] is None and t["answered"] is None and t["ended"] is None
    assert t["final_core"] is not None and t["final_core"] >= 0
    marks = {m["text"]: m for m in call["marks"]}
    assert marks["global-failure: stop (603)"]["offset"] == offsets[
        marks["global-failure: stop (603)"]["message"]]
    assert f"final +{t['final']:.6f} s" in text(call)
    assert f"final +{t['final']:.6f} s" in page(call)


def test_a_learned_route_is_marked_on_its_3xx() -> None:
    capture = Capture(100, 10**6, 0, None)
    index = CallIndex(capture, max_calls=10)
    src, pbx = Source("udp", "10.0.0.1", 5062), Source("udp", "10.0.0.9", 5060)
    capture.received(invite(5), src, 1.0)
    capture.sent(Send("udp", "10.0.0.9", 5060, invite(5)), 1.1)
    capture.received(b"SIP/2.0 301 Moved\r\nCall-ID: call-5\r\n\r\n", pbx, 1.2)
    index.learned("call-5", "sip:a@x", "sip:b@y", 301, 1.7e9)
    capture.sent(Send("udp", "10.0.0.9", 5060, b"ACK sip:a@x SIP/2.0\r\nCall-ID: call-5\r\n\r\n"),
                 1.3)
    trace = index.get("call-5")
    assert trace is not None
    [mark] = calls_json.detail(trace)["marks"]
    assert mark["message"] == 2 and mark["kind"] == "learned"
    assert mark["text"] == "learned (301): sip:a@x -> sip:b@y"


def test_the_text_ladder_draws_every_message_and_decision() -> None:
    call = traced_detail()
    out = text(call)
    ladder = build(call)
    assert [c.title for c in ladder.columns] == ["caller", "proxy", "sip:127.0.0.1:5080",
                                                 "sip:127.0.0.1:5081"]
    arrow_lines = [line for line in out.splitlines() if re.match(r"\+\d+\.\d{6} ", line)]
    assert len(arrow_lines) == len(call["messages"])
    assert "* unavailable: failover (503)" in out and "* global-failure: stop (603)" in out
    lines = out.splitlines()
    i503 = next(i for i, line in enumerate(lines) if "503 Whatever" in line)
    assert lines[i503 + 1].rstrip().endswith("* unavailable: failover (503)")
    # a response from the second upstream points left, into the proxy's column
    l603 = next(line for line in lines if "603 Whatever" in line and "<" in line)
    assert l603.index("<") < l603.index("603")


class _Svg(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_html_ladder_has_one_arrow_per_message_and_no_script() -> None:
    call = traced_detail()
    html = page(call)
    parsed = _Svg()
    parsed.feed(html)
    arrows = [a for t, a in parsed.tags if t == "line" and "arrow" in (a.get("class") or "")]
    assert len(arrows) == len(call["messages"])
    marks = [a for t, a in parsed.tags if t == "g" and "decision" in (a.get("class") or "")]
    assert len(marks) == 2
    assert "unavailable: failover (503)" in html and "global-failure: stop (603)" in html
    assert not any(t in ("script", "link", "img", "iframe", "object") for t, _ in parsed.tags)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_what_came_from_the_network_is_escaped() -> None:
    capture = Capture(10, 10**6, 0, None)
    index = CallIndex(capture, max_calls=2)
    evil = (b"INVITE sip:<script>alert(1)</script>@x SIP/2.0\r\nCall-ID: <b>x\x1b[2J\r\n"
            b"From: \"</td><script>\" <sip:a@b>\r\nTo: <sip:c@d>\r\n\r\n<svg onload=alert(1)>")
    capture.received(evil, Source("udp", "10.0.0.1", 5060), 1.0)
    trace = index.get("<b>x\x1b[2J")
    assert trace is not None
    call = calls_json.detail(trace)
    html = page(call)
    assert "<script>" not in html and "<b>x" not in html and "<svg onload" not in html
    assert "&lt;script&gt;" in html and "\x1b" not in html
    assert "\x1b" not in text(call)  # the terminal gets no escape sequence


# ------------------------------------------------------------------ configuration


def write(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "proxy.yaml"
    p.write_text("listen: [udp:127.0.0.1:5060]\nupstreams: [sip:127.0.0.1:5080]\n" + extra)
    return p


def test_tracing_keys_and_defaults(tmp_path: Path) -> None:
    config, warnings = load_config(write(tmp_path, ""))
    assert config.hep is None and config.trace_calls == 1000 and config.http_token is None
    config, warnings = load_config(write(tmp_path, "hep: {to: 'udp:[::1]:9060', id: 42}\n"
                                         "trace_calls: 0\nhttp: 127.0.0.1:9090\n"
                                         "http_token: 0123456789abcdef0123\n"))
    assert config.hep is not None
    assert (config.hep.host, config.hep.port, config.hep.capture_id) == ("::1", 9060, 42)
    assert config.trace_calls == 0 and config.http_token == "0123456789abcdef0123"
    assert warnings == []
    config, _ = load_config(write(tmp_path, "hep: {to: udp:10.0.0.5:9060}\n"))
    assert config.hep is not None and config.hep.capture_id == 1


@pytest.mark.parametrize(("extra", "message"), [
    ("hep: {to: tcp:10.0.0.5:9060}", "3:11: hep: to 'tcp:10.0.0.5:9060': expected udp:HOST:PORT"),
    ("hep: {to: udp:10.0.0.5}", "3:11: hep: to 'udp:10.0.0.5': the port is missing"),
    ("hep: {id: 3}", "3:6: hep: missing required key 'to'"),
    ("hep: {to: udp:10.0.0.5:9060, id: -1}", "3:34: hep: id must be between 0 and 4294967295"),
    ("hep: {to: udp:10.0.0.5:9060, capture: 1}", "3:30: hep: unknown key 'capture'"),
    ("trace_calls: 1000000", "3:14: trace_calls must be between 0 and 100000"),
    ("http_token: 'a b c d e f g h i j'", "3:13: http_token must be printable ASCII"),
])
def test_tracing_key_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, extra + "\n"))
    assert any(message in str(d) for d in info.value.diagnostics), info.value.diagnostics


@pytest.mark.parametrize(("extra", "warned"), [
    ("http: 0.0.0.0:9090\n", True),
    ("http: 192.0.2.1:9090\n", True),
    ("http: '[::]:9090'\n", True),
    ("http: 127.0.0.1:9090\n", False),
    ("http: '[::1]:9090'\n", False),
    ("http: localhost:9090\n", False),
    ("http: 0.0.0.0:9090\nhttp_token: 0123456789abcdef0123\n", False),
])
def test_check_warns_about_an_open_http_side_beyond_the_loopback(
    tmp_path: Path, extra: str, warned: bool,
) -> None:
    _, warnings = load_config(write(tmp_path, extra))
    found = [str(w) for w in warnings if "beyond the loopback without http_token" in str(w)]
    assert bool(found) == warned, warnings
    if warned:
        assert ":3:7: warning: http " in found[0]


def test_a_short_token_and_a_token_without_http_are_warned(tmp_path: Path) -> None:
    _, warnings = load_config(write(tmp_path, "http: 127.0.0.1:9090\nhttp_token: short\n"))
    assert any("http_token is short (5 characters)" in str(w) for w in warnings)
    _, warnings = load_config(write(tmp_path, "http_token: 0123456789abcdef0123\n"))
    assert any("http_token without http" in str(w) for w in warnings)

