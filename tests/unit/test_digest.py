"""Digest authentication of the local registrar (RFC 3261 22.4, RFC 2617, RFC 8760), sans-IO.

Every expected response is computed here with hashlib, independently of proxy.core.registrar.digest;
the clock is a number passed in.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from proxy.core.registrar.digest import (
    AuthOutcome,
    Credentials,
    DigestAuth,
    may_register,
    parse_digest,
)
from proxy.sip import SipMessage, parse_message

REALM = "example.com"
SECRET = b"0123456789abcdef-test-secret"
PASSWORD = "s3cret"
T0 = 1000.0
H = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def h(algorithm: str, text: str) -> str:
    return H[algorithm](text.encode()).hexdigest()


def creds(user: str, password: str = PASSWORD, *, md5: bool = True,
          sha256: bool = True) -> Credentials:
    return Credentials(
        user,
        h("MD5", f"{user}:{REALM}:{password}") if md5 else None,
        h("SHA-256", f"{user}:{REALM}:{password}") if sha256 else None,
    )


def make_auth(*, nonce_ttl: float = 300.0, max_tracked_nonces: int = 10000) -> DigestAuth:
    return DigestAuth(REALM, [creds("1000"), creds("1001", "other")], SECRET,
                      nonce_ttl=nonce_ttl, max_tracked_nonces=max_tracked_nonces)


def register(*auth: str, ruri: str = "sip:example.com", user: str = "1000") -> SipMessage:
    lines = [
        f"REGISTER {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKreg1;rport",
        f"From: <sip:{user}@example.com>;tag=f1",
        f"To: <sip:{user}@example.com>",
        "Call-ID: reg-1@192.0.2.10",
        "CSeq: 2 REGISTER",
        f"Contact: <sip:{user}@192.0.2.10:5060>",
        "Max-Forwards: 70",
        "Expires: 600",
        *(f"Authorization: {a}" for a in auth),
        "Content-Length: 0",
    ]
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]+))')


def challenge_params(line: str) -> dict[str, str]:
    name, _, value = line.partition(": ")
    assert name == "WWW-Authenticate" and value.startswith("Digest ")
    return {m[1]: m[2] if m[2] is not None else m[3] for m in _PARAM.finditer(value)}


def nonce_of(auth: DigestAuth, now: float) -> str:
    return challenge_params(auth.challenge(now)[0])["nonce"]


def authorization(nonce: str, *, algorithm: str | None = "MD5", user: str = "1000",
                  password: str = PASSWORD, nc: int = 1, cnonce: str = "0a4f113b",
                  uri: str = "sip:example.com", method: str = "REGISTER",
                  qop: bool = True, realm: str = REALM) -> str:
    """The Authorization value a UA computes (RFC 2617 3.2.2.1)."""
    algo = algorithm or "MD5"
    ha1 = h(algo, f"{user}:{realm}:{password}")
    ha2 = h(algo, f"{method}:{uri}")
    if qop:
        response = h(algo, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        extra = f', qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
    else:
        response = h(algo, f"{ha1}:{nonce}:{ha2}")
        extra = ""
    alg = f", algorithm={algorithm}" if algorithm else ""
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}"{alg}{extra}')


# ---- challenge ------------------------------------------------------------------------------

def test_challenge_lists_sha256_then_md5_with_qop_auth() -> None:
    """RFC 8760 2.4: one challenge per algorithm, the preferred (SHA-256) first; RFC 2617
    3.2.1: realm, nonce, qop="auth"; stale=true only when asked."""
    auth = make_auth()
    lines = auth.challenge(T0)
    assert len(lines) == 2
    pattern = (r'WWW-Authenticate: Digest realm="example\.com", nonce="([0-9a-f]{64})", '
               r'algorithm=(SHA-256|MD5), qop="auth"')
    m1, m2 = (re.fullmatch(pattern, line) for line in lines)
    assert m1 is not None and m2 is not None
    assert (m1[2], m2[2]) == ("SHA-256", "MD5")
    stale = auth.challenge(T0, stale=True)
    assert all(line.endswith(', stale=true') for line in stale)
    assert nonce_of(auth, T0) != nonce_of(auth, T0), "two challenges share a nonce"


def test_challenge_offers_only_algorithms_some_user_has() -> None:
    """A realm provisioned with MD5 HA1s only does not offer SHA-256 (the UA would pick it
    and fail forever)."""
    auth = DigestAuth(REALM, [creds("1000", sha256=False)], SECRET)
    [line] = auth.challenge(T0)
    assert "algorithm=MD5" in line


def test_constructor_refuses_a_short_secret_and_empty_realm() -> None:
    with pytest.raises(ValueError):
        DigestAuth(REALM, [], b"short")
    with pytest.raises(ValueError):
        DigestAuth("", [], SECRET)


# ---- full rounds ----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_challenge_response_round_is_ok(algorithm: str) -> None:
    """RFC 3261 22.4 / RFC 2617 3.2.2: the response to the challenge of that algorithm."""
    auth = make_auth()
    lines = auth.challenge(T0)
    [line] = [x for x in lines if f"algorithm={algorithm}" in x]
    nonce = challenge_params(line)["nonce"]
    msg = register(authorization(nonce, algorithm=algorithm))
    result = auth.check(msg, T0 + 1)
    assert (result.outcome, result.user) == (AuthOutcome.OK, "1000")
    assert result.ok


def test_missing_algorithm_means_md5() -> None:
    """RFC 2617 3.2.1: algorithm absent -> MD5."""
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0), algorithm=None))
    assert auth.check(msg, T0).outcome is AuthOutcome.OK


def test_no_authorization_is_challenged() -> None:
    result = make_auth().check(register(), T0)
    assert result.outcome is AuthOutcome.CHALLENGE and result.user is None


def test_wrong_password_is_forbidden() -> None:
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0), password="guess"))
    result = auth.check(msg, T0)
    assert (result.outcome, result.reason) == (AuthOutcome.FORBIDDEN, "wrong password")


def test_unknown_user_is_forbidden() -> None:
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0), user="9999"), user="9999")
    result = auth.check(msg, T0)
    assert (result.outcome, result.reason) == (AuthOutcome.FORBIDDEN, "unknown user")


def test_other_users_password_is_forbidden() -> None:
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0), user="1001", password=PASSWORD))
    assert auth.check(msg, T0).outcome is AuthOutcome.FORBIDDEN


def test_user_without_ha1_of_that_algorithm_is_challenged() -> None:
    auth = DigestAuth(REALM, [creds("1000", sha256=False), creds("1001")], SECRET)
    msg = register(authorization(nonce_of(auth, T0), algorithm="SHA-256"))
    assert auth.check(msg, T0).outcome is AuthOutcome.CHALLENGE


def test_response_for_another_method_is_forbidden() -> None:
    """HA2 covers the method (RFC 2617 3.2.2.3): an INVITE's digest does not register."""
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0), method="INVITE"))
    assert auth.check(msg, T0).outcome is AuthOutcome.FORBIDDEN


def test_digest_uri_must_name_the_request_uri() -> None:
    """RFC 2617 3.2.2.5: the digest-uri names the Request-URI (loosely: same host and user)."""
    auth = make_auth()
    nonce = nonce_of(auth, T0)
    other = register(authorization(nonce, uri="sip:evil.example.org"))
    assert auth.check(other, T0).outcome is AuthOutcome.CHALLENGE
    port = register(authorization(nonce, uri="sip:example.com:5060"))
    assert auth.check(port, T0).outcome is AuthOutcome.OK


# ---- replay and nonce lifetime ------------------------------------------------------------

def test_replayed_nonce_count_is_not_ok() -> None:
    """RFC 2617 3.2.2: nc must grow for each request with the same nonce."""
    auth = make_auth()
    nonce = nonce_of(auth, T0)
    first = register(authorization(nonce, nc=1))
    assert auth.check(first, T0).outcome is AuthOutcome.OK
    again = auth.check(first, T0 + 1)
    assert (again.outcome, again.reason) == (AuthOutcome.CHALLENGE, "nonce count replayed")
    assert auth.check(register(authorization(nonce, nc=2, cnonce="x")), T0 + 2).ok
    older = auth.check(register(authorization(nonce, nc=1, cnonce="y")), T0 + 3)
    assert older.outcome is not AuthOutcome.OK


def test_nonce_without_qop_is_good_once() -> None:
    """RFC 2069 style (no qop): no nonce count, so a nonce authenticates one request."""
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0), qop=False))
    assert auth.check(msg, T0).outcome is AuthOutcome.OK
    assert auth.check(msg, T0 + 1).outcome is AuthOutcome.CHALLENGE


def test_nonce_older_than_ttl_is_stale() -> None:
    """RFC 7616 3.3: a digest with an expired nonce -> stale=true re-challenge; the user is
    not named (the response was not checked, issue 18)."""
    auth = make_auth(nonce_ttl=300.0)
    nonce = nonce_of(auth, T0)
    assert auth.check(register(authorization(nonce, nc=1)), T0 + 299).ok
    result = auth.check(register(authorization(nonce, nc=2)), T0 + 301)
    assert (result.outcome, result.user) == (AuthOutcome.STALE, None)


def test_expired_nonce_never_tells_a_right_password_from_a_wrong_one() -> None:
    """Issue 18 / RFC 7616 3.3: an expired nonce is answered stale whatever the response: the
    right password and a wrong one get the same verdict (outcome, user, reason), nothing is
    counted as a failure, and the nonce's replay state is not touched."""
    auth = make_auth(nonce_ttl=300.0)
    nonce = nonce_of(auth, T0)
    right = auth.check(register(authorization(nonce)), T0 + 301, "192.0.2.10")
    wrong = auth.check(register(authorization(nonce, password="guess")), T0 + 301,
                       "192.0.2.10")
    assert right == wrong
    assert (right.outcome, right.user, right.reason) == (AuthOutcome.STALE, None,
                                                         "nonce expired")
    assert len(auth.failures) == 0 and auth.tracked_nonces() == 0


def test_nonce_from_after_a_clock_reset_is_stale() -> None:
    auth = make_auth()
    msg = register(authorization(nonce_of(auth, T0)))
    assert auth.check(msg, T0 - 100).outcome is AuthOutcome.STALE


@pytest.mark.parametrize("forge", ["flip_mac", "other_secret", "other_realm", "short", "junk"])
def test_forged_nonce_is_challenged(forge: str) -> None:
    auth = make_auth()
    nonce = nonce_of(auth, T0)
    if forge == "flip_mac":
        nonce = nonce[:-1] + ("0" if nonce[-1] != "0" else "1")
    elif forge == "other_secret":
        nonce = nonce_of(DigestAuth(REALM, [], b"another secret of 32 bytes......"), T0)
    elif forge == "other_realm":
        nonce = nonce_of(DigestAuth("other.example", [], SECRET), T0)
    elif forge == "short":
        nonce = nonce[:40]
    else:
        nonce = "zz" + nonce[2:]
    result = auth.check(register(authorization(nonce)), T0)
    assert result.outcome is AuthOutcome.CHALLENGE


def test_replay_table_is_bounded_and_an_evicted_nonce_is_stale() -> None:
    """The nc table holds at most max_tracked_nonces; a nonce dropped from it while still
    valid cannot be checked for replay any more, so it is answered stale (never OK)."""
    auth = make_auth(max_tracked_nonces=2)
    nonces = [nonce_of(auth, T0 + i) for i in range(3)]
    for n in nonces:
        assert auth.check(register(authorization(n, nc=1)), T0 + 5).ok
    assert auth.tracked_nonces() == 2
    replay = auth.check(register(authorization(nonces[0], nc=1)), T0 + 6)
    assert replay.outcome is AuthOutcome.STALE
    assert auth.check(register(authorization(nonces[2], nc=2)), T0 + 6).ok


def test_expired_nonces_leave_the_replay_table() -> None:
    auth = make_auth(nonce_ttl=60.0)
    for i in range(5):
        assert auth.check(register(authorization(nonce_of(auth, T0 + i))), T0 + i).ok
    assert auth.tracked_nonces() == 5
    assert auth.check(register(authorization(nonce_of(auth, T0 + 500))), T0 + 500).ok
    assert auth.tracked_nonces() == 1


# ---- parsing --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    'Digest username="1000", realm="example.com", nonce="abc',  # unterminated quote
    "Digest",
    "Digest ",
    "garbage",
    "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
    "Digest ,,,",
    'Digest username=, realm="example.com"',
    'Digest username="1000" realm="example.com"',  # no comma
    'Digest username="1000", username="1001", realm="example.com"',
    "Digest realm=example.com, nonce=\"\\",
    'Digest =x, realm="example.com"',
    'Digest username="1000", realm="example.com", nonce="x", uri="sip:example.com", '
    'response="0", qop=auth, nc=zz, cnonce="c"',
    'Digest username="1000", realm="example.com", nonce="x", uri="sip:example.com", '
    'response="0", qop=auth',
    'Digest username="1000", realm="example.com", nonce="x", uri="sip:example.com", '
    'response="0", algorithm=MD5-sess',
    'Digest username="1000", realm="example.com", nonce="x", uri="sip:example.com", '
    'response="0", qop=auth-int, nc=00000001, cnonce="c"',
    'Digest username="1000", realm="example.com"',  # no nonce, uri, response
    'Digest username="1000", realm="example.com", nonce="x", uri="::", response="é"',
    "Digest " + "a=b, " * 100 + 'realm="example.com"',
])
def test_malformed_authorization_is_challenged_without_exception(value: str) -> None:
    result = make_auth().check(register(value), T0)
    assert result.outcome is AuthOutcome.CHALLENGE


def test_quoted_strings_with_commas_and_escaped_quotes() -> None:
    """RFC 3261 25.1 quoted-string: commas inside quotes, quoted-pair for '"' and '\\';
    parameter names are case-insensitive (RFC 2617 1.2)."""
    user = 'al,ice"\\x'
    auth = DigestAuth(REALM, [creds(user)], SECRET)
    nonce = nonce_of(auth, T0)
    value = authorization(nonce, user=user).replace(
        f'username="{user}"', 'USERNAME="al,ice\\"\\\\x"').replace("realm=", "Realm=")
    parsed = parse_digest(value)
    assert parsed is not None and parsed["username"] == user
    result = auth.check(register(value), T0)
    assert (result.outcome, result.user) == (AuthOutcome.OK, user)


def test_duplicate_parameter_is_malformed() -> None:
    """A parameter given twice is ambiguous (RFC 7616 3.4: each at most once): challenged,
    even when the credentials are otherwise right."""
    auth = make_auth()
    value = authorization(nonce_of(auth, T0))
    assert auth.check(register(value), T0).ok
    dup = authorization(nonce_of(auth, T0)) + ', username="1001"'
    assert auth.check(register(dup), T0).outcome is AuthOutcome.CHALLENGE


def test_utf8_user_name() -> None:
    """RFC 3261 25.1: a quoted-string may hold UTF-8; the user name is matched as text."""
    user = "jösé"
    auth = DigestAuth(REALM, [creds(user)], SECRET)
    msg = register(authorization(nonce_of(auth, T0), user=user))
    result = auth.check(msg, T0)
    assert (result.outcome, result.user) == (AuthOutcome.OK, user)


def test_qop_other_than_auth_is_challenged() -> None:
    """Only qop="auth" is offered; auth-int (RFC 2617 3.2.2.4, a body hash) is not accepted
    even with a response computed the auth way."""
    auth = make_auth()
    nonce = nonce_of(auth, T0)
    ha1, ha2 = h("MD5", f"1000:{REALM}:{PASSWORD}"), h("MD5", "REGISTER:sip:example.com")
    response = h("MD5", f"{ha1}:{nonce}:00000001:c:auth-int:{ha2}")
    value = (f'Digest username="1000", realm="{REALM}", nonce="{nonce}", '
             f'uri="sip:example.com", response="{response}", qop=auth-int, nc=00000001, '
             f'cnonce="c"')
    assert auth.check(register(value), T0).outcome is AuthOutcome.CHALLENGE


def test_authorization_for_our_realm_is_picked_among_several() -> None:
    auth = make_auth()
    nonce = nonce_of(auth, T0)
    other = authorization(nonce, realm="other.example")
    msg = register("Digest garbage", other, authorization(nonce))
    assert auth.check(msg, T0).outcome is AuthOutcome.OK
    only_other = register(other)
    assert auth.check(only_other, T0).outcome is AuthOutcome.CHALLENGE


def test_parse_digest_values() -> None:
    assert parse_digest('digest a=1 , B="x, \\"y\\"",c=z') == {"a": "1", "b": 'x, "y"', "c": "z"}
    assert parse_digest("Digest") == {}
    assert parse_digest('Digest a="1') is None
    assert parse_digest("Basic a=1") is None


# ---- may_register --------------------------------------------------------------------------

@pytest.mark.parametrize(("user", "aor", "ok"), [
    ("1000", "sip:1000@example.com", True),
    ("1000", "1000@example.com", True),
    ("1000", "sips:1000@example.com", True),
    ("1000", "<sip:1000@example.com>", True),
    ("1000", "sip:%31000@example.com", True),  # RFC 3261 19.1.4: escapes are equal
    ("1000", "sip:1000:pw@example.com", True),
    ("1000", "sip:1001@example.com", False),
    ("1000", "sip:10000@example.com", False),
    ("1000", "sip:example.com", False),
    ("1000", "example.com", False),
    ("", "sip:@example.com", False),
])
def test_may_register_only_own_aor(user: str, aor: str, ok: bool) -> None:
    assert may_register(user, aor) is ok
