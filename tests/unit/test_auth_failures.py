"""Password guessing against the local registrar's digest authentication (issue 18), sans-IO
with a fake clock: failed authentications limited per source and per user, nothing checked
for a blocked source or user, bounded memory, and ``auth.algorithms`` (RFC 8760).

Every expected digest response is computed here with hashlib (tests/unit/test_digest.py's
helpers), independently of proxy.core.registrar.digest.
"""

from __future__ import annotations

import pytest

from proxy.core.registrar.auth_failures import (
    BLOCK,
    MAX_FAILURES,
    WINDOW,
    FailureLimiter,
    source_key,
)
from proxy.core.registrar.digest import AuthOutcome, DigestAuth, check_algorithms
from tests.unit.test_digest import REALM, SECRET, T0, authorization, creds, nonce_of, register

GUESSER = "198.51.100.7"
PHONE = "192.0.2.10"


def make_auth(**kw: object) -> DigestAuth:
    return DigestAuth(REALM, [creds("1000"), creds("1001", "other")], SECRET, **kw)  # type: ignore[arg-type]


def guess(auth: DigestAuth, now: float, source: str = GUESSER, user: str = "1000",
          password: str = "guess", nc: int = 1) -> AuthOutcome:
    msg = register(authorization(nonce_of(auth, now), user=user, password=password, nc=nc),
                   user=user)
    return auth.check(msg, now, source).outcome


def right(auth: DigestAuth, now: float, source: str = PHONE, user: str = "1000") -> AuthOutcome:
    password = "s3cret" if user == "1000" else "other"
    return guess(auth, now, source, user, password)


# ---- per source --------------------------------------------------------------------------

def test_ten_failures_a_minute_then_403_without_checking() -> None:
    """The first MAX_FAILURES (10) wrong passwords from one source are checked (FORBIDDEN);
    after them the source is BLOCKED: even the right password gets BLOCKED, and a REGISTER
    without credentials gets BLOCKED instead of a challenge."""
    auth = make_auth()
    assert MAX_FAILURES == 10
    for i in range(MAX_FAILURES):
        assert guess(auth, T0 + i) is AuthOutcome.FORBIDDEN, i
    assert guess(auth, T0 + 10) is AuthOutcome.BLOCKED
    assert right(auth, T0 + 10, source=GUESSER) is AuthOutcome.BLOCKED
    assert auth.check(register(), T0 + 10, GUESSER).outcome is AuthOutcome.BLOCKED
    # another source is not concerned (user 1001 has no failures)
    assert right(auth, T0 + 10, user="1001") is AuthOutcome.OK


def test_the_block_lasts_while_the_guesser_keeps_trying() -> None:
    """A blocked source's attempts with credentials extend the block (BLOCK seconds from the
    last one); once it stops for BLOCK seconds, its requests are checked again."""
    auth = make_auth()
    for i in range(MAX_FAILURES):
        guess(auth, T0 + i)
    t = T0 + MAX_FAILURES
    for _ in range(5):  # one guess every 50 s, each within BLOCK of the previous
        t += BLOCK - 10
        assert guess(auth, t) is AuthOutcome.BLOCKED
    t += BLOCK + 1
    assert right(auth, t, source=GUESSER) is AuthOutcome.OK


def test_a_challenge_request_does_not_extend_the_block() -> None:
    """A REGISTER without credentials from a blocked source is refused but does not extend the
    block (a phone behind the same NAT retrying does not keep it locked)."""
    auth = make_auth()
    for _ in range(MAX_FAILURES):
        guess(auth, T0)
    assert auth.check(register(), T0 + BLOCK - 1, GUESSER).outcome is AuthOutcome.BLOCKED
    assert auth.check(register(), T0 + BLOCK + 1, GUESSER).outcome is AuthOutcome.CHALLENGE


def test_failures_spread_over_more_than_the_window_do_not_block() -> None:
    """9 failures a minute, for 10 minutes: never blocked (the count restarts each window)."""
    auth = make_auth()
    t = T0
    for _ in range(10):
        for _ in range(MAX_FAILURES - 1):
            assert guess(auth, t) is AuthOutcome.FORBIDDEN
        t += WINDOW
    assert right(auth, t, source=GUESSER) is AuthOutcome.OK


def test_unknown_users_count_against_the_source() -> None:
    auth = make_auth()
    for i in range(MAX_FAILURES):
        assert guess(auth, T0 + i, user=f"x{i}") is AuthOutcome.FORBIDDEN
    assert guess(auth, T0 + 11, user="1001") is AuthOutcome.BLOCKED


def test_ipv6_sources_count_per_64() -> None:
    """Addresses of one /64 share a budget: a host cannot rotate through its own /64."""
    auth = make_auth()
    for i in range(MAX_FAILURES):
        assert guess(auth, T0, source=f"2001:db8:1:2::{i + 1:x}") is AuthOutcome.FORBIDDEN
    assert guess(auth, T0 + 1, source="2001:db8:1:2:ffff::9") is AuthOutcome.BLOCKED
    assert right(auth, T0 + 1, source="2001:db8:1:3::1", user="1001") is AuthOutcome.OK
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("192.0.2.1") == "192.0.2.1"


# ---- per user -------------------------------------------------------------------------------

def test_guessing_one_user_from_many_sources_blocks_that_user() -> None:
    """10 wrong passwords for 1000 from 10 addresses (one each): the eleventh address gets
    BLOCKED for 1000, even with the right password, and the response is not checked; user
    1001 is not concerned."""
    auth = make_auth()
    for i in range(MAX_FAILURES):
        assert guess(auth, T0, source=f"203.0.113.{i}") is AuthOutcome.FORBIDDEN
    assert right(auth, T0 + 1, source="203.0.113.200") is AuthOutcome.BLOCKED
    assert right(auth, T0 + 1, source="203.0.113.200", user="1001") is AuthOutcome.OK


def test_the_users_own_phone_is_exempt_from_the_user_block() -> None:
    """``exempt(user)`` (the registrar: this source holds a binding of the user) lets the
    real phone register while 1000 is blocked for everyone else."""
    auth = make_auth()
    for i in range(MAX_FAILURES):
        guess(auth, T0, source=f"203.0.113.{i}")
    nonce = nonce_of(auth, T0 + 1)
    msg = register(authorization(nonce))
    assert auth.check(msg, T0 + 1, PHONE, lambda user: user == "1000").outcome is \
        AuthOutcome.OK
    assert auth.check(register(authorization(nonce, nc=2)), T0 + 1, "203.0.113.99",
                      lambda user: False).outcome is AuthOutcome.BLOCKED


# ---- memory -------------------------------------------------------------------------------

def test_the_tables_are_bounded() -> None:
    """One failure each from 10,000 addresses with max_entries 1,000: the limiter never holds
    more than 1,000 sources (plus the one user); when the table is full and idle keys can go,
    a blocked source stays blocked."""
    limiter = FailureLimiter(max_entries=1000)
    for _ in range(MAX_FAILURES):
        limiter.failed("198.51.100.1", "1000", T0)
    peak = 0
    for i in range(10_000):
        limiter.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", None, T0 + WINDOW + i)
        peak = max(peak, len(limiter))
    assert 1000 <= peak <= 1001
    limiter2 = FailureLimiter(max_entries=100)
    for _ in range(MAX_FAILURES):
        limiter2.failed("198.51.100.1", None, T0)
    for i in range(99):
        limiter2.failed(f"10.0.0.{i}", None, T0 - 2 * WINDOW)  # long idle
    limiter2.failed("10.0.1.1", None, T0)  # full: the idle ones go, the blocked one stays
    assert limiter2.source_blocked("198.51.100.1", T0 + 1)


# ---- auth.algorithms -------------------------------------------------------------------------

def test_algorithms_set_the_challenges_and_their_order() -> None:
    """RFC 8760 2.4: one challenge per configured algorithm, in the configured order."""
    md5_first = make_auth(algorithms=("MD5", "SHA-256")).challenge(T0)
    assert ["algorithm=MD5" in md5_first[0], "algorithm=SHA-256" in md5_first[1]] == [True, True]
    [only] = make_auth(algorithms=("MD5",)).challenge(T0)
    assert "algorithm=MD5," in only


def test_an_algorithm_not_configured_is_not_accepted() -> None:
    """``auth.algorithms: [MD5]``: a right SHA-256 response is challenged again, never OK."""
    auth = make_auth(algorithms=("MD5",))
    msg = register(authorization(nonce_of(auth, T0), algorithm="SHA-256"))
    result = auth.check(msg, T0)
    assert result.outcome is AuthOutcome.CHALLENGE
    assert auth.check(register(authorization(nonce_of(auth, T0))), T0).ok


@pytest.mark.parametrize(("given", "error"), [
    ((), "at least one"),
    (("SHA-1",), "unsupported"),
    (("MD5", "md5"), "twice"),
])
def test_check_algorithms_refuses(given: tuple[str, ...], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_algorithms(given)
    assert check_algorithms(("md5", "sha-256")) == ("MD5", "SHA-256")
