"""Light dialog tracking (sans-IO): which calls are up, so that a drain can wait for them.

A 2xx to an INVITE forwarded to the caller opens a dialog (Call-ID, the two tags); a BYE
through the proxy closes it, and so does an idle bound (no in-dialog request for
``idle`` seconds, Timer C's value). It is the ``dialogs`` gauge ("calls up") and what a
SIGTERM drain waits for; and a dialog held here vouches for its in-dialog requests when the
UAS did not copy Record-Route into its 2xx (RFC 3261 12.1.1): such requests carry no Route
of ours to prove them (:mod:`~proxy.core.access.trust`), and go only to an upstream or to the registered
binding the dialog was set up with (:attr:`Dialogs.ends`, :func:`~proxy.core.proxy.routing.decide`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core.types import Target
from proxy.sip import ParseError, SipMessage, SipUri, parse_uri

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


def _key(call_id: str, a: str | None, b: str | None) -> str:
    return f"{call_id}|{a or ''}|{b or ''}"


class Dialogs:
    """Open dialogs by key, with the time of their last sign of life."""

    __slots__ = ("open", "ends", "idle", "deadline", "upstreams")

    def __init__(self, idle: float) -> None:
        self.open: dict[str, float] = {}
        #: dialog key -> ((host, port) of the callee's Contact, the target that reached it):
        #: only for a callee that is a registered binding (RFC 3261 10)
        self.ends: dict[str, tuple[tuple[str, int], Target]] = {}
        self.idle = idle
        self.deadline: float | None = None  # the next idle sweep (the core's timer queue)
        #: dialog key -> the name of the upstream the call was sent to (calls in flight per
        #: upstream, ``sip-policy-proxy upstreams list``)
        self.upstreams: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.open)

    def opened(self, core: ProxyCore, call_id: str, from_tag: str | None, to_tag: str | None,
               now: float, callee: Target | None = None) -> None:
        """A 2xx to an INVITE went to the caller: the dialog (RFC 3261 12.1) it set up;
        ``callee`` is the branch's target, remembered when it is a registered binding."""
        key = _key(call_id, from_tag, to_tag)
        self.open[key] = now
        if callee is not None and callee in core.prober.up:
            self.upstreams[key] = callee.label or f"sip:{callee.host}:{callee.port}"
        if callee is not None and callee.aor is not None and callee.request_uri:
            try:
                uri = parse_uri(callee.request_uri)
            except ParseError:
                uri = None
            if isinstance(uri, SipUri):
                self.ends[key] = (uri.host_port(), callee)
        if self.deadline is None:
            self.deadline = now + self.idle
            core.queue.schedule(self)

    def find(self, msg: SipMessage) -> str | None:
        """The key of the open dialog an in-dialog request belongs to (either direction)."""
        if not self.open:
            return None
        call_id, from_tag, to_tag = msg.call_id, msg.from_tag, msg.to_tag
        key = _key(call_id, from_tag, to_tag)  # from the caller's side
        if key in self.open:
            return key
        key = _key(call_id, to_tag, from_tag)  # the callee's side: built only if needed
        return key if key in self.open else None

    def per_upstream(self) -> dict[str, int]:
        """Calls up by the upstream they were sent to (counted when asked)."""
        counts: dict[str, int] = {}
        for name in self.upstreams.values():
            counts[name] = counts.get(name, 0) + 1
        return counts

    def end(self, key: str) -> tuple[tuple[str, int], Target] | None:
        """The registered binding dialog ``key`` was set up with: its Contact's (host, port)
        and the target that reaches it (over its flow)."""
        return self.ends.get(key)

    def on_request(self, msg: SipMessage, now: float) -> None:
        """An in-dialog request (either direction): a BYE closes, anything else refreshes."""
        key = self.find(msg)
        if key is None:
            return
        if msg.method == "BYE":
            del self.open[key]
            self.ends.pop(key, None)
            self.upstreams.pop(key, None)
        else:
            self.open[key] = now

    def on_timer(self, core: ProxyCore, now: float) -> None:
        """Close the dialogs idle for ``idle`` seconds; sweep again at the next one's bound."""
        bound = now - self.idle
        self.open = {k: t for k, t in self.open.items() if t > bound}
        if self.ends:
            self.ends = {k: e for k, e in self.ends.items() if k in self.open}
        if self.upstreams:
            self.upstreams = {k: u for k, u in self.upstreams.items() if k in self.open}
        self.deadline = min(self.open.values()) + self.idle if self.open else None
        core.queue.schedule(self)
