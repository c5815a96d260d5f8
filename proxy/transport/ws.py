"""SIP over WebSocket (RFC 7118): the ``ws:`` and ``wss:`` listeners of browser phones.

A WebSocket connection is a stream connection of :mod:`proxy.transport.tcp` (the same table,
conn ids, limits, sweep and flows; ``wss:`` adds the same :class:`TlsSession` as ``tls:``)
whose bytes go through the sans-IO WebSocket protocol of the ``websockets`` library
(``websockets.server.ServerProtocol``, RFC 6455) instead of Content-Length framing.
``bench/ws_libs.py`` measured it as the cheapest way per SIP message (README "WebRTC phones
in front of Asterisk").

* The opening handshake (RFC 7118 4) must offer the subprotocol ``sip``: without it the
  upgrade is refused (400), and when ``ws_allowed_origins`` is set an ``Origin`` not in it is
  refused (403; RFC 6455 10.2: a browser says which page opened the connection). A refused
  upgrade, a request that is not an upgrade and a handshake over :data:`HANDSHAKE_MAX` bytes
  are counted (``connections_refused_total{reason="subprotocol"|"origin"|"upgrade"}``) and
  logged once a minute. Until the 101 goes out the connection is "in its handshake": it must
  end within ``limits.tls_handshake_timeout`` from the TCP connect (TLS included for ``wss:``).
* One SIP message per WebSocket message, text or binary (RFC 7118 5); the message boundary is
  the message's length, so Content-Length is not needed (the core parses it as a datagram).
  A message over ``limits.max_message_size`` closes the connection with 1009; a protocol
  error with 1002 (RFC 6455 7.4.1); both counted (``too_large``, ``framing``). A message must
  complete within ``limits.tcp_message_timeout`` of its first byte, like on TCP.
* Ping frames are answered with pongs (RFC 6455 5.5.2) and a ``\\r\\n\\r\\n`` message (the
  keep-alive SIP.js sends) with ``\\r\\n``; neither restarts the idle clock: only a SIP
  message or a binding keeps a connection past ``limits.tcp_idle_timeout``.
* The proxy never opens a WebSocket connection: a browser is reached over the connection it
  opened (RFC 7118 5.3), so a :class:`Send` for a peer without one is a failed send.
* No extension is negotiated (permessage-deflate would cost CPU per message and lets a small
  frame inflate into a large one).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

from websockets.exceptions import InvalidOrigin, NegotiationError, PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from proxy.transport.base import Send
from proxy.transport.tcp import SipStream, TcpManager
from proxy.transport.tlssession import TlsSession

__all__ = ["HANDSHAKE_MAX", "SUBPROTOCOL", "WsManager", "WsStream"]

log = logging.getLogger("proxy.transport.ws")
#: The library's own lines ("connection open", one per connection) stay below INFO; its
#: warnings and errors show.
_lib_log = logging.getLogger("proxy.transport.ws.protocol")
_lib_log.setLevel(logging.WARNING)

SUBPROTOCOL = Subprotocol("sip")  # RFC 7118 4
_SUBPROTOCOLS = (SUBPROTOCOL,)
#: bytes an opening handshake may take (a browser's is under 2 KB with its cookies); the
#: library alone would buffer up to 128 header lines of 8 KB each
HANDSHAKE_MAX = 16384
_PONG = b"\r\n"
_CRLF = (b"\r", b"\n")
_DATA = (Opcode.TEXT, Opcode.BINARY)


class WsStream(SipStream):
    """One WebSocket connection carrying SIP messages (RFC 7118), plain or over TLS."""

    __slots__ = ("frag", "hs_bytes", "ws")

    def __init__(self, manager: WsManager, tls: TlsSession | None = None) -> None:
        super().__init__(manager, False, tls)
        self.ws = ServerProtocol(origins=manager.origins, subprotocols=_SUBPROTOCOLS,
                                 max_size=manager.max_size, logger=_lib_log)
        self.frag: bytearray | None = None  # a fragmented message being received
        self.hs_bytes = 0  # bytes of the opening handshake so far

    def _link_up(self) -> None:
        """TCP (or TLS) is up; the connection is ready once the upgrade is accepted."""

    def _received(self, data: bytes) -> None:
        ws = self.ws
        if not self.ready:
            self.hs_bytes += len(data)
            if self.hs_bytes > HANDSHAKE_MAX:
                self.ws_manager.refuse_upgrade(self, "upgrade",
                                               f"handshake over {HANDSHAKE_MAX} bytes")
                self.close()
                return
        ws.receive_data(data)
        now = 0.0
        for ev in ws.events_received():
            if type(ev) is Frame:
                if self.ready and (ev.opcode in _DATA or ev.opcode is Opcode.CONT):
                    now = now or time.monotonic()
                    self._data(ev, now)
            elif isinstance(ev, Request):
                self._upgrade(ev)
        if ws.parser_exc is not None:
            self._failed(ws.parser_exc)  # counted before the flush closes the connection
        elif ws.handshake_exc is not None and not self.ready and self.hs_bytes >= 0:
            self.hs_bytes = -1  # counted once
            self.ws_manager.refuse_upgrade(self, *_refusal(ws))
        self._flush()
        if self.frag is not None or ws.reader.buffer:
            if not self.partial_since:
                self.partial_since = now or time.monotonic()  # trickling bytes never restart it
        else:
            self.partial_since = 0.0

    def _upgrade(self, request: Request) -> None:
        """RFC 7118 4 / RFC 6455 4.2: accept with ``Sec-WebSocket-Protocol: sip``, or refuse
        (the library answers the status and ends the stream)."""
        ws = self.ws
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code == 101:
            self._ready()

    def _data(self, frame: Frame, now: float) -> None:
        """A data frame: one complete message is one SIP message (RFC 7118 5)."""
        if not frame.fin:
            if self.frag is None:
                self.frag = bytearray(frame.data)
            else:
                self.frag += frame.data
            return
        if self.frag is not None:
            self.frag += frame.data
            data = bytes(self.frag)
            self.frag = None
        else:
            data = bytes(frame.data)
        if data[:1] in _CRLF and not data.strip(b"\r\n"):
            self.write_frame(_PONG)  # a CRLF keep-alive: answered, not counted
            return
        self.last_sip = now
        self.delivered = True
        self.manager.deliver(data, self.src)

    def _failed(self, exc: Exception) -> None:
        """The library failed the connection (its close frame is queued): count why."""
        if isinstance(exc, PayloadTooBig):
            self.manager.note_close(self, "too_large", "WebSocket message over "
                                    f"{self.manager.max_size} bytes (limits.max_message_size): "
                                    "closed with 1009")
        else:
            self.manager.note_close(self, "framing", f"WebSocket protocol error: {exc}")

    @property
    def ws_manager(self) -> WsManager:
        m = self.manager
        assert isinstance(m, WsManager)
        return m

    def write(self, data: bytes) -> None:
        """Send one SIP message, as one text frame when it is UTF-8 (what a browser's
        ``onmessage`` reads as a string), else as a binary frame (RFC 7118 5)."""
        if self.transport is not None and not self.closed:
            self.last_sip = time.monotonic()
            self.write_frame(data)

    def write_frame(self, data: bytes) -> None:
        ws = self.ws
        if ws.state is not OPEN:
            return
        if data.isascii():
            ws.send_text(data)
        else:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                ws.send_binary(data)
            else:
                ws.send_text(data)
        self._flush()

    def _flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self._send_bytes(chunk)
            else:  # the library's end of stream: the close handshake or a refusal is sent
                self.close()

    def close(self, code: int = 1000) -> None:
        """Close frame (when open), then TLS close_notify (wss), then the TCP connection."""
        if self.transport is None or self.closed:
            return
        ws = self.ws
        if ws.state is OPEN:
            ws.send_close(code)
            for chunk in ws.data_to_send():
                if chunk:
                    self._send_bytes(chunk)
        super().close()


def _refusal(ws: ServerProtocol) -> tuple[str, str]:
    """Why an opening handshake was refused: the reason counted, and what is logged."""
    exc = ws.handshake_exc
    if isinstance(exc, InvalidOrigin):
        return "origin", f"403, Origin {exc.value!r} not in ws_allowed_origins"
    if isinstance(exc, NegotiationError):
        return "subprotocol", f"400, {exc} (RFC 7118 4: the subprotocol is sip)"
    return "upgrade", f"not a WebSocket upgrade: {exc}"


class WsManager(TcpManager):
    """The ``ws:`` (or, with a TLS server context, ``wss:``) listeners and their connections.

    The TCP machinery's table and limits; ``handshake_timeout`` bounds the upgrade (and the
    TLS handshake before it). ``origins``: the ``Origin`` values accepted (None: any)."""

    def __init__(self, *args: Any, origins: Sequence[str] | None = None,
                 handshake_timeout: float = 5.0, server_ctx: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = "ws" if server_ctx is None else "wss"
        self.handshake_what = ("WebSocket upgrade" if server_ctx is None
                               else "TLS handshake and WebSocket upgrade")
        self.origins: list[Origin | None] | None = (
            [Origin(o) for o in origins] if origins else None)
        self.handshake_timeout = handshake_timeout
        self.server_ctx = server_ctx

    def stream(self, outgoing: bool = False, server_name: str | None = None) -> SipStream:
        tls = TlsSession(self.server_ctx, True) if self.server_ctx is not None else None
        return WsStream(self, tls)

    def refuse_upgrade(self, s: SipStream, reason: str, why: str) -> None:
        """Count and log (once a minute per reason) an opening handshake refused."""
        self.stats.refused[reason] += 1
        self.say(reason, logging.INFO, "refused %s upgrade from %s:%s: %s", self.name,
                 s.peer[0], s.peer[1], why)

    def send(self, s: Send) -> None:
        """Over the peer's own connection only: the proxy opens no WebSocket connection
        (RFC 7118 5.3: a browser is reached over the connection it opened)."""
        if s.conn_id is None:
            conn = self.by_peer.get((s.host, s.port))
            if conn is not None and not conn.closed:
                conn.write(s.data)
            else:
                self._not_sent(s, None)
            return
        super().send(s)
