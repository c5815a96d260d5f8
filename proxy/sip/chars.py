"""Character classes of the RFC 3261 25.1 grammar, read by scanning instead of a regex.

In the compiled build a regex is a call into the interpreter's ``re`` (a method call, a match
object, its groups), about a thousand instructions before the first character is read; a
scan of ``ord(text[i])`` against a 128-entry table is a few instructions a character, and the
texts these read (a token, a tag, the parameters of a Via or a URI) are short.  Each scanner
accepts exactly what the regex it stands for matches (tests/unit/test_sip_chars.py checks them
against those regexes with hypothesis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    # Native 64-bit ints in the compiled build (index and character arithmetic in C, no
    # tagged-int calls); annotations only, so the pure-Python build needs no mypy_extensions.
    from mypy_extensions import i64

__all__ = [
    "HPARAM_VALUE", "PCHAR", "TOKEN", "digits_value", "is_digits", "is_token", "split_compact",
]

#: token = 1*( alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
TOKEN: Final = 1
#: a uri-parameter name or value character as the compact URI shape allows it:
#: paramchar = param-unreserved / unreserved / escaped, with '%' (RFC 3261 19.1.1, 25.1)
PCHAR: Final = 2
#: a header parameter value of the compact shape: no SP, control, DEL, ';', '"' or ','
#: (and any character from 0x80 up)
HPARAM_VALUE: Final = 4

_ALPHANUM: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _table() -> bytes:
    table = bytearray(128)
    for c in _ALPHANUM + "-.!%*_+`'~":
        table[ord(c)] |= TOKEN
    for c in _ALPHANUM + "-_.!~*'()%[]/:&+$":
        table[ord(c)] |= PCHAR
    for code in range(0x21, 0x7F):
        if chr(code) not in ';",':
            table[code] |= HPARAM_VALUE
    return bytes(table)


_CLASSES: Final = _table()


def is_token(text: str) -> bool:
    """True if ``text`` is a non-empty RFC 3261 25.1 token."""
    n: i64 = len(text)
    if n == 0:
        return False
    classes = _CLASSES
    i: i64 = 0
    while i < n:
        c: i64 = ord(text[i])
        # letters and digits (most of any token) without the table: compares of a C int
        if not (97 <= c <= 122 or 48 <= c <= 57 or 65 <= c <= 90):
            if c >= 128 or not classes[c] & TOKEN:
                return False
        i += 1
    return True


def is_digits(text: str) -> bool:
    """True if ``text`` is 1*DIGIT: ASCII digits only (``str.isdigit`` also takes '²')."""
    n: i64 = len(text)
    if n == 0:
        return False
    i: i64 = 0
    while i < n:
        c: i64 = ord(text[i])
        if c < 48 or c > 57:
            return False
        i += 1
    return True


def digits_value(text: str) -> int:
    """The value of ``text`` when it is 1*DIGIT of at most 10 ASCII digits (every count SIP
    bounds: Content-Length, CSeq, Max-Forwards, a status code), else -1. ``int()`` of a str
    is a call into the interpreter's number parser; ten digits are ten multiply-adds."""
    n: i64 = len(text)
    if n == 0 or n > 10:
        return -1
    value: i64 = 0
    i: i64 = 0
    while i < n:
        c: i64 = ord(text[i])
        if c < 48 or c > 57:
            return -1
        value = value * 10 + (c - 48)
        i += 1
    return value


def split_compact(text: str, start: int, name_class: int,
                  value_class: int) -> dict[str, str | None] | None:
    """The parameters of ``text[start:]`` when it is one or more ``";" name [ "=" value ]``
    items, ``name`` of 1+ characters of ``name_class``, ``value`` of 1+ characters of
    ``value_class`` (characters from 0x80 up count as HPARAM_VALUE only): the compact
    parameter shape, no LWS, no quoted value (RFC 3261 7.3.1 generic-param, 19.1.1
    uri-parameters).  Given as ``uri.split_params`` gives them: names lower-cased, values as
    written, a bare name maps to None, the last of a repeated name counts.  None when the text
    has another shape (then the caller takes its long way).  One scan checks and splits.
    Letters and digits are of every class (TOKEN, PCHAR, HPARAM_VALUE): the scan takes them
    without the table."""
    n: i64 = len(text)
    i: i64 = start
    if i >= n:
        return None
    classes = _CLASSES
    high_ok = value_class == HPARAM_VALUE
    params: dict[str, str | None] = {}
    begin: i64
    c: i64
    while i < n:
        if ord(text[i]) != 59:  # ';'
            return None
        i += 1
        begin = i
        upper = False
        while i < n:
            c = ord(text[i])
            # letters and digits are of every class: no table for them
            if 97 <= c <= 122 or 48 <= c <= 57:
                i += 1
                continue
            if 65 <= c <= 90:
                upper = True
                i += 1
                continue
            if c >= 128 or not classes[c] & name_class:
                break
            i += 1
        if i == begin:
            return None
        name = text[begin:i]
        if upper:
            name = name.lower()
        value: str | None = None
        if i < n and ord(text[i]) == 61:  # '='
            i += 1
            begin = i
            while i < n:
                c = ord(text[i])
                if 97 <= c <= 122 or 48 <= c <= 57 or 65 <= c <= 90:
                    i += 1
                    continue
                if c >= 128:
                    if not high_ok:
                        break
                elif not classes[c] & value_class:
                    break
                i += 1
            if i == begin:
                return None
            value = text[begin:i]
        params[name] = value
    return params
