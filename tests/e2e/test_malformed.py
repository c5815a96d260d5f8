"""Garbage, truncated, oversized and binary input over UDP and TCP: the proxy answers what it can
with an error (RFC 3261 8.2, 16.3, 18.3; RFC 4475 3.1.2.2), forwards none of it, keeps
running, and a normal call through it succeeds afterwards (docs/BEHAVIOUR.md "Requests":
"None of this stops the process")."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from tests.conformance.expectations import KITS as SHARED
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port
from tests.e2e.wire import (
    SipMessage,
    TcpOutcome,
    UdpPeer,
    build_request,
    new_call_id,
    parse_sip,
    tcp_exchange,
)

pytestmark = pytest.mark.e2e

MAX_SIZE = 32768  # limits.max_message_size for these tests: a 65 kB datagram is over it
T1_MS = 50  # short timers for the transactions these tests start
MESSAGE_TIMEOUT = 3.2  # TCP: limits.tcp_message_timeout, what a partial message has to complete
ANSWER = 2.0

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0\r\n")


def invite(port: int, transport: str = "UDP", body: bytes = SDP,
           extra: tuple[str, ...] = ()) -> tuple[bytes, str]:
    cid = new_call_id("junk")
    return build_request("INVITE", "sip:bob@example.net", via_host=LOOPBACK, via_port=port,
                         transport=transport, call_id=cid, body=body,
                         content_type="application/sdp", extra_headers=extra), cid


def no_colon(port: int, transport: str = "UDP") -> tuple[bytes, str]:
    """A header line without a colon (RFC 3261 7.3.1: header = name HCOLON value)."""
    data, cid = invite(port, transport)
    head, sep, body = data.partition(b"\r\n\r\n")
    return head + b"\r\nThisHeaderLineHasNoColon" + sep + body, cid


def oversized(port: int, size: int, transport: str = "UDP") -> tuple[bytes, str]:
    """A well-formed INVITE of exactly ``size`` octets (its body padded)."""
    cid = new_call_id("big")
    branch = f"z9hG4bK-{cid.split('@')[0]}"

    def build(pad: int) -> bytes:
        return build_request("INVITE", "sip:bob@example.net", via_host=LOOPBACK, via_port=port,
                             transport=transport, call_id=cid, body=b"a" * pad, branch=branch,
                             content_type="application/sdp")

    pad = 0
    for _ in range(4):  # the Content-Length's own digits change the size: converge
        pad += size - len(build(pad))
    data = build(pad)
    assert len(data) == size
    return data, cid


def truncations(port: int, transport: str = "UDP") -> list[bytes]:
    """An INVITE cut inside the request line, inside the headers, before the blank line and
    inside the body (Content-Length larger than what follows: RFC 4475 3.1.2.2)."""
    data, _ = invite(port, transport)
    head_end = data.index(b"\r\n\r\n")
    cuts = [12, head_end // 2, head_end, head_end + 4 + len(SDP) // 2]
    return [data[:c] for c in cuts]


def garbage() -> list[bytes]:
    rng = random.Random(4475)
    printable = bytes(range(0x20, 0x7F))
    return [
        bytes(rng.choice(printable) for _ in range(700)),  # random text, no line ends
        bytes(rng.choice(printable) for _ in range(300)) + b"\r\n\r\n",  # ... then a blank line
        bytes(rng.randrange(256) for _ in range(1500)),  # binary junk
        bytes(range(256)) * 4,  # every octet value
        b"\x00" * 64 + b"\r\n\r\n",
        b"SIP/2.0 200\r\n\r\n",  # a response start line and nothing else
        b"INVITE\r\n\r\n",
    ]


def assert_error_response(m: SipMessage, what: str) -> None:
    assert not m.is_request, f"{what}: the proxy sent a request back: {m.start_line}"
    assert m.status is not None and m.status >= 400, f"{what}: {m.start_line}"


async def test_garbage_truncated_oversized_udp(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    upstream_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream_port}"], force_rport=True,
                          limits={"max_message_size": MAX_SIZE})
    # while the junk flies the upstream is a plain socket: it must receive nothing
    async with await UdpPeer.bind(upstream_port) as upstream, await UdpPeer.bind() as peer:
        # answers that are defined: 400 for a header line without colon (RFC 3261 8.2 /
        # docs/BEHAVIOUR.md "Requests"), 513 for a message over max_message_size (RFC 3261 21.5.14), 400 for
        # Content-Length larger than the datagram (RFC 4475 3.1.2.2 over UDP)
        big, big_cid = oversized(peer.port, 65507)  # the largest IPv4 UDP payload
        bad, bad_cid = no_colon(peer.port)
        short_body = truncations(peer.port)[-1]
        short_cid = parse_sip(short_body).call_id
        for data, cid, status in ((big, big_cid, 513), (bad, bad_cid, 400),
                                  (short_body, short_cid, 400)):
            await peer.send(data, proxy.addr)

            def answers(m: SipMessage, cid: str | None = cid) -> bool:
                return m.call_id == cid and (m.status or 0) >= 200

            try:
                resp, _ = await peer.recv_sip(ANSWER, answers)
            except TimeoutError:
                raise AssertionError(f"no {status} for {data[:40]!r}...:\n{proxy.tail()}") \
                    from None
            assert resp.status == status, resp.start_line

        # the rest: no defined answer; whatever comes back must be an error response
        for data in truncations(peer.port)[:-1] + garbage():
            await peer.send(data, proxy.addr)
        probe_cid = new_call_id("alive")
        await peer.send(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}",
                                      via_host=LOOPBACK, via_port=peer.port, call_id=probe_cid,
                                      max_forwards=0), proxy.addr)
        # the probe is answered after everything sent before it was handled (one socket,
        # one loop): the proxy is alive and not hung
        probe, _ = await peer.recv_sip(ANSWER, lambda m: m.call_id == probe_cid)
        assert probe.cseq == (1, "OPTIONS") and (probe.status or 0) >= 200
        for d in peer.received + await peer.quiet(0.2):
            m = d.sip
            assert m is not None, f"non-SIP bytes came back: {d.data[:60]!r}"
            if m.call_id != probe_cid:
                assert_error_response(m, "garbage")
        forwarded = upstream.received + await upstream.quiet(0.1)
        assert forwarded == [], f"forwarded to the upstream: {forwarded[0].data[:80]!r}"
    proxy.assert_alive()
    await normal_call(proxy, sipp, upstream_port, "udp")


async def normal_call(proxy: ProxyProcess, sipp: Sipp, pbx_port: int, transport: str) -> None:
    pbx = await sipp.uas("uas_answer.xml", port=pbx_port, transport=transport, timeout=30,
                         name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, transport=transport, calls=5, rate=50,
                            keys={"domain": "example.net"}, timeout=30, name="caller")
    res = await caller.wait()
    pbx_res = await pbx.stop()
    assert res.returncode == 0 and res.successful == 5, res.describe()
    assert pbx_res.successful == 5, pbx_res.describe()
    proxy.assert_alive()


async def test_garbage_truncated_oversized_tcp(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    upstream_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream_port};transport=tcp"],
                          limits={"max_message_size": MAX_SIZE,
                                  "tcp_message_timeout": MESSAGE_TIMEOUT},
                          timers={"t1_ms": T1_MS})
    framing_wait = MESSAGE_TIMEOUT
    connections: list[tuple[str, str, int]] = []

    async def upstream_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read(65536)
        connections.append(("connected", data[:80].decode("latin-1"), len(data)))
        w.close()

    upstream = await asyncio.start_server(upstream_conn, LOOPBACK, upstream_port)
    try:
        port = 1  # Via sent-by port of the junk: replies go back on the connection anyway
        items: dict[str, tuple[bytes, bool]] = {}  # name -> (payload, must close)
        for i, data in enumerate(garbage()):
            items[f"garbage{i}"] = (data, False)
        for i, data in enumerate(truncations(port, "TCP")):
            items[f"truncated{i}"] = (data, False)
        items["no-colon"] = (no_colon(port, "TCP")[0], False)
        items["70kB"] = (oversized(port, 70000, "TCP")[0], False)
        # RFC 4475 3.1.2.2 over a stream: wait for the rest of the body, then close
        items["clerr"] = ((SHARED / "rfc4475" / "clerr.dat").read_bytes(), True)
        bound = framing_wait + 5.0
        # all connections at once: the framing waits overlap
        outcomes = await asyncio.gather(*(
            tcp_exchange(LOOPBACK, proxy.port, data, timeout=bound,
                         until_response=not must_close) for data, must_close in items.values()))
        report: list[str] = []
        for (name, (_, must_close)), out in zip(items.items(), outcomes, strict=True):
            problem = judge(out, must_close)
            if must_close and out.elapsed < framing_wait / 2:
                problem = f"closed after {out.elapsed:.2f} s, before the framing wait " \
                          f"({framing_wait} s, limits.tcp_message_timeout)"
            if problem:
                report.append(f"{name}: {problem}")
        assert not report, "\n".join(report) + "\n" + proxy.tail()
        assert connections == [], f"junk reached the upstream: {connections}"
    finally:
        upstream.close()
        await upstream.wait_closed()
    proxy.assert_alive()
    await normal_call(proxy, sipp, upstream_port, "tcp")


def judge(out: TcpOutcome, must_close: bool) -> str | None:
    """None if the connection was closed or answered with an error response (and, when
    ``must_close``, closed); else what went wrong."""
    responses = out.responses
    for m in responses:
        if m.is_request or m.status is None or m.status < 400:
            return f"unexpected answer {m.start_line!r}"
    if must_close and not (out.closed or out.send_failed):
        return f"connection still open after the framing wait (got {out.data[:60]!r})"
    if not (out.closed or out.send_failed or responses):
        return f"neither closed nor answered with an error (got {out.data[:60]!r})"
    return None
