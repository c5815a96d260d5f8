"""What the runtime and the HTTP side may read of the core (:attr:`ProxyCore.view`): values
only, no way to change the core through them. The core changes only through its methods,
each returning :class:`~proxy.core.effects.Effects` (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from proxy.core.proxy import steer

if TYPE_CHECKING:
    from proxy.core.core import CoreSettings, ProxyCore
    from proxy.core.observe.metrics import Metrics
    from proxy.core.proxy.steer import UpstreamState
    from proxy.core.types import Target
    from proxy.core.upstream_admin import AdminState
    from proxy.policy import Policy


class CoreView:
    """A read-only window on one :class:`~proxy.core.core.ProxyCore`."""

    __slots__ = ("_core",)

    def __init__(self, core: ProxyCore) -> None:
        self._core = core

    @property
    def settings(self) -> CoreSettings:
        return self._core.settings  # frozen

    @property
    def policy(self) -> Policy:
        """The policy new calls take."""
        return self._core._policy

    @property
    def draining(self) -> bool:
        return self._core._draining

    @property
    def upstream_addrs(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._core._upstream_addrs)

    @property
    def learned(self) -> Mapping[str, tuple[str, float]]:
        """Learned Request-URI rewrites: old URI -> (new URI, expiry on the core's clock)."""
        return MappingProxyType(self._core._learned)

    @property
    def peers(self) -> Mapping[str, list[tuple[str, str, int]]]:
        """The other nodes of a shared state and their SIP listeners."""
        return MappingProxyType(self._core._cluster.peers)

    @property
    def registrations(self) -> int:
        return self._core.location.count()

    @property
    def active_transactions(self) -> int:
        return self._core.active_transactions

    @property
    def unanswered(self) -> int:
        return self._core.unanswered

    @property
    def calls(self) -> int:
        """Dialogs (calls up) through the proxy."""
        return len(self._core.dialogs)

    @property
    def probing(self) -> bool:
        return self._core.prober.enabled

    @property
    def upstream_up(self) -> Mapping[Target, bool]:
        return MappingProxyType(self._core.prober.up)

    @property
    def admin_states(self) -> Mapping[str, AdminState]:
        """The upstreams an operator set a state for (:mod:`.upstream_admin`), by name."""
        return MappingProxyType(self._core.admin.states)

    def calls_per_upstream(self) -> dict[str, int]:
        """Calls up, by the upstream they were sent to."""
        return self._core.dialogs.per_upstream()

    @property
    def all_upstreams(self) -> tuple[Target, ...]:
        """Every upstream of every group, once, in order."""
        return self._core.all_upstreams

    @property
    def resolved_targets(self) -> frozenset[Target]:
        """The upstreams that are addresses a named upstream resolved to (RFC 3263)."""
        return self._core.prober.resolved

    def upstream_states(self, now: float) -> list[UpstreamState]:
        """Every upstream with its groups, probe result and hold-down at ``now``."""
        return steer.upstream_states(self._core, now)

    def admin_state(self, upstream: str) -> str:
        """The operators' state of an upstream: up, drain or down (:mod:`.upstream_admin`)."""
        return self._core.admin.state(upstream)

    @property
    def overloaded(self) -> bool:
        """Whether an overload episode is on (new INVITEs and REGISTERs get 503 in the share
        the runtime set, :mod:`proxy.core.access.overload`)."""
        return self._core.shedding

    @property
    def refusal_counts(self) -> Mapping[str, int]:
        return Counter(self._core.refusals.counts)  # a copy: a missing reason reads 0

    @property
    def metrics(self) -> Metrics:
        """The core's counters, read at scrape time (never written by the reader)."""
        return self._core.metrics
