"""A ProxyCore driven by hand: crafted messages in, Send instructions out, a fake clock.

The network is replaced by lists of :class:`Send`; nothing here opens a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.core.access.sources import AddressSet
from proxy.core.core import CoreSettings, ProxyCore
from proxy.core.effects import Effects, StoreWrite
from proxy.core.outbound.flowtoken import Flow
from proxy.core.registrar.location import MemoryLocation
from proxy.core.types import LocalAddress, Send, Source, Target
from proxy.policy import Policy, load_policy
from proxy.runtime.logs import emit_calls
from proxy.sip import SipMessage, parse_message
from proxy.transaction import TimerConfig

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"

CALLER = Source("udp", "127.0.0.1", 6000)
UP1 = Target("udp", "127.0.0.1", 5080, label="sip:127.0.0.1:5080")
UP2 = Target("udp", "127.0.0.1", 5081, label="sip:127.0.0.1:5081")
LOCAL = [
    LocalAddress("udp", "127.0.0.1", 5060, "127.0.0.1:5060"),
    LocalAddress("tcp", "127.0.0.1", 5060, "127.0.0.1:5060"),
]


def default_policy() -> Policy:
    policy, _ = load_policy(DEFAULT_POLICY)
    return policy


def request(
    method: str = "INVITE",
    ruri: str = "sip:bob@example.com",
    *,
    branch: str = "z9hG4bKcaller1",
    call_id: str = "call-1@caller",
    cseq: int = 1,
    via_host: str = "127.0.0.1:6000",
    to_tag: str | None = None,
    extra: tuple[str, ...] = (),
    max_forwards: int | None = 70,
    body: str = "",
) -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch={branch};rport",
        "From: <sip:alice@example.com>;tag=from1",
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@127.0.0.1:6000>",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.extend(extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def response_to(forwarded: bytes, status: int, *, to_tag: str = "callee1",
                extra: tuple[str, ...] = ()) -> bytes:
    """What a downstream UAS answers to a request the proxy forwarded (RFC 3261 8.2.6)."""
    req = parse_message(forwarded)
    lines = [f"SIP/2.0 {status} Whatever"]
    for h in req.headers:
        if h.name == "via":
            lines.append(f"Via: {h.value}")
    lines.append(f"From: {req.get('from')}")
    to = req.get("to") or ""
    if status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {req.get('call-id')}")
    lines.append(f"CSeq: {req.get('cseq')}")
    lines.extend(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Harness:
    core: ProxyCore
    now: float = 1000.0
    sent: list[Send] = field(default_factory=list)
    #: store writes the core handed out and nobody committed yet (the runtime's tasks)
    writes: list[StoreWrite] = field(default_factory=list)

    @classmethod
    def make(cls, *, upstreams: tuple[Target, ...] = (UP1, UP2), registrar_local: bool = False,
             domains: frozenset[str] = frozenset(), policy: Policy | None = None,
             timers: TimerConfig | None = None, trusted_relays: tuple[str, ...] = (),
             **settings_kw: Any) -> Harness:
        settings = CoreSettings(
            upstreams=upstreams, registrar_local=registrar_local, domains=domains,
            timers=timers or TimerConfig(), trusted_relays=AddressSet(trusted_relays),
            **settings_kw,
        )
        core = ProxyCore(settings, policy or default_policy(), LOCAL, MemoryLocation())
        return cls(core)

    def take(self, fx: Effects) -> list[Send]:
        """Record what one entry point returned, as the runtime would carry it out."""
        self.sent.extend(fx.sends)
        self.writes.extend(fx.writes)
        emit_calls(fx.logs)  # the core's log lines, written as the runtime writes them
        return fx.sends

    def take_writes(self) -> list[StoreWrite]:
        writes, self.writes = self.writes, []
        return writes

    def feed(self, data: bytes, src: Source = CALLER) -> list[Send]:
        return self.take(self.core.on_message(data, src, self.now))

    def advance(self, seconds: float) -> list[Send]:
        """Step the fake clock, firing every timer due on the way in deadline order."""
        target = self.now + seconds
        out: list[Send] = []
        while True:
            d = self.core.next_deadline()
            if d is None or d > target:
                break
            self.now = max(self.now, d)
            out.extend(self.take(self.core.on_timer(self.now)))
        self.now = target
        return out

    def to(self, port: int, out: list[Send] | None = None) -> list[SipMessage]:
        return [parse_message(s.data) for s in (self.sent if out is None else out) if s.port == port]


def own_route(h: Harness, src: Source = CALLER, *, call_id: str = "call-1@caller",
              tag: str = "from1") -> str:
    """The Route value a UA of a dialog through the proxy sends back: the proxy's own
    Record-Route URI with the flow token naming ``src``'s flow (RFC 5626 5.2) and the dialog
    mark of the dialog set up by a request with ``call_id`` and From tag ``tag`` (the defaults
    of :func:`request`), as :func:`proxy.core.proxy.forward.record_route` writes it."""
    local = LOCAL[0] if src.transport == "udp" else LOCAL[1]
    token = h.core.tokens.encode(Flow(src.transport, local.host, local.port, src.host, src.port,
                                      src.conn_id))
    tp = "" if local.transport == "udp" else f";transport={local.transport}"
    return f"<sip:{token}@{local.advertised};lr{tp};d={h.core.trust.dialog_mark(call_id, tag, token)}>"


def statuses(msgs: list[SipMessage]) -> list[int]:
    return [m.status for m in msgs if not m.is_request]


def methods(msgs: list[SipMessage]) -> list[str]:
    return [m.method for m in msgs if m.is_request]
