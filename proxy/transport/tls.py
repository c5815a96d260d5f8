"""TLS transport (RFC 3261 18, 26.2; RFC 5922; RFC 5630): the TCP stream machinery of
:mod:`proxy.transport.tcp` (framing, connection table, flows, conn ids, limits) over the
standard :mod:`ssl` module (:mod:`proxy.transport.tlssession`). No cryptography is done here.

* Server side (``tls:`` listeners): the proxy's certificate and key; with
  ``tls.verify_client`` a client must present a certificate signed by ``tls.ca_file``
  (mutual TLS with trusted PBXs and trunks), otherwise the handshake fails.
* Client side (``sips:`` / ``;transport=tls`` upstreams and targets): the peer's certificate
  must chain to ``tls.ca_file`` (or the system CAs) and match the host name of the URI the
  request goes to (RFC 5922 7.2; an IP address is matched against the certificate's IP
  SANs); the proxy presents its own certificate too, for trunks that want mutual TLS.
* A handshake must finish within ``handshake_timeout`` seconds (both sides), counted from the
  TCP connect; until then the connection holds a slot of the table like any other
  (:mod:`proxy.transport.conns`).
* Connection reuse (RFC 5923): a request whose top Via carries ``alias`` makes its
  connection the one for the Via's sent-by address too, when the peer proved that name with
  its client certificate (mutual TLS; RFC 5923 6, 9: never on an unauthenticated claim).
* :meth:`TlsManager.reload` re-reads the certificate, key and CA files (SIGHUP): new
  connections use them, open ones keep theirs.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any

from proxy.sip import ParseError, parse_message
from proxy.transport.base import Source
from proxy.transport.tcp import SipStream, TcpManager
from proxy.transport.tlssession import CONTEXT_LOCK, TlsSession

log = logging.getLogger("proxy.transport.tls")

HANDSHAKE_TIMEOUT = 5.0


def server_context(cert_file: Path, key_file: Path, ca_file: Path | None = None,
                   verify_client: bool = False) -> ssl.SSLContext:
    """The context of the ``tls:`` listeners; raises ssl.SSLError / OSError on bad files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, cert_file, key_file, ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_NONE
    return ctx


def client_context(cert_file: Path | None = None, key_file: Path | None = None,
                   ca_file: Path | None = None) -> ssl.SSLContext:
    """The context for connections the proxy opens: the peer's certificate is verified
    (``ca_file``, or the system CAs) and its name checked (RFC 5922)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, cert_file, key_file, ca_file)
    return ctx


def _load(ctx: ssl.SSLContext, cert_file: Path | None, key_file: Path | None,
          ca_file: Path | None) -> None:
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))


class TlsManager(TcpManager):
    """:class:`TcpManager` over TLS: ``Source.transport`` is ``"tls"``. The TLS layer is a
    :class:`TlsSession` per connection, so that a connection is in the table (and its limits)
    from the moment it is accepted, handshake included."""

    name = "tls"

    def __init__(self, *args: Any, server_ctx: ssl.SSLContext | None,
                 client_ctx: ssl.SSLContext, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.handshake_timeout = handshake_timeout
        self.files = files  # cert, key, ca: what reload() re-reads
        self._deliver_message = self.deliver
        self.deliver = self._deliver_with_alias

    def stream(self, outgoing: bool = False, server_name: str | None = None) -> SipStream:
        if outgoing:
            return SipStream(self, True, TlsSession(self.client_ctx, False, server_name))
        assert self.server_ctx is not None
        return SipStream(self, False, TlsSession(self.server_ctx, True))

    def _deliver_with_alias(self, data: bytes, src: Source) -> None:
        if b";alias" in data[:4096]:
            self._alias(data, src)
        self._deliver_message(data, src)

    def _alias(self, data: bytes, src: Source) -> None:
        """RFC 5923: reuse this connection for requests to the top Via's sent-by."""
        conn = self.conns.get(src.conn_id) if src.conn_id is not None else None
        if conn is None or conn.tls is None:
            return
        try:
            msg = parse_message(data, max_size=self.max_size, datagram=False)
            if not msg.is_request:
                return
            via = msg.top_via
            if "alias" not in via.params:
                return
            host, port = via.sent_by()
        except ParseError:
            return
        cert = conn.tls.peercert()
        if not cert or not names_host(cert, host):
            log.debug("alias of %s:%s not used: its certificate does not name %s",
                      src.host, src.port, host)
            return
        key = (host, port)
        if key != conn.peer and key not in conn.aliases:
            conn.aliases.append(key)
            self.by_peer[key] = conn

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        if self.server_ctx is None:
            raise OSError(f"tls listen {host}:{port}: no certificate configured")
        await super().listen(host, port, reuse_port=reuse_port)

    def reload(self) -> bool:
        """Re-read the certificate, key and CA files into the live contexts (SIGHUP); on an
        error the contexts are left as they were and False is returned."""
        cert, key, ca = self.files
        try:
            # Check the files on a scratch context first: a half-loaded context is worse
            # than the old one.
            _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)
            with CONTEXT_LOCK:  # no handshake thread makes a session from them meanwhile
                for ctx in (self.server_ctx, self.client_ctx):
                    if ctx is not None:
                        _load(ctx, cert, key, ca)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls certificates not reloaded (the old ones stay): %s", exc)
            return False
        log.info("tls certificates reloaded from %s", cert)
        return True


def names_host(cert: dict[str, Any], host: str) -> bool:
    """Whether a verified peer certificate (``getpeercert()``) names ``host``: a DNS name of its
    subjectAltName (exactly, or by a left-most ``*`` label), or an IP address one."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address" and ip is not None:
            try:
                if ipaddress.ip_address(value.strip()) == ip:
                    return True
            except ValueError:
                continue
        elif kind == "DNS" and ip is None:
            name = value.lower().rstrip(".")
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
                return True
    return False
