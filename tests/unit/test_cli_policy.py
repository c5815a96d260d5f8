"""`check` running a policy's tests and checking its group names, and `explain` of a call
(route, then the deciding rule): output and exit codes, in-process (every shipped example's tests as a real process:
tests/system/test_cli_processes.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.policy import load_policy

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
listen: [udp:127.0.0.1:5060]
upstreams:
  pbx: [sip:10.0.0.20:5060, sip:10.0.0.21:5060]
  voicemail: [sip:10.0.0.30:5060]
  carrier: ["sip:carrier.example.net;transport=tcp"]
policy: p.yaml
"""

POLICY = """
routes:
  - name: emergency
    match: {ruri_user: "(911|112)"}
    group: carrier
  - name: office
    match: {ruri_user: "1[0-9]{3}", source: [10.0.0.0/8]}
    group: pbx
    no_answer: {after: 20, to: voicemail, diversion: no-answer}
rules:
  - name: busy-to-voicemail
    match: {status: [486, 600], method: INVITE, upstream: pbx}
    action: failover
    to: voicemail
    diversion: user-busy
  - name: pbx-overloaded
    match: {status: 503}
    action: failover
    hold_down: 60
  - name: hide-internal-errors
    match: {status: "5xx", upstream: carrier}
    action: reply
    status: 480
  - name: night
    match: {status: 480, time: {days: [sat, sun], between: "00:00-24:00", tz: Europe/Berlin}}
    action: stop
tests:
  - name: a busy office phone goes to voicemail
    request: {method: INVITE, ruri: "sip:1001@example.com", source: 10.1.2.3,
              time: "2026-03-02T10:00:00+01:00"}
    route: office
    answers: [486]
    expect: {rule: busy-to-voicemail, action: failover, to: voicemail}
  - name: emergency calls go to the carrier
    request: {ruri: "sip:112@example.com", time: "2026-03-02T10:00:00+01:00"}
    group: carrier
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "proxy.yaml", CONFIG)
    _write(tmp_path, "p.yaml", POLICY)
    return tmp_path


def test_check_runs_the_tests(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", "proxy.yaml"]) == 0
    out, err = capsys.readouterr()
    version = load_policy(setup / "p.yaml")[0].version
    assert out == (f"OK: proxy.yaml (policy p.yaml version {version}, 4 rules, 2 routes)\n"
                   "tests: 2 passed\n")
    assert err == ""


def test_check_fails_on_a_failing_test(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = POLICY.replace("expect: {rule: busy-to-voicemail, action: failover, to: voicemail}",
                          "expect: {rule: busy-to-voicemail, action: stop, status: 486}")
    head, _, tail = text.rpartition("    group: carrier\n")  # the last test's expectation
    _write(setup, "p.yaml", head + "    group: pbx\n" + tail)
    assert main(["check", "--config", "proxy.yaml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        ("p.yaml:27: test 'a busy office phone goes to voicemail': expected action stop, status "
         "486, got action failover, status none yet (next: sip:10.0.0.30:5060 (group "
         "voicemail))"),
        "p.yaml:33: test 'emergency calls go to the carrier': expected group pbx, got group carrier",
        "tests: 2 failed, 0 passed",
    ]


def test_check_refuses_a_policy_naming_a_group_the_configuration_lacks(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(setup, "proxy.yaml", CONFIG.replace("  carrier:", "  carriers:"))
    assert main(["check", "--config", "proxy.yaml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        ("p.yaml:4:12: route 'emergency': group: unknown upstream group 'carrier' (did you mean "
         "'carriers'?); the configuration's groups: pbx, voicemail, carriers"),
        ("p.yaml:20:38: rule 'hide-internal-errors': match: upstream: unknown upstream group "
         "'carrier' (did you mean 'carriers'?); the configuration's groups: pbx, voicemail, "
         "carriers"),
        ("p.yaml:35:12: test 'emergency calls go to the carrier': group: unknown upstream group "
         "'carrier' (did you mean 'carriers'?); the configuration's groups: pbx, voicemail, "
         "carriers"),
    ]


def test_a_list_of_upstreams_is_the_group_default(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(setup, "proxy.yaml", """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:10.0.0.20:5060]
        policy: p.yaml
        """)
    assert main(["check", "--config", "proxy.yaml"]) == 1
    err = capsys.readouterr().err
    assert "unknown upstream group 'pbx'; the configuration's groups: default" in err


def test_check_of_a_policy_alone_does_not_run_its_tests(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--policy", "p.yaml"]) == 0
    out, err = capsys.readouterr()
    version = load_policy(setup / "p.yaml")[0].version
    assert out == (f"OK: p.yaml (version {version}, 4 rules, 2 routes)\n"
                   "tests: 2 not run: they need the upstream groups of a configuration "
                   "(check --config PATH)\n")
    assert err == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ruri", "sip:1001@example.com", "--source", "10.1.2.3", "486"], [
            ("route: office (ruri_user 1[0-9]{3} source 10.0.0.0/8) -> group pbx: "
             "sip:10.0.0.20:5060, sip:10.0.0.21:5060; no 2xx within 20 s: CANCEL, then group "
             "voicemail with Diversion reason=no-answer"),
            ("busy-to-voicemail: failover (to=voicemail, diversion=user-busy) -> group "
             "voicemail: sip:10.0.0.30:5060, with Diversion: <sip:1001@example.com>;"
             "reason=user-busy;counter=1 (RFC 5806); none left: forward"),
        ]),
        (["--ruri", "sip:1001@example.com", "--source", "192.0.2.1", "503"], [
            "route: (none) -> group pbx (the first group): sip:10.0.0.20:5060, sip:10.0.0.21:5060",
            ("pbx-overloaded: failover (hold_down=60) -> hold sip:10.0.0.20:5060 down for the "
             "response's Retry-After (at most 3600 s) or 60 s, in every group; next upstream "
             "sip:10.0.0.21:5060; none left: forward"),
        ]),
        (["--ruri", "sip:112@example.com", "502"], [
            ("route: emergency (ruri_user (911|112)) -> group carrier: "
             "sip:carrier.example.net;transport=tcp"),
            ("hide-internal-errors: reply (status=480) -> CANCEL the pending branches, no new "
             "branch; the caller gets 480 instead of the 502 (RFC 3261 16.7 steps 5-6)"),
        ]),
        (["--ruri", "sip:5550@example.com", "--time", "2026-03-07T23:30:00+01:00", "480"], [
            "route: (none) -> group pbx (the first group): sip:10.0.0.20:5060, sip:10.0.0.21:5060",
            ("night: stop -> CANCEL the pending branches, no new branch; the 480 goes to the "
             "caller (RFC 3261 16.7 steps 5-6)"),
        ]),
        (["--ruri", "sip:5550@example.com", "--time", "2026-03-06T23:30:00+01:00", "480"], [
            "route: (none) -> group pbx (the first group): sip:10.0.0.20:5060, sip:10.0.0.21:5060",
            ("(no rule): forward -> best response once every branch has ended (RFC 3261 16.7 "
             "step 6)"),
        ]),
        (["--ruri", "sip:1001@example.com", "--from", "sip:7@x", "--source", "10.9.9.9",
          "--method", "MESSAGE", "486"], [
            ("route: office (ruri_user 1[0-9]{3} source 10.0.0.0/8) -> group pbx: "
             "sip:10.0.0.20:5060, sip:10.0.0.21:5060; no 2xx within 20 s: CANCEL, then group "
             "voicemail with Diversion reason=no-answer"),
            ("(no rule): forward -> best response once every branch has ended (RFC 3261 16.7 "
             "step 6)"),
        ]),
    ],
)
def test_explain_a_call(setup: Path, args: list[str], expected: list[str],
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--config", "proxy.yaml", *args]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == expected
    assert err == ""


def test_explain_without_a_call_keeps_its_one_line(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "--config", "proxy.yaml", "486"]) == 0
    assert capsys.readouterr().out == (
        "busy-to-voicemail: failover (to=voicemail, diversion=user-busy) -> group voicemail: "
        "sip:10.0.0.30:5060, with Diversion: <the Request-URI>;reason=user-busy;counter=1 "
        "(RFC 5806); none left: forward\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "p.yaml", "--ruri", "sip:1@x", "486"],
         "sip-policy-proxy explain: --ruri, --from, --source and --time need --config (the "
         "upstream groups), not --policy\n"),
        (["--config", "proxy.yaml", "--source", "pbx", "486"],
         "argument --source: invalid address 'pbx': expected an IP address like 10.1.2.3\n"),
        (["--config", "proxy.yaml", "--time", "2026-03-07T10:00:00", "486"],
         "argument --time: invalid time '2026-03-07T10:00:00': expected ISO 8601 with an "
         "offset, like 2026-03-02T09:30:00+01:00 ('2026-03-07T10:00:00' has no offset: write it "
         "with one (Z for UTC, or +01:00))\n"),
    ],
)
def test_explain_usage_errors(setup: Path, args: list[str], message: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith(message)


def test_status_shows_each_upstreams_groups_and_a_hold_down() -> None:
    import re

    from proxy.status_cli import status_table

    table = status_table({"probing": True, "upstreams": [
        {"upstream": "sip:10.0.0.20:5060", "groups": ["pbx"], "up": False, "probed_up": True,
         "held_for": 42.0},
        {"upstream": "sip:10.0.0.30:5060", "groups": ["voicemail", "pbx"], "up": True,
         "probed_up": True, "held_for": 0}]})
    assert re.search(r"upstream sip:10\.0\.0\.20:5060 \(pbx\) +DOWN \(held down 42 s more "
                     r"by the policy\)", table), table
    assert re.search(r"upstream sip:10\.0\.0\.30:5060 \(voicemail, pbx\) +up\n", table), table
