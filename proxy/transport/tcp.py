"""TCP transport: stream framing, connection reuse, outgoing connects (RFC 3261 18.3, 18.2.2).

Each connection gets an integer id; the core names it in :class:`Source` and :class:`Send`.
Messages for a destination without a usable connection wait while one is opened; if the
connect fails, each waiting send with a token is reported back as a transport error.

Limits (``limits.tcp_max_connections``, ``limits.tcp_idle_timeout``): past ``max_connections``
open connections an accepted one is closed at once (the open ones are not touched); a
connection over which no complete message (nor keep-alive) arrived in the ``idle_timeout``
seconds after it was opened, and which carries no binding (``in_use``), is closed: a
connection that has carried SIP stays (closing it would cut the flow of a dialog, RFC 5626
5.3: the other side's in-dialog requests would get 430). TLS
(:mod:`proxy.transport.tls`) is this same machinery over an ``ssl.SSLContext``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from proxy.sip import FramingError, StreamFramer
from proxy.transport.base import Deliver, Failed, Send, Source

log = logging.getLogger("proxy.transport.tcp")

_ids = itertools.count(1)
_REFUSAL_LOG_INTERVAL = 60.0


class SipStream(asyncio.Protocol):
    """One TCP (or TLS) connection carrying SIP messages in both directions."""

    def __init__(self, manager: TcpManager, outgoing: bool = False) -> None:
        self.manager = manager
        self.outgoing = outgoing
        self.conn_id = next(_ids)
        self.framer = StreamFramer(manager.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.closed = False
        self.refused = False
        self.aliases: list[tuple[str, int]] = []  # RFC 5923: other addresses it stands for
        self.messages = 0  # complete messages and keep-alives received
        self.last_active = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        if not self.outgoing and len(self.manager.conns) >= self.manager.max_connections:
            # limits.tcp_max_connections: refuse the newcomer, keep the open ones.
            self.refused = True
            self.manager.refuse(self)
            transport.abort()  # type: ignore[attr-defined]
            return
        self.manager.register(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            # RFC 4475 ncl / mcl01: framing is lost on a stream; close the connection.
            log.info("closing %s %s:%s: %s", self.manager.name, self.peer[0], self.peer[1],
                     exc.message)
            self.manager.framing_errors += 1
            self.close()
            return
        if messages:
            self.messages += len(messages)
            self.last_active = time.monotonic()
        src = Source(self.manager.name, self.peer[0], self.peer[1], self.conn_id)
        for m in messages:
            if m is None:
                self.write(b"\r\n")  # RFC 5626 4.4.1: CRLF pong for a CRLFCRLF ping
            else:
                self.manager.deliver(m, src)
        self._arm_idle()

    def _arm_idle(self) -> None:
        """A partial message that never completes (RFC 4475 clerr on TCP) closes the connection."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.framer.buffered:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.manager.partial_timeout, self._partial_expired)

    def _partial_expired(self) -> None:
        log.info("closing %s %s:%s: incomplete message", self.manager.name, self.peer[0],
                 self.peer[1])
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.last_active = time.monotonic()
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        if not self.refused:
            self.manager.unregister(self)


class TcpManager:
    """Listening sockets plus the table of open connections, by id and by peer address.

    A :class:`~proxy.transport.base.Transport`: :meth:`send` takes a :class:`Send`.
    """

    name = "tcp"

    def __init__(
        self, deliver: Deliver, failed: Failed, *, max_size: int = 65535,
        partial_timeout: float = 32.0, connect_timeout: float = 5.0,
        closed: Callable[[int], None] | None = None, max_connections: int = 4096,
        idle_timeout: float | None = None, in_use: Callable[[int], bool] | None = None,
    ) -> None:
        self.deliver = deliver
        self.failed = failed
        self.closed = closed
        self.max_size = max_size
        self.partial_timeout = partial_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.in_use = in_use
        self.conns: dict[int, SipStream] = {}
        self.by_peer: dict[tuple[str, int], SipStream] = {}
        self.servers: list[asyncio.Server] = []
        self.framing_errors = 0
        self.refused = 0  # connections refused past max_connections
        self.idle_closed = 0
        self._refusal_logged = float("-inf")
        self._connecting: dict[tuple[str, int], list[Send]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SipStream(self), host, port, reuse_address=True,
                                          backlog=1024)
        self.servers.append(server)
        self._start_sweep()

    def register(self, s: SipStream) -> None:
        self.conns[s.conn_id] = s
        self.by_peer[s.peer] = s
        self._start_sweep()

    def unregister(self, s: SipStream) -> None:
        self.conns.pop(s.conn_id, None)
        for key in (s.peer, *s.aliases):
            if self.by_peer.get(key) is s:
                del self.by_peer[key]
        if self.closed is not None:
            self.closed(s.conn_id)  # RFC 5626 5.3: its flows are dead

    def refuse(self, s: SipStream) -> None:
        """Count a connection refused past ``max_connections``; log once a minute."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            log.warning("refused %s connection from %s:%s: %d connections open "
                        "(limits.tcp_max_connections); counted, logged once a minute",
                        self.name, s.peer[0], s.peer[1], len(self.conns))

    # -------------------------------------------------------------- idle connections

    def _start_sweep(self) -> None:
        if self._sweep is None and self.idle_timeout:
            period = min(5.0, max(0.2, self.idle_timeout / 4))
            self._sweep = asyncio.get_running_loop().call_later(period, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the connections that carried no message in ``idle_timeout`` seconds since
        they were opened and carry no binding."""
        self._sweep = None
        assert self.idle_timeout is not None
        horizon = time.monotonic() - self.idle_timeout
        idle = [c for c in self.conns.values()
                if not c.messages and c.last_active < horizon and not c.closed]
        for c in idle:
            if self.in_use is not None and self.in_use(c.conn_id):
                continue
            self.idle_closed += 1
            log.debug("closing idle %s %s:%s", self.name, c.peer[0], c.peer[1])
            c.close()
        if idle:
            log.info("closed %d idle %s connections (limits.tcp_idle_timeout %g s)", len(idle),
                     self.name, self.idle_timeout)
        if self.conns or self.servers:
            self._start_sweep()

    # -------------------------------------------------------------- sending

    def send(self, s: Send) -> None:
        conn = self.conns.get(s.conn_id) if s.conn_id is not None else None
        if conn is None or conn.closed:
            conn = self.by_peer.get((s.host, s.port))
        if conn is not None and not conn.closed:
            conn.write(s.data)
            return
        key = (s.host, s.port)
        waiting = self._connecting.get(key)
        if waiting is not None:
            waiting.append(s)
            return
        self._connecting[key] = [s]
        task = asyncio.get_running_loop().create_task(self._connect(key, s.server_name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, host: str, port: int, server_name: str | None) -> SipStream:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: SipStream(self, True), host, port)
        return proto

    async def _connect(self, key: tuple[str, int], server_name: str | None = None) -> None:
        try:
            proto = await asyncio.wait_for(self._open(key[0], key[1], server_name),
                                           self.connect_timeout)
        except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s connect to %s:%s failed: %s", self.name, key[0], key[1], exc)
            for s in self._connecting.pop(key, []):
                if s.token is not None:
                    self.failed(s.token)
            return
        for s in self._connecting.pop(key, []):
            proto.write(s.data)

    def close(self) -> None:
        self.idle_timeout = None  # no sweep any more
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for server in self.servers:
            server.close()
        for conn in list(self.conns.values()):
            conn.close()
        for task in self._tasks:
            task.cancel()
