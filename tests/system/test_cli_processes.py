"""The command line as a real process (``python -m proxy ...``): what the in-process tests in
tests/unit/test_cli*.py show through ``main()``, once end to end through the interpreter,
its exit status and its pipes: ``check`` and ``explain``, every shipped example's own tests,
``routes`` on sqlite, and a reader that leaves a listing early (``registrations list | head``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.store import LearnedRoute, StoreChange, StoredBinding, open_store
from tests.unit.test_cli import BROKEN_POLICY, _write
from tests.unit.test_cli_routes import EXPIRED, ROUTES, live, seed, write_config

REPO = Path(__file__).resolve().parents[2]
FUTURE = 4_102_444_800.0  # 2100-01-01T00:00:00Z


def _proxy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


def test_subprocess_check_and_explain() -> None:
    ok = _proxy("check", "--config", "proxy.yaml", cwd=REPO)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("OK: proxy.yaml (policy policies/default.yaml version ")
    explained = _proxy("explain", "--policy", "policies/default.yaml", "604", cwd=REPO)
    assert (explained.returncode, explained.stdout) == (0, "global-failure: stop\n")
    bad = _proxy("explain", "--policy", "policies/default.yaml", "700", cwd=REPO)
    assert bad.returncode == 2


def test_subprocess_check_broken_file(tmp_path: Path) -> None:
    _write(tmp_path, "broken.yaml", BROKEN_POLICY)
    result = _proxy("check", "--policy", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        ("broken.yaml:5:5: rule 'moved': 'max_attempts' applies only to action retry_flows, "
        "not redirect"),
        "broken.yaml:7:21: rule 'failing': status 700 is out of range 100..699",
    ]


def test_subprocess_check_runs_every_shipped_example() -> None:
    for config in sorted((REPO / "policies" / "examples").glob("*/proxy.yaml")):
        done = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(config)],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].startswith("tests: ")
        assert done.stdout.splitlines()[1].endswith(" passed")
        assert done.stderr == ""


# ---------------------------------------------------------------------------------------------
# routes


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    seed(path, *ROUTES, EXPIRED)
    return path


def test_subprocess_list_remove_clear(config: Path) -> None:
    listed = _proxy("routes", "list", "--json", cwd=config.parent)
    assert (listed.returncode, listed.stderr) == (0, "")
    assert [r["old_uri"] for r in json.loads(listed.stdout)] == [
        "sip:alice@old.example.com", "sip:bob@old.example.com"]
    removed = _proxy("routes", "remove", "sip:alice@old.example.com", cwd=config.parent)
    assert (removed.returncode, removed.stdout) == (
        0, "removed the learned route for sip:alice@old.example.com\n")
    assert live(config) == ["sip:bob@old.example.com"]
    missing = _proxy("routes", "remove", "sip:alice@old.example.com", cwd=config.parent)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "no learned route for sip:alice@old.example.com\n"
    # bob's route, and no expired row: listing dropped it (housekeeping, RFC-free)
    cleared = _proxy("routes", "clear", "--config", str(config), cwd=config.parent.parent)
    assert (cleared.returncode, cleared.stdout) == (0, "removed 1 learned route\n")
    memory = write_config(config.parent, "memory:", name="memory.yaml")
    refused = _proxy("routes", "list", "--config", memory.name, cwd=config.parent)
    assert refused.returncode == 1
    assert refused.stderr == (
        "memory.yaml: state is memory: nothing is persisted; use sqlite: or redis://\n")


# ---------------------------------------------------------------------------------------------
# A reader that stops early


def seeded(folder: Path, n: int = 3000) -> Path:
    """A sqlite state with ``n`` bindings and ``n`` learned routes: a few hundred KiB of output,
    more than a pipe holds, so the command is still writing when the reader leaves. Written
    in one batch (one sqlite transaction: 6,000 single writes took some 10 s)."""
    config = write_config(folder)
    cfg, _ = load_config(config)

    async def fill() -> None:
        store = open_store(cfg.state)
        await store.open()
        try:
            now = time.time()
            changes: list[StoreChange] = []
            for i in range(n):
                contact = f"sip:user{i}@192.0.2.{i % 250}:5062"
                changes.append(StoreChange("put_binding", "", binding=StoredBinding(
                    aor=f"user{i}@example.com", key=contact, contact=f"<{contact}>",
                    uri=contact, expires_at=FUTURE, q=1.0, call_id=f"c{i}@x", cseq=1,
                    flow_transport="udp", flow_host="192.0.2.1", flow_port=5062,
                    registered_at=now, instance=None, reg_id=None, node="edge-1")))
                changes.append(StoreChange("put_route", "", route=LearnedRoute(
                    f"sip:user{i}@old.example.com", f"sip:user{i}@new.example.com",
                    "192.0.2.10:5060", f"call-{i}@pbx", 301, now, FUTURE)))
            await store.write_batch(changes)
        finally:
            await store.close()

    asyncio.run(fill())
    return config


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seeded state for the readers below: each only reads it."""
    return seeded(tmp_path_factory.mktemp("listing"))


@pytest.mark.parametrize("args", [
    ("registrations", "list"),
    ("registrations", "list", "--json"),
    ("routes", "list"),
    ("routes", "list", "--json"),
], ids=" ".join)
def test_a_reader_that_stops_early_gets_no_traceback(listing: Path, args: tuple[str, ...]
                                                    ) -> None:
    """`registrations list | head -1`: the Python-documented handling of SIGPIPE (signal
    module, "Note on SIGPIPE"): stdout goes to /dev/null and the exit status is 1."""
    config = listing
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args, "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first  # the command got as far as printing
    proc.stdout.close()  # `head -1` has what it wanted and leaves
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""
    assert code == 1


def test_the_whole_listing_still_arrives_through_a_pipe(tmp_path: Path) -> None:
    config = seeded(tmp_path, n=500)
    done = subprocess.run([sys.executable, "-m", "proxy", "registrations", "list", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == 501  # the header and every binding
