"""The runtime raises its file-descriptor soft limit to the hard limit at start and logs it
(every TCP/TLS connection is a descriptor: limits.tcp_max_connections needs as many), and
gives the heap of closed connections back (MemoryTrim)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.runtime.limits import MemoryTrim, _malloc_trim

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, resource, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
from proxy.runtime.limits import raise_nofile
got = raise_nofile(hard + 1 if hard != resource.RLIM_INFINITY else 10)
print("RESULT", got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_soft_limit_is_raised_to_the_hard_limit_and_logged() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=30, cwd=ROOT).stdout
    result = [line for line in out.splitlines() if line.startswith("RESULT")]
    assert result, out
    _, got, soft, hard = result[0].split()
    assert got == soft
    if hard != str(2**64 - 1) and int(hard) > 256:
        assert int(soft) == int(hard)
        assert f"INFO file descriptors: soft limit {hard}" in out
        assert "WARNING file descriptor limit" in out  # wanted one more than the hard limit


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
