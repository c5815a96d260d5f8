"""The command line as an operator meets it: every command and action says what it does in
its ``--help``. (Output piped into a reader that stops early, ``registrations list | head``,
needs a real process and a pipe: tests/system/test_cli_processes.py.)"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from proxy.cli import _parser, main


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
