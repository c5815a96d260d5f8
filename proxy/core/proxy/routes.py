"""Where a new initial request goes by the policy's routes (README "Routes, upstream
groups and richer rules"): :func:`route` picks the first route that holds for the request's
Request-URI, From and To users, its packet's source (the address, never a header, and the
groups with an upstream there), its headers and the time (the core's clock plus
``core._wall_offset``: sans-IO, no clock read), and the route's group's usable upstreams
(drained or downed by an operator left out; then probed or held down left out, all of those
down: all). :mod:`.steer` applies the rest of the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from proxy.core.types import Source, Target
from proxy.core.upstream_targets import expand
from proxy.policy import DEFAULT_ROUTE, Policy, RequestView, Route, user_part
from proxy.sip import SipMessage

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


class Routed:
    """Where a new initial request goes: the route, its group, the group's usable upstreams
    and the request as the policy saw it (kept for rules that match on the request)."""

    __slots__ = ("route", "group", "targets", "view")

    def __init__(self, route: Route, group: str, targets: list[Target],
                 view: RequestView | None) -> None:
        self.route = route
        self.group = group
        self.targets = targets
        self.view = view


def request_view(core: ProxyCore, policy: Policy, msg: SipMessage, src: Source) -> RequestView:
    """The request as routes and rules see it: users of the Request-URI, From and To (as
    :func:`proxy.policy.user_part` reads them, as ``check`` does), the packet's source address
    and its groups, and the values of the request headers the policy matches on (RFC 3261
    7.3.1: several lines joined with ``", "``)."""
    headers: dict[str, str] | None = None
    if policy.request_headers:
        headers = {}
        for name in policy.request_headers:
            values = msg.get_all(name)
            if values:
                headers[name] = ", ".join(values)
    host = src.host
    return RequestView(
        msg.method,
        user_part(msg.request_uri),
        user_part(msg.get("from") or ""),
        user_part(msg.get("to") or ""),
        host,
        core.source_groups.get(host.lower(), frozenset()),
        headers,
    )


def source_groups(core: ProxyCore, resolved: Mapping[str, Iterable[str]]
                  ) -> dict[str, frozenset[str]]:
    """By host (lower case): the groups with an upstream there; ``resolved`` adds, for an
    upstream named by a domain, the addresses its name resolved to (a request comes from an
    address, never from a name)."""
    found: dict[str, set[str]] = {}
    for name, members in core.groups.items():
        for t in members:
            host = t.host.lower()
            found.setdefault(host, set()).add(name)
            for address in resolved.get(host, ()):
                found.setdefault(address.lower(), set()).add(name)
    return {host: frozenset(names) for host, names in found.items()}


def wall(core: ProxyCore, now: float) -> float:
    """The wall time (Unix seconds) at the core's ``now``."""
    return now + core._wall_offset


def route(core: ProxyCore, msg: SipMessage, src: Source, now: float, *,
          match_routes: bool) -> Routed | None:
    """Where a new initial request goes. ``match_routes``: the first route of the policy that
    holds, None when none does (the caller goes on with its routing order); otherwise the
    first group (no route matched). None too when the group has no upstream."""
    policy = core._policy
    view: RequestView | None = None
    if match_routes or policy.needs_request:
        view = request_view(core, policy, msg, src)
    chosen = DEFAULT_ROUTE
    if match_routes:
        assert view is not None
        chosen = policy.route(view, wall(core, now))
        if chosen is DEFAULT_ROUTE:
            return None
    group = chosen.group_or(core.default_group)
    members = core.groups.get(group, ())
    if not members:
        return None
    return Routed(chosen, group, usable(core, members, now), view)


def usable(core: ProxyCore, members: Sequence[Target], now: float) -> list[Target]:
    """``members`` that may take a new call: without those an operator drained or downed
    (none left: none, :mod:`proxy.core.upstream_admin`), then without those probed down or
    held down by a rule (none left: all of the admitted ones are tried)."""
    admitted = core.admin.admitted(members)
    # an upstream named by a domain by each of its resolved addresses, in this request's
    # order (RFC 3263, RFC 2782: :mod:`proxy.core.upstream_targets`)
    return core.prober.available(expand(core, admitted), now) if admitted else []
