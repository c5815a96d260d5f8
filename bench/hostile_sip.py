"""The pieces of bench/hostile.py that touch no network: SIP messages built and read as
bytes, digest answers (RFC 2617, RFC 8760), the Prometheus text the proxy's /metrics
serves, the RSS samples and the report. Standard library only; unit-tested in
tests/unit/test_bench_hostile.py.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ATTACKS", "AttackResult", "Msg", "authorization", "back_within", "build_request",
    "build_response", "digest_response", "format_report", "metric", "parse_attacks",
    "parse_challenge", "parse_metrics", "parse_msg", "percentile", "quick_status",
]

#: header names in compact form (RFC 3261 7.3.3) -> long form, lower case
_COMPACT = {"i": "call-id", "v": "via", "f": "from", "t": "to", "m": "contact",
            "l": "content-length", "c": "content-type", "k": "supported", "s": "subject"}

#: (id, name, what it replays): the issue's nine cases (7 in three parts) and sipvicious
ATTACKS: tuple[tuple[str, str, str], ...] = (
    ("1", "relay", "open relay with a harvested Record-Route (new Call-ID, invented To tag)"),
    ("2", "restart", "TCP flow token from before a restart, its connection id now bob's"),
    ("3", "reflect", "response reflected through the proxy's old branch to a named host"),
    ("4", "totag", "per_source_rps bypass with invented To tags (3,000/s)"),
    ("5", "guess", "password guessing against the local registrar"),
    ("6", "slots", "TCP/TLS slots held by keep-alive-only connections and a slow sender"),
    ("7a", "tls", "half-open TLS handshakes from many sources"),
    ("7b", "cancel", "CANCELs for unknown transactions (25,000/s)"),
    ("7c", "register", "REGISTERs by one authenticated user for many domains"),
    ("8", "amplify", "INVITE flood above the rate limit, never ACKed"),
    ("9", "hijack", "registrar hijack from a private address with auth set"),
    ("10", "sipvicious", "svmap, svwar, svcrack (Debian's sipvicious)"),
)


def parse_attacks(text: str) -> list[str]:
    """``--attacks``: ids or names, comma separated (``all``; ``7`` is 7a, 7b and 7c), in
    the order of :data:`ATTACKS`. Raises ValueError naming what is unknown."""
    wanted: set[str] = set()
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "all":
            wanted.update(a[0] for a in ATTACKS)
            continue
        hits = [a[0] for a in ATTACKS if item in (a[0], a[1]) or (item.isdigit()
                                                                   and a[0].rstrip("abc") == item)]
        if not hits:
            known = ", ".join(f"{a[0]} ({a[1]})" for a in ATTACKS)
            raise ValueError(f"unknown attack {raw.strip()!r}: one of {known}, or all")
        wanted.update(hits)
    if not wanted:
        raise ValueError("no attack chosen")
    return [a[0] for a in ATTACKS if a[0] in wanted]


# ------------------------------------------------------------------------------- messages


def build_request(method: str, ruri: str, *, call_id: str, via_host: str, via_port: int,
                  from_uri: str, to_uri: str, from_tag: str = "h1", to_tag: str | None = None,
                  cseq: int = 1, branch: str | None = None, transport: str = "UDP",
                  headers: Sequence[str] = (), body: bytes = b"") -> bytes:
    """A request as a UA writes it (RFC 3261 8.1.1), with ``rport`` (RFC 3581)."""
    branch = branch or "z9hG4bK" + secrets.token_hex(8)
    to = f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/{transport} {via_host}:{via_port};branch={branch};rport",
             "Max-Forwards: 70",
             f"From: <{from_uri}>;tag={from_tag}",
             f"To: {to}",
             f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}",
             *headers,
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Msg:
    """A SIP message read loosely: start line, headers (long names, lower case), body."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def status(self) -> int | None:
        if not self.start.startswith("SIP/2.0 "):
            return None
        try:
            return int(self.start[8:11])
        except ValueError:
            return None

    @property
    def method(self) -> str | None:
        return None if self.status is not None else self.start.split(" ", 1)[0]

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split (outside <> and quotes)."""
        name = name.lower()
        out: list[str] = []
        for k, v in self.headers:
            if k == name:
                out.extend(split_values(v))
        return out

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.get("cseq") or "0 ?").partition(" ")
        return int(num) if num.isdigit() else 0, method.strip()

    def tag(self, name: str) -> str | None:
        m = re.search(r";\s*tag=([^;>\s]+)", self.get(name) or "")
        return m.group(1) if m else None


def split_values(value: str) -> list[str]:
    """A header value split at the commas that separate values (not inside <> or quotes)."""
    out: list[str] = []
    cur: list[str] = []
    depth, quoted = 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif ch == "," and depth == 0 and not quoted:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def parse_msg(data: bytes) -> Msg | None:
    """``data`` as a :class:`Msg`; None for anything that is not one (a keep-alive)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep and not head.strip():
        return None
    lines = head.decode("utf-8", "replace").split("\r\n")
    if not lines or not lines[0] or " " not in lines[0]:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded (RFC 3261 7.3.1)
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        key = name.strip().lower()
        headers.append((_COMPACT.get(key, key), value.strip()))
    return Msg(lines[0], headers, body)


def build_response(req: Msg, status: int, reason: str, *, to_tag: str | None = None,
                   headers: Sequence[str] = ()) -> bytes:
    """A response to ``req`` (RFC 3261 8.2.6): its Vias, From, To (+ tag), Call-ID, CSeq."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
              f"CSeq: {req.get('cseq')}", *headers, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ")
_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i|call-id|CALL-ID):[ \t]*([^\r\n]+)")


def quick_status(data: bytes) -> tuple[int, bytes]:
    """(status, Call-ID) of a response, read without parsing it (0 and b"" when not one):
    what a flood's receiver needs per datagram."""
    m = _STATUS.match(data)
    if m is None:
        return 0, b""
    c = _CALL_ID.search(data)
    return int(m.group(1)), (c.group(1).strip() if c else b"")


# ------------------------------------------------------------------------------- digest

_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def parse_challenge(value: str) -> dict[str, str]:
    """``Digest realm="x", nonce="y", ...`` -> {"realm": "x", "nonce": "y", ...}."""
    scheme, _, rest = value.strip().partition(" ")
    out = {"scheme": scheme}
    for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]+)', rest):
        out[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
    return out


def digest_response(user: str, realm: str, password: str, method: str, uri: str, nonce: str,
                    nc: int, cnonce: str, algorithm: str = "MD5", qop: str = "auth") -> str:
    """The digest ``response`` (RFC 2617 3.2.2.1, RFC 8760 for SHA-256)."""
    h = _HASH[algorithm]

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()

    ha1 = hx(f"{user}:{realm}:{password}")
    ha2 = hx(f"{method}:{uri}")
    return hx(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


def authorization(user: str, realm: str, password: str, method: str, uri: str, nonce: str,
                  nc: int, cnonce: str = "bench", algorithm: str = "MD5") -> str:
    """An ``Authorization`` header line answering a qop=auth challenge."""
    resp = digest_response(user, realm, password, method, uri, nonce, nc, cnonce, algorithm)
    return (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{uri}", response="{resp}", algorithm={algorithm}, qop=auth, '
            f'nc={nc:08x}, cnonce="{cnonce}"')


# ------------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted labels): value} (comments skipped)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(3) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            continue
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """The sum of the samples of ``name`` (the proxy's prefix added) whose labels include
    ``labels``; 0 when there is none."""
    full = name if name.startswith("sip_policy_proxy_") else "sip_policy_proxy_" + name
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == full and want <= set(ls))


# ------------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def back_within(samples: Iterable[tuple[float, float]], idle: float,
                tolerance: float = 0.2) -> float | None:
    """The first time (seconds after the attack ended) from which every later sample of
    ``(t, rss)`` stays within ``tolerance`` of ``idle``; None if the last one is not."""
    since: float | None = None
    for t, rss in samples:
        if rss <= idle * (1 + tolerance):
            if since is None:
                since = t
        else:
            since = None
    return since


@dataclass
class AttackResult:
    """What one attack did to the proxy, and what it achieved."""

    id: str
    name: str
    idle_mib: float = 0.0
    peak_mib: float = 0.0
    after_mib: float = 0.0
    back_s: float | None = None  # seconds after the end until RSS stayed within 20 % of idle
    watched_s: float = 0.0  # how long RSS was watched after the end
    cpu_pct: float = 0.0  # of one core, over the attack
    attack_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    calls_failed: int = 0
    outcome: list[str] = field(default_factory=list)
    holes: list[str] = field(default_factory=list)  # what the next round must look at
    error: str | None = None

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    @property
    def max_ms(self) -> float | None:
        return max(self.latencies_ms) if self.latencies_ms else None

    def memory_ok(self) -> bool:
        return self.back_s is not None

    def latency_ok(self, bound_ms: float = 200.0) -> bool:
        return (self.calls_failed == 0 and self.max_ms is not None
                and self.max_ms <= bound_ms)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_report(results: Sequence[AttackResult], header: Sequence[str] = ()) -> str:
    """The table of every attack, then each attack's outcome and the done-criteria."""
    lines = list(header)
    lines.append("")
    lines.append(f"{'attack':<14} {'idle':>6} {'peak':>7} {'after':>6} {'back':>7} "
                 f"{'cpu':>5} {'calls':>6} {'p50':>6} {'max':>7}  done")
    lines.append(f"{'':<14} {'MiB':>6} {'MiB':>7} {'MiB':>6} {'s':>7} "
                 f"{'%':>5} {'ok/all':>6} {'ms':>6} {'ms':>7}")
    for r in results:
        label = f"{r.id} {r.name}"
        if r.error is not None:
            lines.append(f"{label:<14} error: {r.error}")
            continue
        back = "-" if r.back_s is None else f"{r.back_s:.0f}"
        calls = f"{len(r.latencies_ms)}/{len(r.latencies_ms) + r.calls_failed}"
        done = ("mem " + ("ok" if r.memory_ok() else "NO") + ", call "
                + ("ok" if r.latency_ok() else "NO"))
        lines.append(f"{label:<14} {r.idle_mib:>6.1f} {r.peak_mib:>7.1f} {r.after_mib:>6.1f} "
                     f"{back:>7} {r.cpu_pct:>5.0f} {calls:>6} {_ms(r.p50_ms):>6} "
                     f"{_ms(r.max_ms):>7}  {done}")
    for r in results:
        lines.append("")
        lines.append(f"[{r.id} {r.name}] {r.attack_s:.1f} s of attack")
        if r.error is not None:
            lines.append(f"  error: {r.error}")
        lines += [f"  {o}" for o in r.outcome]
        if r.error is None:
            back = ("not back within 20 % of idle" if r.back_s is None else
                    f"back within 20 % of idle {r.back_s:.0f} s after the end")
            lines.append(f"  RSS {r.idle_mib:.1f} MiB idle, {r.peak_mib:.1f} peak, "
                         f"{r.after_mib:.1f} after {r.watched_s:.0f} s: {back}")
        lines += [f"  HOLE: {h}" for h in r.holes]
    ran = [r for r in results if r.error is None]
    mem = sum(r.memory_ok() for r in ran)
    lat = sum(r.latency_ok() for r in ran)
    lines.append("")
    lines.append(f"done criteria: RSS back within 20 % of idle within 60 s: {mem} of {len(ran)};"
                 f" every legitimate call during the attack within 200 ms: {lat} of {len(ran)}")
    return "\n".join(lines)
