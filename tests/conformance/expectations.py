"""What sip-policy-proxy does with each RFC 4475 / RFC 5118 torture message.

One row per MANIFEST.tsv row of both kits (49 + 12), in manifest order.  Shared by the
parser-level test (tests/conformance/test_parser_conformance.py) and the wire-level e2e test.

``parse_ok``: parse_message(data, datagram=True) and, for requests, validate_request() succeed.
``proxy``: what the running proxy does when it receives the message over UDP from outside, with
``registrar: upstream`` and one upstream: "forward" (the upstream receives it with the proxy's
Via on top), "respond" (the sender gets ``status``) or "drop" (nothing is sent anywhere: every
response here matches no transaction, RFC 3261 16.7 / 18.1.2).
Proxy-level decisions (not parser errors, so parse_ok is True): Max-Forwards 0 -> 483 (RFC 3261
16.3 step 3), unknown Proxy-Require -> 420 (16.3 step 6), a Request-URI scheme other than
sip/sips/tel -> 416 (16.3 step 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXPECTATIONS", "KITS", "Expect", "by_name"]

#: The repository's own byte-exact copy of both kits (RFC 4475, RFC 5118), with their manifests.
KITS = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Expect:
    name: str  # "rfc4475/wsinv", "rfc5118/ipv6-good"
    path: Path  # rfc4475/NAME.dat; rfc5118/wire/NAME.dat (CRLF copy)
    is_request: bool
    parse_ok: bool
    proxy: str  # "forward" | "respond" | "drop"
    status: int | None  # for "respond"
    reason: str


FORWARD = "forward"
RESPOND = "respond"
DROP = "drop"


def _r4475(name: str, is_request: bool, parse_ok: bool, proxy: str, status: int | None,
           reason: str) -> Expect:
    return Expect(f"rfc4475/{name}", KITS / "rfc4475" / f"{name}.dat", is_request, parse_ok,
                  proxy, status, reason)


def _r5118(name: str, is_request: bool, parse_ok: bool, proxy: str, status: int | None,
           reason: str) -> Expect:
    return Expect(f"rfc5118/{name}", KITS / "rfc5118" / "wire" / f"{name}.dat", is_request,
                  parse_ok, proxy, status, reason)


EXPECTATIONS: tuple[Expect, ...] = (
    # ---- RFC 4475 3.1.1: valid messages ----
    _r4475("wsinv", True, True, RESPOND, 481,
           "RFC 4475 3.1.1.1: tortuous but well-formed INVITE (LWS, folding, compact forms, "
           "escapes). It parses; it has a To tag and no Route of this proxy proving a dialog "
           "through it, and the sender is neither an upstream nor a trusted relay: 481, once "
           "and statelessly (RFC 3261 12.2.2; no open relay through its Route to "
           "services.example.com, README, Security defaults). tests/unit/test_core_conformance.py shows a trusted relay's copy "
           "loose-routed there (RFC 3261 16.4), unknown headers unchanged"),
    _r4475("intmeth", True, True, FORWARD, None,
           "RFC 4475 3.1.1.2: unknown method with unusual but legal characters; a proxy forwards "
           "it (the sip: R-URI goes to the upstream)"),
    _r4475("esc01", True, True, FORWARD, None,
           "RFC 4475 3.1.1.3: valid % escapes in URIs; forwarded without unescaping"),
    _r4475("escnull", True, True, FORWARD, None,
           "RFC 4475 3.1.1.4: %00 in the AOR is valid; REGISTER goes to the upstream registrar "
           "with both contacts, nothing truncated"),
    _r4475("esc02", True, True, FORWARD, None,
           "RFC 4475 3.1.1.5: RE%47IST%45R is an unknown method (not REGISTER); C%6Fntact is an "
           "unknown header, so two Contact values; forwarded"),
    _r4475("lwsdisp", True, True, FORWARD, None,
           "RFC 4475 3.1.1.6: no LWS between display name and '<' is accepted (RFC 3261 ABNF "
           "bug)"),
    _r4475("longreq", True, True, FORWARD, None,
           "RFC 4475 3.1.1.7: very long values and 34 Via values must parse; forwarded"),
    _r4475("dblreq", True, True, FORWARD, None,
           "RFC 4475 3.1.1.8: the REGISTER is handled normally (forwarded to the upstream); the "
           "trailing INVITE octets after Content-Length are ignored and never forwarded"),
    _r4475("semiuri", True, True, FORWARD, None,
           "RFC 4475 3.1.1.9: R-URI user part 'user;par=u%40example.net' holds ';'; forwarded"),
    _r4475("transports", True, True, FORWARD, None,
           "RFC 4475 3.1.1.10: unknown Via transport tokens (UNKNOWN) parse; forwarded"),
    _r4475("mpart01", True, True, RESPOND, 403,
           "RFC 4475 3.1.1.11: multipart body with NUL/CR/LF octets framed by Content-Length: "
           "it parses. Its Route names sip:127.0.0.1:5080, another host, and the sender is a "
           "stranger: 403, no open relay (README, Security defaults); "
           "tests/unit/test_core_conformance.py shows a trusted relay's copy forwarded with "
           "its body byte-exact"),
    _r4475("unreason", False, True, DROP, None,
           "RFC 4475 3.1.1.12: valid 200 with a UTF-8 reason phrase; it matches no transaction, "
           "so the proxy drops it (RFC 3261 16.7)"),
    _r4475("noreason", False, True, DROP, None,
           "RFC 4475 3.1.1.13: valid 100 with an empty reason phrase; a 100 is never forwarded "
           "and this one matches no transaction: dropped (RFC 3261 16.7 step 5)"),
    # ---- RFC 4475 3.1.2: invalid messages ----
    _r4475("badinv01", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.1: empty Via/Contact parameters and list elements (';;,;,,'); "
           "should respond 400"),
    _r4475("clerr", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.2: Content-Length 9999 larger than the datagram; UDP: respond 400"),
    _r4475("ncl", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.3: negative Content-Length; respond with an error (400)"),
    _r4475("scalar02", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.4: CSeq 36893488147419103232 > 2**32-1; respond 400 (Max-Forwards 300 "
           "is refused too)"),
    _r4475("scalarlg", False, True, DROP, None,
           "RFC 4475 3.1.2.5: response with overlarge CSeq/Retry-After/Warning code; the lazy "
           "CSeq view raises, and the response is discarded (no transaction either)"),
    _r4475("quotbal", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.6: unterminated quoted display name in To; respond 400"),
    _r4475("ltgtruri", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.7: <> around the Request-URI; reasonable to reject with 400 (chosen)"),
    _r4475("lwsruri", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.8: LWS inside the Request-URI; should respond 400"),
    _r4475("lwsstart", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.9: several SP between Request-Line elements; rejected as malformed "
           "(400)"),
    _r4475("trws", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.10: SP at the end of the Request-Line; rejected as malformed (400)"),
    _r4475("escruri", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.11: escaped headers in the SIP Request-URI (RFC 3261 19.1.5); "
           "rejected with 400"),
    _r4475("baddate", True, True, FORWARD, None,
           "RFC 4475 3.1.2.12: non-GMT Date; a proxy does not use Date, so it ignores it and "
           "forwards"),
    _r4475("regbadct", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.13: Contact URI with '?' not enclosed in <>; respond 400 (chosen over "
           "inferring the <>)"),
    _r4475("badaspec", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.14: spaces inside <> in To; reasonable to reject with 400 (chosen)"),
    _r4475("baddn", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.15: unquoted display names with ','; reasonable to reject with 400 "
           "(chosen); file has no blank line, the datagram end closes the headers"),
    _r4475("badvers", True, False, RESPOND, 505,
           "RFC 4475 3.1.2.16: SIP/7.0; respond 505 Version Not Supported"),
    _r4475("mismatch01", True, False, RESPOND, 400,
           "RFC 4475 3.1.2.17: OPTIONS with CSeq method INVITE; respond 400"),
    _r4475("mismatch02", True, False, RESPOND, 501,
           "RFC 4475 3.1.2.18: unknown method NEWMETHOD with CSeq INVITE; 501 preferred at "
           "proxies"),
    _r4475("bigcode", False, False, DROP, None,
           "RFC 4475 3.1.2.19: status code 4294967301 > 699; the parser refuses it and the "
           "response is dropped"),
    # ---- RFC 4475 3.2: transaction layer ----
    _r4475("badbranch", True, True, FORWARD, None,
           "RFC 4475 3.2.1: bare magic-cookie branch is grammar-valid; rejection is optional, "
           "the proxy falls back to RFC 2543 matching and forwards"),
    # ---- RFC 4475 3.3: application layer ----
    _r4475("insuf", True, False, RESPOND, 400,
           "RFC 4475 3.3.1: no Call-ID, From, To; respond 400"),
    _r4475("unkscm", True, True, RESPOND, 416,
           "RFC 4475 3.3.2: Request-URI scheme nobodyKnowsThisScheme; respond 416 (never route "
           "on To)"),
    _r4475("novelsc", True, True, RESPOND, 416,
           "RFC 4475 3.3.3: soap.beep: Request-URI is not acceptable to this proxy; respond 416"),
    _r4475("unksm2", True, True, FORWARD, None,
           "RFC 4475 3.3.4: unknown schemes in To/From/Contact must not fail; the REGISTER goes "
           "to the upstream registrar (which rejects it)"),
    _r4475("bext01", True, True, RESPOND, 420,
           "RFC 4475 3.3.5: unknown Proxy-Require options; the proxy answers 420 with "
           "Unsupported (it ignores Require)"),
    _r4475("invut", True, True, FORWARD, None,
           "RFC 4475 3.3.6: unknown Content-Type is the endpoint's business; proxy forwards"),
    _r4475("regaut01", True, True, FORWARD, None,
           "RFC 4475 3.3.7: unknown Authorization scheme; proxy forwards it unmodified to the "
           "upstream registrar"),
    _r4475("multi01", True, False, RESPOND, 400,
           "RFC 4475 3.3.8: repeated Call-ID, To, From, Max-Forwards, CSeq; respond 400"),
    _r4475("mcl01", True, False, RESPOND, 400,
           "RFC 4475 3.3.9: two Content-Length values; framing undefined, respond with an error "
           "(400)"),
    _r4475("bcast", False, True, DROP, None,
           "RFC 4475 3.3.10: valid 200 whose second Via is the broadcast address; it matches no "
           "transaction and is dropped (never sent to 255.255.255.255)"),
    _r4475("zeromf", True, True, RESPOND, 483,
           "RFC 4475 3.3.11: Max-Forwards 0; a proxy must not forward it and answers 483 "
           "(RFC 3261 16.3 step 3)"),
    _r4475("cparam01", True, True, FORWARD, None,
           "RFC 4475 3.3.12: addr-spec Contact whose ';unknownparam' is a contact-param; the "
           "REGISTER goes to the upstream registrar"),
    _r4475("cparam02", True, True, FORWARD, None,
           "RFC 4475 3.3.13: url-parameter inside <>; the REGISTER goes to the upstream"),
    _r4475("regescrt", True, True, FORWARD, None,
           "RFC 4475 3.3.14: escaped Route header inside a bracketed Contact URI is legal; the "
           "REGISTER goes to the upstream"),
    _r4475("sdp01", True, True, FORWARD, None,
           "RFC 4475 3.3.15: Accept without application/sdp is the endpoint's business (406); "
           "proxy forwards"),
    # ---- RFC 4475 3.4: backward compatibility ----
    _r4475("inv2543", True, True, FORWARD, None,
           "RFC 4475 3.4.1: RFC 2543 INVITE (no branch, From tag, Content-Length, Max-Forwards) "
           "accepted; body is the rest of the datagram; forwarded"),
    # ---- RFC 5118 (wire/ CRLF copies) ----
    _r5118("ipv6-good", True, True, FORWARD, None,
           "RFC 5118 4.1: IPv6 references in R-URI, Via and Contact are well-formed; REGISTER "
           "from outside goes to the upstream"),
    _r5118("ipv6-bad", True, False, RESPOND, 400,
           "RFC 5118 4.2: 'sip:2001:db8::10' lacks the mandatory [ ]; respond 400"),
    _r5118("port-ambiguous", True, True, FORWARD, None,
           "RFC 5118 4.3: [2001:db8::10:5070] is an IPv6 host with no port (well-formed, just "
           "not what was meant); forwarded"),
    _r5118("port-unambiguous", True, True, FORWARD, None,
           "RFC 5118 4.4: host [2001:db8::10] port 5070; forwarded"),
    _r5118("via-received-param-with-delim", True, True, RESPOND, 481,
           "RFC 5118 4.5: received=[2001:db8::9:255] accepted by robustness; the BYE has a To "
           "tag and no Route of this proxy, from a sender that is no upstream: 481 (RFC 3261 "
           "12.2.2), statelessly"),
    _r5118("via-received-param-no-delim", True, True, FORWARD, None,
           "RFC 5118 4.5: received=2001:db8::9:255 (RFC 3261 ABNF form); forwarded"),
    _r5118("ipv6-in-sdp", True, True, FORWARD, None,
           "RFC 5118 4.6: IPv6 addresses in the SDP body are not the proxy's concern; "
           "forwarded"),
    _r5118("mult-ip-in-header", True, True, RESPOND, 481,
           "RFC 5118 4.7: Via list mixing IPv4 and IPv6 (with port, with IPv4 received=) "
           "parses; the BYE has a To tag and no Route of this proxy, from a sender that is no "
           "upstream: 481 (RFC 3261 12.2.2), statelessly"),
    _r5118("mult-ip-in-sdp", True, True, FORWARD, None,
           "RFC 5118 4.8: IPv4 and IPv6 c= lines in the SDP; forwarded"),
    _r5118("ipv4-mapped-ipv6", True, True, FORWARD, None,
           "RFC 5118 4.9: IPv4-mapped IPv6 addresses in Via and Contact parse; forwarded"),
    _r5118("ipv6-bug-abnf-3-colons", True, True, FORWARD, None,
           "RFC 5118 4.10: [2001:db8:::192.0.2.1] tolerated (RFC 3261 ABNF bug); forwarded"),
    _r5118("ipv6-correct-abnf-2-colons", True, True, FORWARD, None,
           "RFC 5118 4.10: [2001:db8::192.0.2.1] is the correct form; forwarded"),
)


def by_name(name: str) -> Expect:
    """The row named "rfc4475/NAME" or "rfc5118/NAME"."""
    for row in EXPECTATIONS:
        if row.name == name:
            return row
    raise KeyError(name)
