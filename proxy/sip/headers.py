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

Each parser has one gate: the usual compact shape (no LWS around the separators, no quoted
parameter values) is read by one regex and the parameter splitter
(:func:`~proxy.sip.uri.split_params`), or, for the parameters alone, by one scan that checks
and splits them (:func:`~proxy.sip.chars.split_compact`); whatever does not have that shape
goes to the full grammar (:func:`parse_via_full`, :func:`parse_name_addr_full`), which alone decides what is an
error and gives the same value for what both read (tests/unit/test_sip_properties.py feeds
both the same generated values). Recurring texts are parsed once: a bounded
:class:`~proxy.sip.memo.Memo` of immutable values (``Final`` fields, read-only parameters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .chars import HPARAM_VALUE, TOKEN, digits_value, is_digits, is_token, split_compact
from .errors import ParseError
from .memo import Memo
from .uri import (
    NO_PARAMS,
    AbsoluteUri,
    Params,
    SipUri,
    format_params,
    host_port,
    parse_uri,
    parse_uri_full,
    read_only,
    split_params,
)

__all__ = [
    "NameAddr",
    "Via",
    "is_token",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addr_full",
    "parse_name_addr_list",
    "parse_params",
    "parse_via",
    "parse_via_full",
    "parse_via_list",
    "split_header_values",
]

_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
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
# The compact form of header parameters: ";name[=value]" items, no LWS, no quoted values, no
# ',' (RFC 3261 7.3.1 generic-param). The gate of every fast path below: what it matches
# (by one scan, chars.split_compact, which accepts what this regex matches and splits it as
# split_params does); anything else goes to the full grammar (_scan_params).
_COMPACT_PARAMS: Final = r"(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^;\"\x00-\x20\x7f,]+)?)"
# The common name-addr: [ quoted-string / tokens ] <URI> then compact parameters.
_FAST_NAME_ADDR_RE: Final = re.compile(
    r'(?:("(?:[^"\\]|\\.)*")|([A-Za-z0-9\-.!%*_+`\'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`\'~]+)*))?'
    r"[ \t]*<([^<>\x00-\x20\x7f\"]+)>"
    rf"({_COMPACT_PARAMS}*)\Z",
    re.DOTALL,
)
# The common sent-protocol SP sent-by of a Via (what precedes its first ';').
_FAST_VIA_HEAD_RE: Final = re.compile(
    rf"({_TOKEN})/({_TOKEN})/({_TOKEN}) "
    r"(\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)(?::([0-9]{1,5}))?\Z"
)
_KNOWN_TRANSPORTS: Final = frozenset({"UDP", "TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS", "DTLS"})
_MAX_CSEQ: Final = 2**32 - 1
# Methods met on every call: tokens, so a CSeq naming one needs no regex to check it.
_CSEQ_METHODS: Final = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"})


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


def parse_params(text: str) -> Params:
    """Parse ``*( SEMI generic-param )``; ``text`` is what follows the element the parameters
    belong to ('' or starting with SWS ';').  Names are lower-cased, values kept as written
    (quoted values keep their quotes).  Empty names (";;", RFC 4475 3.1.2.1) and empty values
    ("name=") raise ParseError(400).  The compact form by the one splitter, any other by the
    grammar (the same value either way)."""
    if not text:
        return NO_PARAMS
    compact = split_compact(text, 0, TOKEN, HPARAM_VALUE)
    if compact is not None:
        return read_only(compact)
    return read_only(_scan_params(text))


def _scan_params(text: str) -> dict[str, str | None]:
    """``*( SEMI generic-param )`` by the RFC 3261 25.1 grammar, character by character: SWS
    around ';' and '=', quoted-string values (RFC 4475 3.1.1.1)."""
    params: dict[str, str | None] = {}
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
    if "," not in text and '"' not in text:
        # one item (a Route, a Record-Route): the scan below would only check that each '<'
        # it meets has a '>' after it, which holds when the last '<' has one after it
        last = len(text) - 1
        if last >= 0 and text[last] != ">" and text.rfind("<") > text.rfind(">"):
            raise ParseError(f"unbalanced '<' in header value: {text[:80]!r}")
        item = text.strip()
        return [item] if item else []
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
    (tag, expires, q, +sip.instance, reg-id, ...), names lower-cased, values as written.
    A value (shared through the memo): the fields are ``Final``, ``params`` is read-only."""

    display: Final[str | None]
    uri: Final[SipUri | AbsoluteUri]
    params: Final[Params]
    bracketed: Final[bool]
    #: the tag parameter (RFC 3261 19.3), read once here: From/To tags are read many times a
    #: message (dialog and transaction matching), an attribute costs less than a lookup
    tag: Final[str | None]

    # init=False and an __init__ of our own: the compiled build constructs it natively (the
    # dataclass-made __init__ runs as interpreted code, 0.6 us a call).
    def __init__(self, display: str | None, uri: SipUri | AbsoluteUri, params: Params,
                 bracketed: bool) -> None:
        self.display = display
        self.uri = uri
        self.params = params
        self.bracketed = bracketed
        self.tag = params.get("tag") if params else None

    def __str__(self) -> str:
        head = self.display + " " if self.display else ""
        return head + "<" + str(self.uri) + ">" + format_params(self.params)


_NAME_ADDRS: Final[Memo[NameAddr]] = Memo()


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with its parameters (RFC 3261 20.10, 25.1): From, To,
    Contact, Route, Record-Route. Each distinct text once (a Route naming this proxy, a call's
    From and To recur in each of its messages); the usual shape by one regex, any other by
    :func:`parse_name_addr_full`, which gives the same value and alone refuses."""
    na = _NAME_ADDRS.table.get(text)
    if na is None:
        na = _NAME_ADDRS.put(text, _parse_name_addr(text))
    return na


def _parse_name_addr(text: str) -> NameAddr:
    # A new call's From (or a dialog's To) is a known value plus ";tag=" and a fresh token: the
    # known part, a bracketed name-addr without parameters, is the memo's (or parsed once), the
    # tag checked alone (RFC 3261 19.3: tag-param = "tag" EQUAL token); the grammar reads the
    # whole text to the same value (tests/unit/test_sip_properties.py).
    cut = text.rfind(";tag=")
    if cut > 0 and text[cut - 1] == ">":
        tag = text[cut + 5:]
        if is_token(tag):
            try:
                known = parse_name_addr(text[:cut])
            except ParseError:
                return parse_name_addr_full(text)  # the grammar says why
            if known.bracketed and not known.params:
                return NameAddr(known.display, known.uri, read_only({"tag": tag}), True)
    # "<URI>" alone (a Route, a Record-Route): a URI that parses holds none of the characters
    # the regex below refuses inside <> (controls, SP, '<', '>', '"'), so the regex would read
    # the same value; one that does not parse goes on to the regex and the grammar.
    last = len(text) - 1
    if last > 1 and text[0] == "<" and text[last] == ">":
        try:
            return NameAddr(None, parse_uri(text[1:last]), NO_PARAMS, True)
        except ParseError:
            pass
    m = _FAST_NAME_ADDR_RE.match(text)
    if m is None:
        return parse_name_addr_full(text)
    quoted, tokens, inner, ptext = m.groups()
    params = read_only(split_params(ptext[1:], "a header parameter")) if ptext else NO_PARAMS
    return NameAddr(quoted or tokens, parse_uri(inner), params, True)


def parse_name_addr_full(text: str) -> NameAddr:
    """:func:`parse_name_addr` by the grammar, without the memo or the one-regex shortcut.

    ParseError(400) for: an unterminated quoted display name (RFC 4475 3.1.2.6 quotbal), LWS
    inside <...> (3.1.2.14 badaspec), a non-token unquoted display name such as
    'Bell, Alexander' (3.1.2.15 baddn), an addr-spec holding ',' or '?' (RFC 3261 20.10: it must
    then be enclosed in <>; 3.1.2.13 regbadct).  'Joe<sip:a@b>' (no LWS before '<') is accepted
    (RFC 4475 3.1.1.6 lwsdisp).  Without <>, every ';' parameter is a header parameter
    (RFC 3261 20.10)."""
    s = text.strip()
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
            uri = parse_uri_full(utext)
            params = read_only(_scan_params(s[semi:])) if semi >= 0 else NO_PARAMS
            return NameAddr(None, uri, params, False)
    gt = s.find(">", lt + 1)
    if gt < 0:
        raise ParseError(f"'<' without '>' in name-addr: {s[:80]!r}")
    inner = s[lt + 1:gt]
    if not inner or inner[0] in _WS or inner[-1] in _WS:
        raise ParseError(f"LWS inside <> of name-addr: {s[:80]!r}")
    uri = parse_uri_full(inner)
    rest = s[gt + 1:]
    return NameAddr(display, uri, read_only(_scan_params(rest)) if rest else NO_PARAMS, True)


def parse_name_addr_list(text: str) -> list[NameAddr]:
    """Contact / Route / Record-Route values of one header line (RFC 3261 20.10, 20.30, 20.34).
    An empty value -> ParseError(400)."""
    values = split_header_values(text)
    if not values:
        raise ParseError("empty name-addr list")
    return [parse_name_addr(v) for v in values]


@dataclass(slots=True, init=False)
class Via:
    """One via-parm (RFC 3261 20.42). The fields are ``Final`` and ``params`` a Mapping (mypy
    refuses a write); a Via is not shared between messages, so its params stay a dict."""

    protocol: Final[str]
    transport: Final[str]
    host: Final[str]
    port: Final[int | None]
    params: Final[Params]

    # init=False and an __init__ of our own: the compiled build constructs it natively (the
    # dataclass-made __init__ runs as interpreted code, 0.6 us a call).
    def __init__(self, protocol: str, transport: str, host: str, port: int | None,
                 params: Params) -> None:
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
        if not is_digits(value) or len(value) > 5 or int(value) > 65535:
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


_VIA_HEADS: Final[Memo[tuple[str, str, str, int | None]]] = Memo()


def parse_via(text: str) -> Via:
    """Parse one via-parm (RFC 3261 20.42), with SWS around '/' ':' ';' '=' (RFC 4475 3.1.1.1).

    The usual compact shape is read in two parts: its sent-protocol and sent-by, the same in
    every message of a sender, examined once (a bounded memo), and its parameters (a fresh
    branch each time) by the one splitter once the compact-parameter regex matched them. Any
    other shape goes to :func:`parse_via_full`, which gives the same value and alone refuses."""
    semi = text.find(";")
    head = text if semi < 0 else text[:semi]
    sent = _VIA_HEADS.table.get(head)
    if sent is None:
        sent = _via_head(head)
        if sent is None:
            return parse_via_full(text)
        _VIA_HEADS.put(head, sent)
    if semi < 0:
        return Via(sent[0], sent[1], sent[2], sent[3], NO_PARAMS)
    params = split_compact(text, semi, TOKEN, HPARAM_VALUE)
    if params is None:
        return parse_via_full(text)
    # Not made read-only: a Via is not shared (each message parses its own; only the sent-by
    # tuple is memoized), and its type, Mapping, already refuses a write to mypy.
    return Via(sent[0], sent[1], sent[2], sent[3], params)


def parse_via_full(text: str) -> Via:
    """:func:`parse_via` by the grammar (LWS, quoted parameter values), without the memo or the
    compact shortcut."""
    m = _VIA_RE.match(text)
    if m is None:
        raise ParseError(f"bad Via: {text[:80]!r}")
    name, version, transport, host, port_text = m.groups()
    rest = text[m.end():]
    if rest:
        rest = rest.rstrip()
    return _make_via(text, name, version, transport, host, port_text,
                     _scan_params(rest) if rest else NO_PARAMS)


def _via_head(head: str) -> tuple[str, str, str, int | None] | None:
    """(protocol, transport, host, port) of a compact sent-protocol SP sent-by; None when it
    has another shape or a port out of range (then the whole Via goes the long way)."""
    fast = _FAST_VIA_HEAD_RE.match(head)
    if fast is None:
        return None
    name, version, transport, host, port_text = fast.groups()
    if port_text is not None and int(port_text) > 65535:
        return None
    via = _make_via(head, name, version, transport, host, port_text, NO_PARAMS)
    return (via.protocol, via.transport, via.host, via.port)


def _make_via(text: str, name: str, version: str, transport: str, host: str,
              port_text: str | None, params: Params) -> Via:
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


_CSEQS: Final[Memo[tuple[int, str]]] = Memo()


def parse_cseq(text: str) -> tuple[int, str]:
    """CSeq = 1*DIGIT LWS Method (RFC 3261 20.16); the number must be < 2**32 (RFC 3261 8.1.1.5,
    RFC 4475 3.1.2.4 scalar02). Each distinct text once (a transaction's CSeq recurs in each
    of its messages)."""
    cseq = _CSEQS.table.get(text)
    if cseq is None:
        cseq = _CSEQS.put(text, _parse_cseq(text))
    return cseq


def _parse_cseq(text: str) -> tuple[int, str]:
    sp = text.find(" ")
    if sp > 0:  # the usual "1 INVITE": one SP, a method of every call (no regex, no split)
        num = text[:sp]
        method = text[sp + 1:]
        if method in _CSEQ_METHODS:
            number = digits_value(num)
            if 0 <= number <= _MAX_CSEQ:
                return number, method
    parts = text.split()
    if len(parts) != 2:
        raise ParseError(f"bad CSeq: {text[:60]!r}")
    num, method = parts
    if not is_digits(num) or len(num) > 10 or int(num) > _MAX_CSEQ:
        raise ParseError(f"bad CSeq number: {num[:30]!r}")
    if method not in _CSEQ_METHODS and not is_token(method):
        raise ParseError(f"bad CSeq method: {method[:30]!r}")
    return int(num), method
