"""What the hypothesis suite (test_fuzz_properties.py) found in the core, as plain regressions.

1. A branch that got a provisional response and then went silent: Timer C CANCELled it, the
   CANCEL timed out, and the INVITE client transaction (and the caller's server transaction)
   lived for ever; the caller never got a final answer. RFC 3261 9.1: 64*T1 after the CANCEL
   without a final response, the INVITE is over (the branch ends as a 408).
2. A late non-2xx final for a branch whose transaction had ended (Timer B, failover to the
   next upstream) was forwarded statelessly: the caller got it, and later the real final
   answer of its request too. A stray non-2xx final is now dropped (RFC 6026 7.3).
"""

from __future__ import annotations

from proxy.core.types import Source
from tests.unit.core_harness import Harness, request, response_to, statuses

PBX = Source("udp", "127.0.0.1", 5080)


def test_silent_branch_after_timer_c_cancel_ends_and_leaks_nothing() -> None:
    h = Harness.make()
    out = h.feed(request())
    [inv] = [s.data for s in out if s.port == 5080]
    h.feed(response_to(inv, 180), PBX)
    out = h.advance(4000.0)
    assert b"CANCEL" in b"".join(s.data for s in out if s.port == 5080)
    finals = [st for st in statuses(h.to(6000, out)) if st >= 200]
    assert finals and len(set(finals)) == 1
    assert h.core.active_transactions == 0 and h.core.unanswered == 0
    assert h.core.stats["cancel_unanswered"] == 1


def test_stray_non_2xx_final_is_not_forwarded_next_to_the_real_one() -> None:
    h = Harness.make()
    out = h.feed(request())
    [first] = [s.data for s in out if s.port == 5080]
    out = h.advance(32.0)  # Timer B: 408 on the first upstream, failover to the second
    assert [s for s in out if s.port == 5081]
    out = h.feed(response_to(first, 301), PBX)  # the first upstream answers, too late
    assert h.to(6000, out) == []
    out = h.advance(4000.0)
    assert [st for st in statuses(h.to(6000, out)) if st >= 200][:1] == [408]
    assert h.core.active_transactions == 0
