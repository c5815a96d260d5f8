"""Which 3xx the proxy may follow and learn from (RFC 3261 26.1.2, 26.4.4; README "Security defaults").

A 3xx tells the proxy to send the request somewhere else, and a 301 the proxy learns diverts
every later call for the old Request-URI (RFC 3261 21.3.2). RFC 3261 26.1.2 lists forged
redirects among the threats and 26.4.4 leaves the defence to the element: here, a 3xx is
followed only when it comes from a trusted source and its Contact points to an allowed target.

* :meth:`RedirectGuard.source_trusted`: the IP the 3xx came from matches ``trusted_sources``
  (host names compared exactly, IPs and CIDR networks by containment; ports ignored);
* :meth:`RedirectGuard.check_target`: the Contact's host matches ``allow_targets``: a domain
  or host name (``example.com`` covers ``example.com`` and ``*.example.com``), an IP or a CIDR
  network. Some addresses are never a sensible next hop and are refused unless an entry names
  them *explicitly*: loopback, link-local, unspecified (``0.0.0.0/8``, ``::``), multicast and
  broadcast (explicitly = an IP or network that lies inside that special range, such as
  ``127.0.0.1`` or ``127.0.0.0/8``; ``0.0.0.0/0`` does not count), and the proxy's own
  listening addresses (a loop; explicitly = that exact IP or host name).

The guard is sans-IO: it sees names, not what DNS makes of them. Numeric host spellings that
resolvers accept but that are not dotted quads (``127.1``, ``2130706433``, ``0x7f.0.0.1``)
are refused outright, IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are judged as the IPv4
address they carry, and a ``maddr`` parameter (RFC 3261 19.1.1), which overrides the host as
the destination, must pass the same checks. A URI header asking for a Route
(``?Route=...``) is refused: RFC 3261 19.1.5 says not to honour it.

Everything is precomputed in the constructor; a check is a few set look-ups and, for an IP,
one pass over the configured networks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

from proxy.sip.uri import AbsoluteUri, SipUri

__all__ = ["RedirectGuard"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4: Final = ipaddress.IPv4Network
_V6: Final = ipaddress.IPv6Network

# Destinations a redirect must not name unless an allow_targets entry inside the range names
# them (RFC 6890 special-purpose registries; RFC 1122 3.2.1.3 for 0.0.0.0/8 "this network",
# which is not a destination).
_SPECIAL: Final[tuple[tuple[str, IPNetwork], ...]] = (
    ("loopback", _V4("127.0.0.0/8")),
    ("loopback", _V6("::1/128")),
    ("link-local", _V4("169.254.0.0/16")),
    ("link-local", _V6("fe80::/10")),
    ("unspecified", _V4("0.0.0.0/8")),
    ("unspecified", _V6("::/128")),
    ("multicast", _V4("224.0.0.0/4")),
    ("multicast", _V6("ff00::/8")),
    ("broadcast", _V4("255.255.255.255/32")),
)
_MAPPED: Final = _V6("::ffff:0:0/96")  # RFC 4291 2.5.5.2

# A host-name entry (RFC 1123 labels; '_' tolerated as the URI parser does).
_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _unmap(ip: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` -> ``a.b.c.d``; an IPv6 zone (``%eth0``) is dropped."""
    if ip.version == 6:
        assert isinstance(ip, ipaddress.IPv6Address)
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
        if ip.scope_id is not None:
            return ipaddress.IPv6Address(int(ip))
    return ip


def _unmap_network(net: IPNetwork) -> IPNetwork:
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return _V4((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _parse_ip(text: str) -> IPAddress | None:
    """An IP address (IPv6 with or without brackets), normalised; None for anything else."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or not (text[0].isdigit() or ":" in text):
        return None  # a host name: skip the exception
    try:
        return _unmap(ipaddress.ip_address(text))
    except ValueError:
        return None


def _parse_entry(text: str, what: str) -> IPNetwork | str:
    """A configuration entry: a CIDR network or IP (as a network), else a lower-case name."""
    entry = text.strip()
    if "/" in entry:
        try:
            return _unmap_network(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"{what}: invalid CIDR network {text!r} ({exc})") from None
    ip = _parse_ip(entry)
    if ip is not None:
        return ipaddress.ip_network(ip)
    name = entry.lower().rstrip(".")
    if not name or len(name) > 253 or not _NAME.fullmatch(name):
        raise ValueError(f"{what}: {text!r} is not a host name, an IP address or a CIDR network")
    return name


def _default_port(uri: SipUri) -> int:
    """RFC 3263 4.2 / RFC 3261 19.1.2: 5061 for sips: or transport=tls, else 5060."""
    if uri.port is not None:
        return uri.port
    return 5061 if uri.scheme == "sips" or uri.transport == "tls" else 5060


def _shown(host: str, port: int | None) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return h if port is None else f"{h}:{port}"


class RedirectGuard:
    """Decides whether a 3xx may be followed (and a 301 learned): RFC 3261 26.1.2, 26.4.4.

    ``trusted_sources`` and ``allow_targets`` are the ``redirects`` lists (README) with the
    defaults already applied (:attr:`proxy.config.Config.trusted_sources`,
    :attr:`~proxy.config.Config.allow_targets`). ``own_addresses`` are ``(host, port)`` pairs
    the proxy answers on (listen and advertised addresses; host an IP, bracketed or not, or
    a name). Raises :class:`ValueError` for an entry that is not a host, IP or network.
    """

    __slots__ = (
        "_allow_ips",
        "_allow_names",
        "_allow_nets",
        "_own_ips",
        "_own_names",
        "_special_named",
        "_trusted_ips",
        "_trusted_names",
        "_trusted_nets",
        "trust_upstreams",
    )

    def __init__(
        self,
        trusted_sources: Iterable[str],
        allow_targets: Iterable[str],
        own_addresses: Iterable[tuple[str, int]] = (),
        trust_upstreams: bool = False,
    ) -> None:
        #: the default ``trusted_sources``: a 3xx from an upstream's address (by address and
        #: port, a resolved target of a named upstream too, as it is now) may be followed
        self.trust_upstreams = trust_upstreams
        t_names, t_ips, t_nets = self._split(trusted_sources, "trusted_sources")
        self._trusted_names = t_names
        self._trusted_ips = t_ips
        self._trusted_nets = t_nets
        a_names, a_ips, a_nets = self._split(allow_targets, "allow_targets")
        self._allow_names = a_names
        self._allow_ips = a_ips
        self._allow_nets = a_nets
        # The allow entries that lie inside a special range: only these can name a special
        # address explicitly (0.0.0.0/0 contains 127.0.0.1 but does not name it).
        named: list[IPNetwork] = [ipaddress.ip_network(ip) for ip in a_ips]
        named.extend(a_nets)
        self._special_named: tuple[IPNetwork, ...] = tuple(
            n for n in named
            if any(n.version == s.version and n.subnet_of(s)  # type: ignore[arg-type]
                   for _, s in _SPECIAL)
        )
        own_ips: set[tuple[IPAddress, int]] = set()
        own_names: set[tuple[str, int]] = set()
        for host, port in own_addresses:
            ip = _parse_ip(host.strip())
            if ip is not None:
                own_ips.add((ip, port))
            else:
                own_names.add((host.strip().lower().rstrip("."), port))
        self._own_ips = frozenset(own_ips)
        self._own_names = frozenset(own_names)

    @staticmethod
    def _split(
        entries: Iterable[str], what: str
    ) -> tuple[frozenset[str], frozenset[IPAddress], tuple[IPNetwork, ...]]:
        names: set[str] = set()
        ips: set[IPAddress] = set()
        nets: list[IPNetwork] = []
        for text in entries:
            entry = _parse_entry(text, what)
            if isinstance(entry, str):
                names.add(entry)
            elif entry.num_addresses == 1:
                ips.add(entry.network_address)
            elif entry not in nets:
                nets.append(entry)
        return frozenset(names), frozenset(ips), tuple(nets)

    # -- sources -------------------------------------------------------------------------------

    def source_trusted(self, host: str) -> bool:
        """True when a 3xx from ``host`` (the IP it came from; ports ignored) may be followed."""
        ip = _parse_ip(host)
        if ip is None:
            return host.lower().rstrip(".") in self._trusted_names
        if ip in self._trusted_ips:
            return True
        return any(ip in net for net in self._trusted_nets)

    # -- targets -------------------------------------------------------------------------------

    def check_target(self, uri: SipUri | AbsoluteUri) -> str | None:
        """None when the request may be redirected to ``uri``; else why not (for the log)."""
        if not isinstance(uri, SipUri):
            return f"target {uri} is not a sip: or sips: URI"
        port = _default_port(uri)
        reason = self._check_host(uri.host, port)
        if reason is not None:
            return reason
        maddr = uri.params.get("maddr")
        if maddr is not None:  # RFC 3261 19.1.1: maddr overrides the host as the destination
            reason = self._check_host(maddr.lower(), port)
            if reason is not None:
                return f"maddr: {reason}"
        if uri.headers is not None and self._asks_for_route(uri.headers):
            return f"target {uri.host} carries a Route URI header (RFC 3261 19.1.5)"
        return None

    def _check_host(self, host: str, port: int) -> str | None:
        ip = _parse_ip(host)
        if ip is None:
            if host.startswith("["):
                return f"target {host} is not a valid IPv6 address"
            return self._check_name(host.rstrip("."), port)
        special = self._special(ip)
        explicit = False
        if special is not None:
            if not any(ip in net for net in self._special_named):
                return (f"target {_shown(str(ip), port)} is a {special} address not named by "
                        "redirects.allow_targets")
            explicit = True
        if (ip, port) in self._own_ips:
            if ip not in self._allow_ips:
                return (f"target {_shown(str(ip), port)} is one of the proxy's own addresses "
                        "(a loop); not named by redirects.allow_targets")
            return None
        if explicit or ip in self._allow_ips or any(ip in net for net in self._allow_nets):
            return None
        return f"target {_shown(str(ip), port)} is not in redirects.allow_targets"

    def _check_name(self, name: str, port: int) -> str | None:
        # RFC 1123 2.1 / RFC 3261 25.1 toplabel: a host name's last label starts with a
        # letter. Anything else that is not an IP is a numeric spelling resolvers may turn
        # into an address (inet_aton: "127.1", "2130706433", "0x7f.0.0.1").
        top = name.rpartition(".")[2]
        if not top or not top[0].isalpha():
            return f"target {name} is neither an IP address nor a valid host name"
        if (name, port) in self._own_names:
            if name not in self._allow_names:
                return (f"target {_shown(name, port)} is one of the proxy's own addresses "
                        "(a loop); not named by redirects.allow_targets")
            return None
        names = self._allow_names
        if name in names:
            return None
        dot = name.find(".")
        while dot >= 0:  # example.com covers *.example.com
            if name[dot + 1:] in names:
                return None
            dot = name.find(".", dot + 1)
        return f"target {name} is not in redirects.allow_targets"

    @staticmethod
    def _special(ip: IPAddress) -> str | None:
        for category, net in _SPECIAL:
            if ip.version == net.version and ip in net:
                return category
        return None

    @staticmethod
    def _asks_for_route(headers: str) -> bool:
        for item in headers.split("&"):
            name = unquote(item.partition("=")[0]).strip().lower()
            if name == "route":
                return True
        return False
