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

Per step it also reports INVITE->200 latency, p50/p99/mean in ms to the hundredth, from a
packet capture: tcpdump on lo keeps the UDP datagrams from the UAC port(s) starting 'INVITE'
and those to them starting 'SIP/2.0 200' (a BPF filter), and bench/capture.py reads the file:
per Call-ID, the first INVITE to the first 200 whose CSeq method is INVITE. sipp's own figures
(-trace_rtt, response time 1 of uac_rr.xml) are whole ticks of a 4 ms clock, 0 or 4 ms at
loopback latencies: they stay in summary.json (sipp_p99_ms, ...) and are shown, labelled
'sipp ticks', only without tcpdump (or with --no-capture). tcpdump's CPU is counted apart.
It also reports the target's memory at the step's end (VmRSS and Pss summed over its process
tree) and sipp's own CPU (UACs + UASes), since sipp shares the machine with the target. The
p99 ratio to Kamailio compares the proxy's step at half its highest clean rate with
Kamailio's step at that same rate.
``--proxies N`` starts N proxies on consecutive ports, one sipp pair each at RATE/N, and reports
the totals ('proxy x2'); ``--proxies 1,2`` runs both; ``--redis`` gives them a shared state.
Besides summary.{txt,json}: summary.md (and --report-md PATH), a Markdown table for the README,
and results.png when matplotlib is installed (the ``bench`` extra). See bench/README.md.

Standard library only; needs /usr/bin/sipp (Debian ``sip-tester``), ``timeout`` and, for the
latency, ``tcpdump`` run as root (or with the capture capabilities); Kamailio
(Debian ``kamailio`` + ``kamailio-extra-modules``) for ``--kamailio``. Results (tables, JSON,
logs, the sipp CSVs) go to bench/results/<timestamp>/. ``make bench`` runs this script.

Examples:
  .venv/bin/python bench/run.py                       # the proxy
  .venv/bin/python bench/run.py --kamailio            # the proxy, then Kamailio: a ratio
  .venv/bin/python bench/run.py --direct --kamailio   # sipp->sipp baseline, then Kamailio
  .venv/bin/python bench/run.py --rates 500,1000 --duration 5
  .venv/bin/python bench/run.py --proxies 1,2 --redis --kamailio --report-md /tmp/bench.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

# bench/ is not a package: report.py is found next to this file however it is loaded
# (python bench/run.py, or importlib from the tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import SNAPLEN, CaptureError, bpf_filter, capture_latencies  # noqa: E402
from report import (  # noqa: E402
    Series,
    Step,
    latency,
    machine,
    markdown,
    plot,
    read_rtt,
    sipp_clock_ms,
    step_line,
    summary_line,  # noqa: F401  (re-exported: the packaging tests read it from here)
    table,
)
from summary import markdown_extra, medians, summary_lines  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_RATES = "100,200,400,600,800,1000,1500,2000,3000,4000,6000,8000"
LOOPBACK = "127.0.0.1"
BUFF_SIZE = "4194304"  # the default socket buffer drops packets at high rates (bench README)
READY_MARK = "sip-policy-proxy ready"
CAPTURE_IFACE = "lo"
TCPDUMP_READY = "listening on"  # tcpdump's stderr line once its filter is attached
# libpcap hands tcpdump the kernel's capture ring in blocks, each released when full or after
# the 1 s timeout tcpdump sets; a block not released when SIGINT arrives is lost.
TCPDUMP_BLOCK_S = 1.0
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


def proc_kib(path: Path, key: str) -> int:
    """The 'KEY:   N kB' value of a /proc status-like file, in KiB; 0 if absent or gone."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory_mib(roots: list[int]) -> tuple[float, float]:
    """(sum of VmRSS, sum of Pss) of the process trees under roots, in MiB.

    Kamailio's workers share its shm pool: summing VmRSS counts those pages once per process,
    Pss splits them between the processes that map them.
    """
    pids = [pid for root in roots for pid in process_tree(root)]
    rss = sum(proc_kib(Path(f"/proc/{pid}/status"), "VmRSS") for pid in pids)
    pss = sum(proc_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss") for pid in pids)
    return rss / 1024, pss / 1024


def proc_ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of one process so far
    (/proc/PID/task/TID/status: /proc/PID/status counts the main thread alone); (0, 0) if
    it is gone."""
    vol = invol = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue  # the thread ended meanwhile
        for line in lines:
            if line.startswith("voluntary_ctxt_switches:"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol += int(line.split()[1])
    return vol, invol


def tree_ctx_switches(roots: list[int]) -> tuple[int, int]:
    """Context switches summed over the threads of the process trees under roots."""
    pairs = [proc_ctx_switches(pid) for root in roots for pid in process_tree(root)]
    return sum(v for v, _ in pairs), sum(i for _, i in pairs)


def children_cpu_seconds() -> float:
    """utime + stime of this process's reaped children (sipp, under `timeout`)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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


# --------------------------------------------------------------------------- targets


class Target:
    """Something between the UAC and the UAS; 'direct' has nothing.

    ports: the UDP port of each instance (N proxies: N ports, one sipp pair each).
    """

    name = "direct"

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_pids: list[int] = []  # accounted with the target (a shared redis-server)

    def start(self) -> None:
        pass

    def roots(self) -> list[int]:
        return [proc.pid for proc in self.procs] + self.extra_pids

    def cpu_seconds(self) -> float | None:
        roots = self.roots()
        return sum(tree_cpu_seconds(pid) for pid in roots) if roots else None

    def memory_mib(self) -> tuple[float | None, float | None]:
        roots = self.roots()
        return tree_memory_mib(roots) if roots else (None, None)

    def ctx_switches(self) -> tuple[int, int] | None:
        roots = self.roots()
        return tree_ctx_switches(roots) if roots else None

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
    """N proxy processes on N consecutive ports, each with its own config, log and upstream."""

    def __init__(self, ports: list[int] | int, uas_ports: list[int] | int, python: str,
                 workdir: Path, config: Path | None, state: str = "memory:",
                 workers: int | None = None, spread: str | None = None) -> None:
        ports = [ports] if isinstance(ports, int) else ports
        uas_ports = [uas_ports] if isinstance(uas_ports, int) else uas_ports
        super().__init__(ports)
        self.uas_ports, self.python, self.workdir, self.config = uas_ports, python, workdir, config
        self.state = state
        self.workers = workers  # None: no `workers:` key in the config (the proxy's default)
        self.spread = spread  # --workers-spread: `workers_spread:` (None: the default)
        self.pumps: list[LogPump] = []
        self.name = "proxy" if len(ports) == 1 else f"proxy x{len(ports)}"
        if workers is not None:
            self.name += f" w{workers}" + (" call" if spread == "call" else "")
        if state != "memory:":
            self.name += "+redis" if state.startswith("redis") else "+state"

    def instance_dir(self, i: int) -> Path:
        return self.workdir if len(self.ports) == 1 else self.workdir / f"proxy-{i + 1}"

    def write_config(self, i: int = 0) -> Path:
        workdir = self.instance_dir(i)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "policy.yaml").write_text(
            "# generated by bench/run.py: forward every response (RFC 3261 16.7)\n"
            "rules:\n"
            "  - name: everything-else\n"
            "    match: {status: \"100-699\"}\n"
            "    action: forward\n"
        )
        cfg = workdir / "proxy.yaml"
        cfg.write_text(
            "# generated by bench/run.py\n"
            "listen:\n"
            f"  - udp:{LOOPBACK}:{self.ports[i]}\n"
            "upstreams:\n"
            f"  - sip:{LOOPBACK}:{self.uas_ports[i]}\n"
            "policy: policy.yaml\n"
            f"state: \"{self.state}\"\n"
            "record_route: true\n"
            "registrar: local\n"
            "log_level: info\n"
            # Kamailio's config probes nothing, and sipp's UAS does not answer OPTIONS (it counts
            # them as unexpected messages): no upstream probing here either.
            "upstream_probe: {interval: 0}\n"
            + ("" if self.workers is None else
               f"# --workers: processes behind the one address\nworkers: {self.workers}\n")
            + ("" if self.spread is None or self.workers is None else
               f"workers_spread: {self.spread}\n")
        )
        return cfg

    def start(self) -> None:
        for port in self.ports:
            check_port_free(port)
        try:
            for i in range(len(self.ports)):
                self.start_one(i)
        except BenchError:
            self.stop()
            raise

    def start_one(self, i: int) -> None:
        cfg = self.config or self.write_config(i)
        workdir = self.instance_dir(i)
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "proxy", "run", "--config", str(cfg)]
        print(f"starting proxy: {' '.join(cmd)}", flush=True)
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        pump = LogPump(proc.stdout, workdir / "proxy.log", READY_MARK)
        self.pumps.append(pump)
        pump.start()
        deadline = time.monotonic() + 30
        while not pump.ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                pump.join(timeout=2)
                tail = "\n  ".join(pump.tail) or "(no output)"
                state = (f"exited with status {proc.returncode}"
                         if proc.poll() is not None else "no ready line after 30 s")
                raise BenchError(f"proxy on port {self.ports[i]} {state}; last output:\n  {tail}"
                                 + workers_hint(tail, self.workers))

    def stop(self) -> int | None:
        rcs = [stop_process(proc, signal.SIGTERM, grace=15) for proc in self.procs]
        for pump in self.pumps:
            pump.join(timeout=5)
        if rcs:
            print(f"{self.name} stopped, exit status {', '.join(map(str, rcs))}", flush=True)
        self.procs, self.pumps = [], []
        return max(rcs, key=abs) if rcs else None


def workers_hint(output: str, workers: int | None) -> str:
    """What to say when the proxy refused the `workers:` key that --workers wrote."""
    if workers is None or "workers" not in output:
        return ""
    return (f"\n--workers wrote `workers: {workers}` into the generated proxy.yaml and the "
            "proxy refused it (the message above says why; an older proxy has no workers "
            "setting: use --proxies N to run N of them, or run without --workers)")


def check_workers(python: str, workdir: Path, counts: list[int]) -> None:
    """Fail before any series runs when the proxy refuses `workers: N` (proxy check)."""
    for n in counts:
        target = ProxyTarget(5060, 5070, python, workdir / f"w{n}", None, workers=n)
        cfg = target.write_config()
        try:
            done = subprocess.run([python, "-m", "proxy", "check", "--config", str(cfg)],
                                  cwd=cfg.parent, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BenchError(f"`proxy check` of {cfg} did not run: {exc}") from exc
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip() or "(no output)")
            raise BenchError(f"the proxy refused the generated {cfg} (`workers: {n}`, "
                             f"--workers): {said}" + workers_hint(said, n))


class RedisServer:
    """A throw-away redis-server for --redis: in the results folder, on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> str:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(binary, os.X_OK):
            raise BenchError("redis-server is not installed: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:  # a free TCP port, chosen by the kernel
            sock.bind((LOOPBACK, 0))
            self.port = sock.getsockname()[1]
        cmd = [binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.workdir),
               "--save", "", "--appendonly", "no", "--daemonize", "no"]
        print(f"starting redis: {' '.join(cmd)}", flush=True)
        with (self.workdir / "redis.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

        def accepting() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex((LOOPBACK, self.port)) == 0

        wait_until(accepting, 10, "redis-server", self.proc)
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            rc = stop_process(self.proc, signal.SIGTERM, grace=10)
            print(f"redis stopped, exit status {rc}", flush=True)
            self.proc = None


class KamailioTarget(Target):
    name = "kamailio"

    def __init__(self, port: int, uas_port: int, cfg: Path, children: int, workdir: Path,
                 mem_manager: str | None = None) -> None:
        super().__init__([port])
        self.mem_manager = mem_manager  # -x: qm (Kamailio's default), fm or tlsf
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
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
        if self.mem_manager:
            cmd += ["-x", self.mem_manager]  # shm, and pkg (no -X)
        print(f"starting kamailio: {' '.join(cmd)}", flush=True)
        self.log = (self.workdir / "kamailio.log").open("wb")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.procs = [self.proc]
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


# --------------------------------------------------------------------------- packet capture


class Tcpdump:
    """One tcpdump writing a step's INVITEs and 200s on the loopback interface to a file.

    Only UDP from or to the UAC ports whose payload starts 'INVITE' or 'SIP/2.0 200 ' is kept
    (bench/capture.py's BPF filter), so the kernel copies little; it runs in its own session,
    outside the target's process tree, and its CPU is measured apart from sipp's (stop()).
    """

    def __init__(self, binary: str, path: Path, uac_ports: list[int]) -> None:
        self.path = path
        cmd = [binary, "-i", CAPTURE_IFACE, "-n", "-p", "-s", str(SNAPLEN), "-B", "8192",
               "-w", str(path)]
        if os.geteuid() == 0:
            cmd += ["-Z", "root"]  # as root tcpdump drops to user tcpdump: keep the file ours
        cmd.append(bpf_filter(uac_ports))
        (path.parent / "tcpdump.cmd").write_text(" ".join(cmd[:-1]) + f" '{cmd[-1]}'\n")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stderr is not None
        self.pump = LogPump(self.proc.stderr, path.parent / "tcpdump.log", TCPDUMP_READY)
        self.pump.start()

    def wait_ready(self, timeout: float = 10) -> str | None:
        """None once tcpdump says it is listening; else what went wrong (and it is stopped)."""
        deadline = time.monotonic() + timeout
        while not self.pump.ready.wait(0.05):
            if self.proc.poll() is not None:
                self.pump.join(timeout=2)
                tail = " / ".join(self.pump.tail) or "no output"
                return f"tcpdump exited with status {self.proc.returncode}: {tail}"
            if time.monotonic() > deadline:
                self.stop(quiet_since=None)
                return f"tcpdump printed no '{TCPDUMP_READY}' line in {timeout:.0f} s"
        return None

    def stop(self, quiet_since: float | None) -> float:
        """SIGINT (tcpdump writes what it holds and exits), bounded; returns its CPU seconds.

        quiet_since: when the last packet of interest may have been sent (the UACs' exit, on
        the monotonic clock): the capture ring's last block is released TCPDUMP_BLOCK_S later
        (the UASes' stop usually took longer already). Its CPU is the growth of this process's
        reaped-children usage as it is reaped, so call this after sipp's CPU is read.
        """
        if quiet_since is not None:
            left = quiet_since + TCPDUMP_BLOCK_S * 1.5 - time.monotonic()
            if left > 0:
                time.sleep(left)
        cpu0 = children_cpu_seconds()
        stop_process(self.proc, signal.SIGINT, grace=10)
        self.pump.join(timeout=5)
        return children_cpu_seconds() - cpu0

    def dropped(self) -> int | None:
        """tcpdump's final 'N packets dropped by kernel', if it printed one."""
        for line in self.pump.tail:
            if line.endswith("dropped by kernel"):
                try:
                    return int(line.split()[0])
                except ValueError:
                    return None
        return None


class Capture:
    """Whether steps run tcpdump; the first failure is said once and turns capture off."""

    def __init__(self, binary: str | None, off_reason: str | None = None) -> None:
        self.binary = binary
        self.off_reason = off_reason or (None if binary else
                                         "tcpdump is not installed: apt-get install tcpdump")
        self.said = False

    def disable(self, reason: str) -> None:
        self.off_reason = self.off_reason or reason
        self.say()

    def say(self) -> None:
        if self.off_reason and not self.said:
            self.said = True
            print(f"latency: no packet capture ({self.off_reason}); sipp's figures instead, in "
                  "whole clock ticks", file=sys.stderr, flush=True)

    def start(self, stepdir: Path, uac_ports: list[int]) -> Tcpdump | None:
        """A ready tcpdump for this step, or None (capture off: sipp's figures)."""
        if self.off_reason or self.binary is None:
            return None
        try:
            tcpdump = Tcpdump(self.binary, stepdir / "invite-200.pcap", uac_ports)
        except OSError as exc:
            self.disable(f"tcpdump did not start: {exc}")
            return None
        problem = tcpdump.wait_ready()
        if problem is not None:
            self.disable(problem)
            return None
        return tcpdump


def read_capture(step: Step, tcpdump: Tcpdump, uac_ports: list[int]) -> None:
    """The step's latency from its capture; sipp's figures stay when it holds no call."""
    step.capture_dropped = tcpdump.dropped()
    try:
        result = capture_latencies(tcpdump.path, uac_ports)
    except (OSError, CaptureError) as exc:
        print(f"  latency: the capture could not be read ({exc}): sipp's figures for this step",
              file=sys.stderr, flush=True)
        return
    step.refused_captured = result.refused
    step.refused_retry_after = result.refused_retry_after
    if not result.latencies_ms:
        if step.calls_done:
            print(f"  latency: the capture holds no answered INVITE ({result.invites} INVITEs): "
                  "sipp's figures for this step", file=sys.stderr, flush=True)
        return
    step.latency_source = "capture"
    step.latency_samples = len(result.latencies_ms)
    step.p50_ms, step.p99_ms, step.mean_ms = latency(result.latencies_ms)


# --------------------------------------------------------------------------- one step


@dataclass(slots=True)
class Options:
    sipp: str
    uac_xml: Path
    uas_xml: Path
    uas_ports: list[int]  # one per sipp pair (pair i: proxy i's upstream)
    uac_ports: list[int]
    duration: int
    settle: float
    control_port: int
    capture: Capture | None = None  # tcpdump for the latency; None: sipp's figures only
    uac_overload_xml: Path | None = None  # the overload steps' UAC (503 is a final answer)
    quiet_wait: float = 40.0  # longest wait for the target to go quiet before an extra step
    #: --per-call-sockets: the UAC's -t un (a UDP socket, so a source port, per call)
    uac_transport: tuple[str, ...] = ()


def split_rate(rate: int, n: int) -> list[int]:
    """rate calls/s over n sipp pairs, as evenly as whole numbers go."""
    return [rate // n + (1 if i < rate % n else 0) for i in range(n)]


def rtt_freq(calls: int) -> int:
    """sipp dumps response times every -rtt_freq calls and drops the remainder at exit: the
    largest divisor of the call count up to 200 loses none on a clean step."""
    return max(d for d in range(1, min(calls, 200) + 1) if calls % d == 0)


PER_CALL_SOCKETS = 10_000  # sipp -max_socket with --per-call-sockets (below the fd limit)
OVERLOAD_GRACE_S = 15  # an overload step's UACs are stopped this long after the step's end


def run_step(target: Target, rate: int, opts: Options, stepdir: Path, kind: str = "series",
             factor: float | None = None) -> Step:
    """One step; a port taken by another program meanwhile only costs a new try.

    kind "overload" runs uac_rr_overload.xml (503 is a final answer, counted) and stops the
    UACs OVERLOAD_GRACE_S after the step's end (calls still open then are a collapse)."""
    for attempt in range(1, 4):
        try:
            return run_step_once(target, rate, opts, stepdir, kind, factor)
        except PortClash as exc:
            print(f"  {exc}; trying again ({attempt} of 3)", file=sys.stderr, flush=True)
            time.sleep(opts.settle)
    raise BenchError(f"sipp could not bind its ports three times over (see {stepdir})")


@dataclass(slots=True)
class Pair:
    """The commands of one sipp UAC/UAS pair: UAC i -> target port i -> UAS i."""

    uas_cmd: list[str]
    uac_cmd: list[str]
    uas_port: int
    suffix: str  # "" for a single pair, "-1", "-2", ... otherwise


def sipp_pairs(target: Target, rate: int, opts: Options, stepdir: Path,
               overload: bool = False) -> list[Pair]:
    n = len(target.ports)
    uac_xml = opts.uac_overload_xml if overload and opts.uac_overload_xml else opts.uac_xml
    grace = OVERLOAD_GRACE_S if overload else 30
    avoid = set(opts.uas_ports[:n]) | set(opts.uac_ports[:n]) | set(target.ports)
    for port in opts.uas_ports[:n] + opts.uac_ports[:n]:
        check_port_free(port)

    def take(start: int, span: int) -> int:
        base = free_udp_ports(start, span, avoid)
        avoid.update(range(base, base + span))
        return base

    pairs = []
    for i, pair_rate in enumerate(split_rate(rate, n)):
        sfx = "" if n == 1 else f"-{i + 1}"
        # Media (RTP echo: sipp binds -mp and -mp+2) and control ports (default 8888, where a
        # "q" makes sipp quit) are chosen free now, away from other sipp users on this machine.
        uas_mp, uac_mp = take(17000, 4), take(16000, 4)
        uas_cp, uac_cp = take(opts.control_port, 1), take(opts.control_port, 1)
        uas_port, uac_port, calls = opts.uas_ports[i], opts.uac_ports[i], pair_rate * opts.duration
        uas_cmd = [opts.sipp, "-sf", str(opts.uas_xml), "-i", LOOPBACK, "-p", str(uas_port),
                   "-mp", str(uas_mp), "-cp", str(uas_cp), "-buff_size", BUFF_SIZE, "-nostdin",
                   "-trace_stat", "-stf", str(stepdir / f"uas{sfx}.csv"), "-fd", "1"]
        # The Request-URI names the UAS (sip:service@127.0.0.1:UAS_PORT): a request whose
        # Request-URI names the proxy itself is for its own domain (404 when unregistered).
        # -rsa sends every message to the target instead, as to an outbound proxy.
        via = [] if target.name == "direct" else ["-rsa", f"{LOOPBACK}:{target.ports[i]}"]
        uac_cmd = ["timeout", "-k", "5", str(opts.duration + grace),
                   opts.sipp, "-sf", str(uac_xml), "-i", LOOPBACK, "-p", str(uac_port),
                   "-mp", str(uac_mp), "-cp", str(uac_cp), "-buff_size", BUFF_SIZE,
                   "-default_behaviors", "all,-abortunexp", "-nostdin",
                   "-r", str(pair_rate), "-m", str(calls),
                   "-trace_stat", "-stf", str(stepdir / f"uac{sfx}.csv"), "-fd", "1",
                   "-trace_rtt", "-rtt_freq", str(rtt_freq(calls)), *opts.uac_transport,
                   *via, f"{LOOPBACK}:{uas_port}", "-s", "service"]
        pairs.append(Pair(uas_cmd, uac_cmd, uas_port, sfx))
    return pairs


def run_step_once(target: Target, rate: int, opts: Options, stepdir: Path, kind: str = "series",
                  factor: float | None = None) -> Step:
    stepdir.mkdir(parents=True, exist_ok=True)
    pairs = sipp_pairs(target, rate, opts, stepdir, overload=kind == "overload")
    step = Step(target=target.name, rate=rate, offered=rate * opts.duration, kind=kind,
                factor=factor)
    (stepdir / "commands.txt").write_text(
        "".join(" ".join(p.uas_cmd) + "\n" + " ".join(p.uac_cmd) + "\n" for p in pairs))
    # tcpdump first, listening before any call starts (a failed one is reaped before sipp's
    # CPU window opens); UAC pair i sends from uac_ports[i].
    uac_ports = opts.uac_ports[: len(pairs)]
    tcpdump = opts.capture.start(stepdir, uac_ports) if opts.capture is not None else None
    # sipp's CPU: every UAC (under `timeout`) and UAS is a child we reap within this window;
    # tcpdump is reaped after it closes.
    sipp_cpu0 = children_cpu_seconds()
    uases: list[subprocess.Popen[bytes]] = []
    uacs: list[subprocess.Popen[bytes]] = []
    quiet_since: float | None = None
    try:
        for pair in pairs:
            with (stepdir / f"uas{pair.suffix}.out").open("wb") as out:
                uases.append(subprocess.Popen(pair.uas_cmd, cwd=stepdir, stdin=subprocess.DEVNULL,
                                              stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        for pair, uas in zip(pairs, uases, strict=True):
            try:
                wait_until(partial(udp_port_bound, pair.uas_port), 10, "sipp UAS", uas)
            except BenchError:
                if uas.returncode == SIPP_BIND_FAILED:
                    raise PortClash("sipp UAS could not bind a port") from None
                raise
        cpu0, ctx0 = target.cpu_seconds(), target.ctx_switches()
        t0 = time.monotonic()
        for pair in pairs:
            with (stepdir / f"uac{pair.suffix}.out").open("wb") as out:
                uacs.append(subprocess.Popen(pair.uac_cmd, cwd=stepdir, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT))
        rcs = [uac.wait() for uac in uacs]
        quiet_since = time.monotonic()
        step.elapsed_s = quiet_since - t0
        cpu1, ctx1 = target.cpu_seconds(), target.ctx_switches()
        step.rss_mib, step.pss_mib = target.memory_mib()
        if ctx0 is not None and ctx1 is not None:  # a thread that ended takes its count along
            step.ctx_voluntary = max(0, ctx1[0] - ctx0[0])
            step.ctx_nonvoluntary = max(0, ctx1[1] - ctx0[1])
        step.sipp_rc = next((rc for rc in rcs if rc != 0), 0)
        if cpu0 is not None and cpu1 is not None:
            step.cpu_s = cpu1 - cpu0
    finally:
        for uac in uacs:  # only on an error: each has exited otherwise
            stop_process(uac, signal.SIGTERM, grace=5)
        # SIGUSR1: sipp stops taking calls, lets open ones end (4 s timewait) and writes its
        # final statistics; bounded, then killed.
        for uas in uases:
            stop_process(uas, signal.SIGUSR1, grace=12)
        step.sipp_cpu_s = children_cpu_seconds() - sipp_cpu0
        if tcpdump is not None:  # after the UASes: every INVITE and 200 has gone by
            step.tcpdump_cpu_s = tcpdump.stop(quiet_since)
    if step.sipp_rc == SIPP_BIND_FAILED:
        raise PortClash("sipp UAC could not bind a port")
    read_step_results(step, pairs, stepdir)
    if tcpdump is not None:
        read_capture(step, tcpdump, uac_ports)
    return step


def read_step_results(step: Step, pairs: list[Pair], stepdir: Path) -> None:
    """Add up the pairs' final sipp counters and their INVITE->200 response times."""
    created = 0
    for pair in pairs:
        uac_stats = read_stat_csv(stepdir / f"uac{pair.suffix}.csv")
        uas_stats = read_stat_csv(stepdir / f"uas{pair.suffix}.csv")
        if not uac_stats:
            out = (stepdir / f"uac{pair.suffix}.out").read_text(errors="replace")[-1500:]
            raise BenchError(f"sipp UAC wrote no statistics (exit {step.sipp_rc}); "
                             f"output:\n{out}")
        step.successful += counter(uac_stats, "SuccessfulCall(C)")
        step.failed += counter(uac_stats, "FailedCall(C)")
        step.retrans_uac += counter(uac_stats, "Retransmissions(C)")
        step.retrans_uas += counter(uas_stats, "Retransmissions(C)")
        step.unexpected += (counter(uac_stats, "OutOfCallMsgs(C)")
                            + counter(uac_stats, "DeadCallMsgs(C)"))
        created += counter(uac_stats, "OutgoingCall(C)")
        add_overload_counters(step, uac_stats)
    step.placed = created
    if created < step.offered and step.sipp_rc == 0:
        print(f"  warning: sipp placed {created} of {step.offered} calls and exited 0: it was "
              "told to quit (a signal or its control port) by something else on this machine",
              file=sys.stderr, flush=True)
    samples = read_rtt(sorted(stepdir.glob("*_rtt.csv")))
    step.sipp_rtt_samples = len(samples)
    step.sipp_p50_ms, step.sipp_p99_ms, step.sipp_mean_ms = latency(samples)
    # Shown until the capture's figures replace them (read_capture).
    step.p50_ms, step.p99_ms, step.mean_ms = step.sipp_p50_ms, step.sipp_p99_ms, step.sipp_mean_ms
    step.latency_source, step.latency_samples = "sipp", len(samples)


def add_overload_counters(step: Step, uac_stats: dict[str, str]) -> None:
    """uac_rr_overload.xml's counters (columns 'completed(C)', 'refused(C)' of its
    -trace_stat file), added to the step's; absent with uac_rr.xml."""
    for name in ("completed", "refused"):
        if f"{name}(C)" in uac_stats:
            setattr(step, name, (getattr(step, name) or 0) + counter(uac_stats, f"{name}(C)"))


def quiesce(target: Target, limit_s: float, idle_share: float = 0.05) -> float:
    """Wait until the target used under idle_share of a core over one second (the timers of
    the step before, a collapse's retransmissions, have run out), at most limit_s; returns
    the seconds waited."""
    t0 = time.monotonic()
    last = target.cpu_seconds()
    if last is None:
        return 0.0
    while time.monotonic() - t0 < limit_s:
        time.sleep(1.0)
        now = target.cpu_seconds() or 0.0
        if now - last < idle_share:
            break
        last = now
    waited = time.monotonic() - t0
    print(f"  {target.name} quiet after {waited:.0f} s" if waited < limit_s else
          f"  {target.name} still busy after {limit_s:.0f} s: going on", flush=True)
    return waited


def run_extra(target: Target, rate: int, opts: Options, folder: Path, kind: str,
              factor: float | None = None) -> Step:
    """A memory or an overload step, after the target has gone quiet."""
    quiesce(target, opts.quiet_wait)
    name = f"memory-rate-{rate}" if kind == "memory" else f"overload-{factor:g}x-rate-{rate}"
    step = run_step(target, rate, opts, folder / name, kind, factor)
    print(step_line(step), flush=True)
    time.sleep(opts.settle)
    return step


def run_series(target: Target, rates: list[int], opts: Options, outdir: Path,
               all_steps: bool, retries: int, memory_rate: int | None = None,
               overload: tuple[float, ...] = (), run: int = 1) -> Series:
    """The stepped series; then, if it did not run memory_rate (Kamailio's highest clean
    rate, for the memory comparison), a step there; then the overload steps (each factor
    times the highest clean rate)."""
    series = Series(target=target.name, run=run)
    print(f"\n== {target.name}: rates {rates}, {opts.duration} s each"
          + (f" (run {run})" if outdir.name.startswith("run-") else ""), flush=True)
    folder = outdir / target.name.replace(" ", "-")
    target.start()
    try:
        for rate in rates:
            for attempt in range(retries + 1):
                stepdir = folder / f"rate-{rate}" / f"try-{attempt + 1}"
                step = run_step(target, rate, opts, stepdir)
                print(step_line(step), flush=True)
                time.sleep(opts.settle)  # let the target's timers of this step run out
                if step.clean or attempt == retries:
                    break
                series.retried.append(step)
                print(f"  running {rate}/s again ({attempt + 1} of {retries} retries)",
                      flush=True)
            series.steps.append(step)
            if not step.clean and not all_steps:
                break
        if memory_rate is not None and series.step_at(memory_rate) is None:
            print(f"  memory step: {memory_rate}/s, kamailio's highest clean rate", flush=True)
            series.memory = run_extra(target, memory_rate, opts, folder, "memory")
        best = series.best
        if overload and best is None:
            print("  no overload steps: the series has no clean step", flush=True)
        elif best is not None:
            lowest = len(target.ports)  # one call/s per sipp pair at least
            for factor in overload:
                rate = max(lowest, round(best.rate * factor))
                series.overload.append(run_extra(target, rate, opts, folder, "overload", factor))
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
                   help="also run Kamailio (bench/kamailio.cfg), before the proxy, for the ratios "
                        "(first: the proxy's series then also runs Kamailio's highest clean "
                        "rate, for the memory comparison)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole thing (every target, every step) N times and report "
                        "every run's figures and, per target, their median (3: the figure "
                        "of merit on a shared machine)")
    p.add_argument("--overload", default="1.5,2",
                   help="after a proxy series, steps at these multiples of its highest clean "
                        "rate with uac_rr_overload.xml (503 + Retry-After is an answer): "
                        "goodput, share refused, p99 of the admitted calls; 'none': no such "
                        "steps")
    p.add_argument("--overload-kamailio", action="store_true",
                   help="run the overload steps after Kamailio's series too (a reference: it "
                        "does not shed load in bench/kamailio.cfg)")
    p.add_argument("--workers", default=None,
                   help="write `workers: N` into the generated proxy.yaml; a list (1,2) runs "
                        "one proxy series per count ('proxy w2'); the proxy must know the key")
    p.add_argument("--quiet-wait", type=float, default=40.0,
                   help="before a memory or overload step, wait up to this long (s) for the "
                        "target to use under 5%% of a core (the last step's timers run out)")
    p.add_argument("--direct", action="store_true",
                   help="sipp UAC straight to the UAS instead of the proxy (baseline)")
    p.add_argument("--all-steps", action="store_true",
                   help="do not stop at the first unclean step")
    p.add_argument("--retries", type=int, default=0,
                   help="run an unclean step again up to this many times before stopping "
                        "(a noisy shared machine); every attempt is kept in summary.json")
    p.add_argument("--proxies", default="1",
                   help="number of proxy processes, on consecutive ports from PROXY_PORT, one "
                        "sipp pair each at RATE/N; a list (1,2) runs one proxy series per count")
    p.add_argument("--proxy-state", default="memory:",
                   help="state: of the generated proxy configs (redis://127.0.0.1:PORT/0 shares "
                        "it between the N proxies)")
    p.add_argument("--redis", action="store_true",
                   help="start a redis-server in the results folder on a free port, use it as "
                        "--proxy-state and count its CPU and memory with the proxies")
    p.add_argument("--memory-too", action="store_true",
                   help="with --redis or --proxy-state: run the proxies with state memory: "
                        "first, then with the shared state, in the same run")
    p.add_argument("--proxy-port", type=int, default=5060, help="UDP port of the (first) target")
    p.add_argument("--uas-port", type=int, default=5070, help="UDP port of the (first) sipp UAS")
    p.add_argument("--uac-port", type=int, default=5062,
                   help="UDP port of the (first) sipp UAC; ports of targets and UASes are skipped")
    p.add_argument("--control-port", type=int, default=18888,
                   help="sipp control ports: the first free ones from here on")
    p.add_argument("--report-md", type=Path, default=None,
                   help="also write a Markdown table (date, machine, per target) to this file")
    p.add_argument("--no-plot", action="store_true", help="do not write results.png")
    p.add_argument("--no-capture", action="store_true",
                   help="no tcpdump: latency from sipp's -trace_rtt alone (whole 4 ms ticks)")
    p.add_argument("--workers-spread", choices=("source", "call"), default=None,
                   help="with --workers: write `workers_spread:` (README \"Workers\"); call: "
                        "the workers share the calls of sipp's one UAC port")
    p.add_argument("--per-call-sockets", action="store_true",
                   help="the sipp UAC sends each call from a socket (a source port) of its "
                        "own (-t un): the kernel spreads the calls among the proxy's workers "
                        "by source address, so --workers compares nothing without it (or "
                        "--workers-spread call); needs --no-capture (the capture follows the "
                        "UAC's one port)")
    p.add_argument("--python", default=None,
                   help="interpreter with the project installed (default: .venv/bin/python)")
    p.add_argument("--proxy-config", type=Path, default=None,
                   help="use this proxy.yaml instead of a generated one (it must listen on "
                        "udp 127.0.0.1:PROXY_PORT and name the UAS as its upstream)")
    p.add_argument("--kamailio-cfg", type=Path, default=BENCH_DIR / "kamailio.cfg")
    p.add_argument("--kamailio-children", type=int, default=2, help="Kamailio UDP workers")
    p.add_argument("--kamailio-mem", choices=("qm", "fm", "tlsf"), default=None,
                   help="Kamailio's memory manager (-x; default: its own, qm, whose qm_malloc "
                        "takes most of its instructions per call here: bench/README.md)")
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp")
    p.add_argument("--settle", type=float, default=2.0, help="pause between steps (s)")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    return p.parse_args(argv)


def choose_targets(args: argparse.Namespace) -> list[str]:
    if args.targets:
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        # Kamailio first: its highest clean rate is then known when the proxy's series runs,
        # which adds a step there if it stops short of it (memory at Kamailio's clean rate).
        names = (["kamailio"] if args.kamailio else []) + ["direct" if args.direct else "proxy"]
    bad = [n for n in names if n not in ("proxy", "kamailio", "direct")]
    if bad or not names:
        raise BenchError(f"unknown target(s) {bad}: choose from proxy, kamailio, direct")
    return names


def port_plan(args: argparse.Namespace, n: int) -> tuple[list[int], list[int], list[int]]:
    """(target ports, UAS ports, UAC ports) for up to n pairs, pairwise distinct."""
    targets = [args.proxy_port + i for i in range(n)]
    uases = [args.uas_port + i for i in range(n)]
    taken = set(targets) | set(uases)
    if len(taken) < 2 * n:
        raise BenchError(f"--proxy-port and --uas-port ranges overlap for {n} proxies")
    uacs = [p for p in range(args.uac_port, args.uac_port + 3 * n + 1) if p not in taken][:n]
    return targets, uases, uacs


def check_tools(args: argparse.Namespace, names: list[str]) -> str:
    """Fail early on a missing program; returns the proxy's interpreter."""
    if not os.access(args.sipp, os.X_OK):
        raise BenchError(f"sipp not found at {args.sipp}: apt-get install sip-tester")
    if shutil.which("timeout") is None:
        raise BenchError("`timeout` (coreutils) not found")
    python = args.python or str(REPO / ".venv" / "bin" / "python")
    if "proxy" in names and not os.access(python, os.X_OK):
        raise BenchError(f"no interpreter at {python}: run `make venv` or pass --python")
    return python


def make_target(name: str, n: int, args: argparse.Namespace, ports: tuple[list[int], ...],
                python: str, outdir: Path, state: str, workers: int | None = None) -> Target:
    targets, uases, _ = ports
    if name == "proxy":
        if n > 1 and args.proxy_config is not None:
            raise BenchError("--proxy-config is for one proxy: N proxies need N configs")
        folder = "proxy" if n == 1 else f"proxy-x{n}"
        if workers is not None:
            folder += f"-w{workers}"
        if state != "memory:":
            folder += "-shared-state"
        return ProxyTarget(targets[:n], uases[:n], python, outdir / folder, args.proxy_config,
                           state, workers, args.workers_spread)
    if name == "kamailio":
        return KamailioTarget(targets[0], uases[0], args.kamailio_cfg, args.kamailio_children,
                              outdir / "kamailio", args.kamailio_mem)
    return Target(targets[:1])


def int_list(text: str | None, what: str) -> list[int]:
    try:
        return [int(c) for c in str(text).split(",") if c.strip()]
    except ValueError:
        raise BenchError(f"{what} takes comma-separated whole numbers, not {text!r}") from None


def overload_factors(text: str) -> tuple[float, ...]:
    """--overload: 'none' (or '', '0') for no overload steps, else factors above 1."""
    if text.strip().lower() in ("", "0", "none", "off"):
        return ()
    try:
        factors = tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise BenchError(f"--overload takes factors such as 1.5,2 or 'none', not {text!r}") \
            from None
    if any(f <= 1 for f in factors):
        raise BenchError("--overload factors are multiples of the highest clean rate: above 1")
    return factors


def run_all(args: argparse.Namespace, outdir: Path, rates: list[int]) -> list[Series]:
    names = choose_targets(args)
    counts = int_list(args.proxies, "--proxies")
    if not counts or min(counts) < 1 or min(rates) < max(counts):
        raise BenchError("--proxies needs counts >= 1, and every rate at least the largest")
    worker_counts = int_list(args.workers, "--workers") if args.workers is not None else []
    workers: list[int | None] = list(worker_counts) or [None]
    if args.workers is not None:
        if not worker_counts or min(worker_counts) < 1:
            raise BenchError("--workers needs counts >= 1")
        if args.proxy_config is not None:
            raise BenchError("--workers writes the generated proxy.yaml: not with --proxy-config")
    if args.repeat < 1:
        raise BenchError("--repeat needs a count >= 1")
    overload = overload_factors(args.overload)
    if args.per_call_sockets and not args.no_capture:
        raise BenchError("--per-call-sockets needs --no-capture: the capture follows the UAC's "
                         "one port")
    python = check_tools(args, names)
    if args.workers is not None and "proxy" in names:
        check_workers(python, outdir / "workers-check", worker_counts)
    ports = port_plan(args, max(counts))
    capture = Capture(shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin"),
                      "--no-capture" if args.no_capture else None)
    capture.say()  # once, up front, when there will be none
    opts = Options(sipp=args.sipp, uac_xml=BENCH_DIR / "uac_rr.xml",
                   uas_xml=BENCH_DIR / "uas_rr.xml", uas_ports=ports[1], uac_ports=ports[2],
                   duration=args.duration, settle=args.settle, control_port=args.control_port,
                   capture=capture, uac_overload_xml=BENCH_DIR / "uac_rr_overload.xml",
                   quiet_wait=args.quiet_wait, uac_transport=(
                       ("-t", "un", "-max_socket", str(PER_CALL_SOCKETS))
                       if args.per_call_sockets else ()))
    redis = RedisServer(outdir / "redis") if args.redis and "proxy" in names else None
    all_series: list[Series] = []
    try:
        state = redis.start() if redis else args.proxy_state
        # --memory-too: the same proxies with state memory: first, then with the shared state,
        # so that one run gives the cost of the store (issue: within 10 % of memory:).
        states = ["memory:", state] if args.memory_too and state != "memory:" else [state]
        for run in range(1, args.repeat + 1):
            rundir = outdir if args.repeat == 1 else outdir / f"run-{run}"
            if args.repeat > 1:
                print(f"\n==== run {run} of {args.repeat}", flush=True)
            kam_best: int | None = None  # Kamailio's highest clean rate in this run
            for name in names:
                for n in counts if name == "proxy" else [1]:
                    for w in workers if name == "proxy" else [None]:
                        for st in states if name == "proxy" else [state]:
                            target = make_target(name, n, args, ports, python, rundir, st, w)
                            if (redis is not None and name == "proxy" and redis.proc is not None
                                    and st != "memory:"):
                                target.extra_pids = [redis.proc.pid]
                            shed = name == "proxy" or (name == "kamailio"
                                                       and args.overload_kamailio)
                            series = run_series(
                                target, rates, opts, rundir, args.all_steps,
                                max(0, args.retries),
                                memory_rate=kam_best if name == "proxy" else None,
                                overload=overload if shed else (), run=run)
                            all_series.append(series)
                            if name == "kamailio":
                                kam_best = series.best.rate if series.best else None
    finally:
        if redis is not None:
            redis.stop()
    return all_series


def proxy_build(python: str, cwd: Path) -> str:
    """What ``python -m proxy --version`` says, run as the benchmark runs the proxy (same
    interpreter, environment and working directory): which build (compiled or pure) ran."""
    try:
        cwd.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([python, "-m", "proxy", "--version"], cwd=cwd, capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout.strip() or out.stderr.strip() or "unknown").splitlines()[0]


def write_results(args: argparse.Namespace, outdir: Path, rates: list[int],
                  all_series: list[Series]) -> None:
    python = args.python or str(REPO / ".venv" / "bin" / "python")
    build = proxy_build(python, outdir / "proxy")  # where the proxy ran: outdir holds a proxy/
    text = "\n".join([table(all_series), ""] + summary_lines(all_series)
                     + [f"proxy build: {build}"])
    print("\n" + text)
    (outdir / "summary.txt").write_text(text + "\n")
    (outdir / "summary.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
        "rates": rates, "duration_s": args.duration, "cores": os.cpu_count(),
        "sipp_clock_ms": sipp_clock_ms(), "proxy_build": build,
        "repeat": args.repeat, "overload_factors": list(overload_factors(args.overload)),
        "workers": args.workers,
        "series": [s.as_dict() for s in all_series],
        "medians": medians(all_series),
    }, indent=2) + "\n")
    written = [outdir / "summary.txt", outdir / "summary.json"]
    if not args.no_plot:
        title = f"sip-policy-proxy bench {time.strftime('%Y-%m-%d')}, {machine()['nproc']} cores"
        note = plot(all_series, outdir / "results.png", title)
        print(note)
        if note.startswith("plot: /"):
            written.append(outdir / "results.png")
    md = markdown(all_series, args.duration, time.strftime("%Y-%m-%d"))
    md = md.replace("\n\n", f" The proxy: `{build}`.\n\n", 1) + markdown_extra(all_series)
    (outdir / "summary.md").write_text(md)
    written.append(outdir / "summary.md")
    if args.report_md is not None:
        args.report_md.parent.mkdir(parents=True, exist_ok=True)
        args.report_md.write_text(md)
        written.append(args.report_md)
    print(f"\nwritten: {', '.join(map(str, written))}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
        if not rates or min(rates) <= 0 or args.duration <= 0:
            raise BenchError("--rates needs positive integers and --duration a positive value")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        outdir = (args.results / stamp).resolve()
        outdir.mkdir(parents=True, exist_ok=True)
        print(f"results: {outdir}", flush=True)
        all_series = run_all(args, outdir, rates)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    write_results(args, outdir, rates, all_series)
    return 0


if __name__ == "__main__":
    sys.exit(main())
