"""Durable and shared state end to end (README "Durable and shared state"), against real
redis-servers (and a real 3-node Redis Cluster) started by the tests.

* A phone registered before a restart (sqlite, Redis) gets the next INVITE without
  registering again.
* Two proxies on one Redis (and on a Redis Cluster), without ``secret:`` (they share the
  store's key): a 301 learned through A is applied by B; a phone registered through A is
  reached with an INVITE sent to B, over UDP (behind NAT: through A, at the address the
  phone registered from, as when the call arrives at A) and over TCP (B goes through A,
  which holds the connection). Two nodes with different secrets say so.
* Redis killed mid-run: calls keep flowing, the loss and the recovery are logged once each,
  and a route learned meanwhile is in Redis once it is back.
* The proxy starts while Redis is down and relays calls.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port
from tests.e2e.test_fixes_e2e import final_of, pbx_invite, register_udp
from tests.e2e.test_redirect_e2e import restart
from tests.e2e.wire import (
    SipMessage,
    SipStream,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    new_call_id,
    via_sent_by,
)
from tests.redis_harness import RedisClusterServers, RedisServer

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"
WAIT = 3.0
SECRET = "shared-secret-of-the-test-nodes-0123456789"


@pytest.fixture(params=["redis", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """The state URL of a flushed redis-server, or of a flushed 3-node Redis Cluster."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.cli("flushall")
        yield server.url
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        yield cluster.url


def node(factory: ProxyFactory, state: str, name: str, upstreams: list[str],
         secret: str | None = None) -> ProxyProcess:
    """A proxy of the shared state with an HTTP endpoint (its /status shows what it holds).
    No ``secret:`` unless given: the nodes share the key kept in the store."""
    extra = {"state": state, "node": name, "http": f"{LOOPBACK}:{free_port()}"}
    if secret is not None:
        extra["secret"] = secret
    return factory(upstreams=upstreams, registrar="local", domains=[DOMAIN], extra=extra)


def status(proxy: ProxyProcess) -> dict[str, object]:
    host, _, port = str(proxy.config["http"]).rpartition(":")
    with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=5) as r:
        data: dict[str, object] = json.loads(r.read())
    return data


async def holds(proxy: ProxyProcess, key: str, count: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``proxy``'s /status shows ``count`` for ``key`` (registrations,
    learned_routes): a change made through another node reached it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await asyncio.to_thread(status, proxy))[key] != count:
        assert loop.time() < deadline, f"{key} never {count}: {status(proxy)}"
        await asyncio.sleep(0.05)  # bounded poll of /status: a node raises no event to await


async def invite_reaches(pbx: UdpPeer, proxy: ProxyProcess, phone_recv: object,
                         user: str) -> SipMessage:
    """The PBX calls sip:USER@example.com through ``proxy``; returns the INVITE the phone got
    (``phone_recv`` awaits it); the phone's 486 reaches the PBX."""
    call = new_call_id("shared")
    await pbx.send(pbx_invite(pbx, f"sip:{user}@{DOMAIN}", call), proxy.addr)
    invite: SipMessage = await phone_recv(call)  # type: ignore[operator]
    return invite


# ----------------------------------------------------------------------------- restart


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_registered_phone_reached_after_restart_without_registering_again(
    proxy_factory: ProxyFactory, backend: str, request: pytest.FixtureRequest,
) -> None:
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.cli("flushall")
        state = server.url
    else:
        state = "sqlite:state.db"
    async with await UdpPeer.bind(free_port()) as pbx, await UdpPeer.bind(free_port()) as phone:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"], registrar="local",
                              domains=[DOMAIN], extra={"state": state})
        await register_udp(phone, proxy, "alice")
        # at once: the binding is written behind the 200, and SIGTERM writes what is pending
        restarted = await restart(proxy_factory, proxy)
        assert restarted.wait_for_log("registrations loaded from", timeout=2)
        call = new_call_id("afterrestart")
        await pbx.send(pbx_invite(pbx, f"sip:alice@{DOMAIN}", call), restarted.addr)
        invite, _ = await phone.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert invite.call_id == call
        assert invite.request_uri == f"sip:alice@{LOOPBACK}:{phone.port}"
        await phone.send(build_response(invite, 486, "Busy Here", to_tag="alice"),
                         restarted.addr)
        final = await final_of(pbx, call)
        assert final.status == 486
        await pbx.send(build_ack(f"sip:alice@{DOMAIN}", final), restarted.addr)
        restarted.assert_alive()


# ----------------------------------------------------------------------------- two nodes


async def test_phone_behind_nat_is_reached_at_the_same_address_through_either_node(
    proxy_factory: ProxyFactory, shared_redis: str,
) -> None:
    """The phone's Contact names a private address (it is behind NAT); only A's socket can
    reach its flow. No ``secret:``: the nodes share the store's key. An INVITE sent to A goes
    to where the phone registered from; one sent to B goes to A (a Route with the flow token,
    which A verifies) and from A to that same address (one rule, proxy/core/outbound/reach.py). Before,
    A sent its own calls to the private Contact."""
    async with await UdpPeer.bind(free_port()) as pbx, await UdpPeer.bind(free_port()) as phone:
        ups = [f"sip:{LOOPBACK}:{pbx.port}"]
        a = node(proxy_factory, shared_redis, "a", ups)
        b = node(proxy_factory, shared_redis, "b", ups)
        await register_udp(phone, a, "nat", contact="<sip:nat@192.168.77.10:5060>")
        await holds(b, "registrations", 1)
        for entry, hops in ((a, [a.port]), (b, [a.port, b.port])):
            call = new_call_id("nat")
            await pbx.send(pbx_invite(pbx, f"sip:nat@{DOMAIN}", call), entry.addr)
            invite, _ = await phone.recv_sip(WAIT, lambda m, c=call: m.method == "INVITE"
                                             and m.call_id == c)
            assert invite.request_uri == "sip:nat@192.168.77.10:5060"
            vias = [via_sent_by(v)[1:3] for v in invite.vias]
            assert vias[:len(hops)] == [(LOOPBACK, p) for p in hops], invite.vias
            await phone.send(build_response(invite, 486, "Busy Here", to_tag="nat"), a.addr)
            final = await final_of(pbx, call)
            assert final.status == 486
            await pbx.send(build_ack(f"sip:nat@{DOMAIN}", final), entry.addr)
        assert not [line for line in a.lines() + b.lines() if "another key" in line]
        a.assert_alive()
        b.assert_alive()


async def test_nodes_with_different_secrets_say_so(
    proxy_factory: ProxyFactory, redis_server: RedisServer,
) -> None:
    """A has a ``secret:``, B another: B forwarding a call for A's phone would get 403 from
    A. Each node announces the id of its key (never the key): B says at start that A's
    differs, and so does A within an announcement period."""
    redis_server.cli("flushall")
    a = node(proxy_factory, redis_server.url, "a", [], secret=SECRET)
    b = node(proxy_factory, redis_server.url, "b", [], secret=SECRET[::-1])
    line = await b.await_log("another key", timeout=5)
    assert "node a uses another key" in line and "from `secret:`" in line, line
    await a.await_log("node b uses another key", timeout=10)


async def test_phone_registered_through_a_is_reached_through_b_over_udp(
    proxy_factory: ProxyFactory, shared_redis: str,
) -> None:
    """A phone whose Contact is where it registers from is reached by B directly."""
    async with await UdpPeer.bind(free_port()) as pbx, await UdpPeer.bind(free_port()) as phone:
        ups = [f"sip:{LOOPBACK}:{pbx.port}"]
        a = node(proxy_factory, shared_redis, "a", ups)
        b = node(proxy_factory, shared_redis, "b", ups)
        await register_udp(phone, a, "udpphone")
        await holds(b, "registrations", 1)
        call = new_call_id("udpb")
        await pbx.send(pbx_invite(pbx, f"sip:udpphone@{DOMAIN}", call), b.addr)
        invite, _ = await phone.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert invite.call_id == call
        await phone.send(build_response(invite, 486, "Busy Here", to_tag="u"), b.addr)
        final = await final_of(pbx, call)
        assert final.status == 486
        await pbx.send(build_ack(f"sip:udpphone@{DOMAIN}", final), b.addr)


async def test_phone_registered_over_tcp_through_a_is_reached_through_b_via_a(
    proxy_factory: ProxyFactory, shared_redis: str,
) -> None:
    """The phone keeps its TCP connection to A (SIP Outbound, RFC 5626); the PBX's INVITE to
    B goes to A, which sends it over that connection; the phone's answer goes back the same
    way. No ``secret:``: A verifies B's token with the key shared through the store."""
    async with await UdpPeer.bind(free_port()) as pbx:
        ups = [f"sip:{LOOPBACK}:{pbx.port}"]
        a = node(proxy_factory, shared_redis, "a", ups)
        b = node(proxy_factory, shared_redis, "b", ups)
        phone = await SipStream.connect(*a.addr)
        try:
            host, port = phone.local
            aor = f"sip:tcpphone@{DOMAIN}"
            reg = new_call_id("tcpreg")
            await phone.send(build_request(
                "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
                call_id=reg, from_uri=aor, to_uri=aor, from_tag="t",
                extra_headers=[
                    f'Contact: <sip:tcpphone@{host}:{port};transport=tcp;ob>;reg-id=1;'
                    '+sip.instance="<urn:uuid:00000000-0000-0000-0000-00000000beef>"',
                    "Supported: outbound, path", "Expires: 3600"]))
            ok = await phone.recv_sip(WAIT, lambda m: m.call_id == reg)
            assert ok.status == 200, ok.raw
            await holds(b, "registrations", 1)
            call = new_call_id("tcpb")
            await pbx.send(pbx_invite(pbx, aor, call), b.addr)
            invite = await phone.recv_sip(WAIT, lambda m: m.method == "INVITE")
            assert invite.call_id == call
            hops = [via_sent_by(v) for v in invite.vias]
            assert (hops[0][0], hops[0][1], hops[0][2]) == ("TCP", LOOPBACK, a.port), invite.vias
            assert (hops[1][1], hops[1][2]) == (LOOPBACK, b.port), invite.vias
            await phone.send(build_response(invite, 486, "Busy Here", to_tag="tcp"))
            final = await final_of(pbx, call)
            assert final.status == 486
            await pbx.send(build_ack(aor, final), b.addr)
        finally:
            phone.writer.close()
        a.assert_alive()
        b.assert_alive()


async def test_301_learned_through_a_is_applied_by_b(
    proxy_factory: ProxyFactory, shared_redis: str,
) -> None:
    """A caller's INVITE through A goes to the upstream, which answers 301; A learns the
    rewrite. The same INVITE through B goes straight to the new target: B never asks the
    upstream."""
    async with (await UdpPeer.bind(free_port()) as up, await UdpPeer.bind(free_port()) as new,
                await UdpPeer.bind(free_port()) as caller):
        ups = [f"sip:{LOOPBACK}:{up.port}"]
        a = node(proxy_factory, shared_redis, "a", ups)
        b = node(proxy_factory, shared_redis, "b", ups)
        moved = f"sip:carol@{LOOPBACK}:{new.port}"

        async def one_call(proxy: ProxyProcess, expect_upstream: bool) -> None:
            call = new_call_id("moved")
            await caller.send(build_request(
                "INVITE", "sip:carol@example.net", via_host=LOOPBACK, via_port=caller.port,
                call_id=call, extra_headers=[f"Contact: <sip:caller@{LOOPBACK}:{caller.port}>"]),
                proxy.addr)
            if expect_upstream:
                inv, _ = await up.recv_sip(WAIT, lambda m: m.method == "INVITE")
                await up.send(build_response(inv, 301, "Moved Permanently",
                                             extra_headers=[f"Contact: <{moved}>"]), proxy.addr)
            inv2, _ = await new.recv_sip(WAIT, lambda m: m.method == "INVITE"
                                         and m.call_id == call)
            assert inv2.request_uri == moved
            await new.send(build_response(inv2, 486, "Busy Here"), proxy.addr)
            final = await final_of(caller, call)
            assert final.status == 486
            await caller.send(build_ack("sip:carol@example.net", final), proxy.addr)

        await one_call(a, expect_upstream=True)
        await holds(b, "learned_routes", 1)
        await one_call(b, expect_upstream=False)
        assert not [d for d in await up.quiet(0.3) if d.sip and d.sip.method == "INVITE"], \
            "B asked the upstream instead of applying the route learned through A"
        assert not [line for line in b.lines() if "learned sip:carol" in line]


# ----------------------------------------------------------------------------- outages


async def test_redis_killed_mid_run_calls_go_on_and_what_was_learned_is_written_back(
    proxy_factory: ProxyFactory, own_redis: RedisServer, sipp: Sipp,
) -> None:
    """Redis dies after the proxy started: 50 calls through it all complete; a 301 learned
    meanwhile is applied at once and written to Redis once it is back; the loss and the
    recovery are logged once each."""
    up_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{up_port}"],
                          extra={"state": own_redis.url})
    own_redis.kill()
    uas = await sipp.uas("uas_answer.xml", port=up_port, timeout=60, name="upstream")
    uac = await sipp.uac("uac_call.xml", proxy.addr, calls=50, rate=25, timeout=60,
                         name="callers")
    res = await uac.wait()
    await uas.stop()
    assert res.returncode == 0 and res.successful == 50 and res.failed == 0, res.describe()
    # A route learned while Redis is away: the PBX (the upstream) calls a URI whose server
    # answers 301 (trusted: the upstreams' host; the Contact an allowed target).
    async with await UdpPeer.bind(up_port) as pbx, \
            await UdpPeer.bind(free_port()) as redirector, await UdpPeer.bind(free_port()) as new:
        call = new_call_id("learn")
        old = f"sip:dave@{LOOPBACK}:{redirector.port}"
        moved = f"sip:dave@{LOOPBACK}:{new.port}"
        await pbx.send(pbx_invite(pbx, old, call), proxy.addr)
        inv, _ = await redirector.recv_sip(WAIT, lambda m: m.method == "INVITE")
        await redirector.send(build_response(inv, 301, "Moved Permanently",
                                             extra_headers=[f"Contact: <{moved}>"]), proxy.addr)
        inv2, _ = await new.recv_sip(WAIT, lambda m: m.method == "INVITE")
        await new.send(build_response(inv2, 486, "Busy Here"), proxy.addr)
        final = await final_of(pbx, call)
        assert final.status == 486
        await pbx.send(build_ack(old, final), proxy.addr)
    own_redis.start()
    # The recovery line follows the write-back (after the view is reloaded): await it.
    await proxy.await_log(" is back", timeout=10.0)
    raw = own_redis.cli("get", f"spp:route:{old}").strip()
    assert raw and json.loads(raw)["new_uri"] == moved, proxy.tail(30)
    lost = [line for line in proxy.lines() if "unreachable" in line]
    back = [line for line in proxy.lines() if " is back" in line]
    assert len(lost) == 1 and len(back) == 1, (lost, back)
    proxy.assert_alive()


async def test_proxy_starts_while_redis_is_down_and_relays_calls(
    proxy_factory: ProxyFactory,
) -> None:
    down = free_port(udp=False)
    async with await UdpPeer.bind(free_port()) as up, await UdpPeer.bind(free_port()) as caller:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{up.port}"],
                              extra={"state": f"redis://127.0.0.1:{down}/0"})
        assert [line for line in proxy.lines() if "unreachable" in line]
        call = new_call_id("nodb")
        await caller.send(build_request(
            "INVITE", "sip:erin@example.net", via_host=LOOPBACK, via_port=caller.port,
            call_id=call), proxy.addr)
        inv, _ = await up.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert inv.call_id == call
        await up.send(build_response(inv, 486, "Busy Here"), proxy.addr)
        final = await final_of(caller, call)
        assert final.status == 486
        await caller.send(build_ack("sip:erin@example.net", final), proxy.addr)
        proxy.assert_alive()
