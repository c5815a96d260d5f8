"""Header values that recur are parsed once (proxy.sip.memo.Memo, used by proxy.sip.uri,
proxy.sip.headers and proxy.sip.message).

A callee's Request-URI, the proxy's own Record-Route and a call's From and To come back in
every message of a call; parsing each distinct text once keeps the per-message work on what
is new. The memos are bounded (MEMO_SIZE texts, then forgotten at once), never keep a
refusal, and the values they share cannot be changed.
"""

from __future__ import annotations

import pytest

from proxy import build_kind
from proxy.sip import ParseError, parse_message
from proxy.sip.headers import parse_name_addr, parse_name_addr_full, parse_via, parse_via_full
from proxy.sip.memo import MEMO_SIZE, Memo
from proxy.sip.uri import SipUri, parse_uri, parse_uri_full


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


def test_a_memo_is_emptied_when_full() -> None:
    """The one eviction rule: at most ``size`` texts; a new text when full forgets them all."""
    memo: Memo[int] = Memo(3)
    for i in range(3):
        assert memo.put(str(i), i) == i
    assert len(memo) == 3 and memo.get("2") == 2
    memo.put("3", 3)
    assert len(memo) == 1 and memo.get("0") is None and memo.get("3") == 3


def test_the_memos_stay_bounded_under_hostile_input() -> None:
    """Each text of a flood is new: the memo forgets everything when full instead of
    growing (an outsider controls these texts)."""
    from proxy.sip import headers, message, uri

    first = parse_uri("sip:first@example.com")
    for i in range(MEMO_SIZE + 10):
        parse_uri(f"sip:u{i}@example.com")
        parse_name_addr(f"<sip:u{i}@example.com>;tag={i}")
        parse_via(f"SIP/2.0/UDP h{i}.example.com;branch=z9hG4bK{i}")
        parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nX-H{i}: 1\r\n\r\n".encode()).get(f"x-h{i}")
    for memo in (uri._URIS, headers._NAME_ADDRS, headers._VIA_HEADS, message._FIELD_NAMES,
                 message._LOOKUP_NAMES):
        assert 0 < len(memo) <= MEMO_SIZE
    again = parse_uri("sip:first@example.com")
    assert again == first  # parsed again after the memo was cleared: still the same value


SHARED = [
    ("sip:alice@example.com:5070;transport=udp;lr", parse_uri, parse_uri_full),
    ('"Alice" <sip:alice@example.com>;tag=a1;expires=60', parse_name_addr, parse_name_addr_full),
    ("Bob <sip:bob@example.com;transport=tcp>", parse_name_addr, parse_name_addr_full),
    ("sip:bob@example.com;tag=b2", parse_name_addr, parse_name_addr_full),
    ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport", parse_via, parse_via_full),
    ("SIP/2.0/udp Host.Example.COM;branch=z9hG4bK2;received=192.0.2.9", parse_via,
     parse_via_full),
    ("SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK3;alias", parse_via, parse_via_full),
    ('SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK4;x="q"', parse_via, parse_via_full),
]


@pytest.mark.parametrize(("text", "memo", "full"), SHARED)
def test_a_value_read_through_the_memo_equals_the_grammar_without_it(
        text: str, memo: object, full: object) -> None:
    """The second read of a text is the memo's (and, for a Via, the memo of its sent-by plus
    its parameters split apart, RFC 3261 20.42): it equals what the full grammar gives without
    any memo or shortcut."""
    assert callable(memo) and callable(full)
    first = memo(text)
    again = memo(text)
    assert again == full(text)
    assert again == first and again is not full(text)


@pytest.mark.parametrize(("text", "memo", "full"), [v for v in SHARED if v[1] is not parse_via])
def test_a_shared_value_cannot_be_changed(text: str, memo: object, full: object) -> None:
    """What the memo hands out again is a value: its parameters are read-only in every build,
    its fields in the compiled one (and mypy refuses an assignment in any build)."""
    assert callable(memo)
    value = memo(text)
    before = dict(value.params)
    with pytest.raises(TypeError):
        value.params["zz"] = "y"
    if build_kind().startswith("compiled"):
        with pytest.raises(AttributeError):
            value.params = {}
    assert dict(memo(text).params) == before


def test_a_via_after_a_known_sent_by_is_still_checked() -> None:
    """A bad parameter after a sent-by the memo knows is refused (RFC 4475 3.1.2.1), as is a
    port out of range (RFC 3261 25.1: port = 1*DIGIT, 18.2.2 a 16-bit UDP/TCP port)."""
    parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1")
    for bad in ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;;",
                "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;=x",
                "SIP/2.0/UDP 192.0.2.1:99999;branch=z9hG4bK1"):
        with pytest.raises(ParseError):
            parse_via(bad)
        with pytest.raises(ParseError):
            parse_via_full(bad)


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
    assert inv.from_ is bye.from_  # one text, one shared value
