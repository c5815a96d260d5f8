"""The root log handler writes a batch of lines per write once it has the event loop
(proxy.runtime.logs.BatchingHandler): order kept, writes cut at line ends within PIPE_BUF,
anything above info at once, nothing lost at detach."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from proxy.runtime import logs
from proxy.runtime.logs import CHUNK, FLUSH_DELAY, BatchingHandler
from tests.unit.test_runtime_observability import installed_logging  # noqa: F401 - a fixture


class Recorder:
    """A stream that keeps each write apart (a write is one system call for a real stream)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


def handler() -> tuple[BatchingHandler, Recorder]:
    rec = Recorder()
    h = BatchingHandler(rec)
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return h, rec


def record(msg: str, level: int = logging.INFO, name: str = "proxy.calls") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


async def until(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def test_without_a_loop_each_line_is_written_at_once() -> None:
    h, rec = handler()
    h.emit(record("one"))
    h.emit(record("two"))
    assert rec.writes == ["INFO one\n", "INFO two\n"]


def test_with_the_loop_info_lines_wait_and_go_in_one_write() -> None:
    async def main() -> None:
        h, rec = handler()
        h.attach(asyncio.get_running_loop())
        start = asyncio.get_running_loop().time()
        for i in range(20):
            h.emit(record(f"call {i}"))
        assert rec.writes == []  # nothing written yet: they wait for the batch
        await until(lambda: rec.writes)
        assert asyncio.get_running_loop().time() - start >= FLUSH_DELAY * 0.9
        assert rec.writes == ["".join(f"INFO call {i}\n" for i in range(20))]
        h.detach()

    asyncio.run(main())


def test_another_loggers_line_is_written_at_once_after_the_call_lines_before_it() -> None:
    """Only the call lines wait: a test or an operator reading the log sees the rest at once."""
    async def main() -> None:
        h, rec = handler()
        h.attach(asyncio.get_running_loop())
        h.emit(record("call a"))
        h.emit(record("learned a route", name="proxy.core"))
        assert rec.lines() == ["INFO call a", "INFO learned a route"]
        h.detach()

    asyncio.run(main())


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    async def main() -> None:
        h, rec = handler()
        h.attach(asyncio.get_running_loop())
        h.emit(record("call a"))
        h.emit(record("call b"))
        h.emit(record("trouble", logging.WARNING))
        assert rec.lines() == ["INFO call a", "INFO call b", "WARNING trouble"]
        assert len(rec.writes) == 1
        h.detach()

    asyncio.run(main())


def test_writes_stay_within_pipe_buf_and_end_at_a_line_end() -> None:
    async def main() -> None:
        h, rec = handler()
        h.attach(asyncio.get_running_loop())
        lines = [f"call {i:04d} " + "x" * 180 for i in range(100)]  # ~19 KB in all
        for line in lines:
            h.emit(record(line))
        h.flush()
        assert rec.lines() == [f"INFO {line}" for line in lines]  # every line, in order
        assert len(rec.writes) >= 5
        for w in rec.writes:
            assert len(w) <= CHUNK
            assert w.endswith("\n")
        h.detach()

    asyncio.run(main())


def test_another_thread_writes_at_once() -> None:
    async def main() -> None:
        h, rec = handler()
        h.attach(asyncio.get_running_loop())
        h.emit(record("from the loop"))
        t = threading.Thread(target=h.emit, args=(record("from a thread"),))
        t.start()
        t.join(5)
        # the thread's line is written, and the loop's line before it, in order
        assert rec.lines() == ["INFO from the loop", "INFO from a thread"]
        h.detach()

    asyncio.run(main())


def test_detach_writes_what_waits() -> None:
    async def main() -> None:
        h, rec = handler()
        h.attach(asyncio.get_running_loop())
        h.emit(record("last call"))
        assert rec.writes == []
        h.detach()
        assert rec.lines() == ["INFO last call"]
        h.emit(record("after"))  # detached: at once again
        assert rec.lines()[-1] == "INFO after"

    asyncio.run(main())


@pytest.mark.usefixtures("installed_logging")
def test_installed_handler_batches_call_lines() -> None:
    """The call line the core hands out (emit_calls' direct path) goes through the batch."""
    logs.setup("info")
    assert isinstance(logs._installed, BatchingHandler)
    rec = Recorder()
    logs._installed.setStream(rec)  # type: ignore[arg-type]

    async def main() -> None:
        logs.attach(asyncio.get_running_loop())
        logs.calls_log.info("call x")
        logs.calls_log.info("call y")
        assert rec.writes == []
        await until(lambda: rec.writes)
        assert [ln.split(" ", 2)[2] for ln in rec.lines()] == [
            "INFO proxy.calls: call x", "INFO proxy.calls: call y"]
        assert len(rec.writes) == 1
        logs.detach()

    asyncio.run(main())
