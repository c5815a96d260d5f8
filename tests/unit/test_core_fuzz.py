"""Bad input never breaks the core (RFC 3261 16.3; RFC 4475 3.1.2): seeded mutations of valid
and torture messages are fed to the sans-IO core; it must never raise, must answer or drop,
and must still relay a normal call afterwards."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from proxy.core.types import Source
from tests.unit.core_harness import Harness, request, response_to, statuses

SHARED = Path(__file__).resolve().parents[1] / "conformance" / "data"
PBX = Source("udp", "127.0.0.1", 5080)
SEEDS = int(os.environ.get("FUZZ_SEEDS", "8"))  # FUZZ_SEEDS=300 for a longer run


def corpus() -> list[bytes]:
    msgs = [
        request(),
        request("REGISTER", ruri="sip:example.com", extra=("Expires: 60",)),
        request("BYE", to_tag="t", extra=("Route: <sip:127.0.0.1:5060;lr>, <sip:10.0.0.1;lr>",)),
        request("CANCEL"),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n",
    ]
    msgs += [p.read_bytes() for p in sorted((SHARED / "rfc4475").glob("*.dat"))]
    return msgs


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a byte
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:  # truncate
            del b[pos:]
        elif op == 2:  # insert separators that parsers trip on
            b[pos:pos] = rng.choice([b":", b";", b",", b"<", b">", b'"', b"\r\n", b" ", b"%", b"\x00"])
        elif op == 3 and b:  # duplicate a slice
            end = min(len(b), pos + rng.randrange(1, 40))
            b[pos:pos] = b[pos:end]
        else:  # delete a slice
            del b[pos:pos + rng.randrange(1, 20)]
    return bytes(b)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_mutated_messages_never_raise_and_a_call_still_works(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness.make()
    base = corpus()
    for i in range(400):
        data = mutate(rng, rng.choice(base))
        src = Source("udp", "127.0.0.1", 6000 + i % 7)
        for s in h.core.on_message(data, src, h.now).sends:
            assert isinstance(s.data, bytes) and s.data
        h.now += 0.01
    assert h.core.stats["internal_errors"] == 0
    h.advance(120.0)
    # Every transaction the garbage created has ended (no leak) ...
    assert h.core.active_transactions == 0
    # ... and a normal call is relayed.
    out = h.feed(request(branch="z9hG4bKafterfuzz", call_id="after-fuzz"))
    fwd = [s.data for s in out if s.port == 5080]
    assert fwd, "INVITE not forwarded after the fuzzing"
    out = h.feed(response_to(fwd[0], 200), PBX)
    assert 200 in statuses(h.to(6000, out))
