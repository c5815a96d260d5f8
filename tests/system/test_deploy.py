"""The deployment files: the systemd unit verifies (where systemd-analyze exists) and the
Grafana dashboard loads and names only metrics the proxy exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from proxy.config import load_config
from proxy.runtime.metrics import CoreCollector
from tests.unit.core_harness import Harness

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "sip-policy-proxy.service"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"


def exported_names() -> set[str]:
    """Every sample name the proxy's collector can produce (counters with ``_total``,
    histograms with ``_bucket``/``_sum``/``_count``)."""
    names: set[str] = set()
    for fam in CoreCollector(Harness.make().core, Counter(), 0.0).collect():
        if isinstance(fam, CounterMetricFamily):
            names.add(fam.name + "_total")
        elif isinstance(fam, HistogramMetricFamily):
            names.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(fam.name)
    return names


def test_the_unit_has_what_operators_rely_on() -> None:
    text = UNIT.read_text()
    assert re.search(r"^Type=(simple|notify)$", text, re.MULTILINE)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", text, re.MULTILINE)
    assert re.search(r"^Restart=on-failure$", text, re.MULTILINE)
    assert re.search(r"^ExecStart=\S+/sip-policy-proxy run --config \S+$", text, re.MULTILINE)
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert stop > 30  # more than the default drain_timeout


def directive(text: str, name: str) -> str | None:
    m = re.search(rf"^{name}=(.*)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def example_config(text: str) -> str:
    """The proxy.yaml shown in the unit's comments (the indented ``#   key: value`` block)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   listen:"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    return "\n".join(block) + "\n"


def test_the_state_lives_where_protect_system_strict_lets_it_write(tmp_path: Path) -> None:
    """ProtectSystem=strict makes /etc read-only: a relative sqlite path beside the config in
    /etc cannot be written. The unit's example config keeps its state in StateDirectory."""
    text = UNIT.read_text()
    assert directive(text, "ProtectSystem") == "strict"
    state_dir = directive(text, "StateDirectory")
    assert state_dir == "sip-policy-proxy"
    assert directive(text, "WorkingDirectory") == f"/var/lib/{state_dir}"
    example = example_config(text)
    m = re.search(r"^state: sqlite:(\S+)$", example, re.MULTILINE)
    assert m is not None, example
    state = Path(m.group(1))
    assert state.is_absolute() and state.parent == Path("/var/lib") / state_dir
    assert not any(w.startswith(("ReadWritePaths", "ReadOnlyPaths")) for w in text.split())
    # the example is a configuration the proxy accepts (paths moved into tmp_path)
    (tmp_path / "policy.yaml").write_text((ROOT / "policies" / "default.yaml").read_text())
    (tmp_path / "proxy.yaml").write_text(example.replace(str(state), str(tmp_path / "state.db")))
    config, _ = load_config(tmp_path / "proxy.yaml")
    assert config.state == f"sqlite:{tmp_path / 'state.db'}"
    assert config.http == ("127.0.0.1", 9090)


def test_no_documentation_line_names_a_file_a_pip_install_does_not_create() -> None:
    """A pip install puts no documentation at a fixed path and ships no man page: the unit
    has no Documentation= (its comment says why) rather than one that names nothing."""
    text = UNIT.read_text()
    assert directive(text, "Documentation") is None
    assert "No Documentation= line" in text


def test_the_install_steps_create_what_the_unit_names() -> None:
    text = UNIT.read_text()
    exec_start = directive(text, "ExecStart")
    assert exec_start is not None
    exe, _, rest = exec_start.partition(" ")
    venv = str(Path(exe).parent.parent)
    assert f"python3 -m venv {venv}" in text and f"{venv}/bin/pip install ." in text
    config = rest.split("--config ", 1)[1]
    assert f"install -d {Path(config).parent}" in text and config in text


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    # `make test` installs systemd-analyze (Debian's systemd, TEST_SYSDEPS); the issue asks
    # to skip cleanly only where it is not to be had (a bare `pytest` on another system).
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    # ExecStart must name an executable that exists: this checkout's entry point, which
    # `make venv` always installs.
    exe = Path(sys.executable).parent / "sip-policy-proxy"
    assert exe.exists(), f"{exe} is missing: run make venv"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/sip-policy-proxy/bin/sip-policy-proxy",
                                             str(exe)))
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0 and "System has not been booted with systemd" in out.stderr:
        # A container without systemd as PID 1 cannot verify units at all: nothing to assert.
        pytest.skip("systemd-analyze cannot verify without systemd: " + out.stderr.strip())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sip-policy-proxy" not in out.stderr, out.stderr


def test_the_dashboard_loads_and_names_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\bsip_policy_proxy_\w+", e)}
    exported = exported_names()
    assert used <= exported, used - exported
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for wanted in ("calls per second", "final responses", "policy decisions", "redirects",
                   "upstream up", "p50, p99"):
        assert wanted in titles, wanted
    assert any("histogram_quantile(0.99" in e for e in exprs)
    assert any("histogram_quantile(0.5" in e for e in exprs)
