"""RFC 3261 section 17 transaction layer (with RFC 6026), sans-IO and driven by ``now``.

Nothing in this package reads a clock, touches a socket or parses a message: every entry point
takes ``now`` (monotonic seconds) and returns effects; ``deadline`` says when to call
``on_timer`` next. The runtime keeps all transactions in one :class:`TimerQueue`.
"""

from __future__ import annotations

from .base import Transaction
from .client import ClientTransaction, InviteClientTransaction, NonInviteClientTransaction
from .effects import Effect, Retransmit, SendAck, Terminated, Timeout
from .server import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from .states import Event, TransactionState, response_event
from .timers import Timed, TimerConfig, TimerQueue

__all__ = [
    "ClientTransaction",
    "Effect",
    "Event",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Retransmit",
    "SendAck",
    "ServerTransaction",
    "Terminated",
    "Timed",
    "Timeout",
    "TimerConfig",
    "TimerQueue",
    "Transaction",
    "TransactionState",
    "response_event",
]
