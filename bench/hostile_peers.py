"""The processes of bench/hostile.py that speak to the proxy: the PBX (a small UAS), the UDP
flood and the stream (TCP/TLS) holder. Each runs as its own process
(``hostile.py --role pbx|flood|streams``), so that the attacker's work and the PBX's never
share an interpreter with the legitimate caller whose latency is measured. Standard library
only; traffic goes to loopback addresses only, bounded in count and time.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import socket
import ssl
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# bench/ is not a package: hostile_sip is found next to this file however it is loaded
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_sip import authorization, build_response, parse_msg, quick_status  # noqa: E402

#: the bytes at which a message of a flood template is numbered
NUMBER = "@N@"


def _loopback(host: str) -> None:
    if not host.startswith("127."):
        raise SystemExit(f"refusing to send to {host}: bench/hostile.py talks to 127/8 only")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------------- the PBX


def pbx_main(port: int) -> None:
    """A UDP UAS on 127.0.0.1:``port``: 200 to every request but ACK (an INVITE's with the
    Record-Route copied, RFC 3261 12.1.1), counting what it receives; commands on stdin, one
    JSON object a line (``stats``, ``reset``, ``last_invite``, ``send``), answers on stdout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sip")
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "ctl")
    methods: Counter[str] = Counter()
    prefixes: Counter[str] = Counter()  # requests by Call-ID prefix (before the first "-")
    statuses: Counter[str] = Counter()  # responses received, by status
    last_invite = ""
    buf = b""
    print(json.dumps({"ready": port}), flush=True)
    while True:
        for key, _ in sel.select(1.0):
            if key.data == "ctl":
                chunk = os.read(sys.stdin.fileno(), 65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = json.loads(line)
                    reply: dict[str, Any] = {}
                    if cmd["cmd"] == "stats":
                        reply = {"methods": methods, "prefixes": prefixes, "statuses": statuses}
                    elif cmd["cmd"] == "reset":
                        methods.clear()
                        prefixes.clear()
                        statuses.clear()
                    elif cmd["cmd"] == "last_invite":
                        reply = {"data": last_invite}
                    elif cmd["cmd"] == "send":
                        host, dport = cmd["to"]
                        _loopback(host)
                        sock.sendto(cmd["data"].encode("latin-1"), (host, dport))
                    print(json.dumps(reply), flush=True)
                continue
            while True:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                msg = parse_msg(data)
                if msg is None:
                    continue
                if msg.status is not None:
                    statuses[str(msg.status)] += 1
                    continue
                method = msg.method or "?"
                methods[method] += 1
                prefixes[msg.call_id.split("-", 1)[0]] += 1
                if method == "ACK":
                    continue
                extra = [f"Contact: <sip:pbx@127.0.0.1:{port}>"]
                if method == "INVITE":
                    last_invite = data.decode("latin-1")
                    extra += [f"Record-Route: {v}" for v in msg.get_all("record-route")]
                try:
                    sock.sendto(build_response(msg, 200, "OK", to_tag="pbx1", headers=extra),
                                addr)
                except OSError:
                    pass


# ------------------------------------------------------------------------------- UDP floods


def _message(spec: dict[str, Any], i: int) -> bytes:
    text: str = spec["template"].replace(NUMBER, str(i))
    digest = spec.get("digest")
    if digest is not None:
        password = digest["password"].replace(NUMBER, str(i))
        auth = authorization(digest["user"], digest["realm"], password, digest["method"],
                             digest["uri"], digest["nonce"], digest["nc"] + i)
        text = text.replace("@AUTH@", auth)
    return text.encode("latin-1")


def flood_main(spec: dict[str, Any]) -> None:
    """Send ``count`` datagrams (``template`` numbered 0..count-1) at ``rate`` a second to
    ``dst`` from ``sources`` in turn, read every answer meanwhile and for ``drain`` seconds
    after; print what came back as JSON: statuses, answers per Call-ID."""
    host, dport = spec["dst"]
    _loopback(host)
    socks = []
    for src in spec["sources"]:
        _loopback(src)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    dst = (host, dport)
    count, rate = int(spec["count"]), float(spec["rate"])
    statuses: Counter[int] = Counter()
    finals: Counter[bytes] = Counter()
    every: Counter[bytes] = Counter()
    dropped_sends = 0

    def drain() -> None:
        for s in socks:
            while True:
                try:
                    data = s.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                status, cid = quick_status(data)
                statuses[status] += 1
                every[cid] += 1
                if status >= 200:
                    finals[cid] += 1

    t0 = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            s = socks[sent % len(socks)]
            try:
                s.sendto(_message(spec, sent), dst)
            except (BlockingIOError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.EAGAIN, errno.ENOBUFS,
                                                                   errno.ECONNREFUSED):
                    raise
                dropped_sends += 1
            sent += 1
        drain()
        if sent >= due:
            time.sleep(0.0005)
    send_s = time.monotonic() - t0
    end = time.monotonic() + float(spec.get("drain", 2.0))
    while time.monotonic() < end:
        drain()
        time.sleep(0.005)
    print(json.dumps({
        "sent": sent, "send_s": send_s, "send_errors": dropped_sends,
        "statuses": {str(k): v for k, v in statuses.items()},
        "answered": len(finals), "max_finals": max(finals.values(), default=0),
        "max_responses": max(every.values(), default=0), "responses": sum(statuses.values()),
    }), flush=True)


# ------------------------------------------------------------------------------- streams


def client_hello() -> bytes:
    """The first flight of a TLS client (its ClientHello), made once: a half-open handshake
    sends it and nothing more (the proxy does its share of the handshake for each)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class Conn:
    """One attacker connection: TCP, or TLS through memory BIOs (non-blocking)."""

    __slots__ = ("closed_at", "got", "inc", "obj", "opened", "out", "ready", "sent_first",
                 "sock", "src", "last_send")

    def __init__(self, sock: socket.socket, src: str, tls_ctx: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.src = src
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.got = 0  # bytes received (plain text for TLS)
        self.ready = False  # TCP connected (and TLS handshake done)
        self.sent_first = False
        self.last_send = 0.0
        self.inc = self.out = None
        self.obj: ssl.SSLObject | None = None
        if tls_ctx is not None:
            self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.obj = tls_ctx.wrap_bio(self.inc, self.out, server_side=False)

    def flush(self) -> None:
        if self.out is not None:
            data = self.out.read()
            if data:
                self.sock.send(data)

    def handshake(self) -> None:
        assert self.obj is not None
        try:
            self.obj.do_handshake()
            self.ready = True
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def send(self, data: bytes) -> None:
        self.last_send = time.monotonic()
        if self.obj is None:
            self.sock.send(data)
        else:
            self.obj.write(data)
            self.flush()

    def receive(self, data: bytes) -> None:
        if self.obj is None or self.inc is None:
            self.got += len(data)
            return
        self.inc.write(data)
        if not self.ready:
            self.handshake()
            if not self.ready:
                return
        while True:
            try:
                plain = self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not plain:
                break
            self.got += len(plain)
        self.flush()


def streams_main(spec: dict[str, Any]) -> None:
    """Hold stream connections to ``dst`` the way ``mode`` says, for ``hold`` seconds:

    * ``keepalive``: one OPTIONS, then a CRLFCRLF ping every ``interval`` s (RFC 5626 4.4.1);
    * ``slow``: the first line of an OPTIONS, then one more byte every ``interval`` s;
    * ``hello``: TLS ClientHello only, in rounds of ``per_round`` connections: each round
      waits for the proxy's answer (its ServerHello: it did its work), at most
      ``hello_wait`` s, then resets every connection of the round.

    ``per_source`` connections from each of ``sources``. Prints JSON: connections opened,
    refused at once (closed within 1 s without a byte), closed by the proxy later (and when),
    still open at the end, answered."""
    _raise_nofile()
    host, dport = spec["dst"]
    _loopback(host)
    mode = spec["mode"]
    tls_ctx = None
    if spec.get("tls"):
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls_ctx.check_hostname = False
        tls_ctx.verify_mode = ssl.CERT_NONE
    if mode == "hello":
        _hello_rounds(spec)
        return
    sel = selectors.DefaultSelector()
    conns: list[Conn] = []
    for src in spec["sources"]:
        _loopback(src)
        for _ in range(int(spec["per_source"])):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((src, 0))
            s.connect_ex((host, dport))
            c = Conn(s, src, tls_ctx)
            conns.append(c)
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    interval = float(spec.get("interval", 2.0))
    options = ("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {src}:5060;branch=z9hG4bK"
               "{n}\r\nMax-Forwards: 70\r\nFrom: <sip:h@{src}>;tag=h\r\nTo: <sip:127.0.0.1>\r\n"
               "Call-ID: hold-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    end = time.monotonic() + float(spec["hold"])
    while time.monotonic() < end:
        now = time.monotonic()
        for key, events in sel.select(0.1):
            c = key.data
            if c.closed_at is not None:
                continue
            try:
                if events & selectors.EVENT_WRITE and not c.sent_first:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    if c.obj is not None:
                        c.handshake()
                    else:
                        c.ready = True
                    c.sent_first = True
                if events & selectors.EVENT_READ:
                    data = c.sock.recv(65536)
                    if not data:
                        raise ConnectionResetError
                    c.receive(data)
            except (OSError, ssl.SSLError):
                c.closed_at = now
                sel.unregister(c.sock)
                c.sock.close()
        for i, c in enumerate(conns):
            if c.closed_at is not None or not c.ready:
                continue
            try:
                if c.last_send == 0.0:
                    first = options.format(src=c.src, n=i)
                    c.send(first.encode() if mode == "keepalive" else first.split("\r\n")[0]
                           .encode() + b"\r\n")
                elif now - c.last_send >= interval:
                    c.send(b"\r\n\r\n" if mode == "keepalive" else b"X")
            except (OSError, ssl.SSLError):
                c.closed_at = now
                sel.unregister(c.sock)
                c.sock.close()
    refused = [c for c in conns if c.closed_at is not None and c.closed_at - c.opened < 1.0
               and c.got == 0]
    later = sorted(c.closed_at - c.opened for c in conns
                   if c.closed_at is not None and c not in refused)
    still = [c for c in conns if c.closed_at is None]
    for c in still:
        c.sock.close()
    print(json.dumps({
        "opened": len(conns), "refused": len(refused), "closed_later": len(later),
        "closed_after_s": [round(later[0], 1), round(later[len(later) // 2], 1),
                           round(later[-1], 1)] if later else [],
        "still_open": len(still), "answered": sum(1 for c in conns if c.got),
        "handshakes": sum(1 for c in conns if c.ready),
    }), flush=True)


def _hello_rounds(spec: dict[str, Any]) -> None:
    host, dport = spec["dst"]
    hello = client_hello()
    total, per_round = int(spec["count"]), int(spec["per_round"])
    per_source = int(spec["per_source"])
    sources: list[str] = spec["sources"]
    wait = float(spec.get("hello_wait", 3.0))
    linger = struct.pack("ii", 1, 0)  # close() sends RST: the proxy sees the connection lost
    opened = answered = refused = 0
    src_i = 0
    while opened < total:
        sel = selectors.DefaultSelector()
        batch: dict[socket.socket, list[Any]] = {}
        n = min(per_round, total - opened)
        for i in range(n):
            src = sources[(src_i + i // per_source) % len(sources)]
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.bind((src, 0))
            s.connect_ex((host, dport))
            batch[s] = [False, False, False]  # hello sent, answered, closed
            sel.register(s, selectors.EVENT_WRITE)
        src_i += (n + per_source - 1) // per_source
        opened += n
        end = time.monotonic() + wait
        pending = n
        while pending and time.monotonic() < end:
            for key, events in sel.select(0.05):
                s = key.fileobj  # type: ignore[assignment]
                st = batch[s]
                try:
                    if events & selectors.EVENT_WRITE and not st[0]:
                        s.send(hello)
                        st[0] = True
                        sel.modify(s, selectors.EVENT_READ)
                    elif events & selectors.EVENT_READ:
                        data = s.recv(65536)
                        if not data:
                            raise ConnectionResetError
                        st[1] = True
                        answered += 1
                        pending -= 1
                        sel.unregister(s)
                except OSError:
                    if not st[1]:
                        refused += 1
                        pending -= 1
                    st[2] = True
                    sel.unregister(s)
        for s in batch:
            s.close()
        sel.close()
    print(json.dumps({"opened": opened, "answered": answered, "refused": refused}), flush=True)


def role_main(role: str, arg: str) -> None:
    if role == "pbx":
        pbx_main(int(arg))
    elif role == "flood":
        flood_main(json.loads(arg))
    elif role == "streams":
        streams_main(json.loads(arg))
    else:
        raise SystemExit(f"unknown role {role}")
