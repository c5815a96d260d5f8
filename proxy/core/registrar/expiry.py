"""The location service's timer: expired bindings leave memory when it fires."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


class Expiry:
    """The location service's timer: it fires on whole seconds, so that many bindings
    expire in one pass."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline: float | None = None


def schedule_expiry(core: ProxyCore) -> None:
    nxt = core.location.next_expiry()
    if nxt is None:
        return
    d = float(math.ceil(nxt))
    cur = core.expiry.deadline
    if cur is None or d < cur:
        core.expiry.deadline = d
        core.queue.schedule(core.expiry)


def expire(core: ProxyCore, now: float) -> None:
    """The expiry timer fired: expired bindings leave the location service."""
    core.expiry.deadline = None
    gone = core.location.expire(now)
    core.stats["bindings_expired"] += len(gone)
    schedule_expiry(core)
