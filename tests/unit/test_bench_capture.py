"""bench/capture.py: INVITE->200 latency from a pcap file written here with struct."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.unit import bench_modules

UAC, TARGET, UAS = 5062, 5060, 5070


cap = bench_modules.load("capture")


def sip(start: str, call_id: str, cseq: str, compact: bool = False) -> bytes:
    cid = "i" if compact else "Call-ID"
    return (f"{start}\r\nVia: SIP/2.0/UDP 127.0.0.1:{UAC};branch=z9hG4bK-1\r\n"
            f"{cid}: {call_id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode()


def ipv4_udp(sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    return ip + udp


def link(linktype: int, packet: bytes) -> bytes:
    if linktype == 1:  # Ethernet, as Linux `lo` reports it
        return b"\0" * 12 + b"\x08\x00" + packet
    if linktype == 0:  # BSD loopback: AF_INET in the writer's (here little-endian) order
        return struct.pack("<I", 2) + packet
    if linktype == 276:  # LINUX_SLL2: protocol, reserved, ifindex, hatype, pkttype, len, addr
        return struct.pack("!HHIHBB8s", 0x0800, 0, 1, 772, 0, 6, b"") + packet
    if linktype == 113:  # LINUX_SLL: pkttype, hatype, len, addr, protocol
        return struct.pack("!HHH8sH", 0, 772, 6, b"", 0x0800) + packet
    return packet  # RAW


# (time, source port, destination port, message)
PACKETS = [
    # Call a: the INVITE is retransmitted 500 ms later; the clock runs from the first one.
    (10.000000, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "a@x", "1 INVITE")),
    (10.000050, TARGET, UAS, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "a@x", "1 INVITE")),
    (10.500000, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "a@x", "1 INVITE")),
    (10.500400, TARGET, UAC, sip("SIP/2.0 200 OK", "a@x", "1 INVITE")),
    (10.600000, TARGET, UAC, sip("SIP/2.0 200 OK", "a@x", "1 INVITE")),  # retransmitted 200
    # Call b: answered in 310 µs (Call-ID in its compact form); a 180 and the BYE's 200 do not
    # count, and neither does the 200 the UAS sends the proxy.
    (11.000000, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "b@x", "1 INVITE")),
    (11.000100, TARGET, UAC, sip("SIP/2.0 180 Ringing", "b@x", "1 INVITE")),
    (11.000200, UAS, TARGET, sip("SIP/2.0 200 OK", "b@x", "1 INVITE")),
    (11.000310, TARGET, UAC, sip("SIP/2.0 200 OK", "b@x", "1 INVITE", compact=True)),
    (11.100000, TARGET, UAC, sip("SIP/2.0 200 OK", "b@x", "2 BYE")),
    # Call c: its INVITE is not in the capture (it started before tcpdump): no sample.
    (12.000000, TARGET, UAC, sip("SIP/2.0 200 OK", "c@x", "1 INVITE")),
    # Call d: a 200 for the BYE only (its INVITE was never answered in the capture).
    (13.000000, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "d@x", "1 INVITE")),
    (13.200000, TARGET, UAC, sip("SIP/2.0 200 OK", "d@x", "1 BYE")),
]


def write_pcap(path: Path, linktype: int = 1, ns: bool = False, order: str = "<",
               cut: int = 0) -> Path:
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 1500, linktype))
    for ts, sport, dport, payload in PACKETS:
        frame = link(linktype, ipv4_udp(sport, dport, payload))
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if ns else 1e6))
        out += struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out[: len(out) - cut]))
    return path


def latencies(path: Path) -> list[float]:
    result = cap.capture_latencies(path, [UAC])
    return [round(ms, 3) for ms in result.latencies_ms]


def test_first_invite_to_first_200_for_the_invite(tmp_path: Path) -> None:
    result = cap.capture_latencies(write_pcap(tmp_path / "c.pcap"), [UAC])
    assert [round(ms, 3) for ms in result.latencies_ms] == [500.4, 0.31]
    assert result.invites == 3  # a, b and d; d was never answered
    assert result.unparsed == 0


@pytest.mark.parametrize(("linktype", "ns", "order"), [
    (1, True, "<"), (1, False, ">"), (0, False, "<"), (101, False, "<"), (113, False, "<"),
    (276, False, "<"),
])
def test_timestamp_formats_and_link_types(tmp_path: Path, linktype: int, ns: bool,
                                          order: str) -> None:
    assert latencies(write_pcap(tmp_path / "c.pcap", linktype, ns, order)) == [500.4, 0.31]


def test_other_ports_and_a_cut_last_record(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", cut=10)  # tcpdump killed mid-write
    assert latencies(path) == [500.4, 0.31]
    assert cap.capture_latencies(path, [UAC + 1]).latencies_ms == []


def test_unknown_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(cap.CaptureError, match="link type 105"):
        list(cap.read_pcap(write_pcap(tmp_path / "wifi.pcap", linktype=105)))
    ng = tmp_path / "c.pcapng"
    ng.write_bytes(struct.pack("<I", 0x0A0D0D0A) + b"\0" * 28)
    with pytest.raises(cap.CaptureError, match="pcapng"):
        list(cap.read_pcap(ng))
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert list(cap.read_pcap(empty)) == []


def test_bpf_filter_names_every_uac_port() -> None:
    text = cap.bpf_filter([5063, 5062])
    assert "src port 5062 or src port 5063" in text
    assert "dst port 5062 or dst port 5063" in text
    assert "udp[8:4] = 0x494e5649" in text  # "INVI"


# ------------------------------------------------------------------------------- report


report = bench_modules.load("report")


def step(target: str, rate: int, p99: float | None, sipp_p99: float = 4.0,
         clean: bool = True) -> object:
    st = report.Step(target, rate, rate * 10, successful=rate * 10 if clean else 0,
                     elapsed_s=10.0, cpu_s=rate / 100, sipp_p99_ms=sipp_p99)
    if p99 is not None:
        st.p99_ms, st.latency_source = p99, "capture"
    else:
        st.p99_ms = sipp_p99
    return st


def test_p99_is_compared_with_kamailio_at_the_proxys_half_rate() -> None:
    proxy = report.Series("proxy", [step("proxy", r, 0.2 + r / 1000) for r in (200, 400, 800)])
    kam = report.Series("kamailio",
                        [step("kamailio", r, 0.1 + r / 2000) for r in (200, 400, 800, 1600)])
    line = report.ratio_line(proxy, kam)
    # proxy: half of 800 is 400 (0.60 ms); Kamailio at 400/s: 0.30 ms (its own half is 800/s)
    assert "p99 at the same rate 2.00 (proxy 0.60 ms at 400/s (half its 800/s) vs kamailio " \
           "0.30 ms at 400/s; capture)" in line
    assert "highest clean rate 0.50" in line


def test_p99_at_the_same_rate_says_why_it_is_missing() -> None:
    proxy = report.Series("proxy", [step("proxy", r, 0.5) for r in (200, 400, 800)])
    kam = report.Series("kamailio", [step("kamailio", 200, 0.3),
                                     step("kamailio", 400, 0.3, clean=False)])
    assert "n/a (kamailio's step at 400/s was not clean)" in report.ratio_line(proxy, kam)
    kam = report.Series("kamailio", [step("kamailio", 300, 0.3)])
    assert "n/a (kamailio ran no step at 400/s (its rates: 300))" in report.ratio_line(proxy, kam)


def test_without_a_capture_on_one_side_both_use_sipps_ticks() -> None:
    proxy = report.Series("proxy", [step("proxy", 200, 0.5, sipp_p99=4.0)])
    kam = report.Series("kamailio", [step("kamailio", 200, None, sipp_p99=0.0)])
    assert "n/a (kamailio's p99 is under one sipp tick: proxy 4 ms at 200/s (half its 200/s) " \
           "vs kamailio 0 ms at 200/s; sipp ticks)" in report.ratio_line(proxy, kam)
    table = report.table([proxy, kam])
    assert " 0.50 " in table and " pcap " in table and " sipp " in table


# ------------------------------------------------------------------------------- 503s


def sip_503(call_id: str, cseq: str, retry_after: str | None) -> bytes:
    extra = "" if retry_after is None else f"Retry-After: {retry_after}\r\n"
    return (f"SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 127.0.0.1:{UAC};"
            f"branch=z9hG4bK-1\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


SHED = [
    # e: turned away with Retry-After (retransmitted: counted once); f: without it; g: a 503
    # with an empty Retry-After counts as without; h: admitted, answered 200 in 2 ms.
    (20.0, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "e@x", "1 INVITE")),
    (20.0001, TARGET, UAC, sip_503("e@x", "1 INVITE", "5")),
    (20.5001, TARGET, UAC, sip_503("e@x", "1 INVITE", "5")),
    (21.0, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "f@x", "1 INVITE")),
    (21.0001, TARGET, UAC, sip_503("f@x", "1 INVITE", None)),
    (22.0, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "g@x", "1 INVITE")),
    (22.0001, TARGET, UAC, sip_503("g@x", "1 INVITE", " ")),
    (23.0, UAC, TARGET, sip("INVITE sip:service@127.0.0.1:5070 SIP/2.0", "h@x", "1 INVITE")),
    (23.002, TARGET, UAC, sip("SIP/2.0 200 OK", "h@x", "1 INVITE")),
    # a 503 to a BYE, and one for a call whose INVITE is not in the capture: not counted
    (24.0, TARGET, UAC, sip_503("h@x", "2 BYE", "5")),
    (25.0, TARGET, UAC, sip_503("z@x", "1 INVITE", "5")),
]


def test_503s_to_invites_are_counted_once_with_and_without_retry_after() -> None:
    datagrams = [cap.Datagram(ts, sport, dport, payload) for ts, sport, dport, payload in SHED]
    result = cap.invite_latencies(datagrams, [UAC])
    assert (result.invites, result.refused, result.refused_retry_after) == (4, 3, 1)
    assert [round(ms, 3) for ms in result.latencies_ms] == [2.0]  # admitted calls only


def test_retry_after_is_found_case_insensitively_in_the_headers_only() -> None:
    assert cap.has_header(b"SIP/2.0 503 x\r\nretry-after: 10\r\n\r\n", "Retry-After")
    assert not cap.has_header(b"SIP/2.0 503 x\r\nVia: a\r\n\r\nRetry-After: 10", "Retry-After")


def test_bpf_filter_keeps_503s_to_the_uac() -> None:
    assert "udp[16:4] = 0x35303320" in cap.bpf_filter([5062])  # "503 "
