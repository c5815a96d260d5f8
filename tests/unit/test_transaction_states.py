"""The transition tables themselves (RFC 3261 17 figures 5-8, RFC 6026) and the effect values."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.transaction import (
    Event,
    Retransmit,
    SendAck,
    Terminated,
    Timeout,
    TransactionState,
    response_event,
)
from proxy.transaction.states import (
    INVITE_CLIENT_TABLE,
    INVITE_CLIENT_TIMERS,
    INVITE_SERVER_TABLE,
    INVITE_SERVER_TIMERS,
    NON_INVITE_CLIENT_TABLE,
    NON_INVITE_CLIENT_TIMERS,
    NON_INVITE_SERVER_TABLE,
    NON_INVITE_SERVER_TIMERS,
    Action,
    EntryTimers,
    Table,
)

S = TransactionState
E = Event

MACHINES: dict[str, tuple[Table, EntryTimers, TransactionState, frozenset[TransactionState]]] = {
    "invite-client": (
        INVITE_CLIENT_TABLE,
        INVITE_CLIENT_TIMERS,
        S.CALLING,
        frozenset({S.CALLING, S.PROCEEDING, S.COMPLETED, S.ACCEPTED, S.TERMINATED}),
    ),
    "non-invite-client": (
        NON_INVITE_CLIENT_TABLE,
        NON_INVITE_CLIENT_TIMERS,
        S.TRYING,
        frozenset({S.TRYING, S.PROCEEDING, S.COMPLETED, S.TERMINATED}),
    ),
    "invite-server": (
        INVITE_SERVER_TABLE,
        INVITE_SERVER_TIMERS,
        S.PROCEEDING,
        frozenset({S.PROCEEDING, S.COMPLETED, S.CONFIRMED, S.ACCEPTED, S.TERMINATED}),
    ),
    "non-invite-server": (
        NON_INVITE_SERVER_TABLE,
        NON_INVITE_SERVER_TIMERS,
        S.TRYING,
        frozenset({S.TRYING, S.PROCEEDING, S.COMPLETED, S.TERMINATED}),
    ),
}
TIMER_EVENTS = frozenset(e for e in Event if e.name.startswith("TIMER_"))


def _reachable(table: Table, initial: TransactionState) -> set[TransactionState]:
    seen = {initial}
    todo = [initial]
    while todo:
        state = todo.pop()
        for (source, _), step in table.items():
            if source is state and step.next_state not in seen:
                seen.add(step.next_state)
                todo.append(step.next_state)
    return seen


@pytest.mark.parametrize("machine", MACHINES)
def test_every_state_of_the_figure_is_reachable_and_no_other(machine: str) -> None:
    """RFC 3261 Figures 5-8 with RFC 6026 Figures 3-5: exactly the drawn states exist."""
    table, _, initial, states = MACHINES[machine]
    assert _reachable(table, initial) == states


@pytest.mark.parametrize("machine", MACHINES)
def test_transport_error_terminates_every_live_state(machine: str) -> None:
    """RFC 3261 17.1.4 / 17.2.4: a transport failure ends the transaction in any state."""
    table, _, _, states = MACHINES[machine]
    for state in states - {S.TERMINATED}:
        step = table[(state, E.TRANSPORT_ERROR)]
        assert step.next_state is S.TERMINATED
        assert step.action is Action.NONE


@pytest.mark.parametrize("machine", MACHINES)
def test_terminated_has_no_transitions(machine: str) -> None:
    """RFC 3261 17.1.1.2: a Terminated transaction is destroyed immediately."""
    table, timers, _, _ = MACHINES[machine]
    assert not [key for key in table if key[0] is S.TERMINATED]
    assert S.TERMINATED not in timers


@pytest.mark.parametrize("machine", MACHINES)
def test_every_running_timer_has_a_transition_in_its_state(machine: str) -> None:
    """RFC 3261 17: a timer started on entering a state (or kept from the previous one) is
    handled there; ending timers always lead to Terminated."""
    table, timers, initial, states = MACHINES[machine]
    running: dict[TransactionState, set[Event]] = {}
    # States that start their own timers first, then those that keep their predecessor's.
    for state in sorted(states - {S.TERMINATED}, key=lambda st: st not in timers):
        entry = timers.get(state)
        if entry is None:  # keeps the timers of the state it is entered from
            sources = {src for (src, _), st in table.items() if st.next_state is state}
            kept = set().union(*(running.get(src, set()) for src in sources - {state}))
            running[state] = kept
        else:
            running[state] = {t for t in entry if t is not None}
    for state, active in running.items():
        for timer in active:
            assert (state, timer) in table, (state, timer)
    ending = {t for entry in timers.values() for t in entry[1:] if t is not None}
    for (_, event), step in table.items():
        if event in ending:
            assert step.next_state is S.TERMINATED
    assert {k[1] for k in table} & TIMER_EVENTS  # every machine has timers
    assert initial in timers


def test_only_client_tables_deliver_and_only_responses_are_delivered() -> None:
    """RFC 3261 17.1: the client transaction passes responses up to the TU; servers never
    deliver anything through the table."""
    responses = {E.RESP_1XX, E.RESP_2XX, E.RESP_300_699}
    for table in (INVITE_CLIENT_TABLE, NON_INVITE_CLIENT_TABLE):
        assert {event for (_, event), step in table.items() if step.deliver} <= responses
    for table in (INVITE_SERVER_TABLE, NON_INVITE_SERVER_TABLE):
        assert not [key for key, step in table.items() if step.deliver]


@pytest.mark.parametrize(
    ("status", "event"),
    [
        (100, E.RESP_1XX),
        (180, E.RESP_1XX),
        (199, E.RESP_1XX),
        (200, E.RESP_2XX),
        (202, E.RESP_2XX),
        (299, E.RESP_2XX),
        (300, E.RESP_300_699),
        (487, E.RESP_300_699),
        (699, E.RESP_300_699),
    ],
)
def test_response_event_classifies_status_codes(status: int, event: Event) -> None:
    """RFC 3261 7.2 / 17.1.1.2: 1xx, 2xx and 300-699 are the three inputs of the machines."""
    assert response_event(status) is event


def test_states_carry_the_rfc_names() -> None:
    """RFC 3261 17 + RFC 6026: Calling, Trying, Proceeding, Completed, Confirmed, Accepted,
    Terminated."""
    assert [s.value for s in TransactionState] == [
        "Calling",
        "Trying",
        "Proceeding",
        "Completed",
        "Confirmed",
        "Accepted",
        "Terminated",
    ]


def test_effects_are_immutable_values_distinguished_by_type() -> None:
    """RFC 3261 17: each effect means something different to the core; two field-less
    effects must never compare equal."""
    assert SendAck() != Terminated()
    assert Terminated() == Terminated()
    assert Retransmit(b"x") == Retransmit(b"x")
    assert Retransmit(b"x") != Retransmit(b"y")
    assert Timeout("B") != Timeout("F")
    assert Timeout("B") != ("B",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Timeout("B").timer = "F"  # type: ignore[misc]
    assert not hasattr(Retransmit(b"x"), "__dict__")
