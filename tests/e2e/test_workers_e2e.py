"""``workers: 2`` end to end (README "Workers"): one supervisor, two worker processes on the
same UDP and TCP address (SO_REUSEPORT), sipp callers and a sipp PBX over loopback.

* Calls from many source ports (sipp ``-t un``: a socket per call; ``-t tn``: a connection per
  call) all complete, and both workers took some (each worker's /metrics, on the http port
  plus its index).
* With ``workers_spread: call``, calls from ONE source port (a PBX trunk's socket) are
  spread over both workers too (proxy.runtime.handoff): the kernel picks a worker at random,
  the worker that reads a request another holds hands it on; retransmissions and the CANCEL
  of an INVITE reach the worker of its Call-ID, whose own port the PBX sees in the Via, and
  the PBX gets each INVITE once. Without it (the default) nothing is handed on.
* A worker killed with SIGKILL is restarted by the supervisor (logged) and calls go on through
  both workers.
* SIGTERM to the supervisor drains every worker (calls up end with their BYE) and the
  supervisor exits 0.
* A request whose flow token names a TCP connection held by the other worker gets 430 Flow
  Failed (RFC 5626 5.3) with ``state: memory:``, and is passed to the holding worker with a
  Redis state; the worker that holds it sends it over the connection.
* SIGHUP reloads the policy in both workers; a shared port that cannot be bound stops the
  supervisor with exit 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.runtime.handoff import owner
from tests.e2e.harness import LOOPBACK, REPO, ProxyProcess, Sipp, free_port
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
from tests.redis_harness import RedisServer

pytestmark = pytest.mark.e2e

DOMAIN = "example.net"
READY = re.compile(r"worker (\d+) ready \(pid (\d+), own UDP port (\d+)\)")


def start(proxy_factory: Callable[..., ProxyProcess], pbx_port: int,
          **extra: object) -> tuple[ProxyProcess, int]:
    http = free_port(span=2, udp=False)
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], drain_timeout=10,
                          extra={"workers": 2, "http": f"{LOOPBACK}:{http}", **extra})
    return proxy, http


def workers(proxy: ProxyProcess, since: int = 0) -> dict[int, tuple[int, int]]:
    """Worker index -> (pid, own UDP port), from the latest ready line of each."""
    out: dict[int, tuple[int, int]] = {}
    for line in proxy.lines()[since:]:
        m = READY.search(line)
        if m:
            out[int(m[1])] = (int(m[2]), int(m[3]))
    return out


def via_port(msg: SipMessage) -> int | None:
    top = msg.top_via
    return None if top is None else via_sent_by(top)[2]


def metric(http: int, index: int, name: str, label: str) -> int:
    """Counter ``name{label}`` of worker ``index`` (its /metrics on the http port plus its
    index)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{http + index}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^sip_policy_proxy_{name}_total\{{{re.escape(label)}\}} (\S+)$', text, re.M)
    return int(float(m[1])) if m else 0


def handoffs_shown(http: int, index: int) -> bool:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{http + index}/metrics", timeout=5) as r:
        return "sip_policy_proxy_handoffs_total" in r.read().decode()


def invites(http: int, index: int) -> int:
    """INVITEs received by worker ``index``."""
    return metric(http, index, "requests", 'method="INVITE"')


async def calls(sipp: Sipp, proxy: ProxyProcess, n: int, transport: str = "udp",
                duration_ms: int = 0) -> None:
    """``n`` calls, each from a source port of its own (sipp ``-t un`` / ``-t tn``)."""
    caller = await sipp.uac("uac_call.xml", proxy.addr, transport=transport, calls=n, rate=20,
                            keys={"domain": DOMAIN}, duration_ms=duration_ms, timeout=60,
                            extra=["-t", "un" if transport == "udp" else "tn",
                                   "-max_socket", "100"], name="caller")
    res = await caller.wait()
    assert res.returncode == 0 and res.successful == n and res.failed == 0, res.describe()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_calls_from_many_ports_complete_and_both_workers_take_some(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, transport: str,
) -> None:
    pbx_port = free_port()
    proxy, http = start(proxy_factory, pbx_port)
    assert sorted(workers(proxy)) == [0, 1]
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    await calls(sipp, proxy, 40, transport)
    pbx_res = await pbx.stop(grace=3.0)
    assert pbx_res.successful == 40 and pbx_res.failed == 0, pbx_res.describe()
    taken = [invites(http, 0), invites(http, 1)]
    assert sum(taken) == 40 and min(taken) > 0, taken
    # the default spread (by source) hands nothing on: no hand-off exists
    assert not any(handoffs_shown(http, i) for i in (0, 1))
    # the PBX saw each worker's own port in the Via (RFC 3261 18.2.2), the shared address in
    # the Record-Route
    own = {port for _, port in workers(proxy).values()}
    vias = {via_port(m.sip) for m in pbx_res.messages()
            if m.direction == "received" and m.sip is not None and m.sip.method == "INVITE"}
    assert vias == own, (vias, own)
    proxy.assert_alive()


async def test_calls_from_one_source_port_are_spread_over_both_workers(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp,
) -> None:
    """``workers_spread: call``: one sipp socket places every call (as a PBX trunk does):
    the kernel's hash alone would give them all to one worker; both take some, each call
    completes, and the PBX gets each INVITE once."""
    pbx_port = free_port()
    proxy, http = start(proxy_factory, pbx_port, workers_spread="call")
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, calls=40, rate=40,
                            keys={"domain": DOMAIN}, timeout=60, name="caller")
    res = await caller.wait()
    assert res.returncode == 0 and res.successful == 40 and res.failed == 0, res.describe()
    pbx_res = await pbx.stop(grace=3.0)
    assert pbx_res.successful == 40 and pbx_res.failed == 0, pbx_res.describe()
    got = [m.sip.call_id for m in pbx_res.messages()
           if m.direction == "received" and m.sip is not None and m.sip.method == "INVITE"]
    assert len(got) == len(set(got)) == 40
    taken = [invites(http, 0), invites(http, 1)]
    assert sum(taken) == 40 and min(taken) > 0, taken
    assert all(handoffs_shown(http, i) for i in (0, 1))
    passed = [metric(http, i, "handoffs", 'result="passed"') for i in (0, 1)]
    handed = [metric(http, i, "handoffs", 'result="taken"') for i in (0, 1)]
    assert min(passed) > 0 and sum(passed) == sum(handed), (passed, handed)
    proxy.assert_alive()


async def test_retransmissions_and_cancel_reach_the_worker_holding_the_invite(
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    """``workers_spread: call``, from one source port: an INVITE, five retransmissions of it
    and its CANCEL, each read by a worker the kernel picks at random. The worker of the Call-ID holds the transaction
    (its own port is in the Via the PBX sees) and absorbs the retransmissions, answering each
    with the last provisional response (RFC 3261 17.2.1); the PBX gets the INVITE once and
    the CANCEL with the INVITE's branch (RFC 3261 9.1, 16.10); the 487 reaches the caller and
    its ACK the PBX. Calls of both workers' Call-IDs."""
    caller = await UdpPeer.bind()
    pbx = await UdpPeer.bind()
    try:
        proxy, http = start(proxy_factory, pbx.port, workers_spread="call")
        own = {index: port for index, (_, port) in workers(proxy).items()}
        ports = {port: index for index, port in own.items()}
        for n in range(4):
            call_id = new_call_id(f"spread{n}")
            while owner(b"INVITE sip:x SIP/2.0\r\nCall-ID: %s\r\n\r\n" % call_id.encode(), 2,
                        ports) != n % 2:
                call_id = new_call_id(f"spread{n}")
            uri = f"sip:bob@{DOMAIN}"
            invite = build_request("INVITE", uri, via_host=LOOPBACK, via_port=caller.port,
                                   call_id=call_id, from_uri=f"sip:alice@{DOMAIN}",
                                   from_tag=f"c{n}", branch=f"z9hG4bK-spread-{n}")
            await caller.send(invite, proxy.addr)
            await caller.recv_sip(5, lambda m: m.status == 100)  # RFC 3261 16.2
            got, addr = await pbx.recv_sip(5, lambda m, c=call_id: m.method == "INVITE"
                                           and m.call_id == c)
            assert via_port(got) == own[n % 2], (via_port(got), own)
            await pbx.send(build_response(got, 180, "Ringing", to_tag=f"p{n}"), addr)
            await caller.recv_sip(5, lambda m: m.status == 180)
            for _ in range(5):
                await caller.send(invite, proxy.addr)
                again, _ = await caller.recv_sip(5, lambda m: m.status is not None)
                assert again.status == 180 and again.call_id == call_id, again.start_line
            cancel = build_request("CANCEL", uri, via_host=LOOPBACK, via_port=caller.port,
                                   call_id=call_id, from_uri=f"sip:alice@{DOMAIN}",
                                   from_tag=f"c{n}", branch=f"z9hG4bK-spread-{n}")
            await caller.send(cancel, proxy.addr)
            ok, _ = await caller.recv_sip(5, lambda m: m.status == 200)
            assert (ok.cseq or (0, ""))[1] == "CANCEL"
            cancelled, _ = await pbx.recv_sip(5, lambda m: m.method == "CANCEL")
            assert cancelled.call_id == call_id and cancelled.top_via == got.top_via
            await pbx.send(build_response(cancelled, 200, "OK", to_tag=f"p{n}"), addr)
            await pbx.send(build_response(got, 487, "Request Terminated", to_tag=f"p{n}"), addr)
            final, _ = await caller.recv_sip(5, lambda m: m.status == 487)
            await caller.send(build_ack(uri, final), proxy.addr)
            ack, _ = await pbx.recv_sip(5, lambda m: m.method == "ACK")
            assert ack.call_id == call_id
            # the PBX got this INVITE once: nothing else of the call is on its way
            extra = [d.sip for d in await pbx.quiet(0.3) if d.sip is not None]
            assert not [m for m in extra if m.method == "INVITE"], extra
        assert sum(invites(http, i) for i in (0, 1)) >= 4
        passed = [metric(http, i, "handoffs", 'result="passed"') for i in (0, 1)]
        assert sum(passed) > 0, passed
        proxy.assert_alive()
    finally:
        caller.close()
        pbx.close()


async def test_a_killed_worker_is_restarted_and_calls_go_on(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp,
) -> None:
    pbx_port = free_port()
    proxy, http = start(proxy_factory, pbx_port)
    pid, _ = workers(proxy)[1]
    mark = proxy.mark()
    os.kill(pid, signal.SIGKILL)
    await proxy.await_log("worker 1 killed by SIGKILL", since=mark)
    await proxy.await_log("restarting it in", since=mark)
    await proxy.await_log(READY, timeout=15, since=proxy.mark() - 1)
    again = workers(proxy, mark)
    assert 1 in again and again[1][0] != pid
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    await calls(sipp, proxy, 30)
    await pbx.stop(grace=3.0)
    taken = [invites(http, 0), invites(http, 1)]
    assert sum(taken) == 30 and min(taken) > 0, taken


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp,
) -> None:
    pbx_port = free_port()
    proxy, http = start(proxy_factory, pbx_port)
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=60, name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, calls=16, rate=50, keys={"domain": DOMAIN},
                            duration_ms=3000, timeout=60,
                            extra=["-t", "un", "-max_socket", "100"], name="caller")

    async def all_up() -> None:
        while invites(http, 0) + invites(http, 1) < 16:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(all_up(), 15)
    both = [invites(http, 0), invites(http, 1)]
    assert min(both) > 0, both  # each worker holds calls as the drain starts
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    res = await caller.wait()
    # calls up at the SIGTERM end with their BYE through the draining workers
    assert res.successful == 16 and res.failed == 0, res.describe()
    rc = await asyncio.to_thread(proxy.stop, 15.0)
    assert rc == 0, proxy.tail()
    lines = proxy.lines()[mark:]
    assert sum("stopping: no new transactions" in line for line in lines) == 2, proxy.tail()
    assert any("all workers stopped" in line for line in lines)
    await pbx.stop(grace=3.0)


@pytest.mark.parametrize("state", ["memory", "redis"])
async def test_a_flow_held_by_the_other_worker(
    proxy_factory: Callable[..., ProxyProcess], request: pytest.FixtureRequest, state: str,
) -> None:
    """A caller over TCP: the worker that accepted its connection puts a flow token naming it
    in the Record-Route (RFC 5626 5.2). An in-dialog request from the PBX carrying that
    token, sent to the other worker's own port: with ``state: memory:`` it gets 430 Flow
    Failed (RFC 5626 5.3: the connection is not this process's); with Redis the token names
    the holding worker (a node of the shared state), which gets it and sends it over the
    connection. Sent to the holder's port, it goes over the connection."""
    extra: dict[str, object] = {}
    if state == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.cli("flushall")
        extra["state"] = server.url
    pbx = await UdpPeer.bind()
    try:
        proxy, _ = start(proxy_factory, pbx.port, **extra)
        stream = await SipStream.connect(LOOPBACK, proxy.port)
        call_id = new_call_id()
        lport = stream.local[1]
        invite = build_request(
            "INVITE", f"sip:bob@{DOMAIN}", transport="TCP", via_host=LOOPBACK, via_port=lport,
            call_id=call_id, from_uri=f"sip:alice@{DOMAIN}", from_tag="caller1",
            extra_headers=[f"Contact: <sip:alice@{LOOPBACK}:{lport};transport=tcp>"])
        await stream.send(invite)
        got, addr = await pbx.recv_sip(5, lambda m: m.method == "INVITE")
        holder_port = via_port(got)
        own = {port: index for index, (_, port) in workers(proxy).items()}
        assert holder_port in own, (holder_port, own)
        other_port = next(p for p in own if p != holder_port)
        route = [v.strip() for v in ",".join(got.get_all("record-route")).split(",")]
        await pbx.send(build_response(got, 200, "OK", to_tag="pbx1", extra_headers=[
            f"Contact: <sip:bob@{LOOPBACK}:{pbx.port}>"]), addr)
        ok = await stream.recv_sip(5, lambda m: m.status == 200)
        assert ok.call_id == call_id
        # RFC 3261 12.2.1.1: the PBX's route set is the Record-Route, in order
        def bye(branch: str) -> bytes:
            return build_request(
                "BYE", f"sip:alice@{LOOPBACK}:{lport};transport=tcp", via_host=LOOPBACK,
                via_port=pbx.port, call_id=call_id, from_uri=f"sip:bob@{DOMAIN}",
                from_tag="pbx1", to_uri=f"sip:alice@{DOMAIN}", to_tag="caller1", branch=branch,
                extra_headers=[f"Route: {', '.join(route)}"])

        await pbx.send(bye("z9hG4bK-w-elsewhere"), (LOOPBACK, other_port))
        if state == "memory":
            refused, _ = await pbx.recv_sip(5, lambda m: m.status is not None and m.status > 100)
            assert refused.status == 430, refused.start_line
        else:
            relayed = await stream.recv_sip(5, lambda m: m.method == "BYE")
            assert relayed.call_id == call_id
            vias = [via_sent_by(v)[2] for v in relayed.vias]
            assert vias[:2] == [proxy.port, other_port], vias  # through both workers
            await stream.send(build_response(relayed, 200, "OK", to_tag=None))
            done, _ = await pbx.recv_sip(5, lambda m: m.status == 200 and m.method is None
                                         and (m.cseq or (0, ""))[1] == "BYE")
            assert done.call_id == call_id
        await pbx.send(bye("z9hG4bK-w-holder"), (LOOPBACK, holder_port))
        relayed = await stream.recv_sip(5, lambda m: m.method == "BYE")
        assert relayed.call_id == call_id
        await stream.close()
    finally:
        pbx.close()


async def test_sighup_reloads_the_policy_in_every_worker(
    proxy_factory: Callable[..., ProxyProcess],
) -> None:
    proxy, _ = start(proxy_factory, free_port(), watch_policy=False)
    policy = proxy.workdir / "policy.yaml"
    policy.write_text(policy.read_text() + "  - name: added-by-the-test\n"
                      "    match: {status: 499}\n    action: forward\n")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    await proxy.await_log("SIGHUP: reloading the workers", since=mark)

    async def reloaded() -> None:
        while sum("policy reloaded:" in line for line in proxy.lines()[mark:]) < 2:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(reloaded(), 10)
    assert sum("policy reloaded:" in line for line in proxy.lines()[mark:]) == 2


def test_a_worker_that_cannot_listen_stops_the_proxy_with_exit_1(tmp_path: Path) -> None:
    """The shared port is taken by a socket without SO_REUSEPORT: no worker can bind it, and
    the supervisor exits 1 rather than restart them for ever."""
    port = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind((LOOPBACK, port))
    try:
        (tmp_path / "proxy.yaml").write_text(
            f"listen: [udp:{LOOPBACK}:{port}]\nworkers: 2\nupstream_probe: {{interval: 0}}\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        done = subprocess.run([sys.executable, "-m", "proxy", "run", "--config",
                               str(tmp_path / "proxy.yaml")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    finally:
        taken.close()
    assert done.returncode == 1, done.stderr
    assert "cannot listen" in done.stderr
    assert "a worker could not start: stopping the others" in done.stderr
    assert "sip-policy-proxy ready" not in done.stderr
