"""UDP transport (RFC 3261 18.1.1 / 18.2.1): one datagram is one message.

Every datagram first meets the flood gate (:mod:`proxy.transport.udp_gate`,
``limits.udp_flood_rps``): a source far over the rate is dropped before its datagrams are
parsed, so that one flood cannot fill the socket's queue in front of everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from time import monotonic

from proxy.transport.base import Deliver, Failed, Send, Source
from proxy.transport.conns import RateLimitedLog
from proxy.transport.stun import binding_response, is_stun
from proxy.transport.udp_gate import DROP, STARTED, FloodGate
from proxy.transport.udp_order import NEW, NewRequests

log = logging.getLogger("proxy.transport.udp")

#: at most one line a second for the episodes that start, and one for those that end (a
#: flood from many sources is summed up in the next line)
EPISODE_LOG_INTERVAL = 1.0
#: ``Source``'s tuple made directly (``_tuple(Source, ("udp", host, port, None))``): the
#: NamedTuple's own ``__new__`` is interpreted, and runs for every datagram
_tuple = tuple.__new__


class UdpEndpoint(asyncio.DatagramProtocol):
    """A bound UDP socket: hands each datagram to ``deliver`` and sends datagrams.

    A :class:`~proxy.transport.base.Transport`: :meth:`send` takes a :class:`Send`; a send the
    socket refuses is logged and its token handed to ``failed`` (from the event loop).
    """

    def __init__(
        self, deliver: Deliver, keepalive: Callable[[Source], None] | None = None,
        failed: Failed | None = None, gate: FloodGate | None = None,
    ) -> None:
        self._deliver = deliver
        self._keepalive = keepalive
        self._failed = failed
        self._gate = gate if gate else None
        self.say = RateLimitedLog(log, EPISODE_LOG_INTERVAL, "at most once a second")
        self.transport: asyncio.DatagramTransport | None = None
        #: with overload control: new requests handled after the calls in progress
        #: (:mod:`proxy.transport.udp_order`)
        self.order: NewRequests | None = None
        #: with ``workers_spread: call``: True for a SIP message it handed on to the worker
        #: that handles it (``proxy.runtime.handoff``), after the flood gate
        self.pass_on: Callable[[bytes, tuple[str, int]], bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        gate = self._gate
        if gate is not None:
            verdict = gate.admit(addr[0], addr[1], monotonic())
            if verdict:
                if verdict == DROP:
                    return
                self._episode(gate, verdict, addr[0])
                if verdict == STARTED:
                    return
        if len(data) > 4 and data[0] > 1:  # not a keep-alive: a SIP message (or garbage)
            pass_on = self.pass_on
            if pass_on is None or not pass_on(data, addr):
                self.handed(data, addr)
            return
        # CRLF keep-alives (RFC 5626 4.4.1 allows STUN on UDP; bare CRLFs are common) are ignored.
        if len(data) <= 4 and not data.strip():
            if self._keepalive is not None:
                self._keepalive(Source("udp", addr[0], addr[1]))
            return
        if data[0] < 2 and is_stun(data):
            # RFC 5626 4.4.2 / RFC 5389: a STUN Binding keep-alive on a SIP port.
            answer = binding_response(data, addr)
            if answer is not None and self.transport is not None:
                self.transport.sendto(answer, addr)
            if self._keepalive is not None:
                self._keepalive(Source("udp", addr[0], addr[1]))
            return
        self._deliver(data, Source("udp", addr[0], addr[1]))

    def handed(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        """A SIP message this endpoint handles: read from its socket, or handed on by the
        worker that read it (``proxy.runtime.handoff``)."""
        order = self.order
        if order is not None and order.active and data.startswith(NEW):
            order.hold(data, _tuple(Source, ("udp", addr[0], addr[1], None)))
        else:
            self._deliver(data, _tuple(Source, ("udp", addr[0], addr[1], None)))

    def _episode(self, gate: FloodGate, verdict: int, host: str) -> None:
        """One line when a source's datagrams start being dropped, one when that ends."""
        if verdict == STARTED:
            self.say("flood", logging.WARNING, "dropping the datagrams of %s before they are "
                     "parsed: more than %d within %g s (limits.udp_flood_rps), until it sends "
                     "no more than that for %g s", gate.key(host), gate.rate, gate.window,
                     gate.window)
        else:
            key, since, last, dropped = gate.ended
            self.say("flood_end", logging.WARNING, "datagrams of %s admitted again: %d "
                     "dropped over %.1f s", key, dropped, last + gate.window - since)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) arrive here, detached from the datagram that caused
        # them; the transaction layer's timers handle the missing answer.
        log.debug("udp error: %s", exc)

    def send(self, s: Send) -> None:
        try:
            if self.transport is None:
                raise OSError("udp endpoint not bound")
            self.transport.sendto(s.data, (s.host, s.port))
        except OSError as exc:
            log.warning("udp send to %s:%s failed: %s", s.host, s.port, exc)
            if s.token is not None and self._failed is not None:
                asyncio.get_running_loop().call_soon(self._failed, s.token)


async def open_udp(
    host: str, port: int, deliver: Deliver, keepalive: Callable[[Source], None] | None = None,
    failed: Failed | None = None, gate: FloodGate | None = None, *, reuse_port: bool = False,
    sock: socket.socket | None = None,
    endpoint: Callable[[], UdpEndpoint] | None = None,
) -> UdpEndpoint:
    """A UDP endpoint bound to ``host:port``; ``reuse_port``: with SO_REUSEPORT, so that the
    processes of one proxy (README "Workers") share the address and the kernel spreads the
    datagrams among them (by a hash of the source and destination addresses). ``sock``: a
    socket bound already (``host`` and ``port`` are then not used); ``endpoint``: makes the
    protocol (default: a :class:`UdpEndpoint` of the arguments)."""
    loop = asyncio.get_running_loop()
    make = endpoint or (lambda: UdpEndpoint(deliver, keepalive, failed, gate))
    if sock is not None:
        _, protocol = await loop.create_datagram_endpoint(make, sock=sock)
    else:
        _, protocol = await loop.create_datagram_endpoint(
            make, local_addr=(host, port), reuse_port=reuse_port or None)
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if sock is not None:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
    return protocol
