"""End-to-end tests: the real proxy process on loopback, driven by sipp and raw sockets.

How the suite works
-------------------
* Every test module here sets ``pytestmark = pytest.mark.e2e``; run only these tests with
  ``.venv/bin/python -m pytest tests/e2e -q`` or deselect them with ``-m "not e2e"``.
* ``proxy_factory(**config)`` (function scope) allocates a port free for UDP and TCP on
  127.0.0.1, writes ``proxy.yaml`` (listen udp+tcp on that port, the given upstreams, registrar,
  domains, force_rport, timers, limits ..., ``state: memory:``, ``drain_timeout: 1``) and a
  ``policy.yaml`` (the rules of ``harness.DEFAULT_POLICY``) into the test's tmp_path, starts
  ``sys.executable -m proxy run --config ...`` and waits up to 10 s for
  ``sip-policy-proxy ready`` in its stderr, which a thread copies to ``proxy.log`` and keeps as
  lines (``ProxyProcess.lines() / wait_for_log() / await_log()``).  At teardown every proxy gets
  SIGTERM (SIGKILL after drain_timeout + 3 s) and the test FAILS if the log holds a
  ``Traceback``, if the proxy exited on its own, needed SIGKILL or exited non-zero.
  For module scope build a :class:`ProxyFactory` on ``tmp_path_factory`` and fail on its
  ``finish()`` report (test_conformance_wire.py does).  ``sipp.uac`` fills ``[domain]`` with
  example.net unless told otherwise.
* Bounds: 10 s for the ready line, sipp ``-timeout`` + 15 s (SIGKILL), ``SippProcess.stop()``
  soft-quits (SIGUSR1) then SIGINT after ``grace`` (sipp's -timeout never ends open calls).
* ``sipp`` (function scope) starts sipp (/usr/bin/sipp) as asyncio subprocesses in
  tmp_path/sipp with ``-nostdin -buff_size 4194304 -timeout N -timeout_error``, stat, error,
  screen and message traces, its own media and control ports, and a hard outer bound (SIGKILL).
  UAS processes are started first and awaited until their port is bound (a bounded poll of
  /proc/net, not a sleep); ``SippResult`` has the exit code and the final stat line's
  SuccessfulCall(C)/FailedCall(C)/Retransmissions(C) and the parsed ``-trace_msg`` messages.
* Scenarios live in ``scenarios/``: ``uac_call`` + ``uas_answer`` (calls that honour
  Record-Route, RFC 3261 12.2.1.1), ``uac_cancel_after_180`` + ``uas_cancel_after_180``,
  ``uac_expect_404``, ``uac_max_forwards_0``, ``phone_register``.  ``test_harness.py`` proves
  each pairing sipp-to-sipp (no proxy) and the raw-socket helpers against in-test echoes, so a
  failure elsewhere points at the proxy, not at the harness.
* Raw peers (``wire.py``): ``UdpPeer`` (asyncio-dgram), ``RecordingUpstream`` (a UDP "PBX"
  that records and answers), ``tcp_exchange``; a lenient SIP reader independent of the proxy's.
* No ``time.sleep`` for synchronisation: tests await log lines, datagrams, process exits;
  the only fixed waits are the "nothing must arrive" windows of drop checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.harness import ProxyProcess, Sipp


class ProxyFactory:
    """``proxy_factory(**config) -> ProxyProcess``; every proxy is checked at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ProxyProcess] = []

    def __call__(self, **config: Any) -> ProxyProcess:
        workdir = self.base / f"proxy{len(self.started) + 1}"
        proxy = ProxyProcess.launch(workdir, **config)
        self.started.append(proxy)
        return proxy

    def finish(self) -> list[str]:
        report: list[str] = []
        for proxy in self.started:
            proxy.stop()
            problems = proxy.problems()
            if problems:
                report.append(f"proxy on port {proxy.port}: {'; '.join(problems)}\n--- log tail "
                              f"({proxy.log_path}):\n{proxy.tail(60)}")
        return report


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    factory = ProxyFactory(tmp_path)
    yield factory
    report = factory.finish()
    if report:
        pytest.fail("\n".join(report), pytrace=False)


@pytest_asyncio.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Sipp]:
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    runner = Sipp(workdir)
    try:
        yield runner
    finally:
        await runner.close()
