"""WebSocket peers for the e2e suite (RFC 7118): a SIP phone over ``ws:``/``wss:`` written
with the ``websockets`` client, and raw upgrades for the hostile cases.

:class:`WsPhone` sends SIP as text frames the way a browser phone does (Via ``WS``/``WSS``
with an ``.invalid`` host, a ``.invalid`` Contact, no Content-Length needed) and reads what the
proxy sends, one SIP message per WebSocket message, with the lenient reader of ``wire.py``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import ssl
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from tests.e2e.harness import LOOPBACK
from tests.e2e.wire import SipMessage, build_response, parse_sip

SIP = [Subprotocol("sip")]
_ids = itertools.count(1)


class WsPhone:
    """One SIP user agent over one WebSocket connection."""

    def __init__(self, ws: ClientConnection, transport: str, user: str) -> None:
        self.ws = ws
        self.transport = transport.upper()  # WS | WSS, as in its Via (RFC 7118 5.2)
        self.user = user
        self.host = f"{os.urandom(6).hex()}.invalid"
        self.contact = f"<sip:{user}@{self.host};transport=ws>"
        self.received: list[SipMessage] = []

    @classmethod
    async def open(cls, port: int, *, secure: bool = False, ca: str | None = None,
                   user: str = "alice", src: str = LOOPBACK, origin: str | None = None,
                   **kw: Any) -> WsPhone:
        scheme = "wss" if secure else "ws"
        if secure:
            kw["ssl"] = ssl.create_default_context(cafile=ca)
        ws = await asyncio.wait_for(connect(
            f"{scheme}://{LOOPBACK}:{port}/", subprotocols=SIP, compression=None,
            origin=Origin(origin) if origin else None, local_addr=(src, 0), open_timeout=5,
            **kw), 10)
        return cls(ws, scheme, user)

    def via(self, branch: str | None = None) -> str:
        return (f"Via: SIP/2.0/{self.transport} {self.host};"
                f"branch={branch or f'z9hG4bKws{next(_ids)}'}")

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv_sip(self, timeout: float = 5.0,
                       match: Callable[[SipMessage], bool] | None = None) -> SipMessage:
        """The next message (that matches); others are kept in :attr:`received`."""
        async def wait() -> SipMessage:
            while True:
                data = await self.ws.recv()
                msg = parse_sip(data.encode() if isinstance(data, str) else data)
                self.received.append(msg)
                if match is None or match(msg):
                    return msg
        return await asyncio.wait_for(wait(), timeout)

    async def final(self, method: str, timeout: float = 5.0) -> SipMessage:
        return await self.recv_sip(timeout, lambda m: not m.is_request and (m.status or 0) >= 200
                                   and m.cseq is not None and m.cseq[1] == method)

    async def register(self, domain: str = "example.com", *, reg_id: bool = False,
                       expires: int = 600) -> SipMessage:
        contact = self.contact
        if reg_id:
            contact += f';+sip.instance="<urn:uuid:{os.urandom(8).hex()}>";reg-id=1'
        await self.send("\r\n".join([
            f"REGISTER sip:{domain} SIP/2.0", self.via(), "Max-Forwards: 70",
            f"From: <sip:{self.user}@{domain}>;tag=r{next(_ids)}",
            f"To: <sip:{self.user}@{domain}>", f"Call-ID: reg-{os.urandom(6).hex()}",
            "CSeq: 1 REGISTER", f"Contact: {contact}", f"Expires: {expires}",
            "Supported: path, outbound", "", ""]))
        return await self.final("REGISTER")

    async def answer(self, invite: SipMessage, status: int = 200, reason: str = "OK",
                     tag: str = "wsphone") -> None:
        """A response copying the INVITE's Record-Route (RFC 3261 12.1.1)."""
        extra = [f"Record-Route: {v}" for v in invite.get_all("record-route")]
        extra.append(f"Contact: {self.contact}")
        data = build_response(invite, status, reason, to_tag=tag, extra_headers=extra)
        await self.send(data.decode("latin-1"))

    async def close(self) -> None:
        await self.ws.close()


def upgrade_request(protocol: str | None = "sip", origin: str | None = None,
                    host: str = LOOPBACK) -> bytes:
    """A browser's opening handshake (RFC 6455 4.1), written out by hand."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET / HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()

