"""The Call-ID of a raw SIP message found by a byte search, without parsing the message: what
the tracing taps (the recent-calls ring, the HEP correlation chunk) key on.

The common spellings are found with ``bytes.find`` (``Call-ID:`` as most user agents write it,
the compact ``i:``, RFC 3261 7.3.3); any other capitalisation (header names are
case-insensitive, RFC 3261 7.3.1) falls back to one regular expression. Only the header
section is searched, at most :data:`SEARCH_LIMIT` bytes.
"""

from __future__ import annotations

import re

SEARCH_LIMIT = 8192
_FAST = (b"\r\nCall-ID:", b"\r\ni:", b"\r\nCall-Id:")
_ANY = re.compile(rb"\r\n(?:call-id|i)[ \t]*:", re.IGNORECASE)
_MAX_LENGTH = 256  # a longer value is not kept whole (a Call-ID is one word, RFC 3261 25.1)


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID value of ``data`` (surrounding white space removed), or None."""
    end = data.find(b"\r\n\r\n", 0, SEARCH_LIMIT)
    if end < 0:
        end = min(len(data), SEARCH_LIMIT)
    for name in _FAST:
        at = data.find(name, 0, end)
        if at >= 0:
            start = at + len(name)
            break
    else:
        m = _ANY.search(data, 0, end)
        if m is None:
            return None
        start = m.end()
    stop = data.find(b"\r\n", start, end + 2)
    if stop < 0:
        stop = end
    value = data[start:min(stop, start + _MAX_LENGTH)].strip()
    return value or None
