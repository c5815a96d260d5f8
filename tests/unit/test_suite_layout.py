"""The test suite's own layout (README "Tests"): tests/unit runs in this one process, with at
most loopback sockets of the test's own event loop. A test that starts a server (redis-server,
dnsmasq), runs a tool (systemd-analyze, docker-compose, make) or any other process belongs in
tests/system, and one that drives a running proxy with SIP peers in tests/e2e.

Read from the source (AST), so a new unit test that reaches for a process fails here."""

from __future__ import annotations

import ast
from pathlib import Path

UNIT = Path(__file__).resolve().parent

#: modules whose import means another process
PROCESS_MODULES = {"subprocess", "multiprocessing", "pty", "tests.redis_harness"}
#: names that start a process, or a server of the suite's, wherever they come from
PROCESS_NAMES = {
    "create_subprocess_exec", "create_subprocess_shell", "Popen", "fork", "forkpty", "spawnv",
    "spawnl", "execv", "execvp", "system", "popen", "which",
    "redis_server", "redis_cluster", "own_redis", "RedisServer", "RedisClusterServers",
    "Dnsmasq",
}


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in PROCESS_MODULES or a.name in PROCESS_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PROCESS_MODULES or node.module in PROCESS_MODULES:
                found.append(f"from {node.module} import ...")
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name in PROCESS_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in PROCESS_NAMES:
            found.append(f".{node.attr}")
        elif isinstance(node, ast.Name) and node.id in PROCESS_NAMES:
            found.append(node.id)
        elif isinstance(node, ast.arg) and node.arg in PROCESS_NAMES:
            found.append(f"fixture {node.arg}")
        elif isinstance(node, ast.Constant) and node.value in {"redis_server", "redis_cluster",
                                                                 "own_redis"}:
            found.append(f"fixture {node.value!r}")
    return [f"{path.name}:{what}" for what in sorted(set(found))]


def test_no_unit_test_starts_a_process_or_a_server() -> None:
    files = sorted(p for p in UNIT.glob("*.py") if p.name != Path(__file__).name)
    assert len(files) > 50  # the folder was found
    bad = [f for path in files for f in findings(path)]
    assert bad == [], "belongs in tests/system (or tests/e2e): " + ", ".join(bad)


def test_the_check_sees_each_way_in(tmp_path: Path) -> None:
    """The check itself: each form a process or a server can take in a test is seen."""
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import subprocess\n"
        "import asyncio, os, shutil\n"
        "from tests.redis_harness import RedisServer\n"
        "from asyncio import create_subprocess_exec\n"
        "def test_a(redis_server): pass\n"
        "async def test_b(request):\n"
        "    request.getfixturevalue('redis_cluster')\n"
        "    await asyncio.create_subprocess_exec('x')\n"
        "    os.fork(); shutil.which('sipp')\n"
    )
    got = findings(sample)
    for wanted in ("import subprocess", "from tests.redis_harness import ...",
                   "from asyncio import create_subprocess_exec", "fixture redis_server",
                   "fixture 'redis_cluster'", ".create_subprocess_exec", ".fork", ".which"):
        assert f"test_sample.py:{wanted}" in got, (wanted, got)
