"""SIP over WebSocket in the sans-IO core (RFC 7118 5): a WebSocket message is one SIP message
(no Content-Length needed), Via and Record-Route name the ws/wss transport, a browser phone is
reached over its connection whatever its Contact says, and a closed connection is a dead flow
(RFC 5626 5.3, RFC 7118 5.3)."""

from __future__ import annotations

import re

from proxy.core.core import CoreSettings, ProxyCore
from proxy.core.registrar.location import MemoryLocation
from proxy.core.shared import DEAD_FLOW, from_stored
from proxy.core.types import LocalAddress, Source
from proxy.sip import parse_message
from proxy.store.base import StoredBinding
from tests.unit.core_harness import (
    LOCAL,
    UP1,
    Harness,
    default_policy,
    methods,
    request,
    response_to,
    statuses,
)

WS_LOCAL = LocalAddress("ws", "127.0.0.1", 8080, "127.0.0.1:8080")
WSS_LOCAL = LocalAddress("wss", "127.0.0.1", 8443, "127.0.0.1:8443")
BROWSER = Source("ws", "127.0.0.1", 40001, conn_id=11)
SECURE = Source("wss", "127.0.0.1", 40002, conn_id=12)
PBX = Source("udp", "127.0.0.1", 5080)


def harness() -> Harness:
    settings = CoreSettings(upstreams=(UP1,), registrar_local=True,
                            domains=frozenset({"example.com"}))
    return Harness(ProxyCore(settings, default_policy(), [*LOCAL, WS_LOCAL, WSS_LOCAL],
                             MemoryLocation()))


def ws_register(h: Harness, src: Source = BROWSER, outbound: bool = False) -> list[str]:
    """A browser's REGISTER as JsSIP/SIP.js write it: Via WS and an unroutable .invalid
    Contact, no Content-Length (RFC 7118 5); the proxy's answers."""
    contact = "<sip:k3j2@df7jal23ls0d.invalid;transport=ws>"
    if outbound:
        contact += ';+sip.instance="<urn:uuid:5>";reg-id=1'
    text = ("REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/{src.transport.upper()} df7jal23ls0d.invalid;branch=z9hG4bKreg{src.port}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=r1\r\n"
            "To: <sip:alice@example.com>\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: {contact}\r\nExpires: 600\r\n\r\n")
    out = h.feed(text.encode(), src)
    assert all((s.transport, s.conn_id) == (src.transport, src.conn_id) for s in out)
    return [parse_message(s.data).start_line for s in out]


def invite_from_pbx(h: Harness, branch: str = "z9hG4bKpbx1") -> list:  # type: ignore[type-arg]
    return h.feed(request(ruri="sip:alice@example.com", branch=branch,
                          via_host="127.0.0.1:5080"), PBX)


def test_a_message_without_content_length_over_ws_is_one_message() -> None:
    """RFC 7118 5: the WebSocket message gives the length; over TCP the same bytes would be
    a framing error."""
    h = harness()
    assert ws_register(h) == ["SIP/2.0 200 OK"]


def test_a_browser_phone_is_called_over_its_connection_with_ws_in_via_and_record_route() -> None:
    """RFC 7118 5.3: the .invalid Contact is not a next hop; the request goes over the flow
    (conn_id) it registered over. Via says WS (5.2); the request changed transport, so the
    proxy record-routes twice, the ws side with transport=ws and the flow's token."""
    h = harness()
    ws_register(h)
    out = invite_from_pbx(h)
    [to_browser] = [s for s in out if s.port == BROWSER.port]
    assert (to_browser.transport, to_browser.host, to_browser.conn_id) == ("ws", "127.0.0.1", 11)
    msg = parse_message(to_browser.data)
    assert msg.request_uri == "sip:k3j2@df7jal23ls0d.invalid;transport=ws"
    assert (msg.get("via") or "").startswith("SIP/2.0/WS 127.0.0.1:8080;branch=")
    rr = msg.get_all("record-route")
    assert len(rr) == 2
    # each value carries the dialog mark (;d=, proxy.core.access.trust) after its parameters
    assert re.fullmatch(r"<sip:[\w-]+@127\.0\.0\.1:8080;lr;transport=ws;d=[0-9a-f]{16}>", rr[0])
    assert re.fullmatch(r"<sip:127\.0\.0\.1:5060;lr;d=[0-9a-f]{16}>", rr[1])
    # its answer goes back to the PBX over UDP
    out = h.feed(response_to(to_browser.data, 200, extra=(f"Record-Route: {rr[0]}",
                                                         f"Record-Route: {rr[1]}")), BROWSER)
    assert statuses(h.to(5080, out)) == [200]


def test_a_closed_websocket_connection_makes_a_call_to_it_fail_at_once() -> None:
    """RFC 5626 5.3 / RFC 7118 5.3: the binding dies with its connection: 480 at once, no
    send over the dead connection, no timeout."""
    h = harness()
    ws_register(h)
    h.take(h.core.on_flow_closed(BROWSER.conn_id, h.now))
    out = invite_from_pbx(h)
    assert not [s for s in out if s.transport == "ws"]
    assert statuses(h.to(5080, out)) == [100, 480]


def test_an_outbound_browser_over_wss_loses_its_flow_with_its_connection() -> None:
    """JsSIP registers with +sip.instance and reg-id (RFC 5626): the same rules over wss."""
    h = harness()
    ws_register(h, SECURE, outbound=True)
    out = invite_from_pbx(h)
    [s] = [s for s in out if s.transport == "wss"]
    assert s.conn_id == SECURE.conn_id
    assert (parse_message(s.data).get("via") or "").startswith("SIP/2.0/WSS 127.0.0.1:8443;")
    h.take(h.core.on_flow_closed(SECURE.conn_id, h.now))
    out = invite_from_pbx(h, "z9hG4bKpbx2")
    assert statuses(h.to(5080, out)) == [100, 480]


def test_a_call_from_the_browser_is_record_routed_on_both_sides_and_the_bye_crosses() -> None:
    """A request in over WS and out over UDP: two Record-Route values, so that the callee's
    BYE comes back over the browser's connection (its Record-Route token) and the browser's
    BYE goes out to the callee over UDP."""
    h = harness()
    invite = ("INVITE sip:bob@pbx.example SIP/2.0\r\n"
              "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKbrinv\r\n"
              "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
              "To: <sip:bob@example.com>\r\nCall-ID: call-ws\r\nCSeq: 1 INVITE\r\n"
              "Contact: <sip:k3j2@df7jal23ls0d.invalid;transport=ws;ob>\r\n\r\n")
    out = h.feed(invite.encode(), BROWSER)
    [fwd] = [s for s in out if s.port == 5080]
    assert fwd.transport == "udp"
    msg = parse_message(fwd.data)
    assert (msg.get("via") or "").startswith("SIP/2.0/UDP 127.0.0.1:5060;")
    rr = msg.get_all("record-route")
    assert re.fullmatch(r"<sip:127\.0\.0\.1:5060;lr;d=[0-9a-f]{16}>", rr[0])
    assert re.fullmatch(r"<sip:[\w-]+@127\.0\.0\.1:8080;lr;transport=ws;d=[0-9a-f]{16}>", rr[1])
    # the callee's BYE, routed by the record-route set it learnt (RFC 3261 12.2.1.1)
    bye = request("BYE", ruri="sip:k3j2@df7jal23ls0d.invalid;transport=ws;ob", to_tag="b1",
                  branch="z9hG4bKpbxbye", via_host="127.0.0.1:5080", call_id="call-ws",
                  extra=(f"Route: {rr[0]}, {rr[1]}",))
    out = h.feed(bye, PBX)
    [over_ws] = [s for s in out if s.transport == "ws"]
    assert over_ws.conn_id == BROWSER.conn_id and methods([parse_message(over_ws.data)]) == ["BYE"]
    # and once that connection closed, the same BYE gets 430 (RFC 5626 5.3)
    h.take(h.core.on_flow_closed(BROWSER.conn_id, h.now))
    out = h.feed(bye.replace(b"z9hG4bKpbxbye", b"z9hG4bKpbxbye2"), PBX)
    assert statuses(h.to(5080, out)) == [430]


def test_a_stored_websocket_binding_of_an_earlier_process_is_a_dead_flow() -> None:
    """After a restart the browser's connection is gone: its binding is not reached by its
    .invalid Contact but treated as a dead flow (the phone registers again)."""
    h = harness()
    sb = StoredBinding(aor="alice@example.com", key="sip:k@x.invalid;transport=ws",
                       contact="<sip:k@x.invalid;transport=ws>", uri="sip:k@x.invalid;transport=ws",
                       expires_at=2e9, q=1.0, call_id="c", cseq=1, flow_transport="ws",
                       flow_host="127.0.0.1", flow_port=40001, registered_at=1.9e9,
                       instance=None, reg_id=None, node="")
    b = from_stored(h.core, sb)
    assert b.on_flow and b.flow.conn_id == DEAD_FLOW
