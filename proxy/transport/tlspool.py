"""TLS handshakes off the event loop: a small pool of threads that run the server side of a
handshake (:meth:`TlsSession.receive <proxy.transport.tlssession.TlsSession.receive>` until
the handshake is over) and hand each result back to the loop.

Why: a server handshake costs 0.3 to 0.7 ms of CPU (OpenSSL 3.0, an ECDSA P-256 certificate,
X25519), almost all of it inside ``SSL_do_handshake``. On the loop, a burst of 500 ClientHellos
(what ``limits.tcp_accept_rate`` lets in per second) held it for 250 to 350 ms in one turn, and
every other connection, datagram and timer waited behind them (bench/hostile.py attacks 6 and
7a). CPython's ``_ssl`` releases the GIL around ``SSL_do_handshake``, so in a thread the
handshake runs beside the loop instead of in it: the loop only queues the bytes and, later,
writes the records the handshake produced.

Bounds: ``workers`` threads (one by default: 1,500 to 3,000 handshakes a second, above the
accept rate), at most ``max_queued`` steps waiting (a step is one batch of bytes from one
connection); :meth:`HandshakePool.submit` says no past that, and the connection is closed.
A connection keeps its slot of the table (``limits.tcp_per_source``,
``tcp_max_connections``) while its step waits or runs, and its handshake timeout runs too: a
connection closed meanwhile is skipped, and its TLS state is freed when the step comes back.

Order: the steps wait on the loop's side, one queue per source (an address, an IPv6 /64),
and the workers are fed one step of each source in turn (round robin), only a few at a time.
A source that opened hundreds of handshakes does not hold up the next source's one: a
legitimate client waits for one step of each source with steps waiting, not for all of
them (bench/hostile.py 7a: 500 ClientHellos at once from 17 sources; first come, first
served, a legitimate TLS client's handshake waited behind all 500, 200 to 570 ms). The
upstreams' and trusted relays' connections go first.

Thread rule: while a step of a connection is out (:attr:`Step.conn` is in flight), only the
worker touches that connection's :class:`TlsSession`; the loop touches it again in
:meth:`HandshakeClient.handshaken`, which the pool calls on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import threading
from collections import OrderedDict, deque
from typing import Protocol

from proxy.transport.tlssession import TlsSession

__all__ = ["HandshakeClient", "HandshakePool", "Step"]

log = logging.getLogger("proxy.transport.tls")

#: steps waiting for a worker, at most: a second of the default accept rate (500) twice over,
#: some 0.3 to 0.7 s of work for one worker, well inside the handshake timeout (5 s)
MAX_QUEUED = 1024


class HandshakeClient(Protocol):
    """What the pool asks of a connection (:class:`~proxy.transport.tcp.SipStream`)."""

    closed: bool

    def handshaken(self, step: Step) -> None: ...


class Step:
    """One batch of bytes for one connection's handshake, and what the worker made of it."""

    __slots__ = ("conn", "data", "error", "out", "plain", "ran", "tls")

    def __init__(self, conn: HandshakeClient, tls: TlsSession, data: bytes) -> None:
        self.conn = conn
        self.tls = tls
        self.data = data
        self.plain = b""  # application data that came with the last handshake flight
        self.out = b""  # records to write back
        self.error: ssl.SSLError | None = None
        self.ran = False  # False: skipped, the connection was closed before a worker took it

    def run(self) -> None:
        """In a worker thread."""
        if self.conn.closed:
            return
        self.ran = True
        try:
            self.plain, self.out = self.tls.receive(self.data)
        except ssl.SSLError as exc:
            self.error = exc


class HandshakePool:
    """Worker threads for handshake steps, fed one source at a time; results go back to the
    loop in batches (one wake-up of the loop for all the steps finished since the last)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: int = 1,
                 max_queued: int = MAX_QUEUED) -> None:
        self.loop = loop
        self.max_queued = max_queued
        self.queued = 0  # steps submitted and not handed back yet (the loop's count)
        self.steps = 0  # steps handed back, in all
        #: steps not given to a worker yet: the trusted ones, then one queue per source
        self._first: deque[Step] = deque()
        self._waiting: OrderedDict[str, deque[Step]] = OrderedDict()
        self._out = 0  # steps given to the workers and not back
        self._depth = 2 * workers  # at most this many out: each worker has its next one
        self._jobs: queue.SimpleQueue[Step | None] = queue.SimpleQueue()
        self._done: deque[Step] = deque()
        self._wake = False  # a hand-back is scheduled on the loop
        self._threads = [threading.Thread(target=self._work, name=f"tls-handshake-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, conn: HandshakeClient, tls: TlsSession, data: bytes, source: str = "",
               first: bool = False) -> bool:
        """Queue a step of ``source``'s (on the loop's thread; ``first``: a trusted peer's,
        ahead of the others); False when ``max_queued`` steps wait."""
        if self.queued >= self.max_queued:
            return False
        self.queued += 1
        step = Step(conn, tls, data)
        if first:
            self._first.append(step)
        else:
            mine = self._waiting.get(source)
            if mine is None:
                mine = self._waiting[source] = deque()
            mine.append(step)
        self._feed()
        return True

    def _next(self) -> Step | None:
        if self._first:
            return self._first.popleft()
        if not self._waiting:
            return None
        source, mine = self._waiting.popitem(last=False)
        step = mine.popleft()
        if mine:
            self._waiting[source] = mine  # its next step after one of every other source's
        return step

    def _feed(self) -> None:
        """Give the workers steps until each has one running and one next (round robin over
        the sources); a step whose connection closed meanwhile comes back at once."""
        while self._out < self._depth:
            step = self._next()
            if step is None:
                return
            if step.conn.closed:
                self.queued -= 1
                self.steps += 1
                step.conn.handshaken(step)  # skipped: its TLS state is freed
                continue
            self._out += 1
            self._jobs.put(step)

    def _work(self) -> None:
        jobs, done = self._jobs, self._done
        while True:
            step = jobs.get()
            if step is None:
                return
            try:
                step.run()
            except Exception:  # never lose a step: the loop must hear of each one
                log.exception("TLS handshake step failed")
                step.error = ssl.SSLError("handshake step failed")
            done.append(step)
            # The loop clears the flag before it empties the deque: a step appended after
            # its last pop finds the flag cleared and schedules the next hand-back.
            if not self._wake:
                self._wake = True
                try:
                    self.loop.call_soon_threadsafe(self._hand_back)
                except RuntimeError:  # the loop is closed: nobody to hand back to
                    return

    def _hand_back(self) -> None:
        """On the loop's thread: every finished step to its connection."""
        self._wake = False
        done = self._done
        while done:
            step = done.popleft()
            self._out -= 1
            self.queued -= 1
            self.steps += 1
            step.conn.handshaken(step)
        self._feed()

    def close(self) -> None:
        """Stop the workers once the steps queued before are done (they are not joined)."""
        for _ in self._threads:
            self._jobs.put(None)
