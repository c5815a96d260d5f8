"""RFC 4475 messages through the sans-IO core where the wire test cannot show forwarding:
wsinv and mpart01 carry a Route to a host that only exists in the RFC's examples, so on the
wire they end in a transport error. Here the core's Send to that host is inspected."""

from __future__ import annotations

from pathlib import Path

from proxy.core.types import Source
from proxy.sip import parse_message
from tests.unit.core_harness import Harness

KIT = Path(__file__).resolve().parents[1] / "conformance" / "data" / "rfc4475"
SENDER = Source("udp", "192.0.2.2", 5060)


def forwarded(name: str) -> tuple[bytes, bytes, str]:
    """The message as the core forwards it for a trusted relay (README "Security defaults": only an
    upstream or a trusted_relays source may preload a Route to another host)."""
    data = (KIT / f"{name}.dat").read_bytes()
    h = Harness.make(trusted_relays=(SENDER.host,))
    out = h.feed(data, SENDER)
    fwd = [s for s in out if s.data[:4] != b"SIP/"]
    assert len(fwd) == 1, [s.data[:40] for s in out]
    return data, fwd[0].data, fwd[0].host


def test_wsinv_is_loose_routed_with_unknown_headers_unchanged() -> None:
    """RFC 4475 3.1.1.1: a proxy forwards the unknown headers exactly as received; RFC 3261
    16.4: the Route naming another hop decides the destination."""
    data, out, host = forwarded("wsinv")
    assert host == "services.example.com"
    unknown = [line for line in data.split(b"\r\n") if line.startswith(b"UnknownHeaderWith")]
    assert unknown and all(line in out.split(b"\r\n") for line in unknown)
    assert b"NewFangledHeader:   newfangled value\r\n continued newfangled value" in out
    msg = parse_message(out)
    assert msg.top_via.sent_by() == ("127.0.0.1", 5060)
    assert msg.body == parse_message(data).body


def test_wsinv_from_a_stranger_is_refused_not_relayed() -> None:
    """README "Security defaults": the same preloaded Route from a source that is neither an upstream
    nor a trusted relay is refused, and nothing is sent towards the Route's host. wsinv has a
    To tag and no Route of this proxy: an in-dialog request of no dialog through it, 481
    once and statelessly (RFC 3261 12.2.2; issue 18, it was 100 then 403)."""
    h = Harness.make()
    out = h.feed((KIT / "wsinv.dat").read_bytes(), SENDER)
    assert [s.host for s in out if s.data[:4] != b"SIP/"] == []
    finals = [parse_message(s.data).status for s in out if s.data[:4] == b"SIP/"]
    assert finals == [481]
    assert h.core.refusals.counts["unproven"] == 1 and h.core.active_transactions == 0


def test_mpart01_body_is_forwarded_byte_exact() -> None:
    """RFC 4475 3.1.1.11: the multipart body (NUL, CR, LF octets) is framed by Content-Length
    and forwarded unchanged."""
    data, out, _ = forwarded("mpart01")
    body = parse_message(data).body
    assert out.endswith(body) and len(parse_message(out).body) == len(body)
