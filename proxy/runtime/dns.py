"""DNS questions for the resolver (RFC 3263): dnspython's asyncio resolver behind a cache.

One :class:`DnsClient` asks the configured servers (``dns: {servers: [HOST:PORT, ...]}``) or,
without them, the servers of ``/etc/resolv.conf``; nothing here blocks the event loop.

Each question (name, type) has at most one entry in a bounded cache:

- an answer is used for its TTL (clamped to ``[MIN_TTL, MAX_TTL]``);
- a negative answer (NXDOMAIN, or no record of that type) for the SOA's negative TTL
  (RFC 2308 5), at most ``NEGATIVE_TTL``;
- a failure (a timeout, SERVFAIL, REFUSED, no server): the last good answer stays in use until
  its expiry plus ``grace``, and the name is asked again ``RETRY`` seconds later, not at every
  call. Without such an answer, the failure itself is remembered for ``RETRY`` seconds. The
  failure is logged once per name, and so is the recovery;
- identical questions asked at the same time share one query.

The records of an answer are someone else's choice (a carrier's zone, or the domain of a
Contact a phone registered): at most ``MAX_RECORDS`` are kept per answer and at most
``max_entries`` answers in all (the expired ones go first, then everything).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

log = logging.getLogger("proxy")

MIN_TTL = 1.0
MAX_TTL = 86400.0
#: the longest a "no such name / no such record" answer is believed (RFC 2308 5)
NEGATIVE_TTL = 60.0
#: after a failure, the name is not asked again before this many seconds
RETRY = 5.0
#: a failing server's last good answer stays in use this long past its TTL
GRACE = 300.0
#: records kept from one answer (the rest are dropped; SRV keeps the best priorities)
MAX_RECORDS = 16
#: answers kept in all
MAX_ENTRIES = 4096
#: names whose failure has been logged (and not their recovery yet)
MAX_FAILING = 1024
#: how long the answer of a system lookup (``/etc/hosts``, nsswitch: it carries no TTL) is
#: used, and a "no such name" from it
SYSTEM_TTL = 60.0
SYSTEM_NEGATIVE_TTL = 5.0

class Naptr(NamedTuple):
    """A NAPTR record (RFC 3403 4.1), without its regexp (RFC 3263 uses the replacement)."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


class Srv(NamedTuple):
    """A SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


Record = Naptr | Srv | str  # str: an A or AAAA address


class DnsFailure(Exception):
    """No answer to the question (the servers failed) and no earlier answer to fall back on."""


class Answer(NamedTuple):
    """The records of one question, and until when (on the client's clock) they hold."""

    records: tuple[Record, ...]
    expires: float
    stale: bool = False  # a last good answer, served because the servers fail now


class _Entry:
    __slots__ = ("expires", "failed", "keep_until", "records", "retry_at")

    def __init__(self, records: tuple[Record, ...], expires: float, keep_until: float,
                 failed: bool = False) -> None:
        self.records = records
        self.expires = expires  # fresh until
        self.keep_until = keep_until  # usable while the servers fail, until
        self.retry_at = 0.0  # when failing: not asked again before
        self.failed = failed  # a remembered failure, no records


def make_dns_resolver(servers: tuple[tuple[str, int], ...], timeout: float
                      ) -> dns.asyncresolver.Resolver | None:
    """dnspython's asyncio resolver for ``servers``, or for ``/etc/resolv.conf`` when there
    are none (None if that file names no server). Its own cache is off: :class:`DnsClient`
    caches, with the bounds and the failure handling above."""
    if servers:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
    else:
        try:
            r = dns.asyncresolver.Resolver()  # reads /etc/resolv.conf: start-up only
        except (dns.resolver.NoResolverConfiguration, OSError) as exc:
            log.warning("dns: no system resolver configuration (%s): names are looked up by "
                        "the system (A/AAAA) only, without NAPTR or SRV", exc)
            return None
    r.cache = None
    r.timeout = timeout
    r.lifetime = timeout * 2
    return r


class DnsClient:
    """Questions to DNS servers with the cache described in the module docstring.

    ``clock`` is the time the entries expire by (the event loop's in the runtime, a fake one
    in tests). ``system`` (no ``dns: servers`` configured): NAPTR and SRV go to the servers of
    ``/etc/resolv.conf``; addresses come from the system's lookup (getaddrinfo: ``/etc/hosts``,
    then DNS, as nsswitch says) in an executor thread, as they did before NAPTR and SRV.
    """

    def __init__(self, servers: tuple[tuple[str, int], ...] = (), *,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 1.0,
                 grace: float = GRACE, max_entries: int = MAX_ENTRIES) -> None:
        self.servers = servers
        self.system = not servers
        self.clock = clock
        self.grace = grace
        self.max_entries = max_entries
        self.resolver = make_dns_resolver(servers, timeout)
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[Answer]] = {}
        self._failing: dict[str, str] = {}  # name -> why, logged once
        self.queries = 0  # questions sent to the servers (not answered from the cache)
        self.failures = 0  # of them, no answer (timeout, SERVFAIL, ...)
        self.stale = 0  # last good answers served while the servers failed

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every answer (the next question of each name goes to the servers)."""
        self._cache.clear()

    async def ask(self, name: str, rdtype: str) -> Answer:
        """The records of ``name`` of type ``rdtype`` (NAPTR, SRV, A, AAAA; "SYSTEM" for the
        system's lookup); raises :class:`DnsFailure` when nothing is known."""
        key = (name.lower().rstrip("."), rdtype)
        now = self.clock()
        e = self._cache.get(key)
        if e is not None:
            if e.expires > now:
                return Answer(e.records, e.expires)
            if e.retry_at > now:  # failing: not asked again yet
                return self._fallback(e, now)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(key, e))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str], task: asyncio.Task[Answer]) -> None:
        del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, whether or not anyone still waits for it

    def _fallback(self, e: _Entry, now: float) -> Answer:
        if e.failed or e.keep_until <= now:
            raise DnsFailure("no answer")
        self.stale += 1
        return Answer(e.records, min(e.retry_at, e.keep_until), stale=True)

    async def _refresh(self, key: tuple[str, str], old: _Entry | None) -> Answer:
        name, rdtype = key
        self.queries += 1
        try:
            if rdtype == "SYSTEM":
                records = await self._system(name)
                ttl = SYSTEM_TTL if records else SYSTEM_NEGATIVE_TTL
            else:
                records, ttl = await self._query(name, rdtype)
        except DnsFailure as exc:
            self.failures += 1
            return self._failed(key, old, str(exc))
        now = self.clock()
        self._recovered(name)
        self._store(key, _Entry(records, now + ttl, now + ttl + (self.grace if records else 0)))
        return Answer(records, now + ttl)

    def _failed(self, key: tuple[str, str], old: _Entry | None, why: str) -> Answer:
        name, rdtype = key
        now = self.clock()
        usable = old is not None and not old.failed and old.keep_until > now
        if name not in self._failing:
            if len(self._failing) >= MAX_FAILING:
                self._failing.clear()
            self._failing[name] = why
            log.warning("dns: %s %s: %s; %s", rdtype, name, why,
                        "its last answer stays in use" if usable
                        else f"asked again in {RETRY:g} s")
        if old is None or old.failed:
            old = _Entry((), now, now, failed=True)
            self._store(key, old)
        old.retry_at = now + RETRY
        return self._fallback(old, now)

    def _recovered(self, name: str) -> None:
        if self._failing.pop(name, None) is not None:
            log.warning("dns: %s answers again", name)

    def _store(self, key: tuple[str, str], entry: _Entry) -> None:
        cache = self._cache
        if key not in cache and len(cache) >= self.max_entries:
            now = self.clock()
            for k in [k for k, v in cache.items() if v.keep_until <= now and v.retry_at <= now]:
                del cache[k]
            if len(cache) >= self.max_entries:
                cache.clear()
        cache[key] = entry

    async def _query(self, name: str, rdtype: str) -> tuple[tuple[Record, ...], float]:
        r = self.resolver
        if r is None:
            raise DnsFailure("no DNS server configured")
        try:
            qname = dns.name.from_text(name)
            answer = await r.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return (), _negative_ttl(exc.responses().get(qname))
        except (dns.exception.Timeout, dns.resolver.NoNameservers,
                dns.resolver.YXDOMAIN) as exc:
            raise DnsFailure(_why(exc)) from None
        except (dns.exception.DNSException, ValueError) as exc:
            # not a valid name (an empty label, over 255 octets ...): no such name
            log.debug("dns: %s %s: %s", rdtype, name, exc)
            return (), NEGATIVE_TTL
        if answer.rrset is None:
            return (), _negative_ttl(answer.response)
        ttl = min(max(float(answer.rrset.ttl), MIN_TTL), MAX_TTL)
        return _records(answer.rrset, rdtype), ttl

    async def _system(self, name: str) -> tuple[Record, ...]:
        """The system's lookup (``/etc/hosts``, nsswitch) in the loop's executor."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN:
                raise DnsFailure(str(exc)) from None
            return ()
        return tuple(dict.fromkeys(str(i[4][0]) for i in infos))[:MAX_RECORDS]


def _records(rrset: dns.rrset.RRset, rdtype: str) -> tuple[Record, ...]:
    if rdtype == "NAPTR":
        naptrs = sorted((Naptr(r.order, r.preference, r.flags.decode("ascii", "replace"),
                               r.service.decode("ascii", "replace"),
                               r.replacement.to_text(omit_final_dot=True))
                         for r in rrset), key=lambda n: (n.order, n.preference))
        return tuple(naptrs[:MAX_RECORDS])
    if rdtype == "SRV":
        srvs = sorted((Srv(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
                       for r in rrset), key=lambda s: s.priority)
        return tuple(srvs[:MAX_RECORDS])
    return tuple(str(r.address) for r in rrset)[:MAX_RECORDS]


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 5: the negative answer's TTL is the SOA's minimum (and its own TTL)."""
    ttl = NEGATIVE_TTL
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                for soa in rrset:
                    ttl = min(ttl, float(rrset.ttl), float(soa.minimum))
    return max(ttl, MIN_TTL)


def _why(exc: Exception) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "no answer (timeout)"
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
