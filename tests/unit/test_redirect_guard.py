"""RedirectGuard: which 3xx may be followed and learned (RFC 3261 26.1.2, 26.4.4; README "Security defaults").

A forged 301 diverts calls for good, so every way a Contact can name a place it should not
(a host outside allow_targets, loopback and friends, the proxy itself, numeric spellings,
maddr, a Route URI header) is refused with a reason, and what the operator allowed is let
through.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Config, Listen, Redirects, parse_upstream
from proxy.core.proxy.redirect_guard import RedirectGuard
from proxy.sip import SipUri, parse_uri


def uri(text: str) -> SipUri:
    parsed = parse_uri(text)
    assert isinstance(parsed, SipUri)
    return parsed


def allowed(guard: RedirectGuard, text: str) -> bool:
    return guard.check_target(uri(text)) is None


# ---------------------------------------------------------------------------------------------
# source_trusted


@pytest.fixture
def sources() -> RedirectGuard:
    return RedirectGuard(
        ["10.1.0.0/16", "192.0.2.10", "2001:db8:a::/48", "[2001:db8:b::1]", "PBX.Example.COM."],
        [],
    )


@pytest.mark.parametrize(
    "host",
    ["10.1.0.1", "10.1.255.254", "192.0.2.10", "2001:db8:a::5", "2001:db8:a:ffff::1",
     "[2001:db8:a::5]", "2001:db8:b::1", "pbx.example.com", "PBX.EXAMPLE.COM", "pbx.example.com.",
     "::ffff:10.1.2.3", "::ffff:192.0.2.10"],
)
def test_trusted_sources_match(sources: RedirectGuard, host: str) -> None:
    assert sources.source_trusted(host) is True


@pytest.mark.parametrize(
    "host",
    ["10.2.0.1", "10.0.255.255", "192.0.2.11", "2001:db8:c::1", "2001:db8:b::2",
     "other.example.com", "x.pbx.example.com", "example.com", "127.0.0.1", "::1", "", "pbx"],
)
def test_untrusted_sources(sources: RedirectGuard, host: str) -> None:
    assert sources.source_trusted(host) is False


def test_source_with_ipv6_zone_is_judged_by_its_address() -> None:
    guard = RedirectGuard(["fe80::/10"], [])
    assert guard.source_trusted("fe80::1%eth0") is True
    assert RedirectGuard(["2001:db8::/32"], []).source_trusted("fe80::1%eth0") is False


def test_no_trusted_sources_trusts_nobody() -> None:
    guard = RedirectGuard([], ["example.com"])
    assert not guard.source_trusted("127.0.0.1")
    assert not guard.source_trusted("example.com")


# ---------------------------------------------------------------------------------------------
# check_target: what allow_targets allows


@pytest.fixture
def targets() -> RedirectGuard:
    return RedirectGuard(
        [],
        ["example.com", "pbx2.other.net", "198.51.100.7", "203.0.113.0/24", "2001:db8:1::/48",
         "[2001:db8:2::9]"],
    )


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sip:alice@EXAMPLE.com",
        "sip:alice@example.com.",
        "sip:alice@pbx.example.com:5080",
        "sip:alice@a.b.c.example.com;transport=tcp",
        "sips:alice@example.com",
        "sip:pbx2.other.net",
        "sip:alice@198.51.100.7:5062",
        "sip:alice@203.0.113.1",
        "sip:alice@203.0.113.255",
        "sip:alice@[2001:db8:1::1]",
        "sip:alice@[2001:db8:1:ffff::1]:5070",
        "sip:alice@[2001:db8:2::9]",
        "sip:alice@[::ffff:203.0.113.9]",  # IPv4-mapped: judged as 203.0.113.9
    ],
)
def test_allowed_targets(targets: RedirectGuard, text: str) -> None:
    assert targets.check_target(uri(text)) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sip:alice@evil.com", "target evil.com is not in redirects.allow_targets"),
        ("sip:alice@notexample.com", "target notexample.com is not in redirects.allow_targets"),
        ("sip:alice@example.com.evil.com",
         "target example.com.evil.com is not in redirects.allow_targets"),
        ("sip:alice@other.net", "target other.net is not in redirects.allow_targets"),
        ("sip:alice@198.51.100.8", "target 198.51.100.8:5060 is not in redirects.allow_targets"),
        ("sip:alice@203.0.114.1:5080",
         "target 203.0.114.1:5080 is not in redirects.allow_targets"),
        ("sip:alice@[2001:db8:3::1]",
         "target [2001:db8:3::1]:5060 is not in redirects.allow_targets"),
        ("sips:alice@[2001:db8:2::a]",
         "target [2001:db8:2::a]:5061 is not in redirects.allow_targets"),
        ("sip:alice@[1:2:3]", "target [1:2:3] is not a valid IPv6 address"),
    ],
)
def test_refused_targets_say_why(targets: RedirectGuard, text: str, reason: str) -> None:
    assert targets.check_target(uri(text)) == reason


def test_a_name_entry_is_not_a_suffix_match_on_labels() -> None:
    guard = RedirectGuard([], ["ample.com"])
    assert not allowed(guard, "sip:a@example.com")
    assert allowed(guard, "sip:a@ample.com")
    assert allowed(guard, "sip:a@x.ample.com")


def test_no_allow_targets_allows_nothing() -> None:
    guard = RedirectGuard(["10.0.0.1"], [])
    assert guard.check_target(uri("sip:a@example.com")) == (
        "target example.com is not in redirects.allow_targets")
    assert not allowed(guard, "sip:a@10.0.0.1")


def test_a_non_sip_uri_is_refused() -> None:
    tel = parse_uri("tel:+15551234567")
    guard = RedirectGuard([], ["example.com"])
    assert guard.check_target(tel) == "target tel:+15551234567 is not a sip: or sips: URI"


# ---------------------------------------------------------------------------------------------
# numeric spellings that resolvers turn into addresses (inet_aton)


@pytest.mark.parametrize(
    "text",
    ["sip:a@127.1", "sip:a@2130706433", "sip:a@0x7f.0.0.1", "sip:a@0177.0.0.1",
     "sip:a@999.1.1.1", "sip:a@10.0.0.1.2"],
)
def test_numeric_host_spellings_are_refused_even_under_a_wide_network(text: str) -> None:
    guard = RedirectGuard([], ["0.0.0.0/0", "example.com"])
    reason = guard.check_target(uri(text))
    assert reason is not None
    assert reason.endswith("is neither an IP address nor a valid host name")


# ---------------------------------------------------------------------------------------------
# special addresses: refused unless named explicitly


SPECIAL = [
    ("sip:a@127.0.0.1", "loopback"),
    ("sip:a@127.8.9.10", "loopback"),
    ("sip:a@[::1]", "loopback"),
    ("sip:a@[::ffff:127.0.0.1]", "loopback"),
    ("sip:a@169.254.10.20", "link-local"),
    ("sip:a@[fe80::1]", "link-local"),
    ("sip:a@0.0.0.0", "unspecified"),
    ("sip:a@0.1.2.3", "unspecified"),
    ("sip:a@[::]", "unspecified"),
    ("sip:a@224.0.0.1", "multicast"),
    ("sip:a@239.255.255.250", "multicast"),
    ("sip:a@[ff02::1]", "multicast"),
    ("sip:a@255.255.255.255", "broadcast"),
]


@pytest.mark.parametrize(("text", "category"), SPECIAL)
def test_special_addresses_are_refused_even_under_everything(text: str, category: str) -> None:
    guard = RedirectGuard([], ["0.0.0.0/0", "::/0", "example.com"])
    reason = guard.check_target(uri(text))
    assert reason is not None
    assert f"is a {category} address not named by redirects.allow_targets" in reason


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ("127.0.0.1", "sip:a@127.0.0.1:5080"),
        ("127.0.0.0/8", "sip:a@127.8.9.10"),
        ("::1", "sip:a@[::1]:5080"),
        ("[::1]", "sip:a@[::1]"),
        ("127.0.0.1", "sip:a@[::ffff:127.0.0.1]"),
        ("169.254.0.0/16", "sip:a@169.254.10.20"),
        ("fe80::/64", "sip:a@[fe80::1]"),
        ("224.0.0.0/4", "sip:a@239.255.255.250"),
        ("ff02::1", "sip:a@[ff02::1]"),
        ("255.255.255.255", "sip:a@255.255.255.255"),
        ("::ffff:127.0.0.0/104", "sip:a@127.0.0.9"),  # an IPv4-mapped network is IPv4
    ],
)
def test_special_addresses_named_explicitly_are_allowed(entry: str, text: str) -> None:
    assert RedirectGuard([], [entry]).check_target(uri(text)) is None


def test_naming_one_special_address_does_not_name_its_neighbours() -> None:
    guard = RedirectGuard([], ["127.0.0.1", "fe80::/64"])
    assert allowed(guard, "sip:a@127.0.0.1")
    assert not allowed(guard, "sip:a@127.0.0.2")
    assert allowed(guard, "sip:a@[fe80::2]")
    assert not allowed(guard, "sip:a@[fe80:0:0:1::2]")


def test_a_network_wider_than_the_special_range_does_not_name_it() -> None:
    guard = RedirectGuard([], ["0.0.0.0/1", "224.0.0.0/3"])
    assert allowed(guard, "sip:a@10.0.0.1")
    assert not allowed(guard, "sip:a@127.0.0.1")
    assert not allowed(guard, "sip:a@224.0.0.1")


# ---------------------------------------------------------------------------------------------
# the proxy's own addresses (a loop)


@pytest.fixture
def own() -> RedirectGuard:
    return RedirectGuard(
        [],
        ["192.0.2.0/24", "2001:db8::/32", "example.com"],
        [("192.0.2.5", 5060), ("192.0.2.5", 5061), ("[2001:db8::5]", 5060),
         ("sip.example.com", 5060)],
    )


@pytest.mark.parametrize(
    "text",
    ["sip:a@192.0.2.5", "sip:a@192.0.2.5:5060", "sip:a@192.0.2.5;transport=tcp",
     "sips:a@192.0.2.5", "sip:a@192.0.2.5;transport=tls", "sip:a@[2001:db8::5]",
     "sip:a@[::ffff:192.0.2.5]", "sip:a@sip.example.com", "sip:a@SIP.example.com.:5060"],
)
def test_own_addresses_are_refused(own: RedirectGuard, text: str) -> None:
    reason = own.check_target(uri(text))
    assert reason is not None
    assert "is one of the proxy's own addresses (a loop)" in reason


@pytest.mark.parametrize(
    "text",
    ["sip:a@192.0.2.5:5080", "sip:a@192.0.2.6", "sips:a@[2001:db8::5]",
     "sip:a@sip.example.com:5080", "sip:a@pbx.example.com", "sip:a@example.com"],
)
def test_other_ports_and_hosts_next_to_own_addresses_are_allowed(
    own: RedirectGuard, text: str
) -> None:
    assert own.check_target(uri(text)) is None


def test_own_address_named_exactly_is_allowed() -> None:
    own = [("192.0.2.5", 5060), ("sip.example.com", 5060)]
    guard = RedirectGuard([], ["192.0.2.5", "sip.example.com"], own)
    assert allowed(guard, "sip:a@192.0.2.5")
    assert allowed(guard, "sip:a@sip.example.com")
    wide = RedirectGuard([], ["192.0.2.0/24", "example.com"], own)
    assert not allowed(wide, "sip:a@192.0.2.5")
    assert not allowed(wide, "sip:a@sip.example.com")


def test_own_loopback_address_needs_the_exact_ip() -> None:
    """127.0.0.0/8 names loopback, but only 127.0.0.1 itself names the proxy's socket."""
    own = [("127.0.0.1", 5060)]
    assert not allowed(RedirectGuard([], ["127.0.0.0/8"], own), "sip:a@127.0.0.1")
    assert allowed(RedirectGuard([], ["127.0.0.0/8"], own), "sip:a@127.0.0.1:5080")
    assert allowed(RedirectGuard([], ["127.0.0.1"], own), "sip:a@127.0.0.1")


# ---------------------------------------------------------------------------------------------
# maddr and URI headers


def test_maddr_must_pass_too() -> None:
    guard = RedirectGuard([], ["example.com", "198.51.100.0/24"], [("198.51.100.1", 5060)])
    assert allowed(guard, "sip:a@example.com;maddr=198.51.100.7")
    assert guard.check_target(uri("sip:a@example.com;maddr=127.0.0.1")) == (
        "maddr: target 127.0.0.1:5060 is a loopback address not named by "
        "redirects.allow_targets")
    assert guard.check_target(uri("sip:a@example.com;maddr=evil.net")) == (
        "maddr: target evil.net is not in redirects.allow_targets")
    assert "own addresses" in (guard.check_target(uri("sip:a@example.com;maddr=198.51.100.1"))
                               or "")


@pytest.mark.parametrize(
    "text",
    ["sip:a@example.com?Route=%3Csip:evil.net%3E", "sip:a@example.com?subject=x&route=x",
     "sip:a@example.com?%52oute=x"],
)
def test_a_route_uri_header_is_refused(text: str) -> None:
    guard = RedirectGuard([], ["example.com"])
    assert guard.check_target(uri(text)) == (
        "target example.com carries a Route URI header (RFC 3261 19.1.5)")


def test_other_uri_headers_are_left_to_the_core() -> None:
    guard = RedirectGuard([], ["example.com"])
    assert allowed(guard, "sip:a@example.com?Subject=hello&Priority=urgent")


# ---------------------------------------------------------------------------------------------
# construction


@pytest.mark.parametrize(
    "entry", ["10.0.0.1/8", "example.com:5060", "", "not a host", "300.1.1.1/8", "[::1"]
)
def test_invalid_entries_are_refused_at_construction(entry: str) -> None:
    with pytest.raises(ValueError, match="allow_targets"):
        RedirectGuard([], [entry])
    with pytest.raises(ValueError, match="trusted_sources"):
        RedirectGuard([entry], [])


def test_built_from_the_config_defaults() -> None:
    """The defaults (README "Security defaults"): trusted = the upstreams' hosts, targets = those and `domains`."""
    ups = []
    for text in ("sip:10.0.0.1:5080", "sip:pbx.example.net"):
        up = parse_upstream(text)
        assert not isinstance(up, str)
        ups.append(up)
    config = Config(
        path=Path("/etc/proxy.yaml"),
        listen=(Listen("udp", "10.0.0.9", 5060),),
        upstreams=tuple(ups),
        domains=("example.com",),
        redirects=Redirects(),
    )
    guard = RedirectGuard(config.trusted_sources, config.allow_targets,
                          [(lst.host, lst.port) for lst in config.listen])
    assert guard.source_trusted("10.0.0.1")
    assert not guard.source_trusted("10.0.0.2")
    assert allowed(guard, "sip:bob@10.0.0.1:5090")
    assert allowed(guard, "sip:bob@pbx.example.net")
    assert allowed(guard, "sip:bob@branch.example.com")
    assert not allowed(guard, "sip:bob@10.0.0.9")
    assert not allowed(guard, "sip:bob@attacker.example.org")
    own = RedirectGuard(config.trusted_sources, [*config.allow_targets, "10.0.0.0/24"],
                        [(lst.host, lst.port) for lst in config.listen])
    assert "own addresses" in (own.check_target(uri("sip:bob@10.0.0.9")) or "")
    assert allowed(own, "sip:bob@10.0.0.9:5070")
