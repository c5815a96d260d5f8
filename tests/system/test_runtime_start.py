"""Starting the runtime, in a process of its own: configuration problems found only at
start-up end with a clear FILE:LINE:COLUMN message and exit 1, never a traceback (no socket
is bound: both fail before listening); the file-descriptor soft limit is raised to the hard
limit and logged (every TCP/TLS connection is a descriptor: limits.tcp_max_connections needs
as many)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(body)
    return subprocess.run([sys.executable, "-m", "proxy", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=20, cwd=ROOT)


def test_an_unusable_redis_state_is_refused_cleanly(tmp_path: Path) -> None:
    res = run(tmp_path, "listen: [udp:127.0.0.1:45999]\nstate: redis+cluster://127.0.0.1\n")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert f"{tmp_path / 'proxy.yaml'}:2:8: state redis+cluster://127.0.0.1: seed" in res.stderr


def test_tls_listener_with_a_broken_certificate_is_refused_cleanly(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    res = run(tmp_path, "listen: [tls:127.0.0.1:45998]\ntls: {cert_file: c.pem, key_file: c.pem}\n"
                        "state: \"memory:\"\n")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert f"{tmp_path / 'proxy.yaml'}:1:1: tls: [SSL]" in res.stderr


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
