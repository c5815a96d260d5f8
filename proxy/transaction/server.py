"""Server transactions (RFC 3261 17.2, RFC 6026 7.1): one per request the proxy receives.

The core transmits every response itself and reports it through ``send_response`` (the effects
never contain a first transmission); the transaction keeps the last one for retransmissions.
The 100 (Trying) of RFC 3261 17.2.1 is the core's to build (it owns the bytes); it reports it
like any other provisional response.
"""

from __future__ import annotations

from typing import Final

from .base import Machine, Transaction
from .effects import Effect
from .states import (
    INVITE_SERVER_RUNNING,
    INVITE_SERVER_TABLE,
    INVITE_SERVER_TIMERS,
    NON_INVITE_SERVER_RUNNING,
    NON_INVITE_SERVER_TABLE,
    NON_INVITE_SERVER_TIMERS,
    Event,
    TransactionState,
    response_event,
)
from .timers import TimerConfig

_ACCEPTED = TransactionState.ACCEPTED
_INVITE_SERVER: Final = Machine(INVITE_SERVER_TABLE, INVITE_SERVER_TIMERS, INVITE_SERVER_RUNNING)
_NON_INVITE_SERVER: Final = Machine(NON_INVITE_SERVER_TABLE, NON_INVITE_SERVER_TIMERS,
                                    NON_INVITE_SERVER_RUNNING)
_CONFIRMED = TransactionState.CONFIRMED

__all__ = ["InviteServerTransaction", "NonInviteServerTransaction", "ServerTransaction"]


class ServerTransaction(Transaction):
    """Common part of the INVITE and non-INVITE server transactions."""

    __slots__ = ("last_response",)

    last_response: bytes | None
    """The last response passed to :meth:`send_response` that the state accepted, while the
    transaction may still resend it: ``None`` from Accepted and Confirmed on (RFC 6026 7.1: a
    retransmitted INVITE is absorbed there and the TU sends every further 2xx; RFC 3261
    17.2.1: Confirmed only absorbs ACKs), so that a call waiting for Timers L and I holds
    no copy of its final response."""

    def __init__(
        self, state: TransactionState, reliable: bool, now: float, timers: TimerConfig, /
    ) -> None:
        self.last_response = None
        Transaction.__init__(self, state, reliable, now, timers)

    def send_response(self, status: int, data: bytes, now: float) -> list[Effect]:
        """The core sent (or is sending) response ``data`` with code ``status`` through this
        transaction. The transaction records it for retransmission and moves on.

        A response the state does not take (a provisional or a second non-2xx final after a
        final, anything once Terminated) is not recorded and changes nothing (RFC 3261 17.2.2:
        "discarded"); the core should not send it (RFC 3261 16.7 step 5). A 2xx after a 2xx
        (RFC 6026 7.1) is recorded and keeps the transaction in Accepted."""
        effects = self.respond(status, data, now)
        return [] if effects is None else effects

    def respond(self, status: int, data: bytes, now: float) -> list[Effect] | None:
        """:meth:`send_response`, with None for a response the state does not take (what
        :meth:`accepts` tells): one table lookup where ``accepts`` then ``send_response``
        take two."""
        event = response_event(status)
        step = self._machine().table.get((self.state, event))
        if step is None:
            return None
        effects = self._apply(step, event, now)
        if self.state is _ACCEPTED:
            # Accepted (RFC 6026 7.1) never resends: the TU passes each 2xx again itself
            self.last_response = None
        else:
            self.last_response = data
        return effects

    def accepts(self, status: int) -> bool:
        """Whether the state takes a response with code ``status`` (what :meth:`send_response`
        would record): the core sends a response only if so, as h11's state machine hands out
        bytes only for an event it accepted. A second non-2xx final after a final, a
        provisional after a final, anything once Terminated: refused (RFC 3261 17.2.2)."""
        return (self.state, response_event(status)) in self._machine().table

    def on_retransmission(self, now: float) -> list[Effect]:
        """A retransmission of the request arrived (RFC 3261 17.2.3 matched it here):
        ``[Retransmit(last_response)]`` where the state answers it, else ``[]`` (absorbed)."""
        return self._handle(Event.REQUEST, now)

    def on_ack(self, now: float) -> list[Effect]:
        """An ACK matching this transaction (RFC 3261 17.2.3) arrived: always ``[]``.

        INVITE server: Completed -> Confirmed (Timer I); in Confirmed further ACKs are absorbed.
        The ACK to a non-2xx is hop-by-hop: the proxy core never forwards it. In Accepted (and
        Proceeding) the transaction ignores it: the ACK to a 2xx belongs to the TU (RFC 6026
        7.1), and normally carries a new branch anyway, so the core forwards it end to end.
        Non-INVITE server: an ACK never matches one (17.2.3); ignored."""
        effects = self._handle(Event.ACK, now)
        if self.state is _CONFIRMED:
            # Confirmed resends nothing (17.2.1): only Timer I runs
            self.last_response = None
        return effects

    def _retransmission(self) -> bytes | None:
        return self.last_response


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.1 (Figure 7) with RFC 6026 7.1 (Accepted, Timer L).

    * Proceeding: 1xx stays; a retransmitted INVITE gets the last provisional again.
    * 2xx -> Accepted, Timer L = 64*T1 (the UAS retransmits 2xx, the proxy forwards each one:
      ``send_response`` again; retransmitted INVITEs are absorbed).
    * 300-699 -> Completed: Timer G = T1 (unreliable only; min(2G, T2)), Timer H = 64*T1;
      ``on_ack`` -> Confirmed, Timer I = T4 (unreliable) / 0 (reliable), later ACKs absorbed.
    * Timer G -> ``[Retransmit(last_response)]``; Timer H -> ``[Timeout("H"), Terminated()]``;
      Timers I and L -> ``[Terminated()]``.
    """

    __slots__ = ()
    is_invite = True

    def _machine(self) -> Machine:
        return _INVITE_SERVER

    def __init__(self, *, reliable: bool, now: float, timers: TimerConfig) -> None:
        ServerTransaction.__init__(self, TransactionState.PROCEEDING, reliable, now, timers)


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.2 (Figure 8).

    * Trying: retransmitted requests are discarded (nothing to answer with yet).
    * 1xx -> Proceeding (retransmissions get the last provisional again).
    * 200-699 -> Completed, Timer J = 64*T1 (unreliable) / 0 (reliable); retransmissions get
      the final again; further finals from the TU are discarded. Timer J -> ``[Terminated()]``.
    """

    __slots__ = ()
    is_invite = False

    def _machine(self) -> Machine:
        return _NON_INVITE_SERVER

    def __init__(self, *, reliable: bool, now: float, timers: TimerConfig) -> None:
        ServerTransaction.__init__(self, TransactionState.TRYING, reliable, now, timers)
