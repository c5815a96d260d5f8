"""Each parser's fast path and its full grammar agree (hypothesis), on generated values of the
RFC 3261 25.1 grammar: Via, From/To with tags, name-addr and URI.

:mod:`proxy.sip.uri` and :mod:`proxy.sip.headers` read the usual compact shape with one regex
and a memo, and anything else with the full grammar (``parse_uri_full``,
``parse_name_addr_full``, ``parse_via_full``), which alone decides what is an error. The
property: for every generated text, the public parser (memo, then the one gate, then the fast
path or the grammar) gives what the grammar alone gives, or both refuse it with ParseError; a
second read (the memo's) gives it again. The values are real-looking: quoted display names
with escapes, UTF-8 display names, token display names, parameters with and without values
(quoted ones too), IPv6 references, case variation, and SWS/LWS wherever 25.1 allows it (and
some where it does not, so that refusals are compared too).

Profiles: ``tests/unit/hypothesis_profiles.py`` (``ci`` by default, ``HYPOTHESIS_PROFILE=nightly``
for 10,000 examples a test).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.sip import (
    ParseError,
    parse_message,
    parse_name_addr,
    parse_name_addr_full,
    parse_uri,
    parse_uri_full,
    parse_via,
    parse_via_full,
)
from tests.unit import hypothesis_profiles  # registers and loads the profile

pytestmark = pytest.mark.timeout(hypothesis_profiles.TIMEOUT)

# ---- RFC 3261 25.1 pieces ---------------------------------------------------------------------

ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN_CHARS = ALPHANUM + "-.!%*_+`'~"
UNRESERVED = ALPHANUM + "-_.!~*'()"
USER_UNRESERVED = "&=+$,;?/"
PARAM_UNRESERVED = "[]/:&+$"
WS = st.sampled_from(["", "", "", " ", "\t", "  ", " \t "])  # SWS: mostly none
LWS = st.sampled_from([" ", " ", " ", "\t", "  ", " \t"])


def flip_case(text: str, flips: int) -> str:
    """``text`` with the letters whose bit is set in ``flips`` upper-cased, the others lower."""
    return "".join(c.upper() if flips >> (i % 16) & 1 else c.lower() for i, c in enumerate(text))


def cased(words: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``words`` as written, lower-cased, upper-cased or mixed (RFC 3261 7.3.1, 19.1.4)."""
    return st.tuples(words, st.integers(0, 0xFFFF), st.integers(0, 3)).map(
        lambda t: [t[0], t[0].lower(), t[0].upper(), flip_case(t[0], t[1])][t[2]])


token = st.text(TOKEN_CHARS, min_size=1, max_size=8)
escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}" if b % 2 else f"%{b:02x}")
hostname = st.tuples(st.text(ALPHANUM, min_size=1, max_size=8),
                     st.sampled_from(["", ".example.com", "-1.example.org", ".b.c", ".COM"])).map(
    "".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = cased(st.ip_addresses(v=6).map(str))
host = st.one_of(hostname, ipv4, ipv6.map(lambda a: f"[{a}]"),
                 st.sampled_from(["[2001:db8:::192.0.2.1]", "2001:db8::1", "example.com.",
                                  "-bad", "a_b.example.com", "[::1", "EXAMPLE.COM"]))
port = st.one_of(st.none(), st.integers(0, 70000), st.sampled_from([5060, 5061, 65535, 65536]))
user_text = st.tuples(st.text(UNRESERVED + USER_UNRESERVED, max_size=8), escaped,
                      st.text(UNRESERVED, max_size=3), st.integers(0, 2)).map(
    lambda t: t[0] + (t[1] + t[2] if t[3] == 0 else ""))


def hostport(h: str, p: int | None, colon: str = ":") -> str:
    return h if p is None else f"{h}{colon}{p}"


pchar_value = st.tuples(st.text(UNRESERVED + PARAM_UNRESERVED, max_size=8), escaped,
                        st.integers(0, 3)).map(lambda t: t[0] + (t[1] if t[2] == 0 else ""))
uri_param = st.tuples(cased(st.sampled_from(["transport", "lr", "maddr", "user", "ttl", "ob",
                                             "method", "x-Y"]) | token),
                      st.one_of(st.none(), pchar_value, cased(st.sampled_from(["udp", "TCP",
                                                                               "tls", "ws"]))))


@st.composite
def uris(draw: st.DrawFn) -> str:
    """SIP-URI / SIPS-URI (RFC 3261 25.1, 19.1.1), now and then an absoluteURI (tel:, urn:)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["tel:+1-555-0100;phone-context=x", "urn:service:sos",
                                     "TEL:+15550100", "mailto:a@example.com", "tel:", ":x"]))
    scheme = draw(cased(st.sampled_from(["sip", "sips"])))
    out = scheme + ":"
    if draw(st.booleans()):
        out += draw(user_text)
        if draw(st.integers(0, 4)) == 0:
            out += ":" + draw(st.text(UNRESERVED + "&=+$,%", max_size=6))
        out += "@"
    out += hostport(draw(host), draw(port))
    for name, value in draw(st.lists(uri_param, max_size=4)):
        out += ";" + name + ("" if value is None else "=" + value)
    if draw(st.integers(0, 5)) == 0:
        out += "?" + draw(st.sampled_from(["Subject=x", "Route=%3Csip:a%3E&Priority=urgent",
                                           "h=", ""]))
    return out


quoted_pair = st.sampled_from(['\\"', "\\\\", "\\a", "\\ ", "\\\t", "\\\x7f", "\\<", "\\;"])
qdtext = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, exclude_characters='"\\'),
                 max_size=10)
odd_qdtext = st.sampled_from(["", "\t", "Jörg".encode().decode("latin-1"), "<sip:x>", ";tag=y", ","])
quoted_string = st.tuples(qdtext, quoted_pair, odd_qdtext, qdtext, st.integers(0, 3)).map(
    lambda t: '"' + t[0] + (t[1] if t[4] & 1 else "") + (t[2] if t[4] & 2 else "") + t[3] + '"')
display = st.one_of(
    st.none(), quoted_string,
    st.lists(token, min_size=1, max_size=3).flatmap(
        lambda words: st.lists(LWS, min_size=len(words) - 1, max_size=len(words) - 1).map(
            lambda seps: words[0] + "".join(s + w for s, w in zip(seps, words[1:], strict=True)))),
    st.sampled_from(["Bell, Alexander", "Jörg".encode().decode("latin-1"), '"unterminated']))
gen_value = st.one_of(token, hostname, ipv4, ipv6.map(lambda a: f"[{a}]"), quoted_string,
                      st.sampled_from(["", "a b", "<sip:x>", "a,b", "é"]))
header_param = st.tuples(cased(st.sampled_from(["tag", "expires", "q", "+sip.instance", "reg-id",
                                                "lr", "received", "x"]) | token),
                         st.one_of(st.none(), gen_value), WS, WS, WS, WS)


def params_text(items: list[tuple[str, str | None, str, str, str, str]]) -> str:
    """``*( SEMI generic-param )`` with SEMI = SWS ";" SWS and EQUAL = SWS "=" SWS."""
    out = ""
    for name, value, ws1, ws2, ws3, ws4 in items:
        out += ws1 + ";" + ws2 + name
        if value is not None:
            out += ws3 + "=" + ws4 + value
    return out


@st.composite
def name_addrs(draw: st.DrawFn) -> str:
    """name-addr / addr-spec with header parameters (RFC 3261 20.10, 20.20, 20.39, 25.1)."""
    shown = draw(display)
    uri = draw(uris())
    params = params_text(draw(st.lists(header_param, max_size=4)))
    if shown is None and draw(st.integers(0, 3)) == 0:
        text = uri + params  # addr-spec: every ';' after the URI is a header parameter
    else:
        inner = uri if draw(st.integers(0, 15)) else " " + uri  # LWS inside <> is refused
        text = (shown + draw(WS) if shown is not None else "") + "<" + inner + ">" + params
    return draw(WS) + text + draw(WS)


via_param = st.one_of(
    st.tuples(cased(st.just("branch")), token.map(lambda t: "z9hG4bK" + t)),
    st.tuples(cased(st.just("rport")), st.one_of(st.none(), st.integers(0, 70000).map(str))),
    st.tuples(cased(st.just("received")), st.one_of(ipv4, ipv6, ipv6.map(lambda a: f"[{a}]"))),
    st.tuples(cased(st.sampled_from(["maddr", "ttl", "alias", "x"]) | token),
              st.one_of(st.none(), gen_value)),
).flatmap(lambda nv: st.tuples(st.just(nv[0]), st.just(nv[1]), WS, WS, WS, WS))


@st.composite
def vias(draw: st.DrawFn) -> str:
    """via-parm (RFC 3261 20.42, 25.1): sent-protocol LWS sent-by *( SEMI via-params ), with
    SLASH = SWS "/" SWS and sent-by = host [ COLON port ]."""
    name = draw(cased(st.just("SIP")) | token)
    version = draw(st.sampled_from(["2.0", "2.0", "1.0", "x"]))
    transport = draw(cased(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "DTLS",
                                            "TLS-SCTP"])) | token)
    slash = draw(st.sampled_from(["/", "/", " / ", "/ ", "\t/"]))
    text = name + slash + version + draw(st.sampled_from(["/", "/", " /"])) + transport
    text += draw(st.sampled_from([" ", " ", "  ", "\t", ""]))
    text += hostport(draw(host), draw(port), draw(st.sampled_from([":", ":", " : "])))
    text += params_text(draw(st.lists(via_param, max_size=5)))
    return draw(WS) + text + draw(WS)


# ---- the property ---------------------------------------------------------------------------------

Parser = Callable[[str], object]


def agree(public: Parser, full: Parser, text: str) -> None:
    """``public`` (memo + gate + fast path) gives what ``full`` (the grammar alone) gives, twice
    (the second read is the memo's), or both raise ParseError."""
    try:
        expected = full(text)
    except ParseError:
        for _ in range(2):
            with pytest.raises(ParseError):
                public(text)  # the fast path must not accept what the grammar refuses
        return
    assert public(text) == expected, text
    assert public(text) == expected, text


@given(uris())
@example("sip:alice@example.com:5070;transport=udp")
@example("sip:a@b:99999")
@example("sips:[2001:DB8::1];LR")
@example("sip:tok@127.0.0.1:5060;lr;d=3f2a")  # the head parsed once, the parameters apart
@example("sip:a;b@example.com;lr")  # ';' in the user part: not a parameter
@example("sip:a?b@example.com;lr")
@example("SIP:x@[::1]:5061;maddr=[::2]")
@example("sip:a@b:99999;lr")
@example("sip:a@b?h=1;lr")
@example("tel:+1;lr")
def test_uri_fast_path_equals_the_grammar(text: str) -> None:
    """RFC 3261 19.1.1, 25.1 (RFC 5118 for IPv6 references)."""
    agree(parse_uri, parse_uri_full, text)


@given(name_addrs())
@example('"Alice \\"A\\"" <sips:alice@example.com;transport=tls>;tag=1;+sip.instance="<x>"')
@example("Bob<sip:bob@example.com>;expires=60;q=0.5")
@example("sip:bob@example.com;tag=b2")
@example("<sip:tok@127.0.0.1:5060;lr;d=3f2a>")  # a Route: "<URI>" alone
@example("<sip:a@b> >")
@example("<sip:a@b>>")
@example("< sip:a@b>")
@example("<urn:service:sos>")
@example("<>")
def test_name_addr_fast_path_equals_the_grammar(text: str) -> None:
    """RFC 3261 20.10, 25.1 name-addr / addr-spec with generic-params."""
    agree(parse_name_addr, parse_name_addr_full, text)


@given(vias())
@example("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport")
@example("SIP / 2.0 / UDP  [2001:db8::1] : 5070 ; branch = z9hG4bKx ; received=192.0.2.9")
def test_via_fast_path_equals_the_grammar(text: str) -> None:
    """RFC 3261 20.42, 25.1 via-parm (RFC 3581 rport, RFC 5118 4.5 received)."""
    agree(parse_via, parse_via_full, text)


def _message(from_: str, to: str) -> bytes:
    return ("BYE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK7\r\n"
            f"From: {from_}\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode("latin-1")


def _tag(text: str) -> str | None:
    value = parse_name_addr_full(text)
    return value.params.get("tag")


@given(name_addrs(), name_addrs(), token)
@example("Alice <sip:alice@example.com>;tag=a1", "<sip:bob@example.com>", "b1")
def test_from_and_to_tags_of_a_message_equal_the_grammars(from_: str, to: str, tag: str) -> None:
    """RFC 3261 8.1.1.2, 8.1.1.3, 19.3: a message's From and To tags are what the full
    name-addr grammar reads from their values, or both refuse; also for a To that gained a
    tag (the same text plus ";tag=", as in every answer after the first)."""
    to_tagged = to.rstrip() + ";tag=" + tag
    for f, t in ((from_.strip(), to.strip()), (from_.strip(), to_tagged.strip())):
        msg = parse_message(_message(f, t))
        agree(lambda _, m=msg: m.from_tag, _tag, f)
        agree(lambda _, m=msg: m.to_tag, _tag, t)
