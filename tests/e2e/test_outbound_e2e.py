"""SIP Outbound (RFC 5626) end to end: the real proxy on loopback as edge proxy and registrar
(``registrar: local``, ``domains: [example.com]``), sipp as PBX and as the flows of phones, raw
TCP/UDP peers where sipp cannot do it.

What each test proves (docs/BEHAVIOUR.md "Routing": a registered address-of-record to its bindings; ``retry_flows``;
docs/BEHAVIOUR.md "Forking"):

* a phone instance registering two flows (same ``+sip.instance``, reg-id 1 and 2) gets one
  binding per flow (RFC 5626 6); an INVITE goes over ONE flow per instance, the most recently
  registered; a 430 Flow Failed on it (policy ``retry_flows``) removes that binding and the
  INVITE goes out again over the instance's other flow on a new branch (RFC 5626 5.3, 11.6);
  the next call goes straight to the remaining flow;
* a TCP flow whose connection closed is removed at once (RFC 5626 5.3): the next INVITE goes
  to the instance's other flow without any timer running out;
* two instances are forked in parallel: a 430 on one instance's flow neither ends nor cancels
  the other instance's ringing branch; that branch is CANCELled only once the retried flow
  answers 200 (RFC 3261 16.7 step 10);
* keep-alives (RFC 5626 4.4): a STUN Binding request on the SIP UDP port gets a Binding Success
  response with the sender's XOR-MAPPED-ADDRESS (RFC 5389 7.3, 15.2); a CRLFCRLF ping on a TCP
  connection gets a CRLF pong and the connection keeps carrying SIP.

Scenario files: ``ob_register.xml`` (REGISTER one flow: ``;ob``, ``+sip.instance``, ``reg-id``
from ``-key``), ``ob_uas_flow_failed.xml`` (430 to every INVITE, ACK required),
``ob_uas_ring_answer_late.xml`` (180, 200 after 500 ms, BYE required) and the harness's
``uac_call.xml``, ``uas_answer.xml``, ``uas_cancel_after_180.xml``.
:func:`test_ob_scenarios_pair_without_proxy` proves the ob_* UAS files sipp-to-sipp.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import uuid
import zlib
from collections.abc import Callable

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    REPO,
    ProxyProcess,
    Sipp,
    SippProcess,
    SippResult,
    Traced,
    assert_calls,
    branch,
    close_writer,
    free_port,
    traced,
    via_is_proxy,
)
from tests.e2e.wire import (
    SipMessage,
    TcpOutcome,
    UdpPeer,
    build_request,
)

pytestmark = pytest.mark.e2e

SHIPPED_POLICY = REPO / "policies" / "default.yaml"
DOMAIN = "example.com"
USER = "bob"
AOR_URI = f"sip:{USER}@{DOMAIN}"
ProxyFactory = Callable[..., ProxyProcess]

# ----------------------------------------------------------------------------- helpers


def reqs(sp: SippProcess | SippResult, direction: str, method: str) -> list[Traced]:
    return [t for t in traced(sp) if t.direction == direction and t.msg.method == method]


def resps(sp: SippProcess | SippResult, direction: str, status: int | None = None,
          method: str = "INVITE") -> list[Traced]:
    """Responses to ``method`` (finals only unless ``status`` names one)."""
    return [t for t in traced(sp)
            if t.direction == direction and t.msg.status is not None
            and (t.msg.status == status if status is not None else t.msg.status >= 200)
            and (t.msg.cseq or (0, ""))[1] == method]


def new_instance() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def reg_ids(ok: SipMessage, instance: str) -> list[int]:
    """The reg-ids of ``instance`` among the bindings a REGISTER 200 lists (RFC 3261 10.3
    step 8: the 200 carries every current binding of the AOR)."""
    out: list[int] = []
    for value in ok.get_all("contact"):
        for c in re.split(r",(?=\s*<)", value):
            m = re.search(r";\s*reg-id\s*=\s*(\d+)", c)
            if instance in c and m:
                out.append(int(m.group(1)))
    return sorted(out)


async def register_flow(sipp: Sipp, proxy: ProxyProcess, port: int, instance: str,
                        reg_id: int, name: str) -> SipMessage:
    """One UDP flow: ob_register.xml from ``port``; returns the 200."""
    reg = await sipp.uac("ob_register.xml", proxy.addr, port=port, service=USER,
                         keys={"domain": DOMAIN, "ob_instance": instance,
                               "ob_regid": str(reg_id)}, timeout=10, name=name)
    res = await reg.wait()
    assert_calls(res, 1)
    ok = resps(res, "received", 200, method="REGISTER")
    assert ok, res.describe()
    return ok[0].msg


async def pbx_call(sipp: Sipp, proxy: ProxyProcess, pbx_port: int, name: str) -> SippResult:
    """The PBX (bound on the upstream port, so the proxy sees it as its upstream) calls
    sip:bob@example.com through the proxy: INVITE, 200, ACK, BYE."""
    pbx = await sipp.uac("uac_call.xml", proxy.addr, port=pbx_port, service=USER,
                         keys={"domain": DOMAIN}, timeout=15, name=name)
    return await pbx.wait()


def outbound_proxy(proxy_factory: ProxyFactory, pbx_port: int,
                   **extra: object) -> ProxyProcess:
    return proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="local",
                         domains=[DOMAIN], policy=str(SHIPPED_POLICY), **extra)


def flow_lines(proxy: ProxyProcess, word: str, since: int = 0) -> list[str]:
    """Log lines ``flow KEY of AOR <word>...`` since ``since``."""
    return [line for line in proxy.lines()[since:]
            if re.search(rf"\bflow \S+ of \S+ {word}", line)]


async def registered_reg_ids(proxy: ProxyProcess, instance: str) -> list[int]:
    """Ask the registrar (a REGISTER without Contact is a query, RFC 3261 10.2.3 / 10.3 step 8)
    which reg-ids of ``instance`` are bound right now, from a raw UDP peer."""
    async with await UdpPeer.bind(free_port(tcp=False)) as peer:
        await peer.send(build_request("REGISTER", f"sip:{DOMAIN}", via_host=LOOPBACK,
                                      via_port=peer.port, from_uri=AOR_URI, to_uri=AOR_URI),
                        proxy.addr)
        ok, _ = await peer.recv_sip(2.0, lambda m: (m.status or 0) >= 200)
    assert ok.status == 200, ok.start_line
    return reg_ids(ok, instance)


async def tcp_register_then_close(proxy: ProxyProcess, instance: str, reg_id: int) -> SipMessage:
    """A raw TCP flow (RFC 5626 5.2): connect, REGISTER with ;ob / +sip.instance / reg-id and
    a Contact at the connection's own address, read the 200, close the connection."""
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    try:
        host, port = writer.get_extra_info("sockname")[:2]
        contact = (f'<sip:{USER}@{host}:{port};transport=tcp;ob>;+sip.instance="<{instance}>"'
                   f";reg-id={reg_id}")
        writer.write(build_request(
            "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
            from_uri=AOR_URI, to_uri=AOR_URI,
            extra_headers=[f"Contact: {contact}", "Expires: 3600", "Supported: outbound, path"],
        ))
        await writer.drain()
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not [r for r in TcpOutcome(data, False, False).responses
                   if (r.status or 0) >= 200]:
            left = deadline - loop.time()
            assert left > 0, f"no final response to the TCP REGISTER: {data!r}"
            chunk = await asyncio.wait_for(reader.read(65536), left)
            assert chunk, f"the proxy closed the TCP flow before answering: {data!r}"
            data += chunk
        final = [r for r in TcpOutcome(data, False, False).responses if (r.status or 0) >= 200]
        assert final[0].status == 200, final[0].start_line
        return final[0]
    finally:
        await close_writer(writer)


# ----------------------------------------------------------------------------- scenarios


async def test_ob_scenarios_pair_without_proxy(sipp: Sipp) -> None:
    """ob_uas_ring_answer_late.xml answers uac_call.xml after ~500 ms (BYE included), and
    ob_uas_flow_failed.xml's 430 fails a caller that wants a 200 (whose ACK completes the UAS's
    call): the scenarios work, and a 430 flow cannot pass for an answering one."""
    late_port, failed_port = free_port(), free_port()
    late = await sipp.uas("ob_uas_ring_answer_late.xml", port=late_port, calls=1, timeout=5,
                          name="self-late")
    failed = await sipp.uas("ob_uas_flow_failed.xml", port=failed_port, calls=1, timeout=5,
                            name="self-430")
    c1 = await sipp.uac("uac_call.xml", (LOOPBACK, late_port), service=USER,
                        keys={"domain": DOMAIN}, timeout=5, name="self-caller-late")
    c2 = await sipp.uac("uac_call.xml", (LOOPBACK, failed_port), service=USER,
                        keys={"domain": DOMAIN}, timeout=5, name="self-caller-430")
    r1, r2 = await c1.wait(), await c2.wait()
    late_res, failed_res = await late.wait(10), await failed.wait(10)
    assert_calls(r1, 1)
    assert_calls(late_res, 1)
    ring = resps(late_res, "sent", 180)
    ok = resps(late_res, "sent", 200)
    assert ring and ok and ok[0].at - ring[0].at >= 0.45
    assert r2.returncode != 0 and r2.successful == 0, r2.describe()
    assert [t.msg.status for t in resps(r2, "received")] == [430]
    # sipp's caller aborts on the unexpected 430 but ACKs it (17.1.1.3): the UAS completes
    assert_calls(failed_res, 1)
    assert reqs(failed_res, "received", "ACK")


# ----------------------------------------------------------------------------- 430


async def test_430_retries_other_flow_and_drops_failed_binding(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """One instance, two UDP flows (reg-id 1 on port P1, then reg-id 2 on P2: the newest).  The
    PBX's INVITE goes over flow 2 only, which answers 430 and gets the proxy's ACK; the proxy
    removes that binding and sends the INVITE over flow 1 on a new branch; flow 1 answers and
    the call completes (BYE through the proxy); a registrar query lists reg-id 1 only.  A second
    call goes straight to flow 1."""
    pbx_port, p1, p2 = free_port(), free_port(), free_port()
    instance = new_instance()
    proxy = outbound_proxy(proxy_factory, pbx_port)
    await register_flow(sipp, proxy, p1, instance, 1, "register-flow1")
    ok = await register_flow(sipp, proxy, p2, instance, 2, "register-flow2")
    assert reg_ids(ok, instance) == [1, 2], ok.get_all("contact")  # one binding per flow
    flow1 = await sipp.uas("uas_answer.xml", port=p1, timeout=30, name="flow1")
    flow2 = await sipp.uas("ob_uas_flow_failed.xml", port=p2, timeout=30, name="flow2")

    mark = proxy.mark()
    first = await pbx_call(sipp, proxy, pbx_port, "pbx-first")
    assert_calls(first, 1)
    assert [t.msg.status for t in resps(first, "received")] == [200]
    failed = flow_lines(proxy, "failed", mark)
    assert len(failed) == 1 and f"<{instance}>|2" in failed[0] and "430" in failed[0], \
        proxy.tail()

    assert await registered_reg_ids(proxy, instance) == [1], "the 430 flow is still bound"

    second = await pbx_call(sipp, proxy, pbx_port, "pbx-second")
    assert_calls(second, 1)
    flow1_res, flow2_res = await flow1.stop(), await flow2.stop()
    proxy.assert_alive()

    ids = [reqs(r, "sent", "INVITE")[0].msg.call_id for r in (first, second)]
    # flow 2: the first call's INVITE only, its 430, the proxy's ACK (scenario requires it)
    assert_calls(flow2_res, 1)
    inv2 = reqs(flow2_res, "received", "INVITE")
    assert [t.msg.call_id for t in inv2] == ids[:1], "flow 2 got a second INVITE"
    assert via_is_proxy(inv2[0].msg, proxy)
    ack2 = reqs(flow2_res, "received", "ACK")
    assert ack2 and branch(ack2[0].msg) == branch(inv2[0].msg)
    # flow 1: both calls (the retried branch after the 430, then the second call directly)
    assert_calls(flow1_res, 2)
    inv1 = reqs(flow1_res, "received", "INVITE")
    assert [t.msg.call_id for t in inv1] == ids
    assert branch(inv1[0].msg) != branch(inv2[0].msg)  # a new client transaction
    sent_430 = resps(flow2_res, "sent", 430)
    assert sent_430 and inv1[0].at >= sent_430[0].at
    assert all(f"{LOOPBACK}:{p1}" in (t.msg.request_uri or "") for t in inv1)
    assert len(reqs(flow1_res, "received", "BYE")) == 2


# ----------------------------------------------------------------------------- dead TCP flow


async def test_closed_tcp_flow_next_invite_goes_to_other_flow_at_once(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """Flow 1 registers over UDP, flow 2 (the newest) over TCP from a raw client, which then
    closes its connection: the proxy drops that binding at once (log ``flow ... closed: binding
    removed``; a registrar query lists reg-id 1 only) and the PBX's next INVITE goes over flow 1
    straight away: it reaches flow 1 within 0.5 s and the call is answered within 2 s (T1 is
    500 ms: any timer would take seconds, Timer B 32 s), and no branch towards the dead flow is
    even tried (no ``flow ... failed`` line)."""
    pbx_port, p1 = free_port(), free_port()
    instance = new_instance()
    proxy = outbound_proxy(proxy_factory, pbx_port, timers={"t1_ms": 500})
    await register_flow(sipp, proxy, p1, instance, 1, "register-flow1")
    mark = proxy.mark()
    ok = await tcp_register_then_close(proxy, instance, 2)
    assert reg_ids(ok, instance) == [1, 2], ok.get_all("contact")
    closed = await proxy.await_log(re.compile(r"\bflow \S+ of \S+ closed"), timeout=2,
                                   since=mark)
    assert f"<{instance}>|2" in closed and "binding removed" in closed, closed
    assert await registered_reg_ids(proxy, instance) == [1], "the closed flow is still bound"

    flow1 = await sipp.uas("uas_answer.xml", port=p1, calls=1, timeout=20, name="flow1")
    mark = proxy.mark()
    pbx_res = await pbx_call(sipp, proxy, pbx_port, "pbx")
    flow1_res = await flow1.wait(10)
    proxy.assert_alive()

    assert_calls(pbx_res, 1)
    assert_calls(flow1_res, 1)
    invite = reqs(pbx_res, "sent", "INVITE")[0]
    answered = resps(pbx_res, "received", 200)[0]
    reached = reqs(flow1_res, "received", "INVITE")[0]
    assert reached.msg.call_id == invite.msg.call_id
    assert reached.at - invite.at < 0.5, f"flow 1 got the INVITE {reached.at - invite.at:.3f} s late"
    assert answered.at - invite.at < 2.0, f"answered after {answered.at - invite.at:.3f} s"
    assert flow_lines(proxy, "failed", mark) == [], "the proxy tried the closed flow"


# ----------------------------------------------------------------------------- two instances


async def test_two_instances_one_430_other_keeps_ringing(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """AOR bob with instance A (flow A1 reg-id 1, then A2 reg-id 2: the newest) and instance B
    (one flow).  The INVITE forks to A2 and B in parallel; A2 answers 430 -> retried over A1,
    which rings and answers 200 after ~0.5 s; B rings (180) all along, is not cancelled by A2's
    430, and gets the CANCEL only after A1's 200 (RFC 3261 16.7 step 10), answers 200/487 and
    gets the ACK.  The PBX's call succeeds with A1's 200."""
    pbx_port, pa1, pa2, pb = free_port(), free_port(), free_port(), free_port()
    inst_a, inst_b = new_instance(), new_instance()
    proxy = outbound_proxy(proxy_factory, pbx_port)
    await register_flow(sipp, proxy, pa1, inst_a, 1, "register-a1")
    await register_flow(sipp, proxy, pa2, inst_a, 2, "register-a2")
    ok = await register_flow(sipp, proxy, pb, inst_b, 1, "register-b")
    assert reg_ids(ok, inst_a) == [1, 2] and reg_ids(ok, inst_b) == [1], ok.get_all("contact")

    a1 = await sipp.uas("ob_uas_ring_answer_late.xml", port=pa1, calls=1, timeout=20,
                        name="a1")
    a2 = await sipp.uas("ob_uas_flow_failed.xml", port=pa2, calls=1, timeout=20, name="a2")
    b = await sipp.uas("uas_cancel_after_180.xml", port=pb, calls=1, timeout=20, name="b")
    pbx_res = await pbx_call(sipp, proxy, pbx_port, "pbx")
    a1_res, a2_res, b_res = await a1.wait(10), await a2.wait(10), await b.wait(10)
    proxy.assert_alive()

    assert_calls(pbx_res, 1)
    assert [t.msg.status for t in resps(pbx_res, "received")] == [200]
    assert_calls(a2_res, 1)  # INVITE, 430, ACK
    assert_calls(a1_res, 1)  # INVITE, 180, 200, BYE
    assert_calls(b_res, 1)  # INVITE, 180, CANCEL, 200, 487, ACK

    inv_a2 = reqs(a2_res, "received", "INVITE")[0]
    inv_a1 = reqs(a1_res, "received", "INVITE")[0]
    inv_b = reqs(b_res, "received", "INVITE")[0]
    sent_430 = resps(a2_res, "sent", 430)[0]
    ok_a1 = resps(a1_res, "sent", 200)[0]
    cancel_b = reqs(b_res, "received", "CANCEL")[0]
    # A's flows one after the other; B in parallel with A's first flow
    # sipp stamps a message it sends after the send: a proxy that relays the retry within
    # tens of microseconds can have it at the next flow before the 430's own stamp
    assert inv_a1.at >= inv_a2.at and inv_a1.at >= sent_430.at - 0.005
    assert inv_b.at < sent_430.at + 0.2, "B was not forked in parallel with instance A"
    assert len({branch(t.msg) for t in (inv_a1, inv_a2, inv_b)}) == 3
    # B kept ringing through the 430 and was cancelled only after A1's 200
    assert cancel_b.at >= ok_a1.at, (
        f"B got the CANCEL {ok_a1.at - cancel_b.at:.3f} s before A1's 200")
    assert cancel_b.at - sent_430.at >= 0.4, "B was cancelled around the 430, not after the 200"
    assert branch(cancel_b.msg) == branch(inv_b.msg) and via_is_proxy(cancel_b.msg, proxy)
    assert reqs(b_res, "received", "ACK"), "B's 487 was not ACKed"
    assert reqs(a1_res, "received", "BYE")


# ----------------------------------------------------------------------------- keep-alives

STUN_COOKIE = 0x2112A442


async def test_stun_keepalive_answered(proxy_factory: ProxyFactory) -> None:
    """A STUN Binding request (RFC 5389 6: type 0x0001, length 0, magic cookie, 96-bit
    transaction id) on the proxy's SIP UDP port gets a Binding Success response (0x0101) with
    the same transaction id and an XOR-MAPPED-ADDRESS equal to the test socket's address
    (RFC 5389 15.2; RFC 5626 4.4.2, 8); a FINGERPRINT, when present, is correct (15.5)."""
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{free_port()}"])
    async with await UdpPeer.bind(free_port(tcp=False)) as peer:
        txid = os.urandom(12)
        await peer.send(struct.pack("!HHI", 0x0001, 0, STUN_COOKIE) + txid, proxy.addr)
        d = await peer.recv(2.0)
    data = d.data
    assert d.addr == proxy.addr
    assert len(data) >= 20, data
    kind, length, cookie = struct.unpack_from("!HHI", data)
    assert (kind, cookie, data[8:20]) == (0x0101, STUN_COOKIE, txid), data.hex()
    assert length == len(data) - 20 and length % 4 == 0, data.hex()
    attrs: dict[int, bytes] = {}
    offsets: dict[int, int] = {}
    i = 20
    while i < len(data):
        a_type, a_len = struct.unpack_from("!HH", data, i)
        attrs[a_type] = data[i + 4:i + 4 + a_len]
        offsets[a_type] = i
        i += 4 + ((a_len + 3) & ~3)
    assert i == len(data), data.hex()
    xma = attrs.get(0x0020)
    assert xma is not None and len(xma) == 8, data.hex()
    family, x_port = struct.unpack_from("!xBH", xma)
    x_addr = struct.unpack_from("!I", xma, 4)[0]
    assert family == 0x01
    mapped = (".".join(str(b) for b in struct.pack("!I", x_addr ^ STUN_COOKIE)),
              x_port ^ (STUN_COOKIE >> 16))
    assert mapped == peer.addr, (mapped, peer.addr)
    if 0x8028 in attrs:
        at = offsets[0x8028]
        assert at + 8 == len(data), "FINGERPRINT must be the last attribute"
        want = zlib.crc32(data[:at]) ^ 0x5354554E
        assert struct.unpack("!I", attrs[0x8028])[0] == want
    assert not any("bad request" in line for line in proxy.lines()), proxy.tail()
    proxy.assert_alive()


async def test_crlf_ping_gets_pong(proxy_factory: ProxyFactory) -> None:
    """RFC 5626 4.4.1: a CRLFCRLF ping on a TCP connection is answered with one CRLF pong, and
    the connection still carries SIP afterwards (an OPTIONS for the proxy gets its 200)."""
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{free_port()}"])
    reader, writer = await asyncio.open_connection(*proxy.addr)
    try:
        writer.write(b"\r\n\r\n")
        await writer.drain()
        pong = await asyncio.wait_for(reader.readexactly(2), 2.0)
        assert pong == b"\r\n"
        host, port = writer.get_extra_info("sockname")[:2]
        writer.write(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}", via_host=host,
                                   via_port=port, transport="TCP"))
        await writer.drain()
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while not TcpOutcome(data, False, False).responses:
            left = deadline - loop.time()
            assert left > 0, f"no response to the OPTIONS after the ping: {data!r}"
            chunk = await asyncio.wait_for(reader.read(65536), left)
            assert chunk, f"the proxy closed the connection after the ping: {data!r}"
            data += chunk
        # no second pong, nothing but the response on the stream
        assert data.startswith(b"SIP/2.0 200"), data[:80]
        assert TcpOutcome(data, False, False).responses[0].cseq == (1, "OPTIONS")
    finally:
        await close_writer(writer)
    proxy.assert_alive()
