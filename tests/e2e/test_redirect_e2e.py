"""Redirects end to end: the real proxy on loopback, sipp as caller and PBXes, raw UDP redirect
servers where sipp cannot play the part.

What each test proves (shipped ``policies/default.yaml``: 301 ``redirect`` permanent, 302
``redirect`` not permanent, ``max_redirects: 3``; README "Security defaults" ``redirects`` and
docs/BEHAVIOUR.md "Routing"):

* a 301 from the upstream is ACKed (RFC 3261 17.1.1.3), its Contact becomes the target of the
  same call (RFC 3261 16.5, 16.6 step 6: Request-URI = the contact) and the rewrite is learned
  (RFC 3261 21.3.2): later calls for the old Request-URI go straight to the new address; the
  ``routes`` command lists it (old, new, source, Call-ID) and ``routes remove`` makes a running
  proxy forget it within about a second;
* with ``state: sqlite:PATH`` a learned route survives a restart;
* a redirect loop (A -> B -> A) and a chain longer than ``max_redirects`` end with a final
  response to the caller within 1 s, each target tried a bounded number of times (RFC 3261
  16.5: a URI is tried once per request; 16.7 step 4);
* a 301 from an untrusted source, or pointing at a target that is not allowed, is relayed to
  the caller untouched and nothing is learned (RFC 3261 26.1.2; BEHAVIOUR "Redirect safety");
* a 302 without an expiry is followed but not remembered (RFC 3261 21.3.3).

Scenario files: ``rd_uas_301.xml`` / ``rd_uas_302.xml`` (a redirect server answering every INVITE
with that 3xx and ``-key rd_contact``, ACK required), ``rd_uac_expect_301.xml`` (a caller that
must end with a 301 and ACKs it) and the harness's ``uac_call.xml`` and ``uas_answer.xml``.
:func:`test_rd_scenarios_pair_without_proxy` proves them sipp-to-sipp.  The loop/chain test uses
raw UDP redirect servers (:class:`Redirector`): a redirect server that gets the same Call-ID
twice (the loop) is beyond a sipp UAS, which would take the second INVITE as part of the first
call.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import (
    LOOPBACK,
    REPO,
    ProxyProcess,
    Sipp,
    SippProcess,
    SippResult,
    assert_calls,
    free_port,
    to_tag,
    traced,
    via_is_proxy,
)
from tests.e2e.wire import (
    Datagram,
    SipMessage,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    new_call_id,
)

pytestmark = pytest.mark.e2e

SHIPPED_POLICY = REPO / "policies" / "default.yaml"
OUTSIDE = "example.net"  # not the proxy's domain: a call from outside goes to the upstream
USER = "bob"
OLD_URI = f"sip:{USER}@{OUTSIDE}"  # the Request-URI the caller sends (uac_call.xml)
SQLITE_STATE = {"state": "sqlite:routes.db"}  # relative to proxy.yaml (README "proxy.yaml")

# ----------------------------------------------------------------------------- helpers


def requests_of(sp: SippProcess | SippResult, direction: str, method: str) -> list[SipMessage]:
    """The requests ``method`` sent/received by a sipp process (running or ended)."""
    return [t.msg for t in traced(sp.files["msg"])
            if t.direction == direction and t.msg.method == method]


def finals_of(sp: SippProcess | SippResult, direction: str) -> list[SipMessage]:
    """Final responses to INVITE sent/received by a sipp process."""
    return [t.msg for t in traced(sp.files["msg"])
            if t.direction == direction and (t.msg.status or 0) >= 200
            and (t.msg.cseq or (0, ""))[1] == "INVITE"]


def call_ids(msgs: list[SipMessage]) -> list[str | None]:
    return [m.call_id for m in msgs]


def upstream(port: int) -> str:
    return f"sip:{LOOPBACK}:{port}"


def contact_for(port: int) -> str:
    return f"sip:{USER}@{LOOPBACK}:{port}"


async def redirect_server(sipp: Sipp, status: int, port: int, target: str,
                          name: str) -> SippProcess:
    """rd_uas_<status>.xml on ``port`` answering every INVITE with ``status`` and Contact
    ``<target>`` until stopped."""
    return await sipp.uas(f"rd_uas_{status}.xml", port=port, timeout=40, name=name,
                          extra=["-key", "rd_contact", f"<{target}>"])


async def call(sipp: Sipp, proxy: ProxyProcess, *, calls: int = 1, name: str = "caller",
               scenario: str = "uac_call.xml") -> SippResult:
    """``calls`` calls from outside to sip:bob@example.net through the proxy; the result."""
    caller = await sipp.uac(scenario, proxy.addr, service=USER, keys={"domain": OUTSIDE},
                            calls=calls, rate=20, timeout=15, name=name)
    return await caller.wait()


async def routes_cli(proxy: ProxyProcess, *args: str) -> tuple[int, str, str]:
    """``python -m proxy routes ARGS --config PROXY.yaml`` (bounded): rc, stdout, stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "routes", *args, "--config", str(proxy.config_path),
        cwd=proxy.workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"routes {' '.join(args)} did not finish in 30 s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def routes_json(proxy: ProxyProcess) -> list[dict[str, object]]:
    rc, out, err = await routes_cli(proxy, "list", "--json")
    assert rc == 0, f"routes list --json: rc {rc}\n{out}\n{err}"
    data = json.loads(out)
    assert isinstance(data, list), out
    return data


def learned_lines(proxy: ProxyProcess, since: int = 0) -> list[str]:
    return [line for line in proxy.lines()[since:] if re.search(r"\blearned \S+ -> ", line)]


async def restart(factory: ProxyFactory, old: ProxyProcess) -> ProxyProcess:
    """Stop ``old`` and start a new proxy process on the same proxy.yaml and port; the new one
    is checked at teardown like every proxy of the factory."""
    await asyncio.to_thread(old.stop)
    assert old.returncode == 0, f"the first proxy exited with {old.returncode}:\n{old.tail()}"
    new = ProxyProcess(old.workdir, old.port, old.config)
    new.log_path = old.workdir / "proxy-restarted.log"
    factory.started.append(new)
    await asyncio.to_thread(new.start)
    return new


# ----------------------------------------------------------------------------- raw redirectors


class Redirector:
    """A raw UDP redirect server (RFC 3261 8.3): answers every INVITE with ``status`` (and a
    Contact when given), records every request, and never retransmits (the proxy's ACK ends
    each transaction, RFC 3261 17.1.1.3)."""

    def __init__(self, peer: UdpPeer) -> None:
        self.peer = peer
        self.invites: list[SipMessage] = []
        self.acks: list[SipMessage] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def bind(cls) -> Redirector:
        return cls(await UdpPeer.bind(free_port(tcp=False)))

    @property
    def port(self) -> int:
        return self.peer.port

    @property
    def uri(self) -> str:
        return contact_for(self.port)

    def answer(self, status: int, contact: str | None) -> None:
        reason = {302: "Moved Temporarily", 480: "Temporarily Unavailable"}[status]
        extra = [f"Contact: <{contact}>"] if contact else []

        async def run() -> None:
            while True:
                d = await self.peer.recv(3600)
                msg = d.sip
                if msg is None or not msg.is_request:
                    continue
                if msg.method == "ACK":
                    self.acks.append(msg)
                elif msg.method == "INVITE":
                    self.invites.append(msg)
                    await self.peer.send(build_response(msg, status, reason, to_tag=f"rd{self.port}",
                                                        extra_headers=extra), d.addr)

        self._task = asyncio.get_running_loop().create_task(run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.peer.close()


def is_final_invite(d: Datagram) -> bool:
    m = d.sip
    return (m is not None and (m.status or 0) >= 200 and (m.cseq or (0, ""))[1] == "INVITE")


# ----------------------------------------------------------------------------- scenarios


async def test_rd_scenarios_pair_without_proxy(sipp: Sipp) -> None:
    """rd_uas_301.xml against rd_uac_expect_301.xml and rd_uas_302.xml against uac_call.xml,
    directly: the first pair completes (301 with the keyed Contact, ACK), the second fails (a
    caller that wants a 200 cannot succeed on a 302), so the scenarios can fail."""
    port301, port302 = free_port(), free_port()
    target = contact_for(4242)
    uas301 = await redirect_server(sipp, 301, port301, target, "self-301")
    uas302 = await redirect_server(sipp, 302, port302, target, "self-302")
    ok = await sipp.uac("rd_uac_expect_301.xml", (LOOPBACK, port301), service=USER,
                        keys={"domain": OUTSIDE}, timeout=5, name="self-caller-301")
    bad = await sipp.uac("uac_call.xml", (LOOPBACK, port302), service=USER,
                         keys={"domain": OUTSIDE}, timeout=5, name="self-caller-302")
    ok_res, bad_res = await ok.wait(), await bad.wait()
    res301 = await uas301.stop()
    await uas302.stop(grace=1.0)
    assert_calls(ok_res, 1)
    assert_calls(res301, 1)
    got = finals_of(ok_res, "received")
    assert [m.status for m in got] == [301] and got[0].get("contact") == f"<{target}>"
    assert bad_res.returncode != 0 and bad_res.successful == 0, bad_res.describe()


# ----------------------------------------------------------------------------- 301 learned


async def test_301_followed_then_learned_routes_later_calls_to_new_address(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """Upstream A answers 301 (Contact B); the proxy ACKs it and sends the same call to B
    (Request-URI = the contact), which answers: the call completes.  The rewrite is learned:
    the next 5 calls for sip:bob@example.net go straight to B (A gets nothing).  ``routes list``
    shows old URI, new URI, source and the Call-ID it was learned from; ``routes remove OLD``
    is noticed by the running proxy (``learned routes reloaded from the store``) and the next
    call reaches A again (which redirects it again)."""
    pa, pb = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(pa)], policy=str(SHIPPED_POLICY),
                          extra=SQLITE_STATE)
    a = await redirect_server(sipp, 301, pa, contact_for(pb), "pbx-a")
    b = await sipp.uas("uas_answer.xml", port=pb, timeout=40, name="pbx-b")

    first = await call(sipp, proxy, name="first")
    assert_calls(first, 1)
    first_id = requests_of(first, "sent", "INVITE")[0].call_id
    learned = proxy.wait_for_log(f"learned {OLD_URI} -> {contact_for(pb)}", timeout=2)
    assert f"{LOOPBACK}:{pa}" in learned, learned
    # A got the original Request-URI, B the contact (RFC 3261 16.5 / 16.6 step 6), both from
    # the proxy, in the same call
    a_inv = requests_of(a, "received", "INVITE")
    b_inv = requests_of(b, "received", "INVITE")
    assert call_ids(a_inv) == [first_id] and call_ids(b_inv) == [first_id]
    assert a_inv[0].request_uri == OLD_URI and b_inv[0].request_uri == contact_for(pb)
    assert via_is_proxy(a_inv[0], proxy) and via_is_proxy(b_inv[0], proxy)
    assert requests_of(a, "received", "ACK"), "the proxy did not ACK the 301 (17.1.1.3)"
    assert [m.status for m in finals_of(first, "received")] == [200]

    later = await call(sipp, proxy, calls=5, name="later")
    assert_calls(later, 5)
    later_ids = set(call_ids(requests_of(later, "sent", "INVITE")))
    assert len(later_ids) == 5
    # A received exactly the one INVITE, B six: the five later calls went straight to B
    assert call_ids(requests_of(a, "received", "INVITE")) == [first_id]
    b_inv = requests_of(b, "received", "INVITE")
    assert len(b_inv) == 6 and set(call_ids(b_inv)) == {first_id} | later_ids
    assert all(m.request_uri == contact_for(pb) and via_is_proxy(m, proxy) for m in b_inv)

    # the store holds the route: old, new, source, the Call-ID it was learned from
    rc, table, err = await routes_cli(proxy, "list")
    assert rc == 0, err
    rows = [line for line in table.splitlines() if line.startswith(OLD_URI)]
    assert len(rows) == 1, table
    for part in (contact_for(pb), f"{LOOPBACK}:{pa}", str(first_id), "301"):
        assert part in rows[0], (part, table)
    routes = await routes_json(proxy)
    assert len(routes) == 1, routes
    assert (routes[0]["old_uri"], routes[0]["new_uri"], routes[0]["source"],
            routes[0]["call_id"], routes[0]["status"]) == \
        (OLD_URI, contact_for(pb), f"{LOOPBACK}:{pa}", first_id, 301), routes

    # removed from the store -> the running proxy reloads within ~1 s
    mark = proxy.mark()
    rc, out, err = await routes_cli(proxy, "remove", OLD_URI)
    assert rc == 0 and OLD_URI in out, (rc, out, err)
    await proxy.await_log("learned routes reloaded from the store", timeout=5, since=mark)
    assert await routes_json(proxy) == []

    again = await call(sipp, proxy, name="after-remove")
    assert_calls(again, 1)
    again_id = requests_of(again, "sent", "INVITE")[0].call_id
    # A's INVITE count went up by one (it redirects again: learned again, B answers)
    assert call_ids(requests_of(a, "received", "INVITE")) == [first_id, again_id]
    assert len(requests_of(b, "received", "INVITE")) == 7
    assert learned_lines(proxy, mark), proxy.tail()

    a_res, b_res = await a.stop(), await b.stop()
    assert_calls(a_res, 2)  # each 301 ACKed
    assert_calls(b_res, 7)  # each call answered and its BYE received
    proxy.assert_alive()


async def test_learned_route_survives_restart_with_sqlite(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """A 301 learned with ``state: sqlite:routes.db``; the proxy is stopped and a new process
    started on the same proxy.yaml loads it (``learned routes loaded from ...: 1``) and sends
    the first call straight to B."""
    pa, pb = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(pa)], policy=str(SHIPPED_POLICY),
                          extra=SQLITE_STATE)
    assert isinstance(proxy_factory, ProxyFactory)
    a = await redirect_server(sipp, 301, pa, contact_for(pb), "pbx-a")
    b = await sipp.uas("uas_answer.xml", port=pb, timeout=40, name="pbx-b")

    first = await call(sipp, proxy, name="first")
    assert_calls(first, 1)
    proxy.wait_for_log(f"learned {OLD_URI} -> {contact_for(pb)}", timeout=2)
    assert (proxy.workdir / "routes.db").exists()

    restarted = await restart(proxy_factory, proxy)
    loaded = restarted.wait_for_log("learned routes loaded from", timeout=2)
    assert loaded.rstrip().endswith(": 1"), loaded

    second = await call(sipp, restarted, name="after-restart")
    assert_calls(second, 1)
    second_id = requests_of(second, "sent", "INVITE")[0].call_id
    first_id = requests_of(first, "sent", "INVITE")[0].call_id
    assert call_ids(requests_of(a, "received", "INVITE")) == [first_id]
    b_inv = requests_of(b, "received", "INVITE")
    assert call_ids(b_inv) == [first_id, second_id]
    assert b_inv[1].request_uri == contact_for(pb) and via_is_proxy(b_inv[1], restarted)
    assert not learned_lines(restarted), "the restarted proxy had to learn the route again"

    assert_calls(await a.stop(), 1)
    assert_calls(await b.stop(), 2)
    restarted.assert_alive()


# ----------------------------------------------------------------------------- loops, chains


@pytest.mark.parametrize("shape", ["loop", "chain"])
async def test_redirect_loop_and_long_chain_end_quickly(
    shape: str, proxy_factory: ProxyFactory
) -> None:
    """loop: upstream A 302 -> B, B 302 -> A.  chain: A 302 -> B -> C -> D -> E, one more 302
    than max_redirects (3).  Either way the caller's INVITE gets a final 302 within 1 s (no
    timer involved: T1 is 500 ms, Timer B 32 s), every 3xx is ACKed, and no target gets more
    than 2 INVITEs (RFC 3261 16.5: a URI is tried once per request; 16.7 step 4).  In the chain
    the 4th 302 (D's, Contact E) is the one relayed and E gets nothing: exactly 3 followed."""
    count = 2 if shape == "loop" else 5
    peers = [await Redirector.bind() for _ in range(count)]
    caller = await UdpPeer.bind(free_port(tcp=False))
    try:
        if shape == "loop":
            peers[0].answer(302, peers[1].uri)
            peers[1].answer(302, peers[0].uri)
        else:
            for here, there in zip(peers, peers[1:], strict=False):
                here.answer(302, there.uri)
            peers[-1].answer(480, None)
        proxy = proxy_factory(upstreams=[upstream(peers[0].port)], policy=str(SHIPPED_POLICY),
                              timers={"t1_ms": 500})
        invite = build_request("INVITE", OLD_URI, via_host=LOOPBACK, via_port=caller.port,
                               call_id=new_call_id("rd-loop"),
                               from_uri=f"sip:caller@{LOOPBACK}:{caller.port}")
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        await caller.send(invite, proxy.addr)
        final = await caller.recv(5.0, is_final_invite)
        elapsed = final.at - sent_at
        msg = final.sip
        assert msg is not None
        await caller.send(build_ack(OLD_URI, msg), proxy.addr)
        # nothing more may happen: no late INVITE to any target, no other final response
        late = [d for d in await caller.quiet(0.5) if is_final_invite(d)]

        assert elapsed < 1.0, f"final response after {elapsed:.3f} s"
        assert msg.status == 302, msg.start_line
        assert late == [], [d.data[:60] for d in late]
        counts = [len(p.invites) for p in peers]
        assert all(c <= 2 for c in counts), counts
        for p in peers:
            assert len(p.acks) == len(p.invites), "a 3xx not ACKed (RFC 3261 17.1.1.3)"
            assert all(via_is_proxy(m, proxy) for m in p.invites)
        if shape == "loop":
            assert counts[0] >= 1 and counts[1] == 1, counts
            assert sum(counts) <= 3, counts
        else:
            assert counts == [1, 1, 1, 1, 0], counts
            assert [m.request_uri for m in peers[1].invites] == [peers[1].uri]
            assert msg.get("contact") == f"<{peers[4].uri}>", msg.get("contact")
            proxy.wait_for_log(re.compile(r"not followed: max_redirects 3"), timeout=1)
        proxy.assert_alive()
    finally:
        caller.close()
        for p in peers:
            await p.close()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("case", "redirects", "log_word"),
    [
        ("untrusted-source", {"trusted_sources": ["10.9.9.9"]}, "not followed"),
        ("target-not-allowed", {"allow_targets": ["example.com"],
                                "trusted_sources": [LOOPBACK]}, "refused"),
    ],
)
async def test_untrusted_or_disallowed_301_reaches_caller_unlearned(
    case: str, redirects: dict[str, list[str]], log_word: str, proxy_factory: ProxyFactory,
    sipp: Sipp,
) -> None:
    """A 301 from a source outside ``redirects.trusted_sources``, or whose Contact is not in
    ``redirects.allow_targets``, is handled as ``forward`` (BEHAVIOUR "Redirect safety"; RFC 3261 26.1.2): the
    caller receives A's 301 with its Contact, B gets no INVITE, and the sqlite store stays
    empty."""
    pa, pb = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(pa)], policy=str(SHIPPED_POLICY),
                          extra={**SQLITE_STATE, "redirects": redirects})
    a = await redirect_server(sipp, 301, pa, contact_for(pb), "pbx-a")
    b = await sipp.uas("uas_answer.xml", port=pb, timeout=20, name="pbx-b")
    mark = proxy.mark()
    res = await call(sipp, proxy, scenario="rd_uac_expect_301.xml", name=f"caller-{case}")
    a_res = await a.stop()
    b_res = await b.stop(grace=1.0)

    # first what the proxy must not do: follow it (B called) or learn it
    b_calls = requests_of(b_res, "received", "INVITE")
    assert b_calls == [] and learned_lines(proxy) == [], (
        f"{case}: the proxy followed the 301 (B got {len(b_calls)} INVITE) and learned "
        f"{learned_lines(proxy)}; redirects config {redirects}")
    assert any(log_word in line for line in proxy.lines()[mark:]), proxy.tail()
    assert_calls(res, 1)  # the caller got a 301 (anything else fails its scenario) and ACKed
    got = finals_of(res, "received")
    sent = finals_of(a_res, "sent")
    assert [m.status for m in got] == [301], [m.start_line for m in got]
    assert got[0].get("contact") == f"<{contact_for(pb)}>"
    assert to_tag(got[0]) == to_tag(sent[0])  # A's own 301, relayed
    assert_calls(a_res, 1)
    rc, out, err = await routes_cli(proxy, "list")
    assert rc == 0 and out.strip() == "no learned routes", (rc, out, err)
    proxy.assert_alive()


# ----------------------------------------------------------------------------- 302


async def test_302_without_expires_followed_not_remembered(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """Upstream A answers 302 (no Expires, no expires param) -> followed: the call reaches B and
    completes.  Not learned (RFC 3261 21.3.3: valid for this request only), so the second call
    goes to A again and is redirected again."""
    pa, pb = free_port(), free_port()
    proxy = proxy_factory(upstreams=[upstream(pa)], policy=str(SHIPPED_POLICY),
                          extra=SQLITE_STATE)
    a = await redirect_server(sipp, 302, pa, contact_for(pb), "pbx-a")
    b = await sipp.uas("uas_answer.xml", port=pb, timeout=30, name="pbx-b")
    first = await call(sipp, proxy, name="first")
    assert_calls(first, 1)
    second = await call(sipp, proxy, name="second")
    assert_calls(second, 1)
    ids = [requests_of(r, "sent", "INVITE")[0].call_id for r in (first, second)]
    assert call_ids(requests_of(a, "received", "INVITE")) == ids
    b_inv = requests_of(b, "received", "INVITE")
    assert call_ids(b_inv) == ids and all(m.request_uri == contact_for(pb) for m in b_inv)
    assert learned_lines(proxy) == [], learned_lines(proxy)
    rc, out, err = await routes_cli(proxy, "list")
    assert rc == 0 and out.strip() == "no learned routes", (rc, out, err)
    assert_calls(await a.stop(), 2)
    assert_calls(await b.stop(), 2)
    proxy.assert_alive()

