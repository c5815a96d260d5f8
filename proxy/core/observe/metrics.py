"""What the core counts and reports (sans-IO): plain integer counters read at scrape time, the
time-to-final histogram as fixed bucket counts, and the one summary per INVITE transaction.

Counting stays on the hot path as dictionary and integer increments, with no lock: the
runtime's Prometheus collector (:mod:`proxy.runtime.metrics`) reads these values on the
event loop when ``/metrics`` is scraped. The per-call summary is a value (:class:`CallLog`)
handed to the runtime in :class:`~proxy.core.effects.Effects`; the runtime formats and logs it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import TYPE_CHECKING, Any, Final

from proxy.core.context import ServerEntry
from proxy.core.effects import Out

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


#: Upper bounds (seconds) of the ``final_response_seconds`` buckets (INVITE to final).
BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                              60.0, 180.0)
#: Methods counted under their own label; anything else is ``other`` (bounded cardinality).
KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO",
                           "UPDATE", "PRACK", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER",
                           "PUBLISH"})
#: ``bad_messages_total`` reasons.
BAD_REASONS = ("unparsable", "invalid_request", "malformed_header", "forged_response")


#: ``Counter`` whose ``c[k] += 1`` stores through dict's own slot: ``Counter.__delitem__``
#: (a Python method) makes every item assignment of a Counter a Python-level call of
#: ``dict.__setitem__`` (about a thousand instructions, a dozen times per call); with
#: dict's ``__delitem__`` back, CPython fills the slot with dict's C function again. The one
#: difference: ``del c[k]`` of a missing key raises KeyError (nothing here deletes). Made by
#: ``type()``: a class statement would be compiled, and mypyc cannot subclass Counter.
FastCounter: Final[Any] = type("FastCounter", (Counter,), {
    "__delitem__": dict.__delitem__, "__slots__": (), "__module__": __name__})


class Metrics:
    """The core's counters; every field is read (never reset) by the collector."""

    __slots__ = ("requests", "responses", "decisions", "redirects", "bad", "flow_retries",
                 "buckets", "final_sum", "final_count", "events")

    def __init__(self) -> None:
        self.requests: Counter[str] = FastCounter()  # by method
        self.responses: Counter[int] = FastCounter()  # final responses sent to callers, by code
        self.decisions: Counter[tuple[str, str]] = FastCounter()  # (rule, action)
        self.redirects: Counter[str] = FastCounter()  # followed | learned | refused
        self.bad: Counter[str] = FastCounter()  # by reason
        self.flow_retries = 0
        self.buckets = [0] * (len(BUCKETS) + 1)  # not cumulative; the last one is +Inf
        self.final_sum = 0.0
        self.final_count = 0
        #: everything else the core counts, by name (``ProxyCore.stats``: the same counter)
        self.events: Counter[str] = FastCounter()

    def request(self, method: str) -> None:
        self.requests[method if method in KNOWN_METHODS else "other"] += 1

    def observe_final(self, seconds: float) -> None:
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.final_sum += seconds
        self.final_count += 1


class CallLog:
    """The summary of one finished INVITE server transaction (one log line at info).

    A plain slotted class, not a NamedTuple: the compiled build constructs it natively (a
    NamedTuple goes through its Python-level ``__new__``), once per call."""

    __slots__ = ("call_id", "decisions", "from_", "seconds", "status", "targets", "to")

    def __init__(self, call_id: str, from_: str, to: str, targets: tuple[str, ...],
                 decisions: tuple[tuple[str, str, int], ...], status: int,
                 seconds: float) -> None:
        self.call_id = call_id
        self.from_ = from_
        self.to = to
        self.targets = targets  # where branches went, in order
        self.decisions = decisions  # (rule, action, status) per final response
        self.status = status  # the final status sent to the caller
        self.seconds = seconds  # INVITE to final response

    def _key(self) -> tuple[object, ...]:
        return (self.call_id, self.from_, self.to, self.targets, self.decisions, self.status,
                self.seconds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallLog) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "CallLog" + repr(self._key())

    def text(self) -> str:
        tried = ",".join(self.targets) or "-"
        decided = ",".join(f"{r}:{a}({s})" for r, a, s in self.decisions) or "-"
        return (f"call Call-ID={self.call_id} From={self.from_} To={self.to} tried={tried} "
                f"decisions={decided} status={self.status} time={format(self.seconds, '.3f')}s")

    def fields(self) -> dict[str, object]:
        return {
            "call_id": self.call_id, "from": self.from_, "to": self.to,
            "targets": list(self.targets),
            "decisions": [{"rule": r, "action": a, "status": s} for r, a, s in self.decisions],
            "status": self.status, "seconds": round(self.seconds, 6),
        }


def rule_name(rule: str | None) -> str:
    return rule if rule is not None else "(no rule)"


def final_sent(core: ProxyCore, entry: ServerEntry, status: int, now: float, out: Out) -> None:
    """The first final response of a server transaction went to the caller: count it; for an
    INVITE, time it and hand out the call's summary."""
    m = core.metrics
    m.responses[status] += 1
    req = entry.request
    if req is None or req.method != "INVITE":
        return
    seconds = max(0.0, now - entry.started)
    m.observe_final(seconds)
    ctx = entry.ctx
    targets: tuple[str, ...] = ()
    decisions: tuple[tuple[str, str, int], ...] = ()
    if ctx is not None:
        owners = core.upstream_targets.owner  # the resolved addresses of named upstreams
        targets = tuple(f"{t.label} ({t.transport}:{t.host}:{t.port})" if owners and t in owners
                        else t.label or f"{t.host}:{t.port}"
                        for t in (b.target for b in ctx.branches))
        decisions = tuple((rule_name(r[2].rule), r[2].verb, r.status)
                          for r in ctx.responses if r[2] is not None)
    try:
        from_, to, call_id = req.get("from") or "", req.get("to") or "", req.call_id or ""
    except Exception:  # noqa: BLE001 - a summary never fails the call
        from_, to, call_id = "", "", ""
    out.log(CallLog(call_id, from_, to, targets, decisions, status, seconds))
