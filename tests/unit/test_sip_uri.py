"""SIP/SIPS and absolute URIs (RFC 3261 19.1, 25.1; RFC 5118 IPv6)."""

from __future__ import annotations

import pytest

from proxy.sip import AbsoluteUri, ParseError, SipUri, parse_uri, unescape


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_full_sip_uri() -> None:
    """RFC 3261 19.1.1: every component, names lower-cased, values as written."""
    uri = sip("SIP:Alice:secret@Atlanta.Example.COM:5061;Transport=TCP;lr;maddr=239.255.255.1"
              "?subject=project%20x&priority=urgent")
    assert uri.scheme == "sip"
    assert uri.user == "Alice" and uri.password == "secret"
    assert uri.host == "atlanta.example.com" and uri.port == 5061
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "239.255.255.1"}
    assert uri.transport == "tcp"
    assert uri.headers == "subject=project%20x&priority=urgent"
    assert str(uri) == ("sip:Alice:secret@atlanta.example.com:5061;transport=TCP;lr;"
                        "maddr=239.255.255.1?subject=project%20x&priority=urgent")


def test_minimal_uris_and_defaults() -> None:
    """RFC 3261 19.1.1 / RFC 3263: default port 5060, 5061 for sips; aor without user."""
    uri = sip("sip:example.com")
    assert uri.user is None and uri.port is None and uri.params == {} and uri.headers is None
    assert uri.aor == "example.com" and uri.host_port() == ("example.com", 5060)
    assert uri.transport is None
    secure = sip("sips:bob@Biloxi.com")
    assert secure.scheme == "sips" and secure.host_port() == ("biloxi.com", 5061)
    assert secure.aor == "bob@biloxi.com"
    assert str(sip("sip:127.0.0.1:5080")) == "sip:127.0.0.1:5080"


def test_aor_drops_port_and_params() -> None:
    """RFC 3261 10.3: the address-of-record is user@host."""
    assert sip("sip:bob@EXAMPLE.com:5070;transport=udp").aor == "bob@example.com"


def test_user_keeps_semicolon_and_escapes() -> None:
    """RFC 4475 3.1.1.9 semiuri: ';' in the user part; escapes kept as written (19.1.2)."""
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert unescape(uri.user) == "user;par=u@example.net"
    assert uri.host == "example.com" and uri.params == {}


def test_unusual_user_and_password() -> None:
    """RFC 4475 3.1.1.2 intmeth: user-unreserved and password characters."""
    uri = sip("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
              "(doesn't-it)@example.com")
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com" and uri.headers is None


def test_unescape_is_single_pass_and_keeps_nul() -> None:
    """RFC 3261 19.1.2 / RFC 4475 3.1.1.3-4: decode once, never recursively; %00 kept."""
    assert unescape("null-%00-null") == "null-\x00-null"
    assert unescape("%2541") == "%41"
    assert unescape("plain") == "plain"
    assert unescape("%ZZ") == "%ZZ"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:[2001:db8::10]:5070", "[2001:db8::10]", 5070),  # RFC 5118 4.4
        ("sip:[2001:db8::10:5070]", "[2001:db8::10:5070]", None),  # RFC 5118 4.3: no port
        ("sip:user@[2001:db8:::192.0.2.1]", "[2001:db8:::192.0.2.1]", None),  # 4.10 tolerated
        ("sip:user@[2001:db8::192.0.2.1]", "[2001:db8::192.0.2.1]", None),  # 4.10
        ("sip:ted@[::ffff:192.0.2.2]", "[::ffff:192.0.2.2]", None),  # 4.9 IPv4-mapped
        ("sip:[2001:DB8::A]", "[2001:db8::a]", None),
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None) -> None:
    """RFC 5118: IPv6 references keep their brackets; host_port() strips them."""
    uri = sip(text)
    assert uri.host == host and uri.port == port
    assert uri.host_port() == (host[1:-1], port or 5060)
    assert str(uri) == text.replace("DB8::A", "db8::a")


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # RFC 5118 4.2: IPv6 without brackets
        "sip:user@example.com; lr",  # RFC 4475 3.1.2.8: LWS in URI
        "sip:",  # empty host
        "sip:user@",  # empty host
        "sip:@example.com",  # empty user
        "sip:example.com:99999",  # port out of range
        "sip:example.com:abc",
        "sip:a@b@c",
        "sip:[2001:db8::1",  # unterminated reference
        "sip:[]",
        "sip:example.com;;lr",  # empty parameter
        "sip:example.com;transport=",
        "sip:exa mple.com",
        "sip:<a@b>",
        "nocolon",
        ":opaque",
        "1abc:foo",  # scheme must start with ALPHA
        "tel:",
        "http://exa mple.com",
    ],
)
def test_malformed_uris_raise_400(text: str) -> None:
    """RFC 3261 25.1 grammar violations -> ParseError(400)."""
    with pytest.raises(ParseError) as err:
        parse_uri(text)
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("nobodyKnowsThisScheme:totallyopaquecontent", "nobodyknowsthisscheme"),  # 4475 3.3.2
        ("soap.beep://192.0.2.103:3002", "soap.beep"),  # RFC 4475 3.3.3
        ("tel:+1-201-555-0123;phone-context=example.com", "tel"),
        ("isbn:2983792873", "isbn"),  # RFC 4475 3.3.4
        ("urn:service:sos", "urn"),
    ],
)
def test_absolute_uris(text: str, scheme: str) -> None:
    """RFC 3261 25.1 absoluteURI: kept whole, scheme lower-cased."""
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteUri)
    assert uri.scheme == scheme and uri.raw == text and str(uri) == text


def test_escaped_params_are_not_unescaped() -> None:
    """RFC 4475 3.1.1.3 esc01: escaped parameter names and values stay escaped."""
    uri = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert uri.user == "cal%6Cer"
    assert uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}


def test_headers_inside_uri() -> None:
    """RFC 3261 19.1.1 headers component (RFC 4475 3.3.14 regescrt)."""
    uri = sip("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    assert uri.headers == "Route=%3Csip:sip.example.com%3E" and uri.params == {}


def test_without_headers_is_a_new_value_and_leaves_the_uri_alone() -> None:
    """RFC 3261 19.1.5: a redirect target drops its ?headers; the parsed URI, a shared value,
    is not changed (its parameters are read-only)."""
    uri = sip("sip:bob@example.com;lr?Subject=x")
    bare = uri.without_headers()
    assert uri.headers == "Subject=x" and bare.headers is None
    assert bare == sip("sip:bob@example.com;lr") and bare.without_headers() is bare
    with pytest.raises(TypeError):
        uri.params["transport"] = "tcp"  # type: ignore[index]
