"""StreamFramer: message framing on TCP/TLS (RFC 3261 18.3) and keep-alives (RFC 5626 4.4.1)."""

from __future__ import annotations

import pytest

from proxy.sip import FramingError, StreamFramer, parse_message

BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\r\nbinary\x00\r\n\n"


def message(call_id: str, body: bytes = BODY, cl: str | None = None) -> bytes:
    length = str(len(body)) if cl is None else cl
    return (
        "INVITE sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK-" + call_id + "\r\n"
        "Call-ID: " + call_id + "\r\n"
        "CSeq: 1 INVITE\r\n"
        "Content-Length: " + length + "\r\n\r\n"
    ).encode() + body


def test_one_message_in_one_chunk() -> None:
    """RFC 3261 18.3: header section plus Content-Length octets make one message."""
    data = message("a")
    assert StreamFramer().feed(data) == [data]


def test_one_byte_at_a_time() -> None:
    """RFC 3261 18.3: framing must not depend on how TCP segments the stream."""
    data = message("a") + message("b", body=b"")
    framer = StreamFramer()
    out: list[bytes | None] = []
    for i in range(len(data)):
        out.extend(framer.feed(data[i:i + 1]))
    assert out == [message("a"), message("b", body=b"")]
    assert framer.buffered == 0


@pytest.mark.parametrize("cut", [1, 2, 3, 30, 100, 117, 118, 119, 120, 140, 150])
def test_split_at_arbitrary_boundaries(cut: int) -> None:
    """RFC 3261 18.3: any split point, including inside the CRLFCRLF and the body."""
    data = message("a") + message("b")
    framer = StreamFramer()
    first = framer.feed(data[:cut])
    second = framer.feed(data[cut:])
    assert first + second == [message("a"), message("b")]


def test_every_split_of_two_messages() -> None:
    """Exhaustive: every 3-chunk split of a pipelined pair frames identically."""
    data = message("a", body=b"xy") + message("b", body=b"")
    expected = [message("a", body=b"xy"), message("b", body=b"")]
    for i in range(0, len(data), 7):
        for j in range(i, len(data), 11):
            framer = StreamFramer()
            out = framer.feed(data[:i]) + framer.feed(data[i:j]) + framer.feed(data[j:])
            assert out == expected, (i, j)


def test_pipelined_messages_in_one_chunk() -> None:
    """RFC 3261 18.3: several messages back to back in one read."""
    msgs = [message(str(i), body=BODY[: i * 3]) for i in range(5)]
    out = StreamFramer().feed(b"".join(msgs))
    assert out == msgs
    assert parse_message(out[3], datagram=False).body == BODY[:9]  # type: ignore[arg-type]


def test_crlfcrlf_ping_gives_none() -> None:
    """RFC 5626 4.4.1: a CRLFCRLF ping between messages is reported as None."""
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [None]
    assert framer.feed(message("a") + b"\r\n\r\n" + message("b")) == [
        message("a"), None, message("b"),
    ]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [None]  # the ping arrived split in three


def test_lone_crlf_is_skipped() -> None:
    """RFC 3261 7.5 / RFC 5626 4.4.1: a lone CRLF (pong) between messages is skipped."""
    framer = StreamFramer()
    assert framer.feed(b"\r\n" + message("a")) == [message("a")]
    assert framer.feed(message("b") + b"\r\n") == [message("b")]
    assert framer.feed(message("c")) == [message("c")]


def test_partial_message_is_buffered() -> None:
    """Partial data waits; nothing is returned until Content-Length octets arrived."""
    data = message("a")
    framer = StreamFramer()
    assert framer.feed(data[:-1]) == []
    assert framer.buffered == len(data) - 1
    assert framer.feed(data[-1:]) == [data]


def test_missing_content_length_is_framing_error() -> None:
    """RFC 3261 18.3: Content-Length is mandatory on streams."""
    data = b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n"
    with pytest.raises(FramingError) as err:
        StreamFramer().feed(data)
    assert err.value.status == 400


@pytest.mark.parametrize("cl", ["-999", "abc", "1 2", ""])
def test_bad_content_length_is_framing_error(cl: str) -> None:
    """RFC 4475 3.1.2.3 ncl: on a stream a bad Content-Length is unrecoverable."""
    framer = StreamFramer()
    with pytest.raises(FramingError):
        framer.feed(message("a", cl=cl))
    with pytest.raises(FramingError):  # stays broken: the connection must be closed
        framer.feed(message("b"))


def test_several_content_lengths_is_framing_error() -> None:
    """RFC 4475 3.3.9 mcl01: framing is undefined with two Content-Length fields."""
    data = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab"
    with pytest.raises(FramingError):
        StreamFramer().feed(data)


def test_compact_and_folded_content_length() -> None:
    """RFC 3261 7.3.3 'l' and 7.3.1 folding apply to Content-Length on streams too."""
    data = b"OPTIONS sip:a@b SIP/2.0\r\nl:\r\n 3\r\n\r\nabc"
    assert StreamFramer().feed(data) == [data]


def test_oversize_header_section_is_513() -> None:
    """RFC 3261 21.5.14 513: a header section that never ends within max_size."""
    framer = StreamFramer(max_size=200)
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n") == []
    with pytest.raises(FramingError) as err:
        framer.feed(b"X-Long: " + b"y" * 300)
    assert err.value.status == 513


def test_oversize_message_is_513() -> None:
    """RFC 3261 21.5.14 513: Content-Length pushing the message over max_size."""
    with pytest.raises(FramingError) as err:
        StreamFramer(max_size=300).feed(message("a", body=b"z" * 400))
    assert err.value.status == 513
    with pytest.raises(FramingError) as err:
        StreamFramer(max_size=300).feed(message("a", body=b"", cl="99999999999"))
    assert err.value.status == 513
