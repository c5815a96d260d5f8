"""Raw SIP on the wire for the e2e suite: a lenient message reader, request/response builders
and asyncio UDP/TCP peers (asyncio-dgram for UDP).

Nothing here depends on the proxy's own parser: the e2e suite must judge the proxy with an
independent reading of the bytes.  The reader is deliberately lenient (it has to read the
proxy's re-serialisation of RFC 4475 torture messages) and only understands what the tests
look at: start line, header fields (unfolded, compact forms expanded; RFC 3261 7.3.1, 7.3.3),
Via values, Call-ID, CSeq and the body.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import asyncio_dgram

__all__ = [
    "COMPACT_FORMS",
    "RecordingUpstream",
    "SipMessage",
    "TcpOutcome",
    "UdpPeer",
    "build_ack",
    "build_request",
    "build_response",
    "new_call_id",
    "parse_sip",
    "split_via_values",
    "tcp_exchange",
    "via_sent_by",
]

LOOPBACK = "127.0.0.1"

# RFC 3261 7.3.3 and the IANA registry: compact form -> canonical lower-case name.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "n": "identity-info",
    "o": "event", "r": "refer-to", "s": "subject", "t": "to", "u": "allow-events",
    "v": "via", "x": "session-expires", "y": "identity",
}

_ids = itertools.count(1)


def new_call_id(prefix: str = "e2e") -> str:
    """A Call-ID unique within the test session (RFC 3261 8.1.1.4)."""
    return f"{prefix}-{next(_ids)}-{id(_ids) & 0xFFFF:x}@127.0.0.1"


def canonical(name: str) -> str:
    n = name.strip().lower()
    return COMPACT_FORMS.get(n, n)


@dataclass(frozen=True, slots=True)
class Header:
    name: str  # canonical lower-case name
    value: str  # unfolded, stripped
    raw: str  # the original (possibly folded) lines, without the final CRLF


@dataclass(frozen=True, slots=True)
class SipMessage:
    """A leniently read SIP message (RFC 3261 7)."""

    start_line: str
    headers: tuple[Header, ...]
    body: bytes
    raw: bytes = field(repr=False)

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/")

    @property
    def method(self) -> str | None:
        return self.start_line.split(" ", 1)[0] if self.is_request else None

    @property
    def request_uri(self) -> str | None:
        parts = self.start_line.split()
        return parts[1] if self.is_request and len(parts) >= 2 else None

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        m = re.match(r"SIP/\S+\s+(\d{3})", self.start_line)
        return int(m.group(1)) if m else None

    def get(self, name: str) -> str | None:
        """The value of the first header field called ``name`` (any form), or None."""
        key = canonical(name)
        for h in self.headers:
            if h.name == key:
                return h.value
        return None

    def get_all(self, name: str) -> list[str]:
        key = canonical(name)
        return [h.value for h in self.headers if h.name == key]

    def raw_lines(self, name: str) -> list[str]:
        key = canonical(name)
        return [h.raw for h in self.headers if h.name == key]

    @property
    def call_id(self) -> str | None:
        v = self.get("call-id")
        return v.strip() if v is not None else None

    @property
    def cseq(self) -> tuple[int, str] | None:
        v = self.get("cseq")
        if v is None:
            return None
        m = re.match(r"\s*(\d+)\s+(\S+)", v)
        return (int(m.group(1)), m.group(2)) if m else None

    @property
    def vias(self) -> list[str]:
        """Every Via value, top first (RFC 3261 7.3.1: comma lists == several lines)."""
        out: list[str] = []
        for v in self.get_all("via"):
            out.extend(split_via_values(v))
        return out

    @property
    def top_via(self) -> str | None:
        vias = self.vias
        return vias[0] if vias else None


def split_via_values(value: str) -> list[str]:
    """Split a Via header value at commas outside quoted strings and <> (RFC 3261 25.1)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    depth = 0
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        out.append(tail)
    return [v for v in out if v]


_VIA_RE = re.compile(
    r"^SIP\s*/\s*2\.0\s*/\s*(?P<transport>[A-Za-z0-9.!%*_+`'~-]+)\s+"
    r"(?P<host>\[[^\]]*\]|[^\s;:]+)(?:\s*:\s*(?P<port>\d+))?(?P<params>.*)$",
    re.S,
)


def via_sent_by(via: str) -> tuple[str, str, int | None, dict[str, str | None]]:
    """(transport upper-case, host, port or None, params) of one Via value (RFC 3261 20.42)."""
    m = _VIA_RE.match(via.strip())
    if m is None:
        raise ValueError(f"not a Via value: {via!r}")
    params: dict[str, str | None] = {}
    for p in m.group("params").split(";"):
        p = p.strip()
        if not p:
            continue
        k, sep, v = p.partition("=")
        params[k.strip().lower()] = v.strip() if sep else None
    port = m.group("port")
    return m.group("transport").upper(), m.group("host"), int(port) if port else None, params


def parse_sip(data: bytes) -> SipMessage:
    """Read one SIP message leniently; raises ValueError when there is no start line.

    Accepts CRLF or bare LF line ends; a header section without its closing blank line is
    taken whole (the body is then empty).
    """
    text = data.decode("latin-1")
    # leading CRLFs before a start line are ignored (RFC 3261 7.5)
    stripped = text.lstrip("\r\n")
    m = re.search(r"\r?\n\r?\n", stripped)
    if m is None:
        head, body = stripped, ""
    else:
        head, body = stripped[: m.start()], stripped[m.end():]
    lines = re.split(r"\r?\n", head)
    start = lines[0].strip()
    if not start or not (start.startswith("SIP/") or re.match(r"^\S+\s+\S+\s+SIP/", start)):
        raise ValueError(f"no SIP start line: {start[:60]!r}")
    headers: list[Header] = []
    cur: list[str] = []

    def flush() -> None:
        if not cur:
            return
        rawl = "\r\n".join(cur)
        name, sep, value = cur[0].partition(":")
        if sep:
            unfolded = " ".join([value.strip(), *(c.strip() for c in cur[1:])]).strip()
            headers.append(Header(canonical(name), unfolded, rawl))
        cur.clear()

    for line in lines[1:]:
        if line[:1] in (" ", "\t") and cur:
            cur.append(line)
        else:
            flush()
            cur.append(line)
    flush()
    return SipMessage(start, tuple(headers), body.encode("latin-1"), data)


def try_parse(data: bytes) -> SipMessage | None:
    try:
        return parse_sip(data)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- builders


def build_request(
    method: str,
    uri: str,
    *,
    via_host: str,
    via_port: int,
    call_id: str | None = None,
    cseq: int = 1,
    transport: str = "UDP",
    branch: str | None = None,
    max_forwards: int | None = 70,
    from_uri: str = "sip:e2e@127.0.0.1",
    to_uri: str | None = None,
    from_tag: str = "e2e1",
    to_tag: str | None = None,
    extra_headers: Iterable[str] = (),
    body: bytes = b"",
    content_type: str | None = None,
    rport: bool = True,
) -> bytes:
    """A well-formed request (RFC 3261 8.1.1) with CRLF line ends and a correct Content-Length."""
    branch = branch or f"z9hG4bK-e2e-{next(_ids)}"
    cid = call_id or new_call_id()
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host}:{via_port};branch={branch}"
        + (";rport" if rport else ""),
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        f"From: <{from_uri}>;tag={from_tag}",
        f"To: <{to_uri or uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {cid}",
        f"CSeq: {cseq} {method}",
        *extra_headers,
    ]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = "e2eup",
    extra_headers: Iterable[str] = (),
) -> bytes:
    """A response to ``request`` copying Via (all, in order), From, To, Call-ID and CSeq as the
    raw lines they arrived in (RFC 3261 8.2.6.2); a To tag is added when missing and wanted."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for h in request.headers:
        if h.name in ("via", "from", "call-id", "cseq"):
            lines.append(h.raw)
        elif h.name == "to":
            raw = h.raw
            if to_tag and status > 100 and not re.search(r";\s*tag\s*=", h.value, re.I):
                raw = raw + f";tag={to_tag}"
            lines.append(raw)
    lines += [*extra_headers, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def build_ack(request_uri: str, response: SipMessage) -> bytes:
    """The hop-by-hop ACK for a non-2xx final response to an INVITE (RFC 3261 17.1.1.3): same
    Request-URI, the top Via of the request (read back from the response), From, the response's
    To (with its tag), Call-ID and the CSeq number with method ACK."""
    top = response.raw_lines("via")
    cseq = response.cseq
    num = cseq[0] if cseq else 1
    lines = [f"ACK {request_uri} SIP/2.0"]
    if top:
        lines.append(top[0])
    lines.append("Max-Forwards: 70")
    for h in response.headers:
        if h.name in ("from", "to", "call-id"):
            lines.append(h.raw)
    lines += [f"CSeq: {num} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ----------------------------------------------------------------------------- UDP peer


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    addr: tuple[str, int]
    at: float  # loop.time() at reception

    @property
    def sip(self) -> SipMessage | None:
        return try_parse(self.data)


class UdpPeer:
    """A UDP endpoint on 127.0.0.1 (asyncio-dgram) that queues what it receives.

    Use ``async with await UdpPeer.bind() as peer`` or call ``close()``.  ``recv`` waits for the
    next datagram (optionally the next one matching a predicate, keeping the others queued for
    later calls) with a bound; ``quiet`` collects everything arriving within a window.
    """

    def __init__(self, stream: asyncio_dgram.aio.DatagramServer) -> None:
        self._stream = stream
        self._pending: list[Datagram] = []
        self.received: list[Datagram] = []  # everything, in arrival order
        addr = stream.sockname
        self.addr: tuple[str, int] = (addr[0], addr[1])

    @classmethod
    async def bind(cls, port: int = 0, host: str = LOOPBACK) -> UdpPeer:
        stream = await asyncio_dgram.bind((host, port))
        # Bursts of answers (200 responses to a burst of requests) overflow the default
        # receive buffer (212,992 bytes of kernel accounting, about 1 KB a datagram on lo):
        # give the peer the buffer the proxy gives itself, so that the test loses nothing.
        sock = stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        return cls(stream)

    @property
    def port(self) -> int:
        return self.addr[1]

    async def __aenter__(self) -> UdpPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        # asyncio closes a datagram socket in a callback of the next loop iteration: let it
        # run, so the port is free once the block is left (a test binds sipp to it next, and
        # under load sipp lost that race: "Unable to bind main socket, errno = 98").
        await asyncio.sleep(0)

    def close(self) -> None:
        self._stream.close()

    async def send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            await self._stream.send(data, addr)
        except OSError:
            # an ICMP error noticed earlier (asyncio-dgram re-raises it on the next call)
            await self._stream.send(data, addr)

    async def _next_raw(self) -> Datagram:
        while True:
            try:
                data, addr = await self._stream.recv()
            except OSError:  # ICMP port unreachable from an earlier send: not a datagram
                continue
            host, port = cast("tuple[str, int]", addr)[:2]
            d = Datagram(data, (host, port), asyncio.get_running_loop().time())
            self.received.append(d)
            return d

    async def recv(
        self, timeout: float, match: Callable[[Datagram], bool] | None = None
    ) -> Datagram:
        """The next (matching) datagram; raises TimeoutError after ``timeout`` seconds."""
        for i, d in enumerate(self._pending):
            if match is None or match(d):
                del self._pending[i]
                return d

        async def wait() -> Datagram:
            while True:
                d = await self._next_raw()
                if match is None or match(d):
                    return d
                self._pending.append(d)

        return await asyncio.wait_for(wait(), timeout)

    async def recv_sip(
        self, timeout: float, match: Callable[[SipMessage], bool] | None = None
    ) -> tuple[SipMessage, tuple[str, int]]:
        """The next datagram that reads as SIP (and matches); others stay queued."""

        def pred(d: Datagram) -> bool:
            m = d.sip
            return m is not None and (match is None or match(m))

        d = await self.recv(timeout, pred)
        msg = d.sip
        assert msg is not None
        return msg, d.addr

    async def quiet(self, window: float) -> list[Datagram]:
        """Everything queued plus everything that arrives within ``window`` seconds."""
        got = list(self._pending)
        self._pending.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while (left := deadline - loop.time()) > 0:
            try:
                got.append(await asyncio.wait_for(self._next_raw(), left))
            except TimeoutError:
                break
        return got


# ----------------------------------------------------------------------------- upstream


class RecordingUpstream:
    """A UDP "PBX" that records every datagram and answers each request at once so that the
    proxy's client transactions end (RFC 3261 17.1): INVITE -> ``invite_status`` (a non-2xx
    final response, which the proxy must ACK hop by hop, 17.1.1.3), any other request but ACK
    -> 200.  Runs as a background task until ``close()``."""

    def __init__(self, peer: UdpPeer, invite_status: int = 480) -> None:
        self.peer = peer
        self.invite_status = invite_status
        self.records: list[Datagram] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, port: int = 0, invite_status: int = 480,
                    host: str = LOOPBACK) -> RecordingUpstream:
        self = cls(await UdpPeer.bind(port, host), invite_status)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    @property
    def port(self) -> int:
        return self.peer.port

    async def _run(self) -> None:
        reasons = {200: "OK", 480: "Temporarily Unavailable", 486: "Busy Here"}
        while True:
            d = await self.peer._next_raw()
            msg = d.sip
            if msg is not None and msg.is_request and msg.method not in ("ACK",):
                status = self.invite_status if msg.method == "INVITE" else 200
                await self.peer.send(
                    build_response(msg, status, reasons.get(status, "Whatever")), d.addr
                )
            async with self._changed:
                self.records.append(d)
                self._changed.notify_all()

    def mark(self) -> int:
        return len(self.records)

    def since(self, mark: int) -> list[Datagram]:
        return self.records[mark:]

    async def wait_for(
        self, match: Callable[[SipMessage], bool], timeout: float, since: int = 0
    ) -> SipMessage:
        """The first SIP message recorded at index >= ``since`` matching; TimeoutError if none
        arrives within ``timeout`` seconds."""

        def find() -> SipMessage | None:
            for d in self.records[since:]:
                m = d.sip
                if m is not None and match(m):
                    return m
            return None

        async def wait() -> SipMessage:
            async with self._changed:
                await self._changed.wait_for(lambda: find() is not None)
            found = find()
            assert found is not None
            return found

        return await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.peer.close()


# ----------------------------------------------------------------------------- TCP


@dataclass(frozen=True, slots=True)
class TcpOutcome:
    """What came back on one TCP connection: the bytes, whether the peer closed it (EOF or
    reset) and the responses read from the bytes."""

    data: bytes
    closed: bool
    send_failed: bool
    elapsed: float = 0.0  # seconds from connect to close / last read

    @property
    def responses(self) -> list[SipMessage]:
        out: list[SipMessage] = []
        rest = self.data
        while rest.strip():
            m = re.search(rb"\r?\n\r?\n", rest)
            if m is None:
                break
            head = rest[: m.end()]
            msg = try_parse(head)
            clen = 0
            if msg is not None:
                v = msg.get("content-length")
                clen = int(v) if v and v.strip().isdigit() else 0
                out.append(parse_sip(rest[: m.end() + clen]))
            rest = rest[m.end() + clen:]
        return out


async def tcp_exchange(
    host: str,
    port: int,
    payload: bytes,
    *,
    timeout: float,
    until_response: bool = False,
) -> TcpOutcome:
    """Connect, send ``payload`` and read until the peer closes the connection (or, with
    ``until_response``, until one complete response has arrived) or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection(host, port)
    send_failed = False
    data = b""
    closed = False
    elapsed = 0.0
    try:
        try:
            writer.write(payload)
            await writer.drain()
        except (ConnectionError, OSError):
            send_failed = True
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except (ConnectionError, OSError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if until_response and TcpOutcome(data, False, send_failed).responses:
                break
        elapsed = loop.time() - started
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    return TcpOutcome(data, closed, send_failed, elapsed)


# ----------------------------------------------------------------------------- stream framing


class SipStream:
    """One TCP connection carrying SIP (either side: a client from :meth:`connect`, or a
    connection an ``asyncio.start_server`` handler got); messages are framed by the empty line
    and Content-Length (RFC 3261 18.3).  ``recv_sip`` keeps non-matching messages queued."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.pending: list[SipMessage] = []
        self.eof = False

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 3.0) -> SipStream:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return host, port

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def _frame(self) -> None:
        while True:
            self.buffer = self.buffer.lstrip(b"\r\n")
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            m = re.search(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", self.buffer[:end],
                          re.I | re.M)
            size = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buffer) < size:
                return
            self.pending.append(parse_sip(self.buffer[:size]))
            self.buffer = self.buffer[size:]

    async def recv_sip(self, timeout: float,
                       match: Callable[[SipMessage], bool] | None = None) -> SipMessage:
        """The next (matching) message; TimeoutError after ``timeout`` s, AssertionError when
        the peer closes the connection first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._frame()
            for i, m in enumerate(self.pending):
                if match is None or match(m):
                    del self.pending[i]
                    return m
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no matching message on the TCP connection; pending "
                                   f"{[m.start_line for m in self.pending]}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                self.eof = True
                raise AssertionError(f"the peer closed the connection; buffer {self.buffer[:200]!r}")
            self.buffer += chunk

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
