"""NameAddr, Via, comma lists, CSeq (RFC 3261 20.10, 20.16, 20.42, 25.1)."""

from __future__ import annotations

import pytest

from proxy.sip import (
    AbsoluteUri,
    ParseError,
    SipUri,
    parse_cseq,
    parse_name_addr,
    parse_name_addr_full,
    parse_name_addr_list,
    parse_params,
    parse_uri,
    parse_uri_full,
    parse_via,
    parse_via_full,
    parse_via_list,
    split_header_values,
)

# ---- name-addr / addr-spec ---------------------------------------------------------------------


def test_name_addr_with_quoted_display_and_params() -> None:
    """RFC 3261 20.10 / 25.1 name-addr; header params follow the '>'."""
    na = parse_name_addr('"Bob \\"B\\"" <sip:bob@biloxi.com;transport=tcp>;tag=a6c85cf;q=0.7')
    assert na.display == '"Bob \\"B\\""'
    assert isinstance(na.uri, SipUri) and na.uri.params == {"transport": "tcp"}
    assert na.params == {"tag": "a6c85cf", "q": "0.7"}
    assert na.tag == "a6c85cf" and na.bracketed
    assert str(na) == '"Bob \\"B\\"" <sip:bob@biloxi.com;transport=tcp>;tag=a6c85cf;q=0.7'


def test_token_display_name_and_no_lws_before_laquot() -> None:
    """RFC 3261 25.1 display-name = *(token LWS); RFC 4475 3.1.1.6 lwsdisp: 'caller<sip:..>'."""
    assert parse_name_addr("caller<sip:caller@example.com>;tag=323").display == "caller"
    na = parse_name_addr("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>")
    assert na.display == "token1~` token2'+_ token3*%!.-"
    assert parse_name_addr("A. Bell <sip:a.g.bell@example.com>").display == "A. Bell"


def test_bare_angle_brackets() -> None:
    """RFC 3261 20.10: "<sip:a@b>" has no display name."""
    na = parse_name_addr("<sip:a@b>")
    assert na.display is None and na.bracketed and na.params == {}
    assert str(na) == "<sip:a@b>"


def test_addr_spec_params_are_header_params() -> None:
    """RFC 3261 20.10: without <>, parameters after the URI are header parameters
    (RFC 4475 3.3.12 cparam01: unknownparam is a contact-param)."""
    na = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
    assert not na.bracketed and na.params == {"unknownparam": None}
    assert isinstance(na.uri, SipUri) and na.uri.params == {}
    assert str(na) == "<sip:+19725552222@gw1.example.net>;unknownparam"
    spaced = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert spaced.tag == "1918181833n"


def test_url_parameter_inside_brackets() -> None:
    """RFC 4475 3.3.13 cparam02: inside <> the parameter belongs to the URI."""
    na = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert na.params == {}
    assert isinstance(na.uri, SipUri) and na.uri.params == {"unknownparam": None}


def test_folded_params_with_lws() -> None:
    """RFC 4475 3.1.1.1 wsinv: SWS around ';' and '=' in header params."""
    na = parse_name_addr('"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue ;'
                         " secondparam ; q = 0.33")
    assert na.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert na.display == '"Quoted string \\"\\""'


def test_quoted_param_value_keeps_quotes() -> None:
    """RFC 5626 4.2: +sip.instance is a quoted string; values kept as written."""
    na = parse_name_addr('<sip:a@192.0.2.1>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-'
                         'AABBCCDDEEFF>";reg-id=1;expires=3600')
    assert na.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    assert na.params["reg-id"] == "1"


def test_absolute_uri_in_name_addr() -> None:
    """RFC 4475 3.3.4 unksm2: other schemes in To/From/Contact must not fail."""
    assert isinstance(parse_name_addr("isbn:2983792873").uri, AbsoluteUri)
    assert isinstance(parse_name_addr("<http://www.example.com>;tag=3234233").uri, AbsoluteUri)
    assert isinstance(parse_name_addr("<name:John_Smith>").uri, AbsoluteUri)


@pytest.mark.parametrize(
    "text",
    [
        '"Mr. J. User <sip:j.user@example.com>',  # RFC 4475 3.1.2.6 quotbal
        '"Watson, Thomas" < sip:t.watson@example.org >',  # 3.1.2.14 badaspec
        "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # 3.1.2.15 baddn
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # 3.1.2.13 regbadct
        '"Joe" <sip:joe@example.org>;;;;',  # 3.1.2.1 badinv01
        "<sip:a@b",
        '"Joe" sip:joe@example.org',
        "<sip:a@b> junk",
        "<sip:a@b>;tag=",
        "",
        "<>",
    ],
)
def test_bad_name_addr_is_400(text: str) -> None:
    """RFC 3261 25.1 name-addr grammar; RFC 4475 3.1.2 invalid messages -> 400."""
    with pytest.raises(ParseError) as err:
        parse_name_addr(text)
    assert err.value.status == 400


# ---- comma lists ------------------------------------------------------------------------------


def test_split_honours_quotes_and_angle_brackets() -> None:
    """RFC 3261 7.3.1: commas inside quoted strings and <...> do not separate values."""
    text = '"Doe, John" <sip:a@b;x=1,2>;q=0.1 ,  <sip:c@d?a=b,c>, "q\\",x" <sip:e@f>'
    assert split_header_values(text) == [
        '"Doe, John" <sip:a@b;x=1,2>;q=0.1', "<sip:c@d?a=b,c>", '"q\\",x" <sip:e@f>',
    ]
    assert split_header_values(" a , b,c ") == ["a", "b", "c"]
    assert split_header_values("single") == ["single"]
    assert split_header_values("   ") == []


@pytest.mark.parametrize("text", ["a,,b", "a,", ",a", '"unterminated, x', "<sip:a@b, c"])
def test_split_rejects_empty_items_and_unbalanced(text: str) -> None:
    """RFC 3261 7.3.1 / RFC 4475 3.1.2.1: empty list elements are malformed."""
    with pytest.raises(ParseError):
        split_header_values(text)


def test_name_addr_list() -> None:
    """RFC 3261 20.34 Route: several values on one line."""
    routes = parse_name_addr_list("<sip:p1.example.com;lr>, <sip:p2.example.com;lr>")
    assert [str(r) for r in routes] == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    with pytest.raises(ParseError):
        parse_name_addr_list("")


# ---- Via --------------------------------------------------------------------------------------


def test_via_basic() -> None:
    """RFC 3261 20.42 via-parm, 18.2.1 received, RFC 3581 rport."""
    via = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport;received=10.0.0.1")
    assert via.protocol == "SIP/2.0" and via.transport == "UDP"
    assert via.host == "192.0.2.1" and via.port == 5060
    assert via.branch == "z9hG4bK776asdhds" and via.rport is True
    assert via.received == "10.0.0.1"
    assert via.sent_by() == ("192.0.2.1", 5060)
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport;received=10.0.0.1"


def test_via_rport_value_and_defaults() -> None:
    """RFC 3581 rport=port; RFC 3261 18.2.2 default port 5061 for TLS."""
    via = parse_via("SIP/2.0/tls Proxy.Example.COM;rport=5070;branch=z9hG4bKx")
    assert via.transport == "TLS" and via.host == "proxy.example.com"
    assert via.rport == 5070 and via.port is None
    assert via.sent_by() == ("proxy.example.com", 5061)
    assert parse_via("SIP/2.0/UDP h").rport is None
    with pytest.raises(ParseError):
        parse_via("SIP/2.0/UDP h;rport=x").rport  # noqa: B018


def test_via_lws_everywhere() -> None:
    """RFC 4475 3.1.1.1 wsinv: SWS around '/', ';', '=' (after unfolding)."""
    via = parse_via("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw")
    assert via.protocol == "SIP/2.0" and via.transport == "UDP" and via.host == "192.0.2.2"
    vias = parse_via_list(
        "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , "
        "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
    )
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert parse_via("SIP/2.0/UDP host : 5070 ;branch=z9hG4bK1").port == 5070


def test_via_unknown_transport_kept() -> None:
    """RFC 4475 3.1.1.10 transports: unknown transport tokens parse."""
    via = parse_via("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en")
    assert via.transport == "UNKNOWN"
    assert parse_via("SIP/2.0/Foo-Bar h").transport == "Foo-Bar"
    assert parse_via("SIP/2.0/sctp h").transport == "SCTP"


def test_via_ipv6() -> None:
    """RFC 5118 4.5 / 4.7 / 4.9: IPv6 sent-by and received with or without brackets."""
    via = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3")
    assert via.host == "[2001:db8::9:1]" and via.received == "[2001:db8::9:255]"
    assert via.sent_by() == ("2001:db8::9:1", 5060)
    nodelim = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
    assert nodelim.received == "2001:db8::9:255"
    mapped = parse_via("SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19")
    assert mapped.port == 19823 and mapped.sent_by() == ("::ffff:192.0.2.10", 19823)
    assert str(mapped) == "SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19"


def test_via_quoted_param_with_comma() -> None:
    """RFC 3261 20.42 via-extension = generic-param (gen-value may be a quoted-string)."""
    vias = parse_via_list('SIP/2.0/UDP a;x="1,2", SIP/2.0/TCP b')
    assert [v.host for v in vias] == ["a", "b"] and vias[0].params["x"] == '"1,2"'


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP 192.0.2.15;;,;,,",  # RFC 4475 3.1.2.1 badinv01
        "SIP/2.0/UDP",
        "SIP/2.0 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.1;branch=",
        "SIP/2.0/UDP 192.0.2.1;=x",
        "SIP/2.0/UDP 192.0.2.1:99999",
        "SIP/2.0/UDP 2001:db8::1",
        "SIP/2.0/UDP host junk",
        "SIP/2.0/UDP a,",
        "",
    ],
)
def test_bad_via_is_400(text: str) -> None:
    """RFC 3261 20.42 grammar violations -> ParseError(400)."""
    with pytest.raises(ParseError) as err:
        parse_via_list(text)
    assert err.value.status == 400


# ---- params, CSeq -----------------------------------------------------------------------------


def test_parse_params_forms() -> None:
    """RFC 3261 25.1 generic-param = token [ EQUAL gen-value ]; names lower-cased."""
    assert parse_params("") == {}
    assert parse_params(";Tag=AbC;LR") == {"tag": "AbC", "lr": None}
    assert parse_params(' ; a = "x;y" ;b') == {"a": '"x;y"', "b": None}
    for bad in ("x", ";", "; ;a", ';a="open', ";a=b c"):
        with pytest.raises(ParseError):
            parse_params(bad)


def test_cseq() -> None:
    """RFC 3261 20.16 CSeq = 1*DIGIT LWS Method; number < 2**32 (8.1.1.5)."""
    assert parse_cseq("1 INVITE") == (1, "INVITE")
    assert parse_cseq("0009  INVITE") == (9, "INVITE")
    assert parse_cseq(str(2**32 - 1) + " ACK") == (2**32 - 1, "ACK")
    assert parse_cseq("1 RE%47IST%45R") == (1, "RE%47IST%45R")


@pytest.mark.parametrize(
    "text",
    ["36893488147419103232 REGISTER", str(2**32) + " INVITE", "1", "INVITE", "-1 INVITE",
     "1 INVITE x", "1 INV/TE", "", "\u00b9 INVITE"],
)
def test_bad_cseq_is_400(text: str) -> None:
    """RFC 4475 3.1.2.4 scalar02 (CSeq > 2**32-1) and other CSeq grammar errors."""
    with pytest.raises(ParseError) as err:
        parse_cseq(text)
    assert err.value.status == 400


# ---- fast paths agree with the general parser ------------------------------------------------

COMMON_NAME_ADDRS = [
    "sipp <sip:sipp@127.0.0.1:5061>;tag=12345SIPpTag001",
    '"Alice \\"A\\"" <sips:alice@atlanta.example.com;transport=tls>;tag=1;+sip.instance=x',
    "<sip:[2001:db8::1]:5070;lr>",
    "<sip:[2001:db8::1]:5070;lr>;flow",
    "Bob<sip:bob@example.com>;expires=60;q=0.5",
    "<tel:+15551234567>;tag=abc",
]


@pytest.mark.parametrize("text", COMMON_NAME_ADDRS)
def test_name_addr_fast_path_matches_general_parser(text: str) -> None:
    """The compact-form fast path must give what the RFC 3261 25.1 scanner gives: LWS before
    the parameters (legal SWS) forces the general path."""
    fast = parse_name_addr(text)
    assert fast == parse_name_addr_full(text)
    if ">;" in text:
        assert fast == parse_name_addr(text.replace(">;", "> ;", 1))


@pytest.mark.parametrize(
    "text",
    ["sip:sipp@127.0.0.1:5061", "sips:a:pw@[2001:db8::1]:5061;transport=tcp;lr",
     "sip:example.com;maddr=10.0.0.1", "sip:%61lice@example.com"],
)
def test_uri_fast_path_matches_general_parser(text: str) -> None:
    """RFC 3261 19.1.4: the scheme is case-insensitive; 'SIP:' takes the general path."""
    scheme, rest = text.split(":", 1)
    assert parse_uri(text) == parse_uri(scheme.upper() + ":" + rest) == parse_uri_full(text)


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport",
     "SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111;received=192.0.2.1",
     "SIP/2.0/UNKNOWN host;branch=z9hG4bKx;ttl=1;maddr=224.2.0.1"],
)
def test_via_fast_path_matches_general_parser(text: str) -> None:
    """RFC 3261 20.42: LWS around '/' (legal SWS) takes the general path; same result."""
    assert parse_via(text) == parse_via(text.replace("/", " / ").replace(" ", "  ", 1))
    assert parse_via(text) == parse_via_full(text)
