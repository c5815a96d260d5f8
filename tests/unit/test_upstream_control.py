"""The pure parts of runtime control of upstreams (README "Runtime control of upstreams"):
which configured upstream a URI the operator typed names, who counts as the loopback for a
POST without ``http_token``, and the CLI's table."""

from __future__ import annotations

from proxy.config import Upstream
from proxy.runtime.http_access import loopback
from proxy.runtime.upstream_control import find
from proxy.status_cli import status_table
from proxy.upstreams_cli import table

UPSTREAMS = (
    Upstream("sip:10.0.0.20:5060", "10.0.0.20", 5060, "udp"),
    Upstream("sip:10.0.0.20:5070;transport=tcp", "10.0.0.20", 5070, "tcp"),
    Upstream("sip:pbx.example.com", "pbx.example.com", 5060, "udp"),
)


def test_an_upstream_is_found_as_written_or_by_host_port_and_transport() -> None:
    assert find(UPSTREAMS, "sip:10.0.0.20:5060") is UPSTREAMS[0]
    assert find(UPSTREAMS, " sip:10.0.0.20:5070;transport=tcp ") is UPSTREAMS[1]
    assert find(UPSTREAMS, "10.0.0.20:5070") is UPSTREAMS[1]
    assert find(UPSTREAMS, "sip:10.0.0.20;transport=tcp") is UPSTREAMS[1]
    assert find(UPSTREAMS, "PBX.example.com") is UPSTREAMS[2]


def test_an_ambiguous_or_unknown_upstream_is_explained() -> None:
    several = find(UPSTREAMS, "10.0.0.20")
    assert isinstance(several, str) and "matches several upstreams" in several
    unknown = find(UPSTREAMS, "sip:192.0.2.1")
    assert isinstance(unknown, str) and "is not an upstream" in unknown
    assert "sip:pbx.example.com" in unknown
    bad = find(UPSTREAMS, "sip:<x>")
    assert isinstance(bad, str) and "not a SIP URI" in bad


def test_only_this_hosts_own_loopback_address_may_post_without_a_token() -> None:
    assert loopback("127.0.0.1") and loopback("::1") and loopback("::ffff:127.0.0.1")
    for stranger in ("127.0.0.2", "10.0.0.1", "::ffff:10.0.0.1", "", None, "not-an-ip"):
        assert not loopback(stranger), stranger


def test_the_table_has_a_row_per_upstream_and_says_when_nothing_is_kept() -> None:
    text = table({"persistent": False, "upstreams": [
        {"upstream": "sip:10.0.0.20:5060", "group": "pbx", "probe": "up", "admin": "drain",
         "since": "2026-12-06T22:00:00Z", "by": "node-a", "calls": 3}]})
    lines = text.splitlines()
    assert lines[0].split() == ["UPSTREAM", "GROUP", "PROBE", "ADMIN", "SINCE", "BY", "CALLS"]
    assert lines[1].split() == ["sip:10.0.0.20:5060", "pbx", "up", "drain",
                                "2026-12-06T22:00:00Z", "node-a", "3"]
    assert "state: memory:" in lines[2]


def test_status_shows_an_upstream_an_operator_took_out() -> None:
    shown = status_table({"probing": True, "upstreams": [
        {"upstream": "sip:10.0.0.20:5060", "up": True, "admin": "drain"},
        {"upstream": "sip:10.0.0.21:5060", "up": False, "admin": "up"}]})
    rows = {line.split()[1]: line for line in shown.splitlines() if line.startswith("upstream ")}
    assert rows["sip:10.0.0.20:5060"].endswith("up, DRAIN by an operator")
    assert rows["sip:10.0.0.21:5060"].endswith("DOWN")
