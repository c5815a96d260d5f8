"""SIP digest authentication for the local registrar, sans-IO.

RFC 3261 22.4 (the Digest scheme in SIP: WWW-Authenticate in a 401, Authorization in the
retried request), RFC 2617 3.2 (qop=auth, nonce count and client nonce; the RFC 2069 form
without qop is still accepted) and RFC 8760 (SHA-256 next to MD5; section 2.4: the
challenges are listed most preferred first).

Nonces are stateless (RFC 2617 4.5 suggests "time-stamp H(time-stamp ":" ETag ":" private-key)"):
``ts`` (16 hex digits, milliseconds), ``salt`` (16 hex digits, random, so that two UAs
challenged in the same millisecond get different nonces) and ``mac`` (32 hex digits, the first
16 bytes of HMAC-SHA256(secret, ts ":" salt ":" realm)). A nonce whose MAC fails was not issued
by this realm and secret; one older than ``nonce_ttl`` is stale (RFC 2617 3.2.1 stale=true).

Replay protection (RFC 2617 3.2.2, 4.5): with qop=auth the nonce count must grow for each
request with the same nonce; without qop a nonce is good for one request only. The highest
count seen is kept per nonce in a bounded table. A nonce that had to be dropped from a full
table before it expired cannot be verified any more: every untracked nonce issued up to that
one is answered as stale, so that no count can be replayed.

What is checked, and in which order (RFC 7616 3.3, 5.x): a nonce not issued here, expired
(answered stale=true, RFC 7616 3.3), no longer tracked or replayed is never checked against
the password: only a fresh, unreplayed nonce of ours has its response computed, so an old
nonce tells a right password from a wrong one no more than a forged one does. A failed
check counts against the source and the user (:mod:`proxy.core.registrar.auth_failures`); a blocked
source or user gets 403 without a challenge and without the response being computed.

Nothing here does IO or reads a clock: ``now`` (seconds, any monotonic origin) is passed in.
The only side input is :func:`secrets.token_hex` for the nonce salt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

from proxy.core.registrar.auth_failures import FailureLimiter
from proxy.sip import AbsoluteUri, ParseError, SipMessage, SipUri, parse_uri, unescape
from proxy.sip.digest import parse_digest

__all__ = [
    "ALGORITHMS",
    "AuthOutcome",
    "AuthResult",
    "Credentials",
    "DigestAuth",
    "UserCredentials",
    "check_algorithms",
    "compute_ha1",
    "may_register",
    "parse_digest",
]

# RFC 8760 2.4: most preferred first. ``auth.algorithms`` picks among them and their order.
ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")

_HASHES: Final[dict[str, str]] = {"SHA-256": "sha256", "MD5": "md5"}  # RFC 8760 name -> hashlib

_TS_LEN: Final = 16
_SALT_LEN: Final = 16
_MAC_LEN: Final = 32
_NONCE_LEN: Final = _TS_LEN + _SALT_LEN + _MAC_LEN
_HEX: Final = frozenset("0123456789abcdef")
_USED: Final = 1 << 40  # "nonce spent": higher than any 8-hex-digit nonce count (RFC 2617 3.2.2)


class UserCredentials(Protocol):
    """What the authenticator needs of a user: the user name and the HA1 per algorithm
    (RFC 2617 3.2.2.2: H(username ":" realm ":" password), lower-case hex), None when that
    algorithm is not provisioned for the user."""

    @property
    def user(self) -> str: ...

    @property
    def ha1_md5(self) -> str | None: ...

    @property
    def ha1_sha256(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user of the realm, with HA1 values instead of the password (RFC 2617 3.2.2.2)."""

    user: str
    ha1_md5: str | None = None
    ha1_sha256: str | None = None

    @classmethod
    def from_password(cls, user: str, realm: str, password: str) -> Credentials:
        """Both HA1 values of ``user`` computed from a clear-text password."""
        return cls(user, compute_ha1(user, realm, password, "MD5"),
                   compute_ha1(user, realm, password, "SHA-256"))


class AuthOutcome(Enum):
    """What to answer (RFC 3261 22.4, 22.1)."""

    OK = "ok"  # authenticated: process the request
    CHALLENGE = "challenge"  # 401 with fresh challenges
    STALE = "stale"  # 401 with fresh challenges and stale=true (RFC 2617 3.2.1)
    FORBIDDEN = "forbidden"  # 403: the credentials are wrong
    BLOCKED = "blocked"  # 403 without a challenge: too many failures from the source or user


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The verdict of :meth:`DigestAuth.check`; ``user`` is the authenticated (or, for
    FORBIDDEN "wrong password", the claimed) user name; ``reason`` is for logs."""

    outcome: AuthOutcome
    user: str | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


def _from_wire(text: str) -> str:
    """A header value as :class:`SipMessage` gives it (latin-1, one char per byte) -> the
    UTF-8 text the UA sent (RFC 3261 25.1: quoted-string allows UTF8-NONASCII); bytes that
    are not UTF-8 are kept as surrogates, so that encoding back gives the same bytes."""
    try:
        return text.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text  # not from the wire: already text


def _hex(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm], text.encode("utf-8", "surrogateescape")).hexdigest()


def compute_ha1(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """HA1 = H(username ":" realm ":" password) in lower-case hex, UTF-8 (RFC 2617 3.2.2.2,
    RFC 8760 2); ``algorithm`` is "MD5" or "SHA-256". ValueError for another algorithm.
    (Same signature as :func:`proxy.auth_users.compute_ha1`.)"""
    algo = algorithm.upper()
    if algo not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _hex(algo, f"{user}:{realm}:{password}")


def check_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    """``auth.algorithms`` in canonical spelling (RFC 8760: "SHA-256", "MD5"), in the order
    given. ValueError for an unknown, repeated or missing algorithm."""
    names = {a.upper(): a for a in ALGORITHMS}
    out: list[str] = []
    for a in algorithms:
        canon = names.get(a.upper())
        if canon is None:
            raise ValueError(f"unsupported digest algorithm {a!r}")
        if canon in out:
            raise ValueError(f"digest algorithm {canon} given twice")
        out.append(canon)
    if not out:
        raise ValueError("at least one digest algorithm is needed")
    return tuple(out)


def may_register(user: str, aor: str) -> bool:
    """True if the authenticated ``user`` may register ``aor``: its user part, unescaped
    (RFC 3261 19.1.4), is ``user``. ``aor`` is "sip:1000@example.com", "1000@example.com" (as
    :attr:`SipUri.aor` gives it) or a name-addr's URI; an AOR without a user part -> False."""
    text = aor.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    low = text[:5].lower()
    if low.startswith("sips:"):
        text = text[5:]
    elif low.startswith("sip:"):
        text = text[4:]
    at = text.rfind("@")
    if at <= 0:
        return False
    userinfo = text[:at]
    part = userinfo.split(":", 1)[0]  # drop a password (RFC 3261 19.1.1)
    return bool(part) and unescape(part) == user


def _uri_matches(digest_uri: str, request_uri: str) -> bool:
    """RFC 2617 3.2.2.5: the digest-uri names the Request-URI. Loosely: equal strings, or two
    SIP URIs with the same user and host (scheme, port and parameters may differ)."""
    if digest_uri == request_uri:
        return True
    try:
        a: SipUri | AbsoluteUri = parse_uri(digest_uri)
        b: SipUri | AbsoluteUri = parse_uri(request_uri)
    except ParseError:
        return False
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        return a.host == b.host and unescape(a.user or "") == unescape(b.user or "")
    return str(a) == str(b)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestAuth:
    """Challenges and checks digest credentials for one realm (RFC 3261 22.4).

    ``users`` are read once; ``secret`` keys the nonce MAC (at least 16 bytes; keep it across
    restarts for nonces to survive them). ``nonce_ttl`` is how long a nonce is good for;
    ``max_tracked_nonces`` bounds the replay table. ``algorithms`` (``auth.algorithms``) are
    the ones offered and accepted, in the order of the 401's challenges. ``failures`` limits
    failed authentications per source and user. ValueError for bad arguments.
    """

    __slots__ = ("_algorithms", "_floor", "_nc", "_secret", "_ttl_ms", "_users", "accepted",
                 "failures", "max_tracked_nonces", "nonce_ttl", "realm")

    def __init__(self, realm: str, users: Iterable[UserCredentials], secret: bytes, *,
                 nonce_ttl: float = 300.0, max_tracked_nonces: int = 10000,
                 algorithms: Iterable[str] = ALGORITHMS,
                 failures: FailureLimiter | None = None) -> None:
        if not realm:
            raise ValueError("digest realm must not be empty")
        if len(secret) < 16:
            raise ValueError("digest nonce secret must be at least 16 bytes")
        if not nonce_ttl > 0:
            raise ValueError("nonce_ttl must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.max_tracked_nonces = max_tracked_nonces
        self._secret = bytes(secret)
        self._ttl_ms = int(nonce_ttl * 1000)
        self._users: dict[str, UserCredentials] = {u.user: u for u in users}
        #: the algorithms a response may use: the configured ones
        self.accepted = check_algorithms(algorithms)
        # Offer only algorithms some user can answer (every accepted one when no user has an
        # HA1 for any): a UA picks the first it knows and would fail forever on the others.
        offered = tuple(
            a for a in self.accepted
            if any(self._ha1(u, a) is not None for u in self._users.values())
        )
        self._algorithms = offered or self.accepted
        self.failures = failures if failures is not None else FailureLimiter()
        self._nc: dict[str, int] = {}  # nonce -> highest nonce count accepted; insertion order
        self._floor = -1  # untracked nonces issued at or before this ms were evicted: stale

    def rekey(self, secret: bytes) -> None:
        """Key the nonces with ``secret`` from now on (the key agreed through a shared state
        store); a nonce issued before no longer verifies and is challenged again."""
        if len(secret) < 16:
            raise ValueError("digest nonce secret must be at least 16 bytes")
        self._secret = bytes(secret)

    # ---- nonces ---------------------------------------------------------------------------

    def _mac(self, ts: str, salt: str) -> str:
        msg = f"{ts}:{salt}:{self.realm}".encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:_MAC_LEN]

    def _new_nonce(self, now: float) -> str:
        ts = f"{max(0, int(now * 1000)) & 0xFFFFFFFFFFFFFFFF:016x}"
        salt = secrets.token_hex(_SALT_LEN // 2)
        return ts + salt + self._mac(ts, salt)

    def _nonce_time(self, nonce: str) -> int | None:
        """The issue time (ms) of a nonce of ours, None when it is not one (bad MAC)."""
        if len(nonce) != _NONCE_LEN or not _HEX.issuperset(nonce):
            return None
        ts, salt, mac = nonce[:_TS_LEN], nonce[_TS_LEN:_TS_LEN + _SALT_LEN], nonce[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(ts, salt)):
            return None
        return int(ts, 16)

    def _expired(self, issued_ms: int, now_ms: int) -> bool:
        # A nonce from the future is from before a clock reset: as good as expired.
        return now_ms - issued_ms > self._ttl_ms or issued_ms > now_ms + 1000

    def _prune(self, now_ms: int) -> None:
        """Drop expired nonces from the front of the replay table (oldest first used)."""
        table = self._nc
        while table:
            nonce = next(iter(table))
            if not self._expired(int(nonce[:_TS_LEN], 16), now_ms):
                break
            del table[nonce]

    def _track(self, nonce: str, nc: int) -> None:
        table = self._nc
        table[nonce] = nc
        while len(table) > self.max_tracked_nonces:
            evicted = next(iter(table))
            del table[evicted]
            self._floor = max(self._floor, int(evicted[:_TS_LEN], 16))

    def tracked_nonces(self) -> int:
        """How many nonces the replay table holds (for stats and tests)."""
        return len(self._nc)

    # ---- challenge -------------------------------------------------------------------------

    def challenge(self, now: float, *, stale: bool = False) -> tuple[str, ...]:
        """The WWW-Authenticate header lines of a 401 (RFC 3261 22.4, RFC 2617 3.2.1): one per
        offered algorithm in ``auth.algorithms`` order (RFC 8760 2.4: most preferred first),
        qop="auth", and stale=true when the client's nonce had only expired (RFC 7616 3.3:
        retry with a new nonce without asking the user)."""
        nonce = self._new_nonce(now)
        tail = ", stale=true" if stale else ""
        realm = _quote(self.realm)
        return tuple(
            f'WWW-Authenticate: Digest realm={realm}, nonce="{nonce}", algorithm={algo}, '
            f'qop="auth"{tail}'
            for algo in self._algorithms
        )

    # ---- check ----------------------------------------------------------------------------

    @staticmethod
    def _ha1(creds: UserCredentials, algorithm: str) -> str | None:
        ha1 = creds.ha1_sha256 if algorithm == "SHA-256" else creds.ha1_md5
        return ha1.lower() if ha1 else None

    def check(self, msg: SipMessage, now: float, source: str = "",
              exempt: Callable[[str], bool] | None = None) -> AuthResult:
        """Verify the Authorization of a request for this realm (RFC 3261 22.4, RFC 2617
        3.2.2) from the address ``source``. ``exempt(user)``: this source may try ``user``
        while the user is blocked (it is where that user is registered from). Never raises:
        malformed credentials are answered with a new challenge."""
        chosen: dict[str, str] | None = None
        malformed = False
        for value in msg.get_all("authorization"):
            params = parse_digest(value)
            if params is None:
                malformed = True
                continue
            if params.get("realm") == self.realm:
                chosen = params
                break
        if self.failures.source_blocked(source, now, extend=chosen is not None):
            return AuthResult(AuthOutcome.BLOCKED, None,
                              "too many failed authentications from this source")
        if chosen is None:
            reason = "malformed Authorization" if malformed else "no credentials for the realm"
            return AuthResult(AuthOutcome.CHALLENGE, None, reason)
        return self._check(chosen, msg, now, source, exempt)

    def _check(self, wire: dict[str, str], msg: SipMessage, now: float, source: str,
               exempt: Callable[[str], bool] | None) -> AuthResult:
        challenge = AuthOutcome.CHALLENGE
        p = {k: _from_wire(v) for k, v in wire.items()}
        username, nonce, uri, response = (p.get(k) for k in ("username", "nonce", "uri",
                                                                  "response"))
        if username is None or nonce is None or uri is None or response is None:
            return AuthResult(challenge, None, "missing digest parameter")
        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm not in self.accepted:
            return AuthResult(challenge, None, f"algorithm not offered {algorithm[:20]!r}")
        qop = p.get("qop")
        nc = 0
        cnonce = p.get("cnonce")
        nc_raw = p.get("nc")
        if qop is not None:
            if qop.lower() != "auth":
                return AuthResult(challenge, None, f"unsupported qop {qop[:20]!r}")
            if (cnonce is None or nc_raw is None or len(nc_raw) != 8
                    or not _HEX.issuperset(nc_raw.lower())):
                return AuthResult(challenge, None, "bad nonce count or cnonce")
            nc = int(nc_raw, 16)
            if nc == 0:
                return AuthResult(challenge, None, "bad nonce count")
        nonce = nonce.lower()
        issued = self._nonce_time(nonce)
        if issued is None:
            return AuthResult(challenge, None, "nonce not issued here")
        # RFC 7616 3.3: a nonce that is no longer good is answered stale=true, and its
        # response is never computed, so that it tells nothing about the password.
        now_ms = max(0, int(now * 1000))
        if self._expired(issued, now_ms):
            return AuthResult(AuthOutcome.STALE, None, "nonce expired")
        self._prune(now_ms)
        seen = self._nc.get(nonce)
        if seen is None and issued <= self._floor:
            # Its replay state was dropped from a full table: it cannot be verified any more.
            return AuthResult(AuthOutcome.STALE, None, "nonce no longer tracked")
        if seen is not None and (qop is None or nc <= seen):
            return AuthResult(challenge, None,
                              "nonce reused" if qop is None else "nonce count replayed")
        creds = self._users.get(username)
        if creds is None:
            self.failures.failed(source, None, now)
            return AuthResult(AuthOutcome.FORBIDDEN, None, "unknown user")
        if self.failures.user_blocked(username, now) and not (
                exempt is not None and exempt(username)):
            self.failures.user_blocked(username, now, extend=True)
            return AuthResult(AuthOutcome.BLOCKED, username,
                              "too many failed authentications for this user")
        ha1 = self._ha1(creds, algorithm)
        if ha1 is None:
            return AuthResult(challenge, None, f"no {algorithm} credentials for the user")
        if not _uri_matches(uri, msg.request_uri):
            return AuthResult(challenge, None, "digest uri does not match the Request-URI")
        ha2 = _hex(algorithm, f"{_from_wire(msg.method)}:{uri}")
        if qop is not None:
            expected = _hex(algorithm, f"{ha1}:{nonce}:{nc_raw}:{cnonce}:{qop}:{ha2}")
        else:
            expected = _hex(algorithm, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 form
        got = response.lower().encode("utf-8", "replace")
        if not hmac.compare_digest(expected.encode("ascii"), got):
            self.failures.failed(source, username, now)
            return AuthResult(AuthOutcome.FORBIDDEN, username, "wrong password")
        self._track(nonce, _USED if qop is None else nc)
        return AuthResult(AuthOutcome.OK, username, "authenticated")
