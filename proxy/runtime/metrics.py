"""Prometheus metrics (prefix ``sip_policy_proxy_``) read at scrape time.

The hot path only increments plain integers on the core (:class:`~proxy.core.observe.metrics.Metrics`,
``ProxyCore.stats``); :class:`CoreCollector`, a custom prometheus-client collector, turns them
into metric families when ``/metrics`` is scraped, on the event loop (the HTTP side,
:mod:`proxy.runtime.http`, runs there), so the counters are read where they are written and
no lock is taken per message. Process metrics come from the library's ProcessCollector.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from proxy.core.access.sources import REFUSAL_REASONS
from proxy.core.observe.metrics import BUCKETS
from proxy.core.probe import target_name, upstream_name
from proxy.core.upstream_admin import STATES as ADMIN_STATES

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore
    from proxy.transport.udp_gate import FloodGate

PREFIX = "sip_policy_proxy_"
__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "PREFIX", "CoreCollector", "StreamCollector",
           "make_registry", "render"]

#: Every metric name the proxy exports (without the ``_total``/``_bucket`` suffixes), for the
#: dashboard check and the README.
METRIC_NAMES = (
    "requests", "responses", "policy_decisions", "redirects", "flow_retries",
    "learned_routes", "registrations", "transactions", "dialogs", "upstream_up",
    "final_response_seconds", "policy_reloads", "bad_messages", "refusals", "policy_info",
    "start_time_seconds", "connections", "connections_refused", "connections_closed",
    "connection_sends_failed", "flood_episodes", "overload",
)


class CoreCollector:
    """Reads the core's counters (and the runtime's reload counts) at scrape time."""

    def __init__(self, core: ProxyCore, reloads: Counter[str], started: float,
                 clock: Callable[[], float] = time.monotonic,
                 gate: FloodGate | None = None) -> None:
        self.core = core
        self.reloads = reloads
        self.started = started
        self.clock = clock  # the core's clock (the event loop's): hold-downs end on it
        self.gate = gate  # limits.udp_flood_rps: its drops are refusals too (reason "flood")

    def describe(self) -> list[Metric]:
        return []  # the families are only known at scrape time (auto_describe is off)

    def collect(self) -> Iterator[Metric]:
        view = self.core.view
        m = view.metrics
        yield _labelled(CounterMetricFamily, "requests", "Requests received, by method",
                        ["method"], m.requests.items())
        yield _labelled(CounterMetricFamily, "responses",
                        "Final responses sent to callers, by status code", ["code"],
                        ((str(k), v) for k, v in m.responses.items()))
        decisions = CounterMetricFamily(PREFIX + "policy_decisions",
                                        "Policy decisions on final responses",
                                        labels=["rule", "action"])
        for (rule, action), v in m.decisions.items():
            decisions.add_metric([rule, action], v)
        yield decisions
        yield _labelled(CounterMetricFamily, "redirects", "3xx redirects by outcome",
                        ["outcome"], ((k, m.redirects[k]) for k in
                                      ("followed", "learned", "refused")))
        yield CounterMetricFamily(PREFIX + "flow_retries",
                                  "RFC 5626 flow retries (a failed flow, the next one tried)",
                                  value=m.flow_retries)
        yield _labelled(CounterMetricFamily, "bad_messages", "Messages refused as malformed",
                        ["reason"], m.bad.items())
        counts = Counter(view.refusal_counts)
        gate = self.gate
        counts["flood"] = gate.dropped if gate is not None else 0
        reasons = (*REFUSAL_REASONS, *(k for k in counts if k not in REFUSAL_REASONS))
        yield _labelled(CounterMetricFamily, "refusals",
                        "Requests refused (and responses dropped) by the access rules, by reason",
                        ["reason"], ((r, counts[r]) for r in reasons))
        yield CounterMetricFamily(PREFIX + "flood_episodes",
                                  "Sources whose datagrams the UDP flood gate started dropping "
                                  "(limits.udp_flood_rps)",
                                  value=gate.episodes if gate is not None else 0)
        yield _labelled(CounterMetricFamily, "policy_reloads", "Policy reloads by result",
                        ["result"], ((k, self.reloads[k]) for k in ("ok", "refused")))
        yield GaugeMetricFamily(PREFIX + "learned_routes", "Learned Request-URI rewrites",
                                value=len(view.learned))
        yield GaugeMetricFamily(PREFIX + "registrations", "Registered bindings",
                                value=view.registrations)
        yield GaugeMetricFamily(PREFIX + "overload", "1 while new INVITEs and REGISTERs are "
                                "refused for overload (limits.overload_lag_ms, max_transactions)",
                                value=int(view.overloaded))
        yield GaugeMetricFamily(PREFIX + "transactions", "SIP transactions in progress",
                                value=view.active_transactions)
        yield GaugeMetricFamily(PREFIX + "dialogs", "Calls up (dialogs through the proxy)",
                                value=view.calls)
        up = GaugeMetricFamily(PREFIX + "upstream_up", "Upstream answers OPTIONS and is not "
                               "held down by a policy rule (1) or not (0), per group; an "
                               "upstream named by a domain per resolved address (target)",
                               labels=["upstream", "group", "target"])
        for state in view.upstream_states(self.clock()):
            name, target = upstream_name(state.target), target_name(state.target)
            for group in state.groups:
                up.add_metric([name, group, target], 1 if state.up else 0)
        yield up
        yield _admin_states(view)
        yield _histogram(m.buckets, m.final_sum)
        info = GaugeMetricFamily(PREFIX + "policy_info", "The policy in force",
                                 labels=["version"])
        info.add_metric([str(view.policy.version)], 1)
        yield info
        yield GaugeMetricFamily(PREFIX + "start_time_seconds", "Start time (Unix seconds)",
                                value=self.started)


def _admin_states(view: Any) -> Metric:
    """``upstream_admin_state{upstream,state}``: 1 for the state an operator set (up,
    drain, down; up when never set), 0 for the two others."""
    fam = GaugeMetricFamily(PREFIX + "upstream_admin_state",
                            "An operator's state of each upstream: 1 for the current one",
                            labels=["upstream", "state"])
    names = [upstream_name(t) for t in view.all_upstreams]
    names += [n for n in sorted(view.admin_states) if n not in names]
    for name in names:
        current = view.admin_state(name)
        for state in ADMIN_STATES:
            fam.add_metric([name, state], 1 if state == current else 0)
    return fam


#: what the stream collector reports, each with a sample from the start (0 until it happens)
STREAM_TRANSPORTS = ("tcp", "tls", "ws", "wss")
#: at accept (limit, per_source, rate and source_rate: limits.tcp_accept_rate), or at a
#: WebSocket upgrade (origin, subprotocol, upgrade)
REFUSED = ("limit", "per_source", "rate", "source_rate", "origin", "subprotocol", "upgrade")
#: busy: the TLS handshake pool had no room (proxy/transport/tlspool.py)
CLOSED = ("idle", "incomplete", "handshake", "tls", "framing", "too_large", "busy")
UNSENT = ("closed", "other_peer")


class StreamCollector:
    """The TCP, TLS, WS and WSS connection tables (:mod:`proxy.transport.conns`): connections
    open and in their handshake (TLS, WebSocket upgrade), refused at accept or at the upgrade
    and closed by the proxy (by reason), and sends for a connection that is gone or belongs to
    another peer (RFC 5626 5.3)."""

    def __init__(self, managers: Callable[[], Iterable[Any]]) -> None:
        self.managers = managers  # the runtime's TcpManager / TlsManager that exist

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        by_name = {m.name: m for m in self.managers()}
        conns = GaugeMetricFamily(PREFIX + "connections", "Stream connections in the table",
                                  labels=["transport", "state"])
        refused = CounterMetricFamily(PREFIX + "connections_refused",
                                      "Connections refused at accept or upgrade, by reason",
                                      labels=["transport", "reason"])
        closed = CounterMetricFamily(PREFIX + "connections_closed",
                                     "Connections the proxy closed, by reason",
                                     labels=["transport", "reason"])
        unsent = CounterMetricFamily(PREFIX + "connection_sends_failed",
                                     "Sends for a connection that is closed or another peer's",
                                     labels=["transport", "reason"])
        for name in STREAM_TRANSPORTS:
            m = by_name.get(name)
            table = list(m.conns.values()) if m is not None else []
            handshakes = sum(1 for c in table if not c.ready)
            conns.add_metric([name, "open"], len(table) - handshakes)
            conns.add_metric([name, "handshake"], handshakes)
            for fam, reasons, counts in (
                    (refused, REFUSED, m.stats.refused if m is not None else {}),
                    (closed, CLOSED, m.stats.closed if m is not None else {}),
                    (unsent, UNSENT, m.unsent if m is not None else {})):
                for r in reasons:
                    fam.add_metric([name, r], counts.get(r, 0))
        yield from (conns, refused, closed, unsent)


def _labelled(kind: type[CounterMetricFamily], name: str, doc: str, labels: list[str],
              items: Iterable[tuple[str, int]]) -> CounterMetricFamily:
    fam = kind(PREFIX + name, doc, labels=labels)
    for key, v in items:
        fam.add_metric([key], v)
    return fam


def _histogram(buckets: list[int], total: float) -> HistogramMetricFamily:
    cumulative: list[tuple[str, float]] = []
    n = 0
    for bound, count in zip((*[str(b) for b in BUCKETS], "+Inf"), buckets, strict=True):
        n += count
        cumulative.append((bound, n))
    return HistogramMetricFamily(PREFIX + "final_response_seconds",
                                 "Time from INVITE to its final response",
                                 buckets=cumulative, sum_value=total)


def make_registry(core: ProxyCore, reloads: Counter[str], started: float,
                  streams: Callable[[], Iterable[Any]] = tuple,
                  clock: Callable[[], float] = time.monotonic,
                  gate: FloodGate | None = None) -> CollectorRegistry:
    """``clock``: the core's clock (the event loop's ``time``); ``gate``: the UDP flood gate."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(core, reloads, started, clock, gate))  # type: ignore[arg-type]
    registry.register(StreamCollector(streams))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
