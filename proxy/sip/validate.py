"""Request syntax and sanity checks a proxy makes before anything else (RFC 3261 8.2, 16.3).

Not checked here, because they are proxy decisions taken in proxy.core: Max-Forwards 0 (483,
RFC 3261 16.3 step 3), Proxy-Require (420, step 6), the Request-URI scheme (416, step 2) and
loops (482, step 4).
"""

from __future__ import annotations

from typing import Final

from .errors import ParseError
from .message import FIELD_BITS, SipMessage
from .uri import SipUri

__all__ = ["KNOWN_METHODS", "REQUIRED_HEADERS", "SINGLE_HEADERS", "validate_request"]

# RFC 3261 8.1.1: mandatory in every request.
REQUIRED_HEADERS: tuple[str, ...] = ("to", "from", "call-id", "cseq", "via")
# RFC 3261 7.3.1 / 20: header fields whose grammar allows one value only.
SINGLE_HEADERS: frozenset[str] = frozenset({
    "to", "from", "call-id", "cseq", "max-forwards", "content-length", "content-type", "expires",
})
_SINGLE_ORDER: Final = ("to", "from", "call-id", "cseq", "max-forwards", "content-length",
                 "content-type", "expires")
_DISPLAY: Final = {"to": "To", "from": "From", "call-id": "Call-ID", "cseq": "CSeq", "via": "Via",
            "max-forwards": "Max-Forwards", "content-length": "Content-Length",
            "content-type": "Content-Type", "expires": "Expires"}
_BIT: Final = FIELD_BITS  # noted by parse_message: SipMessage.field_bits, repeated_bits
_REQUIRED_BITS: Final = sum(_BIT[name] for name in REQUIRED_HEADERS)
_SINGLE_BITS: Final = sum(_BIT[name] for name in _SINGLE_ORDER)
# Methods of RFC 3261 and the extensions a proxy commonly meets; a CSeq mismatch on any other
# method gets 501 (RFC 4475 3.1.2.18 mismatch02).
KNOWN_METHODS: frozenset[str] = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})


def validate_request(msg: SipMessage) -> None:
    """Raise ParseError with the status to answer when ``msg`` is not a sane request.

    * To, From, Call-ID, CSeq, Via present (RFC 3261 8.1.1; RFC 4475 3.3.1 insuf) -> 400;
    * To, From, Call-ID, CSeq, Max-Forwards, Content-Length, Content-Type, Expires not
      repeated (RFC 3261 7.3.1; RFC 4475 3.3.8 multi01) -> 400;
    * CSeq = number < 2**32 and the request's method (RFC 3261 8.1.1.5, 20.16; RFC 4475
      3.1.2.4 scalar02, 3.1.2.17 mismatch01) -> 400; a mismatch on an unknown method -> 501
      (RFC 4475 3.1.2.18 mismatch02).  ACK and CANCEL carry their own method in CSeq
      (RFC 3261 17.1.1.3, 9.1), so no exception applies;
    * From and To (and a REGISTER's Contact) parse as name-addr/addr-spec (RFC 4475 3.1.2.6,
      3.1.2.13-15) and every Via and Route value parses (3.1.2.1) -> 400; another request's
      Contact is not examined (RFC 3261 16.3 step 1: what a proxy does not use, it ignores
      and forwards unchanged);
    * the Request-URI parses; a SIP/SIPS Request-URI with ?headers is refused (RFC 3261
      19.1.5; RFC 4475 3.1.2.11 escruri) -> 400;
    * Max-Forwards, if present, is digits 0..255 (a value over 255 is refused, see
      SipMessage.max_forwards) -> 400.
    """
    if not msg.is_request:
        raise ValueError("validate_request() needs a request")
    seen = msg.field_bits  # one bit per field of REQUIRED_HEADERS / SINGLE_HEADERS
    repeated = msg.repeated_bits
    if seen & _REQUIRED_BITS != _REQUIRED_BITS:
        missing = [_DISPLAY[name] for name in REQUIRED_HEADERS if not seen & _BIT[name]]
        raise ParseError("missing header field(s): " + ", ".join(missing))
    if repeated & _SINGLE_BITS:
        name = next(name for name in _SINGLE_ORDER if repeated & _BIT[name])
        raise ParseError(f"{_DISPLAY[name]} header field repeated")

    msg.call_id  # noqa: B018 - non-empty (RFC 3261 20.8)
    _number, cseq_method = msg.cseq
    if cseq_method != msg.method:
        if msg.method in KNOWN_METHODS:
            raise ParseError(f"CSeq method {cseq_method!r} does not match {msg.method!r}")
        raise ParseError(f"CSeq method {cseq_method!r} does not match {msg.method!r}", 501)

    msg.from_tag  # noqa: B018 - each access checks (and caches) or raises ParseError(400)
    msg.to_tag  # noqa: B018
    msg.vias  # noqa: B018
    msg.max_forwards  # noqa: B018
    if msg.method == "REGISTER":
        # The registrar reads the Contacts (RFC 3261 10.3); a proxy forwarding any other
        # request does not, and ignores what it does not examine (16.3 step 1).
        msg.contacts  # noqa: B018
    msg.routes  # noqa: B018
    uri = msg.uri
    if isinstance(uri, SipUri) and uri.headers is not None:
        raise ParseError("headers are not allowed in a SIP Request-URI (RFC 3261 19.1.5)")

