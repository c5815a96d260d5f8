"""The UDP flood gate (limits.udp_flood_rps, proxy/transport/udp_gate.py), sans-IO with a fake
clock, and the UDP endpoint in front of which it sits (its datagrams handed to a recording
``deliver``, no socket): a source far over the rate is dropped before its datagrams are
parsed, one log line per episode, while every other source is served; the upstreams and
trusted relays are never held back; the table is bounded."""

from __future__ import annotations

import logging

import pytest

from proxy.transport.base import Source
from proxy.transport.udp import UdpEndpoint
from proxy.transport.udp_gate import ADMIT, DROP, ENDED, STARTED, FloodGate

STRANGER = "127.0.0.2"
CALLER = "127.0.0.1"


def verdicts(gate: FloodGate, host: str, n: int, now: float, port: int = 5060) -> list[int]:
    return [gate.admit(host, port, now) for _ in range(n)]


def test_a_source_over_the_rate_is_dropped_and_another_is_served() -> None:
    gate = FloodGate(100)
    got = verdicts(gate, STRANGER, 1000, 10.0)
    assert got[:100] == [ADMIT] * 100
    assert got[100] == STARTED  # one verdict a caller logs: the episode starts
    assert got[101:] == [DROP] * 899
    assert (gate.dropped, gate.episodes) == (900, 1)
    assert gate.blocked(STRANGER)
    # meanwhile a caller on another address is admitted, and counted on its own
    assert verdicts(gate, CALLER, 100, 10.5) == [ADMIT] * 100
    assert not gate.blocked(CALLER)


def test_a_flood_that_goes_on_stays_dropped_and_one_that_stops_is_admitted_again() -> None:
    gate = FloodGate(100)
    verdicts(gate, STRANGER, 500, 0.0)
    # the next windows still over the rate: every datagram dropped, no new episode
    for second in range(1, 5):
        assert set(verdicts(gate, STRANGER, 500, float(second))) == {DROP}
    assert gate.episodes == 1 and gate.dropped == 400 + 4 * 500
    # a window at the rate (100 in [5, 6)), then the next datagram ends the episode
    assert set(verdicts(gate, STRANGER, 100, 5.0)) == {DROP}
    assert gate.admit(STRANGER, 5060, 6.0) == ENDED
    key, since, last, dropped = gate.ended
    assert (key, since, last, dropped) == (STRANGER, 0.0, 5.0, 400 + 4 * 500 + 100)
    assert not gate.blocked(STRANGER)
    assert set(verdicts(gate, STRANGER, 99, 6.5)) == {ADMIT}


def test_a_flooder_that_falls_silent_is_admitted_after_a_quiet_window() -> None:
    gate = FloodGate(10)
    verdicts(gate, STRANGER, 50, 0.0)
    assert gate.admit(STRANGER, 5060, 0.9) == DROP
    # its last window was over the rate, but a whole window passed without a datagram
    assert gate.admit(STRANGER, 5060, 2.5) == ENDED
    assert gate.admit(STRANGER, 5060, 2.6) == ADMIT


def test_within_one_window_the_count_does_not_restart() -> None:
    gate = FloodGate(10, window=1.0)
    assert set(verdicts(gate, STRANGER, 10, 0.0)) == {ADMIT}
    assert gate.admit(STRANGER, 5060, 0.99) == STARTED  # the 11th within the same second
    gate2 = FloodGate(10, window=1.0)
    assert set(verdicts(gate2, STRANGER, 10, 0.0)) == {ADMIT}
    assert set(verdicts(gate2, STRANGER, 10, 1.0)) == {ADMIT}  # a new window: 10 more


def test_upstreams_and_trusted_relays_are_exempt_and_asked_once_a_window() -> None:
    asked: list[tuple[str, int]] = []

    def exempt(host: str, port: int) -> bool:
        asked.append((host, port))
        return host == "192.0.2.10"

    gate = FloodGate(100, exempt=exempt)
    assert set(verdicts(gate, "192.0.2.10", 5000, 1.0, port=5080)) == {ADMIT}
    assert asked == [("192.0.2.10", 5080)]  # once, when it crossed the rate
    assert set(verdicts(gate, "192.0.2.10", 5000, 2.0)) == {ADMIT}
    assert len(asked) == 2  # once again in the next window (an upstream may change)
    assert STARTED in verdicts(gate, STRANGER, 200, 2.0)
    assert gate.episodes == 1 and not gate.blocked("192.0.2.10")


def test_an_ipv6_host_counts_per_64_and_an_ipv4_host_per_address() -> None:
    gate = FloodGate(100)
    # 100 addresses of one /64, one datagram each: one source over the rate
    got = [gate.admit(f"2001:db8:1:2::{i:x}", 5060, 0.0) for i in range(1, 102)]
    assert got[-1] == STARTED and set(got[:-1]) == {ADMIT}
    assert gate.blocked("2001:db8:1:2:ffff::1")  # another address of the same /64
    assert not gate.blocked("2001:db8:1:3::1")  # the next /64 is another host
    assert gate.admit("2001:db8:1:3::1", 5060, 0.0) == ADMIT
    assert gate.key("2001:db8:1:2::7") == "2001:db8:1:2::/64"
    # IPv4: each address its own source
    assert {gate.admit(f"10.0.0.{i}", 5060, 0.0) for i in range(1, 200)} == {ADMIT}


def test_the_table_is_bounded_and_an_episode_outlives_calm_sources() -> None:
    gate = FloodGate(5, max_sources=100)
    verdicts(gate, STRANGER, 50, 0.0)
    for i in range(10_000):
        gate.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5060, 2.0 + i * 1e-3)
        assert len(gate) <= 100
    # the calm ones went first; a flooder forgotten only when nothing calm is left
    gate2 = FloodGate(5, max_sources=100)
    verdicts(gate2, STRANGER, 50, 0.0)
    for i in range(50):
        gate2.admit(f"10.0.0.{i}", 5060, 1.5)
    assert gate2.blocked(STRANGER)


def test_rate_zero_turns_the_gate_off() -> None:
    gate = FloodGate(0)
    assert not gate
    assert set(verdicts(gate, STRANGER, 10_000, 0.0)) == {ADMIT}
    assert len(gate) == 0


# ----------------------------------------------------------------------------- the endpoint


def invite(i: int) -> bytes:
    return (f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {STRANGER}:5060;"
            f"branch=z9hG4bK{i}\r\nCall-ID: c{i}\r\nCSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_the_endpoint_drops_a_flood_before_delivering_it_and_logs_one_line_per_episode(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("proxy.transport.udp.monotonic", lambda: clock[0])
    delivered: list[Source] = []
    kept: list[Source] = []
    gate = FloodGate(50)
    ep = UdpEndpoint(lambda data, src: delivered.append(src), kept.append, gate=gate)
    with caplog.at_level(logging.WARNING, logger="proxy.transport.udp"):
        for i in range(5000):
            ep.datagram_received(invite(i), (STRANGER, 5062))
            if i % 100 == 0:
                ep.datagram_received(invite(i), (CALLER, 5060))  # a legitimate caller
        ep.datagram_received(b"\r\n\r\n", (STRANGER, 5062))  # its keep-alives count too
    assert sum(1 for s in delivered if s.host == STRANGER) == 50
    assert sum(1 for s in delivered if s.host == CALLER) == 50  # every one of the caller's
    assert kept == []  # the stranger's keep-alive was dropped before anything
    assert gate.dropped == 4951
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert f"dropping the datagrams of {STRANGER} before they are parsed" in lines[0]
    assert "limits.udp_flood_rps" in lines[0]
    # a second later, quiet: its next datagram is delivered and the episode's end is logged
    clock[0] = 102.5
    with caplog.at_level(logging.WARNING, logger="proxy.transport.udp"):
        ep.datagram_received(invite(9999), (STRANGER, 5062))
    assert delivered[-1].host == STRANGER
    end = caplog.records[-1].getMessage()
    assert f"datagrams of {STRANGER} admitted again: 4951 dropped" in end


def test_the_endpoint_without_a_gate_delivers_everything() -> None:
    delivered: list[Source] = []
    ep = UdpEndpoint(lambda data, src: delivered.append(src), gate=FloodGate(0))
    for i in range(3000):
        ep.datagram_received(invite(i), (STRANGER, 5062))
    assert len(delivered) == 3000
