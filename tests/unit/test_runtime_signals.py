"""proxy/runtime/signals.py with a fake loop: which signal calls what, and the second stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


class FakeLoop:
    def __init__(self) -> None:
        self.handlers: dict[int, Callable[[], object]] = {}

    def add_signal_handler(self, sig: int, callback: Callable[[], object]) -> None:
        self.handlers[sig] = callback


def test_stop_signals_drain_and_sighup_reloads() -> None:
    """README "Commands", run: SIGTERM/SIGINT stop taking new transactions; SIGHUP reloads."""
    from proxy.runtime.signals import install

    calls: list[str] = []
    loop = FakeLoop()
    install(loop, lambda: calls.append("stop"), lambda: calls.append("reload"))
    assert set(loop.handlers) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    loop.handlers[signal.SIGTERM]()
    loop.handlers[signal.SIGINT]()
    loop.handlers[signal.SIGHUP]()
    assert calls == ["stop", "stop", "reload"]


def test_a_second_stop_signal_exits_at_once() -> None:
    """The first stop drains; a stop while draining exits with status 0 without waiting."""
    from proxy.runtime.signals import second_stop

    exits: list[int] = []
    stopping = asyncio.Event()
    assert second_stop(stopping, exits.append) is False and exits == []
    stopping.set()
    assert second_stop(stopping, exits.append) is True and exits == [0]
