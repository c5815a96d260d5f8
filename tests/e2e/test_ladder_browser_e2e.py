"""The ladder page of a failed call in a real browser: Debian's headless ``chromium`` opens
``/calls/CALL-ID/ladder`` from the running proxy (HTTP Basic with the token as the password,
as a browser asks for it), and its rendered DOM has one arrow per message of the call and the
policy decisions; a screenshot is kept as the test's artefact (its path is printed).

The call: the first PBX (a sipp UAS) answers 486, the policy fails over (``busy-fails-over``),
the second answers 603, ``global-failure`` stops, the caller gets the 603."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.harness import (
    DEFAULT_POLICY,
    LOOPBACK,
    REPO,
    SCENARIOS,
    ProxyProcess,
    Sipp,
    free_port,
)
from tests.e2e.test_tracing_e2e import TOKEN, aget

pytestmark = pytest.mark.e2e

BUSY_POLICY = DEFAULT_POLICY.replace("rules:\n", """rules:
  - name: busy-fails-over
    match: {status: 486}
    action: failover
""", 1)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise AssertionError("chromium is missing: install the Debian package chromium "
                             "(make test installs it)")
    return path


def scenario_copy(dest: Path, name: str, old: str, new: str) -> Path:
    text = (SCENARIOS / name).read_text(encoding="latin-1")
    assert text.count(old) == 1
    path = dest / f"{Path(name).stem}_{re.sub(r'[^0-9A-Za-z]+', '_', new)}.xml"
    path.write_text(text.replace(old, new), encoding="latin-1")
    return path


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[bytes]:
    argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(argv, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode("latin-1")[-2000:]
    return done


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decoded image data) of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack("!II", data[16:24])
    at, idat = 8, b""
    while at < len(data):
        length, kind = struct.unpack("!I4s", data[at:at + 8])
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + length]
        at += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


async def test_the_ladder_of_a_failed_call_renders_in_chromium(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, tmp_path: Path,
) -> None:
    p1, p2 = free_port(), free_port()
    http = f"{LOOPBACK}:{free_port(udp=False)}"
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{p1}", f"sip:{LOOPBACK}:{p2}"],
                          policy_text=BUSY_POLICY, extra={"http": http, "http_token": TOKEN})
    busy = scenario_copy(tmp_path, "pol_uas_reject.xml", "SIP/2.0 603 Decline",
                         "SIP/2.0 486 Busy Here")
    pbx1 = await sipp.uas(str(busy), port=p1, calls=1, name="pbx1")
    pbx2 = await sipp.uas("pol_uas_reject.xml", port=p2, calls=1, name="pbx2")
    caller = await sipp.uac("pol_uac_expect_final.xml", proxy.addr, calls=1,
                            keys={"domain": "example.net"}, name="caller")
    res = await caller.wait()
    assert res.successful == 1, res.describe()
    await pbx1.wait(15)
    await pbx2.wait(15)

    status, body = await aget(proxy, "/calls")
    assert status == 200
    [summary] = json.loads(body)
    assert summary["status"] == 603
    assert [(d["rule"], d["action"], d["status"]) for d in summary["decisions"]] == [
        ("busy-fails-over", "failover", 486), ("global-failure", "stop", 603)]
    path = "/calls/" + quote(summary["call_id"], safe="")
    call = json.loads((await aget(proxy, path))[1])
    n = len(call["messages"])
    assert n >= 9  # INVITE, 100, INVITE, 486, ACK, INVITE, 603, ACK, 603, ACK

    url = f"http://operator:{TOKEN}@{http}{path}/ladder"
    dom = (await asyncio.to_thread(run_chromium, ["--dump-dom", url], tmp_path / "profile")
           ).stdout.decode("utf-8")
    assert f"<title>Call {summary['call_id']}</title>" in dom, dom[:500]
    arrows = re.findall(r'<line class="arrow [^"]*"', dom)
    assert len(arrows) == n, (len(arrows), n)
    assert len(re.findall(r'class="arrow resp fail"', dom)) == sum(
        1 for m in call["messages"] if re.match(r"SIP/2\.0 [3-6]\d\d", m["first_line"]))
    decisions = re.findall(r'<g class="mark decision">.*?<text[^>]*>([^<]*)</text>', dom)
    assert decisions == ["busy-fails-over: failover (486)", "global-failure: stop (603)"]
    heads = re.findall(r'<g class="head">.*?<text[^>]*>([^<]*)</text>', dom)
    assert heads == ["caller", "proxy", f"sip:{LOOPBACK}:{p1}", f"sip:{LOOPBACK}:{p2}"]

    # the text ladder of `sip-policy-proxy trace` is the same ladder: the same arrows and marks
    # in the same order
    in_page = [("mark", m) if m else ("arrow", a[:10]) for a, m in re.findall(
        r'<g class="msg"[^>]*>.*?<text class="label"[^>]*>([^<]*)</text>|'
        r'<g class="mark decision">.*?<text[^>]*>([^<]*)</text>', dom)]
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "proxy", "trace", summary["call_id"], "--http", http, "--token",
        TOKEN], capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    in_text = []
    for line in done.stdout.splitlines():
        if line.startswith("+"):
            in_text.append(("arrow", re.sub(r"^[^A-Z0-9]*", "", line[12:]
                                            .replace("-", " ").replace("|", " ").lstrip(" <"))
                            [:10]))
        elif "* " in line:
            in_text.append(("mark", line.split("* ", 1)[1]))
    assert len(in_page) == n + 2 and in_page[0] == ("arrow", "INVITE sip")
    assert in_text == in_page, (in_text, in_page)

    # without the token the browser gets no ladder (headless, it stops at the challenge)
    denied = (await asyncio.to_thread(run_chromium, ["--dump-dom", f"http://{http}{path}/ladder"],
                                      tmp_path / "profile2")).stdout.decode("utf-8")
    assert '<line class="arrow' not in denied

    shot = tmp_path / "ladder-failed-call.png"
    height = 330 + 34 * n + 30 * 2
    await asyncio.to_thread(run_chromium, [f"--screenshot={shot}",
                                           f"--window-size=1300,{height}", url],
                            tmp_path / "profile3")
    print(f"ladder screenshot: {shot}")
    width, h, distinct = png_facts(shot)
    assert (width, h) == (1300, height)
    assert distinct > 32  # drawn, not a blank page
