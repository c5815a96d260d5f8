"""Seeing what the proxy does, end to end: /metrics after real calls, /health and /ready
(also while draining), the per-call log line (text and JSON), upstream probing with a silent
upstream, a SIGTERM drain that keeps 20 calls up until their BYEs, and `status`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import LOOPBACK, REPO, ProxyProcess, Sipp, free_port

pytestmark = pytest.mark.e2e

DOMAIN = "example.net"


def get(proxy: ProxyProcess, path: str) -> tuple[int, str]:
    """GET http://HTTP-ENDPOINT/path -> (status, body); (0, error) when nobody answers."""
    host, port = proxy.config["http"].rsplit(":", 1)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


async def aget(proxy: ProxyProcess, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, proxy, path)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, None when absent (the library writes
    the labels sorted by name)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"sip_policy_proxy_{name}") + (r"\{" + re.escape(want) + r"\}"
                                                        if want else "") + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return None


def http_config(**extra: object) -> dict[str, object]:
    return {"http": f"{LOOPBACK}:{free_port(udp=False)}", **extra}


async def a_603_call(proxy_factory: Callable[..., ProxyProcess], sipp: Sipp,
                     **extra: object) -> ProxyProcess:
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], extra=http_config(**extra))
    pbx = await sipp.uas("pol_uas_reject.xml", port=pbx_port, name="pbx")
    caller = await sipp.uac("pol_uac_expect_final.xml", proxy.addr, calls=1,
                            keys={"domain": DOMAIN}, name="caller")
    res = await caller.wait()
    assert res.successful == 1, res.describe()
    await pbx.stop(grace=2.0)
    return proxy


async def test_metrics_health_and_ready_after_a_603_call(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    proxy = await a_603_call(proxy_factory, sipp)
    assert await aget(proxy, "/health") == (200, "ok\n")
    assert await aget(proxy, "/ready") == (200, "ready\n")
    status, text = await aget(proxy, "/metrics")
    assert status == 200
    assert (metric(text, "requests_total", method="INVITE") or 0) >= 1
    assert (metric(text, "responses_total", code="603") or 0) >= 1
    assert (metric(text, "policy_decisions_total", rule="global-failure", action="stop")
            or 0) >= 1
    assert metric(text, "final_response_seconds_count") == 1
    up = proxy.config["upstreams"][0]
    assert metric(text, "upstream_up", upstream=up, group="default",
                  target="udp:" + up.split(":", 1)[1]) == 1
    assert metric(text, "transactions") is not None and metric(text, "dialogs") == 0
    assert "process_resident_memory_bytes" in text
    # the per-call line, in text
    line = proxy.wait_for_log("proxy.calls")
    assert "Call-ID=" in line and "global-failure:stop(603)" in line and "status=603" in line


async def test_json_logs_one_object_per_line_with_the_call(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    proxy = await a_603_call(proxy_factory, sipp, log_format="json")
    await proxy.await_log('"proxy.calls"')
    objs = [json.loads(line) for line in proxy.lines() if line.strip()]
    calls = [o for o in objs if o["logger"] == "proxy.calls"]
    assert len(calls) == 1
    call = calls[0]["call"]
    assert call["status"] == 603 and call["call_id"]
    assert {"rule": "global-failure", "action": "stop", "status": 603} in call["decisions"]
    assert any(o["message"] == "sip-policy-proxy ready" for o in objs)
    # the start-up line names the version and the build that runs (compiled or pure)
    from proxy import __version__, build_kind

    assert f"sip-policy-proxy {__version__}, {build_kind()}" in [o["message"] for o in objs]


async def test_debug_shows_messages_and_decisions(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    proxy = await a_603_call(proxy_factory, sipp, log_level="debug")
    await proxy.await_log("decision Call-ID")
    text = "\n".join(proxy.lines())
    assert re.search(r"proxy\.messages: in  INVITE sip:\S+ SIP/2\.0 from 127\.0\.0\.1:\d+/udp "
                     r"Call-ID \S+", text)
    assert re.search(r"proxy\.messages: out SIP/2\.0 603 Decline to 127\.0\.0\.1:\d+/udp", text)
    assert "global-failure: stop" in text


async def test_a_silent_upstream_is_probed_down_and_skipped(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        silent.bind((LOOPBACK, 0))
        silent.setblocking(False)
        await silent_upstream_skipped(proxy_factory, sipp, silent)
    finally:
        silent.close()


async def silent_upstream_skipped(proxy_factory: Callable[..., ProxyProcess], sipp: Sipp,
                                  silent: socket.socket) -> None:
    pbx_port = free_port()
    pbx = await sipp.uas("uas_answer_options.xml", port=pbx_port, name="pbx")
    silent_uri = f"sip:{LOOPBACK}:{silent.getsockname()[1]}"
    pbx_uri = f"sip:{LOOPBACK}:{pbx_port}"
    proxy = proxy_factory(upstreams=[silent_uri, pbx_uri], extra=http_config(
        upstream_probe={"interval": 1, "timeout": 1}))
    try:
        await proxy.await_log(f"upstream {silent_uri} is down", timeout=6)
        # Three probe rounds (each a new branch; a retransmission keeps its round's): the
        # silent upstream stays down round after round, and the PBX, probed in the same
        # rounds, answers each and stays up (checked below).
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        rounds: set[bytes] = set()
        async with asyncio.timeout(10):
            while len(rounds) < 3:
                got.append(await loop.sock_recv(silent, 65535))
                branch = re.search(rb"branch=([^;,\s]+)", got[-1])
                assert branch is not None, got[-1][:200]
                rounds.add(branch.group(1))
        t0 = time.monotonic()
        caller = await sipp.uac("uac_call.xml", proxy.addr, calls=1, keys={"domain": DOMAIN},
                                name="caller")
        res = await caller.wait()
        took = time.monotonic() - t0
        assert res.successful == 1, res.describe()
        assert took < 2.0, took
        _, text = await aget(proxy, "/metrics")
        assert metric(text, "upstream_up", upstream=silent_uri, group="default",
                      target="udp:" + silent_uri[4:]) == 0
        assert metric(text, "upstream_up", upstream=pbx_uri, group="default",
                      target="udp:" + pbx_uri[4:]) == 1
        while True:
            try:
                got.append(silent.recv(65535))
            except BlockingIOError:
                break
        assert got and all(d.startswith(b"OPTIONS ") for d in got), [d[:20] for d in got]
        assert not any(f"upstream {pbx_uri} is down" in line for line in proxy.lines())
    finally:
        await pbx.stop(grace=3.0)


async def test_sigterm_keeps_20_calls_up_until_their_byes(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], drain_timeout=30,
                          extra=http_config())
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, calls=20, rate=40, limit=20,
                            duration_ms=3000, keys={"domain": DOMAIN}, name="caller")
    seen: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        _, text = await aget(proxy, "/metrics")
        seen.append(metric(text, "dialogs") or 0)
        if seen[-1] >= 20:
            break
        await asyncio.sleep(0.05)  # bounded poll of the gauge: it changes with no event
    assert seen[-1] == 20, seen
    proxy.stopped_by_us = True
    proxy.send_signal(15)
    assert (await aget(proxy, "/ready"))[0] == 503
    # new calls are refused while draining; calls up go on
    while proxy.alive():
        status, text = await aget(proxy, "/metrics")
        if status != 200:
            break
        seen.append(metric(text, "dialogs") or 0)
        await asyncio.sleep(0.05)  # the gauge sampled while the calls drain
    res = await caller.wait()
    assert res.successful == 20 and res.failed == 0, res.describe()
    pbx_res = await pbx.stop(grace=3.0)
    assert pbx_res.successful == 20, pbx_res.describe()  # 20 BYEs received and answered
    assert proxy.proc is not None
    assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    top = seen.index(20)
    assert min(seen[top:]) < 20, seen  # the gauge fell as the BYEs went through
    assert any("draining 0 transactions and 20 calls" in line
               or "and 20 calls" in line for line in proxy.lines())


async def test_status_prints_the_table(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    up = f"sip:{LOOPBACK}:{free_port()}"
    proxy = proxy_factory(upstreams=[up], extra=http_config())
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy", "status", "--config",
                         str(proxy.config_path)],
        capture_output=True, text=True, timeout=20, cwd=REPO)
    assert out.returncode == 0, out.stderr
    table = out.stdout
    assert re.search(rf"upstream {re.escape(up)} \(default\) +up \(not probed\)", table), table
    for row in ("registrations", "learned routes", "transactions in progress", "calls up",
                "policy version", "uptime"):
        assert re.search(rf"^{row} +\S", table, re.MULTILINE), (row, table)
    assert re.search(r"^state +serving$", table, re.MULTILINE)
