"""`upstreams` as a list (one group, `default`) or a mapping of named groups: what Config
holds, and every error with FILE:LINE:COLUMN."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from proxy.config import Config, Listen, Upstream, UpstreamGroup, load_config, parse_upstream
from proxy.diagnostics import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text("listen: [udp:127.0.0.1:5060]\n" + textwrap.dedent(text).lstrip("\n"))
    return path


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    return [str(d).replace(str(tmp_path), "T") for d in info.value.diagnostics]


def _up(text: str) -> Upstream:
    up = parse_upstream(text)
    assert isinstance(up, Upstream)
    return up


def test_a_list_is_the_group_default(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, "upstreams: [sip:10.0.0.1, sip:10.0.0.2]\n"))
    assert warnings == []
    ups = (_up("sip:10.0.0.1"), _up("sip:10.0.0.2"))
    assert config.upstreams == ups
    assert config.upstream_groups == (UpstreamGroup("default", ups),)
    assert config.group_names == ("default",)


def test_a_mapping_is_named_groups_the_first_the_default(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, """
        upstreams:
          pbx: [sip:10.0.0.20:5060, sip:10.0.0.21:5060]
          voicemail: sip:10.0.0.30:5060
          carrier: ["sip:carrier.example.net;transport=tcp", sip:10.0.0.20:5060]
        """))
    assert warnings == []
    assert config.group_names == ("pbx", "voicemail", "carrier")
    assert config.upstreams == (_up("sip:10.0.0.20:5060"), _up("sip:10.0.0.21:5060"))
    assert config.group("voicemail") == UpstreamGroup("voicemail", (_up("sip:10.0.0.30:5060"),))
    assert config.group("nothing") is None
    # every upstream once, in the order written (the same one in two groups is one upstream)
    assert [u.uri for u in config.all_upstreams] == [
        "sip:10.0.0.20:5060", "sip:10.0.0.21:5060", "sip:10.0.0.30:5060",
        "sip:carrier.example.net;transport=tcp"]
    # every group is an upstream for the redirect defaults
    assert config.trusted_sources == ("10.0.0.20", "10.0.0.21", "10.0.0.30",
                                      "carrier.example.net")
    assert config.allow_targets == config.trusted_sources


def test_a_config_built_with_upstreams_alone_has_the_group_default() -> None:
    ups = (_up("sip:10.0.0.1"),)
    config = Config(Path("/p.yaml"), (Listen("udp", "127.0.0.1", 5060),), upstreams=ups)
    assert config.upstream_groups == (UpstreamGroup("default", ups),)
    replaced = dataclasses.replace(config, log_level="debug")
    assert replaced.upstream_groups == config.upstream_groups
    grouped = Config(Path("/p.yaml"), (Listen("udp", "127.0.0.1", 5060),),
                     upstream_groups=(UpstreamGroup("pbx", ups),))
    assert grouped.upstreams == ups


def test_an_empty_mapping_warns_like_an_empty_list(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, "upstreams: {}\n"))
    assert config.upstreams == () and config.group_names == ("default",)
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        ("T/proxy.yaml:2:12: warning: no upstreams: with registrar: upstream, REGISTER requests "
         "and requests for unknown users have nowhere to go")]


ERRORS = [
    ("not-list-or-mapping", "upstreams: sip:10.0.0.1\n",
     ("T/proxy.yaml:2:12: upstreams must be a list of SIP URIs, or a mapping of named groups "
      "of them (pbx: [sip:10.0.0.20:5060]), got the string 'sip:10.0.0.1'; e.g. upstreams: "
      "[sip:10.0.0.20:5060, sip:10.0.0.21:5060;transport=tcp]")),
    ("empty-group", "upstreams:\n  pbx: []\n",
     "T/proxy.yaml:3:8: upstreams: group 'pbx' has no upstreams"),
    ("group-not-list", "upstreams:\n  pbx: {a: 1}\n",
     "T/proxy.yaml:3:8: upstreams: group 'pbx' must be a list of SIP URIs, got a mapping"),
    ("bad-group-name", "upstreams:\n  \"my pbx\": [sip:10.0.0.1]\n",
     ("T/proxy.yaml:3:3: upstreams: 'my pbx' is not a group name (letters, digits, '_', '.', "
      "'-'; up to 64, not an IP address)")),
    ("address-as-name", "upstreams:\n  \"10.0.0.1\": [sip:10.0.0.1]\n",
     ("T/proxy.yaml:3:3: upstreams: '10.0.0.1' is not a group name (letters, digits, '_', '.', "
      "'-'; up to 64, not an IP address)")),
    ("bad-uri-in-group", "upstreams:\n  pbx: [sip:10.0.0.1, \"http://x\"]\n",
     ("T/proxy.yaml:3:23: upstream of group 'pbx' 'http://x': expected a sip: or sips: URI, "
      "e.g. sip:127.0.0.1:5080")),
    ("duplicate-in-group", "upstreams:\n  pbx: [sip:10.0.0.1, \"sip:10.0.0.1;lr\"]\n",
     ("T/proxy.yaml:3:23: upstream of group 'pbx' 'sip:10.0.0.1;lr': duplicate upstream "
      "(first at 3:9)")),
    ("duplicate-group", "upstreams:\n  pbx: [sip:10.0.0.1]\n  pbx: [sip:10.0.0.2]\n",
     "T/proxy.yaml:4:3: duplicate key 'pbx' (first at 3:3)"),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_upstream_group_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert _errors(tmp_path, text) == [expected]
