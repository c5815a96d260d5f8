"""Request validation (RFC 3261 16.3) and loop detection (16.3 step 4, 16.6 step 8).

:func:`check_request` is pure: it returns the :class:`Rejection` a request deserves, or None.
Messages too broken to parse are answered from their salvaged headers (RFC 4475 3.1.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple
from zlib import crc32

from proxy.core.effects import INFO
from proxy.core.types import Send, Source
from proxy.sip import AbsoluteUri, ParseError, SipMessage, validate_request

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


ROUTE_SCHEMES = frozenset({"sip", "sips", "tel"})


class Rejection(NamedTuple):
    """A stateless error response a request gets before any transaction (RFC 3261 16.3)."""

    status: int
    headers: tuple[str, ...] = ()


def check_request(msg: SipMessage) -> Rejection | None:
    """RFC 3261 16.3 steps 1, 2, 3 and 6 (step 4, loops, needs the transaction; step 5,
    Proxy-Authorization, is not used). Raises ParseError for a malformed message (step 1)."""
    validate_request(msg)
    method = msg.method
    # 16.3 step 2: URI scheme.
    uri = msg.uri
    if isinstance(uri, AbsoluteUri) and uri.scheme not in ROUTE_SCHEMES:
        return Rejection(416)
    # 16.3 step 3: Max-Forwards.
    if msg.max_forwards == 0:
        return Rejection(483)
    # 16.3 step 6: Proxy-Require; this proxy supports no option tag there.
    if method != "ACK" and method != "CANCEL":
        required = msg.get_all("proxy-require")
        if required:
            tags = ", ".join(t.strip() for v in required for t in v.split(",") if t.strip())
            return Rejection(420, (f"Unsupported: {tags}",))
    return None


def loop_hash(msg: SipMessage) -> str:
    """RFC 3261 16.6 step 8: the loop-detection part of the branch."""
    # the Route and Proxy-Require lines as ``get_all`` gives them, in one pass over the
    # headers; a list only when there is one (an INVITE from a UA has neither)
    routes: list[str] | None = None
    required: list[str] | None = None
    for h in msg.headers:
        name = h.name
        if name == "route":
            if routes is None:
                routes = [h.value]
            else:
                routes.append(h.value)
        elif name == "proxy-require":
            if required is None:
                required = [h.value]
            else:
                required.append(h.value)
    route = "" if routes is None else "|".join(routes)
    require = "" if required is None else "|".join(required)
    # one string built (not a tuple joined): the same key as "\0".join of the seven parts
    key = (f"{msg.request_uri}\0{msg.from_tag or ''}\0{msg.to_tag or ''}\0{msg.call_id}\0"
           f"{msg.cseq[0]}\0{route}\0{require}")
    # eight hex digits: "0x1" and the 32-bit CRC's digits, padded by the 33rd bit (not
    # format(crc, "08x"): int.__format__ parses its spec, several times the cost)
    return hex(crc32(key.encode("latin-1", "replace")) | 0x100000000)[3:]


def looped(core: ProxyCore, msg: SipMessage, hash_: str) -> bool:
    """RFC 3261 16.3 step 4: a Via of ours with the same loop hash means a loop."""
    raw = msg.get_all("via")
    if not any(adv in v for v in raw for adv in core.adv):
        return False
    for via in msg.vias:
        b = via.branch
        if (
            b is not None and len(b) > 21 and b.startswith("z9hG4bK")
            and b[13:21] == hash_ and via.sent_by() in core.ours
        ):
            return True
    return False


def bad_message(core: ProxyCore, data: bytes, src: Source, exc: ParseError) -> Send | None:
    """A message the parser refused: the answer to a request if we can, None (dropped) for a
    response."""
    if data[:4] == b"SIP/" or not data.strip():
        core.stats["responses_dropped"] += 1
        core.note(INFO, "dropped unparsable response from %s:%s: %s", src.host, src.port, exc.message)
        return None
    core.stats["requests_rejected"] += 1
    core.note(INFO, "bad request from %s:%s: %s", src.host, src.port, exc.message)
    salvaged = salvage_response(data, exc.status, exc.message)
    if salvaged is None:
        return None
    return Send(src.transport, src.host, src.port, salvaged, src.conn_id)


_SALVAGE: Final = {
    "via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
    "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq",
}


def salvage_response(data: bytes, status: int, reason: str) -> bytes | None:
    """Build an error response for a request too broken to parse (RFC 4475 3.1.2).

    Copies the Via, From, To, Call-ID and CSeq lines as they are; without a Via there is no one
    to answer, and the message is dropped.
    """
    from proxy.sip import REASONS

    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")[1:]
    kept: list[str] = []
    have_via = False
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        canon = _SALVAGE.get(name.strip().lower())
        if canon is None:
            continue
        have_via = have_via or canon == "Via"
        kept.append(f"{canon}: {value.strip()}")
    if not have_via:
        return None
    phrase = REASONS.get(status, "Bad Request")
    text = f"SIP/2.0 {status} {phrase}\r\n" + "".join(k + "\r\n" for k in kept)
    text += f"Warning: 399 sip-policy-proxy \"{reason[:80].replace(chr(34), '')}\"\r\n"
    text += "Content-Length: 0\r\n\r\n"
    return text.encode("latin-1", "replace")
