"""Starting the runtime: configuration problems found only at start-up end with a clear
FILE:LINE:COLUMN message and exit 1, never a traceback. (No socket is bound: both fail before listening.)"""

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
