"""What a transaction asks its caller to do (RFC 3261 17): values, never IO.

Every entry point of a transaction returns a fresh ``list`` of these; the caller owns that list.
The effects themselves are immutable; the field-less ones and the timeouts are shared
singletons, so the hot paths allocate nothing but the list (and a ``Retransmit`` when a timer
retransmits).

They are frozen slotted dataclasses rather than NamedTuples on purpose: two field-less
NamedTuples compare equal (``SendAck() == Terminated() == ()``), which would let a test, or a
caller comparing effects, confuse them. Dataclass equality also compares the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = ["Effect", "Retransmit", "SendAck", "Terminated", "Timeout"]


@dataclass(frozen=True, slots=True)
class Retransmit:
    """Send ``data`` again on the transaction's transport/destination: the request (client,
    Timers A/E), the last response (server, Timer G or a request retransmission), or the ACK
    (client INVITE, retransmitted non-2xx final: RFC 3261 17.1.1.2)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendAck:
    """Client INVITE: build and send the ACK for the non-2xx final response just received
    (RFC 3261 17.1.1.3), then hand it to ``set_ack`` so retransmitted finals reuse it."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer ``timer`` expired: "B"/"F" (client: no final response, the TU acts as on a 408,
    RFC 3261 17.1.1.2 / 17.1.2.2) or "H" (server INVITE: the ACK never came, 17.2.1)."""

    timer: str


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached Terminated: the caller drops it from its tables now
    (RFC 3261 17.1.1.2: "destroyed immediately")."""


Effect: TypeAlias = Retransmit | SendAck | Timeout | Terminated

SEND_ACK: Final = SendAck()
TERMINATED: Final = Terminated()
TIMEOUT_B: Final = Timeout("B")
TIMEOUT_F: Final = Timeout("F")
TIMEOUT_H: Final = Timeout("H")
