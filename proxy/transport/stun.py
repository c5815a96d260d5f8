"""STUN keep-alives on the SIP UDP port (RFC 5626 4.4.2, 8; RFC 5389).

A SIP Outbound UA behind NAT keeps its UDP flow open by sending STUN Binding Requests to the
SIP port of its edge proxy, and compares the XOR-MAPPED-ADDRESS of the answers to notice that
the NAT binding changed (RFC 5626 4.4.2). The proxy answers as a minimal STUN server
(RFC 5626 8: no authentication, FINGERPRINT support), on the same socket as SIP: a datagram
whose first two bits are 0 and that carries the magic cookie is STUN (RFC 5389 6, 7.3; a SIP
message starts with an ASCII letter, so the two never collide).

Message header (RFC 5389 6)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |0 0|     STUN Message Type     |         Message Length        |
    |                         Magic Cookie                          |
    |                     Transaction ID (96 bits)                  |

No IO: :func:`is_stun` classifies a datagram and :func:`binding_response` returns the bytes
to send back (or None). Requests that are not plain unauthenticated Binding Requests get no
answer: a full server would send a 400/401/420 error response (RFC 5389 7.3.1, 10), but a
keep-alive client never needs one, and staying silent gives a spoofed source nothing to
reflect.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

__all__ = [
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "FINGERPRINT",
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "MAGIC_COOKIE",
    "XOR_MAPPED_ADDRESS",
    "binding_response",
    "is_stun",
]

HEADER_SIZE = 20
MAGIC_COOKIE = 0x2112A442  # RFC 5389 6
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
BINDING_REQUEST = 0x0001  # RFC 5389 18.1: method Binding, class request
BINDING_SUCCESS = 0x0101  # method Binding, class success response
XOR_MAPPED_ADDRESS = 0x0020  # RFC 5389 15.2
FINGERPRINT = 0x8028  # RFC 5389 15.5
FINGERPRINT_XOR = 0x5354554E  # "STUN"
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02

_HEADER = struct.Struct("!HHI")  # type, length, magic cookie (the transaction id follows)
_ATTR = struct.Struct("!HH")  # attribute type, length
_FINGERPRINT_ATTR = struct.Struct("!HHI")


def is_stun(data: bytes) -> bool:
    """True for a STUN message (RFC 5389 7.3): first two bits 0, the magic cookie at offset 4,
    and a length that is a multiple of 4 and matches the datagram."""
    return (
        len(data) >= HEADER_SIZE
        and data[0] & 0xC0 == 0
        and data[4:8] == _COOKIE_BYTES
        and (len(data) - HEADER_SIZE) & 3 == 0
        and int.from_bytes(data[2:4], "big") == len(data) - HEADER_SIZE
    )


def _attributes_ok(data: bytes) -> bool:
    """Walk the attributes of a request (RFC 5389 15): well formed, no comprehension-required
    attribute (0x0000-0x7FFF: this server understands none, authentication included), and a
    FINGERPRINT, when present, last and correct (RFC 5389 7.3, 15.5)."""
    i = HEADER_SIZE
    end = len(data)
    while i < end:
        if i + 4 > end:
            return False
        kind, length = _ATTR.unpack_from(data, i)
        value = i + 4
        nxt = value + ((length + 3) & ~3)  # values are padded to 4 bytes
        if nxt > end:
            return False
        if kind == FINGERPRINT:
            if length != 4 or nxt != end:
                return False
            expected = zlib.crc32(data[:i]) ^ FINGERPRINT_XOR
            return int.from_bytes(data[value:value + 4], "big") == expected
        if kind < 0x8000:
            return False
        i = nxt
    return True


def _xor_mapped_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS attribute for ``host:port`` (RFC 5389 15.2).

    X-Port is the port XOR the cookie's top 16 bits; an IPv4 X-Address is the address XOR
    the cookie, an IPv6 one XOR the cookie followed by the transaction id. An IPv4-mapped
    IPv6 peer (a dual-stack socket) is reported as the IPv4 address it is.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not 0..65535")
    ip = ipaddress.ip_address(host)  # ValueError for a non-IP host: a caller's bug
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    x_port = port ^ (MAGIC_COOKIE >> 16)
    if isinstance(ip, ipaddress.IPv4Address):
        x_addr = (int(ip) ^ MAGIC_COOKIE).to_bytes(4, "big")
        return _ATTR.pack(XOR_MAPPED_ADDRESS, 8) + struct.pack("!BBH", 0, _FAMILY_IPV4, x_port) \
            + x_addr
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    x_addr = (int(ip) ^ mask).to_bytes(16, "big")
    return _ATTR.pack(XOR_MAPPED_ADDRESS, 20) + struct.pack("!BBH", 0, _FAMILY_IPV6, x_port) \
        + x_addr


def binding_response(
    data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]
) -> bytes | None:
    """The Binding Success Response to a Binding Request ``data`` received from ``addr``.

    The response (RFC 5389 7.3.1, 10) has the request's transaction id, an XOR-MAPPED-ADDRESS
    of ``addr`` (IPv4 or IPv6; a socket's 4-tuple is accepted) and a FINGERPRINT (CRC-32 of the
    message before it, XOR 0x5354554E). Anything else gets None: not STUN, not a Binding
    Request (responses, indications, other methods), malformed attributes, a wrong
    FINGERPRINT, or a comprehension-required attribute (unknown, or authentication that this
    server cannot check). Raises ValueError when ``addr`` is not an IP address and port.
    """
    if not is_stun(data) or int.from_bytes(data[0:2], "big") != BINDING_REQUEST:
        return None
    if not _attributes_ok(data):
        return None
    transaction_id = data[8:HEADER_SIZE]
    body = _xor_mapped_address(addr[0], addr[1], transaction_id)
    head = _HEADER.pack(BINDING_SUCCESS, len(body) + _FINGERPRINT_ATTR.size, MAGIC_COOKIE)
    message = head + transaction_id + body
    crc = zlib.crc32(message) ^ FINGERPRINT_XOR
    return message + _FINGERPRINT_ATTR.pack(FINGERPRINT, 4, crc)
