"""Tracing, unit by unit: the HEPv3 encoding chunk by chunk (HEP3 specification rev. 12), the
sender's bounded queue against a real socket that stops reading, the Call-ID byte search, the
recent-calls ring's bounds (count and bytes, checked against what Python really allocates),
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
from proxy.core.types import Source
from proxy.diagnostics import ConfigError
from proxy.ladder import build, text
from proxy.runtime import calls_json, hep
from proxy.runtime.callid import call_id_of
from proxy.runtime.calls import MAX_MESSAGES, RAW_LIMIT, CallRing
from proxy.runtime.ladder_page import page
from tests.unit.core_harness import CALLER, Harness, request, response_to

SIP = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.2.3:5062;branch=z9hG4bK1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
       b"Call-ID: abc123@10.1.2.3\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


# ------------------------------------------------------------------ HEP


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


def test_a_hep3_packet_carries_every_chunk_of_the_specification() -> None:
    t = 1796585733.123456
    packet = hep.encode("10.1.2.3", 5062, "10.9.8.7", 5060, t, hep.PROTO_UDP, 2001, SIP,
                        b"abc123@10.1.2.3")
    found = chunks(packet)
    assert all(vendor == 0 for vendor, _, _ in found)  # the generic vendor
    by_type = {kind: value for _, kind, value in found}
    assert [kind for _, kind, _ in found] == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 0x11, 0x0F]
    assert by_type[0x01] == bytes([socket.AF_INET])  # 2
    assert by_type[0x02] == bytes([17])  # UDP
    assert by_type[0x03] == socket.inet_aton("10.1.2.3")
    assert by_type[0x04] == socket.inet_aton("10.9.8.7")
    assert struct.unpack("!H", by_type[0x07]) == (5062,)
    assert struct.unpack("!H", by_type[0x08]) == (5060,)
    assert struct.unpack("!I", by_type[0x09]) == (1796585733,)
    assert struct.unpack("!I", by_type[0x0A]) == (123456,)
    assert by_type[0x0B] == b"\x01"  # SIP
    assert struct.unpack("!I", by_type[0x0C]) == (2001,)
    assert by_type[0x11] == b"abc123@10.1.2.3"
    assert by_type[0x0F] == SIP  # byte for byte
    # the fixed chunks have the lengths of their values (uint8: 7, uint16: 8, uint32/IPv4: 10)
    lengths = {kind: len(value) + 6 for _, kind, value in found}
    assert [lengths[k] for k in (1, 2, 3, 4, 7, 8, 9, 10, 11, 12)] == [7, 7, 10, 10, 8, 8, 10,
                                                                       10, 7, 10]


def test_ipv6_and_tcp_and_no_correlation() -> None:
    packet = hep.encode("2001:db8::1", 5060, "::1", 41000, 1.5, hep.PROTO_TCP, 7, SIP, None)
    by_type = {kind: value for _, kind, value in chunks(packet)}
    assert by_type[0x01] == bytes([socket.AF_INET6])  # 10
    assert by_type[0x02] == bytes([6])
    assert by_type[0x05] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert by_type[0x06] == socket.inet_pton(socket.AF_INET6, "::1")
    assert 0x03 not in by_type and 0x11 not in by_type
    assert struct.unpack("!I", by_type[0x0A]) == (500000,)


def test_what_the_proxy_received_and_sent_point_the_right_way() -> None:
    local = ("192.0.2.10", 5060)
    inbound = hep.packet_of((SIP, 10.0, True, "udp", "10.1.2.3", 5062, local), 1)
    outbound = hep.packet_of((SIP, 10.0, False, "tls", "10.9.8.7", 5061, local), 1)
    a = {k: v for _, k, v in chunks(inbound)}
    b = {k: v for _, k, v in chunks(outbound)}
    assert (a[3], a[4]) == (socket.inet_aton("10.1.2.3"), socket.inet_aton("192.0.2.10"))
    assert (a[7], a[8]) == (struct.pack("!H", 5062), struct.pack("!H", 5060))
    assert (b[3], b[4]) == (socket.inet_aton("192.0.2.10"), socket.inet_aton("10.9.8.7"))
    assert b[2] == bytes([6])  # TLS rides TCP
    assert a[0x11] == b[0x11] == b"abc123@10.1.2.3"  # the Call-ID found in the bytes


def test_a_message_too_big_for_one_datagram_is_refused() -> None:
    with pytest.raises(OverflowError):
        hep.encode("10.0.0.1", 1, "10.0.0.2", 2, 0.0, 17, 1, b"x" * 65500, b"c")
    with pytest.raises(ValueError):
        hep.encode("not-an-ip", 1, "10.0.0.2", 2, 0.0, 17, 1, SIP, None)


async def test_a_full_queue_drops_and_counts_and_never_blocks_the_loop() -> None:
    """A collector socket that never reads: a Unix datagram pair refuses (EAGAIN) once its
    queue is full. The sender waits for it without blocking the loop; past its own bound it
    drops and counts; once the peer reads again, what was queued goes out."""
    loop = asyncio.get_running_loop()
    ours, collector = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector.setblocking(False)
    sender = hep.HepSender(loop, ours, capture_id=1, queue_size=50)
    try:
        msg = (SIP, 1.0, True, "udp", "10.1.2.3", 5062, ("10.9.8.7", 5060))
        for _ in range(2000):
            sender.push(msg)
            await asyncio.sleep(0)  # the loop runs between messages, as in the proxy
        ticks = 0
        deadline = loop.time() + 2.0
        while loop.time() < deadline and ticks < 20:  # the loop is not blocked by HEP
            await asyncio.sleep(0.001)
            ticks += 1
        assert ticks == 20
        assert sender.dropped["queue_full"] > 0
        assert 0 < sender.sent < 2000 and len(sender.queue) == 50
        assert sender.sent + len(sender.queue) + sender.dropped["queue_full"] == 2000
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


async def test_a_closed_collector_port_counts_send_errors() -> None:
    """HEP to a UDP port nobody listens on: the ICMP port unreachable comes back as
    ECONNREFUSED on the connected socket; the packets are counted as dropped."""
    loop = asyncio.get_running_loop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sender = hep.HepSender.connect(loop, "127.0.0.1", port, 1)
    try:
        msg = (SIP, 1.0, True, "udp", "10.1.2.3", 5062, ("10.9.8.7", 5060))
        for _ in range(20):
            sender.push(msg)
            await asyncio.sleep(0.001)
        assert sender.dropped["send_error"] > 0
        assert sender.sent + sender.dropped["send_error"] == 20
    finally:
        sender.close()


# ------------------------------------------------------------------ Call-ID


@pytest.mark.parametrize(("data", "expected"), [
    (SIP, b"abc123@10.1.2.3"),
    (b"BYE sip:x SIP/2.0\r\ni: compact-1\r\nCSeq: 2 BYE\r\n\r\n", b"compact-1"),
    (b"BYE sip:x SIP/2.0\r\ncall-id :  spaced  \r\n\r\n", b"spaced"),
    (b"BYE sip:x SIP/2.0\r\nCALL-ID:last\r\n\r\nbody\r\nCall-ID: not-this", b"last"),
    (b"BYE sip:x SIP/2.0\r\nVia: x\r\n\r\nCall-ID: in-body", None),
    (b"garbage", None),
])
def test_the_call_id_byte_search(data: bytes, expected: bytes | None) -> None:
    assert call_id_of(data) == expected


# ------------------------------------------------------------------ the ring


def invite(i: int, size: int = 500) -> bytes:
    head = f"INVITE sip:b@x SIP/2.0\r\nCall-ID: call-{i}\r\nCSeq: 1 INVITE\r\n\r\n".encode()
    return head + b"v" * max(0, size - len(head))


def accounted(ring: CallRing) -> int:
    return sum(t.size for t in ring.calls.values())


def test_the_ring_holds_its_bound_in_calls_and_bytes() -> None:
    ring = CallRing(max_calls=100)
    for i in range(5000):
        data = invite(i)
        for k in range(10):
            ring.message(data if k == 0 else data.replace(b"INVITE", b"SIP/2.0 100"), float(i),
                         k % 2 == 0, "udp", "10.0.0.1", 5060)
    assert len(ring.calls) == 100 and ring.evicted == 4900
    assert [t.call_id for t in ring.newest_first()][:2] == [b"call-4999", b"call-4998"]
    assert ring.bytes == accounted(ring) <= ring.max_bytes
    assert all(len(t.messages) == 10 for t in ring.calls.values())


def test_the_byte_budget_pushes_out_old_calls_and_big_messages_are_cut() -> None:
    ring = CallRing(max_calls=1000, max_bytes=200_000)
    for i in range(200):
        ring.message(invite(i, 20_000), float(i), True, "udp", "10.0.0.1", 5060)
    assert ring.bytes == accounted(ring) <= 200_000
    assert 30 <= len(ring.calls) < 200  # the budget, not the count, decided
    kept = ring.newest_first()[0].messages[0]
    assert len(kept[5]) == RAW_LIMIT and kept[6] == 20_000  # cut, its full size remembered


def test_one_call_keeps_at_most_max_messages() -> None:
    ring = CallRing(max_calls=10)
    data = invite(1)
    for _ in range(MAX_MESSAGES + 50):
        ring.message(data, 1.0, True, "udp", "10.0.0.1", 5060)
    [trace] = ring.calls.values()
    assert len(trace.messages) == MAX_MESSAGES and trace.dropped == 50


def test_only_a_received_invite_starts_a_call() -> None:
    ring = CallRing(max_calls=10)
    ring.message(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: o1\r\n\r\n", 1.0, True, "udp", "h", 1)
    ring.message(b"REGISTER sip:x SIP/2.0\r\nCall-ID: r1\r\n\r\n", 1.0, True, "udp", "h", 1)
    ring.message(invite(7), 1.0, False, "udp", "h", 1)  # one the proxy sent, not received
    ring.message(b"INVITE sip:x SIP/2.0\r\nVia: x\r\n\r\n", 1.0, True, "udp", "h", 1)  # no Call-ID
    assert ring.calls == {}


def test_the_memory_really_held_stays_within_the_budget() -> None:
    """What tracemalloc sees allocated by a full ring is within the bytes it accounts for
    (the overhead per message is not an underestimate)."""
    ring = CallRing(max_calls=300)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3000):
            data = invite(i, 600)
            for k in range(12):
                ring.message(data if k == 0 else bytes(bytearray(data)), float(i), True, "udp",
                             "10.0.0.1", 5060)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ring.calls) == 300
    assert held <= ring.bytes * 1.2, (held, ring.bytes)
    assert ring.bytes <= ring.max_bytes


# ------------------------------------------------------------------ decisions where they happened


def traced_call() -> tuple[Harness, CallRing]:
    """A core driven by hand with the ring tapping it as the runtime does: the caller's
    INVITE, 503 from the first upstream (unavailable: failover), 603 from the second
    (global-failure: stop), the 603 to the caller and its ACK."""
    h = Harness.make()
    ring = CallRing(max_calls=10)
    t = [100.0]

    def feed(data: bytes, src: Source) -> list[Any]:
        t[0] += 0.01
        ring.message(data, t[0], True, src.transport, src.host, src.port)
        fx = h.core.on_message(data, src, h.now)
        ring.summaries(fx.logs)
        for s in fx.sends:
            t[0] += 0.001
            ring.message(s.data, t[0], False, s.transport, s.host, s.port)
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
    return h, ring


def test_each_decision_is_placed_on_the_response_that_caused_it() -> None:
    _, ring = traced_call()
    trace = ring.get("call-1@caller")
    assert trace is not None
    call = calls_json.detail(trace)
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
    summary = calls_json.summary(trace)
    assert summary["messages"] == len(call["messages"]) and "raw" not in str(summary)


def test_the_text_ladder_draws_every_message_and_decision() -> None:
    _, ring = traced_call()
    trace = ring.get("call-1@caller")
    assert trace is not None
    call = calls_json.detail(trace)
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
    _, ring = traced_call()
    trace = ring.get("call-1@caller")
    assert trace is not None
    call = calls_json.detail(trace)
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
    ring = CallRing(max_calls=2)
    evil = (b"INVITE sip:<script>alert(1)</script>@x SIP/2.0\r\nCall-ID: <b>x\x1b[2J\r\n"
            b"From: \"</td><script>\" <sip:a@b>\r\nTo: <sip:c@d>\r\n\r\n<svg onload=alert(1)>")
    ring.message(evil, 1.0, True, "udp", "10.0.0.1", 5060)
    trace = ring.get("<b>x\x1b[2J")
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

