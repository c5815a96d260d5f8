"""bench/run.py, bench/summary.py, bench/instructions.py: the overload steps' counting, the
medians of --repeat, the memory comparison, --workers, context switches and the instruction
counts of callgrind files. No sipp or proxy runs here: the inputs are files such runs wrote
(tests/unit/data/bench_uac_overload.csv: uac_rr_overload.xml against bench/uas_shed.xml,
200 calls/s for 3 s) or records built by hand."""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.unit import bench_modules

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"

run = bench_modules.load("run")
summ = bench_modules.load("summary")
instr = bench_modules.load("instructions")
Step, Series = summ.Step, summ.Series


# ------------------------------------------------------------------------------- overload


def test_overload_counters_from_a_sipp_stat_file() -> None:
    """uac_rr_overload.xml ends both kinds of call successfully: its counters tell them apart.
    The sample: 600 calls placed, the UAS turned 297 away with 503 + Retry-After."""
    stats = run.read_stat_csv(DATA / "bench_uac_overload.csv")
    step = Step("proxy", 200, 600, kind="overload", factor=2.0,
                successful=run.counter(stats, "SuccessfulCall(C)"),
                placed=run.counter(stats, "OutgoingCall(C)"), elapsed_s=3.0)
    run.add_overload_counters(step, stats)
    assert (step.successful, step.placed) == (600, 600)  # sipp: every call "successful"
    assert (step.completed, step.refused) == (303, 297)
    assert step.calls_done == 303
    assert step.goodput_per_s == pytest.approx(101.0)  # 303 calls in 3 s
    assert step.refused_share == pytest.approx(0.495)
    assert step.unfinished == 0
    step.refused_captured, step.refused_retry_after = 297, 290
    assert step.retry_after_share == pytest.approx(290 / 600)


def test_the_normal_scenario_has_no_overload_counters() -> None:
    stats = {"SuccessfulCall(C)": "1000", "OutgoingCall(C)": "1000"}
    step = Step("proxy", 100, 1000, successful=1000)
    run.add_overload_counters(step, stats)
    assert step.completed is None and step.refused is None
    assert step.calls_done == 1000 and step.completed_per_s == 100.0


def test_goodput_does_not_credit_calls_completed_late() -> None:
    """A collapse completes calls seconds after the step: the goodput is per second of the
    UACs' run (3 s offered, the UAC stopped after 18 s), not of the 3 s."""
    late = Step("proxy", 3000, 9000, kind="overload", placed=9000, completed=6184,
                elapsed_s=18.0)
    assert late.completed_per_s == pytest.approx(2061.3, abs=0.1)
    assert late.goodput_per_s == pytest.approx(6184 / 18)
    prompt = Step("proxy", 3000, 9000, kind="overload", completed=4500, elapsed_s=2.9)
    assert prompt.goodput_per_s == pytest.approx(1500.0)  # never above the offered window's


def test_unfinished_calls_are_those_neither_done_refused_nor_failed() -> None:
    step = Step("proxy", 400, 3200, kind="overload", placed=3200, completed=1800, refused=0,
                failed=200)
    assert step.unfinished == 1200


def test_overload_scenario_counts_what_run_py_reads_and_acks_the_503_on_the_invites_branch(
) -> None:
    """The counters' names are the columns run.py reads; the ACK of the 503 names the
    INVITE's branch (RFC 3261 17.1.1.3) by its distance in messages, [branch-N]."""
    root = ET.parse(REPO / "bench" / "uac_rr_overload.xml").getroot()
    messages = [el for el in root if el.tag in ("send", "recv", "pause", "nop")]
    counters = {el.get("counter") for el in messages if el.get("counter")}
    assert counters == {"refused", "completed"}
    refused = next(el for el in messages if el.get("response") == "503")
    assert refused.get("optional") == "true" and refused.get("next") == "refused"
    invite = next(i for i, el in enumerate(messages)
                  if el.tag == "send" and "INVITE sip:" in (el.text or ""))
    ack = next(i for i, el in enumerate(messages)
               if el.tag == "send" and "branch=[branch-" in (el.text or ""))
    assert f"branch=[branch-{ack - invite}]" in (messages[ack].text or "")
    labels = [el.get("id") for el in root if el.tag == "label"]
    assert labels == ["refused", "done"]


def test_overload_factors() -> None:
    assert run.overload_factors("1.5,2") == (1.5, 2.0)
    assert run.overload_factors("none") == () == run.overload_factors("")
    with pytest.raises(run.BenchError, match="above 1"):
        run.overload_factors("0.5")
    with pytest.raises(run.BenchError, match="factors"):
        run.overload_factors("twice")


def test_overload_line_reports_goodput_503s_and_the_admitted_p99() -> None:
    s = Series("proxy", [Step("proxy", r, r * 8, successful=r * 8, elapsed_s=8.0)
                         for r in (1600, 2400)] + [Step("proxy", 3200, 25600, failed=3)])
    st = Step("proxy", 4800, 38400, kind="overload", factor=2.0, placed=38400, completed=19200,
              refused=17280, refused_captured=17280, refused_retry_after=17280, p99_ms=42.5,
              latency_source="capture", elapsed_s=8.0)
    line = summ.overload_line(s, st)
    assert ("overload proxy at 2x its highest clean rate (4800/s offered, 38400 calls placed): "
            "goodput 2400 calls/s, 1.00 of 2400/s; answered 503 45.0%, with Retry-After 45.0%; "
            "failed 0, unfinished 1920; p99 INVITE->200 of the admitted calls 42.50 ms "
            "(capture)") in line
    table = "\n".join(summ.overload_table([Series("proxy", s.steps, overload=[st])]))
    assert "  2x      4800   38400      2400     1.00   45.0   45.0" in table


# ------------------------------------------------------------------------------- medians


def series_for(target: str, run_no: int, best: int, cpu_us: float, p99_half: float,
               rss: float = 100.0, pss: float = 90.0, top: int = 4000,
               rates: tuple[int, ...] = (800, 1200, 1600, 2000, 2400, 2800, 3200, 3600, 4000)
               ) -> Series:
    """A series clean up to `best` (p99 = p99_half at half of it, rising above), unclean at
    the next rate."""
    steps = []
    for rate in rates:
        if rate > top:
            break
        clean = rate <= best
        st = Step(target, rate, rate * 8, successful=rate * 8 if clean else rate * 4,
                  elapsed_s=8.0, cpu_s=cpu_us * rate * 8 / 1e6, latency_source="capture",
                  p99_ms=p99_half * rate / (best / 2), rss_mib=rss * rate / best,
                  pss_mib=pss * rate / best)
        steps.append(st)
        if not clean:
            break
    return Series(target, steps, run=run_no)


def three_runs() -> list[Series]:
    out = []
    for run_no, (kam, prox, p99k, p99p) in enumerate(
            [(2800, 3200, 3.0, 8.0), (2400, 2400, 2.0, 6.0), (3200, 3600, 4.0, 9.0)], 1):
        out.append(series_for("kamailio", run_no, kam, 250.0, p99k, rss=1184, pss=409))
        out.append(series_for("proxy", run_no, prox, 300.0, p99p, rss=543, pss=534))
    return out


def test_median_of_three_runs_per_target() -> None:
    lines = summ.median_lines(three_runs())
    proxy = next(line for line in lines if line.startswith("median of 3 runs, proxy:"))
    assert "highest clean rate 3200 calls/s (runs: 3200, 2400, 3600)" in proxy
    assert "CPU per call 300 µs" in proxy
    # p99 at half its clean rate: 8.00 at 1600/s, 6.00 at 1200/s, 9.00 at 1800/s -> 1800 is
    # not a rate: the nearest clean step to 1800 is 1600 (lower on a tie), 9*1600/1800
    assert "p99 at half its clean rate 8.00 ms (8.00 at 1600/s, 6.00 at 1200/s, 8.00 at 1600/s" \
        in proxy
    kam = next(line for line in lines if line.startswith("median of 3 runs, kamailio:"))
    assert "highest clean rate 2800 calls/s (runs: 2800, 2400, 3200)" in kam


def test_ratio_lines_use_the_medians() -> None:
    series = three_runs()
    ratio = next(line for line in summ.median_lines(series)
                 if line.startswith("ratio proxy/kamailio, median of 3 runs"))
    assert "highest clean rate 1.14 (3200 vs 2800 calls/s)" in ratio
    assert "CPU per call 1.20 (300 vs 250 µs)" in ratio
    # each run pairs the proxy's half-rate step with Kamailio's at that rate, same run:
    # run 1 1600/s: 8.00 vs 3*1600/1400; run 2 1200/s: 6.00 vs 2.00; run 3 1600/s 8.00 vs 2.00
    assert "p99 at the same rate" in ratio and "1200/s 6.00/2.00" in ratio
    assert ratio.count("/s ") >= 3
    # memory: the proxy's RSS at each run's Kamailio clean rate vs Kamailio's PSS there
    assert "memory at kamailio's highest clean rate" in ratio
    figs = summ.figures(series)
    proxy_mem = sorted(f.mem_rss for f in figs if f.target == "proxy")
    assert proxy_mem == pytest.approx(sorted([543 * 2800 / 3200, 543.0, 543 * 3200 / 3600]))


def test_a_run_without_a_clean_step_counts_zero_calls_per_second() -> None:
    series = three_runs()
    series[1] = Series("proxy", [Step("proxy", 800, 6400, failed=5)], run=1)  # run 1 failed
    figs = [f for f in summ.figures(series) if f.target == "proxy"]
    assert sorted(f.rate for f in figs) == [0, 2400, 3600]
    assert summ.median(f.rate for f in figs) == 2400
    assert summ.median(f.cpu_us for f in figs) == pytest.approx(300.0)  # of the 2 that have it
    assert summ.median([None, None]) is None


def test_every_run_and_the_medians_are_in_the_summary() -> None:
    text = "\n".join(summ.summary_lines(three_runs()))
    for run_no in (1, 2, 3):
        assert f"run {run_no}: proxy: highest clean rate" in text
        assert f"run {run_no}: ratio proxy/kamailio:" in text
        assert f"run {run_no}: memory proxy/kamailio" in text
    assert "every run" in text and "median" in text
    md = summ.markdown_extra(three_runs())
    assert "| **proxy** | **median** | **3200** | **300** |" in md


# ------------------------------------------------------------------------------- memory


def test_memory_compares_the_proxys_rss_with_kamailios_pss_at_its_clean_rate() -> None:
    kam = series_for("kamailio", 1, 2800, 250.0, 3.0, rss=1184, pss=409)
    proxy = series_for("proxy", 1, 2000, 300.0, 8.0, rss=400, pss=390)  # unclean at 2400
    proxy.memory = Step("proxy", 2800, 22400, kind="memory", successful=20000, failed=7,
                        rss_mib=543.0, pss_mib=534.0)
    line = summ.memory_line(proxy, kam)
    assert line == ("memory proxy/kamailio at kamailio's highest clean rate (2800/s): proxy RSS "
                    "543 MiB (PSS 534) vs kamailio PSS 409 MiB (RSS 1184): RSS/PSS 1.33; a step "
                    "added after proxy's series stopped at 2400/s; proxy's step there was not "
                    "clean")
    proxy.memory = None
    assert "n/a (proxy ran no step at 2800/s" in summ.memory_line(proxy, kam)


def test_memory_uses_the_series_step_when_the_proxy_reached_that_rate() -> None:
    kam = series_for("kamailio", 1, 2400, 250.0, 3.0, rss=1000, pss=400)
    proxy = series_for("proxy", 1, 3200, 300.0, 8.0, rss=320, pss=300)
    line = summ.memory_line(proxy, kam)
    assert "(2400/s): proxy RSS 240 MiB (PSS 225) vs kamailio PSS 400 MiB" in line
    assert "RSS/PSS 0.60" in line and "not clean" not in line


def test_kamailio_runs_first_by_default_so_the_proxy_knows_its_clean_rate() -> None:
    args = run.parse_args(["--kamailio"])
    assert run.choose_targets(args) == ["kamailio", "proxy"]
    assert run.choose_targets(run.parse_args(["--targets", "proxy,kamailio"])) == \
        ["proxy", "kamailio"]


# ------------------------------------------------------------------------------- workers


def test_workers_are_written_into_the_generated_config(tmp_path: Path) -> None:
    target = run.ProxyTarget(15060, 15070, "python3", tmp_path, None, workers=2)
    assert target.name == "proxy w2"
    assert "\nworkers: 2\n" in target.write_config().read_text()
    plain = run.ProxyTarget(15060, 15070, "python3", tmp_path / "p", None)
    assert "workers" not in plain.write_config().read_text()


def test_a_refused_workers_key_is_named() -> None:
    said = "proxy.yaml:14:1: unknown key 'workers'; allowed keys: listen, upstreams"
    hint = run.workers_hint(said, 2)
    assert "`workers: 2`" in hint and "refused it" in hint and "--workers" in hint
    assert run.workers_hint("proxy.yaml:3:1: bad listen", 2) == ""
    assert run.workers_hint(said, None) == ""


def test_scale_lines_compare_workers_with_one_and_show_context_switches() -> None:
    one = series_for("proxy w1", 1, 2400, 300.0, 8.0)
    two = series_for("proxy w2", 1, 2800, 330.0, 6.0)
    for st in one.steps + two.steps:
        st.ctx_voluntary, st.ctx_nonvoluntary, st.sipp_cpu_s = 800, 200, 4.0
    two.best.ctx_voluntary = 48000
    lines = summ.scale_lines([one, two])
    assert len(lines) == 1
    assert lines[0].startswith(
        "ratio proxy w2/proxy w1: highest clean rate 1.17; CPU per call 1.10; proxy w2 ctxsw "
        "6025/s, sipp 50% at 2800/s; proxy w1 ctxsw 125/s, sipp 50% at 2400/s; what ")
    assert "a ratio of at most" in lines[0]


def test_the_cpu_ceiling_of_n_workers_on_cores_shared_with_sipp() -> None:
    """One process is held to one core; N processes to the cores left by sipp."""
    ceiling = bench_modules.load("report").ceiling

    # one worker: 300 µs a call, sipp 50 % of a core at 2,400/s (208 µs a call): one core
    # is the limit, 3,333/s; two workers at 330 µs: both cores shared with sipp (179 µs a
    # call at 2,800/s): 2e6 / 508.6 = 3,933/s
    one = ceiling(2400, 300.0, 50.0, 1, cores=2)
    two = ceiling(2800, 330.0, 50.0, 2, cores=2)
    assert one is not None and two is not None
    assert round(one) == 3333 and round(two) == 3933
    assert round(two / one, 2) == 1.18
    assert ceiling(2400, 300.0, 50.0, 2, cores=4) == 2 * 1e6 / 300  # enough cores: N cores
    assert ceiling(0, 300.0, 50.0, 1) is None and ceiling(2400, None, 50.0, 1) is None
    assert summ.scale_of("proxy x2 w2+redis") == ("+redis", 2, 2)
    assert summ.scale_of("kamailio") is None


def test_context_switches_of_a_process_tree_sum_its_threads() -> None:
    vol, invol = run.proc_ctx_switches(os.getpid())
    status = Path("/proc/self/status").read_text()
    own = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    assert vol >= own > 0 and invol >= 0
    tree = run.tree_ctx_switches([os.getpid()])
    assert tree[0] >= vol
    assert run.proc_ctx_switches(2**22 + 12345) == (0, 0)  # no such process


# ------------------------------------------------------------------------------- callgrind


def callgrind_file(path: Path, pid: int, part: int, trigger: str, ir: int,
                   functions: tuple[str, ...] = ()) -> Path:
    """A callgrind output file as valgrind 3.19 writes one (name compression included)."""
    body = "".join(f"fn=({i + 10}) {name}\n0 5\ncfn=({i + 10})\ncalls=1 0\n0 3\n"
                   for i, name in enumerate(functions))
    path.write_text(
        "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\n"
        f"pid: {pid}\ncmd:  /usr/sbin/kamailio -DD -E -f k.cfg\npart: {part}\n\n\n"
        "desc: I1 cache: \ndesc: D1 cache: \ndesc: LL cache: \n\n"
        f"desc: Timerange: Basic block 1 - 2\ndesc: Trigger: {trigger}\n\n"
        f"positions: line\nevents: Ir\nsummary: {ir}\n\n\nob=(2) ???\nfl=(52) ???\n"
        "fn=(1) 0x0000000000130bd0\n0 203\n" + body + f"\ntotals: {ir}\n")
    return path


def test_instruction_counts_of_kamailios_processes(tmp_path: Path) -> None:
    files = [
        # two UDP workers: start-up + warm-up, then the measured part
        callgrind_file(tmp_path / "cg.11.1", 11, 1, "dump warm-up", 400_000, ("udp_rcv_loop",)),
        callgrind_file(tmp_path / "cg.11.2", 11, 2, "dump measured", 300_000_000,
                       ("qm_malloc", "udp_rcv_loop")),
        callgrind_file(tmp_path / "cg.12.1", 12, 1, "dump warm-up", 500_000),
        callgrind_file(tmp_path / "cg.12.2", 12, 2, "dump measured", 290_000_000,
                       ("udp_rcv_loop",)),
        # a timer process, and the main process (nothing after start-up)
        callgrind_file(tmp_path / "cg.13.1", 13, 1, "dump warm-up", 28_000_000),
        callgrind_file(tmp_path / "cg.13.2", 13, 2, "dump measured", 1_500_000),
        callgrind_file(tmp_path / "cg.10.2", 10, 2, "dump measured", 0),
        # written at exit, after the measured dump: not counted
        callgrind_file(tmp_path / "cg.13", 13, 3, "Program termination", 9_999),
    ]
    parsed = [instr.read_callgrind(f) for f in files]
    assert parsed[1].pid == 11 and parsed[1].part == 2 and parsed[1].trigger == "dump measured"
    assert parsed[1].instructions == 300_000_000 and parsed[1].functions == {"udp_rcv_loop"}
    c = instr.count(parsed, "kamailio", 300)
    assert c.by_pid == {10: 0, 11: 300_000_000, 12: 290_000_000, 13: 1_500_000}
    assert c.workers == {11, 12}
    assert c.warmup == 400_000 + 500_000 + 28_000_000
    assert c.per_call == pytest.approx(591_500_000 / 300)
    assert c.workers_per_call == pytest.approx(590_000_000 / 300)
    line = instr.count_lines(c, "kamailio 5.6.3")[0]
    assert line.startswith("kamailio: 300 calls: 591,500,000 instructions, 1,972k per call, 4 "
                           "processes (UDP workers 1,967k per call in 2; the 2 others")
    proxy = instr.Count("proxy", 300, {20: 253_668_316})
    assert instr.ratio_lines(proxy, c) == [
        "ratio proxy/kamailio, instructions per call: 0.43 (846k vs 1,972k, every process of "
        "each)", "ratio proxy/kamailio's UDP workers alone: 0.43"]


def test_a_file_that_is_not_callgrinds_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "cg.1"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="no summary"):
        instr.read_callgrind(bad)


def test_per_call_sockets_give_the_uac_a_source_port_per_call(tmp_path: Path) -> None:
    """The kernel spreads a worker group's datagrams by source: --per-call-sockets makes the
    UAC send each call from its own socket (sipp -t un), and only the UAC."""
    ports = [run.free_udp_ports(41000 + 10 * i, 1, set()) for i in range(3)]
    target = run.Target([ports[0]])
    target.name = "proxy w2"
    opts = run.Options(sipp="sipp", uac_xml=Path("uac.xml"), uas_xml=Path("uas.xml"),
                       uas_ports=[ports[1]], uac_ports=[ports[2]], duration=1, settle=0.0,
                       control_port=42000, uac_transport=("-t", "un", "-max_socket", "10000"))
    (pair,) = run.sipp_pairs(target, 10, opts, tmp_path)
    uac = " ".join(pair.uac_cmd)
    assert " -t un -max_socket 10000 " in uac
    assert "-t" not in pair.uas_cmd
    plain = dataclasses.replace(opts, uac_transport=())
    (pair,) = run.sipp_pairs(target, 10, plain, tmp_path)
    assert "-t" not in pair.uac_cmd


def test_per_call_sockets_need_no_capture(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--per-call-sockets", "--results", str(tmp_path)]) == 2
    assert "--per-call-sockets needs --no-capture" in capsys.readouterr().err
