"""The scanners of :mod:`proxy.sip.chars` accept exactly what the RFC 3261 25.1 regexes they
stand for match, and split what they accept as ``split_params`` does (hypothesis): token, 1*DIGIT, and the compact parameter shapes of a header
(generic-param, 7.3.1) and of a SIP URI (uri-parameters, 19.1.1)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.sip import parse_message
from proxy.sip.chars import (
    HPARAM_VALUE,
    PCHAR,
    TOKEN,
    digits_value,
    is_digits,
    is_token,
    split_compact,
)
from proxy.sip.uri import split_params
from tests.unit import hypothesis_profiles  # registers and loads the profile

pytestmark = pytest.mark.timeout(hypothesis_profiles.TIMEOUT)

TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
DIGITS_RE = re.compile(r"[0-9]+\Z")
HEADER_PARAMS_RE = re.compile(r"(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^;\"\x00-\x20\x7f,]+)?)+\Z")
_P = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]"
URI_PARAMS_RE = re.compile(rf"(?:;{_P}+(?:={_P}+)?)+\Z")

# every class boundary: token and pchar characters, separators, controls, DEL, latin-1, beyond
ALPHABET = st.sampled_from(list(
    "aZ09-.!%*_+`'~()[]/:&$;=\",@?<> \t\x00\x1f\x7f\x80\xb2\xe9\u0100\u0663x"))
texts = st.text(ALPHABET, max_size=24)
params = st.lists(st.tuples(st.text(ALPHABET, max_size=6), st.one_of(
    st.none(), st.text(ALPHABET, max_size=6))), max_size=4).map(
    lambda items: "".join(";" + n + ("" if v is None else "=" + v) for n, v in items))


@given(texts)
@example("")
@example("INVITE")
@example("²")
def test_is_token_is_the_token_regex(text: str) -> None:
    """RFC 3261 25.1 token."""
    assert is_token(text) == (TOKEN_RE.match(text) is not None)


@given(texts)
@example("")
@example("0123456789")
@example("1²")
@example("\u0663")
def test_is_digits_is_ascii_digits(text: str) -> None:
    """1*DIGIT (RFC 5234 B.1: %x30-39), not any Unicode digit."""
    assert is_digits(text) == (DIGITS_RE.match(text) is not None)


def _expected(regex: re.Pattern[str], text: str, start: int) -> dict[str, str | None] | None:
    """None when ``regex`` does not match at ``start``, else what split_params gives."""
    if regex.match(text, start) is None:
        return None
    return split_params(text[start + 1:], "a parameter")


@given(st.one_of(texts, params), st.integers(0, 3))
@example(";branch=z9hG4bK-1;rport", 0)
@example(";a=b=c", 0)
@example(";a=", 0)
@example(";;", 0)
@example("", 0)
@example(";x=\xe9", 0)
def test_compact_header_params_is_the_regex(text: str, start: int) -> None:
    """RFC 3261 7.3.1 generic-param, compact: no LWS, no quoted value, no ','."""
    assert split_compact(text, start, TOKEN, HPARAM_VALUE) == _expected(HEADER_PARAMS_RE, text, start)


@given(st.one_of(texts, params), st.integers(0, 3))
@example(";lr;d=abc", 0)
@example(";a=b=c", 0)
@example(";maddr=[::1]", 0)
@example(";x=\xe9", 0)
@example(";x@y", 0)
@example(";LR;Transport=UDP;lr", 0)
def test_compact_uri_params_is_the_regex(text: str, start: int) -> None:
    """RFC 3261 19.1.1 uri-parameters as the compact URI shape writes them."""
    assert split_compact(text, start, PCHAR, PCHAR) == _expected(URI_PARAMS_RE, text, start)


@given(texts)
@example("0")
@example("0000000070")
@example("4294967295")
@example("12345678901")
@example("1²")
def test_digits_value_is_int_of_up_to_ten_ascii_digits(text: str) -> None:
    """1*DIGIT, bounded to 10 digits (Content-Length, CSeq, Max-Forwards, status code)."""
    expected = int(text) if DIGITS_RE.match(text) and len(text) <= 10 else -1
    assert digits_value(text) == expected


@given(st.sampled_from(["", " ", "\t", "\xa0", "\x85", "\x1c", "\x01", "  "]),
       st.sampled_from(["x", "a b", "\x01", "\xe9", "", "\xa0"]),
       st.sampled_from(["", " ", "\t", "\xa0", "\x85", "\x1f", "\x01"]))
def test_header_values_are_stripped_as_str_strip(lead: str, core: str, tail: str) -> None:
    """RFC 3261 7.3.1: the value of a header field, without the white space around it (the
    parser skips str.strip() when both ends are solid; the result must be the same)."""
    value = lead + core + tail
    data = ("OPTIONS sip:a@b SIP/2.0\r\nX-Test:" + value + "\r\nSubject: " + value
            + "\r\n\r\n").encode("latin-1")
    msg = parse_message(data)
    assert msg.get("x-test") == value.strip()
    assert msg.get("subject") == value.strip()
