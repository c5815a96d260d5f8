"""New requests on UDP are handled after the messages of calls in progress read in the same
loop turn (proxy.transport.udp_order): a 200 OK does not wait behind new INVITEs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from proxy.transport.base import Source
from proxy.transport.udp import UdpEndpoint, open_udp
from proxy.transport.udp_order import BATCH, MAX_HELD, MAX_HELD_BYTES, MOST, NewRequests


class FakeLoop:
    """call_soon and time() only: the callbacks run when the test says."""

    def __init__(self) -> None:
        self.now = 100.0
        self.soon: list[Callable[[], None]] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, cb: Callable[[], None]) -> None:
        self.soon.append(cb)

    def turn(self) -> None:
        todo, self.soon = self.soon, []
        for cb in todo:
            cb()


SRC = Source("udp", "127.0.0.1", 5062)


def held_with(loop: FakeLoop) -> tuple[NewRequests, list[bytes]]:
    got: list[bytes] = []
    return NewRequests(loop, lambda data, src, waited: got.append(data)), got  # type: ignore[arg-type]


def test_held_requests_are_handled_a_batch_a_turn_oldest_first() -> None:
    """While a backlog builds (an overload episode, or a wait over the meter's target):
    BATCH a turn, so that it waits here, not in the socket's queue in front of the calls in
    progress."""
    loop = FakeLoop()
    held, got = held_with(loop)
    held.want(True, backlog=True)
    n = 2 * BATCH + 1
    for i in range(n):
        held.hold(b"INVITE %d" % i, SRC)
    assert got == [] and len(loop.soon) == 1  # one run scheduled, whatever the count
    loop.turn()
    assert got == [b"INVITE %d" % i for i in range(BATCH)]
    assert len(loop.soon) == 1  # the rest on the next turns, after the sockets are read
    loop.turn()
    assert got == [b"INVITE %d" % i for i in range(2 * BATCH)]
    loop.turn()
    assert got == [b"INVITE %d" % i for i in range(n)]
    assert loop.soon == []


def test_with_no_backlog_the_held_requests_of_a_turn_are_handled_in_it() -> None:
    """With no backlog building the order only puts the new requests after the calls in progress
    of the same turn: a limit under a turn's read would throttle a proxy that carries its
    load (a turn at full load reads 32 datagrams, more than BATCH of them new INVITEs); MOST,
    twice that, only bounds a turn."""
    loop = FakeLoop()
    held, got = held_with(loop)
    held.want(True)
    n = 4 * BATCH
    for i in range(n):
        held.hold(b"INVITE %d" % i, SRC)
    loop.turn()
    assert got == [b"INVITE %d" % i for i in range(n)] and loop.soon == []
    held.want(True, backlog=True)  # a backlog builds: BATCH a turn
    for i in range(n):
        held.hold(b"REGISTER %d" % i, SRC)
    loop.turn()
    assert len(got) == n + BATCH
    held.want(True, backlog=False)  # it is gone: the rest in the next turn
    loop.turn()
    assert len(got) == 2 * n and loop.soon == []
    for i in range(MOST + 1):  # more than two turns' reads: MOST now, the rest next turn
        held.hold(b"INVITE %d" % i, SRC)
    loop.turn()
    assert len(got) == 2 * n + MOST and len(loop.soon) == 1
    loop.turn()
    assert len(got) == 2 * n + MOST + 1


def test_the_age_is_that_of_the_oldest_held() -> None:
    loop = FakeLoop()
    held, _ = held_with(loop)
    assert held.age() == 0.0
    held.hold(b"INVITE a", SRC)
    loop.now += 0.030
    held.hold(b"INVITE b", SRC)
    loop.now += 0.010
    assert abs(held.age() - 0.040) < 1e-9
    loop.turn()
    assert held.age() == 0.0


def test_each_held_request_is_handed_with_its_wait() -> None:
    """The runtime refuses, during an overload episode, a new request that waited past the
    bound (Runtime.deliver_held): each is handed with the time since it was read."""
    loop = FakeLoop()
    waits: list[float] = []
    held = NewRequests(loop, lambda data, src, waited: waits.append(waited))  # type: ignore[arg-type]
    held.hold(b"INVITE a", SRC)
    loop.now += 0.060
    held.hold(b"INVITE b", SRC)
    loop.now += 0.005
    loop.turn()
    assert [round(w, 3) for w in waits] == [0.065, 0.005]


def test_past_the_bound_the_oldest_is_handled_at_once_in_order() -> None:
    loop = FakeLoop()
    held, got = held_with(loop)
    for i in range(MAX_HELD + 3):
        held.hold(b"R%d" % i, SRC)
    assert got == [b"R0", b"R1", b"R2"]  # never more than MAX_HELD held
    assert len(held.held) == MAX_HELD
    while loop.soon:
        loop.turn()
    assert got == [b"R%d" % i for i in range(MAX_HELD + 3)]  # arrival order kept


def test_past_the_byte_bound_the_oldest_is_handled_at_once() -> None:
    """A flood of large datagrams holds no more than the socket's own buffer."""
    loop = FakeLoop()
    held, got = held_with(loop)
    big = 60_000
    n = MAX_HELD_BYTES // big
    for i in range(n + 2):
        held.hold(b"INVITE %d " % i + b"x" * big, SRC)
    assert held.size <= MAX_HELD_BYTES
    assert held.size == sum(len(d) for d, _, _ in held.held)
    assert [g.split(b" ")[1] for g in got] == [b"0", b"1", b"2"][:len(got)] and got
    while loop.soon:
        loop.turn()
    assert held.size == 0 and len(got) == n + 2


def msg(first: str, call: str) -> bytes:
    return (f"{first}\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{call}\r\n"
            f"Call-ID: {call}\r\nCSeq: 1 X\r\nContent-Length: 0\r\n\r\n").encode()


async def burst_through(order: bool, active: bool = True) -> list[bytes]:
    """Send a burst to a bound endpoint before its loop reads it; what it delivered, in order."""
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    done = asyncio.Event()
    burst = [
        msg("INVITE sip:a@x SIP/2.0", "a"),
        msg("INVITE sip:b@x SIP/2.0", "b"),
        msg("SIP/2.0 200 OK", "c"),
        msg("BYE sip:d@x SIP/2.0", "d"),
        msg("CANCEL sip:a@x SIP/2.0", "a"),  # stays behind the INVITE it cancels
        msg("REGISTER sip:x SIP/2.0", "e"),
        msg("ACK sip:f@x SIP/2.0", "f"),
    ]

    def deliver(data: bytes, src: Source, waited: float = 0.0) -> None:
        got.append(data)
        if len(got) == len(burst):
            done.set()

    ep: Any = await open_udp("127.0.0.1", 0, deliver)
    assert isinstance(ep, UdpEndpoint) and ep.transport is not None
    if order:
        ep.order = NewRequests(loop, deliver, active=active)
    port = ep.transport.get_extra_info("sockname")[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for m in burst:  # all queued in the kernel before the loop runs again
            s.sendto(m, ("127.0.0.1", port))
        await asyncio.wait_for(done.wait(), 5)
    ep.transport.close()
    return [m.split(b"\r\n", 1)[0] + b" " + m.split(b"Call-ID: ")[1].split(b"\r\n")[0]
            for m in got]


def run_uvloop(order: bool, active: bool = True) -> list[bytes]:
    """On uvloop, as the proxy runs: it reads up to 32 datagrams of a socket a loop turn (the
    asyncio loop reads one, so nothing could be handled out of order there)."""
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(burst_through(order, active))
    finally:
        loop.close()


def test_a_burst_is_handled_calls_in_progress_first() -> None:
    got = run_uvloop(order=True)
    assert got == [
        b"SIP/2.0 200 OK c", b"BYE sip:d@x SIP/2.0 d", b"ACK sip:f@x SIP/2.0 f",
        b"INVITE sip:a@x SIP/2.0 a", b"INVITE sip:b@x SIP/2.0 b",
        b"CANCEL sip:a@x SIP/2.0 a", b"REGISTER sip:x SIP/2.0 e"]


def test_without_overload_control_the_arrival_order_is_kept() -> None:
    got = run_uvloop(order=False)
    assert [g.split(b" ")[-1] for g in got] == [b"a", b"b", b"c", b"d", b"a", b"e", b"f"]


def test_with_the_order_off_for_want_of_a_queue_the_arrival_order_is_kept() -> None:
    """Overload control on, but no queue measured (``NewRequests.active`` off, the default
    until a tick turns it on): each request is handled as it is read."""
    got = run_uvloop(order=True, active=False)
    assert [g.split(b" ")[-1] for g in got] == [b"a", b"b", b"c", b"d", b"a", b"e", b"f"]


def test_the_order_turned_off_stays_on_until_the_held_requests_are_handled() -> None:
    """A CANCEL read after the order is turned off must not pass the INVITE still held
    (RFC 3261 9.2: a CANCEL for no transaction gets 481): the listener holds new requests
    until the last held one is handled, then hands them on at once."""
    loop = FakeLoop()
    held, got = held_with(loop)
    assert not held.active  # off until a tick finds a queue
    held.want(True, backlog=True)
    assert held.active
    for i in range(BATCH + 1):
        held.hold(b"INVITE %d" % i, SRC)
    loop.turn()
    assert held.active and len(got) == BATCH  # one INVITE still held
    held.want(False)
    assert held.active  # the queue is gone, but an INVITE is still held
    held.hold(b"CANCEL %d" % BATCH, SRC)  # the listener still holds: behind its INVITE
    loop.turn()
    assert got[-2:] == [b"INVITE %d" % BATCH, b"CANCEL %d" % BATCH]
    assert not held.active  # nothing held, nothing wanted
    held.want(True)
    held.want(False)
    assert not held.active  # nothing was held meanwhile: off at once
