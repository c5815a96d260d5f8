"""The core's fast paths give the bytes and values of the slow paths they stand for.

- :func:`proxy.core.access.validate.loop_hash`: the loop-detection part of the branch (RFC 3261
  16.6 step 8) is the CRC of the seven parts joined by NUL, as it always was (it is on the
  wire, in every branch this proxy writes).
- :func:`proxy.core.proxy.forward.on_ack`: the branch of a 2xx's ACK forwarded statelessly.
- :func:`proxy.transaction.timers.bucket_of`: a deadline's far bucket in the timer queue.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.access.validate import loop_hash
from proxy.sip import SipMessage, make_response, parse_message
from proxy.transaction.timers import BUCKET, bucket_of
from tests.unit import hypothesis_profiles  # registers and loads the profile
from tests.unit.core_harness import Harness, own_route, request

pytestmark = pytest.mark.timeout(hypothesis_profiles.TIMEOUT)

INVITE = (
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: Alice <sip:alice@example.com>;tag=a1\r\n"
    "To: <sip:bob@example.com>\r\n"
    "Call-ID: c1@10.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@10.0.0.1>\r\n"
    "Content-Length: 0\r\n\r\n"
)

VARIANTS = [
    INVITE,
    # several Via lines, one of two values, and compact names
    INVITE.replace("Max-Forwards", "v: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK-2, "
                   "SIP/2.0/UDP 10.0.0.3;branch=z9hG4bK-3\r\nMax-Forwards"),
    INVITE.replace("From: Alice <sip:alice@example.com>", "f: <sip:alice@example.com>")
          .replace("To: ", "t: ").replace("Call-ID:", "i:"),
    # folded To, a second From (the first is copied), headers in another order
    INVITE.replace("To: <sip:bob@example.com>\r\n", "To: <sip:bob@example.com>\r\n  ;x=1\r\n")
          .replace("Contact:", "From: <sip:mallory@example.com>;tag=m\r\nContact:"),
    INVITE.replace("CSeq: 1 INVITE\r\n", "").replace("Via:", "CSeq: 7 INVITE\r\nVia:"),
    # a request already in a dialog (To tag), with Route and Proxy-Require lines
    INVITE.replace("To: <sip:bob@example.com>", "To: <sip:bob@example.com>;tag=b2")
          .replace("Contact:", "Route: <sip:p1.example.com;lr>\r\nProxy-Require: foo\r\n"
                   "Route: <sip:p2.example.com;lr>, <sip:p3.example.com;lr>\r\n"
                   "Proxy-Require: bar, baz\r\nContact:"),
    # a body
    INVITE.replace("Content-Length: 0\r\n\r\n", "Content-Type: application/sdp\r\n"
                   "Content-Length: 4\r\n\r\nv=0\n"),
]


def parsed(text: str) -> SipMessage:
    return parse_message(text.encode("latin-1"))


def test_the_100_trying_copies_every_via_and_the_first_of_the_rest() -> None:
    """RFC 3261 8.2.6.2 (the 100 Trying of 16.2 is built by make_response)."""
    msg = parsed(VARIANTS[1].replace("Contact:", "From: <sip:x@example.com>;tag=x\r\nContact:"))
    data = make_response(msg, 100).decode("latin-1")
    assert data.startswith("SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP 10.0.0.1:5060")
    assert data.count("z9hG4bK-") == 3
    assert "tag=x" not in data and data.endswith("Content-Length: 0\r\n\r\n")


def slow_loop_hash(msg: SipMessage) -> str:
    """The loop hash as first written (``get_all`` and one ``"\\0".join``)."""
    key = "\0".join((
        msg.request_uri, msg.from_tag or "", msg.to_tag or "", msg.call_id, str(msg.cseq[0]),
        "|".join(msg.get_all("route")), "|".join(msg.get_all("proxy-require")),
    ))
    return format(zlib.crc32(key.encode("latin-1", "replace")), "08x")


@pytest.mark.parametrize("text", VARIANTS)
def test_loop_hash_is_the_crc_of_the_seven_parts(text: str) -> None:
    msg = parsed(text)
    assert loop_hash(msg) == slow_loop_hash(msg)
    assert len(loop_hash(msg)) == 8


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=12)


@given(cseq=st.integers(0, 2**31 - 1), routes=st.lists(_TOKEN, max_size=3),
       required=st.lists(_TOKEN, max_size=3), to_tag=st.none() | _TOKEN, user=_TOKEN)
def test_loop_hash_agrees_on_generated_requests(
    cseq: int, routes: list[str], required: list[str], to_tag: str | None, user: str,
) -> None:
    extra = "".join(f"Route: <sip:{r};lr>\r\n" for r in routes)
    extra += "".join(f"Proxy-Require: {r}\r\n" for r in required)
    text = (INVITE.replace("sip:bob@", f"sip:{user}@", 1)
            .replace("CSeq: 1 INVITE", f"CSeq: {cseq} INVITE")
            .replace("Contact:", extra + "Contact:"))
    if to_tag is not None:
        text = text.replace("To: <sip:bob@example.com>", f"To: <sip:bob@example.com>;tag={to_tag}")
    msg = parsed(text)
    assert loop_hash(msg) == slow_loop_hash(msg)


def test_stateless_ack_branch_is_the_crc_of_the_callers_branch_and_sent_by() -> None:
    """RFC 3261 16.11: the ACK for a 2xx, forwarded statelessly, gets a branch derived from
    its own top Via (the same on a retransmission, RFC 3261 16.11 and 17.2.3): "z9hG4bK",
    the proxy's prefix, "s" and the CRC-32 of branch|host|port in eight hex digits."""
    h = Harness.make()
    out = h.feed(request("ACK", ruri="sip:bob@127.0.0.1:5080", branch="z9hG4bKack2",
                         to_tag="callee1", extra=(f"Route: {own_route(h)}",)))
    [ack] = h.to(5080, out)
    crc = zlib.crc32(b"z9hG4bKack2|127.0.0.1|6000")
    assert ack.vias[0].branch == f"z9hG4bK{h.core.prefix}s{crc:08x}"
    assert str(ack.vias[0]).startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=")
    again = h.feed(request("ACK", ruri="sip:bob@127.0.0.1:5080", branch="z9hG4bKack2",
                           to_tag="callee1", extra=(f"Route: {own_route(h)}",)))
    [ack2] = h.to(5080, again)
    assert ack2.raw == ack.raw


@given(st.floats(min_value=-1e9, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_bucket_of_is_the_floor_division_by_the_bucket(deadline: float) -> None:
    """The timer queue's far bucket (:func:`proxy.transaction.timers.bucket_of`) is
    ``int(deadline // BUCKET)`` without the division, for every finite deadline."""
    assert bucket_of(deadline) == int(deadline // BUCKET)


@pytest.mark.parametrize("deadline", [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.999999, -2.000001,
                                      12345.0, 1e-300, -1e-300])
def test_bucket_of_at_the_edges(deadline: float) -> None:
    assert bucket_of(deadline) == int(deadline // BUCKET)
