"""Process harness for the e2e suite: free ports, the proxy process, sipp processes.

- :func:`free_port` hands out ports on 127.0.0.1 that are free for UDP and TCP (and never twice
  in one session), from a range below the kernel's ephemeral ports so that outgoing
  connections cannot take them between allocation and bind.
- :class:`ProxyProcess` writes a ``proxy.yaml``, runs ``python -m proxy run --config ...`` with
  stderr read by a thread into a log file and a list of lines, waits (bounded) for
  ``sip-policy-proxy ready`` and stops with SIGTERM (bounded) then SIGKILL.  ``problems()``
  lists what makes a run a failure: a ``Traceback`` in the log, an exit on its own, an exit
  code other than 0 after SIGTERM, a needed SIGKILL.
- :class:`Sipp` starts sipp scenarios as asyncio subprocesses with stat/error/screen/message
  trace files, waits for a UAS's socket to be bound (polling /proc/net, bounded) and returns a
  :class:`SippResult` with the exit code and the call counters of the final stat line.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.wire import SipMessage, parse_sip, try_parse, via_sent_by

__all__ = [
    "DEFAULT_POLICY",
    "LOOPBACK",
    "SCENARIOS",
    "SIPP",
    "ProxyProcess",
    "Sipp",
    "SippProcess",
    "SippResult",
    "TracedMessage",
    "free_port",
    "port_bound_by",
    "wait_port_bound",
]

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = "/usr/bin/sipp"
READY_LINE = "sip-policy-proxy ready"
#: seconds a proxy has to say it is ready: about 1 s on an idle machine; the bound is for a
#: machine whose two cores also build the compiled extensions or run other suites (seen: over
#: 10 s for the pure build there)
READY_TIMEOUT = 30.0

# The policy every e2e proxy runs unless a test gives its own (first match wins): the shipped
# policies/default.yaml's actions on the statuses the tests use, plus retry_flows on 430.
DEFAULT_POLICY = """\
rules:
  - name: moved-permanently
    match: {status: 301}
    action: redirect
    permanent: true
    max_redirects: 3
  - name: moved-temporarily
    match: {status: 302}
    action: redirect
  - name: flow-failed
    match: {status: 430}
    action: retry_flows
    max_attempts: 3
  - name: global-failure
    match: {status: [600, 603, 604, 606, 607, 608]}
    action: stop
  - name: unavailable
    match: {status: [408, 500, 503]}
    action: failover
  - name: everything-else
    match: {status: "100-699"}
    action: forward
"""

# ----------------------------------------------------------------------------- ports

_PORT_LOCK = threading.Lock()
_HANDED_OUT: set[int] = set()
_RNG = random.Random(os.getpid() ^ time.monotonic_ns())
# below net.ipv4.ip_local_port_range (32768..60999 by default), above the well-known SIP ports
_PORT_RANGE = (20000, 32000)


def _bind_ok(kind: int, host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(*, span: int = 1, udp: bool = True, tcp: bool = True, host: str = LOOPBACK) -> int:
    """A port P such that P..P+span-1 are free on ``host`` (and on 0.0.0.0) for UDP and/or TCP
    right now and were never handed out before in this process."""
    with _PORT_LOCK:
        for _ in range(2000):
            p = _RNG.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - span)
            ports = range(p, p + span)
            if any(q in _HANDED_OUT for q in ports):
                continue
            ok = all(
                (not udp or (_bind_ok(socket.SOCK_DGRAM, host, q)
                             and _bind_ok(socket.SOCK_DGRAM, "0.0.0.0", q)))
                and (not tcp or (_bind_ok(socket.SOCK_STREAM, host, q)
                                 and _bind_ok(socket.SOCK_STREAM, "0.0.0.0", q)))
                for q in ports
            )
            if ok:
                _HANDED_OUT.update(ports)
                return p
    raise RuntimeError("no free port found")


def _socket_inodes(port: int, transport: str) -> set[str]:
    """Inodes of sockets bound to ``port`` (UDP: any; TCP: listening) from /proc/net."""
    files = ["/proc/net/udp", "/proc/net/udp6"] if transport == "udp" else \
        ["/proc/net/tcp", "/proc/net/tcp6"]
    out: set[str] = set()
    for f in files:
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, state, inode = parts[1], parts[3], parts[9]
            if int(local.rsplit(":", 1)[1], 16) != port:
                continue
            if transport == "tcp" and state != "0A":  # TCP_LISTEN
                continue
            out.add(inode)
    return out


def port_bound_by(pid: int, port: int, transport: str) -> bool:
    """Whether process ``pid`` holds a socket bound to ``port`` (listening for TCP)."""
    inodes = _socket_inodes(port, transport)
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


async def wait_port_bound(
    proc: asyncio.subprocess.Process, port: int, transport: str, timeout: float = 10.0
) -> None:
    """Poll (bounded) until ``proc`` has bound ``port``; fail early if it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"process {proc.pid} exited ({proc.returncode}) before binding "
                                 f"{transport}:{port}")
        if port_bound_by(proc.pid, port, transport):
            return
        await asyncio.sleep(0.02)  # bounded poll of /proc: binding raises no event we can await
    raise AssertionError(f"process {proc.pid} did not bind {transport}:{port} in {timeout} s")


# ----------------------------------------------------------------------------- proxy


def proxy_config(
    port: int,
    *,
    upstreams: Sequence[str] = (),
    registrar: str | None = None,
    domains: Sequence[str] | None = None,
    policy: str | None = "policy.yaml",
    force_rport: bool | None = None,
    record_route: bool | None = None,
    timers: Mapping[str, int] | None = None,
    limits: Mapping[str, int] | None = None,
    drain_timeout: float | None = 1.0,
    log_level: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The proxy.yaml mapping (the keys of README "proxy.yaml"); keys left None
    are omitted so that the proxy's defaults apply."""
    cfg: dict[str, Any] = {
        "listen": [f"udp:{LOOPBACK}:{port}", f"tcp:{LOOPBACK}:{port}"],
        "upstreams": list(upstreams),
        "state": "memory:",
    }
    optional: dict[str, Any] = {
        "policy": policy,
        "registrar": registrar,
        "domains": list(domains) if domains is not None else None,
        "force_rport": force_rport,
        "record_route": record_route,
        "timers": dict(timers) if timers else None,
        "limits": dict(limits) if limits else None,
        "drain_timeout": drain_timeout,
        "log_level": log_level,
    }
    cfg.update({k: v for k, v in optional.items() if v is not None})
    # No OPTIONS to the test's upstreams unless a test asks for probing (a sipp UAS would take
    # one for an unexpected call).
    cfg["upstream_probe"] = {"interval": 0}
    cfg.update(extra or {})
    return cfg


class ProxyProcess:
    """One running ``python -m proxy run --config DIR/proxy.yaml`` listening on udp and tcp
    127.0.0.1:``port``.  Create with :meth:`launch`."""

    def __init__(self, workdir: Path, port: int, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = port
        self.host = LOOPBACK
        self.config = config
        self.config_path = workdir / "proxy.yaml"
        self.log_path = workdir / "proxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stopped_by_us = False
        self.killed = False
        self._lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    # -- life cycle

    @classmethod
    def launch(
        cls,
        workdir: Path,
        *,
        port: int | None = None,
        policy_text: str | None = DEFAULT_POLICY,
        ready_timeout: float = READY_TIMEOUT,
        command: Sequence[str] | None = None,
        **config: Any,
    ) -> ProxyProcess:
        """Write DIR/proxy.yaml (+ DIR/policy.yaml from ``policy_text`` unless ``policy`` is
        given), start the proxy and wait for its ready line.  ``config`` goes to
        :func:`proxy_config`; ``command`` replaces ``python -m proxy`` (harness self-test)."""
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        if "policy" not in config:
            if policy_text is not None:
                (workdir / "policy.yaml").write_text(policy_text)
                config["policy"] = "policy.yaml"  # relative to proxy.yaml (README "proxy.yaml")
            else:
                config["policy"] = None
        self = cls(workdir, port, proxy_config(port, **config))
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.start(ready_timeout, command)
        return self

    def start(self, ready_timeout: float = READY_TIMEOUT,
              command: Sequence[str] | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [*(command or (sys.executable, "-m", "proxy")), "run", "--config",
             str(self.config_path)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name=f"proxy-log-{self.port}",
                                         daemon=True)
        self._reader.start()
        try:
            self.wait_for_log(READY_LINE, timeout=ready_timeout)
        except AssertionError:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, wait ``drain_timeout + 3`` s (bounded), then SIGKILL.  Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            drain = float(self.config.get("drain_timeout") or 5.0)
            self.stopped_by_us = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace if grace is not None else drain + 3.0)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.returncode

    # -- observation

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), f"the proxy exited (rc {self.proc and self.proc.poll()}):\n" + \
            self.tail()

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def mark(self) -> int:
        """The number of log lines so far: pass it as ``since`` to wait for later lines."""
        with self._cond:
            return len(self._lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines()[-n:])

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                     since: int = 0) -> str:
        """Block until a log line at index >= ``since`` contains ``pattern`` (a substring, or a
        compiled regex searched); AssertionError with the log tail on timeout or exit."""
        def find() -> str | None:
            for line in self._lines[since:]:
                if (pattern.search(line) if isinstance(pattern, re.Pattern)
                        else pattern in line):
                    return line
            return None

        with self._cond:
            ok = self._cond.wait_for(lambda: find() is not None or self._eof, timeout)
            found = find()
        if found is None:
            state = "exited" if self._eof else f"timeout {timeout} s"
            raise AssertionError(f"proxy log: no line matching {pattern!r} ({state}, ok={ok}):\n"
                                 + self.tail())
        return found

    async def await_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                        since: int = 0) -> str:
        return await asyncio.to_thread(self.wait_for_log, pattern, timeout, since)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def problems(self) -> list[str]:
        """What makes this run a failure (checked at teardown, after :meth:`stop`)."""
        out: list[str] = []
        lines = self.lines()
        if any("Traceback" in line for line in lines):
            out.append("a Traceback in the proxy log")
        if self.proc is not None and not self.stopped_by_us:
            out.append(f"the proxy exited on its own with rc {self.returncode}")
        elif self.killed:
            out.append("the proxy did not exit within drain_timeout + 3 s of SIGTERM")
        elif self.returncode not in (0, None):
            out.append(f"the proxy exited with rc {self.returncode} after SIGTERM")
        return out


# ----------------------------------------------------------------------------- sipp


@dataclass(frozen=True, slots=True)
class TracedMessage:
    """One message from a sipp ``-trace_msg`` file."""

    direction: str  # "sent" | "received"
    transport: str  # "UDP" | "TCP"
    text: str

    @property
    def sip(self) -> SipMessage | None:
        return try_parse(self.text.encode("latin-1", "replace"))


_TRACE_SEP = re.compile(r"^-{20,} [^\n]*\n", re.M)
_TRACE_HEAD = re.compile(r"^(\w+) message (sent|received)[^\n]*\n\n?", re.S)


def parse_trace(text: str) -> list[TracedMessage]:
    out: list[TracedMessage] = []
    for chunk in _TRACE_SEP.split(text):
        m = _TRACE_HEAD.match(chunk)
        if m is None:
            continue
        body = chunk[m.end():].rstrip("\n") + "\n"
        out.append(TracedMessage(m.group(2), m.group(1), body.replace("\r\n", "\n")
                                 .replace("\n", "\r\n")))
    return out


@dataclass(frozen=True, slots=True)
class Traced:
    """A parsed message of a sipp ``-trace_msg`` file with the time sipp logged it (every sipp
    process logs the same wall clock, so times of different processes compare)."""

    at: float
    direction: str  # "sent" | "received"
    msg: SipMessage


_STAMPED_SEP = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)[^\n]*\n", re.M)


def traced(source: Path | SippProcess | SippResult) -> list[Traced]:
    """Every SIP message of a -trace_msg file, in order (a running process's file can be read
    too: sipp writes it as messages go). Unparsable entries are skipped."""
    path = source if isinstance(source, Path) else source.files["msg"]
    if not path.exists():
        return []
    parts = _STAMPED_SEP.split(path.read_text(encoding="latin-1"))
    out: list[Traced] = []
    for stamp, chunk in zip(parts[1::2], parts[2::2], strict=True):
        head = _TRACE_HEAD.match(chunk)
        if head is None:
            continue
        body = chunk[head.end():].rstrip("\n") + "\n"
        raw = body.replace("\r\n", "\n").replace("\n", "\r\n").encode("latin-1")
        try:
            msg = parse_sip(raw)
        except ValueError:
            continue
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(Traced(at, head.group(2), msg))
    return out


@dataclass(frozen=True)
class SippResult:
    """Outcome of one sipp run: exit code and the cumulative counters of the final stat line
    (None when sipp wrote none, e.g. killed by the outer bound)."""

    name: str
    returncode: int | None
    timed_out: bool  # SIGKILLed: by the outer bound, or stop() found it deaf to SIGINT
    forced: bool  # stop(): calls were still open after the grace period (SIGINT)
    counters: dict[str, str] = field(repr=False)
    files: dict[str, Path] = field(repr=False)

    def _count(self, key: str) -> int | None:
        v = self.counters.get(key)
        return int(v) if v is not None and v.strip().isdigit() else None

    @property
    def successful(self) -> int | None:
        return self._count("SuccessfulCall(C)")

    @property
    def failed(self) -> int | None:
        return self._count("FailedCall(C)")

    @property
    def created(self) -> int | None:
        return self._count("TotalCallCreated")

    @property
    def retransmissions(self) -> int | None:
        return self._count("Retransmissions(C)")

    def messages(self) -> list[TracedMessage]:
        p = self.files.get("msg")
        if p is None or not p.exists():
            return []
        return parse_trace(p.read_text(encoding="latin-1"))

    def errors(self) -> str:
        p = self.files.get("err")
        return p.read_text(encoding="latin-1") if p is not None and p.exists() else ""

    def describe(self) -> str:
        nonzero = {k: v for k, v in self.counters.items()
                   if k.endswith("(C)") and v.strip() not in ("0", "")
                   and not k.startswith(("ElapsedTime", "CallRate", "ResponseTime", "CallLength"))}
        err = self.errors().strip().splitlines()
        return (f"sipp {self.name}: rc={self.returncode} timed_out={self.timed_out} "
                f"forced={self.forced} "
                f"successful={self.successful} failed={self.failed} counters={nonzero}\n"
                f"  error log ({len(err)} lines), last: " + "\n    ".join(err[-8:]))


# ----------------------------------------------------------------------------- checks on traces
# Shared by the e2e test files: one definition each.


def assert_calls(result: SippResult, calls: int) -> None:
    """sipp ended by itself (or by a clean soft quit) with ``calls`` successful calls, none
    failed."""
    assert result.returncode == 0 and not result.timed_out and not result.forced, \
        result.describe()
    assert result.successful == calls and result.failed == 0, result.describe()


def sipp_msgs(result: SippResult, direction: str,
              pred: Callable[[SipMessage], bool]) -> list[SipMessage]:
    """The messages sipp ``direction`` ("sent" / "received") that satisfy ``pred``."""
    return [t.sip for t in result.messages()
            if t.direction == direction and t.sip is not None and pred(t.sip)]


def via_is_proxy(msg: SipMessage, proxy: ProxyProcess, transport: str | None = None) -> bool:
    """The top Via is the proxy's own (RFC 3261 16.6 step 8: its address, a z9hG4bK branch),
    and names ``transport`` when one is given."""
    t, host, port, params = via_sent_by(msg.vias[0])
    return ((host, port) == proxy.addr and (transport is None or t == transport.upper())
            and (params.get("branch") or "").startswith("z9hG4bK"))


def branch(msg: SipMessage) -> str | None:
    """The branch of the top Via."""
    return via_sent_by(msg.vias[0])[3].get("branch")


def to_tag(msg: SipMessage) -> str | None:
    m = re.search(r";\s*tag\s*=\s*([^;>\s]+)", msg.get("to") or "", re.I)
    return m.group(1) if m else None


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream; the peer having gone already is no error."""
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def read_stat(path: Path) -> dict[str, str]:
    """The last row of a sipp ``-trace_stat`` CSV as {column: value}."""
    try:
        rows = list(csv.reader(path.read_text(encoding="latin-1").splitlines(), delimiter=";"))
    except OSError:
        return {}
    rows = [r for r in rows if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def read_screen(path: Path) -> dict[str, str]:
    """Fallback: the cumulative "Successful call" / "Failed call" of a -trace_screen file."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="latin-1")
    except OSError:
        return out
    for key, col in (("Successful call", "SuccessfulCall(C)"), ("Failed call", "FailedCall(C)")):
        found = re.findall(rf"^\s*{key}\s*\|\s*\d+\s*\|\s*(\d+)", text, re.M)
        if found:
            out[col] = found[-1]
    return out


class SippProcess:
    """A running sipp.  :meth:`wait` (bounded by ``outer`` seconds, then SIGKILL) or
    :meth:`stop` (soft quit with SIGUSR1, SIGINT after ``grace``) returns a :class:`SippResult`."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, files: dict[str, Path],
                 argv: list[str], port: int, transport: str, outer: float) -> None:
        self.name = name
        self.proc = proc
        self.files = files
        self.argv = argv
        self.port = port
        self.transport = transport
        self.outer = outer
        self.result: SippResult | None = None
        self._timed_out = False
        self._forced = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _result(self) -> SippResult:
        counters = read_stat(self.files["stat"]) or read_screen(self.files["screen"])
        self.result = SippResult(self.name, self.proc.returncode, self._timed_out,
                                 self._forced, counters, self.files)
        return self.result

    async def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to exit by itself; SIGKILL after ``timeout`` (default: the outer
        bound given at start) and mark the result timed_out."""
        bound = self.outer if timeout is None else timeout
        try:
            await asyncio.wait_for(self.proc.wait(), bound)
        except TimeoutError:
            self._timed_out = True
            await self.kill()
        return self._result()

    async def stop(self, grace: float = 5.0) -> SippResult:
        """Soft quit (SIGUSR1, as key 'q': no new calls, running calls end); calls still open
        after ``grace`` s (sipp's -timeout does not end them) -> SIGINT, which exits at once and
        still writes the final stat line (result.forced); SIGKILL 5 s later."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self._forced = True
                if self.proc.returncode is None:
                    self.proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(self.proc.wait(), 5.0)
                except TimeoutError:
                    self._timed_out = True
                    await self.kill()
        return self._result()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()


class Sipp:
    """Starts sipp processes in ``workdir``; :meth:`close` kills what is left (teardown)."""

    def __init__(self, workdir: Path, scenarios: Path = SCENARIOS) -> None:
        self.workdir = workdir
        self.scenarios = scenarios
        self.procs: list[SippProcess] = []
        self._n = 0

    def scenario(self, name: str) -> Path:
        p = Path(name)
        if not p.is_absolute():
            p = self.scenarios / name
        assert p.exists(), f"no scenario {p}"
        return p

    async def _spawn(
        self,
        name: str,
        scenario: str,
        args: Sequence[str],
        *,
        port: int,
        transport: str,
        timeout: float,
        trace_msg: bool,
        extra: Iterable[str],
        tail: Sequence[str] = (),
    ) -> SippProcess:
        self._n += 1
        tag = f"{self._n:02d}-{name}"
        files = {
            "stat": self.workdir / f"{tag}.stat.csv",
            "err": self.workdir / f"{tag}.err",
            "screen": self.workdir / f"{tag}.screen",
            "msg": self.workdir / f"{tag}.msg",
            "stdout": self.workdir / f"{tag}.out",
        }
        media = free_port(span=4, tcp=False)
        control = free_port(tcp=False)
        argv = [
            SIPP, "-sf", str(self.scenario(scenario)),
            "-i", LOOPBACK, "-p", str(port),
            "-t", "u1" if transport == "udp" else "t1",
            "-nostdin", "-buff_size", "4194304",
            "-mp", str(media), "-cp", str(control),
            "-timeout", str(int(timeout)), "-timeout_error",
            "-trace_stat", "-stf", str(files["stat"]),
            "-trace_err", "-error_file", str(files["err"]),
            "-trace_screen", "-screen_file", str(files["screen"]),
        ]
        if trace_msg:
            argv += ["-trace_msg", "-message_file", str(files["msg"])]
        argv += [*args, *extra, *tail]
        with open(files["stdout"], "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.workdir, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        sp = SippProcess(tag, proc, files, argv, port, transport, timeout + 15.0)
        self.procs.append(sp)
        return sp

    async def uas(
        self,
        scenario: str,
        *,
        port: int | None = None,
        transport: str = "udp",
        calls: int | None = None,
        timeout: float = 60.0,
        trace_msg: bool = True,
        lost: int | None = None,
        extra: Iterable[str] = (),
        name: str = "uas",
    ) -> SippProcess:
        """Start a server scenario on ``port`` and return once its socket is bound."""
        port = port or free_port()
        args: list[str] = []
        if calls is not None:
            args += ["-m", str(calls)]
        if lost is not None:
            args += ["-lost", str(lost)]
        sp = await self._spawn(name, scenario, args, port=port, transport=transport,
                               timeout=timeout, trace_msg=trace_msg, extra=extra)
        try:
            await wait_port_bound(sp.proc, port, transport)
        except AssertionError as exc:
            res = await sp.wait(5)
            raise AssertionError(f"{exc}\n{res.describe()}\n"
                                 + sp.files["stdout"].read_text("latin-1")[-2000:]) from None
        return sp

    async def uac(
        self,
        scenario: str,
        remote: tuple[str, int],
        *,
        port: int | None = None,
        transport: str = "udp",
        calls: int = 1,
        rate: int = 50,
        limit: int = 100,
        service: str = "service",
        keys: Mapping[str, str] | None = None,
        duration_ms: int = 0,
        lost: int | None = None,
        timeout: float = 60.0,
        trace_msg: bool = True,
        extra: Iterable[str] = (),
        name: str = "uac",
    ) -> SippProcess:
        """Start a client scenario placing ``calls`` calls at ``rate``/s (at most ``limit`` at
        once) to ``remote``; [service] is ``service``, ``keys`` fill [key] keywords ([domain]
        defaults to example.net, a domain the proxy is not responsible for)."""
        port = port or free_port()
        args = ["-m", str(calls), "-r", str(rate), "-rp", "1000", "-l", str(limit),
                "-d", str(duration_ms), "-s", service]
        for k, v in {"domain": "example.net", **(keys or {})}.items():
            args += ["-key", k, v]
        if lost is not None:
            args += ["-lost", str(lost)]
        return await self._spawn(name, scenario, args, port=port, transport=transport,
                                 timeout=timeout, trace_msg=trace_msg, extra=extra,
                                 tail=[f"{remote[0]}:{remote[1]}"])

    async def close(self) -> None:
        for sp in self.procs:
            if sp.proc.returncode is None:
                await sp.kill()


def rss_kib(pid: int) -> int:
    """The resident set size (VmRSS, KiB) of process ``pid`` from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")
