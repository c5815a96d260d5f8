"""STUN keep-alive answers on the SIP UDP port (RFC 5626 4.4.2, 8; RFC 5389).

Requests are built by hand here; responses are checked byte by byte and decoded with a small
decoder of this file, which is itself checked first against the RFC 5769 test vectors (their
FINGERPRINT and MESSAGE-INTEGRITY are verified, so the vectors below are exactly the RFC's).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib

import pytest

from proxy.transport.stun import (
    BINDING_REQUEST,
    BINDING_SUCCESS,
    FINGERPRINT,
    FINGERPRINT_XOR,
    MAGIC_COOKIE,
    XOR_MAPPED_ADDRESS,
    binding_response,
    is_stun,
)

COOKIE = bytes.fromhex("2112a442")
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")  # RFC 5769's transaction id

# RFC 5769 2.1 Sample Request (short-term credentials, password below).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"  # SOFTWARE "STUN test client"
    "002400046e0001ff"  # PRIORITY
    "80290008932ff9b151263b36"  # ICE-CONTROLLED
    "000600096576746a3a68367659202020"  # USERNAME "evtj:h6vY" + padding
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004e57a3bcf"  # FINGERPRINT
)
# RFC 5769 2.2 Sample IPv4 Response: XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"  # SOFTWARE "test vector "
    "002000080001a147e112a643"  # XOR-MAPPED-ADDRESS
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"  # MESSAGE-INTEGRITY
    "80280004c07d4c96"  # FINGERPRINT
)
# RFC 5769 2.3 Sample IPv6 Response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a147"  # XOR-MAPPED-ADDRESS: family 2, X-Port
    "0113a9faa5d3f179bc25f4b5bed2b9d9"  # X-Address
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


# ---------------------------------------------------------------------------------------------
# A small decoder for the tests, checked against the RFC vectors


def attributes(msg: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, type, value) of every attribute; asserts the framing is exact."""
    out = []
    i = 20
    while i < len(msg):
        kind, length = struct.unpack_from("!HH", msg, i)
        out.append((i, kind, msg[i + 4:i + 4 + length]))
        i += 4 + ((length + 3) & ~3)
    assert i == len(msg)
    return out


def fingerprint_ok(msg: bytes) -> bool:
    offset, kind, value = attributes(msg)[-1]
    assert kind == 0x8028
    return struct.unpack("!I", value)[0] == zlib.crc32(msg[:offset]) ^ 0x5354554E


def integrity_ok(msg: bytes, key: bytes) -> bool:
    """RFC 5389 15.4: HMAC-SHA1 over the message up to M-I, length field covering M-I."""
    for offset, kind, value in attributes(msg):
        if kind == 0x0008:
            head = bytearray(msg[:offset])
            struct.pack_into("!H", head, 2, offset + 24 - 20)
            return hmac.new(key, bytes(head), hashlib.sha1).digest() == value
    raise AssertionError("no MESSAGE-INTEGRITY")


def xor_mapped(msg: bytes) -> tuple[str, int]:
    """Decode XOR-MAPPED-ADDRESS (RFC 5389 15.2)."""
    (value,) = [v for _, k, v in attributes(msg) if k == 0x0020]
    family, x_port = struct.unpack_from("!xBH", value)
    port = x_port ^ 0x2112
    if family == 1:
        assert len(value) == 8
        return str(ipaddress.IPv4Address(int.from_bytes(value[4:], "big") ^ 0x2112A442)), port
    assert family == 2 and len(value) == 20
    mask = int.from_bytes(msg[4:20], "big")  # cookie + transaction id
    return str(ipaddress.IPv6Address(int.from_bytes(value[4:], "big") ^ mask)), port


def test_the_rfc5769_vectors_are_the_rfcs() -> None:
    """FINGERPRINT and MESSAGE-INTEGRITY of each vector verify: not a byte is misremembered."""
    for vector in (RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE):
        assert fingerprint_ok(vector)
        assert integrity_ok(vector, RFC5769_PASSWORD)
        assert vector[8:20] == TID


def test_decoder_reads_the_rfc5769_mapped_addresses() -> None:
    assert xor_mapped(RFC5769_IPV4_RESPONSE) == ("192.0.2.1", 32853)
    assert xor_mapped(RFC5769_IPV6_RESPONSE) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


# ---------------------------------------------------------------------------------------------
# Building requests by hand


def attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def message(kind: int, *attrs: bytes, tid: bytes = TID, fingerprint: bool = False) -> bytes:
    body = b"".join(attrs)
    length = len(body) + (8 if fingerprint else 0)
    msg = struct.pack("!HHI", kind, length, 0x2112A442) + tid + body
    if fingerprint:
        msg += struct.pack("!HHI", 0x8028, 4, zlib.crc32(msg) ^ 0x5354554E)
    return msg


def request(*attrs: bytes, tid: bytes = TID, fingerprint: bool = False) -> bytes:
    return message(0x0001, *attrs, tid=tid, fingerprint=fingerprint)


def test_constants_are_rfc5389s() -> None:
    assert (MAGIC_COOKIE, FINGERPRINT_XOR) == (0x2112A442, 0x5354554E)
    assert (BINDING_REQUEST, BINDING_SUCCESS) == (0x0001, 0x0101)
    assert (XOR_MAPPED_ADDRESS, FINGERPRINT) == (0x0020, 0x8028)


# ---------------------------------------------------------------------------------------------
# is_stun


def test_is_stun_accepts_stun_messages() -> None:
    assert is_stun(request())
    assert is_stun(request(fingerprint=True))
    assert is_stun(RFC5769_REQUEST)
    assert is_stun(RFC5769_IPV4_RESPONSE)
    assert is_stun(message(0x0011))  # a Binding Indication is STUN too


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"OPTIONS sip:proxy.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        request()[:19],  # short header
        b"\x40" + request()[1:],  # first bits 01
        b"\x80" + request()[1:],  # first bits 10
        request()[:4] + b"\x21\x12\xa4\x43" + request()[8:],  # wrong cookie
        request() + b"\x00\x00\x00\x00",  # length field says 0, datagram has 4 more
        request(attr(0x8022, b"abcd"))[:-4],  # length field says 8, datagram has 4
        struct.pack("!HHI", 1, 2, 0x2112A442) + TID + b"\x00\x00",  # length not % 4
        # RFC 3489 (no cookie): not RFC 5389 STUN
        struct.pack("!HH", 1, 0) + b"\x01\x02\x03\x04" + TID,
    ],
)
def test_is_stun_refuses_everything_else(data: bytes) -> None:
    assert not is_stun(data)


# ---------------------------------------------------------------------------------------------
# binding_response


def test_ipv4_binding_response_byte_by_byte() -> None:
    tid = bytes(range(1, 13))
    resp = binding_response(request(tid=tid), ("192.0.2.1", 32853))
    assert resp is not None
    assert len(resp) == 20 + 12 + 8
    assert resp[0:2] == b"\x01\x01"  # Binding Success Response
    assert resp[2:4] == (12 + 8).to_bytes(2, "big")  # length: XOR-MAPPED-ADDRESS + FINGERPRINT
    assert resp[4:8] == COOKIE
    assert resp[8:20] == tid  # the request's transaction id
    # XOR-MAPPED-ADDRESS: type, length 8, reserved 0, family 1, X-Port, X-Address
    assert resp[20:32] == bytes.fromhex("00200008" "0001" "a147" "e112a643")
    assert resp[32:36] == bytes.fromhex("80280004")
    assert resp[36:40] == (zlib.crc32(resp[:32]) ^ 0x5354554E).to_bytes(4, "big")
    assert fingerprint_ok(resp)
    assert xor_mapped(resp) == ("192.0.2.1", 32853)


def test_xor_mapped_address_matches_the_rfc5769_vectors() -> None:
    """For the vectors' transaction id and addresses, our attribute is the RFC's, byte for
    byte (IPv6 X-Address uses the transaction id, so this checks that too)."""
    v4 = binding_response(request(), ("192.0.2.1", 32853))
    v6 = binding_response(request(), ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
    assert v4 is not None and v6 is not None
    assert v4[20:32] == RFC5769_IPV4_RESPONSE[36:48]
    assert v6[20:44] == RFC5769_IPV6_RESPONSE[36:60]
    assert v6[0:4] == bytes.fromhex("0101" "0020")  # 24 + 8 bytes of attributes
    assert fingerprint_ok(v6)


@pytest.mark.parametrize(
    "addr",
    [("203.0.113.9", 5060), ("0.0.0.0", 0), ("255.255.255.255", 65535), ("::1", 5060),
     ("2001:db8::1", 1), ("fe80::1234", 40000), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)],
)
def test_xor_mapped_address_round_trip(addr: tuple[str, int]) -> None:
    for tid in (TID, bytes(12), b"\xff" * 12):
        resp = binding_response(request(tid=tid), addr)
        assert resp is not None
        assert resp[8:20] == tid
        assert xor_mapped(resp) == addr
        assert fingerprint_ok(resp)


def test_ipv4_mapped_peer_is_reported_as_ipv4() -> None:
    resp = binding_response(request(), ("::ffff:192.0.2.1", 32853))
    assert resp is not None
    assert resp[20:32] == RFC5769_IPV4_RESPONSE[36:48]


def test_socket_four_tuple_and_zone_are_accepted() -> None:
    resp = binding_response(request(), ("fe80::1%eth0", 5060, 0, 2))
    assert resp is not None
    assert xor_mapped(resp) == ("fe80::1", 5060)


def test_request_with_fingerprint_and_optional_attributes_is_answered() -> None:
    req = request(attr(0x8022, b"keepalive 1.0"), attr(0x8029, b"\x01" * 8), fingerprint=True)
    resp = binding_response(req, ("198.51.100.4", 6000))
    assert resp is not None
    assert xor_mapped(resp) == ("198.51.100.4", 6000)
    # nothing of the request is echoed: only XOR-MAPPED-ADDRESS and FINGERPRINT
    assert [k for _, k, _ in attributes(resp)] == [0x0020, 0x8028]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("binding success response", message(0x0101)),
        ("binding error response", message(0x0111)),
        ("binding indication", message(0x0011)),
        ("allocate request (TURN)", message(0x0003)),
        ("not stun", b"OPTIONS sip:x SIP/2.0\r\n\r\n" + bytes(20)),
        ("wrong fingerprint", request(fingerprint=True)[:-1] + b"\x00"),
        ("fingerprint not last", request(attr(0x8028, b"\x00\x00\x00\x00"), attr(0x8022, b"x"))),
        ("fingerprint of wrong size", request(attr(0x8028, b"\x00" * 8))),
        ("attribute longer than the message", struct.pack("!HHI", 1, 8, 0x2112A442) + TID
         + struct.pack("!HH", 0x8022, 8) + b"abcd"),
        ("unknown comprehension-required attribute", request(attr(0x7FFF, b"x"))),
        ("CHANGE-REQUEST (RFC 5780)", request(attr(0x0003, b"\x00\x00\x00\x06"))),
        ("USERNAME", request(attr(0x0006, b"user"))),
        ("rfc5769 authenticated ICE request", RFC5769_REQUEST),
    ],
)
def test_anything_but_a_plain_binding_request_gets_no_answer(name: str, data: bytes) -> None:
    assert binding_response(data, ("192.0.2.1", 5060)) is None, name


def test_unknown_comprehension_optional_attribute_is_ignored() -> None:
    assert binding_response(request(attr(0xC001, b"whatever")), ("192.0.2.1", 1)) is not None
    assert binding_response(request(attr(0x8000, b"")), ("192.0.2.1", 1)) is not None


@pytest.mark.parametrize("addr", [("example.com", 5060), ("192.0.2.1", 70000), ("", 1)])
def test_a_bad_peer_address_is_a_caller_error(addr: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        binding_response(request(), addr)
