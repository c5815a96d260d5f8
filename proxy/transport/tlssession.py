"""TLS over a connection's bytes (RFC 3261 26.2, RFC 5630): :class:`ssl.SSLObject` between two
:class:`ssl.MemoryBIO`, driven by the stream that owns the plain TCP connection.

Why not the event loop's ``ssl=``: with it, a connection is only seen by the proxy once its
handshake is over, so a stranger's handshakes escaped the connection limits, and the loop keeps
per-connection state the proxy cannot bound (uvloop's TLS protocol allocates a 256 KiB read
buffer for every accepted connection). Measured with the loop's ``ssl=`` (uvloop 0.23, Python
3.11.7, glibc 2.36): 3,000 connections that opened TCP to the TLS port and sent nothing took
the proxy's RSS from 33 MB to 181 MB, and it stayed at 173 MB after the handshake timeout had
closed them all. Here a connection is a plain TCP connection of the table from the moment it
is accepted (the limits count it, its handshake has a deadline), and the ``SSLObject`` is made
only when the first byte arrives: the same 3,000 silent connections took 6 MB. A handshake
that did start holds some 45 KB of OpenSSL state until it ends; that memory is freed when the
connection closes (:meth:`TlsSession.release`) and given back to the system by
:class:`proxy.runtime.limits.MemoryTrim`.

The server side's handshake steps run in a thread (:mod:`proxy.transport.tlspool`): while one
is out, only that thread touches the session.

No IO here: :meth:`TlsSession.receive` takes the bytes read from the socket and returns the
plaintext they carried and the TLS records to write back; :meth:`TlsSession.wrap` turns
plaintext into records. Every ``ssl.SSLError`` (a failed handshake, a bad certificate, a
corrupt record) reaches the caller, which closes the connection.
"""

from __future__ import annotations

import ssl
import threading

__all__ = ["CONTEXT_LOCK", "TlsSession"]

#: held while a session is made from a context (``SSL_new`` copies the context's certificate
#: and key) and while the live contexts are reloaded (SIGHUP: ``load_cert_chain`` releases
#: the GIL while it replaces them): a handshake thread never copies a half-replaced key
CONTEXT_LOCK = threading.Lock()

_READ = 65536


class TlsSession:
    """One side of one TLS connection (server side for accepted connections, client side for
    the ones the proxy opens, which check the peer's name: RFC 5922 7.2)."""

    __slots__ = ("_in", "_obj", "_out", "ctx", "done", "eof", "server_hostname", "server_side")

    def __init__(self, ctx: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.ctx = ctx
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.done = False  # the handshake is over
        self.eof = False  # the peer sent close_notify
        self._obj: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None

    def _start(self) -> ssl.SSLObject:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        with CONTEXT_LOCK:
            self._obj = self.ctx.wrap_bio(self._in, self._out, server_side=self.server_side,
                                          server_hostname=self.server_hostname)
        return self._obj

    def hello(self) -> bytes:
        """Client side: the records that open the handshake (the ClientHello)."""
        obj = self._obj or self._start()
        self._handshake(obj)
        return self._pending()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Records read from the socket -> (plaintext they completed, records to send back).
        Raises ``ssl.SSLError`` when the connection must be closed."""
        obj = self._obj or self._start()
        self._in.write(data)  # type: ignore[union-attr]  # made with the SSLObject
        if not self.done and not self._handshake(obj):
            return b"", self._pending()
        chunks: list[bytes] = []
        while True:
            try:
                chunk = obj.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True  # close_notify: the peer ends the connection cleanly
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
        plain = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return plain, self._pending()  # TLS 1.3 tickets, key updates: records to send too

    def _handshake(self, obj: ssl.SSLObject) -> bool:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.done = True
        return True

    def wrap(self, data: bytes) -> bytes:
        """Plaintext -> the records that carry it; ``ssl.SSLError`` before the handshake is
        over or after :meth:`release`."""
        if self._obj is None or not self.done:
            raise ssl.SSLError("TLS connection not established")
        self._obj.write(data)
        return self._pending()

    def goodbye(self) -> bytes:
        """The close_notify alert to send before closing (b"" when there is none to send)."""
        if self._obj is None or not self.done:
            return b""
        try:
            self._obj.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: ours is written, the peer's is not awaited
        return self._pending()

    def peercert(self) -> dict[str, object] | None:
        """The peer's verified certificate (``SSLObject.getpeercert()``), if it sent one."""
        if self._obj is None or not self.done:
            return None
        return self._obj.getpeercert()  # type: ignore[return-value]

    def release(self) -> None:
        """Drop the OpenSSL state at once (the connection is closed)."""
        self._obj = self._in = self._out = None

    def _pending(self) -> bytes:
        out = self._out
        return out.read() if out is not None and out.pending else b""
