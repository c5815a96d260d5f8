"""Policy reload: on SIGHUP or when the policy file changes on disk (``watch_policy``).

A reload is atomic: the new policy replaces the old only when the whole file loads; a broken
file is reported and leaves the policy in force.

A reload never blocks the event loop: the file is read and parsed in a worker thread
(``run_in_executor``; composing a large YAML file costs about 4 µs a byte, seconds for a
file near :data:`~proxy.policy.MAX_POLICY_BYTES`, which bounds it), and the result is put in
force back on the loop. A reload whose file has the same bytes as the last one read (in
force or refused) is a no-op: SIGHUP and the file watcher both firing for one change give
one log line and one count of ``policy_reloads_total``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.diagnostics import ConfigError, Diagnostic, Reporter, display_path, read_file_bytes
from proxy.policy import MAX_POLICY_BYTES, Policy, parse_policy, policy_version

log = logging.getLogger("proxy")

#: Diagnostics of a refused file logged at most (a 1 MiB file of garbage can hold 70,000).
MAX_LOGGED_DIAGNOSTICS = 20


@dataclass(frozen=True, slots=True)
class Reading:
    """What a look at the policy file found: ``key`` identifies its content (the policy
    version of its bytes, or the reason it could not be read); ``unchanged`` when that is
    the content last read, else ``policy`` (with ``warnings``) or ``errors``."""

    key: str
    unchanged: bool = False
    policy: Policy | None = None
    warnings: list[Diagnostic] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)


def read_policy(path: str | Path, last: str) -> Reading:
    """Read and parse the policy file at ``path`` (in a worker thread: no logging, no
    shared state); ``last`` is the key of the content read last time."""
    p = Path(path)
    name = display_path(p.absolute()) if p.is_absolute() else str(p)
    report = Reporter(name)
    data = read_file_bytes(p, report, MAX_POLICY_BYTES)
    if data is None:
        key = "!" + "; ".join(d.message for d in report.errors)
        return Reading(key, unchanged=key == last, errors=report.errors)
    key = policy_version(data)
    if key == last:
        return Reading(key, unchanged=True)
    try:
        policy, warnings = parse_policy(data, name, str(path))
    except ConfigError as exc:
        return Reading(key, errors=exc.diagnostics)
    return Reading(key, policy=policy, warnings=warnings)


class PolicyReloader:
    """Reloads the policy file of the configuration, one reload at a time, off the loop.

    ``apply`` puts a new policy in force (on the loop); ``counts`` is
    ``policy_reloads_total`` (``ok`` for a changed file that loads, ``refused`` for one that
    does not). A request while a reload runs is remembered and run after it, so a change
    made meanwhile is not missed.
    """

    def __init__(self, path: str | Path | None, policy: Policy, counts: Counter[str],
                 apply: Callable[[Policy], None]) -> None:
        self.path = path
        self.current = policy
        self.counts = counts
        self.apply = apply
        self.last = policy.version  # the key of the content read last (in force or refused)
        self.running: asyncio.Future[Reading] | None = None
        self.again: str | None = None

    def request(self, why: str) -> None:
        """Reload, ``why`` (``SIGHUP``, ``file changed on disk``) naming the trigger."""
        if self.path is None:
            log.info("policy reload (%s): the config names no policy file; builtin stays", why)
            return
        if self.running is not None:
            self.again = why
            return
        log.debug("policy reload (%s): reading %s", why, self.path)
        loop = asyncio.get_running_loop()
        self.running = loop.run_in_executor(None, read_policy, self.path, self.last)
        self.running.add_done_callback(lambda fut: self._done(fut, why))

    def _done(self, fut: asyncio.Future[Reading], why: str) -> None:
        self.running = None
        try:
            self.finish(fut.result(), why)
        except Exception:  # a bug must not end the reloads (nor the process)
            log.exception("policy reload (%s) failed; version %s stays in force", why,
                          self.current.version)
        if self.again is not None:
            again, self.again = self.again, None
            self.request(again)

    def reload_now(self, why: str = "test") -> Policy | None:
        """Read and apply synchronously (tests, and callers without a loop)."""
        if self.path is None:
            return None
        return self.finish(read_policy(self.path, self.last), why)

    def finish(self, reading: Reading, why: str) -> Policy | None:
        """On the loop: log, count and apply what :func:`read_policy` found; returns the
        policy put in force, or None."""
        old = self.current
        if reading.unchanged:
            log.debug("policy reload (%s): %s unchanged since it was last read; nothing to do",
                      why, self.path)
            return None
        self.last = reading.key
        if reading.policy is None:
            self.counts["refused"] += 1
            log.error("policy reload refused; version %s stays in force", old.version)
            self._log_some(logging.ERROR, reading.errors, "errors")
            return None
        new = reading.policy
        self.counts["ok"] += 1
        self._log_some(logging.WARNING, reading.warnings, "warnings")
        if new.version == old.version:
            log.info("policy file is valid again: version %s stays in force", old.version)
            return None
        log.info("policy reloaded: %s -> %s (%d rules)", old.version, new.version,
                 len(new.rules))
        self.current = new
        self.apply(new)
        return new


    def _log_some(self, level: int, found: list[Diagnostic], what: str) -> None:
        """The first :data:`MAX_LOGGED_DIAGNOSTICS` of ``found``, then how many more."""
        for d in found[:MAX_LOGGED_DIAGNOSTICS]:
            log.log(level, "%s", d)
        if len(found) > MAX_LOGGED_DIAGNOSTICS:
            log.log(level, "... and %d more %s (sip-policy-proxy check --policy %s)",
                    len(found) - MAX_LOGGED_DIAGNOSTICS, what, self.path)


def stat_file(path: str | Path | None) -> tuple[int, int] | None:
    """(mtime in ns, size) of ``path``, None when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class FileWatcher:
    """Calls ``changed`` when :meth:`check` sees the file's mtime or size differ from the last
    look (a missing file is no change: an editor's save-by-rename passes through it)."""

    def __init__(self, path: str | Path | None, changed: Callable[[], None]) -> None:
        self.path = path
        self.changed = changed
        self.last = stat_file(path)

    def check(self) -> bool:
        """Look at the file now; True (after calling ``changed``) when it changed."""
        st = stat_file(self.path)
        if st is None or st == self.last:
            return False
        self.last = st
        self.changed()
        return True
