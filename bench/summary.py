"""The summary of a bench/run.py run: per run, each series' line, its ratios to Kamailio,
memory at Kamailio's highest clean rate, the overload steps and the scaling of N processes or
N workers; with ``--repeat N``, every run's figures side by side and, per target, their
median: the figure of merit, since one run's clean limit moves by a third on a shared machine.

Medians (statistics.median: the middle value of an odd count, the mean of the two middle
ones of an even count) are taken over the runs that have the figure; a run with no clean
step counts 0 calls/s for the highest clean rate and nothing for the figures taken there.
The p99 ratio of the medians pairs, in each run, the proxy's p99 at half its clean rate with
Kamailio's at that same rate (same run, same source), then takes the median of each side.

Standard library only.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import (  # noqa: E402  (bench/ is not a package)
    SameRate,
    Series,
    Step,
    ceiling_text,
    fmt,
    latency_notes,
    memory_at,
    memory_line,
    overload_line,
    pct,
    ratio,
    ratio_line,
    same_rate,
    scale_lines,
    scale_of,
    summary_line,
)

__all__ = ["RunFigures", "Series", "Step", "figures", "median", "median_lines", "medians",
           "markdown_extra", "overload_table", "runs_table", "summary_lines"]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(slots=True)
class RunFigures:
    """One series' figures of merit (one target, one run)."""

    target: str
    run: int
    rate: int = 0  # highest clean rate; 0: no clean step
    cpu_us: float | None = None  # CPU per call there
    half_rate: int | None = None
    p99_half: float | None = None  # as shown: the capture's, else sipp's ticks
    half_captured: bool = False
    worst_p99: float | None = None  # the highest p99 of its clean steps
    worst_rate: int | None = None
    rss: float | None = None  # at its highest clean rate
    pss: float | None = None
    ctx_per_s: float | None = None  # context switches per s there
    sipp_pct: float | None = None  # sipp's CPU there, % of a core
    mem_rate: int | None = None  # Kamailio's highest clean rate in the same run
    mem_rss: float | None = None  # this target's RSS and PSS at that rate
    mem_pss: float | None = None
    mem_clean: bool | None = None
    pair: SameRate | None = None  # proxies: p99 at half its rate and Kamailio's at that rate
    overload: dict[float, Step] = field(default_factory=dict)


def figures(series: list[Series]) -> list[RunFigures]:
    out = []
    for s in series:
        f = RunFigures(s.target, s.run)
        best, half, worst = s.best, s.half, s.worst_p99
        if best is not None:
            f.rate, f.cpu_us, f.rss, f.pss = best.rate, best.cpu_per_call_us, best.rss_mib, \
                best.pss_mib
            f.ctx_per_s, f.sipp_pct = best.ctx_per_s, best.sipp_cpu_percent
        if half is not None:
            f.half_rate, f.p99_half, f.half_captured = half.rate, half.p99_ms, half.captured
        if worst is not None:
            f.worst_p99, f.worst_rate = worst.p99_ms, worst.rate
        kam = next((k for k in series if k.run == s.run and k.target == "kamailio"), None)
        if kam is not None:
            mem = memory_at(s, kam)
            if not isinstance(mem, str):
                f.mem_rate = mem[1].rate
                f.mem_rss, f.mem_pss, f.mem_clean = mem[0].rss_mib, mem[0].pss_mib, mem[0].clean
            if s.target.startswith("proxy"):
                pair = same_rate(s, kam)
                f.pair = None if isinstance(pair, str) else pair
        f.overload = {st.factor: st for st in s.overload if st.factor is not None}
        out.append(f)
    return out


def targets_in_order(figs: list[RunFigures]) -> list[str]:
    return list(dict.fromkeys(f.target for f in figs))


def runs_of(figs: list[RunFigures], target: str) -> list[RunFigures]:
    return [f for f in figs if f.target == target]


def listed(values: Iterable[float | None], spec: str) -> str:
    return ", ".join(fmt(v, spec) for v in values)


def ms_spec(captured: Iterable[bool]) -> str:
    return ".2f" if all(captured) else ".0f"


# --------------------------------------------------------------------------- tables


def runs_table(series: list[Series]) -> list[str]:
    """Every run's figures of merit, one row per target and run, and a median row per
    target: the highest clean rate, CPU per call there, p99 at half that rate, the worst p99
    of the clean steps, RSS/PSS there, RSS/PSS at Kamailio's highest clean rate, context
    switches and sipp's CPU there."""
    figs = figures(series)
    head = (f"{'every run':<18} {'run':>6} {'clean/s':>7} {'us/call':>7} "
            f"{'p99 ms at half':>18} {'worst p99 ms':>18} {'RSS/PSS':>9} "
            f"{'at kamailio clean':>22} {'ctxsw/s':>7} {'sipp %':>6}")
    rows = [head, "-" * len(head)]

    def row(target: str, run: str, f: RunFigures) -> str:
        spec = ".2f" if f.half_captured else ".0f"
        half = f"{fmt(f.p99_half, spec)} ({fmt(f.half_rate, 'd')}/s)"
        worst = f"{fmt(f.worst_p99, spec)} ({fmt(f.worst_rate, 'd')}/s)"
        mem = (f"{fmt(f.mem_rate, 'd')}/s: {fmt(f.mem_rss, '.0f')}/{fmt(f.mem_pss, '.0f')}"
               + ("" if f.mem_clean in (True, None) else "!"))
        return (f"{target:<18} {run:>6} {f.rate:>7} {fmt(f.cpu_us, '.0f'):>7} {half:>18} "
                f"{worst:>18} {fmt(f.rss, '.0f') + '/' + fmt(f.pss, '.0f'):>9} {mem:>22} "
                f"{fmt(f.ctx_per_s, '.0f'):>7} {fmt(f.sipp_pct, '.0f'):>6}")

    for target in targets_in_order(figs):
        mine = runs_of(figs, target)
        rows += [row(target, str(f.run), f) for f in mine]
        med = RunFigures(target, 0)
        med.rate = int(median(f.rate for f in mine) or 0)
        med.cpu_us = median(f.cpu_us for f in mine)
        med.half_rate = None
        med.p99_half = median(f.p99_half for f in mine)
        med.half_captured = all(f.half_captured for f in mine)
        med.worst_p99 = median(f.worst_p99 for f in mine)
        med.rss, med.pss = median(f.rss for f in mine), median(f.pss for f in mine)
        med.mem_rss, med.mem_pss = median(f.mem_rss for f in mine), median(f.mem_pss for f in mine)
        mem_rate = median(f.mem_rate for f in mine)
        med.mem_rate = None if mem_rate is None else round(mem_rate)
        med.ctx_per_s, med.sipp_pct = median(f.ctx_per_s for f in mine), median(
            f.sipp_pct for f in mine)
        rows.append(row(target, "median", med).replace("(-/s)", "     "))
    rows.append("(RSS/PSS in MiB; 'at kamailio clean': this target's RSS/PSS at Kamailio's "
                "highest clean rate of the same run, '!' when its step there was not clean)")
    return rows


def overload_table(series: list[Series]) -> list[str]:
    """The overload steps of every run: goodput, the 503s, the admitted calls' p99."""
    steps = [(s, st) for s in series for st in s.overload]
    if not steps:
        return []
    head = (f"{'overload':<18} {'run':>3} {'factor':>6} {'offered/s':>9} {'placed':>7} "
            f"{'goodput/s':>9} {'of clean':>8} {'503 %':>6} {'+RA %':>6} {'failed':>6} "
            f"{'unfin.':>6} {'p99 adm. ms':>11}")
    rows = [head, "-" * len(head)]
    for s, st in steps:
        base = s.best.rate if s.best is not None else 0
        spec = ".2f" if st.captured else ".0f"
        rows.append(f"{s.target:<18} {s.run:>3} {fmt(st.factor, 'g') + 'x':>6} {st.rate:>9} "
                    f"{st.invites:>7} {st.goodput_per_s:>9.0f} "
                    f"{fmt(st.goodput_per_s / base if base else None, '.2f'):>8} "
                    f"{pct(st.refused_share):>6} {pct(st.retry_after_share):>6} {st.failed:>6} "
                    f"{st.unfinished:>6} {fmt(st.p99_ms, spec):>11}")
    rows.append("(goodput: calls set up and torn down per second of the UACs' run, the step "
                "and any calls straggling after it; '503 %': share "
                "of the INVITEs placed answered 503, '+RA %' those with Retry-After; "
                "'unfin.': calls still open when the UAC stopped; p99 INVITE->200 of the "
                "admitted calls)")
    return rows


# --------------------------------------------------------------------------- medians


def median_target_line(target: str, mine: list[RunFigures]) -> str:
    n = len(mine)
    spec = ms_spec(f.half_captured for f in mine)
    label = "capture" if all(f.half_captured for f in mine) else "sipp ticks in some runs"
    halves = ", ".join(f"{fmt(f.p99_half, spec)} at {fmt(f.half_rate, 'd')}/s" for f in mine)
    mem = ""
    if any(f.mem_rate is not None for f in mine):
        mem = (f"; at kamailio's highest clean rate: RSS {fmt(median(f.mem_rss for f in mine), '.0f')}"
               f" MiB, PSS {fmt(median(f.mem_pss for f in mine), '.0f')} ("
               + ", ".join(f"{fmt(f.mem_rate, 'd')}/s: {fmt(f.mem_rss, '.0f')}/"
                           f"{fmt(f.mem_pss, '.0f')}" for f in mine) + ")")
    return (f"median of {n} runs, {target}: highest clean rate "
            f"{fmt(median(f.rate for f in mine), '.0f')} calls/s (runs: "
            f"{listed((f.rate for f in mine), 'd')}); CPU per call "
            f"{fmt(median(f.cpu_us for f in mine), '.0f')} µs ({listed((f.cpu_us for f in mine), '.0f')});"
            f" p99 at half its clean rate {fmt(median(f.p99_half for f in mine), spec)} ms "
            f"({halves}; {label}); worst p99 of its clean steps "
            f"{fmt(median(f.worst_p99 for f in mine), spec)} ms "
            f"({listed((f.worst_p99 for f in mine), spec)}); RSS/PSS at its highest clean rate "
            f"{fmt(median(f.rss for f in mine), '.0f')}/{fmt(median(f.pss for f in mine), '.0f')}"
            f" MiB{mem}; context switches there {fmt(median(f.ctx_per_s for f in mine), '.0f')}/s,"
            f" sipp {fmt(median(f.sipp_pct for f in mine), '.0f')}% of a core")


def median_ratio_line(proxy: list[RunFigures], kam: list[RunFigures]) -> str:
    """A proxy target against Kamailio, on the medians of the runs."""
    target, n = proxy[0].target, len(proxy)
    p_rate, k_rate = median(f.rate for f in proxy), median(f.rate for f in kam)
    p_cpu, k_cpu = median(f.cpu_us for f in proxy), median(f.cpu_us for f in kam)
    pairs = [f.pair for f in proxy if f.pair is not None]
    if pairs:
        captured = all(p.captured for p in pairs)
        spec = ".2f" if captured else ".0f"
        p99p, p99k = median(p.proxy_ms for p in pairs), median(p.kam_ms for p in pairs)
        each = ", ".join(f"{p.proxy_step.rate}/s {fmt(p.proxy_ms, spec)}/{fmt(p.kam_ms, spec)}"
                         for p in pairs)
        p99 = (f"p99 at the same rate {ratio(p99p, p99k)} ({target} {fmt(p99p, spec)} ms vs "
               f"kamailio {fmt(p99k, spec)} ms, medians of {len(pairs)} runs' pairs "
               f"(the proxy at half its clean rate, kamailio at that rate): {each}; "
               f"{'capture' if captured else 'sipp ticks'})")
    else:
        p99 = "p99 at the same rate n/a (no run had both steps clean at the proxy's half rate)"
    mem_rss = median(f.mem_rss for f in proxy)
    kam_pss = median(f.mem_pss for f in kam)
    mem = (f"memory at kamailio's highest clean rate {ratio(mem_rss, kam_pss)} ({target} RSS "
           f"{fmt(mem_rss, '.0f')} MiB vs kamailio PSS {fmt(kam_pss, '.0f')} MiB)")
    return (f"ratio {target}/kamailio, median of {n} runs: highest clean rate "
            f"{ratio(p_rate, k_rate)} ({fmt(p_rate, '.0f')} vs {fmt(k_rate, '.0f')} calls/s); "
            f"CPU per call {ratio(p_cpu, k_cpu)} ({fmt(p_cpu, '.0f')} vs {fmt(k_cpu, '.0f')} µs);"
            f" {p99}; {mem}")


def median_overload_lines(target: str, mine: list[RunFigures]) -> list[str]:
    lines = []
    factors = sorted({factor for f in mine for factor in f.overload})
    for factor in factors:
        steps = [(f, f.overload[factor]) for f in mine if factor in f.overload]
        of_clean = [st.goodput_per_s / f.rate if f.rate else None for f, st in steps]
        spec = ms_spec(st.captured for _, st in steps)

        def med(get: Callable[[Step], float | None], steps: list[tuple[RunFigures, Step]]
                = steps) -> float | None:
            return median(get(st) for _, st in steps)

        share = med(lambda st: st.refused_share)
        ra = med(lambda st: st.retry_after_share)
        lines.append(
            f"median of {len(steps)} runs, overload {target} at {factor:g}x: goodput "
            f"{fmt(med(lambda st: st.goodput_per_s), '.0f')} calls/s, "
            f"{fmt(median(of_clean), '.2f')} of its clean rate (runs: {listed(of_clean, '.2f')}); "
            f"answered 503 {pct(share)}%, with Retry-After {pct(ra)}%; p99 of the admitted "
            f"calls {fmt(med(lambda st: st.p99_ms), spec)} ms "
            f"({listed((st.p99_ms for _, st in steps), spec)})")
    return lines


def median_scale_lines(figs: list[RunFigures]) -> list[str]:
    lines = []
    for target in targets_in_order(figs):
        scale = scale_of(target)
        if scale is None or scale[1:] == (1, 1):
            continue
        one = next((t for t in targets_in_order(figs) if scale_of(t) == (scale[0], 1, 1)), None)
        if one is None:
            continue
        mine, ones = runs_of(figs, target), runs_of(figs, one)
        lines.append(
            f"ratio {target}/{one}, median of {len(mine)} runs: highest clean rate "
            f"{ratio(median(f.rate for f in mine), median(f.rate for f in ones))}; CPU per call "
            f"{ratio(median(f.cpu_us for f in mine), median(f.cpu_us for f in ones))}; at their "
            f"highest clean rates: context switches {fmt(median(f.ctx_per_s for f in mine), '.0f')}"
            f" vs {fmt(median(f.ctx_per_s for f in ones), '.0f')}/s, sipp "
            f"{fmt(median(f.sipp_pct for f in mine), '.0f')}% vs "
            f"{fmt(median(f.sipp_pct for f in ones), '.0f')}% of a core"
            + ceiling_text(median(f.rate for f in mine), median(f.cpu_us for f in mine),
                           median(f.sipp_pct for f in mine), max(scale[1], scale[2]),
                           median(f.rate for f in ones), median(f.cpu_us for f in ones),
                           median(f.sipp_pct for f in ones)))
    return lines


def median_lines(series: list[Series]) -> list[str]:
    figs = figures(series)
    lines = []
    for target in targets_in_order(figs):
        lines.append(median_target_line(target, runs_of(figs, target)))
    kam = runs_of(figs, "kamailio")
    for target in targets_in_order(figs):
        if target.startswith("proxy") and kam:
            lines.append(median_ratio_line(runs_of(figs, target), kam))
    for target in targets_in_order(figs):
        lines += median_overload_lines(target, runs_of(figs, target))
    return lines + median_scale_lines(figs)


def medians(series: list[Series]) -> dict[str, object]:
    """The medians per target, for summary.json."""
    figs = figures(series)
    out: dict[str, object] = {}
    for target in targets_in_order(figs):
        mine = runs_of(figs, target)
        pairs = [f.pair for f in mine if f.pair is not None]
        out[target] = {
            "runs": len(mine),
            "highest_clean_rate": median(f.rate for f in mine),
            "highest_clean_rates": [f.rate for f in mine],
            "cpu_per_call_us": median(f.cpu_us for f in mine),
            "p99_ms_at_half": median(f.p99_half for f in mine),
            "worst_p99_ms": median(f.worst_p99 for f in mine),
            "rss_mib": median(f.rss for f in mine),
            "pss_mib": median(f.pss for f in mine),
            "rss_mib_at_kamailio_rate": median(f.mem_rss for f in mine),
            "pss_mib_at_kamailio_rate": median(f.mem_pss for f in mine),
            "ctx_per_s": median(f.ctx_per_s for f in mine),
            "sipp_cpu_percent": median(f.sipp_pct for f in mine),
            "p99_ms_at_half_same_rate_pair": [median(p.proxy_ms for p in pairs),
                                              median(p.kam_ms for p in pairs)] if pairs else None,
            "overload": {
                f"{factor:g}": {
                    "goodput_per_s": median(f.overload[factor].goodput_per_s
                                            for f in mine if factor in f.overload),
                    "refused_share": median(f.overload[factor].refused_share
                                            for f in mine if factor in f.overload),
                    "retry_after_share": median(f.overload[factor].retry_after_share
                                                for f in mine if factor in f.overload),
                    "p99_ms_admitted": median(f.overload[factor].p99_ms
                                              for f in mine if factor in f.overload),
                }
                for factor in sorted({x for f in mine for x in f.overload})
            },
        }
    return out


# --------------------------------------------------------------------------- the summary


def summary_lines(series: list[Series]) -> list[str]:
    """Per run: each series, its ratios to Kamailio, memory at Kamailio's highest clean
    rate, the overload steps, N processes or workers against one; then every run's figures
    side by side and the medians (with more than one run), and what the latency is."""
    runs = max((s.run for s in series), default=1)
    lines: list[str] = []
    for run in range(1, runs + 1):
        in_run = [s for s in series if s.run == run]
        prefix = f"run {run}: " if runs > 1 else ""
        lines += [prefix + summary_line(s) for s in in_run]
        kam = next((s for s in in_run if s.target == "kamailio"), None)
        proxies = [s for s in in_run if s.target.startswith("proxy")]
        if kam is not None:
            lines += [prefix + ratio_line(s, kam) for s in proxies]
            lines += [prefix + memory_line(s, kam) for s in proxies]
        lines += [prefix + overload_line(s, st) for s in in_run for st in s.overload]
        lines += [prefix + line for line in scale_lines(in_run)]
    table = overload_table(series)
    if table:
        lines += [""] + table
    if runs > 1:
        lines += [""] + runs_table(series) + [""] + median_lines(series)
    return lines + latency_notes(series)


def markdown_extra(series: list[Series]) -> str:
    """What summary.md adds to report.markdown's table: the memory comparison and the
    overload steps of each run, and with more than one run every run's figures and the
    medians."""
    runs = max((s.run for s in series), default=1)
    lines: list[str] = []
    mem = []
    for run in range(1, runs + 1):
        in_run = [s for s in series if s.run == run]
        kam = next((s for s in in_run if s.target == "kamailio"), None)
        if kam is not None:
            mem += [("" if runs == 1 else f"run {run}: ") + memory_line(s, kam)
                    for s in in_run if s.target.startswith("proxy")]
    if mem:
        lines += ["", "Memory (RSS of the proxy against Kamailio's PSS, its workers sharing "
                      "one shm pool):", ""] + [f"- {line}" for line in mem]
    steps = [(s, st) for s in series for st in s.overload]
    if steps:
        lines += ["", "Overload steps (a multiple of the series' highest clean rate; goodput = "
                      "calls completed per second; 503 = share of the INVITEs answered 503):",
                  "", "| target | run | offered (calls/s) | goodput (calls/s) | of the clean "
                      "rate | 503 / with Retry-After | p99 of admitted calls (ms) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s, st in steps:
            base = s.best.rate if s.best is not None else 0
            spec = ".2f" if st.captured else ".0f"
            lines.append(f"| {s.target} | {s.run} | {st.rate} ({fmt(st.factor, 'g')}x) | "
                         f"{st.goodput_per_s:.0f} | "
                         f"{fmt(st.goodput_per_s / base if base else None, '.2f')} | "
                         f"{pct(st.refused_share)}% / {pct(st.retry_after_share)}% | "
                         f"{fmt(st.p99_ms, spec)} |")
    if runs > 1:
        lines += markdown_runs(series, runs)
    return "\n".join(lines) + "\n" if lines else ""


def markdown_runs(series: list[Series], runs: int) -> list[str]:
    """Every run's figures of merit and their medians, as a Markdown table."""
    figs = figures(series)
    lines = ["", f"Every run and the median of {runs} (highest clean rate; CPU per call there; "
                 "p99 INVITE→200 at half that rate; RSS / PSS at Kamailio's highest clean rate "
                 "of the same run):", "",
             "| target | run | clean calls/s | CPU µs/call | p99 at half (ms) | "
             "RSS / PSS at Kamailio's clean rate (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for target in targets_in_order(figs):
        mine = runs_of(figs, target)
        for f in mine:
            spec = ".2f" if f.half_captured else ".0f"
            lines.append(f"| {target} | {f.run} | {f.rate} | {fmt(f.cpu_us, '.0f')} | "
                         f"{fmt(f.p99_half, spec)} (at {fmt(f.half_rate, 'd')}/s) | "
                         f"{fmt(f.mem_rss, '.0f')} / {fmt(f.mem_pss, '.0f')} "
                         f"(at {fmt(f.mem_rate, 'd')}/s) |")
        spec = ms_spec(f.half_captured for f in mine)
        lines.append(f"| **{target}** | **median** | **{fmt(median(f.rate for f in mine), '.0f')}**"
                     f" | **{fmt(median(f.cpu_us for f in mine), '.0f')}** | "
                     f"**{fmt(median(f.p99_half for f in mine), spec)}** | "
                     f"**{fmt(median(f.mem_rss for f in mine), '.0f')} / "
                     f"{fmt(median(f.mem_pss for f in mine), '.0f')}** |")
    lines += [""] + [f"- {line}" for line in median_lines(series)]
    return lines
