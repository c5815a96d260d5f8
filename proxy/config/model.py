"""The configuration model: frozen dataclasses and the defaults of ``proxy.yaml``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.auth_users import Credentials
from proxy.sip import host_port_text

TRANSPORTS = ("udp", "tcp", "tls")  # of upstreams (the proxy opens no WebSocket connection)
#: of listeners: the transports and SIP over WebSocket (RFC 7118), plain and over TLS
LISTEN_TRANSPORTS = (*TRANSPORTS, "ws", "wss")
REGISTRAR_MODES = ("local", "upstream")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}  # RFC 6455 3
DEFAULT_MAX_TTL = 86400
DEFAULT_MAX_CONTACTS = 10
MAX_CONTACTS = 1000
DEFAULT_REGISTRAR_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
"""Who may REGISTER by default: loopback and private addresses (RFC 1918, RFC 4193)."""
#: Every binding the proxy holds (local registrar and bindings learned from an upstream's
#: 2xx). A binding costs about 0.9 KB of the location service (measured with tracemalloc;
#: about 2.2 KB of RSS under load): 100,000 is about 90-220 MB, room for ten times the phones
#: of a large PBX, and a bound on what one authenticated user or one host of
#: registrar_networks can make the proxy hold.
DEFAULT_MAX_BINDINGS = 100_000
MAX_BINDINGS = 10_000_000
PATH_MODES = ("always", "when_supported")  # RFC 3327 Path on REGISTERs to an upstream
DEFAULT_ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")  # RFC 8760, most preferred first
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster")
STATE_FORMS = ("memory:, sqlite:PATH, redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or "
               "redis+cluster://HOST:PORT[,HOST:PORT...]")

CONFIG_KEYS = (
    "listen",
    "upstreams",
    "policy",
    "state",
    "node",
    "record_route",
    "registrar",
    "domains",
    "redirects",
    "trusted_relays",
    "auth",
    "registrar_networks",
    "registrar_max_contacts",
    "registrar_max_bindings",
    "path",
    "advertise",
    "force_rport",
    "limits",
    "timers",
    "log_level",
    "drain_timeout",
    "watch_policy",
    "secret",
    "tls",
    "http",
    "log_format",
    "upstream_probe",
    "dns",
    "ws_allowed_origins",
    "hep",
    "trace_calls",
    "http_token",
    "workers",
    "workers_spread",
)
REDIRECT_KEYS = ("trusted_sources", "allow_targets", "max_ttl")
LIMIT_KEYS = ("max_message_size", "max_headers", "per_source_rps", "tcp_max_connections",
              "tcp_idle_timeout", "tcp_per_source", "tcp_message_timeout", "tls_handshake_timeout",
              "tcp_accept_rate", "udp_flood_rps",
              "overload_lag_ms", "max_transactions")
TIMER_KEYS = ("t1_ms", "t2_ms", "t4_ms", "timer_c_ms")
TLS_KEYS = ("cert_file", "key_file", "ca_file", "verify_client")
AUTH_KEYS = ("realm", "users_file", "algorithms")
LOG_FORMATS = ("text", "json")
WORKER_SPREADS = ("source", "call")
PROBE_KEYS = ("interval", "timeout")
DNS_KEYS = ("servers",)
HEP_KEYS = ("to", "id")
DEFAULT_TRACE_CALLS = 1000


@dataclass(frozen=True, slots=True)
class Listen:
    """A local socket: ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``. ``host`` has no brackets."""

    transport: str  # "udp" | "tcp" | "tls" | "ws" | "wss"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{host_port_text(self.host, self.port)}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A PBX: ``sip:127.0.0.1:5080;transport=tcp`` -> ("127.0.0.1", 5080, "tcp").

    Defaults (RFC 3261 19.1.2): port 5060 (5061 for sips: or transport=tls), transport udp
    (tls for sips:, RFC 3261 26.2.2). ``host`` has no brackets.
    """

    uri: str
    host: str
    port: int
    transport: str


@dataclass(frozen=True, slots=True)
class UpstreamGroup:
    """A named group of upstreams, tried in order (failover); ``default`` for the list form."""

    name: str
    upstreams: tuple[Upstream, ...]


#: The name of the one group a list of upstreams makes.
DEFAULT_GROUP = "default"


@dataclass(frozen=True, slots=True)
class Redirects:
    """Which 3xx the proxy may follow and learn from; ``()`` means the default (README
    "Security defaults": trusted_sources, the upstreams' hosts; allow_targets, the upstreams'
    hosts and domains)."""

    trusted_sources: tuple[str, ...] = ()
    allow_targets: tuple[str, ...] = ()
    max_ttl: int = DEFAULT_MAX_TTL


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 65535  # bytes; larger: 513 (RFC 3261 18.1.1, 21.5.14)
    max_headers: int = 256
    per_source_rps: int = 0  # initial requests per second and source IP; 0 = no limit
    tcp_max_connections: int = 4096  # open TCP/TLS connections; past it new ones are refused
    #: seconds a connection without a binding or a transaction lives after its last SIP message
    tcp_idle_timeout: float = 120.0
    tcp_per_source: int = 32  # open TCP/TLS connections from one address (IPv6: one /64)
    tcp_message_timeout: float = 10.0  # seconds the bytes of one message have to complete
    tls_handshake_timeout: float = 5.0  # seconds from the TCP connect to the end of the handshake
    #: new connections a second per stream transport (and tcp_per_source a second from one
    #: source); over it a connection is closed at accept; 0 = no limit
    tcp_accept_rate: int = 500
    #: datagrams a second from one source (IPv6: one /64) over which its datagrams are dropped
    #: before they are parsed, until it sends no more for a second (never below twice
    #: per_source_rps; the upstreams and trusted_relays are exempt); 0 = off
    udp_flood_rps: int = 1000
    #: overload control (proxy/runtime/overload.py): new INVITEs and REGISTERs get 503 with
    #: Retry-After while the oldest datagram in the UDP receive queue (or the event loop's
    #: lateness) stays over this for 100 ms and does not drain (ms; 0 = off) ...
    overload_lag_ms: int = 50
    #: ... or while the core holds more transactions than this (0 = no bound)
    max_transactions: int = 300_000


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 17.1.1.1 T1/T2/T4 and 16.6 step 11 Timer C, in seconds (yaml: milliseconds)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Certificate and key for ``tls:`` listens; ``ca_file`` verifies TLS upstreams."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify_client: bool = False  # mutual TLS: clients must present a certificate from ca_file


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Digest authentication (RFC 3261 22.4): the realm and the users of ``users_file``."""

    realm: str
    users_file: Path  # absolute
    users: tuple[Credentials, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS  # offered in this order (RFC 8760 2.4)

    def credentials(self, user: str) -> Credentials | None:
        """The entry of ``user`` (user names compare exactly), or None."""
        for entry in self.users:
            if entry.user == user:
                return entry
        return None


@dataclass(frozen=True, slots=True)
class UpstreamProbe:
    """OPTIONS to every upstream each ``interval`` s (0: off); silent for ``timeout`` s: down."""

    interval: float = 10.0
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Where host names are looked up (RFC 3263): ``servers`` as (IP, port); () = the system
    resolver (``/etc/resolv.conf``, and ``/etc/hosts`` for addresses)."""

    servers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class HepTarget:
    """``hep: {to: udp:HOST:PORT, id: N}``: where every SIP message goes in a HEPv3 packet."""

    host: str  # IP or name, no brackets
    port: int
    capture_id: int = 1  # the capture agent id (HEP chunk 0x000c)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # absolute path of proxy.yaml
    listen: tuple[Listen, ...]  # at least one
    # The first upstream group's upstreams, in failover order: where a call goes when no
    # route of the policy says otherwise (the list form's only group).
    upstreams: tuple[Upstream, ...] = ()
    policy_path: Path | None = None  # absolute; None -> BUILTIN_POLICY
    state: str = "memory:"  # "memory:" | "sqlite:/abs/path" | "redis://..." | "rediss://..." |
    #                          "redis+cluster://HOST:PORT,..."
    node: str | None = None  # this proxy's name in a shared state; None: HOSTNAME:PORT
    record_route: bool = True
    registrar: str = "upstream"  # "local" | "upstream"
    domains: tuple[str, ...] = ()  # () = every domain (RFC 3261 16.5)
    redirects: Redirects = field(default_factory=Redirects)
    # Hosts or CIDR networks (normalised, ports ignored) whose initial requests may carry a
    # preloaded Route to another host (RFC 3261 16.4); () = nobody.
    trusted_relays: tuple[str, ...] = ()
    auth: AuthSettings | None = None  # None: no digest authentication
    # IP addresses or CIDR networks allowed to register without credentials (RFC 3261 10.3);
    # the loader makes it () when auth is set and the key is not.
    registrar_networks: tuple[str, ...] = DEFAULT_REGISTRAR_NETWORKS
    registrar_max_contacts: int = DEFAULT_MAX_CONTACTS  # bindings per address-of-record
    registrar_max_bindings: int = DEFAULT_MAX_BINDINGS  # every binding held
    path_mode: str = "always"  # yaml `path`: always | when_supported (Path to an upstream)
    # Extensions
    advertise: str | None = None  # host[:port] for Via/Record-Route
    force_rport: bool = False  # RFC 3581 behaviour for every request
    limits: Limits = field(default_factory=Limits)
    timers: Timers = field(default_factory=Timers)
    log_level: str = "info"
    drain_timeout: float = 30.0  # seconds: the longest a SIGTERM waits for calls to end
    watch_policy: bool = True
    secret: str | None = None
    tls: TlsSettings | None = None
    http: tuple[str, int] | None = None  # HOST:PORT of /metrics, /health, /ready; None: off
    log_format: str = "text"  # "text" | "json" (one JSON object per line)
    upstream_probe: UpstreamProbe = field(default_factory=lambda: UpstreamProbe())
    dns: DnsSettings = field(default_factory=DnsSettings)
    #: ``Origin`` values a WebSocket upgrade may carry (RFC 6455 10.2); () = any
    ws_allowed_origins: tuple[str, ...] = ()
    hep: HepTarget | None = None  # None: no HEP export
    trace_calls: int = DEFAULT_TRACE_CALLS  # recent calls kept for /calls (0: off)
    http_token: str | None = None  # bearer token for /calls* and every POST; None: open
    #: processes serving the listen addresses together (SO_REUSEPORT; README "Workers")
    workers: int = 1
    #: how UDP datagrams reach the workers: ``source`` (the kernel's hash of the addresses)
    #: or ``call`` (at random, handed on to the worker of the call: proxy.runtime.handoff)
    workers_spread: str = "source"
    # Every upstream group in order, the first the default; () when built from `upstreams`
    # alone: it is then the one group `default` of those upstreams (__post_init__).
    upstream_groups: tuple[UpstreamGroup, ...] = ()

    def __post_init__(self) -> None:
        if not self.upstream_groups:
            object.__setattr__(self, "upstream_groups",
                               (UpstreamGroup(DEFAULT_GROUP, self.upstreams),))
        elif not self.upstreams:
            object.__setattr__(self, "upstreams", self.upstream_groups[0].upstreams)

    @property
    def group_names(self) -> tuple[str, ...]:
        """The upstream groups' names, the default first."""
        return tuple(g.name for g in self.upstream_groups)

    @property
    def all_upstreams(self) -> tuple[Upstream, ...]:
        """Every upstream of every group, each once, in the order written: the upstreams of
        the access rules, redirect defaults and probing."""
        seen: dict[tuple[str, int, str], Upstream] = {}
        for group in self.upstream_groups:
            for u in group.upstreams:
                seen.setdefault((u.host.lower(), u.port, u.transport), u)
        return tuple(seen.values())

    def group(self, name: str) -> UpstreamGroup | None:
        for g in self.upstream_groups:
            if g.name == name:
                return g
        return None

    @property
    def trusted_sources(self) -> tuple[str, ...]:
        """``redirects.trusted_sources`` with the default applied (the hosts of
        every group's upstreams)."""
        if self.redirects.trusted_sources:
            return self.redirects.trusted_sources
        return unique(u.host.lower() for u in self.all_upstreams)

    @property
    def allow_targets(self) -> tuple[str, ...]:
        """``redirects.allow_targets`` with the default applied (README "Security defaults")."""
        if self.redirects.allow_targets:
            return self.redirects.allow_targets
        return unique([*(u.host.lower() for u in self.all_upstreams), *self.domains])

    @property
    def state_kind(self) -> str:
        """``"memory"``, ``"sqlite"`` or ``"redis"`` (every Redis form)."""
        kind = self.state.split(":", 1)[0]
        return "redis" if kind.lower() in REDIS_SCHEMES else kind


def unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


