"""Logging set-up (``log_format: text | json``) and the log lines of the runtime: the per-call
summary the core hands out (:class:`~proxy.core.observe.metrics.CallLog`), and at debug every message
in and out (first line, Call-ID, peer, transport).

With ``json`` every line is one JSON object: ``time``, ``level``, ``logger``, ``message``, and
for a call line its fields under ``call``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from proxy.core.effects import LogLine
from proxy.core.observe.metrics import CallLog
from proxy.core.upstream_admin import AdminChange
from proxy.sip.transport import Send, Source

CALLS = "proxy.calls"
calls_log = logging.getLogger(CALLS)
core_log = logging.getLogger("proxy.core")  # the lines the core hands out (LogLine)
upstreams_log = logging.getLogger("proxy.upstreams")
messages_log = logging.getLogger("proxy.messages")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


def iso_time(created: float) -> str:
    """The ``time`` of a JSON line: UTC, milliseconds, a ``Z``."""
    return datetime.fromtimestamp(created, tz=UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (exceptions included, as a string)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = getattr(record, "call", None)
        if call is not None:
            obj["call"] = call
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, with the date and time formatted once per second (a busy proxy
    writes one call line per call: ``time.strftime`` for each was a measurable share)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """``%(asctime)s`` of a record created at ``created`` (as logging computes msecs)."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime(self.default_time_format, self.converter(second))
        return f"{self._prefix},{int((created - second) * 1000):03d}"


#: seconds a line at info or below may wait to be written with the lines after it
FLUSH_DELAY = 0.05
#: bytes of lines written by one write at most: PIPE_BUF, the size of a write to a pipe that
#: the kernel never interleaves with another process's (the workers share one stderr)
CHUNK = 4096


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler: writes the call lines (``proxy.calls`` at info) in one ``write`` per
    :data:`FLUSH_DELAY` instead of one per line, once :meth:`attach` gave it the event loop;
    every other line at once, after the call lines before it.

    A busy proxy writes one call line per call; written and flushed one by one, they were a
    system call and a wake-up of the reader (journald, a pipe) each: 2 % of the proxy's CPU in
    the kernel at 1,600 calls/s (perf), and the reader's too. Lines keep their order (every
    line goes through the one buffer), are cut into writes of at most :data:`CHUNK` bytes at
    line ends (so that several workers' lines never interleave within a line), and any other
    line (another logger's, or above info) is written at once with those before it. Without a
    loop (start-up, the CLI, shutdown), from another thread, or past :data:`CHUNK` bytes
    waiting, lines are written at once, as :class:`logging.StreamHandler` does."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on lines at info or below wait up to :data:`FLUSH_DELAY` on ``loop``."""
        self._loop = loop
        self._thread = threading.get_ident()

    def detach(self) -> None:
        """Back to a write per line, what waits written now (the loop is stopping)."""
        with self.lock:  # type: ignore[union-attr]
            self._loop = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._write_out()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - as logging does
            self.handleError(record)
            return
        self.write_line(line, record.levelno > logging.INFO or record.name != CALLS)

    def write_line(self, line: str, urgent: bool = False) -> None:
        """Queue one formatted line (no terminator); written now when ``urgent``."""
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            self._size += len(line) + 1
            loop = self._loop
            if (urgent or loop is None or self._size >= CHUNK
                    or threading.get_ident() != self._thread or loop.is_closed()):
                self._write_out()
            elif self._timer is None:
                self._timer = loop.call_later(FLUSH_DELAY, self._timed)

    def _timed(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()
            super().flush()

    def _write_out(self) -> None:
        """Write what waits (the lock held), in writes of at most :data:`CHUNK` bytes."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._size = 0
        term = self.terminator
        try:
            stream = self.stream
            chunk: list[str] = []
            size = 0
            for line in pending:
                if chunk and size + len(line) + 1 > CHUNK:
                    stream.write(term.join(chunk) + term)
                    stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line) + 1
            stream.write(term.join(chunk) + term)
            stream.flush()
        except Exception:  # noqa: BLE001 - a log line never fails the proxy
            sys.stderr.write(f"--- logging: {len(pending)} lines not written\n")


def attach(loop: asyncio.AbstractEventLoop) -> None:
    """Batch the installed handler's writes on ``loop`` (:class:`BatchingHandler`)."""
    if isinstance(_installed, BatchingHandler):
        _installed.attach(loop)


def detach() -> None:
    """Write what the installed handler holds, and write each line at once from now on."""
    if isinstance(_installed, BatchingHandler):
        _installed.detach()


def flush() -> None:
    """Write what the installed handler holds (before the process exits)."""
    if _installed is not None:
        _installed.flush()


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger on stderr with ``level`` and ``fmt`` (text | json)."""
    # No line names a thread, a process or a source line: do not collect them per record
    # (the "Optimization" table of the logging HOWTO).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]
    global _installed
    if isinstance(_installed, BatchingHandler):
        _installed.detach()
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _installed = handler


#: the handler :func:`setup` installed on the root logger
_installed: logging.StreamHandler[Any] | None = None


def _direct_handler() -> logging.StreamHandler[Any] | None:
    """The handler a call line may be written to directly, bypassing the logging machinery
    (a record, its dispatch: three quarters of the 27 µs a call line cost): the one
    :func:`setup` installed, when it is the only handler a ``proxy.calls`` record at info
    reaches and no filter, level or handler was added since (a test's ``caplog``, an
    embedding application). Otherwise None, and the line goes through ``logging``."""
    h = _installed
    if h is None or h.filters or h.level > logging.INFO or not calls_log.isEnabledFor(logging.INFO):
        return None
    lg: logging.Logger | None = calls_log
    while lg is not None:
        if lg.filters or lg.disabled:
            return None
        if lg.parent is None:  # the root
            return h if lg.handlers == [h] else None
        if lg.handlers or not lg.propagate:
            return None
        lg = lg.parent
    return None


def emit_calls(records: Iterable[object]) -> None:
    """Log the per-call summaries of one :class:`~proxy.core.effects.Effects`: the same line
    ``calls_log.info`` writes (text or JSON), written straight to the handler when nothing
    else could see the record (:func:`_direct_handler`)."""
    for rec in records:
        if isinstance(rec, CallLog):
            h = _direct_handler()
            if h is None or not _write_direct(h, rec):
                calls_log.info("%s", rec.text(), extra={"call": rec.fields()})
        elif isinstance(rec, LogLine):
            core_log.log(rec.level, rec.message, *rec.args)
        elif isinstance(rec, AdminChange):
            admin_change(rec)


def admin_change(rec: AdminChange) -> None:
    """One line per change of an upstream's administrative state (README "Runtime control
    of upstreams")."""
    what = {"drain": "drained: no new calls, calls up go on", "down": "down: no new calls, "
            "not probed", "up": "up: back in service, probing decides"}[rec.state]
    where = (f"set on this node ({rec.node})" if rec.origin == "here"
             else f"set by node {rec.node or '?'}, read from the state store")
    upstreams_log.warning("upstream %s %s (was %s; %s)", rec.upstream, what, rec.before, where)


def _write_direct(h: logging.StreamHandler[Any], rec: CallLog) -> bool:
    fmt = h.formatter
    now = time.time()
    if isinstance(fmt, TextFormatter):
        line = f"{fmt.stamp(now)} INFO {calls_log.name}: {rec.text()}"
    elif isinstance(fmt, JsonFormatter):
        line = json.dumps({"time": iso_time(now), "level": "INFO", "logger": calls_log.name,
                           "message": rec.text(), "call": rec.fields()},
                          ensure_ascii=False, default=str)
    else:
        return False
    if isinstance(h, BatchingHandler):
        h.write_line(line)
        return True
    h.acquire()
    try:
        h.stream.write(line + h.terminator)
        h.flush()
    except Exception:  # noqa: BLE001 - as logging does: a log line never fails the proxy
        return False  # logging.Handler.handleError reports it on the way through logging
    finally:
        h.release()
    return True


def _summary(data: bytes) -> tuple[str, str]:
    eol = data.find(b"\r\n")
    first = data[: eol if eol >= 0 else 200][:200].decode("latin-1", "replace")
    m = _CALL_ID.search(data, 0, 8192)
    call_id = m.group(1).decode("latin-1", "replace").strip() if m else "-"
    return first, call_id


def message_in(data: bytes, src: Source) -> None:
    """Debug: a message received (call only when debug is enabled for ``proxy.messages``)."""
    first, call_id = _summary(data)
    messages_log.debug("in  %s from %s:%s/%s Call-ID %s", first, src.host, src.port,
                       src.transport, call_id)


def message_out(s: Send) -> None:
    first, call_id = _summary(s.data)
    messages_log.debug("out %s to %s:%s/%s Call-ID %s", first, s.host, s.port, s.transport,
                       call_id)
