"""The edge-proxy side of SIP Outbound (RFC 5626 5, RFC 3327): flow tokens in Path and
Record-Route, requests sent back over the flow they name, 403 for a forged token, 430 for a
dead flow."""

from __future__ import annotations

from proxy.core.types import Source, Target
from proxy.sip import parse_message
from tests.unit.core_harness import Harness, methods, request, response_to, statuses

PBX = Source("udp", "127.0.0.1", 5080)
PHONE = Source("tcp", "127.0.0.1", 7010, conn_id=7)


def outbound_register(h: Harness) -> str:
    """A phone's outbound REGISTER relayed to the PBX; returns the Path value the PBX got."""
    data = request(
        "REGISTER", ruri="sip:example.com", branch="z9hG4bKobreg", via_host="127.0.0.1:7010",
        extra=("Supported: path, outbound", "Expires: 600"),
    ).replace(b"Contact: <sip:alice@127.0.0.1:6000>",
              b'Contact: <sip:bob@10.0.0.5:5060;ob>;+sip.instance="<urn:uuid:1>";reg-id=1')
    out = h.feed(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), PHONE)
    [reg] = [m for m in h.to(5080, out) if m.is_request]
    path = reg.get("path")
    assert path is not None
    return path


def test_path_names_the_upstream_legs_transport() -> None:
    """RFC 3327 5.1: with the PBX on TCP the Path URI says transport=tcp, whatever the phone's
    transport; the token still names the phone's flow."""
    h = Harness.make(upstreams=(Target("tcp", "127.0.0.1", 5080, label="sip:127.0.0.1:5080"),))
    path = outbound_register(h)
    assert path.endswith(";lr;ob;transport=tcp>")
    udp = Harness.make()
    assert "transport" not in outbound_register(udp)


def test_outbound_register_gets_path_with_flow_token_and_ob() -> None:
    """RFC 5626 5.1 and RFC 3327 5.2: Path names the proxy with the UA's flow token and ;ob."""
    h = Harness.make()
    path = outbound_register(h)
    # RFC 3327 5.1: Path names the proxy as the PBX reaches it: the PBX is on UDP here, though
    # the phone registered over TCP.
    assert path.startswith("<sip:") and ";lr" in path and ";ob" in path
    assert "transport" not in path
    token = path[5:path.index("@")]
    flow = h.core.tokens.decode(token)
    assert flow is not None
    assert (flow.transport, flow.remote_host, flow.remote_port, flow.conn_id) == (
        "tcp", "127.0.0.1", 7010, 7)


def test_request_routed_by_path_goes_over_the_flow() -> None:
    """RFC 5626 5.3: a request whose Route names our flow token goes over that flow, whatever
    its Request-URI (the UA's private address)."""
    h = Harness.make()
    path = outbound_register(h)
    out = h.feed(request(ruri="sip:bob@10.0.0.5:5060;ob", branch="z9hG4bKpbxin",
                         via_host="127.0.0.1:5080", extra=(f"Route: {path}",)), PBX)
    [s] = [s for s in out if s.data.startswith(b"INVITE")]
    assert (s.transport, s.host, s.port, s.conn_id) == ("tcp", "127.0.0.1", 7010, 7)
    assert parse_message(s.data).get("route") is None


def test_forged_flow_token_gets_403() -> None:
    """RFC 5626 5.3: a token that does not verify is refused with 403, once, statelessly
    (issue 18: no 100 Trying and no transaction for a refusal)."""
    h = Harness.make()
    path = outbound_register(h)
    token = path[5:path.index("@")]
    forged = path.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    out = h.feed(request(branch="z9hG4bKforged", via_host="127.0.0.1:5080",
                         extra=(f"Route: {forged}",)), PBX)
    assert statuses(h.to(5080, out)) == [403]


def test_dead_flow_gets_430() -> None:
    """RFC 5626 5.3: the flow's connection closed -> 430 Flow Failed, statelessly."""
    h = Harness.make()
    path = outbound_register(h)
    h.take(h.core.on_flow_closed(7, h.now))
    out = h.feed(request(branch="z9hG4bKdead", via_host="127.0.0.1:5080",
                         extra=(f"Route: {path}",)), PBX)
    assert statuses(h.to(5080, out)) == [430]


def test_in_dialog_request_from_callee_goes_back_over_the_callers_flow() -> None:
    """RFC 5626 5.3: the Record-Route token leads the callee's BYE to the caller's flow; the
    caller's own requests with the same Route follow the Request-URI as usual."""
    h = Harness.make()
    h.feed(request())
    fwd = parse_message([s.data for s in h.sent if s.port == 5080][0])
    rr = fwd.get("record-route")
    out = h.feed(request("BYE", ruri="sip:alice@10.0.0.9:5099", to_tag="t", branch="z9hG4bKcbye",
                         via_host="127.0.0.1:5080", extra=(f"Route: {rr}",)), PBX)
    assert methods(h.to(6000, out)) == ["BYE"]
    out = h.feed(request("BYE", ruri="sip:bob@127.0.0.1:5080", to_tag="t", branch="z9hG4bKabye",
                         extra=(f"Route: {rr}",)))
    assert methods(h.to(5080, out)) == ["BYE"]


def test_dialog_to_a_phone_behind_nat_stays_on_its_flow() -> None:
    """RFC 5626 5.3: an INVITE sent over the phone's flow is Record-Routed with THAT flow's
    token, so the caller's ACK and BYE towards the phone's private Contact go over the flow."""
    h = Harness.make()
    path = outbound_register(h)
    out = h.feed(request(ruri="sip:bob@10.0.0.5:5060;ob", branch="z9hG4bKnat",
                         via_host="127.0.0.1:5080", extra=(f"Route: {path}",)), PBX)
    [inv] = [parse_message(s.data) for s in out if s.data.startswith(b"INVITE")]
    rr = inv.get("record-route")
    ack = request("ACK", ruri="sip:bob@10.0.0.5:5060;ob", to_tag="ph", branch="z9hG4bKnatack",
                  via_host="127.0.0.1:5080", extra=(f"Route: {rr}",))
    [s] = h.feed(ack, PBX)
    assert (s.transport, s.host, s.port, s.conn_id) == ("tcp", "127.0.0.1", 7010, 7)


def _upstream_register(h: Harness, src: Source, contact: str, listed: list[str],
                       branch: str) -> None:
    """A REGISTER relayed to the PBX, and the PBX's 200 listing ``listed`` contacts."""
    data = request("REGISTER", ruri="sip:example.com", branch=branch, call_id=branch,
                   via_host=f"127.0.0.1:{src.port}", extra=("Expires: 600",)
                   ).replace(b"Contact: <sip:alice@127.0.0.1:6000>", f"Contact: {contact}".encode())
    out = h.feed(data, src)
    [reg] = [s.data for s in out if s.port == 5080]
    h.feed(response_to(reg, 200, extra=tuple(f"Contact: {c};expires=600" for c in listed)), PBX)


def test_bindings_learned_from_registrar_2xx_keep_each_devices_flow() -> None:
    """registrar: upstream: the 2xx to B's REGISTER lists A's binding too; A's binding keeps
    the flow A registered over (RFC 5626 7), and a contact no device registered through the
    proxy is not learned."""
    h = Harness.make()
    a = Source("udp", "127.0.0.1", 7101)
    b = Source("udp", "127.0.0.1", 7102)
    inst_a = '+sip.instance="<urn:uuid:a>";reg-id=1'
    inst_b = '+sip.instance="<urn:uuid:b>";reg-id=1'
    ca, cb = "<sip:bob@10.0.0.1;ob>", "<sip:bob@10.0.0.2;ob>"
    _upstream_register(h, a, f"{ca};{inst_a}", [f"{ca};{inst_a}"], "z9hG4bKra")
    _upstream_register(h, b, f"{cb};{inst_b}",
                       [f"{ca};{inst_a}", f"{cb};{inst_b}", "<sip:bob@192.0.2.9>"], "z9hG4bKrb")
    flows = {bd.uri: (bd.flow.host, bd.flow.port)
             for bd in h.core.location.lookup("bob@example.com", h.now)}
    assert flows == {"sip:bob@10.0.0.1;ob": ("127.0.0.1", 7101),
                     "sip:bob@10.0.0.2;ob": ("127.0.0.1", 7102)}
