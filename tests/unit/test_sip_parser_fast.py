"""The fast ways of parse_message and split_header_values give what the plain reading of
RFC 3261 7.3 gives (hypothesis).

A usual field-name spelling (``Via``, ``Call-ID``, ``v`` ...) is matched in place, without a
slice and a dict lookup; every other spelling (another case, SP/HTAB before ':', a longer name
that starts like a usual one) is sliced and canonicalised. The property: for every generated
header section, the fields (canonical name, value, offsets) are those a straightforward model
of RFC 3261 7.3 gives (field-name HCOLON field-value CRLF; 7.3.1 continuation lines joined
by one space; 7.3.3 compact forms), and a section the model refuses is refused with the same
message (a bare CR or LF where it comes first, RFC 3261 7).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.sip import ParseError, parse_message
from proxy.sip.chars import digits_value, is_token
from proxy.sip.headers import split_header_values
from proxy.sip.message import _SPELLINGS, COMPACT, FIELD_BITS
from proxy.sip.validate import REQUIRED_HEADERS, SINGLE_HEADERS
from tests.unit import hypothesis_profiles  # registers and loads the profile

pytestmark = pytest.mark.timeout(hypothesis_profiles.TIMEOUT)

START = "OPTIONS sip:a@example.com SIP/2.0\r\n"

_near = st.sampled_from(_SPELLINGS).flatmap(lambda s: st.sampled_from([
    s, s.lower(), s.upper(), s.swapcase(), s + " ", s + "\t", s + "x", s[:-1], s + "-X", s + "@",
]))
_other = st.text(st.sampled_from(list("aZ-.!x ~@")), min_size=0, max_size=8)
_names = st.one_of(_near, _near, _other)
# a bare CR or LF now and then; never a CRLF (nor CR at the end: the line's CRLF follows), so
# that the header section ends where the test puts its blank line
_values = st.text(st.sampled_from(list("ab 1;=<>:@\t\"\xe9\x85\xa0") * 4 + ["\r", "\n"]),
                  max_size=12).filter(lambda v: "\r\n" not in v and not v.endswith("\r"))
_lines = st.one_of(
    st.tuples(_names, _values).map(lambda nv: nv[0] + ":" + nv[1]),
    _values.map(lambda v: " " + v),  # a continuation line
    _names,  # a line without ':' (most of the time)
).filter(bool)  # an empty line ends the header section
sections = st.lists(_lines, max_size=6)


def model(section: str) -> list[tuple[str, str, int, int]] | str:
    """(name, value, start, end) of each field of ``section`` (after the start line, up to its
    last CRLF) by RFC 3261 7.3, or the error message."""
    fields: list[tuple[str, str, int, int]] = []
    at = 0
    pos = len(START)
    content_length = False
    while at < len(section):
        eol = section.find("\r", at)
        if section.find("\n", at) != eol + 1:  # RFC 3261 7: a line ends with CRLF
            return "bare CR or LF in the header section"
        line = section[at:eol]
        at = eol + 2
        end = pos + len(line) + 2
        if line[:1] in (" ", "\t"):
            if not fields:
                return "continuation line before the first header field"
            name, value, start, _ = fields[-1]
            cont = line.strip()
            value = value + " " + cont if value and cont else value or cont
            fields[-1] = (name, value, start, end)
        else:
            colon = line.find(":")
            if colon < 0:
                return f"header line without ':': {line[:60]!r}"
            raw = line[:colon]
            if not is_token(raw.rstrip(" \t")):
                return f"bad header field name: {raw[:60]!r}"
            lower = raw.rstrip(" \t").lower()
            name = COMPACT.get(lower, lower)
            if name == "content-length":
                if content_length:
                    return "several Content-Length header fields"
                content_length = True
            fields.append((name, line[colon + 1:].strip(), pos, end))
        pos = end
    for name, value, _, _ in fields:  # RFC 3261 18.3: no body here
        if name == "content-length":
            if digits_value(value) < 0:
                return f"bad Content-Length {value[:20]!r}"
            if digits_value(value) > 0:
                return f"Content-Length {value} exceeds the 0 body octets"
    return fields


@given(sections)
@example(["Via: SIP/2.0/UDP h;branch=z9hG4bK1", "Call-ID: x", "v: SIP/2.0/UDP h2"])
@example(["Via : a", "VIA: b", "Via\t: c", "Viax: d", "Vi: e"])
@example(["Content-Length: 0", "l: 0"])
@example(["To: a", "t: b", "TO : c", "Via: x", "v: y", "Expires: 1"])
@example(["CSeq: 1 OPTIONS", "CSeqx: 1", "Contact: <sip:a@b>", " ;q=1"])
@example(["To: a", "To:"])
@example(["Via: a\nb", "x"])
@example(["x", "Via: a\rb"])
def test_fields_are_those_of_the_plain_reading(lines: list[str]) -> None:
    """RFC 3261 7.3, 7.3.1, 7.3.3 (and 20.14: one Content-Length)."""
    section = "".join(line + "\r\n" for line in lines)
    data = (START + section + "\r\n").encode("latin-1")
    expected = model(section)
    try:
        msg = parse_message(data)
    except ParseError as exc:
        assert exc.message == expected
        return
    assert [(h.name, h.value, h.start, h.end) for h in msg.headers] == expected
    # the fields a request's validation counts (RFC 3261 8.1.1, 7.3.1), noted as read
    seen = repeated = 0
    for h in msg.headers:
        bit = FIELD_BITS.get(h.name, 0)
        repeated |= seen & bit
        seen |= bit
    assert (msg.field_bits, msg.repeated_bits) == (seen, repeated)


def test_field_bits_are_the_fields_validation_counts() -> None:
    """proxy.sip.validate reads the bits parse_message noted: one for each required field
    (RFC 3261 8.1.1) and each single-valued one (7.3.1), no other."""
    assert set(FIELD_BITS) == set(REQUIRED_HEADERS) | SINGLE_HEADERS
    assert sorted(FIELD_BITS.values()) == [1 << i for i in range(len(FIELD_BITS))]


def test_every_usual_spelling_is_its_canonical_name() -> None:
    """RFC 3261 7.3.3: each spelling matched in place names the field as any other spelling
    of the same name does (the compact form its full name)."""
    for spelling in _SPELLINGS:
        names = [parse_message((START + line + ": 0\r\n\r\n").encode()).headers[0].name
                 for line in (spelling, spelling.swapcase() + " ")]
        lower = spelling.lower()
        assert names == [COMPACT.get(lower, lower)] * 2


def scan_values(text: str) -> list[str] | str:
    """RFC 3261 7.3.1 comma-separated values read character by character (a comma inside a
    quoted-string, with its quoted-pairs, or inside <...> separates nothing), or the error."""
    items = []
    i = start = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                return "unterminated quoted string"
            i = j + 1
            continue
        if c == "<":
            gt = text.find(">", i + 1)
            if gt < 0:
                return f"unbalanced '<' in header value: {text[:80]!r}"
            i = gt + 1
            continue
        if c == ",":
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    items.append(text[start:].strip())
    if items == [""]:
        return []
    if "" in items:
        return f"empty element in header value list: {text[:80]!r}"
    return items


@given(st.text(st.sampled_from(list('<>",; a\\\t')), max_size=14))
@example("<sip:a@b;lr>")
@example("<sip:a@b;lr")
@example("<a>b<c")
@example("<a<b>")
@example(" <sip:x> ;q=1 ")
def test_header_values_split_as_the_scan_does(text: str) -> None:
    """split_header_values (its shortcuts for one value with or without <>, and its scan)
    gives what the character-by-character reading of RFC 3261 7.3.1 gives."""
    try:
        got: list[str] | str = split_header_values(text)
    except ParseError as exc:
        got = exc.message
    assert got == scan_values(text)


def test_call_id_is_read_once_and_a_missing_one_refused_each_time() -> None:
    """RFC 3261 20.8: the Call-ID kept after the first read; none, or an empty one, is a 400
    on every read (nothing is kept)."""
    msg = parse_message((START + "Call-ID: abc@h\r\n\r\n").encode())
    assert msg.call_id == "abc@h"
    assert msg.call_id is msg.call_id
    for section in ("", "Call-ID:\r\n"):
        bad = parse_message((START + section + "\r\n").encode())
        for _ in range(2):
            with pytest.raises(ParseError) as info:
                bad.call_id  # noqa: B018
            assert info.value.status == 400


def test_cseq_is_read_once_and_a_missing_one_refused_each_time() -> None:
    """RFC 3261 20.16: the CSeq kept after the first read; none is a 400 on every read."""
    msg = parse_message((START + "CSeq: 7 OPTIONS\r\n\r\n").encode())
    assert msg.cseq == (7, "OPTIONS")
    assert msg.cseq == (7, "OPTIONS")
    bad = parse_message((START + "\r\n").encode())
    for _ in range(2):
        with pytest.raises(ParseError) as info:
            bad.cseq  # noqa: B018
        assert info.value.status == 400
