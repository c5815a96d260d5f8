"""TCP transport: stream framing, connection reuse, outgoing connects (RFC 3261 18.3, 18.2.2).

Each connection gets an integer id; the core names it in :class:`Source` and :class:`Send`.
Messages for a destination without a usable connection wait while one is opened; if the
connect fails, each waiting send with a token is reported back as a transport error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from proxy.sip import FramingError, StreamFramer
from proxy.transport.base import Deliver, Failed, Send, Source

log = logging.getLogger("proxy.transport.tcp")

_ids = itertools.count(1)


class SipStream(asyncio.Protocol):
    """One TCP connection carrying SIP messages in both directions."""

    def __init__(self, manager: TcpManager) -> None:
        self.manager = manager
        self.conn_id = next(_ids)
        self.framer = StreamFramer(manager.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.closed = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.manager.register(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            # RFC 4475 ncl / mcl01: framing is lost on a stream; close the connection.
            log.info("closing tcp %s:%s: %s", self.peer[0], self.peer[1], exc.message)
            self.manager.framing_errors += 1
            self.close()
            return
        src = Source("tcp", self.peer[0], self.peer[1], self.conn_id)
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
        log.info("closing tcp %s:%s: incomplete message", self.peer[0], self.peer[1])
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        self.manager.unregister(self)


class TcpManager:
    """Listening sockets plus the table of open connections, by id and by peer address.

    A :class:`~proxy.transport.base.Transport`: :meth:`send` takes a :class:`Send`.
    """

    def __init__(
        self, deliver: Deliver, failed: Failed, *, max_size: int = 65535,
        partial_timeout: float = 32.0, connect_timeout: float = 5.0,
        closed: Callable[[int], None] | None = None,
    ) -> None:
        self.deliver = deliver
        self.failed = failed
        self.closed = closed
        self.max_size = max_size
        self.partial_timeout = partial_timeout
        self.connect_timeout = connect_timeout
        self.conns: dict[int, SipStream] = {}
        self.by_peer: dict[tuple[str, int], SipStream] = {}
        self.servers: list[asyncio.Server] = []
        self.framing_errors = 0
        self._connecting: dict[tuple[str, int], list[Send]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SipStream(self), host, port, reuse_address=True)
        self.servers.append(server)

    def register(self, s: SipStream) -> None:
        self.conns[s.conn_id] = s
        self.by_peer[s.peer] = s

    def unregister(self, s: SipStream) -> None:
        self.conns.pop(s.conn_id, None)
        if self.by_peer.get(s.peer) is s:
            del self.by_peer[s.peer]
        if self.closed is not None:
            self.closed(s.conn_id)  # RFC 5626 5.3: its flows are dead

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
        task = asyncio.get_running_loop().create_task(self._connect(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, key: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: SipStream(self), key[0], key[1]),
                self.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            log.warning("tcp connect to %s:%s failed: %s", key[0], key[1], exc)
            for s in self._connecting.pop(key, []):
                if s.token is not None:
                    self.failed(s.token)
            return
        for s in self._connecting.pop(key, []):
            proto.write(s.data)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.conns.values()):
            conn.close()
        for task in self._tasks:
            task.cancel()
