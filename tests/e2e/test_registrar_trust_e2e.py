"""Registrations have owners and passwords are not guessed (issue 18 items 5, 7, 9) and Path
reaches an upstream registrar without ``Supported: path`` (issue 19), against the real proxy
process over loopback. Strangers are sockets on 127.0.0.2 and 127.0.0.3.

What each test proves:

* **guessing**: a run of wrong passwords from 127.0.0.2 is checked ten times, then refused
  403 without a challenge (the right password from there too, and a REGISTER without
  credentials); alice's registered phone on 127.0.0.1 still refreshes (200) and carol on
  127.0.0.3 still registers, while a new device of alice elsewhere is refused (the user is
  blocked for everyone but where it is registered from); each refusal logged once;
* **hijack**: with ``auth`` set and no ``registrar_networks`` (the default is now none),
  127.0.0.2, a private address, cannot add its contact to bob nor remove bob's bindings with
  ``Contact: *`` (401 without credentials, 403 with alice's); bob's binding stays;
* **memory**: alice, authenticated, REGISTERs alice@dN.example.net for 300 domains: every one
  403, the ``registrations`` gauge stays 1 (her own AOR); ``registrar_max_bindings`` stops
  a host of ``registrar_networks`` at the cap (403, nothing added);
* **Path**: a plain REGISTER (no ``Supported: path``) relayed to a recording upstream
  registrar carries one Path naming the proxy; with ``path: when_supported`` it carries none.

Digest responses are computed here with hashlib (test_registrar_auth_e2e's helpers).
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Sequence

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.test_registrar_auth_e2e import (
    REALM,
    authorization,
    challenge_params,
    contacts_of,
    next_workdir,
)
from tests.e2e.wire import RecordingUpstream, SipMessage, UdpPeer, build_request, new_call_id

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alices-secret", "bob": "bobs-secret", "carol": "carols-secret"}
STRANGER = "127.0.0.2"
OTHER = "127.0.0.3"
WAIT = 3.0


def trust_proxy(factory: ProxyFactory, **extra: object) -> ProxyProcess:
    """``registrar: local`` with ``auth`` for example.com and NO ``registrar_networks``: the
    default with auth (every REGISTER authenticates)."""
    workdir = next_workdir(factory)
    (workdir / "users.yaml").write_text(
        "".join(f"{u}: {{password: {p}}}\n" for u, p in PASSWORDS.items()))
    return factory(registrar="local",
                   extra={"auth": {"realm": REALM, "users_file": "users.yaml"}, **extra})


class Ua:
    """A raw UDP UA registering ``aor_user@domain`` from its own socket."""

    def __init__(self, peer: UdpPeer, proxy: ProxyProcess, aor_user: str,
                 domain: str = REALM) -> None:
        self.peer, self.proxy, self.aor_user, self.domain = peer, proxy, aor_user, domain
        self.call_id = new_call_id(f"reg-{aor_user}")
        self.cseq = 0

    def request(self, contacts: Sequence[str] | None, expires: int,
                credentials: str | None) -> bytes:
        host, port = self.peer.addr
        aor = f"sip:{self.aor_user}@{self.domain}"
        if contacts is None:
            contacts = [f"<sip:{self.aor_user}@{host}:{port}>"]
        headers = [f"Contact: {c}" for c in contacts]
        if contacts:
            headers.append(f"Expires: {expires}")
        if credentials is not None:
            headers.append(f"Authorization: {credentials}")
        self.cseq += 1
        return build_request("REGISTER", f"sip:{self.domain}", via_host=host, via_port=port,
                             call_id=self.call_id, cseq=self.cseq, from_uri=aor, to_uri=aor,
                             from_tag=f"t{self.aor_user}", extra_headers=headers)

    async def send(self, contacts: Sequence[str] | None = None, *, expires: int = 3600,
                   credentials: str | None = None) -> SipMessage:
        await self.peer.send(self.request(contacts, expires, credentials), self.proxy.addr)
        cseq = self.cseq
        msg, _ = await self.peer.recv_sip(
            WAIT, lambda m: m.call_id == self.call_id and m.cseq == (cseq, "REGISTER")
            and (m.status or 0) >= 200)
        return msg

    async def register(self, contacts: Sequence[str] | None = None, *, expires: int = 3600,
                       user: str | None = None, password: str | None = None) -> SipMessage:
        """REGISTER; a 401 is answered once with ``user``'s credentials (MD5, qop=auth)."""
        first = await self.send(contacts, expires=expires)
        if first.status != 401 or user is None:
            return first
        nonce = next(challenge_params(v) for v in first.get_all("www-authenticate")
                     if "MD5" in v)["nonce"]
        creds = authorization(user, password or PASSWORDS[user], nonce, "MD5",
                              uri=f"sip:{self.domain}")
        return await self.send(contacts, expires=expires, credentials=creds)


def registrations(proxy: ProxyProcess) -> float:
    """The ``registrations`` gauge from /metrics (bindings held)."""
    with urllib.request.urlopen(f"http://{proxy.config['http']}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^sip_policy_proxy_registrations (\S+)$", text, re.M)
    assert m is not None, text[:500]
    return float(m.group(1))


# ----------------------------------------------------------------------------- guessing


async def test_guessing_run_is_refused_without_challenge_after_ten(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 item 5 (7,273 guesses/s on one nonce): from 127.0.0.2, 40 wrong passwords for
    alice on one nonce with a growing nonce count as fast as the proxy answers: all 403; then
    the RIGHT password from 127.0.0.2 gets 403 too, and a REGISTER without credentials 403
    with no WWW-Authenticate: after ten failures nothing from there is checked. Meanwhile
    alice's phone on 127.0.0.1 refreshes (200), carol registers from 127.0.0.3 (200), and a
    new device of alice on 127.0.0.3 with the right password gets 403 without a challenge (the
    user is blocked except where it is registered from). Logged once per source and reason."""
    proxy = trust_proxy(proxy_factory)
    async with await UdpPeer.bind(free_port(tcp=False)) as phone, \
            await UdpPeer.bind(0, STRANGER) as guesser, await UdpPeer.bind(0, OTHER) as other:
        alice = Ua(phone, proxy, "alice")
        assert (await alice.register(user="alice")).status == 200

        attacker = Ua(guesser, proxy, "alice")
        challenge = await attacker.send()
        assert challenge.status == 401
        nonce = challenge_params(challenge.get_all("www-authenticate")[-1])["nonce"]
        answers = []
        for nc in range(1, 41):
            creds = authorization("alice", f"guess-{nc}", nonce, "MD5", nc=nc)
            answers.append(await attacker.send(credentials=creds))
        assert {(a.status, a.get("www-authenticate")) for a in answers} == {(403, None)}
        right = authorization("alice", PASSWORDS["alice"], nonce, "MD5", nc=41)
        assert (await attacker.send(credentials=right)).status == 403, \
            "the right password was checked after the limit"
        plain = await attacker.send()
        assert plain.status == 403 and plain.get("www-authenticate") is None, plain.start_line

        assert (await alice.register(user="alice")).status == 200, "the real phone locked out"
        assert (await Ua(other, proxy, "carol").register(user="carol")).status == 200
        newcomer = await Ua(other, proxy, "alice").register(user="alice")
        assert newcomer.status == 403 and newcomer.get("www-authenticate") is None
    lines = proxy.lines()
    assert sum(f"from {STRANGER}:" in ln and "(auth_failed)" in ln for ln in lines) == 1, \
        proxy.tail(20)
    assert sum(f"from {STRANGER}:" in ln and "(auth_blocked)" in ln for ln in lines) == 1, \
        proxy.tail(20)
    proxy.assert_alive()


# ----------------------------------------------------------------------------- hijack


async def test_private_address_cannot_add_to_or_wipe_bobs_bindings(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 item 9: with ``auth`` and the default ``registrar_networks`` (now none),
    127.0.0.2 (loopback, a private range) sends REGISTER for bob adding its contact, and
    ``Contact: *`` with Expires: 0: each gets 401; with alice's valid credentials, 403. A query
    by bob lists only bob's own contact afterwards."""
    proxy = trust_proxy(proxy_factory)
    async with await UdpPeer.bind(free_port(tcp=False)) as bob_sock, \
            await UdpPeer.bind(0, STRANGER) as stranger_sock:
        bob = Ua(bob_sock, proxy, "bob")
        ok = await bob.register(user="bob")
        assert ok.status == 200
        own = f"<sip:bob@{LOOPBACK}:{bob_sock.port}>"
        stranger = Ua(stranger_sock, proxy, "bob")
        assert (await stranger.register()).status == 401
        assert (await stranger.register(["*"], expires=0)).status == 401
        assert (await stranger.register(user="alice")).status == 403
        assert (await stranger.register(["*"], expires=0, user="alice")).status == 403
        query = await bob.register([], user="bob")
        assert query.status == 200
        assert [re.sub(r";expires=\d+", "", c) for c in contacts_of(query)] == [own], query.raw
    proxy.assert_alive()


# ----------------------------------------------------------------------------- memory


async def test_one_user_cannot_fill_memory_with_aors_of_other_domains(
    proxy_factory: ProxyFactory,
) -> None:
    """Issue 18 item 7 (50,000 bindings for alice@dN.example.net, RSS +110 MB): alice,
    authenticated, registers alice@dN.example.net for 300 domains from 127.0.0.2: every one
    403 (not her domain: the realm), and the proxy still holds one binding (her own AOR)."""
    proxy = trust_proxy(proxy_factory, http=f"{LOOPBACK}:{free_port(udp=False)}")
    async with await UdpPeer.bind(0, STRANGER) as sock:
        assert (await Ua(sock, proxy, "alice").register(user="alice")).status == 200
        statuses = [(await Ua(sock, proxy, "alice", f"d{n}.example.net").register(
            user="alice")).status for n in range(300)]
    assert set(statuses) == {403}, statuses
    assert await asyncio.to_thread(registrations, proxy) == 1
    proxy.assert_alive()


async def test_registrar_max_bindings_caps_a_trusted_network(
    proxy_factory: ProxyFactory,
) -> None:
    """``registrar_max_bindings: 20`` without auth (127.0.0.1 in the default networks): 20
    AORs get 200, the 21st 403 (Too Many Bindings) and the gauge stays at 20."""
    proxy = proxy_factory(registrar="local", extra={
        "registrar_max_bindings": 20, "http": f"{LOOPBACK}:{free_port(udp=False)}"})
    async with await UdpPeer.bind(free_port(tcp=False)) as sock:
        statuses = [(await Ua(sock, proxy, f"u{n}").register()).status for n in range(21)]
    assert statuses == [200] * 20 + [403], statuses
    assert await asyncio.to_thread(registrations, proxy) == 20
    proxy.assert_alive()


# ----------------------------------------------------------------------------- Path


async def upstream_register(proxy: ProxyProcess, upstream: RecordingUpstream) -> SipMessage:
    """A plain REGISTER (no Supported header, as baresip sends) through the proxy; returns
    the REGISTER the upstream registrar got."""
    async with await UdpPeer.bind(free_port(tcp=False)) as sock:
        ua = Ua(sock, proxy, "dave")
        mark = upstream.mark()
        answer = await ua.send()
        assert answer.status == 200, answer.start_line
        return await upstream.wait_for(lambda m: m.method == "REGISTER", WAIT, since=mark)


async def test_plain_register_to_upstream_carries_path(proxy_factory: ProxyFactory) -> None:
    """Issue 19 / RFC 3327: ``registrar: upstream`` with the default ``path: always``: the
    REGISTER the upstream registrar records carries exactly one Path, naming the proxy
    (its address and port) with ;lr; ``path: when_supported`` relays the same REGISTER with
    none."""
    upstream = await RecordingUpstream.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"],
                              registrar="upstream")
        reg = await upstream_register(proxy, upstream)
        [path] = reg.get_all("path")
        assert re.fullmatch(rf"<sip:[^@>]+@{re.escape(LOOPBACK)}:{proxy.port};lr>", path), path
        strict = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"],
                               registrar="upstream", extra={"path": "when_supported"})
        assert (await upstream_register(strict, upstream)).get_all("path") == []
    finally:
        await upstream.close()
