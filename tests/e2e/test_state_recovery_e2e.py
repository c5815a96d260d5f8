"""State that survives a store restarted empty and SIGTERM after a burst (real redis-server,
sqlite, sipp and raw UDP against the real proxy process).

* Redis killed and started again *without its data* while sipp calls 200 registered phones:
  every call completes, and once Redis is back the proxy writes back the bindings it holds
  (memory is the truth; the store's emptiness is not): the phones are still reached and their
  bindings are in Redis again.
* 20,000 REGISTERs as fast as the proxy answers them, then SIGTERM: the drain writes every
  pending change (batched), the exit log says how many, and a restarted proxy loads all
  20,000 (sqlite and Redis).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port
from tests.e2e.test_redirect_e2e import restart
from tests.redis_harness import RedisServer

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"
PHONES = 200
BURST = 20_000


# ----------------------------------------------------------------------------- fast REGISTERs


class Registrar(asyncio.DatagramProtocol):
    """Sends REGISTERs for ``sip:<prefix>N@example.com`` (N < count) over one UDP socket, at
    most ``window`` unanswered at once, each resent after a second without an answer (RFC 3261
    17.1.2.2, with a fixed timer: loopback loses only what overflows a buffer); done when
    every one has its 200."""

    def __init__(self, proxy: tuple[str, int], count: int, contact: str, prefix: str = "u",
                 window: int = 200) -> None:
        self.proxy = proxy
        self.count = count
        self.contact = contact  # "host:port" written in every Contact
        self.prefix = prefix
        self.window = window
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.sent_at: dict[int, float] = {}
        self.ok: set[int] = set()
        self.other: list[bytes] = []
        self.next = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def message(self, n: int) -> bytes:
        user = f"{self.prefix}{n}"
        aor = f"sip:{user}@{DOMAIN}"
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bKburst{n}x;rport\r\n"
                f"From: <{aor}>;tag=b{n}\r\nTo: <{aor}>\r\nCall-ID: burst-{n}@test\r\n"
                f"CSeq: 1 REGISTER\r\nContact: <sip:{user}@{self.contact}>\r\n"
                "Expires: 3600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()

    def fill(self) -> None:
        assert self.transport is not None
        while self.next < self.count and len(self.sent_at) < self.window:
            self.transport.sendto(self.message(self.next), self.proxy)
            self.sent_at[self.next] = time.monotonic()
            self.next += 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        head, _, rest = data.partition(b"\r\n")
        start = rest.find(b"Call-ID: burst-")
        if start < 0:
            self.other.append(data)
            return
        n = int(rest[start + 15:rest.index(b"@", start)])
        if head.startswith(b"SIP/2.0 200 "):
            if self.sent_at.pop(n, None) is not None:
                self.ok.add(n)
        elif not head.startswith(b"SIP/2.0 1"):
            self.other.append(data)
        if len(self.ok) == self.count and not self.done.done():
            self.done.set_result(None)
        self.fill()

    def resend(self) -> None:
        assert self.transport is not None
        now = time.monotonic()
        for n, at in list(self.sent_at.items()):
            if now - at > 1.0:
                self.transport.sendto(self.message(n), self.proxy)
                self.sent_at[n] = now

    async def run(self, timeout: float) -> float:
        """Register them all; returns the seconds it took."""
        start = time.monotonic()
        self.fill()
        deadline = start + timeout
        while not self.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.done), 0.5)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{len(self.ok)} of {self.count} REGISTERs answered "
                                         f"200 in {timeout} s; others: {self.other[:3]}"
                                         ) from None
                self.resend()
        assert not self.other, self.other[:3]
        return time.monotonic() - start


async def register_many(proxy: ProxyProcess, count: int, contact: str, prefix: str = "u",
                        timeout: float = 240.0) -> float:
    loop = asyncio.get_running_loop()
    transport, reg = await loop.create_datagram_endpoint(
        lambda: Registrar(proxy.addr, count, contact, prefix), local_addr=(LOOPBACK, 0))
    try:
        return await reg.run(timeout)
    finally:
        transport.close()


def redis_aors(server: RedisServer) -> set[str]:
    out = server.cli("keys", "spp:reg:*")
    return {line.strip()[len("spp:reg:"):] for line in out.splitlines() if line.strip()}


# ----------------------------------------------------------------------------- Redis reset


async def test_redis_restarted_empty_the_phones_are_still_reached_and_written_back(
    proxy_factory: ProxyFactory, own_redis: RedisServer, sipp: Sipp, tmp_path: Path,
) -> None:
    """200 phones registered; sipp calls them while Redis is killed and started again
    without its data. Every call completes; once Redis is back the proxy writes back its
    200 bindings (logged), a second round calls each phone once and every call completes,
    and Redis holds the 200 bindings again. (Before, the proxy took the empty Redis for the
    truth: it dropped its 200 bindings and every later call got 480.)"""
    phones_port = free_port()
    proxy = proxy_factory(registrar="local", domains=[DOMAIN],
                          extra={"state": own_redis.url, "node": "edge1"})
    await register_many(proxy, PHONES, f"{LOOPBACK}:{phones_port}", prefix="user")
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\n" + "".join(f"user{i};\n" for i in range(PHONES)))
    uas = await sipp.uas("uas_answer.xml", port=phones_port, timeout=120, name="phones")
    during = await sipp.uac("st_uac_call_users.xml", proxy.addr, calls=300, rate=25,
                            keys={"domain": DOMAIN}, timeout=90, name="during",
                            extra=["-inf", str(users)])
    mark = proxy.mark()
    await asyncio.to_thread(own_redis.kill)
    await proxy.await_log("unreachable", timeout=15, since=mark)
    await asyncio.to_thread(own_redis.start)  # empty: no persistence
    await proxy.await_log("was reset", timeout=20, since=mark)
    line = await proxy.await_log("written back", timeout=20, since=mark)
    assert f"{PHONES} registrations" in line, line
    res = await during.wait()
    assert res.returncode == 0 and res.successful == 300 and res.failed == 0, res.describe()
    after = await sipp.uac("st_uac_call_users.xml", proxy.addr, calls=PHONES, rate=50,
                           keys={"domain": DOMAIN}, timeout=60, name="after",
                           extra=["-inf", str(users)])
    res = await after.wait()
    assert res.returncode == 0 and res.successful == PHONES and res.failed == 0, \
        res.describe() + proxy.tail(20)
    await uas.stop()
    stored = await asyncio.to_thread(redis_aors, own_redis)
    assert stored == {f"user{i}@{DOMAIN}" for i in range(PHONES)}
    raw = own_redis.cli("hgetall", f"spp:reg:user7@{DOMAIN}").splitlines()
    binding = json.loads(raw[1])
    assert binding["uri"] == f"sip:user7@{LOOPBACK}:{phones_port}" and binding["node"] == "edge1"
    proxy.assert_alive()


# ----------------------------------------------------------------------------- SIGTERM burst


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_sigterm_after_a_burst_of_20000_registers_writes_every_one(
    proxy_factory: ProxyFactory, backend: str, request: pytest.FixtureRequest,
) -> None:
    """20,000 REGISTERs (each answered 200), SIGTERM at once: the exit writes what is still
    pending within the drain, logs how many it wrote and that none is left, and the
    restarted proxy loads all 20,000 bindings. (Before: the exit flush was capped at 1.5 s
    with one write per change; 7,065 of 20,020 were lost.)"""
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("own_redis")
        state = server.url
    else:
        state = "sqlite:state.db"
    # Overload control off: it would answer part of a burst this fast 503 with Retry-After
    # (as it should: tests/e2e/test_overload_e2e.py); here every REGISTER must be taken.
    proxy = proxy_factory(registrar="local", domains=[DOMAIN], drain_timeout=30,
                          extra={"state": state}, limits={"overload_lag_ms": 0})
    took = await register_many(proxy, BURST, f"{LOOPBACK}:5999")
    print(f"\n{backend}: {BURST} REGISTERs answered in {took:.1f} s")  # noqa: T201
    restarted = await restart(proxy_factory, proxy)
    exit_lines = [line for line in proxy.lines() if "at exit" in line]
    assert not [line for line in exit_lines if "not written" in line], exit_lines
    print(f"{backend}: {exit_lines}")  # noqa: T201
    loaded = restarted.wait_for_log("registrations loaded from", timeout=5)
    assert f": {BURST} bindings" in loaded, loaded
    if backend == "redis":
        assert len(await asyncio.to_thread(redis_aors, server)) == BURST
