"""Parsers for the structured header fields a proxy routes on (RFC 3261 20, 25.1).

ABNF beside the code (RFC 3261 25.1)::

    name-addr      = [ display-name ] LAQUOT addr-spec RAQUOT
    addr-spec      = SIP-URI / SIPS-URI / absoluteURI
    display-name   = *(token LWS) / quoted-string
    quoted-string  = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
    quoted-pair    = "\\" (%x00-09 / %x0B-0C / %x0E-7F)
    generic-param  = token [ EQUAL gen-value ]
    gen-value      = token / host / quoted-string
    SEMI = SWS ";" SWS    EQUAL = SWS "=" SWS    COMMA = SWS "," SWS    SLASH = SWS "/" SWS
    Via            = ( "Via" / "v" ) HCOLON via-parm *(COMMA via-parm)
    via-parm       = sent-protocol LWS sent-by *( SEMI via-params )
    sent-protocol  = protocol-name SLASH protocol-version SLASH transport
    sent-by        = host [ COLON port ]
    CSeq           = "CSeq" HCOLON 1*DIGIT LWS Method

Header values reach these functions unfolded (continuation lines joined by one space).
Every function raises ParseError(400) on malformed input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import ParseError
from .uri import (
    AbsoluteUri,
    SipUri,
    format_params,
    host_port,
    is_plain_sip_uri,
    parse_uri,
    remember,
    split_params,
)

__all__ = [
    "NameAddr",
    "Via",
    "is_token",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_params",
    "parse_via",
    "parse_via_list",
    "plain_name_addr_tag",
    "split_header_values",
]

_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE: Final = re.compile(_TOKEN + r"\Z")
_WS: Final = " \t"
_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
# display-name = *(token LWS): UTF-8 octets (seen as latin-1 chars >= 0x80) are tolerated.
_DISPLAY_TOKENS_RE: Final = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~\x80-\xff]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~\x80-\xff]+)*\Z"
)
# sent-protocol LWS sent-by (RFC 3261 20.42); the via-params follow.
_VIA_RE: Final = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
)
# Fast path of parse_name_addr for the common shapes: [ quoted-string / tokens ] <URI> followed
# by compact ";name[=value]" params (no LWS, no quoted values).  Anything else takes the slow
# path, which alone decides what is an error.
_FAST_NAME_ADDR_RE: Final = re.compile(
    r'(?:("(?:[^"\\]|\\.)*")|([A-Za-z0-9\-.!%*_+`\'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`\'~]+)*))?'
    r"[ \t]*<([^<>\x00-\x20\x7f\"]+)>"
    r"((?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^;\"\x00-\x20\x7f,]+)?)*)\Z",
    re.DOTALL,
)
# The usual compact Via: sent-protocol SP sent-by then ";name[=value]" params, no LWS/quotes.
_FAST_VIA_RE: Final = re.compile(
    rf"({_TOKEN})/({_TOKEN})/({_TOKEN}) "
    r"(\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^;\"\x00-\x20\x7f,]+)?)*)\Z"
)
# The parameters of such a Via, checked apart from its sent-by (see parse_via).
_VIA_PARAMS_RE: Final = re.compile(r"(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^;\"\x00-\x20\x7f,]+)?)+\Z")
_VIA_HEAD_MEMO: Final[dict[str, tuple[str, str, str, int | None] | None]] = {}
_KNOWN_TRANSPORTS: Final = frozenset({"UDP", "TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS", "DTLS"})
_MAX_CSEQ: Final = 2**32 - 1
# Methods met on every call: tokens, so a CSeq naming one needs no regex to check it.
_CSEQ_METHODS: Final = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"})


def is_token(text: str) -> bool:
    """True if ``text`` is a non-empty RFC 3261 25.1 token."""
    return _TOKEN_RE.match(text) is not None


def _end_quoted(s: str, i: int) -> int:
    """Index just past the quoted-string starting at s[i] == '"' (quoted-pairs honoured)."""
    n = len(s)
    j = i + 1
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    raise ParseError("unterminated quoted string")


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )``; ``text`` is what follows the element the parameters
    belong to ('' or starting with SWS ';').  Names are lower-cased, values kept as written
    (quoted values keep their quotes).  Empty names (";;", RFC 4475 3.1.2.1) and empty values
    ("name=") raise ParseError(400)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if '"' not in text and " " not in text and "\t" not in text:
        # fast path: the usual compact form ";branch=z9hG4bK...;rport"
        if text[0] != ";":
            raise ParseError(f"junk before parameters: {text[:60]!r}")
        return split_params(text[1:], params, is_token, "a parameter")
    n = len(text)
    i = 0
    while True:
        while i < n and text[i] in _WS:
            i += 1
        if i == n:
            return params
        if text[i] != ";":
            raise ParseError(f"junk in parameters: {text[i:i + 60]!r}")
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i]
        if not name:
            raise ParseError(f"empty parameter name: {text[:60]!r}")
        while i < n and text[i] in _WS:
            i += 1
        pvalue: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in _WS:
                i += 1
            if i < n and text[i] == '"':
                j = _end_quoted(text, i)
                pvalue = text[i:j]
                i = j
            else:
                start = i
                while i < n and text[i] not in ' \t;"':
                    i += 1
                pvalue = text[start:i]
                if not pvalue:
                    raise ParseError(f"empty parameter value: {text[:60]!r}")
        params[name.lower()] = pvalue


def split_header_values(text: str) -> list[str]:
    """Split a comma-separated header value list (RFC 3261 7.3.1), honouring quoted strings
    (with backslash escapes) and <...>.  Items are stripped; an empty item -> ParseError(400).
    An empty or all-blank ``text`` gives []."""
    if '"' not in text and "<" not in text:
        if "," not in text:
            item = text.strip()
            return [item] if item else []
        items = [p.strip() for p in text.split(",")]
        for item in items:
            if not item:
                raise ParseError(f"empty element in header value list: {text[:80]!r}")
        return items
    items = []
    n = len(text)
    i = 0
    start = 0
    while i < n:
        c = text[i]
        if c == '"':
            i = _end_quoted(text, i)
            continue
        if c == "<":
            gt = text.find(">", i + 1)
            if gt < 0:
                raise ParseError(f"unbalanced '<' in header value: {text[:80]!r}")
            i = gt + 1
            continue
        if c == ",":
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    items.append(text[start:].strip())
    if len(items) == 1 and not items[0]:
        return []
    for item in items:
        if not item:
            raise ParseError(f"empty element in header value list: {text[:80]!r}")
    return items


@dataclass(slots=True, init=False)
class NameAddr:
    """name-addr / addr-spec with its header parameters (RFC 3261 20.10, 20.20, 20.39, 25.1).

    ``display`` is as written (quotes kept); ``params`` are the header parameters after the URI
    (tag, expires, q, +sip.instance, reg-id, ...), names lower-cased, values as written."""

    display: str | None
    uri: SipUri | AbsoluteUri
    params: dict[str, str | None]
    bracketed: bool

    # init=False and an __init__ of our own: the compiled build constructs it natively (the
    # dataclass-made __init__ runs as interpreted code, 0.6 us a call).
    def __init__(self, display: str | None, uri: SipUri | AbsoluteUri,
                 params: dict[str, str | None], bracketed: bool) -> None:
        self.display = display
        self.uri = uri
        self.params = params
        self.bracketed = bracketed

    def __str__(self) -> str:
        head = self.display + " " if self.display else ""
        return head + "<" + str(self.uri) + ">" + format_params(self.params)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


_NAME_ADDR_MEMO: Final[dict[str, NameAddr]] = {}
_TAG_MEMO: Final[dict[str, tuple[str | None] | None]] = {}


def parse_name_addr(text: str) -> NameAddr:
    """:func:`_parse_name_addr`, each distinct text once (a Route naming this proxy recurs
    on every in-dialog request); the result is shared: never change it (see
    :mod:`proxy.sip.uri` for the memo's bound)."""
    na = _NAME_ADDR_MEMO.get(text)
    return na if na is not None else remember(_NAME_ADDR_MEMO, text, _parse_name_addr(text))


def _parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with its parameters (RFC 3261 20.10, 25.1).

    ParseError(400) for: an unterminated quoted display name (RFC 4475 3.1.2.6 quotbal), LWS
    inside <...> (3.1.2.14 badaspec), a non-token unquoted display name such as
    'Bell, Alexander' (3.1.2.15 baddn), an addr-spec holding ',' or '?' (RFC 3261 20.10: it must
    then be enclosed in <>; 3.1.2.13 regbadct).  'Joe<sip:a@b>' (no LWS before '<') is accepted
    (RFC 4475 3.1.1.6 lwsdisp).  Without <>, every ';' parameter is a header parameter
    (RFC 3261 20.10)."""
    s = text.strip()
    m = _FAST_NAME_ADDR_RE.match(s)
    if m is not None:
        quoted, tokens, inner, ptext = m.groups()
        params: dict[str, str | None] = {}
        if ptext:
            for item in ptext[1:].split(";"):
                name, eq, value = item.partition("=")
                params[name.lower()] = value if eq else None
        return NameAddr(quoted or tokens, parse_uri(inner), params, True)
    if "<" not in s and ";" not in s and "," not in s and "?" not in s and '"' not in s and s:
        return NameAddr(None, parse_uri(s), {}, False)  # plain addr-spec
    if not s:
        raise ParseError("empty name-addr")
    c0 = s[0]
    display: str | None
    if c0 == "<":
        display = None
        lt = 0
    elif c0 == '"':
        j = _end_quoted(s, 0)
        display = s[:j]
        lt = j
        n = len(s)
        while lt < n and s[lt] in _WS:
            lt += 1
        if lt == n or s[lt] != "<":
            raise ParseError(f"quoted display-name not followed by <URI>: {s[:80]!r}")
    else:
        lt = s.find("<")
        colon = s.find(":")
        if lt > 0 and (colon < 0 or colon > lt):
            display = s[:lt].rstrip()
            if not _DISPLAY_TOKENS_RE.match(display):
                raise ParseError(f"display-name is neither tokens nor quoted: {display[:80]!r}")
        else:
            # addr-spec (RFC 3261 20.10): the URI ends at the first ';'
            semi = s.find(";")
            utext = s if semi < 0 else s[:semi].rstrip()
            if "," in utext or "?" in utext:
                raise ParseError(f"URI with ',' or '?' must be enclosed in <>: {s[:80]!r}")
            uri = parse_uri(utext)
            return NameAddr(None, uri, parse_params(s[semi:]) if semi >= 0 else {}, False)
    gt = s.find(">", lt + 1)
    if gt < 0:
        raise ParseError(f"'<' without '>' in name-addr: {s[:80]!r}")
    inner = s[lt + 1:gt]
    if not inner or inner[0] in _WS or inner[-1] in _WS:
        raise ParseError(f"LWS inside <> of name-addr: {s[:80]!r}")
    uri = parse_uri(inner)
    rest = s[gt + 1:]
    return NameAddr(display, uri, parse_params(rest) if rest else {}, True)


def plain_name_addr_tag(text: str) -> tuple[str | None] | None:
    """``(tag,)``, the tag parameter of a From or To value of the usual shape
    (``Name <sip:user@host:port>;tag=x``, RFC 3261 19.3), checked as :func:`parse_name_addr`
    checks it but without building it; None when the value has another shape (then
    :func:`parse_name_addr` decides: it accepts it or raises ParseError). Each distinct text
    is examined once (a call's From and To recur in each of its messages)."""
    if text in _TAG_MEMO:
        return _TAG_MEMO[text]
    # A new call's From (or a dialog's To) is an old text plus ";tag=" and a fresh token: the
    # old part is looked up (or examined once), the tag checked alone.  A prefix of the usual
    # shape ending in '>' (no parameters) followed by one token parameter is of the usual
    # shape, with that tag; anything else goes the whole way.
    cut = text.rfind(";tag=")
    if cut > 0 and text[cut - 1] == ">":
        tag = text[cut + 5:]
        if _TOKEN_RE.match(tag) is not None:
            prefix = text[:cut]
            if prefix in _TAG_MEMO:
                known = _TAG_MEMO[prefix]
            else:
                known = remember(_TAG_MEMO, prefix, _plain_tag(prefix))
            if known is not None:
                return remember(_TAG_MEMO, text, (tag,))
    return remember(_TAG_MEMO, text, _plain_tag(text))


def _plain_tag(text: str) -> tuple[str | None] | None:
    m = _FAST_NAME_ADDR_RE.match(text.strip())
    if m is None or not is_plain_sip_uri(m.group(3)):
        return None
    tag: str | None = None
    ptext = m.group(4)
    if ptext:
        for item in ptext[1:].split(";"):
            name, eq, value = item.partition("=")
            if name.lower() == "tag":
                tag = value if eq else None  # the last one counts, as in the params dict
    return (tag,)


def parse_name_addr_list(text: str) -> list[NameAddr]:
    """Contact / Route / Record-Route values of one header line (RFC 3261 20.10, 20.30, 20.34).
    An empty value -> ParseError(400)."""
    values = split_header_values(text)
    if not values:
        raise ParseError("empty name-addr list")
    return [parse_name_addr(v) for v in values]


@dataclass(slots=True, init=False)
class Via:
    """One via-parm (RFC 3261 20.42)."""

    protocol: str
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    # init=False and an __init__ of our own: the compiled build constructs it natively (the
    # dataclass-made __init__ runs as interpreted code, 0.6 us a call).
    def __init__(self, protocol: str, transport: str, host: str, port: int | None,
                 params: dict[str, str | None]) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """received= as written; may hold an IPv6 address with or without [] (RFC 5118 4.5)."""
        return self.params.get("received")

    @property
    def rport(self) -> int | bool | None:
        """RFC 3581: None when absent, True when present without value, else the port.
        A non-numeric value raises ParseError(400)."""
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        if value is None:
            return True
        if not (value.isascii() and value.isdigit()) or len(value) > 5 or int(value) > 65535:
            raise ParseError(f"bad rport value: {value[:20]!r}")
        return int(value)

    def sent_by(self) -> tuple[str, int]:
        """(host without IPv6 brackets, port); default 5060, 5061 for TLS (RFC 3261 18.2.2)."""
        return host_port(self.host, self.port, self.transport == "TLS")

    def __str__(self) -> str:
        out = self.protocol + "/" + self.transport + " " + self.host
        if self.port is not None:
            out += ":" + str(self.port)
        return out + format_params(self.params)


def parse_via(text: str) -> Via:
    """Parse one via-parm (RFC 3261 20.42), with SWS around '/' ':' ';' '=' (RFC 4475 3.1.1.1).

    The usual compact shape is read in two parts: its sent-protocol and sent-by, the same in
    every message of a sender, examined once (a bounded memo, see :mod:`proxy.sip.uri`), and
    its parameters (a fresh branch each time), checked alone."""
    semi = text.find(";")
    if semi > 0:
        head = text[:semi]
        sent = _VIA_HEAD_MEMO[head] if head in _VIA_HEAD_MEMO else remember(
            _VIA_HEAD_MEMO, head, _via_head(head))
        ptext = text[semi:]
        if sent is not None and _VIA_PARAMS_RE.match(ptext) is not None:
            params: dict[str, str | None] = {}
            for item in ptext[1:].split(";"):
                pname, eq, pvalue = item.partition("=")
                params[pname.lower()] = pvalue if eq else None
            return Via(sent[0], sent[1], sent[2], sent[3], params)
    fast = _FAST_VIA_RE.match(text)
    if fast is not None:
        name, version, transport, host, port_text, ptext = fast.groups()
        params = {}
        if ptext:
            for item in ptext[1:].split(";"):
                pname, eq, pvalue = item.partition("=")
                params[pname.lower()] = pvalue if eq else None
        return _make_via(text, name, version, transport, host, port_text, params)
    m = _VIA_RE.match(text)
    if m is None:
        raise ParseError(f"bad Via: {text[:80]!r}")
    name, version, transport, host, port_text = m.groups()
    rest = text[m.end():]
    if rest:
        rest = rest.rstrip()
    return _make_via(text, name, version, transport, host, port_text,
                     parse_params(rest) if rest else {})


def _via_head(head: str) -> tuple[str, str, str, int | None] | None:
    """(protocol, transport, host, port) of a compact sent-protocol SP sent-by; None when it
    has another shape or a port out of range (then the whole Via goes the long way)."""
    fast = _FAST_VIA_RE.match(head)
    if fast is None or fast.group(6):
        return None
    name, version, transport, host, port_text, _ = fast.groups()
    try:
        via = _make_via(head, name, version, transport, host, port_text, {})
    except ParseError:
        return None
    return (via.protocol, via.transport, via.host, via.port)


def _make_via(text: str, name: str, version: str, transport: str, host: str,
              port_text: str | None, params: dict[str, str | None]) -> Via:
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise ParseError(f"Via port out of range: {text[:80]!r}")
    upper = transport.upper()
    if upper in _KNOWN_TRANSPORTS:
        transport = upper
    protocol = "SIP/2.0" if name == "SIP" and version == "2.0" else name.upper() + "/" + version
    return Via(protocol, transport, host.lower(), port, params)


def parse_via_list(text: str) -> list[Via]:
    """Every via-parm of one Via header line (comma lists expanded), in order.
    ParseError(400) on bad syntax, e.g. RFC 4475 3.1.2.1 "192.0.2.15;;,;,,"."""
    if "," not in text:
        return [parse_via(text)]
    values = split_header_values(text)
    if not values:
        raise ParseError("empty Via")
    return [parse_via(v) for v in values]


def parse_cseq(text: str) -> tuple[int, str]:
    """CSeq = 1*DIGIT LWS Method (RFC 3261 20.16); the number must be < 2**32 (RFC 3261 8.1.1.5,
    RFC 4475 3.1.2.4 scalar02)."""
    parts = text.split()
    if len(parts) != 2:
        raise ParseError(f"bad CSeq: {text[:60]!r}")
    num, method = parts
    if not (num.isascii() and num.isdigit()) or len(num) > 10 or int(num) > _MAX_CSEQ:
        raise ParseError(f"bad CSeq number: {num[:30]!r}")
    if method not in _CSEQ_METHODS and not _TOKEN_RE.match(method):
        raise ParseError(f"bad CSeq method: {method[:30]!r}")
    return int(num), method
