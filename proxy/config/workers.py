"""``workers: N | auto``: how many processes serve the listen addresses together (README
"Workers"). The checks that involve other keys (the state store, the HTTP port) are here too.
"""

from __future__ import annotations

import os
from typing import Any

from proxy.diagnostics import Reporter, YNode, YScalar, get_int

#: the most workers a configuration may ask for (each is a whole proxy process)
MAX_WORKERS = 256


def cores() -> int:
    """The cores this process may run on (``auto``): its CPU affinity where the system has
    one, else the machine's count; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def count(report: Reporter, node: YNode) -> int | None:
    """``workers: 4`` (1..256) or ``workers: auto`` (the cores this process may run on)."""
    if isinstance(node, YScalar) and isinstance(node.value, str):
        if node.value.strip().lower() == "auto":
            return min(cores(), MAX_WORKERS)
        report.error(node, f"workers must be an integer between 1 and {MAX_WORKERS} or 'auto', "
                     f"got {node.value!r}{report.example_tail('workers')}")
        return None
    return get_int(report, node, "workers", 1, MAX_WORKERS)


def cross_check(report: Reporter, found: dict[str, YNode], values: dict[str, Any]) -> None:
    """With more than one worker: the state must be one the workers can share (README
    "Workers"), and the HTTP ports of the workers (``http`` port + index) must exist."""
    n = values.get("workers", 1)
    if values.get("workers_spread") == "call" and n <= 1 and "workers_spread" in found:
        report.warning(found["workers_spread"], "workers_spread: call has no effect with one "
                       "worker (workers: N spreads the calls among N processes)")
    if n <= 1 or "workers" not in found:
        return
    at = found["workers"]
    state = str(values.get("state", "memory:"))
    if state.startswith("sqlite:"):
        report.error(at, f"workers: {n} needs state: memory: or a Redis state "
                     "(redis://, rediss://, redis+cluster://): an sqlite file is one process's "
                     "store, and the workers would not see each other's registrations")
    elif state == "memory:" and values.get("registrar") == "local":
        report.warning(at, f"workers: {n} with state: memory: each worker keeps the "
                       "registrations it took: a call for a phone registered through another "
                       "worker is not found; use a Redis state to share them")
    http = values.get("http")
    if http is not None and http[1] + n - 1 > 65535:
        report.error(found.get("http", at), f"http port {http[1]}: worker {n - 1} would "
                     f"serve HTTP on port {http[1] + n - 1}, above 65535 (each worker serves "
                     "on the http port plus its index)")
