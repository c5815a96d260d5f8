#!/usr/bin/env python3
"""Stepped sipp load benchmark for sip-policy-proxy (and Kamailio as a reference).

For each target (the proxy, Kamailio, or no proxy at all), and for each rate in turn:

  sipp UAC (uac_rr.xml) --UDP--> target 127.0.0.1:5060 --UDP--> sipp UAS (uas_rr.xml) :5070
  (INVITE sip:service@127.0.0.1:5070, sent to the target as to an outbound proxy: sipp -rsa)

Every step offers RATE calls/s for DURATION seconds (``-r RATE -m RATE*DURATION``), with a fresh
UAS. It reads both sipps' final ``-trace_stat`` counters (successful / failed calls,
retransmissions, out-of-call messages) and the target's CPU time (utime + stime of its process
tree, from /proc/PID/stat) over the step. The series stops at the first step that is not clean:
a failed call, a retransmission on either side, fewer calls completed than offered, or a
non-zero sipp exit. Past its limit a proxy collapses rather than levelling off, so the figure
of merit is the highest clean rate, plus the target's CPU time per call at that rate.

Standard library only; needs /usr/bin/sipp (Debian ``sip-tester``) and ``timeout``; Kamailio
(Debian ``kamailio`` + ``kamailio-extra-modules``) for ``--kamailio``. Results (tables, JSON,
logs, the sipp CSVs) go to bench/results/<timestamp>/. ``make bench`` runs this script.

Examples:
  .venv/bin/python bench/run.py                       # the proxy
  .venv/bin/python bench/run.py --kamailio            # the proxy, then Kamailio: a ratio
  .venv/bin/python bench/run.py --direct --kamailio   # sipp->sipp baseline, then Kamailio
  .venv/bin/python bench/run.py --rates 500,1000 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_RATES = "100,200,400,600,800,1000,1500,2000,3000,4000,6000,8000"
LOOPBACK = "127.0.0.1"
BUFF_SIZE = "4194304"  # the default socket buffer drops packets at high rates (bench README)
READY_MARK = "sip-policy-proxy ready"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A set-up problem: reported on one line, exit status 2."""


class PortClash(RuntimeError):
    """sipp could not bind a port (exit 254): someone else took it meanwhile; run again."""


SIPP_BIND_FAILED = 254  # sipp's exit status -2: "fatal error binding a socket"


# --------------------------------------------------------------------------- /proc helpers


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """root and all its live descendants (Kamailio forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    return sum(proc_cpu_seconds(pid) for pid in process_tree(root))


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to UDP 127.0.0.1:port or 0.0.0.0:port (/proc/net/udp)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] in wanted for line in lines if len(line.split()) > 1)


def check_port_free(port: int, tcp: bool = False) -> None:
    kinds = [(socket.SOCK_DGRAM, "udp")] + ([(socket.SOCK_STREAM, "tcp")] if tcp else [])
    for kind, name in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError as exc:
                raise BenchError(
                    f"{name} {LOOPBACK}:{port} is busy ({exc.strerror}): stop whatever holds it "
                    f"(ss -lunpt | grep {port}) or choose other ports"
                ) from exc


def free_udp_ports(start: int, span: int, avoid: set[int]) -> int:
    """The first port p >= start with p .. p+span-1 free on 127.0.0.1 and not in avoid."""
    for base in range(start, start + 4000, span):
        ports = range(base, base + span)
        if avoid.intersection(ports):
            continue
        try:
            for port in ports:
                check_port_free(port)
        except BenchError:
            continue
        return base
    raise BenchError(f"no {span} free UDP ports from {start} on")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, alive: subprocess.Popen[bytes]
) -> None:
    """Poll predicate() every 20 ms until true; fail if `alive` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if alive.poll() is not None:
            raise BenchError(f"{what}: process exited with status {alive.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes], sig: int, grace: float) -> int:
    """Send sig, wait up to grace seconds, then SIGKILL the process group we created."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: start_new_session=True
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    return proc.returncode


# --------------------------------------------------------------------------- sipp statistics


def read_stat_csv(path: Path) -> dict[str, str]:
    """The last complete row of a sipp -trace_stat file, keyed by column name.

    The file is ';'-separated: a header row, then one row per -fd period and a final one at
    exit, each with cumulative '(C)' and periodic '(P)' counters.
    """
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    header = lines[0].split(";")
    for line in reversed(lines[1:]):
        row = line.split(";")
        if len(row) == len(header):
            return dict(zip(header, row, strict=True))  # lengths checked above
    return {}


def counter(stats: dict[str, str], name: str) -> int:
    try:
        return int(stats.get(name, "0") or 0)
    except ValueError:
        return 0


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Step:
    """One rate step against one target."""

    target: str
    rate: int
    offered: int
    successful: int = 0
    failed: int = 0
    retrans_uac: int = 0
    retrans_uas: int = 0
    unexpected: int = 0  # UAC out-of-call + dead-call messages (e.g. a 180 after the 200)
    elapsed_s: float = 0.0
    cpu_s: float | None = None  # the target's CPU time over the step; None: no target process
    sipp_rc: int = 0

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
    def cpu_per_call_us(self) -> float | None:
        if self.cpu_s is None or self.successful == 0:
            return None
        return self.cpu_s * 1e6 / self.successful

    @property
    def cpu_percent(self) -> float | None:
        if self.cpu_s is None or self.elapsed_s <= 0:
            return None
        return 100.0 * self.cpu_s / self.elapsed_s

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(
            clean=self.clean, cpu_per_call_us=self.cpu_per_call_us, cpu_percent=self.cpu_percent
        )
        return out


@dataclass(slots=True)
class Series:
    target: str
    steps: list[Step] = field(default_factory=list)  # the last attempt at each rate
    retried: list[Step] = field(default_factory=list)  # unclean attempts that were run again

    @property
    def best(self) -> Step | None:
        """The highest-rate clean step before the first unclean one."""
        best = None
        for step in self.steps:
            if not step.clean:
                break
            best = step
        return best


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(series: list[Series]) -> str:
    head = (
        f"{'target':<9} {'rate':>6} {'offered':>8} {'ok':>8} {'failed':>6} {'rtx uac':>7} "
        f"{'rtx uas':>7} {'unexp':>5} {'secs':>6} {'cpu s':>7} {'cpu %':>6} {'us/call':>8} "
        f"{'rc':>3}  clean"
    )
    rows = [head, "-" * len(head)]
    for s in series:
        for st in s.steps:
            rows.append(
                f"{st.target:<9} {st.rate:>6} {st.offered:>8} {st.successful:>8} {st.failed:>6} "
                f"{st.retrans_uac:>7} {st.retrans_uas:>7} {st.unexpected:>5} "
                f"{st.elapsed_s:>6.1f} {fmt(st.cpu_s, '.2f'):>7} {fmt(st.cpu_percent, '.0f'):>6} "
                f"{fmt(st.cpu_per_call_us, '.0f'):>8} {st.sipp_rc:>3}  {'yes' if st.clean else 'NO'}"
            )
    return "\n".join(rows)


def summary_line(s: Series) -> str:
    best = s.best
    if best is None:
        return f"{s.target}: no clean step (the lowest rate already failed)"
    cpu = best.cpu_per_call_us
    if cpu is None:
        return (f"{s.target}: highest clean rate: {best.rate} calls/s; "
                "proxy CPU per call: n/a (no proxy in the path)")
    return (
        f"{s.target}: highest clean rate: {best.rate} calls/s; proxy CPU per call: {cpu:.0f} µs"
        f" ({fmt(best.cpu_percent, '.0f')}% of one core at that rate)"
    )


# --------------------------------------------------------------------------- targets


class Target:
    """Something between the UAC and the UAS; 'direct' has nothing."""

    name = "direct"

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pass

    def cpu_seconds(self) -> float | None:
        return None if self.proc is None else tree_cpu_seconds(self.proc.pid)

    def stop(self) -> int | None:
        return None


class LogPump(threading.Thread):
    """Copies a child's output to a log file and keeps the last lines; flags the ready line."""

    def __init__(self, stream: IO[bytes], log_path: Path, mark: str) -> None:
        super().__init__(daemon=True)
        self.stream, self.log_path, self.mark = stream, log_path, mark
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=40)

    def run(self) -> None:
        with self.log_path.open("w") as log:
            for raw in self.stream:
                line = raw.decode(errors="replace")
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip())
                if self.mark in line:
                    self.ready.set()


class ProxyTarget(Target):
    name = "proxy"

    def __init__(self, port: int, uas_port: int, python: str, workdir: Path,
                 config: Path | None) -> None:
        super().__init__(port)
        self.uas_port, self.python, self.workdir, self.config = uas_port, python, workdir, config
        self.pump: LogPump | None = None

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "policy.yaml").write_text(
            "# generated by bench/run.py: forward every response (RFC 3261 16.7)\n"
            "rules:\n"
            "  - name: everything-else\n"
            "    match: {status: \"100-699\"}\n"
            "    action: forward\n"
        )
        cfg = self.workdir / "proxy.yaml"
        cfg.write_text(
            "# generated by bench/run.py\n"
            "listen:\n"
            f"  - udp:{LOOPBACK}:{self.port}\n"
            "upstreams:\n"
            f"  - sip:{LOOPBACK}:{self.uas_port}\n"
            "policy: policy.yaml\n"
            "state: \"memory:\"\n"
            "record_route: true\n"
            "registrar: local\n"
            "log_level: info\n"
        )
        return cfg

    def start(self) -> None:
        check_port_free(self.port)
        cfg = self.config or self.write_config()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "proxy", "run", "--config", str(cfg)]
        print(f"starting proxy: {' '.join(cmd)}", flush=True)
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.pump = LogPump(self.proc.stdout, self.workdir / "proxy.log", READY_MARK)
        self.pump.start()
        deadline = time.monotonic() + 30
        while not self.pump.ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.pump.join(timeout=2)
                tail = "\n  ".join(self.pump.tail) or "(no output)"
                state = (f"exited with status {self.proc.returncode}"
                         if self.proc.poll() is not None else "no ready line after 30 s")
                self.stop()
                raise BenchError(f"proxy {state}; last output:\n  {tail}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = stop_process(self.proc, signal.SIGTERM, grace=15)
        if self.pump is not None:
            self.pump.join(timeout=5)
        print(f"proxy stopped, exit status {rc}", flush=True)
        return rc


class KamailioTarget(Target):
    name = "kamailio"

    def __init__(self, port: int, uas_port: int, cfg: Path, children: int, workdir: Path) -> None:
        super().__init__(port)
        self.uas_port, self.src_cfg, self.children, self.workdir = uas_port, cfg, children, workdir
        self.log: IO[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        if not os.access(binary, os.X_OK):
            raise BenchError("kamailio is not installed: apt-get install kamailio "
                             "kamailio-extra-modules (or: make bench BENCH_ARGS=--kamailio)")
        if not self.src_cfg.is_file():
            raise BenchError(f"no Kamailio configuration at {self.src_cfg}")
        check_port_free(self.port, tcp=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The reference configuration names 127.0.0.1:5060 (itself) and :5070 (the UAS).
        text = self.src_cfg.read_text()
        text = text.replace(f"{LOOPBACK}:5070", f"{LOOPBACK}:{self.uas_port}")
        text = text.replace(f"{LOOPBACK}:5060", f"{LOOPBACK}:{self.port}")
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(text)
        cmd = [binary, "-DD", "-E", "-f", str(cfg), "-A", f"CHILDREN={self.children}",
               "-P", str(self.workdir / "kamailio.pid"), "-m", "1024", "-M", "16"]
        print(f"starting kamailio: {' '.join(cmd)}", flush=True)
        self.log = (self.workdir / "kamailio.log").open("wb")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # Kamailio logs nothing at debug=1 when it is ready; its UDP socket is bound before
        # the workers fork, and requests that arrive meanwhile wait in the socket buffer.
        try:
            wait_until(lambda: udp_port_bound(self.port), 20, "kamailio", self.proc)
        except BenchError as exc:
            self.stop()
            log = (self.workdir / "kamailio.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"{exc}; log:\n{log}") from exc

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = stop_process(self.proc, signal.SIGTERM, grace=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker left behind in our group
        except ProcessLookupError:
            pass
        if self.log is not None:
            self.log.close()
        print(f"kamailio stopped, exit status {rc}", flush=True)
        return rc


# --------------------------------------------------------------------------- one step


@dataclass(slots=True)
class Options:
    sipp: str
    uac_xml: Path
    uas_xml: Path
    uas_port: int
    uac_port: int
    duration: int
    settle: float
    control_port: int


def run_step(target: Target, rate: int, opts: Options, stepdir: Path) -> Step:
    """One step; a port taken by another program meanwhile only costs a new try."""
    for attempt in range(1, 4):
        try:
            return run_step_once(target, rate, opts, stepdir)
        except PortClash as exc:
            print(f"  {exc}; trying again ({attempt} of 3)", file=sys.stderr, flush=True)
            time.sleep(opts.settle)
    raise BenchError(f"sipp could not bind its ports three times over (see {stepdir})")


def run_step_once(target: Target, rate: int, opts: Options, stepdir: Path) -> Step:
    stepdir.mkdir(parents=True, exist_ok=True)
    calls = rate * opts.duration
    step = Step(target=target.name, rate=rate, offered=calls)
    for port in (opts.uas_port, opts.uac_port):
        check_port_free(port)
    # Media (RTP echo, sipp binds -mp and -mp+2) and control ports (default 8888, where a "q"
    # makes sipp quit) are chosen free now, away from other sipp users on this machine.
    sip_ports = {opts.uas_port, opts.uac_port, target.port}
    uas_mp = free_udp_ports(17000, 4, sip_ports)
    uac_mp = free_udp_ports(16000, 4, sip_ports | set(range(uas_mp, uas_mp + 4)))
    uas_cp = free_udp_ports(opts.control_port, 1, sip_ports)
    uac_cp = free_udp_ports(uas_cp + 1, 1, sip_ports)

    uas_cmd = [opts.sipp, "-sf", str(opts.uas_xml), "-i", LOOPBACK, "-p", str(opts.uas_port),
               "-mp", str(uas_mp), "-cp", str(uas_cp), "-buff_size", BUFF_SIZE, "-nostdin",
               "-trace_stat", "-stf", str(stepdir / "uas.csv"), "-fd", "1"]
    with (stepdir / "uas.out").open("wb") as uas_out:
        uas = subprocess.Popen(uas_cmd, cwd=stepdir, stdin=subprocess.DEVNULL, stdout=uas_out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_until(lambda: udp_port_bound(opts.uas_port), 10, "sipp UAS", uas)
        except BenchError:
            if uas.returncode == SIPP_BIND_FAILED:
                raise PortClash("sipp UAS could not bind a port") from None
            raise
        # The Request-URI names the UAS (sip:service@127.0.0.1:UAS_PORT): a request whose
        # Request-URI names the proxy itself is for its own domain (404 when unregistered).
        # -rsa sends every message to the target instead, as to an outbound proxy.
        via_target = [] if target.name == "direct" else ["-rsa", f"{LOOPBACK}:{target.port}"]
        uac_cmd = ["timeout", "-k", "5", str(opts.duration + 30),
                   opts.sipp, "-sf", str(opts.uac_xml), "-i", LOOPBACK, "-p", str(opts.uac_port),
                   "-mp", str(uac_mp), "-cp", str(uac_cp), "-buff_size", BUFF_SIZE,
                   "-default_behaviors", "all,-abortunexp", "-nostdin",
                   "-r", str(rate), "-m", str(calls),
                   "-trace_stat", "-stf", str(stepdir / "uac.csv"), "-fd", "1",
                   *via_target, f"{LOOPBACK}:{opts.uas_port}", "-s", "service"]
        (stepdir / "commands.txt").write_text(" ".join(uas_cmd) + "\n" + " ".join(uac_cmd) + "\n")
        cpu0 = target.cpu_seconds()
        t0 = time.monotonic()
        with (stepdir / "uac.out").open("wb") as uac_out:
            uac = subprocess.run(uac_cmd, cwd=stepdir, stdin=subprocess.DEVNULL, stdout=uac_out,
                                 stderr=subprocess.STDOUT, check=False)
        step.elapsed_s = time.monotonic() - t0
        cpu1 = target.cpu_seconds()
        step.sipp_rc = uac.returncode
        if cpu0 is not None and cpu1 is not None:
            step.cpu_s = cpu1 - cpu0
    finally:
        # SIGUSR1: sipp stops taking calls, lets open ones end (4 s timewait) and writes its
        # final statistics; bounded, then killed.
        stop_process(uas, signal.SIGUSR1, grace=12)
    if step.sipp_rc == SIPP_BIND_FAILED:
        raise PortClash("sipp UAC could not bind a port")

    uac_stats = read_stat_csv(stepdir / "uac.csv")
    uas_stats = read_stat_csv(stepdir / "uas.csv")
    if not uac_stats:
        out = (stepdir / "uac.out").read_text(errors="replace")[-1500:]
        raise BenchError(f"sipp UAC wrote no statistics (exit {step.sipp_rc}); output:\n{out}")
    step.successful = counter(uac_stats, "SuccessfulCall(C)")
    step.failed = counter(uac_stats, "FailedCall(C)")
    step.retrans_uac = counter(uac_stats, "Retransmissions(C)")
    step.retrans_uas = counter(uas_stats, "Retransmissions(C)")
    step.unexpected = counter(uac_stats, "OutOfCallMsgs(C)") + counter(uac_stats,
                                                                      "DeadCallMsgs(C)")
    created = counter(uac_stats, "OutgoingCall(C)")
    if created < calls and step.sipp_rc == 0:
        print(f"  warning: sipp placed {created} of {calls} calls and exited 0: it was told to "
              "quit (a signal or its control port) by something else on this machine",
              file=sys.stderr, flush=True)
    return step


def run_series(target: Target, rates: list[int], opts: Options, outdir: Path,
               all_steps: bool, retries: int) -> Series:
    series = Series(target=target.name)
    print(f"\n== {target.name}: rates {rates}, {opts.duration} s each", flush=True)
    target.start()
    try:
        for rate in rates:
            for attempt in range(retries + 1):
                stepdir = outdir / target.name / f"rate-{rate}" / f"try-{attempt + 1}"
                step = run_step(target, rate, opts, stepdir)
                print(f"{target.name:<9} {rate:>6}/s  ok {step.successful}/{step.offered}  "
                      f"failed {step.failed}  rtx {step.retrans_uac}/{step.retrans_uas}  "
                      f"unexp {step.unexpected}  cpu {fmt(step.cpu_s, '.2f')} s  "
                      f"{fmt(step.cpu_per_call_us, '.0f')} us/call  sipp rc {step.sipp_rc}  "
                      f"{'clean' if step.clean else 'NOT CLEAN'}", flush=True)
                time.sleep(opts.settle)  # let the target's timers of this step run out
                if step.clean or attempt == retries:
                    break
                series.retried.append(step)
                print(f"  running {rate}/s again ({attempt + 1} of {retries} retries)",
                      flush=True)
            series.steps.append(step)
            if not step.clean and not all_steps:
                break
    finally:
        target.stop()
    return series


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Stepped sipp load test of sip-policy-proxy (and Kamailio).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rates", default=DEFAULT_RATES,
                   help="comma-separated call rates (calls/s), run in this order")
    p.add_argument("--duration", type=int, default=10, help="seconds per step (-m RATE*DURATION)")
    p.add_argument("--targets", default=None,
                   help="comma-separated, in order, from: proxy, kamailio, direct")
    p.add_argument("--kamailio", action="store_true",
                   help="also run Kamailio (bench/kamailio.cfg) after the proxy, for a ratio")
    p.add_argument("--direct", action="store_true",
                   help="sipp UAC straight to the UAS instead of the proxy (baseline)")
    p.add_argument("--all-steps", action="store_true",
                   help="do not stop at the first unclean step")
    p.add_argument("--retries", type=int, default=0,
                   help="run an unclean step again up to this many times before stopping "
                        "(a noisy shared machine); every attempt is kept in summary.json")
    p.add_argument("--proxy-port", type=int, default=5060, help="UDP port of the target")
    p.add_argument("--uas-port", type=int, default=5070)
    p.add_argument("--uac-port", type=int, default=5062)
    p.add_argument("--control-port", type=int, default=18888,
                   help="sipp control ports: the first two free ones from here on")
    p.add_argument("--python", default=None,
                   help="interpreter with the project installed (default: .venv/bin/python)")
    p.add_argument("--proxy-config", type=Path, default=None,
                   help="use this proxy.yaml instead of a generated one (it must listen on "
                        "udp 127.0.0.1:PROXY_PORT and name the UAS as its upstream)")
    p.add_argument("--kamailio-cfg", type=Path, default=BENCH_DIR / "kamailio.cfg")
    p.add_argument("--kamailio-children", type=int, default=2, help="Kamailio UDP workers")
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp")
    p.add_argument("--settle", type=float, default=2.0, help="pause between steps (s)")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    return p.parse_args(argv)


def choose_targets(args: argparse.Namespace) -> list[str]:
    if args.targets:
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        names = ["direct" if args.direct else "proxy"] + (["kamailio"] if args.kamailio else [])
    bad = [n for n in names if n not in ("proxy", "kamailio", "direct")]
    if bad or not names:
        raise BenchError(f"unknown target(s) {bad}: choose from proxy, kamailio, direct")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
        if not rates or min(rates) <= 0 or args.duration <= 0:
            raise BenchError("--rates needs positive integers and --duration a positive value")
        names = choose_targets(args)
        if not os.access(args.sipp, os.X_OK):
            raise BenchError(f"sipp not found at {args.sipp}: apt-get install sip-tester")
        if shutil.which("timeout") is None:
            raise BenchError("`timeout` (coreutils) not found")
        python = args.python or str(REPO / ".venv" / "bin" / "python")
        if "proxy" in names and not os.access(python, os.X_OK):
            raise BenchError(f"no interpreter at {python}: run `make venv` or pass --python")

        stamp = time.strftime("%Y%m%d-%H%M%S")
        outdir = (args.results / stamp).resolve()
        outdir.mkdir(parents=True, exist_ok=True)
        opts = Options(sipp=args.sipp, uac_xml=BENCH_DIR / "uac_rr.xml",
                       uas_xml=BENCH_DIR / "uas_rr.xml", uas_port=args.uas_port,
                       uac_port=args.uac_port, duration=args.duration, settle=args.settle,
                       control_port=args.control_port)
        print(f"results: {outdir}", flush=True)

        all_series: list[Series] = []
        for name in names:
            target: Target
            if name == "proxy":
                target = ProxyTarget(args.proxy_port, args.uas_port, python, outdir / "proxy",
                                     args.proxy_config)
            elif name == "kamailio":
                target = KamailioTarget(args.proxy_port, args.uas_port, args.kamailio_cfg,
                                        args.kamailio_children, outdir / "kamailio")
            else:
                target = Target(args.proxy_port)
            all_series.append(run_series(target, rates, opts, outdir, args.all_steps,
                                         max(0, args.retries)))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    report = [table(all_series), ""] + [summary_line(s) for s in all_series]
    by_name = {s.target: s for s in all_series}
    if "proxy" in by_name and "kamailio" in by_name:
        report.append(ratio_line(by_name["proxy"], by_name["kamailio"]))
    text = "\n".join(report)
    print("\n" + text)
    (outdir / "summary.txt").write_text(text + "\n")
    (outdir / "summary.json").write_text(json.dumps({
        "rates": rates, "duration_s": args.duration, "cores": os.cpu_count(),
        "series": [{"target": s.target,
                    "highest_clean_rate": s.best.rate if s.best else None,
                    "cpu_per_call_us": s.best.cpu_per_call_us if s.best else None,
                    "steps": [st.as_dict() for st in s.steps],
                    "retried": [st.as_dict() for st in s.retried]} for s in all_series],
    }, indent=2) + "\n")
    print(f"\nwritten: {outdir / 'summary.txt'}, {outdir / 'summary.json'}")
    return 0


def ratio_line(proxy: Series, kam: Series) -> str:
    pb, kb = proxy.best, kam.best
    if pb is None or kb is None:
        return "ratio proxy/kamailio: n/a (a target had no clean step)"
    parts = [f"ratio proxy/kamailio: highest clean rate {pb.rate / kb.rate:.2f}"]
    pc, kc = pb.cpu_per_call_us, kb.cpu_per_call_us
    if pc is not None and kc:
        parts.append(f"CPU per call {pc / kc:.2f}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
