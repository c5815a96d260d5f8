"""parse_message: start line, header section, framing, limits (RFC 3261 7, 18.3, 20)."""

from __future__ import annotations

import pytest

from proxy.sip import COMPACT, ParseError, SipMessage, parse_message

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def build(*lines: str, body: bytes = b"", content_length: bool = True) -> bytes:
    head = list(lines)
    if content_length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def invite(*extra: str, body: bytes = SDP, ruri: str = "sip:bob@example.com") -> bytes:
    return build(
        f"INVITE {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        "From: Alice <sip:alice@example.com>;tag=a1",
        "To: Bob <sip:bob@example.com>",
        "Call-ID: c1@192.0.2.1",
        "CSeq: 1 INVITE",
        *extra,
        body=body,
    )


def test_request_line_and_headers_are_parsed() -> None:
    """RFC 3261 7.1 Request-Line, 7.3 header fields in wire order."""
    data = invite("Content-Type: application/sdp")
    msg = parse_message(data)
    assert isinstance(msg, SipMessage)
    assert msg.is_request and msg.method == "INVITE"
    assert msg.request_uri == "sip:bob@example.com"
    assert msg.version == "SIP/2.0" and msg.status == 0 and msg.reason == ""
    assert [h.name for h in msg.headers] == [
        "via", "max-forwards", "from", "to", "call-id", "cseq", "content-type", "content-length",
    ]
    assert msg.body == SDP
    assert msg.raw == data
    assert msg.raw[msg.header_end:] == SDP
    assert msg.start_line == "INVITE sip:bob@example.com SIP/2.0"


def test_header_offsets_cover_each_line_with_its_crlf() -> None:
    """Header.start/end are byte offsets of the line including CRLF (latin-1 round trip)."""
    data = invite("X-Utf8: caf\u00e9".encode().decode("latin-1"))
    msg = parse_message(data)
    for h in msg.headers:
        line = data[h.start:h.end]
        assert line.endswith(b"\r\n")
        assert b"\r\n" not in line[:-2]
    utf = msg.headers[msg.find("x-utf8")]
    assert data[utf.start:utf.end] == "X-Utf8: café\r\n".encode()
    assert utf.value.encode("latin-1").decode("utf-8") == "café"


def test_response_status_line() -> None:
    """RFC 3261 7.2 Status-Line; an empty reason phrase is legal (RFC 4475 3.1.1.13)."""
    data = build("SIP/2.0 180 Ringing", "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "CSeq: 1 INVITE")
    msg = parse_message(data)
    assert not msg.is_request and msg.status == 180 and msg.reason == "Ringing"
    assert msg.method == "" and msg.request_uri == ""
    empty = parse_message(build("SIP/2.0 100 ", "CSeq: 1 INVITE"))
    assert empty.status == 100 and empty.reason == ""
    spaced = parse_message(build("SIP/2.0 404 Not  Found here", "CSeq: 1 INVITE"))
    assert spaced.reason == "Not  Found here"


@pytest.mark.parametrize("code", ["4294967301", "99", "700", "099", "2OO", "1000"])
def test_bad_status_code_is_rejected(code: str) -> None:
    """RFC 3261 7.2: Status-Code is 3 digits 100..699 (RFC 4475 3.1.2.19 bigcode)."""
    with pytest.raises(ParseError) as err:
        parse_message(build(f"SIP/2.0 {code} Whatever", "CSeq: 1 INVITE"))
    assert err.value.status == 400


@pytest.mark.parametrize(
    "line",
    [
        "INVITE  sip:bob@example.com  SIP/2.0",  # RFC 4475 3.1.2.9 lwsstart
        "INVITE sip:bob@example.com SIP/2.0  ",  # 3.1.2.10 trws
        "INVITE <sip:bob@example.com> SIP/2.0",  # 3.1.2.7 ltgtruri
        "INVITE sip:bob@example.com; lr SIP/2.0",  # 3.1.2.8 lwsruri
        "INVITE\tsip:bob@example.com\tSIP/2.0",
        "INVITE sip:bob@example.com",
        "INV[TE sip:bob@example.com SIP/2.0",  # '[' is not a token char
        "INVITE bob SIP/2.0",  # no scheme
        "INVITE sip:bob@example.com HTTP/1.1",
    ],
)
def test_malformed_request_line_is_400(line: str) -> None:
    """RFC 3261 7.1: Method SP Request-URI SP SIP-Version, single SPs, nothing else."""
    with pytest.raises(ParseError) as err:
        parse_message(build(line, "CSeq: 1 INVITE"))
    assert err.value.status == 400


def test_unknown_version_is_505() -> None:
    """RFC 3261 8.2.2 / 21.5.6: SIP/7.0 -> 505 (RFC 4475 3.1.2.16 badvers)."""
    with pytest.raises(ParseError) as err:
        parse_message(build("OPTIONS sip:a@example.org SIP/7.0", "CSeq: 1 OPTIONS"))
    assert err.value.status == 505


def test_version_is_case_insensitive() -> None:
    """RFC 3261 7.1: the SIP-Version string is case-insensitive."""
    msg = parse_message(build("OPTIONS sip:a@example.org sip/2.0", "CSeq: 1 OPTIONS"))
    assert msg.version == "SIP/2.0"


def test_folded_lines_are_unfolded_and_span_offsets() -> None:
    """RFC 3261 7.3.1: a line starting with SP/HTAB continues the previous field value."""
    data = build(
        "OPTIONS sip:a@example.org SIP/2.0",
        "Subject: first",
        "   second",
        "\tthird",
        "CSeq:",
        " 7 OPTIONS",
    )
    msg = parse_message(data)
    subject = msg.headers[0]
    assert subject.value == "first second third"
    assert data[subject.start:subject.end] == b"Subject: first\r\n   second\r\n\tthird\r\n"
    assert msg.cseq == (7, "OPTIONS")


def test_compact_names_map_to_full_names() -> None:
    """RFC 3261 7.3.3 compact forms (and later RFCs' ones) -> canonical full names."""
    lines = ["OPTIONS sip:a@example.org SIP/2.0"]
    compact = sorted(c for c in COMPACT if c != "l")
    lines += [f"{c.upper() if i % 2 else c}: x{c}" for i, c in enumerate(compact)]
    lines += ["L: 0"]
    msg = parse_message(build(*lines, content_length=False))
    names = [h.name for h in msg.headers]
    assert names == [COMPACT[c] for c in compact] + ["content-length"]
    assert msg.get("Call-ID") == "xi" and msg.get("i") == "xi" and msg.get("CALL-id") == "xi"
    assert COMPACT["l"] == "content-length" and COMPACT["v"] == "via"
    assert COMPACT["n"] == "identity-info" and COMPACT["y"] == "identity"


def test_header_name_case_and_space_before_colon() -> None:
    """RFC 3261 7.3.1: field names are case-insensitive; HCOLON allows SP/HTAB before ':'."""
    msg = parse_message(build("OPTIONS sip:a@example.org SIP/2.0", "MaX-fOrWaRdS  : 0068",
                              "cSeQ\t:  2 OPTIONS"))
    assert msg.get("max-forwards") == "0068"
    assert msg.max_forwards == 68
    assert msg.cseq == (2, "OPTIONS")


def test_get_all_count_find() -> None:
    """get_all returns each header line's value, not comma-split (RFC 3261 7.3.1)."""
    msg = parse_message(invite("Route: <sip:p1;lr>, <sip:p2;lr>", "route: <sip:p3;lr>"))
    assert msg.get_all("Route") == ["<sip:p1;lr>, <sip:p2;lr>", "<sip:p3;lr>"]
    assert msg.count("ROUTE") == 2
    assert msg.find("route") == 6 and msg.find("route", 7) == 7 and msg.find("x-none") == -1
    assert msg.find_all("route") == [6, 7]
    assert msg.get("x-none") is None and msg.get_all("x-none") == [] and msg.count("x") == 0


@pytest.mark.parametrize(
    "line",
    ["NoColonHere", ": empty-name", "Bad Name: x", "Via\x00: x"],
)
def test_bad_header_line_is_400(line: str) -> None:
    """RFC 3261 7.3.1: message-header = field-name HCOLON field-value; name is a token."""
    with pytest.raises(ParseError) as err:
        parse_message(build("OPTIONS sip:a@example.org SIP/2.0", line))
    assert err.value.status == 400


def test_continuation_before_first_header_is_400() -> None:
    """RFC 3261 7.3.1: a continuation line needs a field to continue."""
    with pytest.raises(ParseError):
        parse_message(build("OPTIONS sip:a@example.org SIP/2.0", " orphan"))


def test_bare_lf_in_header_section_is_400() -> None:
    """RFC 3261 7: lines end in CRLF; a bare LF would let peers disagree on the fields."""
    data = b"OPTIONS sip:a@example.org SIP/2.0\r\nVia: x\nEvil: y\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert err.value.status == 400


def test_message_over_max_size_is_513() -> None:
    """RFC 3261 21.5.14 513 Message Too Large."""
    data = invite(body=b"x" * 2000)
    with pytest.raises(ParseError) as err:
        parse_message(data, max_size=1000)
    assert err.value.status == 513
    assert parse_message(data, max_size=len(data)).body == b"x" * 2000


def test_too_many_headers_is_400() -> None:
    """A bound on header fields (like h11's limits); over it -> 400."""
    data = invite(*[f"X-H{i}: {i}" for i in range(20)])
    with pytest.raises(ParseError) as err:
        parse_message(data, max_headers=10)
    assert err.value.status == 400
    assert len(parse_message(data, max_headers=40).headers) == 27


def test_leading_crlf_is_ignored() -> None:
    """RFC 3261 7.5: CRLFs before the start line are ignored; raw starts at the start line."""
    data = invite()
    msg = parse_message(b"\r\n\r\n" + data)
    assert msg.raw == data and msg.method == "INVITE"


@pytest.mark.parametrize("value", ["-999", "abc", "1 2", "0x10", "\u00b2"])
def test_bad_content_length_is_400(value: str) -> None:
    """RFC 3261 20.14 Content-Length = 1*DIGIT (RFC 4475 3.1.2.3 ncl)."""
    data = build("OPTIONS sip:a@example.org SIP/2.0", f"Content-Length: {value}",
                 content_length=False)
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert err.value.status == 400


def test_several_content_lengths_is_400() -> None:
    """RFC 4475 3.3.9 mcl01: two Content-Length fields (full and compact) -> error."""
    data = build("OPTIONS sip:a@example.org SIP/2.0", "Content-Length: 3", "l: 3",
                 content_length=False) + b"abc"
    with pytest.raises(ParseError):
        parse_message(data)


def test_content_length_larger_than_datagram_is_400() -> None:
    """RFC 3261 18.3: a datagram shorter than Content-Length is discarded/400 (4475 clerr)."""
    data = build("OPTIONS sip:a@example.org SIP/2.0", "Content-Length: 10",
                 content_length=False) + b"short"
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert err.value.status == 400


def test_octets_after_content_length_are_not_part_of_raw() -> None:
    """RFC 3261 18.3 / RFC 4475 3.1.1.8: extra octets in a datagram are ignored."""
    data = invite()
    msg = parse_message(data + b"INVITE sip:x@y SIP/2.0\r\n")
    assert msg.raw == data and msg.body == SDP


def test_datagram_without_content_length_takes_the_rest() -> None:
    """RFC 3261 18.3 / 20.14: on UDP the body runs to the end of the datagram (RFC 4475 3.4.1)."""
    data = build("INVITE sip:a@example.org SIP/2.0", "CSeq: 1 INVITE", body=SDP,
                 content_length=False)
    msg = parse_message(data)
    assert msg.body == SDP and msg.raw == data and msg.content_length_index == -1


def test_stream_requires_content_length() -> None:
    """RFC 3261 18.3: Content-Length is mandatory on stream transports."""
    data = build("OPTIONS sip:a@example.org SIP/2.0", "CSeq: 1 OPTIONS", content_length=False)
    with pytest.raises(ParseError):
        parse_message(data, datagram=False)
    framed = build("OPTIONS sip:a@example.org SIP/2.0", "CSeq: 1 OPTIONS")
    assert parse_message(framed, datagram=False).body == b""
    with pytest.raises(ParseError):
        parse_message(framed[:-2], datagram=False)  # no blank line


def test_datagram_without_blank_line_ends_at_datagram_end() -> None:
    """RFC 4475 3.1.2.15 baddn / RFC 5118 4.10 files: the datagram end closes the headers."""
    data = b"OPTIONS sip:a@example.org SIP/2.0\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n"
    msg = parse_message(data)
    assert msg.header_end == len(data) and msg.body == b""
    assert msg.headers[-1].end == len(data)
    unterminated = parse_message(data[:-2])
    assert unterminated.headers[-1].end == len(data) - 2
    assert unterminated.get("content-length") == "0"


def test_utf8_and_nul_in_header_values_pass() -> None:
    """RFC 4475 3.1.1.2 intmeth: UTF-8 and quoted NUL/BEL/DEL are legal in header values."""
    to = 'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:a@example.com>'
    data = build("OPTIONS sip:a@example.org SIP/2.0", to, "X: \u00e9\u00e8")
    msg = parse_message(data)
    assert "\x00" in msg.to.display  # type: ignore[operator]
    assert msg.raw == data


def test_ipv6_references_in_request() -> None:
    """RFC 5118 4.1: IPv6 references in Request-URI, Via and Contact."""
    data = build(
        "REGISTER sip:[2001:db8::10] SIP/2.0",
        "Via: SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas3-111;received=[2001:db8::9:255]",
        "Contact: \"Caller\" <sip:caller@[2001:db8::1]>",
        "CSeq: 98176 REGISTER",
    )
    msg = parse_message(data)
    assert msg.uri.host == "[2001:db8::10]"  # type: ignore[union-attr]
    assert msg.top_via.host == "[2001:db8::9:1]" and msg.top_via.port == 5070
    assert msg.top_via.sent_by() == ("2001:db8::9:1", 5070)
    assert msg.top_via.received == "[2001:db8::9:255]"
    assert msg.contacts[0].uri.host_port() == ("2001:db8::1", 5060)  # type: ignore[union-attr]


def test_lazy_views() -> None:
    """RFC 3261 20: the structured views parse on first access and are cached."""
    msg = parse_message(invite("Contact: <sip:alice@192.0.2.1:5060>;expires=60",
                               "Record-Route: <sip:p1.example.com;lr>", "Route: <sip:p2;lr>",
                               "Expires: 300"))
    assert msg.top_via is msg.top_via
    assert msg.top_via.branch == "z9hG4bK-1"
    assert msg.call_id == "c1@192.0.2.1"
    assert msg.cseq == (1, "INVITE")
    assert msg.from_tag == "a1" and msg.to_tag is None
    assert msg.from_.display == "Alice"
    assert msg.max_forwards == 70
    assert [str(r.uri) for r in msg.routes] == ["sip:p2;lr"]
    assert [str(r.uri) for r in msg.record_routes] == ["sip:p1.example.com;lr"]
    assert msg.contacts[0].params == {"expires": "60"}
    assert msg.contact_star is False
    assert msg.expires == 300
    assert str(msg.uri) == "sip:bob@example.com"
    assert len(msg.vias) == 1 and msg.vias[0] == msg.top_via


def test_missing_required_views_raise_400() -> None:
    """RFC 3261 8.1.1: views of missing mandatory fields raise ParseError(400)."""
    msg = parse_message(build("OPTIONS sip:a@example.org SIP/2.0"))
    for attr in ("top_via", "call_id", "cseq", "from_", "to", "from_tag", "to_tag"):
        with pytest.raises(ParseError) as err:
            getattr(msg, attr)
        assert err.value.status == 400
    assert msg.max_forwards is None and msg.expires is None
    assert msg.vias == [] and msg.routes == [] and msg.contacts == []


@pytest.mark.parametrize("value", ["256", "-1", "abc", "7 0", "300"])
def test_bad_max_forwards_raises(value: str) -> None:
    """RFC 3261 20.22 Max-Forwards 0..255; over 255 is refused (RFC 4475 3.1.2.4 note)."""
    msg = parse_message(build("OPTIONS sip:a@example.org SIP/2.0", f"Max-Forwards: {value}"))
    with pytest.raises(ParseError):
        msg.max_forwards  # noqa: B018


def test_expires_clamped_and_bad_expires_raises() -> None:
    """RFC 3261 20.19: delta-seconds up to 2**32-1; overlarge clamps (RFC 4475 3.1.2.4)."""
    big = parse_message(build("REGISTER sip:example.com SIP/2.0", "Expires: " + "1" + "0" * 40))
    assert big.expires == 2**32 - 1
    bad = parse_message(build("REGISTER sip:example.com SIP/2.0", "Expires: soon"))
    with pytest.raises(ParseError):
        bad.expires  # noqa: B018


def test_contact_star() -> None:
    """RFC 3261 10.2.2: "Contact: *" removes all bindings; it is not a name-addr."""
    msg = parse_message(build("REGISTER sip:example.com SIP/2.0", "Contact: *", "Expires: 0"))
    assert msg.contact_star is True
    assert msg.contacts == []


def test_two_contact_lines_and_comma_list() -> None:
    """RFC 3261 7.3.1: Contact values over several lines and comma lists, in order."""
    msg = parse_message(build(
        "REGISTER sip:example.com SIP/2.0",
        'Contact: "A, B" <sip:a@h1>;q=0.5, <sip:b@h2>',
        "m: sip:c@h3;expires=10",
    ))
    assert [c.uri.aor for c in msg.contacts] == ["a@h1", "b@h2", "c@h3"]  # type: ignore[union-attr]
    assert msg.contacts[0].display == '"A, B"'
    assert msg.contacts[2].params == {"expires": "10"}


def test_repeated_single_value_headers_are_not_a_parse_error() -> None:
    """parse_message leaves RFC 3261 7.3.1 repetition checks to validate_request."""
    msg = parse_message(build("OPTIONS sip:a@example.org SIP/2.0", "Call-ID: a", "Call-ID: b"))
    assert msg.get_all("call-id") == ["a", "b"] and msg.call_id == "a"


def test_empty_header_value_is_kept() -> None:
    """RFC 4475 3.1.1.1 wsinv: "s :" is an empty Subject."""
    msg = parse_message(build("OPTIONS sip:a@example.org SIP/2.0", "s :", "X:"))
    assert msg.get("subject") == "" and msg.get("x") == ""


def test_repr_mentions_method_or_status() -> None:
    """Debug aid only."""
    assert "INVITE" in repr(parse_message(invite()))
    assert "486" in repr(parse_message(build("SIP/2.0 486 Busy Here", "CSeq: 1 INVITE")))


def test_many_leading_crlfs_are_cheap_and_bare_lf_is_refused() -> None:
    """RFC 3261 7.5: leading CRLFs skipped in one pass; a bare LF there is malformed."""
    data = invite()
    msg = parse_message(b"\r\n" * 20000 + data, max_size=100000)
    assert msg.raw == data
    with pytest.raises(ParseError):
        parse_message(b"\r\n\n" + data)
    with pytest.raises(ParseError):
        parse_message(b"\r\n\r\n")


@pytest.mark.parametrize("line, branch", [
    ("Via: SIP/2.0/UDP p.example.com;branch=z9hG4bK-top, SIP/2.0/UDP a.example.com;branch=z9hG4bK-2",
     "z9hG4bK-top"),
    ('Via: SIP/2.0/UDP p.example.com;branch=z9hG4bK-q;x="a, b", SIP/2.0/UDP a.example.com',
     "z9hG4bK-q"),
])
def test_top_via_of_a_line_joining_several_values(line: str, branch: str) -> None:
    """RFC 3261 7.3.1, 20.42: the top Via is the first value of the first Via line; a comma
    inside a quoted string does not end it."""
    data = (f"SIP/2.0 200 OK\r\n{line}\r\nFrom: <sip:a@example.com>;tag=1\r\n"
            "To: <sip:b@example.com>;tag=2\r\nCall-ID: j\r\nCSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n").encode()
    msg = parse_message(data)
    assert msg.top_via.branch == branch and msg.top_via.host == "p.example.com"
    assert [v.host for v in msg.vias] == ["p.example.com", "a.example.com"]
