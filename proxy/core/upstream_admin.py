"""Runtime control of upstreams (sans-IO): ``up``, ``drain`` and ``down``, as Kamailio's
``dispatcher.set_state`` (README "Runtime control of upstreams").

An operator sets an upstream's administrative state (``sip-policy-proxy upstreams drain URI``
or ``POST /upstreams/drain``); it is independent of what probing finds:

- ``drain``: no new initial request goes to it (:meth:`UpstreamAdmin.admitted`, applied where
  the target set is built, :func:`~proxy.core.proxy.routes.usable`); everything of the calls
  in progress goes on: in-dialog requests follow their Route set or Request-URI (RFC 3261
  16.4, 12.2), responses their branch (17.1.3), and the upstream stays an upstream for the
  access rules (its BYE is trusted). It is still probed.
- ``down``: the same for routing, and probing leaves it alone (no OPTIONS rounds to it);
- ``up``: back to normal; probing decides (the next round is sent at once, so an upstream
  that did not come back is found down within the probe timeout).

The state of every upstream is one :class:`AdminState`, keyed by the upstream's URI as
configured (``upstream_name``), with the wall-clock time it was set and the node that set it.
The runtime stores it (every node of a shared state sees it; it outlives a restart) and feeds
each state, set here or read from the store, to :meth:`ProxyCore.set_upstream_admin`; a change
is reported as an :class:`AdminChange` in ``Effects.logs`` (the runtime logs one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from proxy.core.effects import Out
from proxy.core.probe import upstream_name
from proxy.core.types import Target

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

#: the administrative states, ``up`` the default of an upstream never set
STATES = ("up", "drain", "down")


class AdminState(NamedTuple):
    """One upstream's administrative state as set and stored."""

    upstream: str  # its URI as configured
    state: str  # up | drain | down
    since: float  # wall-clock unix seconds when it was set
    node: str = ""  # the proxy (``node:``) that set it


class AdminChange(NamedTuple):
    """An upstream's administrative state changed (a log record of ``Effects.logs``)."""

    upstream: str
    state: str
    before: str
    node: str
    origin: str  # "here" (set on this node) | "store" (read from the state store)


class UpstreamAdmin:
    """The administrative state of every upstream set so far."""

    __slots__ = ("states", "blocked", "unprobed")

    def __init__(self) -> None:
        self.states: dict[str, AdminState] = {}
        #: names of the upstreams that take no new calls (drain, down)
        self.blocked: frozenset[str] = frozenset()
        #: names of the upstreams probing leaves alone (down)
        self.unprobed: frozenset[str] = frozenset()

    def state(self, name: str) -> str:
        entry = self.states.get(name)
        return "up" if entry is None else entry.state

    def admitted(self, targets: Sequence[Target]) -> Sequence[Target]:
        """``targets`` without the upstreams that take no new calls (``targets`` itself,
        no copy, when none is drained or down: the common case, on every new call)."""
        blocked = self.blocked
        if not blocked:
            return targets
        return [t for t in targets if upstream_name(t) not in blocked]

    def probed(self, t: Target) -> bool:
        return not self.unprobed or upstream_name(t) not in self.unprobed

    def put(self, entry: AdminState) -> str | None:
        """Record ``entry``; returns the state before it when the state changed."""
        before = self.state(entry.upstream)
        self.states[entry.upstream] = entry
        self.blocked = frozenset(n for n, e in self.states.items() if e.state != "up")
        self.unprobed = frozenset(n for n, e in self.states.items() if e.state == "down")
        return before if before != entry.state else None


def set_state(core: ProxyCore, entry: AdminState, origin: str, now: float, out: Out) -> None:
    """Apply ``entry`` (see :meth:`ProxyCore.set_upstream_admin`)."""
    if entry.state not in STATES:
        raise ValueError(f"not an upstream state: {entry.state!r} (up, drain or down)")
    before = core.admin.put(entry)
    if before is None:
        return
    out.log(AdminChange(entry.upstream, entry.state, before, entry.node, origin))
    if before == "down":
        # Back to probing: the next round at once, so that probing decides (README).
        core.prober.probe_soon(core, now)
