"""Process limits the runtime sets at start: the file-descriptor soft limit (every TCP/TLS
connection is a descriptor, so ``limits.tcp_max_connections`` needs as many)."""

from __future__ import annotations

import logging

log = logging.getLogger("proxy")


def raise_nofile(wanted: int) -> int:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit; log the figure and warn when it
    is below ``wanted`` (connections plus some room). Returns the soft limit in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft,
                        target, exc)
    log.info("file descriptors: soft limit %d (hard %s)", soft,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)
    if soft < wanted:
        log.warning("file descriptor limit %d is below limits.tcp_max_connections + 64 (%d): "
                    "connections past it will fail to be accepted", soft, wanted)
    return soft
