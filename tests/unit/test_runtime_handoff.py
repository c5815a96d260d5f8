"""The workers' spread of one UDP source and the hand-off (proxy.runtime.handoff, README
"Workers"): which worker handles a message, the socketpairs that carry a datagram to it with
the source the kernel gave, the drop when a worker's buffer is full, and the kernel's random
pick among SO_REUSEPORT sockets (real sockets, no mock)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import zlib

import pytest

from proxy.runtime.handoff import HandOff, channels, gate_share, owner, spread
from proxy.transport.udp import UdpEndpoint

CALL_ID = "a84b4c76e66710@pc33.example.com"


def request(method: str = "INVITE", call_id_line: str = f"Call-ID: {CALL_ID}",
            body: str = "", via_port: int = 5062) -> bytes:
    return (f"{method} sip:bob@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.4:{via_port};branch=z9hG4bK776asdhds\r\n"
            "Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\n"
            "From: <sip:alice@example.com>;tag=1928301774\r\n"
            f"{call_id_line}\r\nCSeq: 1 {method}\r\nContent-Length: {len(body)}\r\n\r\n"
            f"{body}").encode()


def response(top_port: int, call_id: str = CALL_ID) -> bytes:
    return ("SIP/2.0 180 Ringing\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{top_port};branch=z9hG4bK-proxy\r\n"
            "Via: SIP/2.0/UDP 192.0.2.4:40001;branch=z9hG4bK776asdhds\r\n"
            "To: <sip:bob@example.com>;tag=ab\r\nFrom: <sip:alice@example.com>;tag=1928301774\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


def by_call_id(call_id: str, count: int) -> int:
    return zlib.crc32(call_id.encode()) % count


# ------------------------------------------------------------------------------ owner


@pytest.mark.parametrize("line", [f"Call-ID: {CALL_ID}", f"i: {CALL_ID}", f"call-id :{CALL_ID}",
                                  f"CALL-ID:\t{CALL_ID}  "])
def test_a_request_belongs_to_the_worker_of_its_call_id_however_the_header_is_spelt(
        line: str) -> None:
    """RFC 3261 7.3.1 (names case-insensitive, LWS around the colon), 7.3.3 (``i``): every
    spelling of one Call-ID names one worker, so the INVITE, its retransmission, its CANCEL
    and its ACK reach the worker holding the transaction."""
    for count in (2, 3, 4):
        assert owner(request(call_id_line=line), count, {}) == by_call_id(CALL_ID, count)


def test_every_request_of_one_call_reaches_the_same_worker() -> None:
    seen = {owner(request(m, call_id_line=f"Call-ID: {cid}"), 4, {})
            for m in ("INVITE", "CANCEL", "ACK", "BYE")
            for cid in (CALL_ID,)}
    assert len(seen) == 1
    # and different calls spread over the workers
    spread_over = {owner(request(call_id_line=f"Call-ID: call-{i}@example.com"), 4, {})
                   for i in range(64)}
    assert spread_over == {0, 1, 2, 3}


def test_a_call_id_in_the_body_is_not_read() -> None:
    """The header names the worker: a body line that looks like one (a message/sipfrag
    body, RFC 3420) does not. (A message with no Call-ID header is refused with 400 by
    whichever worker handles it: proxy.sip.capture.call_id_of, the search reused here,
    does not bound its common spelling to the header section.)"""
    body = "Call-ID: someone-else@example.com\r\n"
    plain = request(call_id_line=f"Call-ID: {CALL_ID}")
    with_body = request(call_id_line=f"Call-ID: {CALL_ID}", body=body)
    assert owner(with_body, 16, {}) == owner(plain, 16, {}) == by_call_id(CALL_ID, 16)
    # no Call-ID at all: no worker named (the reader answers 400)
    no_call_id = request(call_id_line="Subject: none")
    assert owner(no_call_id, 16, {}) == -1


def test_a_response_belongs_to_the_worker_whose_own_port_its_top_via_names() -> None:
    """The worker that forwarded the request wrote its own port in the Via (RFC 3261
    18.2.2): its response goes back to it whatever the Call-ID names; the second Via (the
    caller's) is not looked at."""
    ports = {40001: 0, 41000: 1, 42000: 2}
    owner_by_call = by_call_id(CALL_ID, 3)
    for port, worker in ports.items():
        assert owner(response(port), 3, ports) == worker
    # a top Via of no worker (the shared port): the Call-ID's worker
    assert owner(response(5060), 3, ports) == owner_by_call
    compact = response(41000).replace(b"\r\nVia: SIP/2.0/UDP 127.0.0.1:41000",
                                      b"\r\nv: SIP/2.0/udp [::1]:41000")
    assert owner(compact, 3, ports) == 1


def test_garbage_names_no_worker() -> None:
    assert owner(b"hello there, this is not SIP", 2, {}) == -1
    assert owner(b"SIP/2.0 200 OK\r\n\r\n", 2, {5060: 1}) == -1


# ------------------------------------------------------------------------------ hand-off


class Taken:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def handed(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr))


def pair(count: int = 2) -> tuple[list[HandOff], list[tuple[socket.socket, socket.socket]]]:
    chans = channels(count)
    ends = [HandOff(i, chans[i][1], [None if j == i else chans[j][0] for j in range(count)], {})
            for i in range(count)]
    return ends, chans


def close(chans: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in chans:
        a.close()
        b.close()


def call_id_of(worker: int, count: int) -> str:
    return next(c for i in range(100) if by_call_id(c := f"call-{i}@example.com", count) == worker)


@pytest.mark.parametrize("source", [("192.0.2.7", 5062), ("2001:db8::7", 40000)])
def test_a_datagram_for_another_worker_reaches_it_with_the_source_the_kernel_gave(
        source: tuple[str, int]) -> None:
    (w0, w1), chans = pair()
    try:
        t0, t1 = Taken(), Taken()
        pass0 = w0.listener(3, t0)
        w1.listener(3, t1)
        mine = request(call_id_line=f"Call-ID: {call_id_of(0, 2)}")
        theirs = request(call_id_line=f"Call-ID: {call_id_of(1, 2)}")
        assert pass0(mine, source) is False  # worker 0 handles it itself
        assert pass0(theirs, source) is True
        w1.read()
        assert t1.got == [(theirs, source)] and t0.got == []
        assert (w0.passed, w0.taken, w1.passed, w1.taken) == (1, 0, 0, 1)
    finally:
        close(chans)


def test_a_datagram_for_a_listener_the_worker_lacks_is_not_handed_to_another() -> None:
    """The position names the listener the datagram came to; a worker delivers it to that
    listener's endpoint only."""
    (w0, w1), chans = pair()
    try:
        t1 = Taken()
        pass0 = w0.listener(1, Taken())
        w1.listener(2, t1)  # worker 1 has no listener 1 (never so in practice)
        assert pass0(request(call_id_line=f"Call-ID: {call_id_of(1, 2)}"), ("192.0.2.7", 1))
        w1.read()
        assert t1.got == [] and w1.taken == 0
    finally:
        close(chans)


def test_a_full_hand_off_buffer_drops_the_datagram_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """A worker that does not read (busy, restarting): once its socketpair's buffer is full,
    a datagram for it is dropped (the sender retransmits), counted and logged, and the
    reader never blocks."""
    (w0, w1), chans = pair()
    try:
        chans[1][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        pass0 = w0.listener(0, Taken())
        t1 = Taken()
        w1.listener(0, t1)
        data = request(call_id_line=f"Call-ID: {call_id_of(1, 2)}", body="x" * 1000)
        with caplog.at_level(logging.WARNING, "proxy.workers"):
            for _ in range(200):
                assert pass0(data, ("192.0.2.7", 5062)) is True
        assert w0.dropped > 0 and w0.passed + w0.dropped == 200
        assert any("for worker 1 is dropped" in r.getMessage() for r in caplog.records)
        while len(t1.got) < w0.passed:
            before = len(t1.got)
            w1.read()
            assert len(t1.got) > before
        assert len(t1.got) == w0.passed
    finally:
        close(chans)


async def test_the_hand_off_is_read_by_the_event_loop() -> None:
    (w0, w1), chans = pair()
    try:
        t1 = Taken()
        pass0 = w0.listener(0, Taken())
        w1.listener(0, t1)
        w1.start(asyncio.get_running_loop())
        sent = [request(call_id_line=f"Call-ID: {call_id_of(1, 2)}", method=m)
                for m in ("INVITE", "CANCEL")]
        for d in sent:
            assert pass0(d, ("192.0.2.7", 5062))
        async with asyncio.timeout(5):
            while len(t1.got) < 2:
                await asyncio.sleep(0.01)
        assert [d for d, _ in t1.got] == sent  # in order: a CANCEL stays behind its INVITE
        w1.stop()
    finally:
        close(chans)


def test_the_flood_gate_of_each_worker_counts_its_share() -> None:
    assert gate_share(1000, 2) == 500
    assert gate_share(1000, 4) == 250
    assert gate_share(1, 4) == 1.0


def test_an_endpoint_with_a_hand_off_handles_only_what_it_keeps() -> None:
    """UdpEndpoint: a SIP datagram the hand-off passed on is not delivered here; one it keeps
    is (keep-alives never reach the hand-off)."""
    delivered: list[bytes] = []
    checked: list[bytes] = []
    ep = UdpEndpoint(lambda data, src: delivered.append(data))
    ep.pass_on = lambda data, addr: checked.append(data) or data.startswith(b"CANCEL")
    ep.datagram_received(request("INVITE"), ("192.0.2.7", 5062))
    ep.datagram_received(request("CANCEL"), ("192.0.2.7", 5062))
    ep.datagram_received(b"\r\n\r\n", ("192.0.2.7", 5062))
    assert delivered == [request("INVITE")]
    assert checked == [request("INVITE"), request("CANCEL")]


# ------------------------------------------------------------------------------ the spread


def test_the_kernel_spreads_one_sources_datagrams_among_the_reuseport_sockets() -> None:
    """SO_ATTACH_REUSEPORT_CBPF with ``ld rand; mod #2; ret a``: the datagrams of one source
    (one 4-tuple, which the kernel's hash would give to one socket) reach both sockets."""
    socks = []
    with contextlib.ExitStack() as stack:
        for _ in range(2):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            s.setblocking(False)
            socks.append(s)
        assert spread(socks[0], 2) is True
        sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        counts = [0, 0]
        for i in range(200):
            sender.sendto(b"x%d" % i, socks[0].getsockname())
            for k, s in enumerate(socks):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        s.recv(100)
                        counts[k] += 1
        assert sum(counts) == 200
        assert min(counts) >= 40, counts  # a fair coin: 200 flips, fewer than 40 is 1e-17


def test_a_kernel_that_refuses_the_spread_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # not in a UDP group
        s.close()
        with caplog.at_level(logging.WARNING, "proxy.workers"):
            assert spread(s, 2) is False
    assert "picks a worker by source address" in caplog.text
