"""The command line as an operator meets it: every command and action says what it does in
its ``--help``, and output piped into a reader that stops early (``registrations list |
head``) ends quietly instead of with a BrokenPipeError traceback."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.cli import _parser, main
from proxy.config import load_config
from proxy.store import LearnedRoute, StoredBinding, open_store
from tests.unit.test_cli_routes import write_config

REPO = Path(__file__).resolve().parents[2]
FUTURE = 4_102_444_800.0  # 2100-01-01T00:00:00Z


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and action parser with the words that reach it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from commands(child, (*path, name))


ALL = list(commands(_parser()))


def test_every_command_is_listed() -> None:
    names = {path for path, _ in ALL}
    assert {("run",), ("check",), ("explain",), ("status",), ("routes",), ("registrations",),
            ("routes", "list"), ("routes", "remove"), ("routes", "clear"),
            ("registrations", "list"), ("registrations", "remove")} <= names


@pytest.mark.parametrize("path", [path for path, _ in ALL], ids=" ".join)
def test_every_command_describes_itself_in_its_help(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = dict(ALL)[path]
    assert parser.description and len(parser.description) > 40, path
    assert main([*path, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(parser.description.split())[:60] in out


def test_the_issue_commands_say_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {
        "run": "Run the proxy in the foreground",
        "check": "Validate a configuration and the policy file it names",
        "explain": "Print the policy rule that decides a final response with STATUS",
        "status": "Ask the running proxy",
    }
    for command, start in expected.items():
        assert main([command, "--help"]) == 0
        assert start in " ".join(capsys.readouterr().out.split()), command


# ---------------------------------------------------------------------------------------------
# A reader that stops early


def seeded(tmp_path: Path, n: int = 3000) -> Path:
    """A sqlite state with ``n`` bindings and ``n`` learned routes: a few hundred KiB of output,
    more than a pipe holds, so the command is still writing when the reader leaves."""
    config = write_config(tmp_path)
    cfg, _ = load_config(config)

    async def fill() -> None:
        store = open_store(cfg.state)
        await store.open()
        try:
            now = time.time()
            for i in range(n):
                contact = f"sip:user{i}@192.0.2.{i % 250}:5062"
                await store.put_binding(StoredBinding(
                    aor=f"user{i}@example.com", key=contact, contact=f"<{contact}>",
                    uri=contact, expires_at=FUTURE, q=1.0, call_id=f"c{i}@x", cseq=1,
                    flow_transport="udp", flow_host="192.0.2.1", flow_port=5062,
                    registered_at=now, instance=None, reg_id=None, node="edge-1"))
                await store.put_route(LearnedRoute(
                    f"sip:user{i}@old.example.com", f"sip:user{i}@new.example.com",
                    "192.0.2.10:5060", f"call-{i}@pbx", 301, now, FUTURE))
        finally:
            await store.close()

    asyncio.run(fill())
    return config


@pytest.mark.parametrize("args", [
    ("registrations", "list"),
    ("registrations", "list", "--json"),
    ("routes", "list"),
    ("routes", "list", "--json"),
], ids=" ".join)
def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path, args: tuple[str, ...]
                                                    ) -> None:
    """`registrations list | head -1`: the Python-documented handling of SIGPIPE (signal
    module, "Note on SIGPIPE"): stdout goes to /dev/null and the exit status is 1."""
    config = seeded(tmp_path)
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
