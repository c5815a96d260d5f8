"""Kamailio (Debian ``kamailio`` + ``kamailio-tls-modules``) as a real TLS SIP peer: a "PBX"
on ``tls:127.0.0.1:PORT`` that answers INVITE 200 (with a sips: Contact), BYE and OPTIONS
200, absorbs ACK, and logs one ``KAM METHOD PROTO`` line per request it received."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

from tests.e2e.harness import LOOPBACK

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


def available() -> bool:
    return os.path.exists(KAMAILIO) and os.path.exists(f"{MODULES}/tls.so")


CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
disable_tcp=no
enable_tls=yes
listen=tls:{host}:{port}
mpath="{modules}/"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
modparam("tls", "config", "{tls_cfg}")
request_route {{
    xlog("L_ERR", "KAM $rm $pr from $si\\n");
    if (is_method("ACK")) {{ exit; }}
    if (is_method("INVITE")) {{
        append_to_reply("Contact: <sips:pbx@{host}:{port};transport=tls>\\r\\n");
    }}
    sl_send_reply("200", "OK");
    exit;
}}
"""

TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {pem}
certificate = {pem}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


class KamailioTls:
    def __init__(self, workdir: Path, port: int, pem: Path) -> None:
        self.workdir = workdir
        self.port = port
        self.pem = pem
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / "kamailio.log"

    async def start(self) -> KamailioTls:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tls_cfg = self.workdir / "tls.cfg"
        tls_cfg.write_text(TLS_CFG.format(pem=self.pem))
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(CFG.format(host=LOOPBACK, port=self.port, modules=MODULES,
                                  tls_cfg=tls_cfg))
        with open(self.log, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                KAMAILIO, "-f", str(cfg), "-DD", "-E", "-m", "64", "-M", "8",
                "-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid"),
                "-w", str(self.workdir), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while loop.time() < deadline:  # bounded poll: kamailio announces nothing we can await
            assert self.proc.returncode is None, self.text()
            try:
                _, w = await asyncio.open_connection(LOOPBACK, self.port)
                w.close()
                return self
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError("kamailio did not listen in 15 s:\n" + self.text())

    def text(self) -> str:
        return self.log.read_text("latin-1") if self.log.exists() else ""

    def requests(self) -> list[tuple[str, str]]:
        """(method, proto) of each request kamailio logged."""
        out = []
        for line in self.text().splitlines():
            if "KAM " in line:
                parts = line.split("KAM ", 1)[1].split()
                out.append((parts[0], parts[1]))
        return out

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
