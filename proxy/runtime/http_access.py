"""Who may use the HTTP side: ``http_token``.

With a token, ``/calls`` and everything under it (raw SIP messages: phone numbers, digest
credentials) and every request other than GET or HEAD (the control POSTs) need
``Authorization: Bearer TOKEN``; HTTP Basic with the token as the password (any user name) is
taken too, so that a browser can open the ladder page (it asks for it). The metrics, the
health checks and ``/status`` stay open. Without a token everything is open to reading
(``check`` warns when the HTTP side listens beyond the loopback), and a request that changes
something (any method other than GET/HEAD: ``POST /upstreams/drain``) is taken from the
loopback only: a 403 for anyone else.

The comparison is made on SHA-256 digests with :func:`hmac.compare_digest`: its time depends
on neither the token nor the length of what was sent. A refusal (401, or a connection past the
limit) is counted (``http_refused_total{reason}``) and logged at most once a minute.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.core import CounterMetricFamily, Metric

log = logging.getLogger("proxy")
REALM = "sip-policy-proxy"
REASONS = ("unauthorized", "connections", "not_loopback")
OPEN_METHODS = frozenset({"GET", "HEAD"})


def needs_token(method: str, path: str) -> bool:
    """``/calls*`` and every request other than GET/HEAD."""
    return method not in OPEN_METHODS or path == "/calls" or path.startswith("/calls/")


def loopback(remote: str | None) -> bool:
    """Whether a peer is this host's own loopback address: 127.0.0.1 or ::1 (also as
    ::ffff:127.0.0.1). Another 127.x source is taken for a stranger (the tests' one is
    127.0.0.2); a client on this host connecting to a loopback listener speaks from
    127.0.0.1."""
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip) in ("127.0.0.1", "::1")


def presented(header: str | None) -> bytes | None:
    """The token an ``Authorization`` value carries (Bearer, or Basic's password)."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials.encode("utf-8", "replace")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        return password if sep else None
    return None


class Access:
    """The token check (an aiohttp middleware) and the refusal counters."""

    def __init__(self, token: str | None) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        self.refusals: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def allows(self, header: str | None) -> bool:
        if self._digest is None:
            return True
        given = presented(header)
        if given is None:
            return False
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._digest)

    @web.middleware
    async def middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        guarded = needs_token(request.method, request.path) or getattr(
            request.match_info.handler, "needs_token", False)
        if self._digest is not None and guarded \
                and not self.allows(request.headers.get("Authorization")):
            peer = request.remote or "?"
            self.refused("unauthorized", f"{request.method} {request.path[:80]!r} from {peer} "
                         "without a valid http_token")
            headers = CIMultiDict([
                ("WWW-Authenticate", f'Bearer realm="{REALM}"'),
                ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                ("Content-Type", "text/plain; charset=utf-8"),
            ])
            return web.Response(status=401, body=b"401: a valid http_token is required\n",
                                headers=headers)
        if self._digest is None and request.method not in OPEN_METHODS \
                and not loopback(request.remote):
            self.refused("not_loopback", f"{request.method} {request.path[:80]!r} from "
                         f"{request.remote or '?'}: without http_token only the loopback may "
                         "change anything")
            return web.Response(status=403, body=b"403: set http_token to allow this from "
                                b"beyond the loopback\n",
                                headers={"Content-Type": "text/plain; charset=utf-8"})
        return await handler(request)

    def refused(self, reason: str, what: str) -> None:
        self.refusals[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, float("-inf")) >= 60.0:
            self._logged[reason] = now
            log.warning("http: refused %s (%d %s refusals so far; logged once a minute)", what,
                        self.refusals[reason], reason)

    def collector(self) -> _AccessCollector:
        return _AccessCollector(self)


class _AccessCollector:
    def __init__(self, access: Access) -> None:
        self.access = access

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("sip_policy_proxy_http_refused",
                                  "HTTP requests or connections refused", labels=["reason"])
        for reason in REASONS:
            fam.add_metric([reason], self.access.refusals[reason])
        yield fam
