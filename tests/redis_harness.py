"""Real Redis servers for the tests: one ``redis-server``, or a 3-node Redis Cluster.

Each server runs in its own folder under the test's tmp_path with ``--save '' --appendonly
no`` on a free port, is awaited (bounded) until it answers PING, and is killed at teardown.
A cluster is three ``--cluster-enabled yes`` servers joined by ``redis-cli --cluster create
... --cluster-replicas 0 --cluster-yes``, awaited until every node says ``cluster_state:ok``.

``kill()`` / ``restart()`` let a test take a server away mid-run and bring it back on the same
port (with an empty dataset: no persistence).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _free_tcp_port(cluster: bool = False) -> int:
    """A free TCP port; for a cluster node, one whose cluster bus port (+10000) is free too
    (the machine is shared: another process may hold it)."""
    from tests.e2e.harness import _bind_ok, free_port

    for _ in range(100):
        port = free_port(udp=False, span=1)
        if not cluster or _bind_ok(socket.SOCK_STREAM, "127.0.0.1", port + 10000):
            return port
    raise RuntimeError("no free port pair for a redis cluster node")


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    res = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    return res.stdout


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, port: int | None = None, *, cluster: bool = False) -> None:
        self.workdir = workdir
        self.port = port if port is not None else _free_tcp_port(cluster)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"]
        if self.cluster:
            conf = self.workdir / f"nodes-{self.port}.conf"
            conf.unlink(missing_ok=True)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(conf)]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not answer in {timeout} s")
            time.sleep(0.02)  # bounded poll: a server raises no event we can await

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def cli(self, *args: str) -> str:
        return _cli(self.port, *args)


class RedisClusterServers:
    """Three cluster-enabled redis-servers joined into one cluster (no replicas)."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [RedisServer(workdir / f"node{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        for n in self.nodes:
            n.start()
        res = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {res.stdout}{res.stderr}")
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)  # bounded poll of CLUSTER INFO

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()

    def flush(self) -> None:
        for n in self.nodes:
            n.cli("flushall")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the session (tests flush what they need)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-node Redis Cluster for the session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (for tests that kill and restart it)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
