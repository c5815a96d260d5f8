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

Parsed URIs are values: nothing changes one after parsing. :func:`parse_uri` therefore parses
each distinct text once and hands the same object out again (:data:`MEMO_SIZE` texts at most,
forgotten all at once when full, so that hostile input cannot grow it): the values that recur
on every call (a callee's Request-URI, the proxy's own Record-Route) cost a dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import unquote

from .errors import ParseError

__all__ = [
    "MEMO_SIZE", "AbsoluteUri", "SipUri", "is_plain_sip_uri", "parse_uri", "remember", "unescape",
]

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


def format_params(params: dict[str, str | None]) -> str:
    """``;name=value;flag`` from a parameter dict (the inverse of :func:`split_params`)."""
    return "".join(";" + k if v is None else ";" + k + "=" + v for k, v in params.items())


def _nonempty(name: str) -> bool:
    return bool(name)


def split_params(
    text: str, into: dict[str, str | None], name_ok: Callable[[str], bool], what: str
) -> dict[str, str | None]:
    """Add the ``name[=value]`` items of ``text`` (``;``-separated, no leading ``;``, no
    whitespace) to ``into``: names lower-cased, values kept as written, a bare name maps to
    None. An empty value ("name=") or a name ``name_ok`` refuses raises ParseError(400)
    naming ``what``. The one loop behind both header parameters (RFC 3261 7.3.1
    generic-param) and SIP URI parameters (RFC 3261 19.1.1 uri-parameters)."""
    for item in text.split(";"):
        eq = item.find("=")
        if eq < 0:
            name, value = item, None
        else:
            name, value = item[:eq], item[eq + 1:]
            if not value:
                raise ParseError(f"empty value of {what}: {item[:60]!r}")
        if not name_ok(name):
            raise ParseError(f"bad name of {what}: {name[:60]!r}")
        into[name.lower()] = value
    return into


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
    scheme and the host, which are lower-cased (both are case-insensitive, RFC 3261 19.1.4)."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str | None

    # init=False and an __init__ of our own: the compiled build constructs it natively (the
    # dataclass-made __init__ runs as interpreted code, 0.6 us a call).
    def __init__(self, scheme: str, user: str | None, password: str | None, host: str,
                 port: int | None, params: dict[str, str | None], headers: str | None) -> None:
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

    def copy(self) -> SipUri:
        return SipUri(self.scheme, self.user, self.password, self.host, self.port,
                      dict(self.params), self.headers)


@dataclass(slots=True)
class AbsoluteUri:
    """Any URI of another scheme (tel:, urn:, im:, http:, ...): RFC 3261 25.1 absoluteURI.

    ``raw`` is the whole URI as written; ``scheme`` is lower-cased."""

    scheme: str
    raw: str

    def __str__(self) -> str:
        return self.raw


def is_plain_sip_uri(text: str) -> bool:
    """True when :func:`parse_uri` takes ``text`` by its fast path and accepts it: a sip: or
    sips: URI of the common shape (no ?headers, no escaping oddities), its port in range."""
    m = _FAST_SIP_RE.match(text)
    if m is None:
        return False
    port = m.group(5)
    return port is None or int(port) <= 65535


#: texts a memo of this module keeps at most (the memo is cleared when it is full)
MEMO_SIZE: Final = 4096
_URI_MEMO: Final[dict[str, SipUri | AbsoluteUri]] = {}
_V = TypeVar("_V")


def remember(memo: dict[str, _V], text: str, value: _V) -> _V:
    """Keep ``value`` as what ``text`` parses to, in a memo of at most :data:`MEMO_SIZE`
    texts, all forgotten at once when it is full (an outsider chooses the texts)."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[text] = value
    return value


def parse_uri(text: str) -> SipUri | AbsoluteUri:
    """Parse a URI as found in a Request-URI or inside a name-addr (RFC 3261 19.1, 25.1).

    Raises ParseError(400) on: no scheme, LWS or '<>"' inside the URI, an empty or malformed
    host, an IPv6 address without brackets (RFC 5118 4.2), a bad port, an empty parameter.
    The result is shared with every other caller that parses the same text: never change it.
    """
    uri = _URI_MEMO.get(text)
    return uri if uri is not None else remember(_URI_MEMO, text, _parse_uri(text))


def _parse_uri(text: str) -> SipUri | AbsoluteUri:
    m = _FAST_SIP_RE.match(text)
    if m is not None:
        scheme, user, password, host, port_text, ptext = m.groups()
        port: int | None = None
        if port_text is not None:
            port = int(port_text)
            if port > 65535:
                raise ParseError(f"port out of range in URI: {text[:80]!r}")
        params: dict[str, str | None] = {}
        if ptext:
            for item in ptext[1:].split(";"):
                name, eq, value = item.partition("=")
                params[name.lower()] = value if eq else None
        return SipUri(scheme, user, password, host.lower(), port, params, None)
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
    params: dict[str, str | None] = {}
    headers: str | None = None
    if i < n and text[i] == ";":
        q = text.find("?", i)
        ptext = text[i + 1:q] if q >= 0 else text[i + 1:]
        split_params(ptext, params, _nonempty, f"uri-parameter in URI {text[:80]!r}")
        i = q if q >= 0 else n
    if i < n:
        # only '?' can be here (the hostport regex's look-ahead)
        headers = text[i + 1:]
    return SipUri(scheme, user, password, host, port, params, headers)
