"""Policy reload: on SIGHUP or when the policy file changes on disk (``watch_policy``).

A reload is atomic: the new policy replaces the old only when the whole file loads; a broken
file is reported and leaves the policy in force.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from proxy.diagnostics import ConfigError
from proxy.policy import Policy, load_policy

log = logging.getLogger("proxy")


def reload_policy(path: str | Path | None, old: Policy,
                  counts: Counter[str] | None = None) -> Policy | None:
    """The policy to put in force after reading ``path``, or None to keep ``old``.

    None when the config names no file, when the file does not load (the diagnostics are
    logged) and when it loads to the same version. ``counts`` (``policy_reloads_total``) gets
    ``refused`` for a file that does not load, ``ok`` for one that does.
    """
    counts = counts if counts is not None else Counter()
    if path is None:
        log.info("policy reload: the config names no policy file; builtin stays")
        return None
    try:
        new, warnings = load_policy(path)
    except ConfigError as exc:
        counts["refused"] += 1
        log.error("policy reload refused; version %s stays in force", old.version)
        for d in exc.diagnostics:
            log.error("%s", d)
        return None
    counts["ok"] += 1
    for w in warnings:
        log.warning("%s", w)
    if new.version == old.version:
        return None
    log.info("policy reloaded: %s -> %s (%d rules)", old.version, new.version, len(new.rules))
    return new


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
