"""The tracing taps of the runtime: every message received (``Runtime.deliver``) and sent
(``Runtime.dispatch``, once a transport has it), every per-call summary and learned route of
an ``Effects``, fed to the recent-calls ring (:mod:`proxy.runtime.calls`) and the HEP export
(:mod:`proxy.runtime.hep`).

The runtime holds one :class:`Tracer` in ``Runtime.tap``, or None when neither is configured:
then the message path pays one attribute check. With them, a message costs a wall-clock read,
the ring's byte search and tuple append, and one tuple queued for HEP.

The proxy's own address in a HEP packet is the socket the message used: the listener of its
transport and address family (for a wildcard listener, ``advertise`` when it is an IP
address), or the local end of its TCP/TLS connection.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.runtime.calls import CallRing
from proxy.runtime.hep import DROP_REASONS, HepSender
from proxy.sip.transport import Send, Source

if TYPE_CHECKING:
    from proxy.runtime.server import Runtime

log = logging.getLogger("proxy")
PREFIX = "sip_policy_proxy_"
#: the metrics this module adds to /metrics (without the _total suffixes)
METRIC_NAMES = ("hep_sent", "hep_dropped", "hep_queue", "trace_calls", "trace_bytes")
_CONN_CACHE = 4096  # local addresses of stream connections remembered (cleared past it)
_WILDCARDS = ("0.0.0.0", "::")


class Tracer:
    """The taps; ``ring`` and ``hep`` are None when not configured."""

    def __init__(self, ring: CallRing | None, hep: HepSender | None,
                 locals_: dict[tuple[str, bool], tuple[str, int]],
                 streams: Any = None) -> None:
        self.ring = ring
        self.hep = hep
        self.locals = locals_  # (transport, IPv6?) -> the proxy's (IP, port)
        self.streams = streams  # the runtime: its tcp / tls managers hold the connections
        self._conn_local: dict[int, tuple[str, int]] = {}

    # ------------------------------------------------------------------ the message path

    def received(self, data: bytes, src: Source) -> None:
        t = time.time()
        ring = self.ring
        if ring is not None:
            ring.message(data, t, True, src.transport, src.host, src.port)
        hep = self.hep
        if hep is not None:
            hep.push((data, t, True, src.transport, src.host, src.port,
                      self.local(src.transport, src.host, src.conn_id)))

    def sent(self, s: Send) -> None:
        t = time.time()
        ring = self.ring
        if ring is not None:
            ring.message(s.data, t, False, s.transport, s.host, s.port)
        hep = self.hep
        if hep is not None:
            hep.push((s.data, t, False, s.transport, s.host, s.port,
                      self.local(s.transport, s.host, s.conn_id)))

    def local(self, transport: str, host: str, conn_id: int | None) -> tuple[str, int]:
        """The proxy's address for a message with ``host`` over ``transport``."""
        if conn_id is not None and transport != "udp":
            found = self._conn_local.get(conn_id)
            if found is None:
                found = self._stream_local(transport, conn_id)
                if found is not None:
                    if len(self._conn_local) >= _CONN_CACHE:
                        self._conn_local.clear()
                    self._conn_local[conn_id] = found
            if found is not None:
                return found
        v6 = ":" in host
        return self.locals.get((transport, v6)) or ("::" if v6 else "0.0.0.0", 0)

    def _stream_local(self, transport: str, conn_id: int) -> tuple[str, int] | None:
        manager = getattr(self.streams, "tls" if transport == "tls" else "tcp", None)
        conn = manager.conns.get(conn_id) if manager is not None else None
        if conn is None or conn.transport is None:
            return None
        name = conn.transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1])) if name else None

    # ------------------------------------------------------------------ what the core said

    def summaries(self, records: Iterable[object]) -> None:
        if self.ring is not None:
            self.ring.summaries(records)

    def learned(self, writes: Iterable[Any]) -> None:
        """Routes learned from a 3xx (``Effects.writes``: StoreWrite(route, ctx))."""
        ring = self.ring
        if ring is None:
            return
        t = time.time()
        for w in writes:
            r = w[0]
            ring.learned(r.call_id, r.old_uri, r.new_uri, r.status, t)

    def close(self) -> None:
        if self.hep is not None:
            self.hep.close()


def local_addresses(rt: Runtime) -> dict[tuple[str, bool], tuple[str, int]]:
    """(transport, IPv6?) -> the proxy's (IP, port) as written in HEP packets: the first
    listener of that transport and family (a wildcard one: ``advertise`` if an IP)."""
    out: dict[tuple[str, bool], tuple[str, int]] = {}
    advertised = _advertised_ip(rt.config.advertise)
    for li in rt.config.listen:
        v6 = ":" in li.host
        host = li.host
        if host in _WILDCARDS and advertised is not None and (":" in advertised) == v6:
            host = advertised
        out.setdefault((li.transport, v6), (host, li.port))
    return out


def _advertised_ip(advertise: str | None) -> str | None:
    if not advertise:
        return None
    host = advertise
    if host.startswith("["):
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def install(rt: Runtime) -> Tracer | None:
    """The tracer of ``rt``'s configuration, or None when there is nothing to trace (no
    ``hep:``, and no ``http:`` or ``trace_calls: 0``)."""
    cfg = rt.config
    ring = CallRing(cfg.trace_calls) if cfg.http is not None and cfg.trace_calls > 0 else None
    hep = None
    if cfg.hep is not None:
        ip = rt.resolver.resolve_now(cfg.hep.host)
        if ip is None:
            log.error("hep: cannot resolve %s: HEP export is off", cfg.hep.host)
        else:
            try:
                hep = HepSender.connect(rt.loop, ip, cfg.hep.port, cfg.hep.capture_id)
            except OSError as exc:
                log.error("hep: cannot open a socket to %s:%d: %s: HEP export is off", ip,
                          cfg.hep.port, exc)
            else:
                log.info("HEP export to udp:%s (capture id %d)",
                         f"[{ip}]:{cfg.hep.port}" if ":" in ip else f"{ip}:{cfg.hep.port}",
                         cfg.hep.capture_id)
    if ring is None and hep is None:
        return None
    return Tracer(ring, hep, local_addresses(rt), rt)


class TracingCollector:
    """``hep_sent_total``, ``hep_dropped_total{reason}``, ``hep_queue``, ``trace_calls`` and
    ``trace_bytes``, read at scrape time from the runtime's tracer (zeros without one)."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        tracer: Tracer | None = getattr(self.rt, "tap", None)
        hep = tracer.hep if tracer is not None else None
        ring = tracer.ring if tracer is not None else None
        yield CounterMetricFamily(PREFIX + "hep_sent", "HEP packets sent",
                                  value=hep.sent if hep is not None else 0)
        dropped = CounterMetricFamily(PREFIX + "hep_dropped",
                                      "HEP packets dropped (queue full, send error ...)",
                                      labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], hep.dropped[reason] if hep is not None else 0)
        yield dropped
        yield GaugeMetricFamily(PREFIX + "hep_queue", "Messages waiting to go out as HEP",
                                value=len(hep.queue) if hep is not None else 0)
        yield GaugeMetricFamily(PREFIX + "trace_calls", "Calls kept for /calls",
                                value=len(ring.calls) if ring is not None else 0)
        yield GaugeMetricFamily(PREFIX + "trace_bytes",
                                "Bytes the kept calls count against their budget",
                                value=ring.bytes if ring is not None else 0)

