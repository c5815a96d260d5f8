"""rewrite / strip_top_via / make_response: splicing received bytes (RFC 3261 16.6, 16.7, 8.2.6)."""

from __future__ import annotations

import pytest

from proxy.sip import REASONS, ParseError, make_response, parse_message, rewrite, strip_top_via

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport\r\n"
    b"Route: <sip:proxy.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: Alice <sip:alice@example.com>;tag=a1\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: c1@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"X-Weird:   ;;,,;;,;  \r\n"
    b"NewFangled: first\r\n continued\r\n"
    b"Content-Type: application/sdp\r\n"
    b"l: 63\r\n"
    b"\r\n" + SDP
)


def index(msg_bytes: bytes, name: str) -> int:
    return parse_message(msg_bytes).find(name)


def test_no_change_is_byte_identical() -> None:
    """Splicing with nothing to change gives back the received bytes."""
    msg = parse_message(INVITE + b"trailing datagram junk")
    assert rewrite(msg) == INVITE


def test_insert_via_delete_route_replace_max_forwards() -> None:
    """RFC 3261 16.6 steps 6-8 / 16.4: push Via, drop own Route, decrement Max-Forwards;
    every other byte (compact names, folding, unknown header) is copied unchanged."""
    msg = parse_message(INVITE)
    via = "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-p1"
    out = rewrite(msg, insert_top=[via],
                  edits={msg.find("route"): None, msg.find("max-forwards"): "Max-Forwards: 69"})
    expected = INVITE.replace(b"Route: <sip:proxy.example.com;lr>\r\n", b"")
    expected = expected.replace(b"Max-Forwards: 70", b"Max-Forwards: 69")
    expected = expected.replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n" + via.encode() + b"\r\n", 1)
    assert out == expected
    again = parse_message(out)
    assert [v.branch for v in again.vias] == ["z9hG4bK-p1", "z9hG4bK-1"]
    assert again.max_forwards == 69 and again.routes == [] and again.body == SDP


def test_insert_several_top_lines_in_order() -> None:
    """RFC 3261 16.6 step 4 and 8: Record-Route and Via both go on top, in the given order."""
    msg = parse_message(INVITE)
    out = rewrite(msg, insert_top=["Record-Route: <sip:p.example.com;lr>", "Via: SIP/2.0/TCP p"])
    lines = out.split(b"\r\n")
    assert lines[1:3] == [b"Record-Route: <sip:p.example.com;lr>", b"Via: SIP/2.0/TCP p"]
    assert out.endswith(b"l: 63\r\n\r\n" + SDP)


def test_request_uri_change() -> None:
    """RFC 3261 16.6 step 2: the Request-URI of the copy is replaced."""
    msg = parse_message(INVITE)
    out = rewrite(msg, start_line="INVITE sip:bob@192.0.2.99:5070 SIP/2.0")
    assert out == INVITE.replace(b"sip:bob@example.com SIP", b"sip:bob@192.0.2.99:5070 SIP", 1)


def test_body_replacement_updates_content_length() -> None:
    """RFC 3261 20.14: a new body needs its Content-Length (the compact 'l' line is replaced)."""
    msg = parse_message(INVITE)
    out = rewrite(msg, body=b"hello")
    again = parse_message(out)
    assert again.body == b"hello" and again.get("content-length") == "5"
    assert out.startswith(INVITE.split(b"l: 63")[0])
    assert out.endswith(b"Content-Length: 5\r\n\r\nhello")
    empty = parse_message(rewrite(msg, body=b""))
    assert empty.body == b"" and empty.get("content-length") == "0"


def test_append_and_edit_folded_header() -> None:
    """Appended lines close the header section; an edit replaces all continuation lines."""
    msg = parse_message(INVITE)
    out = rewrite(msg, edits={msg.find("newfangled"): "NewFangled: one line"},
                  append=["Path: <sip:p.example.com;lr>"])
    assert b"NewFangled: one line\r\nContent-Type" in out
    assert b"continued" not in out
    assert out.endswith(b"l: 63\r\nPath: <sip:p.example.com;lr>\r\n\r\n" + SDP)


def test_missing_content_length_is_added() -> None:
    """RFC 3261 18.3 / RFC 4475 3.4.1: an RFC 2543 datagram without Content-Length is forwarded
    with one, so a stream next hop can frame it."""
    data = b"INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCSeq: 1 INVITE\r\n\r\n" + SDP
    msg = parse_message(data)
    out = rewrite(msg, insert_top=["Via: SIP/2.0/TCP p;branch=z9hG4bKx"])
    assert out.endswith(b"CSeq: 1 INVITE\r\nContent-Length: 63\r\n\r\n" + SDP)


def test_message_without_blank_line_gets_one() -> None:
    """RFC 4475 3.1.2.15 baddn-style datagram: the copy has a proper blank line."""
    msg = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\nl: 0")
    assert rewrite(msg) == b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    msg2 = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n")
    out = rewrite(msg2, insert_top=["Via: x"])
    assert out == b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"


def test_rewrite_refuses_injection_and_bad_index() -> None:
    """A replacement line holding CR/LF would smuggle header fields: refused."""
    msg = parse_message(INVITE)
    with pytest.raises(ValueError):
        rewrite(msg, insert_top=["Via: x\r\nEvil: y"])
    with pytest.raises(IndexError):
        rewrite(msg, edits={99: None})
    with pytest.raises(IndexError):
        rewrite(msg, edits={-1: None})


def test_utf8_lines_are_encoded() -> None:
    """Lines with characters outside latin-1 are sent as UTF-8."""
    msg = parse_message(INVITE)
    out = rewrite(msg, append=["Subject: \u65e5\u672c"])
    assert "Subject: 日本\r\n".encode() in out


# ---- strip_top_via ---------------------------------------------------------------------------

RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p1\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;received=192.0.2.1\r\n"
    b"From: <sip:a@example.com>;tag=a1\r\n"
    b"To: <sip:b@example.com>;tag=b1\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_strip_top_via_separate_lines() -> None:
    """RFC 3261 16.7 step 3: the proxy removes its own (topmost) Via line."""
    out = strip_top_via(parse_message(RESPONSE))
    assert out == RESPONSE.replace(b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p1\r\n", b"")


def test_strip_top_via_comma_list() -> None:
    """RFC 3261 16.7 step 3 / 7.3.1: only the first value of a comma-separated Via line goes;
    the line keeps its field name as written, every other line is untouched."""
    first = b"v : SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p1 ,  SIP/2.0/UDP 192.0.2.1:5060;"
    first += b"branch=z9hG4bK-1;received=192.0.2.1\r\n"
    rest = RESPONSE.split(b"received=192.0.2.1\r\n", 1)[1]
    data = b"SIP/2.0 200 OK\r\n" + first + rest
    msg = parse_message(data)
    assert len(msg.vias) == 2
    out = strip_top_via(msg)
    assert out == (b"SIP/2.0 200 OK\r\n"
                   b"v : SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;received=192.0.2.1\r\n" + rest)
    assert [v.branch for v in parse_message(out).vias] == ["z9hG4bK-1"]


def test_strip_top_via_three_values_keeps_rest_order() -> None:
    """RFC 3261 16.7 step 3 with a three-value Via line."""
    data = RESPONSE.replace(b"z9hG4bK-p1\r\n", b"z9hG4bK-p1, SIP/2.0/TCP b;branch=z9hG4bK-b, "
                            b"SIP/2.0/TLS c;branch=z9hG4bK-c\r\n")
    out = parse_message(strip_top_via(parse_message(data)))
    assert [v.host for v in out.vias] == ["b", "c", "192.0.2.1"]


def test_strip_top_via_without_via_raises() -> None:
    """A response with no Via cannot be forwarded (RFC 3261 18.2.2)."""
    data = b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ParseError):
        strip_top_via(parse_message(data))


# ---- make_response ---------------------------------------------------------------------------

REQUEST = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bK-p2\r\n"
    b"v: SIP/2.0/UDP p1.example.com;branch=z9hG4bK-p1, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1\r\n"
    b"Max-Forwards: 68\r\n"
    b"f: Alice <sip:alice@example.com>;tag=a1\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"i: c1@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_make_response_copies_vias_in_order_and_adds_to_tag() -> None:
    """RFC 3261 8.2.6.2: Via (all, in order), From, To (+tag), Call-ID, CSeq copied."""
    out = make_response(parse_message(REQUEST), 486, to_tag="t9")
    assert out == (
        b"SIP/2.0 486 Busy Here\r\n"
        b"Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bK-p2\r\n"
        b"v: SIP/2.0/UDP p1.example.com;branch=z9hG4bK-p1, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1"
        b"\r\n"
        b"f: Alice <sip:alice@example.com>;tag=a1\r\n"
        b"To: Bob <sip:bob@example.com>;tag=t9\r\n"
        b"i: c1@192.0.2.1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    resp = parse_message(out)
    assert resp.status == 486 and resp.to_tag == "t9"
    assert [v.branch for v in resp.vias] == ["z9hG4bK-p2", "z9hG4bK-p1", "z9hG4bK-1"]


def test_make_response_keeps_existing_to_tag() -> None:
    """RFC 3261 8.2.6.2: a To tag already present is not replaced."""
    req = parse_message(REQUEST.replace(b"To: Bob <sip:bob@example.com>",
                                        b"To: Bob <sip:bob@example.com>;tag=old"))
    resp = parse_message(make_response(req, 481, to_tag="new"))
    assert resp.to_tag == "old" and resp.reason == "Call/Transaction Does Not Exist"


def test_make_response_without_to_tag_argument() -> None:
    """RFC 3261 8.2.6.1: 100 Trying may omit the To tag."""
    resp = parse_message(make_response(parse_message(REQUEST), 100))
    assert resp.reason == "Trying" and resp.to_tag is None


def test_make_response_extra_headers_body_and_reason() -> None:
    """RFC 3261 8.2.6.2: extra headers follow the copied ones; Content-Length matches body."""
    out = make_response(parse_message(REQUEST), 420, "Nope", to_tag="t",
                        headers=["Unsupported: foo"], body=b"abc")
    resp = parse_message(out)
    assert resp.reason == "Nope" and resp.get("unsupported") == "foo" and resp.body == b"abc"
    assert out.endswith(b"Unsupported: foo\r\nContent-Length: 3\r\n\r\nabc")


def test_make_response_on_odd_request_never_raises() -> None:
    """RFC 4475 3.1.2.6 quotbal / 3.3.1 insuf: a 400 can always be built from the raw lines."""
    odd = (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
           b'To: "Mr. J. User <sip:j.user@example.com>\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n')
    resp = parse_message(make_response(parse_message(odd), 400, to_tag="x"))
    assert resp.status == 400
    assert resp.get("to") == '"Mr. J. User <sip:j.user@example.com>;tag=x'
    assert resp.get("from") is None and resp.get("call-id") is None
    bare = parse_message(make_response(parse_message(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"), 400))
    assert bare.headers[0].name == "content-length"


def test_make_response_copies_first_of_repeated_headers() -> None:
    """RFC 4475 3.3.8 multi01: answering 400 copies the first From/To/Call-ID/CSeq."""
    req = parse_message(REQUEST.replace(b"i: c1@192.0.2.1\r\n", b"i: c1@192.0.2.1\r\ni: c2\r\n"))
    resp = parse_message(make_response(req, 400))
    assert resp.get_all("call-id") == ["c1@192.0.2.1"]


def test_reasons_table() -> None:
    """RFC 3261 21 phrases plus later RFCs; unknown codes get a class phrase."""
    for code in (100, 180, 181, 182, 183, 200, 300, 301, 302, 305, 380, 400, 401, 402, 403, 404,
                 405, 406, 407, 408, 410, 413, 414, 415, 416, 420, 421, 423, 480, 481, 482, 483,
                 484, 485, 486, 487, 488, 491, 493, 500, 501, 502, 503, 504, 505, 513, 600, 603,
                 604, 606, 430, 439, 440, 470, 607, 608):
        assert REASONS[code]
    assert REASONS[430] == "Flow Failed" and REASONS[603] == "Decline"
    assert parse_message(make_response(parse_message(REQUEST), 499)).reason == "Client Error"
    with pytest.raises(ValueError):
        make_response(parse_message(REQUEST), 700)


def test_make_response_bytes_are_the_plain_assembly() -> None:
    """RFC 3261 8.2.6.2: the status line (the default reason kept once a status code), every
    Via in order, the first From, To, Call-ID and CSeq as written, then Content-Length; the
    same bytes on the first and on a later response."""
    req = parse_message(INVITE.replace(b"Call-ID: c1@192.0.2.1\r\n",
                                       b"Call-ID: c1@192.0.2.1\r\nv: SIP/2.0/TCP h2\r\n"
                                       b"CSeq: 9 INVITE\r\nFrom: <sip:x@y>\r\n"))
    expected = (b"SIP/2.0 183 Session Progress\r\n"
                b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport\r\n"
                b"v: SIP/2.0/TCP h2\r\n"
                b"From: Alice <sip:alice@example.com>;tag=a1\r\n"
                b"To: Bob <sip:bob@example.com>\r\n"
                b"Call-ID: c1@192.0.2.1\r\n"
                b"CSeq: 9 INVITE\r\n"
                b"Content-Length: 0\r\n\r\n")
    assert make_response(req, 183) == expected
    assert make_response(req, 183) == expected
    assert make_response(req, 183, "Session Progress") == expected
    assert make_response(req, 183, "Early", body=b"x") == expected.replace(
        b"183 Session Progress", b"183 Early").replace(b"Length: 0\r\n\r\n", b"Length: 1\r\n\r\nx")
