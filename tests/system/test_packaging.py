"""Packaging and delivery files: Makefile, .ci/run, Dockerfile, docker-compose.yml, bench/.

These read the files as shipped and run the tools that consume them (Debian's
``docker-compose config``, which needs no Docker engine; ``make -n``), so a broken file fails
here rather than on an operator's machine. ``make test`` installs docker-compose when missing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.unit import bench_modules

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CONFIG_DIR = PurePosixPath("/etc/sip-policy-proxy")


def _compose_bin() -> str:
    found = shutil.which("docker-compose")
    assert found is not None, "docker-compose not on PATH: `make test` installs Debian's package"
    return found


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [_compose_bin(), "--project-directory", str(REPO), "-f", str(COMPOSE), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def _resolved_compose() -> dict[str, Any]:
    done = _compose("config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path for the service's bind mounts (short or long syntax)."""
    mounts: dict[str, str] = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) >= 2 and parts[0].startswith("/"):
                mounts[parts[1]] = parts[0]
        elif vol.get("type", "bind") == "bind" and str(vol.get("source", "")).startswith("/"):
            mounts[vol["target"]] = vol["source"]
    return mounts


def _published_ports(service: dict[str, Any]) -> set[int]:
    """Container ports of the service's port mappings (long syntax, or "HOST:CONTAINER/proto")."""
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            spec = str(entry).split(":")[-1].split("/")[0]
            first, _, last = spec.partition("-")
            ports.update(range(int(first), int(last or first) + 1))
    return ports


def _ipv4(service: dict[str, Any]) -> str:
    (net,) = service["networks"].values()
    address = net["ipv4_address"]
    assert isinstance(address, str)
    return address


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
                  for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


# ------------------------------------------------------------------------------- compose


def test_docker_compose_config_is_valid() -> None:
    done = _compose("config", "-q")
    assert done.returncode == 0, f"docker-compose config -q failed:\n{done.stderr}"


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    # The validation above means something only if the tool really checks the schema here.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  proxy:\n    image: 3\n    no_such_option: true\n")
    done = subprocess.run(
        [_compose_bin(), "-f", str(broken), "config", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0
    assert "no_such_option" in done.stderr


def test_compose_proxy_service_runs_the_image_with_the_mounted_config() -> None:
    proxy = _resolved_compose()["services"]["proxy"]
    build = proxy["build"]
    assert Path(build["context"]).resolve() == REPO
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    mounts = _bind_mounts(proxy)
    assert Path(mounts[str(CONFIG_DIR / "proxy.yaml")]).resolve() == REPO / "docker/proxy.yaml"
    entrypoint = next(json.loads(args) for word, args in _dockerfile_instructions()
                      if word == "ENTRYPOINT")
    command = proxy.get("command") or next(
        json.loads(args) for word, args in _dockerfile_instructions() if word == "CMD")
    if isinstance(command, str):
        command = shlex.split(command)
    assert [*entrypoint, *command] == [
        "sip-policy-proxy", "run", "--config", str(CONFIG_DIR / "proxy.yaml")]


def test_compose_bind_mount_sources_exist() -> None:
    services = _resolved_compose()["services"]
    for name, service in services.items():
        for target, source in _bind_mounts(service).items():
            assert Path(source).is_file(), f"{name}: {source} (mounted at {target}) is missing"


def test_proxy_config_points_at_asterisk_and_its_policy_is_mounted() -> None:
    services = _resolved_compose()["services"]
    proxy_ip, asterisk_ip = _ipv4(services["proxy"]), _ipv4(services["asterisk"])
    assert "asterisk" in services["asterisk"]["image"]

    config = yaml.safe_load((REPO / "docker/proxy.yaml").read_text())
    listen_hosts = {entry.split(":")[1] for entry in config["listen"]}
    assert listen_hosts == {proxy_ip}, "the proxy must listen on its compose address"
    assert config["upstreams"] == [f"sip:{asterisk_ip}:5060"]
    assert config["registrar"] == "upstream", "phones register at Asterisk through the proxy"
    # The policy path is relative to proxy.yaml, i.e. inside /etc/sip-policy-proxy.
    policy_in_container = str(CONFIG_DIR / config["policy"])
    mounts = _bind_mounts(services["proxy"])
    assert policy_in_container in mounts
    policy = yaml.safe_load(Path(mounts[policy_in_container]).read_text())
    assert policy["rules"], "the demo policy has rules"
    state = config["state"]
    assert state == "memory:" or state.startswith(("sqlite:", "redis://"))


def test_asterisk_sends_calls_through_the_proxy() -> None:
    services = _resolved_compose()["services"]
    proxy_ip = _ipv4(services["proxy"])
    mounts = _bind_mounts(services["asterisk"])
    pjsip = Path(mounts["/etc/asterisk/pjsip.conf"]).read_text()
    assert f"outbound_proxy=sip:{proxy_ip}:5060\\;lr" in pjsip
    assert f"match={proxy_ip}" in pjsip
    assert re.search(r"^support_path=yes$", pjsip, re.MULTILINE), "AORs must keep the proxy's Path"
    extensions = Path(mounts["/etc/asterisk/extensions.conf"]).read_text()
    assert "Dial(PJSIP/proxy/" in extensions
    # RTP range published by compose == the one rtp.conf keeps Asterisk in.
    rtp = Path(mounts["/etc/asterisk/rtp.conf"]).read_text()
    start = int(re.search(r"^rtpstart=(\d+)", rtp, re.MULTILINE).group(1))  # type: ignore[union-attr]
    end = int(re.search(r"^rtpend=(\d+)", rtp, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert _published_ports(services["asterisk"]) == set(range(start, end + 1))


# ------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    patterns = _dockerignore_patterns()
    copies = [args for word, args in instructions if word in ("COPY", "ADD")]
    assert copies, "the Dockerfile installs the project from the build context"
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert "--from" not in args, "no multi-stage copies expected"
        *sources, _dest = words
        assert sources, args
        for src in sources:
            matches = sorted(REPO.glob(src.rstrip("/"))) if any(c in src for c in "*?[") else [
                REPO / src.rstrip("/")]
            assert matches and all(m.exists() for m in matches), f"COPY source {src} missing"
            for match in matches:
                rel = match.relative_to(REPO).as_posix()
                assert not _ignored(rel, patterns), f"COPY source {rel} is in .dockerignore"


def test_dockerignore_matcher_sees_excluded_paths() -> None:
    # Guards the check above: these must count as ignored, the package must not.
    patterns = _dockerignore_patterns()
    assert _ignored(".venv", patterns)
    assert _ignored(".git", patterns)
    assert _ignored("proxy/__pycache__", patterns)
    assert not _ignored("proxy", patterns)
    assert not _ignored("pyproject.toml", patterns)


# ------------------------------------------------------------------------------- CI, make


def test_ci_run_is_strict_bash_and_calls_make_test() -> None:
    text = (REPO / ".ci/run").read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines[0] in ("#!/usr/bin/env bash", "#!/bin/bash")
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert "set -euo pipefail" in code
    make_test = [ln for ln in code if re.fullmatch(r"(exec\s+)?make(\s+-[-\w=]+)*\s+test", ln)]
    assert make_test, ".ci/run must run `make test`"
    # ... against the compiled build, then the pure one on the unit and conformance tests,
    # on both cores (README "Compiled build", "Tests").
    make_pure = [i for i, ln in enumerate(code)
                 if re.fullmatch(r'(exec\s+)?make(\s+-[-\w=]+)*\s+test-pure'
                                 r'( PYTEST_ARGS="(-n 2 )?tests/unit tests/conformance")?', ln)]
    assert make_pure and make_pure[0] > code.index(make_test[0]), ".ci/run: make test-pure last"
    # Nothing may swallow the suite's exit status.
    assert not any(re.search(r"make\b.*\btest\b.*(\|\||;\s*true|\|\s*tee)", ln) for ln in code)


def _make_dry_run(target: str) -> str:
    # Not the make that runs this suite: its command-line variables (CI's PYTEST_ARGS for the
    # pure run) reach this process's environment and would change the recipes shown.
    skip = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS", "BENCH_ARGS", "CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_test_installs_system_packages_then_runs_the_whole_suite() -> None:
    out = _make_dry_run("test")
    for package in ("sip-tester", "redis-server", "docker-compose"):
        assert package in out
    assert "DEBIAN_FRONTEND=noninteractive apt-get update" in out
    runs = out.strip().splitlines()[-2:]
    # Against the compiled build, or pure when no C compiler is found (README "Compiled
    # build"); either way the tests are told which build to expect (tests/unit/test_build.py).
    # Two runs: the unit and conformance tests on both cores, then the rest one at a time
    # (tests/unit/test_build.py checks that together they name every test directory).
    prefix = (r"SIP_POLICY_PROXY_EXPECT=(compiled|pure) (SIP_POLICY_PROXY_PURE=1 )?"
              r"\S*\.venv/bin/python -m pytest -q ")
    parallel = re.fullmatch(prefix + r"-n 2 tests/unit tests/conformance\s*", runs[0])
    serial = re.fullmatch(prefix + r"tests/system tests/e2e\s*", runs[1])
    assert parallel and serial, runs
    for match in (parallel, serial):
        assert (match.group(1) == "pure") == (match.group(2) is not None), runs


def test_make_test_pure_runs_the_whole_suite_pure() -> None:
    last = _make_dry_run("test-pure").strip().splitlines()[-1]
    assert re.fullmatch(r"SIP_POLICY_PROXY_EXPECT=pure SIP_POLICY_PROXY_PURE=1 "
                        r"\S*\.venv/bin/python -m pytest -q\s*", last), last


def test_make_clean_removes_the_compiled_build() -> None:
    clean = _make_dry_run("clean")
    assert re.search(r"rm -rf .*\bbuild\b", clean), clean
    assert "find proxy -name '*.so' -delete" in clean
    assert "sip_policy_proxy__mypyc" in clean


def test_make_lint_and_bench_and_run() -> None:
    lint = _make_dry_run("lint")
    assert "ruff check" in lint and "mypy" in lint
    assert "bench/run.py" in _make_dry_run("bench")
    assert "sip-policy-proxy run --config proxy.yaml" in _make_dry_run("run")


# ------------------------------------------------------------------------------- bench


def test_bench_reads_the_last_complete_sipp_stat_row(tmp_path: Path) -> None:
    bench = bench_modules.load("run")
    header = "StartTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);OutOfCallMsgs(C);"
    csv = tmp_path / "uac.csv"
    csv.write_text(
        header + "\n"
        + "t0;100;0;0;0;\n"
        + "t1;990;2;7;1;\n"
        + "t2;99\n"  # cut short (process killed mid-write): ignored
    )
    stats = bench.read_stat_csv(csv)
    assert bench.counter(stats, "SuccessfulCall(C)") == 990
    assert bench.counter(stats, "Retransmissions(C)") == 7
    assert bench.counter(stats, "NoSuchColumn(C)") == 0
    assert bench.read_stat_csv(tmp_path / "missing.csv") == {}


def test_bench_highest_clean_rate_stops_at_the_first_unclean_step() -> None:
    bench = bench_modules.load("run")
    steps = [
        bench.Step("proxy", 100, 1000, successful=1000, elapsed_s=10.0, cpu_s=0.5),
        bench.Step("proxy", 200, 2000, successful=2000, elapsed_s=10.0, cpu_s=0.8),
        bench.Step("proxy", 400, 4000, successful=4000, retrans_uas=3, elapsed_s=10.0, cpu_s=2),
        bench.Step("proxy", 600, 6000, successful=6000, elapsed_s=10.0, cpu_s=2.0),
    ]
    series = bench.Series("proxy", steps)
    assert [s.clean for s in steps] == [True, True, False, True]
    assert series.best.rate == 200
    assert series.best.cpu_per_call_us == 400.0
    line = bench.summary_line(series)
    assert "highest clean rate: 200 calls/s; proxy CPU per call: 400 µs" in line


def test_bench_measures_cpu_of_a_process_tree() -> None:
    bench = bench_modules.load("run")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in bench.process_tree(os.getpid())
        assert bench.tree_cpu_seconds(os.getpid()) >= bench.proc_cpu_seconds(os.getpid()) > 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def test_bench_help_runs_without_the_proxy() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench/run.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--kamailio" in done.stdout and "--direct" in done.stdout


# ------------------------------------------------------------------------------- configs


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_docker_proxy_config_passes_the_proxys_own_check() -> None:
    done = _check_config(REPO / "docker/proxy.yaml")
    assert done.returncode == 0, done.stderr


def test_bench_generated_proxy_config_passes_the_proxys_own_check(tmp_path: Path) -> None:
    bench = bench_modules.load("run")
    target = bench.ProxyTarget(15060, 15070, sys.executable, tmp_path, None)
    cfg = target.write_config()
    done = _check_config(cfg)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(cfg.read_text())
    assert config["listen"] == ["udp:127.0.0.1:15060"]
    assert config["upstreams"] == ["sip:127.0.0.1:15070"]
