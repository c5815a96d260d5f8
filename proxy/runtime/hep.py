"""HEPv3 export (``hep: {to: udp:HOST:PORT, id: N}``): every SIP message the proxy receives or
sends, as it went on the wire, in one HEPv3 packet to a Homer / heplify collector (the packet
format, the queue and its drain: :mod:`proxy.sip.capture`, compiled).

Nothing of this happens on the message path: the tap appends the message to a bounded queue;
the queue is drained every :data:`INTERVAL` seconds (a batch then, not one message per loop
iteration) by a non-blocking, connected UDP socket, which encodes each message (its Call-ID,
the correlation chunk, found by a byte search then). The packets carry the time the tap saw
each message, not the time they leave.
Whatever cannot go is dropped and counted (``hep_dropped_total{reason}``), never waited for:

- ``queue_full``: the queue held :data:`QUEUE_SIZE` messages (the socket would block);
- ``refused``: the collector's port is closed (an ICMP port unreachable came back as
  ``ECONNREFUSED``): for :data:`PAUSE` seconds the tap queues nothing (it counts), then the
  collector is tried again;
- ``send_error``, ``too_big`` (over one datagram), ``bad_address``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter, deque
from collections.abc import Callable

from proxy.sip.capture import BLOCKED, REFUSED, Captured, HepDrain, HepEncoder

log = logging.getLogger("proxy.hep")

QUEUE_SIZE = 4096  # messages waiting for the socket; past it they are dropped and counted
BATCH = 512  # packets sent per drain before the loop gets a turn
INTERVAL = 0.005  # seconds between the first message queued and the drain
PAUSE = 1.0  # seconds without sending after the collector refused
DROP_REASONS = ("queue_full", "refused", "send_error", "too_big", "bad_address")


class HepSender:
    """Drains ``queue`` (the tap's, set by the runtime) through the UDP socket ``sock``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 encoder: HepEncoder) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.drain = HepDrain(encoder)
        self.queue: deque[Captured] = deque()
        self.full: Callable[[], int] = lambda: 0  # drops counted by the tap (queue full)
        #: the tap's pause (the collector refused): set it, and how many it counted
        self.pause: Callable[[bool], None] = lambda on: None
        self.paused_count: Callable[[], int] = lambda: 0
        self.refused = 0  # messages dropped when the collector refused
        self._scheduled = False
        self._writer = False
        self._closed = False
        self._logged: dict[str, float] = {}
        self._seen = Counter[str]()
        self._reported = 0

    @classmethod
    def connect(cls, loop: asyncio.AbstractEventLoop, host: str, port: int, encoder: HepEncoder,
                ) -> HepSender:
        """A sender to ``host:port`` (an IP literal), its socket connected (a plain ``send``)."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return cls(loop, sock, encoder)

    @property
    def sent(self) -> int:
        return self.drain.sent

    def dropped(self) -> Counter[str]:
        d = self.drain
        return Counter({"queue_full": self.full(),
                        "refused": self.refused + self.paused_count(),
                        "send_error": d.send_errors, "too_big": d.too_big,
                        "bad_address": d.bad_address})

    def wake(self) -> None:
        """The queue stopped being empty: drain it :data:`INTERVAL` seconds from now."""
        if not self._scheduled and not self._writer and not self._closed:
            self._scheduled = True
            self.loop.call_later(INTERVAL, self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        queue = self.queue
        status = self.drain.run(queue, self.sock.send, BATCH)
        if status == BLOCKED:  # the socket buffer is full: wait until it is writable
            self._writer = True
            self.loop.add_writer(self.sock.fileno(), self._writable)
        elif status == REFUSED:  # nothing queued for a while: the tap counts instead
            self.refused += len(queue)
            queue.clear()
            self.pause(True)
            self.loop.call_later(PAUSE, self.pause, False)
        elif queue:
            self._scheduled = True
            self.loop.call_soon(self._drain)  # the rest after the loop's other work
        self._report()

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._writer = False
        self._drain()

    def _report(self) -> None:
        """A warning per kind of drop, at most one a minute (nothing to do, cheaply, when
        nothing was dropped since the last drain)."""
        d = self.drain
        total = self.full() + self.refused + self.paused_count() + d.send_errors + d.too_big \
            + d.bad_address
        if total == self._reported:
            return
        self._reported = total
        now = self.loop.time()
        for reason, count in self.dropped().items():
            if count > self._seen[reason]:
                self._seen[reason] = count
                if now - self._logged.get(reason, float("-inf")) >= 60.0:
                    self._logged[reason] = now
                    code = self.drain.last_error
                    why = f" ({errno.errorcode.get(code, code)})" if reason == "send_error" \
                        else ""
                    log.warning("HEP packets dropped: %s%s; %d so far (hep_dropped_total)",
                                reason, why, count)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer:
            self.loop.remove_writer(self.sock.fileno())
            self._writer = False
        self.sock.close()
        self.queue.clear()
