"""Logging set-up (``log_format: text | json``) and the log lines of the runtime: the per-call
summary the core hands out (:class:`~proxy.core.observe.CallLog`), and at debug every message
in and out (first line, Call-ID, peer, transport).

With ``json`` every line is one JSON object: ``time``, ``level``, ``logger``, ``message``, and
for a call line its fields under ``call``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from proxy.core.observe import CallLog
from proxy.sip.transport import Send, Source

calls_log = logging.getLogger("proxy.calls")
messages_log = logging.getLogger("proxy.messages")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (exceptions included, as a string)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
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
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime(self.default_time_format, self.converter(second))
        return f"{self._prefix},{int(record.msecs):03d}"


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger on stderr with ``level`` and ``fmt`` (text | json)."""
    # No line names a thread, a process or a source line: do not collect them per record
    # (the "Optimization" table of the logging HOWTO).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def emit_calls(records: Iterable[object]) -> None:
    """Log the per-call summaries of one :class:`~proxy.core.effects.Effects`."""
    for rec in records:
        if isinstance(rec, CallLog):
            calls_log.info("%s", rec.text(), extra={"call": rec.fields()})


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
