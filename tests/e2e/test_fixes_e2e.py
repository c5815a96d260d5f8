"""Transport and routing fixes end to end: oversized requests, a 301 on one fork branch, plain
TCP bindings after their connection closed, Path's transport.

What each test proves:

* a request that does not fit a UDP datagram is answered at once (RFC 3261 18.1.1: over 1300
  bytes a request goes over TCP; one that can go neither way is a transport error, 16.9,
  or 513), not with a 408 after Timer B; a 2,000-byte INVITE goes to an upstream that listens
  on TCP over TCP, with a ``SIP/2.0/TCP`` Via (18.1.1);
* docs/BEHAVIOUR.md "Routing": a 301 from one of a registered user's bindings teaches the
  rewrite of that binding only: the next call goes to the new address and to the other binding, not to the
  old address;
* a phone registered over TCP without SIP Outbound (a plain RFC 3261 10 binding with
  ``;transport=tcp``) is reached over a new connection to its Contact after it closed the
  registering one (RFC 3261 18.1.1, docs/BEHAVIOUR.md "SIP Outbound": only an outbound
  binding dies with its connection; that case, 430 at once, is proved by
  ``test_edge_outbound_e2e.py::test_tcp_flow_closed_gets_430`` and ``test_outbound_e2e.py``);
* the Path the proxy inserts names it as the registrar reaches it: the upstream leg's
  transport, not the phone's (RFC 3327 5.1).

Peers are raw sockets: ``wire.UdpPeer`` / ``RecordingUpstream`` for UDP, ``asyncio`` servers
and ``wire.SipStream`` for TCP.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.wire import (
    RecordingUpstream,
    SipMessage,
    SipStream,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    new_call_id,
    split_via_values,
    via_sent_by,
)

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"
WAIT = 3.0
SILENCE = 1.0
ProxyFactory = Callable[..., ProxyProcess]


# ----------------------------------------------------------------------------- helpers


class TcpServer:
    """A TCP listener on 127.0.0.1:``port`` whose accepted connections are queued as
    :class:`SipStream` objects."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[SipStream] = asyncio.Queue()
        self.streams: list[SipStream] = []
        self.server: asyncio.Server | None = None

    @classmethod
    async def start(cls, port: int) -> TcpServer:
        self = cls()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stream = SipStream(reader, writer)
            self.streams.append(stream)
            await self.accepted.put(stream)

        self.server = await asyncio.start_server(on_connect, LOOPBACK, port)
        return self

    async def accept(self, timeout: float = WAIT) -> SipStream:
        return await asyncio.wait_for(self.accepted.get(), timeout)

    async def close(self) -> None:
        for s in self.streams:
            await s.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def invite_of_size(caller: UdpPeer, size: int, call_id: str, uri: str) -> bytes:
    """An INVITE of exactly ``size`` bytes, padded in its body."""
    def build(pad: int) -> bytes:
        return build_request(
            "INVITE", uri, via_host=LOOPBACK, via_port=caller.port, call_id=call_id,
            extra_headers=[f"Contact: <sip:e2e@{LOOPBACK}:{caller.port}>"],
            body=b"v=0\r\na=x-pad:" + b"x" * pad + b"\r\n", content_type="application/sdp")
    base = len(build(0))
    data = build(size - base)
    if len(data) != size:  # Content-Length grew by a digit
        data = build(size - base - (len(data) - size))
    assert len(data) == size, len(data)
    return data


async def final_of(peer: UdpPeer, call_id: str, timeout: float = WAIT) -> SipMessage:
    msg, _ = await peer.recv_sip(
        timeout, lambda m: m.call_id == call_id and (m.status or 0) >= 200)
    return msg


def contact_uri(msg: SipMessage) -> str:
    m = re.search(r"<([^>]*)>", msg.get("contact") or "")
    assert m is not None, msg.get("contact")
    return m.group(1)


async def register_udp(phone: UdpPeer, proxy: ProxyProcess, user: str,
                       contact: str | None = None) -> SipMessage:
    """Register sip:USER@example.com at the local registrar from 127.0.0.1 (inside the
    default ``registrar_networks``); asserts the 200."""
    call_id = new_call_id("reg")
    aor = f"sip:{user}@{DOMAIN}"
    contact = contact or f"<sip:{user}@{LOOPBACK}:{phone.port}>"
    await phone.send(build_request(
        "REGISTER", f"sip:{DOMAIN}", via_host=LOOPBACK, via_port=phone.port, call_id=call_id,
        from_uri=aor, to_uri=aor, from_tag="reg",
        extra_headers=[f"Contact: {contact}", "Expires: 3600"]), proxy.addr)
    ok = await final_of(phone, call_id)
    assert ok.status == 200, ok.start_line
    return ok


def pbx_invite(pbx: UdpPeer, uri: str, call_id: str) -> bytes:
    return build_request("INVITE", uri, via_host=LOOPBACK, via_port=pbx.port, call_id=call_id,
                         from_uri=f"sip:pbx@{DOMAIN}", from_tag="pbx",
                         extra_headers=[f"Contact: <sip:pbx@{LOOPBACK}:{pbx.port}>"])


def path_values(msg: SipMessage) -> list[str]:
    return [v for line in msg.get_all("path") for v in split_via_values(line)]


# ----------------------------------------------------------------------------- 4. sizes


@pytest.mark.parametrize("upstream_uri", ["plain", "transport=udp"])
async def test_oversized_udp_request_gets_a_quick_answer(
    proxy_factory: ProxyFactory, upstream_uri: str,
) -> None:
    """A 65,450-byte INVITE over UDP (it fits a datagram; with the proxy's Via and
    Record-Route it no longer does) for an upstream that takes only UDP.  ``plain``
    (``sip:127.0.0.1:P``): the proxy tries TCP (RFC 3261 18.1.1), the connection is refused, a
    transport error (16.9, 17.1.4); ``transport=udp``: it cannot go at all (513, 21.5.14).
    Either way the caller gets a final 500, 503 or 513 within 5 s (not a 408 after Timer B),
    the proxy logs a WARNING naming the failed send or the size, and the upstream's UDP socket
    receives nothing."""
    upstream = await RecordingUpstream.start(free_port())  # nobody listens on TCP there
    try:
        uri = f"sip:{LOOPBACK}:{upstream.port}"
        if upstream_uri == "transport=udp":
            uri += ";transport=udp"
        proxy = proxy_factory(upstreams=[uri])
        async with await UdpPeer.bind(free_port(tcp=False)) as caller:
            call_id = new_call_id("big")
            data = invite_of_size(caller, 65_450, call_id, "sip:bob@example.net")
            mark = proxy.mark()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await caller.send(data, proxy.addr)
            final = await final_of(caller, call_id, timeout=5.0)
            took = loop.time() - t0
            assert final.status in (500, 503, 513), final.start_line
            assert took < 5.0, took
            await caller.send(build_ack("sip:bob@example.net", final), proxy.addr)
            warning = await proxy.await_log(
                re.compile(rf" WARNING .*(?:{upstream.port}.*failed|does not fit)"),
                timeout=WAIT, since=mark)
            assert str(upstream.port) in warning, warning
        assert upstream.records == [], [d.data[:60] for d in upstream.records]
        proxy.assert_alive()
    finally:
        await upstream.close()


async def test_large_request_goes_over_tcp(proxy_factory: ProxyFactory) -> None:
    """RFC 3261 18.1.1: a request within 200 bytes of the MTU (or over 1300 bytes) goes over a
    congestion-controlled transport.  A 2,000-byte INVITE for an upstream ``sip:127.0.0.1:P``
    that listens on UDP and TCP arrives over TCP, whole, with the proxy's ``SIP/2.0/TCP`` Via
    on top; the upstream's 486 over that connection reaches the caller and the proxy's ACK
    comes back over TCP (17.1.1.3).  Nothing arrives over UDP."""
    port = free_port()
    udp_side = await RecordingUpstream.start(port)
    tcp_side = await TcpServer.start(port)
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{port}"])
        async with await UdpPeer.bind(free_port(tcp=False)) as caller:
            call_id = new_call_id("tcp2k")
            data = invite_of_size(caller, 2000, call_id, "sip:bob@example.net")
            await caller.send(data, proxy.addr)
            conn = await tcp_side.accept()
            invite = await conn.recv_sip(WAIT, lambda m: m.method == "INVITE")
            assert invite.call_id == call_id
            transport, host, vport, _ = via_sent_by(invite.vias[0])
            assert (transport, host, vport) == ("TCP", LOOPBACK, proxy.port), invite.vias[0]
            assert invite.body == parse_body(data), "the body changed on the way"
            await conn.send(build_response(invite, 486, "Busy Here", to_tag="busy"))
            final = await final_of(caller, call_id)
            assert final.status == 486, final.start_line
            await caller.send(build_ack("sip:bob@example.net", final), proxy.addr)
            ack = await conn.recv_sip(WAIT, lambda m: m.method == "ACK")
            assert ack.call_id == call_id
        assert udp_side.records == [], [d.data[:60] for d in udp_side.records]
        proxy.assert_alive()
    finally:
        await tcp_side.close()
        await udp_side.close()


def parse_body(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


# ----------------------------------------------------------------------------- 5. 301 fork


async def test_301_on_one_fork_branch_rewrites_only_that_binding(
    proxy_factory: ProxyFactory,
) -> None:
    """docs/BEHAVIOUR.md "Routing": "A learned 301 rewrite applies to the URI its branch was
    sent to".
    alice has two bindings (phone1, phone2, q 1: forked in parallel, RFC 3261 16.6).  The
    PBX's INVITE reaches both; phone2 answers 486, phone1 answers 301 with Contact phone3
    (policy moved-permanently: redirect, permanent; ``redirects`` names 127.0.0.1 as source
    and target, loopback must be named explicitly); phone3 gets the INVITE (16.5: a 3xx
    Contact becomes a target) and answers 200, which reaches the PBX, whose ACK reaches
    phone3.  The second call from the PBX reaches phone3 (instead of phone1) and phone2; phone1
    gets nothing."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="local",
                          domains=[DOMAIN],
                          extra={"redirects": {"trusted_sources": [LOOPBACK],
                                               "allow_targets": [LOOPBACK]}})
    aor = f"sip:alice@{DOMAIN}"
    async with await UdpPeer.bind(pbx_port) as pbx, \
            await UdpPeer.bind(free_port(tcp=False)) as phone1, \
            await UdpPeer.bind(free_port(tcp=False)) as phone2, \
            await UdpPeer.bind(free_port(tcp=False)) as phone3:
        await register_udp(phone1, proxy, "alice")
        await register_udp(phone2, proxy, "alice")
        phone3_uri = f"sip:alice@{LOOPBACK}:{phone3.port}"
        mark = proxy.mark()

        call1 = new_call_id("fork301")
        await pbx.send(pbx_invite(pbx, aor, call1), proxy.addr)
        inv1, src1 = await phone1.recv_sip(WAIT, lambda m: m.method == "INVITE")
        inv2, src2 = await phone2.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert inv1.call_id == call1 and inv2.call_id == call1
        assert inv1.request_uri == f"sip:alice@{LOOPBACK}:{phone1.port}", inv1.start_line
        await phone2.send(build_response(inv2, 486, "Busy Here", to_tag="p2"), src2)
        await phone1.send(build_response(inv1, 301, "Moved Permanently", to_tag="p1",
                                         extra_headers=[f"Contact: <{phone3_uri}>"]), src1)
        for phone in (phone1, phone2):  # the proxy ACKs each non-2xx (17.1.1.3)
            ack, _ = await phone.recv_sip(WAIT, lambda m: m.method == "ACK")
            assert ack.call_id == call1
        inv3, src3 = await phone3.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert inv3.call_id == call1 and inv3.request_uri == phone3_uri, inv3.start_line
        rr = inv3.get_all("record-route")
        await phone3.send(build_response(
            inv3, 200, "OK", to_tag="p3",
            extra_headers=[*(f"Record-Route: {v}" for v in rr), f"Contact: <{phone3_uri}>"]),
            src3)
        ok = await final_of(pbx, call1)
        assert ok.status == 200, ok.start_line
        route_set = [v for line in ok.get_all("record-route") for v in split_via_values(line)]
        await pbx.send("\r\n".join([
            f"ACK {contact_uri(ok)} SIP/2.0",
            f"Via: SIP/2.0/UDP {LOOPBACK}:{pbx.port};branch=z9hG4bK-pbxack1;rport",
            "Max-Forwards: 70",
            *(f"Route: {v}" for v in reversed(route_set)),
            f"From: <sip:pbx@{DOMAIN}>;tag=pbx",
            f"To: {ok.get('to')}",
            f"Call-ID: {call1}",
            "CSeq: 1 ACK",
            "Content-Length: 0", "", ""]).encode(), proxy.addr)
        ack3, _ = await phone3.recv_sip(WAIT, lambda m: m.method == "ACK")
        assert ack3.call_id == call1
        learned = await proxy.await_log("learned ", timeout=WAIT, since=mark)
        assert f"{LOOPBACK}:{phone1.port}" in learned and phone3_uri in learned, learned

        call2 = new_call_id("fork301b")
        await pbx.send(pbx_invite(pbx, aor, call2), proxy.addr)
        inv3, src3 = await phone3.recv_sip(
            WAIT, lambda m: m.method == "INVITE" and m.call_id == call2)
        inv2, src2 = await phone2.recv_sip(
            WAIT, lambda m: m.method == "INVITE" and m.call_id == call2)
        assert inv3.request_uri == phone3_uri, inv3.start_line
        assert inv2.request_uri == f"sip:alice@{LOOPBACK}:{phone2.port}", inv2.start_line
        got = [d.sip.start_line if d.sip else d.data[:60] for d in await phone1.quiet(SILENCE)]
        assert got == [], f"phone1 (rewritten by its 301) still got {got}"
        await phone2.send(build_response(inv2, 486, "Busy Here", to_tag="p2b"), src2)
        await phone3.send(build_response(inv3, 486, "Busy Here", to_tag="p3b"), src3)
        final = await final_of(pbx, call2)
        assert final.status == 486, final.start_line
        await pbx.send(build_ack(aor, final), proxy.addr)
    proxy.assert_alive()


# ----------------------------------------------------------------------------- 6. plain TCP


async def test_plain_tcp_binding_reached_over_new_connection(
    proxy_factory: ProxyFactory,
) -> None:
    """A phone registers over TCP without SIP Outbound (no +sip.instance, no reg-id: a plain
    RFC 3261 10 binding) with ``Contact: <sip:bob@127.0.0.1:P;transport=tcp>``, P being its own
    TCP listener, and closes the registering connection.  The PBX's INVITE for
    sip:bob@example.com reaches the phone over a new connection the proxy opens to P (RFC 3261
    18.1.1; docs/BEHAVIOUR.md "SIP Outbound": a plain binding lives until it expires and is
    reached over a new
    connection to its Contact); the phone's 486 over it reaches the PBX."""
    pbx_port = free_port()
    phone_port = free_port()
    listener = await TcpServer.start(phone_port)
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="local",
                              domains=[DOMAIN])
        contact = f"<sip:bob@{LOOPBACK}:{phone_port};transport=tcp>"
        reg = await SipStream.connect(*proxy.addr)
        try:
            host, port = reg.local
            call_id = new_call_id("tcpreg")
            await reg.send(build_request(
                "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
                call_id=call_id, from_uri=f"sip:bob@{DOMAIN}", to_uri=f"sip:bob@{DOMAIN}",
                from_tag="tcpreg", extra_headers=[f"Contact: {contact}", "Expires: 3600"]))
            ok = await reg.recv_sip(WAIT, lambda m: m.call_id == call_id)
            assert ok.status == 200 and contact.rstrip(">") in (ok.get("contact") or ""), \
                ok.raw
        finally:
            await reg.close()
        assert listener.accepted.empty()

        async with await UdpPeer.bind(pbx_port) as pbx:
            call = new_call_id("tcpcall")
            await pbx.send(pbx_invite(pbx, f"sip:bob@{DOMAIN}", call), proxy.addr)
            conn = await listener.accept()
            invite = await conn.recv_sip(WAIT, lambda m: m.method == "INVITE")
            assert invite.call_id == call, invite.start_line
            assert invite.request_uri == contact[1:-1], invite.start_line
            assert via_sent_by(invite.vias[0])[0] == "TCP", invite.vias[0]
            await conn.send(build_response(invite, 486, "Busy Here", to_tag="bobtcp"))
            final = await final_of(pbx, call)
            assert final.status == 486, final.start_line
            await pbx.send(build_ack(f"sip:bob@{DOMAIN}", final), proxy.addr)
            ack = await conn.recv_sip(WAIT, lambda m: m.method == "ACK")
            assert ack.call_id == call
        proxy.assert_alive()
    finally:
        await listener.close()


# ----------------------------------------------------------------------------- 7. Path


async def test_path_names_the_upstream_legs_transport(proxy_factory: ProxyFactory) -> None:
    """RFC 3327 5.1: the Path URI must let the registrar reach the proxy.  ``registrar:
    upstream`` with a UDP upstream: a phone REGISTERs over TCP with ``Supported: path``; the
    upstream gets exactly one Path ``<sip:TOKEN@127.0.0.1:PROXY;lr>`` without
    ``transport=tcp`` (the proxy's UDP side) and its 200 reaches the phone over the TCP
    connection."""
    async with await UdpPeer.bind(free_port()) as pbx:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"], registrar="upstream")
        phone = await SipStream.connect(*proxy.addr)
        try:
            host, port = phone.local
            call_id = new_call_id("pathudp")
            aor = f"sip:frank@{DOMAIN}"
            await phone.send(build_request(
                "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
                call_id=call_id, from_uri=aor, to_uri=aor, from_tag="p",
                extra_headers=[f"Contact: <sip:frank@{host}:{port};transport=tcp>",
                               "Expires: 3600", "Supported: path"]))
            reg, src = await pbx.recv_sip(WAIT, lambda m: m.method == "REGISTER")
            assert via_sent_by(reg.vias[0])[0] == "UDP", reg.vias[0]
            [path] = path_values(reg)
            m = re.fullmatch(rf"<sip:[^@>]+@{re.escape(LOOPBACK)}:{proxy.port}((?:;[^;>]+)*)>",
                             path)
            assert m is not None, path
            params = m.group(1).lower().split(";")[1:]
            assert "lr" in params and not any(p.startswith("transport=") for p in params), path
            await pbx.send(build_response(reg, 200, "OK", to_tag="pbxreg", extra_headers=[
                f"Contact: {reg.get('contact')};expires=3600", f"Path: {path}"]), src)
            ok = await phone.recv_sip(WAIT, lambda m: m.call_id == call_id)
            assert ok.status == 200, ok.start_line
        finally:
            await phone.close()
    proxy.assert_alive()


async def test_path_over_tcp_upstream_says_transport_tcp(proxy_factory: ProxyFactory) -> None:
    """RFC 3327 5.1, the other way round: ``upstreams: [sip:127.0.0.1:P;transport=tcp]`` (a
    TCP registrar in the test); a phone REGISTERs over UDP with ``Supported: path``; the
    REGISTER reaches the registrar over TCP and its Path is
    ``<sip:TOKEN@127.0.0.1:PROXY;lr;transport=tcp>``; the 200 reaches the phone over UDP."""
    port = free_port()
    registrar = await TcpServer.start(port)
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{port};transport=tcp"],
                              registrar="upstream")
        async with await UdpPeer.bind(free_port(tcp=False)) as phone:
            call_id = new_call_id("pathtcp")
            aor = f"sip:grace@{DOMAIN}"
            await phone.send(build_request(
                "REGISTER", f"sip:{DOMAIN}", via_host=LOOPBACK, via_port=phone.port,
                call_id=call_id, from_uri=aor, to_uri=aor, from_tag="p",
                extra_headers=[f"Contact: <sip:grace@{LOOPBACK}:{phone.port}>",
                               "Expires: 3600", "Supported: path"]), proxy.addr)
            conn = await registrar.accept()
            reg = await conn.recv_sip(WAIT, lambda m: m.method == "REGISTER")
            assert via_sent_by(reg.vias[0])[0] == "TCP", reg.vias[0]
            [path] = path_values(reg)
            m = re.fullmatch(rf"<sip:[^@>]+@{re.escape(LOOPBACK)}:{proxy.port}((?:;[^;>]+)*)>",
                             path)
            assert m is not None, path
            params = m.group(1).lower().split(";")[1:]
            assert "lr" in params and "transport=tcp" in params, path
            await conn.send(build_response(reg, 200, "OK", to_tag="pbxreg", extra_headers=[
                f"Contact: {reg.get('contact')};expires=3600", f"Path: {path}"]))
            ok = await final_of(phone, call_id)
            assert ok.status == 200, ok.start_line
        proxy.assert_alive()
    finally:
        await registrar.close()
