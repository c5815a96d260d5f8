"""proxy.yaml validation: values, defaults, and every error with FILE:LINE:COLUMN."""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap
from pathlib import Path

import pytest

from proxy.auth_users import compute_ha1
from proxy.config import (
    DEFAULT_REGISTRAR_NETWORKS,
    AuthSettings,
    Config,
    Credentials,
    Limits,
    Listen,
    Redirects,
    Timers,
    Upstream,
    load_config,
    load_config_and_policy,
    parse_listen,
    parse_upstream,
)
from proxy.config.examples import EXAMPLES
from proxy.diagnostics import ConfigError
from proxy.policy import BUILTIN_POLICY

REPO = Path(__file__).resolve().parents[2]
#: `check`'s warning for registrar: local without auth and the default registrar_networks
REGISTRAR_OPEN_WARNING = (
    "registrar: local without auth: anyone on registrar_networks (by default 127.0.0.0/8, ::1, "
    "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7) can register any user and remove its "
    "bindings; set auth (every REGISTER then authenticates) or list only your phones' networks "
    "(e.g. registrar_networks: [192.168.10.0/24])")


def eg(what: str) -> str:
    """The example a type error of ``what`` ends with (test_config_errors.py checks them)."""
    return f"; e.g. {EXAMPLES[what]}"

BASE = """
listen:
  - udp:127.0.0.1:5060
upstreams:
  - sip:127.0.0.1:5080
"""


def _write(tmp_path: Path, text: str, name: str = "proxy.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _config(tmp_path: Path, text: str) -> Config:
    config, warnings = load_config(_write(tmp_path, text))
    assert warnings == []
    return config


def _errors(tmp_path: Path, text: str) -> list[str]:
    """The diagnostics, with the tmp folder replaced by "T"."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all(d.is_error for d in info.value.diagnostics)
    return [str(d).replace(str(tmp_path), "T") for d in info.value.diagnostics]


# ---------------------------------------------------------------------------------------------
# The shipped example and the defaults


def test_shipped_proxy_yaml() -> None:
    config, warnings = load_config(REPO / "proxy.yaml")
    assert warnings == []
    assert config.path == REPO / "proxy.yaml"
    assert config.listen == (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    assert config.upstreams == (
        Upstream("sip:127.0.0.1:5080", "127.0.0.1", 5080, "udp"),
        Upstream("sip:127.0.0.1:5081", "127.0.0.1", 5081, "udp"),
    )
    assert config.policy_path == REPO / "policies" / "default.yaml"
    assert config.state == f"sqlite:{REPO / 'data' / 'state.db'}"
    assert config.record_route is True
    assert config.registrar == "upstream"


def test_shipped_proxy_yaml_is_commented() -> None:
    lines = (REPO / "proxy.yaml").read_text().splitlines()
    comments = [ln for ln in lines if ln.lstrip().startswith("#")]
    assert len(comments) >= 20
    for key in ("listen:", "upstreams:", "policy:", "state:", "record_route:", "registrar:"):
        i = next(n for n, ln in enumerate(lines) if ln.startswith(key))
        assert lines[i - 1].startswith("#"), key  # each setting is explained above it


def test_shipped_proxy_yaml_documents_the_access_control_keys(tmp_path: Path) -> None:
    """The new keys are shown commented out, with their defaults: uncommented, they load and
    change nothing."""
    lines = (REPO / "proxy.yaml").read_text().splitlines()
    keys = ("trusted_relays:", "registrar_networks:", "registrar_max_contacts:")
    shown = [ln[2:] for ln in lines if ln.startswith(tuple(f"# {k}" for k in keys))]
    assert len(shown) == len(keys)
    config = _config(tmp_path, BASE + "\n".join(shown) + "\n")
    default = _config(tmp_path, BASE)
    assert config == dataclasses.replace(default, path=config.path)
    assert config.registrar_networks == DEFAULT_REGISTRAR_NETWORKS
    start = lines.index("# auth:")
    auth = [ln[2:] for ln in lines[start:start + 3]]
    _write(tmp_path, "alice: {password: secret}\n", "users.yaml")
    with_auth = _config(tmp_path, BASE + "\n".join(auth) + "\n")
    assert with_auth.auth is not None
    assert (with_auth.auth.realm, with_auth.auth.users_file) == (
        "example.com", tmp_path / "users.yaml"
    )


def test_docker_proxy_yaml_loads_and_is_self_contained(tmp_path: Path) -> None:
    config, _ = load_config(REPO / "docker" / "proxy.yaml")  # no ConfigError
    assert config.policy_path == REPO / "docker" / "policy.yaml"
    text = (REPO / "docker" / "proxy.yaml").read_text()
    assert "README" not in text
    example = next(ln[1:] for ln in text.splitlines() if ln.startswith("#registrar_networks:"))
    assert _config(tmp_path, BASE + example + "\n").registrar_networks == (
        "192.168.0.0/16", "198.51.100.0/24"
    )


def test_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE)
    assert config.path == tmp_path / "proxy.yaml"
    assert config.policy_path is None
    assert config.state == "memory:"
    assert config.state_kind == "memory"
    assert config.record_route is True
    assert config.registrar == "upstream"
    assert config.domains == ()
    assert config.redirects == Redirects((), (), 86400)
    assert config.advertise is None
    assert config.force_rport is False
    assert config.limits == Limits(65535, 256)
    assert config.timers == Timers(0.5, 4.0, 5.0, 180.0)
    assert config.log_level == "info"
    assert config.drain_timeout == 30.0
    assert config.watch_policy is True
    assert config.secret is None
    assert config.tls is None
    assert config.trusted_relays == ()
    assert config.auth is None
    assert config.registrar_networks == DEFAULT_REGISTRAR_NETWORKS == (
        "127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"
    )
    assert config.registrar_max_contacts == 10


def test_every_setting(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    (tmp_path / "users.yaml").write_text("alice: {password: wonderland}\n")
    config = _config(tmp_path, """
        listen: [udp:0.0.0.0:5060, "tls:[::]:5061"]
        upstreams: [sip:pbx1.example.com, sip:10.0.0.2:5070;transport=tcp]
        state: sqlite:/var/lib/sip/state.db
        record_route: false
        registrar: local
        domains: [Example.COM, voip.example.org.]
        redirects:
          trusted_sources: [10.0.0.0/8, pbx1.example.com, "2001:db8::/32"]
          allow_targets: [example.com, 192.0.2.7]
          max_ttl: 3600
        trusted_relays: [192.0.2.0/24, "edge.example.com", "2001:DB8::7"]
        auth: {realm: example.com, users_file: users.yaml}
        registrar_networks: [10.1.0.0/16, 192.0.2.7, "2001:db8::/48"]
        registrar_max_contacts: 3
        advertise: sip.example.com:5060
        force_rport: true
        limits: {max_message_size: 8192, max_headers: 64}
        timers: {t1_ms: 100, t2_ms: 800, t4_ms: 1000, timer_c_ms: 200000}
        log_level: debug
        drain_timeout: 1.5
        watch_policy: false
        secret: 0123456789abcdef0123456789abcdef
        tls: {cert_file: cert.pem, key_file: key.pem}
        """)
    assert config.listen == (Listen("udp", "0.0.0.0", 5060), Listen("tls", "::", 5061))
    assert config.upstreams[0] == Upstream("sip:pbx1.example.com", "pbx1.example.com", 5060, "udp")
    assert config.upstreams[1].transport == "tcp"
    assert config.state == "sqlite:/var/lib/sip/state.db"
    assert config.state_kind == "sqlite"
    assert (config.record_route, config.registrar) == (False, "local")
    assert config.domains == ("example.com", "voip.example.org")
    assert config.redirects == Redirects(
        ("10.0.0.0/8", "pbx1.example.com", "2001:db8::/32"), ("example.com", "192.0.2.7"), 3600
    )
    assert config.trusted_sources == config.redirects.trusted_sources
    assert config.trusted_relays == ("192.0.2.0/24", "edge.example.com", "2001:db8::7")
    assert config.auth == AuthSettings("example.com", tmp_path / "users.yaml", (
        Credentials("alice", compute_ha1("alice", "example.com", "wonderland"),
                    compute_ha1("alice", "example.com", "wonderland", "SHA-256")),
    ))
    assert config.registrar_networks == ("10.1.0.0/16", "192.0.2.7", "2001:db8::/48")
    assert config.registrar_max_contacts == 3
    assert config.advertise == "sip.example.com:5060"
    assert config.force_rport is True
    assert config.limits == Limits(8192, 64)
    assert config.timers == Timers(0.1, 0.8, 1.0, 200.0)
    assert (config.log_level, config.drain_timeout, config.watch_policy) == ("debug", 1.5, False)
    assert config.secret == "0123456789abcdef0123456789abcdef"
    assert config.tls is not None
    assert (config.tls.cert_file, config.tls.key_file) == (tmp_path / "cert.pem",
                                                         tmp_path / "key.pem")
    assert config.tls.ca_file is None


def test_redirect_defaults_follow_the_contract(tmp_path: Path) -> None:
    config = _config(tmp_path, """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:10.0.0.1:5080, sip:PBX.example.com, sip:10.0.0.1:5090]
        domains: [example.com]
        redirects: {trusted_sources: [], allow_targets: []}
        """)
    assert config.redirects == Redirects((), (), 86400)
    assert config.trusted_sources == ("10.0.0.1", "pbx.example.com")
    assert config.allow_targets == ("10.0.0.1", "pbx.example.com", "example.com")


def test_null_optional_values_mean_the_default(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE + "policy:\ndomains:\nredirects:\nsecret:\ntimers:\n")
    assert (config.policy_path, config.domains, config.secret) == (None, (), None)
    assert config.redirects == Redirects()
    assert config.timers == Timers()


# ---------------------------------------------------------------------------------------------
# listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:5060", Listen("udp", "127.0.0.1", 5060)),
        ("tcp:127.0.0.1:5070", Listen("tcp", "127.0.0.1", 5070)),
        ("udp:[::1]:5060", Listen("udp", "::1", 5060)),
        ("tcp:[2001:db8::10]:65535", Listen("tcp", "2001:db8::10", 65535)),
        ("udp:[::]:1", Listen("udp", "::", 1)),
        ("UDP:10.1.2.3:5060", Listen("udp", "10.1.2.3", 5060)),
        ("udp:localhost:5060", Listen("udp", "localhost", 5060)),
        ("udp:127.0.0.1", Listen("udp", "127.0.0.1", 5060)),
        ("tls:127.0.0.1", Listen("tls", "127.0.0.1", 5061)),
        ("udp:[::1]", Listen("udp", "::1", 5060)),
    ],
)
def test_listen_forms(text: str, expected: Listen) -> None:
    assert parse_listen(text) == expected


def test_listen_str_brackets_ipv6() -> None:
    assert str(Listen("udp", "::1", 5060)) == "udp:[::1]:5060"
    assert str(Listen("tcp", "10.0.0.1", 5070)) == "tcp:10.0.0.1:5070"


LISTEN_ERRORS = [
    ("sctp:127.0.0.1:5060", ("expected TRANSPORT:HOST:PORT with TRANSPORT one of udp, tcp, tls, ws, wss, "
     "e.g. udp:127.0.0.1:5060")),
    ("127.0.0.1:5060", ("expected TRANSPORT:HOST:PORT with TRANSPORT one of udp, tcp, tls, ws, wss, "
     "e.g. udp:127.0.0.1:5060")),
    ("udp:::1:5060", "an IPv6 address must be written in brackets, e.g. [::1]:5060"),
    ("udp:[::1:5060", "missing ']' after the IPv6 address"),
    ("udp:[127.0.0.1]:5060", "only an IPv6 address goes in brackets, not '127.0.0.1'"),
    ("udp:[::1]5060", "unexpected '5060' after the IPv6 address"),
    ("udp:[fe80::zz]:5060", "invalid IPv6 address 'fe80::zz'"),
    ("udp:127.0.0.1:0", "port 0 is out of range 1..65535"),
    ("udp:127.0.0.1:65536", "port 65536 is out of range 1..65535"),
    ("udp:127.0.0.1:sip", "invalid port 'sip'"),
    ("udp:127.0.0.1:", "invalid port ''"),
    ("udp:999.0.0.1:5060", "invalid IPv4 address '999.0.0.1'"),
    ("udp::5060", "the host is missing"),
    ("udp:bad_host:5060", "invalid host name 'bad_host'"),
]


@pytest.mark.parametrize(("text", "message"), LISTEN_ERRORS)
def test_listen_errors(tmp_path: Path, text: str, message: str) -> None:
    assert _errors(tmp_path, f"""
        listen:
          - udp:127.0.0.1:5060
          - "{text}"
        upstreams: [sip:127.0.0.1:5080]
        """) == [f"T/proxy.yaml:3:5: listen {text!r}: {message}"]


def test_listen_duplicate(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen:
          - udp:127.0.0.1:5060
          - tcp:127.0.0.1:5060
          - udp:127.0.0.1
        upstreams: [sip:127.0.0.1:5080]
        """) == ["T/proxy.yaml:4:5: listen 'udp:127.0.0.1': duplicate entry (first at 2:5)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: udp:127.0.0.1:5060\n", ("T/proxy.yaml:1:9: listen must be a list, got the "
         f"string 'udp:127.0.0.1:5060'{eg('listen')}")),
        ("listen: []\n", ("T/proxy.yaml:1:9: listen: at least one TRANSPORT:HOST:PORT entry is "
         "required")),
        ("listen:\n", ("T/proxy.yaml:1:8: listen: at least one TRANSPORT:HOST:PORT entry is "
         "required")),
        ("listen: [5060]\n", ("T/proxy.yaml:1:10: a listen entry must be a string, got the "
         f"integer 5060{eg('listen')}")),
        ("record_route: true\n", ("T/proxy.yaml:1:1: listen: at least one TRANSPORT:HOST:PORT "
         "entry is required")),
    ],
)
def test_listen_shape_errors(tmp_path: Path, text: str, message: str) -> None:
    assert _errors(tmp_path, "upstreams: [sip:127.0.0.1:5080]\n" + text) == [
        message.replace("proxy.yaml:1:", "proxy.yaml:2:").replace(
            "proxy.yaml:2:1: listen: at least", "proxy.yaml:1:1: listen: at least"
        )
    ]


def test_tls_listen_needs_certificates(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [udp:127.0.0.1:5060, tls:127.0.0.1:5061]
        upstreams: [sip:127.0.0.1:5080]
        """) == [
        ("T/proxy.yaml:1:30: listen tls:127.0.0.1:5061: a tls listen needs a 'tls' section with "
        "cert_file and key_file")
    ]


def test_tls_section_errors(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [tls:127.0.0.1:5061]
        upstreams: [sip:127.0.0.1:5080]
        tls:
          cert_file: missing.pem
          ca: ca.pem
        """) == [
        "T/proxy.yaml:4:3: tls: missing required key 'key_file'",
        ("T/proxy.yaml:4:14: tls: cannot read cert_file T/missing.pem: No such file or "
         "directory (relative paths are relative to T, the folder of the configuration file)"),
        ("T/proxy.yaml:5:3: tls: unknown key 'ca' (did you mean 'ca_file'?); allowed keys: "
        "cert_file, key_file, ca_file, verify_client"),
    ]


# ---------------------------------------------------------------------------------------------
# upstreams


@pytest.mark.parametrize(
    ("text", "host", "port", "transport"),
    [
        ("sip:127.0.0.1:5080", "127.0.0.1", 5080, "udp"),
        ("sip:127.0.0.1", "127.0.0.1", 5060, "udp"),
        ("sip:127.0.0.1:5080;transport=tcp", "127.0.0.1", 5080, "tcp"),
        ("sip:127.0.0.1;transport=TCP", "127.0.0.1", 5060, "tcp"),
        ("sip:127.0.0.1;transport=tls", "127.0.0.1", 5061, "tls"),
        ("sip:pbx.example.com;lr", "pbx.example.com", 5060, "udp"),
        ("SIP:PBX.example.com:5090;LR;transport=udp", "PBX.example.com", 5090, "udp"),
        ("sips:pbx.example.com", "pbx.example.com", 5061, "tls"),
        ("sips:pbx.example.com:5071;transport=tcp", "pbx.example.com", 5071, "tls"),
        ("sip:[::1]:5080", "::1", 5080, "udp"),
        ("sip:[2001:db8::1];transport=tcp", "2001:db8::1", 5060, "tcp"),
    ],
)
def test_upstream_forms(text: str, host: str, port: int, transport: str) -> None:
    assert parse_upstream(text) == Upstream(text, host, port, transport)


UPSTREAM_ERRORS = [
    ("http://127.0.0.1:5080", "expected a sip: or sips: URI, e.g. sip:127.0.0.1:5080"),
    ("127.0.0.1:5080", "expected a sip: or sips: URI, e.g. sip:127.0.0.1:5080"),
    ("tel:+15551234", "expected a sip: or sips: URI, e.g. sip:127.0.0.1:5080"),
    ("sip:", "the host is missing"),
    ("sip:pbx@127.0.0.1", "an upstream names a host, not a user: remove the 'user@' part"),
    ("sip:127.0.0.1?subject=x", "URI headers (?...) are not allowed in an upstream"),
    ("sip:127.0.0.1:99999", "port 99999 is out of range 1..65535"),
    ("sip:::1", "an IPv6 address must be written in brackets, e.g. [::1]:5060"),
    ("sip:127.0.0.1;transport=sctp", "transport must be one of udp, tcp, tls, got 'sctp'"),
    ("sip:127.0.0.1;maddr=10.0.0.1", "unknown URI parameter 'maddr'; allowed: transport, lr"),
    ("sips:127.0.0.1;transport=udp",
     "sips: requires TLS; transport=udp is not possible (RFC 3261 26.2.2)"),
    ("sip:pbx..example.com", "invalid host name 'pbx..example.com'"),
]


@pytest.mark.parametrize(("text", "message"), UPSTREAM_ERRORS)
def test_upstream_errors(tmp_path: Path, text: str, message: str) -> None:
    assert _errors(tmp_path, f"""
        listen: [udp:127.0.0.1:5060]
        upstreams:
          - sip:127.0.0.1:5080
          - "{text}"
        """) == [f"T/proxy.yaml:4:5: upstream {text!r}: {message}"]


def test_upstream_duplicate(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [udp:127.0.0.1:5060]
        upstreams:
          - sip:127.0.0.1:5080
          - sip:127.0.0.1:5080;lr
        """) == [
        "T/proxy.yaml:4:5: upstream 'sip:127.0.0.1:5080;lr': duplicate upstream (first at 3:5)"
    ]


def test_upstream_not_a_string(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [udp:127.0.0.1:5060]
        upstreams: [{host: 127.0.0.1}]
        """) == [f"T/proxy.yaml:2:13: an upstream must be a string, got a mapping{eg('upstreams')}"]


def test_no_upstreams_with_registrar_upstream_is_a_warning(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, """
        listen: [udp:127.0.0.1:5060]
        upstreams: []
        """))
    assert (config.upstreams, config.registrar) == ((), "upstream")
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/proxy.yaml:2:12: warning: no upstreams: with registrar: upstream, REGISTER requests "
        "and requests for unknown users have nowhere to go")
    ]


def test_no_upstreams_with_local_registrar_is_a_warning(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, """
        listen: [udp:127.0.0.1:5060]
        registrar: local
        """))
    assert config.upstreams == ()
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/proxy.yaml:1:1: warning: no upstreams: only registered users and requests with a "
        "Route header can be reached"),
        # issue 18: the local registrar without auth serves anyone on the default networks
        f"T/proxy.yaml:2:12: warning: {REGISTRAR_OPEN_WARNING}",
    ]


# ---------------------------------------------------------------------------------------------
# state


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"memory:"', "memory:"),
        ("memory:", "memory:"),
        ("memory:    # kept in this process only", "memory:"),
        ("memory", "memory:"),
        ("sqlite:state.db", "sqlite:{base}/state.db"),
        ("sqlite:data/state.db", "sqlite:{base}/data/state.db"),
        ("sqlite:../common/state.db", "sqlite:{parent}/common/state.db"),
        ("sqlite:/var/lib/sip/state.db", "sqlite:/var/lib/sip/state.db"),
        ("' sqlite:state.db '", "sqlite:{base}/state.db"),
    ],
)
def test_state_forms(tmp_path: Path, text: str, expected: str) -> None:
    base = tmp_path / "etc"
    config, _ = load_config(_write(base, BASE + f"state: {text}\n"))
    assert config.state == expected.format(base=base, parent=tmp_path)


FORMS = ("memory:, sqlite:PATH, redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or "
         "redis+cluster://HOST:PORT[,HOST:PORT...]")

STATE_ERRORS = [
    ("mysql://db/state", f"state must be {FORMS}; got 'mysql://db/state'"),
    ("sqlite:", "state 'sqlite:' needs a file path: sqlite:PATH"),
    ("sqlite://state.db", ("state 'sqlite://state.db': write sqlite:PATH (e.g. "
     "sqlite:data/state.db or sqlite:/var/lib/proxy/state.db)")),
    # Redis values are checked without connecting; a password never shows.
    ("redis://:secret@localhost/zero", ("state redis://:***@localhost/zero: database 'zero' "
                                        "is not a number; write redis://HOST:PORT/DB")),
    ("redis://localhost:port/0", ("state redis://localhost:port/0: Port could not be cast to "
                                  "integer value as 'port'; write redis://[:PASSWORD@]HOST:PORT/DB")),
    ("redis+cluster://10.0.0.1", ("state redis+cluster://10.0.0.1: seed '10.0.0.1' needs a "
                                  "port (Redis Cluster has no default)")),
    ("redis+cluster://", "state redis+cluster://: write redis+cluster://HOST:PORT[,HOST:PORT...]"),
]


@pytest.mark.parametrize("text", ["redis://127.0.0.1:6379/0", "redis://localhost",
                                  "REDIS://localhost/1", "rediss://cache.example.com:6380/0",
                                  "redis://:secret@localhost:6379/2",
                                  "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"])
def test_redis_states_are_accepted_as_written(tmp_path: Path, text: str) -> None:
    config, _ = load_config(_write(tmp_path, BASE + f'state: "{text}"\n'))
    assert config.state == text
    assert config.state_kind == "redis"


def test_node_names_this_proxy(tmp_path: Path) -> None:
    config, _ = load_config(_write(tmp_path, BASE + "node: edge-1\n"))
    assert config.node == "edge-1"
    assert _errors(tmp_path, BASE + 'node: "a b"\n')[0].startswith("T/proxy.yaml:5:7: node 'a b'")


@pytest.mark.parametrize(("text", "message"), STATE_ERRORS)
def test_state_errors(tmp_path: Path, text: str, message: str) -> None:
    assert _errors(tmp_path, BASE + f'state: "{text}"\n') == [f"T/proxy.yaml:5:8: {message}"]


def test_state_not_a_string(tmp_path: Path) -> None:
    assert _errors(tmp_path, BASE + "state: {sqlite: x}\n") == [
        f"T/proxy.yaml:5:8: state must be a string, got a mapping{eg('state')}"
    ]


# ---------------------------------------------------------------------------------------------
# Paths relative to the configuration file


def test_policy_and_sqlite_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "sip"
    _write(conf_dir, "rules: []\n", "policies/mine.yaml")
    _write(conf_dir, BASE + "policy: policies/mine.yaml\nstate: sqlite:db/state.db\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config, policy, _ = load_config_and_policy("../etc/sip/proxy.yaml")
    assert config.path == conf_dir / "proxy.yaml"
    assert config.policy_path == conf_dir / "policies" / "mine.yaml"
    assert config.state == f"sqlite:{conf_dir / 'db' / 'state.db'}"
    assert policy.path == str(conf_dir / "policies" / "mine.yaml")
    assert policy.rules == ()


def test_absolute_policy_path(tmp_path: Path) -> None:
    policy_file = _write(tmp_path / "p", "rules: []\n", "x.yaml")
    config = load_config(_write(tmp_path / "c", BASE + f"policy: {policy_file}\n"))[0]
    assert config.policy_path == policy_file


def test_missing_policy_file_is_reported_at_the_config_key(tmp_path: Path) -> None:
    """A copied proxy.yaml: the message names the absolute path tried and the folder a
    relative path is relative to."""
    assert _errors(tmp_path, BASE + "policy: policies/nope.yaml\n") == [
        ("T/proxy.yaml:5:9: cannot read policy file T/policies/nope.yaml: No such file or "
         "directory (relative paths are relative to T, the folder of the configuration file)")
    ]


def test_missing_policy_file_of_a_config_in_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "etc", BASE + "policy: policies/default.yaml\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("etc/proxy.yaml")
    assert [str(d) for d in info.value.diagnostics] == [
        (f"etc/proxy.yaml:5:9: cannot read policy file {tmp_path}/etc/policies/default.yaml: "
         f"No such file or directory (relative paths are relative to {tmp_path}/etc, the "
         "folder of the configuration file)")
    ]


def test_missing_absolute_policy_file_has_no_relative_note(tmp_path: Path) -> None:
    assert _errors(tmp_path, BASE + f"policy: {tmp_path}/nope.yaml\n") == [
        "T/proxy.yaml:5:9: cannot read policy file T/nope.yaml: No such file or directory"
    ]


def test_policy_path_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    assert _errors(tmp_path, BASE + "policy: policies\n") == [
        ("T/proxy.yaml:5:9: cannot read policy file T/policies: Is a directory (relative paths "
         "are relative to T, the folder of the configuration file)")
    ]


def test_no_policy_means_the_builtin_policy(tmp_path: Path) -> None:
    config, policy, warnings = load_config_and_policy(_write(tmp_path, BASE))
    assert config.policy_path is None
    assert policy is BUILTIN_POLICY
    assert warnings == []


def test_policy_errors_are_reported_with_the_policy_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "rules:\n  - name: r\n    match: {status: 999}\n    action: stop\n", "p.yaml")
    _write(tmp_path, BASE + "policy: p.yaml\nrecord_route: maybe\n")
    with pytest.raises(ConfigError) as info:
        load_config_and_policy("proxy.yaml")
    assert [str(d) for d in info.value.diagnostics] == [
        f"proxy.yaml:6:15: record_route must be true or false, got 'maybe'{eg('record_route')}",
        "p.yaml:3:21: rule 'r': status 999 is out of range 100..699",
    ]


def test_policy_warnings_are_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "rules: []\n", "p.yaml")
    _write(tmp_path, BASE + "policy: p.yaml\n")
    _, _, warnings = load_config_and_policy("proxy.yaml")
    assert [str(w) for w in warnings] == [
        "p.yaml:1:8: warning: the policy has no rules: every final response is forwarded"
    ]


# ---------------------------------------------------------------------------------------------
# Other keys: unknown keys, types, values

ALLOWED = ("listen, upstreams, policy, state, node, record_route, registrar, domains, redirects, "
           "trusted_relays, auth, registrar_networks, registrar_max_contacts, "
           "registrar_max_bindings, path, advertise, "
           "force_rport, limits, timers, log_level, drain_timeout, watch_policy, secret, tls, "
           "http, log_format, upstream_probe, dns, ws_allowed_origins, "
           "hep, trace_calls, http_token, workers, workers_spread")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("upstream: [sip:10.0.0.1]", ("5:1: unknown key 'upstream' (did you mean 'upstreams'?); "
         f"allowed keys: {ALLOWED}")),
        ("banana: 4", f"5:1: unknown key 'banana'; allowed keys: {ALLOWED}"),
        ("trusted_relay: []", ("5:1: unknown key 'trusted_relay' (did you mean "
         f"'trusted_relays'?); allowed keys: {ALLOWED}")),
        ("registrar_network: []", ("5:1: unknown key 'registrar_network' (did you mean "
         f"'registrar_networks'?); allowed keys: {ALLOWED}")),
        ("max_contacts: 5", ("5:1: unknown key 'max_contacts' (did you mean "
         f"'registrar_max_contacts'?); allowed keys: {ALLOWED}")),
        ("listen: [tcp:127.0.0.1:5070]", "5:1: duplicate key 'listen' (first at 1:1)"),
        ("record_route: yes", f"5:15: record_route must be true or false, got 'yes'{eg('record_route')}"),
        ('record_route: "true"', f"5:15: record_route must be true or false, got 'true'{eg('record_route')}"),
        ("record_route: 1", f"5:15: record_route must be true or false, got '1'{eg('record_route')}"),
        ("force_rport: [true]", f"5:14: force_rport must be true or false, got a list{eg('force_rport')}"),
        ("watch_policy: off", f"5:15: watch_policy must be true or false, got 'off'{eg('watch_policy')}"),
        ("registrar: remote", f"5:12: registrar must be one of local, upstream; got 'remote'{eg('registrar')}"),
        ("registrar: 1", (f"5:12: registrar must be one of local, upstream; got the integer 1"
                          f"{eg('registrar')}")),
        ("policy: 5", f"5:9: policy must be a string, got the integer 5{eg('policy')}"),
        ("policy: ''", f"5:9: policy must not be empty{eg('policy')}"),
        ("domains: example.com", (f"5:10: domains must be a list, got the string 'example.com'"
                                  f"{eg('domains')}")),
        ("domains: [example.com, 5]", f"5:24: a domain must be a string, got the integer 5{eg('domains')}"),
        ("domains: [example.com:5060]", ("5:11: domain 'example.com:5060': write the host "
         "without a port")),
        ("domains: [exa_mple.com]", ("5:11: domain 'exa_mple.com': invalid host name "
         "'exa_mple.com'")),
        ("redirects: [10.0.0.1]", f"5:12: redirects must be a mapping, got a list{eg('redirects')}"),
        ("redirects: {max_ttl: 0}", ("5:22: redirects: max_ttl must be between 1 and "
         "315360000, got 0")),
        ("redirects: {max_ttl: 1h}", ("5:22: redirects: max_ttl must be an integer, got the "
         f"string '1h'{eg('redirects: max_ttl')}")),
        ("redirects: {ttl: 5}", ("5:13: redirects: unknown key 'ttl' (did you mean 'max_ttl'?); allowed keys: "
         "trusted_sources, allow_targets, max_ttl")),
        ("redirects: {trusted_sources: 10.0.0.0/8}", ("5:30: redirects: trusted_sources must "
         f"be a list, got the string '10.0.0.0/8'{eg('redirects: trusted_sources')}")),
        ("redirects: {trusted_sources: [10.0.0.1/8]}", ("5:31: redirects: trusted_sources: "
         "'10.0.0.1/8': host bits set in the network (did you mean '10.0.0.0/8'?)")),
        ("redirects: {trusted_sources: [10.0.0.0/33]}", ("5:31: redirects: trusted_sources: "
         "'10.0.0.0/33': invalid CIDR network ('33' is not a valid netmask)")),
        ("redirects: {trusted_sources: ['10.0.0.1:5060']}", ("5:31: redirects: "
         "trusted_sources: '10.0.0.1:5060': write the host without a port (ports are ignored)")),
        ("redirects: {trusted_sources: ['[::1]:5060']}", ("5:31: redirects: trusted_sources: "
         "'[::1]:5060': write the address without a port (ports are ignored)")),
        ("redirects: {allow_targets: [300.1.1.1]}", ("5:29: redirects: allow_targets: "
         "'300.1.1.1': invalid IPv4 address '300.1.1.1'")),
        ("redirects: {allow_targets: ['*.example.com']}", ("5:29: redirects: allow_targets: "
         "'*.example.com': invalid host name '*.example.com'")),
        ("redirects: {allow_targets: [1]}", ("5:29: an entry of redirects: allow_targets must "
         f"be a string, got the integer 1{eg('redirects: allow_targets')}")),
        ("advertise: 'sip.example.com:70000'", ("5:12: advertise 'sip.example.com:70000': "
         "port 70000 is out of range 1..65535")),
        ("advertise: '::1'", ("5:12: advertise '::1': an IPv6 address must be written in "
         "brackets, e.g. [::1]:5060")),
        ("limits: {max_message_size: 100}", ("5:28: limits: max_message_size must be between "
         "1024 and 16777216, got 100")),
        ("limits: {max_headers: 2}", ("5:23: limits: max_headers must be between 8 and 10000, "
         "got 2")),
        ("limits: {max_body: 5}", ("5:10: limits: unknown key 'max_body'; allowed keys: "
         "max_message_size, max_headers, per_source_rps, tcp_max_connections, "
         "tcp_idle_timeout, tcp_per_source, tcp_message_timeout, tls_handshake_timeout, "
         "tcp_accept_rate, udp_flood_rps, overload_lag_ms, max_transactions")),
        ("limits: 65535", f"5:9: limits must be a mapping, got the integer 65535{eg('limits')}"),
        ("timers: {t1: 500}", ("5:10: timers: unknown key 't1' (did you mean 't1_ms'?); allowed "
         "keys: t1_ms, t2_ms, t4_ms, timer_c_ms")),
        ("timers: {t1_ms: '500'}", ("5:17: timers: t1_ms must be an integer, got the string "
         f"'500'{eg('timers: t1_ms')}")),
        ("timers: {t1_ms: 0}", "5:17: timers: t1_ms must be between 1 and 60000, got 0"),
        ("timers: {t1_ms: 0.5}", (f"5:17: timers: t1_ms must be an integer, got the number 0.5"
                                  f"{eg('timers: t1_ms')}")),
        ("timers: {t1_ms: 1000, t2_ms: 500}", ("5:30: timers: t2_ms must not be smaller than "
         "t1_ms (RFC 3261 17.1.2.2)")),
        ("log_level: verbose", ("5:12: log_level must be one of debug, info, warning, error; "
         f"got 'verbose'{eg('log_level')}")),
        ("log_level: INFO", ("5:12: log_level must be one of debug, info, warning, error; "
         f"got 'INFO'{eg('log_level')}")),
        ("drain_timeout: -1", "5:16: drain_timeout must be between 0 and 3600, got -1"),
        ("drain_timeout: '5'", (f"5:16: drain_timeout must be a number, got the string '5'"
                                f"{eg('drain_timeout')}")),
        ("secret: ''", f"5:9: secret must not be empty{eg('secret')}"),
        ("secret: 12345678901234567890", (f"5:9: secret must be a string, got the integer "
         f"12345678901234567890{eg('secret')}")),
        ("tls: [cert.pem]", f"5:6: tls must be a mapping, got a list{eg('tls')}"),
    ],
)
def test_value_errors(tmp_path: Path, extra: str, message: str) -> None:
    assert _errors(tmp_path, BASE + extra + "\n") == [f"T/proxy.yaml:{message}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip.example.com", "sip.example.com"),
        ("sip.example.com:5080", "sip.example.com:5080"),
        ("203.0.113.5", "203.0.113.5"),
        ("'[2001:db8::5]:5060'", "[2001:db8::5]:5060"),
        ("'[2001:db8::5]'", "[2001:db8::5]"),
    ],
)
def test_advertise_forms(tmp_path: Path, text: str, expected: str) -> None:
    assert _config(tmp_path, BASE + f"advertise: {text}\n").advertise == expected


@pytest.mark.parametrize(
    ("entry", "normalised"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("'2001:DB8::/32'", "2001:db8::/32"),
        ("192.0.2.1", "192.0.2.1"),
        ("'::1'", "::1"),
        ("'[::1]'", "::1"),
        ("PBX.Example.com", "pbx.example.com"),
        ("example.com.", "example.com"),
    ],
)
def test_redirect_entry_forms(tmp_path: Path, entry: str, normalised: str) -> None:
    config = _config(tmp_path, BASE + f"redirects: {{trusted_sources: [{entry}]}}\n")
    assert config.redirects.trusted_sources == (normalised,)


def test_timer_c_below_three_minutes_warns(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, BASE + "timers: {timer_c_ms: 2000}\n"))
    assert config.timers.timer_c == 2.0
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/proxy.yaml:5:22: warning: timers: timer_c_ms is below 3 minutes (RFC 3261 16.6 step "
        "11 asks for more than 3 minutes)")
    ]


def test_short_secret_warns(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, BASE + "secret: abc\n"))
    assert config.secret == "abc"
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/proxy.yaml:5:9: warning: secret is short (3 characters); use at least 32 random "
        "characters")
    ]


def test_every_error_is_reported(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [udp:127.0.0.1:99999]
        upstreams: [http://pbx]
        state: sql
        registrar: both
        colour: blue
        """) == [
        "T/proxy.yaml:1:10: listen 'udp:127.0.0.1:99999': port 99999 is out of range 1..65535",
        ("T/proxy.yaml:2:13: upstream 'http://pbx': expected a sip: or sips: URI, e.g. "
        "sip:127.0.0.1:5080"),
        f"T/proxy.yaml:3:8: state must be {FORMS}; got 'sql'",
        f"T/proxy.yaml:4:12: registrar must be one of local, upstream; got 'both'{eg('registrar')}",
        f"T/proxy.yaml:5:1: unknown key 'colour'; allowed keys: {ALLOWED}",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "T/proxy.yaml:1:1: the file is empty"),
        ("- udp:127.0.0.1:5060\n", ("T/proxy.yaml:1:1: the configuration must be a mapping of "
         f"settings, got a list{eg('the configuration')}")),
        ("listen: [udp:127.0.0.1:5060\n", ("T/proxy.yaml:2:1: YAML syntax error: expected ',' or "
         "']', but got '<stream end>' (while parsing a flow sequence at 1:9)")),
        ("listen: &l [udp:127.0.0.1:5060]\n", ("T/proxy.yaml:1:9: YAML anchors are not supported "
         "(&l): write the value out")),
    ],
)
def test_file_errors(tmp_path: Path, text: str, message: str) -> None:
    assert _errors(tmp_path, text) == [message]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert [str(d) for d in info.value.diagnostics] == [
        f"{tmp_path / 'nope.yaml'}:1:1: cannot read: No such file or directory"
    ]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE)
    with pytest.raises(AttributeError):
        config.record_route = False  # type: ignore[misc]


USER_EXAMPLE = """
listen:            # TRANSPORT:HOST:PORT, transport in udp|tcp|tls
  - udp:127.0.0.1:5060
  - tcp:127.0.0.1:5060
upstreams:         # the PBX(es), SIP URIs, tried in this order (failover)
  - sip:127.0.0.1:5080
  - sip:127.0.0.1:5081
policy: policies/default.yaml      # relative to this file
state: memory:                      # memory: | sqlite:PATH | redis://HOST:PORT/DB
                                    # (a relative sqlite PATH is relative to this file)
record_route: true                  # default true: Record-Route on dialog-creating requests
registrar: local                    # local: the proxy answers REGISTER itself
                                    # upstream (default): REGISTER goes to the PBX with Path,
                                    # and the proxy learns the bindings from the 2xx
domains: [example.com]              # optional: the domains this proxy is responsible for
                                    # (RFC 3261 16.5); default: every domain
redirects:                          # optional: which 3xx the proxy may follow and learn from
  trusted_sources: []               # hosts or CIDR networks (ports ignored) whose 3xx may be
                                    # followed; default: the upstreams' hosts
  allow_targets: []                 # domains, host names or CIDR networks (ports ignored) a
                                    # Contact may point to; default: the upstreams' hosts and
                                    # `domains`
  max_ttl: 86400                    # seconds a learned 301 rewrite lives at most
"""


def test_an_operators_example_loads_as_written(tmp_path: Path) -> None:
    """`state: memory:` is not valid plain YAML; the loader accepts that spelling (README
    "proxy.yaml")."""
    _write(tmp_path, (REPO / "policies" / "default.yaml").read_text(), "policies/default.yaml")
    config, policy, warnings = load_config_and_policy(_write(tmp_path, USER_EXAMPLE))
    # registrar: local without auth (issue 18): anyone on the private ranges may register
    assert [(w.line, w.message) for w in warnings] == [(11, REGISTRAR_OPEN_WARNING)]
    assert config.state == "memory:"
    assert (config.registrar, config.domains) == ("local", ("example.com",))
    assert config.redirects == Redirects((), (), 86400)
    assert config.allow_targets == ("127.0.0.1", "example.com")
    assert policy.explain(604) == "global-failure: stop"


# ---------------------------------------------------------------------------------------------
# sqlite: a path the store can never open is an error; one this user cannot write, a warning


def test_sqlite_path_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert _errors(tmp_path, BASE + "state: sqlite:data\n") == [
        ("T/proxy.yaml:5:8: state 'sqlite:data': T/data is a folder, not a file (relative paths "
         "are relative to T, the folder of the configuration file)")
    ]


def test_sqlite_absolute_path_that_is_a_folder_has_no_relative_note(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert _errors(tmp_path, BASE + f"state: sqlite:{tmp_path}/data\n") == [
        "T/proxy.yaml:5:8: state 'sqlite:T/data': T/data is a folder, not a file"
    ]


def test_sqlite_folder_blocked_by_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    assert _errors(tmp_path, BASE + "state: sqlite:data/db/state.db\n") == [
        ("T/proxy.yaml:5:8: state 'sqlite:data/db/state.db': cannot create "
         "T/data/db/state.db: T/data is not a folder (relative paths are relative to T, the "
         "folder of the configuration file)")
    ]


def test_sqlite_missing_folder_is_fine_the_store_creates_it(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE + "state: sqlite:data/db/state.db\n")
    assert config.state == f"sqlite:{tmp_path}/data/db/state.db"


def test_sqlite_folder_not_writable_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy.config

    (tmp_path / "data").mkdir()
    refused: list[str] = []

    def access(path: object, mode: int) -> bool:
        refused.append(str(path))
        return False

    monkeypatch.setattr(proxy.config.os, "access", access)
    config, warnings = load_config(_write(tmp_path, BASE + "state: sqlite:data/x/state.db\n"))
    assert config.state == f"sqlite:{tmp_path}/data/x/state.db"
    assert refused == [str(tmp_path / "data")]
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/proxy.yaml:5:8: warning: state 'sqlite:data/x/state.db': T/data is not writable by "
         "this user, so the proxy cannot create or update T/data/x/state.db (relative paths are "
         "relative to T, the folder of the configuration file)")
    ]


# ---------------------------------------------------------------------------------------------
# trusted_relays, registrar_networks, registrar_max_contacts


@pytest.mark.parametrize(
    ("entry", "normalised"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("'2001:DB8::/32'", "2001:db8::/32"),
        ("192.0.2.1", "192.0.2.1"),
        ("'[::1]'", "::1"),
        ("SBC.Example.com.", "sbc.example.com"),
    ],
)
def test_trusted_relays_forms(tmp_path: Path, entry: str, normalised: str) -> None:
    config = _config(tmp_path, BASE + f"trusted_relays: [{entry}]\n")
    assert config.trusted_relays == (normalised,)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.0/8", f"trusted_relays must be a list, got the string '10.0.0.0/8'{eg('trusted_relays')}"),
        ("[10.0.0.1/8]", ("trusted_relays: '10.0.0.1/8': host bits set in the network (did you "
         "mean '10.0.0.0/8'?)")),
        ("['10.0.0.1:5060']", ("trusted_relays: '10.0.0.1:5060': write the host without a port "
         "(ports are ignored)")),
        ("[bad_host]", "trusted_relays: 'bad_host': invalid host name 'bad_host'"),
        ("[5]", (f"an entry of trusted_relays must be a string, got the integer 5"
                 f"{eg('trusted_relays')}")),
    ],
)
def test_trusted_relays_errors(tmp_path: Path, value: str, message: str) -> None:
    text = BASE + f"trusted_relays: {value}\n"
    column = 18 if value.startswith("[") else 17  # the entry, or the value itself
    assert _errors(tmp_path, text) == [f"T/proxy.yaml:5:{column}: {message}"]


def test_trusted_relays_null_or_empty_means_nobody(tmp_path: Path) -> None:
    assert _config(tmp_path, BASE + "trusted_relays:\n").trusted_relays == ()
    assert _config(tmp_path, BASE + "trusted_relays: []\n").trusted_relays == ()


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ("[10.0.0.0/8]", ("10.0.0.0/8",)),
        ("[10.1.2.3/8]", ("10.0.0.0/8",)),  # host bits allowed (strict=False)
        ("[192.0.2.7, '::1', 'FC00::/7']", ("192.0.2.7", "::1", "fc00::/7")),
        ("['2001:db8::1/128', 198.51.100.0/24, 198.51.100.0/24]",
         ("2001:db8::1/128", "198.51.100.0/24")),
    ],
)
def test_registrar_networks_forms(
    tmp_path: Path, entries: str, expected: tuple[str, ...]
) -> None:
    assert _config(tmp_path, BASE + f"registrar_networks: {entries}\n").registrar_networks == (
        expected
    )


def test_registrar_networks_null_means_the_default(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE + "registrar_networks:\n")
    assert config.registrar_networks == DEFAULT_REGISTRAR_NETWORKS


def test_registrar_networks_empty_warns(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, BASE + "registrar_networks: []\n"))
    assert config.registrar_networks == ()
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        "T/proxy.yaml:5:21: warning: registrar_networks is empty: no address is allowed to register"
    ]


def test_registrar_networks_errors_at_each_entry(tmp_path: Path) -> None:
    hint = "is not an IP address or a CIDR network (e.g. 10.0.0.0/8, 192.0.2.7 or fc00::/7)"
    assert _errors(tmp_path, BASE + """\
registrar_networks:
  - 10.0.0.0/8
  - pbx.example.com
  - 10.0.0.0/33
  - "[::1]"
  - 300.1.2.3
  - 7
""") == [
        f"T/proxy.yaml:7:5: registrar_networks: 'pbx.example.com' {hint}",
        f"T/proxy.yaml:8:5: registrar_networks: '10.0.0.0/33' {hint}",
        f"T/proxy.yaml:9:5: registrar_networks: '[::1]' {hint}",
        f"T/proxy.yaml:10:5: registrar_networks: '300.1.2.3' {hint}",
        ("T/proxy.yaml:11:5: an entry of registrar_networks must be a string, got the integer 7"
         f"{eg('registrar_networks')}"),
    ]


def test_registrar_networks_not_a_list(tmp_path: Path) -> None:
    assert _errors(tmp_path, BASE + "registrar_networks: 10.0.0.0/8\n") == [
        ("T/proxy.yaml:5:21: registrar_networks must be a list, got the string '10.0.0.0/8'"
         f"{eg('registrar_networks')}")
    ]


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("10", 10), ("1000", 1000)])
def test_registrar_max_contacts(tmp_path: Path, value: str, expected: int) -> None:
    config = _config(tmp_path, BASE + f"registrar_max_contacts: {value}\n")
    assert config.registrar_max_contacts == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "registrar_max_contacts must be between 1 and 1000, got 0"),
        ("1001", "registrar_max_contacts must be between 1 and 1000, got 1001"),
        ("'5'", (f"registrar_max_contacts must be an integer, got the string '5'"
                  f"{eg('registrar_max_contacts')}")),
        ("true", (f"registrar_max_contacts must be an integer, got the boolean true"
                 f"{eg('registrar_max_contacts')}")),
    ],
)
def test_registrar_max_contacts_errors(tmp_path: Path, value: str, message: str) -> None:
    assert _errors(tmp_path, BASE + f"registrar_max_contacts: {value}\n") == [
        f"T/proxy.yaml:5:25: {message}"
    ]


# ---------------------------------------------------------------------------------------------
# auth and its users file


def _auth_config(tmp_path: Path, users: str, auth: str = "") -> Path:
    _write(tmp_path, users, "users.yaml")
    return _write(tmp_path, BASE + (auth or "auth:\n  realm: example.com\n"
                                           "  users_file: users.yaml\n"))


def _auth_errors(tmp_path: Path, users: str, auth: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(_auth_config(tmp_path, users, auth))
    assert all(d.is_error for d in info.value.diagnostics)
    return [str(d).replace(str(tmp_path), "T") for d in info.value.diagnostics]


def test_compute_ha1_matches_rfc_2617() -> None:
    # RFC 2617 3.5: HA1 of Mufasa / testrealm@host.com / "Circle Of Life"
    assert compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life") == (
        "939e7578ed9e3c518a452acee763bce9"
    )
    assert compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "SHA-256") == (
        hashlib.sha256(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    )
    with pytest.raises(ValueError, match="unsupported digest algorithm 'SHA-512'"):
        compute_ha1("a", "b", "c", "SHA-512")


def test_users_file_forms(tmp_path: Path) -> None:
    md5 = "0123456789ABCDEF0123456789abcdef"
    sha = "ab" * 32
    config, warnings = load_config(_auth_config(tmp_path, f"""
        alice:
          password: wonderland
        bob: {{ha1: {md5}}}
        carol: {{ha1_sha256: "{sha}"}}
        dave: {{ha1: {md5}, ha1_sha256: {sha}}}
        1001: {{password: 0012}}
        "0012": {{password: "x y"}}
        """))
    assert warnings == []
    auth = config.auth
    assert auth is not None
    assert (auth.realm, auth.users_file) == ("example.com", tmp_path / "users.yaml")
    assert auth.users == (
        Credentials("alice", compute_ha1("alice", "example.com", "wonderland"),
                    compute_ha1("alice", "example.com", "wonderland", "SHA-256")),
        Credentials("bob", md5.lower(), None),
        Credentials("carol", None, sha),
        Credentials("dave", md5.lower(), sha),
        # a user name and a password are taken as written, not as YAML numbers
        Credentials("1001", compute_ha1("1001", "example.com", "0012"),
                    compute_ha1("1001", "example.com", "0012", "SHA-256")),
        Credentials("0012", compute_ha1("0012", "example.com", "x y"),
                    compute_ha1("0012", "example.com", "x y", "SHA-256")),
    )
    assert auth.credentials("bob") == Credentials("bob", md5.lower(), None)
    assert auth.credentials("Bob") is None
    assert auth.credentials("1001") is not None


def test_users_file_password_hashes_use_the_realm(tmp_path: Path) -> None:
    config, _ = load_config(_auth_config(tmp_path, "alice: {password: pw}\n",
                                         "auth: {realm: other.example, users_file: users.yaml}\n"))
    assert config.auth is not None
    assert config.auth.users[0].ha1_md5 == hashlib.md5(b"alice:other.example:pw").hexdigest()


def test_users_file_absolute_path(tmp_path: Path) -> None:
    users = _write(tmp_path / "secrets", "alice: {password: pw}\n", "users.yaml")
    config, _ = load_config(_write(tmp_path / "etc", BASE + f"auth: {{realm: r, users_file: "
                                                             f"{users}}}\n"))
    assert config.auth is not None and config.auth.users_file == users


USER_HINT = "{password: ...} or {ha1: ..., ha1_sha256: ...}"

USERS_FILE_ERRORS = [
    ("top-list", "- alice\n",
     [f"T/users.yaml:1:1: the users file must be a mapping of user names to {USER_HINT}, got "
      "a list"]),
    ("user-not-mapping", "alice: secret\n",
     [f"T/users.yaml:1:8: user 'alice' must be a mapping: {USER_HINT}, got the string 'secret'"]),
    ("user-null", "alice:\n",
     [f"T/users.yaml:1:7: user 'alice' must be a mapping: {USER_HINT}, got an empty value"]),
    ("neither", "alice: {}\n",
     ["T/users.yaml:1:8: user 'alice': give password, or ha1 and/or ha1_sha256"]),
    ("only-unknown", "alice: {pass: x}\n", [
        "T/users.yaml:1:8: user 'alice': give password, or ha1 and/or ha1_sha256",
        ("T/users.yaml:1:9: user 'alice': unknown key 'pass' (did you mean 'password'?); "
         "allowed keys: password, ha1, ha1_sha256"),
    ]),
    ("unknown-key", "alice:\n  password: x\n  realm: example.com\n", [
        ("T/users.yaml:3:3: user 'alice': unknown key 'realm'; allowed keys: password, ha1, "
         "ha1_sha256"),
    ]),
    ("both", "alice:\n  password: x\n  ha1_sha256: " + "a" * 64 + "\n", [
        ("T/users.yaml:3:3: user 'alice': give either password or ha1/ha1_sha256, not both "
         "(the HA1 values are computed from the password)"),
    ]),
    ("ha1-short", "alice: {ha1: abc}\n",
     ["T/users.yaml:1:14: user 'alice': ha1 must be 32 hex digits (MD5), got 'abc'"]),
    ("ha1-sha256-length", "alice: {ha1: " + "a" * 32 + ", ha1_sha256: " + "a" * 32 + "}\n",
     [f"T/users.yaml:1:60: user 'alice': ha1_sha256 must be 64 hex digits (SHA-256), got "
      f"'{'a' * 32}'"]),
    ("ha1-not-hex", "alice: {ha1: " + "g" * 32 + "}\n",
     [f"T/users.yaml:1:14: user 'alice': ha1 must be 32 hex digits (MD5), got '{'g' * 32}'"]),
    ("ha1-list", "alice: {ha1: []}\n",
     ["T/users.yaml:1:14: user 'alice': ha1 must be 32 hex digits (MD5), got a list"]),
    ("password-empty", "alice: {password: ''}\n",
     ["T/users.yaml:1:19: user 'alice': password must not be empty"]),
    ("password-null", "alice: {password: }\n",
     ["T/users.yaml:1:18: user 'alice': password must be a string, got an empty value"]),
    ("password-mapping", "alice: {password: {a: b}}\n",
     ["T/users.yaml:1:19: user 'alice': password must be a string, got a mapping"]),
    ("name-space", "'al ice': {password: x}\n",
     [("T/users.yaml:1:1: user 'al ice': a user name must not contain white space or control "
       "characters")]),
    ("name-empty", "'': {password: x}\n", ["T/users.yaml:1:1: a user name must not be empty"]),
    ("duplicate", "alice: {password: x}\nalice: {password: y}\n",
     ["T/users.yaml:2:1: duplicate key 'alice' (first at 1:1)"]),
    ("duplicate-as-written", "1001: {password: x}\n'1001': {password: y}\n",
     ["T/users.yaml:2:1: duplicate key '1001' (first at 1:1)"]),
    ("syntax", "alice: {password: x\n",
     [("T/users.yaml:2:1: YAML syntax error: expected ',' or '}', but got '<stream end>' "
       "(while parsing a flow mapping at 1:8)")]),
    ("empty", "", ["T/users.yaml:1:1: the file is empty"]),
]


@pytest.mark.parametrize(("users", "expected"), [c[1:] for c in USERS_FILE_ERRORS],
                         ids=[c[0] for c in USERS_FILE_ERRORS])
def test_users_file_errors_have_the_users_file_positions(
    tmp_path: Path, users: str, expected: list[str]
) -> None:
    assert _auth_errors(tmp_path, users) == expected


def test_users_file_every_error_is_reported_after_those_of_the_config(tmp_path: Path) -> None:
    _write(tmp_path, "alice: {ha1: x}\nbob: 5\ncarol: {password: ok}\n", "users.yaml")
    assert _errors(tmp_path, BASE + """\
record_route: maybe
auth:
  realm: example.com
  users_file: users.yaml
""") == [
        f"T/proxy.yaml:5:15: record_route must be true or false, got 'maybe'{eg('record_route')}",
        "T/users.yaml:1:14: user 'alice': ha1 must be 32 hex digits (MD5), got 'x'",
        f"T/users.yaml:2:6: user 'bob' must be a mapping: {USER_HINT}, got the integer 5",
    ]


def test_users_file_without_users_warns(tmp_path: Path) -> None:
    config, warnings = load_config(_auth_config(tmp_path, "{}\n"))
    assert config.auth is not None and config.auth.users == ()
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/users.yaml:1:1: warning: the users file has no users: every request that needs "
         "authentication will be refused")
    ]


def test_users_file_is_named_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "alice: bad\n", "conf/users.yaml")
    _write(tmp_path, BASE + "auth: {realm: r, users_file: users.yaml}\n", "conf/proxy.yaml")
    with pytest.raises(ConfigError) as info:
        load_config("conf/proxy.yaml")
    assert [str(d) for d in info.value.diagnostics] == [
        f"conf/users.yaml:1:8: user 'alice' must be a mapping: {USER_HINT}, got the string 'bad'"
    ]


def test_missing_users_file_is_reported_at_the_config_key(tmp_path: Path) -> None:
    assert _errors(tmp_path, BASE + "auth:\n  realm: example.com\n  users_file: users.yaml\n") == [
        ("T/proxy.yaml:7:15: auth: cannot read users_file T/users.yaml: No such file or "
         "directory (relative paths are relative to T, the folder of the configuration file)")
    ]


@pytest.mark.parametrize(
    ("auth", "messages"),
    [
        ("auth: {users_file: users.yaml}", ["5:7: auth: missing required key 'realm'"]),
        ("auth: {realm: example.com}", ["5:7: auth: missing required key 'users_file'"]),
        ("auth:\n  realm:\n  users_file: users.yaml",
         ["6:3: auth: missing required key 'realm'"]),
        ("auth: {}", ["5:7: auth: missing required key 'realm'",
                      "5:7: auth: missing required key 'users_file'"]),
        ("auth: example.com", [f"5:7: auth must be a mapping, got the string 'example.com'{eg('auth')}"]),
        ("auth: {realm: example.com, users: users.yaml}", [
            "5:7: auth: missing required key 'users_file'",
            ("5:28: auth: unknown key 'users' (did you mean 'users_file'?); allowed keys: realm, "
             "users_file, algorithms"),
        ]),
        ("auth: {realm: 'a\"b', users_file: users.yaml}",
         ["5:15: auth: realm must not contain '\"', '\\' or control characters (it is sent as a "
          "quoted-string, RFC 3261 25.1)"]),
        ("auth: {realm: 5, users_file: users.yaml}",
         [f"5:15: auth: realm must be a string, got the integer 5{eg('auth: realm')}"]),
        ("auth: {realm: r, users_file: ''}", [f"5:30: auth: users_file must not be empty{eg('auth: users_file')}"]),
    ],
)
def test_auth_section_errors(tmp_path: Path, auth: str, messages: list[str]) -> None:
    assert _auth_errors(tmp_path, "alice: {password: x}\n", auth + "\n") == [
        f"T/proxy.yaml:{m}" for m in messages
    ]


def test_auth_without_realm_still_checks_the_users_file(tmp_path: Path) -> None:
    assert _auth_errors(tmp_path, "alice: 1\n", "auth: {users_file: users.yaml}\n") == [
        "T/proxy.yaml:5:7: auth: missing required key 'realm'",
        f"T/users.yaml:1:8: user 'alice' must be a mapping: {USER_HINT}, got the integer 1",
    ]


def test_null_auth_means_no_authentication(tmp_path: Path) -> None:
    assert _config(tmp_path, BASE + "auth:\n").auth is None
