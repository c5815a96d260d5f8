"""The core's counters, the per-call summary, upstream probing and dialog tracking, with the
fake clock of core_harness (no sockets)."""

from __future__ import annotations

from proxy.core.observe.metrics import BUCKETS, CallLog
from proxy.core.probe import Probe
from proxy.core.types import Source
from proxy.sip import parse_message
from proxy.transaction import TimerConfig
from tests.unit.core_harness import (
    CALLER,
    UP1,
    UP2,
    Harness,
    methods,
    own_route,
    request,
    response_to,
    statuses,
)

PBX = Source("udp", "127.0.0.1", 5080)
PBX2 = Source("udp", "127.0.0.1", 5081)


def last_to(h: Harness, port: int, method: str) -> bytes:
    sends = [s for s in h.sent if s.port == port and s.data.startswith(method.encode())]
    assert sends, f"no {method} reached port {port}"
    return sends[-1].data


def test_a_603_stop_counts_request_response_decision_and_logs_the_call() -> None:
    h = Harness.make()
    h.feed(request())
    h.now += 0.3
    fx = h.core.on_message(response_to(last_to(h, 5080, "INVITE"), 603), PBX, h.now)
    h.take(fx)
    m = h.core.metrics
    assert m.requests["INVITE"] == 1
    assert m.responses[603] == 1
    assert m.decisions[("global-failure", "stop")] == 1
    assert m.final_count == 1 and abs(m.final_sum - 0.3) < 1e-9
    assert sum(m.buckets) == 1 and m.buckets[BUCKETS.index(0.5)] == 1
    [line] = fx.logs
    assert isinstance(line, CallLog)
    assert line.call_id == "call-1@caller" and line.status == 603
    assert line.targets == ("sip:127.0.0.1:5080",)
    assert line.decisions == (("global-failure", "stop", 603),)
    assert "Call-ID=call-1@caller" in line.text() and "global-failure:stop(603)" in line.text()
    assert line.fields()["decisions"] == [{"rule": "global-failure", "action": "stop",
                                           "status": 603}]


def test_failover_is_in_the_call_line_with_both_targets_and_decisions() -> None:
    h = Harness.make()
    h.feed(request())
    h.feed(response_to(last_to(h, 5080, "INVITE"), 503), PBX)
    fx = h.core.on_message(response_to(last_to(h, 5081, "INVITE"), 200), PBX2, h.now)
    [line] = fx.logs
    assert line.targets == ("sip:127.0.0.1:5080", "sip:127.0.0.1:5081")
    assert line.decisions == (("unavailable", "failover", 503),)
    assert line.status == 200
    assert h.core.metrics.decisions[("unavailable", "failover")] == 1


def test_only_the_first_final_counts_and_non_invites_get_no_call_line() -> None:
    h = Harness.make()
    h.feed(request())
    inv = last_to(h, 5080, "INVITE")
    h.feed(response_to(inv, 200), PBX)
    fx = h.core.on_message(response_to(inv, 200), PBX, h.now)  # a 2xx retransmission
    assert fx.logs == ()
    assert h.core.metrics.responses[200] == 1
    fx = h.core.on_message(request("OPTIONS", "sip:127.0.0.1:5060", branch="z9hG4bKo1",
                                    call_id="o1"), CALLER, h.now)
    assert fx.logs == () and h.core.metrics.responses[200] == 2
    assert h.core.metrics.requests["OPTIONS"] == 1
    # no server transaction keeps its request once its final response is sent (memory, and
    # the garbage collector's young passes: see test_core_memory)
    entries = list(h.core.table.servers())
    assert len(entries) == 2 and [e.request for e in entries] == [None, None]


def test_only_an_invite_keeps_its_request_until_its_final() -> None:
    """The request is kept for the call line and the time to final; a REGISTER storm must not
    hold 50,000 messages for Timer J."""
    h = Harness.make()
    h.feed(request())
    h.feed(request("OPTIONS", "sip:127.0.0.1:5060", branch="z9hG4bKo1", call_id="o1"))
    entries = list(h.core.table.servers())
    assert [e.txn.is_invite for e in entries] == [True, False]
    assert [e.request is not None for e in entries] == [True, False]


def test_unknown_methods_share_one_label_and_bad_messages_have_reasons() -> None:
    h = Harness.make()
    h.feed(request("FOOBAR", branch="z9hG4bKf1", call_id="f1"))
    assert h.core.metrics.requests["other"] == 1
    h.feed(b"this is not SIP\r\n\r\n")
    assert h.core.metrics.bad["unparsable"] == 1
    h.feed(request(max_forwards=None, extra=("Proxy-Require: nope",), branch="z9hG4bKb2",
                   call_id="b2"))
    assert h.core.metrics.bad["invalid_request"] == 1


# ------------------------------------------------------------------ probing


def probe_harness(interval: float = 10.0, timeout: float = 1.0) -> Harness:
    return Harness.make(probe_interval=interval, probe_timeout=timeout,
                        timers=TimerConfig(t1=0.5))


def options_to(out: list, port: int) -> list:  # type: ignore[type-arg]
    return [s for s in out if s.port == port and s.data.startswith(b"OPTIONS")]


def test_probes_go_to_every_upstream_and_any_answer_keeps_it_up() -> None:
    h = probe_harness()
    out = h.take(h.core.start_probes(h.now))
    [p1] = options_to(out, 5080)
    [p2] = options_to(out, 5081)
    assert isinstance(p1.token, Probe)
    msg = parse_message(p1.data)
    assert msg.method == "OPTIONS" and msg.request_uri == "sip:127.0.0.1:5080"
    # a 404 and a 501 are answers: alive
    h.feed(response_to(p1.data, 404), PBX)
    h.feed(response_to(p2.data, 501), PBX2)
    h.advance(5)
    assert h.core.prober.up == {UP1: True, UP2: True}
    # the next round comes after the interval
    out = h.advance(5)
    assert len(options_to(out, 5080)) == 1 and len(options_to(out, 5081)) == 1


def test_silence_marks_down_routing_skips_it_and_an_answer_brings_it_back() -> None:
    h = probe_harness(interval=1.0, timeout=1.0)
    out = h.take(h.core.start_probes(h.now))
    h.feed(response_to(options_to(out, 5081)[0].data, 200), PBX2)
    out = h.advance(0.6)
    assert len(options_to(out, 5080)) == 1  # UDP retransmission at T1
    h.advance(0.5)
    assert h.core.prober.up[UP1] is False and h.core.prober.up[UP2] is True
    # a call now goes straight to the second upstream
    h.sent.clear()
    h.feed(request())
    assert methods(h.to(5080)) == [] and methods(h.to(5081)) == ["INVITE"]
    # the next probe of UP1 is answered: up again
    out = h.advance(1.0)
    p = options_to(out, 5080)[-1]
    h.feed(response_to(p.data, 200), PBX)
    assert h.core.prober.up[UP1] is True


def test_all_down_tries_all_and_a_transport_error_is_down() -> None:
    h = probe_harness(interval=1.0, timeout=1.0)
    out = h.take(h.core.start_probes(h.now))
    h.take(h.core.on_send_failure(options_to(out, 5080)[0].token, h.now))
    assert h.core.prober.up[UP1] is False
    h.advance(1.01)
    assert h.core.prober.up == {UP1: False, UP2: False}
    h.sent.clear()
    h.feed(request())
    assert methods(h.to(5080)) == ["INVITE"]


def test_probing_off_sends_nothing() -> None:
    h = Harness.make()
    assert h.take(h.core.start_probes(h.now)) == []
    assert h.core.next_deadline() is None


# ------------------------------------------------------------------ dialogs


def test_a_2xx_opens_a_dialog_and_a_bye_closes_it() -> None:
    h = Harness.make()
    h.feed(request())
    h.feed(response_to(last_to(h, 5080, "INVITE"), 200), PBX)
    assert len(h.core.dialogs) == 1
    bye = request("BYE", "sip:bob@127.0.0.1:5080", branch="z9hG4bKbye1", cseq=2,
                  to_tag="callee1", extra=(f"Route: {own_route(h)}",))
    h.feed(bye)
    assert len(h.core.dialogs) == 0
    assert methods(h.to(5080))[-1] == "BYE"


def test_a_dialog_closes_after_its_idle_bound_and_draining_keeps_relaying_it() -> None:
    h = Harness.make(timers=TimerConfig(timer_c=200.0))
    h.feed(request())
    h.feed(response_to(last_to(h, 5080, "INVITE"), 200), PBX)
    h.core.drain(h.now)
    out = h.feed(request(branch="z9hG4bKnew", call_id="new-call"))
    assert 503 in statuses(h.to(6000, out))
    info = request("INFO", "sip:bob@127.0.0.1:5080", branch="z9hG4bKinfo", cseq=2,
                   to_tag="callee1", extra=(f"Route: {own_route(h)}",))
    h.advance(150)
    h.feed(info)
    assert methods(h.to(5080))[-1] == "INFO"
    h.advance(150)
    assert len(h.core.dialogs) == 1  # refreshed by the INFO
    h.advance(60)
    assert len(h.core.dialogs) == 0


def test_a_followed_301_counts_followed_and_learned() -> None:
    h = Harness.make()
    h.feed(request())
    h.feed(response_to(last_to(h, 5080, "INVITE"), 301,
                       extra=("Contact: <sip:bob@127.0.0.1:5081>",)), PBX)
    m = h.core.metrics
    assert m.redirects["followed"] == 1 and m.redirects["learned"] == 1
    assert m.decisions[("moved-permanently", "redirect")] == 1
