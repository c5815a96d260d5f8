"""Process signals (README "Commands", ``run``): SIGTERM/SIGINT drain, a second one exits at
once (as uvicorn and hypercorn do for a second Ctrl-C), SIGHUP reloads the policy and
certificates.

The handlers themselves live on the runtime; this module only wires them to the loop and
decides what a repeated stop signal means, so that both can be tested with a fake loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("proxy")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP


class SignalLoop(Protocol):
    """The part of an event loop that signals need."""

    def add_signal_handler(self, sig: int, callback: Callable[[], object]) -> None: ...


def install(loop: SignalLoop, stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop``; SIGHUP calls ``reload``."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(RELOAD_SIGNAL, reload)


def second_stop(stopping: asyncio.Event, exit_now: Callable[[int], object] = os._exit) -> bool:
    """True when a stop signal arrives while the proxy is already draining: it exits at once,
    abandoning what is left (the operator asked twice)."""
    if not stopping.is_set():
        return False
    log.warning("second stop signal: exiting now")
    for h in logging.getLogger().handlers:
        h.flush()  # lines batched for a write (logs.BatchingHandler) are not lost
    exit_now(0)
    return True
