"""The runtime raises its file-descriptor soft limit to the hard limit at start and logs it
(every TCP/TLS connection is a descriptor: limits.tcp_max_connections needs as many)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
