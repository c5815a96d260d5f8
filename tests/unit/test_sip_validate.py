"""validate_request: the syntax/sanity checks of RFC 3261 8.2 and 16.3 step 1."""

from __future__ import annotations

import pytest

from proxy.sip import ParseError, parse_message, validate_request

BASE = [
    "OPTIONS sip:bob@example.com SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1",
    "Max-Forwards: 70",
    "From: <sip:alice@example.com>;tag=a1",
    "To: <sip:bob@example.com>",
    "Call-ID: c1",
    "CSeq: 1 OPTIONS",
    "Content-Length: 0",
]


def request(*, drop: tuple[str, ...] = (), extra: tuple[str, ...] = (),
            replace: dict[str, str] | None = None) -> bytes:
    lines = []
    for line in BASE:
        name = line.split(":", 1)[0] if ":" in line.split(" ")[0] else ""
        if name in drop:
            continue
        if replace and name in replace:
            line = replace[name]
        lines.append(line)
    if replace and "start" in replace:
        lines[0] = replace["start"]
    lines[-1:-1] = list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check(data: bytes) -> None:
    validate_request(parse_message(data))


def status_of(data: bytes) -> int:
    with pytest.raises(ParseError) as err:
        check(data)
    return err.value.status


def test_valid_request_passes_and_caches_views() -> None:
    """RFC 3261 8.1.1: a minimal well-formed request passes; views are parsed once: the From
    and To that validation checked are kept, with their tags."""
    msg = parse_message(request(extra=("Contact: <sip:alice@192.0.2.1>", "Route: <sip:p;lr>")))
    validate_request(msg)
    assert msg._vias is not None and msg._route_lines is not None
    assert msg._from is not None and msg._to is not None
    assert msg.from_.params.get("tag") == msg.from_tag and msg.from_ is msg.from_


@pytest.mark.parametrize("value", [
    "<sip:a@example.com>;tag=1", "Alice <sip:a@example.com;transport=tcp>;x=y;tag=2;tag=3",
    '"A \\"q\\"" <sip:a@[2001:db8::1]:5060>;TAG=4', "sip:a@example.com;tag=5",
    "<tel:+123>;tag=6", "<sip:a@example.com:65535>", "<sip:a@example.com>;tag",
    "Bob <sip:b@example.com:5062>;tag=42SIPpTag001", "Bob <sip:b@example.com:5062>;tag=43x",
    '"x;tag=y" <sip:a@example.com>', "<sip:a@example.com;tag=x>", "<sip:a@example.com> ;tag=7",
    "<sip:a@example.com>;tag=a b", "<sip:a@example.com>;tag=", "<sip:a@example.com>;x;tag=8",
    "<sip:a@example.com>" + ";tag=9" * 5000,
])
def test_a_messages_from_tag_equals_the_full_grammars(value: str) -> None:
    """A message's From tag (RFC 3261 8.1.1.3, 19.3) is the tag the full name-addr grammar
    reads, or both refuse the value."""
    from proxy.sip.headers import parse_name_addr_full

    msg = parse_message(request(replace={"From": f"From: {value}"}))
    try:
        expected = parse_name_addr_full(value).tag
    except ParseError:
        with pytest.raises(ParseError):
            msg.from_tag  # noqa: B018
    else:
        assert msg.from_tag == expected


@pytest.mark.parametrize("value", [
    "<sip:a@example.com:65536>;tag=1", '"unterminated <sip:a@example.com>;tag=1',
    "Bell, Alexander <sip:a@example.com>;tag=1", "< sip:a@example.com >;tag=1",
])
def test_from_that_the_full_parse_refuses_is_refused_by_the_fast_check(value: str) -> None:
    """RFC 4475 3.1.2.6, 3.1.2.14, 3.1.2.15 and a port out of range: 400 either way."""
    msg = parse_message(request(replace={"From": f"From: {value}"}))
    with pytest.raises(ParseError):
        msg.from_tag  # noqa: B018


@pytest.mark.parametrize("name", ["To", "From", "Call-ID", "CSeq", "Via"])
def test_missing_mandatory_header_is_400(name: str) -> None:
    """RFC 3261 8.1.1 mandatory fields (RFC 4475 3.3.1 insuf)."""
    assert status_of(request(drop=(name,))) == 400


@pytest.mark.parametrize(
    "line",
    ["To: <sip:x@example.com>", "From: <sip:y@example.com>;tag=2", "Call-ID: c2",
     "CSeq: 2 OPTIONS", "Max-Forwards: 5", "Content-Type: text/plain", "Expires: 5",
     "l: 0"],
)
def test_repeated_single_value_header_is_400(line: str) -> None:
    """RFC 3261 7.3.1 / 20: single-value fields must not repeat (RFC 4475 3.3.8 multi01)."""
    if line.startswith("l:"):
        with pytest.raises(ParseError) as err:  # already refused by the parser (mcl01)
            parse_message(request(extra=(line,)))
        assert err.value.status == 400
        return
    extra = (line, line) if line.startswith(("Content-Type", "Expires")) else (line,)
    assert status_of(request(extra=extra)) == 400


def test_repeated_list_headers_are_fine() -> None:
    """RFC 3261 7.3.1: Via, Route, Contact, unknown headers may repeat."""
    check(request(extra=("Via: SIP/2.0/UDP b;branch=z9hG4bK2", "Route: <sip:a;lr>",
                         "Route: <sip:b;lr>", "X-A: 1", "X-A: 2")))


def test_cseq_method_mismatch_known_method_is_400() -> None:
    """RFC 3261 8.1.1.5 / RFC 4475 3.1.2.17 mismatch01."""
    assert status_of(request(replace={"CSeq": "CSeq: 8 INVITE"})) == 400


def test_cseq_method_mismatch_unknown_method_is_501() -> None:
    """RFC 4475 3.1.2.18 mismatch02: 501 preferred for an unknown method."""
    data = request(replace={"start": "NEWMETHOD sip:bob@example.com SIP/2.0",
                            "CSeq": "CSeq: 8 INVITE"})
    assert status_of(data) == 501


def test_ack_and_cancel_carry_their_own_method() -> None:
    """RFC 3261 17.1.1.3 / 9.1: ACK and CANCEL have CSeq methods ACK and CANCEL."""
    check(request(replace={"start": "ACK sip:bob@example.com SIP/2.0", "CSeq": "CSeq: 1 ACK"}))
    check(request(replace={"start": "CANCEL sip:bob@example.com SIP/2.0",
                           "CSeq": "CSeq: 1 CANCEL"}))
    assert status_of(request(replace={"start": "ACK sip:bob@example.com SIP/2.0",
                                      "CSeq": "CSeq: 1 INVITE"})) == 400


def test_unknown_method_with_matching_cseq_passes() -> None:
    """RFC 4475 3.1.1.5 esc02: an extension method is a proxy's business, not an error."""
    check(request(replace={"start": "RE%47IST%45R sip:bob@example.com SIP/2.0",
                           "CSeq": "CSeq: 1 RE%47IST%45R"}))


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("CSeq", "CSeq: 36893488147419103232 OPTIONS"),  # RFC 4475 3.1.2.4 scalar02
        ("CSeq", "CSeq: OPTIONS"),
        ("To", 'To: "Mr. J. User <sip:j.user@example.com>'),  # 3.1.2.6 quotbal
        ("To", 'To: "Watson, Thomas" < sip:t.watson@example.org >'),  # 3.1.2.14 badaspec
        ("From", "From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),  # 3.1.2.15 baddn
        ("Via", "Via: SIP/2.0/UDP 192.0.2.15;;,;,,"),  # 3.1.2.1 badinv01
        ("Max-Forwards", "Max-Forwards: 300"),  # 3.1.2.4 (over 255: refused)
        ("Max-Forwards", "Max-Forwards: seven"),
        ("Call-ID", "Call-ID:"),
    ],
)
def test_malformed_fields_are_400(name: str, line: str) -> None:
    """RFC 3261 25.1 grammar of the fields a proxy uses (RFC 4475 3.1.2)."""
    assert status_of(request(replace={name: line})) == 400


def register(contact: str) -> bytes:
    text = request(extra=(contact,)).decode()
    start, rest = text.split("\r\n", 1)
    method = start.split(" ", 1)[0]
    return ("REGISTER sip:example.com SIP/2.0\r\n"
            + rest.replace(f" {method}\r\n", " REGISTER\r\n", 1)).encode()


def test_bad_contact_of_a_register_is_400() -> None:
    """RFC 4475 3.1.2.13 regbadct: an addr-spec with '?' must be inside <>; the registrar
    reads a REGISTER's Contacts (RFC 3261 10.3)."""
    assert status_of(register("Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E")) == 400
    check(register("Contact: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>"))


def test_another_requests_contact_is_not_examined() -> None:
    """RFC 3261 16.3 step 1: a proxy forwarding a request does not use its Contact, and what
    it does not examine it ignores and forwards unchanged."""
    check(request(extra=("Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",)))


def test_bad_route_is_400() -> None:
    """RFC 3261 16.4: a proxy routes on Route; an unparseable value is refused."""
    assert status_of(request(extra=("Route: <sip:a;lr",))) == 400


def test_request_uri_with_headers_is_400() -> None:
    """RFC 3261 19.1.5 / RFC 4475 3.1.2.11 escruri: no ?headers in a SIP Request-URI."""
    data = request(replace={"start": "OPTIONS sip:user@example.com?Route=%3Csip:example.com%3E "
                                     "SIP/2.0"})
    assert status_of(data) == 400


def test_ipv6_without_brackets_in_request_uri_is_400() -> None:
    """RFC 5118 4.2: "sip:2001:db8::10" is not a valid Request-URI."""
    assert status_of(request(replace={"start": "REGISTER sip:2001:db8::10 SIP/2.0",
                                      "CSeq": "CSeq: 1 REGISTER"})) == 400


def test_proxy_decisions_are_not_checked_here() -> None:
    """RFC 3261 16.3: Max-Forwards 0 (483), Proxy-Require (420), scheme (416) are left to the
    proxy core; validate_request accepts them (RFC 4475 3.3.11 zeromf, 3.3.5 bext01, 3.3.2)."""
    check(request(replace={"Max-Forwards": "Max-Forwards: 0"}))
    check(request(extra=("Proxy-Require: noProxiesSupportThis",)))
    check(request(replace={"start": "OPTIONS nobodyKnowsThisScheme:opaque SIP/2.0"}))
    check(request(drop=("Max-Forwards",)))  # RFC 4475 3.4.1 inv2543: absent is fine


def test_response_is_refused() -> None:
    """validate_request is for requests only."""
    data = b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ValueError):
        validate_request(parse_message(data))
