"""Runtime control of upstreams end to end (README "Runtime control of upstreams"; issue 23:
"`upstreams drain` keeps calls up and sends no new ones; every node of a shared state obeys
it within 1 s; it survives a restart"), with two sipp PBXs (bench/uas_rr.xml, which copies
Record-Route, RFC 3261 12.1.1), the real CLI (``python -m proxy upstreams ...``) talking to
the proxy's HTTP side, a real redis-server and a sqlite file.

* ``drain`` while a call to PBX1 is up: the call's BYE still reaches PBX1 (its sipp counts
  the call successful only after the BYE), three new calls all go to PBX2;
* ``down`` survives a restart (sqlite): the restarted proxy lists it and sends the next call
  to PBX2; ``up`` sends the next one to PBX1 again;
* two proxies on one redis-server: a drain made through A is seen by B within a second, and
  B's next call goes to PBX2;
* a POST without the token is refused (401) and changes nothing; without ``http_token`` a
  POST is taken from 127.0.0.1 only (a stranger on 127.0.0.2 gets 403).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import (
    LOOPBACK,
    REPO,
    ProxyProcess,
    Sipp,
    SippResult,
    assert_calls,
    free_port,
    sipp_msgs,
)
from tests.e2e.test_redirect_e2e import restart
from tests.redis_harness import RedisServer

pytestmark = pytest.mark.e2e

UAS = str(REPO / "bench" / "uas_rr.xml")
TOKEN = "5e0c1b8a9d2f4e6a8c0b1d3f5a7c9e1b"
DOMAIN = "example.net"


def start_proxy(factory: ProxyFactory, pbx_ports: tuple[int, int], **extra: Any) -> ProxyProcess:
    config: dict[str, Any] = {"http": f"{LOOPBACK}:{free_port()}", "http_token": TOKEN}
    config.update(extra)
    config = {k: v for k, v in config.items() if v is not None}
    return factory(upstreams=[f"sip:{LOOPBACK}:{p}" for p in pbx_ports], extra=config)


def http_of(proxy: ProxyProcess) -> tuple[str, int]:
    host, _, port = str(proxy.config["http"]).rpartition(":")
    return host, int(port)


def cli(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``sip-policy-proxy upstreams ARGS --config`` the proxy's own proxy.yaml (its http: and
    http_token)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", "upstreams", *args, "--config", str(proxy.config_path)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


def listing(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    host, port = http_of(proxy)
    with urllib.request.urlopen(f"http://{host}:{port}/upstreams", timeout=5) as r:
        found = json.loads(r.read())
    return {u["upstream"]: u for u in found["upstreams"]}


def post(proxy: ProxyProcess, path: str, body: str, token: str | None,
         source: str = LOOPBACK) -> tuple[int, str]:
    """A raw POST (form-encoded) from ``source``; (status, body)."""
    host, port = http_of(proxy)
    conn = http.client.HTTPConnection(host, port, timeout=5, source_address=(source, 0))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


async def until_listed(proxy: ProxyProcess, upstream: str, key: str, value: object,
                       timeout: float = 5.0) -> float:
    """Wait (bounded) until GET /upstreams shows ``value`` for ``key`` of ``upstream``;
    returns how long it took."""
    start = time.monotonic()
    while True:
        got = (await asyncio.to_thread(listing, proxy))[upstream][key]
        if got == value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{upstream} {key} never {value!r}: {got!r}"
        await asyncio.sleep(0.05)  # bounded poll: the proxy raises no event a test can await


def invites(result: SippResult) -> int:
    return len(sipp_msgs(result, "received", lambda m: m.method == "INVITE"))


async def one_call(sipp: Sipp, proxy: ProxyProcess, name: str) -> None:
    caller = await sipp.uac("uac_call.xml", proxy.addr, calls=1, keys={"domain": DOMAIN},
                            timeout=20, name=name)
    assert_calls(await caller.wait(), 1)


async def test_drain_keeps_the_call_up_and_sends_new_calls_to_the_other_upstream(
    proxy_factory: ProxyFactory, sipp: Sipp,
) -> None:
    ports = (free_port(), free_port())
    pbx1 = await sipp.uas(UAS, port=ports[0], calls=1, timeout=30, name="pbx1")
    pbx2 = await sipp.uas(UAS, port=ports[1], calls=3, timeout=30, name="pbx2")
    proxy = start_proxy(proxy_factory, ports)
    up1, up2 = (f"sip:{LOOPBACK}:{p}" for p in ports)
    long_call = await sipp.uac("uac_call.xml", proxy.addr, calls=1, duration_ms=4000,
                               keys={"domain": DOMAIN}, timeout=30, name="long")
    await until_listed(proxy, up1, "calls", 1)  # the call is up, to PBX1
    done = cli(proxy, "drain", up1)
    assert done.returncode == 0, done.stderr
    assert f"{up1}: drain (was up" in done.stdout
    proxy.wait_for_log(f"upstream {up1} drained", timeout=2)
    shown = cli(proxy, "list")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith(up1))
    assert row.split()[1:4] == ["default", "off", "drain"] and row.split()[-1] == "1"
    new_calls = await sipp.uac("uac_call.xml", proxy.addr, calls=3, keys={"domain": DOMAIN},
                               timeout=30, name="new")
    assert_calls(await new_calls.wait(), 3)
    assert (await asyncio.to_thread(listing, proxy))[up1]["calls"] == 1  # still up meanwhile
    assert_calls(await long_call.wait(), 1)
    pbx2_res = await pbx2.wait()
    assert_calls(pbx2_res, 3)
    assert invites(pbx2_res) == 3
    pbx1_res = await pbx1.wait()
    assert_calls(pbx1_res, 1)  # sipp's UAS ends its call with the 200 to the BYE
    assert invites(pbx1_res) == 1
    assert len(sipp_msgs(pbx1_res, "received", lambda m: m.method == "BYE")) == 1
    await until_listed(proxy, up1, "calls", 0)
    assert (await asyncio.to_thread(listing, proxy))[up2]["admin"] == "up"


async def test_down_survives_a_restart_and_up_brings_the_upstream_back(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path,
) -> None:
    ports = (free_port(), free_port())
    pbx1 = await sipp.uas(UAS, port=ports[0], timeout=60, name="pbx1")
    pbx2 = await sipp.uas(UAS, port=ports[1], timeout=60, name="pbx2")
    proxy = start_proxy(proxy_factory, ports, state=f"sqlite:{tmp_path / 'state.db'}",
                        node="node-a")
    up1 = f"sip:{LOOPBACK}:{ports[0]}"
    done = cli(proxy, "down", f"{LOOPBACK}:{ports[0]}")  # host:port names it too
    assert done.returncode == 0, done.stderr
    assert f"{up1}: down (was up" in done.stdout and "unreachable" not in done.stdout
    restarted = await restart(proxy_factory, proxy)
    restarted.wait_for_log(re.compile(f"upstream {re.escape(up1)} down: .*read from the state "
                                      "store"), timeout=2)
    row = (await asyncio.to_thread(listing, restarted))[up1]
    assert (row["admin"], row["by"], row["probe"]) == ("down", "node-a", "off")
    await one_call(sipp, restarted, "after-restart")  # to PBX2
    done = cli(restarted, "up", up1)
    assert done.returncode == 0, done.stderr
    assert f"{up1}: up (was down" in done.stdout
    await one_call(sipp, restarted, "after-up")  # to PBX1, the first again
    host, port = http_of(restarted)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert (f'sip_policy_proxy_upstream_admin_state{{state="up",upstream="{up1}"}} 1.0'
            in metrics)
    r1, r2 = await pbx1.stop(), await pbx2.stop()
    assert (invites(r1), invites(r2)) == (1, 1)
    assert (r1.successful, r2.successful) == (1, 1)


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
async def test_a_drain_through_one_node_is_obeyed_by_the_other_within_a_second(
    proxy_factory: ProxyFactory, sipp: Sipp, backend: str, request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Redis: pub/sub, at once; sqlite (two proxies on one file): the once-a-second poll of
    the store's generation, so within a second and the time to read the file."""
    if backend == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.cli("flushall")
        state, bound = redis_server.url, 1.0
    else:
        state, bound = f"sqlite:{tmp_path / 'shared.db'}", 1.5
    ports = (free_port(), free_port())
    pbx2 = await sipp.uas(UAS, port=ports[1], calls=1, timeout=30, name="pbx2")
    a = start_proxy(proxy_factory, ports, state=state, node="a")
    b = start_proxy(proxy_factory, ports, state=state, node="b")
    up1 = f"sip:{LOOPBACK}:{ports[0]}"
    done = cli(a, "drain", up1)
    assert done.returncode == 0, done.stderr
    took = await until_listed(b, up1, "admin", "drain", timeout=bound)
    print(f"{backend}: node b obeyed the drain made through node a in {took * 1000:.0f} ms")
    b.wait_for_log(re.compile(f"upstream {re.escape(up1)} drained: .*set by node a, read from "
                              "the state store"), timeout=1)
    await one_call(sipp, b, "through-b")
    res = await pbx2.wait()
    assert_calls(res, 1)
    assert invites(res) == 1
    # a third node started later finds it in the store
    c = start_proxy(proxy_factory, ports, state=state, node="c")
    assert (await asyncio.to_thread(listing, c))[up1]["admin"] == "drain"


async def test_a_post_without_the_token_is_refused_and_changes_nothing(
    proxy_factory: ProxyFactory,
) -> None:
    ports = (free_port(), free_port())
    proxy = start_proxy(proxy_factory, ports)
    up1 = f"sip:{LOOPBACK}:{ports[0]}"
    for token in (None, "not-the-token"):
        status, _ = post(proxy, "/upstreams/down", f"upstream={up1}", token)
        assert status == 401
    assert listing(proxy)[up1]["admin"] == "up"
    status, body = post(proxy, "/upstreams/down", f"upstream={up1}", TOKEN)
    assert status == 200 and json.loads(body)["admin"] == "down"
    status, body = post(proxy, "/upstreams/down", "upstream=sip:192.0.2.1:5060", TOKEN)
    assert status == 404 and "not an upstream" in body
    status, _ = post(proxy, "/upstreams/maintenance", f"upstream={up1}", TOKEN)
    assert status == 404
    # without a token the CLI is refused too, exit 1
    bare = subprocess.run(
        [sys.executable, "-m", "proxy", "upstreams", "up", up1, "--http",
         str(proxy.config["http"])], cwd=REPO, capture_output=True, text=True, timeout=30,
        check=False)
    assert bare.returncode == 1 and "refused (401)" in bare.stderr
    assert listing(proxy)[up1]["admin"] == "down"


async def test_without_a_token_only_the_loopback_may_post(
    proxy_factory: ProxyFactory,
) -> None:
    ports = (free_port(), free_port())
    proxy = start_proxy(proxy_factory, ports, http_token=None)
    up1 = f"sip:{LOOPBACK}:{ports[0]}"
    status, body = post(proxy, "/upstreams/drain", f"upstream={up1}", None, source="127.0.0.2")
    assert status == 403 and "http_token" in body
    assert listing(proxy)[up1]["admin"] == "up"
    proxy.wait_for_log("refused POST '/upstreams/drain' from 127.0.0.2", timeout=2)
    status, _ = post(proxy, "/upstreams/drain", f"upstream={up1}", None)
    assert status == 200
    assert listing(proxy)[up1]["admin"] == "drain"
    host, port = http_of(proxy)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        assert 'sip_policy_proxy_http_refused_total{reason="not_loopback"} 1.0' in \
            r.read().decode()
