"""Policy reload (SIGHUP / watch_policy): atomic; a broken file leaves the old policy in force;
an unchanged file is a no-op (one log line and one count per change, whichever triggers fire);
the file is read and parsed off the event loop, and bounded in size."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from proxy.policy import BUILTIN_POLICY, MAX_POLICY_BYTES, Policy, load_policy
from proxy.runtime.watchers import (
    MAX_LOGGED_DIAGNOSTICS,
    FileWatcher,
    PolicyReloader,
    read_policy,
)

GOOD = """rules:
  - name: busy
    match: {status: 486}
    action: stop
"""
OTHER = """rules:
  - name: unavailable
    match: {status: 503}
    action: failover
"""
BROKEN = "rules:\n  - name: broken\n    match: {status: 99}\n    action: explode\n"


def reloader(path: Path | None, policy: Policy) -> tuple[PolicyReloader, Counter[str],
                                                        list[Policy]]:
    counts: Counter[str] = Counter()
    applied: list[Policy] = []
    return PolicyReloader(path, policy, counts, applied.append), counts, applied


def started(path: Path, text: str) -> tuple[PolicyReloader, Counter[str], list[Policy]]:
    path.write_text(text)
    policy, _ = load_policy(path)
    return reloader(path, policy)


def touch_later(path: Path) -> None:
    """Move the mtime on, as a save does (the watcher compares mtime and size)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_a_good_file_replaces_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    r, counts, applied = started(path, GOOD)
    old = r.current
    path.write_text(OTHER)
    new = r.reload_now()
    assert new is not None and new.version != old.version
    assert [x.name for x in new.rules] == ["unavailable"]
    assert applied == [new] and r.current is new
    assert counts == Counter({"ok": 1})


def test_a_broken_file_leaves_the_old_policy_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    r, counts, applied = started(path, GOOD)
    old = r.current
    path.write_text(BROKEN)
    with caplog.at_level(logging.ERROR, logger="proxy"):
        assert r.reload_now() is None
    assert f"version {old.version} stays in force" in caplog.text
    assert "policy.yaml:4:" in caplog.text  # the diagnostics name the file and position
    path.write_text("rules: [")  # not even YAML
    assert r.reload_now() is None
    assert applied == [] and r.current is old
    assert counts == Counter({"refused": 2})


def test_a_missing_file_or_none_keeps_the_policy(tmp_path: Path) -> None:
    r, counts, applied = reloader(tmp_path / "gone.yaml", BUILTIN_POLICY)
    assert r.reload_now() is None
    assert counts == Counter({"refused": 1})
    assert reloader(None, BUILTIN_POLICY)[0].reload_now() is None
    assert applied == []


def test_the_same_content_is_a_no_op_neither_logged_nor_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    r, counts, applied = started(path, GOOD)
    touch_later(path)  # saved again with the same bytes
    with caplog.at_level(logging.INFO, logger="proxy"):
        assert r.reload_now() is None
    assert caplog.records == [] and counts == Counter() and applied == []


def test_a_broken_file_is_refused_once_and_its_repair_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    r, counts, _ = started(path, GOOD)
    old = r.current
    path.write_text(BROKEN)
    with caplog.at_level(logging.INFO, logger="proxy"):
        r.reload_now("SIGHUP")
        r.reload_now("file changed on disk")  # the same broken bytes: nothing again
    assert [rec.message for rec in caplog.records].count(
        f"policy reload refused; version {old.version} stays in force") == 1
    assert counts == Counter({"refused": 1})
    caplog.clear()
    path.write_text(GOOD)  # back to the file in force
    with caplog.at_level(logging.INFO, logger="proxy"):
        assert r.reload_now() is None
    assert f"policy file is valid again: version {old.version} stays in force" in caplog.text
    assert counts == Counter({"refused": 1, "ok": 1})


async def test_sighup_and_the_watcher_for_one_change_log_once_and_count_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue: one broken policy logged twice (signal and watcher), two `ok` for one
    reload. Both triggers now read the same bytes; the second is a no-op."""
    path = tmp_path / "policy.yaml"
    for text, result, line in ((BROKEN, "refused", "policy reload refused"),
                               (OTHER, "ok", "policy reloaded: ")):
        r, counts, applied = started(path, GOOD)
        watcher = FileWatcher(path, lambda r=r: r.request("file changed on disk"))
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="proxy"):
            path.write_text(text)
            touch_later(path)
            r.request("SIGHUP")  # the signal, then the watcher's next poll
            assert watcher.check()
            await wait_idle(r)
            r.request("SIGHUP")  # and once more after both are done
            await wait_idle(r)
        messages = [rec.message for rec in caplog.records]
        assert sum(line in m for m in messages) == 1, messages
        assert counts == Counter({result: 1})
        assert len(applied) == (1 if result == "ok" else 0)
        assert sum("unchanged since it was last read" in m for m in messages) == 2, messages


async def wait_idle(r: PolicyReloader) -> None:
    async with asyncio.timeout(30):
        while r.running is not None or r.again is not None:
            await asyncio.sleep(0.01)  # bounded poll: the reloader signals nothing when idle


async def test_a_change_during_a_reload_is_read_after_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    r, counts, applied = started(path, GOOD)
    path.write_text(OTHER)
    r.request("SIGHUP")
    assert r.running is not None
    saved = tmp_path / "policy.yaml.new"  # saved by rename: the read sees old or new bytes
    saved.write_text(GOOD.replace("486", "600"))
    os.replace(saved, path)
    r.request("SIGHUP")  # while the first runs: remembered, not lost
    await wait_idle(r)
    # the second version is in force: 600 is `busy` now, 486 is not
    assert r.current.evaluate(600, "INVITE").rule == "busy"
    assert r.current.evaluate(486, "INVITE").rule is None
    assert applied[-1] is r.current
    assert counts["ok"] >= 1 and counts["refused"] == 0


def test_a_file_over_the_bound_is_refused_at_1_1_naming_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    r, counts, _ = started(path, GOOD)
    path.write_bytes(b"# " + b"x" * (4 * MAX_POLICY_BYTES) + b"\n")
    reading = read_policy(path, r.last)
    assert [str(d).split(": ", 1)[0].rsplit(":", 2)[1:] for d in reading.errors] == [["1", "1"]]
    assert "more than the 1 MiB (1048576 bytes) allowed" in str(reading.errors[0])
    with caplog.at_level(logging.ERROR, logger="proxy"):
        assert r.reload_now() is None
    assert "1 MiB" in caplog.text and counts == Counter({"refused": 1})
    with pytest.raises(Exception) as info:
        load_policy(path)  # at start and in `check` alike
    assert "policy.yaml:1:1: the file is" in str(info.value)


def test_a_refused_file_logs_a_bounded_number_of_diagnostics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    r, _, _ = started(path, GOOD)
    path.write_text("".join(f"k{i}: v\n" for i in range(500)))  # 500 unknown keys
    total = len(read_policy(path, "").errors)
    assert total >= 500
    with caplog.at_level(logging.ERROR, logger="proxy"):
        r.reload_now()
    positioned = [rec for rec in caplog.records if "policy.yaml:" in rec.message]
    assert len(positioned) == MAX_LOGGED_DIAGNOSTICS
    assert f"... and {total - MAX_LOGGED_DIAGNOSTICS} more errors" in caplog.text


def slow_policy(size: int) -> str:
    """A valid policy file of about ``size`` bytes: thousands of rules (seconds to parse)."""
    out = ["rules:\n"]
    n, total = 0, 7
    while total < size - 100:
        rule = f"  - name: r{n}\n    match: {{status: {100 + n % 600}}}\n    action: forward\n"
        out.append(rule)
        total += len(rule)
        n += 1
    return "".join(out)


async def test_the_loop_runs_while_a_large_file_is_parsed(tmp_path: Path) -> None:
    """Parsing happens in a worker thread: the loop keeps running callbacks meanwhile."""
    path = tmp_path / "policy.yaml"
    r, _, applied = started(path, GOOD)
    path.write_text(slow_policy(MAX_POLICY_BYTES // 2))
    ticks = 0
    r.request("SIGHUP")
    async with asyncio.timeout(60):
        while r.running is not None:
            await asyncio.sleep(0.005)  # each turn of the loop is what is counted
            ticks += 1
    assert ticks >= 10, ticks  # the loop turned many times during the parse
    assert len(applied) == 1 and len(applied[0].rules) > 1000


def test_file_watcher_calls_back_on_change_only(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    calls: list[int] = []
    w = FileWatcher(path, lambda: calls.append(1))
    assert not w.check() and calls == []
    path.write_text(OTHER)
    touch_later(path)
    assert w.check() and calls == [1]
    assert not w.check() and calls == [1]
    path.unlink()  # mid-rename: no change, no call
    assert not w.check() and calls == [1]
    assert not FileWatcher(None, lambda: calls.append(2)).check()
