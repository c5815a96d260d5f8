"""The trust model end to end (issue 18; issue 19's ACK for a 2xx): what a Record-Route
value, a flow token, a branch and a source prove, tried as an attacker would on the real
proxy process over loopback.

The proxy and its PBX are on 127.0.0.1; the *stranger* is a socket on 127.0.0.2 (neither an
upstream nor a trusted relay); the *foreign host* or *victim* is a socket on 127.0.0.1 that
the stranger would like the proxy to send traffic to. What each test proves:

* a Record-Route harvested from a real call and replayed with a new Call-ID and an invented
  To tag toward a foreign host gets 481 (RFC 3261 12.2.2) and reaches nobody; with the call's
  own Call-ID and tags it gets 403 (a UA's in-dialog request goes to an upstream only);
* a TCP flow token (Path) from before a restart of the proxy gets 430 (RFC 5626 5.3), and the
  phone whose connection now has the same connection id receives nothing;
* a response with the proxy's old top Via and a second Via naming a victim, after its
  transaction ended or with another CSeq method, reaches no one; the genuine late 2xx does;
* INVITEs with invented To tags above ``per_source_rps`` get 481 or 503 and none reaches the
  PBX, while a call from another source completes;
* a rate-limited INVITE that is never ACKed gets exactly one 503 (no retransmissions);
* 1,000 CANCELs for no transaction get 481 each and leave the ``transactions`` gauge at 0;
* with a PBX that does not copy Record-Route into its 200 (sipp's built-in UAS), the caller's
  ACK, whose Request-URI is the PBX's Contact, is relayed to the PBX (issue 19).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    SIPP,
    ProxyProcess,
    Sipp,
    assert_calls,
    free_port,
    sipp_msgs,
)
from tests.e2e.test_edge_outbound_e2e import (
    DOMAIN,
    new_instance,
    outbound_contact,
    pbx_invite,
    pbx_registrar_answers,
    the_path,
)
from tests.e2e.test_redirect_e2e import restart
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
)

pytestmark = pytest.mark.e2e

STRANGER = "127.0.0.2"
#: the foreign host, a victim: not the PBX's address (redirects.allow_targets names the
#: upstreams' hosts by default, where a call may be redirected to)
FOREIGN = "127.0.0.3"
WAIT = 3.0  # bound for anything that must arrive (loopback: milliseconds)
SILENCE = 1.0  # the window in which nothing must arrive
SECRET = "trust-e2e-secret-of-the-test-0123456789"
ProxyFactory = Callable[..., ProxyProcess]


# ----------------------------------------------------------------------------- helpers


class AnsweringPbx(RecordingUpstream):
    """A UDP PBX that answers every request but ACK with 200 (an INVITE's with its Contact
    and, unless ``copy_rr`` is off, the Record-Route copied, RFC 3261 12.1.1), recording
    everything it receives."""

    copy_rr = True

    async def _run(self) -> None:
        while True:
            d = await self.peer._next_raw()
            msg = d.sip
            if msg is not None and msg.is_request and msg.method != "ACK":
                extra = [f"Contact: <sip:pbx@{LOOPBACK}:{self.port}>"]
                if msg.method == "INVITE" and self.copy_rr:
                    extra += [f"Record-Route: {v}" for v in msg.get_all("record-route")]
                await self.peer.send(build_response(msg, 200, "OK", to_tag="pbx1",
                                                    extra_headers=extra), d.addr)
            async with self._changed:
                self.records.append(d)
                self._changed.notify_all()

    def requests(self, pred: Callable[[SipMessage], bool]) -> list[SipMessage]:
        return [m for d in self.records if (m := d.sip) is not None and m.is_request and pred(m)]


def with_to_tag(data: bytes, tag: str) -> bytes:
    """``data`` with ``;tag=`` added to its To header field (an in-dialog request)."""
    return re.sub(rb"(\r\nTo: [^\r\n]*)", lambda m: m.group(1) + b";tag=" + tag.encode(), data,
                  count=1)


async def final_response(peer: UdpPeer, call_id: str, timeout: float = WAIT) -> SipMessage:
    msg, _ = await peer.recv_sip(timeout, lambda m: m.call_id == call_id and (m.status or 0) >= 200)
    return msg


async def assert_silent(peer: UdpPeer, who: str, proxy: ProxyProcess,
                        window: float = SILENCE) -> None:
    got = await peer.quiet(window)
    leaked = [d.sip.start_line if d.sip else d.data[:80] for d in got]
    assert leaked == [], f"{who} received {leaked}\n" + proxy.tail(15)


def http_config(**extra: object) -> dict[str, object]:
    return {"http": f"{LOOPBACK}:{free_port(udp=False)}", **extra}


def gauge(proxy: ProxyProcess, name: str) -> float:
    host, port = proxy.config["http"].rsplit(":", 1)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^sip_policy_proxy_{name} (\S+)$", text, re.M)
    assert m is not None, f"no {name} in /metrics"
    return float(m.group(1))


async def await_gauge(proxy: ProxyProcess, name: str, want: float, timeout: float) -> float:
    """Poll the gauge until it reads ``want`` (bounded); returns the last value read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(gauge, proxy, name)
        if value == want or loop.time() >= deadline:
            return value
        await asyncio.sleep(0.2)  # bounded poll: the gauge changes with no event to await


def refused_lines(proxy: ProxyProcess, reason: str, since: int = 0) -> list[str]:
    return [line for line in proxy.lines()[since:]
            if "refused" in line and f"({reason})" in line and f"from {STRANGER}:" in line]


# ----------------------------------------------------------------------------- 1. Record-Route


async def test_a_harvested_record_route_replayed_with_a_new_call_id_is_refused(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 case 1 (toll fraud): the stranger makes one real call through the proxy to
    the PBX, keeps the Record-Route of its 200 (with the flow token and the dialog mark), and
    replays it in INVITEs for ``sip:+19005550000@FOREIGN`` with a new Call-ID and an invented
    To tag: each gets 481 once (RFC 3261 12.2.2), logged once for the source; with the call's
    own Call-ID and tags, 403 (a UA's in-dialog request goes only to an upstream). Neither the
    foreign host nor the PBX receives any of them. The real call's ACK and BYE (proven by the
    same Record-Route) do reach the PBX."""
    pbx = await AnsweringPbx.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"])
        async with await UdpPeer.bind(0, FOREIGN) as foreign, \
                await UdpPeer.bind(0, STRANGER) as stranger:
            call_id = new_call_id("harvest")
            me = dict(via_host=STRANGER, via_port=stranger.port,
                      from_uri=f"sip:mallory@{STRANGER}", from_tag="mallory")
            invite = build_request("INVITE", f"sip:alice@{DOMAIN}", call_id=call_id, **me,
                                   extra_headers=[f"Contact: <sip:mallory@{STRANGER}:"
                                                  f"{stranger.port}>"])
            await stranger.send(invite, proxy.addr)
            ok = await final_response(stranger, call_id)
            assert ok.status == 200, ok.start_line
            rr = [v for line in ok.get_all("record-route") for v in split_via_values(line)]
            assert rr, ok.raw
            route = [f"Route: {v}" for v in reversed(rr)]  # RFC 3261 12.1.2
            pbx_uri = f"sip:pbx@{LOOPBACK}:{pbx.port}"
            for method, cseq in (("ACK", 1), ("BYE", 2)):
                await stranger.send(with_to_tag(build_request(
                    method, pbx_uri, call_id=call_id, cseq=cseq, to_uri=f"sip:alice@{DOMAIN}",
                    **me, extra_headers=route), "pbx1"), proxy.addr)
                got = await pbx.wait_for(lambda m, x=method: m.method == x and
                                         m.call_id == call_id, WAIT)
                assert got.get("route") is None, got.get("route")
            mark, seen = proxy.mark(), pbx.mark()
            victim = f"sip:+19005550000@{FOREIGN}:{foreign.port}"
            replays = [new_call_id("toll") for _ in range(3)]
            for cid in replays:
                await stranger.send(with_to_tag(build_request(
                    "INVITE", victim, call_id=cid, **me, extra_headers=route), "anything"),
                    proxy.addr)
                final = await final_response(stranger, cid)
                assert final.status == 481, final.start_line
            await stranger.send(with_to_tag(build_request(
                "INVITE", victim, call_id=call_id, cseq=3, to_uri=f"sip:alice@{DOMAIN}", **me,
                extra_headers=route), "pbx1"), proxy.addr)
            final, _ = await stranger.recv_sip(WAIT, lambda m: m.call_id == call_id and
                                               m.cseq == (3, "INVITE") and (m.status or 0) >= 200)
            assert final.status == 403, final.start_line
            await stranger.send(build_ack(victim, final), proxy.addr)
            await assert_silent(foreign, "the foreign host", proxy)
            assert pbx.since(seen) == [], [d.data[:60] for d in pbx.since(seen)]
            assert len(refused_lines(proxy, "unproven", mark)) == 1, proxy.tail(10)
        proxy.assert_alive()
    finally:
        await pbx.close()


# ----------------------------------------------------------------------------- 2. restart


async def test_a_tcp_flow_token_from_before_a_restart_gets_430_and_rings_no_other_phone(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 case 2: alice registers over TCP through the edge proxy (the PBX keeps her
    Path, whose flow token names connection 1); the proxy restarts (same ``secret``, so the
    token still verifies); bob connects and registers, and his connection is now the one with
    that id. The PBX's INVITE by alice's old Path gets 430 Flow Failed (RFC 5626 5.3) and
    bob's connection receives nothing (before: bob's phone rang)."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="upstream",
                          extra={"secret": SECRET})

    async def register(user: str) -> tuple[SipStream, str]:
        phone = await SipStream.connect(*running.addr, timeout=WAIT)
        host, port = phone.local
        aor = f"sip:{user}@{DOMAIN}"
        contact = outbound_contact(f"sip:{user}@192.0.2.55:5060;transport=tcp;ob",
                                   new_instance())
        await phone.send(build_request(
            "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
            from_uri=aor, to_uri=aor, from_tag=f"{user}reg",
            extra_headers=[f"Contact: {contact}", "Expires: 3600", "Supported: outbound, path"],
        ))
        reg = await pbx_registrar_answers(pbx, running)
        ok = await phone.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
        assert ok.status == 200, ok.start_line
        return phone, the_path(reg, running, "udp").raw

    running = proxy
    async with await UdpPeer.bind(pbx_port) as pbx:
        alice, alice_path = await register("alice")
        await alice.close()
        running = await restart(proxy_factory, proxy)  # type: ignore[arg-type]
        bob, _ = await register("bob")
        try:
            call_id = new_call_id("restart")
            await pbx.send(pbx_invite(pbx, alice_path, call_id), running.addr)
            final, _ = await pbx.recv_sip(WAIT, lambda m: m.call_id == call_id and
                                          (m.status or 0) >= 200)
            assert final.status == 430, final.start_line
            assert bob.pending == [] and bob.buffer.strip() == b"", bob.buffer[:200]
            try:
                data = await asyncio.wait_for(bob.reader.read(65536), SILENCE)
            except TimeoutError:
                data = b""
            assert data == b"", f"bob's connection received {data[:200]!r}"
        finally:
            await bob.close()
    running.assert_alive()


# ----------------------------------------------------------------------------- 3. reflection


async def test_a_reflected_response_reaches_no_named_host(proxy_factory: ProxyFactory) -> None:
    """Issue 18 case 3: a 200 with the proxy's top Via (the branch of a real INVITE it
    forwarded) and a second Via naming a victim is dropped and counted: at once with another
    CSeq method (the INVITE's transaction still live) and after its transaction ended
    (T1 = 50 ms: 64*T1 = 3.2 s). The genuine 200, retransmitted after the end, still reaches
    the caller (RFC 6026 7.2, forwarded statelessly)."""
    pbx = await UdpPeer.bind(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"],
                              timers={"t1_ms": 50, "t2_ms": 400, "t4_ms": 500},
                              extra=http_config())
        async with await UdpPeer.bind(free_port(tcp=False)) as caller, \
                await UdpPeer.bind(0, FOREIGN) as victim, \
                await UdpPeer.bind(0, STRANGER) as stranger:
            call_id = new_call_id("reflect")
            await caller.send(build_request("INVITE", f"sip:alice@{DOMAIN}", call_id=call_id,
                                            via_host=LOOPBACK, via_port=caller.port),
                              proxy.addr)
            invite, _ = await pbx.recv_sip(WAIT, lambda m: m.method == "INVITE")
            ok = build_response(invite, 200, "OK", to_tag="pbx1",
                                extra_headers=[f"Contact: <sip:pbx@{LOOPBACK}:{pbx.port}>"])
            reflected = re.sub(rb"(\r\nVia: [^\r\n]*\r\nVia: SIP/2.0/UDP )[^;\r\n]+",
                               lambda m: m.group(1) + f"{FOREIGN}:{victim.port}".encode(),
                               ok, count=1)
            assert reflected != ok
            other_method = reflected.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
            await stranger.send(other_method, proxy.addr)  # the INVITE's branch is live
            await pbx.send(ok, proxy.addr)
            got = await final_response(caller, call_id)
            assert got.status == 200
            await caller.send(build_ack(f"sip:pbx@{LOOPBACK}:{pbx.port}", got), proxy.addr)
            assert await await_gauge(proxy, "transactions", 0, 15.0) == 0
            await stranger.send(reflected, proxy.addr)  # the transaction ended
            await stranger.send(other_method, proxy.addr)
            await assert_silent(victim, "the victim", proxy)
            await pbx.send(ok, proxy.addr)  # a genuine late retransmission
            late = await final_response(caller, call_id)
            assert late.status == 200
        proxy.assert_alive()
    finally:
        pbx.close()


# ----------------------------------------------------------------------------- 4. rate limits


async def test_invented_to_tags_are_limited_and_never_reach_the_pbx(
    proxy_factory: ProxyFactory, sipp: Sipp,
) -> None:
    """Issue 18 case 4: 300 INVITEs with invented To tags from one stranger within about a
    second with ``per_source_rps: 20`` each get 481 (within the rate) or 503 (over it), once;
    the PBX receives none of them (before: all of them, never limited); a call from another
    source completes meanwhile."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"],
                          limits={"per_source_rps": 20})
    uas = await sipp.uas("uas_answer.xml", port=pbx_port, timeout=30, name="pbx")
    async with await UdpPeer.bind(0, STRANGER) as stranger:
        ids = [new_call_id("tag") for _ in range(300)]
        got: dict[str, list[int]] = {}
        for start in range(0, 300, 50):  # batches: no burst beyond the sockets' buffers
            batch = ids[start:start + 50]
            for i, cid in enumerate(batch):
                await stranger.send(with_to_tag(build_request(
                    "INVITE", f"sip:alice@{DOMAIN}", call_id=cid, via_host=STRANGER,
                    via_port=stranger.port, from_tag="m"), f"invented{start + i}"), proxy.addr)
            while not got.keys() >= set(batch):
                msg, _ = await stranger.recv_sip(WAIT, lambda m, b=batch: m.call_id in b)
                got.setdefault(msg.call_id or "", []).append(msg.status or 0)
        got_late = await stranger.quiet(SILENCE)  # nothing more: each refusal is sent once
        for d in got_late:
            if d.sip is not None and d.sip.call_id in got:
                got[d.sip.call_id].append(d.sip.status or 0)
        assert all(len(v) == 1 for v in got.values()), "a refusal sent more than once"
        statuses = [v[0] for v in got.values()]
        assert set(statuses) == {481, 503}, set(statuses)
        assert statuses.count(503) >= 250, statuses.count(503)
        caller = await sipp.uac("uac_call.xml", proxy.addr, calls=1, timeout=20, name="caller")
        assert_calls(await caller.wait(), 1)
    result = await uas.stop(grace=3.0)
    leaked = sipp_msgs(result, "received", lambda m: m.call_id in ids)
    assert leaked == [], [m.start_line for m in leaked]
    proxy.assert_alive()


async def test_a_rate_limited_invite_without_ack_gets_exactly_one_503(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 case 8 (amplification): over ``per_source_rps`` an INVITE gets 503 once,
    statelessly, without 100 Trying, and nothing more while it is never ACKed (before: the
    503 was retransmitted at T1, 2*T1, ... through a server transaction, 11 times)."""
    pbx = await RecordingUpstream.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"],
                              limits={"per_source_rps": 1},
                              timers={"t1_ms": 100, "t2_ms": 400, "t4_ms": 500})
        async with await UdpPeer.bind(0, STRANGER) as stranger:
            first, second = new_call_id("rl"), new_call_id("rl")
            for cid in (first, second):
                await stranger.send(build_request("INVITE", f"sip:alice@{DOMAIN}", call_id=cid,
                                                  via_host=STRANGER, via_port=stranger.port),
                                    proxy.addr)
            refused = await final_response(stranger, second)
            assert refused.status == 503 and refused.get("retry-after"), refused.start_line
            # 64*T1 = 6.4 s would hold retransmissions at 0.1, 0.3, 0.7, 1.1, 1.5 s ...
            later = await stranger.quiet(2.0)
            again = [d.sip.start_line for d in later
                     if d.sip is not None and d.sip.call_id == second]
            assert again == [], again
            assert not [d for d in pbx.records if d.sip and d.sip.call_id == second]
        proxy.assert_alive()
    finally:
        await pbx.close()


# ----------------------------------------------------------------------------- 5. CANCEL flood


async def test_a_thousand_unknown_cancels_leave_no_transaction(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 case 7: 1,000 CANCELs for no transaction each get one 481 and the
    ``transactions`` gauge stays 0 (before: each held a server transaction for 32 s)."""
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{free_port(tcp=False)}"],
                          extra=http_config())
    async with await UdpPeer.bind(0, STRANGER) as stranger:
        ids = [new_call_id("cancel") for _ in range(1000)]
        answered: set[str] = set()
        for start in range(0, 1000, 50):  # in batches: a datagram burst must not overflow
            batch = ids[start:start + 50]  # the sockets' buffers on a loaded machine
            for cid in batch:
                await stranger.send(build_request("CANCEL", f"sip:alice@{DOMAIN}", call_id=cid,
                                                  via_host=STRANGER, via_port=stranger.port),
                                    proxy.addr)
            while not answered.issuperset(batch):
                msg, _ = await stranger.recv_sip(WAIT, lambda m, b=batch: m.call_id in b)
                assert msg.status == 481, msg.start_line
                answered.add(msg.call_id or "")
        assert await asyncio.to_thread(gauge, proxy, "transactions") == 0
    proxy.assert_alive()


# ----------------------------------------------------------------------------- 6. issue 19 ACK


def builtin_uas(workdir: Path) -> Path:
    """sipp's built-in UAS scenario (``sipp -sd uas``): its 200 carries no Record-Route."""
    path = workdir / "builtin_uas.xml"
    text = subprocess.run([SIPP, "-sd", "uas"], capture_output=True, text=True, check=False,
                          timeout=10).stdout
    assert "<scenario" in text and "Record-Route" not in text.split("<recv request=\"ACK\"")[0]
    path.write_text(text)
    return path


async def test_an_ack_for_a_2xx_toward_an_upstream_without_record_route_is_relayed(
    proxy_factory: ProxyFactory, sipp: Sipp, tmp_path: Path,
) -> None:
    """Issue 19: sipp's built-in UAS as the PBX does not copy Record-Route into its 200, so
    the caller (uac_call.xml, rrs) sends its ACK and BYE to the PBX's Contact with no Route.
    The dialog is the proxy's (it forwarded the 200): the ACK is relayed to the PBX, an
    upstream (before: dropped as "not of a dialog through this proxy"), and the call ends."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"])
    uas = await sipp.uas(str(builtin_uas(tmp_path)), port=pbx_port, calls=1, timeout=20,
                         name="pbx")
    caller = await sipp.uac("uac_call.xml", proxy.addr, calls=1, timeout=20, name="caller")
    assert_calls(await caller.wait(), 1)
    result = await uas.wait(20)
    acks = sipp_msgs(result, "received", lambda m: m.method == "ACK")
    assert len(acks) == 1, result.describe()
    assert not any("dropped ACK" in line for line in proxy.lines()), proxy.tail(10)
    proxy.assert_alive()
