"""Capturing SIP messages for tracing, sans-IO and compiled with the rest of the package: the
tap every message crosses when tracing is on (:class:`Capture`), the Call-ID found by a byte
search (:func:`call_id_of`), and HEPv3 framing (:class:`HepEncoder`, HEP3 specification,
sipcapture.org, revision 12).

The tap does the least it can on the message path: one tuple per message, appended to the
recent-messages ring and to the HEP queue, each bounded. Everything else (Call-IDs, the
index of calls, HEP packets) is worked out off the message path: HEP packets when the runtime
drains its queue, the calls when someone asks for them.

HEPv3: the header ``HEP3`` and the total length (16 bits), then chunks of ``vendor id (16) |
type id (16) | length (16, the 6-byte chunk header included) | value``, all of the generic
vendor 0x0000:

====  ===============================  =====================================
type  value                            here
====  ===============================  =====================================
0x01  IP family (8)                    2 (AF_INET) or 10 (AF_INET6)
0x02  IP protocol (8)                  17 UDP, 6 TCP (TLS and WebSocket ride TCP)
0x03  IPv4 source (32)                 or 0x05, IPv6 source (128)
0x04  IPv4 destination (32)            or 0x06, IPv6 destination (128)
0x07  source port (16)
0x08  destination port (16)
0x09  timestamp, seconds (32)          wall clock when the message crossed the runtime
0x0a  timestamp, microseconds (32)
0x0b  protocol type (8)                1 = SIP
0x0c  capture agent id (32)            ``hep: id``
0x11  correlation id (octets)          the Call-ID (left out when none is found)
0x0f  payload (octets)                 the SIP message, byte for byte
====  ===============================  =====================================
"""

from __future__ import annotations

import errno
import ipaddress
import re
import struct
from collections import deque
from collections.abc import Callable

from proxy.sip.transport import Send, Source

#: One captured message: (Unix time, received by the proxy?, transport, peer IP, peer port,
#: raw bytes (the ring's copy cut at RAW_LIMIT), stream connection id, full size in bytes).
Captured = tuple[float, bool, str, str, int, bytes, int | None, int]

RAW_LIMIT = 4096  # bytes of a message the ring keeps (headers and the start of the body)
MESSAGE_OVERHEAD = 160  # bytes a kept message costs besides its raw bytes (tuple, strings)

# ------------------------------------------------------------------ the Call-ID

SEARCH_LIMIT = 8192
_COMMON = b"\r\nCall-ID:"
_OTHERS = (b"\r\ni:", b"\r\nCall-Id:")
_ANY = re.compile(rb"\r\n(?:call-id|i)[ \t]*:", re.IGNORECASE)
_MAX_LENGTH = 256  # a longer value is not kept whole (a Call-ID is one word, RFC 3261 25.1)


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID value of ``data`` (white space around it removed), or None, found by a
    byte search in the header section (at most :data:`SEARCH_LIMIT` bytes): ``Call-ID:`` as
    most user agents write it, the compact ``i:`` (RFC 3261 7.3.3), then any other
    capitalisation (header names are case-insensitive, RFC 3261 7.3.1)."""
    at = data.find(_COMMON, 0, SEARCH_LIMIT)
    if at >= 0:
        # the first occurrence: in the header section whenever the header is spelled so (a
        # body is searched only when the header is written otherwise and the body holds a
        # "Call-ID:" line, a SIP message fragment: not worth a second scan of every message)
        start = at + len(_COMMON)
    else:
        end = data.find(b"\r\n\r\n", 0, SEARCH_LIMIT)
        if end < 0:
            end = min(len(data), SEARCH_LIMIT)
        start = -1
        for name in _OTHERS:
            at = data.find(name, 0, end)
            if at >= 0:
                start = at + len(name)
                break
        if start < 0:
            m = _ANY.search(data, 0, end)
            if m is None:
                return None
            start = m.end()
    stop = data.find(b"\r\n", start, start + _MAX_LENGTH)
    if stop < 0:
        stop = min(len(data), start + _MAX_LENGTH)
    while start < stop and data[start] in (32, 9):  # SP, HTAB
        start += 1
    while stop > start and data[stop - 1] in (32, 9):
        stop -= 1
    return data[start:stop] if stop > start else None


# ------------------------------------------------------------------ the tap


class Capture:
    """The tap of the runtime: :meth:`received` and :meth:`sent` for every message.

    ``ring`` (None when off) keeps the last messages, at most ``ring_messages`` of them and
    ``ring_bytes`` bytes (raw bytes cut at :data:`RAW_LIMIT`, plus :data:`MESSAGE_OVERHEAD`
    each); ``appended`` counts every message it was given, so that an index built from it
    knows which ones are new. ``hep`` (None when off) is the HEP queue: past ``hep_size``
    messages a new one is dropped and counted (``hep_full``); ``wake`` is called when the
    queue stops being empty. While ``hep_paused`` (the collector refused), messages are not
    queued but counted (``hep_refused``). The time of a message comes in as Unix seconds
    with microseconds (the runtime reads the wall clock: its loop's clock ticks in
    milliseconds under uvloop).
    """

    def __init__(self, ring_messages: int, ring_bytes: int, hep_size: int,
                 wake: Callable[[], None] | None) -> None:
        self.ring: deque[Captured] | None = deque() if ring_messages > 0 else None
        self.ring_messages = ring_messages
        self.ring_bytes = ring_bytes
        self.bytes = 0
        self.appended = 0
        self.hep: deque[Captured] | None = deque() if wake is not None else None
        self.hep_size = hep_size
        self.hep_full = 0
        self.hep_paused = False
        self.hep_refused = 0
        self._wake = wake

    def received(self, data: bytes, src: Source, t: float) -> None:
        """``data`` came from ``src`` at ``t`` (Unix seconds)."""
        self._add((t, True, src.transport, src.host, src.port, data, src.conn_id, len(data)))

    def sent(self, s: Send, t: float) -> None:
        """``s`` was handed to its transport at ``t`` (Unix seconds)."""
        data = s.data
        self._add((t, False, s.transport, s.host, s.port, data, s.conn_id, len(data)))

    def _add(self, item: Captured) -> None:
        hep = self.hep
        if hep is not None:
            if self.hep_paused:
                self.hep_refused += 1
            elif len(hep) < self.hep_size:
                hep.append(item)
                if len(hep) == 1 and self._wake is not None:
                    self._wake()
            else:
                self.hep_full += 1
        ring = self.ring
        if ring is None:
            return
        size = item[7]
        if size > RAW_LIMIT:
            item = (item[0], item[1], item[2], item[3], item[4], item[5][:RAW_LIMIT], item[6],
                    size)
            size = RAW_LIMIT
        ring.append(item)
        self.appended += 1
        self.bytes += size + MESSAGE_OVERHEAD
        if self.bytes > self.ring_bytes or len(ring) > self.ring_messages:
            self._trim(ring)

    def _trim(self, ring: deque[Captured]) -> None:
        while ring and (self.bytes > self.ring_bytes or len(ring) > self.ring_messages):
            self.bytes -= len(ring.popleft()[5]) + MESSAGE_OVERHEAD


# ------------------------------------------------------------------ HEPv3

VENDOR = 0
PROTO_SIP = 1
PROTO_UDP = 17
PROTO_TCP = 6
MAX_PACKET = 65507  # the largest UDP payload over IPv4; HEP's length field is 16 bits
_LEG_CACHE = 4096
_CHUNK = struct.Struct("!HHH")
_HEAD = struct.Struct("!4sHHHHIHHHI")  # HEP3, the total length, 0x09 and 0x0a
_U8 = struct.Struct("!HHHB")
_U16 = struct.Struct("!HHHH")
_U32 = struct.Struct("!HHHI")


class HepEncoder:
    """HEPv3 packets of captured messages. What repeats is made once: the chunks 0x01-0x08
    of each leg (family, protocol, addresses, ports: the same for every message between two
    sockets; a bounded cache, cleared when full, as peers are whoever sends) and the constant
    0x0b and 0x0c. ``local`` gives the proxy's (IP, port) per (transport, IPv6?);
    ``conn_local`` the local end of a stream connection, when the runtime knows it."""

    def __init__(self, capture_id: int, local: dict[tuple[str, bool], tuple[str, int]],
                 resolve: Callable[[str, int], tuple[str, int] | None] | None = None) -> None:
        self.capture_id = capture_id
        self.local = local
        self.conn_local: dict[int, tuple[str, int]] = {}
        #: (transport, conn_id) -> the local end of a stream connection (the runtime's)
        self.resolve = resolve
        self._tail = _U8.pack(VENDOR, 0x0B, 7, PROTO_SIP) + _U32.pack(VENDOR, 0x0C, 10,
                                                                      capture_id)
        self._legs: dict[tuple[bool, str, str, int, int | None], bytes] = {}
        self._corr: dict[int, struct.Struct] = {}  # chunk 0x11 + the 0x0f header, by length

    def packet(self, c: Captured, correlation: bytes | None) -> bytes:
        """The packet of ``c`` (its full message: the HEP queue's copy is never cut), with
        ``correlation`` as chunk 0x11 (None: no such chunk). ValueError for an address that
        is not an IP; OverflowError past one datagram. The time chunks come first (any order
        of chunks is valid HEPv3), so that the header and they are packed at once."""
        data = c[5]
        key = (c[1], c[2], c[3], c[4], c[6])
        chunks = self._legs.get(key)
        if chunks is None:
            chunks = self._leg(c[1], c[2], c[3], c[4], self._local(c[2], c[3], c[6]))
            if len(self._legs) >= _LEG_CACHE:
                self._legs.clear()
            self._legs[key] = chunks
        t = c[0]
        sec = int(t)
        usec = int((t - sec) * 1_000_000.0 + 0.5)
        if usec > 999_999:
            usec = 999_999
        n = len(correlation) if correlation else 0
        total = _HEAD.size + len(chunks) + len(self._tail) + (6 + n if n else 0) + 6 + len(data)
        if total > MAX_PACKET:
            raise OverflowError(f"a HEP packet of {total} bytes does not fit in one datagram")
        head = _HEAD.pack(b"HEP3", total, VENDOR, 0x09, 10, sec, VENDOR, 0x0A, 10, usec)
        if n and correlation is not None:
            fmt = self._corr.get(n)
            if fmt is None:
                fmt = self._corr[n] = struct.Struct(f"!HHH{n}sHHH")
            trailer = fmt.pack(VENDOR, 0x11, 6 + n, correlation, VENDOR, 0x0F, 6 + len(data))
        else:
            trailer = _CHUNK.pack(VENDOR, 0x0F, 6 + len(data))
        return b"".join((head, chunks, self._tail, trailer, data))

    def _local(self, transport: str, host: str, conn_id: int | None) -> tuple[str, int]:
        """The proxy's address for a message with ``host``: its stream connection's local end,
        else the listener of its transport and family."""
        if conn_id is not None and transport != "udp":
            found = self.conn_local.get(conn_id)
            if found is None and self.resolve is not None:
                found = self.resolve(transport, conn_id)
                if found is not None:
                    if len(self.conn_local) >= _LEG_CACHE:
                        self.conn_local.clear()
                    self.conn_local[conn_id] = found
            if found is not None:
                return found
        local = self.local.get((transport, ":" in host))
        if local is None:
            return ("::" if ":" in host else "0.0.0.0", 0)
        return local

    def _leg(self, inbound: bool, transport: str, host: str, port: int,
             local: tuple[str, int]) -> bytes:
        """The chunks 0x01-0x08: the peer is the source of what the proxy received and the
        destination of what it sent."""
        if inbound:
            src, sport, dst, dport = host, port, local[0], local[1]
        else:
            src, sport, dst, dport = local[0], local[1], host, port
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if a.version != b.version:  # an IPv4 peer on a dual-stack socket: both IPv4
            if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
                a = a.ipv4_mapped
            if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
                b = b.ipv4_mapped
            if a.version != b.version:
                raise ValueError(f"addresses of two families: {src}, {dst}")
        v6 = a.version == 6
        proto = PROTO_UDP if transport == "udp" else PROTO_TCP
        alen = 16 if v6 else 4
        return b"".join((
            _U8.pack(VENDOR, 0x01, 7, 10 if v6 else 2),
            _U8.pack(VENDOR, 0x02, 7, proto),
            _CHUNK.pack(VENDOR, 0x05 if v6 else 0x03, 6 + alen), a.packed,
            _CHUNK.pack(VENDOR, 0x06 if v6 else 0x04, 6 + alen), b.packed,
            _U16.pack(VENDOR, 0x07, 8, sport),
            _U16.pack(VENDOR, 0x08, 8, dport),
        ))


DRAINED = 0  # the queue is empty, or the batch was sent
BLOCKED = 1  # the socket would block (EAGAIN): the message stays first in the queue
REFUSED = 2  # the collector refused (ECONNREFUSED: an ICMP port unreachable came back)


class HepDrain:
    """Sends what the HEP queue holds through ``send`` (a non-blocking socket's), a batch at
    a time, counting what goes and what cannot: a message too big for one datagram, or with
    an address that is not an IP, is dropped; a send error drops that packet."""

    def __init__(self, encoder: HepEncoder) -> None:
        self.encoder = encoder
        self.sent = 0
        self.too_big = 0
        self.bad_address = 0
        self.send_errors = 0
        self.last_error = 0  # errno of the last send error

    def run(self, queue: deque[Captured], send: Callable[[bytes], object], limit: int) -> int:
        """Up to ``limit`` packets; DRAINED, BLOCKED or REFUSED."""
        encoder = self.encoder
        n = 0
        while queue and n < limit:
            c = queue.popleft()
            n += 1
            try:
                data = encoder.packet(c, call_id_of(c[5]))
            except OverflowError:
                self.too_big += 1
                continue
            except ValueError:
                self.bad_address += 1
                continue
            try:
                send(data)
            except BlockingIOError:
                queue.appendleft(c)
                return BLOCKED
            except OSError as exc:
                self.send_errors += 1
                self.last_error = exc.errno or 0
                if exc.errno == errno.ECONNREFUSED:
                    return REFUSED
                continue
            self.sent += 1
        return DRAINED
