"""bench/hostile.py's pieces that touch no network: choosing attacks, the SIP bytes it builds
and reads, digest answers, the /metrics text, RSS samples, sipvicious tables and the report.
No proxy, PBX or flood runs here."""

from __future__ import annotations

import pytest

from tests.unit import bench_modules

sip = bench_modules.load("hostile_sip")
peers = bench_modules.load("hostile_peers")
hostile = bench_modules.load("hostile")


# ------------------------------------------------------------------------------- options


def test_attacks_by_id_name_group_and_all_in_the_issues_order() -> None:
    assert sip.parse_attacks("8,relay") == ["1", "8"]
    assert sip.parse_attacks("7") == ["7a", "7b", "7c"]
    assert sip.parse_attacks("cancel, 2") == ["2", "7b"]
    assert sip.parse_attacks("all") == [a[0] for a in sip.ATTACKS]
    assert len(sip.parse_attacks("all")) == 12


@pytest.mark.parametrize("text", ["11", "nope", "", " , "])
def test_an_unknown_or_empty_choice_is_refused_with_the_known_ones(text: str) -> None:
    with pytest.raises(ValueError) as err:
        sip.parse_attacks(text)
    if text.strip(" ,"):
        assert "7b (cancel)" in str(err.value)


def test_every_attack_has_a_function_and_the_options_are_checked() -> None:
    assert set(hostile.ATTACK_FUNCS) == {a[0] for a in sip.ATTACKS}
    args = hostile.parse_args(["--attacks", "4,8", "--scale", "0.1", "--settle", "0"])
    assert (args.ids, args.scale, args.after, args.settle) == (["4", "8"], 0.1, 60.0, 0)
    with pytest.raises(SystemExit):
        hostile.parse_args(["--scale", "0"])
    with pytest.raises(SystemExit):
        hostile.parse_args(["--attacks", "12"])


# ------------------------------------------------------------------------------- messages


def test_a_request_round_trips_and_compact_headers_read_as_long_ones() -> None:
    data = sip.build_request("INVITE", "sip:bob@example.com", call_id="c1", via_host="127.0.0.2",
                             via_port=5062, from_uri="sip:a@x", to_uri="sip:bob@example.com",
                             to_tag="t9", cseq=7, branch="z9hG4bKb1",
                             headers=["Route: <sip:tok@127.0.0.1;lr;d=ab>, <sip:p@h;lr>"])
    msg = sip.parse_msg(data)
    assert msg is not None
    assert (msg.method, msg.status, msg.call_id, msg.cseq) == ("INVITE", None, "c1", (7, "INVITE"))
    assert msg.tag("to") == "t9" and msg.tag("from") == "h1"
    assert msg.get_all("route") == ["<sip:tok@127.0.0.1;lr;d=ab>", "<sip:p@h;lr>"]
    assert "branch=z9hG4bKb1;rport" in (msg.get("via") or "")
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    compact = sip.parse_msg(b"SIP/2.0 481 Gone\r\ni: c2\r\nv: SIP/2.0/UDP h\r\nt: <sip:x>;tag=q"
                            b"\r\nl: 0\r\n\r\n")
    assert compact is not None
    assert (compact.status, compact.call_id, compact.get("via"), compact.tag("to")) == \
        (481, "c2", "SIP/2.0/UDP h", "q")
    assert sip.parse_msg(b"\r\n\r\n") is None


def test_a_response_copies_every_via_and_adds_the_to_tag_once() -> None:
    req = sip.parse_msg(b"INVITE sip:a SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bK1, "
                        b"SIP/2.0/UDP c;branch=z9hG4bK2\r\nFrom: <sip:c>;tag=f\r\nTo: <sip:a>\r\n"
                        b"Call-ID: k\r\nCSeq: 3 INVITE\r\n\r\n")
    assert req is not None
    resp = sip.parse_msg(sip.build_response(req, 200, "OK", to_tag="pbx1",
                                            headers=["Record-Route: <sip:p;lr>"]))
    assert resp is not None
    assert resp.get_all("via") == ["SIP/2.0/UDP p;branch=z9hG4bK1", "SIP/2.0/UDP c;branch=z9hG4bK2"]
    assert (resp.status, resp.tag("to"), resp.cseq) == (200, "pbx1", (3, "INVITE"))
    again = sip.parse_msg(sip.build_response(resp, 200, "OK", to_tag="other"))
    assert again is not None and again.tag("to") == "pbx1"


def test_quick_status_reads_status_and_call_id_of_a_response_only() -> None:
    assert sip.quick_status(b"SIP/2.0 503 Busy\r\nVia: x\r\nCall-ID: atk-7\r\n\r\n") == \
        (503, b"atk-7")
    assert sip.quick_status(b"SIP/2.0 481 No\r\ni: atk-8 \r\n\r\n") == (481, b"atk-8")
    assert sip.quick_status(b"INVITE sip:x SIP/2.0\r\n\r\n") == (0, b"")


def test_a_flood_template_numbers_call_id_branch_and_to_tag() -> None:
    text = hostile.template("INVITE", "sip:+1900@127.0.0.3:9", headers=("Route: <sip:t@p;lr>",),
                            call_prefix="relay")
    one = sip.parse_msg(peers._message({"template": text}, 41))
    assert one is not None
    assert one.call_id == "relay-41" and one.tag("to") == "x41"
    assert "branch=z9hG4bKrelay41;" in (one.get("via") or "")
    assert one.get("route") == "<sip:t@p;lr>"


def test_a_digest_flood_answers_with_growing_nonce_counts_and_numbered_passwords() -> None:
    text = hostile.template("REGISTER", "sip:example.net", to_tag=None, headers=("@AUTH@",))
    digest = {"user": "alice", "realm": "example.net", "password": "guess-@N@",
              "method": "REGISTER", "uri": "sip:example.net", "nonce": "n0", "nc": 1}
    msg = sip.parse_msg(peers._message({"template": text, "digest": digest}, 4))
    assert msg is not None
    auth = sip.parse_challenge(msg.get("authorization") or "")
    assert (auth["nc"], auth["nonce"], auth["username"]) == ("00000005", "n0", "alice")
    assert auth["response"] == sip.digest_response("alice", "example.net", "guess-4", "REGISTER",
                                                   "sip:example.net", "n0", 5, "bench")


# ------------------------------------------------------------------------------- digest


def test_digest_response_is_rfc_2617s_example() -> None:
    """RFC 2617 3.5: Mufasa, "Circle Of Life", qop=auth, nc 00000001, cnonce 0a4f113b."""
    assert sip.digest_response("Mufasa", "testrealm@host.com", "Circle Of Life", "GET",
                               "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093", 1,
                               "0a4f113b") == "6629fae49393a05397450978507c4ef1"
    sha = sip.digest_response("u", "r", "p", "REGISTER", "sip:r", "n", 1, "c", "SHA-256")
    assert len(sha) == 64


def test_a_challenge_is_read_with_quoted_and_bare_values() -> None:
    ch = sip.parse_challenge('Digest realm="example.net", nonce="a,b", algorithm=SHA-256, '
                             'qop="auth", stale=true')
    assert ch == {"scheme": "Digest", "realm": "example.net", "nonce": "a,b",
                  "algorithm": "SHA-256", "qop": "auth", "stale": "true"}


# ------------------------------------------------------------------------------- metrics


METRICS = """# HELP sip_policy_proxy_refusals_total Requests refused
# TYPE sip_policy_proxy_refusals_total counter
sip_policy_proxy_refusals_total{reason="unproven"} 500.0
sip_policy_proxy_refusals_total{reason="rate"} 3.0
sip_policy_proxy_connections{state="open",transport="tcp"} 12.0
sip_policy_proxy_connections{state="handshake",transport="tcp"} 3.0
sip_policy_proxy_connections{state="open",transport="tls"} 1.0
sip_policy_proxy_transactions 4.0
"""


def test_metrics_are_read_and_summed_over_the_labels_not_asked_for() -> None:
    m = sip.parse_metrics(METRICS)
    assert sip.metric(m, "refusals_total", reason="unproven") == 500
    assert sip.metric(m, "refusals_total") == 503
    assert sip.metric(m, "connections", transport="tcp") == 15
    assert sip.metric(m, "sip_policy_proxy_transactions") == 4
    assert sip.metric(m, "refusals_total", reason="loop") == 0


# ------------------------------------------------------------------------------- figures


def test_percentile_and_the_time_rss_came_back_for_good() -> None:
    assert sip.percentile([], 50) is None
    assert sip.percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert sip.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    idle = 50.0
    assert sip.back_within([(0, 80.0), (1, 59.0), (2, 61.0), (3, 55.0), (4, 54.0)], idle) == 3
    assert sip.back_within([(0, 58.0), (1, 59.0)], idle) == 0
    assert sip.back_within([(0, 58.0), (1, 90.0)], idle) is None
    assert sip.back_within([], idle) is None


def test_sipvicious_tables_are_read_row_by_row() -> None:
    text = """+-----------+----------------+
| Extension | Authentication |
+===========+================+
| 1001      | noauth         |
+-----------+----------------+
| 1002      | weird          |
+-----------+----------------+
WARNING:root:found nothing"""
    assert hostile.sv_table(text) == {"1001": "noauth", "1002": "weird"}
    assert hostile.sv_table("| SIP Device | User Agent |\n| 127.0.0.1:5 | unknown |") == \
        {"127.0.0.1:5": "unknown"}
    assert hostile.sv_table("found nothing") == {}


def test_the_report_checks_both_done_criteria_per_attack() -> None:
    good = sip.AttackResult("1", "relay", idle_mib=40, peak_mib=50, after_mib=41, back_s=2,
                            watched_s=6, cpu_pct=35, attack_s=5.2,
                            latencies_ms=[1.0, 2.0, 150.0], outcome=["0 of 5,000 reached"])
    slow = sip.AttackResult("7a", "tls", idle_mib=40, peak_mib=300, after_mib=45, back_s=9,
                            watched_s=14, latencies_ms=[3.0, 1680.5], calls_failed=1,
                            holes=["legit call 1680 ms"])
    leak = sip.AttackResult("7b", "cancel", idle_mib=40, peak_mib=90, after_mib=80, back_s=None,
                            watched_s=60, latencies_ms=[2.0])
    broken = sip.AttackResult("9", "hijack", error="BenchError: bob could not register")
    assert good.memory_ok() and good.latency_ok() and good.p50_ms == 2.0 and good.max_ms == 150.0
    assert slow.memory_ok() and not slow.latency_ok()
    assert not leak.memory_ok() and leak.latency_ok()
    text = sip.format_report([good, slow, leak, broken], ["header line"])
    assert text.startswith("header line")
    rows = {line.split()[0] + line.split()[1]: line for line in text.splitlines()
            if line[:2] in ("1 ", "7a", "7b", "9 ")}
    assert rows["1relay"].endswith("mem ok, call ok") and " 3/3 " in rows["1relay"]
    assert rows["7atls"].endswith("mem ok, call NO") and " 2/3 " in rows["7atls"]
    assert "1680.5" in rows["7atls"]
    assert rows["7bcancel"].endswith("mem NO, call ok")
    assert "error: BenchError" in rows["9hijack"]
    assert "  HOLE: legit call 1680 ms" in text
    assert "  0 of 5,000 reached" in text
    assert "not back within 20 % of idle" in text
    assert text.splitlines()[-1] == ("done criteria: RSS back within 20 % of idle within 60 s: "
                                     "2 of 3; every legitimate call during the attack within "
                                     "200 ms: 2 of 3")
