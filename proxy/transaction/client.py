"""Client transactions (RFC 3261 17.1, RFC 6026 7.2): one per branch the proxy forwards.

The caller sends the request itself when it creates the transaction; from then on it feeds
responses (``on_response``), timer ticks (``on_timer``) and transport failures in, and carries
out the effects that come back. No parsing: the transaction sees only status codes and bytes.
"""

from __future__ import annotations

from typing import Final

from .base import Machine, Transaction
from .effects import SEND_ACK, Effect, Retransmit
from .states import (
    INVITE_CLIENT_RUNNING,
    INVITE_CLIENT_TABLE,
    INVITE_CLIENT_TIMERS,
    NON_INVITE_CLIENT_RUNNING,
    NON_INVITE_CLIENT_TABLE,
    NON_INVITE_CLIENT_TIMERS,
    Event,
    TransactionState,
    response_event,
)
from .timers import TimerConfig

_PROVISIONAL = Event.RESP_1XX
_INVITE_CLIENT: Final = Machine(INVITE_CLIENT_TABLE, INVITE_CLIENT_TIMERS, INVITE_CLIENT_RUNNING)
_NON_INVITE_CLIENT: Final = Machine(NON_INVITE_CLIENT_TABLE, NON_INVITE_CLIENT_TIMERS,
                                    NON_INVITE_CLIENT_RUNNING)

__all__ = ["ClientTransaction", "InviteClientTransaction", "NonInviteClientTransaction"]


class ClientTransaction(Transaction):
    """Common part of the INVITE and non-INVITE client transactions."""

    __slots__ = ("ack", "request")

    request: bytes | None
    """The request as sent, resent verbatim by Timers A/E; ``None`` once a final response
    arrived: from Completed and Accepted on nothing resends it (RFC 3261 17.1.1.2 and
    17.1.2.2: Timers A and E stop; Timers D, K and M only absorb responses), so a branch
    waiting for them holds no copy of it."""
    ack: bytes | None
    """Client INVITE: the ACK the core built for the non-2xx final (see :meth:`set_ack`)."""

    def __init__(
        self,
        state: TransactionState,
        request: bytes,
        reliable: bool,
        now: float,
        timers: TimerConfig,
        /,
    ) -> None:
        self.request = request
        self.ack = None
        Transaction.__init__(self, state, reliable, now, timers)

    def on_response(self, status: int, now: float) -> tuple[bool, list[Effect]]:
        """A response matching this transaction (RFC 3261 17.1.3) arrived.

        Returns ``(deliver_to_tu, effects)``. Retransmissions and responses the current state
        does not take are absorbed: ``(False, [])``, or ``(False, [Retransmit(ack)])`` for a
        retransmitted non-2xx final to an INVITE."""
        event = response_event(status)
        step = self._machine().table.get((self.state, event))
        if step is None:
            return False, []
        effects = self._apply(step, event, now)
        if event is not _PROVISIONAL:
            # a final: Timers A and E have stopped for good
            self.request = None
        return step.deliver, effects

    def set_ack(self, ack: bytes) -> None:
        """Client INVITE: remember the ACK the core sent after :class:`SendAck`, so that the
        transaction resends it by itself for retransmitted finals (RFC 3261 17.1.1.2)."""
        raise TypeError("only an INVITE client transaction sends an ACK (RFC 3261 17.1.1.3)")

    def cancel_allowed(self) -> bool:
        """RFC 3261 9.1: may a CANCEL be sent for this request now?"""
        return False

    def _retransmission(self) -> bytes | None:
        return self.request


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.1 (Figure 5) with RFC 6026 7.2 (Accepted, Timer M).

    * Calling: Timer A = T1 (unreliable only, doubling without cap), Timer B = 64*T1.
    * 1xx -> Proceeding (A and B stop); 2xx -> Accepted, Timer M = 64*T1, every further 2xx
      is delivered too; 300-699 -> Completed with ``[SendAck()]``, Timer D = ``timer_d``
      (unreliable) / 0 (reliable); a retransmitted final there -> ``[Retransmit(ack)]``.
    * Timer B -> ``[Timeout("B"), Terminated()]``; Timers D and M -> ``[Terminated()]``.
    """

    __slots__ = ()
    is_invite = True

    def _machine(self) -> Machine:
        return _INVITE_CLIENT

    def __init__(self, request: bytes, *, reliable: bool, now: float, timers: TimerConfig) -> None:
        ClientTransaction.__init__(self, TransactionState.CALLING, request, reliable, now, timers)

    def set_ack(self, ack: bytes) -> None:
        self.ack = ack

    def cancel_allowed(self) -> bool:
        """RFC 3261 9.1: only once a provisional response arrived and no final did, i.e. in
        Proceeding. (In Calling the CANCEL must wait for a provisional response.)"""
        return self.state is TransactionState.PROCEEDING

    def _ack_effect(self) -> Effect:
        ack = self.ack
        # The core has not handed the ACK back yet: ask it to build one again.
        return Retransmit(ack) if ack is not None else SEND_ACK


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.2 (Figure 6).

    * Trying: Timer E = T1 (unreliable only; then min(2E, T2)), Timer F = 64*T1.
    * 1xx -> Proceeding (E continues, reset to T2 each time it fires there; F continues).
    * 200-699 -> Completed, Timer K = T4 (unreliable) / 0 (reliable); retransmitted responses
      are absorbed.
    * Timer F -> ``[Timeout("F"), Terminated()]``; Timer K -> ``[Terminated()]``.
    """

    __slots__ = ()
    is_invite = False

    def _machine(self) -> Machine:
        return _NON_INVITE_CLIENT

    def __init__(self, request: bytes, *, reliable: bool, now: float, timers: TimerConfig) -> None:
        ClientTransaction.__init__(self, TransactionState.TRYING, request, reliable, now, timers)
