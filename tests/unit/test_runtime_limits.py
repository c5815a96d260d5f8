"""The runtime gives the heap of closed connections back (MemoryTrim). (Raising the
file-descriptor soft limit at start changes the process's limits: it runs in a process of its
own, tests/system/test_runtime_start.py.)"""

from __future__ import annotations

import pytest

from proxy.runtime.limits import MemoryTrim, _malloc_trim

# ------------------------------------------------------------------ MemoryTrim


class FakeHandle:
    def cancel(self) -> None:
        pass


class FakeLoop:
    """Only what MemoryTrim uses of a loop: call_later, which never runs on its own (the test
    calls check() as the timer would)."""

    def call_later(self, delay: float, cb: object) -> FakeHandle:
        return FakeHandle()


def test_memory_is_trimmed_after_a_burst_of_closed_connections_and_when_it_is_over() -> None:
    closed = [0]
    trims: list[int] = []
    mt = MemoryTrim(FakeLoop(), lambda: closed[0], after=100,  # type: ignore[arg-type]
                    trim=lambda pad: trims.append(pad) or 1)
    assert not mt.check()  # nothing closed
    closed[0] = 150
    assert mt.check() and trims == [0]  # a burst: at once
    closed[0] = 180
    assert not mt.check()  # 30 more, and still closing
    assert mt.check() and mt.trims == 2  # none in the last interval: the burst is over
    assert not mt.check() and not mt.check()  # nothing new: nothing to give back
    mt.stop()


def test_glibc_malloc_trim_is_found() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's; elsewhere MemoryTrim does nothing")
    assert _malloc_trim() is not None
