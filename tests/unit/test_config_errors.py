"""Config errors with examples: a value of the wrong type is reported with the form expected and
an example of it (issue: `http must be a string, got the integer 17110` gave no example).

Every key the loader accepts, at the top level and in each section, gets an example; every
example is valid as written (the loader accepts it)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.config.examples import EXAMPLES
from proxy.config.model import (
    AUTH_KEYS,
    CONFIG_KEYS,
    DNS_KEYS,
    HEP_KEYS,
    LIMIT_KEYS,
    PROBE_KEYS,
    REDIRECT_KEYS,
    TIMER_KEYS,
    TLS_KEYS,
)
from proxy.diagnostics import ConfigError

REPO = Path(__file__).resolve().parents[2]
LISTEN = "listen: [udp:127.0.0.1:5060]\n"
SECTIONS = {"limits": LIMIT_KEYS, "timers": TIMER_KEYS, "tls": TLS_KEYS, "auth": AUTH_KEYS,
            "redirects": REDIRECT_KEYS, "upstream_probe": PROBE_KEYS, "dns": DNS_KEYS,
            "hep": HEP_KEYS}
MAPPINGS = set(SECTIONS) | {"upstreams"}  # a list, or a mapping of groups


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "proxy.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(d).replace(str(tmp_path) + "/", "") for d in info.value.diagnostics]


def test_the_issue_http_as_a_bare_port(tmp_path: Path) -> None:
    assert errors(tmp_path, LISTEN + "http: 17110\n") == [
        'proxy.yaml:2:7: http must be a string, got the integer 17110; e.g. '
        'http: "127.0.0.1:9090"'
    ]


@pytest.mark.parametrize(("line", "message"), [
    ("drain_timeout: 30s",
     "drain_timeout must be a number, got the string '30s'; e.g. drain_timeout: 30"),
    ("limits: {max_message_size: 64k}",
     "limits: max_message_size must be an integer, got the string '64k'; "
     "e.g. limits: {max_message_size: 65535}"),
    ("upstreams: [{host: 10.0.0.20}]",
     "an upstream must be a string, got a mapping; "
     "e.g. upstreams: [sip:10.0.0.20:5060, sip:10.0.0.21:5060;transport=tcp]"),
    ("upstreams: sip:10.0.0.20",
     "upstreams must be a list of SIP URIs, or a mapping of named groups of them (pbx: "
     "[sip:10.0.0.20:5060]), got the string 'sip:10.0.0.20'; "
     "e.g. upstreams: [sip:10.0.0.20:5060, sip:10.0.0.21:5060;transport=tcp]"),
    ("upstream_probe: {interval: off}",
     "upstream_probe: interval must be a number, got the boolean off; "
     "e.g. upstream_probe: {interval: 10}"),
    ("upstream_probe: 0",
     "upstream_probe must be a mapping, got the integer 0; "
     "e.g. upstream_probe: {interval: 10, timeout: 2}"),
    ("node: 7", "node must be a string, got the integer 7; e.g. node: edge-1"),
    ("log_format: yaml",
     "log_format must be one of text, json; got 'yaml'; e.g. log_format: json"),
    ("registrar_networks: [10.0.0.0/8, [192.168.0.0/16]]",
     "an entry of registrar_networks must be a string, got a list; "
     "e.g. registrar_networks: [10.0.0.0/8, 192.168.0.0/16]"),
    ("timers: {timer_c_ms: 3 minutes}",
     "timers: timer_c_ms must be an integer, got the string '3 minutes'; "
     "e.g. timers: {timer_c_ms: 180000}"),
    ("registrar_max_contacts: 010",
     "registrar_max_contacts must be a decimal integer, got '010'; "
     "e.g. registrar_max_contacts: 10"),
    ("force_rport: yes", "force_rport must be true or false, got 'yes'; e.g. force_rport: true"),
    ("state: {redis: x}",
     "state must be a string, got a mapping; e.g. state: sqlite:data/state.db"),
])
def test_type_errors_say_the_form_and_give_an_example(
    tmp_path: Path, line: str, message: str
) -> None:
    found = errors(tmp_path, LISTEN + line + "\n")
    assert [m.split(": ", 1)[1] for m in found] == [message]
    assert found[0].startswith("proxy.yaml:2:")


def test_a_listen_entry_of_the_wrong_type(tmp_path: Path) -> None:
    assert errors(tmp_path, "listen: [5060]\n") == [
        "proxy.yaml:1:10: a listen entry must be a string, got the integer 5060; "
        "e.g. listen: [udp:0.0.0.0:5060, tcp:0.0.0.0:5060]"
    ]


def wrong_value(key: str) -> str:
    """A value of the wrong type for ``key``: an integer where a mapping is expected, a
    mapping anywhere else."""
    return "5" if key in MAPPINGS else "{wrong: 1}"


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_every_key_has_an_example_in_its_type_error(tmp_path: Path, key: str) -> None:
    assert key in EXAMPLES, f"add an example for {key!r} to proxy/config/examples.py"
    text = ("" if key == "listen" else LISTEN) + f"{key}: {wrong_value(key)}\n"
    found = errors(tmp_path, text)
    assert any(f"{key} must be" in m and m.endswith(f"; e.g. {EXAMPLES[key]}")
               for m in found), found


@pytest.mark.parametrize(("section", "key"),
                         [(s, k) for s, keys in SECTIONS.items() for k in keys])
def test_every_section_key_has_an_example_in_its_type_error(
    tmp_path: Path, section: str, key: str
) -> None:
    what = f"{section}: {key}"
    assert what in EXAMPLES, f"add an example for {what!r} to proxy/config/examples.py"
    others = ""
    if section == "tls" and key not in ("cert_file", "key_file"):  # checked once those load
        example_folder(tmp_path)
        others = "cert_file: certs/proxy.pem, key_file: certs/proxy.key, "
    if section == "auth" and key not in ("realm", "users_file"):  # checked once those load
        example_folder(tmp_path)
        others = "realm: example.com, users_file: users.yaml, "
    found = errors(tmp_path, LISTEN + f"{section}: {{{others}{key}: {{wrong: 1}}}}\n")
    assert any(f"{what} must be" in m and m.endswith(f"; e.g. {EXAMPLES[what]}")
               for m in found), found


def example_folder(tmp_path: Path) -> Path:
    """A folder with the files the examples name (policy, users file, certificates)."""
    (tmp_path / "policies").mkdir()
    shutil.copy(REPO / "policies" / "default.yaml", tmp_path / "policies" / "default.yaml")
    (tmp_path / "users.yaml").write_text("alice: {password: secret}\n")
    (tmp_path / "certs").mkdir()
    for name in ("proxy.pem", "proxy.key", "ca.pem"):
        (tmp_path / "certs" / name).write_text("not read by the loader\n")
    return tmp_path


@pytest.mark.parametrize("what", sorted(EXAMPLES))
def test_every_example_is_accepted_as_written(tmp_path: Path, what: str) -> None:
    folder = example_folder(tmp_path)
    line = EXAMPLES[what]
    text = line + "\n" if line.startswith("listen:") else LISTEN + line + "\n"
    path = folder / "proxy.yaml"
    path.write_text(text)
    load_config(path)  # raises ConfigError with the example's mistake
