"""What routes and rules match on besides status and method, and the views they read.

The core hands the policy two small values, built only when the policy asks for them (see
:class:`~proxy.policy.model.Policy` ``needs_request``, ``request_headers``,
``response_headers``):

* :class:`RequestView`: the initial request of a call: its method, the user parts of its
  Request-URI, From and To (RFC 3261 19.1.1, as written, ``""`` when there is none), the IP
  address it came from (the packet's source, never a header), the upstream groups that
  address belongs to, and the values of the request headers the policy matches on;
* :class:`AnswerView`: a final response of one branch: the upstream group of the branch
  (``None`` for a branch to anything else: a registered phone, a redirect target) and the
  values of the response headers the policy matches on.

Header names in the views are lower-case full names (``from``, not ``f``: RFC 3261 7.3.3); a
header that occurs on several lines is one value, the lines joined with ``", "`` (RFC 3261
7.3.1). A condition on a header that is absent does not hold.

Regular expressions match the whole value (``re.fullmatch``): ``ruri_user: "1[0-9]{3}"`` is
a four-digit extension starting with 1, not any user containing one.
"""

from __future__ import annotations

import ipaddress
import re

from proxy.policy.timewindow import TimeWindow

__all__ = [
    "COMPACT_HEADERS",
    "NO_HEADERS",
    "AnswerView",
    "Conditions",
    "IPNetwork",
    "RequestView",
    "canonical_header",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: RFC 3261 7.3.3 and the registered compact forms: ``f`` is ``from``.
COMPACT_HEADERS = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "o": "event", "r": "refer-to",
    "s": "subject", "t": "to", "u": "allow-events", "v": "via", "x": "session-expires",
    "y": "identity",
}

#: The empty header map, shared: the views never change a map they are given.
NO_HEADERS: dict[str, str] = {}


def canonical_header(name: str) -> str:
    """The key a header has in a view: lower case, compact forms expanded."""
    lower = name.lower()
    return COMPACT_HEADERS.get(lower, lower)


class RequestView:
    """The initial request, as routes (and rules matching on the request) see it."""

    __slots__ = ("method", "ruri_user", "from_user", "to_user", "source", "source_groups",
                 "headers")

    def __init__(
        self,
        method: str,
        ruri_user: str = "",
        from_user: str = "",
        to_user: str = "",
        source: str = "",
        source_groups: frozenset[str] = frozenset(),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.ruri_user = ruri_user
        self.from_user = from_user
        self.to_user = to_user
        self.source = source  # the packet's source IP address (IPv6 without brackets)
        self.source_groups = source_groups  # the upstream groups with an upstream at `source`
        self.headers = headers if headers is not None else NO_HEADERS


class AnswerView:
    """One branch's final response, as rules see it besides status and method."""

    __slots__ = ("group", "headers")

    def __init__(self, group: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.group = group
        self.headers = headers if headers is not None else NO_HEADERS


class Conditions:
    """The matches of a route or rule other than ``status`` and ``method``; all must hold.

    ``on_response``: the ``header`` conditions read the response (rules), not the request
    (routes). ``networks`` and ``source_names`` together are ``source``: the request came
    from one of the networks, or from an upstream of one of the named groups.
    """

    __slots__ = ("ruri_user", "from_user", "to_user", "networks", "source_names", "headers",
                 "upstream", "time", "on_response", "reads_request")

    def __init__(
        self,
        *,
        ruri_user: re.Pattern[str] | None = None,
        from_user: re.Pattern[str] | None = None,
        to_user: re.Pattern[str] | None = None,
        networks: tuple[IPNetwork, ...] = (),
        source_names: frozenset[str] = frozenset(),
        headers: tuple[tuple[str, re.Pattern[str]], ...] = (),
        upstream: frozenset[str] | None = None,
        time: TimeWindow | None = None,
        on_response: bool = False,
    ) -> None:
        self.ruri_user = ruri_user
        self.from_user = from_user
        self.to_user = to_user
        self.networks = networks
        self.source_names = source_names
        self.headers = headers
        self.upstream = upstream
        self.time = time
        self.on_response = on_response
        self.reads_request = (
            ruri_user is not None or from_user is not None or to_user is not None
            or self.has_source or (bool(headers) and not on_response)
        )

    @property
    def has_source(self) -> bool:
        return bool(self.networks) or bool(self.source_names)

    def holds(self, request: RequestView | None, answer: AnswerView | None,
              wall: float | None) -> bool:
        """Whether every condition holds. A condition on something not given (no request
        view, no answer view, no time) does not hold."""
        if self.upstream is not None:
            if answer is None or answer.group is None or answer.group not in self.upstream:
                return False
        if self.reads_request:
            if request is None or not self._request_holds(request):
                return False
        if self.on_response and self.headers:
            if answer is None or not _headers_hold(self.headers, answer.headers):
                return False
        if self.time is not None:
            if wall is None or not self.time.contains(wall):
                return False
        return True

    def _request_holds(self, request: RequestView) -> bool:
        if self.ruri_user is not None and self.ruri_user.fullmatch(request.ruri_user) is None:
            return False
        if self.from_user is not None and self.from_user.fullmatch(request.from_user) is None:
            return False
        if self.to_user is not None and self.to_user.fullmatch(request.to_user) is None:
            return False
        if self.has_source and not self._source_holds(request):
            return False
        if self.headers and not self.on_response:
            return _headers_hold(self.headers, request.headers)
        return True

    def _source_holds(self, request: RequestView) -> bool:
        if self.source_names and not self.source_names.isdisjoint(request.source_groups):
            return True
        if not self.networks or not request.source:
            return False
        try:
            address = ipaddress.ip_address(request.source)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.1.2.3 came from 10.1.2.3
        return any(address in network for network in self.networks)

    def header_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.headers)

    def text(self) -> str:
        """The conditions as one line: ``ruri_user 1[0-9]{3} source 10.0.0.0/8, pbx``."""
        parts: list[str] = []
        for key, pattern in (("ruri_user", self.ruri_user), ("from_user", self.from_user),
                             ("to_user", self.to_user)):
            if pattern is not None:
                parts.append(f"{key} {pattern.pattern}")
        if self.has_source:
            sources = [str(n) for n in self.networks] + sorted(self.source_names)
            parts.append(f"source {', '.join(sources)}")
        if self.upstream is not None:
            parts.append(f"upstream {', '.join(sorted(self.upstream))}")
        for name, pattern in self.headers:
            parts.append(f"header {name} {pattern.pattern}")
        if self.time is not None:
            parts.append(f"time {self.time.text()}")
        return " ".join(parts)


def _headers_hold(wanted: tuple[tuple[str, re.Pattern[str]], ...],
                  values: dict[str, str]) -> bool:
    for name, pattern in wanted:
        value = values.get(name)
        if value is None or pattern.fullmatch(value) is None:
            return False
    return True
