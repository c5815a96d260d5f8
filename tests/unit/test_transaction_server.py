"""Server transactions (RFC 3261 17.2, RFC 6026 7.1) stepped with a fake clock.

The core transmits each response itself and reports it with ``send_response``; the effects
checked here are only what the transaction adds: retransmissions, timeouts, termination.
"""

from __future__ import annotations

import pytest

from proxy.transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    Retransmit,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionState,
)
from tests.unit.txn_clock import run_timers

S = TransactionState
TIMERS = TimerConfig()
TRYING_100 = b"SIP/2.0 100 Trying\r\n\r\n"
RINGING_180 = b"SIP/2.0 180 Ringing\r\n\r\n"
PROGRESS_183 = b"SIP/2.0 183 Session Progress\r\n\r\n"
OK_200 = b"SIP/2.0 200 OK\r\n\r\n"
OK_200_AGAIN = b"SIP/2.0 200 OK\r\nContact: <sip:b@2>\r\n\r\n"
BUSY_486 = b"SIP/2.0 486 Busy Here\r\n\r\n"
ERROR_500 = b"SIP/2.0 500 Server Internal Error\r\n\r\n"
NOT_FOUND_404 = b"SIP/2.0 404 Not Found\r\n\r\n"


def ist(
    *, reliable: bool = False, now: float = 0.0, timers: TimerConfig = TIMERS
) -> InviteServerTransaction:
    return InviteServerTransaction(reliable=reliable, now=now, timers=timers)


def nist(
    *, reliable: bool = False, now: float = 0.0, timers: TimerConfig = TIMERS
) -> NonInviteServerTransaction:
    return NonInviteServerTransaction(reliable=reliable, now=now, timers=timers)


R_486 = Retransmit(BUSY_486)


# ---------------------------------------------------------------- INVITE server: Proceeding


def test_invite_server_starts_in_proceeding_without_timers() -> None:
    """RFC 3261 17.2.1: a new INVITE server transaction enters Proceeding; no timer runs."""
    txn = ist(now=5.0)
    assert txn.state is S.PROCEEDING
    assert txn.is_invite is True
    assert txn.deadline is None
    assert txn.last_response is None
    assert txn.on_timer(1000.0) == []


def test_retransmitted_invite_before_any_response_is_absorbed() -> None:
    """RFC 3261 17.2.1: a retransmission in Proceeding gets the most recent provisional; with
    none sent yet there is nothing to resend."""
    txn = ist()
    assert txn.on_retransmission(0.25) == []
    assert txn.state is S.PROCEEDING


def test_provisionals_keep_proceeding_and_the_latest_answers_retransmissions() -> None:
    """RFC 3261 17.2.1: provisionals are sent without changing state and are not retransmitted
    by the transaction; a request retransmission gets the most recent provisional again."""
    txn = ist()
    assert txn.send_response(100, TRYING_100, 0.0) == []
    assert txn.state is S.PROCEEDING
    assert txn.deadline is None
    assert txn.on_retransmission(0.5) == [Retransmit(TRYING_100)]
    assert txn.send_response(180, RINGING_180, 1.0) == []
    assert txn.send_response(183, PROGRESS_183, 1.5) == []
    assert txn.on_retransmission(2.0) == [Retransmit(PROGRESS_183)]
    assert txn.last_response == PROGRESS_183
    assert txn.deadline is None


# ---------------------------------------------------------------- INVITE server: Accepted, L


def test_2xx_moves_to_accepted_and_starts_timer_l() -> None:
    """RFC 6026 7.1: a 2xx from the TU -> Accepted, Timer L = 64*T1; the transaction does
    not retransmit the 2xx itself."""
    txn = ist()
    txn.send_response(180, RINGING_180, 1.0)
    assert txn.send_response(200, OK_200, 3.0) == []
    assert txn.state is S.ACCEPTED
    assert txn.deadline == 35.0
    assert txn.last_response is None  # nothing resends it: the call keeps no copy


def test_timer_l_fires_at_64_t1_and_terminates_accepted() -> None:
    """RFC 6026 7.1: Timer L fires -> Terminated; no 2xx retransmission before it."""
    txn = ist()
    txn.send_response(200, OK_200, 3.0)
    assert run_timers(txn, until=1000.0) == [(35.0, [Terminated()])]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None


def test_timer_l_is_64_t1_on_reliable_transport_too() -> None:
    """RFC 6026 7.1: Timer L = 64*T1 on every transport (t1=0.1 -> 6.4 s)."""
    txn = ist(reliable=True, timers=TimerConfig(t1=0.1))
    txn.send_response(200, OK_200, 0.0)
    assert txn.deadline == 6.4


def test_retransmitted_invite_in_accepted_is_absorbed() -> None:
    """RFC 6026 7.1: INVITE retransmissions in Accepted are absorbed (the UAS retransmits the
    2xx; the proxy forwards each one)."""
    txn = ist()
    txn.send_response(200, OK_200, 3.0)
    assert txn.on_retransmission(4.0) == []
    assert txn.on_ack(4.0) == []
    assert txn.state is S.ACCEPTED
    assert txn.deadline == 35.0


def test_2xx_retransmissions_in_accepted_are_sent_and_keep_timer_l() -> None:
    """RFC 6026 7.1: any 2xx the TU passes in Accepted is sent; the state and Timer L stay."""
    txn = ist()
    txn.send_response(200, OK_200, 3.0)
    assert txn.send_response(200, OK_200_AGAIN, 7.0) == []
    assert txn.state is S.ACCEPTED
    assert txn.last_response is None
    assert txn.deadline == 35.0


def test_non_2xx_and_provisionals_after_2xx_are_not_recorded() -> None:
    """RFC 6026 7.1 / RFC 3261 16.7 step 5: after a 2xx only further 2xx may be sent."""
    txn = ist()
    txn.send_response(200, OK_200, 3.0)
    assert txn.send_response(486, BUSY_486, 4.0) == []
    assert txn.send_response(180, RINGING_180, 4.0) == []
    assert txn.last_response is None
    assert txn.state is S.ACCEPTED
    assert txn.deadline == 35.0


# ---------------------------------------------------------------- INVITE server: Completed, G, H


def test_non_2xx_final_starts_timer_g_at_t1_capped_at_t2_and_timer_h_times_out() -> None:
    """RFC 3261 17.2.1: 300-699 -> Completed; Timer G = T1, then min(2G, T2) (0.5, 1, 2, 4,
    4...); Timer H = 64*T1 (32 s) -> Terminated with a timeout: the ACK never came."""
    txn = ist()
    txn.send_response(100, TRYING_100, 0.0)
    assert txn.send_response(486, BUSY_486, 10.0) == []
    assert txn.state is S.COMPLETED
    assert txn.deadline == 10.5
    assert run_timers(txn, until=1000.0) == [
        (10.5, [R_486]),
        (11.5, [R_486]),
        (13.5, [R_486]),
        (17.5, [R_486]),
        (21.5, [R_486]),
        (25.5, [R_486]),
        (29.5, [R_486]),
        (33.5, [R_486]),
        (37.5, [R_486]),
        (41.5, [R_486]),
        (42.0, [Timeout("H"), Terminated()]),
    ]
    assert txn.state is S.TERMINATED


def test_timer_g_caps_at_a_custom_t2() -> None:
    """RFC 3261 17.2.1: t1=0.25, t2=1 -> Timer G at 0.25, 0.75, then every 1 s; Timer H at
    64*T1 = 16 s."""
    txn = ist(timers=TimerConfig(t1=0.25, t2=1.0))
    txn.send_response(500, ERROR_500, 0.0)
    log = run_timers(txn, until=1000.0)
    assert [t for t, _ in log[:-1]] == [0.25, 0.75] + [1.75 + k for k in range(15)]
    assert all(effects == [Retransmit(ERROR_500)] for _, effects in log[:-1])
    assert log[-1] == (16.0, [Timeout("H"), Terminated()])


def test_timer_h_fires_at_64_t1_on_reliable_transport_without_retransmissions() -> None:
    """RFC 3261 17.2.1: reliable transport -> no Timer G; Timer H = 64*T1 still runs."""
    txn = ist(reliable=True)
    txn.send_response(486, BUSY_486, 10.0)
    assert txn.deadline == 42.0
    assert run_timers(txn, until=1000.0) == [(42.0, [Timeout("H"), Terminated()])]


def test_custom_t1_sets_timer_h_to_6_4_s() -> None:
    """RFC 3261 Table 4: Timer H = 64*T1, so t1=0.1 gives 6.4 s."""
    txn = ist(reliable=True, timers=TimerConfig(t1=0.1))
    txn.send_response(486, BUSY_486, 0.0)
    assert txn.deadline == 6.4


def test_timer_h_alone_fires_when_g_and_h_are_both_overdue() -> None:
    """RFC 3261 17.2.1: once Timer H expired the transaction ends; no retransmission first."""
    txn = ist()
    txn.send_response(486, BUSY_486, 0.0)
    assert txn.on_timer(100.0) == [Timeout("H"), Terminated()]


def test_request_retransmission_in_completed_resends_the_final_without_resetting_g() -> None:
    """RFC 3261 17.2.1: "If a request retransmission is received while in the Completed
    state, the server SHOULD pass the response to the transport for retransmission"."""
    txn = ist()
    txn.send_response(486, BUSY_486, 10.0)
    assert txn.on_retransmission(10.25) == [R_486]
    assert txn.deadline == 10.5
    assert txn.state is S.COMPLETED


def test_responses_after_a_non_2xx_final_are_not_recorded() -> None:
    """RFC 3261 17.2.1 / 16.7 step 5: after a final, provisionals and other finals from the
    TU are not taken by the transaction; the final stays the one retransmitted."""
    txn = ist()
    txn.send_response(486, BUSY_486, 10.0)
    assert txn.send_response(180, RINGING_180, 10.1) == []
    assert txn.send_response(500, ERROR_500, 10.1) == []
    assert txn.send_response(200, OK_200, 10.1) == []
    assert txn.last_response == BUSY_486
    assert txn.state is S.COMPLETED
    assert txn.on_retransmission(10.2) == [R_486]


# ---------------------------------------------------------------- INVITE server: Confirmed, I


def test_ack_in_completed_confirms_and_starts_timer_i_t4() -> None:
    """RFC 3261 17.2.1: ACK in Completed -> Confirmed; Timer G stops, Timer I = T4 on an
    unreliable transport; Timer I fires -> Terminated."""
    txn = ist()
    txn.send_response(486, BUSY_486, 10.0)
    assert run_timers(txn, until=11.5) == [(10.5, [R_486]), (11.5, [R_486])]
    assert txn.on_ack(12.0) == []
    assert txn.state is S.CONFIRMED
    assert txn.deadline == 17.0
    assert run_timers(txn, until=1000.0) == [(17.0, [Terminated()])]
    assert txn.state is S.TERMINATED


def test_timer_i_is_zero_on_reliable_transport() -> None:
    """RFC 3261 17.2.1: Timer I = 0 s for reliable transports: due at once."""
    txn = ist(reliable=True)
    txn.send_response(486, BUSY_486, 10.0)
    assert txn.on_ack(12.0) == []
    assert txn.state is S.CONFIRMED
    assert txn.deadline == 12.0
    assert txn.on_timer(12.0) == [Terminated()]


def test_custom_t4_sets_timer_i() -> None:
    """RFC 3261 17.2.1: Timer I = T4 (t4=2.5)."""
    txn = ist(timers=TimerConfig(t4=2.5))
    txn.send_response(486, BUSY_486, 10.0)
    txn.on_ack(11.0)
    assert txn.deadline == 13.5


def test_acks_and_invites_in_confirmed_are_absorbed() -> None:
    """RFC 3261 17.2.1: in Confirmed further ACKs are absorbed without changing state; nothing
    is retransmitted any more."""
    txn = ist()
    txn.send_response(486, BUSY_486, 10.0)
    txn.on_ack(12.0)
    assert txn.on_ack(12.5) == []
    assert txn.on_retransmission(12.5) == []
    assert txn.state is S.CONFIRMED
    assert txn.deadline == 17.0


def test_ack_in_proceeding_is_ignored() -> None:
    """RFC 3261 17.2.1 (Figure 7): ACK only moves Completed to Confirmed."""
    txn = ist()
    txn.send_response(180, RINGING_180, 0.0)
    assert txn.on_ack(1.0) == []
    assert txn.state is S.PROCEEDING
    assert txn.deadline is None


@pytest.mark.parametrize("state", [S.PROCEEDING, S.COMPLETED, S.CONFIRMED, S.ACCEPTED])
def test_transport_error_terminates_invite_server_in_every_state(state: TransactionState) -> None:
    """RFC 3261 17.2.4: the transport cannot send the response -> Terminated at once."""
    txn = ist()
    if state is S.COMPLETED:
        txn.send_response(486, BUSY_486, 0.0)
    elif state is S.CONFIRMED:
        txn.send_response(486, BUSY_486, 0.0)
        txn.on_ack(0.5)
    elif state is S.ACCEPTED:
        txn.send_response(200, OK_200, 0.0)
    assert txn.state is state
    assert txn.on_transport_error(1.0) == [Terminated()]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None
    assert txn.on_transport_error(1.0) == []
    assert txn.on_retransmission(1.0) == []
    assert txn.send_response(200, OK_200, 1.0) == []
    assert txn.on_timer(1000.0) == []


# ---------------------------------------------------------------- non-INVITE server


def test_non_invite_server_starts_in_trying_without_timers() -> None:
    """RFC 3261 17.2.2: a new non-INVITE server transaction enters Trying."""
    txn = nist(now=3.0)
    assert txn.state is S.TRYING
    assert txn.is_invite is False
    assert txn.deadline is None
    assert txn.last_response is None


def test_request_retransmission_in_trying_is_discarded() -> None:
    """RFC 3261 17.2.2: "any further request retransmissions are discarded" in Trying."""
    txn = nist()
    assert txn.on_retransmission(0.5) == []
    assert txn.state is S.TRYING


def test_provisional_moves_to_proceeding_and_answers_retransmissions() -> None:
    """RFC 3261 17.2.2: 1xx from the TU in Trying -> Proceeding; a retransmission there gets
    the most recent provisional again; more provisionals keep Proceeding."""
    txn = nist()
    assert txn.send_response(100, TRYING_100, 0.5) == []
    assert txn.state is S.PROCEEDING
    assert txn.on_retransmission(1.0) == [Retransmit(TRYING_100)]
    assert txn.send_response(183, PROGRESS_183, 1.5) == []
    assert txn.state is S.PROCEEDING
    assert txn.on_retransmission(2.0) == [Retransmit(PROGRESS_183)]
    assert txn.deadline is None


@pytest.mark.parametrize("provisional_first", [False, True])
def test_final_completes_and_starts_timer_j_64_t1(provisional_first: bool) -> None:
    """RFC 3261 17.2.2: 200-699 in Trying or Proceeding -> Completed, Timer J = 64*T1 on an
    unreliable transport; Timer J fires -> Terminated."""
    txn = nist()
    if provisional_first:
        txn.send_response(100, TRYING_100, 0.5)
    assert txn.send_response(200, OK_200, 1.0) == []
    assert txn.state is S.COMPLETED
    assert txn.deadline == 33.0
    assert run_timers(txn, until=1000.0) == [(33.0, [Terminated()])]
    assert txn.state is S.TERMINATED


def test_timer_j_is_zero_on_reliable_transport() -> None:
    """RFC 3261 17.2.2: Timer J = 0 s for reliable transports: due at once."""
    txn = nist(reliable=True)
    assert txn.send_response(404, NOT_FOUND_404, 1.0) == []
    assert txn.deadline == 1.0
    assert txn.on_timer(1.0) == [Terminated()]


def test_custom_t1_sets_timer_j_to_6_4_s() -> None:
    """RFC 3261 Table 4: Timer J = 64*T1 on UDP, so t1=0.1 gives 6.4 s."""
    txn = nist(timers=TimerConfig(t1=0.1))
    txn.send_response(200, OK_200, 0.0)
    assert txn.deadline == 6.4


def test_request_retransmission_in_completed_resends_the_final() -> None:
    """RFC 3261 17.2.2: a retransmission in Completed gets the final response again; Timer J
    is not restarted."""
    txn = nist()
    txn.send_response(200, OK_200, 1.0)
    assert txn.on_retransmission(2.0) == [Retransmit(OK_200)]
    assert txn.on_retransmission(3.0) == [Retransmit(OK_200)]
    assert txn.deadline == 33.0


def test_further_responses_in_completed_are_discarded() -> None:
    """RFC 3261 17.2.2: "Any other final responses passed by the TU to the server transaction
    MUST be discarded while in the Completed state"."""
    txn = nist()
    txn.send_response(200, OK_200, 1.0)
    assert txn.send_response(500, ERROR_500, 2.0) == []
    assert txn.send_response(100, TRYING_100, 2.0) == []
    assert txn.last_response == OK_200
    assert txn.state is S.COMPLETED
    assert txn.deadline == 33.0


@pytest.mark.parametrize("state", [S.TRYING, S.PROCEEDING, S.COMPLETED])
def test_transport_error_terminates_non_invite_server_in_every_state(
    state: TransactionState,
) -> None:
    """RFC 3261 17.2.4: the transport cannot send the response -> Terminated at once."""
    txn = nist()
    if state is S.PROCEEDING:
        txn.send_response(100, TRYING_100, 0.0)
    elif state is S.COMPLETED:
        txn.send_response(200, OK_200, 0.0)
    assert txn.state is state
    assert txn.on_transport_error(1.0) == [Terminated()]
    assert txn.state is S.TERMINATED
    assert txn.deadline is None
    assert txn.on_retransmission(1.0) == []


def test_server_transactions_use_slots() -> None:
    """RFC 3261 17 (performance): thousands live at once, no per-instance __dict__."""
    assert not hasattr(ist(), "__dict__")
    assert not hasattr(nist(), "__dict__")


def test_ack_never_moves_a_non_invite_server_transaction() -> None:
    """RFC 3261 17.2.3: an ACK only matches INVITE server transactions; a non-INVITE one
    ignores it in every state."""
    txn = nist()
    assert txn.on_ack(0.5) == []
    txn.send_response(200, OK_200, 1.0)
    assert txn.on_ack(1.5) == []
    assert txn.state is S.COMPLETED
    assert txn.deadline == 33.0


def test_accepted_and_confirmed_keep_no_response() -> None:
    """RFC 6026 7.1 (Accepted absorbs INVITE retransmissions; the TU passes each 2xx) and
    RFC 3261 17.2.1 (Confirmed only absorbs ACKs): neither resends a response, so neither
    keeps one, not even in the Retransmit built for a retransmitted INVITE or Timer G; a
    non-INVITE Completed keeps its final for a retransmitted request (17.2.2)."""
    accepted = ist()
    accepted.send_response(180, RINGING_180, 1.0)
    assert accepted.on_retransmission(1.5) == [Retransmit(RINGING_180)]
    accepted.send_response(200, OK_200, 2.0)
    assert accepted.last_response is None
    confirmed = ist()
    confirmed.send_response(486, BUSY_486, 1.0)
    assert confirmed.on_timer(1.5) == [Retransmit(BUSY_486)]  # Timer G
    confirmed.on_ack(2.0)
    assert confirmed.state is S.CONFIRMED
    assert confirmed.last_response is None
    completed = nist()
    completed.send_response(200, OK_200, 1.0)
    assert completed.on_retransmission(2.0) == [Retransmit(OK_200)]
