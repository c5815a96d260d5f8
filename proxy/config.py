"""``proxy.yaml``: reading and validating the proxy's configuration (CONTRACT "proxy.yaml").

:func:`load_config` returns a frozen :class:`Config` whose paths are absolute (a relative
``policy``, ``sqlite:``, ``auth.users_file`` or ``tls`` path is relative to the folder of
``proxy.yaml``), or raises :class:`~proxy.diagnostics.ConfigError` with every error found,
each with FILE:LINE:COLUMN. The users file of ``auth`` is read here too
(:mod:`proxy.auth_users`) and its errors carry its own positions.
:func:`load_config_and_policy` also loads the policy file the configuration names, and
reports that file's errors with the policy's own positions.

Access control: ``trusted_relays`` (who may send an initial request with a preloaded Route
to another host, RFC 3261 16.4), ``auth`` (digest authentication, RFC 3261 22.4),
``registrar_networks`` and ``registrar_max_contacts`` (RFC 3261 10.3).

Keys beyond the CONTRACT (extensions): ``advertise``, ``force_rport``, ``limits``,
``timers``, ``log_level``, ``drain_timeout``, ``watch_policy``, ``secret``, ``tls``.

``check`` and ``run`` read the configuration through this module alike: what the running
proxy cannot do (a ``redis://`` state in this version) is refused here, at its position.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.auth_users import Credentials, load_users
from proxy.diagnostics import (
    ConfigError,
    Diagnostic,
    Reporter,
    YMap,
    YNode,
    YScalar,
    YSeq,
    check_keys,
    describe,
    display_path,
    get_bool,
    get_int,
    get_list,
    get_map,
    get_number,
    get_str,
    read_yaml_file,
)
from proxy.policy import BUILTIN_POLICY, Policy, load_policy
from proxy.sip import host_port_text

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_REGISTRAR_NETWORKS",
    "AuthSettings",
    "Config",
    "Credentials",
    "Limits",
    "Listen",
    "Redirects",
    "Timers",
    "TlsSettings",
    "Upstream",
    "load_config",
    "load_config_and_policy",
    "parse_listen",
    "parse_upstream",
]

TRANSPORTS = ("udp", "tcp", "tls")
REGISTRAR_MODES = ("local", "upstream")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
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
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster")
STATE_FORMS = "memory: or sqlite:PATH"

CONFIG_KEYS = (
    "listen",
    "upstreams",
    "policy",
    "state",
    "record_route",
    "registrar",
    "domains",
    "redirects",
    "trusted_relays",
    "auth",
    "registrar_networks",
    "registrar_max_contacts",
    "advertise",
    "force_rport",
    "limits",
    "timers",
    "log_level",
    "drain_timeout",
    "watch_policy",
    "secret",
    "tls",
)
REDIRECT_KEYS = ("trusted_sources", "allow_targets", "max_ttl")
LIMIT_KEYS = ("max_message_size", "max_headers")
TIMER_KEYS = ("t1_ms", "t2_ms", "t4_ms", "timer_c_ms")
TLS_KEYS = ("cert_file", "key_file", "ca_file")
AUTH_KEYS = ("realm", "users_file")


@dataclass(frozen=True, slots=True)
class Listen:
    """A local socket: ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``. ``host`` has no brackets."""

    transport: str  # "udp" | "tcp" | "tls"
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
class Redirects:
    """Which 3xx the proxy may follow and learn from; ``()`` means the CONTRACT default
    (trusted_sources: the upstreams' hosts; allow_targets: the upstreams' hosts and domains)."""

    trusted_sources: tuple[str, ...] = ()
    allow_targets: tuple[str, ...] = ()
    max_ttl: int = DEFAULT_MAX_TTL


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 65535  # bytes; larger: 513 (RFC 3261 18.1.1, 21.5.14)
    max_headers: int = 256


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


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Digest authentication (RFC 3261 22.4): the realm and the users of ``users_file``."""

    realm: str
    users_file: Path  # absolute
    users: tuple[Credentials, ...]

    def credentials(self, user: str) -> Credentials | None:
        """The entry of ``user`` (user names compare exactly), or None."""
        for entry in self.users:
            if entry.user == user:
                return entry
        return None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # absolute path of proxy.yaml
    listen: tuple[Listen, ...]  # at least one
    upstreams: tuple[Upstream, ...] = ()  # in failover order
    policy_path: Path | None = None  # absolute; None -> BUILTIN_POLICY
    state: str = "memory:"  # "memory:" | "sqlite:/abs/path" (redis:// is refused for now)
    record_route: bool = True
    registrar: str = "upstream"  # "local" | "upstream"
    domains: tuple[str, ...] = ()  # () = every domain (RFC 3261 16.5)
    redirects: Redirects = field(default_factory=Redirects)
    # Hosts or CIDR networks (normalised, ports ignored) whose initial requests may carry a
    # preloaded Route to another host (RFC 3261 16.4); () = nobody.
    trusted_relays: tuple[str, ...] = ()
    auth: AuthSettings | None = None  # None: no digest authentication
    # IP addresses or CIDR networks allowed to register (RFC 3261 10.3).
    registrar_networks: tuple[str, ...] = DEFAULT_REGISTRAR_NETWORKS
    registrar_max_contacts: int = DEFAULT_MAX_CONTACTS  # bindings per address-of-record
    # Extensions
    advertise: str | None = None  # host[:port] for Via/Record-Route
    force_rport: bool = False  # RFC 3581 behaviour for every request
    limits: Limits = field(default_factory=Limits)
    timers: Timers = field(default_factory=Timers)
    log_level: str = "info"
    drain_timeout: float = 5.0  # seconds
    watch_policy: bool = True
    secret: str | None = None
    tls: TlsSettings | None = None

    @property
    def trusted_sources(self) -> tuple[str, ...]:
        """``redirects.trusted_sources`` with the CONTRACT default applied."""
        if self.redirects.trusted_sources:
            return self.redirects.trusted_sources
        return _unique(u.host.lower() for u in self.upstreams)

    @property
    def allow_targets(self) -> tuple[str, ...]:
        """``redirects.allow_targets`` with the CONTRACT default applied."""
        if self.redirects.allow_targets:
            return self.redirects.allow_targets
        return _unique([*(u.host.lower() for u in self.upstreams), *self.domains])

    @property
    def state_kind(self) -> str:
        """``"memory"`` or ``"sqlite"``."""
        return self.state.split(":", 1)[0]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> tuple[Config, list[Diagnostic]]:
    """Read and validate ``proxy.yaml``; returns ``(config, warnings)``.

    Raises :class:`ConfigError` with every error. The policy file itself is not validated
    here (only that it can be read): see :func:`load_config_and_policy`.
    """
    config, report = _load(path)
    if config is None:
        raise ConfigError(report.errors)
    return config, report.warnings


def load_config_and_policy(path: str | Path) -> tuple[Config, Policy, list[Diagnostic]]:
    """:func:`load_config`, then the policy it names (or :data:`BUILTIN_POLICY`).

    Raises :class:`ConfigError` with the errors of both files (the policy's with its own
    FILE:LINE:COLUMN); returns the warnings of both otherwise.
    """
    config, report = _load(path)
    errors = report.errors
    warnings = report.warnings
    policy: Policy | None = BUILTIN_POLICY
    policy_path = config.policy_path if config is not None else report.policy_path
    if policy_path is not None:
        try:
            policy, policy_warnings = load_policy(policy_path)
            warnings.extend(policy_warnings)
        except ConfigError as exc:
            errors.extend(exc.diagnostics)
            policy = None
    if errors or config is None or policy is None:
        raise ConfigError(errors)
    return config, policy, warnings


class _ConfigReporter(Reporter):
    """A reporter that also remembers the policy file named, so that ``check`` validates it
    even when the configuration itself has errors, and holds the reporters of the other files
    read with the configuration (the users file), whose findings follow its own."""

    __slots__ = ("others", "policy_path")

    def __init__(self, file: str) -> None:
        super().__init__(file)
        self.policy_path: Path | None = None
        self.others: list[Reporter] = []

    @property
    def errors(self) -> list[Diagnostic]:
        return [*super().errors, *(d for r in self.others for d in r.errors)]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [*super().warnings, *(d for r in self.others for d in r.warnings)]

    @property
    def failed(self) -> bool:
        return super().failed or any(r.failed for r in self.others)


def _load(path: str | Path) -> tuple[Config | None, _ConfigReporter]:
    report = _ConfigReporter(str(path))
    config_path = Path(os.path.abspath(path))
    tree, _ = read_yaml_file(config_path, report, _quote_memory_state)
    if tree is None:
        return None, report
    if not isinstance(tree, YMap):
        report.error(tree, f"the configuration must be a mapping of settings, got {describe(tree)}")
        return None, report
    config = _Builder(tree, config_path, report).build()
    return (None if report.failed else config), report


# The CONTRACT writes `state: memory:`, which plain YAML reads as a nested mapping ("memory" with
# a value) and refuses ("mapping values are not allowed here"). Quote a top-level `state:`
# value that is one word ending in a colon before parsing; the line keeps its line number and
# the columns up to the value.
_BARE_SCHEME_STATE = re.compile(r"^(state:[ \t]+)([A-Za-z]+:)(?=[ \t]*(?:#.*)?$)", re.MULTILINE)


def _quote_memory_state(text: str) -> str:
    return _BARE_SCHEME_STATE.sub(r'\1"\2"', text)


class _Builder:
    """Turns the positioned tree into a :class:`Config`, reporting as it goes."""

    def __init__(self, tree: YMap, path: Path, report: _ConfigReporter) -> None:
        self.tree = tree
        self.path = path
        self.base = path.parent
        self.report = report

    def build(self) -> Config | None:
        r = self.report
        found = check_keys(r, self.tree, CONFIG_KEYS, (), "")
        given = {k: v for k, v in found.items() if not _is_null(v)}

        listen: tuple[Listen, ...] = ()
        if "listen" not in given:
            r.error(found.get("listen", self.tree), "listen: at least one TRANSPORT:HOST:PORT "
                    "entry is required")
        else:
            listen = self._listen(given["listen"])

        upstreams = self._upstreams(given["upstreams"]) if "upstreams" in given else ()
        policy_path = self._policy(given["policy"]) if "policy" in given else None
        state = self._state(given["state"]) if "state" in given else "memory:"
        record_route = self._bool(given, "record_route", True)
        registrar = "upstream"
        if "registrar" in given:
            registrar = self._choice(given["registrar"], "registrar", REGISTRAR_MODES) or registrar
        domains = self._domains(given["domains"]) if "domains" in given else ()
        redirects = self._redirects(given["redirects"]) if "redirects" in given else Redirects()
        trusted_relays = self._networks(given.get("trusted_relays"), "trusted_relays")
        auth = self._auth(given["auth"]) if "auth" in given else None
        registrar_networks = DEFAULT_REGISTRAR_NETWORKS
        if "registrar_networks" in given:
            registrar_networks = self._ip_networks(given["registrar_networks"])
        registrar_max_contacts = DEFAULT_MAX_CONTACTS
        if "registrar_max_contacts" in given:
            registrar_max_contacts = get_int(
                r, given["registrar_max_contacts"], "registrar_max_contacts", 1, MAX_CONTACTS
            ) or registrar_max_contacts
        advertise = self._advertise(given["advertise"]) if "advertise" in given else None
        force_rport = self._bool(given, "force_rport", False)
        limits = self._limits(given["limits"]) if "limits" in given else Limits()
        timers = self._timers(given["timers"]) if "timers" in given else Timers()
        log_level = "info"
        if "log_level" in given:
            log_level = self._choice(given["log_level"], "log_level", LOG_LEVELS) or log_level
        drain_timeout = 5.0
        if "drain_timeout" in given:
            drain_timeout = get_number(r, given["drain_timeout"], "drain_timeout", 0, 3600) or 0.0
        watch_policy = self._bool(given, "watch_policy", True)
        secret = self._secret(given["secret"]) if "secret" in given else None
        tls = self._tls(given["tls"]) if "tls" in given else None

        declared = given.get("upstreams")
        if not upstreams and not (isinstance(declared, YSeq) and declared.items):
            at = found.get("upstreams", self.tree)
            if registrar == "upstream":
                r.warning(at, "no upstreams: with registrar: upstream, REGISTER requests and "
                          "requests for unknown users have nowhere to go")
            else:
                r.warning(at, "no upstreams: only registered users and requests with a Route "
                          "header can be reached")
        if tls is None and "tls" not in found:
            for entry, node in zip(listen, _items(given.get("listen")), strict=False):
                if entry.transport == "tls":
                    r.error(node, f"listen {entry}: a tls listen needs a 'tls' section with "
                            "cert_file and key_file")
        if r.failed:
            return None
        return Config(
            path=self.path,
            listen=listen,
            upstreams=upstreams,
            policy_path=policy_path,
            state=state,
            record_route=record_route,
            registrar=registrar,
            domains=domains,
            redirects=redirects,
            trusted_relays=trusted_relays,
            auth=auth,
            registrar_networks=registrar_networks,
            registrar_max_contacts=registrar_max_contacts,
            advertise=advertise,
            force_rport=force_rport,
            limits=limits,
            timers=timers,
            log_level=log_level,
            drain_timeout=drain_timeout,
            watch_policy=watch_policy,
            secret=secret,
            tls=tls,
        )

    # -- scalars -----------------------------------------------------------------------------

    def _bool(self, given: dict[str, YNode], key: str, default: bool) -> bool:
        if key not in given:
            return default
        value = get_bool(self.report, given[key], key)
        return default if value is None else value

    def _choice(self, node: YNode, what: str, choices: tuple[str, ...]) -> str | None:
        if isinstance(node, YScalar) and isinstance(node.value, str) and node.value in choices:
            return node.value
        shown = repr(node.value) if isinstance(node, YScalar) and isinstance(node.value, str) \
            else describe(node)
        self.report.error(node, f"{what} must be one of {', '.join(choices)}; got {shown}")
        return None

    def _path(self, node: YNode, what: str) -> Path | None:
        text = get_str(self.report, node, what)
        if text is None:
            return None
        return self._resolve(text.strip())

    def _resolve(self, text: str) -> Path:
        p = Path(text).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base / p))

    def _relative_note(self, written: str) -> str:
        """For a message about the path ``written``, if relative: what it is relative to."""
        if Path(written.strip()).expanduser().is_absolute():
            return ""
        return (f" (relative paths are relative to {self.base}, the folder of the "
                "configuration file)")

    def _readable_file(
        self, node: YNode, key: str, section: str = "", what: str | None = None
    ) -> Path | None:
        """The absolute path of the file ``node`` (the value of ``key``) names, if it can be
        opened for reading. ``section`` prefixes the messages ("tls: "); ``what`` names the
        file in them (default: the key).
        """
        what = what or key
        path = self._path(node, f"{section}{key}")
        if path is None:
            return None
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            assert isinstance(node, YScalar)  # _path read a string from it
            self.report.error(node, f"{section}cannot read {what} {path}: "
                              f"{exc.strerror or exc}{self._relative_note(str(node.value))}")
            return None
        return path

    # -- listen / upstreams ------------------------------------------------------------------

    def _listen(self, node: YNode) -> tuple[Listen, ...]:
        seq = get_list(self.report, node, "listen")
        if seq is None:
            return ()
        if not seq.items:
            self.report.error(seq, "listen: at least one TRANSPORT:HOST:PORT entry is required")
        result: list[Listen] = []
        seen: dict[Listen, YNode] = {}
        for item in seq.items:
            text = get_str(self.report, item, "a listen entry")
            if text is None:
                continue
            entry = parse_listen(text)
            if isinstance(entry, str):
                self.report.error(item, f"listen {text!r}: {entry}")
                continue
            first = seen.get(entry)
            if first is not None:
                self.report.error(item, f"listen {text!r}: duplicate entry (first at "
                                  f"{first.line}:{first.column})")
                continue
            seen[entry] = item
            result.append(entry)
        return tuple(result)

    def _upstreams(self, node: YNode) -> tuple[Upstream, ...]:
        seq = get_list(self.report, node, "upstreams")
        if seq is None:
            return ()
        result: list[Upstream] = []
        seen: dict[tuple[str, int, str], YNode] = {}
        for item in seq.items:
            text = get_str(self.report, item, "an upstream")
            if text is None:
                continue
            up = parse_upstream(text)
            if isinstance(up, str):
                self.report.error(item, f"upstream {text!r}: {up}")
                continue
            key = (up.host.lower(), up.port, up.transport)
            first = seen.get(key)
            if first is not None:
                self.report.error(item, f"upstream {text!r}: duplicate upstream (first at "
                                  f"{first.line}:{first.column})")
                continue
            seen[key] = item
            result.append(up)
        return tuple(result)

    # -- policy / state ----------------------------------------------------------------------

    def _policy(self, node: YNode) -> Path | None:
        path = self._readable_file(node, "policy", what="policy file")
        if path is not None:
            self.report.policy_path = path
        return path

    def _state(self, node: YNode) -> str:
        text = get_str(self.report, node, "state")
        if text is None:
            return "memory:"
        text = text.strip()
        if text in ("memory:", "memory"):
            return "memory:"
        if text.startswith("sqlite:"):
            rest = text[len("sqlite:"):]
            if not rest.strip():
                self.report.error(node, "state 'sqlite:' needs a file path: sqlite:PATH")
                return "memory:"
            if rest.startswith("//") and not rest.startswith("///"):
                self.report.error(node, f"state {text!r}: write sqlite:PATH "
                                  "(e.g. sqlite:data/state.db or sqlite:/var/lib/proxy/state.db)")
                return "memory:"
            path = self._resolve(rest)
            self._check_sqlite_path(node, text, path, self._relative_note(rest))
            return f"sqlite:{path}"
        if text.partition(":")[0].lower() in REDIS_SCHEMES:
            # proxy.store.open_store has no Redis backend yet: refuse it here, at the value,
            # so that `check` fails as `run` would.
            self.report.error(node, f"state {text}: the Redis backend is not available in this "
                              f"version; use {STATE_FORMS}")
            return "memory:"
        self.report.error(node, f"state must be {STATE_FORMS}; got {text!r}")
        return "memory:"

    def _check_sqlite_path(self, node: YNode, text: str, path: Path, note: str) -> None:
        """Errors for an sqlite file the proxy can never open (a folder, or a file where a
        folder must be); a warning when this user could not create or write it. The store
        creates missing folders itself."""
        try:
            if path.is_dir():
                self.report.error(node, f"state {text!r}: {path} is a folder, not a file{note}")
                return
            existing = path if path.exists() else path.parent
            while not existing.exists():
                existing = existing.parent
            if existing != path and not existing.is_dir():
                self.report.error(node, f"state {text!r}: cannot create {path}: {existing} is "
                                  f"not a folder{note}")
                return
            if not os.access(existing, os.W_OK):
                self.report.warning(node, f"state {text!r}: {existing} is not writable by this "
                                    f"user, so the proxy cannot create or update {path}{note}")
        except OSError as exc:
            self.report.error(node, f"state {text!r}: cannot use {path}: "
                              f"{exc.strerror or exc}{note}")

    # -- hosts -------------------------------------------------------------------------------

    def _domains(self, node: YNode) -> tuple[str, ...]:
        seq = get_list(self.report, node, "domains")
        if seq is None:
            return ()
        result: list[str] = []
        for item in seq.items:
            text = get_str(self.report, item, "a domain")
            if text is None:
                continue
            host = _plain_host(text.strip())
            if host.startswith("!"):
                self.report.error(item, f"domain {text!r}: {host[1:]}")
                continue
            result.append(host)
        return _unique(result)

    def _redirects(self, node: YNode) -> Redirects:
        m = get_map(self.report, node, "redirects")
        if m is None:
            return Redirects()
        found = check_keys(self.report, m, REDIRECT_KEYS, (), "redirects")
        given = {k: v for k, v in found.items() if not _is_null(v)}
        trusted = self._networks(given.get("trusted_sources"), "redirects: trusted_sources")
        targets = self._networks(given.get("allow_targets"), "redirects: allow_targets")
        max_ttl = DEFAULT_MAX_TTL
        if "max_ttl" in given:
            ttl = get_int(self.report, given["max_ttl"], "redirects: max_ttl", 1, 10 * 365 * 86400)
            max_ttl = ttl if ttl is not None else max_ttl
        return Redirects(trusted, targets, max_ttl)

    def _networks(self, node: YNode | None, what: str) -> tuple[str, ...]:
        if node is None:
            return ()
        seq = get_list(self.report, node, what)
        if seq is None:
            return ()
        result: list[str] = []
        for item in seq.items:
            text = get_str(self.report, item, f"an entry of {what}")
            if text is None:
                continue
            entry = _host_or_network(text.strip())
            if entry.startswith("!"):
                self.report.error(item, f"{what}: {text!r}: {entry[1:]}")
                continue
            result.append(entry)
        return _unique(result)

    def _ip_networks(self, node: YNode) -> tuple[str, ...]:
        """``registrar_networks``: IP addresses or CIDR networks (host bits may be set)."""
        what = "registrar_networks"
        seq = get_list(self.report, node, what)
        if seq is None:
            return DEFAULT_REGISTRAR_NETWORKS
        if not seq.items:
            self.report.warning(seq, f"{what} is empty: no address is allowed to register")
        result: list[str] = []
        for item in seq.items:
            text = get_str(self.report, item, f"an entry of {what}")
            if text is None:
                continue
            text = text.strip()
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.report.error(item, f"{what}: {text!r} is not an IP address or a CIDR "
                                  "network (e.g. 10.0.0.0/8, 192.0.2.7 or fc00::/7)")
                continue
            is_address = "/" not in text
            result.append(str(network.network_address) if is_address else str(network))
        return _unique(result)

    def _auth(self, node: YNode) -> AuthSettings | None:
        """``auth``: the realm and the users file (RFC 3261 22.4)."""
        m = get_map(self.report, node, "auth")
        if m is None:
            return None
        found = check_keys(self.report, m, AUTH_KEYS, (), "auth")
        given = {k: v for k, v in found.items() if not _is_null(v)}
        for key in AUTH_KEYS:
            if key not in given:
                self.report.error(m, f"auth: missing required key {key!r}")
        realm = self._realm(given["realm"]) if "realm" in given else None
        if "users_file" not in given:
            return None
        path = self._readable_file(given["users_file"], "users_file", "auth: ")
        if path is None:
            return None
        users_report = Reporter(display_path(path))
        self.report.others.append(users_report)
        users = load_users(path, realm or "", users_report)
        if realm is None or users is None:
            return None
        return AuthSettings(realm, path, users)

    def _realm(self, node: YNode) -> str | None:
        realm = get_str(self.report, node, "auth: realm")
        if realm is None:
            return None
        if _QUOTED_STRING_UNSAFE.search(realm):
            self.report.error(node, "auth: realm must not contain '\"', '\\' or control "
                              "characters (it is sent as a quoted-string, RFC 3261 25.1)")
            return None
        return realm

    def _advertise(self, node: YNode) -> str | None:
        text = get_str(self.report, node, "advertise")
        if text is None:
            return None
        text = text.strip()
        parsed = _split_hostport(text)
        if isinstance(parsed, str):
            self.report.error(node, f"advertise {text!r}: {parsed}")
            return None
        host, port = parsed
        return host_port_text(host, port)

    # -- sections ----------------------------------------------------------------------------

    def _limits(self, node: YNode) -> Limits:
        m = get_map(self.report, node, "limits")
        if m is None:
            return Limits()
        found = check_keys(self.report, m, LIMIT_KEYS, (), "limits")
        d = Limits()
        size = d.max_message_size
        headers = d.max_headers
        if (v := found.get("max_message_size")) is not None:
            size = get_int(self.report, v, "limits: max_message_size", 1024, 16 * 1024 * 1024) \
                or size
        if (v := found.get("max_headers")) is not None:
            headers = get_int(self.report, v, "limits: max_headers", 8, 10000) or headers
        return Limits(size, headers)

    def _timers(self, node: YNode) -> Timers:
        m = get_map(self.report, node, "timers")
        if m is None:
            return Timers()
        found = check_keys(self.report, m, TIMER_KEYS, (), "timers")
        d = Timers()
        bounds = {"t1_ms": 60_000, "t2_ms": 600_000, "t4_ms": 600_000, "timer_c_ms": 3_600_000}
        ms = {"t1_ms": d.t1, "t2_ms": d.t2, "t4_ms": d.t4, "timer_c_ms": d.timer_c}
        for key, hi in bounds.items():
            if (v := found.get(key)) is not None:
                value = get_int(self.report, v, f"timers: {key}", 1, hi)
                if value is not None:
                    ms[key] = value / 1000
        if ms["t2_ms"] < ms["t1_ms"] and "t2_ms" in found:
            self.report.error(found["t2_ms"], "timers: t2_ms must not be smaller than t1_ms "
                              "(RFC 3261 17.1.2.2)")
        if "timer_c_ms" in found and ms["timer_c_ms"] < 180.0:
            self.report.warning(found["timer_c_ms"], "timers: timer_c_ms is below 3 minutes "
                                "(RFC 3261 16.6 step 11 asks for more than 3 minutes)")
        return Timers(ms["t1_ms"], ms["t2_ms"], ms["t4_ms"], ms["timer_c_ms"])

    def _secret(self, node: YNode) -> str | None:
        text = get_str(self.report, node, "secret")
        if text is not None and len(text) < 16:
            self.report.warning(node, f"secret is short ({len(text)} characters); "
                                "use at least 32 random characters")
        return text

    def _tls(self, node: YNode) -> TlsSettings | None:
        m = get_map(self.report, node, "tls")
        if m is None:
            return None
        found = check_keys(self.report, m, TLS_KEYS, ("cert_file", "key_file"), "tls")
        paths: dict[str, Path] = {}
        for key in TLS_KEYS:
            v = found.get(key)
            if v is None:
                continue
            p = self._readable_file(v, key, "tls: ")
            if p is not None:
                paths[key] = p
        if "cert_file" not in paths or "key_file" not in paths:
            return None
        return TlsSettings(paths["cert_file"], paths["key_file"], paths.get("ca_file"))


_QUOTED_STRING_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def _is_null(node: YNode) -> bool:
    return isinstance(node, YScalar) and node.value is None and node.plain


def _items(node: YNode | None) -> tuple[YNode, ...]:
    return node.items if isinstance(node, YSeq) else ()


# ---------------------------------------------------------------------------------------------
# Syntax of the individual values. Each parser returns its value, or an error message (str).

# RFC 1123 host names (RFC 3261 25.1 hostname: toplabel must not start with a digit, but
# numeric labels are common in practice; an all-digit name is read as an IPv4 address).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_IPV4ISH = re.compile(r"[0-9.]+")


def _check_host(host: str) -> str | None:
    """Error message for a host without brackets or port, or None when valid."""
    if not host:
        return "the host is missing"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"invalid IPv6 address {host!r}"
        return None
    if _IPV4ISH.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"invalid IPv4 address {host!r}"
        return None
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return f"invalid host name {host!r}"
    return None


def _parse_port(text: str) -> int | str:
    if not text.isdigit() or not text.isascii():
        return f"invalid port {text!r}"
    port = int(text)
    if not 1 <= port <= 65535:
        return f"port {port} is out of range 1..65535"
    return port


def _split_hostport(text: str) -> tuple[str, int | None] | str:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` -> (host without brackets, port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return "missing ']' after the IPv6 address"
        host, rest = text[1:end], text[end + 1:]
        if ":" not in host:
            return f"only an IPv6 address goes in brackets, not {host!r}"
        if rest and not rest.startswith(":"):
            return f"unexpected {rest!r} after the IPv6 address"
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            return "an IPv6 address must be written in brackets, e.g. [::1]:5060"
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
    error = _check_host(host)
    if error:
        return error
    if port_text is None:
        return host, None
    port = _parse_port(port_text)
    if isinstance(port, str):
        return port
    return host, port


def parse_listen(text: str) -> Listen | str:
    """``TRANSPORT:HOST:PORT`` (``udp:[::1]:5060``); the port defaults to 5060 (tls 5061)."""
    transport, sep, rest = text.strip().partition(":")
    transport = transport.lower()
    if not sep or transport not in TRANSPORTS:
        return (f"expected TRANSPORT:HOST:PORT with TRANSPORT one of {', '.join(TRANSPORTS)}, "
                "e.g. udp:127.0.0.1:5060")
    parsed = _split_hostport(rest)
    if isinstance(parsed, str):
        return parsed
    host, port = parsed
    return Listen(transport, host, port if port is not None else DEFAULT_PORT[transport])


_URI_PARAMS = ("transport", "lr")


def parse_upstream(text: str) -> Upstream | str:
    """A SIP or SIPS URI naming a host (RFC 3261 19.1.1): ``sip:HOST[:PORT][;transport=T]``."""
    uri = text.strip()
    scheme, sep, rest = uri.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips"):
        return "expected a sip: or sips: URI, e.g. sip:127.0.0.1:5080"
    if "?" in rest:
        return "URI headers (?...) are not allowed in an upstream"
    hostport, *params = rest.split(";")
    if "@" in hostport:
        return "an upstream names a host, not a user: remove the 'user@' part"
    parsed = _split_hostport(hostport)
    if isinstance(parsed, str):
        return parsed
    host, port = parsed
    transport: str | None = None
    for param in params:
        name, _, value = param.partition("=")
        name = name.strip().lower()
        if name == "transport":
            value = value.strip().lower()
            if value not in TRANSPORTS:
                return f"transport must be one of {', '.join(TRANSPORTS)}, got {value!r}"
            transport = value
        elif name == "lr":
            continue
        else:
            return f"unknown URI parameter {name!r}; allowed: {', '.join(_URI_PARAMS)}"
    if scheme == "sips":
        if transport == "udp":
            return "sips: requires TLS; transport=udp is not possible (RFC 3261 26.2.2)"
        transport = "tls"
    transport = transport or "udp"
    return Upstream(uri, host, port if port is not None else DEFAULT_PORT[transport], transport)


def _plain_host(text: str) -> str:
    """A host without port, lowercased, or ``"!message"``."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    error = _check_host(host)
    if error:
        if ":" in text and not text.startswith("["):
            try:
                ipaddress.IPv6Address(text)
            except ValueError:
                return "!write the host without a port"
        return f"!{error}"
    if ":" in host:
        return str(ipaddress.IPv6Address(host))
    return host.lower().rstrip(".")


def _host_or_network(text: str) -> str:
    """A host name, an IP address or a CIDR network (normalised), or ``"!message"``."""
    if "/" in text:
        network = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
        try:
            return str(network(text, strict=True))
        except ValueError as exc:
            try:
                loose = network(text, strict=False)
            except ValueError:
                return f"!invalid CIDR network ({exc})"
            return f"!host bits set in the network (did you mean {str(loose)!r}?)"
    if text.startswith("[") and not text.endswith("]"):
        return "!write the address without a port (ports are ignored)"
    host = text[1:-1] if text.startswith("[") else text
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            if host.count(":") == 1:
                return "!write the host without a port (ports are ignored)"
            return f"!invalid IPv6 address {host!r}"
    error = _check_host(host)
    if error:
        return f"!{error}"
    return host.lower().rstrip(".")
