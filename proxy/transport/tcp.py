"""TCP transport: stream framing, connection reuse, outgoing connects (RFC 3261 18.3, 18.2.2).

Each connection gets an integer id, unique in the process; the core names it in
:class:`Source` and :class:`Send`. A :class:`Send` that names a connection goes over that
connection only, and only while it is open and its peer is the Send's address (RFC 5626 5.3:
a flow token from before a restart may name an id that now belongs to someone else); anything
else is a failed send, reported with the Send's token, never a write to another peer. A Send
without a connection reuses the one to its address or opens one; messages wait while it
opens, and if the connect fails each waiting send with a token is reported as a transport
error.

What a connection must do to keep its slot (``limits.tcp_max_connections``,
``tcp_per_source``, ``tcp_idle_timeout``, ``tcp_message_timeout``, the TLS handshake
timeout) is in :mod:`proxy.transport.conns`. TLS (:mod:`proxy.transport.tls`) is this same
machinery with a :class:`~proxy.transport.tlssession.TlsSession` between the socket and the
framer; the server side of its handshake runs in a thread of :mod:`proxy.transport.tlspool`,
never on the event loop.

One turn of the event loop reads at most :attr:`TcpManager.per_turn` stream messages; a
connection that has more to read then waits for the next turn, its reading paused and its
bytes kept in order, so that a burst from hundreds of connections is served in slices with
the loop's other work (a UDP call, timers) between them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable

from proxy.sip import FramingError, StreamFramer
from proxy.transport.base import Deliver, Failed, Send, Source
from proxy.transport.conns import AcceptRate, ConnStats, RateLimitedLog, source_key
from proxy.transport.tlspool import HandshakePool, Step
from proxy.transport.tlssession import TlsSession

log = logging.getLogger("proxy.transport.tcp")

_ids = itertools.count(1)
_PONG = b"\r\n"  # RFC 5626 4.4.1: the answer to a CRLFCRLF ping
#: bytes a TLS client may send while a step of its handshake is out in the pool (a client
#: certificate chain fits; a handshake is a few KB)
HANDSHAKE_BUFFER = 65536


class SipStream(asyncio.Protocol):
    """One TCP (or TLS) connection carrying SIP messages in both directions."""

    __slots__ = ("aliases", "closed", "conn_id", "delivered", "framer", "held", "hs_wait",
                 "last_sip", "manager", "opened", "outgoing", "partial_since", "peer", "ready",
                 "refused", "source", "src", "tls", "transport", "trusted", "waiter")

    def __init__(self, manager: TcpManager, outgoing: bool = False,
                 tls: TlsSession | None = None) -> None:
        self.manager = manager
        self.outgoing = outgoing
        self.tls = tls
        self.conn_id = next(_ids)
        self.framer = StreamFramer(manager.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.src = Source(manager.name, "", 0, self.conn_id)
        self.source = ""  # what it counts against for limits.tcp_per_source ("": outgoing)
        self.trusted = False  # an upstream's or a trusted relay's: no per-source or idle limit
        self.closed = False
        self.refused = False
        self.ready = False  # TCP: at once; TLS: once the handshake is over
        self.delivered = False  # a message went to the core: it may know this conn_id
        self.aliases: list[tuple[str, int]] = []  # RFC 5923: other addresses it stands for
        now = time.monotonic()
        self.opened = now
        self.last_sip = now  # last complete SIP message, either way (keep-alives excluded)
        self.partial_since = 0.0  # first byte of a message not complete yet; 0: none
        #: a handshake step is out in the pool (:mod:`proxy.transport.tlspool`): the bytes
        #: that came meanwhile; None: no step out, the loop may touch :attr:`tls`
        self.hs_wait: bytearray | None = None
        #: bytes read after the turn's message budget was spent (reading paused meanwhile):
        #: they wait for the next turn (:meth:`TcpManager.hold`)
        self.held: bytearray | None = None
        #: outgoing: resolved when the connection is ready (TLS: its handshake is over)
        self.waiter: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if outgoing else None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if not peer:
            # Reset by the peer before its accept was handled: no address to count it
            # against, nothing to serve (uvloop reports no peer name then).
            self.refused = True
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("connection reset before it was made"))
                waiter.exception()  # retrieved: nobody may be waiting any more
            transport.abort()  # type: ignore[attr-defined]
            return
        self.peer = (peer[0], peer[1])
        self.src = Source(self.manager.name, peer[0], peer[1], self.conn_id)
        m = self.manager
        self.trusted = m.exempt is not None and m.exempt(peer[0])
        if not self.outgoing:
            self.source = source_key(peer[0])
            reason = m.admit(self)
            if reason is not None:
                self.refused = True
                m.refuse(self, reason)
                transport.abort()  # type: ignore[attr-defined]
                return
        m.register(self)
        tls = self.tls
        if tls is None:
            self._link_up()
        elif not tls.server_side:
            try:
                transport.write(tls.hello())  # type: ignore[attr-defined]
            except ssl.SSLError as exc:
                m.drop(self, "tls", f"TLS: {exc}")

    def _link_up(self) -> None:
        """The link carries bytes (TCP at once; TLS once its handshake is over). A SIP stream
        is ready then; a WebSocket waits for its upgrade (:mod:`proxy.transport.ws`)."""
        self._ready()

    def _ready(self) -> None:
        self.ready = True
        self.last_sip = time.monotonic()  # the idle clock starts once it can carry SIP
        self.manager.ready(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.refused:
            return
        tls = self.tls
        if tls is not None:
            if self.hs_wait is not None or (not tls.done and tls.server_side):
                self._handshake_step(tls, data)
                return
            data = self._decrypt(tls, data)
            if not data:
                return
            if tls.eof:  # the last bytes: read now, after any that wait, then close
                self._take(data)
                self.take_held()
                self.close()
                return
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Bytes of the stream: read now, or held for the next turn of the loop when this
        turn's budget of stream messages is spent (or when bytes of this connection already
        wait: their order is kept)."""
        held = self.held
        if held is not None:
            held += data
            return
        m = self.manager
        if m.spent < m.per_turn:
            self._received(data)
            return
        self.held = bytearray(data)
        if self.transport is not None:
            self.transport.pause_reading()
        m.hold(self)

    def take_held(self) -> None:
        """The held bytes, now (the next turn, or before the connection is forgotten)."""
        held, self.held = self.held, None
        if held is None:
            return
        self._received(bytes(held))
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _handshake_step(self, tls: TlsSession, data: bytes) -> None:
        """Server side, handshake not over: the bytes go to the handshake pool (the loop does
        no handshake work), or wait for the step that is out."""
        waiting = self.hs_wait
        if waiting is not None:
            if len(waiting) + len(data) > HANDSHAKE_BUFFER:
                self.manager.drop(self, "tls", f"TLS: over {HANDSHAKE_BUFFER} bytes sent "
                                  "during the handshake")
                return
            waiting += data
            return
        m = self.manager
        pool = m.handshake_pool()
        if pool is None:  # no pool: on the loop (tests, or the pool turned off)
            plain = self._decrypt(tls, data)
            if plain:
                self._received(plain)
            if tls.eof:
                self.close()
            return
        if not pool.submit(self, tls, data, self.source, self.trusted):
            m.drop(self, "busy", f"TLS: {pool.max_queued} handshakes waiting for a thread")
            return
        self.hs_wait = bytearray()

    def handshaken(self, step: Step) -> None:
        """The pool is done with a step (on the loop's thread): write what the handshake
        produced, bring the link up once it is over, then go on with the bytes that came
        meanwhile."""
        waiting, self.hs_wait = self.hs_wait, None
        tls = self.tls
        assert tls is not None
        if self.closed or self.transport is None:
            tls.release()  # closed while the step was out: its TLS state goes now
            return
        if step.error is not None:
            self.manager.drop(self, "tls", f"TLS: {step.error}")
            return
        if step.out:
            self.transport.write(step.out)
        if tls.done and not self.ready:
            self._link_up()
        if step.plain:
            self._take(step.plain)
        if tls.eof and not self.closed:
            self.take_held()
            self.close()  # close_notify: the peer is done
            return
        if waiting and not self.closed:
            self.data_received(bytes(waiting))

    def _received(self, data: bytes) -> None:
        """SIP over a byte stream: cut by Content-Length (RFC 3261 18.3)."""
        framer = self.framer
        try:
            messages = framer.feed(data)
        except FramingError as exc:
            # RFC 4475 ncl / mcl01: framing is lost on a stream; close the connection.
            self.manager.drop(self, "framing", exc.message)
            return
        if not messages:
            if not self.partial_since:
                self.partial_since = time.monotonic()  # trickling bytes never restart it
            return
        now = time.monotonic()
        self.partial_since = now if framer.buffered else 0.0
        self.manager.spend(len(messages))
        deliver = self.manager.deliver
        src = self.src
        for m in messages:
            if m is None:
                self._send_bytes(_PONG)  # a ping (RFC 5626 4.4.1): answered, not counted
            else:
                self.last_sip = now
                self.delivered = True
                deliver(m, src)

    def _decrypt(self, tls: TlsSession, data: bytes) -> bytes:
        try:
            plain, out = tls.receive(data)
        except ssl.SSLError as exc:
            self.manager.drop(self, "tls", f"TLS: {exc}")
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            return b""
        if out and self.transport is not None:
            self.transport.write(out)
        if not self.ready and tls.done:
            self._link_up()
        if tls.eof and not plain:
            self.close()  # close_notify: the peer is done
        return plain

    def write(self, data: bytes) -> None:
        """Send one SIP message over the connection."""
        if self.transport is not None and not self.closed:
            self.last_sip = time.monotonic()
            self._send_bytes(data)

    def _send_bytes(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.tls is not None:
            try:
                data = self.tls.wrap(data)
            except ssl.SSLError as exc:
                self.manager.drop(self, "tls", f"TLS: {exc}")
                return
        transport.write(data)

    def stands_for(self, host: str, port: int) -> bool:
        """Whether this connection's peer is ``host:port`` (or an alias it proved, RFC 5923)."""
        if port == self.peer[1] and host == self.peer[0]:
            return True
        if (host, port) in self.aliases:
            return True
        if port != self.peer[1] or ":" not in host:
            return False
        try:  # the same IPv6 address written another way
            return ipaddress.ip_address(host) == ipaddress.ip_address(self.peer[0])
        except ValueError:
            return False

    def close(self) -> None:
        """Close after what is queued (a TLS connection says close_notify first)."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.closed = True
        if self.tls is not None and self.hs_wait is None:  # not while a step is out
            bye = self.tls.goodbye()
            if bye:
                transport.write(bye)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.held is not None:
            self.take_held()  # what the peer sent before it went: read before it is gone
        if self.tls is not None and self.hs_wait is None:  # else once the step is back
            self.tls.release()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionError("connection closed before it was ready"))
            waiter.exception()  # retrieved: nobody may be waiting any more
        if not self.refused:
            self.manager.unregister(self)
        self.transport = None


class TcpManager:
    """Listening sockets plus the table of open connections, by id and by peer address.

    A :class:`~proxy.transport.base.Transport`: :meth:`send` takes a :class:`Send`.
    """

    name = "tcp"
    #: what must end within ``handshake_timeout`` (in the log line of those closed for it)
    handshake_what = "TLS handshake"

    def __init__(
        self, deliver: Deliver, failed: Failed, *, max_size: int = 65535,
        message_timeout: float = 10.0, connect_timeout: float = 5.0,
        closed: Callable[[int], None] | None = None, max_connections: int = 4096,
        per_source: int = 32, idle_timeout: float | None = None,
        in_use: Callable[[int], bool] | None = None,
        exempt: Callable[[str], bool] | None = None, accept_rate: float = 0.0,
        handshake_threads: int = 1,
    ) -> None:
        self.deliver = deliver
        self.failed = failed
        self.closed = closed
        self.max_size = max_size
        self.message_timeout = message_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.per_source = per_source
        self.idle_timeout = idle_timeout
        self.handshake_timeout: float | None = None  # TLS only
        #: threads for the server side of TLS handshakes (:mod:`proxy.transport.tlspool`),
        #: started at the first handshake; 0: handshakes run on the loop
        self.handshake_threads = handshake_threads
        self._pool: HandshakePool | None = None
        #: stream messages read in this turn of the loop, and the connections whose bytes
        #: wait for the next turn
        self.spent = 0
        self._held: deque[SipStream] = deque()
        self._turn: asyncio.Handle | None = None
        self.in_use = in_use
        #: hosts whose connections are not held to per_source nor closed for being idle: the
        #: upstreams and trusted_relays (configured peers; a trunk's connection carries calls
        #: whose in-dialog requests come back over it, RFC 5626 5.3)
        self.exempt = exempt
        #: new connections a second (the table's, and per_source a second from one source)
        self.accepts = AcceptRate(accept_rate, per_source)
        self.conns: dict[int, SipStream] = {}
        self.by_peer: dict[tuple[str, int], SipStream] = {}
        self.servers: list[asyncio.Server] = []
        self.stats = ConnStats()
        self.closed_total = 0  # connections gone, for any reason (memory trimming reads it)
        self.unsent: dict[str, int] = {"closed": 0, "other_peer": 0}
        self.say = RateLimitedLog(log)
        self._connecting: dict[tuple[str, int], list[Send]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._shut = False

    # -------------------------------------------------------------- the turn's budget

    #: stream messages read in one turn of the event loop, at most (then reading pauses until
    #: the next turn): a burst of first messages from hundreds of new connections (bench/
    #: hostile.py attack 6: 400 OPTIONS at once, some 80 ms of the core's time) is read in
    #: slices, with the loop's other work (a UDP call, timers) between them
    per_turn = 64

    def spend(self, n: int) -> None:
        self.spent += n
        if self._turn is None:
            self._turn = asyncio.get_running_loop().call_soon(self._next_turn)

    def hold(self, s: SipStream) -> None:
        self._held.append(s)

    def _next_turn(self) -> None:
        """A new turn: a new budget, spent first on the connections that wait (in order)."""
        self._turn = None
        self.spent = 0
        held = self._held
        while held and self.spent < self.per_turn:
            held.popleft().take_held()  # gone meanwhile: already read (connection_lost)
        if held and self._turn is None:
            self._turn = asyncio.get_running_loop().call_soon(self._next_turn)

    def handshake_pool(self) -> HandshakePool | None:
        """The threads that run TLS handshakes (started on first use); None when off."""
        pool = self._pool
        if pool is None and self.handshake_threads > 0 and not self._shut:
            pool = self._pool = HandshakePool(asyncio.get_running_loop(),
                                              self.handshake_threads)
        return pool

    def stream(self, outgoing: bool = False, server_name: str | None = None) -> SipStream:
        """A new connection's protocol (TLS adds its session)."""
        return SipStream(self, outgoing)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port``; ``reuse_port``: with SO_REUSEPORT, the kernel spreading
        new connections among the processes listening there (README "Workers")."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.stream, host, port, reuse_address=True,
                                          reuse_port=reuse_port or None, backlog=1024)
        self.servers.append(server)
        self._start_sweep()

    # -------------------------------------------------------------- the table

    def admit(self, s: SipStream) -> str | None:
        """Why an accepted connection is refused (``limit``, ``per_source``, ``rate``,
        ``source_rate``), or None. The upstreams and trusted relays are held to the table's
        size only."""
        if len(self.conns) >= self.max_connections:
            return "limit"
        if s.trusted:
            return None
        if self.stats.count(s.source) >= self.per_source:
            return "per_source"
        return self.accepts.allow(s.source, time.monotonic())

    def register(self, s: SipStream) -> None:
        self.conns[s.conn_id] = s
        if s.source:
            self.stats.add(s.source)
        self._start_sweep()

    def ready(self, s: SipStream) -> None:
        self.by_peer[s.peer] = s

    def unregister(self, s: SipStream) -> None:
        if self.conns.pop(s.conn_id, None) is None:
            return
        self.closed_total += 1
        if s.source:
            self.stats.remove(s.source)
        for key in (s.peer, *s.aliases):
            if self.by_peer.get(key) is s:
                del self.by_peer[key]
        if self.closed is not None and s.delivered:
            self.closed(s.conn_id)  # RFC 5626 5.3: its flows are dead

    def refuse(self, s: SipStream, reason: str) -> None:
        """Count and log (once a minute) a connection refused at accept."""
        self.stats.refused[reason] += 1
        if reason == "limit":
            self.say(reason, logging.WARNING, "refused %s connection from %s:%s: %d "
                     "connections open (limits.tcp_max_connections)", self.name, s.peer[0],
                     s.peer[1], len(self.conns))
        elif reason in ("rate", "source_rate"):
            self.say(reason, logging.WARNING, "refused %s connection from %s:%s: over %g new "
                     "connections a second (limits.tcp_accept_rate%s)", self.name, s.peer[0],
                     s.peer[1], self.accepts.rate if reason == "rate" else self.accepts.per_source,
                     "" if reason == "rate" else ", from one source")
        else:
            self.say(reason, logging.WARNING, "refused %s connection from %s:%s: %d "
                     "connections open from %s (limits.tcp_per_source)", self.name, s.peer[0],
                     s.peer[1], self.stats.count(s.source), s.source)

    def drop(self, s: SipStream, reason: str, why: str) -> None:
        """Close a connection for what it sent (``framing``, ``tls``): counted, logged once a
        minute per reason."""
        if s.closed:
            return
        self.note_close(s, reason, why)
        s.close()

    def note_close(self, s: SipStream, reason: str, why: str) -> None:
        """Count and log (once a minute per reason) a connection the proxy closes for what it
        sent."""
        self.stats.closed[reason] += 1
        self.say(reason, logging.INFO, "closing %s connection from %s:%s: %s", self.name,
                 s.peer[0], s.peer[1], why)

    # -------------------------------------------------------------- the sweep

    def _period(self) -> float:
        bounds = [t for t in (self.idle_timeout, self.message_timeout, self.handshake_timeout)
                  if t]
        return min(1.0, max(0.05, min(bounds) / 4)) if bounds else 1.0

    #: connections one sweep closes, at most; more past their deadline: the next sweep comes
    #: at once, a turn of the loop later (closing 330 idle connections took 40 ms in one turn,
    #: bench/hostile.py attack 6; the table holds up to tcp_max_connections)
    sweep_closes = 128

    def _start_sweep(self, delay: float | None = None) -> None:
        if self._sweep is None and not self._shut:
            self._sweep = asyncio.get_running_loop().call_later(
                self._period() if delay is None else delay, self._sweep_conns)

    def _sweep_conns(self) -> None:
        """Close the connections past a deadline: a TLS handshake not over in time, a message
        not complete in time, and an idle connection without a binding or a transaction."""
        self._sweep = None
        now = time.monotonic()
        late: dict[str, list[SipStream]] = {}
        room = self.sweep_closes
        for c in list(self.conns.values()):
            reason = self._expired(c, now)
            if reason is not None:
                late.setdefault(reason, []).append(c)
                room -= 1
                if not room:
                    break
        for reason, conns in late.items():
            for c in conns:
                c.close()
            self.stats.closed[reason] += len(conns)
            self._say_closed(reason, len(conns))
        if self.conns or self.servers:
            self._start_sweep(0.0 if not room else None)

    def _expired(self, c: SipStream, now: float) -> str | None:
        if c.closed:
            return None
        if not c.ready:
            hs = self.handshake_timeout
            return "handshake" if hs is not None and now - c.opened >= hs else None
        if c.partial_since and now - c.partial_since >= self.message_timeout:
            return "incomplete"
        idle = self.idle_timeout
        if idle and now - c.last_sip >= idle and not c.trusted:
            if self.in_use is not None and self.in_use(c.conn_id):
                c.last_sip = now  # carries a binding or a transaction now: it starts again
                return None
            return "idle"
        return None

    def _say_closed(self, reason: str, n: int) -> None:
        if reason == "idle":
            self.say(reason, logging.INFO, "closed %d idle %s connections (limits."
                     "tcp_idle_timeout %g s): no binding, no transaction, no SIP message", n,
                     self.name, self.idle_timeout)
        elif reason == "incomplete":
            self.say(reason, logging.INFO, "closed %d %s connections whose message did not "
                     "complete in %g s (limits.tcp_message_timeout)", n, self.name,
                     self.message_timeout)
        else:
            self.say(reason, logging.INFO, "closed %d %s connections whose %s did not end in "
                     "%g s", n, self.name, self.handshake_what, self.handshake_timeout)

    # -------------------------------------------------------------- sending

    def send(self, s: Send) -> None:
        if s.conn_id is not None:
            conn = self.conns.get(s.conn_id)
            if conn is not None and conn.ready and not conn.closed \
                    and conn.stands_for(s.host, s.port):
                conn.write(s.data)
            else:
                self._not_sent(s, conn)
            return
        key = (s.host, s.port)
        conn = self.by_peer.get(key)
        if conn is not None and not conn.closed:
            conn.write(s.data)
            return
        waiting = self._connecting.get(key)
        if waiting is not None:
            waiting.append(s)
            return
        self._connecting[key] = [s]
        task = asyncio.get_running_loop().create_task(self._connect(key, s.server_name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _not_sent(self, s: Send, conn: SipStream | None) -> None:
        """A Send for a connection that is gone or that is another peer's (RFC 5626 5.3: a
        flow token names a flow, and a flow is a connection *and* its peer): not written,
        its token reported as a failure (later, from the loop)."""
        if conn is None or conn.closed or not conn.ready:
            reason, why = "closed", "is closed"
        else:
            reason, why = "other_peer", f"is {conn.peer[0]}:{conn.peer[1]}'s"
        self.unsent[reason] += 1
        self.say("unsent-" + reason, logging.INFO, "not sent to %s:%s: %s connection %d %s",
                 s.host, s.port, self.name, s.conn_id, why)
        if s.token is not None:
            asyncio.get_running_loop().call_soon(self.failed, s.token)

    async def _open(self, host: str, port: int, server_name: str | None) -> SipStream:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: self.stream(True, server_name or host),
                                                host, port)
        if not proto.ready and proto.waiter is not None:
            await proto.waiter  # TLS: the handshake
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
        self._shut = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for server in self.servers:
            server.close()
        for conn in list(self.conns.values()):
            conn.close()
        for task in self._tasks:
            task.cancel()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
