"""Results of bench/run.py: the step and series records, the text table and summary lines,
the latency files sipp writes, the PNG plot (matplotlib, optional) and the Markdown table.

Latency (INVITE->200) comes from a packet capture when there is one (bench/capture.py:
microsecond timestamps), else from sipp's -trace_rtt files (whole ticks of a 4 ms clock).

Standard library only; matplotlib is imported by plot() alone, and only when it is called.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CLOCK_MONOTONIC_COARSE = 6  # Linux clock id; sipp times responses with it


def sipp_clock_ms() -> float | None:
    """The resolution of sipp's clock (CLOCK_MONOTONIC_COARSE: one kernel tick), in ms."""
    try:
        return time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1000
    except OSError:
        return None


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Step:
    """One rate step against one target (N proxies: the totals over the N)."""

    target: str  # "proxy", "proxy x2", "kamailio", "direct"
    rate: int  # calls/s offered in total
    offered: int
    successful: int = 0
    failed: int = 0
    retrans_uac: int = 0
    retrans_uas: int = 0
    unexpected: int = 0  # UAC out-of-call + dead-call messages (e.g. a 180 after the 200)
    elapsed_s: float = 0.0
    cpu_s: float | None = None  # the target's CPU time over the step; None: no target process
    sipp_cpu_s: float | None = None  # the sipp UACs' and UASes' CPU time over the step
    sipp_rc: int = 0  # the first non-zero UAC exit status, else 0
    # INVITE -> 200 as shown (table, summary, ratio, plot): the capture's when there is one.
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    latency_source: str = "sipp"  # "capture" (tcpdump, µs) or "sipp" (whole clock ticks)
    latency_samples: int = 0
    # sipp's own figures (response time 1 of uac_rr.xml, -trace_rtt): whole clock ticks, and
    # biased low: sipp places calls just after its clock ticks (sipp->sipp: 0 for ~1.1 ms).
    sipp_p50_ms: float | None = None
    sipp_p99_ms: float | None = None
    sipp_mean_ms: float | None = None
    sipp_rtt_samples: int = 0
    capture_dropped: int | None = None  # tcpdump's "packets dropped by kernel"
    tcpdump_cpu_s: float | None = None  # tcpdump's CPU time (counted neither as target nor sipp)
    rss_mib: float | None = None  # sum of VmRSS of the target's processes at the step's end
    pss_mib: float | None = None  # sum of Pss (shared pages split): Kamailio's shm counted once
    # What the step is: "series" (the stepped series), "memory" (run at another target's
    # highest clean rate after this series stopped short of it), "overload" (factor times
    # the series' highest clean rate, with uac_rr_overload.xml).
    kind: str = "series"
    factor: float | None = None  # overload: the multiple of the highest clean rate
    placed: int = 0  # calls the UACs placed (sipp OutgoingCall(C))
    # uac_rr_overload.xml's counters (None with uac_rr.xml): calls set up and torn down, and
    # INVITEs answered 503; sipp counts both as successful calls.
    completed: int | None = None
    refused: int | None = None
    # From the capture: calls whose INVITE was answered 503, and those with Retry-After.
    refused_captured: int | None = None
    refused_retry_after: int | None = None
    # Context switches of the target's threads over the step (/proc/PID/task/TID/status).
    ctx_voluntary: int | None = None
    ctx_nonvoluntary: int | None = None

    @property
    def clean(self) -> bool:
        return (
            self.sipp_rc == 0
            and self.failed == 0
            and self.retrans_uac == 0
            and self.retrans_uas == 0
            and self.successful == self.offered
        )

    @property
    def calls_done(self) -> int:
        """Calls set up and torn down: the overload scenario's own count, else sipp's
        successful calls (uac_rr.xml has no other way to succeed)."""
        return self.successful if self.completed is None else self.completed

    @property
    def completed_per_s(self) -> float:
        """Calls completed per second of offered load (calls done / step duration)."""
        return self.rate * self.calls_done / self.offered if self.offered else 0.0

    @property
    def goodput_per_s(self) -> float:
        """Calls completed per second of the UACs' run: the step's duration, longer when calls
        straggle (a collapse is not credited with calls it completes seconds late; the UACs
        of an overload step are stopped 15 s after its end). completed_per_s without a run
        time (records built by hand)."""
        if self.elapsed_s <= 0:
            return self.completed_per_s
        return self.calls_done / max(self.elapsed_s, self.offered / self.rate if self.rate else 0)

    @property
    def invites(self) -> int:
        """INVITEs placed (new calls), for the shares of an overload step."""
        return self.placed or self.offered

    def share(self, count: int | None) -> float | None:
        """count as a share (0..1) of the calls placed."""
        return None if count is None or not self.invites else count / self.invites

    @property
    def refused_share(self) -> float | None:
        """Share of the INVITEs answered 503: sipp's counter, else the capture's count."""
        return self.share(self.refused if self.refused is not None else self.refused_captured)

    @property
    def retry_after_share(self) -> float | None:
        """Share of the INVITEs answered 503 with Retry-After (needs the capture)."""
        return self.share(self.refused_retry_after)

    @property
    def unfinished(self) -> int:
        """Calls placed that neither completed, were refused nor failed: still open when the
        UAC was stopped (a collapse)."""
        return max(0, self.invites - self.calls_done - (self.refused or 0) - self.failed)

    @property
    def ctx_per_s(self) -> float | None:
        """Context switches (voluntary + involuntary) per second of the step."""
        if self.ctx_voluntary is None or self.ctx_nonvoluntary is None or self.elapsed_s <= 0:
            return None
        return (self.ctx_voluntary + self.ctx_nonvoluntary) / self.elapsed_s

    @property
    def cpu_per_call_us(self) -> float | None:
        if self.cpu_s is None or self.successful == 0:
            return None
        return self.cpu_s * 1e6 / self.successful

    def _of_one_core(self, cpu_s: float | None) -> float | None:
        """CPU seconds over the step as a percentage of one core."""
        if cpu_s is None or self.elapsed_s <= 0:
            return None
        return 100.0 * cpu_s / self.elapsed_s

    @property
    def cpu_percent(self) -> float | None:
        return self._of_one_core(self.cpu_s)

    @property
    def sipp_cpu_percent(self) -> float | None:
        return self._of_one_core(self.sipp_cpu_s)

    @property
    def tcpdump_cpu_percent(self) -> float | None:
        return self._of_one_core(self.tcpdump_cpu_s)

    @property
    def captured(self) -> bool:
        return self.latency_source == "capture"

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(clean=self.clean, cpu_per_call_us=self.cpu_per_call_us,
                   cpu_percent=self.cpu_percent, sipp_cpu_percent=self.sipp_cpu_percent,
                   tcpdump_cpu_percent=self.tcpdump_cpu_percent,
                   completed_per_s=self.completed_per_s, goodput_per_s=self.goodput_per_s,
                   calls_done=self.calls_done,
                   refused_share=self.refused_share, retry_after_share=self.retry_after_share,
                   unfinished=self.unfinished, ctx_per_s=self.ctx_per_s)
        return out


@dataclass(slots=True)
class Series:
    target: str
    steps: list[Step] = field(default_factory=list)  # the last attempt at each rate
    retried: list[Step] = field(default_factory=list)  # unclean attempts that were run again
    run: int = 1  # which of the --repeat runs
    memory: Step | None = None  # the step at another target's highest clean rate, if apart
    overload: list[Step] = field(default_factory=list)  # factor x the highest clean rate

    @property
    def label(self) -> str:
        return f"{self.target} #{self.run}"

    def step_at(self, rate: int) -> Step | None:
        """The series step at rate, else the memory step at rate."""
        for step in self.steps:
            if step.rate == rate:
                return step
        return self.memory if self.memory is not None and self.memory.rate == rate else None

    @property
    def clean_steps(self) -> list[Step]:
        """The steps up to and including the highest clean one."""
        best = self.best
        return [] if best is None else self.steps[: self.steps.index(best) + 1]

    @property
    def worst_p99(self) -> Step | None:
        """The clean step with the highest p99 (None: no clean step or no latency)."""
        with_p99 = [st for st in self.clean_steps if st.p99_ms is not None]
        return max(with_p99, key=lambda st: st.p99_ms or 0.0) if with_p99 else None

    @property
    def best(self) -> Step | None:
        """The highest-rate clean step before the first unclean one."""
        best = None
        for step in self.steps:
            if not step.clean:
                break
            best = step
        return best

    @property
    def half(self) -> Step | None:
        """The clean step whose rate is nearest half the highest clean rate (lower on a tie)."""
        best = self.best
        if best is None:
            return None
        clean = self.steps[: self.steps.index(best) + 1]
        return min(clean, key=lambda st: (abs(st.rate - best.rate / 2), st.rate))

    def as_dict(self) -> dict[str, object]:
        best, half, worst = self.best, self.half, self.worst_p99
        return {
            "target": self.target,
            "run": self.run,
            "highest_clean_rate": best.rate if best else None,
            "cpu_per_call_us": best.cpu_per_call_us if best else None,
            "rss_mib": best.rss_mib if best else None,
            "sipp_cpu_percent": best.sipp_cpu_percent if best else None,
            "half_rate": half.rate if half else None,
            "p50_ms_at_half": half.p50_ms if half else None,
            "p99_ms_at_half": half.p99_ms if half else None,
            "latency_source_at_half": half.latency_source if half else None,
            "sipp_p99_ms_at_half": half.sipp_p99_ms if half else None,
            "worst_p99_ms": worst.p99_ms if worst else None,
            "worst_p99_rate": worst.rate if worst else None,
            "ctx_per_s": best.ctx_per_s if best else None,
            "steps": [st.as_dict() for st in self.steps],
            "retried": [st.as_dict() for st in self.retried],
            "memory_step": self.memory.as_dict() if self.memory else None,
            "overload": [st.as_dict() for st in self.overload],
        }


# --------------------------------------------------------------------------- latency


def read_rtt(paths: list[Path], rtd: str = "1") -> list[float]:
    """Response times (ms) of timer `rtd` from sipp -trace_rtt files (Date_ms;response_time_ms;rtd_no)."""
    samples: list[float] = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            cols = line.strip().split(";")
            if len(cols) >= 3 and cols[2] == rtd:
                try:
                    samples.append(float(cols[1]))
                except ValueError:
                    continue
    return samples


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency(samples: list[float]) -> tuple[float | None, float | None, float | None]:
    """(p50, p99, mean) in ms."""
    values = sorted(samples)
    mean = sum(values) / len(values) if values else None
    return percentile(values, 50), percentile(values, 99), mean


# --------------------------------------------------------------------------- text


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fmt_ms(st: Step, value: float | None, mean: bool = False) -> str:
    """A latency of st: 2 decimals from a capture; whole ticks (a mean: 1 decimal) from sipp."""
    return fmt(value, ".2f" if st.captured else ".1f" if mean else ".0f")


def source_label(st: Step) -> str:
    return "capture" if st.captured else "sipp ticks"


def step_kind(st: Step) -> str:
    """'' for a series step, 'mem' for a memory step, '1.5x' for an overload step."""
    if st.kind == "overload":
        return f"{st.factor:g}x" if st.factor is not None else "ovl"
    return "mem" if st.kind == "memory" else ""


def pct(share: float | None) -> str:
    return fmt(None if share is None else 100 * share, ".1f")


def step_line(st: Step) -> str:
    """The progress line printed after each step."""
    if st.captured:
        lat = (f"p50/p99 {fmt_ms(st, st.p50_ms)}/{fmt_ms(st, st.p99_ms)} ms (capture"
               + ("" if st.latency_samples == st.calls_done else
                  f", {st.latency_samples} calls")
               + (f", {st.capture_dropped} dropped" if st.capture_dropped else "")
               + f"; sipp {fmt(st.sipp_p50_ms, '.0f')}/{fmt(st.sipp_p99_ms, '.0f')})")
    else:
        lat = f"p50/p99 {fmt(st.p50_ms, '.0f')}/{fmt(st.p99_ms, '.0f')} ms (sipp ticks)"
    tcpdump = ("" if st.tcpdump_cpu_s is None else
               f"  tcpdump cpu {fmt(st.tcpdump_cpu_percent, '.1f')}%")
    ctx = "" if st.ctx_per_s is None else f"  ctxsw {st.ctx_per_s:.0f}/s"
    if st.kind == "overload":
        head = (f"{st.target:<15} {st.rate:>6}/s  overload {step_kind(st)}: placed {st.placed}  "
                f"done {st.calls_done} ({st.goodput_per_s:.0f}/s)  503 {st.refused} "
                f"({pct(st.refused_share)}%, Retry-After {pct(st.retry_after_share)}%)  "
                f"failed {st.failed}  unfinished {st.unfinished}  "
                f"rtx {st.retrans_uac}/{st.retrans_uas}  ")
        verdict = "overload"
    else:
        head = (f"{st.target:<15} {st.rate:>6}/s  "
                + ("memory step: " if st.kind == "memory" else "")
                + f"ok {st.successful}/{st.offered}  failed {st.failed}  "
                f"rtx {st.retrans_uac}/{st.retrans_uas}  unexp {st.unexpected}  ")
        verdict = "clean" if st.clean else "NOT CLEAN"
    return (f"{head}cpu {fmt(st.cpu_s, '.2f')} s  {fmt(st.cpu_per_call_us, '.0f')} us/call  "
            f"{lat}  rss {fmt(st.rss_mib, '.0f')} MiB  sipp cpu {fmt(st.sipp_cpu_percent, '.0f')}%"
            f"{ctx}{tcpdump}  rc {st.sipp_rc}  {verdict}")


def table(series: list[Series]) -> str:
    """Every step of every series: the stepped series, then any memory and overload steps
    ('step' column: mem, 1.5x ...; 'done' is calls completed, '503' the INVITEs refused)."""
    runs = max((s.run for s in series), default=1) > 1
    head = (
        f"{'target':<15} {'run':>3} {'step':>4} {'rate':>6} {'offered':>8} {'ok':>8} "
        f"{'done':>8} {'503':>6} {'failed':>6} {'rtx uac':>7} {'rtx uas':>7} {'unexp':>5} "
        f"{'secs':>6} {'cpu s':>7} {'cpu %':>6} {'us/call':>8} {'p50 ms':>6} {'p99 ms':>6} "
        f"{'mean ms':>7} {'lat':>4} {'rss MiB':>7} {'sipp %':>6} {'ctxsw/s':>7} {'rc':>3}  clean"
    )
    if not runs:
        head = head.replace(f" {'run':>3}", "", 1)
    rows = [head, "-" * len(head)]
    for s in series:
        extra = ([s.memory] if s.memory is not None else []) + s.overload
        for st in s.steps + extra:
            verdict = "-" if st.kind == "overload" else "yes" if st.clean else "NO"
            rows.append(
                f"{st.target:<15}" + (f" {s.run:>3}" if runs else "")
                + f" {step_kind(st):>4} {st.rate:>6} {st.offered:>8} {st.successful:>8} "
                f"{st.calls_done:>8} {fmt(st.refused, 'd'):>6} {st.failed:>6} "
                f"{st.retrans_uac:>7} {st.retrans_uas:>7} {st.unexpected:>5} "
                f"{st.elapsed_s:>6.1f} {fmt(st.cpu_s, '.2f'):>7} {fmt(st.cpu_percent, '.0f'):>6} "
                f"{fmt(st.cpu_per_call_us, '.0f'):>8} {fmt_ms(st, st.p50_ms):>6} "
                f"{fmt_ms(st, st.p99_ms):>6} {fmt_ms(st, st.mean_ms, mean=True):>7} "
                f"{'pcap' if st.captured else 'sipp':>4} "
                f"{fmt(st.rss_mib, '.0f'):>7} {fmt(st.sipp_cpu_percent, '.0f'):>6} "
                f"{fmt(st.ctx_per_s, '.0f'):>7} {st.sipp_rc:>3}  {verdict}"
            )
    return "\n".join(rows)


def summary_line(s: Series) -> str:
    best, half = s.best, s.half
    if best is None or half is None:
        return f"{s.target}: no clean step (the lowest rate already failed)"
    cpu = best.cpu_per_call_us
    cpu_text = ("proxy CPU per call: n/a (no proxy in the path)" if cpu is None else
                f"proxy CPU per call: {cpu:.0f} µs ({fmt(best.cpu_percent, '.0f')}% of one core)")
    return (
        f"{s.target}: highest clean rate: {best.rate} calls/s; {cpu_text}; "
        f"RSS {fmt(best.rss_mib, '.0f')} MiB (PSS {fmt(best.pss_mib, '.0f')}); sipp itself used "
        f"{fmt(best.sipp_cpu_percent, '.0f')}% of one core (of {os.cpu_count()} cores); "
        f"at {half.rate} calls/s (half): p50 {fmt_ms(half, half.p50_ms)} ms, "
        f"p99 {fmt_ms(half, half.p99_ms)} ms, mean {fmt_ms(half, half.mean_ms, mean=True)} ms "
        f"({source_label(half)})"
    )


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


@dataclass(slots=True)
class SameRate:
    """The proxy's p99 at half its highest clean rate and Kamailio's at that same rate, from
    the same source (the capture when both steps have it, else sipp's ticks)."""

    proxy_step: Step  # the proxy's step at half its highest clean rate
    kam_step: Step  # Kamailio's step at that rate
    proxy_ms: float | None
    kam_ms: float | None
    captured: bool

    @property
    def spec(self) -> str:
        return ".2f" if self.captured else ".0f"

    @property
    def label(self) -> str:
        return "capture" if self.captured else "sipp ticks"


def same_rate(proxy: Series, kam: Series) -> SameRate | str:
    """The p99 pair at the proxy's half rate, or why there is none."""
    pb, ph = proxy.best, proxy.half
    if pb is None or ph is None:
        return f"{proxy.target} had no clean step"
    ks = next((st for st in kam.steps if st.rate == ph.rate), None)
    if ks is None:
        ran = ", ".join(str(st.rate) for st in kam.steps) or "none"
        return f"{kam.target} ran no step at {ph.rate}/s (its rates: {ran})"
    if not ks.clean:
        return f"{kam.target}'s step at {ks.rate}/s was not clean"
    if ph.captured and ks.captured:
        return SameRate(ph, ks, ph.p99_ms, ks.p99_ms, True)
    # one of them has no capture: compare sipp's figures of both
    return SameRate(ph, ks, ph.sipp_p99_ms, ks.sipp_p99_ms, False)


def same_rate_p99(proxy: Series, kam: Series) -> str:
    """The proxy's p99 at half its highest clean rate against Kamailio's at that same rate."""
    pair = same_rate(proxy, kam)
    if isinstance(pair, str):
        return f"n/a ({pair})"
    p, k, ph, ks, spec = pair.proxy_ms, pair.kam_ms, pair.proxy_step, pair.kam_step, pair.spec
    best = proxy.best
    figures = (f"{proxy.target} {fmt(p, spec)} ms at {ph.rate}/s (half its "
               f"{best.rate if best else '-'}/s) vs "
               f"{kam.target} {fmt(k, spec)} ms at {ks.rate}/s; {pair.label}")
    if p is None or k is None:
        return f"n/a (no latency samples: {figures})"
    if k == 0:
        return f"n/a ({kam.target}'s p99 is under one sipp tick: {figures})"
    return f"{ratio(p, k)} ({figures})"


def ratio_line(proxy: Series, kam: Series) -> str:
    pb, kb = proxy.best, kam.best
    name = f"ratio {proxy.target}/{kam.target}"
    p99 = f"p99 at the same rate {same_rate_p99(proxy, kam)}"
    if pb is None or kb is None:
        return f"{name}: n/a (a target had no clean step); {p99}"
    return (f"{name}: highest clean rate {ratio(pb.rate, kb.rate)}; "
            f"CPU per call {ratio(pb.cpu_per_call_us, kb.cpu_per_call_us)}; {p99}")


def memory_at(proxy: Series, kam: Series) -> tuple[Step, Step] | str:
    """(the proxy's step at Kamailio's highest clean rate, Kamailio's step there), or why
    there is none."""
    kb = kam.best
    if kb is None:
        return f"{kam.target} had no clean step"
    ps = proxy.step_at(kb.rate)
    if ps is None:
        return (f"{proxy.target} ran no step at {kb.rate}/s (run.py adds it when "
                f"{kam.target} runs first, its default order)")
    return ps, kb


def memory_line(proxy: Series, kam: Series) -> str:
    """The proxy's RSS at Kamailio's highest clean rate against Kamailio's PSS there
    (Kamailio's workers share its shm pool: its PSS counts those pages once)."""
    name = f"memory {proxy.target}/{kam.target} at {kam.target}'s highest clean rate"
    pair = memory_at(proxy, kam)
    if isinstance(pair, str):
        return f"{name}: n/a ({pair})"
    ps, kb = pair
    note = ""
    if ps.kind == "memory":
        stop = proxy.steps[-1].rate if proxy.steps else None
        note = f"; a step added after {proxy.target}'s series stopped at {stop}/s"
    if not ps.clean:
        note += f"; {proxy.target}'s step there was not clean"
    return (f"{name} ({kb.rate}/s): {proxy.target} RSS {fmt(ps.rss_mib, '.0f')} MiB "
            f"(PSS {fmt(ps.pss_mib, '.0f')}) vs {kam.target} PSS {fmt(kb.pss_mib, '.0f')} MiB "
            f"(RSS {fmt(kb.rss_mib, '.0f')}): RSS/PSS {ratio(ps.rss_mib, kb.pss_mib)}{note}")


def overload_line(s: Series, st: Step) -> str:
    """What an overload step shows: goodput, the 503s (with Retry-After), the admitted
    calls' p99."""
    best = s.best
    base = best.rate if best is not None else None
    of_clean = "" if not base else f", {st.goodput_per_s / base:.2f} of {base}/s"
    if best is not None and s.steps and s.steps[-1] is best:
        of_clean += (" (its series ended clean at its last rate: the clean rate is a lower "
                     "bound, and this step may not be past it)")
    return (f"overload {s.target} at {step_kind(st)} its highest clean rate ({st.rate}/s "
            f"offered, {st.invites} calls placed): goodput {st.goodput_per_s:.0f} calls/s"
            f"{of_clean}; answered 503 {pct(st.refused_share)}%, with Retry-After "
            f"{pct(st.retry_after_share)}%; failed {st.failed}, unfinished {st.unfinished}; "
            f"p99 INVITE->200 of the admitted calls {fmt_ms(st, st.p99_ms)} ms "
            f"({source_label(st)}); {s.target} CPU {fmt(st.cpu_percent, '.0f')}% of a core, "
            f"sipp {fmt(st.sipp_cpu_percent, '.0f')}%")


def scale_of(target: str) -> tuple[str, int, int] | None:
    """(state suffix, processes, workers) of a proxy series' name ('proxy x2 w2+redis'),
    None for another target."""
    if not target.startswith("proxy"):
        return None
    base, plus, state = target.partition("+")
    procs = workers = 1
    for word in base.split()[1:]:
        if word[:1] == "x" and word[1:].isdigit():
            procs = int(word[1:])
        elif word[:1] == "w" and word[1:].isdigit():
            workers = int(word[1:])
    return plus + state, procs, workers


def at_best(st: Step) -> str:
    return (f"ctxsw {fmt(st.ctx_per_s, '.0f')}/s, sipp {fmt(st.sipp_cpu_percent, '.0f')}% "
            f"at {st.rate}/s")


def ceiling(rate: float | None, cpu_us: float | None, sipp_pct: float | None,
            procs: int, cores: int | None = None) -> float | None:
    """The highest rate the CPU allows a target of ``procs`` processes, from what it and
    sipp cost per call at one of its steps: all of ``cores`` busy with the target and sipp
    (``cores`` / (target + sipp CPU per call)), and a process never more than one core
    (``procs`` / target CPU per call). None when a figure is missing."""
    cores = cores or os.cpu_count() or 1
    if not rate or not cpu_us or sipp_pct is None:
        return None
    sipp_us = sipp_pct / 100 * 1e6 / rate
    return min(cores * 1e6 / (cpu_us + sipp_us), procs * 1e6 / cpu_us)


def ceiling_text(n_rate: float | None, n_cpu: float | None, n_sipp: float | None, procs: int,
                 o_rate: float | None, o_cpu: float | None, o_sipp: float | None) -> str:
    """'the CPU allows N: ... calls/s, one: ... (ratio at most R)' (:func:`ceiling`)."""
    n, one = ceiling(n_rate, n_cpu, n_sipp, procs), ceiling(o_rate, o_cpu, o_sipp, 1)
    if n is None or one is None:
        return ""
    return (f"; what {os.cpu_count()} cores shared with sipp allow at 100 % busy (CPU per "
            f"call of the target and of sipp at its highest clean rate): {procs} processes "
            f"{n:.0f}, one {one:.0f} calls/s, a ratio of at most {n / one:.2f}")


def scale_lines(series: list[Series]) -> list[str]:
    """N proxies or N workers against one process with one worker, in the same run; with the
    context switches and sipp's CPU at each one's highest clean rate (two cores shared with
    sipp: what holds N processes back)."""
    lines = []
    for s in series:
        scale = scale_of(s.target)
        if scale is None or scale[1:] == (1, 1):
            continue
        one = next((o for o in series if o.run == s.run and (sc := scale_of(o.target))
                    and sc == (scale[0], 1, 1)), None)
        if one is None or one.best is None or s.best is None:
            continue
        n = max(scale[1], scale[2])
        lines.append(f"ratio {s.target}/{one.target}: highest clean rate "
                     f"{ratio(s.best.rate, one.best.rate)}; CPU per call "
                     f"{ratio(s.best.cpu_per_call_us, one.best.cpu_per_call_us)}; "
                     f"{s.target} {at_best(s.best)}; {one.target} {at_best(one.best)}"
                     + ceiling_text(s.best.rate, s.best.cpu_per_call_us,
                                    s.best.sipp_cpu_percent, n, one.best.rate,
                                    one.best.cpu_per_call_us, one.best.sipp_cpu_percent))
    return lines


def latency_notes(series: list[Series]) -> list[str]:
    """What the latency figures are: the capture's, and/or sipp's whole clock ticks."""
    steps = [st for s in series for st in s.steps]
    notes = []
    if any(st.captured for st in steps):
        notes.append("latency: INVITE->200 per call from a packet capture on lo (tcpdump, µs "
                     "timestamps: the UAC's first INVITE to the first 200 for it); sipp's own "
                     "figures are in summary.json (sipp_p50_ms, sipp_p99_ms, sipp_mean_ms)")
    tick = sipp_clock_ms()
    if tick and any(not st.captured for st in steps):
        notes.append(f"latency (sipp ticks, no capture): sipp's clock ticks every {tick:.0f} ms "
                     f"here, so p50/p99 are whole ticks (0 = under {tick:.0f} ms), and even the "
                     "mean reads low: sipp places calls just after a tick")
    return notes


# --------------------------------------------------------------------------- machine, Markdown


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model,
            "kernel": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def markdown(series: list[Series], duration: int, date: str) -> str:
    m = machine()
    lines = [
        f"Benchmark of {date}: {m['nproc']} × {m['cpu']}, {m['kernel']}, Python {m['python']}; "
        f"sipp UAC+UAS on the same machine, UDP loopback, {duration} s per step.",
        "",
        "| target | highest clean rate (calls/s) | CPU per call (µs) | p50 / p99 at half rate (ms) "
        "| RSS / PSS (MiB) | sipp CPU at that rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    runs = max((s.run for s in series), default=1) > 1
    for s in series:
        best, half = s.best, s.half
        name = f"{s.target}, run {s.run}" if runs else s.target
        if best is None or half is None:
            lines.append(f"| {name} | none clean | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {best.rate} | {fmt(best.cpu_per_call_us, '.0f')} | "
            f"{fmt_ms(half, half.p50_ms)} / {fmt_ms(half, half.p99_ms)} (at {half.rate}/s"
            f"{'' if half.captured else ', sipp ticks'}) | "
            f"{fmt(best.rss_mib, '.0f')} / {fmt(best.pss_mib, '.0f')} | {fmt(best.sipp_cpu_percent, '.0f')}% of a core |"
        )
    halves = [s.half for s in series if s.half is not None]
    if any(st.captured for st in halves):
        lines += ["", "Latency is INVITE→200 per call from a packet capture on the loopback "
                      "interface (tcpdump's µs timestamps: the UAC's first INVITE to the first "
                      "200 for it)."]
    tick = sipp_clock_ms()
    if tick and any(not st.captured for st in halves):
        lines += ["", f"Latency marked 'sipp ticks' is INVITE→200 as sipp times it, in whole "
                      f"{tick:.0f} ms clock ticks (0 = under {tick:.0f} ms)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot


def plot(series: list[Series], path: Path, title: str) -> str:
    """Write the two-panel PNG; returns a line saying what happened (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("plot: matplotlib is not installed (.venv/bin/pip install -e '.[bench]'), "
                "no PNG written")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    top = max((st.rate for s in series for st in s.steps + s.overload), default=1)
    ax1.plot([0, top], [0, top], color="0.7", linestyle="--", linewidth=1, label="offered")
    runs = max((s.run for s in series), default=1) > 1
    for s in series:
        name = f"{s.target} #{s.run}" if runs else s.target
        rates = [st.rate for st in s.steps]
        line, = ax1.plot(rates, [st.completed_per_s for st in s.steps], marker="o", label=name)
        bad = [st for st in s.steps if not st.clean]
        ax1.plot([st.rate for st in bad], [st.completed_per_s for st in bad], linestyle="none",
                 marker="x", markersize=10, color=line.get_color())
        # overload steps: goodput (triangles), apart from the series' line
        ax1.plot([st.rate for st in s.overload], [st.goodput_per_s for st in s.overload],
                 linestyle="none", marker="^", markersize=8, color=line.get_color())
        lat = [(st.rate, st.p99_ms) for st in s.steps if st.p99_ms is not None]
        ticks = any(not st.captured for st in s.steps if st.p99_ms is not None)
        ax2.plot([r for r, _ in lat], [v for _, v in lat], marker="o",
                 label=name + (" (sipp ticks)" if ticks else ""), color=line.get_color())
        over = [(st.rate, st.p99_ms) for st in s.overload if st.p99_ms is not None]
        ax2.plot([r for r, _ in over], [v for _, v in over], linestyle="none", marker="^",
                 markersize=8, color=line.get_color())
    ax1.set(title="Calls completed vs offered (x: not clean; ^: overload goodput)",
            xlabel="offered calls/s", ylabel="completed calls/s")
    from matplotlib.ticker import ScalarFormatter

    shown = [st for s in series for st in s.steps + s.overload if st.p99_ms is not None]
    if shown and all(st.captured and st.p99_ms for st in shown):
        from matplotlib.ticker import LogFormatter

        ax2.set_yscale("log")  # µs-resolved, never 0: sub-millisecond to the collapse
        ax2.yaxis.set_major_formatter(ScalarFormatter())
        ax2.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # 0.3, not 3×10^-1
        ax2.set(title="p99 INVITE→200 (packet capture; ^: admitted calls, overload)",
                xlabel="offered calls/s",
                ylabel="p99 latency (ms)")
    else:
        tick = sipp_clock_ms() or 1.0
        ax2.set_yscale("symlog", linthresh=max(tick, 1.0))  # linear to one tick, log above
        ax2.yaxis.set_major_formatter(ScalarFormatter())
        ax2.set(title=f"p99 INVITE→200 (sipp clock tick {tick:.0f} ms where marked)",
                xlabel="offered calls/s", ylabel="p99 latency (ms)")
        ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
        ax.legend()
    ax1.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"
