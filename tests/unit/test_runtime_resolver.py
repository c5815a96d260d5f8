"""The runtime's resolver (RFC 3263 reduced to A/AAAA): literals at once, names cached for
``ttl``, failures for ``negative_ttl``; and the Via address of a listener."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from proxy.runtime.resolver import CACHE_LIMIT, MISS, Resolver, advertised


class FakeDns:
    """Stands in for the loop's getaddrinfo: answers from a table, counts lookups."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.calls: list[str] = []

    def answer(self, host: str) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        ip = self.table.get(host)
        if ip is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (ip, 0))]

    async def loop_getaddrinfo(self, host: str, port: object, **_: object) -> list[tuple[Any, ...]]:
        return self.answer(host)

    def getaddrinfo(self, host: str, port: object, **_: object) -> list[tuple[Any, ...]]:
        return self.answer(host)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns({"pbx.example.com": "192.0.2.7"})
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", lambda self, *a, **k:
                        fake.loop_getaddrinfo(*a, **k))
    return fake


def test_ip_literals_are_answered_without_a_lookup(dns: FakeDns) -> None:
    r = Resolver()
    assert r.cached("192.0.2.1", 0.0) == "192.0.2.1"
    assert r.cached("2001:db8::1", 0.0) == "2001:db8::1"
    assert r.cached("192.0.2.1", 1e9) == "192.0.2.1"  # remembered for good
    assert dns.calls == []


def test_a_name_not_looked_up_yet_is_a_miss(dns: FakeDns) -> None:
    assert Resolver().cached("pbx.example.com", 0.0) is MISS
    assert dns.calls == []


async def test_a_name_is_cached_for_ttl(dns: FakeDns) -> None:
    r = Resolver(ttl=60.0, negative_ttl=5.0)
    assert await r.resolve("pbx.example.com", 100.0) == "192.0.2.7"
    assert dns.calls == ["pbx.example.com"]
    assert r.cached("pbx.example.com", 100.0) == "192.0.2.7"
    assert r.cached("pbx.example.com", 159.9) == "192.0.2.7"
    assert r.cached("pbx.example.com", 160.0) is MISS  # expired: look it up again
    assert dns.calls == ["pbx.example.com"]


async def test_a_failure_is_cached_for_negative_ttl_only(dns: FakeDns) -> None:
    r = Resolver(ttl=60.0, negative_ttl=5.0)
    assert await r.resolve("nowhere.invalid", 10.0) is None
    assert r.cached("nowhere.invalid", 10.0) is None  # known not to resolve
    assert r.cached("nowhere.invalid", 14.9) is None
    assert r.cached("nowhere.invalid", 15.0) is MISS
    dns.table["nowhere.invalid"] = "192.0.2.9"  # it appears later
    assert await r.resolve("nowhere.invalid", 15.0) == "192.0.2.9"
    assert r.cached("nowhere.invalid", 15.0) == "192.0.2.9"
    assert dns.calls == ["nowhere.invalid", "nowhere.invalid"]


def test_the_literals_an_outsider_chooses_stay_bounded(dns: FakeDns) -> None:
    """Think like an attacker: every new source address is a new IP literal to send to; the
    table of literals seen never holds more than CACHE_LIMIT of them."""
    r = Resolver()
    for i in range(3 * CACHE_LIMIT):
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        assert r.cached(host, 0.0) == host
        assert len(r.literals) <= CACHE_LIMIT
    assert r.cached("not an address", 0.0) is MISS and dns.calls == []


async def test_the_names_cached_stay_bounded(dns: FakeDns) -> None:
    """Names (a Contact's, a Route's host) are bounded too: expired answers go first."""
    r = Resolver(ttl=60.0, negative_ttl=5.0)
    for i in range(CACHE_LIMIT + 10):
        await r.resolve(f"n{i}.invalid", float(i))  # failures: each expires after 5 s
        assert len(r._cache) <= CACHE_LIMIT
    assert r.cached(f"n{CACHE_LIMIT + 9}.invalid", float(CACHE_LIMIT + 9)) is None


def test_resolve_now_is_the_blocking_start_up_lookup(dns: FakeDns) -> None:
    r = Resolver()
    assert r.resolve_now("pbx.example.com") == "192.0.2.7"
    assert r.resolve_now("nowhere.invalid") is None


@pytest.mark.parametrize(("host", "port", "advertise", "expected"), [
    ("127.0.0.1", 5060, None, "127.0.0.1:5060"),
    ("::1", 5060, None, "[::1]:5060"),
    ("0.0.0.0", 5060, "sip.example.com", "sip.example.com:5060"),
    ("0.0.0.0", 5060, "sip.example.com:5080", "sip.example.com:5080"),
    ("::", 5060, "2001:db8::1", "[2001:db8::1]:5060"),
    ("::", 5060, "[2001:db8::1]", "[2001:db8::1]:5060"),
    ("::", 5060, "[2001:db8::1]:5090", "[2001:db8::1]:5090"),
])
def test_advertised(host: str, port: int, advertise: str | None, expected: str) -> None:
    assert advertised(host, port, advertise) == expected
