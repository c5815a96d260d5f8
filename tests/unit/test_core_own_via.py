"""The response the proxy forwards without its own Via (RFC 3261 16.7 step 3): the fast cut
of :func:`proxy.core.proxy.final.without_own_via` gives the very bytes
:func:`proxy.sip.strip_top_via` gives, whatever the shape of the top Via line."""

from __future__ import annotations

import pytest

from proxy.core.proxy.final import without_own_via
from proxy.sip import ParseError, parse_message, strip_top_via

OURS = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc.1f0123456789ab"
THEIRS = "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKuac;received=10.0.0.1;rport=5070"


def response(via_lines: list[str], *, body: bytes = b"", content_length: bool = True,
             extra: str = "") -> bytes:
    head = "SIP/2.0 200 OK\r\n" + "".join(line + "\r\n" for line in via_lines)
    head += ("From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1\r\n"
             "CSeq: 1 INVITE\r\n" + extra)
    if content_length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


CASES = [
    [f"Via: {OURS}", f"Via: {THEIRS}"],
    [f"Via: {OURS}, {THEIRS}"],
    [f"v: {OURS} ,{THEIRS},SIP/2.0/TCP h:1;branch=z9hG4bKx"],
    [f"Via: {OURS},  {THEIRS}", "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKy"],
    [f'Via: {OURS}, SIP/2.0/UDP h;branch=z9hG4bKq;x="a,b"'],
    [f"Via: {OURS}"],
    [f"Via: {OURS},\r\n {THEIRS}"],  # folded
    [f"Via: {OURS} , {THEIRS} "],
    [f"Via: {OURS},{THEIRS}, SIP/2.0/UDP h;branch=z9hG4bKz"],
    [f"Via: {OURS}, <{THEIRS}>"],
    ["Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;x=\xe9, " + THEIRS],
]


@pytest.mark.parametrize("vias", CASES)
@pytest.mark.parametrize("body", [b"", b"v=0\r\n"])
@pytest.mark.parametrize("content_length", [True, False])
def test_the_fast_cut_is_strip_top_via(vias: list[str], body: bytes,
                                       content_length: bool) -> None:
    msg = parse_message(response(vias, body=body, content_length=content_length),
                        datagram=True)
    data = without_own_via(msg)
    assert data == strip_top_via(msg)
    assert OURS.encode() not in data


def test_an_empty_element_is_refused_as_strip_top_via_refuses_it() -> None:
    msg = parse_message(response([f"Via: {OURS}, {THEIRS}"]))
    for h in msg.headers:
        if h.name == "via":
            h.value = f"{OURS}, , {THEIRS}"
    with pytest.raises(ParseError):
        strip_top_via(msg)
    with pytest.raises(ParseError):
        without_own_via(msg)
