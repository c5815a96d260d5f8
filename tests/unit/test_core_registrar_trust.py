"""Registrations have owners (issue 18), sans-IO with a fake clock: who may change which
bindings of the local registrar, the caps on what the location service holds, refusals
counted by reason, and Path toward an upstream registrar (RFC 3327, issue 19).

* RFC 3261 10.3 steps 2-3: the registrar authenticates the UA and decides whether it may
  change the bindings of the To address-of-record: an authenticated user registers only AORs
  whose user part is its name, in a domain of ``domains`` (or the realm);
* a stranger on a private address with ``auth`` set (``registrar_networks`` () as the loader
  makes it) cannot add to or wipe bob's bindings;
* ``registrar_max_contacts`` per AOR and per authenticated user over all its AORs,
  ``registrar_max_bindings`` in total: past a cap 403 and nothing changes;
* a guesser on another address cannot lock out bob's registered phone.

Digest responses are computed with hashlib (tests/unit/test_digest.py's helpers).
"""

from __future__ import annotations

import re

from proxy.core.access.sources import AddressSet
from proxy.core.registrar.auth_failures import MAX_FAILURES
from proxy.core.registrar.digest import DigestAuth
from proxy.core.types import Source
from proxy.sip import SipMessage
from tests.unit.core_harness import UP1, Harness, request, response_to
from tests.unit.test_digest import REALM, SECRET, authorization, creds

BOB_PHONE = Source("udp", "192.168.1.20", 5060)
STRANGER = Source("udp", "192.168.1.66", 5060)  # a private address, as in issue 18 item 9
ALICE_PHONE = Source("udp", "192.168.1.30", 5060)
PASSWORDS = {"bob": "bobs-password", "alice": "alices-password"}


def make(*, domains: tuple[str, ...] = (), networks: tuple[str, ...] = (), **kw: object) -> Harness:
    auth = DigestAuth(REALM, [creds(u, p) for u, p in PASSWORDS.items()], SECRET)
    return Harness.make(registrar_local=True, domains=frozenset(domains), auth=auth,
                        registrar_networks=AddressSet(networks), **kw)


class Phone:
    """A UA at ``src`` registering ``aor_user@domain`` (RFC 3261 10.2), answering 401s with
    the credentials of ``user``/``password`` when given."""

    def __init__(self, h: Harness, src: Source, aor_user: str, domain: str = REALM) -> None:
        self.h, self.src, self.aor = h, src, f"sip:{aor_user}@{domain}"
        self.call_id = f"reg-{aor_user}-{domain}-{src.host}"
        self.cseq = 0
        self.nc = 0

    def send(self, contacts: tuple[str, ...] | None = None, *, expires: int = 3600,
             authorization_value: str | None = None) -> SipMessage:
        self.cseq += 1
        src = self.src
        if contacts is None:
            contacts = (f"<sip:{self.aor[4:].split('@')[0]}@{src.host}:{src.port}>",)
        extra = [f"Contact: {c}" for c in contacts]
        extra.append(f"Expires: {expires}")
        if authorization_value is not None:
            extra.append(f"Authorization: {authorization_value}")
        data = request("REGISTER", ruri=f"sip:{REALM}", branch=f"z9hG4bK{self.call_id}{self.cseq}",
                       call_id=self.call_id, cseq=self.cseq, via_host=f"{src.host}:{src.port}",
                       extra=tuple(extra))
        data = data.replace(b"Contact: <sip:alice@127.0.0.1:6000>\r\n", b"")
        data = re.sub(rb"(From|To): <sip:[^>]*>", lambda m: m.group(1) + b": <"
                      + self.aor.encode() + b">", data)
        finals = [m for m in self.h.to(src.port, self.h.feed(data, src))
                  if (m.status or 0) >= 200]
        assert len(finals) == 1, finals
        return finals[0]

    def register(self, contacts: tuple[str, ...] | None = None, *, user: str | None = None,
                 password: str | None = None, expires: int = 3600) -> SipMessage:
        """REGISTER; on a 401, again with digest credentials (MD5) for the challenge."""
        first = self.send(contacts, expires=expires)
        if first.status != 401 or user is None:
            return first
        nonce = re.search(r'nonce="([0-9a-f]+)"', first.get_all("www-authenticate")[0])
        assert nonce is not None
        self.nc += 1
        value = authorization(nonce.group(1), user=user, password=password or PASSWORDS[user],
                              uri=f"sip:{REALM}")
        return self.send(contacts, expires=expires, authorization_value=value)


def bindings(h: Harness, aor: str) -> list[str]:
    return sorted(b.uri for b in h.core.location.lookup(aor, h.now))


# ---- owners -------------------------------------------------------------------------------

def test_a_stranger_on_a_private_address_cannot_add_to_or_wipe_bobs_bindings() -> None:
    """Issue 18 item 9, with auth set (registrar_networks empty): the stranger's REGISTER for
    bob, adding its contact or ``Contact: *`` with Expires: 0, is challenged (401) without
    credentials and refused (403) with alice's; bob's binding is untouched throughout."""
    h = make()
    assert Phone(h, BOB_PHONE, "bob").register(user="bob").status == 200
    before = bindings(h, "bob@example.com")
    assert before == ["sip:bob@192.168.1.20:5060"]
    stranger = Phone(h, STRANGER, "bob")
    assert stranger.register().status == 401
    assert stranger.register(("*",), expires=0).status == 401
    assert stranger.register(user="alice").status == 403
    assert stranger.register(("*",), expires=0, user="alice").status == 403
    assert bindings(h, "bob@example.com") == before
    assert h.core.refusals.counts["registrar_owner"] == 2


def test_users_register_only_in_their_domains() -> None:
    """``domains`` empty: only the realm; listed: only those (the realm itself is then 404,
    Domain Not Served, as before); the AOR's user part written as the user's name."""
    h = make()
    assert Phone(h, ALICE_PHONE, "alice").register(user="alice").status == 200
    other = Phone(h, ALICE_PHONE, "alice", "other.example.net").register(user="alice")
    assert other.status == 403
    escaped = Phone(h, ALICE_PHONE, "%61lice").register(user="alice")
    assert escaped.status == 403, "an escaped spelling would be a second AOR of alice"
    h2 = make(domains=("a.example.net", "b.example.net"))
    assert Phone(h2, ALICE_PHONE, "alice", "a.example.net").register(user="alice").status == 200
    assert Phone(h2, ALICE_PHONE, "alice", REALM).register(user="alice").status == 404


def test_one_user_cannot_fill_memory_with_aors_of_other_domains() -> None:
    """Issue 18 item 7: 200 REGISTERs by alice for alice@dN.example.net made 200 bindings;
    now each is 403 and the location holds nothing."""
    h = make()
    statuses = {Phone(h, ALICE_PHONE, "alice", f"d{n}.example.net").register(
        user="alice").status for n in range(200)}
    assert statuses == {403}
    assert h.core.location.count() == 0


def test_registrar_networks_still_register_any_user() -> None:
    """A source in registrar_networks (set explicitly) needs no credentials and may register
    any AOR in any domain (the operator's choice); without auth that is the default."""
    h = make(networks=("192.168.1.0/24",))
    assert Phone(h, STRANGER, "bob").register().status == 200
    assert bindings(h, "bob@example.com") == ["sip:bob@192.168.1.66:5060"]


# ---- caps ---------------------------------------------------------------------------------

def test_per_user_cap_over_all_its_aors() -> None:
    """registrar_max_contacts: 2 per AOR and per user: alice holds 2 bindings at a.example.net,
    so a third at b.example.net gets 403 and binds nothing; once one goes, it is accepted."""
    h = make(domains=("a.example.net", "b.example.net"), registrar_max_contacts=2)
    a = Phone(h, ALICE_PHONE, "alice", "a.example.net")
    assert a.register(("<sip:alice@192.168.1.30:5060>", "<sip:alice@192.168.1.31:5060>"),
                      user="alice").status == 200
    b = Phone(h, ALICE_PHONE, "alice", "b.example.net")
    refused = b.register(("<sip:alice@192.168.1.32:5060>",), user="alice")
    assert (refused.status, refused.reason) == (403, "Too Many Bindings")
    assert bindings(h, "alice@b.example.net") == []
    assert a.register(("<sip:alice@192.168.1.31:5060>",), expires=0, user="alice").status == 200
    assert b.register(("<sip:alice@192.168.1.32:5060>",), user="alice").status == 200
    assert h.core.refusals.counts["registrar_limit"] == 1


def test_total_cap_registrar_max_bindings() -> None:
    """registrar_max_bindings: 3 (from registrar_networks, no credentials): a fourth AOR gets
    403 and changes nothing; a refresh of a bound contact is still accepted (it adds none);
    after the bindings expire there is room again."""
    h = make(networks=("192.168.0.0/16",), registrar_max_bindings=3)
    for n in range(3):
        assert Phone(h, STRANGER, f"u{n}").register(expires=60).status == 200
    refused = Phone(h, STRANGER, "u3").register(expires=60)
    assert (refused.status, refused.reason) == (403, "Too Many Bindings")
    assert h.core.location.count() == 3 and bindings(h, "u3@example.com") == []
    refresh = Phone(h, STRANGER, "u0")
    refresh.cseq = 5
    assert refresh.register(expires=60).status == 200
    h.advance(61)
    assert Phone(h, STRANGER, "u3").register(expires=60).status == 200


# ---- guessing -----------------------------------------------------------------------------

def test_a_guesser_cannot_lock_out_a_registered_phone() -> None:
    """After 10 wrong passwords for bob from 10 addresses, bob is blocked: a new address with
    the right password gets 403 without a challenge; bob's phone (it holds a binding of bob
    from its address) refreshes with 200. Refusals are counted by reason."""
    h = make()
    phone = Phone(h, BOB_PHONE, "bob")
    assert phone.register(user="bob").status == 200
    for i in range(MAX_FAILURES):
        guesser = Phone(h, Source("udp", f"203.0.113.{i}", 5060), "bob")
        assert guesser.register(user="bob", password="guess").status == 403
    newcomer = Phone(h, Source("udp", "203.0.113.200", 5060), "bob")
    blocked = newcomer.register(user="bob")
    assert blocked.status == 403 and blocked.get("www-authenticate") is None
    assert phone.register(user="bob").status == 200
    assert h.core.refusals.counts["auth_failed"] == MAX_FAILURES
    assert h.core.refusals.counts["auth_blocked"] == 1


def test_a_blocked_source_gets_403_without_challenge() -> None:
    h = make()
    guesser = Phone(h, STRANGER, "alice")
    for _ in range(MAX_FAILURES):
        assert guesser.register(user="alice", password="guess").status == 403
    plain = guesser.send()
    assert plain.status == 403 and plain.get("www-authenticate") is None


# ---- Path toward an upstream registrar (RFC 3327, issue 19) -------------------------------

def upstream_register(h: Harness, supported: bool) -> SipMessage:
    extra = ("Expires: 600",) + (("Supported: path",) if supported else ())
    data = request("REGISTER", ruri="sip:example.com", branch="z9hG4bKpathreg",
                   call_id="path-1", via_host="192.168.1.20:5060", extra=extra)
    [reg] = [m for m in h.to(UP1.port, h.feed(data, BOB_PHONE)) if m.is_request]
    return reg


def test_path_always_by_default_even_without_supported_path() -> None:
    """``path: always`` (default): a plain REGISTER (no Supported: path, as baresip sends it)
    reaches the upstream registrar with one Path naming the proxy (RFC 3327 4, 5.2)."""
    h = Harness.make()
    reg = upstream_register(h, supported=False)
    [path] = reg.get_all("path")
    assert path.startswith("<sip:") and path.endswith(";lr>") and "127.0.0.1:5060" in path


def test_path_when_supported_follows_the_ua() -> None:
    """``path: when_supported``: Path only with Supported: path (RFC 3327's strict reading)."""
    h = Harness.make(path_always=False)
    assert upstream_register(h, supported=False).get_all("path") == []
    h2 = Harness.make(path_always=False)
    assert len(upstream_register(h2, supported=True).get_all("path")) == 1


def test_bindings_learned_from_an_upstream_2xx_are_capped() -> None:
    """registrar: upstream, registrar_max_bindings 1: the second phone's binding from the
    registrar's 200 is not kept (counted), the first stays."""
    h = Harness.make(registrar_max_bindings=1)
    for n, src in enumerate((BOB_PHONE, ALICE_PHONE)):
        contact = f"<sip:u{n}@{src.host}:{src.port}>"
        data = request("REGISTER", ruri="sip:example.com", branch=f"z9hG4bKup{n}",
                       call_id=f"up-{n}", via_host=f"{src.host}:{src.port}",
                       extra=("Expires: 600",)).replace(
            b"<sip:alice@127.0.0.1:6000>", contact.encode()).replace(
            b"To: <sip:bob@example.com>", f"To: <sip:u{n}@example.com>".encode())
        [reg] = [m for m in h.to(UP1.port, h.feed(data, src)) if m.is_request]
        ok = response_to(reg.raw, 200, extra=(f"Contact: {contact};expires=600",))
        [answer] = h.to(src.port, h.feed(ok, Source("udp", UP1.host, UP1.port)))
        assert answer.status == 200
    assert h.core.location.count() == 1
    assert bindings(h, "u0@example.com") == ["sip:u0@192.168.1.20:5060"]
    assert h.core.refusals.counts["registrar_limit"] == 1
