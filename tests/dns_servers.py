"""Real DNS servers on loopback for the RFC 3263 tests (never a mock of the resolver).

* :class:`DnsResponder`: an authoritative server for ``test.`` written with dnspython's
  message and wire classes, on a loopback UDP port of the test's own event loop. Its zone can
  change during a test, it records every question it is asked, and it can be told to fail
  (SERVFAIL, or no answer at all) -- what a test of caching and failures needs.
* :class:`Dnsmasq`: Debian's dnsmasq (``dnsmasq-base``, in the Makefile's TEST_SYSDEPS) serving
  NAPTR, SRV and A records from its command line on a free loopback port: an independent
  implementation, for the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 {neg}"


class DnsResponder(asyncio.DatagramProtocol):
    """Authoritative for ``test.``: answers from :attr:`zone`, NXDOMAIN for a name it does not
    hold, NODATA (with the SOA, RFC 2308) for a type it does not hold for a name."""

    def __init__(self, negative_ttl: int = 30) -> None:
        #: (name without final dot, TYPE) -> (ttl, [rdata text, ...])
        self.zone: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.questions: list[tuple[str, str]] = []
        self.mode = "answer"  # | "servfail" | "silent"
        self.negative_ttl = negative_ttl
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> DnsResponder:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self,
                                                                local_addr=(host, 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int = 60) -> None:
        key = (name.lower().rstrip("."), rdtype)
        old = self.zone.get(key, (ttl, []))[1]
        self.zone[key] = (ttl, [*old, *rdatas])

    def set(self, name: str, rdtype: str, *rdatas: str, ttl: int = 60) -> None:
        self.zone[(name.lower().rstrip("."), rdtype)] = (ttl, list(rdatas))

    def asked(self, name: str | None = None, rdtype: str | None = None) -> int:
        """How many questions (for ``name``, of ``rdtype``) were received."""
        return sum(1 for n, t in self.questions
                   if (name is None or n == name) and (rdtype is None or t == rdtype))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - a broken datagram gets no answer
            return
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.questions.append((name, rdtype))
        if self.mode == "silent":
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.zone:
            ttl, rdatas = self.zone[(name, rdtype)]
            rrset = dns.rrset.from_text_list(q.name, ttl, dns.rdataclass.IN, q.rdtype, rdatas)
            response.answer.append(rrset)
        else:
            if not any(n == name for n, _ in self.zone):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                "test.", self.negative_ttl, "IN", "SOA", SOA.format(neg=self.negative_ttl)))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Dnsmasq:
    """``dnsmasq`` on 127.0.0.1:``port`` answering only from its command line, authoritative
    for ``test`` (``--local=/test/``: NXDOMAIN for the rest of it), and nothing else: no
    resolv.conf, no /etc/hosts, no DHCP, in the foreground (stopped by :meth:`stop`)."""

    def __init__(self, workdir: Path, records: Iterable[str], ttl: int = 60) -> None:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.port = free_udp_port()
        self.log = workdir / "dnsmasq.log"
        self.argv = [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
            "--conf-file=/dev/null", "--pid-file=", "--bind-interfaces",
            "--listen-address=127.0.0.1", f"--port={self.port}", "--local=/test/",
            f"--local-ttl={ttl}", "--log-queries", f"--log-facility={self.log}",
            "--user=" + _user(), *records,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> Dnsmasq:
        with open(self.log.with_suffix(".err"), "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        query = dns.message.make_query("ready.invalid.test", "A")
        while True:  # ready when it answers (bounded)
            if self.proc.poll() is not None:
                err = self.log.with_suffix(".err").read_text(errors="replace")
                raise AssertionError(f"dnsmasq exited: {err}")
            try:
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                return self
            except (dns.exception.Timeout, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("dnsmasq did not answer within "
                                         f"{timeout} s") from None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self) -> list[str]:
        """The questions it logged ("query[SRV] _sip._udp.carrier.test from 127.0.0.1")."""
        if not self.log.exists():
            return []
        return [line.split(": ", 1)[1] for line in self.log.read_text().splitlines()
                if ": query[" in line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
