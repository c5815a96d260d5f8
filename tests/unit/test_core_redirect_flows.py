"""Redirect recursion and learned routes (RFC 3261 16.5, 16.7 step 4, 8.1.3.4, 26.1.2) and SIP
Outbound flow retry (RFC 5626 7), in the sans-IO core with a fake clock."""

from __future__ import annotations

from proxy.core.proxy.redirect_guard import RedirectGuard
from proxy.core.types import Source, Target
from proxy.sip import parse_message
from tests.unit.core_harness import Harness, methods, request, response_to, statuses
from tests.unit.test_core_registrar_forking import PHONE1, PHONE2, make, pbx_invite, register

PBX = Source("udp", "127.0.0.1", 5080)
B = Source("udp", "127.0.0.1", 5071)
UP = (Target("udp", "127.0.0.1", 5080, label="sip:127.0.0.1:5080"),)


def redirected(h: Harness, status: int = 301, contact: str = "<sip:moved@127.0.0.1:5071>",
               extra: tuple[str, ...] = (), src: Source = PBX) -> list:
    inv = [s.data for s in h.sent if s.port == src.port and s.data.startswith(b"INVITE")][-1]
    return h.feed(response_to(inv, status, extra=(f"Contact: {contact}", *extra)), src)


def commit_writes(h: Harness) -> list:
    out = []
    for _, ctx in h.take_writes():
        out += h.take(h.core.on_persisted(ctx, True, h.now))
    return out


def test_301_is_followed_and_learned_then_used_for_later_calls() -> None:
    """301: the Contact is tried in the same call, after the learned route is durable; later
    requests for the old Request-URI go straight to the new address."""
    h = Harness.make(upstreams=UP)
    h.feed(request())
    out = redirected(h)
    assert methods(h.to(5080, out)) == ["ACK"]
    assert not h.to(5071, out), "no branch before the learned route is written"
    [(route, _)] = h.writes
    assert (route.old_uri, route.new_uri, route.status) == ("sip:bob@example.com",
                                                           "sip:moved@127.0.0.1:5071", 301)
    assert route.source == "127.0.0.1:5080" and route.call_id == "call-1@caller"
    assert route.expires_at - route.created_at == 86400
    out = commit_writes(h)
    [inv] = h.to(5071, out)
    assert inv.request_uri == "sip:moved@127.0.0.1:5071"
    out = h.feed(response_to(inv.raw, 200, to_tag="b"), B)
    assert statuses(h.to(6000, out)) == [200]
    # The next call for the old Request-URI goes straight to the new address.
    out = h.feed(request(branch="z9hG4bKsecond", call_id="call-2"))
    assert not h.to(5080, out)
    assert [m.request_uri for m in h.to(5071, out)] == ["sip:moved@127.0.0.1:5071"]


def test_learned_route_expires() -> None:
    """A 301 with Contact expires=60 is remembered for 60 s only."""
    h = Harness.make(upstreams=UP)
    h.feed(request())
    redirected(h, contact="<sip:moved@127.0.0.1:5071>;expires=60")
    commit_writes(h)
    h.now += 61
    out = h.feed(request(branch="z9hG4bKlater", call_id="call-3"))
    assert methods(h.to(5080, out)) == ["INVITE"]


def test_302_without_expires_is_followed_not_remembered() -> None:
    """RFC 3261 21.3.3: a 302 is cached only for its expires."""
    h = Harness.make(upstreams=UP)
    h.feed(request())
    out = redirected(h, status=302)
    assert h.writes == []
    assert [m.request_uri for m in h.to(5071, out)] == ["sip:moved@127.0.0.1:5071"]
    out = h.feed(request(branch="z9hG4bKagain", call_id="call-4"))
    assert methods(h.to(5080, out)) == ["INVITE"]


def test_302_with_expires_is_remembered_for_that_long() -> None:
    h = Harness.make(upstreams=UP)
    h.feed(request())
    redirected(h, status=302, extra=("Expires: 30",))
    [(route, _)] = h.writes
    assert route.expires_at - route.created_at == 30


def test_redirect_loop_ends_with_a_final_response() -> None:
    """Each URI at most once per response context (16.5): A -> B -> A ends."""
    h = Harness.make(upstreams=UP)
    h.feed(request())
    redirected(h, status=302, contact="<sip:b@127.0.0.1:5071>")
    out = redirected(h, status=302, contact="<sip:a@127.0.0.1:5080>", src=B)
    out = redirected(h, status=302, contact="<sip:b@127.0.0.1:5071>", src=PBX)
    # B's URI was already tried: nothing usable is left, the 302 goes to the caller.
    assert statuses(h.to(6000, out)) == [302]
    invites = [s for s in h.sent if s.data.startswith(b"INVITE")]
    assert len(invites) == 3


def test_chain_longer_than_max_redirects_is_forwarded() -> None:
    """max_redirects (3 in default.yaml) bounds the 3xx followed per context."""
    h = Harness.make(upstreams=UP)
    h.feed(request())
    hops = [Source("udp", "127.0.0.1", p) for p in (5071, 5072, 5073)]
    src = PBX
    for nxt in hops:
        redirected(h, status=302, contact=f"<sip:x@127.0.0.1:{nxt.port}>", src=src)
        src = nxt
    out = redirected(h, status=302, contact="<sip:x@127.0.0.1:5074>", src=src)
    assert statuses(h.to(6000, out)) == [302]
    assert not [s for s in h.sent if s.port == 5074]


def test_untrusted_source_is_not_followed() -> None:
    """RFC 3261 26.1.2: a 301 from a source outside redirects.trusted_sources is forwarded."""
    h = Harness.make(upstreams=UP)
    h.core.guard = RedirectGuard(["10.0.0.1"], ["127.0.0.1"], [])
    h.feed(request())
    out = redirected(h)
    assert statuses(h.to(6000, out)) == [301]
    assert h.writes == [] and h.core.view.learned == {}


def test_target_not_allowed_is_not_followed() -> None:
    """A Contact outside redirects.allow_targets is refused; no usable contact -> forward."""
    h = Harness.make(upstreams=UP)
    h.core.guard = RedirectGuard(["127.0.0.1"], ["example.com"], [])
    h.feed(request())
    out = redirected(h, contact="<sip:evil@198.51.100.7:5060>")
    assert statuses(h.to(6000, out)) == [301]
    assert h.core.view.learned == {}


def test_uri_headers_are_stripped_and_sips_never_goes_to_sip() -> None:
    """RFC 3261 8.1.3.4 (URI headers), 16.5 (no SIPS -> SIP). A sips: request goes to a TLS
    upstream only (RFC 3261 26.2.2)."""
    h = Harness.make(upstreams=(Target("tls", "127.0.0.1", 5080, label="sips:127.0.0.1:5080"),))
    h.feed(request(ruri="sips:bob@example.com"))
    out = redirected(h, status=302, contact="<sip:plain@127.0.0.1:5071>")
    assert statuses(h.to(6000, out)) == [302]
    h2 = Harness.make(upstreams=UP)
    h2.feed(request())
    out = redirected(h2, status=302, contact="<sip:h@127.0.0.1:5071?Subject=hi>")
    [inv] = h2.to(5071, out)
    assert inv.request_uri == "sip:h@127.0.0.1:5071"


def test_recursed_contacts_are_removed_from_the_forwarded_3xx() -> None:
    """RFC 3261 16.7 step 4: when a 3xx wins after recursion, the contacts already tried are
    not in it."""
    h = Harness.make(upstreams=UP)
    h.core.guard = RedirectGuard(["127.0.0.1"], ["127.0.0.1"], [])
    h.feed(request())
    out = redirected(h, status=302,
                     contact="<sip:b@127.0.0.1:5071>, <sip:other@198.51.100.7>")
    [inv] = h.to(5071, out)
    out = h.feed(response_to(inv.raw, 486, to_tag="b"), B)
    [final] = [m for m in h.to(6000, out) if not m.is_request]
    assert final.status == 302  # the lowest class wins (16.7 step 6) ...
    # ... without the contact already tried; the refused one is left for the caller.
    assert [str(c.uri) for c in final.contacts] == ["sip:other@198.51.100.7"]


def _two_flows(h: Harness) -> None:
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    register(h, PHONE1, f"<sip:bob@127.0.0.1:7001;ob>;{inst};reg-id=1")
    h.now += 1
    register(h, PHONE2, f"<sip:bob@127.0.0.1:7002;ob>;{inst};reg-id=2", call_id="reg-2")


def test_430_retries_the_other_flow_and_removes_the_failed_binding() -> None:
    """RFC 5626 7: 430 Flow Failed -> the same instance over its other flow."""
    h = make()
    _two_flows(h)
    out = pbx_invite(h)
    [inv2] = h.to(7002, out)  # the most recent flow first
    out = h.feed(response_to(inv2.raw, 430, to_tag="x"), PHONE2)
    assert methods(h.to(7001, out)) == ["INVITE"]
    assert 430 not in statuses(h.to(5080, out))
    assert [b.reg_id for b in h.core.location.lookup("bob@example.com", h.now)] == [1]
    out = pbx_invite(h, "z9hG4bKpbxnext")
    assert methods(h.to(7001, out)) == ["INVITE"] and not h.to(7002, out)


def test_transport_error_on_a_flow_retries_the_other_flow() -> None:
    """RFC 5626 7: a transport failure on the flow counts as a failed flow."""
    h = make()
    _two_flows(h)
    out = pbx_invite(h)
    token = [s for s in out if s.port == 7002][0].token
    out = h.core.on_send_failure(token, h.now).sends
    h.sent.extend(out)
    assert methods(h.to(7001, out)) == ["INVITE"]


def test_every_flow_failed_gives_480() -> None:
    """RFC 5626 7: no flow left -> 480 to the caller."""
    h = make()
    _two_flows(h)
    out = pbx_invite(h)
    [inv2] = h.to(7002, out)
    out = h.feed(response_to(inv2.raw, 430, to_tag="x"), PHONE2)
    [inv1] = h.to(7001, out)
    out = h.feed(response_to(inv1.raw, 430, to_tag="y"), PHONE1)
    assert statuses(h.to(5080, out)) == [480]


def test_closed_connection_removes_its_flow_at_once() -> None:
    """RFC 5626 5.3: a flow whose connection closed is dead: the next INVITE takes the other."""
    h = make()
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E129>"'
    tcp_phone = Source("tcp", "127.0.0.1", 7003, conn_id=42)
    register(h, PHONE1, f"<sip:bob@127.0.0.1:7001;ob>;{inst};reg-id=1")
    h.now += 1
    register(h, tcp_phone, f"<sip:bob@127.0.0.1:7003;transport=tcp;ob>;{inst};reg-id=2",
             call_id="reg-tcp")
    h.take(h.core.on_flow_closed(42, h.now))
    out = pbx_invite(h)
    assert methods(h.to(7001, out)) == ["INVITE"] and not h.to(7003, out)
    assert parse_message(out[-1].data).method == "INVITE"


def test_outbound_registration_answer_requires_outbound_with_flow_timer() -> None:
    """RFC 5626 6 and 4.4.1: the 200 to an outbound REGISTER carries Require: outbound and
    Flow-Timer."""
    h = make()
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E130>"'
    assert register(h, PHONE1, f"<sip:bob@127.0.0.1:7001;ob>;{inst};reg-id=1",
                    extra=("Supported: outbound, path",)) == 200
    ok = h.to(7001)[-1]
    assert ok.get("require") == "outbound" and ok.get("flow-timer") == "120"
    assert register(h, PHONE2, "<sip:bob@127.0.0.1:7002>") == 200
    assert h.to(7002)[-1].get("flow-timer") is None


def test_udp_flow_without_keepalives_is_dead_and_skipped() -> None:
    """RFC 5626 4.4.1: a UDP flow silent for twice its Flow-Timer is dead; the instance is
    reached over the flow that kept sending keep-alives, and the dead binding is removed."""
    h = make()
    _two_flows(h)  # flow 2 (port 7002) registered last: normally tried first
    for _ in range(5):  # flow 1 keeps its NAT binding alive, flow 2 falls silent
        h.now += 60
        h.core.on_keepalive(PHONE1, h.now)
    out = pbx_invite(h)
    assert methods(h.to(7001, out)) == ["INVITE"] and not h.to(7002, out)
    assert [b.reg_id for b in h.core.location.lookup("bob@example.com", h.now)] == [1]


def test_udp_flow_with_keepalives_stays_preferred() -> None:
    """The most recent flow stays first while its keep-alives arrive."""
    h = make()
    _two_flows(h)
    for _ in range(5):
        h.now += 60
        h.core.on_keepalive(PHONE2, h.now)
    out = pbx_invite(h)
    assert methods(h.to(7002, out)) == ["INVITE"]
