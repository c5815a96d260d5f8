"""Helpers of the stream transport tests: a test CA (trustme), a TLS manager on it, and a
bounded wait on a condition."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme

from proxy.sip.transport import Source
from proxy.transport.tcp import TcpManager
from proxy.transport.tls import TlsManager, client_context, server_context

OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK1\r\n"
           b"Content-Length: 0\r\n\r\n")


def make_pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "proxy.example")
    client = ca.issue_cert("client.example")
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem",
           "client": tmp_path / "client.pem"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    server.cert_chain_pems[0].write_to_path(str(out["cert"]))
    server.private_key_pem.write_to_path(str(out["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(out["client"]))
    return out


def manager(pki: dict[str, Path], got: list[tuple[bytes, Source]], *, verify: bool = False,
            failed: list[object] | None = None, **kwargs: Any) -> TlsManager:
    kwargs.setdefault("handshake_timeout", 2.0)
    return TlsManager(
        lambda d, s: got.append((d, s)), (failed if failed is not None else []).append,
        server_ctx=server_context(pki["cert"], pki["key"], pki["ca"], verify),
        client_ctx=client_context(pki["cert"], pki["key"], pki["ca"]),
        files=(pki["cert"], pki["key"], pki["ca"]), **kwargs,
    )


def port_of(m: TcpManager) -> int:
    return int(m.servers[-1].sockets[0].getsockname()[1])


async def until(cond: Callable[[], object], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)  # bounded poll of a condition no event announces


def client_ctx(pki: dict[str, Path], with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(pki["client"]))
    return ctx
