"""Policy reload (SIGHUP / watch_policy): atomic; a broken file leaves the old policy in force."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from proxy.policy import BUILTIN_POLICY, load_policy
from proxy.runtime.watchers import FileWatcher, reload_policy

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


def test_a_good_file_replaces_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    old, _ = load_policy(path)
    path.write_text(OTHER)
    new = reload_policy(path, old)
    assert new is not None
    assert new.version != old.version
    assert [r.name for r in new.rules] == ["unavailable"]


def test_a_broken_file_leaves_the_old_policy_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    old, _ = load_policy(path)
    path.write_text("rules:\n  - name: broken\n    match: {status: 99}\n    action: explode\n")
    with caplog.at_level(logging.ERROR, logger="proxy"):
        assert reload_policy(path, old) is None
    assert f"version {old.version} stays in force" in caplog.text
    assert "policy.yaml" in caplog.text  # the diagnostics name the file
    path.write_text("rules: [")  # not even YAML
    assert reload_policy(path, old) is None


def test_a_missing_file_or_none_keeps_the_policy(tmp_path: Path) -> None:
    assert reload_policy(tmp_path / "gone.yaml", BUILTIN_POLICY) is None
    assert reload_policy(None, BUILTIN_POLICY) is None


def test_the_same_version_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    old, _ = load_policy(path)
    assert reload_policy(path, old) is None


def test_file_watcher_calls_back_on_change_only(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    calls: list[int] = []
    w = FileWatcher(path, lambda: calls.append(1))
    assert not w.check() and calls == []
    path.write_text(OTHER)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert w.check() and calls == [1]
    assert not w.check() and calls == [1]
    path.unlink()  # mid-rename: no change, no call
    assert not w.check() and calls == [1]
    assert not FileWatcher(None, lambda: calls.append(2)).check()
