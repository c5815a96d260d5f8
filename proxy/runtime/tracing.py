"""The tracing taps of the runtime: every message received (``Runtime.deliver``) and sent
(``Runtime.dispatch``, once a transport has it) goes to the compiled tap
(:class:`proxy.sip.capture.Capture`: the recent-messages ring and the HEP queue); every
per-call summary and learned route of an ``Effects`` goes to the calls index
(:mod:`proxy.runtime.calls`).

The runtime holds one :class:`Tracer` in ``Runtime.tap``, or None when nothing is configured:
then the message path pays one attribute check. With it, a message costs a read of the wall
clock (microseconds: under uvloop the loop's clock ticks in milliseconds) and one call into
the compiled tap (a tuple, two bounded appends).

The proxy's own address in a HEP packet is the socket the message used: the listener of its
transport and address family (for a wildcard listener, ``advertise`` when it is an IP
address), or the local end of its TCP/TLS connection.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.runtime.calls import BYTES_PER_CALL, MESSAGES_PER_CALL, CallIndex
from proxy.runtime.hep import DROP_REASONS, QUEUE_SIZE, HepSender
from proxy.sip.capture import Capture, HepEncoder

if TYPE_CHECKING:
    from proxy.runtime.server import Runtime

log = logging.getLogger("proxy")
PREFIX = "sip_policy_proxy_"
#: the metrics this module adds to /metrics (without the _total suffixes)
METRIC_NAMES = ("hep_sent", "hep_dropped", "hep_queue", "trace_messages", "trace_bytes")
_WILDCARDS = ("0.0.0.0", "::")


class Tracer:
    """The taps: ``received(data, src, t)`` and ``sent(send, t)`` (``t``: Unix time) are the
    compiled capture's own methods; ``calls`` and ``hep`` are None when not configured."""

    def __init__(self, capture: Capture, calls: CallIndex | None, hep: HepSender | None
                 ) -> None:
        self.capture = capture
        self.calls = calls
        self.hep = hep
        self.received = capture.received
        self.sent = capture.sent

    def summaries(self, records: Iterable[object]) -> None:
        if self.calls is not None:
            self.calls.summaries(records)

    def learned(self, writes: Iterable[Any]) -> None:
        """Routes learned from a 3xx (``Effects.writes``: StoreWrite(route, ctx))."""
        if self.calls is None:
            return
        t = time.time()
        for w in writes:
            r = w[0]
            self.calls.learned(r.call_id, r.old_uri, r.new_uri, r.status, t)

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


def stream_local(rt: Runtime) -> Any:
    """``(transport, conn_id) -> (IP, port)`` of a TCP/TLS connection of ``rt``, or None."""
    def find(transport: str, conn_id: int) -> tuple[str, int] | None:
        manager = rt.tls if transport in ("tls", "wss") else rt.tcp
        conn = manager.conns.get(conn_id) if manager is not None else None
        if conn is None or conn.transport is None:
            return None
        name = conn.transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1])) if name else None
    return find


async def install(rt: Runtime) -> Tracer | None:
    """The tracer of ``rt``'s configuration, or None when there is nothing to trace (no
    ``hep:``, and no ``http:`` or ``trace_calls: 0``). A collector named by a host name is
    looked up once, off the event loop's thread (``loop.getaddrinfo``)."""
    cfg = rt.config
    ring = cfg.trace_calls if cfg.http is not None else 0
    hep = await _hep_sender(rt) if cfg.hep is not None else None
    if ring == 0 and hep is None:
        return None
    capture = Capture(ring * MESSAGES_PER_CALL, ring * BYTES_PER_CALL, QUEUE_SIZE,
                      hep.wake if hep is not None else None)
    if hep is not None:
        attach(hep, capture)
    return Tracer(capture, CallIndex(capture, ring) if ring else None, hep)


def attach(hep: HepSender, capture: Capture) -> None:
    """``hep`` drains ``capture``'s queue and pauses its tap when the collector refuses."""
    assert capture.hep is not None
    hep.queue = capture.hep
    hep.full = lambda: capture.hep_full
    hep.paused_count = lambda: capture.hep_refused

    def pause(on: bool) -> None:
        capture.hep_paused = on

    hep.pause = pause


async def _hep_sender(rt: Runtime) -> HepSender | None:
    target = rt.config.hep
    assert target is not None
    ip = await _address(rt, target.host, target.port)
    if ip is None:
        log.error("hep: cannot resolve %s: HEP export is off", target.host)
        return None
    encoder = HepEncoder(target.capture_id, local_addresses(rt), stream_local(rt))
    try:
        sender = HepSender.connect(rt.loop, ip, target.port, encoder)
    except OSError as exc:
        log.error("hep: cannot open a socket to %s:%d: %s: HEP export is off", ip, target.port,
                  exc)
        return None
    shown = f"[{ip}]:{target.port}" if ":" in ip else f"{ip}:{target.port}"
    log.info("HEP export to udp:%s (capture id %d)", shown, target.capture_id)
    return sender


async def _address(rt: Runtime, host: str, port: int) -> str | None:
    """An IP literal as it is; a name by the system's lookup in the executor (never on the
    loop's thread), its first address; None when it does not resolve."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = await rt.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


class TracingCollector:
    """``hep_sent_total``, ``hep_dropped_total{reason}``, ``hep_queue``, ``trace_messages``
    and ``trace_bytes``, read at scrape time from the runtime's tracer (zeros without one)."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        tracer: Tracer | None = getattr(self.rt, "tap", None)
        hep = tracer.hep if tracer is not None else None
        capture = tracer.capture if tracer is not None else None
        ring = capture.ring if capture is not None else None
        yield CounterMetricFamily(PREFIX + "hep_sent", "HEP packets sent",
                                  value=hep.sent if hep is not None else 0)
        dropped = CounterMetricFamily(PREFIX + "hep_dropped",
                                      "HEP packets dropped (queue full, collector refused ...)",
                                      labels=["reason"])
        counts = hep.dropped() if hep is not None else {}
        for reason in DROP_REASONS:
            dropped.add_metric([reason], counts.get(reason, 0))
        yield dropped
        yield GaugeMetricFamily(PREFIX + "hep_queue", "Messages waiting to go out as HEP",
                                value=len(hep.queue) if hep is not None else 0)
        yield GaugeMetricFamily(PREFIX + "trace_messages",
                                "Recent messages kept for /calls",
                                value=len(ring) if ring is not None else 0)
        yield GaugeMetricFamily(PREFIX + "trace_bytes",
                                "Bytes the recent messages count against their budget",
                                value=capture.bytes if capture is not None and ring is not None
                                else 0)
