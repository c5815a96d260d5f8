"""Calls from the PBX (an upstream) to phones registered at the proxy (``registrar: local``),
and requests the proxy must refuse itself (RFC 3261 10.3, 16.3, 16.5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    ProxyProcess,
    Sipp,
    free_port,
    sipp_msgs,
)
from tests.e2e.wire import RecordingUpstream, via_sent_by

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"


async def test_pbx_call_reaches_registered_phone(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    """alice registers at the proxy; the PBX, sending from its upstream address, calls
    sip:alice@example.com through the proxy; the proxy sends it to alice's binding
    (docs/BEHAVIOUR.md "Routing": a registered address-of-record to its bindings), the phone answers, ACK and BYE follow the Record-Route."""
    pbx_port = free_port()
    phone_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="local",
                          domains=[DOMAIN])
    reg = await sipp.uac("phone_register.xml", proxy.addr, port=phone_port, service="alice",
                         keys={"domain": DOMAIN}, timeout=20, name="phone-register")
    reg_res = await reg.wait()
    assert reg_res.returncode == 0 and reg_res.successful == 1, reg_res.describe()
    ok = sipp_msgs(reg_res, "received", lambda m: m.status == 200)
    assert ok and f"{LOOPBACK}:{phone_port}" in (ok[0].get("contact") or ""), \
        "the 200 to REGISTER lists the binding (RFC 3261 10.3 step 8)"

    phone = await sipp.uas("uas_answer.xml", port=phone_port, timeout=30, name="phone")
    pbx = await sipp.uac("uac_call.xml", proxy.addr, port=pbx_port, calls=3, rate=10,
                         service="alice", keys={"domain": DOMAIN}, timeout=30, name="pbx")
    pbx_res = await pbx.wait()
    phone_res = await phone.stop()
    assert pbx_res.returncode == 0 and pbx_res.successful == 3, pbx_res.describe()
    assert phone_res.successful == 3 and phone_res.failed == 0, phone_res.describe()
    invites = sipp_msgs(phone_res, "received", lambda m: m.method == "INVITE")
    assert invites, "the phone got no INVITE"
    for inv in invites:
        t, host, port, _ = via_sent_by(inv.vias[0])
        assert (host, port) == (LOOPBACK, proxy.port), inv.vias[0]
        assert f"{LOOPBACK}:{phone_port}" in (inv.request_uri or ""), \
            "the Request-URI is replaced by the binding's Contact (RFC 3261 16.5, 16.6 step 6)"
    assert len(sipp_msgs(phone_res, "received", lambda m: m.method == "BYE")) >= 3
    proxy.assert_alive()


async def test_unknown_user_gets_404(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    """The PBX calls sip:bob@example.com; nobody registered it and example.com is the proxy's
    domain: 404 (RFC 3261 16.5), never forwarded anywhere."""
    pbx_port = free_port()
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}"], registrar="local",
                          domains=[DOMAIN])
    pbx = await sipp.uac("uac_expect_404.xml", proxy.addr, port=pbx_port, calls=3, rate=10,
                         service="bob", keys={"domain": DOMAIN}, timeout=20, name="pbx")
    res = await pbx.wait()
    assert res.returncode == 0 and res.successful == 3 and res.failed == 0, res.describe()
    sent_invites = sipp_msgs(res, "sent", lambda m: m.method == "INVITE")
    got_404 = sipp_msgs(res, "received", lambda m: m.status == 404)
    assert {m.call_id for m in got_404} == {m.call_id for m in sent_invites}
    proxy.assert_alive()


async def test_max_forwards_zero_gets_483(
    proxy_factory: Callable[..., ProxyProcess], sipp: Sipp
) -> None:
    """An INVITE with Max-Forwards: 0 from outside: 483 Too Many Hops, and the upstream never
    sees it (RFC 3261 16.3 step 3)."""
    upstream = await RecordingUpstream.start(free_port(tcp=False))
    try:
        proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"])
        caller = await sipp.uac("uac_max_forwards_0.xml", proxy.addr, calls=3, rate=10,
                                service="bob", keys={"domain": "example.net"}, timeout=20,
                                name="caller")
        res = await caller.wait()
        assert res.returncode == 0 and res.successful == 3 and res.failed == 0, res.describe()
        assert len(sipp_msgs(res, "received", lambda m: m.status == 483)) >= 3
        assert upstream.records == [], "a Max-Forwards 0 request reached the upstream"
        proxy.assert_alive()
    finally:
        await upstream.close()
