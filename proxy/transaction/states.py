"""The four transaction state machines of RFC 3261 17 (with RFC 6026) as transition tables.

Each machine is two tables, read like the RFC figures:

* ``*_TABLE``: ``(state, event) -> Step(next_state, deliver, action)``. A missing key means the
  event is ignored in that state: nothing changes and no effect is produced (a response for a
  client, "absorbed"; a response the TU may not send any more for a server: not recorded).
* ``*_TIMERS``: the timers started on *entering* a state, as ``(retransmit timer, ending
  timer)``; ``None`` stops that slot. A state absent from the mapping keeps the timers that are
  running (the non-INVITE client keeps Timers E and F from Trying into Proceeding). Entering
  Terminated always stops every timer.
* ``*_RUNNING``: which timers run in each live state, derived from the two above (a state
  absent from ``*_TIMERS`` runs those of the states that lead to it): a transaction reads
  there which timer is due instead of keeping the timer's name.

A transaction runs at most two timers at once: a retransmission timer (A, E, G; unreliable
transports only) and an ending timer (B, D, F, H, I, J, K, L, M) that always leads to
Terminated. Self-loops (``next_state == state``) do not re-enter the state, so they do not
restart its timers.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple, TypeAlias

__all__ = [
    "INVITE_CLIENT_RUNNING",
    "INVITE_CLIENT_TABLE",
    "INVITE_CLIENT_TIMERS",
    "INVITE_SERVER_RUNNING",
    "INVITE_SERVER_TABLE",
    "INVITE_SERVER_TIMERS",
    "NON_INVITE_CLIENT_RUNNING",
    "NON_INVITE_CLIENT_TABLE",
    "NON_INVITE_CLIENT_TIMERS",
    "NON_INVITE_SERVER_RUNNING",
    "NON_INVITE_SERVER_TABLE",
    "NON_INVITE_SERVER_TIMERS",
    "Action",
    "Event",
    "RunningTimers",
    "Step",
    "TransactionState",
    "response_event",
]


class TransactionState(enum.Enum):
    """States of RFC 3261 17.1 / 17.2 and RFC 6026 (Accepted)."""

    # Members are singletons: identity hashing (C level) instead of Enum's Python-level
    # hash(name) makes the (state, event) table lookups on the hot path cheaper.
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Event(enum.Enum):
    """Inputs of the machines. For a client the response events are responses received from
    the network; for a server they are responses the TU passes down to be sent. Timer events
    carry the RFC letter as their value."""

    __hash__ = object.__hash__  # see TransactionState

    RESP_1XX = "1xx"
    RESP_2XX = "2xx"
    RESP_300_699 = "300-699"
    REQUEST = "request retransmission"
    ACK = "ACK"
    TRANSPORT_ERROR = "transport error"
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_D = "D"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_J = "J"
    TIMER_K = "K"
    TIMER_L = "L"
    TIMER_M = "M"


def response_event(status: int) -> Event:
    """Class of a status code (RFC 3261 7.2). The parser guarantees three digits; anything
    from 300 up is a non-2xx final (8.1.3.2: unknown codes act as x00 of their class)."""
    if status < 200:
        return Event.RESP_1XX
    if status < 300:
        return Event.RESP_2XX
    return Event.RESP_300_699


class Action(enum.Enum):
    """What happens on a transition, besides the state change and the entry timers."""

    NONE = enum.auto()
    SEND_ACK = enum.auto()
    """Client INVITE, first non-2xx final: the core builds the ACK (17.1.1.3)."""
    RESEND_ACK = enum.auto()
    """Client INVITE, retransmitted non-2xx final: resend the ACK (17.1.1.2)."""
    RETRANSMIT_DOUBLING = enum.auto()
    """Timer A: resend the request, interval doubles with no cap (17.1.1.2)."""
    RETRANSMIT_BACKOFF = enum.auto()
    """Timers E (Trying) and G: resend, interval = min(2 * interval, T2) (17.1.2.2, 17.2.1)."""
    RETRANSMIT_T2 = enum.auto()
    """Timer E in Proceeding: resend, interval = T2 (17.1.2.2)."""
    REPLY_AGAIN = enum.auto()
    """Server: a request retransmission arrived, resend the last response if any."""
    TIMEOUT = enum.auto()
    """Timers B, F, H: report the timeout, then Terminated."""


class Step(NamedTuple):
    next_state: TransactionState
    deliver: bool
    """Client only: the response goes up to the TU (the proxy core)."""
    action: Action


Table: TypeAlias = dict[tuple[TransactionState, Event], Step]
EntryTimers: TypeAlias = dict[TransactionState, tuple[Event | None, Event | None]]
RunningTimers: TypeAlias = dict[TransactionState, tuple[Event | None, Event | None]]

_S: Final = TransactionState
_E: Final = Event
_A: Final = Action


def _step(next_state: TransactionState, action: Action = _A.NONE) -> Step:
    """A transition that delivers nothing to the TU."""
    return Step(next_state, False, action)


def _up(next_state: TransactionState, action: Action = _A.NONE) -> Step:
    """A response that is delivered to the TU."""
    return Step(next_state, True, action)


def _with_transport_errors(rows: dict[tuple[TransactionState, Event], Step]) -> Table:
    """RFC 3261 17.1.4 / 17.2.4: a transport failure in any live state -> Terminated."""
    table = dict(rows)
    for state in {state for state, _ in rows}:
        table[(state, _E.TRANSPORT_ERROR)] = _step(_S.TERMINATED)
    return table


# RFC 3261 17.1.1.2 (Figure 5) as updated by RFC 6026 7.2 (Accepted, Timer M).
INVITE_CLIENT_TABLE: Final[Table] = _with_transport_errors(
    {
        (_S.CALLING, _E.TIMER_A): _step(_S.CALLING, _A.RETRANSMIT_DOUBLING),
        (_S.CALLING, _E.TIMER_B): _step(_S.TERMINATED, _A.TIMEOUT),
        (_S.CALLING, _E.RESP_1XX): _up(_S.PROCEEDING),
        (_S.CALLING, _E.RESP_2XX): _up(_S.ACCEPTED),
        (_S.CALLING, _E.RESP_300_699): _up(_S.COMPLETED, _A.SEND_ACK),
        (_S.PROCEEDING, _E.RESP_1XX): _up(_S.PROCEEDING),
        (_S.PROCEEDING, _E.RESP_2XX): _up(_S.ACCEPTED),
        (_S.PROCEEDING, _E.RESP_300_699): _up(_S.COMPLETED, _A.SEND_ACK),
        # Completed: a retransmitted final is answered with the ACK again, not delivered.
        (_S.COMPLETED, _E.RESP_300_699): _step(_S.COMPLETED, _A.RESEND_ACK),
        (_S.COMPLETED, _E.TIMER_D): _step(_S.TERMINATED),
        # RFC 6026 7.2: every 2xx in Accepted goes up (a forking proxy forwards each of them).
        (_S.ACCEPTED, _E.RESP_2XX): _up(_S.ACCEPTED),
        (_S.ACCEPTED, _E.TIMER_M): _step(_S.TERMINATED),
    }
)
INVITE_CLIENT_TIMERS: Final[EntryTimers] = {
    _S.CALLING: (_E.TIMER_A, _E.TIMER_B),
    _S.PROCEEDING: (None, None),  # no more retransmissions; Timer B only applies in Calling
    _S.COMPLETED: (None, _E.TIMER_D),
    _S.ACCEPTED: (None, _E.TIMER_M),
}

# RFC 3261 17.1.2.2 (Figure 6).
NON_INVITE_CLIENT_TABLE: Final[Table] = _with_transport_errors(
    {
        (_S.TRYING, _E.TIMER_E): _step(_S.TRYING, _A.RETRANSMIT_BACKOFF),
        (_S.TRYING, _E.TIMER_F): _step(_S.TERMINATED, _A.TIMEOUT),
        (_S.TRYING, _E.RESP_1XX): _up(_S.PROCEEDING),
        (_S.TRYING, _E.RESP_2XX): _up(_S.COMPLETED),
        (_S.TRYING, _E.RESP_300_699): _up(_S.COMPLETED),
        (_S.PROCEEDING, _E.TIMER_E): _step(_S.PROCEEDING, _A.RETRANSMIT_T2),
        (_S.PROCEEDING, _E.TIMER_F): _step(_S.TERMINATED, _A.TIMEOUT),
        (_S.PROCEEDING, _E.RESP_1XX): _up(_S.PROCEEDING),
        (_S.PROCEEDING, _E.RESP_2XX): _up(_S.COMPLETED),
        (_S.PROCEEDING, _E.RESP_300_699): _up(_S.COMPLETED),
        # Completed: retransmitted responses are absorbed (no row).
        (_S.COMPLETED, _E.TIMER_K): _step(_S.TERMINATED),
    }
)
NON_INVITE_CLIENT_TIMERS: Final[EntryTimers] = {
    _S.TRYING: (_E.TIMER_E, _E.TIMER_F),
    # Proceeding keeps E (reset to T2 when it next fires) and F.
    _S.COMPLETED: (None, _E.TIMER_K),
}

# RFC 3261 17.2.1 (Figure 7) as updated by RFC 6026 7.1 (Accepted, Timer L).
INVITE_SERVER_TABLE: Final[Table] = _with_transport_errors(
    {
        (_S.PROCEEDING, _E.RESP_1XX): _step(_S.PROCEEDING),
        (_S.PROCEEDING, _E.RESP_2XX): _step(_S.ACCEPTED),
        (_S.PROCEEDING, _E.RESP_300_699): _step(_S.COMPLETED),
        (_S.PROCEEDING, _E.REQUEST): _step(_S.PROCEEDING, _A.REPLY_AGAIN),
        (_S.COMPLETED, _E.REQUEST): _step(_S.COMPLETED, _A.REPLY_AGAIN),
        (_S.COMPLETED, _E.TIMER_G): _step(_S.COMPLETED, _A.RETRANSMIT_BACKOFF),
        (_S.COMPLETED, _E.TIMER_H): _step(_S.TERMINATED, _A.TIMEOUT),
        (_S.COMPLETED, _E.ACK): _step(_S.CONFIRMED),
        (_S.CONFIRMED, _E.ACK): _step(_S.CONFIRMED),  # absorbed
        (_S.CONFIRMED, _E.REQUEST): _step(_S.CONFIRMED),  # absorbed
        (_S.CONFIRMED, _E.TIMER_I): _step(_S.TERMINATED),
        # RFC 6026 7.1: the TU (the UAS behind us) retransmits 2xx; each one it passes is sent.
        (_S.ACCEPTED, _E.RESP_2XX): _step(_S.ACCEPTED),
        (_S.ACCEPTED, _E.REQUEST): _step(_S.ACCEPTED),  # absorbed
        (_S.ACCEPTED, _E.TIMER_L): _step(_S.TERMINATED),
    }
)
INVITE_SERVER_TIMERS: Final[EntryTimers] = {
    _S.PROCEEDING: (None, None),
    _S.COMPLETED: (_E.TIMER_G, _E.TIMER_H),
    _S.CONFIRMED: (None, _E.TIMER_I),  # Timer G is ignored from here on
    _S.ACCEPTED: (None, _E.TIMER_L),
}

# RFC 3261 17.2.2 (Figure 8).
NON_INVITE_SERVER_TABLE: Final[Table] = _with_transport_errors(
    {
        (_S.TRYING, _E.RESP_1XX): _step(_S.PROCEEDING),
        (_S.TRYING, _E.RESP_2XX): _step(_S.COMPLETED),
        (_S.TRYING, _E.RESP_300_699): _step(_S.COMPLETED),
        (_S.TRYING, _E.REQUEST): _step(_S.TRYING),  # discarded: nothing to answer with yet
        (_S.PROCEEDING, _E.RESP_1XX): _step(_S.PROCEEDING),
        (_S.PROCEEDING, _E.RESP_2XX): _step(_S.COMPLETED),
        (_S.PROCEEDING, _E.RESP_300_699): _step(_S.COMPLETED),
        (_S.PROCEEDING, _E.REQUEST): _step(_S.PROCEEDING, _A.REPLY_AGAIN),
        # Completed: further finals from the TU are discarded (no row).
        (_S.COMPLETED, _E.REQUEST): _step(_S.COMPLETED, _A.REPLY_AGAIN),
        (_S.COMPLETED, _E.TIMER_J): _step(_S.TERMINATED),
    }
)
NON_INVITE_SERVER_TIMERS: Final[EntryTimers] = {
    _S.TRYING: (None, None),
    _S.COMPLETED: (None, _E.TIMER_J),
}


def _running(table: Table, entry: EntryTimers) -> RunningTimers:
    """The timers each live state runs: its entry timers, or, for a state that starts none
    of its own, those of every state leading to it (which must agree)."""
    running = dict(entry)
    grown = True
    while grown:
        grown = False
        for (state, _), step in table.items():
            nxt = step.next_state
            if nxt not in running and nxt is not _S.TERMINATED and state in running:
                running[nxt] = running[state]
                grown = True
    for (state, _), step in table.items():
        nxt = step.next_state
        if nxt not in entry and nxt is not _S.TERMINATED and running[nxt] != running[state]:
            raise ValueError(f"{nxt} is entered with different timers running")
    return running


INVITE_CLIENT_RUNNING: Final = _running(INVITE_CLIENT_TABLE, INVITE_CLIENT_TIMERS)
NON_INVITE_CLIENT_RUNNING: Final = _running(NON_INVITE_CLIENT_TABLE, NON_INVITE_CLIENT_TIMERS)
INVITE_SERVER_RUNNING: Final = _running(INVITE_SERVER_TABLE, INVITE_SERVER_TIMERS)
NON_INVITE_SERVER_RUNNING: Final = _running(NON_INVITE_SERVER_TABLE, NON_INVITE_SERVER_TIMERS)
