"""The command line: check / explain / run, in-process with capsys (as a real process:
tests/system/test_cli_processes.py)."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import Config
from proxy.diagnostics import Diagnostic
from proxy.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICIES = sorted((REPO / "policies").glob("*.yaml"))
DIAG_LINE = re.compile(r"^[^:\n]+:\d+:\d+: .+$")

BROKEN_POLICY = """
rules:
  - name: moved
    match: {status: "3xx"}
    action: redirect
    max_attempts: 2
  - name: failing
    match: {status: 700}
    action: failover
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


def _version(path: Path) -> str:
    return load_policy(path)[0].version


# ---------------------------------------------------------------------------------------------
# check


@pytest.mark.parametrize("policy", SHIPPED_POLICIES, ids=[p.name for p in SHIPPED_POLICIES])
def test_check_every_shipped_policy(
    in_repo: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = f"policies/{policy.name}"
    assert main(["check", "--policy", rel]) == 0
    out, err = capsys.readouterr()
    n = len(load_policy(policy)[0].rules)
    assert out == f"OK: {rel} (version {_version(policy)}, {n} rules)\n"
    assert err == ""


def test_check_shipped_config(in_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", "proxy.yaml"]) == 0
    out, err = capsys.readouterr()
    version = _version(REPO / "policies" / "default.yaml")
    assert out == f"OK: proxy.yaml (policy policies/default.yaml version {version}, 6 rules)\n"
    assert err == ""


def test_check_defaults_to_proxy_yaml_in_the_working_directory(
    in_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check"]) == 0
    assert capsys.readouterr().out.startswith("OK: proxy.yaml (policy policies/default.yaml ")


def test_check_without_proxy_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "proxy.yaml:1:1: cannot read: No such file or directory\n"


def test_check_broken_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "broken.yaml", BROKEN_POLICY)
    assert main(["check", "--policy", "broken.yaml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        ("broken.yaml:5:5: rule 'moved': 'max_attempts' applies only to action retry_flows, "
        "not redirect"),
        "broken.yaml:7:21: rule 'failing': status 700 is out of range 100..699",
    ]
    assert all(DIAG_LINE.match(line) for line in err.splitlines())


def test_check_broken_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "proxy.yaml", """
        listen: [udp:127.0.0.1:5060, "udp:::1:5060"]
        upstreams: [sip:127.0.0.1:5080]
        state: sqlite:
        """)
    assert main(["check", "--config", "proxy.yaml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        ("proxy.yaml:1:30: listen 'udp:::1:5060': an IPv6 address must be written in brackets, "
        "e.g. [::1]:5060"),
        "proxy.yaml:3:8: state 'sqlite:' needs a file path: sqlite:PATH",
    ]


def test_check_config_reports_the_policy_file_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "conf/policies/broken.yaml", BROKEN_POLICY)
    _write(tmp_path, "conf/proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:127.0.0.1:5080]
        policy: policies/broken.yaml
        """)
    assert main(["check", "--config", "conf/proxy.yaml"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        ("conf/policies/broken.yaml:5:5: rule 'moved': 'max_attempts' applies only to action "
        "retry_flows, not redirect"),
        "conf/policies/broken.yaml:7:21: rule 'failing': status 700 is out of range 100..699",
    ]


def test_check_yaml_syntax_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "p.yaml", "rules:\n  - name: a\n   action: stop\n")
    assert main(["check", "--policy", "p.yaml"]) == 1
    assert capsys.readouterr().err == (
        "p.yaml:3:4: YAML syntax error: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection at 2:3)\n"
    )


def test_check_prints_warnings_and_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "p.yaml", """
        rules:
          - name: all
            match: {status: "100-699"}
            action: forward
          - name: late
            match: {status: 503}
            action: failover
        """)
    assert main(["check", "--policy", "p.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: p.yaml (version {_version(tmp_path / 'p.yaml')}, 2 rules)\n"
    assert err == (
        "p.yaml:5:5: warning: rule 'late' can never match: earlier rule 'all' already matches "
        "every status and method it matches\n"
    )


def test_check_config_without_policy_uses_the_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "proxy.yaml", "listen: [udp:127.0.0.1:5060]\nregistrar: local\n")
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert out == "OK: proxy.yaml (policy builtin version builtin, 6 rules)\n"
    assert err == (
        "proxy.yaml:1:1: warning: no upstreams: only registered users and requests with a "
        "Route header can be reached\n"
        # issue 18: the local registrar without auth serves anyone on the private ranges
        "proxy.yaml:2:12: warning: registrar: local without auth: anyone on registrar_networks "
        "(by default 127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7) can "
        "register any user and remove its bindings; set auth (every REGISTER then authenticates) "
        "or list only your phones' networks (e.g. registrar_networks: [192.168.10.0/24])\n"
    )


REDIS_CONFIG = """
    listen: [udp:127.0.0.1:5060]
    upstreams: [sip:127.0.0.1:5080]
    state: redis://127.0.0.1:6379/0
    """
REDIS_PLAN = (
    "state redis://127.0.0.1:6379/0 (node {node}): not connected by check; run connects at "
    "start and, while the store is unreachable, relays calls on what it holds in memory and "
    "retries in the background\n"
)


def test_check_accepts_a_redis_state_and_says_what_run_will_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` connects to nothing: it says what `run` will do with the store."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "proxy.yaml", REDIS_CONFIG.rstrip(" ") + "    node: edge-1\n")
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert out == ("OK: proxy.yaml (policy builtin version builtin, 6 rules)\n"
                   + REDIS_PLAN.format(node="edge-1"))
    assert err == ""


def test_run_starts_with_a_redis_state_as_check_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    fake = types.ModuleType("proxy.runtime.server")
    started: list[str] = []

    def start(config: object, *_: object) -> int:
        started.append(getattr(config, "state", ""))
        return 0

    fake.run_server = start  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.runtime.server", fake)
    _write(tmp_path, "proxy.yaml", REDIS_CONFIG)
    assert main(["run"]) == 0
    assert started == ["redis://127.0.0.1:6379/0"]


def test_check_copied_config_names_the_policy_path_it_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """proxy.yaml copied without its policies/ folder: say where the policy was looked for."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "proxy.yaml").write_text((REPO / "proxy.yaml").read_text())
    assert main(["check", "--config", "etc/proxy.yaml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    line = next(n for n, text in enumerate((REPO / "proxy.yaml").read_text().splitlines(), 1)
                if text.startswith("policy:"))
    assert err == (
        f"etc/proxy.yaml:{line}:9: cannot read policy file {tmp_path}/etc/policies/default.yaml: "
        f"No such file or directory (relative paths are relative to {tmp_path}/etc, the folder "
        "of the configuration file)\n"
    )


MISSPELT_METHOD_POLICY = """
    rules:
      - name: invite-timeout
        match: {status: 408, method: INVTE}
        action: failover
      - name: custom
        match: {status: 503, method: [FOO]}
        action: failover
    """
MISSPELT_METHOD_WARNINGS = [
    ("p.yaml:3:34: warning: rule 'invite-timeout': method 'INVTE' is not a standard SIP "
     "method; did you mean INVITE?"),
    ("p.yaml:6:35: warning: rule 'custom': method 'FOO' is not a standard SIP method (allowed "
     "as an extension method: check the spelling)"),
]


def test_check_warns_about_a_misspelt_method_and_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "p.yaml", MISSPELT_METHOD_POLICY)
    _write(tmp_path, "proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:127.0.0.1:5080]
        policy: p.yaml
        """)
    version = _version(tmp_path / "p.yaml")
    assert main(["check", "--policy", "p.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: p.yaml (version {version}, 2 rules)\n"
    assert err.splitlines() == MISSPELT_METHOD_WARNINGS
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: proxy.yaml (policy p.yaml version {version}, 2 rules)\n"
    assert err.splitlines() == MISSPELT_METHOD_WARNINGS


def test_check_reports_the_users_file_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "conf/users.yaml", """
        alice: {password: wonderland}
        bob: {ha1: 1234}
        """)
    _write(tmp_path, "conf/proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:127.0.0.1:5080]
        auth: {realm: example.com, users_file: users.yaml}
        """)
    assert main(["check", "--config", "conf/proxy.yaml"]) == 1
    assert capsys.readouterr().err == (
        "conf/users.yaml:2:12: user 'bob': ha1 must be 32 hex digits (MD5), got '1234'\n"
    )


def test_check_config_and_policy_together_is_a_usage_error(
    in_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", "proxy.yaml", "--policy", "policies/default.yaml"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# explain --policy


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("604", "global-failure: stop"),
        ("600", "global-failure: stop"),
        ("301", "moved-permanently: redirect (permanent, max_redirects=3)"),
        ("302", "moved-temporarily: redirect (max_redirects=3)"),
        ("430", "flow-failed: retry_flows (max_attempts=3)"),
        ("408", "unavailable: failover"),
        ("503", "unavailable: failover"),
        ("486", "everything-else: forward"),
        ("180", "everything-else: forward"),
    ],
)
def test_explain_default_policy(
    in_repo: Path, status: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "--policy", "policies/default.yaml", status]) == 0
    out, err = capsys.readouterr()
    assert out == expected + "\n"
    assert err == ""


def test_explain_no_matching_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _write(tmp_path, "p.yaml", """
        rules:
          - name: decline
            match: {status: 603}
            action: stop
        """)
    assert main(["explain", "--policy", str(policy), "404"]) == 0
    assert capsys.readouterr().out == "(no rule): forward\n"


def test_explain_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(_write(tmp_path, "p.yaml", """
        rules:
          - name: invite-timeout
            match: {status: 408, method: INVITE}
            action: failover
          - name: other-timeout
            match: {status: 408}
            action: forward
        """))
    assert main(["explain", "--policy", policy, "408"]) == 0
    assert main(["explain", "--policy", policy, "408", "--method", "INVITE"]) == 0
    assert main(["explain", "--policy", policy, "--method", "BYE", "408"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "invite-timeout: failover",
        "invite-timeout: failover",
        "other-timeout: forward",
    ]


def test_explain_method_on_shipped_policy(
    in_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "--policy", "policies/default.yaml", "503", "--method", "BYE"]) == 0
    assert capsys.readouterr().out == "unavailable: failover\n"


@pytest.mark.parametrize("status", ["700", "99", "0", "abc", "5xx", "-1", "503.0", "٥٠٣"])
def test_explain_bad_status_is_a_usage_error(
    in_repo: Path, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "--policy", "policies/default.yaml", status]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"invalid status {status!r}: expected an integer 100..699" in err
    assert err.startswith("usage: sip-policy-proxy explain")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("bye", "method 'bye' must be uppercase (SIP methods are case-sensitive, RFC 3261 7.1)"),
        ("IN VITE", "invalid method 'IN VITE': expected a token like INVITE"),
    ],
)
def test_explain_bad_method_is_a_usage_error(
    in_repo: Path, method: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "--policy", "policies/default.yaml", "503", "--method", method]) == 2
    assert message in capsys.readouterr().err


def test_explain_broken_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "broken.yaml", BROKEN_POLICY)
    assert main(["explain", "--policy", "broken.yaml", "503"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 2
    assert all(DIAG_LINE.match(line) and line.startswith("broken.yaml:")
               for line in err.splitlines())


# ---------------------------------------------------------------------------------------------
# explain --config: the decision chain


@pytest.mark.parametrize(
    ("status", "method", "expected"),
    [
        ("503", "INVITE",
         "unavailable: failover -> next upstream sip:127.0.0.1:5081; none left: forward"),
        ("408", "BYE",
         "unavailable: failover -> next upstream sip:127.0.0.1:5081; none left: forward"),
        ("604", "INVITE",
         ("global-failure: stop -> CANCEL the pending branches, no new branch; the 604 goes to "
         "the caller (RFC 3261 16.7 steps 5-6)")),
        ("301", "INVITE",
         ("moved-permanently: redirect (permanent, max_redirects=3) -> follow the Contact if the "
         "301 comes from 127.0.0.1 and the Contact points to 127.0.0.1, at most 3 redirects; "
         "remembered for at most 86400 s; otherwise: forward")),
        ("302", "INVITE",
         ("moved-temporarily: redirect (max_redirects=3) -> follow the Contact if the 302 comes "
         "from 127.0.0.1 and the Contact points to 127.0.0.1, at most 3 redirects; otherwise: "
         "forward")),
        ("430", "INVITE",
         ("flow-failed: retry_flows (max_attempts=3) -> remove the failed binding, try the "
         "instance's other flows (at most 3); none left: forward")),
        ("486", "INVITE",
         ("everything-else: forward -> best response once every branch has ended "
         "(RFC 3261 16.7 step 6)")),
        ("200", "INVITE",
         "everything-else: forward -> forwarded to the caller at once (RFC 3261 16.7 step 5)"),
        ("180", "INVITE",
         ("everything-else: forward -> provisional: forwarded to the caller at once "
         "(RFC 3261 16.7 step 5)")),
        ("100", "INVITE",
         "everything-else: forward -> provisional: not forwarded (RFC 3261 16.7 step 5)"),
    ],
)
def test_explain_config_chain(
    in_repo: Path, status: str, method: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "--config", "proxy.yaml", status, "--method", method]) == 0
    out, err = capsys.readouterr()
    assert out == expected + "\n"
    assert err == ""


def test_explain_config_chain_with_three_upstreams_and_redirect_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "p.yaml", """
        rules:
          - name: server-failure
            match: {status: "5xx"}
            action: failover
          - name: moved
            match: {status: "3xx"}
            action: redirect
            permanent: true
            max_redirects: 1
        """)
    config = _write(tmp_path, "proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:10.0.0.1, sip:10.0.0.2, "sips:pbx3.example.com"]
        policy: p.yaml
        domains: [example.com]
        redirects: {trusted_sources: [10.0.0.0/24], max_ttl: 600}
        """)
    assert main(["explain", "--config", str(config), "502"]) == 0
    assert main(["explain", "--config", str(config), "305"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        ("server-failure: failover -> next upstream sip:10.0.0.2, then sips:pbx3.example.com; "
        "none left: forward"),
        ("moved: redirect (permanent, max_redirects=1) -> follow the Contact if the 305 comes "
        "from 10.0.0.0/24 and the Contact points to 10.0.0.1, 10.0.0.2, pbx3.example.com, "
        "example.com, at most 1 redirect; remembered for at most 600 s; otherwise: forward"),
    ]


def test_explain_config_chain_single_upstream_builtin_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, "proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:10.0.0.1]
        """)
    assert main(["explain", "--config", str(config), "503"]) == 0
    assert capsys.readouterr().out == "unavailable: failover -> no other upstream; forward\n"


def test_explain_defaults_to_proxy_yaml(in_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "604"]) == 0
    assert capsys.readouterr().out.startswith("global-failure: stop -> CANCEL")


# ---------------------------------------------------------------------------------------------
# run, usage


def test_run_with_a_broken_config_exits_1_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    fake = types.ModuleType("proxy.runtime.server")

    def refuse(*_: object) -> int:
        raise AssertionError("the server must not start with an invalid configuration")

    fake.run_server = refuse  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.runtime.server", fake)
    _write(tmp_path, "proxy.yaml", "listen: [udp:127.0.0.1:5060]\nupstreams: [sip:x]\nfoo: 1\n")
    assert main(["run"]) == 1
    assert capsys.readouterr().err == (
        "proxy.yaml:3:1: unknown key 'foo'; allowed keys: listen, upstreams, policy, state, "
        "node, record_route, registrar, domains, redirects, trusted_relays, auth, registrar_networks, "
        "registrar_max_contacts, registrar_max_bindings, path, advertise, force_rport, limits, "
        "timers, log_level, "
        "drain_timeout, watch_policy, secret, tls, http, log_format, upstream_probe, dns, ws_allowed_origins, "
        "hep, trace_calls, http_token, workers, workers_spread\n"
    )


def test_run_hands_config_policy_and_warnings_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Config, Policy, list[Diagnostic]]] = []

    def run_server(config: Config, policy: Policy, warnings: list[Diagnostic]) -> int:
        calls.append((config, policy, warnings))
        return 7

    fake = types.ModuleType("proxy.runtime.server")
    fake.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.runtime.server", fake)
    _write(tmp_path, "p.yaml", "rules: []\n")
    config_path = _write(tmp_path, "proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:127.0.0.1:5080]
        policy: p.yaml
        log_level: warning
        """)
    assert main(["run", "--config", str(config_path), "--log-level", "debug"]) == 7
    (config, policy, warnings), = calls
    assert config.log_level == "debug"  # the flag overrides the file
    assert config.path == config_path
    assert policy.path == str(tmp_path / "p.yaml")
    assert [w.message for w in warnings] == [
        "the policy has no rules: every final response is forwarded"
    ]
    assert main(["run", "--config", str(config_path)]) == 7
    assert calls[1][0].log_level == "warning"  # no flag: the file's value


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: sip-policy-proxy" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("run", "check", "explain"))


def test_run_with_workers_starts_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``workers`` above 1 (the file, or ``run --workers`` over it) hands the configuration
    to the supervisor (README "Workers"); 1 runs the server itself."""
    lone: list[Config] = []
    supervised: list[Config] = []

    def run_server(config: Config, *_: object) -> int:
        lone.append(config)
        return 0

    def supervise(config: Config, *_: object) -> int:
        supervised.append(config)
        return 5

    server = types.ModuleType("proxy.runtime.server")
    server.run_server = run_server  # type: ignore[attr-defined]
    workers = types.ModuleType("proxy.runtime.workers")
    workers.supervise = supervise  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.runtime.server", server)
    monkeypatch.setitem(sys.modules, "proxy.runtime.workers", workers)
    path = _write(tmp_path, "proxy.yaml", "listen: [udp:127.0.0.1:5060]\nworkers: 2\n")
    assert main(["run", "--config", str(path)]) == 5
    assert main(["run", "--config", str(path), "--workers", "3"]) == 5
    assert [c.workers for c in supervised] == [2, 3]
    assert main(["run", "--config", str(path), "--workers", "1"]) == 0
    assert [c.workers for c in lone] == [1]
    assert main(["run", "--config", str(path), "--workers", "0"]) == 2
    assert "--workers: expected 1..256 or auto, got '0'" in capsys.readouterr().err
