#!/usr/bin/env python3
"""Hostile load against a real proxy process: the attacks of issue 18, replayed and measured.

Everything runs on loopback, started by this script, stopped by it:

    legitimate caller 127.0.0.1 --UDP--> proxy 127.0.0.1 --UDP--> PBX 127.0.0.1 (a small UAS)
    attackers 127.0.0.2 and up (127.0.1.x, 127.0.2.x for the stream floods)
    the "foreign host" 127.0.0.3: a listener that must receive nothing

For each attack the proxy is started afresh (the compiled build when `make compiled` built it:
the line `build:` says which ran) with the attack's configuration, warmed up with a few calls,
and then measured: its RSS idle (the median of three samples), at its peak during the attack
(VmHWM, reset before the attack, and samples every 0.2 s), and after the attack, sampled every
second for up to --after seconds (60) until it stayed within 20 % of idle for --settle samples
(5; 0 watches the whole window); its CPU over the attack (utime+stime from /proc); and a
legitimate call (INVITE -> 200 through the proxy, from 127.0.0.1, every 0.5 s during the attack:
p50 and max, and the calls that got no 200 within 2 s). Each attack also says what it achieved
(relayed INVITEs that reached the foreign host, responses per request, guesses checked ...).

The attacks (ids for --attacks): 1 relay, 2 restart, 3 reflect, 4 totag, 5 guess, 6 slots,
7a tls, 7b cancel, 7c register, 8 amplify, 9 hijack, 10 sipvicious (bench/README.md says what
each sends and what it reports). --scale multiplies every count (0.1 for a quick run).
Output: the report on stdout and in bench/results/hostile-<time>/report.txt, with
results.json and each proxy's log beside it.

Standard library, the project's own proxy, trustme (a test dependency) for the TLS certificate
and Debian's sipvicious for step 10 (skipped with a line when it is missing).

  .venv/bin/python bench/hostile.py                      # everything, a few minutes
  .venv/bin/python bench/hostile.py --attacks 1,4,7b --scale 0.2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_peers import NUMBER, role_main  # noqa: E402
from hostile_sip import (  # noqa: E402
    ATTACKS,
    AttackResult,
    Msg,
    authorization,
    back_within,
    build_request,
    format_report,
    metric,
    parse_attacks,
    parse_challenge,
    parse_metrics,
    parse_msg,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LOOPBACK, STRANGER, FOREIGN, OTHER = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"
REALM = "example.net"
SECRET = "hostile-bench-secret-0123456789abcdef"
USERS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "1001": "1207", "1002": "8841"}
READY = "sip-policy-proxy ready"
TOLERANCE = 0.2  # RSS back within 20 % of idle (issue 18's done criterion)
LATENCY_BOUND_MS = 200.0
SV_TIMEOUT = 20.0  # svcrack retries a 403 for ever: each sipvicious tool runs this long at most


class BenchError(RuntimeError):
    """A set-up problem (no proxy, no port): one line, exit status 2."""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (asked of the kernel)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOOPBACK, 0))
            port = int(u.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind((LOOPBACK, port))
                    return port
            except OSError:
                continue
    raise BenchError("no free port")


def proxy_env() -> dict[str, str]:
    """The proxy's environment: this checkout first on its path. The proxy runs in its
    results folder (its configuration's relative paths), where ``-m proxy`` would otherwise
    import whatever checkout the interpreter's environment has installed, not this one (and
    the ``build:`` line, asked from here, would describe another build than the one run)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def proc_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------- the proxy


class Proxy:
    """The proxy process under attack: its configuration, log, RSS, CPU and /metrics."""

    def __init__(self, python: str, workdir: Path, pbx_port: int) -> None:
        self.python = python
        self.workdir = workdir
        self.port, self.tls_port, self.http_port = free_port(), free_port(), free_port()
        self.pbx_port = pbx_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[str] | None = None
        self.ready = threading.Event()
        self.cfg: Path | None = None
        self._pump: threading.Thread | None = None
        users = workdir / "users.yaml"
        users.write_text("".join(f'"{u}": {{password: "{p}"}}\n' for u, p in USERS.items()))
        self.cert, self.key = workdir / "cert.pem", workdir / "key.pem"
        make_cert(self.cert, self.key)

    @property
    def addr(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def configure(self, name: str, limits: dict[str, float] | None = None,
                  timers: dict[str, int] | None = None, scanned: bool = False) -> Path:
        """``scanned``: the sipvicious step's: ``domains: [example.net]`` (svwar's URIs name
        it) and ``auth.algorithms: [MD5]`` (svcrack answers MD5 only)."""
        lines = [
            f"# generated by bench/hostile.py for attack {name}",
            f"listen: [udp:{LOOPBACK}:{self.port}, tcp:{LOOPBACK}:{self.port}, "
            f"tls:{LOOPBACK}:{self.tls_port}]",
            f"upstreams: [sip:{LOOPBACK}:{self.pbx_port}]",
            "registrar: local",
            f"auth: {{realm: {REALM}, users_file: users.yaml"
            + (", algorithms: [MD5]}" if scanned else "}"),
            f'secret: "{SECRET}"',
            f"http: {LOOPBACK}:{self.http_port}",
            f"tls: {{cert_file: {self.cert.name}, key_file: {self.key.name}}}",
            "log_level: info",
            "upstream_probe: {interval: 0}",
        ]
        if scanned:
            lines.append(f"domains: [{REALM}]")
        if limits:
            lines.append("limits: {" + ", ".join(f"{k}: {v}" for k, v in limits.items()) + "}")
        if timers:
            lines.append("timers: {" + ", ".join(f"{k}: {v}" for k, v in timers.items()) + "}")
        cfg = self.workdir / f"proxy-{name}.yaml"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self, cfg: Path) -> None:
        self.cfg = cfg
        self.ready.clear()
        self.log = (self.workdir / (cfg.stem + ".log")).open("a")
        self.proc = subprocess.Popen(
            [self.python, "-m", "proxy", "run", "--config", str(cfg)], cwd=self.workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env=proxy_env())
        self._pump = threading.Thread(target=self._copy, args=(self.proc, self.log), daemon=True)
        self._pump.start()
        if not self.ready.wait(30) or self.proc.poll() is not None:
            self.stop()
            tail = (self.workdir / (cfg.stem + ".log")).read_text()[-2000:]
            raise BenchError(f"the proxy did not start with {cfg.name}:\n{tail}")

    def _copy(self, proc: subprocess.Popen[bytes], log: IO[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            log.write(line)
            if READY in line:
                log.flush()
                self.ready.set()
        log.flush()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._pump is not None:
            self._pump.join(5)
        if self.log is not None:
            self.log.close()
        self.proc = self.log = None

    def restart(self) -> None:
        assert self.cfg is not None
        cfg = self.cfg
        self.stop()
        self.start(cfg)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        return proc_kib(self.pid, "VmRSS") / 1024

    def reset_peak(self) -> bool:
        """Reset VmHWM (Linux: 5 > clear_refs); False when not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak_mib(self) -> float:
        return proc_kib(self.pid, "VmHWM") / 1024

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://{LOOPBACK}:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return parse_metrics(r.read().decode())

    def log_lines(self) -> list[str]:
        assert self.cfg is not None
        path = self.workdir / (self.cfg.stem + ".log")
        return path.read_text(errors="replace").splitlines() if path.exists() else []


def make_cert(cert: Path, key: Path) -> None:
    """A certificate for 127.0.0.1 from a throw-away CA (trustme, a test dependency)."""
    try:
        import trustme
    except ImportError as exc:
        raise BenchError("trustme is needed for the TLS listener (pip install trustme, or "
                         "make venv: it is a test dependency)") from exc
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))


# ------------------------------------------------------------------------------- peers


class Pbx:
    """The PBX process (hostile_peers.pbx_main), driven over its stdin/stdout."""

    def __init__(self, python: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [python, str(BENCH / "hostile.py"), "--role", "pbx", "--role-arg", str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        if "ready" not in self.proc.stdout.readline():
            raise BenchError("the PBX did not start")
        self.lock = threading.Lock()

    def cmd(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply

    def count(self, prefix: str) -> int:
        """Requests received whose Call-ID starts with ``prefix`` and a dash."""
        return int(self.cmd(cmd="stats")["prefixes"].get(prefix, 0))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_role(role: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run a flood or a stream holder (hostile_peers) to its end; its JSON result."""
    out = subprocess.run([sys.executable, str(BENCH / "hostile.py"), "--role", role,
                          "--role-arg", json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise BenchError(f"{role} failed: {out.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class Listener(threading.Thread):
    """The foreign host: counts every datagram that reaches it."""

    def __init__(self, host: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.received = 0
        self.first: bytes = b""
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.first:
                self.first = data[:200]
            self.received += 1


class Ua:
    """A blocking UDP user agent on a loopback address (the legitimate side, and the
    attackers' set-up steps)."""

    def __init__(self, proxy: Proxy, host: str = LOOPBACK) -> None:
        self.proxy = proxy
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, 0))
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, ruri: str, call_id: str, **kw: Any) -> bytes:
        kw.setdefault("from_uri", f"sip:ua@{self.host}")
        kw.setdefault("to_uri", ruri)
        return build_request(method, ruri, call_id=call_id, via_host=self.host,
                             via_port=self.port, **kw)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.proxy.addr)

    def final(self, call_id: str, timeout: float = 2.0,
              cseq_method: str | None = None) -> Msg | None:
        """The first final response for ``call_id`` within ``timeout`` s (None: none)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                return None
            msg = parse_msg(data)
            if (msg is not None and msg.status is not None and msg.status >= 200
                    and msg.call_id == call_id
                    and (cseq_method is None or msg.cseq[1] == cseq_method)):
                return msg

    def call(self, ruri: str = "sip:service@example.com",
             timeout: float = 2.0) -> float | None:
        """INVITE -> 200 through the proxy (ms), then ACK and BYE by the route set; None when
        no 200 came within ``timeout``."""
        cid = f"legit-{secrets.token_hex(6)}"
        contact = [f"Contact: <sip:ua@{self.host}:{self.port}>"]
        t0 = time.perf_counter()
        self.send(self.request("INVITE", ruri, cid, headers=contact))
        ok = self.final(cid, timeout, "INVITE")
        ms = (time.perf_counter() - t0) * 1000
        if ok is None or ok.status != 200:
            return None
        route = [f"Route: {v}" for v in reversed(ok.get_all("record-route"))]
        target = re.sub(r"^.*<([^>]+)>.*$", r"\1", ok.get("contact") or ruri)
        tag = ok.tag("to")
        self.send(self.request("ACK", target, cid, to_uri=ruri, to_tag=tag, headers=route))
        self.send(self.request("BYE", target, cid, to_uri=ruri, to_tag=tag, cseq=2,
                               headers=route))
        self.final(cid, 1.0, "BYE")
        return ms

    def register(self, user: str, password: str, contact: str | None,
                 aor_host: str = REALM, expires: int = 300,
                 extra: tuple[str, ...] = ()) -> Msg | None:
        """A REGISTER for ``user@aor_host`` answered by digest (RFC 3261 22.4); the final."""
        aor = f"sip:{user}@{aor_host}"
        ruri = f"sip:{REALM}"
        cid = f"reg-{secrets.token_hex(6)}"
        headers = [f"Expires: {expires}", *extra]
        if contact is not None:
            headers.insert(0, f"Contact: {contact}")
        self.send(self.request("REGISTER", ruri, cid, from_uri=aor, to_uri=aor,
                               headers=headers))
        first = self.final(cid)
        if first is None or first.status != 401:
            return first
        ch = parse_challenge(first.get("www-authenticate") or "")
        algorithm = ch.get("algorithm", "MD5")
        auth = authorization(user, REALM, password, "REGISTER", ruri, ch["nonce"], 1,
                             algorithm=algorithm)
        self.send(self.request("REGISTER", ruri, cid, from_uri=aor, to_uri=aor, cseq=2,
                               headers=[*headers, auth]))
        return self.final(cid)

    def challenge(self, user: str) -> dict[str, str]:
        """A fresh nonce of the registrar (the 401 to a REGISTER without credentials)."""
        aor = f"sip:{user}@{REALM}"
        cid = f"nonce-{secrets.token_hex(6)}"
        self.send(self.request("REGISTER", f"sip:{REALM}", cid, from_uri=aor, to_uri=aor))
        first = self.final(cid)
        if first is None or first.status != 401:
            raise BenchError(f"no challenge for {user}: {first and first.start}")
        return parse_challenge(first.get("www-authenticate") or "")


class Probe(threading.Thread):
    """Places a legitimate call every ``interval`` s until stopped; the latencies in ms.
    ``stream``: an OPTIONS over a new TCP or TLS connection instead (its 200, in ms)."""

    def __init__(self, proxy: Proxy, interval: float = 0.5, stream: str | None = None) -> None:
        super().__init__(daemon=True)
        self.proxy, self.interval, self.stream = proxy, interval, stream
        self.latencies: list[float] = []
        self.started: list[float] = []  # when each answered one was placed (monotonic)
        self.failed = 0
        self.stopping = threading.Event()
        # Made once, outside the timed part: create_default_context() loads the system CAs,
        # 20 ms and more of the client's own CPU (it was counted in every TLS figure before).
        self.tls_ctx = ssl.create_default_context()
        self.tls_ctx.check_hostname = False
        self.tls_ctx.verify_mode = ssl.CERT_NONE

    def run(self) -> None:
        ua = Ua(self.proxy) if self.stream is None else None
        try:
            while not self.stopping.is_set():
                t = time.monotonic()
                ms = ua.call() if ua is not None else self._stream_options()
                if ms is None:
                    self.failed += 1
                else:
                    self.latencies.append(ms)
                    self.started.append(t)
                self.stopping.wait(max(0.0, self.interval - (time.monotonic() - t)))
        finally:
            if ua is not None:
                ua.close()

    def worst(self, since: float) -> str:
        """The slowest answer and when it was placed, in seconds from ``since``."""
        if not self.latencies:
            return "none answered"
        i = max(range(len(self.latencies)), key=self.latencies.__getitem__)
        return f"worst {self.latencies[i]:.1f} ms at +{self.started[i] - since:.1f} s"

    def _stream_options(self) -> float | None:
        port = self.proxy.port if self.stream == "tcp" else self.proxy.tls_port
        t0 = time.perf_counter()
        try:
            raw = socket.create_connection((LOOPBACK, port), timeout=2.0)
            sock: socket.socket = raw
            if self.stream == "tls":
                sock = self.tls_ctx.wrap_socket(raw)
            with sock:
                host, lport = sock.getsockname()[:2]
                sock.sendall(build_request(
                    "OPTIONS", f"sip:{LOOPBACK}", call_id=f"probe-{secrets.token_hex(4)}",
                    via_host=host, via_port=lport, from_uri="sip:probe@127.0.0.1",
                    to_uri=f"sip:{LOOPBACK}", transport=self.stream.upper() if self.stream
                    else "TCP"))
                data = sock.recv(65535)
        except (OSError, ssl.SSLError):
            return None
        return (time.perf_counter() - t0) * 1000 if data.startswith(b"SIP/2.0 200") else None


class Sampler(threading.Thread):
    """RSS of the proxy every ``every`` s while the attack runs (its maximum)."""

    def __init__(self, proxy: Proxy, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.proxy, self.every = proxy, every
        self.peak = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, self.proxy.rss_mib())
            self.stopping.wait(self.every)


# ------------------------------------------------------------------------------- the run


class Ctx:
    """What an attack has at hand: the proxy, the PBX, the foreign host, the options; and
    :meth:`measure`, the window whose RSS, CPU and legitimate calls are reported."""

    def __init__(self, args: argparse.Namespace, proxy: Proxy, pbx: Pbx, foreign: Listener,
                 result: AttackResult) -> None:
        self.args, self.proxy, self.pbx, self.foreign = args, proxy, pbx, foreign
        self.result = result
        self.ended = 0.0
        self.idle = 0.0

    def n(self, count: int) -> int:
        return max(1, int(count * self.args.scale))

    def say(self, line: str) -> None:
        self.result.outcome.append(line)

    def hole(self, line: str) -> None:
        self.result.holes.append(line)

    def idle_rss(self) -> float:
        samples = []
        for _ in range(3):
            samples.append(self.proxy.rss_mib())
            time.sleep(0.5)
        return statistics.median(samples)

    @contextmanager
    def measure(self, stream: str | None = None) -> Iterator[None]:
        r, proxy = self.result, self.proxy
        self.idle = r.idle_mib = self.idle_rss()
        hwm = proxy.reset_peak()
        sampler = Sampler(proxy)
        probes = [Probe(proxy)] + ([Probe(proxy, 1.0, stream)] if stream else [])
        cpu0, t0 = proxy.cpu_s(), time.monotonic()
        sampler.start()
        for p in probes:
            p.start()
        try:
            yield
        finally:
            t1 = time.monotonic()
            cpu1 = proxy.cpu_s() if proxy.alive() else cpu0
            for p in probes:
                p.stopping.set()
            sampler.stopping.set()
            for p in probes:
                p.join(5)
            sampler.join(2)
            self.ended = t1
            r.attack_s = t1 - t0
            r.cpu_pct = 100 * (cpu1 - cpu0) / max(1e-6, t1 - t0)
            r.peak_mib = max(sampler.peak, proxy.peak_mib() if hwm and proxy.alive() else 0)
            r.latencies_ms = probes[0].latencies
            r.calls_failed = probes[0].failed
            self.say(f"legitimate calls: {probes[0].worst(t0)} of the {t1 - t0:.1f} s attack"
                     + (f"; {stream.upper()} OPTIONS: {probes[1].worst(t0)}" if stream else ""))
            if not r.latency_ok(LATENCY_BOUND_MS):
                slow = sum(1 for ms in r.latencies_ms if ms > LATENCY_BOUND_MS)
                self.hole(f"legitimate calls during the attack: {slow} of "
                          f"{len(r.latencies_ms)} answered over {LATENCY_BOUND_MS:.0f} ms "
                          f"(max {r.max_ms or 0:.0f} ms), {r.calls_failed} not answered")
            if stream:
                s = probes[1]
                p50 = statistics.median(s.latencies) if s.latencies else None
                self.say(f"legitimate {stream.upper()} OPTIONS over a new connection, every "
                         f"1 s during the attack: {len(s.latencies)} answered, {s.failed} not"
                         + (f" (p50 {p50:.1f} ms, max {max(s.latencies):.1f} ms)"
                            if p50 is not None else ""))
                if s.failed:
                    self.hole(f"{s.failed} legitimate {stream.upper()} connections got no "
                              "answer during the attack")

    def after(self) -> None:
        """RSS every second after the attack: until back within 20 % of idle for --settle
        samples in a row, at most --after seconds."""
        r, samples, settle = self.result, [], self.args.settle
        if not self.proxy.alive():
            return
        while True:
            t = time.monotonic() - self.ended
            samples.append((t, self.proxy.rss_mib()))
            back = back_within(samples, self.idle, TOLERANCE)
            inside = [s for s in samples if back is not None and s[0] >= back]
            if t >= self.args.after or (settle and len(inside) >= settle):
                break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - self.ended - t)))
        r.after_mib, r.watched_s = samples[-1][1], samples[-1][0]
        r.back_s = back_within(samples, self.idle, TOLERANCE)
        if r.back_s is not None and r.back_s > 60:
            r.back_s = None
        if r.back_s is None:
            self.hole(f"RSS {r.after_mib:.1f} MiB {r.watched_s:.0f} s after the attack, idle "
                      f"{r.idle_mib:.1f} MiB: not back within 20 %")

    def flood(self, template: str, count: int, rate: float, sources: list[str] | None = None,
              drain: float = 2.0, **extra: Any) -> dict[str, Any]:
        spec = {"template": template, "count": count, "rate": rate, "drain": drain,
                "sources": sources or [STRANGER], "dst": list(self.proxy.addr), **extra}
        return run_role("flood", spec, timeout=count / rate + drain + 60)

    def metric_delta(self, before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                     name: str, **labels: str) -> int:
        return int(metric(self.proxy.metrics(), name, **labels) - metric(before, name, **labels))


def template(method: str, ruri: str, *, to_tag: str | None = "@N@", headers: tuple[str, ...] = (),
             from_uri: str = f"sip:mallory@{STRANGER}", call_prefix: str = "atk",
             cseq: int = 1, to_uri: str | None = None) -> str:
    """A flood's request, numbered by ``@N@`` (Call-ID, branch, invented To tag)."""
    data = build_request(method, ruri, call_id=f"{call_prefix}-{NUMBER}", via_host=STRANGER,
                         via_port=5060, from_uri=from_uri, to_uri=to_uri or ruri,
                         from_tag="m" + NUMBER, to_tag=None if to_tag is None else "x" + to_tag,
                         branch=f"z9hG4bK{call_prefix}" + NUMBER, cseq=cseq, headers=headers)
    return data.decode("latin-1")


def statuses(res: dict[str, Any]) -> str:
    return ", ".join(f"{v:,} x {k}" for k, v in sorted(res["statuses"].items())) or "none"


# ------------------------------------------------------------------------------- attacks

Attack = Callable[[Ctx], None]


def attack_relay(ctx: Ctx) -> None:
    """1: a stranger's real call, then INVITEs to a foreign number with that call's Record-Route,
    new Call-IDs and invented To tags."""
    ua = Ua(ctx.proxy, STRANGER)
    cid = f"harvest-{secrets.token_hex(4)}"
    ua.send(ua.request("INVITE", "sip:alice@example.com", cid,
                       headers=[f"Contact: <sip:mallory@{STRANGER}:{ua.port}>"]))
    ok = ua.final(cid, cseq_method="INVITE")
    ua.close()
    if ok is None or ok.status != 200:
        raise BenchError(f"the stranger's own call failed: {ok and ok.start}")
    route = tuple(f"Route: {v}" for v in reversed(ok.get_all("record-route")))
    n = ctx.n(5000)
    victim = f"sip:+19005550000@{FOREIGN}:{ctx.foreign.port}"
    before, seen = ctx.proxy.metrics(), ctx.pbx.count("atk")
    with ctx.measure():
        res = ctx.flood(template("INVITE", victim, headers=route), n, 1000)
    reached = ctx.foreign.received
    ctx.say(f"{res['sent']:,} INVITEs to {victim} with the harvested Route, new Call-IDs, "
            f"invented To tags: answers {statuses(res)}; at most {res['max_finals']} final "
            "per request")
    ctx.say(f"{reached} of {res['sent']:,} reached the foreign host; "
            f"{ctx.pbx.count('atk') - seen} reached the PBX; refusals_total{{unproven}} "
            f"+{ctx.metric_delta(before, 'refusals_total', reason='unproven')}")
    if reached:
        ctx.hole(f"{reached} relayed INVITEs reached the foreign host ({ctx.foreign.first!r})")


def attack_restart(ctx: Ctx) -> None:
    """2: alice's TCP call leaves her flow token in the Record-Route; the proxy restarts (same
    secret); bob's connections now have the ids; the PBX's in-dialog requests by alice's old
    route must get 430 and reach none of bob's connections."""
    proxy = ctx.proxy
    alice = socket.create_connection(proxy.addr, timeout=3)
    host, port = alice.getsockname()[:2]
    cid = f"alice-{secrets.token_hex(4)}"
    alice.sendall(build_request("INVITE", "sip:bob@example.com", call_id=cid, via_host=host,
                                via_port=port, from_uri="sip:alice@example.net",
                                to_uri="sip:bob@example.com", transport="TCP",
                                headers=[f"Contact: <sip:alice@{host}:{port};transport=tcp>"]))
    ok = _stream_final(alice, cid)
    alice.close()
    if ok is None or ok.status != 200:
        raise BenchError(f"alice's TCP call failed: {ok and ok.start}")
    rr = ok.get_all("record-route")
    proxy.restart()
    bobs = []
    for i in range(ctx.n(50)):
        s = socket.create_connection(proxy.addr, timeout=3)
        h, p = s.getsockname()[:2]
        s.sendall(build_request("OPTIONS", f"sip:{LOOPBACK}", call_id=f"bob-{i}", via_host=h,
                                via_port=p, from_uri="sip:bob@example.net",
                                to_uri=f"sip:{LOOPBACK}", transport="TCP"))
        bobs.append(s)
    for s in bobs:  # each connection carried a message: the core knows its id
        s.settimeout(3)
        s.recv(65535)
    n = ctx.n(500)
    pbx_port = ctx.pbx.port
    before = proxy.metrics()
    ctx.pbx.cmd(cmd="reset")
    with ctx.measure():
        for i in range(n):
            bye = build_request("BYE", f"sip:alice@{host}:{port};transport=tcp",
                                call_id=cid, via_host=LOOPBACK, via_port=pbx_port,
                                from_uri="sip:bob@example.com", to_uri="sip:alice@example.net",
                                from_tag="pbx1", to_tag=ok.tag("from"), cseq=10 + i,
                                headers=[f"Route: {v}" for v in rr])
            ctx.pbx.cmd(cmd="send", data=bye.decode("latin-1"), to=list(proxy.addr))
        time.sleep(1.0)
    got = 0
    for s in bobs:
        s.settimeout(0.05)
        try:
            while chunk := s.recv(65535):
                got += len(chunk)
        except (TimeoutError, OSError):
            pass
        s.close()
    answers = ctx.pbx.cmd(cmd="stats")["statuses"]
    ctx.say(f"{n} BYEs from the PBX by alice's pre-restart Record-Route (TCP flow token, "
            f"connection id of the old process): answers {answers}; refusals_total{{flow_failed}}"
            f" +{ctx.metric_delta(before, 'refusals_total', reason='flow_failed')}")
    ctx.say(f"{len(bobs)} connections of bob (ids 1..{len(bobs)} of the new process): "
            f"{got} bytes received")
    if got:
        ctx.hole(f"{got} bytes of alice's requests reached bob's connections")
    if int(answers.get("430", 0)) != n:
        ctx.hole(f"{n - int(answers.get('430', 0))} of {n} got no 430")


def _stream_final(sock: socket.socket, call_id: str) -> Msg | None:
    sock.settimeout(3)
    buf = b""
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65535)
        except TimeoutError:
            return None
        if not chunk:
            return None
        buf += chunk
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            size = int(m.group(1)) if m else 0
            if len(rest) < size:
                break
            buf = rest[size:]
            msg = parse_msg(head + b"\r\n\r\n" + rest[:size])
            if msg and msg.status and msg.status >= 200 and msg.call_id == call_id:
                return msg
    return None


def attack_reflect(ctx: Ctx) -> None:
    """3: 200s carrying the proxy's top Via of a real INVITE (its branch) and a second Via
    naming the foreign host: with another CSeq method on the live branch, and after the
    transaction ended (T1 = 50 ms here: 64*T1 = 3.2 s)."""
    ua = Ua(ctx.proxy)
    ua.call()
    ua.close()
    raw = ctx.pbx.cmd(cmd="last_invite")["data"]
    inv = parse_msg(raw.encode("latin-1"))
    if inv is None:
        raise BenchError("the PBX saw no INVITE")
    vias = inv.get_all("via")
    time.sleep(4.0)  # the INVITE's client transaction ends (Timer M, 64*T1 = 3.2 s)
    forged = [f"Via: {vias[0]}", f"Via: SIP/2.0/UDP {FOREIGN}:{ctx.foreign.port};rport"]
    base = ["SIP/2.0 200 OK", *forged, f"From: {inv.get('from')}", f"To: {inv.get('to')};tag=r"
            + NUMBER, f"Call-ID: {inv.call_id}", "CSeq: 1 @M@", "Content-Length: 0"]
    text = "\r\n".join(base) + "\r\n\r\n"
    n = ctx.n(5000)
    before = ctx.proxy.metrics()
    with ctx.measure():
        res_a = ctx.flood(text.replace("@M@", "INVITE"), n // 2, 1000, drain=0.5)
        res_b = ctx.flood(text.replace("@M@", "BYE").replace("tag=r", "tag=b"), n - n // 2,
                          1000, drain=0.5)
    forged_n = ctx.metric_delta(before, "refusals_total", reason="forged_response")
    stale_n = ctx.metric_delta(before, "refusals_total", reason="stale_response")
    sent = res_a["sent"] + res_b["sent"]
    ctx.say(f"{sent:,} 200s with the proxy's old Via (branch of an ended INVITE transaction, "
            f"CSeq INVITE and BYE) and a second Via naming {FOREIGN}: "
            f"{ctx.foreign.received} reached the foreign host; dropped as "
            f"forged_response +{forged_n}, stale_response +{stale_n}")
    if ctx.foreign.received:
        ctx.hole(f"{ctx.foreign.received} reflected responses reached the foreign host")


def attack_totag(ctx: Ctx) -> None:
    """4: INVITEs with invented To tags at 3,000/s, per_source_rps 20."""
    n = ctx.n(9000)
    seen = ctx.pbx.count("atk")
    with ctx.measure():
        res = ctx.flood(template("INVITE", "sip:alice@example.com"), n, 3000)
    leaked = ctx.pbx.count("atk") - seen
    ctx.say(f"{res['sent']:,} INVITEs with invented To tags at 3,000/s from one source "
            f"(per_source_rps 20): answers {statuses(res)}; at most {res['max_responses']} "
            f"response per request; {leaked} reached the PBX")
    if leaked:
        ctx.hole(f"{leaked} INVITEs with invented To tags reached the PBX")


def attack_guess(ctx: Ctx) -> None:
    """5: one guesser, one nonce, increasing nonce counts, wrong passwords."""
    phone = Ua(ctx.proxy)
    ok = phone.register("alice", USERS["alice"], f"<sip:alice@{LOOPBACK}:{phone.port}>")
    if ok is None or ok.status != 200:
        raise BenchError(f"alice's phone could not register: {ok and ok.start}")
    guesser = Ua(ctx.proxy, STRANGER)
    ch = guesser.challenge("alice")
    guesser.close()
    aor = f"sip:alice@{REALM}"
    tmpl = template("REGISTER", f"sip:{REALM}", to_tag=None, from_uri=aor, to_uri=aor,
                    headers=("Contact: <sip:mallory@127.0.0.2:5060>", "Expires: 300", "@AUTH@"))
    n = ctx.n(3000)
    digest = {"user": "alice", "realm": REALM, "password": "guess-" + NUMBER,
              "method": "REGISTER", "uri": f"sip:{REALM}", "nonce": ch["nonce"], "nc": 1}
    before = ctx.proxy.metrics()
    with ctx.measure():
        res = ctx.flood(tmpl, n, 5000, digest=digest)
        secs = res["send_s"]
    checked = ctx.metric_delta(before, "refusals_total", reason="auth_failed")
    blocked = ctx.metric_delta(before, "refusals_total", reason="auth_blocked")
    ctx.say(f"{res['sent']:,} wrong passwords for alice on one nonce from {STRANGER} in "
            f"{secs:.1f} s: answers {statuses(res)}; checked against the password "
            f"(auth_failed) {checked}, refused unchecked (auth_blocked) {blocked}")
    right = Ua(ctx.proxy, STRANGER)
    r = right.register("alice", USERS["alice"], "<sip:mallory@127.0.0.2:5060>")
    right.close()
    ctx.say(f"the right password from the guesser's address afterwards: {r and r.start}")
    again = phone.register("alice", USERS["alice"], f"<sip:alice@{LOOPBACK}:{phone.port}>")
    phone.close()
    ctx.say(f"alice's own phone (registered from {LOOPBACK}) refreshing during the block: "
            f"{again and again.start}")
    other = Ua(ctx.proxy, OTHER)
    o = other.register("alice", USERS["alice"], f"<sip:alice@{OTHER}:{other.port}>")
    other.close()
    ctx.say(f"a new device of alice on {OTHER} with the right password during the block: "
            f"{o and o.start}")
    if checked > 10:
        ctx.hole(f"{checked} guesses were checked against the password (bound: 10)")
    if r is not None and r.status == 200:
        ctx.hole("the guesser's right password was accepted during its block")
    if again is None or again.status != 200:
        ctx.hole("the guesser locked alice's registered phone out")
    if o is not None and o.status != 200:
        ctx.hole(f"the guesser locked alice out for new devices: {o.start} for the right "
                 "password from another address while the user is blocked (lock-out DoS)")


def attack_slots(ctx: Ctx) -> None:
    """6: keep-alive-only connections from 64 sources (40 each: 8 over tcp_per_source) and
    slow senders (one byte every 2 s), over TCP and TLS, tcp_idle_timeout 10 s here."""
    sources = [f"127.0.1.{i}" for i in range(1, 65)]
    slow = [f"127.0.3.{i}" for i in range(1, 17)]
    hold = 25.0
    per = max(1, int(40 * min(1.0, ctx.args.scale)))
    specs = [
        ("tcp keep-alive", {"mode": "keepalive", "tls": False, "port": ctx.proxy.port,
                            "sources": sources, "per_source": per}),
        ("tls keep-alive", {"mode": "keepalive", "tls": True, "port": ctx.proxy.tls_port,
                            "sources": sources[:16], "per_source": per}),
        ("tcp slow sender", {"mode": "slow", "tls": False, "port": ctx.proxy.port,
                             "sources": slow, "per_source": 32}),
    ]
    before = ctx.proxy.metrics()
    results: dict[str, dict[str, Any]] = {}
    peak = {"tcp": 0.0, "tls": 0.0}
    with ctx.measure(stream="tcp"):
        threads = []
        for name, spec in specs:
            full = {**spec, "dst": [LOOPBACK, spec["port"]], "hold": hold, "interval": 2.0}

            def go(name: str = name, full: dict[str, Any] = full) -> None:
                results[name] = run_role("streams", full, timeout=hold + 60)
            t = threading.Thread(target=go, daemon=True)
            t.start()
            threads.append(t)
        end = time.monotonic() + hold
        while time.monotonic() < end:
            m = ctx.proxy.metrics()
            for tr in peak:
                peak[tr] = max(peak[tr], metric(m, "connections", transport=tr))
            time.sleep(1.0)
        for t in threads:
            t.join(hold + 60)
    for name, res in results.items():
        ctx.say(f"{name}: {res['opened']} opened, {res['refused']} refused at accept, "
                f"{res['closed_later']} closed by the proxy (after {res['closed_after_s']} s: "
                f"first, median, last), {res['still_open']} still open after {hold:.0f} s")
    closed = {r: ctx.metric_delta(before, "connections_closed_total", reason=r)
              for r in ("idle", "incomplete", "handshake")}
    refused = ctx.metric_delta(before, "connections_refused_total", reason="per_source")
    ctx.say(f"connections in the tables at most: TCP {peak['tcp']:.0f}, TLS {peak['tls']:.0f} "
            f"(limit 4,096 each); connections_refused_total{{per_source}} +{refused}; "
            f"connections_closed_total {closed}")
    for name, res in results.items():
        if res["still_open"]:
            ctx.hole(f"{name}: {res['still_open']} connections still held after {hold:.0f} s")


def attack_tls(ctx: Ctx) -> None:
    """7a: ClientHello only, from many sources, in rounds of 3,000 (30 a source): the proxy
    answers each (its ServerHello), then the connection is reset."""
    n = ctx.n(60000)
    sources = [f"127.0.{2 + i // 250}.{1 + i % 250}" for i in range(1000)]
    spec = {"mode": "hello", "dst": [LOOPBACK, ctx.proxy.tls_port], "count": n,
            "per_round": 3000, "per_source": 30, "sources": sources, "hello_wait": 3.0}
    before = ctx.proxy.metrics()
    with ctx.measure(stream="tls"):
        res = run_role("streams", spec, timeout=n / 100 + 120)
    closed = ctx.metric_delta(before, "connections_closed_total", transport="tls")
    ctx.say(f"{res['opened']:,} TLS connections sent a ClientHello and nothing more: "
            f"{res['answered']:,} answered by the proxy's handshake, {res['refused']:,} "
            f"refused; closed by the proxy (handshake timeout, TLS error) {closed:,}")


def attack_cancel(ctx: Ctx) -> None:
    """7b: CANCELs of no transaction, 25,000/s."""
    n = ctx.n(75000)
    with ctx.measure():
        res = ctx.flood(template("CANCEL", "sip:alice@example.com", to_tag=None), n, 25000,
                        drain=1.0)
    held = metric(ctx.proxy.metrics(), "transactions")
    ctx.say(f"{res['sent']:,} CANCELs for no transaction at 25,000/s offered "
            f"({res['sent'] / res['send_s']:,.0f}/s sent): answers {statuses(res)}; at most "
            f"{res['max_responses']} response per CANCEL; transactions held after: {held:.0f} "
            "(the legitimate calls' of the last 32 s)")


def attack_register(ctx: Ctx) -> None:
    """7c: alice, authenticated, registers alice@dN.example.net for N = 0..49,999; then 100
    contacts for her own AOR (registrar_max_contacts 10)."""
    ua = Ua(ctx.proxy, STRANGER)
    ch = ua.challenge("alice")
    n = ctx.n(50000)
    aor = f"sip:alice@d{NUMBER}.{REALM}"
    tmpl = template("REGISTER", f"sip:{REALM}", to_tag=None, from_uri=aor, to_uri=aor,
                    headers=(f"Contact: <sip:alice-{NUMBER}@127.0.0.2:5060>", "Expires: 3600",
                             "@AUTH@"))
    digest = {"user": "alice", "realm": REALM, "password": USERS["alice"],
              "method": "REGISTER", "uri": f"sip:{REALM}", "nonce": ch["nonce"], "nc": 1}
    own = f"sip:alice@{REALM}"
    tmpl_own = template("REGISTER", f"sip:{REALM}", to_tag=None, from_uri=own, to_uri=own,
                        call_prefix="own", headers=(f"Contact: <sip:alice-{NUMBER}@127.0.0.2:5060>",
                                 "Expires: 3600", "@AUTH@"))
    with ctx.measure():
        res = ctx.flood(tmpl, n, 5000, digest=digest)
        ch2 = ua.challenge("alice")
        res_own = ctx.flood(tmpl_own, 100, 200,
                            digest={**digest, "nonce": ch2["nonce"]})
    ua.close()
    held = metric(ctx.proxy.metrics(), "registrations")
    ctx.say(f"{res['sent']:,} authenticated REGISTERs of alice for alice@dN.{REALM}: answers "
            f"{statuses(res)}")
    ctx.say(f"100 contacts for her own AOR: answers {statuses(res_own)}; bindings held after: "
            f"{held:.0f} (registrar_max_contacts 10)")
    if held > 10:
        ctx.hole(f"{held:.0f} bindings held for one user")


def attack_amplify(ctx: Ctx) -> None:
    """8: INVITEs at 1,000/s from one source, per_source_rps 20, never ACKed; the answers
    counted for 6 s after (a retransmitted 503 would come at 0.5, 1.5, 3.5 s)."""
    n = ctx.n(5000)
    with ctx.measure():
        res = ctx.flood(template("INVITE", "sip:alice@example.com", to_tag=None), n, 1000,
                        drain=6.0)
    finals = sum(v for k, v in res["statuses"].items() if int(k) >= 200)
    ctx.say(f"{res['sent']:,} INVITEs never ACKed (per_source_rps 20): answers {statuses(res)};"
            f" {finals / max(1, res['sent']):.3f} final responses per INVITE, at most "
            f"{res['max_finals']} per INVITE")
    if res["max_finals"] > 1:
        ctx.hole(f"an INVITE got {res['max_finals']} final responses (amplification)")


def attack_hijack(ctx: Ctx) -> None:
    """9: bob registered with his password; a stranger on a private address (127.0.0.2)
    adds its contact to bob, wipes bob's bindings with Contact: *, and tries alice's
    credentials for bob's AOR."""
    bob = Ua(ctx.proxy)
    ok = bob.register("bob", USERS["bob"], f"<sip:bob@{LOOPBACK}:{bob.port}>")
    if ok is None or ok.status != 200:
        raise BenchError(f"bob could not register: {ok and ok.start}")
    aor = f"sip:bob@{REALM}"
    n = ctx.n(1000)
    add = template("REGISTER", f"sip:{REALM}", to_tag=None, from_uri=aor, to_uri=aor,
                   call_prefix="add", headers=("Contact: <sip:mallory@127.0.0.2:5060>", "Expires: 3600"))
    wipe = template("REGISTER", f"sip:{REALM}", to_tag=None, from_uri=aor, to_uri=aor,
                    call_prefix="wipe", headers=("Contact: *", "Expires: 0"))
    mallory = Ua(ctx.proxy, STRANGER)
    ch = mallory.challenge("alice")
    as_alice = template("REGISTER", f"sip:{REALM}", to_tag=None, from_uri=aor, to_uri=aor,
                        call_prefix="asalice", headers=("Contact: *", "Expires: 0", "@AUTH@"))
    with ctx.measure():
        r_add = ctx.flood(add, n, 1000, drain=1.0)
        r_wipe = ctx.flood(wipe, n, 1000, drain=1.0)
        r_alice = ctx.flood(as_alice, n, 1000, drain=1.0,
                            digest={"user": "alice", "realm": REALM, "password": USERS["alice"],
                                    "method": "REGISTER", "uri": f"sip:{REALM}",
                                    "nonce": ch["nonce"], "nc": 1})
    mallory.close()
    query = bob.register("bob", USERS["bob"], None)
    bob.close()
    contacts = query.get_all("contact") if query is not None else []
    ctx.say(f"from {STRANGER}: {r_add['sent']} REGISTERs adding a contact to bob: "
            f"{statuses(r_add)}; {r_wipe['sent']} with Contact: * Expires: 0: "
            f"{statuses(r_wipe)}; {r_alice['sent']} with alice's valid credentials: "
            f"{statuses(r_alice)}")
    ctx.say(f"bob's bindings afterwards (his own query): {contacts}")
    if len(contacts) != 1 or "mallory" in " ".join(contacts):
        ctx.hole(f"bob's bindings changed: {contacts}")


def attack_sipvicious(ctx: Ctx) -> None:
    """10: svmap, svwar (REGISTER, INVITE, OPTIONS) and svcrack from 127.0.0.2. Users of
    the users file: 1001 registered (its contact answers 200: the PBX process), 1002
    unregistered a moment ago (Contact: *), 1000 and 1003-1010 not users at all."""
    if shutil.which("svmap") is None:
        # not run: an error (left out of the done criteria, said as such), not a hole
        raise BenchError("sipvicious is not installed (make bench-sysdeps, or apt-get "
                         "install sipvicious): not run")
    phone = Ua(ctx.proxy)
    phone.register("1001", USERS["1001"], f"<sip:1001@{LOOPBACK}:{ctx.pbx.port}>")
    phone.register("1002", USERS["1002"], f"<sip:1002@{LOOPBACK}:{phone.port}>")
    phone.register("1002", USERS["1002"], "*", expires=0)
    phone.close()
    port = str(ctx.proxy.port)
    scan = ["-b", STRANGER, "-p", port, "--domain", REALM]
    runs = [
        ("svmap", ["svmap", "-b", STRANGER, "-p", port, LOOPBACK]),
        ("svwar REGISTER", ["svwar", *scan, "-e", "1000-1010", "-m", "REGISTER", LOOPBACK]),
        ("svwar INVITE", ["svwar", *scan, "-e", "1000-1010", "-m", "INVITE", LOOPBACK]),
        ("svwar OPTIONS", ["svwar", *scan, "-e", "1000-1010", "-m", "OPTIONS", LOOPBACK]),
        ("svcrack", ["svcrack", *scan, "-u", "1001", "-r", "1190-1300", LOOPBACK]),
    ]
    before = ctx.proxy.metrics()
    outputs: dict[str, str] = {}
    with ctx.measure():
        for name, cmd in runs:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=SV_TIMEOUT,
                                     stdin=subprocess.DEVNULL, cwd=ctx.proxy.workdir)
                outputs[name] = (out.stdout + out.stderr).strip()
            except subprocess.TimeoutExpired as exc:
                text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
                    else (exc.stdout or "")
                outputs[name] = f"{text}\nstopped after {SV_TIMEOUT:.0f} s"
    for name, text in outputs.items():
        table = sv_table(text)
        notes = [ln.split(":", 2)[-1].strip() for ln in text.splitlines()
                 if ln.startswith(("ERROR", "WARNING:root", "CRITICAL"))]
        shown = ", ".join(f"{k}: {v}" for k, v in table.items()) if table else ""
        ctx.say(f"{name}: " + (shown or "; ".join(notes[:3]) or "found nothing"
                               + (f"; stopped after {SV_TIMEOUT:.0f} s"
                                  if "stopped after" in text else "")))
    (ctx.proxy.workdir / "sipvicious.txt").write_text(
        "\n\n".join(f"== {k}\n{v}" for k, v in outputs.items()))
    checked = ctx.metric_delta(before, "refusals_total", reason="auth_failed")
    blocked = ctx.metric_delta(before, "refusals_total", reason="auth_blocked")
    ctx.say(f"svcrack against 1001 (its password 1207 is the 18th of the range 1190-1300): "
            f"checked against the password {checked}, refused unchecked {blocked}")
    if "1207" in outputs.get("svcrack", ""):
        ctx.hole("svcrack found 1001's password")
    for name in ("svwar INVITE", "svwar OPTIONS"):
        found = sv_table(outputs.get(name, ""))
        if found:
            ctx.hole(f"{name} tells extensions apart (found {found}; the others got the 404 "
                     "of an unknown user): a request for a user of the proxy is forwarded to "
                     "its phone when registered, answered 480 when its binding was removed "
                     "and has not expired yet, 404 otherwise: who is or was registered leaks, "
                     "not who is in the users file")


def sv_table(text: str) -> dict[str, str]:
    """The rows of a sipvicious result table (``| 1001 | reqauth |``): first -> second."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[0] not in ("Extension",
                                                                          "SIP Device"):
            rows[cells[0]] = cells[1]
    return rows


ATTACK_FUNCS: dict[str, tuple[Attack, dict[str, float] | None, dict[str, int] | None]] = {
    "1": (attack_relay, None, None),
    "2": (attack_restart, None, None),
    "3": (attack_reflect, None, {"t1_ms": 50, "t2_ms": 400, "t4_ms": 500}),
    "4": (attack_totag, {"per_source_rps": 20}, None),
    "5": (attack_guess, None, None),
    "6": (attack_slots, {"tcp_idle_timeout": 10}, None),
    "7a": (attack_tls, None, None),
    "7b": (attack_cancel, None, None),
    "7c": (attack_register, None, None),
    "8": (attack_amplify, {"per_source_rps": 20}, None),
    "9": (attack_hijack, None, None),
    "10": (attack_sipvicious, None, None),  # auth.algorithms [MD5]: svcrack knows no SHA-256
}


#: CANCELs that fill the recent-calls ring (trace_calls 1000: 16,000 messages, 16 MB) before
#: the idle figure: a proxy in service always has it full, and an attack that fills it would
#: otherwise read as memory not given back (up to some 20 MB, bounded)
RING_FILL = 8000
FILLER = "127.0.0.9"
#: the fillers' addresses, 500 CANCELs a second each: under limits.udp_flood_rps (1,000)
FILLERS = [f"127.0.0.{9 + i}" for i in range(8)]


def fill_ring(proxy: Proxy) -> None:
    """8,000 CANCELs of no transaction from 127.0.0.9 to .16, each answered 481 statelessly:
    16,000 messages in the ring, nothing else held."""
    spec = {"template": template("CANCEL", "sip:fill@example.com", to_tag=None,
                                 call_prefix="fill", from_uri=f"sip:fill@{FILLER}")
            .replace(STRANGER, FILLER),
            "count": RING_FILL, "rate": 4000, "drain": 1.0, "sources": FILLERS,
            "dst": list(proxy.addr)}
    run_role("flood", spec, timeout=60)


def run_attack(aid: str, args: argparse.Namespace, proxy: Proxy, pbx: Pbx) -> AttackResult:
    name = next(a[1] for a in ATTACKS if a[0] == aid)
    func, limits, timers = ATTACK_FUNCS[aid]
    result = AttackResult(aid, name)
    print(f"== {aid} {name}: {next(a[2] for a in ATTACKS if a[0] == aid)}", flush=True)
    foreign = Listener(FOREIGN)
    foreign.start()
    try:
        proxy.start(proxy.configure(f"{aid}-{name}", limits, timers, scanned=aid == "10"))
        warm = Ua(proxy)
        for _ in range(10):
            warm.call()
        warm.close()
        fill_ring(proxy)
        pbx.cmd(cmd="reset")
        ctx = Ctx(args, proxy, pbx, foreign, result)
        before = proxy.metrics()
        func(ctx)
        gated = ctx.metric_delta(before, "refusals_total", reason="flood")
        if gated:
            episodes = ctx.metric_delta(before, "flood_episodes_total")
            ctx.say(f"flood gate (limits.udp_flood_rps): {gated:,} datagrams dropped before "
                    f"they were parsed, {episodes} episode(s)")
        if limits:
            ctx.say("configuration: limits " + ", ".join(f"{k} {v}" for k, v in limits.items()))
        if aid == "10":
            ctx.say(f"configuration: domains [{REALM}], auth.algorithms [MD5] (svcrack "
                    "answers MD5 only)")
        if timers:
            ctx.say("configuration: timers " + ", ".join(f"{k} {v}" for k, v in timers.items()))
        if not proxy.alive():
            result.holes.append("the proxy exited during the attack")
        ctx.after()
        lines = proxy.log_lines()
        errors = [i for i, ln in enumerate(lines) if "Traceback" in ln or "internal error" in ln]
        if errors:
            first = next((ln.strip() for ln in lines[errors[0]:errors[0] + 30]
                          if re.match(r"\s*\w+(Error|Exception)\b", ln)), "")
            where = next((ln.strip() for ln in lines[errors[0]:errors[0] + 30]
                          if "/proxy/" in ln), "")
            result.holes.append(f"{len(errors)} tracebacks / internal errors in the proxy's log, "
                                f"the first: {first} ({where})")
    except (BenchError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        foreign.stopping = True
        foreign.join(1)
        foreign.sock.close()
        proxy.stop()
    print(format_report([result]).split("\n\n", 1)[-1].strip().split("\ndone criteria")[0],
          flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--attacks", default="all", help="ids or names, comma separated "
                   "(1,2,3,4,5,6,7a,7b,7c,8,9,10 or relay,restart,...; 7 = 7a,7b,7c; all)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every count by this (0.1: a quick run)")
    p.add_argument("--after", type=float, default=60.0,
                   help="seconds RSS is watched after each attack, at most (60)")
    p.add_argument("--settle", type=int, default=5,
                   help="stop watching once RSS stayed within 20%% of idle for this many "
                   "samples in a row (0: watch the whole --after window)")
    p.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                   help="the interpreter that runs the proxy (its build: compiled or pure)")
    p.add_argument("--out", type=Path, default=None, help="results folder "
                   "(default bench/results/hostile-<time>)")
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--role-arg", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role is None:
        try:
            args.ids = parse_attacks(args.attacks)
        except ValueError as exc:
            p.error(str(exc))
        if not 0 < args.scale <= 10:
            p.error("--scale must be in (0, 10]")
        if not 0 < args.after <= 600:
            p.error("--after must be in (0, 600]")
    return args


def machine_line(python: str) -> str:
    try:
        build = subprocess.run([python, "-m", "proxy", "--version"], capture_output=True,
                               text=True, timeout=30, cwd=REPO, env=proxy_env()).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        build = f"unknown ({exc})"
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M')} {os.uname().sysname} {os.uname().release}, "
            f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; "
            f"proxy: {build or 'unknown'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role is not None:
        role_main(args.role, args.role_arg)
        return 0
    out = args.out or BENCH / "results" / time.strftime("hostile-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.python).exists():
        print(f"error: no {args.python} (make venv)", file=sys.stderr)
        return 2
    header = [f"bench/hostile.py, {machine_line(args.python)}",
              f"attacks {','.join(args.ids)}, scale {args.scale}, RSS watched up to "
              f"{args.after:.0f} s after each (settle {args.settle})"]
    print("\n".join(header), flush=True)
    pbx = Pbx(sys.executable)
    results: list[AttackResult] = []
    try:
        proxy = Proxy(args.python, out, pbx.port)
        for aid in args.ids:
            results.append(run_attack(aid, args, proxy, pbx))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        pbx.stop()
    report = format_report(results, header)
    (out / "report.txt").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print("\n" + report)
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
