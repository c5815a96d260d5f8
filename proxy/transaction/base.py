"""The engine shared by the four transaction machines: table lookup, actions, timers.

A transaction holds at most two timers (see :mod:`proxy.transaction.states`): a retransmission
timer (A/E/G) and an ending timer (B/D/F/H/I/J/K/L/M). ``deadline`` is always the earlier of the
two, kept in a plain slot so a :class:`~proxy.transaction.timers.TimerQueue` reads it cheaply.
Which timer each one is follows from the state (:attr:`Machine.running`), so a transaction
keeps only when each fires: every one of them holds a call's slots while it waits out its last timer.
"""

from __future__ import annotations

from typing import ClassVar, Final

from .effects import SEND_ACK, TERMINATED, TIMEOUT_B, TIMEOUT_F, TIMEOUT_H, Effect, Retransmit
from .states import Action, EntryTimers, Event, RunningTimers, Step, Table, TransactionState
from .timers import TimerConfig

__all__ = ["Machine", "Transaction"]

_TIMEOUTS: Final[dict[Event, Effect]] = {
    Event.TIMER_B: TIMEOUT_B,
    Event.TIMER_F: TIMEOUT_F,
    Event.TIMER_H: TIMEOUT_H,
}
_TERMINATED_STATE: Final = TransactionState.TERMINATED
# The letter of each timer event ("B" for TIMER_B), read without Enum.value's descriptor.
_LETTER: Final[dict[Event, str]] = {e: e.value for e in Event if e.name.startswith("TIMER_")}


class Machine:
    """The tables of one of the four transaction machines (:mod:`.states`) as one native
    object, which a transaction reaches through :meth:`Transaction._machine`: a method the
    compiled build calls natively, where a class attribute is looked up by name."""

    __slots__ = ("running", "table", "timers")

    def __init__(self, table: Table, timers: EntryTimers, running: RunningTimers) -> None:
        self.table = table  # (state, event) -> step
        self.timers = timers  # the timers each state starts on entry
        self.running = running  # the (retransmission, ending) timers running in each state


class Transaction:
    """Base of client and server transactions (RFC 3261 17). Not instantiated directly."""

    __slots__ = (
        "_end_at",
        "_rtx_at",
        "_rtx_interval",
        "deadline",
        "reliable",
        "state",
        "timers",
    )

    is_invite: ClassVar[bool]

    state: TransactionState
    reliable: bool
    """True on TCP/TLS/SCTP/WS: no retransmission timers, wait timers of 0 (RFC 3261 17)."""
    timers: TimerConfig
    deadline: float | None
    """The earliest pending timer, ``None`` if none. Call :meth:`on_timer` once ``now`` reaches
    it. A zero-length timer (e.g. Timer K on TCP) gives ``deadline == now``: fire it at the next
    tick."""

    def __init__(
        self, state: TransactionState, reliable: bool, now: float, timers: TimerConfig, /
    ) -> None:
        self.state = state
        self.reliable = reliable
        self.timers = timers
        self._rtx_at: float | None = None
        self._end_at: float | None = None
        self._rtx_interval = 0.0
        self.deadline = None
        self._start_timers(state, now)

    def _machine(self) -> Machine:
        """The tables of this kind of transaction."""
        raise NotImplementedError

    # -- entry points -------------------------------------------------------------------------

    def on_timer(self, now: float) -> list[Effect]:
        """Fire what is due at ``now``: a no-op (``[]``) when called early or twice.

        If the ending timer is due it alone fires (the transaction ends; a retransmission due at
        the same moment would be pointless). A late retransmission timer fires once and is reset
        from ``now``, as the RFC resets it "when it fires": no burst after a stall."""
        end_at = self._end_at
        if end_at is not None and end_at <= now:
            end = self._machine().running[self.state][1]
            assert end is not None  # an ending time is set only while its timer runs
            return self._handle(end, now)
        rtx_at = self._rtx_at
        if rtx_at is not None and rtx_at <= now:
            rtx = self._machine().running[self.state][0]
            assert rtx is not None
            return self._handle(rtx, now)
        return []

    def on_transport_error(self, now: float) -> list[Effect]:
        """RFC 3261 17.1.4 / 17.2.4: the transport failed to send -> Terminated,
        ``[Terminated()]`` (a client's TU then acts as on a 503). ``[]`` if already over."""
        return self._handle(Event.TRANSPORT_ERROR, now)

    # -- engine ---------------------------------------------------------------------------------

    def _handle(self, event: Event, now: float) -> list[Effect]:
        step = self._machine().table.get((self.state, event))
        if step is None:
            return []
        return self._apply(step, event, now)

    def _apply(self, step: Step, event: Event, now: float) -> list[Effect]:
        next_state, _, action = step
        effects: list[Effect] = []
        if action is not Action.NONE:
            self._act(action, event, now, effects)
        if next_state is not self.state:
            self.state = next_state
            if next_state is _TERMINATED_STATE:
                self._rtx_at = self._end_at = self.deadline = None
                effects.append(TERMINATED)
            else:
                self._start_timers(next_state, now)
        return effects

    def _act(self, action: Action, event: Event, now: float, effects: list[Effect]) -> None:
        if action is Action.TIMEOUT:
            effects.append(_TIMEOUTS[event])
        elif action is Action.SEND_ACK:
            effects.append(SEND_ACK)
        elif action is Action.RESEND_ACK:
            effects.append(self._ack_effect())
        elif action is Action.REPLY_AGAIN:
            retransmit = self._retransmit()
            if retransmit is not None:
                effects.append(retransmit)
        else:  # a retransmission timer fired
            retransmit = self._retransmit()
            if retransmit is not None:
                effects.append(retransmit)
            interval = self._rtx_interval
            if action is Action.RETRANSMIT_DOUBLING:
                interval *= 2
            elif action is Action.RETRANSMIT_BACKOFF:
                interval = min(2 * interval, self.timers.t2)
            else:  # RETRANSMIT_T2
                interval = self.timers.t2
            self._rtx_interval = interval
            self._rtx_at = now + interval
            self._update_deadline()

    def _start_timers(self, state: TransactionState, now: float) -> None:
        """Entry actions: start the timers :attr:`Machine.timers` lists for ``state`` (or keep
        the running ones when the state is not listed)."""
        entry = self._machine().timers.get(state)
        if entry is None:
            return
        rtx, end = entry
        timers = self.timers
        reliable = self.reliable
        if rtx is None or reliable:
            self._rtx_at = None
        else:
            self._rtx_interval = interval = timers.t1
            self._rtx_at = now + interval
        if end is None:
            self._end_at = None
        else:
            value = timers.by_letter[1 if reliable else 0][_LETTER[end]]
            self._end_at = now + value if value is not None else None
        self._update_deadline()

    def _update_deadline(self) -> None:
        rtx_at = self._rtx_at
        end_at = self._end_at
        if rtx_at is None or (end_at is not None and end_at <= rtx_at):
            self.deadline = end_at
        else:
            self.deadline = rtx_at

    # -- hooks ----------------------------------------------------------------------------------

    def _retransmit(self) -> Retransmit | None:
        """The ``Retransmit`` effect for what this transaction resends (request for a client,
        last response for a server), made when a retransmission is due: not kept, since a
        retransmission is the exception and every transaction would hold its slot."""
        data = self._retransmission()
        if data is None:
            return None
        return Retransmit(data)

    def _retransmission(self) -> bytes | None:
        """What a retransmission resends: the request (client) or last response (server)."""
        raise NotImplementedError

    def _ack_effect(self) -> Effect:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.state.value}"
            f" {'reliable' if self.reliable else 'unreliable'} deadline={self.deadline}>"
        )
