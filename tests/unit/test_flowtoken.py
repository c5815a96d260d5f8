"""Flow tokens (RFC 5626 5.2): a flow survives the round trip, and nothing else decodes.

Round trips for IPv4, IPv6 (and mixed, mapped, zoned) flows with and without a connection id;
the token fits a SIP URI user part; and every way to tamper with a token (a flipped bit
anywhere, truncation, extension, another secret, a forged MAC, non-base64) gives None.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from proxy.core.outbound.flowtoken import CACHE_SIZE, MAC_SIZE, MAX_TOKEN_LENGTH, Flow, FlowTokens
from proxy.sip import SipUri, parse_uri

SECRET = "0123456789abcdef0123456789abcdef"
BOOT = b"boot-id1"  # one start's boot id, fixed so that two instances make the same tokens
B64URL = re.compile(r"[A-Za-z0-9_-]+")

FLOWS = [
    Flow("udp", "192.0.2.1", 5060, "198.51.100.7", 40000, None),
    Flow("tcp", "192.0.2.1", 5060, "198.51.100.7", 40001, 0),
    Flow("tls", "10.0.0.1", 5061, "203.0.113.250", 65535, 2**64 - 1),
    Flow("udp", "2001:db8::1", 5060, "2001:db8:1234:5678:11:2233:4455:6677", 1, None),
    Flow("tcp", "::", 0, "2001:db8::99", 50123, 7),
    Flow("tls", "192.0.2.1", 5061, "2001:db8::2", 5061, 123456789),
    Flow("udp", "::1", 5060, "::ffff:192.0.2.44", 5062, None),
    Flow("tcp", "fe80::1%eth0", 5060, "fe80::2%eth0", 5070, 3),
    Flow("sctp", "192.0.2.1", 5060, "192.0.2.2", 5060, None),
    Flow("ws", "192.0.2.1", 80, "192.0.2.2", 50000, 1),
    Flow("wss", "192.0.2.1", 443, "192.0.2.2", 50000, 256),
]


@pytest.fixture
def tokens() -> FlowTokens:
    return FlowTokens(SECRET, BOOT)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f"{f.transport}-{f.remote_host}")
def test_round_trip(tokens: FlowTokens, flow: Flow) -> None:
    token = tokens.encode(flow)
    assert tokens.decode(token) == flow


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f"{f.transport}-{f.remote_host}")
def test_token_from_the_fields_is_the_token_of_the_flow(flow: Flow) -> None:
    """FlowTokens.token (the forwarding path: no Flow built on a cache hit) and encode give
    the same token, whichever is asked first (RFC 5626 5.2: one token per flow)."""
    fields = (flow.transport, flow.local_host, flow.local_port, flow.remote_host,
              flow.remote_port, flow.conn_id, flow.node)
    first, second = FlowTokens(SECRET, BOOT), FlowTokens(SECRET, BOOT)
    assert first.token(*fields) == first.encode(flow) == second.encode(flow)
    assert second.token(*fields) == second.encode(flow) and first.decode(first.token(*fields)) == flow


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f"{f.transport}-{f.remote_host}")
def test_token_is_a_sip_uri_user_part(tokens: FlowTokens, flow: Flow) -> None:
    token = tokens.encode(flow)
    assert B64URL.fullmatch(token), token  # base64url, no padding
    assert "=" not in token
    parsed = parse_uri(f"sip:{token}@edge.example.com;lr")
    assert isinstance(parsed, SipUri)
    assert parsed.user == token
    assert tokens.decode(parsed.user) == flow


def test_tokens_are_compact(tokens: FlowTokens) -> None:
    v4 = tokens.encode(Flow("udp", "192.0.2.1", 5060, "198.51.100.7", 40000, None))
    v6 = tokens.encode(Flow("tcp", "2001:db8::1", 5060, "2001:db8::2", 40000, None))
    # version + flags, 2 x (address + port), 12-byte MAC
    assert len(_raw(v4)) == 2 + 2 * (4 + 2) + MAC_SIZE == 26
    assert len(v4) == 35
    assert len(_raw(v6)) == 2 + 2 * (16 + 2) + MAC_SIZE == 50
    assert len(v6) == 67
    with_conn = tokens.encode(Flow("tcp", "192.0.2.1", 5060, "198.51.100.7", 40000, 200))
    # a connection: its id (length + 1 byte), the 8-byte boot id, an empty node
    assert len(_raw(with_conn)) == 26 + 2 + 8 + 1


def test_mac_is_truncated_hmac_sha256_over_the_payload(tokens: FlowTokens) -> None:
    """The last 12 bytes are HMAC-SHA256 (key derived from the secret) over the rest."""
    raw = _raw(tokens.encode(FLOWS[0]))
    payload, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    assert MAC_SIZE >= 10
    key = hmac.digest(SECRET.encode(), b"sip-policy-proxy flow token v1 (RFC 5626 5.2)", "sha256")
    assert mac == hmac.new(key, payload, hashlib.sha256).digest()[:MAC_SIZE]
    # The layout: version 1, flags (udp=0, IPv4/IPv4, no conn_id), the addresses and ports.
    assert payload == bytes([1, 0]) + bytes([192, 0, 2, 1]) + (5060).to_bytes(2, "big") \
        + bytes([198, 51, 100, 7]) + (40000).to_bytes(2, "big")


def test_encoding_is_deterministic_and_distinct(tokens: FlowTokens) -> None:
    assert tokens.encode(FLOWS[0]) == tokens.encode(FLOWS[0])
    assert tokens.encode(FLOWS[0]) == FlowTokens(SECRET.encode()).encode(FLOWS[0])
    assert len({tokens.encode(f) for f in FLOWS}) == len(FLOWS)
    # conn_id None and 0 are different flows
    assert tokens.encode(Flow("tcp", "192.0.2.1", 1, "192.0.2.2", 2, None)) != \
        tokens.encode(Flow("tcp", "192.0.2.1", 1, "192.0.2.2", 2, 0))


def test_hosts_come_back_canonical(tokens: FlowTokens) -> None:
    flow = Flow("TCP", "2001:DB8:0:0::1", 5060, "::FFFF:192.0.2.1", 5062, None)
    assert tokens.decode(tokens.encode(flow)) == Flow(
        "tcp", "2001:db8::1", 5060, "::ffff:192.0.2.1", 5062, None
    )


# ---------------------------------------------------------------------------------------------
# tampering


@pytest.mark.parametrize("flow", [FLOWS[0], FLOWS[4]], ids=["ipv4", "ipv6-conn"])
def test_every_flipped_bit_is_detected(tokens: FlowTokens, flow: Flow) -> None:
    raw = _raw(tokens.encode(flow))
    for i in range(len(raw)):
        for bit in range(8):
            forged = bytearray(raw)
            forged[i] ^= 1 << bit
            assert tokens.decode(_b64(bytes(forged))) is None, (i, bit)


def test_every_changed_character_is_detected(tokens: FlowTokens) -> None:
    token = tokens.encode(FLOWS[1])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, c in enumerate(token):
        for other in alphabet:
            if other != c:
                forged = token[:i] + other + token[i + 1:]
                assert tokens.decode(forged) is None, (i, other)


def test_truncated_and_extended_tokens_are_refused(tokens: FlowTokens) -> None:
    token = tokens.encode(FLOWS[3])
    for n in range(len(token)):
        assert tokens.decode(token[:n]) is None, n
    raw = _raw(token)
    for n in range(len(raw)):
        assert tokens.decode(_b64(raw[:n])) is None, n
    for extra in ("A", "AA", "AAA", "AAAA", "_-_-"):
        assert tokens.decode(token + extra) is None
    assert tokens.decode(_b64(raw + b"\x00")) is None
    assert tokens.decode(_b64(b"\x00" + raw)) is None


def test_another_secret_does_not_decode(tokens: FlowTokens) -> None:
    token = tokens.encode(FLOWS[0])
    assert FlowTokens(SECRET + "x").decode(token) is None
    assert FlowTokens(b"\x00" * 32).decode(token) is None


def test_a_payload_with_a_forged_mac_is_refused(tokens: FlowTokens) -> None:
    """An attacker who knows the layout but not the key: the flow of their choice, any MAC."""
    raw = _raw(tokens.encode(FLOWS[0]))
    payload = raw[:-MAC_SIZE]
    evil = payload[:2] + bytes([10, 0, 0, 1]) + payload[6:]
    for mac in (b"\x00" * MAC_SIZE, raw[-MAC_SIZE:],
                hmac.new(b"guess", evil, hashlib.sha256).digest()[:MAC_SIZE],
                hmac.new(SECRET.encode(), evil, hashlib.sha256).digest()[:MAC_SIZE]):
        assert tokens.decode(_b64(evil + mac)) is None


def test_a_well_signed_payload_of_an_unknown_layout_is_refused(tokens: FlowTokens) -> None:
    """Defence in depth: even with a valid MAC, the payload must parse exactly."""
    key = hmac.digest(SECRET.encode(), b"sip-policy-proxy flow token v1 (RFC 5626 5.2)", "sha256")

    def signed(payload: bytes) -> str:
        return _b64(payload + hmac.digest(key, payload, "sha256")[:MAC_SIZE])

    good = _raw(tokens.encode(FLOWS[0]))[:-MAC_SIZE]
    assert tokens.decode(signed(good)) == FLOWS[0]  # the helper signs as the module does
    assert tokens.decode(signed(bytes([2]) + good[1:])) is None  # unknown version
    assert tokens.decode(signed(good[:1] + bytes([7 << 5]) + good[2:])) is None  # transport 7
    assert tokens.decode(signed(good[:1] + bytes([3 << 3]) + good[2:])) is None  # host kind 3
    assert tokens.decode(signed(good + b"\x00")) is None  # trailing byte
    assert tokens.decode(signed(good[:-1])) is None  # short
    assert tokens.decode(signed(good[:1] + bytes([1]) + good[2:])) is None  # conn_id missing
    assert tokens.decode(signed(good[:1] + bytes([1]) + good[2:] + bytes([9]) + b"\x01" * 9)) \
        is None  # conn_id longer than 64 bits


@pytest.mark.parametrize(
    "token", ["", "A", "AAAAA", "not base64!", "A" * (MAX_TOKEN_LENGTH + 1), "\u00e9" * 35]
)
def test_garbage_is_refused(tokens: FlowTokens, token: str) -> None:
    assert tokens.decode(token) is None


def _token_with_url_safe_characters(tokens: FlowTokens) -> str:
    for port in range(1, 5000):
        token = tokens.encode(Flow("udp", "192.0.2.1", 5060, "198.51.100.7", port, None))
        if "-" in token and "_" in token:
            return token
    raise AssertionError("no token with both '-' and '_'")  # pragma: no cover


def test_only_the_strict_spelling_decodes(tokens: FlowTokens) -> None:
    """What lenient base64 decoders accept for the same bytes is refused: the standard
    alphabet's '+' and '/', '=' padding, embedded whitespace."""
    token = _token_with_url_safe_characters(tokens)
    assert tokens.decode(token) is not None
    assert len(token) % 4 == 3
    for variant in (
        token.replace("-", "+"),
        token.replace("_", "/"),
        token + "=",
        token[:8] + " " + token[8:],
        token[:8] + "\n" + token[8:],
        " " + token,
    ):
        assert base64.b64decode(variant.replace("-", "+").replace("_", "/") + "=" * 4) \
            == _raw(token)  # a lenient decoder gets the same bytes
        assert tokens.decode(variant) is None, variant


def test_non_canonical_base64_spelling_is_refused(tokens: FlowTokens) -> None:
    """35 characters carry 26 bytes and 2 spare bits: setting them is another spelling."""
    token = tokens.encode(FLOWS[0])
    assert len(token) % 4 == 3
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    assert last & 0b11 == 0
    for spare in (1, 2, 3):
        sibling = token[:-1] + alphabet[last | spare]
        assert _raw(sibling) == _raw(token)  # the same bytes...
        assert tokens.decode(sibling) is None  # ...but not the token we issued


def test_decode_of_a_non_string_is_none(tokens: FlowTokens) -> None:
    assert tokens.decode(b"AQDA" * 9) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# what cannot be encoded


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        (Flow("dccp", "192.0.2.1", 1, "192.0.2.2", 2), "transport 'dccp'"),
        (Flow("udp", "192.0.2.1", 65536, "192.0.2.2", 2), "local port 65536"),
        (Flow("udp", "192.0.2.1", 1, "192.0.2.2", -1), "remote port -1"),
        (Flow("tcp", "192.0.2.1", 1, "192.0.2.2", 2, -1), "conn_id -1"),
        (Flow("tcp", "192.0.2.1", 1, "192.0.2.2", 2, 2**64), "conn_id"),
        (Flow("udp", "", 1, "192.0.2.2", 2), "local host ''"),
        (Flow("udp", "192.0.2.1", 1, "x" * 256, 2), "remote host"),
    ],
)
def test_flows_that_cannot_be_carried_raise(
    tokens: FlowTokens, flow: Flow, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tokens.encode(flow)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        FlowTokens("")
    with pytest.raises(ValueError, match="secret"):
        FlowTokens(b"")


def test_flow_is_frozen() -> None:
    flow = FLOWS[0]
    with pytest.raises(AttributeError):
        flow.remote_port = 1  # type: ignore[misc]
    assert hash(flow) == hash(Flow("udp", "192.0.2.1", 5060, "198.51.100.7", 40000, None))


# ---- computed once per flow, verified once per token (the hot path) ---------------------------

def test_a_flow_and_a_verified_token_are_remembered(tokens: FlowTokens) -> None:
    """Each flow's token is computed once and each token verified once: the same string and
    the same Flow come back, and a fresh FlowTokens with the secret agrees with the cache."""
    flow = FLOWS[0]
    first = tokens.encode(flow)
    same = Flow(flow.transport, flow.local_host, flow.local_port, flow.remote_host,
                flow.remote_port, flow.conn_id, flow.node)
    assert same is not flow and tokens.encode(same) is first
    assert tokens.decode(first) == flow
    assert tokens.decode(first) is tokens.decode(first)
    assert FlowTokens(SECRET).decode(first) == flow


def test_forged_tokens_are_not_remembered(tokens: FlowTokens) -> None:
    """A stranger's forgeries never enter the cache: each one is checked, and refused, again;
    a token refused once does not turn valid from the cache of another."""
    good = tokens.encode(FLOWS[0])
    forged = ("A" if good[0] != "A" else "B") + good[1:]
    for _ in range(3):
        assert tokens.decode(forged) is None
    assert forged not in tokens._flows and good not in tokens._flows
    assert tokens.decode(good) == FLOWS[0] and good in tokens._flows


def test_the_caches_are_bounded(tokens: FlowTokens) -> None:
    """A flood of new flows (every source port a new flow) cannot grow memory without bound:
    both caches stay at CACHE_SIZE entries at most, and every answer stays right."""
    minted = []
    for port in range(1, CACHE_SIZE + 50):
        flow = Flow("udp", "192.0.2.1", 5060, "198.51.100.7", port, None)
        token = tokens.encode(flow)
        assert tokens.decode(token) == flow
        minted.append((flow, token))
        assert len(tokens._tokens) <= CACHE_SIZE and len(tokens._flows) <= CACHE_SIZE
    flow, token = minted[0]  # long evicted: still encoded and decoded right
    assert tokens.encode(flow) == token and tokens.decode(token) == flow


# ---- a flow over a connection is bound to the start that minted it (RFC 5626 5.3) -----------

def test_a_stream_token_carries_the_boot_id_and_a_udp_token_does_not() -> None:
    """Connection ids start again at 1 in a new process, so a token naming a connection must
    say which start it is of: the same TCP flow gets another token after a restart (another
    boot id) and decodes there as not of this start; a UDP flow (no connection) keeps its
    token across starts and is of every start."""
    before, after = FlowTokens(SECRET), FlowTokens(SECRET)
    assert before.boot != after.boot
    tcp = Flow("tcp", "192.0.2.1", 5060, "198.51.100.7", 40000, 1)
    udp = FLOWS[0]
    old = before.encode(tcp)
    assert after.encode(tcp) != old
    seen = after.decode(old)
    assert seen == tcp and seen is not None and seen.boot == before.boot
    assert before.this_start(seen) and not after.this_start(seen)
    assert after.this_start(after.decode(after.encode(tcp)))  # type: ignore[arg-type]
    assert before.encode(udp) == after.encode(udp)
    decoded = after.decode(before.encode(udp))
    assert decoded is not None and decoded.boot is None and after.this_start(decoded)


def test_an_old_layout_stream_token_is_from_another_start(tokens: FlowTokens) -> None:
    """A version 1 token with a connection id (minted by the code before boot ids) still
    verifies, but names no connection of this start: 430 for it (RFC 5626 5.3)."""
    payload = bytes([1, 1 << 5 | 1]) + bytes([192, 0, 2, 1]) + (5060).to_bytes(2, "big") \
        + bytes([198, 51, 100, 7]) + (40000).to_bytes(2, "big") + bytes([1, 7])
    key = hmac.digest(SECRET.encode(), b"sip-policy-proxy flow token v1 (RFC 5626 5.2)", "sha256")
    old = _b64(payload + hmac.digest(key, payload, "sha256")[:MAC_SIZE])
    flow = tokens.decode(old)
    assert flow == Flow("tcp", "192.0.2.1", 5060, "198.51.100.7", 40000, 7)
    assert flow is not None and flow.boot is None and not tokens.this_start(flow)


def test_a_stream_token_with_a_node_round_trips() -> None:
    tokens = FlowTokens(SECRET, BOOT)
    flow = Flow("tls", "192.0.2.1", 5061, "198.51.100.7", 40000, 9, "node-a")
    got = tokens.decode(tokens.encode(flow))
    assert got == flow and got is not None and got.boot == BOOT


def test_a_boot_id_has_its_size() -> None:
    with pytest.raises(ValueError, match="boot id"):
        FlowTokens(SECRET, b"short")
