"""Matching a response to its client transaction (RFC 3261 17.1.3, 16.7).

The top Via of a response to a request the proxy forwarded is the proxy's own: its branch is
read without parsing the Via (proxy.core.proxy.responses.own_branch), and only a response that
matches no transaction that way has its Via parsed (then forwarded statelessly when its top
Via is ours, 16.11, or dropped, 18.1.2).
"""

from __future__ import annotations

from proxy.core.effects import Out
from proxy.core.proxy import responses
from proxy.core.proxy.responses import own_branch
from proxy.core.types import Source
from proxy.sip import parse_message
from tests.unit.core_harness import Harness, request, response_to

PBX = Source("udp", "127.0.0.1", 5080)


def forwarded_invite(h: Harness) -> bytes:
    h.feed(request())
    return [s.data for s in h.sent if s.port == 5080][-1]


def to_caller(h: Harness) -> list[int]:
    return [parse_message(s.data).status for s in h.sent if s.port == 6000]


def test_a_response_to_our_branch_is_matched_without_parsing_its_via() -> None:
    h = Harness.make()
    fwd = forwarded_invite(h)
    resp = parse_message(response_to(fwd, 180))
    bid = own_branch(resp)
    assert bid is not None and bid.startswith("z9hG4bK")
    assert h.core.table.match_branch(bid, "INVITE") is not None
    out = Out()
    responses.on_response(h.core, resp, PBX, h.now, out)
    assert [parse_message(s.data).status for s in out.sends] == [180]
    assert resp._top_via is None and resp._vias is None  # no Via was parsed
    h.feed(response_to(fwd, 200), PBX)
    assert to_caller(h)[-1:] == [200]


def test_a_top_via_written_otherwise_is_still_matched_through_the_parsed_via() -> None:
    """RFC 3261 20.42 / 7.3.1: parameter names are case-insensitive: the fast read declines
    (None), the parsed Via matches. A Via line holding several values (sipp's [last_Via:]
    joins them) is read up to its first comma: ours, without parsing any Via."""
    h = Harness.make()
    fwd = forwarded_invite(h)
    plain = response_to(fwd, 180).decode()
    ours = next(line for line in plain.split("\r\n") if line.startswith("Via: "))
    upper = plain.replace(ours, ours.replace(";branch=", ";BRANCH="), 1)
    assert own_branch(parse_message(upper.encode())) is None
    h.feed(upper.encode(), PBX)
    vias = [line for line in plain.split("\r\n") if line.startswith("Via: ")]
    folded = plain.replace("\r\n".join(vias), "Via: " + ", ".join(v[5:] for v in vias), 1)
    joined = parse_message(folded.encode())
    assert own_branch(joined) == own_branch(parse_message(plain.encode())) is not None
    h.feed(folded.replace("180 Whatever", "200 OK").encode(), PBX)
    assert to_caller(h)[-2:] == [180, 200]
    quoted = plain.replace(ours, ours + ';x="a, b"', 1)  # a comma inside a quoted string
    assert own_branch(parse_message(quoted.encode())) is not None


def test_a_response_naming_no_branch_of_ours_is_dropped() -> None:
    """RFC 3261 18.1.2: a response whose top Via is not ours is dropped, whatever its
    branch looks like."""
    h = Harness.make()
    forwarded_invite(h)
    stray = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKnotours\r\n"
             b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
             b"Call-ID: stray\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    fx = h.core.on_message(stray, PBX, h.now)
    assert fx.sends == [] and h.core.stats["responses_dropped"] == 1
