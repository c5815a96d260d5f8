"""RFC 4475 / RFC 5118 torture messages through parse_message + validate_request.

Every row of tests/conformance/expectations.py is checked against the kits' MANIFEST.tsv
(byte-exactness by sha256), then parsed as a UDP datagram; the specific facts the manifests
demand of a parser are asserted one by one below.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from proxy.sip import (
    AbsoluteUri,
    ParseError,
    SipMessage,
    SipUri,
    parse_message,
    rewrite,
    unescape,
    validate_request,
)
from tests.conformance.expectations import EXPECTATIONS, KITS, Expect, by_name


def _manifest(kit: str) -> list[dict[str, str]]:
    with (KITS / kit / "MANIFEST.tsv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


MANIFEST = {f"rfc4475/{r['name']}": r for r in _manifest("rfc4475")}
MANIFEST |= {f"rfc5118/{r['name']}": r for r in _manifest("rfc5118")}


def load(name: str) -> bytes:
    return by_name(name).path.read_bytes()


def parse(name: str) -> SipMessage:
    return parse_message(load(name), datagram=True)


def test_table_has_every_manifest_row_in_order() -> None:
    """expect_fmt: one row per MANIFEST row of both kits (49 + 12), in manifest order."""
    names = [row.name for row in EXPECTATIONS]
    assert names == list(MANIFEST)
    assert len(names) == 61 and len(set(names)) == 61
    for row in EXPECTATIONS:
        assert row.proxy in ("forward", "respond", "drop")
        assert (row.status is not None) == (row.proxy == "respond")
        assert row.reason and "\n" not in row.reason
        assert row.reason.startswith(("RFC 4475 3.", "RFC 5118 4."))
        assert row.path.is_file()
        if not row.is_request:
            assert row.proxy == "drop"  # responses never match a transaction here
        if not row.parse_ok and row.is_request:
            assert row.proxy == "respond"


@pytest.mark.parametrize("row", EXPECTATIONS, ids=[r.name for r in EXPECTATIONS])
def test_file_is_byte_exact(row: Expect) -> None:
    """RFC 4475 / 5118 READMEs: the files must not have been altered (CRLF, NULs, trailing SP)."""
    meta = MANIFEST[row.name]
    data = row.path.read_bytes()
    if row.name.startswith("rfc5118/"):
        assert len(data) == int(meta["wire_bytes"])
        assert hashlib.sha256(data).hexdigest() == meta["wire_sha256"]
    else:
        assert len(data) == int(meta["bytes"])
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]


@pytest.mark.parametrize("name", [n.split("/", 1)[1] for n in MANIFEST if n.startswith("rfc5118/")])
def test_rfc5118_archive_copy_is_byte_exact(name: str) -> None:
    """RFC 5118 README: the archive's own (LF) files are kept unchanged beside the wire copies."""
    meta = MANIFEST[f"rfc5118/{name}"]
    data = (KITS / "rfc5118" / f"{name}.dat").read_bytes()
    assert len(data) == int(meta["bytes"])
    assert hashlib.sha256(data).hexdigest() == meta["sha256"]


@pytest.mark.parametrize("row", EXPECTATIONS, ids=[r.name for r in EXPECTATIONS])
def test_parse_outcome_matches_table(row: Expect) -> None:
    """parse_message(datagram=True) (+ validate_request for requests) succeeds iff parse_ok;
    when it fails on a request, ParseError.status is the status the proxy answers with."""
    data = row.path.read_bytes()
    try:
        msg = parse_message(data, datagram=True)
        assert msg.is_request == row.is_request
        if msg.is_request:
            validate_request(msg)
    except ParseError as exc:
        assert not row.parse_ok, f"{row.name} must parse: {exc.message}"
        if row.proxy == "respond":
            assert exc.status == row.status
        return
    assert row.parse_ok, f"{row.name} must be refused"
    if row.proxy == "respond":
        # parse_ok with a status: the decision is the proxy's (483, 420, 416; 403 for a
        # stranger's preloaded Route to another host; 481 for a stranger's in-dialog request
        # of no dialog through the proxy), or the outcome of forwarding to a next hop that is
        # not there (500 unresolvable, 408 no answer)
        assert row.status in (483, 420, 416, 403, 481, 500, 408)


# ---- facts the manifests demand ----------------------------------------------------------------


def test_wsinv_unknown_headers_survive_rewrite_byte_identical() -> None:
    """RFC 4475 3.1.1.1: a proxy forwards unknown headers (UnknownHeaderWithUnusualValue,
    the folded NewFangledHeader) unchanged."""
    data = load("rfc4475/wsinv")
    msg = parse_message(data)
    assert msg.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    mf = msg.find("max-forwards")
    out = rewrite(msg, insert_top=["Via: SIP/2.0/UDP 192.0.2.200;branch=z9hG4bK-proxy"],
                  edits={mf: "Max-Forwards: 67"})
    assert b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in out
    assert b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n" in out
    head, _, tail = data.partition(b"MaX-fOrWaRdS: 0068\r\n")
    first, _, rest = head.partition(b"\r\n")
    assert out == (first + b"\r\nVia: SIP/2.0/UDP 192.0.2.200;branch=z9hG4bK-proxy\r\n" + rest
                   + b"Max-Forwards: 67\r\n" + tail)
    again = parse_message(out)
    assert again.max_forwards == 67 and len(again.vias) == 4
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.cseq == (9, "INVITE") and msg.max_forwards == 68
    assert msg.to_tag == "1918181833n" and msg.from_tag == "98asjd8"
    assert msg.contacts[0].params["q"] == "0.33"


def test_intmeth_unusual_characters() -> None:
    """RFC 4475 3.1.1.2: token method, quoted NUL/BEL/DEL, UTF-8 header value and param."""
    msg = parse("rfc4475/intmeth")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq == (139122385, msg.method)
    assert msg.to.display is not None and "\x00" in msg.to.display
    assert msg.from_tag == "_token~1'+`*%!-."
    assert isinstance(msg.uri, SipUri) and msg.uri.host == "example.com"
    assert msg.get("extensionHeader-!.%*+_`'~") is not None


def test_escnull_keeps_nul_escape_and_two_contacts() -> None:
    """RFC 4475 3.1.1.4: the AOR user keeps %00 (no truncation); two distinct Contacts."""
    msg = parse("rfc4475/escnull")
    to_uri = msg.to.uri
    assert isinstance(to_uri, SipUri)
    assert to_uri.user == "null-%00-null"
    assert unescape(to_uri.user) == "null-\x00-null"
    users = [c.uri.user for c in msg.contacts]  # type: ignore[union-attr]
    assert users == ["%00", "%00%00"]
    assert len({unescape(u) for u in users if u is not None}) == 2


def test_esc02_has_exactly_two_contact_values() -> None:
    """RFC 4475 3.1.1.5: 'C%6Fntact' is not Contact; the method is not REGISTER."""
    msg = parse("rfc4475/esc02")
    assert msg.method == "RE%47IST%45R" and msg.method != "REGISTER"
    assert [c.uri.aor for c in msg.contacts] == [  # type: ignore[union-attr]
        "alias1@host1.example.com", "alias3@host3.example.com",
    ]
    assert msg.get("c%6fntact") == "<sip:alias2@host2.example.com>"


def test_semiuri_user_part() -> None:
    """RFC 4475 3.1.1.9: the R-URI user is 'user;par=u%40example.net' (escaped as written),
    i.e. 'user;par=u@example.net' once unescaped; the host is example.com."""
    uri = parse("rfc4475/semiuri").uri
    assert isinstance(uri, SipUri)
    assert uri.user == "user;par=u%40example.net"
    assert unescape(uri.user) == "user;par=u@example.net"
    assert uri.host == "example.com" and uri.params == {}


def test_dblreq_raw_excludes_trailing_invite() -> None:
    """RFC 4475 3.1.1.8: octets after Content-Length are not part of the message."""
    data = load("rfc4475/dblreq")
    msg = parse_message(data)
    assert msg.method == "REGISTER" and msg.body == b""
    assert b"INVITE" not in msg.raw
    assert msg.raw == data[:data.index(b"\r\n\r\n") + 4]
    assert b"INVITE" not in rewrite(msg, insert_top=["Via: SIP/2.0/UDP p;branch=z9hG4bKx"])


def test_mpart01_body_is_content_length_octets() -> None:
    """RFC 4475 3.1.1.11: body framed by Content-Length, NUL/CR/LF octets intact."""
    data = load("rfc4475/mpart01")
    msg = parse_message(data)
    cl = msg.get("content-length")
    assert cl is not None and len(msg.body) == int(cl) == 553
    assert msg.body == data[-553:]
    assert b"\x00" in msg.body and msg.body.count(b"\n") > msg.body.count(b"\r\n")
    out = rewrite(msg, insert_top=["Via: SIP/2.0/UDP p;branch=z9hG4bKx"])
    assert out.endswith(b"\r\n\r\n" + msg.body)


def test_transports_via_list() -> None:
    """RFC 4475 3.1.1.10: five Vias with UDP, SCTP, TLS, an unknown token and TCP."""
    msg = parse("rfc4475/transports")
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert [v.host for v in msg.vias] == [f"t{i}.example.com" for i in range(1, 6)]


def test_longreq_parses_every_via() -> None:
    """RFC 4475 3.1.1.7: long header values and 34 Via values under many name spellings."""
    msg = parse("rfc4475/longreq")
    hosts = [v.host for v in msg.vias]
    assert hosts == [f"sip{i}.example.com" for i in range(33, 0, -1)] + ["host.example.com"]
    assert msg.vias[-1].received == "192.0.2.5"
    assert msg.vias[-1].branch is not None and msg.vias[-1].branch.endswith("branchvalue")
    assert len(msg.from_.params) == 3 and msg.from_tag is not None
    to_uri = msg.to.uri
    assert isinstance(to_uri, SipUri) and to_uri.port == 6000 and len(to_uri.params) == 3


def test_inv2543_body_is_rest_of_datagram() -> None:
    """RFC 4475 3.4.1: no Content-Length on UDP -> the body runs to the datagram end; no
    branch, no From tag, no Max-Forwards."""
    data = load("rfc4475/inv2543")
    msg = parse_message(data)
    assert msg.get("content-length") is None
    assert msg.body == data[msg.header_end:] and msg.body.startswith(b"v=0")
    assert msg.raw == data
    assert msg.top_via.branch is None and msg.from_tag is None and msg.max_forwards is None


def test_baddn_has_no_blank_line_yet_is_framed() -> None:
    """RFC 4475 3.1.2.15: the archive file ends without a blank line; the parser frames it and
    the failure is the display name (400), not the framing."""
    msg = parse("rfc4475/baddn")
    assert msg.header_end == len(msg.raw)
    with pytest.raises(ParseError) as err:
        msg.from_  # noqa: B018
    assert err.value.status == 400


def test_scalarlg_cseq_view_raises() -> None:
    """RFC 4475 3.1.2.5: the overlarge CSeq of this response is refused when examined."""
    msg = parse("rfc4475/scalarlg")
    with pytest.raises(ParseError):
        msg.cseq  # noqa: B018


def test_unknown_schemes() -> None:
    """RFC 4475 3.3.2-3.3.4: unknown schemes parse as absolute URIs (416 is the proxy's)."""
    assert isinstance(parse("rfc4475/unkscm").uri, AbsoluteUri)
    assert parse("rfc4475/novelsc").uri.scheme == "soap.beep"
    msg = parse("rfc4475/unksm2")
    assert isinstance(msg.to.uri, AbsoluteUri) and isinstance(msg.from_.uri, AbsoluteUri)
    assert isinstance(msg.contacts[0].uri, AbsoluteUri)


def test_zeromf_and_bext01_are_proxy_decisions() -> None:
    """RFC 4475 3.3.11 / 3.3.5: the parser reports the facts the proxy decides on."""
    assert parse("rfc4475/zeromf").max_forwards == 0
    assert parse("rfc4475/bext01").get_all("proxy-require") == [
        "noProxiesSupportThis, norDoAnyProxiesSupportThis",
    ]


def test_cparam_and_regescrt_contacts() -> None:
    """RFC 4475 3.3.12-3.3.14: contact-param vs url-parameter; escaped header inside <>."""
    c1 = parse("rfc4475/cparam01").contacts[0]
    assert c1.params == {"unknownparam": None} and not c1.bracketed
    c2 = parse("rfc4475/cparam02").contacts[0]
    assert c2.params == {} and isinstance(c2.uri, SipUri)
    assert c2.uri.params == {"unknownparam": None}
    c3 = parse("rfc4475/regescrt").contacts[0]
    assert isinstance(c3.uri, SipUri) and c3.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_bcast_second_via_is_broadcast() -> None:
    """RFC 4475 3.3.10: the parser exposes the broadcast sent-by for the proxy to refuse."""
    msg = parse("rfc4475/bcast")
    assert msg.status == 200 and msg.vias[1].sent_by() == ("255.255.255.255", 5060)


def test_port_ambiguous_host_has_no_port() -> None:
    """RFC 5118 4.3: '[2001:db8::10:5070]' is all host; no port."""
    uri = parse("rfc5118/port-ambiguous").uri
    assert isinstance(uri, SipUri)
    assert uri.host == "[2001:db8::10:5070]" and uri.port is None
    assert uri.host_port() == ("2001:db8::10:5070", 5060)


def test_port_unambiguous_host_and_port() -> None:
    """RFC 5118 4.4: host [2001:db8::10], port 5070."""
    uri = parse("rfc5118/port-unambiguous").uri
    assert isinstance(uri, SipUri)
    assert uri.host == "[2001:db8::10]" and uri.port == 5070
    assert uri.host_port() == ("2001:db8::10", 5070)


def test_ipv6_via_received_forms() -> None:
    """RFC 5118 4.5: received= with and without [ ]."""
    assert parse("rfc5118/via-received-param-with-delim").top_via.received == "[2001:db8::9:255]"
    assert parse("rfc5118/via-received-param-no-delim").top_via.received == "2001:db8::9:255"


def test_ipv6_multiple_addresses_and_mapped() -> None:
    """RFC 5118 4.7 / 4.9 / 4.10: mixed Via list, IPv4-mapped, 3-colon tolerance."""
    vias = parse("rfc5118/mult-ip-in-header").vias
    assert [(v.host, v.port) for v in vias] == [
        ("[2001:db8::9:1]", 6050), ("192.0.2.1", None), ("[2001:db8::9:255]", None),
    ]
    assert vias[2].received == "192.0.2.200"
    mapped = parse("rfc5118/ipv4-mapped-ipv6")
    assert mapped.top_via.sent_by() == ("::ffff:192.0.2.10", 19823)
    assert mapped.contacts[0].uri.host_port() == ("::ffff:192.0.2.2", 5060)  # type: ignore[union-attr]
    three = parse("rfc5118/ipv6-bug-abnf-3-colons").uri
    assert isinstance(three, SipUri) and three.host == "[2001:db8:::192.0.2.1]"


def test_rfc5118_sdp_bodies_match_content_length() -> None:
    """RFC 5118 4.6 / 4.8: the wire/ copies carry CRLF bodies matching Content-Length."""
    for name in ("rfc5118/ipv6-in-sdp", "rfc5118/mult-ip-in-sdp", "rfc5118/ipv4-mapped-ipv6"):
        msg = parse(name)
        assert len(msg.body) == int(msg.get("l") or -1) and msg.body.startswith(b"v=0\r\n")


def test_ipv6_bad_request_uri_is_refused() -> None:
    """RFC 5118 4.2: the parser itself accepts the frame; the Request-URI check gives 400."""
    msg = parse("rfc5118/ipv6-bad")
    with pytest.raises(ParseError) as err:
        msg.uri  # noqa: B018
    assert err.value.status == 400


def test_kits_live_in_the_repository() -> None:
    """The kits are the repository's own copy (tests/conformance/data), never a folder beside
    the clone: a user's clone has nothing beside it."""
    assert KITS == Path(__file__).resolve().parent / "data"
    assert (KITS / "rfc4475" / "MANIFEST.tsv").is_file()
    assert (KITS / "rfc5118" / "MANIFEST.tsv").is_file()
