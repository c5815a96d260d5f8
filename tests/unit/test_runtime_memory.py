"""The collector policy of the running proxy (proxy.runtime.memory): no automatic full
passes, small young collections, and one full pass per interval that reports what it found,
put off while the proxy holds many calls (the pass would stall every one of them)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest

from proxy.runtime.memory import (
    MAX_PUT_OFF,
    OLD,
    QUIET_TRANSACTIONS,
    RETRY_INTERVAL,
    YOUNG,
    YOUNG_INTERVAL,
    GcPolicy,
)


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.enable()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_start_freezes_and_turns_automatic_full_passes_off(restore_gc: None) -> None:
    policy = GcPolicy(asyncio.get_running_loop(), interval=3600)
    policy.start()
    try:
        assert gc.get_threshold() == (*YOUNG, OLD)
        assert gc.get_freeze_count() > 0
        assert policy._handle is not None
    finally:
        policy.stop()
    assert policy._handle is None


async def test_the_periodic_full_pass_finds_cycles_logs_and_rearms(
    restore_gc: None, caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    policy = GcPolicy(loop, interval=600)
    policy.start()
    try:
        first = policy._handle
        assert first is not None and first.when() == pytest.approx(loop.time() + 600, abs=1)
        gc.disable()  # no young collection may find the cycle first
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b  # a cycle: only the collector frees it
        with caplog.at_level(logging.INFO, logger="proxy.runtime"):
            found = policy.full_pass()
        assert found >= 2 and policy.found == found and policy.passes == 1
        assert f"garbage collection: full pass, {found} unreachable objects" in caplog.text
        nxt = policy._handle
        assert nxt is not None and nxt is not first  # the next pass is armed
        assert nxt.when() == pytest.approx(loop.time() + 600, abs=1)
    finally:
        policy.stop()


async def test_the_full_pass_waits_while_many_calls_are_held(
    restore_gc: None, caplog: pytest.LogCaptureFixture,
) -> None:
    """Over 900,000 objects of calls in flight a full pass stalls the loop for about a second
    (UDP peers retransmit, RFC 3261 17.1.1.2): above QUIET_TRANSACTIONS it is put off,
    retried every RETRY_INTERVAL, logged once per interval, and runs once the load dips."""
    loop = asyncio.get_running_loop()
    held = [QUIET_TRANSACTIONS + 1]
    policy = GcPolicy(loop, interval=600, load=lambda: held[0])
    policy.start()
    try:
        gc.disable()
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        with caplog.at_level(logging.INFO, logger="proxy.runtime"):
            assert policy.due() is None
            assert policy.due() is None  # retried: not logged again within the interval
        assert policy.passes == 0 and policy.put_off == 2
        assert caplog.text.count("full pass put off") == 1
        retry = policy._handle
        assert retry is not None and retry.when() == pytest.approx(loop.time() + RETRY_INTERVAL,
                                                                   abs=1)
        held[0] = QUIET_TRANSACTIONS
        found = policy.due()
        assert found is not None and found >= 2 and policy.passes == 1
        nxt = policy._handle
        assert nxt is not None and nxt.when() == pytest.approx(loop.time() + 600, abs=1)
    finally:
        policy.stop()


async def test_young_passes_run_by_the_clock(restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """At steady state expiring calls free as much as new ones allocate, so the gen-0 count
    stops reaching its threshold and the young generations grow: a pass of generations 0 and
    1 also runs every YOUNG_INTERVAL seconds, and stops with the policy."""
    loop = asyncio.get_running_loop()
    policy = GcPolicy(loop, interval=600)
    policy.start()
    passes: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: passes.append(generation) or 0)
    try:
        young = policy._young
        assert young is not None
        assert young.when() == pytest.approx(loop.time() + YOUNG_INTERVAL, abs=0.1)
        policy.young_pass()
        assert passes == [1] and policy.young_passes == 1
        assert policy._young is not None and policy._young is not young
    finally:
        policy.stop()
    assert policy._young is None and policy._handle is None


async def test_a_pass_put_off_for_max_put_off_runs_whatever_the_load(
    restore_gc: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy that is never quiet still runs the full pass: once it has been put off for
    MAX_PUT_OFF seconds it runs with the load as it is, logged with what it waited."""
    loop = asyncio.get_running_loop()
    policy = GcPolicy(loop, interval=600, load=lambda: QUIET_TRANSACTIONS * 10)
    policy.start()
    clock = [1000.0]  # whole seconds: the sums below are exact
    monkeypatch.setattr(policy.loop, "time", lambda: clock[0])
    try:
        gc.disable()
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert policy.due() is None
        clock[0] += MAX_PUT_OFF - 1
        assert policy.due() is None and policy.passes == 0
        clock[0] += 1
        with caplog.at_level(logging.INFO, logger="proxy.runtime"):
            found = policy.due()
        assert found is not None and found >= 2 and policy.passes == 1
        assert f"put off for {MAX_PUT_OFF:.0f} s, runs with" in caplog.text
        clock[0] += 600
        assert policy.due() is None  # the next one waits afresh
    finally:
        policy.stop()
