"""The RFC 4475 / RFC 5118 torture messages sent over UDP to the running proxy, one test per row
of tests/conformance/expectations.EXPECTATIONS.

A few proxies for the module (``force_rport: true`` so every answer goes to the packet's
source, ``registrar: upstream``, ``t1_ms: 25``, one upstream: a :class:`RecordingUpstream` that
records and answers everything, so that no transaction of one row lingers into the next).  The
kits reuse Via branches and Call-IDs, so rows that a server transaction could confuse go to
different proxies (:class:`ProxyPool`).  Each row gets a fresh sender socket.
- "forward": the upstream receives the request (method, Call-ID and CSeq of the file) with the
  proxy's Via on top (RFC 3261 16.6 step 8); the upstream's final answer comes back to the
  sender (16.7) and, for an INVITE, the proxy ACKs the upstream's 480 (17.1.1.3).
- "respond": the sender receives the status (Call-ID and CSeq as sent, where the file has
  them); the upstream never sees the request.
- "drop": neither socket receives anything for 0.5 s, and the proxy still answers an OPTIONS
  with Max-Forwards 0 (alive, and it was a drop, not a hang).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.conformance.expectations import EXPECTATIONS, Expect
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.wire import (
    RecordingUpstream,
    SipMessage,
    UdpPeer,
    build_ack,
    build_request,
    new_call_id,
    parse_sip,
    via_sent_by,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ANSWER = 2.0  # bound for anything the proxy must send in answer (loopback: milliseconds)
DROP_WINDOW = 0.5  # how long "nothing arrives" is watched
T1_MS = 25  # short timers: a branch nobody answers ends with 408 after 64*T1 = 1.6 s (mpart01)
TIMEOUT_408 = ANSWER + 64 * T1_MS / 1000


def transaction_keys(data: bytes) -> set[tuple[object, ...]]:
    """What a server transaction could be matched on (RFC 3261 17.2.3: branch + sent-by; RFC 2543
    fallback: Call-ID + CSeq ...), conservatively: two rows sharing one of these keys must not
    meet in one proxy within a transaction's lifetime (Timer J/H/I), or the second is taken for a
    retransmission of the first (the kits reuse branches such as z9hG4bKkdjuw)."""
    try:
        m = parse_sip(data)
    except ValueError:
        return set()
    keys: set[tuple[object, ...]] = set()
    if m.vias:
        try:
            _, host, _, params = via_sent_by(m.vias[0])
            keys.add(("branch", (params.get("branch") or "").lower(), host.lower()))
        except ValueError:
            pass
    if m.call_id:
        keys.add(("call", m.call_id, m.cseq[0] if m.cseq else None))
    return keys


class ProxyPool:
    """Proxies sharing one upstream, started on demand: a row goes to the first proxy that has
    seen none of its transaction keys (about 7 proxies for both kits)."""

    def __init__(self, factory: ProxyFactory, upstream_port: int) -> None:
        self.factory = factory
        self.upstream_port = upstream_port
        self.used: list[tuple[ProxyProcess, set[tuple[object, ...]]]] = []

    def for_message(self, data: bytes) -> ProxyProcess:
        keys = transaction_keys(data)
        for proxy, seen in self.used:
            if not seen & keys:
                seen.update(keys)
                return proxy
        # The upstream takes UDP only (RFC 3261 18.1.1: longreq, over 1300 bytes, would go
        # over TCP to a next hop that did not name its transport).
        proxy = self.factory(upstreams=[f"sip:{LOOPBACK}:{self.upstream_port};transport=udp"],
                             registrar="upstream", force_rport=True, timers={"t1_ms": T1_MS})
        self.used.append((proxy, set(keys)))
        return proxy


@dataclass
class Rig:
    pool: ProxyPool
    upstream: RecordingUpstream


@pytest.fixture(scope="module")
def proxy_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPool]:
    factory = ProxyFactory(tmp_path_factory.mktemp("conformance-proxies"))
    try:
        yield ProxyPool(factory, free_port(tcp=False))
    finally:
        report = factory.finish()
        if report:
            pytest.fail("\n".join(report), pytrace=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(proxy_pool: ProxyPool) -> AsyncIterator[Rig]:
    upstream = await RecordingUpstream.start(proxy_pool.upstream_port)
    try:
        yield Rig(proxy_pool, upstream)
    finally:
        await upstream.close()


def is_response_to(sent: SipMessage | None, got: SipMessage) -> bool:
    """Call-ID and CSeq of ``got`` match the request ``sent`` (as far as ``sent`` has them)."""
    if got.is_request:
        return False
    if sent is None:
        return True
    if sent.call_id is not None and got.call_id != sent.call_id:
        return False
    return sent.cseq is None or got.cseq is None or got.cseq[0] == sent.cseq[0]


async def assert_alive_and_answering(proxy: ProxyProcess, peer: UdpPeer) -> None:
    """OPTIONS with Max-Forwards 0: the proxy answers it itself (483, or 200 as a UAS, RFC 3261
    16.3 step 3 / 11) without involving the upstream."""
    cid = new_call_id("alive")
    probe = build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}", via_host=LOOPBACK,
                          via_port=peer.port, call_id=cid, max_forwards=0)
    await peer.send(probe, proxy.addr)
    try:
        resp, _ = await peer.recv_sip(ANSWER, lambda m: m.call_id == cid and not m.is_request
                                      and (m.status or 0) >= 200)
    except TimeoutError:
        raise AssertionError("the proxy did not answer an OPTIONS after the drop:\n"
                             + proxy.tail()) from None
    assert resp.cseq == (1, "OPTIONS")
    proxy.assert_alive()


def seen(peer: UdpPeer, proxy: ProxyProcess) -> str:
    """What the sender got so far and the proxy's log tail, for failure messages."""
    got = [d.data.decode("latin-1").split("\r\n", 1)[0] for d in peer.received]
    return f"\n  the sender received: {got}\n  proxy log tail:\n{proxy.tail(15)}"


@pytest.mark.parametrize("row", EXPECTATIONS, ids=[e.name for e in EXPECTATIONS])
async def test_conformance_kits_over_udp(rig: Rig, row: Expect) -> None:
    data = row.path.read_bytes()
    try:
        sent: SipMessage | None = parse_sip(data)
    except ValueError:
        sent = None  # e.g. lwsruri: the lenient reader cannot read the start line either
    proxy = rig.pool.for_message(data)
    mark = rig.upstream.mark()
    async with await UdpPeer.bind() as peer:
        await peer.send(data, proxy.addr)

        if row.proxy == "forward":
            assert sent is not None and sent.is_request
            try:
                fwd = await rig.upstream.wait_for(
                    lambda m: m.is_request and m.method == sent.method
                    and m.call_id == sent.call_id and m.cseq == sent.cseq, ANSWER, since=mark)
            except TimeoutError:
                raise AssertionError("not forwarded to the upstream" + seen(peer, proxy)) \
                    from None
            t, host, port, params = via_sent_by(fwd.vias[0])
            assert (t, host, port) == ("UDP", LOOPBACK, proxy.port), fwd.vias[0]
            assert (params.get("branch") or "").startswith("z9hG4bK"), fwd.vias[0]
            assert len(fwd.vias) == len(sent.vias) + 1, "RFC 3261 16.6 step 8: one Via added"
            # the upstream answered at once (480 to INVITE, 200 otherwise): the final response
            # comes back to us (RFC 3261 16.7) and the proxy ACKs a non-2xx (17.1.1.3)
            try:
                final, _ = await peer.recv_sip(
                    ANSWER, lambda m: is_response_to(sent, m) and (m.status or 0) >= 200)
            except TimeoutError:
                raise AssertionError("the upstream's final response did not come back"
                                     + seen(peer, proxy)) from None
            if sent.method == "INVITE":
                assert final.status == 480
                await peer.send(build_ack(sent.request_uri or "", final), proxy.addr)
                try:
                    await rig.upstream.wait_for(
                        lambda m: m.method == "ACK" and m.call_id == sent.call_id, ANSWER,
                        since=mark)
                except TimeoutError:
                    raise AssertionError("the proxy did not ACK the upstream's 480"
                                         + seen(peer, proxy)) from None
            else:
                assert final.status == 200

        elif row.proxy == "respond":
            try:
                resp, _ = await peer.recv_sip(
                    TIMEOUT_408 if row.status == 408 else ANSWER,
                    lambda m: not m.is_request and (m.status or 0) >= 200)
            except TimeoutError:
                raise AssertionError(f"no final response ({row.status} expected)"
                                     + seen(peer, proxy)) from None
            assert resp.status == row.status, resp.start_line + seen(peer, proxy)
            assert is_response_to(sent, resp), (resp.call_id, resp.cseq)
            if sent is not None and sent.method == "INVITE":
                await peer.send(build_ack(sent.request_uri or "", resp), proxy.addr)
            leaked = [d for d in rig.upstream.since(mark) if d.sip is not None
                      and d.sip.is_request and sent is not None and d.sip.call_id == sent.call_id
                      and d.sip.method == sent.method]
            assert not leaked, "the request was also forwarded to the upstream"

        else:
            assert row.proxy == "drop"
            got = await peer.quiet(DROP_WINDOW)
            assert got == [], f"the sender received {got[0].data[:80]!r}"
            cid = sent.call_id if sent is not None else None
            upstream_got = [d for d in rig.upstream.since(mark)
                            if d.sip is None or cid is None or d.sip.call_id == cid]
            assert upstream_got == [], \
                f"the upstream received {upstream_got[0].data[:80]!r}"
            await assert_alive_and_answering(proxy, peer)
        proxy.assert_alive()
