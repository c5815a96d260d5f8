"""Building messages by splicing the received bytes (the forwarding hot path).

Like Kamailio's "lumps", a forwarded message is never re-serialised: the changes a proxy makes
(RFC 3261 16.6: Request-URI, Max-Forwards, Record-Route, Via; 16.7 step 3: remove the top Via)
are spliced into ``msg.raw`` by header offsets and everything else is copied byte for byte.

Lines given as str are encoded latin-1 (so text taken from a parsed message round-trips), or
UTF-8 when they hold characters latin-1 cannot encode.  A line holding CR or LF is refused
(ValueError): it would inject header fields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from .errors import ParseError
from .headers import split_header_values
from .message import Header, SipMessage

__all__ = ["REASONS", "make_response", "reason_phrase", "rewrite", "strip_top_via"]

# RFC 3261 21 and later RFCs' codes (IANA "Response Codes" registry).
REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",  # RFC 6228
    200: "OK",
    202: "Accepted",  # RFC 6665
    204: "No Notification",  # RFC 5839
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",  # RFC 3903
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",  # RFC 4412
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",  # RFC 4028
    423: "Interval Too Brief",
    424: "Bad Location Information",  # RFC 6442
    428: "Use Identity Header",  # RFC 8224
    429: "Provide Referrer Identity",  # RFC 3892
    430: "Flow Failed",  # RFC 5626
    433: "Anonymity Disallowed",  # RFC 5079
    436: "Bad Identity Info",  # RFC 8224
    437: "Unsupported Credential",  # RFC 8224
    438: "Invalid Identity Header",  # RFC 8224
    439: "First Hop Lacks Outbound Support",  # RFC 5626
    440: "Max-Breadth Exceeded",  # RFC 5393
    469: "Bad Info Package",  # RFC 6086
    470: "Consent Needed",  # RFC 5360
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",  # RFC 6665
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",  # RFC 3329
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",  # RFC 8599
    580: "Precondition Failure",  # RFC 3312
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",  # RFC 8197
    608: "Rejected",  # RFC 8688
}
_CLASS_REASONS: Final = {1: "Provisional", 2: "Success", 3: "Redirection", 4: "Client Error",
                  5: "Server Error", 6: "Global Failure"}
_TAG_RE: Final = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)
_CRLF: Final = b"\r\n"
#: a response's status line with the default reason, by status code (make_response)
_STATUS_LINES: Final[dict[int, bytes]] = {}
_NO_BODY: Final = b"Content-Length: 0\r\n"
_NO_EDITS: Final[dict[int, str | None]] = {}  # never written: rewrite copies before it edits


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status``; a class phrase for unregistered codes."""
    return REASONS.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


def _line(text: str) -> bytes:
    """One header/start line + CRLF."""
    if "\r" in text or "\n" in text:
        raise ValueError(f"CR or LF inside a header line: {text[:60]!r}")
    try:
        return text.encode("latin-1") + _CRLF
    except UnicodeEncodeError:
        return text.encode("utf-8") + _CRLF


def _raw_line(raw: bytes, h: Header) -> bytes:
    seg = raw[h.start:h.end]
    return seg if seg.endswith(_CRLF) else seg + _CRLF


def rewrite(msg: SipMessage, *, start_line: str | None = None,
            insert_top: Sequence[str] = (), edits: dict[int, str | None] = _NO_EDITS,
            append: Sequence[str] = (), body: bytes | None = None) -> bytes:
    """Build a new message from ``msg.raw`` by splicing (RFC 3261 16.6 steps 2-8).

    start_line: replacement start line (no CRLF), or None to keep it.
    insert_top: lines inserted right after the start line, in order (Via, Record-Route).
    edits: {index in msg.headers: replacement line, or None to delete that header field}.
    append: lines added at the end of the header section.
    body: replacement body; Content-Length is then rewritten (an edit of the Content-Length
      field is overridden).  A message that had no Content-Length (an RFC 2543 datagram,
      RFC 4475 3.4.1) gets one appended, as streams require it (RFC 3261 18.3, 20.14).
    Everything else (unknown headers, folding, compact names, the body) is copied byte for byte.
    """
    raw = msg.raw
    hdrs = msg.headers
    sl_end = msg.start_line_end
    top_end = sl_end + 2
    parts: list[bytes] = []
    if start_line is None:
        if raw[sl_end:top_end] == _CRLF:
            parts.append(raw[:top_end])
        else:
            parts.append(raw[:sl_end] + _CRLF)
    else:
        parts.append(_line(start_line))
    for text in insert_top:
        parts.append(_line(text))

    cl_index = msg.content_length_index
    cl_line = ""
    if body is not None or cl_index < 0:
        cl_line = "Content-Length: " + str(len(msg.body if body is None else body))
        if cl_index >= 0:
            edits = dict(edits)
            edits[cl_index] = cl_line
    pos = top_end
    if edits:
        nh = len(hdrs)
        order = [idx for idx in edits]  # native iteration of the dict (list() is generic)
        if len(order) > 1:
            order.sort()
        for idx in order:
            if not 0 <= idx < nh:
                raise IndexError(f"no header field at index {idx}")
            h = hdrs[idx]
            if h.start > pos:
                parts.append(raw[pos:h.start])
            repl = edits[idx]
            if repl is not None:
                parts.append(_line(repl))
            pos = h.end
    hdr_tail = hdrs[-1].end if hdrs else top_end
    if not append and body is None and cl_index >= 0 and msg.header_end == hdr_tail + 2:
        parts.append(raw[pos:])  # rest of the headers, blank line and body, untouched
        return b"".join(parts)
    if hdr_tail > pos:
        seg = raw[pos:hdr_tail]
        parts.append(seg if seg.endswith(_CRLF) else seg + _CRLF)
    for text in append:
        parts.append(_line(text))
    if cl_index < 0:
        parts.append(_line(cl_line))
    parts.append(_CRLF)
    parts.append(raw[msg.header_end:] if body is None else body)
    return b"".join(parts)


def strip_top_via(msg: SipMessage) -> bytes:
    """Remove the first Via value for forwarding a response (RFC 3261 16.7 step 3).

    When the first Via header line holds several comma-separated values, that line is
    rewritten (its field name as written) without its first value.  No Via -> ParseError(400).
    """
    hdrs = msg.headers
    for idx, h in enumerate(hdrs):  # noqa: B007 - idx is used after the loop
        if h.name == "via":
            break
    else:
        raise ParseError("response without Via")
    value = h.value
    comma = value.find(",")
    if comma >= 0:
        rest = _after_first_value(value, comma)
        if rest:
            first = msg.raw[h.start:h.end].decode("latin-1")
            name = first[:first.find(":")]  # the field name as written (the line has a ':')
            return rewrite(msg, edits={idx: name + ": " + rest})
    return rewrite(msg, edits={idx: None})


def _after_first_value(value: str, comma: int) -> str:
    """The values after the first of a Via line holding a ',' at ``comma``, joined by ", "
    ('' when it holds one value): two values without quoted string or '<' (the usual response
    through one proxy) by one slice, any other line by :func:`split_header_values`."""
    if '"' not in value and "<" not in value and value.find(",", comma + 1) < 0:
        head = value[:comma].strip()
        rest = value[comma + 1:].strip()
        if head and rest:
            return rest  # what ", ".join(split_header_values(value)[1:]) gives
    items = split_header_values(value)
    return ", ".join(items[1:])


def make_response(request: SipMessage, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, headers: Sequence[str] = (),
                  body: bytes = b"") -> bytes:
    """A response to ``request`` built as RFC 3261 8.2.6.2 says: every Via (in order, as
    written), From, To (with ";tag=to_tag" added when the To has no tag and ``to_tag`` is
    given), Call-ID, CSeq copied; then ``headers``; then Content-Length and ``body``.

    The fields are copied as raw lines, so an odd but accepted request never makes this raise;
    a missing field is simply left out.  ``reason`` defaults to :data:`REASONS`.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status code out of range: {status}")
    if reason is None:
        status_line = _STATUS_LINES.get(status)
        if status_line is None:  # at most one a status code (100..699)
            status_line = _line("SIP/2.0 " + str(status) + " " + reason_phrase(status))
            _STATUS_LINES[status] = status_line
    else:
        status_line = _line("SIP/2.0 " + str(status) + " " + reason)
    raw = request.raw
    out = [status_line]
    h_from: Header | None = None
    h_to: Header | None = None
    h_call_id: Header | None = None
    h_cseq: Header | None = None
    for h in request.headers:  # the Vias in order; the first of each other field
        name = h.name
        if name == "via":
            out.append(_raw_line(raw, h))
        elif name == "from":
            if h_from is None:
                h_from = h
        elif name == "to":
            if h_to is None:
                h_to = h
        elif name == "call-id":
            if h_call_id is None:
                h_call_id = h
        elif name == "cseq" and h_cseq is None:
            h_cseq = h
    if h_from is not None:
        out.append(_raw_line(raw, h_from))
    if h_to is not None:
        if to_tag is not None and not _has_tag(request, h_to):
            out.append(_line("To: " + h_to.value + ";tag=" + to_tag))
        else:
            out.append(_raw_line(raw, h_to))
    if h_call_id is not None:
        out.append(_raw_line(raw, h_call_id))
    if h_cseq is not None:
        out.append(_raw_line(raw, h_cseq))
    for text in headers:
        out.append(_line(text))
    out.append(_line("Content-Length: " + str(len(body))) if body else _NO_BODY)
    out.append(_CRLF)
    out.append(body)
    return b"".join(out)


def _has_tag(request: SipMessage, h_to: Header) -> bool:
    try:
        return request.to_tag is not None
    except ParseError:
        return _TAG_RE.search(h_to.value) is not None
