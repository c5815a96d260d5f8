"""Upstream probing (sans-IO): an OPTIONS to every upstream each ``interval`` seconds.

Any response (a 404 or 501 too) means the upstream is alive; silence for ``timeout`` seconds
or a transport error means it is down; the first answer brings it back up. Routing skips the
upstreams that are down, or held down by a policy rule's ``hold_down`` (:meth:`Prober.hold`,
:meth:`Prober.available`), and tries all of them when all are.

The :class:`Prober` sits in the core's timer queue like a transaction (``deadline``); over
UDP a probe is retransmitted at T1, 2*T1, ... (capped at T2) until its timeout. Its branch is
signed like every branch the proxy generates; a response to it never reaches the caller side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.core.effects import WARNING, Out
from proxy.core.types import Send, Target

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore



def upstream_name(t: Target) -> str:
    return t.label or f"sip:{t.host}:{t.port}"


def target_name(t: Target) -> str:
    """Where probes and requests for ``t`` go: ``udp:192.0.2.10:5060`` (the ``target`` label of
    ``upstream_up``: one of the resolved addresses of an upstream named by a domain)."""
    host = f"[{t.host}]" if ":" in t.host else t.host
    return f"{t.transport}:{host}:{t.port}"


class Probe:
    """One OPTIONS in flight to one upstream (the token of its :class:`Send`)."""

    __slots__ = ("upstream", "branch", "data", "expires", "resend", "gap")

    def __init__(self, upstream: Target, branch: str, data: bytes, expires: float,
                 resend: float | None, gap: float) -> None:
        self.upstream = upstream
        self.branch = branch
        self.data = data
        self.expires = expires  # no answer by then: down
        self.resend = resend  # next UDP retransmission, None over a reliable transport
        self.gap = gap


class Prober:
    """The probing state of every upstream (RFC 3261 11: OPTIONS as a liveness check)."""

    __slots__ = ("upstreams", "interval", "timeout", "up", "pending", "next_round",
                 "deadline", "n", "held", "resolved")

    def __init__(self, upstreams: Sequence[Target], interval: float, timeout: float) -> None:
        self.upstreams = tuple(upstreams)
        self.interval = interval
        self.timeout = timeout
        #: per upstream: True (up; also before its first probe) or False (down)
        self.up: dict[Target, bool] = {t: True for t in self.upstreams}
        self.pending: dict[str, Probe] = {}  # by branch
        self.next_round: float | None = None
        self.deadline: float | None = None
        self.n = 0
        #: the upstreams that are resolved addresses of a named one (logged with their address)
        self.resolved: frozenset[Target] = frozenset()
        #: upstreams held down by a policy rule (``hold_down``): until when, on the core's
        #: clock (:meth:`hold`); an entry past its time no longer counts
        self.held: dict[Target, float] = {}

    @property
    def enabled(self) -> bool:
        return self.interval > 0 and bool(self.upstreams)

    def available(self, targets: Sequence[Target], now: float) -> list[Target]:
        """``targets`` without the upstreams probed down or held down at ``now``; all of
        them when none is left (a group all down is tried anyway)."""
        held = self.held
        alive = [t for t in targets if self.up.get(t, True)
                 and (not held or held.get(t, 0.0) <= now)]
        return alive or list(targets)

    def hold(self, core: ProxyCore, t: Target, seconds: float, now: float) -> None:
        """A policy rule's ``hold_down``: leave ``t`` out of every group for ``seconds`` from
        ``now`` (the core's clock); a later hold of the same upstream extends it, never
        shortens it. Bounded: one entry per upstream of the configuration."""
        until = now + seconds
        if until > self.held.get(t, 0.0):
            self.held[t] = until
            core.note(WARNING, "upstream %s held down for %g s by the policy",
                      upstream_name(t), seconds)

    def held_until(self, t: Target, now: float) -> float | None:
        """Until when ``t`` is held down, None when it is not (at ``now``)."""
        until = self.held.get(t)
        if until is None or until <= now:
            return None
        return until

    def _reschedule(self, core: ProxyCore) -> None:
        d = self.next_round
        for p in self.pending.values():
            for x in (p.expires, p.resend):
                if x is not None and (d is None or x < d):
                    d = x
        self.deadline = d
        core.queue.schedule(self)

    def _mark(self, core: ProxyCore, t: Target, alive: bool, why: str) -> None:
        if self.up.get(t) is alive:
            return
        self.up[t] = alive
        name = upstream_name(t)
        if t in self.resolved:
            name += f" target {target_name(t)}"
        core.note(WARNING, "upstream %s is %s (%s)", name, "up" if alive else "down", why)

    def replace(self, core: ProxyCore, upstreams: Sequence[Target], resolved: frozenset[Target],
                now: float, out: Out) -> None:
        """Probe ``upstreams`` from now on (what a named upstream resolves to changed;
        ``resolved``: those that are resolved addresses). One still there keeps its state; a new
        one counts as up until its probe says otherwise, and is probed at once when probing
        runs; one gone is forgotten, with its probe in flight."""
        new = tuple(upstreams)
        self.resolved = resolved
        if new == self.upstreams:
            return
        old = self.up
        self.upstreams = new
        self.up = {t: old.get(t, True) for t in new}
        for bid in [b for b, p in self.pending.items() if p.upstream not in self.up]:
            del self.pending[bid]
        if self.interval > 0 and self.next_round is not None and not core._draining:
            busy = {p.upstream for p in self.pending.values()}
            for t in new:
                if t not in old and t not in busy and core.admin.probed(t):
                    self._send(core, t, now, out)
        self._reschedule(core)

    # ---------------------------------------------------------------- entry points

    def start(self, core: ProxyCore, now: float, out: Out) -> None:
        """The first round, at once."""
        if not self.enabled:
            return
        self.next_round = now
        self.on_timer(core, now, out)

    def on_timer(self, core: ProxyCore, now: float, out: Out) -> None:
        for bid, p in list(self.pending.items()):
            if now >= p.expires:
                del self.pending[bid]
                self._mark(core, p.upstream, False, f"no answer to OPTIONS within {self.timeout:g} s")
            elif p.resend is not None and now >= p.resend:
                p.gap = min(2 * p.gap, core.timers.t2)
                p.resend = now + p.gap
                t = p.upstream
                out.send(Send(t.transport, t.host, t.port, p.data, None, p))
        if self.next_round is not None and now >= self.next_round and not core._draining:
            busy = {p.upstream for p in self.pending.values()}
            for t in self.upstreams:
                if t not in busy and core.admin.probed(t):
                    self._send(core, t, now, out)
            self.next_round = now + self.interval
        self._reschedule(core)

    def probe_soon(self, core: ProxyCore, now: float) -> None:
        """An upstream came back from ``down`` (:mod:`.upstream_admin`): the next round now,
        at the next timer."""
        if self.enabled and not core._draining:
            self.next_round = now
            self._reschedule(core)

    def on_response(self, core: ProxyCore, branch: str, status: int) -> bool:
        """A response to one of our probes (True), whatever its status: the upstream is up."""
        p = self.pending.pop(branch, None)
        if p is None:
            return False
        self._mark(core, p.upstream, True, f"answered OPTIONS with {status}")
        self._reschedule(core)
        return True

    def on_send_failure(self, core: ProxyCore, p: Probe) -> None:
        if self.pending.pop(p.branch, None) is None:
            return
        self._mark(core, p.upstream, False, "transport error sending OPTIONS")
        self._reschedule(core)

    # ---------------------------------------------------------------- the request

    def _send(self, core: ProxyCore, t: Target, now: float, out: Out) -> None:
        from proxy.core.proxy import forward  # forward imports routing, which uses the prober

        self.n += 1
        local = forward.local_for(core, t)
        bid = forward.signed_branch(core, f"z9hG4bK{core.prefix}p{self.n:x}")
        host = f"[{t.host}]" if ":" in t.host else t.host
        tp = "" if t.transport == "udp" else f";transport={t.transport}"
        lines = [
            f"OPTIONS sip:{host}:{t.port}{tp} SIP/2.0",
            f"Via: SIP/2.0/{local.transport.upper()} {local.sent_by or local.advertised}"
            f";branch={bid}",
            "Max-Forwards: 70",
            f"From: <sip:probe@{local.advertised}>;tag={core.new_tag()}",
            f"To: <sip:{host}:{t.port}>",
            f"Call-ID: {core.prefix}-probe-{self.n:x}@{local.advertised}",
            f"CSeq: {self.n} OPTIONS",
            "Accept: application/sdp",
            "Content-Length: 0",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        t1 = core.timers.t1
        resend = now + t1 if t.transport == "udp" else None
        p = Probe(t, bid, data, now + self.timeout, resend, t1)
        self.pending[bid] = p
        out.send(Send(t.transport, t.host, t.port, data, None, p))
