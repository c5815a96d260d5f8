"""Loading ``proxy.yaml``: the positioned tree turned into a :class:`Config`, every error
reported with FILE:LINE:COLUMN (see :mod:`proxy.config`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

from proxy.config import examples, observability, tracing, trust, workers
from proxy.config.access import access_limits, verify_client, ws_origins
from proxy.config.model import (
    AUTH_KEYS,
    CONFIG_KEYS,
    DEFAULT_ALGORITHMS,
    DEFAULT_MAX_TTL,
    DEFAULT_REGISTRAR_NETWORKS,
    LIMIT_KEYS,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_CONTACTS,
    REDIRECT_KEYS,
    REDIS_SCHEMES,
    REGISTRAR_MODES,
    STATE_FORMS,
    TIMER_KEYS,
    TLS_KEYS,
    WORKER_SPREADS,
    AuthSettings,
    Config,
    Limits,
    Listen,
    Redirects,
    Timers,
    TlsSettings,
    Upstream,
    unique,
)
from proxy.config.syntax import (
    host_or_network,
    parse_listen,
    parse_upstream,
    plain_host,
    split_hostport,
)
from proxy.config.upstreams import parse_upstreams

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
    """:func:`load_config`, then the policy it names (or :data:`BUILTIN_POLICY`), whose
    upstream group names must be the configuration's.

    Raises :class:`ConfigError` with the errors of both files (the policy's with its own
    FILE:LINE:COLUMN); returns the warnings of both otherwise.
    """
    config, report = _load(path)
    errors = report.errors
    warnings = report.warnings
    policy: Policy | None = BUILTIN_POLICY
    policy_path = config.policy_path if config is not None else report.policy_path
    groups = config.group_names if config is not None else None
    if policy_path is not None:
        try:
            policy, policy_warnings = load_policy(policy_path, groups)
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

    def example(self, what: str) -> str | None:
        return examples.example(what)

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
        report.expected(tree, "the configuration", "a mapping of settings")
        return None, report
    config = _Builder(tree, config_path, report).build()
    return (None if report.failed else config), report


# The README writes `state: memory:`, which plain YAML reads as a nested mapping ("memory" with
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
        given = {k: v for k, v in found.items() if not is_null(v)}
        if "listen" not in given:
            r.error(found.get("listen", self.tree), "listen: at least one TRANSPORT:HOST:PORT "
                    "entry is required")
        values: dict[str, Any] = {}
        for key, (field_name, parse) in self._parsers().items():
            if key in given:
                value = parse(given[key])
                if value is not None:
                    values[field_name] = value
        self._cross_checks(found, given, values)
        if r.failed:
            return None
        return Config(path=self.path, **values)

    def _parsers(self) -> dict[str, tuple[str, Callable[[YNode], Any]]]:
        """YAML key -> (Config field, parser); a parser returns None to keep the default
        (after reporting an error, or for a value that is the default)."""
        r = self.report

        def choice(what: str, choices: tuple[str, ...]) -> Callable[[YNode], Any]:
            return lambda node: self._choice(node, what, choices)

        def boolean(what: str) -> Callable[[YNode], Any]:
            return lambda node: get_bool(r, node, what)

        return {
            "listen": ("listen", self._listen),
            "upstreams": ("upstream_groups", lambda node: parse_upstreams(r, node)),
            "policy": ("policy_path", self._policy),
            "state": ("state", self._state),
            "node": ("node", self._node),
            "record_route": ("record_route", boolean("record_route")),
            "registrar": ("registrar", choice("registrar", REGISTRAR_MODES)),
            "domains": ("domains", self._domains),
            "redirects": ("redirects", self._redirects),
            "trusted_relays": ("trusted_relays",
                               lambda node: self._networks(node, "trusted_relays")),
            "auth": ("auth", self._auth),
            "registrar_networks": ("registrar_networks",
                                   lambda node: trust.ip_networks(r, node)),
            "registrar_max_contacts": ("registrar_max_contacts", lambda node: get_int(
                r, node, "registrar_max_contacts", 1, MAX_CONTACTS)),
            "registrar_max_bindings": ("registrar_max_bindings",
                                       lambda node: trust.max_bindings(r, node)),
            "path": ("path_mode", lambda node: trust.path_mode(r, node)),
            "advertise": ("advertise", self._advertise),
            "force_rport": ("force_rport", boolean("force_rport")),
            "limits": ("limits", self._limits),
            "timers": ("timers", self._timers),
            "log_level": ("log_level", choice("log_level", LOG_LEVELS)),
            "drain_timeout": ("drain_timeout",
                              lambda node: get_number(r, node, "drain_timeout", 0, 3600)),
            "watch_policy": ("watch_policy", boolean("watch_policy")),
            "secret": ("secret", self._secret),
            "tls": ("tls", self._tls),
            "http": ("http", lambda node: observability.http_address(r, node)),
            "log_format": ("log_format", choice("log_format", LOG_FORMATS)),
            "upstream_probe": ("upstream_probe", lambda node: observability.probe(r, node)),
            "dns": ("dns", lambda node: observability.dns(r, node)),
            "ws_allowed_origins": ("ws_allowed_origins", lambda node: ws_origins(r, node)),
            "hep": ("hep", lambda node: tracing.hep(r, node)),
            "trace_calls": ("trace_calls", lambda node: tracing.trace_calls(r, node)),
            "http_token": ("http_token", lambda node: tracing.http_token(r, node)),
            "workers": ("workers", lambda node: workers.count(r, node)),
            "workers_spread": ("workers_spread", choice("workers_spread", WORKER_SPREADS)),
        }

    def _cross_checks(
        self, found: dict[str, YNode], given: dict[str, YNode], values: dict[str, Any]
    ) -> None:
        """Findings that involve several keys."""
        r = self.report
        trust.registrar_defaults(r, self.tree, found, given, values)
        tracing.cross_check(r, found, values)
        workers.cross_check(r, found, values)
        declared = given.get("upstreams")
        parsed = any(g.upstreams for g in values.get("upstream_groups", ()))
        if not parsed and not (isinstance(declared, YSeq | YMap) and declared.items):
            at = found.get("upstreams", self.tree)
            if values.get("registrar", "upstream") == "upstream":
                r.warning(at, "no upstreams: with registrar: upstream, REGISTER requests and "
                          "requests for unknown users have nowhere to go")
            else:
                r.warning(at, "no upstreams: only registered users and requests with a Route "
                          "header can be reached")
        if "tls" not in found:
            for entry, node in zip(values.get("listen", ()), items(given.get("listen")),
                                   strict=False):
                if entry.transport in ("tls", "wss"):
                    r.error(node, f"listen {entry}: a {entry.transport} listen needs a 'tls' "
                            "section with cert_file and key_file")
        if values.get("ws_allowed_origins") and not any(
                li.transport in ("ws", "wss") for li in values.get("listen", ())):
            r.warning(found["ws_allowed_origins"], "ws_allowed_origins without a ws: or wss: "
                      "listen has nothing to check")

    # -- scalars -----------------------------------------------------------------------------

    def _choice(self, node: YNode, what: str, choices: tuple[str, ...]) -> str | None:
        if isinstance(node, YScalar) and isinstance(node.value, str) and node.value in choices:
            return node.value
        shown = repr(node.value) if isinstance(node, YScalar) and isinstance(node.value, str) \
            else describe(node)
        self.report.error(node, f"{what} must be one of {', '.join(choices)}; got {shown}"
                          f"{self.report.example_tail(what)}")
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
            why = redis_state_error(text)
            if why is not None:
                self.report.error(node, f"state {redacted_state(text)}: {why}")
                return "memory:"
            return text
        self.report.error(node, f"state must be {STATE_FORMS}; got {text!r}")
        return "memory:"

    def _node(self, node: YNode) -> str | None:
        """``node: NAME``: this proxy among several sharing one state (README "Running several
        proxies")."""
        text = get_str(self.report, node, "node")
        if text is None:
            return None
        text = text.strip()
        if not text or len(text) > 200 or not text.isprintable() or " " in text:
            self.report.error(node, f"node {text!r}: a name without spaces, 1 to 200 "
                              "printable characters (e.g. edge-1 or sip1.example.com:5060)")
            return None
        return text

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
            host = plain_host(text.strip())
            if host.startswith("!"):
                self.report.error(item, f"domain {text!r}: {host[1:]}")
                continue
            result.append(host)
        return unique(result)

    def _redirects(self, node: YNode) -> Redirects:
        m = get_map(self.report, node, "redirects")
        if m is None:
            return Redirects()
        found = check_keys(self.report, m, REDIRECT_KEYS, (), "redirects")
        given = {k: v for k, v in found.items() if not is_null(v)}
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
            entry = host_or_network(text.strip())
            if entry.startswith("!"):
                self.report.error(item, f"{what}: {text!r}: {entry[1:]}")
                continue
            result.append(entry)
        return unique(result)

    def _auth(self, node: YNode) -> AuthSettings | None:
        """``auth``: the realm and the users file (RFC 3261 22.4)."""
        m = get_map(self.report, node, "auth")
        if m is None:
            return None
        found = check_keys(self.report, m, AUTH_KEYS, (), "auth")
        given = {k: v for k, v in found.items() if not is_null(v)}
        for key in AUTH_KEYS[:2]:  # realm, users_file (algorithms has a default)
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
        algos = trust.algorithms(self.report, given["algorithms"]) \
            if "algorithms" in given else DEFAULT_ALGORITHMS
        if realm is None or users is None or algos is None:
            return None
        trust.users_algorithms(self.report, given.get("algorithms", given["users_file"]),
                               users, algos)
        return AuthSettings(realm, path, users, algos)

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
        parsed = split_hostport(text)
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
        return Limits(size, headers, **access_limits(self.report, found))

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
        for key in TLS_KEYS[:3]:  # the files (verify_client is a flag)
            v = found.get(key)
            if v is None:
                continue
            p = self._readable_file(v, key, "tls: ")
            if p is not None:
                paths[key] = p
        if "cert_file" not in paths or "key_file" not in paths:
            return None
        return TlsSettings(paths["cert_file"], paths["key_file"], paths.get("ca_file"),
                           verify_client(self.report, found))


_QUOTED_STRING_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def is_null(node: YNode) -> bool:
    return isinstance(node, YScalar) and node.value is None and node.plain


def items(node: YNode | None) -> tuple[YNode, ...]:
    return node.items if isinstance(node, YSeq) else ()


# ---------------------------------------------------------------------------------------------


# -- state: redis (checked here, connected to by `run` only) ---------------------------------


def redacted_state(text: str) -> str:
    """A Redis state value with its password replaced by ``***``."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    cred, _, hosts = rest.rpartition("@")
    user = cred.split(":", 1)[0] if ":" in cred else ""
    return f"{scheme}://{user}:***@{hosts}"


def redis_state_error(text: str) -> str | None:
    """Why a ``redis://``, ``rediss://`` or ``redis+cluster://`` value cannot be used; None
    when it can. Connects to nothing (`check` and `run` read it alike)."""
    from urllib.parse import urlsplit

    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or not rest:
        return (f"write {scheme}://HOST:PORT/DB" if scheme != "redis+cluster"
                else "write redis+cluster://HOST:PORT[,HOST:PORT...]")
    if scheme == "redis+cluster":
        hosts = rest.rpartition("@")[2].split("/", 1)[0]
        for item in hosts.split(","):
            try:
                u = urlsplit(f"//{item.strip()}")
                port = u.port
            except ValueError:
                return f"seed {item.strip()!r} is not HOST:PORT"
            if not u.hostname:
                return f"seed {item.strip()!r} is not HOST:PORT"
            if port is None:
                return f"seed {item.strip()!r} needs a port (Redis Cluster has no default)"
        return None
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        return f"{exc}; write {scheme}://[:PASSWORD@]HOST:PORT/DB"
    if not u.hostname:
        return f"no host; write {scheme}://[:PASSWORD@]HOST:PORT/DB"
    db = u.path.strip("/")
    if db and not db.isdigit():
        return f"database {db!r} is not a number; write {scheme}://HOST:PORT/DB"
    return None
