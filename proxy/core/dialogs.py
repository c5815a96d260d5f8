"""Light dialog tracking (sans-IO): which calls are up, so that a drain can wait for them.

A 2xx to an INVITE forwarded to the caller opens a dialog (Call-ID, the two tags); a BYE
through the proxy closes it, and so does an idle bound (no in-dialog request for
``idle`` seconds, Timer C's value). Nothing else depends on it: it is the ``dialogs`` gauge
("calls up") and what a SIGTERM drain waits for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.sip import SipMessage

if TYPE_CHECKING:
    from proxy.core.proxy import ProxyCore


def _key(call_id: str, a: str | None, b: str | None) -> str:
    return f"{call_id}|{a or ''}|{b or ''}"


class Dialogs:
    """Open dialogs by key, with the time of their last sign of life."""

    __slots__ = ("open", "idle", "deadline")

    def __init__(self, idle: float) -> None:
        self.open: dict[str, float] = {}
        self.idle = idle
        self.deadline: float | None = None  # the next idle sweep (the core's timer queue)

    def __len__(self) -> int:
        return len(self.open)

    def opened(self, core: ProxyCore, call_id: str, from_tag: str | None, to_tag: str | None,
               now: float) -> None:
        """A 2xx to an INVITE went to the caller: the dialog (RFC 3261 12.1) it set up."""
        key = _key(call_id, from_tag, to_tag)
        self.open[key] = now
        if self.deadline is None:
            self.deadline = now + self.idle
            core.queue.schedule(self)

    def on_request(self, msg: SipMessage, now: float) -> None:
        """An in-dialog request (either direction): a BYE closes, anything else refreshes."""
        call_id = msg.call_id
        for key in (_key(call_id, msg.from_tag, msg.to_tag),
                    _key(call_id, msg.to_tag, msg.from_tag)):
            if key in self.open:
                if msg.method == "BYE":
                    del self.open[key]
                else:
                    self.open[key] = now
                return

    def on_timer(self, core: ProxyCore, now: float) -> None:
        """Close the dialogs idle for ``idle`` seconds; sweep again at the next one's bound."""
        bound = now - self.idle
        self.open = {k: t for k, t in self.open.items() if t > bound}
        self.deadline = min(self.open.values()) + self.idle if self.open else None
        core.queue.schedule(self)
