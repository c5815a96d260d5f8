"""Policy reload end to end, as an operator meets it (issue: rough edges found in use):

* SIGHUP right after saving a file, while the file watcher (1 s poll) sees the same change:
  one `policy reload refused` (or `policy reloaded`) line and one count of
  `policy_reloads_total` per change, not two.
* A large policy file is parsed off the event loop: an OPTIONS sent while it is being parsed
  is answered before the reload ends (the messages are logged at debug in the order they
  leave the process, so the log shows it).
* A file over the size bound (1 MiB) is refused at once with `FILE:1:1` naming the bound.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.wire import UdpPeer, build_request, new_call_id

pytestmark = pytest.mark.e2e

ProxyFactory = Callable[..., ProxyProcess]

GOOD = """rules:
  - name: unavailable
    match: {status: 503}
    action: failover
"""
BROKEN = """rules:
  - name: broken-rule
    action: explode
    match: {status: 600}
"""
OTHER = GOOD.replace("503", "[500, 503]")


def replace_file(path: Path, text: str) -> None:
    """Save by rename, as editors do: the watcher and the reload never see a half file."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def reloads(proxy: ProxyProcess) -> dict[str, float]:
    host, port = proxy.config["http"].rsplit(":", 1)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'^sip_policy_proxy_policy_reloads_total\{result="(\w+)"\} (\S+)$',
                       text, re.MULTILINE)
    return {result: float(v) for result, v in found}


def count(proxy: ProxyProcess, since: int, text: str) -> int:
    return sum(text in line for line in proxy.lines()[since:])


@pytest.mark.parametrize(("text", "result", "line"), [
    (BROKEN, "refused", "policy reload refused"),
    (OTHER, "ok", "policy reloaded: "),
], ids=["broken", "valid"])
async def test_sighup_after_a_change_logs_once_and_counts_once(
    proxy_factory: ProxyFactory, text: str, result: str, line: str
) -> None:
    proxy = proxy_factory(policy_text=GOOD, log_level="debug",
                          extra={"http": f"{LOOPBACK}:{free_port(udp=False)}"})
    policy_path = proxy.workdir / "policy.yaml"
    mark = proxy.mark()
    replace_file(policy_path, text)
    proxy.send_signal(signal.SIGHUP)
    # both triggers fire for this change: SIGHUP now, the watcher within its 1 s poll
    await proxy.await_log("policy reload (SIGHUP)", timeout=10.0, since=mark)
    await proxy.await_log("policy reload (file changed on disk)", timeout=10.0, since=mark)
    await proxy.await_log("unchanged since it was last read", timeout=10.0, since=mark)
    assert count(proxy, mark, line) == 1, proxy.tail()
    if result == "refused":
        assert count(proxy, mark, "policy.yaml:3:") == 1, proxy.tail()  # the position, once
    other = "ok" if result == "refused" else "refused"
    assert await asyncio.to_thread(reloads, proxy) == {result: 1.0, other: 0.0}
    # a second SIGHUP with nothing changed: a no-op, still one line and one count
    again = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    await proxy.await_log("unchanged since it was last read", timeout=10.0, since=again)
    assert count(proxy, mark, line) == 1, proxy.tail()
    assert await asyncio.to_thread(reloads, proxy) == {result: 1.0, other: 0.0}


def slow_policy(size: int) -> str:
    """A valid policy of about ``size`` bytes: thousands of rules, about a second to parse."""
    out, n, total = ["rules:\n"], 0, 7
    while total < size - 100:
        rule = f"  - name: r{n}\n    match: {{status: {100 + n % 600}}}\n    action: forward\n"
        out.append(rule)
        total += len(rule)
        n += 1
    return "".join(out)


async def test_the_loop_answers_while_a_large_policy_is_parsed(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(policy_text=GOOD, log_level="debug", extra={"watch_policy": False})
    replace_file(proxy.workdir / "policy.yaml", slow_policy(256 * 1024))
    async with await UdpPeer.bind() as peer:
        mark = proxy.mark()
        proxy.send_signal(signal.SIGHUP)
        await proxy.await_log("policy reload (SIGHUP): reading", timeout=10.0, since=mark)
        cid = new_call_id("during-reload")
        # Max-Forwards 0: the proxy answers it itself (RFC 3261 16.3 step 3)
        await peer.send(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}",
                                      via_host=LOOPBACK, via_port=peer.port, call_id=cid,
                                      max_forwards=0), proxy.addr)
        answer, _ = await peer.recv_sip(30.0, lambda m: m.call_id == cid and not m.is_request)
        assert (answer.status or 0) >= 200
    done = await proxy.await_log("policy reloaded: ", timeout=60.0, since=mark)
    lines = proxy.lines()[mark:]
    answered_at = next(i for i, x in enumerate(lines) if "out SIP/2.0" in x and cid in x)
    reloaded_at = lines.index(next(x for x in lines if x == done))
    assert answered_at < reloaded_at, "\n".join(lines[-20:])
    rules = re.search(r"\((\d+) rules\)", done)
    assert rules is not None and int(rules.group(1)) > 1000, done


async def test_a_policy_over_the_size_bound_is_refused_at_once(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = proxy_factory(policy_text=GOOD, extra={"watch_policy": False})
    path = proxy.workdir / "policy.yaml"
    with open(path.with_name("big.new"), "wb") as f:
        f.write(b"#" * (4 << 20))  # 4 MiB of garbage
    os.replace(path.with_name("big.new"), path)
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    await proxy.await_log("policy reload refused", timeout=10.0, since=mark)
    diag = await proxy.await_log("policy.yaml:1:1:", timeout=5.0, since=mark)
    assert "the file is 4194304 bytes, more than the 1 MiB (1048576 bytes) allowed" in diag
