"""baresip, a real phone, registering through the proxy (issues 18 and 19).

baresip 1.0 (Debian's ``baresip``, which ``make test`` installs) runs headless: its own
config folder (``baresip -f DIR``) with a ``config`` that loads only ``account.so`` (no audio
or video device, no console menu) and listens on 127.0.0.1 at a free port, and a generated
``accounts`` file whose account has the proxy as its outbound proxy. Its log lines come on
stdout (``alice@example.com: {0/UDP/v4} 200 OK () [1 binding]`` on success).

What each test proves:

* (a) ``registrar: upstream``: baresip's REGISTER carries no ``Supported: path``; with the
  default ``path: always`` the REGISTER the upstream registrar records has one Path naming
  the proxy (so the PBX calls the phone through the proxy); with ``path: when_supported``
  it has none (the old behaviour, which let the PBX call baresip around the proxy);
* (b) ``registrar: local`` with ``auth.algorithms: [MD5]`` and a users file: baresip answers
  the 401 and registers (200, one binding), and an OPTIONS from the PBX for
  sip:alice@example.com reaches baresip through the binding (baresip answers 200); with the
  default ``[SHA-256, MD5]`` baresip 1.0 gives up on the first challenge (it cannot compute
  SHA-256: "Function not implemented"), never sends credentials, and holds no binding: the
  reason the setting exists (README "Registrations and digest authentication").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import LOOPBACK, ProxyProcess, free_port
from tests.e2e.test_registrar_auth_e2e import next_workdir
from tests.e2e.wire import RecordingUpstream, UdpPeer, build_request, new_call_id

pytestmark = pytest.mark.e2e

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULES = "/usr/lib/baresip/modules"
DOMAIN = "example.com"
PASSWORD = "alices-secret"
REGISTERED = re.compile(r"alice@example\.com: \{0/UDP/v4\} 200 OK .*\[1 binding\]")


class Baresip:
    """One headless baresip process; its stdout lines are kept and can be awaited."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, workdir: Path, proxy: ProxyProcess, password: str = PASSWORD
                    ) -> Baresip:
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        (workdir / "config").write_text(
            "poll_method\t\tepoll\n"
            f"sip_listen\t\t{LOOPBACK}:{port}\n"
            "sip_transports\t\tudp\n"
            f"module_path\t\t{MODULES}\n"
            "module_app\t\taccount.so\n")
        (workdir / "accounts").write_text(
            f'<sip:alice@{DOMAIN}>;auth_pass={password};'
            f'outbound="sip:{LOOPBACK}:{proxy.port}";regint=600\n')
        proc = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(workdir), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        return cls(proc, port, workdir / "baresip.log")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "w", encoding="utf-8") as log:
            while raw := await self.proc.stdout.readline():
                line = re.sub(r"\x1b\[[0-9;]*m", "", raw.decode("utf-8", "replace")).rstrip()
                log.write(line + "\n")
                async with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()

    async def wait_for(self, pattern: re.Pattern[str], timeout: float = 10.0) -> str:
        def find() -> str | None:
            return next((ln for ln in self.lines if pattern.search(ln)), None)

        async def wait() -> str:
            async with self._changed:
                await self._changed.wait_for(lambda: find() is not None)
            found = find()
            assert found is not None
            return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"baresip printed no line matching {pattern.pattern!r} in "
                                 f"{timeout} s:\n" + "\n".join(self.lines[-20:])) from None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._reader, 5.0)


@contextlib.asynccontextmanager
async def baresip(workdir: Path, proxy: ProxyProcess) -> AsyncIterator[Baresip]:
    phone = await Baresip.start(workdir, proxy)
    try:
        yield phone
    finally:
        await phone.stop()


# ----------------------------------------------------------------------------- (a) Path


async def test_baresip_registers_at_an_upstream_with_path(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """(a) Issue 19: baresip registers through the proxy (``registrar: upstream``) at a
    recording registrar: its REGISTER has no Supported: path, and the one the registrar gets
    has exactly one Path, naming the proxy; baresip sees the registrar's 200. With
    ``path: when_supported`` the same REGISTER reaches the registrar without Path."""
    upstream = await RecordingUpstream.start(free_port(tcp=False))
    try:
        for mode, want in ((None, 1), ("when_supported", 0)):  # None: the default (always)
            proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{upstream.port}"],
                                  registrar="upstream", extra={"path": mode} if mode else {})
            mark = upstream.mark()
            async with baresip(tmp_path / f"baresip-{mode or 'default'}", proxy) as phone:
                reg = await upstream.wait_for(
                    lambda m: m.method == "REGISTER" and "baresip" in (m.get("user-agent") or ""),
                    10.0, since=mark)
                await phone.wait_for(re.compile(r"alice@example\.com: .*200 OK"))
            assert reg.get("supported") is None or "path" not in (reg.get("supported") or "")
            paths = reg.get_all("path")
            assert len(paths) == want, (mode, reg.raw_lines("path"))
            if want:
                assert re.fullmatch(rf"<sip:[^@>]+@{re.escape(LOOPBACK)}:{proxy.port};lr>",
                                    paths[0]), paths
            proxy.assert_alive()
    finally:
        await upstream.close()


# ----------------------------------------------------------------------------- (b) digest


def auth_proxy(factory: ProxyFactory, algorithms: list[str] | None) -> ProxyProcess:
    workdir = next_workdir(factory)
    (workdir / "users.yaml").write_text(f"alice: {{password: {PASSWORD}}}\n")
    auth: dict[str, object] = {"realm": DOMAIN, "users_file": "users.yaml"}
    if algorithms is not None:
        auth["algorithms"] = algorithms
    # debug: every message in and out is logged (first line), so the log shows the exchange
    return factory(registrar="local", domains=[DOMAIN], log_level="debug", extra={"auth": auth})


def exchange(proxy: ProxyProcess, since: int) -> list[str]:
    """The first lines of the REGISTERs that came in and the answers that went out."""
    return [m.group(1) for ln in proxy.lines()[since:]
            if (m := re.search(r"proxy\.messages: (in  REGISTER|out SIP/2\.0 \d{3})", ln))]


async def options_status(proxy: ProxyProcess) -> int:
    """The final status a "PBX" socket gets for OPTIONS sip:alice@example.com via the proxy."""
    async with await UdpPeer.bind(free_port(tcp=False)) as pbx:
        call_id = new_call_id("opt")
        await pbx.send(build_request("OPTIONS", f"sip:alice@{DOMAIN}", via_host=LOOPBACK,
                                     via_port=pbx.port, call_id=call_id), proxy.addr)
        msg, _ = await pbx.recv_sip(5.0, lambda m: m.call_id == call_id
                                    and (m.status or 0) >= 200)
        assert msg.status is not None
        return msg.status


async def test_baresip_authenticates_with_md5_only(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """(b) Issue 19: ``auth.algorithms: [MD5]``: the 401 offers MD5 only, baresip answers it
    and registers (200, [1 binding]); the proxy then reaches baresip through the binding: an
    OPTIONS for sip:alice@example.com is answered 200 by baresip."""
    proxy = auth_proxy(proxy_factory, ["MD5"])
    mark = proxy.mark()
    async with baresip(tmp_path / "baresip", proxy) as phone:
        await phone.wait_for(REGISTERED)
        # baresip can say so before the proxy's log line of its 200 is read: wait for it.
        await proxy.await_log(re.compile(r"proxy\.messages: out SIP/2\.0 200"), since=mark)
        assert exchange(proxy, mark)[:4] == ["in  REGISTER", "out SIP/2.0 401",
                                             "in  REGISTER", "out SIP/2.0 200"]
        assert await options_status(proxy) == 200
    proxy.assert_alive()


async def test_baresip_gives_up_on_a_sha256_first_challenge(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """(b) The default ``[SHA-256, MD5]``: baresip 1.0 stops at the first challenge (SHA-256)
    it cannot answer ("Function not implemented") and sends no credentials; nothing is bound
    (an OPTIONS for alice gets 404). This is what ``algorithms: [MD5]`` is for."""
    proxy = auth_proxy(proxy_factory, None)
    mark = proxy.mark()
    async with baresip(tmp_path / "baresip", proxy) as phone:
        failed = await phone.wait_for(re.compile(r"alice@example\.com: Register: "))
        assert "Function not implemented" in failed, failed
        assert not any(REGISTERED.search(ln) for ln in phone.lines)
        assert exchange(proxy, mark) == ["in  REGISTER", "out SIP/2.0 401"]
        assert await options_status(proxy) == 404
    proxy.assert_alive()
