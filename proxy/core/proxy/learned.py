"""Learned routes: Request-URI rewrites learned from redirects (:mod:`~proxy.core.proxy.redirects`), held on the
core's clock and read by the router (:mod:`~proxy.core.proxy.routing`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.store.base import LearnedRoute

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


def learned_uri(core: ProxyCore, ruri: str, now: float) -> str | None:
    """The Request-URI after learned rewrites, chains followed at most 8 hops."""
    learned = core._learned
    seen = {ruri}
    current = ruri
    for _ in range(8):
        hit = learned.get(current)
        if hit is None:
            break
        new, expires = hit
        if expires <= now:
            del learned[current]
            break
        if new in seen:
            break  # a cycle: stop at the last new address
        seen.add(new)
        current = new
    return None if current == ruri else current


def learned_view(routes: Sequence[LearnedRoute], now: float,
                 wall_offset: float) -> dict[str, tuple[str, float]]:
    """The learned-route cache: old URI -> (new URI, expiry on the core's clock)."""
    return {r.old_uri: (r.new_uri, now + (r.expires_at - (now + wall_offset))) for r in routes}
