"""The local registrar's access rules end to end (README "Registrations and digest
authentication", ``registrar: local``).

What each test proves:

* from outside ``registrar_networks`` a REGISTER needs digest credentials (RFC 3261 22.4):
  401 with one challenge per algorithm, SHA-256 first then MD5 (RFC 8760 2.4), qop="auth"
  (RFC 2617 3.2.1); the retried REGISTER (CSeq + 1, RFC 3261 22.2) with a response computed
  here with hashlib is served (200 listing the Contact, 10.3 step 8), for MD5 and for SHA-256;
  a wrong password gets 403; a user may register only its own AOR (403 otherwise); the same
  credentials with the same nonce count are a replay and get a new challenge (RFC 2617 3.2.2);
* sipp, a real UA, answers the challenge with MD5 (sipp 3.6 computes MD5 digests only);
* without ``auth``, a REGISTER from outside ``registrar_networks`` gets 403 and one from
  inside is served;
* ``registrar_max_contacts``: a REGISTER that would go past it gets 403 and changes nothing
  (all or nothing);
* a REGISTER with 2,000 contacts (about 55 KB over TCP) is answered 403 at once and the proxy
  keeps answering OPTIONS quickly;
* 50,000 AORs register over one UDP socket, every one served and reachable; bindings leave by
  the expiry timer, not only when looked up (README "Registrations and digest
  authentication"): learned for 2 s from an upstream registrar, the ``registrations`` gauge
  falls to 0 with nothing sent to the proxy (the same for the local registrar's 60 s minimum,
  at scale and on a fake clock: tests/unit/test_registrar_expiry.py).

Peers are raw UDP sockets (``wire.UdpPeer``); the one outside ``registrar_networks``
(``["127.0.0.1/32"]``) is bound to 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, free_port, rss_kib
from tests.e2e.wire import (
    RecordingUpstream,
    SipMessage,
    SipStream,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    new_call_id,
)

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"
REALM = "example.com"
OUTSIDE = "127.0.0.2"  # not in registrar_networks below
WAIT = 3.0
USERS = {"1000": "secret", "1001": "s3cr3t-too"}
HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
NETWORKS_LOOPBACK_ONLY = ["127.0.0.1/32"]


# ----------------------------------------------------------------------------- helpers


def next_workdir(factory: ProxyFactory) -> Path:
    """The folder the factory's next proxy will run in (conftest.ProxyFactory names them
    proxy1, proxy2, ... under its base): the place for files the config names relatively."""
    workdir = factory.base / f"proxy{len(factory.started) + 1}"
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def auth_proxy(factory: ProxyFactory, users_text: str | None = None,
               **extra: object) -> ProxyProcess:
    """``registrar: local`` for example.com with ``auth`` (users.yaml written next to
    proxy.yaml before launch) and registrar_networks = 127.0.0.1/32 only."""
    workdir = next_workdir(factory)
    if users_text is None:
        users_text = "".join(f'"{u}": {{password: "{p}"}}\n' for u, p in USERS.items())
    (workdir / "users.yaml").write_text(users_text)
    proxy = factory(registrar="local", domains=[DOMAIN],
                    extra={"auth": {"realm": REALM, "users_file": "users.yaml"},
                           "registrar_networks": NETWORKS_LOOPBACK_ONLY, **extra})
    assert proxy.workdir == workdir, (proxy.workdir, workdir)
    return proxy


def register_bytes(peer_addr: tuple[str, int], user: str, *, call_id: str, cseq: int,
                   contacts: Sequence[str] | None = None, expires: int = 3600,
                   authorization: str | None = None, transport: str = "UDP",
                   branch: str | None = None) -> bytes:
    """A REGISTER for sip:USER@example.com (RFC 3261 10.2); ``contacts`` None: one Contact at
    the peer's own address; [] : a query (no Contact)."""
    host, port = peer_addr
    aor = f"sip:{user}@{DOMAIN}"
    if contacts is None:
        contacts = [f"<sip:{user}@{host}:{port}>"]
    headers = [f"Contact: {c}" for c in contacts]
    if contacts:
        headers.append(f"Expires: {expires}")
    if authorization is not None:
        headers.append(f"Authorization: {authorization}")
    return build_request("REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port,
                         call_id=call_id, cseq=cseq, from_uri=aor, to_uri=aor,
                         from_tag=f"reg{user}", extra_headers=headers, transport=transport,
                         branch=branch)


async def final_for(peer: UdpPeer, call_id: str, cseq: int,
                    timeout: float = WAIT) -> SipMessage:
    msg, _ = await peer.recv_sip(
        timeout, lambda m: m.call_id == call_id and m.cseq == (cseq, "REGISTER")
        and (m.status or 0) >= 200)
    return msg


async def register(peer: UdpPeer, proxy: ProxyProcess, user: str, *, call_id: str, cseq: int,
                   **kw: Any) -> SipMessage:
    await peer.send(register_bytes(peer.addr, user, call_id=call_id, cseq=cseq, **kw),
                    proxy.addr)
    return await final_for(peer, call_id, cseq)


def challenge_params(value: str) -> dict[str, str]:
    """The parameters of one ``Digest`` challenge (RFC 2617 3.2.1), quotes removed."""
    assert value.lower().startswith("digest "), value
    found = re.findall(r'([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', value)
    return {k.lower(): quoted or token for k, quoted, token in found}


def authorization(user: str, password: str, nonce: str, algorithm: str, *,
                  method: str = "REGISTER", uri: str = f"sip:{DOMAIN}", nc: int = 1,
                  cnonce: str | None = None) -> str:
    """Digest credentials with qop=auth (RFC 2617 3.2.2; RFC 8760 for SHA-256), computed here
    independently of the proxy."""
    h = HASHES[algorithm]
    cnonce = cnonce or secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    ha1 = h(f"{user}:{REALM}:{password}".encode()).hexdigest()
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    response = h(f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc_text}, '
            f'cnonce="{cnonce}"')


async def challenged(peer: UdpPeer, proxy: ProxyProcess, user: str, call_id: str,
                     cseq: int) -> dict[str, dict[str, str]]:
    """Send an unauthenticated REGISTER; assert the 401 (RFC 3261 22.4, RFC 8760 2.4) and
    return its challenges by algorithm."""
    r = await register(peer, proxy, user, call_id=call_id, cseq=cseq)
    assert r.status == 401, r.start_line
    values = r.get_all("www-authenticate")
    assert len(values) == 2, f"want two WWW-Authenticate, got {values}"
    params = [challenge_params(v) for v in values]
    assert [p.get("algorithm") for p in params] == ["SHA-256", "MD5"], values
    for p in params:
        assert p.get("realm") == REALM and p.get("qop") == "auth" and p.get("nonce"), p
    return {p["algorithm"]: p for p in params}


def contacts_of(msg: SipMessage) -> list[str]:
    return [c.strip() for v in msg.get_all("contact") for c in v.split(",") if c.strip()]


# ----------------------------------------------------------------------------- digest


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_register_from_outside_needs_digest(
    proxy_factory: ProxyFactory, algorithm: str
) -> None:
    """From 127.0.0.2 (outside ``registrar_networks``) the REGISTER without credentials gets
    401 with SHA-256 and MD5 challenges; the same REGISTER with CSeq + 1 and a correct
    Authorization for ``algorithm`` gets 200 listing the Contact (RFC 3261 10.3 step 8); the
    same Authorization again (same nonce count, new transaction) is a replay: a new 401, not
    200 (RFC 2617 3.2.2); the next nonce count is good again."""
    proxy = auth_proxy(proxy_factory)
    user = "1000" if algorithm == "MD5" else "1001"
    async with await UdpPeer.bind(0, OUTSIDE) as phone:
        call_id = new_call_id("auth")
        nonce = (await challenged(phone, proxy, user, call_id, 1))[algorithm]["nonce"]
        creds = authorization(user, USERS[user], nonce, algorithm)
        ok = await register(phone, proxy, user, call_id=call_id, cseq=2, authorization=creds)
        assert ok.status == 200, ok.start_line
        contacts = contacts_of(ok)
        assert len(contacts) == 1 and f"<sip:{user}@{OUTSIDE}:{phone.port}>" in contacts[0], \
            contacts

        replay = await register(phone, proxy, user, call_id=call_id, cseq=3,
                                authorization=creds)
        assert replay.status == 401, f"a replayed nonce count was accepted: {replay.start_line}"

        fresh = authorization(user, USERS[user], nonce, algorithm, nc=2)
        again = await register(phone, proxy, user, call_id=call_id, cseq=4,
                               authorization=fresh)
        assert again.status == 200, again.start_line
    proxy.assert_alive()


async def test_wrong_password_and_foreign_aor_get_403(proxy_factory: ProxyFactory) -> None:
    """RFC 3261 22.4 / docs/BEHAVIOUR.md "Registrar": credentials with a wrong password get 403 (not another
    challenge); user 1000, correctly authenticated, registering To: sip:1001@example.com gets
    403 (a user registers only its own address-of-record); nothing is bound for 1001 (a query
    by 1001 with its own credentials lists no Contact)."""
    proxy = auth_proxy(proxy_factory)
    async with await UdpPeer.bind(0, OUTSIDE) as phone:
        call_id = new_call_id("wrongpw")
        nonce = (await challenged(phone, proxy, "1000", call_id, 1))["MD5"]["nonce"]
        bad = await register(phone, proxy, "1000", call_id=call_id, cseq=2,
                             authorization=authorization("1000", "not-the-password", nonce,
                                                         "MD5"))
        assert bad.status == 403, bad.start_line

        call_id = new_call_id("foreign")
        nonce = (await challenged(phone, proxy, "1001", call_id, 1))["SHA-256"]["nonce"]
        foreign = await register(phone, proxy, "1001", call_id=call_id, cseq=2,
                                 authorization=authorization("1000", USERS["1000"], nonce,
                                                             "SHA-256"))
        assert foreign.status == 403, foreign.start_line

        # the foreign attempt verified (and so spent) nonce count 1 of this nonce
        own = authorization("1001", USERS["1001"], nonce, "SHA-256", nc=2)
        query = await register(phone, proxy, "1001", call_id=call_id, cseq=3, contacts=[],
                               authorization=own)
        assert query.status == 200 and contacts_of(query) == [], query.raw
    proxy.assert_alive()


async def test_sipp_phone_answers_md5_challenge(proxy_factory: ProxyFactory,
                                                sipp: Sipp) -> None:
    """Digest auth with a real peer: sipp (``[authentication]``, MD5 only in sipp 3.6) gets
    the 401 and retries with credentials the proxy accepts (200).  The users file gives only a
    precomputed MD5 HA1 (``ha1:``), so the proxy offers only MD5 (RFC 8760 2.4 lists the
    algorithms the server can verify) and sipp, which would choke on SHA-256, can answer.
    sipp binds 127.0.0.1, so ``registrar_networks`` is set to a network that excludes it.
    sec_register_auth.xml sends its REGISTER to sip:PROXY_IP:PORT: sipp 3.6 always puts that
    as the digest uri, which must name the Request-URI (RFC 2617 3.2.2.5)."""
    ha1 = hashlib.md5(f"2000:{REALM}:sippsecret".encode()).hexdigest()
    workdir = next_workdir(proxy_factory)
    (workdir / "users.yaml").write_text(f'"2000": {{ha1: "{ha1}"}}\n')
    proxy = proxy_factory(registrar="local", domains=[DOMAIN],
                          extra={"auth": {"realm": REALM, "users_file": "users.yaml"},
                                 "registrar_networks": ["10.0.0.0/8"]})
    phone = await sipp.uac("sec_register_auth.xml", proxy.addr, service="2000",
                           keys={"domain": DOMAIN}, timeout=15, name="phone",
                           extra=["-au", "2000", "-ap", "sippsecret"])
    res = await phone.wait()
    assert res.returncode == 0 and res.successful == 1 and res.failed == 0, res.describe()
    got = [m.sip for m in res.messages() if m.direction == "received" and m.sip is not None]
    statuses = [m.status for m in got]
    assert statuses[-1] == 200 and 401 in statuses, statuses
    [challenge] = [m for m in got if m.status == 401]
    assert [challenge_params(v).get("algorithm") for v in
            challenge.get_all("www-authenticate")] == ["MD5"], challenge.raw
    sent = [m.sip for m in res.messages() if m.direction == "sent" and m.sip is not None]
    assert sent[-1].get("authorization"), "sipp's retry carries no Authorization"
    proxy.assert_alive()


# ----------------------------------------------------------------------------- networks


async def test_registrar_networks_without_auth(proxy_factory: ProxyFactory) -> None:
    """docs/BEHAVIOUR.md "Registrar": without ``auth`` a REGISTER from outside
    ``registrar_networks`` gets 403, one
    from inside (127.0.0.1) is served (200 listing its Contact)."""
    proxy = proxy_factory(registrar="local", domains=[DOMAIN],
                          extra={"registrar_networks": NETWORKS_LOOPBACK_ONLY})
    async with await UdpPeer.bind(0, OUTSIDE) as outside, \
            await UdpPeer.bind(free_port(tcp=False)) as inside:
        refused = await register(outside, proxy, "carol", call_id=new_call_id("out"), cseq=1)
        assert refused.status == 403, refused.start_line
        assert refused.get("www-authenticate") is None, "a challenge without auth configured"
        ok = await register(inside, proxy, "carol", call_id=new_call_id("in"), cseq=1)
        assert ok.status == 200, ok.start_line
        contacts = contacts_of(ok)
        assert len(contacts) == 1 and f"{LOOPBACK}:{inside.port}" in contacts[0], contacts
    proxy.assert_alive()


# ----------------------------------------------------------------------------- contact cap


async def test_max_contacts_all_or_nothing(proxy_factory: ProxyFactory) -> None:
    """``registrar_max_contacts: 3``: a REGISTER with 4 Contacts gets 403 and binds nothing (a
    query REGISTER lists no Contact, RFC 3261 10.2.3); 3 Contacts get 200 with 3; a fourth
    new Contact in another REGISTER gets 403 and the AOR still has the same 3."""
    proxy = proxy_factory(registrar="local", domains=[DOMAIN],
                          extra={"registrar_max_contacts": 3})
    async with await UdpPeer.bind(free_port(tcp=False)) as phone:
        call_id = new_call_id("cap")
        four = [f"<sip:dave@{LOOPBACK}:{5000 + i}>" for i in range(4)]
        r = await register(phone, proxy, "dave", call_id=call_id, cseq=1, contacts=four)
        assert r.status == 403, r.start_line
        q = await register(phone, proxy, "dave", call_id=call_id, cseq=2, contacts=[])
        assert q.status == 200 and contacts_of(q) == [], q.raw

        r = await register(phone, proxy, "dave", call_id=call_id, cseq=3, contacts=four[:3])
        assert r.status == 200 and len(contacts_of(r)) == 3, r.raw
        r = await register(phone, proxy, "dave", call_id=new_call_id("cap2"), cseq=1,
                           contacts=four[3:])
        assert r.status == 403, r.start_line
        q = await register(phone, proxy, "dave", call_id=call_id, cseq=4, contacts=[])
        got = sorted(re.sub(r";expires=\d+", "", c) for c in contacts_of(q))
        assert q.status == 200 and got == sorted(four[:3]), q.raw
    proxy.assert_alive()


async def test_huge_register_refused_quickly(proxy_factory: ProxyFactory) -> None:
    """A REGISTER with 2,000 Contacts (about 55 KB, over TCP: RFC 3261 18.1.1) is refused with
    403 (``registrar_max_contacts``, default 10) within 2 s, and the proxy answers an OPTIONS
    for itself sent at the same moment, and one sent right after, within 0.5 s each: the work a
    REGISTER costs is linear, not quadratic, in its Contacts."""
    proxy = proxy_factory(registrar="local", domains=[DOMAIN])
    loop = asyncio.get_running_loop()

    async def options_rtt(peer: UdpPeer) -> float:
        call_id = new_call_id("ping")
        t0 = loop.time()
        await peer.send(build_request("OPTIONS", f"sip:{LOOPBACK}:{proxy.port}",
                                      via_host=LOOPBACK, via_port=peer.port, call_id=call_id),
                        proxy.addr)
        msg, _ = await peer.recv_sip(WAIT, lambda m: m.call_id == call_id)
        assert msg.status == 200, msg.start_line
        return loop.time() - t0

    async with await UdpPeer.bind(free_port(tcp=False)) as pinger:
        await options_rtt(pinger)  # warm-up
        stream = await SipStream.connect(*proxy.addr)
        try:
            host, port = stream.local
            contacts = [f"<sip:c{i}@192.0.2.1:5060>" for i in range(2000)]
            lines = [", ".join(contacts[i:i + 100]) for i in range(0, 2000, 100)]
            call_id = new_call_id("huge")
            data = register_bytes((host, port), "erin", call_id=call_id, cseq=1,
                                  contacts=lines, transport="TCP")
            assert 50_000 < len(data) < 65_000, len(data)
            t0 = loop.time()
            await stream.send(data)
            during = await options_rtt(pinger)
            answer = await stream.recv_sip(WAIT, lambda m: m.call_id == call_id)
            took = loop.time() - t0
            after = await options_rtt(pinger)
        finally:
            await stream.close()
    assert answer.status == 403, answer.start_line
    assert took < 2.0, f"the 403 took {took:.2f} s"
    assert during < 0.5 and after < 0.5, (during, after)
    proxy.assert_alive()


# ----------------------------------------------------------------------------- expiry


class Registrar50k:
    """Pipelines REGISTERs for user0..userN-1 over one UDP socket, ``window`` outstanding at
    most, resending what stays unanswered for 1 s (UDP, RFC 3261 17.1.2.2 in spirit)."""

    def __init__(self, peer: UdpPeer, proxy: ProxyProcess, contact_port: int) -> None:
        self.peer = peer
        self.proxy = proxy
        self.contact_port = contact_port
        self.statuses: dict[int, int] = {}
        self.last_ok: int | None = None

    def request(self, n: int) -> bytes:
        return register_bytes(self.peer.addr, f"user{n}", call_id=f"r50k-{n}@{LOOPBACK}",
                              cseq=1, expires=60, branch=f"z9hG4bK-r50k-{n}",
                              contacts=[f"<sip:user{n}@{LOOPBACK}:{self.contact_port}>"])

    async def run(self, total: int, window: int, bound: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        outstanding: dict[int, float] = {}
        nxt = 0
        while len(self.statuses) < total:
            assert loop.time() < deadline, \
                f"only {len(self.statuses)} of {total} REGISTERs answered in {bound} s"
            while nxt < total and len(outstanding) < window:
                await self.peer.send(self.request(nxt), self.proxy.addr)
                outstanding[nxt] = loop.time()
                nxt += 1
            try:
                d = await self.peer.recv(1.0)
            except TimeoutError:
                now = loop.time()
                for n, sent in list(outstanding.items()):
                    if now - sent >= 1.0:
                        await self.peer.send(self.request(n), self.proxy.addr)
                        outstanding[n] = now
                continue
            m = re.search(rb"\r\nCall-ID: r50k-(\d+)@", d.data, re.I)
            s = re.match(rb"SIP/2\.0 (\d{3})", d.data)
            if m is None or s is None or int(s.group(1)) < 200:
                continue
            n = int(m.group(1))
            if n in outstanding:
                del outstanding[n]
                self.statuses[n] = int(s.group(1))
                self.last_ok = n


async def pbx_invite_status(pbx: UdpPeer, proxy: ProxyProcess, user: str) -> int:
    """The final status the PBX gets for an INVITE to sip:USER@example.com (ACKed)."""
    call_id = new_call_id("poll")
    uri = f"sip:{user}@{DOMAIN}"
    await pbx.send(build_request("INVITE", uri, via_host=LOOPBACK, via_port=pbx.port,
                                 call_id=call_id, from_uri=f"sip:pbx@{DOMAIN}"), proxy.addr)
    msg, _ = await pbx.recv_sip(
        WAIT, lambda m: m.call_id == call_id and (m.status or 0) >= 200)
    await pbx.send(build_ack(uri, msg), proxy.addr)
    assert msg.status is not None
    return msg.status


def registrations(proxy: ProxyProcess) -> float:
    """The ``registrations`` gauge from /metrics (bindings held)."""
    with urllib.request.urlopen(f"http://{proxy.config['http']}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^sip_policy_proxy_registrations (\S+)$", text, re.M)
    assert m is not None, text[:500]
    return float(m.group(1))


@pytest.mark.timeout(180)
async def test_fifty_thousand_aors_register_over_one_udp_socket(
        proxy_factory: ProxyFactory) -> None:
    """50,000 AORs (user0..user49999@example.com, from 127.0.0.1, inside the default
    ``registrar_networks``) register with Expires: 60 (RFC 3261 10.3 step 7, the minimum),
    pipelined over one UDP socket: every one gets 200, the ``registrations`` gauge reads
    50,000, and an INVITE from the PBX to user7 reaches its binding (a sink answering 486).
    Their expiry by the timer is shown on the fake clock (tests/unit/test_registrar_expiry.py)
    and in real time by the next test, without a minute of waiting here."""
    total = 50_000
    sink = await RecordingUpstream.start(free_port(tcp=False), invite_status=486)
    try:
        async with await UdpPeer.bind(free_port()) as pbx, \
                await UdpPeer.bind(free_port(tcp=False)) as phone:
            # Overload control off: it would refuse part of 50,000 REGISTERs sent this fast
            # (503 with Retry-After); this test is about what 50,000 bindings cost.
            proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"], registrar="local",
                                  domains=[DOMAIN], log_level="info",
                                  extra={"http": f"{LOOPBACK}:{free_port(udp=False)}"},
                                  limits={"overload_lag_ms": 0})
            assert proxy.proc is not None
            pid = proxy.proc.pid
            rss_before = rss_kib(pid)
            reg = Registrar50k(phone, proxy, sink.port)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await reg.run(total, window=200, bound=60.0)
            took = loop.time() - t0
            bad = {n: s for n, s in reg.statuses.items() if s != 200}
            assert len(reg.statuses) == total and not bad, \
                f"{len(bad)} REGISTERs not 200, e.g. {list(bad.items())[:5]}"
            assert await asyncio.to_thread(registrations, proxy) == total
            assert await pbx_invite_status(pbx, proxy, "user7") == 486, \
                "a registered user's INVITE did not reach its binding"
            print(f"\n50k registrations in {took:.1f} s ({total / took:.0f}/s); VmRSS before "
                  f"{rss_before} KiB, after registering {rss_kib(pid)} KiB")
            proxy.assert_alive()
    finally:
        await sink.close()


async def test_bindings_leave_at_their_expiry_without_a_lookup(
        proxy_factory: ProxyFactory) -> None:
    """Expired bindings are removed by a timer, not only when looked up, in the real process:
    with ``registrar: upstream`` the PBX's registrar chooses each binding's expiry (RFC 3261
    10.3 step 8: the expires of each Contact in its 200) and grants 2 s; the proxy learns the
    100 bindings (the gauge reads 100) and, with nothing sent to it afterwards, the gauge
    falls to 0 once they expire: not before their 2 s, and within the expiry timer's
    one-second granularity (and a margin for a loaded machine) after the last one."""
    total, grant = 100, 2.0
    async with await UdpPeer.bind(free_port()) as pbx, \
            await UdpPeer.bind(free_port(tcp=False)) as phone:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx.port}"], registrar="upstream",
                              extra={"http": f"{LOOPBACK}:{free_port(udp=False)}"})

        async def pbx_registrar() -> None:
            for _ in range(total):
                reg, src = await pbx.recv_sip(10, lambda m: m.method == "REGISTER")
                contact = reg.get("contact")
                assert contact is not None, reg.raw
                await pbx.send(build_response(reg, 200, "OK", to_tag="pbxreg", extra_headers=[
                    f"Contact: {contact};expires={grant:.0f}"]), src)

        loop = asyncio.get_running_loop()
        answering = asyncio.create_task(pbx_registrar())
        start = loop.time()
        for n in range(total):
            await phone.send(register_bytes(phone.addr, f"user{n}", call_id=f"x{n}@{LOOPBACK}",
                                            cseq=1, expires=3600), proxy.addr)
        oks = set()
        while len(oks) < total:
            ok, _ = await phone.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
            assert ok.status == 200, ok.start_line
            oks.add(ok.call_id)
        last_ok = loop.time()
        await answering
        assert await asyncio.to_thread(registrations, proxy) == total
        while (held := await asyncio.to_thread(registrations, proxy)) > 0:
            assert loop.time() < last_ok + grant + 1.0 + 3.0, f"{held} bindings left"
            await asyncio.sleep(0.1)  # bounded poll: an expiry sends nothing to await
        assert loop.time() >= start + grant - 0.05, "bindings removed before their expiry"
        proxy.assert_alive()
