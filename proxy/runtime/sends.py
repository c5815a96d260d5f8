"""The resolver on the send path: each :class:`Send` whose host is a name, to an address.

``Runtime.dispatch`` asks :meth:`SendResolver.cached` for every send that is not to an IP
literal already seen: a dict lookup that answers the resolved send, None (the name does not
resolve), or :data:`MISS`; on a miss :meth:`SendResolver.park` holds the send while its name is
looked up (RFC 3263, :class:`~proxy.runtime.resolver.Resolver`) and hands it back resolved.

What a send names is read from the send itself (the core has already chosen its transport and
written it into the Via), once per name, on a miss:

- a configured upstream named by a domain without port (``sip:carrier.example``; registered
  in ``hops`` under each transport's default port): NAPTR restricted to the send's transport,
  then SRV, then A/AAAA (RFC 3263 4.1-4.2);
- a response (RFC 3263 5): its top Via; a sent-by host without port (and no ``received``): the
  SRV of the Via's transport, else A/AAAA on the port;
- a request: the next hop it names, the first Route (16.4: ours is gone) or else the
  Request-URI, when its host is the send's; no port there: NAPTR (unless it names a transport),
  SRV, A/AAAA; a port (or nothing found): A/AAAA on the send's port.

One answer per (transport, name, port) is cached: its first target, until the smallest TTL of
the DNS answers behind it, so a transaction's retransmissions, its ACK and its CANCEL reach the
same address while it holds (RFC 3263 4.3 and RFC 3261 9.1). An expired answer is still used
(up to ``grace`` seconds past its TTL) while a refresh runs in the background, so a send never
waits on a name it had an answer for, and a failing server leaves the last answer in use.
Bounded: ``CACHE_LIMIT`` answers, ``MAX_WAITING`` names looked up at once, ``MAX_PARKED`` sends
held per name (each excess send fails at once, as an unreachable destination does), and
``LOOKUP_TIMEOUT`` seconds for one lookup (a zone with many slow SRV targets cannot hold a send
longer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.runtime.dns import GRACE, RETRY
from proxy.runtime.resolver import DEFAULT_PORT, Hop, Resolver, Targets, is_ip
from proxy.sip import ParseError, SipUri, parse_message, parse_uri
from proxy.sip.transport import Send

log = logging.getLogger("proxy")

#: :meth:`SendResolver.cached` for a name with no usable answer: :meth:`SendResolver.park` it.
MISS = object()
#: The most IP literals, and the most resolved names, remembered (emptied when full).
CACHE_LIMIT = 4096
MAX_WAITING = 1024
MAX_PARKED = 64
#: the longest a send waits for its name (NAPTR, SRV and the A/AAAA of SRV targets in turn);
#: a transaction's timers go on meanwhile
LOOKUP_TIMEOUT = 4.0

Key = tuple[str, str, int]  # (transport, host, port) of a send


class _Hit:
    """The answer for one send key: address and port (ip None: does not resolve)."""

    __slots__ = ("expires", "ip", "keep_until", "port", "refreshing")

    def __init__(self, ip: str | None, port: int, expires: float, keep_until: float) -> None:
        self.ip = ip
        self.port = port
        self.expires = expires
        self.keep_until = keep_until
        self.refreshing = False


class SendResolver:
    """Sends to names, resolved (see the module docstring). ``resolved`` receives the sends
    held on a lookup once it is answered; ``unreachable`` each send whose name does not
    resolve (with why)."""

    def __init__(self, resolver: Resolver, resolved: Callable[[list[Send]], None],
                 unreachable: Callable[[Send, str], None], *, grace: float = GRACE) -> None:
        self.resolver = resolver
        self.clock = resolver.dns.clock
        self.grace = grace
        self.resolved = resolved
        self.unreachable = unreachable
        self.literals: dict[str, str] = {}  # IP literals seen: no parse on the next send
        self._hits: dict[Key, _Hit] = {}
        self.waiting: dict[Key, list[Send]] = {}
        #: upstreams named by a domain without port: their URI's hop, by the key of the sends
        #: the core makes for them (transport, host, default port)
        self.hops: dict[Key, Hop] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def upstream(self, hop: Hop) -> None:
        """Sends to the upstream ``hop`` names (a domain) resolve as its URI says: by NAPTR and
        SRV when it names no port, whatever transport the core picks for a request."""
        if hop.port is None:
            for t in (hop.transport,) if hop.transport else self.resolver.transports:
                self.hops[(t, hop.host, DEFAULT_PORT[t])] = hop

    def cached(self, s: Send, now: float) -> object:
        """``s`` to an address (a new Send; ``s`` itself for an IP), None for a name known
        not to resolve, or :data:`MISS`."""
        host = s.host
        if host in self.literals:
            return s
        key = (s.transport, host, s.port)
        hit = self._hits.get(key)
        if hit is not None:
            if hit.expires <= now:
                if hit.ip is None or hit.keep_until <= now:
                    return MISS
                self._refresh(key, s)  # the last answer meanwhile
            if hit.ip is None:
                return None
            return Send(s.transport, hit.ip, hit.port, s.data, s.conn_id, s.token, s.server_name)
        if not is_ip(host):
            return MISS
        # Outsiders choose these (a Via's received address): bounded, forgotten all at once.
        if len(self.literals) >= CACHE_LIMIT:
            self.literals.clear()
        self.literals[host] = host
        return s

    def park(self, s: Send) -> None:
        """Hold ``s`` until its name is looked up (one lookup per name at a time)."""
        key = (s.transport, s.host, s.port)
        held = self.waiting.get(key)
        if held is not None:
            if len(held) >= MAX_PARKED:
                self.unreachable(s, "too many messages wait for this name")
            else:
                held.append(s)
            return
        if len(self.waiting) >= MAX_WAITING:
            self.unreachable(s, "too many names are being looked up")
            return
        self.waiting[key] = [s]
        self._spawn(self._lookup(key, s))

    def _refresh(self, key: Key, s: Send) -> None:
        hit = self._hits[key]
        if not hit.refreshing and key not in self.waiting:
            hit.refreshing = True
            self._spawn(self._lookup(key, s))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup(self, key: Key, s: Send) -> None:
        try:
            hop, transports = self.hop_of(s)
            found = await asyncio.wait_for(self.resolver.targets(hop, transports, limit=1),
                                           LOOKUP_TIMEOUT)
        except TimeoutError:  # a slow server (or a zone made to be slow): not longer
            log.info("resolving %s: no target within %g s", s.host, LOOKUP_TIMEOUT)
            found = Targets((), self.clock(), failed=True)
        except Exception:  # noqa: BLE001 - a lookup must never take the process down
            log.exception("resolving %s", s.host)
            found = Targets((), self.clock(), failed=True)
        hit = self._store(key, found)
        held = self.waiting.pop(key, [])
        if hit.ip is None:
            for h in held:
                self.unreachable(h, "does not resolve")
        elif held:
            self.resolved([Send(h.transport, hit.ip, hit.port, h.data, h.conn_id, h.token,
                                h.server_name) for h in held])

    def _store(self, key: Key, found: Targets) -> _Hit:
        now = self.clock()
        old = self._hits.get(key)
        if found.targets:
            t = found.targets[0]
            hit = _Hit(t.host, t.port, found.expires, found.expires + self.grace)
        elif found.failed and old is not None and old.ip is not None and old.keep_until > now:
            old.expires, old.refreshing = now + RETRY, False  # the last answer, for now
            return old
        else:  # no such name (for the negative TTL), or a failure (retried after RETRY)
            hit = _Hit(None, key[2], now + RETRY if found.failed else found.expires, 0.0)
        hits = self._hits
        if key not in hits and len(hits) >= CACHE_LIMIT:
            for k in [k for k, h in hits.items() if h.expires <= now and h.keep_until <= now]:
                del hits[k]
            if len(hits) >= CACHE_LIMIT:
                hits.clear()
        hits[key] = hit
        return hit

    def hop_of(self, s: Send) -> tuple[Hop, tuple[str, ...]]:
        """What ``s`` is sent to, as RFC 3263 needs it, and the one transport allowed (the
        core wrote it into the Via already). Parses the message: only on a miss."""
        t, host = s.transport, s.host
        fixed = Hop(host, s.port, t, t == "tls")
        upstream = self.hops.get((t, host.lower(), s.port))
        if upstream is not None:
            return upstream, (t,)
        try:
            msg = parse_message(s.data)
            if not msg.is_request:
                # RFC 3263 5: the Via the response goes to (ours was removed)
                via = msg.vias[0]
                if (via.port is None and via.received is None and type(via.rport) is not int
                        and via.host.strip("[]").lower() == host.lower()):
                    return Hop(host, None, t, t == "tls"), (t,)
                return fixed, (t,)
            routes = msg.routes
            uri = routes[0].uri if routes else parse_uri(msg.request_uri)
        except (ParseError, IndexError):
            return fixed, (t,)
        if (isinstance(uri, SipUri) and uri.port is None
                and uri.host.strip("[]").lower() == host.lower()):
            return Hop(host, None, uri.transport, uri.scheme == "sips"), (t,)
        return fixed, (t,)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    @property
    def busy(self) -> bool:
        """A lookup or a refresh is running."""
        return bool(self._tasks)
