"""proxy.sip: the sans-IO SIP message layer (RFC 3261 7, 18.3, 19, 20, 25; RFC 4475; RFC 5118).

No IO and no dependency outside the standard library: bytes in, parsed messages out; new
messages are spliced out of the received bytes (:mod:`proxy.sip.build`).
"""

from __future__ import annotations

from .build import REASONS, make_response, reason_phrase, rewrite, strip_top_via
from .errors import FramingError, ParseError, SipError
from .framing import StreamFramer
from .headers import (
    NameAddr,
    Via,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_name_addr_full,
    parse_name_addr_list,
    parse_params,
    parse_via,
    parse_via_full,
    parse_via_list,
    split_header_values,
)
from .message import COMPACT, Header, SipMessage, canonical_name, parse_message
from .transport import LocalAddress, Send, Source
from .uri import (
    AbsoluteUri,
    SipUri,
    format_host,
    format_params,
    host_port_text,
    parse_uri,
    parse_uri_full,
    split_params,
    unescape,
)
from .validate import KNOWN_METHODS, validate_request

__all__ = [
    "COMPACT",
    "KNOWN_METHODS",
    "LocalAddress",
    "REASONS",
    "AbsoluteUri",
    "FramingError",
    "Header",
    "NameAddr",
    "ParseError",
    "SipError",
    "SipMessage",
    "SipUri",
    "Send",
    "Source",
    "StreamFramer",
    "Via",
    "canonical_name",
    "format_host",
    "format_params",
    "host_port_text",
    "is_token",
    "make_response",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_name_addr_full",
    "parse_name_addr_list",
    "parse_params",
    "parse_uri",
    "parse_uri_full",
    "parse_via",
    "parse_via_full",
    "parse_via_list",
    "reason_phrase",
    "rewrite",
    "split_params",
    "split_header_values",
    "strip_top_via",
    "unescape",
    "validate_request",
]
