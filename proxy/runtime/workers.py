"""Several processes on one address (``workers: N``, README "Workers").

A **supervisor** (:func:`supervise`, the process ``sip-policy-proxy run`` started) forks N
**workers**. Each worker is a whole proxy (:func:`proxy.runtime.server.run_server`) that binds
every listen address of the configuration with SO_REUSEPORT, so the kernel spreads the UDP
datagrams (by a hash of their source and destination addresses; with ``workers_spread:
call`` at random, one by one: :mod:`proxy.runtime.handoff`) and the new TCP, TLS and
WebSocket connections among them; phones and the PBX see one address.

What keeps a transaction on the worker that holds it:

* With ``workers_spread: call``, the hand-off (:mod:`proxy.runtime.handoff`): a worker that
  reads a request of another worker's Call-ID, or a response whose top Via names another
  worker's own port, passes it on to that worker over a socketpair the supervisor made
  (:func:`~proxy.runtime.handoff.channels`), with the source address the kernel gave.

* Each worker also binds a UDP socket of its own (an ephemeral port on the host of each UDP
  listener) and writes that port into the Via of what it forwards (``LocalAddress.sent_by``):
  the responses go to the Via's sent-by (RFC 3261 18.2.2, 18.1.1). It sends its requests from
  that socket too, so that a peer that answers to where the request came from (as sipp does)
  reaches it as well. Record-Route and Path keep the shared address: an in-dialog request is
  a new transaction and may reach any worker (RFC 3261 16.12).
* Except towards a peer this worker has heard on the shared socket: a request to it leaves
  from the shared socket (:class:`WorkerEndpoint`). A phone behind a NAT that only lets in
  what comes from the address it registered to is reached so; and that peer's datagrams to
  the shared address hash to this same worker (one 4-tuple, one socket; with the call spread:
  by the Via's own port, through the hand-off), so its answers come back here whichever
  address it answers to.
* Responses leave from the shared socket, the one the request came to (RFC 3581 4).
* A TCP, TLS or WebSocket connection is held by the worker that accepted (or opened) it.
  Each worker is a node of the shared state (``node`` + ``/wI``) and announces its own UDP
  address; with a Redis state a request for a flow another worker holds goes to that worker
  (RFC 5626 5, :mod:`proxy.core.shared`), which sends it over the connection. With
  ``state: memory:`` a flow token of another worker does not verify as one of this start:
  430 Flow Failed (RFC 5626 5.3), an honest answer.

The supervisor forwards SIGTERM and SIGINT (each worker drains as a lone proxy does), SIGHUP
(each worker reloads its policy and certificates), restarts a worker that dies (with a
back-off, logged), and exits 0 once every worker has drained and exited 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import secrets
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.config import Config, Listen
from proxy.core.types import LocalAddress, Send
from proxy.runtime.handoff import HandOff, channels, gate_share, spread
from proxy.sip import host_port_text
from proxy.transport.udp import UdpEndpoint
from proxy.transport.udp import open_udp as open_endpoint

if TYPE_CHECKING:
    from proxy.diagnostics import Diagnostic
    from proxy.policy import Policy
    from proxy.runtime.server import Runtime

log = logging.getLogger("proxy.workers")

#: restart back-off: the first wait, the longest, and the life after which a worker's next
#: death starts from the first wait again
BACKOFF_FIRST, BACKOFF_MAX, STEADY = 0.5, 30.0, 10.0
#: peers remembered as heard on the shared socket (the oldest forgotten first)
PEERS_KEPT = 100_000
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_RESPONSE = b"SIP/2.0 "
_NOTICE = logging.CRITICAL + 1


# ------------------------------------------------------------------------------ in a worker


class WorkerEndpoint(UdpEndpoint):
    """A worker's shared UDP socket (SO_REUSEPORT) and, for its requests, its own socket.

    Responses leave from the shared socket; a request leaves from the worker's own socket,
    whose port its Via names, unless its peer was heard on the shared socket (see the
    module docstring)."""

    own: UdpEndpoint | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.heard: dict[tuple[str, int], None] = {}

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self._heard(addr)
        super().datagram_received(data, addr)

    def handed(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self._heard(addr)  # read by another worker (proxy.runtime.handoff)
        super().handed(data, addr)

    def _heard(self, addr: tuple) -> None:  # type: ignore[type-arg]
        heard = self.heard
        key = (addr[0], addr[1])
        if key not in heard:
            if len(heard) >= PEERS_KEPT:
                del heard[next(iter(heard))]
            heard[key] = None

    def send(self, s: Send) -> None:
        own = self.own
        if own is None or s.data[:8] == _RESPONSE or (s.host, s.port) in self.heard:
            super().send(s)
        else:
            own.send(s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.own is not None and self.own.transport is not None:
            self.own.transport.close()


def internal(host: str) -> str:
    """Where the workers reach each other's own port: the listener's address, loopback for a
    wildcard one."""
    if host == "0.0.0.0":
        return "127.0.0.1"
    return "::1" if host == "::" else host


def bind_own(config: Config) -> dict[int, socket.socket]:
    """One worker's own UDP sockets, bound by the supervisor (a restarted worker gets the same
    ports, and every worker knows the others' from the start): an ephemeral port beside
    each UDP listener, or one on the host of the first listener when none is of UDP (the
    address the other workers reach it at). Keyed by position in ``config.listen`` (-1)."""
    own: dict[int, socket.socket] = {}
    spots = [(i, li) for i, li in enumerate(config.listen) if li.transport == "udp"]
    for i, li in spots or [(-1, config.listen[0])]:
        fam = socket.AF_INET6 if ":" in li.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((li.host, 0))
        own[i] = sock
    return own


def node_name(config: Config, index: int) -> str:
    """Worker ``index``'s name in the shared state: ``NODE/wI``."""
    base = config.node or f"{socket.gethostname()}:{config.listen[0].port}"
    return f"{base}/w{index}"


class Worker:
    """One worker, in its process: its index, its own UDP sockets, the other workers' own
    addresses (node name -> ``udp:HOST:PORT``) and the pipe that tells the supervisor it is
    ready."""

    def __init__(self, index: int, count: int, ready_fd: int | None = None,
                 own: dict[int, socket.socket] | None = None,
                 siblings: dict[str, list[str]] | None = None,
                 handoff: HandOff | None = None) -> None:
        self.index, self.count, self.ready_fd = index, count, ready_fd
        #: position in config.listen (-1: none of UDP) -> its own UDP socket, bound
        self.own: dict[int, socket.socket] = own or {}
        self.ports = {i: int(sock.getsockname()[1]) for i, sock in self.own.items()}
        #: the other workers as peers of the shared state, known before any announcement
        self.siblings = siblings or {}
        #: the datagrams another worker handles go to it (proxy.runtime.handoff)
        self.handoff = handoff

    @property
    def name(self) -> str:
        return f"worker {self.index}"

    def port(self, position: int) -> int:
        return self.ports[position]

    def local(self, listen: tuple[Listen, ...], local: list[LocalAddress]
              ) -> tuple[list[LocalAddress], tuple[LocalAddress, ...]]:
        """The core's local addresses (each UDP listener's Via naming this worker's own
        port, then this worker's own addresses) and the addresses this node announces to the
        others (its own only: the shared ones reach any worker)."""
        out: list[LocalAddress] = []
        mine: list[LocalAddress] = []
        for i, (li, a) in enumerate(zip(listen, local, strict=True)):
            if i in self.own:
                port = self.port(i)
                host = a.advertised.rpartition(":")[0]
                a = a._replace(sent_by=f"{host}:{port}")
                mine.append(LocalAddress("udp", li.host, port,
                                         host_port_text(internal(li.host), port)))
            out.append(a)
        if -1 in self.own:
            li, port = listen[0], self.port(-1)
            mine.append(LocalAddress("udp", li.host, port, host_port_text(internal(li.host), port)))
        return out + mine, tuple(mine)

    async def open_udp(self, rt: Runtime, position: int, li: Listen) -> UdpEndpoint:
        """The shared UDP socket of a listener with its own beside it (:class:`WorkerEndpoint`)."""
        def endpoint() -> UdpEndpoint:
            return WorkerEndpoint(rt.deliver, rt.keepalive, rt.failed, rt.gate)

        shared = await open_endpoint(li.host, li.port, rt.deliver, rt.keepalive, rt.failed, rt.gate,
                                reuse_port=True, endpoint=endpoint)
        assert isinstance(shared, WorkerEndpoint)
        shared.own = await open_endpoint(li.host, 0, rt.deliver, rt.keepalive, rt.failed, rt.gate,
                                    sock=self.own.pop(position))
        handoff = self.handoff
        if handoff is not None and shared.transport is not None:
            if not handoff.receivers and rt.gate:  # the first UDP listener
                rt.gate.rate = gate_share(rt.gate.rate, self.count)
            shared.pass_on = handoff.listener(position, shared)
            spread(shared.transport.get_extra_info("socket"), self.count)
        return shared

    async def open_own(self, rt: Runtime) -> UdpEndpoint | None:
        """This worker's own UDP socket when no listener is of UDP (else None)."""
        sock = self.own.pop(-1, None)
        if sock is None:
            return None
        return await open_endpoint("", 0, rt.deliver, rt.keepalive, rt.failed, rt.gate, sock=sock)

    def ready(self) -> None:
        """Tell the supervisor this worker serves."""
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"r")
                os.close(self.ready_fd)
            self.ready_fd = None


def local_addresses(config: Config, worker: Worker | None
                    ) -> tuple[list[LocalAddress], tuple[LocalAddress, ...]]:
    """The core's local addresses (one per listener, as written in Via and Record-Route) and
    those the node announces to the others of a shared state; a worker's are
    :meth:`Worker.local`'s."""
    from proxy.runtime.resolver import advertised

    local = [LocalAddress(li.transport, li.host, li.port,
                          advertised(li.host, li.port, config.advertise))
             for li in config.listen]
    return (local, tuple(local)) if worker is None else worker.local(config.listen, local)


def install(rt: Runtime) -> None:
    """A worker's runtime knows the other workers as nodes of the shared state at once."""
    if rt.worker is not None:
        rt.state.siblings = rt.worker.siblings
        rt.core.set_peers(rt.worker.siblings)


async def open_udp(rt: Runtime, position: int, li: Listen) -> UdpEndpoint:
    """The UDP socket of listener ``position``: a worker's shared one with its own beside it
    (:meth:`Worker.open_udp`), or a lone proxy's."""
    if rt.worker is not None:
        return await rt.worker.open_udp(rt, position, li)
    return await open_endpoint(li.host, li.port, rt.deliver, rt.keepalive, rt.failed, rt.gate)


async def started(rt: Runtime) -> None:
    """The runtime is listening: a lone proxy says it is ready; a worker opens its own UDP
    socket when no listener is of UDP (the address the other workers reach it at, and its
    UDP sends), then tells the supervisor, which says ready once every worker is."""
    worker = rt.worker
    if worker is None:
        logging.getLogger("proxy").log(_NOTICE, "sip-policy-proxy ready")
        return
    own = await worker.open_own(rt)
    if worker.handoff is not None:
        worker.handoff.start(rt.loop)
    if own is not None and own.transport is not None:
        host = own.transport.get_extra_info("sockname")[0]
        rt.udp.setdefault(socket.AF_INET6 if ":" in host else socket.AF_INET, own)
    ports = ", ".join(str(a.port) for a in rt.state.local)
    log.log(_NOTICE, "%s ready (pid %d, own UDP port %s)", worker.name, os.getpid(), ports)
    worker.ready()


def worker_config(config: Config, index: int) -> Config:
    """What worker ``index`` runs: its node name (``NODE/wI``: a node of the shared state
    of its own) and its HTTP port (the http port plus its index)."""
    http = config.http
    if http is not None:
        http = (http[0], http[1] + index)
    return dataclasses.replace(config, node=node_name(config, index), http=http)


def shared_secret(config: Config) -> Config:
    """The workers must share the key of flow tokens, dialog marks and nonces (an in-dialog
    request or a digest answer may reach any worker): a Redis state agrees on one through
    the store; otherwise, with no ``secret:``, the supervisor makes one for this run."""
    if config.secret or config.state_kind == "redis":
        return config
    return dataclasses.replace(config, secret=secrets.token_hex(32))


# ------------------------------------------------------------------------------ supervisor


@dataclasses.dataclass
class _Slot:
    index: int
    pid: int = 0
    ready_fd: int | None = None  # the supervisor's end of the worker's ready pipe
    started: float = 0.0
    ready: bool = False
    failures: int = 0  # deaths in a row that came within STEADY of the start
    restart_at: float | None = None
    status: int = 0  # the last exit status (0, 1, or 128 + signal)


class Supervisor:
    """Forks the workers, restarts those that die, forwards the signals (module docstring)."""

    def __init__(self, config: Config, policy: Policy,
                 run: Callable[[Config, Policy | None, Worker], int]) -> None:
        self.config = config
        self.policy = policy
        self.run_worker = run
        self.slots = [_Slot(i) for i in range(config.workers)]
        self.stopping = False
        self.all_ready = False
        #: each worker's own UDP sockets, bound once for all its lives (:func:`bind_own`)
        self.own = [bind_own(config) for _ in self.slots]
        self.addresses = {node_name(config, i): _addresses(config, own)
                          for i, own in enumerate(self.own)}
        #: with ``workers_spread: call`` and a UDP listener, each worker's hand-off
        #: socketpair (proxy.runtime.handoff)
        udp = any(li.transport == "udp" for li in config.listen)
        self.channels = channels(len(self.slots)) if udp and config.workers_spread == "call" \
            else []
        #: every worker's own port -> the worker (read here: a worker closes the others')
        self.own_ports = {int(sock.getsockname()[1]): i for i, own in enumerate(self.own)
                          for sock in own.values()}

    def main(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for slot in self.slots:
                self._spawn(slot)
            return self._loop()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def _loop(self) -> int:
        while True:
            self._read_ready()
            self._reap()
            if self.stopping and not any(s.pid for s in self.slots):
                failed = [s for s in self.slots if s.status]
                for s in failed:
                    log.error("worker %d exited with status %d", s.index, s.status)
                log.info("all workers stopped")
                return 1 if failed else 0
            if not self.stopping and not self.all_ready and any(
                    s.pid == 0 for s in self.slots):
                log.error("a worker could not start: stopping the others")
                self._stop_all(signal.SIGTERM)
                self.stopping = True
                for s in self.slots:
                    s.status = s.status or (1 if not s.ready else 0)
                continue
            self._restart_due()
            info = signal.sigtimedwait(_SIGNALS, self._timeout())
            while info is not None:
                self._on_signal(info.si_signo)
                info = signal.sigtimedwait(_SIGNALS, 0)

    def _timeout(self) -> float:
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        wait = 0.05 if any(s.ready_fd is not None for s in self.slots) else 1.0
        if due:
            wait = min(wait, max(0.0, min(due) - time.monotonic()))
        return wait

    def _on_signal(self, signo: int) -> None:
        if signo == signal.SIGCHLD:
            return  # reaped by the loop
        name = signal.Signals(signo).name
        if signo == signal.SIGHUP:
            self._reload_policy()
            log.info("SIGHUP: reloading the workers")
            self._stop_all(signal.SIGHUP)
            return
        if not self.stopping:
            log.info("%s: draining %d workers", name, sum(1 for s in self.slots if s.pid))
        else:
            log.info("%s again: the workers stop at once", name)
        self.stopping = True
        for s in self.slots:
            s.restart_at = None
        self._stop_all(signo)

    def _stop_all(self, signo: int) -> None:
        for s in self.slots:
            if s.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(s.pid, signo)

    def _reload_policy(self) -> None:
        """Keep the policy a restarted worker starts with current: the file as it is now,
        or the last good one when it does not load."""
        path = self.config.policy_path
        if path is None:
            return
        from proxy.diagnostics import ConfigError
        from proxy.policy import load_policy

        try:
            self.policy, _ = load_policy(Path(path))
        except ConfigError:
            pass  # each worker logs what is wrong with it

    def _read_ready(self) -> None:
        fds = [s.ready_fd for s in self.slots if s.ready_fd is not None]
        if not fds:
            return
        readable, _, _ = select.select(fds, [], [], 0)
        for s in self.slots:
            if s.ready_fd is not None and s.ready_fd in readable:
                got = b""
                with contextlib.suppress(OSError):
                    got = os.read(s.ready_fd, 1)
                os.close(s.ready_fd)
                s.ready_fd = None
                if got == b"r":
                    s.ready = True
                    log.info("worker %d ready (pid %d)", s.index, s.pid)
        if not self.all_ready and all(s.ready for s in self.slots):
            self.all_ready = True
            log.log(_NOTICE, "sip-policy-proxy ready (%d workers)", len(self.slots))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            self._ended(slot, status)

    def _ended(self, slot: _Slot, status: int) -> None:
        slot.pid = 0
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None
        code = os.waitstatus_to_exitcode(status)
        slot.status = code if code >= 0 else 128 - code
        how = (f"killed by {signal.Signals(-code).name}" if code < 0
               else f"exited with status {code}")
        if self.stopping:
            log.info("worker %d %s", slot.index, how)
            return
        if not self.all_ready:
            log.error("worker %d %s before it was ready", slot.index, how)
            return
        lived = time.monotonic() - slot.started
        slot.failures = slot.failures + 1 if lived < STEADY else 1
        wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1))
        slot.restart_at = time.monotonic() + wait
        log.warning("worker %d %s after %.1f s; restarting it in %.1f s", slot.index, how,
                    lived, wait)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.restart_at is not None and s.restart_at <= now and not self.stopping:
                s.restart_at = None
                self._reload_policy()
                self._spawn(s)
                log.info("worker %d restarted (pid %d)", s.index, s.pid)

    def _spawn(self, slot: _Slot) -> None:
        r, w = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(r)
            code = 1
            try:
                self._in_child(parent)
                for i, own in enumerate(self.own):
                    if i != slot.index:
                        for sock in own.values():
                            sock.close()
                config = worker_config(self.config, slot.index)
                siblings = {n: a for n, a in self.addresses.items() if n != config.node}
                worker = Worker(slot.index, len(self.slots), w, self.own[slot.index], siblings,
                                self._handoff(slot.index))
                code = self.run_worker(config, self.policy, worker)
            except BaseException:  # noqa: BLE001 - the child must never return into the supervisor
                logging.getLogger("proxy").exception("worker %d failed", slot.index)
            finally:
                with contextlib.suppress(Exception):
                    for h in logging.getLogger().handlers:
                        h.flush()  # what the batching handler holds (logs.BatchingHandler)
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(w)
        slot.pid, slot.ready_fd, slot.started, slot.ready = pid, r, time.monotonic(), False

    def _handoff(self, index: int) -> HandOff | None:
        """Worker ``index``'s end of the hand-off (in its process: the other workers'
        inboxes and its own outbox closed)."""
        if not self.channels:
            return None
        for i, (outbox, inbox) in enumerate(self.channels):
            if i == index:
                outbox.close()
            else:
                inbox.close()
        outboxes = [None if i == index else out for i, (out, _) in enumerate(self.channels)]
        return HandOff(index, self.channels[index][1], outboxes, self.own_ports)

    def _in_child(self, parent: int) -> None:
        """A worker's process: its own process group (a terminal's Ctrl-C reaches the
        supervisor, which forwards it once), ended with SIGTERM if the supervisor dies, the
        signals unblocked and at their defaults, no other worker's pipe."""
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        for s in self.slots:
            if s.ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(s.ready_fd)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def _addresses(config: Config, own: dict[int, socket.socket]) -> list[str]:
    """A worker's own addresses as the nodes of a shared state announce theirs."""
    out = []
    for i, sock in own.items():
        li = config.listen[max(i, 0)]
        out.append(f"udp:{host_port_text(internal(li.host), int(sock.getsockname()[1]))}")
    return out


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG (Linux): SIGTERM when the supervisor is gone, so a worker drains
    rather than serve on alone."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(config: Config, policy: Policy, warnings: list[Diagnostic] | None,
              run: Callable[[Config, Policy | None, Worker], int]) -> int:
    """``sip-policy-proxy run`` with ``workers`` above 1: fork them and watch over them until
    SIGTERM/SIGINT; returns the exit status (0: every worker drained and exited 0; 1: a
    worker could not start, or one exited non-zero at the end)."""
    from proxy.runtime import logs as log_lines

    log_lines.setup(config.log_level, config.log_format)
    for w in warnings or ():
        log.warning("%s", w)
    listen = ", ".join(f"{li.transport}:{host_port_text(li.host, li.port)}"
                       for li in config.listen)
    log.info("starting %d workers on %s (pid %d)", config.workers, listen, os.getpid())
    return Supervisor(shared_secret(config), policy, run).main()


__all__ = ["Supervisor", "Worker", "WorkerEndpoint", "shared_secret", "supervise",
           "worker_config"]
