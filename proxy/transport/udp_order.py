"""The calls in progress before the new ones, on UDP (overload control, README "Overload").

Over UDP a message waits mostly in the socket's receive queue, in the order it arrived: a
200 OK for a call in progress waits behind every new INVITE that arrived before it. Under
overload that is where the time of an admitted call went: in the benchmark at twice the
proxy's clean rate (1,600 calls/s clean, 2026-12-07, compiled build), the INVITE's wait in
the proxy and its 200's wait each had a p99 near 80 ms, and the admitted calls' INVITE to
200 a p99 of 164 ms; the answering side (sipp) took 3 ms.

Reading a datagram costs a small part of handling it. So a listener's new requests
(INVITE, REGISTER, and CANCEL, which must stay behind the INVITE it cancels) are read at
once but *handled* after the other messages the same loop turn read, in the order they
arrived (while a backlog builds, at most :data:`BATCH` a turn: :meth:`NewRequests.want`);
responses, ACKs, BYEs and every other request within a call are handled as they are read. The socket's queue then stays short, and what waits is
the new requests, in :class:`NewRequests`: overload control measures their wait (the
oldest one's, :meth:`NewRequests.age`) beside the socket queue's, and refuses its share of
them with 503 (RFC 3261 21.5.4, Retry-After) when they are handled, and during an episode
every one that waited past the bound (``deliver`` is told each one's wait). A re-INVITE is held
like a new INVITE (telling them apart needs the To tag: a parse); it is never refused
(the core admits requests within a dialog).

The order is on only while there is a queue to pass (:attr:`NewRequests.active`): the load
meter turns it on at a tick that measured a wait over a tenth of the bound, or during an
overload episode, and off otherwise (``LagTicker``, :mod:`proxy.runtime.overload`); it stays
on until the requests held are handled, so a CANCEL never passes the INVITE it cancels. With
no queue, holding a request would only make it wait for the others of its turn: at 1,200
calls/s, half the proxy's clean rate, the order always on cost its INVITEs about 1 ms of p99
(5.6 and 5.3 ms with it, 4.6 and 4.4 ms without, 2026-12-07) and some 20k instructions each.

At most :data:`MAX_HELD` are held, of :data:`MAX_HELD_BYTES` in all: past either the oldest
is handled at once (the order stays that of arrival; memory stays bounded, at the size of the
socket's own receive buffer, whatever a flood sends). On only with overload
control (``limits.overload_lag_ms``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from proxy.transport.base import Source

#: the requests that start something new, held for after the messages of calls in progress
NEW = (b"INVITE ", b"REGISTER ", b"CANCEL ")
#: held new requests handled per loop turn at most while a backlog builds (an overload
#: episode, or a wait over the meter's target; then the loop reads its sockets again; else
#: :data:`MOST`: a limit under what a turn reads was a throttle of its own, below).
#: Fewer than a read brings in under overload (libuv reads up to 32 datagrams a turn; at
#: twice the clean rate about a quarter are new INVITEs), so that the backlog builds here,
#: where the messages of calls in progress pass it, not in the socket's queue, where they
#: wait behind it: at 16 a turn the socket's queue held it, and the calls admitted as an
#: overload began waited there twice (INVITE and 200: 300 calls over 100 ms in the
#: benchmark's 2x step); at 4, none did (2026-12-07). With no backlog the limit throttled
#: a proxy that carried its load: at full load a turn reads 32 datagrams, a sixth of them new
#: INVITEs, more than 4; the rest waited, an episode started and its 503s were retransmitted
#: (3,200 calls/s, clean with overload control off at a p99 of 81 ms, had 10,126
#: retransmissions and a p99 of 3.5 s with it on, 2026-12-07)
BATCH = 4
#: held new requests handled per loop turn with no backlog: twice what a turn reads (libuv:
#: 32 datagrams), so no throttle, and still a bounded turn (one message never blocks the loop)
MOST = 64
#: new requests held at most (past it the oldest is handled at once)
MAX_HELD = 4096
#: bytes of new requests held at most (the size of the socket's receive buffer, udp.py)
MAX_HELD_BYTES = 4 * 1024 * 1024


class NewRequests:
    """The new requests read from one UDP socket and not handled yet (oldest first)."""

    __slots__ = ("active", "batch", "deliver", "held", "loop", "scheduled", "size", "wanted")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[bytes, Source, float], None], active: bool = False) -> None:
        """``deliver(data, src, waited)``: handle a held request that waited ``waited``
        seconds since it was read. ``active``: the order is on from the start (else from
        the first :meth:`want`)."""
        self.loop = loop
        self.deliver = deliver
        self.held: deque[tuple[bytes, Source, float]] = deque()
        self.size = 0  # bytes held
        self.scheduled = False
        #: whether the listener holds its new requests now (read by ``UdpEndpoint``): while
        #: the order is wanted, and after that until the last request held is handled
        self.active = active
        self.wanted = active
        self.batch = MOST  # held requests handled a turn (BATCH while a backlog builds)

    def want(self, on: bool, backlog: bool = False) -> None:
        """Turn the order on (a queue to pass) or off: off once nothing is held (the
        requests held are still handled first, in the order they arrived). ``backlog``: a
        backlog builds (an overload episode, or a wait over the load meter's target):
        :data:`BATCH` held requests a turn, so that it builds here, not in the socket's
        queue in front of the calls in progress; else :data:`MOST`."""
        self.wanted = on
        self.active = on or bool(self.held)
        self.batch = BATCH if backlog else MOST

    def hold(self, data: bytes, src: Source) -> None:
        """Hold a new request for after the other messages of this loop turn."""
        held = self.held
        self.size += len(data)
        while held and (len(held) >= MAX_HELD or self.size > MAX_HELD_BYTES):
            old, old_src, at = held.popleft()  # the oldest goes first, now: arrival order kept
            self.size -= len(old)
            self.deliver(old, old_src, self.loop.time() - at)
        held.append((data, src, self.loop.time()))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        """Handle the held requests, up to :data:`BATCH` while a backlog builds (the rest on
        the next loop turn, after the sockets were read again)."""
        self.scheduled = False
        held = self.held
        deliver = self.deliver
        now = self.loop.time()
        for _ in range(min(self.batch, len(held))):
            data, src, at = held.popleft()
            self.size -= len(data)
            deliver(data, src, now - at)
        if held:
            if not self.scheduled:
                self.scheduled = True
                self.loop.call_soon(self.run)
        elif not self.wanted:
            self.active = False  # the order was turned off: now nothing is held

    def age(self) -> float:
        """Seconds the oldest held request has waited (0 when none)."""
        held = self.held
        return self.loop.time() - held[0][2] if held else 0.0


__all__ = ["BATCH", "MOST", "MAX_HELD", "MAX_HELD_BYTES", "NEW", "NewRequests"]
