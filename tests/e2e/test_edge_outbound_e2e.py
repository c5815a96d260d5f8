"""SIP Outbound as EDGE proxy (RFC 5626 5, RFC 3327 Path) end to end, ``registrar: upstream``:
the real proxy on loopback between phones and a PBX registrar, driven by sipp and raw sockets.

What each test proves (docs/BEHAVIOUR.md "SIP Outbound", ``registrar: upstream``):

* a phone's outbound REGISTER reaches the PBX with exactly one ``Path`` naming the proxy, with
  ``;lr`` and ``;ob`` and a flow token as user part, which differs per flow (RFC 5626 5.1,
  RFC 3327 5.2); the PBX's 200 reaches the phone;
* a request from the PBX whose Route is that Path value goes over the phone's flow, although its
  Request-URI is the phone's private (unreachable) Contact (RFC 5626 5.3.1); the call completes
  with ACK and BYE through the proxy, the PBX's ACK to the phone's private Contact reaching the
  phone's flow as well (RFC 5626 5.3.1: the route set of a dialog-forming request that came by
  an ``;ob`` Route must lead later requests to a valid flow of the UA);
* a call from that phone: the PBX's BYE to the phone's private Contact comes back over the
  phone's flow by the flow token in the proxy's Record-Route (RFC 5626 5.3.2);
* a tampered flow token gets 403 (once, statelessly: no 100 first) and reaches nobody (RFC 5626
  5.3); the same
  INVITE with the genuine token does reach the phone;
* a TCP flow carries a call while its connection is open; once the phone closed it, the binding
  the proxy learned goes at once and the same Path gets 430 Flow Failed (RFC 5626 5.3.1).

The PBX is a raw UDP peer (``wire.UdpPeer``) bound on the configured upstream port; phones are
raw UDP peers or a raw TCP client, except in the first test, where sipp plays both sides
(``ob_register.xml`` as phones, ``edge_registrar.xml`` as the PBX's registrar).
:func:`test_edge_registrar_scenario_pairs_without_proxy` proves ``edge_registrar.xml``
sipp-to-sipp, so a failure elsewhere points at the proxy.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    ProxyProcess,
    Sipp,
    assert_calls,
    free_port,
    sipp_msgs,
    via_is_proxy,
)
from tests.e2e.wire import (
    SipMessage,
    SipStream,
    UdpPeer,
    build_ack,
    build_request,
    build_response,
    split_via_values,
    via_sent_by,
)

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"
USER = "bob"
AOR_URI = f"sip:{USER}@{DOMAIN}"
PBX_URI = f"sip:pbx@{DOMAIN}"
# RFC 5737 TEST-NET addresses: nobody answers there, so only the flow can deliver
PHONE_PRIVATE = "sip:bob@192.0.2.55:5060;ob"
WAIT = 3.0  # bound for every message that must arrive (loopback: milliseconds)
SILENCE = 0.5  # the window in which nothing must arrive
ProxyFactory = Callable[..., ProxyProcess]

# <sip:TOKEN@HOST:PORT;params> with a token that fits a URI user part (RFC 3261 25.1)
_PATH_RE = re.compile(
    r"^<sip:(?P<token>[A-Za-z0-9\-_.!~*'()%&=+$,;?/]+)@(?P<host>[0-9.]+):(?P<port>\d+)"
    r"(?P<params>(?:;[^;>]*)*)>$"
)


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class PathValue:
    """One Path value the proxy added, split up."""

    raw: str
    token: str
    host: str
    port: int
    params: dict[str, str | None]


def parse_path(value: str) -> PathValue:
    m = _PATH_RE.match(value.strip())
    assert m is not None, f"Path value not of the form <sip:TOKEN@HOST:PORT;...>: {value!r}"
    params: dict[str, str | None] = {}
    for p in m.group("params").split(";")[1:]:
        k, sep, v = p.partition("=")
        params[k.strip().lower()] = v.strip() if sep else None
    return PathValue(value.strip(), m.group("token"), m.group("host"), int(m.group("port")),
                     params)


def the_path(reg: SipMessage, proxy: ProxyProcess, transport: str) -> PathValue:
    """RFC 3327 5.1 / RFC 5626 5.1: exactly one Path value, naming the proxy as the PBX reaches
    it (``transport``: the upstream leg's), with ;lr, ;ob (and ;transport=tcp over TCP) and a
    flow token naming the phone's flow."""
    values = [v for line in reg.get_all("path") for v in split_via_values(line)]
    assert len(values) == 1, f"want exactly one Path value, got {values!r}"
    path = parse_path(values[0])
    assert (path.host, path.port) == proxy.addr, path.raw
    want: dict[str, str | None] = {"lr": None, "ob": None}
    if transport == "tcp":
        want["transport"] = "tcp"
    assert path.params == want, f"Path parameters {path.params} != {want}: {path.raw}"
    assert len(path.token) >= 16, f"no flow token worth the name: {path.raw}"
    return path


def new_instance() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def outbound_contact(uri: str, instance: str, reg_id: int = 1) -> str:
    return f'<{uri}>;+sip.instance="<{instance}>";reg-id={reg_id}'


def edge_proxy(proxy_factory: ProxyFactory, pbx_port: int) -> ProxyProcess:
    return proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="upstream")


def name_addr_uri(value: str) -> str:
    m = re.search(r"<([^>]*)>", value)
    assert m is not None, value
    return m.group(1)


def dialog_request(
    method: str, ruri: str, *, transport: str, via: tuple[str, int], from_: str, to: str,
    call_id: str, cseq: int, routes: Iterable[str] = (), branch: str | None = None,
) -> bytes:
    """An in-dialog request (RFC 3261 12.2.1.1): Request-URI the remote target, Route the
    route set, From/To the dialog's (with tags)."""
    br = branch or f"z9hG4bK-edge-{uuid.uuid4().hex[:12]}"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via[0]}:{via[1]};branch={br};rport",
        "Max-Forwards: 70",
        *(f"Route: {r}" for r in routes),
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def tamper(token: str, index: int) -> str:
    """``token`` with the character at ``index`` replaced by another of its alphabet."""
    ch = token[index]
    repl = "A" if ch != "A" else "B"
    i = index % len(token)
    return token[:i] + repl + token[i + 1:]


async def pbx_registrar_answers(pbx: UdpPeer, proxy: ProxyProcess) -> SipMessage:
    """The PBX's registrar: take the relayed REGISTER, answer 200 listing its Contact and
    echoing its Path (RFC 3261 10.3 step 8, RFC 3327 5.3); returns the REGISTER it got."""
    reg, src = await pbx.recv_sip(WAIT, lambda m: m.method == "REGISTER")
    assert src == proxy.addr, f"REGISTER from {src}, not from the proxy"
    contact = reg.get("contact")
    assert contact is not None, reg.raw
    extra = [f"Contact: {contact};expires=3600", "Expires: 3600",
             *(f"Path: {p}" for p in reg.get_all("path"))]
    await pbx.send(build_response(reg, 200, "OK", to_tag="pbxreg", extra_headers=extra), src)
    return reg


async def register_udp(phone: UdpPeer, pbx: UdpPeer, proxy: ProxyProcess, instance: str,
                       contact_uri: str = PHONE_PRIVATE) -> PathValue:
    """A UDP outbound registration through the edge proxy (RFC 5626 4.2, 5.1); returns the
    Path value the PBX got."""
    await phone.send(build_request(
        "REGISTER", f"sip:{DOMAIN}", via_host=LOOPBACK, via_port=phone.port,
        from_uri=AOR_URI, to_uri=AOR_URI, from_tag="phonereg",
        extra_headers=[f"Contact: {outbound_contact(contact_uri, instance)}", "Expires: 3600",
                       "Supported: path, outbound"],
    ), proxy.addr)
    reg = await pbx_registrar_answers(pbx, proxy)
    ok, src = await phone.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
    assert ok.status == 200 and src == proxy.addr, ok.start_line
    return the_path(reg, proxy, "udp")


def pbx_contact(pbx: UdpPeer) -> str:
    """The PBX's own, reachable, address (it is no phone behind a NAT)."""
    return f"sip:pbx@{LOOPBACK}:{pbx.port}"


def pbx_invite(pbx: UdpPeer, route: str, call_id: str, ruri: str = PHONE_PRIVATE) -> bytes:
    """A PBX's INVITE for the phone, routed by the Path it learned (RFC 3327 5.3, RFC 5626
    5.3): the Request-URI is the phone's registered (private) Contact."""
    return build_request(
        "INVITE", ruri, via_host=LOOPBACK, via_port=pbx.port, call_id=call_id,
        from_uri=PBX_URI, to_uri=AOR_URI, from_tag="pbx1",
        extra_headers=[f"Route: {route}", f"Contact: <{pbx_contact(pbx)}>"],
    )


async def expect_rejected(pbx: UdpPeer, proxy: ProxyProcess, call_id: str,
                          status: int, *, refused: bool = False) -> SipMessage:
    """The PBX gets 100 then the final ``status`` for its INVITE ``call_id`` (RFC 3261 16.2)
    and ACKs it (17.1.1.3); returns the final response. ``refused``: the proxy refused the
    INVITE itself, before any transaction (issue 18): the final comes alone, without 100."""
    def ours(m: SipMessage) -> bool:
        return m.call_id == call_id and m.status is not None

    if not refused:
        first, src = await pbx.recv_sip(WAIT, ours)
        assert src == proxy.addr and first.status == 100, first.start_line
    final, src = await pbx.recv_sip(WAIT, ours)
    assert src == proxy.addr
    assert final.status == status, f"want {status}, got {final.start_line!r}"
    assert final.cseq == (1, "INVITE")
    await pbx.send(build_ack(PHONE_PRIVATE, final), proxy.addr)
    return final


async def recv_or_none(peer: UdpPeer, match: Callable[[SipMessage], bool],
                       timeout: float = WAIT) -> tuple[SipMessage, tuple[str, int]] | None:
    """The next matching SIP message, or None when none arrives within ``timeout``."""
    try:
        return await peer.recv_sip(timeout, match)
    except TimeoutError:
        return None


# ----------------------------------------------------------------------------- scenario


async def test_edge_registrar_scenario_pairs_without_proxy(sipp: Sipp) -> None:
    """edge_registrar.xml answers ob_register.xml directly: 200 with the Contact it got (with
    ;expires) and the Expires header, so a failure of the tests below is the proxy's."""
    reg_port = free_port()
    instance = new_instance()
    registrar = await sipp.uas("edge_registrar.xml", port=reg_port, calls=1, timeout=5,
                               name="self-registrar")
    phone = await sipp.uac("ob_register.xml", (LOOPBACK, reg_port), service=USER,
                           keys={"domain": DOMAIN, "ob_instance": instance, "ob_regid": "1"},
                           timeout=5, name="self-phone")
    phone_res, reg_res = await phone.wait(), await registrar.wait(10)
    assert_calls(phone_res, 1)
    assert_calls(reg_res, 1)
    [ok] = sipp_msgs(phone_res, "received", lambda m: m.status == 200)
    contact = ok.get("contact") or ""
    assert f"<{instance}>" in contact and ";ob>" in contact and "expires=3600" in contact, contact
    assert ok.get("path") is None


# ----------------------------------------------------------------------------- 1. REGISTER


async def test_register_through_edge_gets_path_with_flow_token(
    proxy_factory: ProxyFactory, sipp: Sipp
) -> None:
    """Two sipp phones (two flows: ports P1 and P2) register bob through the proxy; the PBX's
    registrar (sipp) gets each REGISTER from the proxy with the phone's Contact untouched and
    exactly one Path ``<sip:TOKEN@127.0.0.1:PROXYPORT;lr;ob>`` (RFC 3327 5.2, RFC 5626 5.1), a
    different TOKEN per flow; each phone gets the registrar's 200 with its Contact."""
    pbx_port, p1, p2 = free_port(), free_port(), free_port()
    proxy = edge_proxy(proxy_factory, pbx_port)
    registrar = await sipp.uas("edge_registrar.xml", port=pbx_port, calls=2, timeout=10,
                               name="pbx-registrar")
    instances = [new_instance(), new_instance()]
    phones = []
    for port, instance, name in ((p1, instances[0], "phone1"), (p2, instances[1], "phone2")):
        phone = await sipp.uac("ob_register.xml", proxy.addr, port=port, service=USER,
                               keys={"domain": DOMAIN, "ob_instance": instance,
                                     "ob_regid": "1"}, timeout=10, name=name)
        phones.append(await phone.wait())
    reg_res = await registrar.wait(10)
    proxy.assert_alive()

    for res in phones:
        assert_calls(res, 1)
    assert_calls(reg_res, 2)
    got = sipp_msgs(reg_res, "received", lambda m: m.method == "REGISTER")
    assert len(got) == 2, [m.start_line for m in got]
    tokens = []
    for reg, port, instance, res in zip(got, (p1, p2), instances, phones, strict=True):
        assert via_is_proxy(reg, proxy), reg.vias
        assert len(reg.vias) == 2 and via_sent_by(reg.vias[1])[1:3] == (LOOPBACK, port), \
            reg.vias
        contact = reg.get("contact") or ""
        assert f"<sip:{USER}@{LOOPBACK}:{port};ob>" in contact and f"<{instance}>" in contact, \
            f"the Contact was changed on the way: {contact!r}"
        assert reg.request_uri == f"sip:{DOMAIN}"
        tokens.append(the_path(reg, proxy, "udp").token)
        [ok] = sipp_msgs(res, "received", lambda m: m.status == 200)
        assert ok.cseq == (1, "REGISTER") and f"<{instance}>" in (ok.get("contact") or ""), \
            ok.get_all("contact")
        assert len(ok.vias) == 1 and via_sent_by(ok.vias[0])[1:3] == (LOOPBACK, port), ok.vias
    assert tokens[0] != tokens[1], "two flows got the same flow token"


# ----------------------------------------------------------------------------- 2. call by Path


async def test_pbx_call_via_path_reaches_phone_over_its_flow(
    proxy_factory: ProxyFactory,
) -> None:
    """A phone behind a NAT (one UDP socket) registers with a private Contact (192.0.2.55); the
    PBX's INVITE with that Request-URI and Route = the Path value goes over the phone's flow
    (RFC 5626 5.3.1), Request-URI untouched, our Route removed (RFC 3261 16.4), Record-Routed.
    The phone answers 200 with the same private Contact (a NATed phone knows no other); the
    PBX's ACK to that Contact, with the Record-Route as Route (RFC 3261 12.2.1.1), must reach the
    phone over its flow too: RFC 5626 5.3.1 has the edge proxy adjust the route set of a
    dialog-forming request that arrived by an ";ob" Route so that the dialog's later requests
    reach the UA over a valid flow.  The phone's BYE then reaches the PBX, whose 200 reaches
    the phone."""
    pbx_port = free_port()
    proxy = edge_proxy(proxy_factory, pbx_port)
    async with await UdpPeer.bind(pbx_port) as pbx, \
            await UdpPeer.bind(free_port(tcp=False)) as phone:
        path = await register_udp(phone, pbx, proxy, new_instance())
        call_id = f"edge-call-{uuid.uuid4().hex[:8]}@{LOOPBACK}"
        await pbx.send(pbx_invite(pbx, path.raw, call_id), proxy.addr)

        invite, src = await phone.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert src == proxy.addr and invite.call_id == call_id, (src, invite.start_line)
        assert invite.request_uri == PHONE_PRIVATE, invite.start_line
        assert invite.get("route") is None, f"our Route was not removed: {invite.get('route')}"
        assert via_is_proxy(invite, proxy) and len(invite.vias) == 2, invite.vias
        rr = [v for line in invite.get_all("record-route") for v in split_via_values(line)]
        assert rr, "a dialog-creating request without the proxy's Record-Route"
        assert all(f"@{LOOPBACK}:{proxy.port};" in v and ";lr" in v for v in rr), rr

        phone_to = f"{invite.get('to')};tag=phone1"
        await phone.send(build_response(
            invite, 200, "OK", to_tag="phone1",
            extra_headers=[*(f"Record-Route: {v}" for v in rr), f"Contact: <{PHONE_PRIVATE}>"],
        ), proxy.addr)

        def ours(m: SipMessage) -> bool:
            return m.call_id == call_id and m.status is not None

        trying, _ = await pbx.recv_sip(WAIT, ours)
        assert trying.status == 100, trying.start_line
        ok, src = await pbx.recv_sip(WAIT, ours)
        assert src == proxy.addr and ok.status == 200, ok.start_line
        assert len(ok.vias) == 1 and via_sent_by(ok.vias[0])[2] == pbx_port, ok.vias
        route_set = [v for line in ok.get_all("record-route") for v in split_via_values(line)]
        assert route_set == rr, (route_set, rr)
        remote_target = name_addr_uri(ok.get("contact") or "")
        assert remote_target == PHONE_PRIVATE

        # PBX -> phone: ACK (RFC 3261 13.2.2.4), route set reversed (12.1.2)
        pbx_from = f"<{PBX_URI}>;tag=pbx1"
        await pbx.send(dialog_request(
            "ACK", remote_target, transport="UDP", via=(LOOPBACK, pbx.port), from_=pbx_from,
            to=ok.get("to") or "", call_id=call_id, cseq=1, routes=list(reversed(route_set)),
        ), proxy.addr)
        got = await recv_or_none(phone, lambda m: m.method == "ACK")
        assert got is not None, (
            "the PBX's ACK (Request-URI = the phone's private Contact, Route = the proxy's "
            f"Record-Route {route_set}) never reached the phone's flow within {WAIT} s: the "
            "route set of an INVITE that came in by an ;ob Path does not lead back to the "
            "phone's flow (RFC 5626 5.3.1)\n" + proxy.tail(15)
        )
        ack, src = got
        assert src == proxy.addr and ack.call_id == call_id and ack.request_uri == PHONE_PRIVATE

        # phone -> PBX: BYE (route set as received, 12.1.1)
        await phone.send(dialog_request(
            "BYE", pbx_contact(pbx), transport="UDP", via=(LOOPBACK, phone.port), from_=phone_to,
            to=pbx_from, call_id=call_id, cseq=1, routes=rr,
        ), proxy.addr)
        bye, src = await pbx.recv_sip(WAIT, lambda m: m.method == "BYE")
        assert src == proxy.addr and bye.call_id == call_id, (src, bye.start_line)
        assert bye.request_uri == pbx_contact(pbx) and bye.get("route") is None, bye.raw
        await pbx.send(build_response(bye, 200, "OK", to_tag=None), src)
        bye_ok, src = await phone.recv_sip(
            WAIT, lambda m: m.status is not None and m.cseq == (1, "BYE"))
        assert src == proxy.addr and bye_ok.status == 200, bye_ok.start_line
    proxy.assert_alive()


async def test_phone_call_pbx_bye_comes_back_over_phone_flow(
    proxy_factory: ProxyFactory,
) -> None:
    """The NATed phone of the test above (private Contact 192.0.2.55) calls out: its INVITE goes
    to the PBX (docs/BEHAVIOUR.md "Routing": anything else to the upstreams) Record-Routed with a flow token (RFC 5626 5.3.2); the
    PBX answers, the phone's ACK reaches the PBX, and the PBX's BYE to the phone's private
    Contact with the Record-Route as Route comes back over the phone's flow (README: the
    caller-facing Record-Route carries the caller's flow token); the phone's 200 reaches the
    PBX."""
    pbx_port = free_port()
    proxy = edge_proxy(proxy_factory, pbx_port)
    async with await UdpPeer.bind(pbx_port) as pbx, \
            await UdpPeer.bind(free_port(tcp=False)) as phone:
        await register_udp(phone, pbx, proxy, new_instance())
        call_id = f"edge-out-{uuid.uuid4().hex[:8]}@{LOOPBACK}"
        callee = f"sip:alice@{DOMAIN}"
        await phone.send(build_request(
            "INVITE", callee, via_host=LOOPBACK, via_port=phone.port, call_id=call_id,
            from_uri=AOR_URI, to_uri=callee, from_tag="bob1",
            extra_headers=[f"Contact: <{PHONE_PRIVATE}>"],
        ), proxy.addr)

        invite, src = await pbx.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert src == proxy.addr and invite.call_id == call_id, (src, invite.start_line)
        assert via_is_proxy(invite, proxy), invite.vias
        rr = [v for line in invite.get_all("record-route") for v in split_via_values(line)]
        assert len(rr) == 1 and set(parse_path(rr[0]).params) == {"lr", "d"}, rr
        assert re.fullmatch(r"[0-9a-f]{16}", parse_path(rr[0]).params["d"] or ""), rr  # the mark
        await pbx.send(build_response(
            invite, 200, "OK", to_tag="alice1",
            extra_headers=[*(f"Record-Route: {v}" for v in rr),
                           f"Contact: <{pbx_contact(pbx)}>"],
        ), src)

        ok, src = await phone.recv_sip(
            WAIT, lambda m: m.call_id == call_id and (m.status or 0) >= 200)
        assert src == proxy.addr and ok.status == 200, ok.start_line
        route_set = [v for line in ok.get_all("record-route") for v in split_via_values(line)]
        assert route_set == rr, (route_set, rr)
        phone_from = f"<{AOR_URI}>;tag=bob1"
        pbx_to = ok.get("to") or ""
        await phone.send(dialog_request(
            "ACK", name_addr_uri(ok.get("contact") or ""), transport="UDP",
            via=(LOOPBACK, phone.port), from_=phone_from, to=pbx_to, call_id=call_id, cseq=1,
            routes=list(reversed(route_set)),
        ), proxy.addr)
        ack, src = await pbx.recv_sip(WAIT, lambda m: m.method == "ACK")
        assert src == proxy.addr and ack.call_id == call_id and ack.get("route") is None

        # PBX -> phone: BYE to the private Contact; only the flow token can deliver it
        await pbx.send(dialog_request(
            "BYE", PHONE_PRIVATE, transport="UDP", via=(LOOPBACK, pbx.port), from_=pbx_to,
            to=phone_from, call_id=call_id, cseq=1, routes=rr,
        ), proxy.addr)
        bye, src = await phone.recv_sip(WAIT, lambda m: m.method == "BYE")
        assert src == proxy.addr and bye.call_id == call_id, (src, bye.start_line)
        assert bye.request_uri == PHONE_PRIVATE and bye.get("route") is None, bye.raw
        assert via_is_proxy(bye, proxy), bye.vias
        await phone.send(build_response(bye, 200, "OK", to_tag=None), src)
        bye_ok, src = await pbx.recv_sip(
            WAIT, lambda m: m.status is not None and m.cseq == (1, "BYE"))
        assert src == proxy.addr and bye_ok.status == 200, bye_ok.start_line
    proxy.assert_alive()


# ----------------------------------------------------------------------------- 3. forged token


async def test_forged_flow_token_gets_403(proxy_factory: ProxyFactory) -> None:
    """RFC 5626 5.3: a Route whose flow token was tampered with (one character changed in the
    middle, where the flow is, or near the end, where the MAC is) gets 403 (once, statelessly,
    no 100 first: issue 18) and reaches no phone; the same INVITE with the genuine token does reach the phone (which answers 486,
    so the call ends)."""
    pbx_port = free_port()
    proxy = edge_proxy(proxy_factory, pbx_port)
    async with await UdpPeer.bind(pbx_port) as pbx, \
            await UdpPeer.bind(free_port(tcp=False)) as phone:
        path = await register_udp(phone, pbx, proxy, new_instance())
        for index in (len(path.token) // 2, -3):
            forged = path.raw.replace(path.token, tamper(path.token, index))
            assert forged != path.raw
            call_id = f"edge-forged-{uuid.uuid4().hex[:8]}@{LOOPBACK}"
            await pbx.send(pbx_invite(pbx, forged, call_id), proxy.addr)
            await expect_rejected(pbx, proxy, call_id, 403, refused=True)
        leaked = [d.sip.start_line if d.sip else d.data[:60] for d in await phone.quiet(SILENCE)]
        assert leaked == [], f"a forged flow token reached the phone: {leaked}"

        call_id = f"edge-genuine-{uuid.uuid4().hex[:8]}@{LOOPBACK}"
        await pbx.send(pbx_invite(pbx, path.raw, call_id), proxy.addr)
        invite, src = await phone.recv_sip(WAIT, lambda m: m.method == "INVITE")
        assert src == proxy.addr and invite.call_id == call_id, invite.start_line
        await phone.send(build_response(invite, 486, "Busy Here", to_tag="busy"), src)
        await expect_rejected(pbx, proxy, call_id, 486)
        ack, _ = await phone.recv_sip(WAIT, lambda m: m.method == "ACK")  # 17.1.1.3, hop by hop
        assert ack.call_id == call_id
    proxy.assert_alive()


# ----------------------------------------------------------------------------- 4. dead TCP flow


async def test_tcp_flow_closed_gets_430(proxy_factory: ProxyFactory) -> None:
    """A phone registers over TCP (raw client): the PBX (on UDP) gets a Path that names the
    proxy's UDP side, not ;transport=tcp (RFC 3327 5.1: as the PBX reaches it); while
    the connection is open the PBX's INVITE by that Path reaches the phone over the connection
    (answered 486); the phone closes the connection, the proxy drops the binding it learned
    (log ``flow ... closed: binding removed``) and the same Path now gets 430 Flow Failed
    (RFC 5626 5.3), once and statelessly (issue 18: no 100 first)."""
    pbx_port = free_port()
    proxy = edge_proxy(proxy_factory, pbx_port)
    instance = new_instance()
    async with await UdpPeer.bind(pbx_port) as pbx:
        phone = await SipStream.connect(*proxy.addr, timeout=WAIT)  # the phone's TCP flow (RFC 5626 3.1)
        try:
            host, port = phone.local
            contact = outbound_contact(f"sip:{USER}@192.0.2.55:5060;transport=tcp;ob", instance)
            await phone.send(build_request(
                "REGISTER", f"sip:{DOMAIN}", via_host=host, via_port=port, transport="TCP",
                from_uri=AOR_URI, to_uri=AOR_URI, from_tag="tcpreg",
                extra_headers=[f"Contact: {contact}", "Expires: 3600",
                               "Supported: outbound, path"],
            ))
            reg = await pbx_registrar_answers(pbx, proxy)
            path = the_path(reg, proxy, "udp")
            ok = await phone.recv_sip(WAIT, lambda m: (m.status or 0) >= 200)
            assert ok.status == 200 and ok.cseq == (1, "REGISTER"), ok.start_line

            call_id = f"edge-tcp-open-{uuid.uuid4().hex[:8]}@{LOOPBACK}"
            await pbx.send(pbx_invite(pbx, path.raw, call_id), proxy.addr)
            invite = await phone.recv_sip(WAIT, lambda m: m.method == "INVITE")
            assert invite.call_id == call_id and via_sent_by(invite.vias[0])[0] == "TCP", \
                invite.vias
            await phone.send(build_response(invite, 486, "Busy Here", to_tag="busy"))
            await expect_rejected(pbx, proxy, call_id, 486)
            ack = await phone.recv_sip(WAIT, lambda m: m.method == "ACK")
            assert ack.call_id == call_id
            mark = proxy.mark()
        finally:
            await phone.close()
        closed = await proxy.await_log("closed: binding removed", timeout=WAIT, since=mark)
        assert f"<{instance}>" in closed, closed

        call_id = f"edge-tcp-dead-{uuid.uuid4().hex[:8]}@{LOOPBACK}"
        await pbx.send(pbx_invite(pbx, path.raw, call_id), proxy.addr)
        final = await expect_rejected(pbx, proxy, call_id, 430, refused=True)
        assert final.start_line.lower().endswith("flow failed"), final.start_line
    proxy.assert_alive()
