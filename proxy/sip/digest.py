"""The Digest credentials grammar (RFC 3261 25.1 ``credentials``, RFC 2617 3.2.2): the syntax
only; what the values prove is the registrar's business (:mod:`proxy.core.registrar.digest`)."""

from __future__ import annotations

from typing import Final

__all__ = ["parse_digest"]

_MAX_PARAMS: Final = 32  # a credentials value with more parameters is refused as malformed
_TSPECIALS: Final = frozenset('()<>@,;:\\"/[]?={} \t')


def _unescape_quoted(raw: str) -> str:
    """The content of a quoted-string (RFC 3261 25.1): a quoted-pair stands for its char."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            i += 1
            c = raw[i]
        out.append(c)
        i += 1
    return "".join(out)


def parse_digest(value: str) -> dict[str, str] | None:
    """Parse a Digest credentials value (RFC 3261 25.1 ``credentials``, RFC 2617 3.2.2):
    ``Digest`` LWS dig-resp *(COMMA dig-resp), each ``name=token`` or ``name="quoted"``.

    Returns the parameters with lower-case names and unquoted values, or None when the
    scheme is not Digest or the syntax is bad (unterminated quote, a parameter without '=' or
    value, a duplicate parameter, too many parameters). Never raises."""
    n = len(value)
    i = 0
    while i < n and value[i] in " \t":
        i += 1
    start = i
    while i < n and value[i] not in " \t":
        i += 1
    if value[start:i].lower() != "digest":
        return None
    params: dict[str, str] = {}
    expect_comma = False
    while True:
        while i < n and value[i] in " \t":
            i += 1
        if i == n:
            break
        if expect_comma:
            if value[i] != ",":
                return None
            i += 1
            expect_comma = False
            continue
        if value[i] == ",":  # RFC 7230 7 style empty list elements are tolerated
            i += 1
            continue
        start = i
        while i < n and value[i] not in _TSPECIALS:
            i += 1
        name = value[start:i].lower()
        if not name:
            return None
        while i < n and value[i] in " \t":
            i += 1
        if i == n or value[i] != "=":
            return None
        i += 1
        while i < n and value[i] in " \t":
            i += 1
        if i == n:
            return None
        if value[i] == '"':
            i += 1
            start = i
            while i < n and value[i] != '"':
                i += 2 if value[i] == "\\" else 1
            if i >= n:
                return None  # unterminated quoted-string
            param = _unescape_quoted(value[start:i])
            i += 1
        else:
            start = i
            while i < n and value[i] not in ", \t":
                i += 1
            param = value[start:i]
            if not param or '"' in param:
                return None
        if name in params or len(params) >= _MAX_PARAMS:
            return None
        params[name] = param
        expect_comma = True
    return params
