"""The transport seam (RFC 3261 18): what every transport (UDP, TCP, TLS, and WebSocket, RFC
7118) offers the runtime.

A transport delivers received messages as ``(bytes, Source)`` and carries out :class:`Send`
instructions. The values come from :mod:`proxy.sip.transport`, which the sans-IO core imports
too: this package never imports the core, and the core never imports this package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from proxy.sip.transport import Send, Source

__all__ = ["Deliver", "Failed", "Send", "Source", "Transport"]

#: Called with each received message and where it came from.
Deliver = Callable[[bytes, Source], None]
#: Called with the ``token`` of a :class:`Send` that could not be carried out (RFC 3261 16.9),
#: never from inside :meth:`Transport.send` itself (always later, from the event loop).
Failed = Callable[[object], None]


class Transport(Protocol):
    """Carries out :class:`Send` instructions on one kind of transport.

    ``send`` never raises for a failure of that one message: it logs it and, when the
    :class:`Send` has a ``token``, reports it through the transport's :data:`Failed` callback.
    """

    def send(self, s: Send) -> None: ...
