"""TLS peers for the e2e suite: a test CA (trustme) and a Python ``ssl`` SIP UAS.

:func:`make_pki` writes a CA, the proxy's certificate (127.0.0.1, localhost), a PBX
certificate and a client certificate into a folder. :class:`TlsUas` is a minimal TLS
"PBX": it answers INVITE 200 (copying Record-Route, RFC 3261 12.1.1), BYE and OPTIONS 200,
and records every message it received.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.e2e.harness import LOOPBACK
from tests.e2e.wire import SipMessage, SipStream, build_response


@dataclass
class Pki:
    ca: Path
    cert: Path  # the proxy's
    key: Path
    pbx: Path  # key + chain of the TLS upstream
    client: Path  # key + chain of a TLS client (mutual TLS)
    authority: trustme.CA = field(repr=False)

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            ctx.load_cert_chain(str(self.client))
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.pbx))
        return ctx


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    p = Pki(folder / "ca.pem", folder / "proxy.pem", folder / "proxy.key", folder / "pbx.pem",
            folder / "client.pem", ca)
    ca.cert_pem.write_to_path(str(p.ca))
    proxy = ca.issue_cert(LOOPBACK, "localhost", "proxy.test")
    proxy.cert_chain_pems[0].write_to_path(str(p.cert))
    proxy.private_key_pem.write_to_path(str(p.key))
    ca.issue_cert(LOOPBACK, "localhost", "pbx.test").private_key_and_cert_chain_pem \
        .write_to_path(str(p.pbx))
    ca.issue_cert("phone.test").private_key_and_cert_chain_pem.write_to_path(str(p.client))
    return p


def tls_config(pki: Pki, tls_port: int, proxy_port: int, verify_client: bool = False) -> dict:
    """The ``extra`` of a proxy with udp/tcp on ``proxy_port`` and tls on ``tls_port``."""
    tls: dict[str, object] = {"cert_file": str(pki.cert), "key_file": str(pki.key),
                              "ca_file": str(pki.ca)}
    if verify_client:
        tls["verify_client"] = True
    return {"listen": [f"udp:{LOOPBACK}:{proxy_port}", f"tcp:{LOOPBACK}:{proxy_port}",
                       f"tls:{LOOPBACK}:{tls_port}"], "tls": tls}


class TlsUas:
    """A TLS SIP server on 127.0.0.1:``port`` answering 200 and recording what it got."""

    def __init__(self, ctx: ssl.SSLContext, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.received: list[SipMessage] = []
        self.streams: list[SipStream] = []
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cond = asyncio.Condition()

    async def start(self) -> TlsUas:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, self.port, ssl=self.ctx)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = SipStream(reader, writer)
        self.streams.append(stream)
        try:
            while True:
                msg = await stream.recv_sip(3600)
                async with self._cond:
                    self.received.append(msg)
                    self._cond.notify_all()
                if not msg.is_request or msg.method == "ACK":
                    continue
                extra = [f"Contact: <sips:pbx@{LOOPBACK}:{self.port};transport=tls>"]
                if msg.method == "INVITE":
                    extra += msg.raw_lines("record-route")
                await stream.send(build_response(msg, 200, "OK", extra_headers=extra))
        except (AssertionError, ConnectionError, OSError, TimeoutError):
            pass

    async def wait_for(self, method: str, timeout: float = 5.0) -> SipMessage:
        async def find() -> SipMessage:
            async with self._cond:
                while True:
                    for m in self.received:
                        if m.method == method:
                            return m
                    await self._cond.wait()
        return await asyncio.wait_for(find(), timeout)

    async def close(self) -> None:
        for s in self.streams:
            await s.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
