"""Errors of the SIP message layer.

Following h11's ``error_status_hint``, every parse error carries the SIP status code a server
would answer a request with (RFC 3261 8.2, 16.3, 21.x): 400, 505, 501, 513, ... A response
that fails to parse is never answered: its status is only informative (RFC 3261 16.7 / 18.1.2:
it is dropped).
"""

from __future__ import annotations

__all__ = ["FramingError", "ParseError", "SipError"]


class SipError(Exception):
    """Base class of every error raised by :mod:`proxy.sip`."""


class ParseError(SipError):
    """A message (or one header field of it) is malformed.

    ``status`` is the status code to answer a request with; ``message`` is one line of human
    text usable as a reason phrase, a Warning text or a log line.
    """

    status: int
    message: str

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class FramingError(ParseError):
    """The byte stream of a connection cannot be framed any more (RFC 3261 18.3).

    The caller must close the connection: the position of the next message is unknown.
    """
