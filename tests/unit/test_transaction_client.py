"""Client transactions (RFC 3261 17.1, RFC 6026 7.2) stepped with a fake clock.

Nothing sleeps: ``run_timers`` jumps the clock to each deadline and fires it, so every
retransmission and timeout is asserted at its exact time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxy.transaction import (
    InviteClientTransaction,
    NonInviteClientTransaction,
    Retransmit,
    SendAck,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionState,
)
from tests.unit.txn_clock import run_timers

S = TransactionState
TIMERS = TimerConfig()
INVITE = b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP p1;branch=z9hG4bK1\r\n\r\n"
OPTIONS = b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP p1;branch=z9hG4bK2\r\n\r\n"
ACK = b"ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP p1;branch=z9hG4bK1\r\n\r\n"


def ict(
    *, reliable: bool = False, now: float = 0.0, timers: TimerConfig = TIMERS
) -> InviteClientTransaction:
    return InviteClientTransaction(INVITE, reliable=reliable, now=now, timers=timers)


def nict(
    *, reliable: bool = False, now: float = 0.0, timers: TimerConfig = TIMERS
) -> NonInviteClientTransaction:
    return NonInviteClientTransaction(OPTIONS, reliable=reliable, now=now, timers=timers)


R_INVITE = Retransmit(INVITE)
R_OPTIONS = Retransmit(OPTIONS)


# ---------------------------------------------------------------- INVITE client: Calling, A, B


def test_invite_client_starts_in_calling_with_timer_a_at_t1() -> None:
    """RFC 3261 17.1.1.2: Calling; unreliable transport -> Timer A = T1."""
    txn = ict(now=10.0)
    assert txn.state is S.CALLING
    assert txn.is_invite is True
    assert txn.request == INVITE
    assert txn.deadline == 10.5


def test_timer_a_doubles_without_t2_cap_until_timer_b_times_out() -> None:
    """RFC 3261 17.1.1.2: Timer A resets to 2*T1, 4*T1... (no T2 cap for INVITE); Timer B
    (64*T1 = 32 s) ends Calling with a timeout."""
    txn = ict(now=0.0)
    assert run_timers(txn, until=100.0) == [
        (0.5, [R_INVITE]),
        (1.5, [R_INVITE]),
        (3.5, [R_INVITE]),
        (7.5, [R_INVITE]),
        (15.5, [R_INVITE]),
        (31.5, [R_INVITE]),
        (32.0, [Timeout("B"), Terminated()]),
    ]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None


def test_timer_a_ignores_a_small_custom_t2() -> None:
    """RFC 3261 17.1.1.2: Timer A keeps doubling past T2 (t1=1, t2=2: 1, 3, 7, 15, 31, 63;
    Timer B at 64)."""
    txn = ict(now=0.0, timers=TimerConfig(t1=1.0, t2=2.0))
    log = run_timers(txn, until=1000.0)
    assert [t for t, _ in log] == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 64.0]
    assert all(effects == [R_INVITE] for _, effects in log[:-1])
    assert log[-1] == (64.0, [Timeout("B"), Terminated()])


def test_timer_b_fires_at_64_t1_and_times_out() -> None:
    """RFC 3261 17.1.1.2: Timer B = 64*T1 on any transport; on a reliable one Timer A is not
    started, so B is the only deadline."""
    txn = ict(reliable=True, now=0.0)
    assert txn.deadline == 32.0
    assert txn.on_timer(31.999) == []
    assert txn.state is S.CALLING
    assert txn.on_timer(32.0) == [Timeout("B"), Terminated()]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None


def test_reliable_invite_is_never_retransmitted() -> None:
    """RFC 3261 17.1.1.2: "If a reliable transport is being used, the client transaction
    SHOULD NOT start timer A"."""
    txn = ict(reliable=True, now=4.0)
    assert run_timers(txn, until=1000.0) == [(36.0, [Timeout("B"), Terminated()])]


def test_custom_t1_sets_timer_b_to_6_4_s() -> None:
    """RFC 3261 17.1.1.1 / Table 4: Timer B = 64*T1, so t1=0.1 gives 6.4 s."""
    txn = ict(reliable=True, now=0.0, timers=TimerConfig(t1=0.1))
    assert txn.deadline == 6.4
    txn_udp = ict(now=0.0, timers=TimerConfig(t1=0.1))
    assert txn_udp.deadline == 0.1
    log = run_timers(txn_udp, until=100.0)
    assert log[-1] == (6.4, [Timeout("B"), Terminated()])
    assert len(log) == 7  # A fires at 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, then B


def test_timer_a_called_early_is_a_noop() -> None:
    """RFC 3261 17.1.1.2: nothing is due before Timer A; an early tick changes nothing."""
    txn = ict(now=0.0)
    assert txn.on_timer(0.25) == []
    assert txn.deadline == 0.5
    assert txn.state is S.CALLING


def test_late_timer_a_fires_once_and_restarts_from_now() -> None:
    """RFC 3261 17.1.1.2: when Timer A fires it is reset (to 2*T1): a late tick gives one
    retransmission, and the next one 2*T1 after that tick, not a burst."""
    txn = ict(now=0.0)
    assert txn.on_timer(5.0) == [R_INVITE]
    assert txn.deadline == 6.0
    assert txn.on_timer(6.0) == [R_INVITE]
    assert txn.deadline == 8.0


def test_timer_b_alone_fires_when_a_and_b_are_both_overdue() -> None:
    """RFC 3261 17.1.1.2: once Timer B expired the transaction is over; no retransmission
    is sent on the way out."""
    txn = ict(now=0.0)
    assert txn.on_timer(40.0) == [Timeout("B"), Terminated()]
    assert txn.deadline is None
    assert txn.on_timer(41.0) == []


# ---------------------------------------------------------------- INVITE client: Proceeding


def test_provisional_in_calling_delivers_and_stops_timers_a_and_b() -> None:
    """RFC 3261 17.1.1.2: 1xx in Calling -> Proceeding, passed to the TU; no more
    retransmissions, and Timer B only applies in Calling (the proxy's Timer C takes over)."""
    txn = ict(now=0.0)
    assert txn.on_response(100, 0.25) == (True, [])
    assert txn.state is S.PROCEEDING
    assert txn.deadline is None
    assert txn.on_timer(100.0) == []
    assert txn.state is S.PROCEEDING


def test_provisional_after_a_retransmission_stops_timer_a() -> None:
    """RFC 3261 17.1.1.2: a provisional received after Timer A fired still stops it."""
    txn = ict(now=0.0)
    assert run_timers(txn, until=1.5) == [(0.5, [R_INVITE]), (1.5, [R_INVITE])]
    assert txn.on_response(180, 2.0) == (True, [])
    assert txn.deadline is None


def test_provisionals_in_proceeding_are_all_delivered() -> None:
    """RFC 3261 17.1.1.2: "Any further provisional responses MUST be passed up to the TU
    while in the Proceeding state"."""
    txn = ict(now=0.0)
    txn.on_response(100, 0.25)
    assert txn.on_response(180, 1.0) == (True, [])
    assert txn.on_response(183, 2.0) == (True, [])
    assert txn.on_response(180, 3.0) == (True, [])
    assert txn.state is S.PROCEEDING
    assert txn.deadline is None


def test_cancel_is_allowed_only_in_proceeding() -> None:
    """RFC 3261 9.1: no CANCEL before a provisional response, none after a final one."""
    calling = ict()
    assert calling.cancel_allowed() is False
    proceeding = ict()
    proceeding.on_response(180, 0.25)
    assert proceeding.cancel_allowed() is True
    completed = ict()
    completed.on_response(486, 0.25)
    assert completed.cancel_allowed() is False
    accepted = ict()
    accepted.on_response(200, 0.25)
    assert accepted.cancel_allowed() is False
    terminated = ict()
    terminated.on_transport_error(0.25)
    assert terminated.cancel_allowed() is False


# ---------------------------------------------------------------- INVITE client: Accepted, M


@pytest.mark.parametrize("provisional_first", [False, True])
def test_2xx_moves_to_accepted_and_starts_timer_m(provisional_first: bool) -> None:
    """RFC 6026 7.2: a 2xx in Calling or Proceeding is passed up, the transaction enters
    Accepted and starts Timer M = 64*T1; no ACK is generated by the transaction."""
    txn = ict(now=0.0)
    if provisional_first:
        txn.on_response(180, 0.25)
    assert txn.on_response(200, 2.0) == (True, [])
    assert txn.state is S.ACCEPTED
    assert txn.deadline == 34.0


def test_2xx_retransmissions_in_accepted_are_delivered_without_restarting_timer_m() -> None:
    """RFC 6026 7.2: every 2xx received in Accepted goes to the TU (a proxy forwards each of
    them); Timer M keeps its deadline."""
    txn = ict(now=0.0)
    txn.on_response(200, 2.0)
    assert txn.on_response(200, 3.0) == (True, [])
    assert txn.on_response(200, 20.0) == (True, [])
    assert txn.state is S.ACCEPTED
    assert txn.deadline == 34.0


def test_timer_m_fires_at_64_t1_and_terminates_accepted() -> None:
    """RFC 6026 7.2: Timer M fires -> Terminated."""
    txn = ict(now=0.0)
    txn.on_response(200, 2.0)
    assert run_timers(txn, until=1000.0) == [(34.0, [Terminated()])]
    assert txn.state is S.TERMINATED


def test_timer_m_is_64_t1_on_reliable_transport_too() -> None:
    """RFC 6026 7.2: Timer M = 64*T1 regardless of transport (t1=0.25 -> 16 s)."""
    txn = ict(reliable=True, now=0.0, timers=TimerConfig(t1=0.25))
    txn.on_response(200, 1.0)
    assert txn.deadline == 17.0


def test_non_2xx_and_provisionals_in_accepted_are_absorbed() -> None:
    """RFC 6026 7.2: only 2xx responses are passed up from Accepted."""
    txn = ict(now=0.0)
    txn.on_response(200, 2.0)
    assert txn.on_response(180, 3.0) == (False, [])
    assert txn.on_response(486, 3.0) == (False, [])
    assert txn.state is S.ACCEPTED
    assert txn.deadline == 34.0


# ---------------------------------------------------------------- INVITE client: Completed, D


@pytest.mark.parametrize("status", [300, 404, 486, 503, 603, 699])
def test_non_2xx_final_in_calling_asks_for_ack_and_starts_timer_d_32s(status: int) -> None:
    """RFC 3261 17.1.1.2: 300-699 in Calling -> passed up, ACK generated (17.1.1.3),
    Completed, Timer D = 32 s on an unreliable transport; Timers A and B stop."""
    txn = ict(now=0.0)
    assert txn.on_response(status, 2.0) == (True, [SendAck()])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 34.0


def test_non_2xx_final_in_proceeding_asks_for_ack_and_starts_timer_d() -> None:
    """RFC 3261 17.1.1.2: 300-699 in Proceeding -> same as in Calling."""
    txn = ict(now=0.0)
    txn.on_response(180, 1.0)
    assert txn.on_response(486, 10.0) == (True, [SendAck()])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 42.0


def test_retransmitted_final_in_completed_resends_the_ack_without_delivery() -> None:
    """RFC 3261 17.1.1.2: "Any retransmissions of the final response that are received while
    in the Completed state MUST cause the ACK to be re-passed to the transport layer for
    retransmission, but the newly received response MUST NOT be passed up to the TU"."""
    txn = ict(now=0.0)
    txn.on_response(486, 2.0)
    txn.set_ack(ACK)
    assert txn.ack == ACK
    assert txn.on_response(486, 3.0) == (False, [Retransmit(ACK)])
    assert txn.on_response(486, 7.0) == (False, [Retransmit(ACK)])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 34.0  # Timer D is not restarted


def test_retransmitted_final_before_set_ack_asks_for_the_ack_again() -> None:
    """RFC 3261 17.1.1.2: the ACK must be resent; while the core has not handed its ACK bytes
    back, the transaction asks for one again (still not delivered)."""
    txn = ict(now=0.0)
    txn.on_response(603, 2.0)
    assert txn.on_response(603, 2.5) == (False, [SendAck()])


def test_provisional_and_2xx_in_completed_are_absorbed() -> None:
    """RFC 3261 17.1.1.2 (Figure 5): Completed reacts only to 300-699 and Timer D."""
    txn = ict(now=0.0)
    txn.on_response(486, 2.0)
    txn.set_ack(ACK)
    assert txn.on_response(180, 3.0) == (False, [])
    assert txn.on_response(200, 3.0) == (False, [])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 34.0


def test_timer_d_fires_and_terminates_completed() -> None:
    """RFC 3261 17.1.1.2: Timer D fires in Completed -> Terminated."""
    txn = ict(now=0.0)
    txn.on_response(486, 2.0)
    assert run_timers(txn, until=1000.0) == [(34.0, [Terminated()])]
    assert txn.state is S.TERMINATED


def test_timer_d_is_zero_on_reliable_transport() -> None:
    """RFC 3261 17.1.1.2: Timer D = 0 s for reliable transports: due at once."""
    txn = ict(reliable=True, now=0.0)
    assert txn.on_response(486, 2.0) == (True, [SendAck()])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 2.0
    assert txn.on_timer(2.0) == [Terminated()]
    assert txn.state is S.TERMINATED


def test_timer_d_grows_to_64_t1_when_t1_is_raised() -> None:
    """RFC 3261 17.1.1.2 / Table 4: Timer D is "at least 32 s"; it covers the server's
    response retransmissions (Timer H = 64*T1), so t1=1 gives 64 s, t1=0.1 keeps 32 s."""
    slow = ict(now=0.0, timers=TimerConfig(t1=1.0, t2=4.0))
    slow.on_response(486, 1.0)
    assert slow.deadline == 65.0
    fast = ict(now=0.0, timers=TimerConfig(t1=0.1))
    fast.on_response(486, 1.0)
    assert fast.deadline == 33.0


def test_responses_after_termination_are_absorbed() -> None:
    """RFC 3261 17.1.1.2: a Terminated transaction is destroyed; anything reaching it is
    absorbed."""
    txn = ict(reliable=True, now=0.0)
    txn.on_timer(32.0)
    assert txn.on_response(200, 33.0) == (False, [])
    assert txn.on_response(486, 33.0) == (False, [])
    assert txn.on_timer(100.0) == []
    assert txn.state is S.TERMINATED


# ---------------------------------------------------------------- transport errors


def _ict_in(state: TransactionState) -> InviteClientTransaction:
    txn = ict(now=0.0)
    if state is S.PROCEEDING:
        txn.on_response(180, 0.25)
    elif state is S.COMPLETED:
        txn.on_response(486, 0.25)
    elif state is S.ACCEPTED:
        txn.on_response(200, 0.25)
    assert txn.state is state
    return txn


@pytest.mark.parametrize("state", [S.CALLING, S.PROCEEDING, S.COMPLETED, S.ACCEPTED])
def test_transport_error_terminates_invite_client_in_every_state(state: TransactionState) -> None:
    """RFC 3261 17.1.4: a transport failure -> Terminated at once (the TU acts as on 503)."""
    txn = _ict_in(state)
    assert txn.on_transport_error(1.0) == [Terminated()]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None
    assert txn.on_transport_error(1.0) == []
    assert txn.on_timer(1000.0) == []


# ---------------------------------------------------------------- non-INVITE client: E, F


def test_non_invite_client_starts_in_trying_with_timer_e_at_t1() -> None:
    """RFC 3261 17.1.2.2: Trying; unreliable transport -> Timer E = T1."""
    txn = nict(now=3.0)
    assert txn.state is S.TRYING
    assert txn.is_invite is False
    assert txn.deadline == 3.5
    assert txn.cancel_allowed() is False


def test_timer_e_doubles_up_to_t2_until_timer_f_times_out() -> None:
    """RFC 3261 17.1.2.2: Timer E = min(2E, T2) in Trying (0.5, 1, 2, 4, 4...); Timer F
    (64*T1 = 32 s) -> timeout."""
    txn = nict(now=0.0)
    assert run_timers(txn, until=100.0) == [
        (0.5, [R_OPTIONS]),
        (1.5, [R_OPTIONS]),
        (3.5, [R_OPTIONS]),
        (7.5, [R_OPTIONS]),
        (11.5, [R_OPTIONS]),
        (15.5, [R_OPTIONS]),
        (19.5, [R_OPTIONS]),
        (23.5, [R_OPTIONS]),
        (27.5, [R_OPTIONS]),
        (31.5, [R_OPTIONS]),
        (32.0, [Timeout("F"), Terminated()]),
    ]
    assert txn.state is S.TERMINATED


def test_timer_e_caps_at_a_custom_t2() -> None:
    """RFC 3261 17.1.2.2: with t1=0.25, t2=1 Timer E runs 0.25, 0.5, then 1 s steps; Timer F
    at 64*T1 = 16 s."""
    txn = nict(now=0.0, timers=TimerConfig(t1=0.25, t2=1.0))
    log = run_timers(txn, until=100.0)
    assert [t for t, _ in log[:-1]] == [0.25, 0.75] + [1.75 + k for k in range(15)]
    assert all(effects == [R_OPTIONS] for _, effects in log[:-1])
    assert log[-1] == (16.0, [Timeout("F"), Terminated()])


def test_timer_f_fires_at_64_t1_and_times_out() -> None:
    """RFC 3261 17.1.2.2: Timer F = 64*T1 on any transport; reliable -> no Timer E."""
    txn = nict(reliable=True, now=1.0)
    assert txn.deadline == 33.0
    assert run_timers(txn, until=1000.0) == [(33.0, [Timeout("F"), Terminated()])]


def test_custom_t1_sets_timer_f_to_6_4_s() -> None:
    """RFC 3261 Table 4: Timer F = 64*T1, so t1=0.1 gives 6.4 s."""
    txn = nict(reliable=True, now=0.0, timers=TimerConfig(t1=0.1))
    assert txn.deadline == 6.4


def test_timer_f_alone_fires_when_e_and_f_are_both_overdue() -> None:
    """RFC 3261 17.1.2.2: the timeout ends the transaction; no retransmission on the way out."""
    txn = nict(now=0.0)
    assert txn.on_timer(50.0) == [Timeout("F"), Terminated()]


# ---------------------------------------------------------------- non-INVITE client: Proceeding


def test_provisional_moves_to_proceeding_and_timer_e_continues_at_t2() -> None:
    """RFC 3261 17.1.2.2: 1xx in Trying -> Proceeding, passed up; Timer E keeps running and
    is reset to T2 each time it fires in Proceeding; Timer F keeps running."""
    txn = nict(now=0.0)
    assert txn.on_response(100, 0.25) == (True, [])
    assert txn.state is S.PROCEEDING
    assert txn.deadline == 0.5  # Timer E untouched
    assert run_timers(txn, until=100.0) == [
        (0.5, [R_OPTIONS]),
        (4.5, [R_OPTIONS]),
        (8.5, [R_OPTIONS]),
        (12.5, [R_OPTIONS]),
        (16.5, [R_OPTIONS]),
        (20.5, [R_OPTIONS]),
        (24.5, [R_OPTIONS]),
        (28.5, [R_OPTIONS]),
        (32.0, [Timeout("F"), Terminated()]),
    ]


def test_provisionals_in_proceeding_are_delivered() -> None:
    """RFC 3261 17.1.2.2: further provisionals in Proceeding are passed up to the TU."""
    txn = nict(now=0.0)
    txn.on_response(100, 0.25)
    assert txn.on_response(183, 1.0) == (True, [])
    assert txn.state is S.PROCEEDING


# ---------------------------------------------------------------- non-INVITE client: Completed, K


@pytest.mark.parametrize("status", [200, 202, 302, 404, 500, 603])
def test_final_in_trying_completes_and_starts_timer_k_t4(status: int) -> None:
    """RFC 3261 17.1.2.2: 200-699 in Trying -> passed up, Completed, Timer K = T4 on an
    unreliable transport; E and F stop."""
    txn = nict(now=0.0)
    assert txn.on_response(status, 2.0) == (True, [])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 7.0
    assert run_timers(txn, until=1000.0) == [(7.0, [Terminated()])]


def test_final_in_proceeding_completes_and_starts_timer_k() -> None:
    """RFC 3261 17.1.2.2: 200-699 in Proceeding -> Completed, Timer K = T4."""
    txn = nict(now=0.0)
    txn.on_response(100, 0.25)
    assert txn.on_response(200, 6.0) == (True, [])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 11.0


def test_timer_k_is_zero_on_reliable_transport() -> None:
    """RFC 3261 17.1.2.2: Timer K = 0 s for reliable transports: due at once."""
    txn = nict(reliable=True, now=0.0)
    assert txn.on_response(200, 2.0) == (True, [])
    assert txn.deadline == 2.0
    assert txn.on_timer(2.0) == [Terminated()]


def test_custom_t4_sets_timer_k() -> None:
    """RFC 3261 17.1.2.2: Timer K = T4 (t4=2.5)."""
    txn = nict(now=0.0, timers=TimerConfig(t4=2.5))
    txn.on_response(404, 1.0)
    assert txn.deadline == 3.5


def test_retransmitted_responses_in_completed_are_absorbed() -> None:
    """RFC 3261 17.1.2.2: "buffer any retransmissions of the final response": absorbed, not
    passed up, Timer K unchanged."""
    txn = nict(now=0.0)
    txn.on_response(200, 2.0)
    assert txn.on_response(200, 2.5) == (False, [])
    assert txn.on_response(100, 2.5) == (False, [])
    assert txn.on_response(500, 2.5) == (False, [])
    assert txn.state is S.COMPLETED
    assert txn.deadline == 7.0


def test_set_ack_is_refused_by_a_non_invite_client() -> None:
    """RFC 3261 17.1.1.3: only the INVITE client transaction acknowledges a final response."""
    txn = nict()
    with pytest.raises(TypeError):
        txn.set_ack(ACK)
    assert txn.ack is None


@pytest.mark.parametrize(
    ("setup", "state"),
    [
        (lambda t: None, S.TRYING),
        (lambda t: t.on_response(100, 0.25), S.PROCEEDING),
        (lambda t: t.on_response(200, 0.25), S.COMPLETED),
    ],
)
def test_transport_error_terminates_non_invite_client_in_every_state(
    setup: Callable[[NonInviteClientTransaction], object], state: TransactionState
) -> None:
    """RFC 3261 17.1.4: a transport failure -> Terminated at once."""
    txn = nict(now=0.0)
    setup(txn)
    assert txn.state is state
    assert txn.on_transport_error(1.0) == [Terminated()]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None
    assert txn.on_response(200, 2.0) == (False, [])


# ---------------------------------------------------------------- shape


def test_client_transactions_use_slots_and_return_fresh_effect_lists() -> None:
    """RFC 3261 17 (performance): no per-instance __dict__; the caller owns each returned
    list, so mutating one cannot leak into later results."""
    txn = ict(now=0.0)
    assert not hasattr(txn, "__dict__")
    assert not hasattr(nict(), "__dict__")
    first = txn.on_timer(0.5)
    first.append(Terminated())
    assert txn.on_timer(1.5) == [R_INVITE]
    empty = txn.on_timer(1.6)
    empty.append(Terminated())
    assert txn.on_timer(1.7) == []


# ---------------------------------------------------------------- what the last states keep


@pytest.mark.parametrize(("make", "status"), [(ict, 200), (ict, 486), (nict, 200), (nict, 404)])
def test_a_final_lets_go_of_the_request(
    make: Callable[..., InviteClientTransaction | NonInviteClientTransaction], status: int,
) -> None:
    """RFC 3261 17.1.1.2 / 17.1.2.2, RFC 6026 7.2: from Completed and Accepted on nothing
    resends the request (Timers A and E have stopped; D, K and M only absorb), so the
    transaction keeps no copy of it, not even in the Retransmit it built for Timer A/E."""
    txn = make(now=0.0)
    assert run_timers(txn, until=0.5)[0][1][0].data in (INVITE, OPTIONS)
    assert txn.request is not None
    txn.on_response(100, 0.6)
    assert txn.request is not None  # a provisional: E still runs (17.1.2.2)
    txn.on_response(status, 1.0)
    assert txn.request is None
    assert txn.state in (S.COMPLETED, S.ACCEPTED)
