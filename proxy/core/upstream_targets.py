"""Upstreams named by a domain (RFC 3263): each resolved target is an upstream of its own.

The runtime resolves an upstream's name (NAPTR, SRV, A/AAAA) and hands the core what it found
through :meth:`~proxy.core.core.ProxyCore.set_upstream_targets`; the core never resolves. Each
address found becomes a :class:`~proxy.core.types.Target` of its own, with the transport NAPTR
or the URI chose for it, so that routing, failover, probing, the access rules and the metrics
see it as an upstream:

- **order** (RFC 2782 "Usage rules", RFC 3263 4.3): for each new request, the targets of each
  SRV set (one per NAPTR record followed, in NAPTR order) by priority, lowest first; within a
  priority a weighted random draw among the SRV records (weight 0 first, then the running sum),
  each record's addresses in turn. So one proxy shares a carrier's servers by weight call by
  call, not answer by answer;
- **failover** (RFC 3263 4.3: "failure occurs if the transaction layer reports a 503 error
  response or a transport failure ... [or] times out without ever having received any
  response, provisional or final"), the request goes to the next target of the same name before
  anything else (:func:`next_target`), whatever the policy says (short of ``stop``); once the
  name's targets are used up, the policy decides as for any upstream;
- a request in flight keeps the targets it was routed with; a new answer (its TTL ran out)
  changes the targets of the next requests only;
- an upstream without an answer (an IP address, or a name DNS has not answered yet) stands for
  itself, and the runtime resolves it when it sends.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from proxy.core.effects import Out
from proxy.core.types import Target

if TYPE_CHECKING:
    from proxy.core.context import Branch, ResponseContext
    from proxy.core.core import ProxyCore

#: the most targets kept for one name (the runtime's resolver returns at most 32 already)
MAX_TARGETS = 32


class UpstreamTarget(NamedTuple):
    """One resolved address of an upstream, as the runtime hands it over: the transport to use,
    the IP address and port, the host it is the address of (the SRV target), that SRV record's
    priority and weight, and ``service``, the SRV set it came from (``_sip._udp.carrier.example``;
    "" when no SRV record was involved)."""

    transport: str
    host: str
    port: int
    name: str = ""
    priority: int = 0
    weight: int = 0
    service: str = ""


class _Record:
    """One SRV record of a name: its priority, weight and the addresses of its target."""

    __slots__ = ("priority", "targets", "weight")

    def __init__(self, priority: int, weight: int, targets: list[Target]) -> None:
        self.priority = priority
        self.weight = weight
        self.targets = targets


def by_priority(records: Sequence[_Record]) -> list[list[_Record]]:
    """The records in groups of one priority, lowest first; within a group the records of
    weight 0 first (RFC 2782 "Usage rules"), the others in the order given."""
    return [sorted((r for r in records if r.priority == p), key=lambda r: r.weight > 0)
            for p in sorted({r.priority for r in records})]


def weighted_order(weights: Sequence[int], rng: random.Random) -> list[int]:
    """RFC 2782 "Usage rules" within one priority, on the weights alone (records of weight 0
    first, as the callers put them): the indices of ``weights`` in the order drawn, each next
    one with a probability proportional to its weight (a uniform integer in [0, sum of the
    weights left], the first whose running sum reaches it). The one copy of the draw: the
    resolver's SRV order (:func:`proxy.runtime.resolver.srv_order`) uses it too."""
    left = list(range(len(weights)))
    out: list[int] = []
    while left:
        total = 0
        for i in left:
            total += weights[i]
        pick = rng.randint(0, total) if total else 0
        running = 0
        chosen = len(left) - 1
        for n, i in enumerate(left):
            running += weights[i]
            if running >= pick:
                chosen = n
                break
        out.append(left.pop(chosen))
    return out


def weighted_draw(group: Sequence[_Record], rng: random.Random) -> list[_Record]:
    """The records of one priority group in RFC 2782's weighted order (:func:`weighted_order`)."""
    return [group[i] for i in weighted_order([r.weight for r in group], rng)]


class UpstreamTargets:
    """What each named upstream resolved to (by its URI, the :attr:`Target.label` of the
    upstream), in the form the per-request order needs."""

    __slots__ = ("by_upstream", "owner", "rng")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        #: upstream URI -> its SRV sets (in the resolver's order), each a list of priority
        #: groups (:func:`by_priority`)
        self.by_upstream: dict[str, list[list[list[_Record]]]] = {}
        #: every resolved target -> the URI of the upstream it is a target of
        self.owner: dict[Target, str] = {}

    def set(self, upstream: Target, found: Sequence[UpstreamTarget]) -> None:
        """Replace the targets of ``upstream`` by ``found`` (none: it stands for itself again,
        resolved by the runtime at each send)."""
        uri = upstream.label
        for t in [t for t, u in self.owner.items() if u == uri]:
            del self.owner[t]
        if not found:
            self.by_upstream.pop(uri, None)
            return
        sets: list[list[_Record]] = []
        by_key: dict[tuple[str, str, int, int, int], _Record] = {}
        services: dict[str, list[_Record]] = {}
        for f in found[:MAX_TARGETS]:
            t = Target(f.transport, f.host, f.port, None, None, 1.0, uri,
                       fixed_transport=upstream.fixed_transport)
            if t in self.owner:
                continue  # one address once, at its first place
            self.owner[t] = uri
            key = (f.service, f.name.lower(), f.port, f.priority, f.weight)
            rec = by_key.get(key)
            if rec is None:
                rec = by_key[key] = _Record(f.priority, f.weight, [])
                records = services.get(f.service)
                if records is None:
                    records = services[f.service] = []
                    sets.append(records)
                records.append(rec)
            rec.targets.append(t)
        self.by_upstream[uri] = [by_priority(records) for records in sets]

    def targets_of(self, upstream: Target) -> list[Target]:
        """The resolved targets of ``upstream`` (for probing)."""
        return [t for groups in self.by_upstream.get(upstream.label, ())
                for group in groups for r in group for t in r.targets]

    def ordered(self, upstream: Target) -> list[Target] | None:
        """The targets of ``upstream`` in the order one new request tries them (see the module
        docstring); None when it has none (it stands for itself)."""
        sets = self.by_upstream.get(upstream.label)
        if sets is None:
            return None
        out: list[Target] = []
        for groups in sets:
            for group in groups:
                if len(group) == 1:  # one record of its priority: nothing to draw
                    out.extend(group[0].targets)
                else:
                    for r in weighted_draw(group, self.rng):
                        out.extend(r.targets)
        return out


def expand(core: ProxyCore, upstreams: Sequence[Target]) -> Sequence[Target]:
    """``upstreams`` (a group of them, in order) with each upstream that has resolved targets
    replaced by them, in the order of this request (see the module docstring)."""
    resolved = core.upstream_targets
    if not resolved.by_upstream:  # no name resolved: the common case, kept cheap
        return upstreams
    out: list[Target] = []
    for u in upstreams:
        ts = resolved.ordered(u)
        if ts is None:
            out.append(u)
        else:
            out.extend(ts)
    return out


def configured(core: ProxyCore, target: Target) -> Target | None:
    """The upstream of ``upstreams`` that ``target`` stands for: itself when it is one, the
    named upstream when it is one of its resolved addresses, else None (a registered phone, a
    redirect target). What a rule on the answering upstream (its group) needs."""
    uri = core.upstream_targets.owner.get(target)
    for u in core.all_upstreams:
        if u == target or (uri is not None and u.label == uri):
            return u
    return None


def in_group(core: ProxyCore, target: Target, members: frozenset[Target]) -> bool:
    """Whether ``target`` is an upstream of a group of ``members``: one of them, or a resolved
    address of one of them (a rule's ``upstream`` match, a ``hold_down``)."""
    if target in members:
        return True
    uri = core.upstream_targets.owner.get(target)
    return uri is not None and any(u.label == uri for u in members)


def probed(core: ProxyCore) -> list[Target]:
    """What the prober probes: every upstream of every group, a named one by each of its
    resolved targets."""
    out: list[Target] = []
    for u in core.all_upstreams:
        ts = core.upstream_targets.targets_of(u)
        out.extend(ts or (u,))
    return out


def update(core: ProxyCore, upstream: str, found: Sequence[UpstreamTarget], now: float,
           out: Out) -> None:
    """:meth:`~proxy.core.core.ProxyCore.set_upstream_targets`: the upstream whose URI is
    ``upstream`` resolved to ``found``. Its targets become upstreams for the next requests
    (routing, the access rules by address and port, probing: a new target is probed at once
    when probing runs); requests in flight keep theirs. An unknown URI changes nothing."""
    known = [u for u in core.all_upstreams if u.label == upstream]
    if not known:
        return
    for u in known:
        core.upstream_targets.set(u, found)
    addrs = {(t.host, t.port) for t in core.all_upstreams}
    addrs.update((t.host, t.port) for t in core.upstream_targets.owner)
    core._upstream_addrs = addrs
    core.prober.replace(core, probed(core), frozenset(core.upstream_targets.owner), now, out)


def next_target(core: ProxyCore, ctx: ResponseContext, br: Branch, status: int,
                response: bool) -> bool:
    """RFC 3263 4.3: whether the next target of the request's list takes over from ``br``, a
    target of a named upstream that failed (a 503 received or for a transport error, or a
    transaction timeout with no response at all: Timer B or F; not Timer C, which runs only
    after the target answered), because that next target is one of the same name (the caller,
    :func:`~proxy.core.proxy.responses.branch_final`, starts it); False: the policy decides."""
    owners = core.upstream_targets.owner
    if not owners or not ctx.groups or ctx.pending or not ctx.may_branch:
        return False
    if not (status == 503 or (status == 408 and not response and not br.provisional)):
        return False
    owner = owners.get(br.target)
    nxt = ctx.groups[0]
    if owner is None or not nxt or owners.get(nxt[0]) != owner:
        return False
    core.stats["upstream_target_failover"] += 1
    return True
