"""SIP message parsing (RFC 3261 7, 18.3, 20); no IO.

The eager work of :func:`parse_message` is kept to what every message needs: the start line,
the split of the header section into lines (unfolding continuation lines, RFC 3261 7.3.1),
compact -> full names (RFC 3261 7.3.3) and Content-Length framing (RFC 3261 18.3, 20.14).
Structured headers are parsed on first access and cached.  Stream framing (RFC 3261 18.3 on
TCP/TLS) is :mod:`proxy.sip.framing`.

The start line and the header section are decoded as latin-1, so string offsets are byte
offsets into ``raw`` and re-encoding with latin-1 gives back every byte (UTF-8 passes through
unchanged).  :mod:`proxy.sip.build` splices new messages out of ``raw`` with those offsets.

ABNF (RFC 3261 25.1)::

    Request-Line   = Method SP Request-URI SP SIP-Version CRLF
    Status-Line    = SIP-Version SP Status-Code SP Reason-Phrase CRLF
    Status-Code    = 3DIGIT    (100..699: RFC 3261 7.2, 21)
    message-header = field-name HCOLON field-value CRLF
    HCOLON         = *( SP / HTAB ) ":" SWS
    LWS            = [*WSP CRLF] 1*WSP   ; a CRLF followed by SP/HTAB continues the field
"""

from __future__ import annotations

import re
from typing import Final

from .chars import digits_value, is_digits
from .errors import ParseError
from .headers import (
    NameAddr,
    Via,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_via,
    parse_via_list,
    split_header_values,
)
from .memo import Memo
from .uri import AbsoluteUri, SipUri, parse_uri

__all__ = ["COMPACT", "FIELD_BITS", "Header", "SipMessage", "canonical_name", "parse_message"]

# RFC 3261 7.3.3 and the registries of later RFCs: compact form -> full lower-case name.
COMPACT: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "b": "referred-by",  # RFC 3892
    "x": "session-expires",  # RFC 4028
    "u": "allow-events",  # RFC 6665
    "a": "accept-contact",  # RFC 3841
    "d": "request-disposition",  # RFC 3841
    "j": "reject-contact",  # RFC 3841
    "y": "identity",  # RFC 8224
    "n": "identity-info",  # RFC 4474
}

_MAX_MF: Final = 255
_MAX_DELTA: Final = 2**32 - 1
_VERSION_RE: Final = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
#: each known method to its one shared string: a parsed request names its method by it, not
#: by a slice of the datagram (every call in flight keeps its request's method)
_KNOWN_METHODS: Final[dict[str, str]] = {m: m for m in (
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
)}


class Header:
    """One header field line (with its continuation lines) of a parsed message.

    A plain slotted class, not a NamedTuple: the compiled build constructs it natively, ten
    times per message (a NamedTuple goes through ``tuple.__new__``, three times the cost)."""

    __slots__ = ("end", "name", "start", "value")

    name: str  # canonical full lower-case name ("via", "call-id", "x-unknown")
    value: str  # unfolded (continuation lines joined by one space), stripped
    start: int  # offset in raw of the first char of the header's first line
    end: int  # offset just past the CRLF that ends its last line

    def __init__(self, name: str, value: str, start: int, end: int) -> None:
        self.name = name
        self.value = value
        self.start = start
        self.end = end

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r}, {self.start}, {self.end})"


# field-name as written (up to ':') -> canonical name; bounded so hostile input cannot grow it.
_FIELD_NAMES: Final[Memo[str]] = Memo()
# name given by a caller of get()/count() -> canonical name (no validation).
_LOOKUP_NAMES: Final[Memo[str]] = Memo()


# The field names as the usual peers spell them (RFC 3261 7.3, 7.3.3: full Title-Case or
# compact), by their first character: parse_message reads them in place (no slice, no hash of
# a new string) and gives the name _canon_field_name gives the same spelling; any other
# spelling (another case, SP before ':') takes the memo and _canon_field_name.
_SPELLINGS: Final = (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Type",
    "Content-Length", "Record-Route", "Route", "Subject", "User-Agent", "Server", "Allow",
    "Supported", "Require", "Proxy-Require", "Expires", "Authorization",
    "Proxy-Authorization", "WWW-Authenticate", "Proxy-Authenticate", "Accept", "Event",
    "Date", "Timestamp", "Reason", "Session-Expires", "Min-SE", "P-Asserted-Identity",
    "Privacy", "Allow-Events", "Content-Disposition", "Accept-Encoding", "Accept-Language",
    "Content-Encoding", "Organization", "Warning", "Path", "Unsupported", "Min-Expires",
    "Retry-After", "RSeq", "RAck",
    *COMPACT,
)


#: one bit for each field whose presence or repetition a request's validation checks
#: (RFC 3261 8.1.1: required; 7.3.1: one value only): parse_message notes them as it reads
#: (``SipMessage.field_bits``, ``repeated_bits``), so that proxy.sip.validate needs no pass
FIELD_BITS: Final[dict[str, int]] = {name: 1 << i for i, name in enumerate((
    "via", "to", "from", "call-id", "cseq", "max-forwards", "content-length", "content-type",
    "expires"))}


def _by_first_char() -> tuple[tuple[tuple[str, str, int], ...], ...]:
    table: list[list[tuple[str, str, int]]] = [[] for _ in range(128)]
    for spelling in _SPELLINGS:
        lower = spelling.lower()
        name = COMPACT.get(lower, lower)
        table[ord(spelling[0])].append((spelling, name, FIELD_BITS.get(name, 0)))
    return tuple(tuple(row) for row in table)


_KNOWN_FIELDS: Final = _by_first_char()


def _canon_field_name(raw_name: str) -> str:
    name = raw_name.rstrip(" \t")  # HCOLON allows SP/HTAB before ':' (RFC 4475 wsinv)
    if not is_token(name):
        raise ParseError(f"bad header field name: {raw_name[:60]!r}")
    lower = name.lower()
    return _FIELD_NAMES.put(raw_name, COMPACT.get(lower, lower))


def canonical_name(name: str) -> str:
    """Header name in any case, full or compact -> canonical full lower-case name."""
    canon = _LOOKUP_NAMES.table.get(name)
    if canon is None:
        lower = name.strip().lower()
        canon = _LOOKUP_NAMES.put(name, COMPACT.get(lower, lower))
    return canon


class SipMessage:
    """A parsed SIP request or response (RFC 3261 7).  Built by :func:`parse_message`.

    Structured views (``vias``, ``cseq``, ``from_`` ...) are parsed on first access and cached;
    they raise ParseError(400) when the header is malformed (or missing, where it is required).
    """

    __slots__ = (
        "_call_id",
        "_contact_star",
        "_contacts",
        "_cseq_method",
        "_cseq_number",
        "_from",
        "_mf",
        "_mf_done",
        "_record_routes",
        "_route_lines",
        "_routes",
        "_to",
        "_top_via",
        "_uri",
        "_vias",
        "body",
        "content_length_index",
        "field_bits",
        "header_end",
        "headers",
        "is_request",
        "method",
        "raw",
        "reason",
        "repeated_bits",
        "request_uri",
        "start_line_end",
        "status",
        "version",
    )

    raw: bytes
    is_request: bool
    method: str
    request_uri: str
    status: int
    reason: str
    version: str
    headers: list[Header]
    header_end: int
    body: bytes
    start_line_end: int  # offset of the CRLF that ends the start line
    content_length_index: int  # index in headers of Content-Length, -1 when absent
    field_bits: int  # FIELD_BITS of the fields present
    repeated_bits: int  # FIELD_BITS of the fields present more than once

    def __init__(self, raw: bytes, is_request: bool, method: str, request_uri: str,
                 status: int, reason: str, version: str, headers: list[Header],
                 header_end: int, body: bytes, start_line_end: int,
                 content_length_index: int, field_bits: int, repeated_bits: int) -> None:
        self.raw = raw
        self.is_request = is_request
        self.method = method
        self.request_uri = request_uri
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.header_end = header_end
        self.body = body
        self.start_line_end = start_line_end
        self.content_length_index = content_length_index
        self.field_bits = field_bits
        self.repeated_bits = repeated_bits
        self._call_id: str | None = None
        self._vias: list[Via] | None = None
        self._top_via: Via | None = None
        # the CSeq once read, as two fields: the property returns them without a tuple
        # object to make, keep or take apart (mypyc returns a tuple[int, str] unboxed)
        self._cseq_method: str | None = None
        self._cseq_number = 0
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._uri: SipUri | AbsoluteUri | None = None
        self._routes: list[NameAddr] | None = None
        self._route_lines: list[tuple[int, list[NameAddr]]] | None = None
        self._record_routes: list[NameAddr] | None = None
        self._contacts: list[NameAddr] | None = None
        self._contact_star = False
        self._mf: int | None = None
        self._mf_done = False

    def __repr__(self) -> str:
        if self.is_request:
            return f"<SipMessage {self.method} {self.request_uri} ({len(self.raw)} bytes)>"
        return f"<SipMessage {self.status} {self.reason} ({len(self.raw)} bytes)>"

    # ---- raw header access -------------------------------------------------------------------

    @property
    def start_line(self) -> str:
        return self.raw[:self.start_line_end].decode("latin-1")

    def _get(self, canon: str) -> str | None:
        for h in self.headers:
            if h.name == canon:
                return h.value
        return None

    def get(self, name: str) -> str | None:
        """Value of the first header of that name (any case, full or compact), or None."""
        return self._get(canonical_name(name))

    def get_all(self, name: str) -> list[str]:
        """Values of every header line of that name, in order (not comma-split)."""
        canon = canonical_name(name)
        return [h.value for h in self.headers if h.name == canon]

    def count(self, name: str) -> int:
        canon = canonical_name(name)
        return sum(1 for h in self.headers if h.name == canon)

    def find(self, name: str, start: int = 0) -> int:
        """Index in ``headers`` of the first header of that name at or after ``start``; -1."""
        canon = canonical_name(name)
        headers = self.headers
        for i in range(start, len(headers)):
            if headers[i].name == canon:
                return i
        return -1

    def find_all(self, name: str) -> list[int]:
        """Indices in ``headers`` of every header of that name (keys for build.rewrite edits)."""
        canon = canonical_name(name)
        return [i for i, h in enumerate(self.headers) if h.name == canon]

    # ---- lazily parsed views ------------------------------------------------------------------

    @property
    def vias(self) -> list[Via]:
        """Every Via value in order, comma lists expanded (RFC 3261 20.42)."""
        vias = self._vias
        if vias is None:
            vias = []
            for h in self.headers:
                if h.name == "via":
                    value = h.value
                    if "," in value:
                        vias.extend(parse_via_list(value))
                    else:  # one via-parm: what parse_via_list gives, without its list
                        vias.append(parse_via(value))
            self._vias = vias
        return vias

    @property
    def top_via(self) -> Via:
        """The first Via value; ParseError(400) if there is none."""
        tv = self._top_via
        if tv is None:
            if self._vias is not None:
                if not self._vias:
                    raise ParseError("missing Via header field")
                tv = self._vias[0]
            else:
                value = self._get("via")
                if value is None:
                    raise ParseError("missing Via header field")
                comma = value.find(",")
                if comma < 0:
                    tv = parse_via(value)
                elif '"' not in value:  # no quoted string: the first comma ends the first value
                    tv = parse_via(value[:comma].strip())
                else:
                    tv = parse_via_list(value)[0]
            self._top_via = tv
        return tv

    @property
    def call_id(self) -> str:
        """Call-ID (RFC 3261 20.8); ParseError(400) when missing or empty (each time)."""
        value = self._call_id
        if value is None:
            value = self._get("call-id")
            if not value:
                raise ParseError("missing or empty Call-ID header field")
            self._call_id = value
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        method = self._cseq_method
        if method is None:
            value = self._get("cseq")
            if value is None:
                raise ParseError("missing CSeq header field")
            number, method = parse_cseq(value)
            self._cseq_number = number
            self._cseq_method = method
        return self._cseq_number, method

    @property
    def from_(self) -> NameAddr:
        na = self._from
        if na is None:
            value = self._get("from")
            if value is None:
                raise ParseError("missing From header field")
            na = self._from = parse_name_addr(value)
        return na

    @property
    def to(self) -> NameAddr:
        na = self._to
        if na is None:
            value = self._get("to")
            if value is None:
                raise ParseError("missing To header field")
            na = self._to = parse_name_addr(value)
        return na

    @property
    def from_tag(self) -> str | None:
        """From's tag (RFC 3261 8.1.1.3); ParseError(400) as :attr:`from_`."""
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        """To's tag (RFC 3261 8.1.1.2); ParseError(400) as :attr:`to`."""
        return self.to.tag

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 20.22): None if absent; ParseError(400) unless 0..255.

        RFC 4475 3.1.2.4 (scalar02) allows treating a value over 255 as absent; this parser
        rejects it instead (the grammar is 1*DIGIT, RFC 3261 8.1.1.6 bounds it to 255)."""
        if not self._mf_done:
            value = self._get("max-forwards")
            mf: int | None = None
            if value is not None:
                mf = digits_value(value)
                if mf < 0:
                    raise ParseError(f"bad Max-Forwards: {value[:20]!r}")
                if mf > _MAX_MF:
                    raise ParseError(f"Max-Forwards over 255: {value[:20]!r}")
            self._mf = mf
            self._mf_done = True
        return self._mf

    def _name_addrs(self, canon: str) -> list[NameAddr]:
        out: list[NameAddr] = []
        for h in self.headers:
            if h.name == canon:
                for v in split_header_values(h.value) or _empty(canon):
                    out.append(parse_name_addr(v))
        return out

    @property
    def route_lines(self) -> list[tuple[int, list[NameAddr]]]:
        """Each Route header line as (its index in ``headers``, its values), in order
        (RFC 3261 20.34): parsed once, for validation (16.3) and route processing (16.4)."""
        lines = self._route_lines
        if lines is None:
            lines = self._route_lines = []
            for i, h in enumerate(self.headers):
                if h.name == "route":
                    values = split_header_values(h.value) or _empty("route")
                    lines.append((i, [parse_name_addr(v) for v in values]))
        return lines

    @property
    def routes(self) -> list[NameAddr]:
        """All Route values in order (RFC 3261 20.34)."""
        if self._routes is None:
            self._routes = [na for _, values in self.route_lines for na in values]
        return self._routes

    @property
    def record_routes(self) -> list[NameAddr]:
        """All Record-Route values in order (RFC 3261 20.30)."""
        if self._record_routes is None:
            self._record_routes = self._name_addrs("record-route")
        return self._record_routes

    @property
    def contacts(self) -> list[NameAddr]:
        """All Contact values in order, [] if none; a "*" value is not listed (see
        ``contact_star``, RFC 3261 10.2.2)."""
        contacts = self._contacts
        if contacts is None:
            contacts = []
            star = False
            for h in self.headers:
                if h.name == "contact":
                    for v in split_header_values(h.value) or _empty("contact"):
                        if v == "*":
                            star = True
                        else:
                            contacts.append(parse_name_addr(v))
            self._contact_star = star
            self._contacts = contacts
        return contacts

    @property
    def contact_star(self) -> bool:
        """True if a Contact value is the "*" wildcard (RFC 3261 10.2.2)."""
        self.contacts  # noqa: B018 - parses and sets the flag
        return self._contact_star

    @property
    def uri(self) -> SipUri | AbsoluteUri:
        """The parsed Request-URI; ParseError(400) if malformed or not a request."""
        uri = self._uri
        if uri is None:
            uri = self._uri = parse_uri(self.request_uri)
        return uri

    @property
    def expires(self) -> int | None:
        """Expires (RFC 3261 20.19): None if absent, ParseError(400) if not digits; values over
        2**32-1 are clamped to 2**32-1 (RFC 4475 3.1.2.4 lets an element treat an overlarge
        expiry as a default; clamping keeps the sender's intent of "very long")."""
        value = self._get("expires")
        if value is None:
            return None
        if not is_digits(value):
            raise ParseError(f"bad Expires: {value[:20]!r}")
        if len(value) > 10:
            return _MAX_DELTA
        return min(int(value), _MAX_DELTA)


def _solid(c: int) -> bool:
    """Not a character str.strip() removes, for a latin-1 code point ``c``."""
    return c > 32 and c != 0x85 and c != 0xA0


def _empty(canon: str) -> list[str]:
    raise ParseError(f"empty {canon} header field")


def parse_message(data: bytes, *, max_size: int = 65535, max_headers: int = 256,
                  datagram: bool = True) -> SipMessage:
    """Parse one SIP message (RFC 3261 7) from a datagram or a frame cut by StreamFramer.

    Raises ParseError with the status to answer:
      * 513 when ``len(data) > max_size`` (RFC 3261 21.5.14);
      * 505 for a request whose SIP-Version is not 2.0 (RFC 3261 8.2.2; RFC 4475 badvers);
      * 400 for a malformed start line: extra or trailing SP, LWS or <> in the Request-URI
        (RFC 4475 3.1.2.7-3.1.2.10), a status code that is not 3 digits 100..699 (3.1.2.19);
        a header line without ':' or with a bad name; bare CR/LF in the header section; more
        than ``max_headers`` header fields; several Content-Length fields (3.3.9) or a value that
        is not digits (3.1.2.3); a Content-Length larger than the data (3.1.2.2).
    Octets after Content-Length are not part of the message (RFC 3261 18.3; RFC 4475 3.1.1.8).
    Datagram only: no Content-Length -> the body is the rest (RFC 3261 18.3, RFC 4475 3.4.1);
    no blank line -> the end of the datagram ends the header section (RFC 4475 3.1.2.15).
    Stream (``datagram=False``): Content-Length is mandatory.
    CRLFs before the start line are skipped (RFC 3261 7.5).
    """
    n = len(data)
    if n > max_size:
        raise ParseError(f"message of {n} bytes exceeds the limit of {max_size}", 513)
    if data[:2] == b"\r\n":
        rest = data.lstrip(b"\r\n")
        k = n - len(rest)
        if k % 2 or data[:k] != b"\r\n" * (k // 2):
            raise ParseError("bare CR or LF before the start line")
        data = rest
        n = len(data)
    # The whole message decoded once (latin-1: one octet, one char); the head is its first
    # hlen chars, the blank line (or the end of a datagram) ends it.
    head = data.decode("latin-1")
    hend = head.find("\r\n\r\n")
    if hend >= 0:
        hlen = hend + 2
        header_end = hend + 4
        terminated = True
    else:
        if not datagram or not data:
            raise ParseError("incomplete header section")
        header_end = n
        hlen = n
        terminated = head.endswith("\r\n")
        if not terminated:
            head += "\r\n"
            hlen += 2
    # RFC 3261 7: every line ends in CRLF; a CR or LF of no CRLF is refused line by line (each
    # line: its first CR must be followed by its first LF), by two memchr-speed finds.
    sl_end = head.find("\r")
    if head.find("\n") != sl_end + 1:
        raise ParseError("bare CR or LF in the header section")
    first = head[:sl_end]

    # ---- start line (RFC 3261 7.1, 7.2) ----
    method = ruri = reason = ""
    status = 0
    sp1 = first.find(" ")
    if first.startswith("SIP/"):  # a Method is a token: it cannot hold '/'
        is_request = False
        if sp1 < 0:
            raise ParseError("malformed Status-Line")
        version = first[:sp1]
        sp2 = first.find(" ", sp1 + 1)
        if sp2 < 0:
            code = first[sp1 + 1:]
        else:
            code = first[sp1 + 1:sp2]
            reason = first[sp2 + 1:]
        status = digits_value(code) if len(code) == 3 else -1
        if not 100 <= status <= 699:  # 3DIGIT, the first 1..6 (RFC 3261 7.2, 21)
            raise ParseError(f"bad status code: {code[:20]!r}")
        if version != "SIP/2.0":
            if version.upper() != "SIP/2.0":
                raise ParseError(f"unsupported SIP version {version[:20]!r}", 505)
            version = "SIP/2.0"
    else:
        is_request = True
        sp2 = first.find(" ", sp1 + 1) if sp1 > 0 else -1
        if sp2 < 0 or first.find(" ", sp2 + 1) >= 0:  # exactly two SP (RFC 4475 3.1.2.7)
            raise ParseError("malformed Request-Line (need Method SP Request-URI SP SIP-Version)")
        method = first[:sp1]
        ruri = first[sp1 + 1:sp2]
        version = first[sp2 + 1:]
        if version != "SIP/2.0":
            if version.upper() == "SIP/2.0":
                version = "SIP/2.0"
            elif _VERSION_RE.match(version):
                raise ParseError(f"unsupported SIP version {version[:20]!r}", 505)
            else:
                raise ParseError(f"bad SIP-Version {version[:20]!r}")
        known = _KNOWN_METHODS.get(method)
        if known is not None:
            method = known
        elif not is_token(method):
            raise ParseError(f"bad Method {method[:40]!r}")
        if not ruri or ruri[0] == "<" or ":" not in ruri:
            raise ParseError(f"bad Request-URI {ruri[:80]!r}")

    # ---- header fields (RFC 3261 7.3) ----
    headers: list[Header] = []
    field_names = _FIELD_NAMES.table
    cl_index = -1
    seen = repeated = 0  # FIELD_BITS of the fields met, and of those met again
    pos = sl_end + 2
    while pos < hlen:
        eol = head.find("\r", pos)  # the head ends with CRLF: always found
        if head.find("\n", pos) != eol + 1:
            raise ParseError("bare CR or LF in the header section")
        end = eol + 2
        c0 = ord(head[pos])  # (character compares as ints: no 1-char str each)
        if c0 == 32 or c0 == 9:  # SP / HTAB
            # continuation line (RFC 3261 7.3.1): joined to the previous value by one space
            if not headers:
                raise ParseError("continuation line before the first header field")
            prev = headers[-1]
            cont = head[pos:eol].strip()
            value = prev.value + " " + cont if prev.value and cont else prev.value or cont
            headers[-1] = Header(prev.name, value, prev.start, end)
        else:
            # a usual spelling followed by ':' is read in place (no spelling holds ':', so
            # that ':' is the line's first); a find bounded to the spelling's length compares
            # without a slice
            colon = -1
            name = ""
            bit = 0
            if c0 < 128:
                for spelling, canon, known_bit in _KNOWN_FIELDS[c0]:
                    k = pos + len(spelling)
                    if k < eol and ord(head[k]) == 58 and head.find(spelling, pos, k) == pos:
                        colon = k
                        name = canon
                        bit = known_bit
                        break
            if colon < 0:
                colon = head.find(":", pos, eol)
                if colon < 0:
                    raise ParseError(
                        f"header line without ':': {head[pos:min(eol, pos + 60)]!r}")
                raw_name = head[pos:colon]
                name = field_names.get(raw_name) or _canon_field_name(raw_name)
                bit = FIELD_BITS.get(name, 0)
            if bit:
                repeated |= seen & bit
                seen |= bit
            if name == "content-length":
                if cl_index >= 0:
                    raise ParseError("several Content-Length header fields")
                cl_index = len(headers)
            # HCOLON = *(SP / HTAB) ":" SWS: one SP after ':' then no white space at either end
            # is the usual shape (one slice, no strip); str.strip() takes what isspace() says
            # is white space, which in latin-1 is <= SP, 0x85 and 0xA0.
            vstart = colon + 2 if ord(head[colon + 1]) == 32 else colon + 1
            if vstart < eol and _solid(ord(head[vstart])) and _solid(ord(head[eol - 1])):
                value = head[vstart:eol]
            else:
                value = head[vstart:eol].strip()
            headers.append(Header(name, value, pos, end))
        pos = end
    if len(headers) > max_headers:
        raise ParseError(f"more than {max_headers} header fields")
    if not terminated and headers:  # the last line has no CRLF: it ends at the datagram end
        last = headers[-1]
        headers[-1] = Header(last.name, last.value, last.start, n)

    # ---- framing (RFC 3261 18.3, 20.14) ----
    if cl_index >= 0:
        value = headers[cl_index].value
        length = digits_value(value)
        if length < 0:
            raise ParseError(f"bad Content-Length {value[:20]!r}")
        end = header_end + length
        if end > n:
            raise ParseError(f"Content-Length {value} exceeds the {n - header_end} body octets")
        body = data[header_end:end]
        raw = data if end == n else data[:end]
    else:
        if not datagram:
            raise ParseError("missing Content-Length on a stream transport")
        body = data[header_end:]
        raw = data
    return SipMessage(raw, is_request, method, ruri, status, reason, version, headers,
                      header_end, body, sl_end, cl_index, seen, repeated)
