"""What one call into the core produces (sans-IO): the value every entry point returns.

``ProxyCore.on_message``, ``on_timer``, ``on_persisted``, ``on_send_failure`` and
``on_flow_closed`` each return one :class:`Effects`: the datagrams and stream writes to send
(:class:`~proxy.core.types.Send`) and the learned routes to make durable
(:class:`StoreWrite`). The runtime carries them out; it never polls the core for writes.

Inside one entry point the helpers add to an :class:`Out` accumulator created for that call
(one per call, so that nothing is kept between calls).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from proxy.core.context import ResponseContext
from proxy.core.registrar.location import BindingChange
from proxy.core.types import Send
from proxy.store.base import LearnedRoute


class StoreWrite(NamedTuple):
    """A learned route (docs/BEHAVIOUR.md, routing; RFC 3261 16.5 recursion) the runtime must make
    durable; it then calls ``ProxyCore.on_persisted(ctx, ok, now)`` and the context goes on."""

    route: LearnedRoute
    ctx: ResponseContext


#: levels of a :class:`LogLine` (the values of the logging module's, which the core never calls)
DEBUG: Final = 10
INFO: Final = 20
WARNING: Final = 30
ERROR: Final = 40


class LogLine(NamedTuple):
    """A line the core wants written to its log (``proxy.core``): the runtime writes it, as
    ``logging`` would, with ``message % args``."""

    level: int
    message: str
    args: tuple[object, ...] = ()


class Effects:
    """The result of one entry point: what to send, what to store, and what to log (the
    per-call summaries of :mod:`proxy.core.observe.metrics`, formatted and logged by the runtime).
    A slotted class (one per entry call: the compiled build constructs it natively)."""

    __slots__ = ("bindings", "logs", "sends", "writes")

    def __init__(self, sends: list[Send], writes: tuple[StoreWrite, ...] = (),
                 logs: tuple[Any, ...] = ()) -> None:
        self.sends = sends
        self.writes = writes
        self.logs = logs
        #: binding changes for a state store (the location's journal, RFC 3261 10.3)
        self.bindings: tuple[BindingChange, ...] = ()


class Out(Effects):
    """The accumulator of one entry point, and the :class:`Effects` it returns: one object
    per entry call, not an accumulator copied into a second one (:meth:`effects` is the
    accumulator itself; nothing adds to it once its entry point returned)."""

    __slots__ = ()

    def __init__(self) -> None:
        # writes: rare, a new tuple per write, none per message; logs: one per finished
        # INVITE transaction
        Effects.__init__(self, [])

    def send(self, s: Send) -> None:
        self.sends.append(s)

    def write(self, w: StoreWrite) -> None:
        self.writes += (w,)

    def log(self, record: Any) -> None:
        self.logs += (record,)

    def line(self, level: int, message: str, *args: object) -> None:
        """A line for the core's log (:class:`LogLine`)."""
        self.logs += (LogLine(level, message, args),)

    def effects(self) -> Effects:
        return self
