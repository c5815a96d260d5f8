"""The core's side of durable and shared state (sans-IO): the location journal, bindings to
and from the store, other nodes' changes, and requests for a flow another node holds."""

from __future__ import annotations

import dataclasses

from proxy.core import shared
from proxy.core.flowtoken import Flow
from proxy.core.registrar import Binding, BindingDelete, BindingWrite, MemoryLocation
from proxy.core.types import Source
from proxy.sip import parse_message
from proxy.store.base import LearnedRoute, StoreChange, StoredBinding
from tests.unit.core_harness import Harness, request

WALL = 1_800_000_000.0  # wall clock of the store at core time 1000 (Harness.now)
DOMAIN = frozenset({"example.com"})


def make() -> Harness:
    h = Harness.make(registrar_local=True, domains=DOMAIN)
    h.core.wall_offset = WALL - h.now
    h.core.cluster.node = "a"
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
    h = make()
    loc = h.core.location
    assert isinstance(loc, MemoryLocation)
    h.feed(register())
    assert loc.take_changes() == []  # None: recording is off by default
    loc.journal = []
    h.feed(register(contact="<sip:alice@127.0.0.1:7001>", cseq=2))
    changes = loc.take_changes()
    assert [type(c) for c in changes] == [BindingWrite]
    assert isinstance(changes[0], BindingWrite)
    assert changes[0].binding.uri == "sip:alice@127.0.0.1:7001"
    h.feed(register(contact="*", expires=0, cseq=3))
    assert loc.take_changes() == [BindingDelete("alice@example.com", None)]
    assert loc.take_changes() == []


def test_applied_changes_are_not_recorded() -> None:
    h = make()
    loc = h.core.location
    assert isinstance(loc, MemoryLocation)
    loc.journal = []
    shared.apply_change(h.core, StoreChange("put_binding", "b", binding=stored()), h.now)
    assert len(loc.lookup("alice@example.com", h.now)) == 1
    shared.apply_change(h.core, StoreChange("remove_bindings", "b", aor="alice@example.com"),
                        h.now)
    assert loc.lookup("alice@example.com", h.now) == []
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
    tcp = shared.from_stored(h.core, stored(transport="tcp"))
    mine = shared.from_stored(h.core, stored(node="a", contact_host="192.168.1.10:5060"))
    assert [shared.held_elsewhere(b) for b in (direct, nat, tcp, mine)] == [
        False, True, True, False]


def test_a_binding_held_by_another_node_is_reached_through_it() -> None:
    h = make()
    h.core.cluster.peers = shared.parse_peers({"b": ["udp:127.0.0.2:5070",
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
    h.core.cluster.peers = shared.parse_peers({"b": ["udp:127.0.0.2:5070", "tcp:127.0.0.2:5070",
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
    assert h.core.learned == {"sip:a@x": ("sip:a@y", h.now + 60)}
    shared.apply_change(h.core, StoreChange("remove_route", "b", old_uri="sip:a@x"), h.now)
    assert h.core.learned == {}


def test_flow_tokens_name_the_node_only_when_the_state_is_shared() -> None:
    h = make()
    flow = Flow("tcp", "127.0.0.1", 5060, "192.0.2.9", 40000, 7)
    v1 = h.core.tokens.encode(flow)
    assert h.core.tokens.decode(v1) == flow  # a lone proxy's tokens are unchanged (version 1)
    named = dataclasses.replace(flow, node="edge-2")
    v2 = h.core.tokens.encode(named)
    assert len(v2) > len(v1) and h.core.tokens.decode(v2) == named
    assert h.core.cluster.token_node is None
    h.core.cluster.shared = True
    assert h.core.cluster.token_node == "a"


def test_a_token_of_another_node_goes_on_to_that_node() -> None:
    """A Path token edge-b wrote reached edge-a (through DNS): a sends it on to b, Route and
    token unchanged; when b is unknown (gone), its flows are dead: 430."""
    h = make()
    h.core.cluster.shared = True
    token = h.core.tokens.encode(Flow("udp", "127.0.0.2", 5070, "192.0.2.9", 40000, None, "b"))
    invite = request("INVITE", "sip:alice@192.0.2.9:40000",
                     extra=(f"Route: <sip:{token}@127.0.0.1:5060;lr>",))
    out = h.feed(invite, Source("udp", "127.0.0.1", 5080))
    assert [s.status for s in map(lambda s: parse_message(s.data), out)] == [100, 430]
    h.core.cluster.peers = shared.parse_peers({"b": ["udp:127.0.0.2:5070"]})
    out = h.feed(invite.replace(b"z9hG4bKcaller1", b"z9hG4bKcaller2"),
                 Source("udp", "127.0.0.1", 5080))
    to_b = [s for s in out if (s.host, s.port) == ("127.0.0.2", 5070)]
    assert len(to_b) == 1
    assert parse_message(to_b[0].data).get("route") == f"<sip:{token}@127.0.0.2:5070;lr>"
