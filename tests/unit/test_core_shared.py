"""The core's side of durable and shared state (sans-IO): the location journal, bindings to
and from the store, other nodes' changes, and requests for a flow another node holds."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.core import shared
from proxy.core.outbound import reach
from proxy.core.outbound.flowtoken import Flow
from proxy.core.registrar.location import Binding, BindingDelete, BindingWrite, MemoryLocation
from proxy.core.types import Source
from proxy.sip import parse_message
from proxy.store.base import LearnedRoute, StoreChange, StoredBinding
from tests.unit.core_harness import CALLER, Harness, request

WALL = 1_800_000_000.0  # wall clock of the store at core time 1000 (Harness.now)
DOMAIN = frozenset({"example.com"})


def make() -> Harness:
    h = Harness.make(registrar_local=True, domains=DOMAIN)
    h.core.set_wall_offset(WALL - h.now)
    h.core.join_cluster("a", False)
    return h


def register(user: str = "alice", contact: str = "<sip:alice@127.0.0.1:7000>",
             expires: int = 600, cseq: int = 1) -> bytes:
    return request("REGISTER", "sip:example.com", call_id=f"reg-{user}", cseq=cseq,
                   branch=f"z9hG4bKreg{user}{cseq}",
                   extra=(f"Expires: {expires}",)).replace(
        b"To: <sip:bob@example.com>", f"To: <sip:{user}@example.com>".encode()).replace(
        b"Contact: <sip:alice@127.0.0.1:6000>", f"Contact: {contact}".encode())


def stored(aor: str = "alice@example.com", *, node: str = "b", transport: str = "udp",
           contact_host: str = "127.0.0.1:7000", reg_id: int | None = None) -> StoredBinding:
    uri = f"sip:alice@{contact_host}"
    return StoredBinding(
        aor=aor, key=uri if reg_id is None else f"urn:uuid:1|{reg_id}", contact=f"<{uri}>",
        uri=uri, expires_at=WALL + 300, q=1.0, call_id="c", cseq=1, flow_transport=transport,
        flow_host="127.0.0.1", flow_port=7000, registered_at=WALL - 10,
        instance=None if reg_id is None else "urn:uuid:1", reg_id=reg_id, node=node)


def test_the_journal_records_registrar_changes_only_when_enabled() -> None:
    """The binding changes of one call into the core come out in its Effects (issue 20: the
    runtime no longer drains the location's journal)."""
    h = make()
    loc = h.core.location
    assert isinstance(loc, MemoryLocation)
    assert h.core.on_message(register(), CALLER, h.now).bindings == ()  # off by default
    assert h.core.record_bindings(True).bindings == ()
    fx = h.core.on_message(register(contact="<sip:alice@127.0.0.1:7001>", cseq=2), CALLER, h.now)
    changes = fx.bindings
    assert [type(c) for c in changes] == [BindingWrite]
    assert isinstance(changes[0], BindingWrite)
    assert changes[0].binding.uri == "sip:alice@127.0.0.1:7001"
    fx = h.core.on_message(register(contact="*", expires=0, cseq=3), CALLER, h.now)
    assert fx.bindings == (BindingDelete("alice@example.com", None),)
    assert loc.take_changes() == []


def test_applied_changes_are_not_recorded() -> None:
    h = make()
    loc = h.core.location
    assert isinstance(loc, MemoryLocation)
    h.core.record_bindings(True)
    fx = h.core.apply_store_change(StoreChange("put_binding", "b", binding=stored()), h.now)
    assert len(loc.lookup("alice@example.com", h.now)) == 1 and fx.bindings == ()
    fx = h.core.apply_store_change(
        StoreChange("remove_bindings", "b", aor="alice@example.com"), h.now)
    assert loc.lookup("alice@example.com", h.now) == [] and fx.bindings == ()
    assert loc.take_changes() == []


def test_bindings_round_trip_through_the_store_form_on_the_wall_clock() -> None:
    h = make()
    b = Binding("alice@example.com", "<sip:alice@127.0.0.1:7000>",
                "sip:alice@127.0.0.1:7000", h.now + 300, 0.5, "c", 3,
                Source("tcp", "127.0.0.1", 7000, 42), h.now - 10)
    sb = shared.to_stored(h.core, b)
    assert (sb.expires_at, sb.registered_at, sb.node) == (WALL + 300, WALL - 10, "a")
    back = shared.from_stored(h.core, sb)
    assert (back.expires_at, back.registered_at, back.node) == (b.expires_at, b.registered_at,
                                                                 None)
    assert back.flow == Source("tcp", "127.0.0.1", 7000, None)  # a plain binding: a new
    # connection to its Contact


def test_an_outbound_stream_flow_of_the_previous_process_is_dead() -> None:
    h = make()
    b = shared.from_stored(h.core, stored(node="a", transport="tcp", reg_id=1))
    assert b.flow.conn_id == shared.DEAD_FLOW
    shared.load_bindings(h.core, [stored(node="a", transport="tcp", reg_id=1)], h.now)
    out = h.feed(request("INVITE", "sip:alice@example.com"), Source("udp", "127.0.0.1", 5080))
    assert not [s for s in out if s.port == 7000], "a dead flow was tried"
    assert h.core.location.lookup("alice@example.com", h.now) == []


def test_held_elsewhere_covers_streams_outbound_and_nat() -> None:
    h = make()
    direct = shared.from_stored(h.core, stored())
    nat = shared.from_stored(h.core, stored(contact_host="192.168.1.10:5060"))
    tcp = shared.from_stored(h.core, stored(transport="tcp"))  # Contact = its connection
    tcp_listening = shared.from_stored(h.core, stored(transport="tcp",
                                                      contact_host="127.0.0.1:5062"))
    outbound = shared.from_stored(h.core, stored(reg_id=1))
    mine = shared.from_stored(h.core, stored(node="a", contact_host="192.168.1.10:5060"))
    assert [shared.held_elsewhere(b) for b in (direct, nat, tcp, tcp_listening, outbound,
                                               mine)] == [False, True, True, False, True, False]


@pytest.mark.parametrize(("contact", "source", "nat"), [
    ("192.168.1.10", "203.0.113.7", True),  # RFC 1918
    ("10.1.2.3", "203.0.113.7", True),
    ("172.20.0.5", "203.0.113.7", True),
    ("100.64.9.9", "203.0.113.7", True),  # RFC 6598 carrier-grade NAT
    ("169.254.1.1", "203.0.113.7", True),  # link-local
    ("fd00::5", "2001:db8::7", True),  # RFC 4193
    ("fe80::1", "2001:db8::7", True),
    ("127.0.0.1", "203.0.113.7", True),  # its own loopback, seen from outside
    ("127.0.0.1", "127.0.0.2", False),  # on this very host
    ("192.168.1.10", "192.168.1.10", False),  # the proxy on the phone's private network
    ("198.51.100.20", "203.0.113.7", False),  # elsewhere, public: a third-party Contact
    ("pbx.example.com", "203.0.113.7", False),  # a name: as written
])
def test_behind_nat_is_a_private_contact_that_is_not_the_source(
        contact: str, source: str, nat: bool) -> None:
    assert reach.behind_nat(contact, source) is nat


def local_binding(contact: str, flow: Source, reg_id: int | None = None) -> Binding:
    return Binding("alice@example.com", f"<{contact}>", contact, 1300.0, 1.0, "c", 1, flow,
                   900.0, None if reg_id is None else "urn:uuid:1", reg_id)


@pytest.mark.parametrize(("contact", "flow", "over_flow"), [
    ("sip:alice@192.168.1.10:5060", Source("udp", "203.0.113.7", 40000), True),
    ("sip:alice@203.0.113.7:5060", Source("udp", "203.0.113.7", 40000), False),
    ("sip:alice@198.51.100.1:5060", Source("udp", "203.0.113.7", 40000), False),
    ("sip:alice@203.0.113.7:40000;transport=tcp", Source("tcp", "203.0.113.7", 40000, 9),
     True),
    ("sip:alice@203.0.113.7:5060;transport=tcp", Source("tcp", "203.0.113.7", 40000, 9),
     False),
    ("sip:alice@[fd00::1]:5060", Source("udp", "2001:db8::7", 5060), True),
    ("sip:alice@203.0.113.7;ob", Source("udp", "203.0.113.7", 40000), False),
])
def test_over_flow_is_one_rule_for_contact_or_source(
        contact: str, flow: Source, over_flow: bool) -> None:
    assert reach.over_flow(local_binding(contact, flow)) is over_flow
    # SIP Outbound is always over its flow (RFC 5626 5.3)
    assert reach.over_flow(local_binding(contact, flow, reg_id=1))


def test_a_phone_behind_nat_is_reached_at_its_source_by_the_node_holding_it() -> None:
    """RFC 3261 16.5 gives the Contact; a private Contact that is not where the REGISTER came
    from is unreachable: the INVITE goes where the REGISTER came from (and its 200 went)."""
    h = make()
    phone = Source("udp", "127.0.0.2", 41000)
    h.feed(register(contact="<sip:alice@192.168.77.10:5060>"), phone)
    out = h.feed(request("INVITE", "sip:alice@example.com"), Source("udp", "127.0.0.1", 5080))
    invites = [s for s in out if parse_message(s.data).method == "INVITE"]
    assert [(s.host, s.port) for s in invites] == [("127.0.0.2", 41000)]
    msg = parse_message(invites[0].data)
    assert msg.request_uri == "sip:alice@192.168.77.10:5060"  # the Request-URI stays the Contact


def test_a_phone_behind_nat_is_reached_at_the_same_source_through_another_node() -> None:
    """Node b holds the phone (behind NAT); node a sends the INVITE to b with a token naming
    the phone's source, which is where b sends it (as b would for a call arriving at b)."""
    h = make()
    h.core.join_cluster("a", True)
    h.core.set_peers({"b": ["udp:127.0.0.3:5070"]})
    sb = dataclasses.replace(stored(contact_host="192.168.77.10:5060"), flow_host="127.0.0.2",
                             flow_port=41000)
    shared.load_bindings(h.core, [sb], h.now)
    out = h.feed(request("INVITE", "sip:alice@example.com"), Source("udp", "127.0.0.1", 5080))
    to_b = [s for s in out if (s.host, s.port) == ("127.0.0.3", 5070)]
    assert len(to_b) == 1
    route = parse_message(to_b[0].data).get("route")
    assert route is not None
    token = route.split(":", 1)[1].split("@", 1)[0]
    flow = h.core.tokens.decode(token)
    assert flow is not None and (flow.remote_host, flow.remote_port, flow.node) == (
        "127.0.0.2", 41000, "b")


def test_a_phone_at_its_contact_is_reached_there_from_every_node() -> None:
    """Contact on the source's host (another port: the UA sends from elsewhere than it
    listens): the Contact, directly, whichever node holds the binding."""
    for node in ("a", "b"):
        h = make()
        h.core.set_peers({"b": ["udp:127.0.0.3:5070"]})
        sb = dataclasses.replace(stored(contact_host="127.0.0.2:5062", node=node),
                                 flow_host="127.0.0.2", flow_port=41000)
        shared.load_bindings(h.core, [sb], h.now)
        out = h.feed(request("INVITE", "sip:alice@example.com"),
                     Source("udp", "127.0.0.1", 5080))
        invites = [s for s in out if parse_message(s.data).method == "INVITE"]
        assert [(s.host, s.port) for s in invites] == [("127.0.0.2", 5062)], node


def test_rekey_mints_with_the_new_key_and_keeps_the_old_tokens_when_asked() -> None:
    h = make()
    flow = Flow("udp", "127.0.0.1", 5060, "192.0.2.9", 40000)
    before = h.core.tokens.encode(flow)
    branch_key = h.core.branch_key
    h.core.rekey(b"s" * 32, keep_old=True)
    after = h.core.tokens.encode(flow)
    assert after != before and h.core.branch_key != branch_key
    assert h.core.tokens.decode(before) == flow  # minted before: still verifies
    assert h.core.tokens.decode(after) == flow
    other = Harness.make(registrar_local=True, domains=DOMAIN)
    other.core.rekey(b"s" * 32, keep_old=False)
    assert other.core.tokens.decode(after) == flow  # same key, same tokens: another node
    assert other.core.tokens.decode(before) is None
    other.core.rekey(b"t" * 32, keep_old=False)
    assert other.core.tokens.decode(after) is None  # without keep_old the old ones go


def test_a_binding_held_by_another_node_is_reached_through_it() -> None:
    h = make()
    h.core.set_peers({"b": ["udp:127.0.0.2:5070",
                                                     "tcp:127.0.0.2:5070"]})
    shared.load_bindings(h.core, [stored(transport="tcp")], h.now)
    out = h.feed(request("INVITE", "sip:alice@example.com"), Source("udp", "127.0.0.1", 5080))
    to_b = [s for s in out if (s.host, s.port) == ("127.0.0.2", 5070)]
    assert len(to_b) == 1 and to_b[0].transport == "tcp"
    msg = parse_message(to_b[0].data)
    route = msg.get("route")
    assert route is not None and route.endswith("@127.0.0.2:5070;lr;transport=tcp>")
    token = route.split(":", 1)[1].split("@", 1)[0]
    assert h.core.tokens.decode(token) == Flow("tcp", "127.0.0.2", 5070, "127.0.0.1", 7000,
                                               None, "b")
    assert msg.request_uri == "sip:alice@127.0.0.1:7000"


def test_a_browser_held_by_another_node_is_reached_through_it_over_tcp() -> None:
    """RFC 7118 5.3 with several edge proxies: b holds the browser's WebSocket; a sends the
    INVITE to b over TCP (nodes open no WebSocket to each other) with a token naming the ws
    flow at b, never to the browser's .invalid Contact."""
    h = make()
    h.core.set_peers({"b": ["udp:127.0.0.2:5070", "tcp:127.0.0.2:5070",
                                                     "ws:127.0.0.2:8080"]})
    shared.load_bindings(h.core, [stored(transport="ws", contact_host="k2.invalid")], h.now)
    out = h.feed(request("INVITE", "sip:alice@example.com"), Source("udp", "127.0.0.1", 5080))
    [to_b] = [s for s in out if s.host == "127.0.0.2"]
    assert (to_b.transport, to_b.port) == ("tcp", 5070)
    route = parse_message(to_b.data).get("route")
    assert route is not None and route.endswith("@127.0.0.2:5070;lr;transport=tcp>")
    token = route.split(":", 1)[1].split("@", 1)[0]
    assert h.core.tokens.decode(token) == Flow("ws", "127.0.0.2", 8080, "127.0.0.1", 7000,
                                               None, "b")


def test_an_unknown_node_falls_back_to_the_binding_itself() -> None:
    h = make()
    shared.load_bindings(h.core, [stored(transport="udp", contact_host="127.0.0.1:7000")], h.now)
    h.core.location.apply_save(shared.from_stored(h.core, stored(contact_host="127.0.0.1:7001")))
    out = h.feed(request("INVITE", "sip:alice@example.com"), Source("udp", "127.0.0.1", 5080))
    assert {s.port for s in out if s.host == "127.0.0.1" and s.port != 5080} >= {7000}


def test_load_replaces_the_view_but_keeps_this_process_own_flows() -> None:
    h = make()
    h.feed(register(), Source("udp", "127.0.0.1", 7000))
    mine = h.core.location.lookup("alice@example.com", h.now)[0]
    same = shared.to_stored(h.core, mine)
    other = stored("bob@example.com")
    shared.load_bindings(h.core, [same, other], h.now)
    assert h.core.location.lookup("alice@example.com", h.now)[0] is mine
    assert len(h.core.location.lookup("bob@example.com", h.now)) == 1
    shared.load_bindings(h.core, [other], h.now)
    assert h.core.location.lookup("alice@example.com", h.now) == []


def test_route_changes_of_other_nodes_reach_the_learned_view() -> None:
    h = make()
    r = LearnedRoute("sip:a@x", "sip:a@y", "127.0.0.1:5080", "c", 301, WALL, WALL + 60)
    shared.apply_change(h.core, StoreChange("put_route", "b", route=r), h.now)
    assert h.core.view.learned == {"sip:a@x": ("sip:a@y", h.now + 60)}
    shared.apply_change(h.core, StoreChange("remove_route", "b", old_uri="sip:a@x"), h.now)
    assert h.core.view.learned == {}


def test_flow_tokens_name_the_node_only_when_the_state_is_shared() -> None:
    h = make()
    flow = Flow("tcp", "127.0.0.1", 5060, "192.0.2.9", 40000, 7)
    v1 = h.core.tokens.encode(flow)
    assert h.core.tokens.decode(v1) == flow  # a lone proxy's tokens are unchanged (version 1)
    named = dataclasses.replace(flow, node="edge-2")
    v2 = h.core.tokens.encode(named)
    assert len(v2) > len(v1) and h.core.tokens.decode(v2) == named
    assert h.core._cluster.token_node is None
    h.core.join_cluster("a", True)
    assert h.core._cluster.token_node == "a"


def test_a_token_of_another_node_goes_on_to_that_node() -> None:
    """A Path token edge-b wrote reached edge-a (through DNS): a sends it on to b, Route and
    token unchanged; when b is unknown (gone), its flows are dead: 430."""
    h = make()
    h.core.join_cluster("a", True)
    token = h.core.tokens.encode(Flow("udp", "127.0.0.2", 5070, "192.0.2.9", 40000, None, "b"))
    invite = request("INVITE", "sip:alice@192.0.2.9:40000",
                     extra=(f"Route: <sip:{token}@127.0.0.1:5060;lr>",))
    out = h.feed(invite, Source("udp", "127.0.0.1", 5080))
    # refused before any transaction: 430 once, statelessly (issue 18)
    assert [s.status for s in map(lambda s: parse_message(s.data), out)] == [430]
    h.core.set_peers({"b": ["udp:127.0.0.2:5070"]})
    out = h.feed(invite.replace(b"z9hG4bKcaller1", b"z9hG4bKcaller2"),
                 Source("udp", "127.0.0.1", 5080))
    to_b = [s for s in out if (s.host, s.port) == ("127.0.0.2", 5070)]
    assert len(to_b) == 1
    assert parse_message(to_b[0].data).get("route") == f"<sip:{token}@127.0.0.2:5070;lr>"
