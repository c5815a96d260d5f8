"""SIP and SIPS URIs (RFC 3261 19.1, 25.1) with the IPv6 rules of RFC 5118.

ABNF (RFC 3261 25.1), the parts that matter to a proxy::

    SIP-URI        = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
    SIPS-URI       = "sips:" [ userinfo ] hostport uri-parameters [ headers ]
    userinfo       = ( user / telephone-subscriber ) [ ":" password ] "@"
    user           = 1*( unreserved / escaped / user-unreserved )
    user-unreserved= "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
    hostport       = host [ ":" port ]
    host           = hostname / IPv4address / IPv6reference
    IPv6reference  = "[" IPv6address "]"
    uri-parameters = *( ";" uri-parameter )
    headers        = "?" header *( "&" header )
    absoluteURI    = scheme ":" ( hier-part / opaque-part )
    scheme         = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )

Values are kept *as written* (still %-escaped, RFC 3261 19.1.2): unescaping is never done
implicitly, and never recursively (RFC 4475 3.1.1.3); :func:`unescape` is there for callers that
compare users.  A user part may hold ';' (RFC 4475 3.1.1.9 semiuri): the userinfo ends at the
first '@'.

Parsed URIs are values: their fields are ``Final`` (mypy refuses an assignment, the compiled
build refuses it at run time) and their parameters a read-only mapping. :func:`parse_uri`
therefore parses each distinct text once and hands the same object out again (a bounded
:class:`~proxy.sip.memo.Memo`): the values that recur on every call (a callee's Request-URI,
the proxy's own Record-Route) cost a dict lookup.

One gate: :func:`parse_uri` reads the common shape with one regex (:data:`_FAST_SIP_RE`);
whatever it does not match, or matches with a port out of range, goes to
:func:`parse_uri_full`, the step-by-step RFC 3261 25.1 grammar, which alone decides what is
an error (tests/unit/test_sip_properties.py feeds both the same generated URIs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final
from urllib.parse import unquote

from .chars import PCHAR, split_compact
from .errors import ParseError
from .memo import Memo

__all__ = [
    "NO_PARAMS", "AbsoluteUri", "Params", "SipUri", "parse_uri", "parse_uri_full", "read_only",
    "split_params", "unescape",
]

#: Parameters as the parsed values hold them: read-only (RFC 3261 7.3.1 generic-param,
#: 19.1.1 uri-parameters: names lower-cased, values as written, a bare name maps to None).
Params = Mapping[str, str | None]
#: The parameters of a value that has none (one shared read-only empty mapping).
NO_PARAMS: Final[Params] = MappingProxyType({})

# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
# Characters never allowed unescaped anywhere in a URI: controls, SP, DEL and the delimiters
# '<' '>' '"' (RFC 3986 2.2 / RFC 3261 25.1).  LWS in a URI is the RFC 4475 3.1.2.8 (lwsruri)
# defect; '<>' around it is 3.1.2.7 (ltgtruri).
_BAD_CHARS_RE: Final = re.compile(r'[\x00-\x20\x7f<>"]')
# hostport = host [ ":" port ]; host = hostname / IPv4address / IPv6reference.
# IPv6reference is checked by character class only: RFC 5118 4.10 asks to tolerate the
# 3-colon form that RFC 3261's ABNF bug allows ("[2001:db8:::192.0.2.1]").  '_' is tolerated
# in host names (seen in the wild, harmless).  The port must end the hostport, so
# "sip:2001:db8::10" (RFC 5118 4.2) fails on its "port" "db8::10".
_HOSTPORT_RE: Final = re.compile(
    r"(\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)(?::([0-9]{1,5}))?(?=[;?]|\Z)"
)
# Fast path for the common shapes (lower-case scheme, plain user/password, no ?headers): one
# match instead of the step-by-step parse below; anything it does not match takes the slow
# path, which is the one that decides what is an error. The userinfo is an atomic group:
# neither class holds '@' (nor the user ':'), so giving characters back could never reach
# the '@', and a URI without user part ("sip:192.0.2.1:5060;transport=udp") no longer
# backtracks through its host and port character by character.
_PCHAR: Final = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]"
_FAST_SIP_RE: Final = re.compile(
    r"(sips?):(?:(?>([A-Za-z0-9\-_.!~*'()&=+$,%]+)(?::([A-Za-z0-9\-_.!~*'()&=+$,%]*))?)@)?"
    r"(\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)(?::([0-9]{1,5}))?"
    rf"((?:;{_PCHAR}+(?:={_PCHAR}+)?)*)\Z"
)


def host_port(host: str, port: int | None, secure: bool) -> tuple[str, int]:
    """(host without IPv6 brackets, port); the default port is 5060, 5061 over TLS
    (RFC 3261 18.2.2, RFC 3263 4.2). Shared by Via sent-by and SIP URIs."""
    if host.startswith("["):
        host = host[1:-1]
    if port is not None:
        return host, port
    return host, 5061 if secure else 5060


def format_host(host: str) -> str:
    """``host`` as written in a hostport (RFC 3261 25.1): an IPv6 address in brackets
    (IPv6reference), anything else as it is. Already bracketed hosts are left alone."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port_text(host: str, port: int | None) -> str:
    """``host:port`` (or just the host when ``port`` is None) with IPv6 bracketed:
    ``[2001:db8::1]:5060``."""
    shown = format_host(host)
    return shown if port is None else f"{shown}:{port}"


def format_params(params: Params) -> str:
    """``;name=value;flag`` from parameters (the inverse of :func:`split_params`)."""
    return "".join(";" + k if v is None else ";" + k + "=" + v for k, v in params.items())


def read_only(params: dict[str, str | None]) -> Params:
    """``params`` as the parsed values hold them: a read-only view (nobody keeps the dict)."""
    return MappingProxyType(params) if params else NO_PARAMS


def split_params(text: str, what: str) -> dict[str, str | None]:
    """The ``name[=value]`` items of ``text`` (``;``-separated, no leading ``;``, no
    whitespace): names lower-cased, values kept as written, a bare name maps to None, the
    last of a repeated name counts. An empty name (";;", RFC 4475 3.1.2.1) or an empty value
    ("name=") raises ParseError(400) naming ``what``. The one splitter behind header parameters
    (RFC 3261 7.3.1 generic-param, once a regex has checked their compact form) and SIP URI
    parameters (RFC 3261 19.1.1 uri-parameters). The caller makes it read-only
    (:func:`read_only`) when the value holding it is shared."""
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name or (eq and not value):
            raise ParseError(f"empty name or value of {what}: {item[:60]!r}")
        params[name.lower()] = value if eq else None
    return params


def unescape(text: str) -> str:
    """Decode %HH escapes once (RFC 3261 19.1.2, 19.1.4).  Not recursive: "%2541" -> "%41".

    "%00" becomes U+0000; nothing is truncated (RFC 4475 3.1.1.4 escnull).  Invalid escapes
    ("%ZZ") are left as written.
    """
    if "%" not in text:
        return text
    return unquote(text, encoding="utf-8", errors="surrogateescape")


@dataclass(slots=True, init=False)
class SipUri:
    """A sip: or sips: URI (RFC 3261 19.1.1).  Every part is kept as written except the
    scheme and the host, which are lower-cased (both are case-insensitive, RFC 3261 19.1.4).
    A value: the fields are ``Final`` and ``params`` is read-only (see the module docstring)."""

    scheme: Final[str]
    user: Final[str | None]
    password: Final[str | None]
    host: Final[str]
    port: Final[int | None]
    params: Final[Params]
    headers: Final[str | None]

    # init=False and an __init__ of our own: the compiled build constructs it natively (the
    # dataclass-made __init__ runs as interpreted code, 0.6 us a call).
    def __init__(self, scheme: str, user: str | None, password: str | None, host: str,
                 port: int | None, params: Params, headers: str | None) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers

    def __str__(self) -> str:
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ":" + self.password
            out += "@"
        out += self.host
        if self.port is not None:
            out += ":" + str(self.port)
        out += format_params(self.params)
        if self.headers is not None:
            out += "?" + self.headers
        return out

    @property
    def transport(self) -> str | None:
        """The transport uri-parameter, lower-cased (RFC 3261 19.1.1)."""
        value = self.params.get("transport")
        return value.lower() if value is not None else None

    @property
    def aor(self) -> str:
        """"user@host" (no port, no parameters; user as written, host lower-case) or "host"."""
        return self.host if not self.user else self.user + "@" + self.host

    def host_port(self) -> tuple[str, int]:
        """(host without IPv6 brackets, port); default port 5060, 5061 for sips (RFC 3263 4.2)."""
        return host_port(self.host, self.port, self.scheme == "sips")

    def without_headers(self) -> SipUri:
        """This URI without its ?headers component (itself when it has none): the target of
        a redirect (RFC 3261 19.1.5, 16.5)."""
        if self.headers is None:
            return self
        return SipUri(self.scheme, self.user, self.password, self.host, self.port, self.params,
                      None)


@dataclass(slots=True, init=False)
class AbsoluteUri:
    """Any URI of another scheme (tel:, urn:, im:, http:, ...): RFC 3261 25.1 absoluteURI.

    ``raw`` is the whole URI as written; ``scheme`` is lower-cased."""

    scheme: Final[str]
    raw: Final[str]

    def __init__(self, scheme: str, raw: str) -> None:
        self.scheme = scheme
        self.raw = raw

    def __str__(self) -> str:
        return self.raw


_URIS: Final[Memo[SipUri | AbsoluteUri]] = Memo()


def parse_uri(text: str) -> SipUri | AbsoluteUri:
    """Parse a URI as found in a Request-URI or inside a name-addr (RFC 3261 19.1, 25.1).

    Raises ParseError(400) on: no scheme, LWS or '<>"' inside the URI, an empty or malformed
    host, an IPv6 address without brackets (RFC 5118 4.2), a bad port, an empty parameter.
    Each distinct text is parsed once (a bounded memo of immutable values); the common shape
    by one regex, anything else by :func:`parse_uri_full`, which gives the same value.
    """
    uri = _URIS.table.get(text)
    if uri is None:
        uri = _URIS.put(text, _parse_uri(text))
    return uri


def _parse_uri(text: str) -> SipUri | AbsoluteUri:
    # A URI whose parameters change while what precedes them recurs (a Record-Route's dialog
    # mark, a Contact's ob/gr): the part before the first ';' is a URI of its own, parsed once
    # (the memo), and the parameters, when they have the compact shape (PCHAR names and
    # values: no '@', '?', '=' in a value, LWS or '<>"'), cannot change what the part before
    # reads to: the value is the one the regex or the grammar gives for the whole text.
    semi = text.find(";")
    compact = split_compact(text, semi, PCHAR, PCHAR) if semi > 0 else None
    if compact is not None:
        try:
            head = parse_uri(text[:semi])
        except ParseError:
            return parse_uri_full(text)  # the grammar says why
        if isinstance(head, SipUri) and head.headers is None:
            return SipUri(head.scheme, head.user, head.password, head.host, head.port,
                          read_only(compact), None)
    m = _FAST_SIP_RE.match(text)
    if m is None:
        return parse_uri_full(text)
    scheme, user, password, host, port_text, ptext = m.groups()
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            return parse_uri_full(text)  # the grammar refuses it
    params = read_only(split_params(ptext[1:], "a uri-parameter")) if ptext else NO_PARAMS
    return SipUri(scheme, user, password, host.lower(), port, params, None)


def parse_uri_full(text: str) -> SipUri | AbsoluteUri:
    """:func:`parse_uri` by the RFC 3261 25.1 grammar step by step, without the memo or the
    one-regex shortcut: the reference the shortcut is tested against, and the path of every
    URI of another shape."""
    colon = text.find(":")
    if colon <= 0:
        raise ParseError(f"URI without a scheme: {text[:80]!r}")
    scheme = text[:colon]
    if not _SCHEME_RE.match(scheme):
        raise ParseError(f"bad URI scheme: {scheme[:40]!r}")
    if _BAD_CHARS_RE.search(text, colon):
        raise ParseError(f"whitespace or illegal character in URI: {text[:80]!r}")
    lscheme = scheme.lower()
    if lscheme != "sip" and lscheme != "sips":
        if colon + 1 == len(text):
            raise ParseError(f"empty {lscheme}: URI")
        return AbsoluteUri(lscheme, text)
    return _parse_sip_uri(lscheme, text, colon + 1)


def _parse_sip_uri(scheme: str, text: str, start: int) -> SipUri:
    at = text.find("@", start)
    user: str | None = None
    password: str | None = None
    if at >= 0:
        userinfo = text[start:at]
        c = userinfo.find(":")
        if c >= 0:
            user = userinfo[:c]
            password = userinfo[c + 1:]
        else:
            user = userinfo
        if not user:
            raise ParseError(f"empty user part in URI: {text[:80]!r}")
        hp = at + 1
        if text.find("@", hp) >= 0:
            raise ParseError(f"more than one '@' in URI: {text[:80]!r}")
    else:
        hp = start
    m = _HOSTPORT_RE.match(text, hp)
    if m is None:
        raise ParseError(f"bad host or port in URI: {text[:80]!r}")
    host = m.group(1).lower()
    port_text = m.group(2)
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise ParseError(f"port out of range in URI: {text[:80]!r}")
    i = m.end()
    n = len(text)
    params = NO_PARAMS
    headers: str | None = None
    if i < n and text[i] == ";":
        q = text.find("?", i)
        ptext = text[i + 1:q] if q >= 0 else text[i + 1:]
        params = read_only(split_params(ptext, f"a uri-parameter in URI {text[:80]!r}"))
        i = q if q >= 0 else n
    if i < n:
        # only '?' can be here (the hostport regex's look-ahead)
        headers = text[i + 1:]
    return SipUri(scheme, user, password, host, port, params, headers)
