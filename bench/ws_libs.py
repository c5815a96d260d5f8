"""CPU per SIP message of a WebSocket server, by library: the measurement behind the choice of
the WebSocket transport's library (README "WebRTC phones in front of Asterisk").

Each server runs alone in a child process on uvloop, listens on loopback and answers every
message received (a SIP request of ``--size`` bytes, masked as a browser sends it) with one of
about the same size: what the proxy does per SIP message, minus the SIP. The client (this
process) sends ``--messages`` messages over one connection, one at a time, then asks the
server for the CPU time (user + system, ``getrusage``) it spent between the first and the last
message. The figure is that time divided by the count: the server's cost of receiving one
frame and sending one. The servers run in turn, ``--rounds`` times (a busy spell of a shared
machine hits all of them); the best and the median run of each are printed.

    .venv/bin/python bench/ws_libs.py --messages 20000

The servers:

* ``websockets-sansio``: ``websockets.server.ServerProtocol`` (the library's sans-IO protocol)
  inside a plain ``asyncio.Protocol``: how proxy/transport/ws.py uses it;
* ``websockets-asyncio``: the library's own asyncio server (``websockets.asyncio.server``);
* ``aiohttp``: ``aiohttp.web`` with a ``WebSocketResponse`` handler;
* ``proxy-ws``: the proxy's own ``WsManager`` (the first, plus the connection table, limits and
  the Send path), answering through ``send(Send(...))`` as the runtime does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time

SERVERS = ("websockets-sansio", "websockets-asyncio", "aiohttp", "proxy-ws")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Meter:
    """Server side: CPU from the first message on; "END" answers with the figure."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.n = 0

    def reply(self, data: bytes | str) -> bytes | None:
        raw = data.encode() if isinstance(data, str) else data
        if raw == b"END":
            used = _cpu() - (self.start or _cpu())
            return f"CPU {used:.6f} {self.n}".encode()
        if self.start is None:
            self.start = _cpu()
        self.n += 1
        return b"SIP/2.0 200 OK\r\n" + raw[16:]


async def _serve_sansio(port: int) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    meter = _Meter()

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.ws = ServerProtocol(subprotocols=["sip"], max_size=65535)

        def data_received(self, data: bytes) -> None:
            ws = self.ws
            ws.receive_data(data)
            for ev in ws.events_received():
                if isinstance(ev, Request):
                    ws.send_response(ws.accept(ev))
                elif isinstance(ev, Frame) and ev.opcode in (Opcode.TEXT, Opcode.BINARY):
                    out = meter.reply(ev.data)
                    if out is not None:
                        ws.send_text(out)
            for chunk in ws.data_to_send():
                if chunk:
                    self.t.write(chunk)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def _serve_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    meter = _Meter()

    async def handler(ws: ServerConnection) -> None:
        async for msg in ws:
            out = meter.reply(msg)
            if out is not None:
                await ws.send(out.decode())

    async with serve(handler, "127.0.0.1", port, subprotocols=["sip"], max_size=65535,  # type: ignore[list-item]
                     compression=None) as server:
        await server.serve_forever()


async def _serve_aiohttp(port: int) -> None:
    from aiohttp import WSMsgType, web

    meter = _Meter()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("sip",), max_msg_size=65535, compress=False,
                                   autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                out = meter.reply(msg.data)
                if out is not None:
                    await ws.send_str(out.decode())
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _serve_proxy(port: int) -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from proxy.sip.transport import Send, Source
    from proxy.transport.ws import WsManager

    meter = _Meter()

    def deliver(data: bytes, src: Source) -> None:
        out = meter.reply(data)
        if out is not None:
            m.send(Send("ws", src.host, src.port, out, src.conn_id))

    m = WsManager(deliver, lambda token: None, idle_timeout=120.0)
    await m.listen("127.0.0.1", port)
    await asyncio.Event().wait()


def serve(kind: str, port: int) -> None:
    import uvloop

    run = {"websockets-sansio": _serve_sansio, "websockets-asyncio": _serve_websockets,
           "aiohttp": _serve_aiohttp, "proxy-ws": _serve_proxy}[kind]
    uvloop.run(run(port))


async def _client(port: int, messages: int, size: int) -> tuple[float, int]:
    from websockets.asyncio.client import connect

    body = ("INVITE sip:bob@example.com SIP/2.0\r\n" + "X" * size)[:size]
    async with connect(f"ws://127.0.0.1:{port}/", subprotocols=["sip"],  # type: ignore[list-item]
                       compression=None, max_size=None) as ws:
        for _ in range(messages):
            await ws.send(body)
            await ws.recv()
        await ws.send("END")
        answer = str(await ws.recv()).split()
    return float(answer[1]), int(answer[2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(kind: str, messages: int, size: int) -> float:
    """Microseconds of server CPU per message (one received, one sent)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cpu, n = asyncio.run(_client(port, messages, size))
        assert n == messages, (n, messages)
        return cpu / n * 1e6
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=900, help="bytes of each SIP message")
    ap.add_argument("--rounds", type=int, default=5, help="runs per server, interleaved")
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    import aiohttp
    import websockets

    print(f"python {sys.version.split()[0]}, websockets {websockets.__version__}, "
          f"aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs; {args.messages} messages of "
          f"{args.size} bytes over one connection, {args.rounds} runs each")
    runs: dict[str, list[float]] = {kind: [] for kind in SERVERS}
    for _ in range(args.rounds):  # interleaved: a busy spell of the machine hits every server
        for kind in SERVERS:
            runs[kind].append(measure(kind, args.messages, args.size))
    for kind, figures in runs.items():
        figures.sort()
        print(f"{kind:20s} {figures[0]:7.1f} us CPU per message (best), "
              f"{figures[len(figures) // 2]:7.1f} (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
