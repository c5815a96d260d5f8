"""Every method is relayed (RFC 3261 16: a proxy forwards methods it does not know), over UDP
and TCP, IPv4 and IPv6: a raw peer sends the request to the proxy, a raw upstream receives it
with the proxy's Via on top and answers 200, and the 200 comes back to the sender."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import free_port
from tests.e2e.wire import (
    RecordingUpstream,
    SipMessage,
    UdpPeer,
    build_request,
    new_call_id,
    tcp_exchange,
    via_sent_by,
)

pytestmark = pytest.mark.e2e

ANSWER = 3.0
#: the methods of the issue, with the headers a real UA would add; XFOO stands for any
#: extension method the proxy has never heard of
METHODS = {
    "OPTIONS": (),
    "INFO": ("Info-Package: dtmf",),
    "UPDATE": (),
    "PRACK": ("RAck: 1 1 INVITE",),
    "MESSAGE": (),
    "SUBSCRIBE": ("Event: presence", "Expires: 600"),
    "NOTIFY": ("Event: presence", "Subscription-State: active;expires=600"),
    "REFER": ("Refer-To: <sip:carol@example.net>",),
    "PUBLISH": ("Event: presence",),
    "XFOO": (),
}
FAMILIES = {"ipv4": "127.0.0.1", "ipv6": "::1"}


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.parametrize("family", FAMILIES)
async def test_every_method_is_relayed_over_udp_and_tcp(
    proxy_factory: ProxyFactory, family: str
) -> None:
    host = FAMILIES[family]
    up_port = free_port(tcp=False, host=host)
    port = free_port(host=host)
    upstream = await RecordingUpstream.start(up_port, host=host)
    try:
        proxy = proxy_factory(
            port=port, upstreams=[f"sip:{hostport(host, up_port)}"],
            extra={"listen": [f"udp:{hostport(host, port)}", f"tcp:{hostport(host, port)}"]},
        )
        async with await UdpPeer.bind(0, host) as peer:
            for method, headers in METHODS.items():
                for transport in ("UDP", "TCP"):
                    call_id = new_call_id()
                    mark = upstream.mark()
                    data = build_request(
                        method, "sip:bob@example.net", via_host=host if ":" not in host
                        else f"[{host}]", via_port=peer.port, call_id=call_id,
                        transport=transport, extra_headers=headers)
                    def ours(m: SipMessage, c: str = call_id) -> bool:
                        return m.call_id == c

                    if transport == "UDP":
                        await peer.send(data, (host, port))
                        resp, _ = await peer.recv_sip(
                            ANSWER, lambda m: ours(m) and not m.is_request)
                        statuses = [resp.status]
                    else:
                        outcome = await tcp_exchange(host, port, data, timeout=ANSWER,
                                                     until_response=True)
                        statuses = [r.status for r in outcome.responses]
                    fwd = await upstream.wait_for(
                        lambda m: m.is_request and ours(m), ANSWER, since=mark)
                    assert fwd.method == method, (method, transport)
                    t, vhost, vport, params = via_sent_by(fwd.vias[0])
                    assert (t, vhost.strip("[]"), vport) == ("UDP", host, port), fwd.vias[0]
                    assert len(fwd.vias) == 2
                    for h in headers:  # unknown and method-specific headers pass unchanged
                        name, _, value = h.partition(": ")
                        assert fwd.get(name) == value, (method, h)
                    assert statuses == [200], (method, transport, statuses, proxy.tail(10))
    finally:
        await upstream.close()
