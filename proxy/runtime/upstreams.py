"""Upstreams named by a domain (``upstreams: [sip:carrier.example]``): RFC 3263 at start-up
and again whenever the answer expires.

At start-up (:func:`plan`, before the core is built) each named upstream is resolved once:

- its transport, when its URI names none, is the one of its first target (NAPTR and SRV
  choose it among the proxy's transports, RFC 3263 4.1);
- the core's upstream for it keeps the name (and the URI's port, else the transport's
  default); the runtime hands the core every address found (:func:`core_targets`,
  ``ProxyCore.set_upstream_targets``), and each is an upstream of its own there (order by SRV
  priority and weight per call, failover to the next address of the name, probing, the access
  rules: :mod:`proxy.core.upstream_targets`). Only a name without an answer is sent to as a
  name, resolved at the send (:mod:`proxy.runtime.sends`).

A name with no record at all (NXDOMAIN or no NAPTR, SRV, A or AAAA) is refused as before, by
a config error (as an unresolvable name always was); a name whose server does not answer is
not: the proxy starts and asks again at the first send.

:class:`Refresher` resolves the named upstreams again when their answer expires and hands the
new :class:`~proxy.runtime.resolver.Targets` to a callback, which hands them to the core (a
failure keeps the last answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple

from proxy.config import Config, Upstream
from proxy.core.types import Target
from proxy.core.upstream_targets import UpstreamTarget
from proxy.diagnostics import ConfigError, Diagnostic
from proxy.runtime.dns import RETRY
from proxy.runtime.resolver import DEFAULT_PORT, Hop, Resolver, Targets, is_ip
from proxy.sip import ParseError, SipUri, parse_uri

log = logging.getLogger("proxy")

#: the soonest a named upstream is resolved again (a TTL of 0 or 1 would be every call)
MIN_REFRESH = 5.0


class Named(NamedTuple):
    """An upstream named by a domain: its position in ``upstreams``, config entry and hop."""

    position: int
    upstream: Upstream
    hop: Hop


class Plan(NamedTuple):
    """The core's upstream targets (of every group, each once, in config order:
    ``Config.all_upstreams``), the addresses they stand for, the
    upstreams named by a domain and what their names resolved to (by position)."""

    targets: tuple[Target, ...]
    addresses: frozenset[tuple[str, int]]
    named: tuple[Named, ...]
    found: dict[int, Targets]


def hop_of(u: Upstream) -> Hop:
    """The upstream's URI as RFC 3263 reads it: the port and transport it names, if any."""
    try:
        uri = parse_uri(u.uri.strip())
    except ParseError:
        uri = None
    if not isinstance(uri, SipUri):  # the config loader accepted it: cannot happen
        return Hop(u.host, u.port, u.transport, u.transport == "tls")
    return Hop(u.host.lower(), uri.port, uri.transport and u.transport, uri.scheme == "sips")


def _target(u: Upstream, transport: str, port: int) -> Target:
    return Target(transport, u.host.lower() if not is_ip(u.host) else u.host, port, None, None,
                  1.0, u.uri, fixed_transport=";transport=" in u.uri.lower())


def unresolved(config: Config) -> Plan:
    """The plan without a lookup: names keep the transport and port of their URI (or the
    defaults), their addresses are found at the first send."""
    targets: list[Target] = []
    named: list[Named] = []
    addresses: set[tuple[str, int]] = set()
    for i, u in enumerate(config.all_upstreams):
        targets.append(_target(u, u.transport, u.port))
        if is_ip(u.host):
            addresses.add((u.host, u.port))
        else:
            named.append(Named(i, u, hop_of(u)))
    return Plan(tuple(targets), frozenset(addresses), tuple(named), {})


def groups_of(config: Config, plan: Plan) -> tuple[tuple[str, tuple[Target, ...]], ...]:
    """Each upstream group of ``config`` with the plan's targets of its upstreams."""
    index = {(u.host.lower(), u.port, u.transport): i
             for i, u in enumerate(config.all_upstreams)}
    return tuple((g.name, tuple(plan.targets[index[(u.host.lower(), u.port, u.transport)]]
                                for u in g.upstreams)) for g in config.upstream_groups)


async def plan(config: Config, resolver: Resolver) -> Plan:
    """Resolve the named upstreams once (concurrently); see the module docstring."""
    base = unresolved(config)
    found = await asyncio.gather(*(resolver.targets(n.hop) for n in base.named))
    targets = list(base.targets)
    addresses = set(base.addresses)
    errors: list[Diagnostic] = []
    answers: dict[int, Targets] = {}
    for n, answer in zip(base.named, found, strict=True):
        u = n.upstream
        if not answer.targets:
            if answer.failed:
                log.warning("upstream %s: no answer from DNS yet; it is looked up again when "
                            "a request goes there", u.uri)
                continue
            errors.append(Diagnostic(str(config.path), 1, 1, f"upstream {u.uri}: cannot "
                                     f"resolve {u.host} (no NAPTR, SRV, A or AAAA record)"))
            continue
        first = answer.targets[0]
        port = n.hop.port if n.hop.port is not None else DEFAULT_PORT[first.transport]
        targets[n.position] = _target(u, first.transport, port)
        addresses.update((t.host, t.port) for t in answer.targets)
        answers[n.position] = answer
        log.info("upstream %s: %s", u.uri, describe(answer))
    if errors:
        raise ConfigError(errors)
    return Plan(tuple(targets), frozenset(addresses), base.named, answers)


def core_targets(answer: Targets) -> tuple[UpstreamTarget, ...]:
    """What the core takes from an answer (:meth:`ProxyCore.set_upstream_targets`)."""
    return tuple(UpstreamTarget(t.transport, t.host, t.port, t.name, t.priority, t.weight,
                                t.service) for t in answer.targets)


def describe(answer: Targets) -> str:
    return ", ".join(f"{t.transport}:{t.host}:{t.port} ({t.name}, priority {t.priority}, "
                     f"weight {t.weight})" if t.name != t.host else
                     f"{t.transport}:{t.host}:{t.port}" for t in answer.targets) or "nothing"


class Refresher:
    """Resolves each named upstream again when its answer expires (at most every
    ``MIN_REFRESH`` s, every ``RETRY`` s while DNS fails) and calls ``changed(named, targets)``
    with each answer (``current`` holds the last one of each)."""

    def __init__(self, resolver: Resolver, named: tuple[Named, ...],
                 changed: Callable[[Named, Targets], None],
                 current: dict[int, Targets] | None = None) -> None:
        self.resolver = resolver
        self.named = named
        self.changed = changed
        self.current: dict[int, Targets] = dict(current or {})
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = False

    def start(self) -> None:
        for n in self.named:
            self._run(n)

    def stop(self) -> None:
        self.stopped = True
        for h in self._timers.values():
            h.cancel()
        for t in self._tasks:
            t.cancel()

    def _run(self, n: Named) -> None:
        if self.stopped:
            return
        task = asyncio.get_running_loop().create_task(self._refresh(n))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, n: Named) -> None:
        loop = asyncio.get_running_loop()
        clock = self.resolver.dns.clock
        try:
            answer = await self.resolver.targets(n.hop)
        except Exception:  # noqa: BLE001 - the refresh goes on whatever one lookup did
            log.exception("resolving upstream %s", n.upstream.uri)
            answer = Targets((), clock() + RETRY, failed=True)
        if answer.targets or not answer.failed:  # a failure keeps the last answer
            self.current[n.position] = answer
            self.changed(n, answer)
        wait = max(answer.expires - clock(), RETRY if answer.failed else MIN_REFRESH)
        if not self.stopped:
            self._timers[n.position] = loop.call_later(wait, self._run, n)
