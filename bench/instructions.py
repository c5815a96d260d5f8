#!/usr/bin/env python3
"""Instructions per call of the proxy and of Kamailio, counted by valgrind's callgrind under
the same sipp load (bench/instructions.sh runs this).

The benchmark (bench/run.py) times calls on a machine whose speed moves by a third within the
hour; an instruction count does not move, so it compares two versions of the code, and the
proxy with Kamailio, exactly. Kernel time is not counted (sendto and recvfrom cost as much in
any SIP proxy).

For each target: start it under ``valgrind --tool=callgrind --trace-children=yes`` (one
output file per process: Kamailio forks its UDP workers, timer, TCP and main processes),
place WARMUP calls through it with sipp (uac_rr.xml to uas_rr.xml, RATE calls/s), ask every
process of its tree for a dump (``callgrind_control --dump``: start-up and warm-up, reported
apart), place CALLS calls, dump again: the second dump of each process holds those CALLS
calls alone. Their instruction counts are summed over the processes, divided by CALLS.
Kamailio's processes are told apart by what they ran: the UDP workers are those whose
callgrind output names udp_rcv_loop; the rest (main, timers, TCP) is reported apart, and
counted in Kamailio's total, since the proxy's own timers run in its one process.

    bench/instructions.sh                      # both targets, 300 calls after 100 of warm-up
    bench/instructions.sh --target proxy 1000  # the proxy alone, 1000 calls
    bench/instructions.sh --keep /tmp/cg       # keep the callgrind files (callgrind_annotate)

Standard library only; needs valgrind, sipp and (for Kamailio) kamailio.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402  (bench/ is not a package)
    BenchError,
    check_port_free,
    counter,
    free_udp_ports,
    process_tree,
    read_stat_csv,
    stop_process,
    udp_port_bound,
    wait_until,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LOOPBACK = "127.0.0.1"
WORKER_FUNCTION = "udp_rcv_loop"  # Kamailio's UDP receiver loop (core/udp_server.c)
MEASURED = "measured"  # the description of the second dump
START_TIMEOUT_S = 300  # a Python process under callgrind takes a minute or more to start


# --------------------------------------------------------------------------- callgrind files


@dataclass(slots=True)
class CallgrindFile:
    """The header of one callgrind output file, and whether it ran a given function."""

    path: Path
    pid: int
    part: int
    trigger: str  # "dump measured", "dump warm-up", "Program termination" ...
    instructions: int  # Ir of the part ('summary:' or 'totals:')
    functions: set[str] = field(default_factory=set)


FN_LINE = re.compile(r"^c?fn=(?:\(\d+\))?\s*(\S.*)$")


def read_callgrind(path: Path, wanted: tuple[str, ...] = (WORKER_FUNCTION,)) -> CallgrindFile:
    """The header fields of a callgrind output file, its Ir total, and which of the wanted
    function names its fn=/cfn= lines name (compressed names are defined at first use)."""
    pid = part = 0
    trigger = ""
    events: list[str] = []
    total: int | None = None
    found: set[str] = set()
    with path.open(errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = FN_LINE.match(line.rstrip("\n"))
                if m and m.group(1) in wanted:
                    found.add(m.group(1))
            elif line.startswith("pid:"):
                pid = int(line.split()[1])
            elif line.startswith("part:"):
                part = int(line.split()[1])
            elif line.startswith("desc: Trigger:"):
                trigger = line.split(":", 2)[2].strip()
            elif line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")) and total is None:
                values = line.split()[1:]
                index = events.index("Ir") if "Ir" in events else 0
                total = int(values[index]) if len(values) > index else 0
    if total is None:
        raise ValueError(f"{path}: no summary: or totals: line (not a callgrind output file?)")
    return CallgrindFile(path, pid, part, trigger, total, found)


@dataclass(slots=True)
class Count:
    """Instructions of the measured calls, per process kind."""

    target: str
    calls: int
    by_pid: dict[int, int] = field(default_factory=dict)  # pid -> Ir of the measured part
    workers: set[int] = field(default_factory=set)  # pids that ran WORKER_FUNCTION
    warmup: int = 0  # start-up and warm-up, all processes (the first dump)

    @property
    def total(self) -> int:
        return sum(self.by_pid.values())

    @property
    def per_call(self) -> float:
        return self.total / self.calls if self.calls else 0.0

    @property
    def workers_per_call(self) -> float:
        ir = sum(ir for pid, ir in self.by_pid.items() if pid in self.workers)
        return ir / self.calls if self.calls else 0.0

    @property
    def others_per_call(self) -> float:
        return self.per_call - self.workers_per_call


def count(files: list[CallgrindFile], target: str, calls: int) -> Count:
    """Sum the measured dumps (trigger names MEASURED) over the processes; the other dumps of
    the same processes before them are the start-up and warm-up. A process that ran the UDP
    worker loop in any of its dumps is a worker."""
    out = Count(target, calls)
    measured = {f.pid: f for f in files if MEASURED in f.trigger}
    for f in files:
        if WORKER_FUNCTION in f.functions:
            out.workers.add(f.pid)
        if f.pid in measured and f.part < measured[f.pid].part:
            out.warmup += f.instructions
    out.by_pid = {pid: f.instructions for pid, f in sorted(measured.items())}
    return out


def thousands(value: float) -> str:
    return f"{value / 1000:,.0f}k"


def count_lines(c: Count, what: str) -> list[str]:
    procs = len(c.by_pid)
    line = (f"{c.target}: {c.calls} calls: {c.total:,} instructions, {thousands(c.per_call)} "
            f"per call, {procs} process{'es' if procs != 1 else ''}")
    if c.workers:
        line += (f" (UDP workers {thousands(c.workers_per_call)} per call in {len(c.workers)}; "
                 f"the {procs - len(c.workers)} others: main, timers, TCP "
                 f"{thousands(c.others_per_call)})")
    return [line + f"; start-up and warm-up apart: {c.warmup:,} ({what})"]


def ratio_lines(proxy: Count, kam: Count) -> list[str]:
    lines = []
    if kam.per_call:
        lines.append(f"ratio proxy/kamailio, instructions per call: "
                     f"{proxy.per_call / kam.per_call:.2f} ({thousands(proxy.per_call)} vs "
                     f"{thousands(kam.per_call)}, every process of each)")
    if kam.workers_per_call:
        lines.append(f"ratio proxy/kamailio's UDP workers alone: "
                     f"{proxy.per_call / kam.workers_per_call:.2f}")
    return lines


# --------------------------------------------------------------------------- running


@dataclass(slots=True)
class Ports:
    target: int
    uac: int
    uas: int


def callgrind_dump(pids: list[int], desc: str, outdir: Path, timeout: float = 120) -> None:
    """Ask each process for a dump and wait until each has written it (a file whose trigger
    names desc). Always by pid: callgrind_control with none acts on every callgrind run of
    the machine."""
    done = subprocess.run(["callgrind_control", f"--dump={desc}", *map(str, pids)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control --dump failed: {done.stdout}{done.stderr}")
    deadline = time.monotonic() + timeout
    waiting = set(pids)
    while waiting:
        for path in outdir.glob("cg.*"):
            try:
                f = read_callgrind(path, ())
            except (OSError, ValueError):
                continue  # still being written
            if f.pid in waiting and desc in f.trigger:
                waiting.discard(f.pid)
        if waiting and time.monotonic() > deadline:
            raise BenchError(f"no callgrind dump from processes {sorted(waiting)}")
        time.sleep(0.2)


def sipp_uac(args: argparse.Namespace, ports: Ports, media: int, control: int, calls: int,
             workdir: Path, name: str) -> str:
    """Place the calls; '' when all completed without a retransmission, else what went
    wrong (the warm-up's is only reported: a target under callgrind starts slowly)."""
    stat = workdir / f"{name}.csv"
    cmd = ["timeout", "-k", "5", str(calls // max(1, args.rate) + 120), args.sipp,
           "-sf", str(BENCH_DIR / "uac_rr.xml"), "-i", LOOPBACK, "-p", str(ports.uac),
           "-mp", str(media), "-cp", str(control), "-nostdin", "-r", str(args.rate),
           "-m", str(calls), "-rsa", f"{LOOPBACK}:{ports.target}", f"{LOOPBACK}:{ports.uas}",
           "-s", "service", "-default_behaviors", "all,-abortunexp",
           "-trace_stat", "-stf", str(stat), "-fd", "1"]
    with (workdir / f"{name}.out").open("wb") as out:
        rc = subprocess.run(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, check=False).returncode
    stats = read_stat_csv(stat)
    ok, rtx = counter(stats, "SuccessfulCall(C)"), counter(stats, "Retransmissions(C)")
    if ok == 0:
        raise BenchError(f"sipp UAC ({name}): no call completed, exit {rc}; "
                         f"see {workdir / (name + '.out')}")
    if rc != 0 or ok != calls or rtx:
        return (f"{name}: {ok} of {calls} calls completed, {rtx} retransmissions, sipp exit "
                f"{rc} ({workdir / (name + '.out')})")
    return ""


def target_command(args: argparse.Namespace, target: str, ports: Ports, workdir: Path
                   ) -> tuple[list[str], str]:
    """(the command under valgrind, what it is) for the proxy or Kamailio."""
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                f"--callgrind-out-file={workdir}/cg.%p"]
    if target == "proxy":
        (workdir / "policy.yaml").write_text(
            "rules:\n  - name: everything-else\n    match: {status: \"100-699\"}\n"
            "    action: forward\n")
        (workdir / "proxy.yaml").write_text(
            f"listen:\n  - udp:{LOOPBACK}:{ports.target}\nupstreams:\n"
            f"  - sip:{LOOPBACK}:{ports.uas}\npolicy: policy.yaml\nstate: \"memory:\"\n"
            "record_route: true\nregistrar: local\nlog_level: info\n"
            "upstream_probe: {interval: 0}\n")
        version = subprocess.run([args.python, "-m", "proxy", "--version"], capture_output=True,
                                 text=True, timeout=60, cwd=workdir).stdout.strip()
        return valgrind + [args.python, "-m", "proxy", "run", "--config",
                           str(workdir / "proxy.yaml")], version or "the proxy"
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    text = args.kamailio_cfg.read_text()
    text = text.replace(f"{LOOPBACK}:5070", f"{LOOPBACK}:{ports.uas}")
    text = text.replace(f"{LOOPBACK}:5060", f"{LOOPBACK}:{ports.target}")
    (workdir / "kamailio.cfg").write_text(text)
    said = subprocess.run([binary, "-v"], capture_output=True, text=True,
                          timeout=30).stdout.splitlines()[:1]
    cmd = [binary, "-DD", "-E", "-f", str(workdir / "kamailio.cfg"), "-A",
           f"CHILDREN={args.kamailio_children}", "-P", str(workdir / "kamailio.pid"),
           "-m", "1024", "-M", "16"]
    name = said[0].strip() if said else "kamailio"
    if args.kamailio_mem:
        cmd += ["-x", args.kamailio_mem]  # shm, and pkg (no -X)
        name += f", -x {args.kamailio_mem}"
    return valgrind + cmd, name


def measure(args: argparse.Namespace, target: str, ports: Ports, workdir: Path) -> Count:
    """One target under callgrind: warm-up, dump, the measured calls, dump."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd, version = target_command(args, target, ports, workdir)
    check_port_free(ports.target, tcp=target == "kamailio")
    t0 = time.monotonic()
    print(f"{target}: starting under callgrind: {' '.join(cmd)}", flush=True)
    log = (workdir / f"{target}.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    uas: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: udp_port_bound(ports.target), START_TIMEOUT_S, target, proc)
        if target == "kamailio":
            time.sleep(5)  # its workers fork after the socket is bound
        avoid = {ports.target, ports.uac, ports.uas}
        media_uas = free_udp_ports(17100, 4, avoid)
        media_uac = free_udp_ports(media_uas + 4, 4, avoid)
        control = free_udp_ports(18990, 2, avoid)
        uas_cmd = [args.sipp, "-sf", str(BENCH_DIR / "uas_rr.xml"), "-i", LOOPBACK, "-p",
                   str(ports.uas), "-mp", str(media_uas), "-cp", str(control), "-nostdin"]
        with (workdir / "uas.out").open("wb") as out:
            uas = subprocess.Popen(uas_cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: udp_port_bound(ports.uas), 10, "sipp UAS", uas)
        started = time.monotonic() - t0
        warm = sipp_uac(args, ports, media_uac, control + 1, args.warmup, workdir, "warmup")
        if warm:
            print(f"  note: {warm}", flush=True)
        callgrind_dump(process_tree(proc.pid), "warm-up", workdir)
        t1 = time.monotonic()
        problem = sipp_uac(args, ports, media_uac, control + 1, args.calls, workdir, MEASURED)
        if args.drain:
            time.sleep(args.drain)
        pids = process_tree(proc.pid)
        callgrind_dump(pids, MEASURED, workdir)
        measured_s = time.monotonic() - t1
    finally:
        if uas is not None:
            stop_process(uas, signal.SIGTERM, grace=10)
        stop_process(proc, signal.SIGTERM, grace=60)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker left behind in our session
        except ProcessLookupError:
            pass
        log.close()
    files = []
    for path in sorted(workdir.glob("cg.*")):
        try:
            files.append(read_callgrind(path))
        except (OSError, ValueError) as exc:
            print(f"  {path.name}: skipped ({exc})", file=sys.stderr)
    c = count([f for f in files if f.pid in pids], target, args.calls)
    took = time.monotonic() - t0
    print(f"{target}: {len(pids)} process{'es' if len(pids) != 1 else ''}; started in "
          f"{started:.0f} s, measured calls {measured_s:.0f} s, {took:.0f} s in all", flush=True)
    for line in count_lines(c, version):
        print(line, flush=True)
    if problem:
        print(f"  WARNING: {problem}: the count includes retransmitted or failed calls; run "
              "it again on a quieter machine or with a lower --rate", flush=True)
    return c


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("calls", type=int, nargs="?", default=300, help="calls counted")
    p.add_argument("--target", choices=("proxy", "kamailio", "both"), default="both")
    p.add_argument("--warmup", type=int, default=100, help="calls before the count starts")
    p.add_argument("--rate", type=int, default=20, help="calls/s sipp places")
    p.add_argument("--drain", type=float, default=0.0,
                   help="seconds to wait after the counted calls before the dump (e.g. 35: "
                        "every counted call's transactions have expired, in both counts)")
    p.add_argument("--target-port", type=int, default=5060)
    p.add_argument("--uac-port", type=int, default=5062)
    p.add_argument("--uas-port", type=int, default=5070)
    p.add_argument("--kamailio-cfg", type=Path, default=BENCH_DIR / "kamailio.cfg")
    p.add_argument("--kamailio-children", type=int, default=2, help="Kamailio UDP workers")
    p.add_argument("--kamailio-mem", choices=("qm", "fm", "tlsf"), default=None,
                   help="Kamailio's memory manager (-x; default: its own, qm)")
    p.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the callgrind files (and logs) here instead of a temporary "
                        "folder, and keep them")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = ["proxy", "kamailio"] if args.target == "both" else [args.target]
    for tool in ["valgrind", "callgrind_control"] + (["kamailio"] if "kamailio" in targets
                                                     else []):
        if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK)):
            print(f"instructions: {tool} is not installed", file=sys.stderr)
            return 2
    if args.calls <= 0 or args.warmup < 0 or args.rate <= 0:
        print("instructions: CALLS and --rate must be positive", file=sys.stderr)
        return 2
    ports = Ports(args.target_port, args.uac_port, args.uas_port)
    base = args.keep or Path(tempfile.mkdtemp(prefix="instructions-"))
    counts: dict[str, Count] = {}
    try:
        for target in targets:
            counts[target] = measure(args, target, ports, base / target)
    except BenchError as exc:
        print(f"instructions: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"callgrind files: {base}/<target>/cg.PID.N (callgrind_annotate "
                  "--inclusive=yes FILE)")
    if len(counts) == 2:
        for line in ratio_lines(counts["proxy"], counts["kamailio"]):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
