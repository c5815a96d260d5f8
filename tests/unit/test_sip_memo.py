"""Header values that recur are parsed once (proxy.sip.uri, proxy.sip.headers memos).

A callee's Request-URI, the proxy's own Record-Route and a call's From and To come back in
every message of a call; parsing each distinct text once keeps the per-message work on what
is new. The memos are bounded (MEMO_SIZE texts, then forgotten at once), never keep a
refusal, and the objects they share are values nobody changes.
"""

from __future__ import annotations

import pytest

from proxy.sip import ParseError, parse_message
from proxy.sip.headers import parse_name_addr, plain_name_addr_tag
from proxy.sip.uri import MEMO_SIZE, SipUri, parse_uri


def test_the_same_text_gives_the_same_parsed_uri() -> None:
    a = parse_uri("sip:alice@example.com:5070;transport=udp")
    b = parse_uri("sip:alice@example.com:5070;transport=udp")
    assert a is b and isinstance(a, SipUri) and a.port == 5070
    assert parse_uri("sip:bob@example.com") is not a


def test_a_refusal_is_not_kept_and_is_raised_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ParseError):
            parse_uri("sip:bad host@example.com")
        with pytest.raises(ParseError):
            parse_name_addr('"unterminated <sip:a@example.com>')


def test_the_memos_stay_bounded_under_hostile_input() -> None:
    """Each text of a flood is new: the memo forgets everything when full instead of
    growing (an outsider controls these texts)."""
    from proxy.sip import headers, uri

    first = parse_uri("sip:first@example.com")
    for i in range(MEMO_SIZE + 10):
        parse_uri(f"sip:u{i}@example.com")
        parse_name_addr(f"<sip:u{i}@example.com>;tag={i}")
        plain_name_addr_tag(f"<sip:u{i}@example.com>;tag={i}")
    for memo in (uri._URI_MEMO, headers._NAME_ADDR_MEMO, headers._TAG_MEMO):
        assert 0 < len(memo) <= MEMO_SIZE
    again = parse_uri("sip:first@example.com")
    assert again == first  # parsed again after the memo was cleared: still the same value


def test_from_and_to_tags_of_messages_sharing_a_value() -> None:
    """Two requests of one dialog: the same From (and To) text, each message's tags right,
    and the odd-shaped value parsed by the full parser (RFC 3261 20.10: addr-spec) too."""
    def req(method: str, cseq: int, to: str) -> bytes:
        return (f"{method} sip:bob@example.com SIP/2.0\r\n"
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK" + method + "\r\n"
                "From: Alice <sip:alice@example.com>;tag=a1\r\n"
                f"To: {to}\r\nCall-ID: c1\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    inv = parse_message(req("INVITE", 1, "<sip:bob@example.com>"))
    bye = parse_message(req("BYE", 2, "<sip:bob@example.com>;tag=b1"))
    odd = parse_message(req("BYE", 3, "sip:bob@example.com;tag=b2"))
    assert (inv.from_tag, inv.to_tag) == ("a1", None)
    assert (bye.from_tag, bye.to_tag) == ("a1", "b1")
    assert odd.to_tag == "b2"


def test_a_via_read_in_two_parts_equals_the_whole_read() -> None:
    """RFC 3261 20.42: a Via whose sent-by was seen before (the memo's path) parses to what
    the full grammar gives, and a bad parameter after a known sent-by is still refused."""
    from proxy.sip.headers import _FAST_VIA_RE, _VIA_HEAD_MEMO, parse_via

    texts = [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        "SIP/2.0/udp Host.Example.COM;branch=z9hG4bK2;received=192.0.2.9",
        "SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK3;alias",
        'SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK4;x="q"',  # quoted: the long way
    ]
    for text in texts:
        first, again = parse_via(text), parse_via(text)  # the second read uses the memo
        assert first == again
        head = text[:text.find(";")]
        if _FAST_VIA_RE.match(text):
            assert head in _VIA_HEAD_MEMO and _VIA_HEAD_MEMO[head] is not None
        assert first.branch == text.split("branch=")[1].split(";")[0]
    assert parse_via(texts[1]).host == "host.example.com" and parse_via(texts[1]).transport == "UDP"
    for bad in ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;;",
                "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;=x",
                "SIP/2.0/UDP 192.0.2.1:99999;branch=z9hG4bK1"):
        with pytest.raises(ParseError):
            parse_via(bad)
