"""INVITE->200 latency from a packet capture (tcpdump -w on the loopback interface).

sipp times responses with a coarse clock (one kernel tick, 4 ms at HZ=250): at sub-millisecond
latencies its p99 is 0 or 4 ms by chance. The kernel stamps every captured packet to the
microsecond, so run.py runs tcpdump beside each step and this module reads its file: for each
call, the time from the first INVITE the sipp UAC sends (UDP source port = a UAC port) to the
first ``SIP/2.0 200`` whose CSeq method is INVITE that reaches the UAC (destination port = that
UAC port). A retransmitted INVITE does not restart the clock; a 200 for the BYE does not count.
It also counts the calls turned away: a ``SIP/2.0 503`` to the INVITE (the overload steps of
run.py: a target shedding load answers new INVITEs 503), and those of them that carry a
Retry-After header (RFC 3261 21.5.4, 20.33).

Standard library only: the classic pcap format (not pcapng) is read with struct.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SNAPLEN = 1500  # the whole of any message of uac_rr.xml / uas_rr.xml (under 1 kB through a proxy)

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A

# Link types (LINKTYPE_* values as written in a pcap file) and their header before the IP one.
LINKTYPE_NULL = 0  # BSD loopback: a 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1  # Linux `lo` reports Ethernet: 14 bytes of zero addresses + ethertype
LINKTYPE_RAW = 101  # bare IP
LINKTYPE_LINUX_SLL = 113  # "any" device, 16-byte cooked header, protocol at 14
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276  # 20-byte cooked header, protocol at 0
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_VLAN = (0x8100, 0x88A8)
IPPROTO_UDP = 17


class CaptureError(ValueError):
    """The file is not a pcap file this module can read (pcapng, an unknown link type)."""


def bpf_filter(uac_ports: Iterable[int]) -> str:
    """The tcpdump filter: UDP from a UAC port starting 'INVITE', or to one starting
    'SIP/2.0 200 ' or 'SIP/2.0 503 ' (bytes 8.. of the UDP header are the payload's first
    bytes)."""
    ports = sorted(set(uac_ports))
    if not ports:
        raise ValueError("no UAC port to capture")
    src = " or ".join(f"src port {p}" for p in ports)
    dst = " or ".join(f"dst port {p}" for p in ports)
    invite = "udp[8:4] = 0x494e5649"  # "INVI"
    ok = ("udp[8:4] = 0x5349502f and udp[12:4] = 0x322e3020 and "
          "(udp[16:4] = 0x32303020 or udp[16:4] = 0x35303320)")
    # ok: "SIP/" "2.0 " and "200 " or "503 "
    return f"ip and udp and ((({src}) and {invite}) or (({dst}) and {ok}))"


# --------------------------------------------------------------------------- pcap


@dataclass(slots=True)
class Datagram:
    ts: float  # seconds since the epoch, from the capture header
    sport: int
    dport: int
    payload: bytes  # what the snapshot length kept of the UDP payload


def _ip_offset(linktype: int, frame: bytes, little: bool) -> int | None:
    """Where the IPv4 header starts in a frame, or None when the frame carries something else."""
    if linktype == LINKTYPE_ETHERNET:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in ETHERTYPE_VLAN and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
        return off if ethertype == ETHERTYPE_IPV4 else None
    if linktype == LINKTYPE_NULL:
        family = int.from_bytes(frame[:4], "little" if little else "big")
        return 4 if family == 2 else None  # AF_INET
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        return 16 if int.from_bytes(frame[14:16], "big") == ETHERTYPE_IPV4 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20 if int.from_bytes(frame[0:2], "big") == ETHERTYPE_IPV4 else None
    raise CaptureError(f"link type {linktype} is not supported (Ethernet, NULL, RAW, "
                       "LINUX_SLL and LINUX_SLL2 are)")


def _udp(frame: bytes, off: int) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of an unfragmented IPv4/UDP packet."""
    if len(frame) < off + 20 or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0x0F) * 4
    if ihl < 20 or frame[off + 9] != IPPROTO_UDP:
        return None
    if int.from_bytes(frame[off + 6 : off + 8], "big") & 0x1FFF:
        return None  # a later fragment: no UDP header
    udp = off + ihl
    if len(frame) < udp + 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    end = min(len(frame), udp + length) if length >= 8 else len(frame)
    return sport, dport, frame[udp + 8 : end]


def read_pcap(path: Path) -> Iterator[Datagram]:
    """The IPv4 UDP datagrams of a classic pcap file, in file order.

    A record cut short at the end (tcpdump killed mid-write) ends the file quietly.
    """
    with path.open("rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return  # tcpdump stopped before it wrote its header: no packet
        magic_le = struct.unpack_from("<I", head)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            order = "<"
        elif struct.unpack_from(">I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            order = ">"
        elif magic_le == PCAPNG_MAGIC:
            raise CaptureError(f"{path} is pcapng: write classic pcap (tcpdump -w does)")
        else:
            raise CaptureError(f"{path} is not a pcap file (magic {magic_le:#010x})")
        magic = struct.unpack_from(order + "I", head)[0]
        frac = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
        linktype = struct.unpack_from(order + "I", head, 20)[0] & 0x0FFFFFFF  # high bits: FCS
        _ip_offset(linktype, b"\0" * 64, order == "<")  # refuse an unknown link type up front
        record = struct.Struct(order + "IIII")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            ts_sec, ts_frac, incl_len, _orig_len = record.unpack(rec)
            frame = f.read(incl_len)
            if len(frame) < incl_len:
                return
            off = _ip_offset(linktype, frame, order == "<")
            udp = _udp(frame, off) if off is not None else None
            if udp is not None:
                yield Datagram(ts_sec + ts_frac * frac, *udp)


# --------------------------------------------------------------------------- SIP


def header_lines(payload: bytes) -> list[str]:
    """The start line and header lines of a SIP message (up to the blank line)."""
    head = payload.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return head.replace("\r\n", "\n").split("\n")


def sip_fields(payload: bytes) -> tuple[str, str | None, str | None]:
    """(start line, Call-ID, CSeq method) of a SIP message; None for a header not found."""
    lines = header_lines(payload)
    call_id = method = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        if name in ("call-id", "i") and call_id is None:
            call_id = value.strip()
        elif name == "cseq" and method is None:
            parts = value.split()
            method = parts[1].upper() if len(parts) >= 2 else None
    return lines[0].strip(), call_id, method


def has_header(payload: bytes, name: str) -> bool:
    """Whether the message has a header field NAME (case-insensitive, RFC 3261 7.3.1) with a
    value; Retry-After has no compact form."""
    wanted = name.lower()
    for line in header_lines(payload)[1:]:
        field_name, sep, value = line.partition(":")
        if sep and field_name.strip().lower() == wanted and value.strip():
            return True
    return False


@dataclass(slots=True)
class CaptureResult:
    latencies_ms: list[float] = field(default_factory=list)  # one per answered call
    invites: int = 0  # calls whose INVITE was captured
    unparsed: int = 0  # captured datagrams without a Call-ID or CSeq (cut short?)
    refused: int = 0  # calls whose INVITE was answered 503 (the first 503 of each call)
    refused_retry_after: int = 0  # ... with a Retry-After header


def invite_latencies(datagrams: Iterable[Datagram], uac_ports: Iterable[int]) -> CaptureResult:
    """INVITE->200 per call (keyed by UAC port and Call-ID), in ms; and the calls whose
    INVITE was answered 503, with and without Retry-After."""
    ports = set(uac_ports)
    sent: dict[tuple[int, str], float] = {}
    answered: set[tuple[int, str]] = set()
    refused: set[tuple[int, str]] = set()
    out = CaptureResult()
    for d in datagrams:
        if d.sport in ports and d.payload.startswith(b"INVITE "):
            _, call_id, _ = sip_fields(d.payload)
            if call_id is None:
                out.unparsed += 1
            else:
                sent.setdefault((d.sport, call_id), d.ts)  # a retransmission keeps the first
        elif d.dport in ports and d.payload.startswith(b"SIP/2.0 503"):
            start, call_id, method = sip_fields(d.payload)
            if start.split()[1:2] != ["503"]:
                continue
            if call_id is None or method is None:
                out.unparsed += 1
                continue
            key = (d.dport, call_id)
            if method == "INVITE" and key in sent and key not in refused:
                refused.add(key)  # a retransmitted 503 counts once
                out.refused += 1
                out.refused_retry_after += has_header(d.payload, "Retry-After")
        elif d.dport in ports and d.payload.startswith(b"SIP/2.0 200"):
            start, call_id, method = sip_fields(d.payload)
            if start.split()[1:2] != ["200"]:
                continue
            if call_id is None or method is None:
                out.unparsed += 1
                continue
            key = (d.dport, call_id)
            if method == "INVITE" and key in sent and key not in answered:
                answered.add(key)
                out.latencies_ms.append((d.ts - sent[key]) * 1000)
    out.invites = len(sent)
    return out


def capture_latencies(path: Path, uac_ports: Iterable[int]) -> CaptureResult:
    return invite_latencies(read_pcap(path), uac_ports)
