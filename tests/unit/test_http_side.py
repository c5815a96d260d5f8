"""The HTTP side on aiohttp, served on the test's event loop over real loopback sockets:
``http_token`` (Bearer, Basic for a browser, 401 with both challenges, refusals counted),
which paths stay open, the calls pages (a Call-ID holding ``/`` percent-encoded), and the
bounds an attacker meets (connections, their lifetime, request line and header sizes)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest

from proxy.runtime import http as http_side
from proxy.runtime.calls import CallIndex
from proxy.runtime.http_access import Access, presented
from proxy.sip.capture import Capture
from proxy.sip.transport import Source
from tests.unit.core_harness import Harness

TOKEN = "s3cret-token-0123456789"
CALL_ID = "a/b?c@10.0.0.1"  # a Call-ID word may hold / and ? (RFC 3261 25.1)


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET",
          ) -> tuple[int, dict[str, list[str]], str]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, _headers(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, _headers(exc.headers), exc.read().decode()


def _headers(h: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in h.items():
        out.setdefault(k.lower(), []).append(v)
    return out


async def aget(url: str, **kw: Any) -> tuple[int, dict[str, list[str]], str]:
    return await asyncio.to_thread(fetch, url, **kw)


def runtime(token: str | None) -> SimpleNamespace:
    h = Harness.make()
    capture = Capture(100, 10**6, 0, None)
    capture.received(f"INVITE sip:b@x SIP/2.0\r\nCall-ID: {CALL_ID}\r\nFrom: <sip:a@x>\r\n"
                     "To: <sip:b@x>\r\n\r\n".encode(), Source("udp", "10.0.0.1", 5060), 1.7e9)
    return SimpleNamespace(core=h.core, store_ok=True, listening=True, started=1.7e9,
                           reloads=Counter(), loop=asyncio.get_running_loop(),
                           config=SimpleNamespace(http_token=token),
                           tcp=None, tls=None, ws=None, wss=None,
                           tap=SimpleNamespace(calls=CallIndex(capture, 10), hep=None,
                                               capture=capture))


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, http_side.HttpEndpoint]]:
    ep = http_side.start(runtime(TOKEN), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{ep.port}", ep
    finally:
        ep.close()


async def test_calls_need_the_token_and_the_health_checks_do_not(
    served: tuple[str, http_side.HttpEndpoint],
) -> None:
    base, ep = served
    status, headers, _ = await aget(base + "/calls")
    assert status == 401
    assert headers["www-authenticate"] == ['Bearer realm="sip-policy-proxy"',
                                           'Basic realm="sip-policy-proxy", charset="UTF-8"']
    for path in ("/calls/" + quote(CALL_ID, safe=""), "/calls/x/ladder", "/calls/"):
        assert (await aget(base + path))[0] == 401, path
    assert (await aget(base + "/calls", headers={"Authorization": "Bearer wrong"}))[0] == 401
    assert (await aget(base + "/calls", headers={"Authorization": f"Bearer {TOKEN}x"}))[0] == 401
    assert (await aget(base + "/calls", headers={"Authorization": TOKEN}))[0] == 401
    ok = await aget(base + "/calls", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok[0] == 200 and json.loads(ok[2])[0]["call_id"] == CALL_ID
    basic = base64.b64encode(f"operator:{TOKEN}".encode()).decode()
    assert (await aget(base + "/calls", headers={"Authorization": f"Basic {basic}"}))[0] == 200
    for path in ("/metrics", "/health", "/ready", "/status"):
        assert (await aget(base + path))[0] == 200, path
    # every POST needs the token, whatever the path; with it, the path decides
    assert (await aget(base + "/metrics", method="POST"))[0] == 401
    assert (await aget(base + "/nowhere", method="POST"))[0] == 401
    assert (await aget(base + "/metrics", method="POST",
                       headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 405
    # a percent-encoded path is the same path
    assert (await aget(base + "/%63alls"))[0] == 401
    assert ep.access.refusals["unauthorized"] == 10
    _, _, metrics = await aget(base + "/metrics")
    assert 'sip_policy_proxy_http_refused_total{reason="unauthorized"} 10.0' in metrics


async def test_the_calls_pages_answer_with_the_token(
    served: tuple[str, http_side.HttpEndpoint],
) -> None:
    base, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = await aget(base + "/calls/" + quote(CALL_ID, safe=""), headers=auth)
    assert status == 200 and headers["content-type"] == ["application/json"]
    call = json.loads(body)
    assert call["call_id"] == CALL_ID and call["messages"][0]["direction"] == "in"
    assert call["messages"][0]["first_line"] == "INVITE sip:b@x SIP/2.0"
    status, headers, body = await aget(base + "/calls/" + quote(CALL_ID, safe="") + "/ladder",
                                       headers=auth)
    assert status == 200 and headers["content-type"] == ["text/html; charset=utf-8"]
    assert headers["content-security-policy"][0].startswith("default-src 'none'")
    assert headers["server"] == ["sip-policy-proxy"]
    assert "<svg" in body and 'class="arrow req"' in body
    status, _, body = await aget(base + "/calls/nope", headers=auth)
    assert status == 404 and json.loads(body)["error"] == "no such call among the recent calls"
    assert (await aget(base + "/calls/x/y/z", headers=auth))[0] == 404


async def test_without_a_token_the_calls_are_open() -> None:
    ep = http_side.start(runtime(None), "127.0.0.1", 0)
    try:
        status, _, body = await aget(f"http://127.0.0.1:{ep.port}/calls")
        assert status == 200 and json.loads(body)[0]["call_id"] == CALL_ID
    finally:
        ep.close()


@pytest.mark.parametrize(("header", "token"), [
    (f"Bearer {TOKEN}", TOKEN.encode()),
    (f"bearer   {TOKEN}  ", TOKEN.encode()),
    ("Basic " + base64.b64encode(b"u:p:w").decode(), b"p:w"),
    ("Basic !!!", None),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Digest x", None),
    ("", None),
])
def test_the_token_a_header_presents(header: str, token: bytes | None) -> None:
    assert presented(header) == token
    assert Access(TOKEN).allows(header) == (token == TOKEN.encode())


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


async def test_connections_past_the_limit_are_closed_at_once() -> None:
    rt = runtime(TOKEN)
    ep = http_side.HttpEndpoint(rt.loop, "127.0.0.1", 0, {"/health": lambda: (200, "text/plain",
                                                                               b"ok\n")},
                                access=Access(TOKEN), max_connections=5)
    ep.start()
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            held.append(await asyncio.to_thread(_connect, ep.port))
        extra = await asyncio.to_thread(_connect, ep.port)
        held.append(extra)
        assert await asyncio.to_thread(_closed_by_peer, extra)
        assert ep.access.refusals["connections"] == 1
        for s in held[:5]:
            s.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while ep.runner.server is not None and ep.runner.server.connections:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        assert (await aget(f"http://127.0.0.1:{ep.port}/health"))[0] == 200
    finally:
        for s in held:
            s.close()
        ep.close()


async def test_an_idle_connection_is_closed_after_its_lifetime() -> None:
    """A client that opens a connection and sends nothing (or a header a byte at a time)
    does not hold a slot for ever."""
    rt = runtime(None)
    ep = http_side.HttpEndpoint(rt.loop, "127.0.0.1", 0, {}, lifetime=0.4)
    ep.start()
    try:
        s = await asyncio.to_thread(_connect, ep.port)
        try:
            await asyncio.to_thread(s.sendall, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            t0 = asyncio.get_running_loop().time()
            assert await asyncio.to_thread(_closed_by_peer, s)
            took = asyncio.get_running_loop().time() - t0
            assert 0.3 < took < 3.0, took  # lifetime 0.4 s, then a grace of 0.4 s
        finally:
            s.close()
    finally:
        ep.close()


def _raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                got = s.recv(65536)
            except ConnectionResetError:
                break
            if not got:
                break
            chunks.append(got)
        return b"".join(chunks)


async def test_oversized_request_lines_and_headers_are_refused(
    served: tuple[str, http_side.HttpEndpoint],
) -> None:
    base, ep = served
    long_line = b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await asyncio.to_thread(_raw_request, ep.port, long_line)
    assert answer.split(b" ", 2)[1] in (b"400", b"414", b"431"), answer[:80]
    many = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + \
        b"\r\n"
    answer = await asyncio.to_thread(_raw_request, ep.port, many)
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:80]
    assert (await aget(base + "/health"))[0] == 200  # and the side still serves
