"""No open relay, no reflector (docs/BEHAVIOUR.md "No open relay, no reflector"), end to end over loopback.

A *stranger* is a socket bound to 127.0.0.2: neither an upstream (whose address is
127.0.0.1:PBX) nor in ``trusted_relays``.  The *victim* is a UDP socket on 127.0.0.1 that the
stranger would like the proxy to send traffic to.  What each test proves:

* a stranger's initial INVITE or MESSAGE with a preloaded ``Route`` naming the victim (by IP or
  by the name ``localhost``) gets ``403 Relaying Denied`` and reaches nobody; its initial ACK
  with such a Route is dropped; the refusal is logged once per source per minute, not once per
  request (RFC 3261 16.4 lets a proxy refuse to loose-route for strangers, 26.4.4 leaves the
  defence against abuse to the element);
* a stranger's Request-URI never names a next hop: with a Route naming the proxy itself, or
  with a top Via forging the upstream's address, the INVITE for ``sip:someone@VICTIM`` goes to
  the upstream (docs/BEHAVIOUR.md "Routing": anything else to the upstreams; trust is judged by the packet's source,
  never by Via);
* the upstream's own requests still go to their Request-URI (routing step 4): a sipp call from
  the upstream's socket reaches a sipp UAS on the victim's port and completes;
* a ``trusted_relays`` host may preload a Route to any host;
* a forged response (top Via naming the proxy with a branch it never generated, second Via
  naming the victim) is dropped, not reflected to the victim; a genuine 2xx retransmission is
  still relayed, both while the client transaction exists and after it ended (RFC 6026 7.2,
  RFC 3261 16.7 / 16.11: forwarded statelessly by the proxy's MAC-signed branch).
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Callable

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    ProxyProcess,
    Sipp,
    assert_calls,
    free_port,
    sipp_msgs,
)
from tests.e2e.wire import (
    RecordingUpstream,
    SipMessage,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    new_call_id,
    via_sent_by,
)

pytestmark = pytest.mark.e2e

STRANGER = "127.0.0.2"
WAIT = 3.0  # bound for anything that must arrive (loopback: milliseconds)
SILENCE = 1.0  # the window in which nothing must arrive
ProxyFactory = Callable[..., ProxyProcess]


# ----------------------------------------------------------------------------- helpers


async def final_response(peer: UdpPeer, call_id: str, timeout: float = WAIT) -> SipMessage:
    """The first final response (>= 200) for ``call_id`` that ``peer`` receives."""
    msg, _ = await peer.recv_sip(
        timeout, lambda m: m.call_id == call_id and (m.status or 0) >= 200)
    return msg


def stranger_request(stranger: UdpPeer, method: str, uri: str, *, routes: tuple[str, ...] = (),
                     via: tuple[str, int] | None = None, call_id: str | None = None) -> bytes:
    host, port = via or stranger.addr
    return build_request(
        method, uri, via_host=host, via_port=port, call_id=call_id,
        from_uri=f"sip:mallory@{STRANGER}", from_tag="mallory",
        extra_headers=[*(f"Route: {r}" for r in routes),
                       f"Contact: <sip:mallory@{STRANGER}:{stranger.port}>"],
        body=b"hello" if method == "MESSAGE" else b"",
        content_type="text/plain" if method == "MESSAGE" else None,
    )


async def assert_silent(peer: UdpPeer, who: str, proxy: ProxyProcess,
                        window: float = SILENCE) -> None:
    got = await peer.quiet(window)
    leaked = [d.sip.start_line if d.sip else d.data[:80] for d in got]
    assert leaked == [], f"{who} received {leaked}\n" + proxy.tail(15)


def refusal_lines(proxy: ProxyProcess, host: str, since: int = 0) -> list[str]:
    return [line for line in proxy.lines()[since:]
            if "refused" in line and f"from {host}:" in line]


# ----------------------------------------------------------------------------- 1a. Route


async def test_stranger_preloaded_route_gets_403_and_reaches_nobody(
    proxy_factory: ProxyFactory,
) -> None:
    """docs/BEHAVIOUR.md "No open relay, no reflector": an initial request whose Route names another host is
    relayed only for an upstream or a trusted relay; a stranger's gets 403.  Three INVITEs with
    ``Route: <sip:127.0.0.1:VICTIM;lr>`` each get 403 "Relaying Denied" (ACKed, RFC 3261
    17.1.1.3) and the proxy logs exactly one WARNING "refused" line for the source (once per
    source per minute); a MESSAGE and an INVITE with ``Route: <sip:localhost:VICTIM;lr>`` get
    403 too; an initial ACK with such a Route is dropped.  The victim and the upstream receive
    nothing."""
    upstream = await RecordingUpstream.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"])
        async with await UdpPeer.bind(free_port(tcp=False)) as victim, \
                await UdpPeer.bind(0, STRANGER) as stranger:
            assert stranger.addr[0] == STRANGER
            mark = proxy.mark()
            victim_uri = f"sip:someone@{LOOPBACK}:{victim.port}"
            cases = [
                ("INVITE", f"<sip:{LOOPBACK}:{victim.port};lr>"),
                ("INVITE", f"<sip:{LOOPBACK}:{victim.port};lr>"),
                ("INVITE", f"<sip:{LOOPBACK}:{victim.port};lr>"),
                ("MESSAGE", f"<sip:{LOOPBACK}:{victim.port};lr>"),
                ("INVITE", f"<sip:localhost:{victim.port};lr>"),
            ]
            for method, route in cases:
                call_id = new_call_id("relay")
                await stranger.send(stranger_request(stranger, method, victim_uri,
                                                     routes=(route,), call_id=call_id),
                                    proxy.addr)
                final = await final_response(stranger, call_id)
                assert final.status == 403, f"{method} Route {route}: {final.start_line}"
                assert "relaying denied" in final.start_line.lower(), final.start_line
                assert final.cseq == (1, method)
                if method == "INVITE":
                    await stranger.send(build_ack(victim_uri, final), proxy.addr)

            # an initial ACK (no transaction, no To tag) with a preloaded Route: dropped
            await stranger.send(stranger_request(
                stranger, "ACK", victim_uri, routes=(f"<sip:{LOOPBACK}:{victim.port};lr>",)),
                proxy.addr)
            await assert_silent(victim, "the victim", proxy)

            lines = refusal_lines(proxy, STRANGER, mark)
            assert len(lines) == 1, (
                f"want exactly one 'refused' log line for {STRANGER} (once per source per "
                f"minute), got {len(lines)}:\n" + "\n".join(lines))
            assert " WARNING " in lines[0], lines[0]
            assert upstream.records == [], \
                [d.sip.start_line if d.sip else d.data[:60] for d in upstream.records]
        proxy.assert_alive()
    finally:
        await upstream.close()


# ----------------------------------------------------------------------------- 1b/1c. R-URI


@pytest.mark.parametrize("trick", ["route-to-proxy", "forged-upstream-via"])
async def test_stranger_request_uri_is_never_a_next_hop(
    proxy_factory: ProxyFactory, trick: str,
) -> None:
    """docs/BEHAVIOUR.md "Routing" (last step) and "No open relay": a stranger's request goes to the upstreams,
    never to a host its Request-URI names.  ``route-to-proxy``: ``Route: <sip:PROXY;lr>`` (the
    proxy pops its own value, RFC 3261 16.4) with ``INVITE sip:someone@127.0.0.1:VICTIM``;
    ``forged-upstream-via``: the top Via claims the upstream's address (trust is judged by the
    packet's source, never by Via).  The upstream gets the INVITE (and its 480 reaches the
    stranger, whose real address the proxy answered to); the victim gets nothing."""
    upstream = await RecordingUpstream.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"])
        async with await UdpPeer.bind(free_port(tcp=False)) as victim, \
                await UdpPeer.bind(0, STRANGER) as stranger:
            call_id = new_call_id(trick)
            victim_uri = f"sip:someone@{LOOPBACK}:{victim.port}"
            if trick == "route-to-proxy":
                data = stranger_request(stranger, "INVITE", victim_uri, call_id=call_id,
                                        routes=(f"<sip:{LOOPBACK}:{proxy.port};lr>",))
            else:
                data = stranger_request(stranger, "INVITE", victim_uri, call_id=call_id,
                                        via=(LOOPBACK, upstream.port))
            mark = upstream.mark()
            await stranger.send(data, proxy.addr)
            got = await upstream.wait_for(lambda m: m.call_id == call_id, WAIT, since=mark)
            assert got.method == "INVITE" and got.request_uri == victim_uri, got.start_line
            _, host, port, _ = via_sent_by(got.vias[0])
            assert (host, port) == proxy.addr, got.vias
            assert got.get("route") is None, got.get("route")
            final = await final_response(stranger, call_id)
            assert final.status == 480, final.start_line
            await stranger.send(build_ack(victim_uri, final), proxy.addr)
            await assert_silent(victim, "the victim", proxy)
        proxy.assert_alive()
    finally:
        await upstream.close()


# ----------------------------------------------------------------------------- 1d. upstream


async def test_upstream_request_goes_to_its_request_uri(
    proxy_factory: ProxyFactory, sipp: Sipp,
) -> None:
    """docs/BEHAVIOUR.md "Routing": a request that came from an upstream (its packets come from the
    upstream's address) goes to its Request-URI.  sipp as the PBX, bound on the upstream's
    port, calls ``sip:someone@127.0.0.1:VICTIM``; a sipp UAS on VICTIM answers; ACK and BYE
    follow the Record-Route (RFC 3261 12.2.1.1) and the call completes."""
    pbx_port = free_port()
    victim_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"])
    victim = await sipp.uas("uas_answer.xml", port=victim_port, timeout=20, name="victim")
    pbx = await sipp.uac("uac_call.xml", proxy.addr, port=pbx_port, service="someone",
                         keys={"domain": f"{LOOPBACK}:{victim_port}"}, timeout=20, name="pbx")
    pbx_res = await pbx.wait()
    victim_res = await victim.stop()
    assert_calls(pbx_res, 1)
    assert victim_res.successful == 1 and victim_res.failed == 0, victim_res.describe()
    [invite] = sipp_msgs(victim_res, "received", lambda m: m.method == "INVITE")
    _, host, port, _ = via_sent_by(invite.vias[0])
    assert (host, port) == proxy.addr, invite.vias
    assert invite.request_uri == f"sip:someone@{LOOPBACK}:{victim_port}", invite.start_line
    assert sipp_msgs(victim_res, "received", lambda m: m.method == "BYE")
    proxy.assert_alive()


# ----------------------------------------------------------------------------- 1e. trusted


async def test_trusted_relay_may_preload_a_route(proxy_factory: ProxyFactory) -> None:
    """docs/BEHAVIOUR.md "No open relay, no reflector": with ``trusted_relays: [127.0.0.2]`` the same preloaded Route
    that a stranger gets 403 for is loose-routed (RFC 3261 16.4, 16.6 step 7): the victim gets
    the INVITE with the proxy's Via on top; its 486 reaches the relay, and the proxy ACKs the
    486 hop by hop (17.1.1.3)."""
    upstream = await RecordingUpstream.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"],
                              extra={"trusted_relays": [STRANGER]})
        async with await UdpPeer.bind(free_port(tcp=False)) as victim, \
                await UdpPeer.bind(0, STRANGER) as relay:
            call_id = new_call_id("trusted")
            victim_uri = f"sip:someone@{LOOPBACK}:{victim.port}"
            await relay.send(stranger_request(
                relay, "INVITE", victim_uri, call_id=call_id,
                routes=(f"<sip:{LOOPBACK}:{victim.port};lr>",)), proxy.addr)
            invite, src = await victim.recv_sip(WAIT, lambda m: m.method == "INVITE")
            assert src == proxy.addr and invite.call_id == call_id, (src, invite.start_line)
            _, host, port, _ = via_sent_by(invite.vias[0])
            assert (host, port) == proxy.addr, invite.vias
            await victim.send(build_response(invite, 486, "Busy Here", to_tag="victim"), src)
            final = await final_response(relay, call_id)
            assert final.status == 486, final.start_line
            await relay.send(build_ack(victim_uri, final), proxy.addr)
            ack, _ = await victim.recv_sip(WAIT, lambda m: m.method == "ACK")
            assert ack.call_id == call_id
            assert upstream.records == []
            assert refusal_lines(proxy, STRANGER) == []
        proxy.assert_alive()
    finally:
        await upstream.close()


# ----------------------------------------------------------------------------- 2. responses


async def test_forged_response_is_not_reflected(proxy_factory: ProxyFactory) -> None:
    """docs/BEHAVIOUR.md "No open relay, no reflector": a response is relayed only when it matches a client
    transaction or its top Via carries a branch this proxy generated.  The stranger sends
    ``SIP/2.0 200 OK`` with top Via ``127.0.0.1:PROXY;branch=z9hG4bKmadeup`` and a second Via
    naming the victim (RFC 3261 18.2.2 would send it there): the victim gets nothing, the proxy
    logs the drop once for the source and still answers (OPTIONS with Max-Forwards 0 -> 483,
    RFC 3261 16.3 step 3)."""
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{free_port()}"])
    async with await UdpPeer.bind(free_port(tcp=False)) as victim, \
            await UdpPeer.bind(0, STRANGER) as stranger:
        mark = proxy.mark()
        for n in range(3):
            forged = "\r\n".join([
                "SIP/2.0 200 OK",
                f"Via: SIP/2.0/UDP {LOOPBACK}:{proxy.port};branch=z9hG4bKmadeup{n}",
                f"Via: SIP/2.0/UDP {LOOPBACK}:{victim.port};branch=z9hG4bKvictim{n}",
                f"From: <sip:a@{LOOPBACK}>;tag=a{n}",
                f"To: <sip:b@{LOOPBACK}>;tag=b{n}",
                f"Call-ID: {new_call_id('forged')}",
                "CSeq: 1 INVITE",
                "Content-Length: 0",
                "", "",
            ]).encode()
            await stranger.send(forged, proxy.addr)
        await assert_silent(victim, "the victim (a forged response was reflected)", proxy)
        dropped = [line for line in proxy.lines()[mark:]
                   if "dropped" in line and f"from {STRANGER}:" in line]
        assert len(dropped) == 1 and " WARNING " in dropped[0], dropped

        call_id = new_call_id("alive")
        await stranger.send(build_request(
            "OPTIONS", f"sip:someone@{LOOPBACK}:{victim.port}", via_host=STRANGER,
            via_port=stranger.port, call_id=call_id, max_forwards=0), proxy.addr)
        final = await final_response(stranger, call_id)
        assert final.status == 483, final.start_line
        await assert_silent(victim, "the victim", proxy, window=0.2)
    proxy.assert_alive()


def transactions(proxy: ProxyProcess) -> float:
    """The ``transactions`` gauge of /metrics (SIP transactions in progress)."""
    with urllib.request.urlopen(f"http://{proxy.config['http']}/metrics", timeout=5) as r:
        m = re.search(r"^sip_policy_proxy_transactions (\S+)$", r.read().decode(), re.M)
    assert m is not None
    return float(m.group(1))


async def test_genuine_2xx_retransmissions_still_relayed(proxy_factory: ProxyFactory) -> None:
    """The reflector defence must not cost real calls their 2xx retransmissions (RFC 3261
    13.3.1.4: the UAS retransmits its 2xx until the ACK arrives).  A caller's INVITE goes to the
    upstream, which answers 200: the caller gets it; a retransmission of the 200 while the
    proxy's client transaction is in Accepted (RFC 6026 7.2) is relayed; and so is one after
    Timer M (64*T1; ``t1_ms: 50`` makes it 3.2 s) ended the transaction: the proxy recognises
    its own MAC-signed branch and forwards statelessly (RFC 3261 16.7 / 16.11).  The end of a
    transaction sends nothing: the test polls the ``transactions`` gauge of /metrics until it
    is 0 (the client transaction ended at Timer M, the server one at Timer L, both 64*T1)."""
    async with await UdpPeer.bind(free_port()) as pbx, \
            await UdpPeer.bind(free_port(tcp=False)) as caller:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"], timers={"t1_ms": 50},
                              extra={"http": f"{LOOPBACK}:{free_port(udp=False)}"})
        call_id = new_call_id("late2xx")
        callee = "sip:bob@example.net"
        await caller.send(build_request(
            "INVITE", callee, via_host=LOOPBACK, via_port=caller.port, call_id=call_id,
            extra_headers=[f"Contact: <sip:e2e@{LOOPBACK}:{caller.port}>"]), proxy.addr)
        invite, src = await pbx.recv_sip(WAIT, lambda m: m.method == "INVITE")
        rr = invite.get_all("record-route")
        ok = build_response(invite, 200, "OK", to_tag="pbx200",
                            extra_headers=[*(f"Record-Route: {v}" for v in rr),
                                           f"Contact: <sip:bob@{LOOPBACK}:{pbx.port}>"])
        for when in ("first", "in Accepted"):
            await pbx.send(ok, src)
            got = await final_response(caller, call_id)
            assert got.status == 200, f"{when}: {got.start_line}"
            assert len(got.vias) == 1 and via_sent_by(got.vias[0])[2] == caller.port, got.vias
        timer_m = 64 * 0.050
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timer_m + 5
        while (held := await asyncio.to_thread(transactions, proxy)) > 0:
            assert loop.time() < deadline, f"{held} transactions past Timer M"
            await asyncio.sleep(0.1)  # bounded poll: a transaction's end sends nothing
        await pbx.send(ok, src)
        got = await final_response(caller, call_id)
        assert got.status == 200 and got.call_id == call_id, got.start_line
        assert re.search(r"tag=pbx200", got.get("to") or ""), got.get("to")
    proxy.assert_alive()
