"""HEPv3 export (``hep: {to: udp:HOST:PORT, id: N}``): every SIP message the proxy receives or
sends, as it went on the wire, in one HEPv3 packet to a Homer / heplify collector.

The packet (HEP3 specification, sipcapture.org, revision 12): the header ``HEP3`` and the
total length (16 bits), then chunks of ``vendor id (16) | type id (16) | length (16, the
6-byte chunk header included) | value``, all of the generic vendor 0x0000:

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

Nothing of this happens on the message path: the runtime's tap appends one tuple to a bounded
queue (:meth:`HepSender.push`); the queue is drained once per loop iteration by a
non-blocking, connected UDP socket, which encodes each message (Call-ID found by a byte
search). A full queue, or a socket that refuses (``EAGAIN``, an ICMP port unreachable), drops
the packet and counts it (``hep_dropped_total{reason}``): HEP never slows a call.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections import Counter, deque

from proxy.runtime.callid import call_id_of

log = logging.getLogger("proxy.hep")

HEP_ID = b"HEP3"
VENDOR = 0x0000
PROTO_SIP = 1
PROTO_UDP, PROTO_TCP = 17, 6
MAX_PACKET = 65507  # the largest UDP payload over IPv4; HEP's length field is 16 bits
QUEUE_SIZE = 4096  # messages waiting for the socket; past it they are dropped and counted
BATCH = 512  # packets sent per drain before the loop gets a turn

# The fixed chunks, in one struct each for IPv4 and IPv6: the chunk headers are constants.
_V4 = struct.Struct("!4sH" "HHHB" "HHHB" "HHH4s" "HHH4s" "HHHH" "HHHH" "HHHI" "HHHI" "HHHB" "HHHI")
_V6 = struct.Struct("!4sH" "HHHB" "HHHB" "HHH16s" "HHH16s" "HHHH" "HHHH" "HHHI" "HHHI" "HHHB"
                    "HHHI")
_CHUNK = struct.Struct("!HHH")
DROP_REASONS = ("queue_full", "send_error", "too_big", "bad_address")


#: One message as the tap saw it, a plain tuple (the cheapest thing to make per message):
#: (raw bytes, Unix time, received by the proxy?, transport, peer IP, peer port,
#: the proxy's (IP, port) for it).
Captured = tuple[bytes, float, bool, str, str, int, tuple[str, int]]


def encode(src: str, sport: int, dst: str, dport: int, t: float, proto: int, capture_id: int,
           payload: bytes, correlation: bytes | None) -> bytes:
    """One HEPv3 packet (see the module's table). ``src`` and ``dst`` are IP literals of the
    same family. Raises ValueError for an address that is not an IP literal of that family."""
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        s, d = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    except OSError as exc:
        raise ValueError(f"not an IP address pair: {src}, {dst}") from exc
    sec = int(t)
    usec = min(999_999, int(round((t - sec) * 1_000_000)))
    fixed = _V6 if v6 else _V4
    alen = 16 if v6 else 4
    corr = b"" if not correlation else _CHUNK.pack(VENDOR, 0x11, 6 + len(correlation)) + correlation
    total = fixed.size + len(corr) + 6 + len(payload)
    if total > MAX_PACKET:
        raise OverflowError(f"a HEP packet of {total} bytes does not fit in one datagram")
    head = fixed.pack(
        HEP_ID, total,
        VENDOR, 0x01, 7, 10 if v6 else 2,
        VENDOR, 0x02, 7, proto,
        VENDOR, 0x05 if v6 else 0x03, 6 + alen, s,
        VENDOR, 0x06 if v6 else 0x04, 6 + alen, d,
        VENDOR, 0x07, 8, sport,
        VENDOR, 0x08, 8, dport,
        VENDOR, 0x09, 10, sec,
        VENDOR, 0x0A, 10, usec,
        VENDOR, 0x0B, 7, PROTO_SIP,
        VENDOR, 0x0C, 10, capture_id,
    )
    return b"".join((head, corr, _CHUNK.pack(VENDOR, 0x0F, 6 + len(payload)), payload))


def packet_of(c: Captured, capture_id: int) -> bytes:
    """The HEP packet of one captured message: the peer is the source of what the proxy
    received and the destination of what it sent."""
    data, t, inbound, transport, host, port, (local_host, local_port) = c
    proto = PROTO_UDP if transport == "udp" else PROTO_TCP
    if inbound:
        src, sport, dst, dport = host, port, local_host, local_port
    else:
        src, sport, dst, dport = local_host, local_port, host, port
    if (":" in src) != (":" in dst):  # an IPv4 peer on a dual-stack socket
        src, dst = _same_family(src, dst)
    return encode(src, sport, dst, dport, t, proto, capture_id, data, call_id_of(data))


def _same_family(a: str, b: str) -> tuple[str, str]:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) and an IPv4 one: both IPv4."""
    def v4(x: str) -> str:
        return x[7:] if x.lower().startswith("::ffff:") else x
    return v4(a), v4(b)


class HepSender:
    """The bounded queue and the non-blocking UDP socket that drains it on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, capture_id: int,
                 queue_size: int = QUEUE_SIZE) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.capture_id = capture_id
        self.queue: deque[Captured] = deque()
        self.queue_size = queue_size
        self.sent = 0
        self.dropped: Counter[str] = Counter()
        self._scheduled = False
        self._writer = False
        self._closed = False
        self._logged = float("-inf")

    @classmethod
    def connect(cls, loop: asyncio.AbstractEventLoop, host: str, port: int, capture_id: int,
                queue_size: int = QUEUE_SIZE) -> HepSender:
        """A sender to ``host:port`` (an IP literal), its socket connected (a plain ``send``)."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return cls(loop, sock, capture_id, queue_size)

    def push(self, c: Captured) -> None:
        """The tap: queue one message (or drop and count it when the queue is full)."""
        if len(self.queue) >= self.queue_size:
            self._drop("queue_full")
            return
        self.queue.append(c)
        if not self._scheduled and not self._writer:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        queue, sock, capture_id = self.queue, self.sock, self.capture_id
        for _ in range(BATCH):
            if not queue:
                break
            c = queue[0]
            try:
                packet = packet_of(c, capture_id)
            except OverflowError:
                queue.popleft()
                self._drop("too_big")
                continue
            except ValueError:
                queue.popleft()
                self._drop("bad_address")
                continue
            try:
                sock.send(packet)
            except BlockingIOError:  # the socket buffer is full: wait until it is writable
                self._wait_writable()
                return
            except OSError as exc:  # ECONNREFUSED (the collector's port is closed) and such
                queue.popleft()
                self._drop("send_error", exc)
                continue
            queue.popleft()
            self.sent += 1
        if queue and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain)  # the rest after the loop's other work

    def _wait_writable(self) -> None:
        if not self._writer:
            self._writer = True
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._writer = False
        self._drain()

    def _drop(self, reason: str, exc: OSError | None = None) -> None:
        self.dropped[reason] += 1
        now = self.loop.time()
        if now - self._logged >= 60.0:  # one line a minute at most
            self._logged = now
            why = f" ({errno.errorcode.get(exc.errno or 0, exc)})" if exc is not None else ""
            log.warning("HEP packets dropped: %s%s; %d so far (hep_dropped_total)", reason, why,
                        sum(self.dropped.values()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer:
            self.loop.remove_writer(self.sock.fileno())
            self._writer = False
        self.sock.close()
        self.queue.clear()
