"""Property-based fuzzing (hypothesis) of the parser, the stream framer and the proxy core,
fed RFC 4475 torture messages (``tests/conformance/data``) mutated, and generated messages.

Invariants:

* the parser raises nothing but :class:`ParseError`, also from the lazily parsed headers;
* the stream framer cuts the same messages whatever the chunking, and raises nothing but
  :class:`FramingError`;
* the core (driven with a fake clock, :mod:`tests.unit.core_harness`) lets no exception
  escape and has no internal error, sends every request at most one final answer (any number
  of retransmissions of it; several 2xx of a fork are allowed, RFC 3261 16.7 step 5), and
  holds no transaction once every timer has fired.

Profiles: ``tests/unit/hypothesis_profiles.py`` (``ci`` by default; ``HYPOTHESIS_PROFILE=nightly``
for a long run).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.types import Source
from proxy.sip import FramingError, ParseError, StreamFramer, parse_message
from tests.unit import hypothesis_profiles  # registers and loads the profile
from tests.unit.core_harness import Harness, request, response_to

pytestmark = pytest.mark.timeout(hypothesis_profiles.TIMEOUT)

DATA = Path(__file__).resolve().parents[1] / "conformance" / "data"
TORTURE = [p.read_bytes() for p in sorted((DATA / "rfc4475").glob("*.dat"))]
TORTURE += [p.read_bytes() for p in sorted((DATA / "rfc5118").glob("*.dat"))]
VALID = [
    request(),
    request("OPTIONS", ruri="sip:127.0.0.1:5060"),
    request("REGISTER", ruri="sip:example.com", extra=("Expires: 60",)),
    request("BYE", to_tag="t", extra=("Route: <sip:127.0.0.1:5060;lr>, <sip:10.0.0.1;lr>",)),
    request("CANCEL"),
    request("MESSAGE", body="hello", extra=("Content-Type: text/plain",)),
    request("INVITE", ruri="sips:bob@example.com"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n",
]
CORPUS = VALID + TORTURE
SEPARATORS = [b":", b";", b",", b"<", b">", b'"', b"\r\n", b"\r\n\r\n", b" ", b"%", b"\x00",
              b"=", b"@", b"[", b"]", b"\t", b"\xff", b"Content-Length: 99999\r\n",
              b"Via: SIP/2.0/UDP [::1\r\n", b";branch=", b"sips:", b"\r\n "]

# ----------------------------------------------------------------------------- strategies

mutation = st.tuples(st.integers(0, 4), st.floats(0, 1), st.sampled_from(SEPARATORS),
                     st.integers(1, 40), st.integers(0, 255))


def mutate(data: bytes, ops: list[tuple[int, float, bytes, int, int]]) -> bytes:
    b = bytearray(data)
    for op, where, insert, span, byte in ops:
        pos = int(where * len(b))
        if op == 0 and b:  # flip a byte
            b[min(pos, len(b) - 1)] = byte
        elif op == 1:  # truncate
            del b[pos:]
        elif op == 2:  # insert what parsers trip on
            b[pos:pos] = insert
        elif op == 3 and b:  # duplicate a slice
            b[pos:pos] = b[pos:pos + span]
        else:  # delete a slice
            del b[pos:pos + span]
    return bytes(b)


token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~", min_size=1, max_size=12)
host = st.one_of(st.sampled_from(["127.0.0.1", "[::1]", "example.com", "10.0.0.1", "[2001:db8::1]"]),
                 token)
port = st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"))
uri = st.builds(lambda scheme, user, h, p, params: f"{scheme}:{user}{h}{p}{params}",
                st.sampled_from(["sip", "sips", "tel", "SIP", "mailto", "x"]),
                st.one_of(st.just(""), token.map(lambda t: t + "@")), host, port,
                st.lists(st.sampled_from([";lr", ";transport=tcp", ";transport=tls",
                                          ";transport=udp", ";maddr=10.0.0.1", ";ob", ";x=y"]),
                         max_size=3).map("".join))
method = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE",
                          "SUBSCRIBE", "NOTIFY", "PRACK", "UPDATE", "REFER", "INFO", "FOO"])


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    """A request built from parts, each part possibly odd (RFC 3261 25 grammar, loosely)."""
    m = draw(method)
    lines = [f"{m} {draw(uri)} SIP/2.0"]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"Via: SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS', 'X']))} "
                     f"{draw(host)}{draw(port)};branch=z9hG4bK{draw(token)}"
                     f"{draw(st.sampled_from(['', ';rport', ';received=1.2.3.4', ';alias']))}")
    optional = {
        "From": st.builds(lambda u, t: f"<{u}>;tag={t}", uri, token),
        "To": st.builds(lambda u, t: f"<{u}>" + t, uri,
                        st.one_of(st.just(""), token.map(lambda t: f";tag={t}"))),
        "Call-ID": token,
        "CSeq": st.builds(lambda n, mm: f"{n} {mm}", st.integers(0, 2**32), method),
        "Max-Forwards": st.integers(0, 300).map(str),
        "Route": st.lists(uri.map(lambda u: f"<{u};lr>"), min_size=1, max_size=3).map(", ".join),
        "Contact": st.one_of(st.just("*"), uri.map(lambda u: f"<{u}>;expires=60")),
        "Expires": st.integers(0, 100000).map(str),
        "Proxy-Require": token,
        "Record-Route": uri.map(lambda u: f"<{u};lr>"),
        "Authorization": st.just('Digest username="a", realm="r", nonce="n", uri="sip:x", '
                                 'response="00"'),
    }
    for name, strat in optional.items():
        if draw(st.booleans()):
            lines.append(f"{name}: {draw(strat)}")
    body = draw(st.binary(max_size=40))
    lines.append(f"Content-Length: {len(body) if draw(st.booleans()) else draw(st.integers(0, 99))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


message = st.one_of(
    st.builds(mutate, st.sampled_from(CORPUS), st.lists(mutation, max_size=4)),
    generated(),
    st.builds(mutate, generated(), st.lists(mutation, max_size=2)),
)

# ----------------------------------------------------------------------------- parser


def touch(msg) -> None:  # type: ignore[no-untyped-def]
    """Read every lazily parsed part, as the core may."""
    _ = (msg.start_line, msg.is_request, msg.body)
    if msg.is_request:
        _ = (msg.method, msg.request_uri)
    for attr in ("uri", "vias", "top_via", "call_id", "cseq", "from_", "to", "from_tag", "to_tag",
                 "max_forwards", "routes", "record_routes", "contacts", "contact_star",
                 "expires"):
        if attr == "uri" and not msg.is_request:
            continue
        try:
            getattr(msg, attr)
        except ParseError:
            pass


@given(message, st.booleans())
def test_parser_raises_only_parse_errors(data: bytes, datagram: bool) -> None:
    try:
        msg = parse_message(data, datagram=datagram)
    except ParseError as exc:
        assert 400 <= exc.status <= 599
        return
    touch(msg)


# ----------------------------------------------------------------------------- framer


@given(st.lists(st.sampled_from(VALID + [b"\r\n\r\n"]), min_size=1, max_size=6),
       st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_framer_is_independent_of_chunking(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    whole = StreamFramer().feed(stream)
    framer = StreamFramer()
    pieces: list[bytes | None] = []
    i = 0
    for n in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        if i >= len(stream):
            break
        pieces += framer.feed(stream[i:i + n])
        i += n
    assert pieces == whole
    assert [m for m in whole if m is not None] == [m for m in msgs if m != b"\r\n\r\n"]
    assert framer.buffered == 0


@given(st.lists(message, min_size=1, max_size=4), st.lists(st.integers(1, 300), min_size=1,
                                                             max_size=10))
def test_framer_raises_only_framing_errors(msgs: list[bytes], cuts: list[int]) -> None:
    framer = StreamFramer(max_size=4096)
    stream = b"".join(msgs)
    i = 0
    try:
        while i < len(stream):
            for m in framer.feed(stream[i:i + cuts[i % len(cuts)]]):
                assert m is None or len(m) <= 4096
            i += cuts[i % len(cuts)]
    except FramingError:
        pass


# ----------------------------------------------------------------------------- core

CALLERS = [Source("udp", "127.0.0.1", 6000), Source("udp", "127.0.0.2", 6001),
           Source("tcp", "127.0.0.1", 6002, 11), Source("udp", "127.0.0.1", 5080)]
PBX = Source("udp", "127.0.0.1", 5080)
STATUSES = [100, 180, 183, 200, 202, 301, 302, 401, 404, 407, 408, 430, 486, 487, 500, 503,
            600, 603]

step = st.one_of(
    st.tuples(st.just("request"), message, st.sampled_from(CALLERS)),
    st.tuples(st.just("answer"), st.sampled_from(STATUSES), st.lists(mutation, max_size=2)),
    st.tuples(st.just("time"), st.floats(0, 40)),
)
_BRANCH = re.compile(rb"branch=z9hG4bK[^;\r\n ]*")


def unique_branch(data: bytes, i: int) -> bytes:
    """Each fed request gets its own branch, so that 'one final answer per request' is
    checked per request (two mutants of one message are two requests)."""
    return _BRANCH.sub(b"branch=z9hG4bKfz%04dq" % i, data, count=1)


@given(st.lists(step, min_size=1, max_size=25), st.booleans())
def test_core_answers_each_request_at_most_once_and_leaks_nothing(
        steps: list[tuple], registrar_local: bool) -> None:  # type: ignore[type-arg]
    h = Harness.make(registrar_local=registrar_local, per_source_rps=50)
    finals: dict[bytes, set[int]] = defaultdict(set)
    upstream_requests: list[bytes] = []

    def record(sends: list) -> None:  # type: ignore[type-arg]
        for s in sends:
            assert isinstance(s.data, bytes) and s.data
            if s.port in (5080, 5081) and not s.data.startswith(b"SIP/2.0"):
                upstream_requests.append(s.data)
            if s.data.startswith(b"SIP/2.0 ") and s.port not in (5080, 5081):
                status = int(s.data[8:11])
                m = _BRANCH.search(s.data)
                if status >= 300 and m is not None:
                    finals[m.group(0)].add(status)

    for i, st_ in enumerate(steps):
        kind = st_[0]
        if kind == "request":
            record(h.feed(unique_branch(st_[1], i), st_[2]))
        elif kind == "answer" and upstream_requests:
            req = upstream_requests[i % len(upstream_requests)]
            if req.startswith((b"ACK", b"CANCEL")):
                continue
            try:
                resp = response_to(req, st_[1])
            except ParseError:
                continue
            record(h.feed(mutate(resp, st_[2]), PBX))
        else:
            record(h.advance(st_[1] if kind == "time" else 0.1))
    record(h.advance(4000.0))
    assert h.core.stats["internal_errors"] == 0
    for branch, statuses in finals.items():
        assert len(statuses) <= 1, (branch, statuses)
    assert h.core.active_transactions == 0, (list(h.core.table.servers()), h.core.table.client_count)
    assert h.core.unanswered == 0
