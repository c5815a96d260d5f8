"""Stream framing (RFC 3261 18.3): cutting a TCP/TLS byte stream into SIP messages; no IO.

On a stream, Content-Length is mandatory and says where a message ends; CRLFCRLF between
messages is a keep-alive ping (RFC 5626 4.4.1).  :func:`proxy.sip.message.parse_message` then
parses each frame with ``datagram=False``.
"""

from __future__ import annotations

from .errors import FramingError

__all__ = ["StreamFramer"]


def _stream_content_length(head: str) -> int:
    """Content-Length of a header section (without its blank line) for stream framing."""
    found: str | None = None
    in_cl = False
    for line in head.split("\r\n"):
        c0 = line[:1]
        if c0 == " " or c0 == "\t":
            if in_cl and found is not None:
                found += line
            continue
        in_cl = False
        colon = line.find(":")
        if colon <= 0:
            continue
        name = line[:colon].rstrip(" \t").lower()
        if name == "content-length" or name == "l":
            if found is not None:
                raise FramingError("several Content-Length header fields on a stream")
            found = line[colon + 1:]
            in_cl = True
    if found is None:
        raise FramingError("missing Content-Length on a stream transport (RFC 3261 18.3)")
    value = found.strip()
    if not (value.isdigit() and value.isascii()):
        raise FramingError(f"bad Content-Length {value[:20]!r} on a stream")
    if len(value) > 10:
        raise FramingError(f"Content-Length {value[:20]} too large", 513)
    return int(value)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages (RFC 3261 18.3); sans-IO.

    ``feed(data)`` returns the messages completed by ``data``, each exactly its header section
    plus Content-Length body octets, and ``None`` for each CRLFCRLF keep-alive ping seen between
    messages (RFC 5626 4.4.1; answer it with a CRLF pong).  A lone CRLF between messages is
    skipped (RFC 3261 7.5).  Missing or malformed Content-Length -> FramingError(400); a header
    section or message over ``max_size`` -> FramingError(513).  After a FramingError the framer
    stays broken (every later feed raises it again): close the connection.  Messages completed
    earlier in the same ``feed`` call are lost with it.
    """

    __slots__ = ("_buf", "_error", "_need", "_scan", "max_size")

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scan = 0  # where to resume the search for CRLFCRLF
        self._need = -1  # total length of the message being completed, -1 when unknown
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | None]:
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except FramingError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _feed(self, data: bytes) -> list[bytes | None]:
        buf = self._buf
        buf += data
        out: list[bytes | None] = []
        max_size = self.max_size
        while buf:
            if self._need < 0:
                if buf[0] == 13:  # CR between messages: ping, lone CRLF, or junk
                    nb = len(buf)
                    if nb < 4 and b"\r\n\r\n".startswith(buf):
                        break  # could still become a ping: wait
                    if buf[:4] == b"\r\n\r\n":
                        out.append(None)
                        del buf[:4]
                        continue
                    if buf[:2] == b"\r\n":
                        del buf[:2]
                        continue
                hend = buf.find(b"\r\n\r\n", self._scan)
                if hend < 0:
                    if len(buf) > max_size:
                        raise FramingError(f"header section over {max_size} bytes", 513)
                    self._scan = max(0, len(buf) - 3)
                    break
                head_len = hend + 4
                if head_len > max_size:
                    raise FramingError(f"header section over {max_size} bytes", 513)
                total = head_len + _stream_content_length(buf[:hend].decode("latin-1"))
                if total > max_size:
                    raise FramingError(f"message of {total} bytes over {max_size}", 513)
                self._need = total
                self._scan = 0
            total = self._need
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._need = -1
        return out
