"""Workers sharing the load of one UDP source: the spread and the hand-off (README "Workers").

With SO_REUSEPORT alone the kernel picks the worker of a datagram by a hash of its addresses,
so every datagram of one source (a PBX trunk's one socket, a sipp UAC) reaches the same worker
while the others idle. With ``workers_spread: call`` each worker attaches to its listener's SO_REUSEPORT group a classic
BPF program that picks the socket of each datagram at random (:func:`spread`,
``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5; the kernel hashes as before if the program's answer
is no socket of the group, as while a worker restarts), and a worker that reads a datagram
another worker must handle passes it on over a socketpair (:class:`HandOff`). Which worker
handles a message (:func:`owner`):

* **a request**: the worker of its Call-ID (CRC-32 of it, modulo the workers). A
  retransmission, the CANCEL and the ACK of an INVITE, and every request of one call carry
  its Call-ID (RFC 3261 8.1.1.4, 9.1, 17.1.1.3), so they reach the worker holding its
  transactions, which matches them by branch (RFC 3261 17.2.3);
* **a response**: the worker whose own port its top Via names (the worker that forwarded the
  request wrote it there: RFC 3261 18.2.2 sends the response to it; a peer that answers to the
  shared address instead lands here); else the worker of its Call-ID;
* a message without either (garbage, a keep-alive): the worker that read it (it answers 400
  or drops it).

**Trust.** A datagram handed on carries the source address the kernel gave the worker that
read it, never one from the message: the socketpairs are made by the supervisor before it
forks and held by the workers only (no address on any network reaches them). The flood gate
(``limits.udp_flood_rps``) counts in the worker that reads a datagram, before the hand-off;
each worker reads about 1/N of a source's datagrams, so each counts against 1/N of the rate
(:func:`gate_share`). A worker that is down (restarting) gets nothing handed on until the
socketpair's buffer is full; past that a datagram is dropped, logged once a second and
counted (``sip_policy_proxy_handoffs_total{result="dropped"}``): the sender retransmits.

**Cost.** About (N-1)/N of the requests (1.5 a call with two workers) are read by one worker
and handled by another: some 7 µs of CPU each (both ends, a socketpair microbenchmark) and,
mostly, a second process woken. On a 2-core machine shared with sipp, two workers so spread
took 1.2 to 1.3 times one worker's CPU per call (clean to 2,800 calls/s against 2,400), and
1.7 to 1.9 times with a packet capture running too (clean to 2,000 against 2,400 and 3,200)
(``bench/run.py --workers 1,2``, 2026-12-07); hence not the default (``source``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import socket
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from proxy.runtime.metrics import PREFIX
from proxy.sip.capture import call_id_of
from proxy.transport.conns import RateLimitedLog

log = logging.getLogger("proxy.workers")

#: setsockopt option of a classic BPF program choosing the socket of a SO_REUSEPORT group
#: (include/uapi/asm-generic/socket.h)
SO_ATTACH_REUSEPORT_CBPF = 51
#: ``ld rand``: SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM (56), as the unsigned 32-bit ``k``
_LD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_RET_A = 0x20, 0x94, 0x16
#: each socketpair's send buffer: a burst of datagrams waits here while the worker is busy
BUFFER = 4 * 1024 * 1024
#: handed-on datagrams read a loop turn at most (as libuv reads a UDP socket)
READ_MOST = 32
#: the largest datagram handed on, with its head (a UDP payload is at most 65,507 bytes)
MAX_HANDED = 65_535 + 128

_RESPONSE = b"SIP/2.0 "
_END = b"\r\n\r\n"
#: the port of a top Via over UDP (RFC 3261 20.42; LWS around the slashes, 25.1)
_VIA_PORT = re.compile(
    rb"\n(?:via|v)[ \t]*:[ \t]*sip[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*udp[ \t]+"
    rb"(?:\[[^\]\r\n]*\]|[^\s;:,\[\]]+)[ \t]*:[ \t]*(\d{1,5})", re.IGNORECASE)


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


class _Socket(Protocol):  # a socket, or uvloop's pseudo-socket of a transport
    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...


def spread(sock: _Socket, count: int) -> bool:
    """Have the kernel pick the socket of each datagram of ``sock``'s SO_REUSEPORT group at
    random among ``count`` (``ld rand; mod #count; ret a``); False, logged, when it refuses
    (the group then picks by the datagram's addresses, and the hand-off still holds)."""
    insns = (_Insn * 3)(_Insn(_BPF_LD_W_ABS, 0, 0, _LD_RANDOM),
                        _Insn(_BPF_ALU_MOD_K, 0, 0, count), _Insn(_BPF_RET_A, 0, 0, 0))
    prog = _Prog(3, ctypes.cast(insns, ctypes.POINTER(_Insn)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog)))
    except OSError as exc:
        log.warning("the kernel does not spread one source's datagrams among the workers "
                    "(SO_ATTACH_REUSEPORT_CBPF: %s): it picks a worker by source address", exc)
        return False
    return True


def owner(data: bytes, count: int, ports: dict[int, int]) -> int:
    """The worker (0 to ``count`` - 1) that handles SIP message ``data`` (module docstring),
    or -1 when it names none (the worker that read it handles it). ``ports``: each worker's
    own UDP port -> its index. The Call-ID is the tracing's byte search
    (:func:`proxy.sip.capture.call_id_of`, compiled)."""
    if data.startswith(_RESPONSE):
        end = data.find(_END)
        m = _VIA_PORT.search(data, 0, end if end >= 0 else len(data))
        if m is not None:
            worker = ports.get(int(m.group(1)))
            if worker is not None:
                return worker
    call_id = call_id_of(data)
    return -1 if call_id is None else zlib.crc32(call_id) % count


class Receiver(Protocol):
    """A listener's endpoint, as the hand-off gives it a datagram another worker read."""

    def handed(self, data: bytes, addr: tuple[str, int]) -> None: ...


class HandOff:
    """One worker's end of the hand-off: passes on what another worker handles, and takes
    what the others pass to it (module docstring).

    ``inbox``: the socket this worker reads; ``outboxes[i]``: the one that reaches worker
    ``i`` (None for this worker); ``ports``: every worker's own UDP port -> its index."""

    def __init__(self, index: int, inbox: socket.socket,
                 outboxes: list[socket.socket | None], ports: dict[int, int]) -> None:
        self.index = index
        self.count = len(outboxes)
        self.inbox = inbox
        self.outboxes = outboxes
        self.ports = ports
        self.receivers: dict[int, Receiver] = {}  # by position in config.listen
        self.passed = 0  # datagrams handed on to another worker
        self.taken = 0  # datagrams another worker handed on to this one
        self.dropped = 0  # datagrams that could not be handed on (the buffer was full)
        self.say = RateLimitedLog(log, 1.0, "at most once a second")
        self._loop: asyncio.AbstractEventLoop | None = None

    def listener(self, position: int, receiver: Receiver
                 ) -> Callable[[bytes, tuple[str, int]], bool]:
        """The check of listener ``position``'s datagrams: True when one was handed on (or
        dropped trying), False when this worker handles it."""
        self.receivers[position] = receiver
        head = b"%d " % position
        index, count, ports, outboxes = self.index, self.count, self.ports, self.outboxes

        def pass_on(data: bytes, addr: tuple[str, int]) -> bool:
            worker = owner(data, count, ports)
            if worker < 0 or worker == index:
                return False
            box = outboxes[worker]
            assert box is not None
            try:
                box.send(b"%s%d %s\n%s" % (head, addr[1], addr[0].encode(), data))
            except OSError as exc:
                self.dropped += 1
                self.say("dropped", logging.WARNING, "a datagram from %s:%s for worker %d is "
                         "dropped: %s (the worker is busy or restarting)", addr[0], addr[1],
                         worker, exc)
                return True
            self.passed += 1
            return True

        return pass_on

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.inbox.fileno(), self.read)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.inbox.fileno())
            self._loop = None

    def read(self) -> None:
        """Take up to :data:`READ_MOST` datagrams the other workers handed on."""
        inbox, receivers = self.inbox, self.receivers
        for _ in range(READ_MOST):
            try:
                got = inbox.recv(MAX_HANDED)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.say("inbox", logging.WARNING, "hand-off socket: %s", exc)
                return
            nl = got.find(b"\n")
            position, port, host = got[:nl].split(b" ", 2)
            receiver = receivers.get(int(position))
            if receiver is not None:
                self.taken += 1
                receiver.handed(got[nl + 1:], (host.decode(), int(port)))

    def collector(self) -> HandOffCollector:
        return HandOffCollector(self)


class HandOffCollector:
    """``sip_policy_proxy_handoffs_total{result}``: datagrams this worker read and ``passed`` on to
    the worker that handles them, ``taken`` from the others, ``dropped`` (not handed on)."""

    def __init__(self, handoff: HandOff) -> None:
        self.handoff = handoff

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        h = self.handoff
        fam = CounterMetricFamily(PREFIX + "handoffs", "UDP datagrams one worker read and "
                                  "another handles (workers: N), by result", labels=["result"])
        for result, n in (("passed", h.passed), ("taken", h.taken), ("dropped", h.dropped)):
            fam.add_metric([result], n)
        yield fam


def channels(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One socketpair per worker (the supervisor's, before it forks): ``(outbox, inbox)``;
    the others send on the outbox, the worker reads the inbox. A socketpair's datagrams are
    held by the send buffer alone (no ``net.unix.max_dgram_qlen`` limit between the two ends
    of a pair)."""
    out = []
    for _ in range(count):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setblocking(False)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
                except OSError:
                    pass
        out.append((a, b))
    return out


def gate_share(rate: float, count: int) -> float:
    """The flood gate's rate in each of ``count`` workers that each read about 1/count of a
    source's datagrams."""
    return max(1.0, rate / count)


__all__ = ["HandOff", "channels", "gate_share", "owner", "spread"]
