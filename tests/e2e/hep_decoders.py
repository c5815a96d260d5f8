"""Real HEP decoders for the e2e tests, none of them ours:

- **Kamailio's sipcapture module** (Debian ``kamailio``): its HEPv3 parser hands every chunk
  to the script as ``$hep(0xNNN)``; the script logs one ``HEPEVENT`` line per packet with the
  version, family, protocol, addresses, ports, time, protocol type, capture id, correlation id
  and the payload in hex.
- **sngrep** (Debian ``sngrep``, built with its HEP listener ``-L``): decapsulates each packet
  into the SIP message with its original addresses and writes them to a pcap file (``-O``).
- **tshark** (Debian ``tshark``): reads that pcap with Wireshark's SIP dissector. Debian 12's
  Wireshark (4.0) has no HEP dissector of its own (``tshark -G protocols`` lists none), so it
  reads what sngrep decapsulated.

A missing program fails the test with the Debian package to install (``make test`` installs
them): never a silent skip.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.harness import LOOPBACK, wait_port_bound

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


def need(program: str, package: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}")
                                     .exists() else None)
    if path is None:
        raise AssertionError(f"{program} is missing: install the Debian package {package} "
                             "(make test installs it)")
    return path


# ----------------------------------------------------------------------------- kamailio

KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
disable_tcp=yes
auto_aliases=no
listen=udp:{host}:{port}
mpath="{modules}/"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "db_text.so"
loadmodule "sipcapture.so"
modparam("sipcapture", "db_url", "text://{dbdir}")
modparam("sipcapture", "hep_capture_on", 1)
modparam("sipcapture", "capture_on", 1)
modparam("sipcapture", "nonsip_hook", 1)
request_route {{
    drop;
}}
onreply_route {{
    drop;
}}
event_route[sipcapture:request] {{
    xlog("L_ERR", "HEPEVENT v=$hep(version) fam=$hep(0x001) proto=$hep(0x002) src=$hep(0x003)$hep(0x005) sport=$hep(0x007) dst=$hep(0x004)$hep(0x006) dport=$hep(0x008) sec=$hep(0x009) usec=$hep(0x00a) type=$hep(0x00b) cap=$hep(0x00c) corr=[$hep(0x011)] payload=$(hep(0x00f){{s.encode.hexa}}) END\\n");
    drop;
}}
"""


@dataclass(frozen=True)
class Decoded:
    """One packet as Kamailio's sipcapture read it."""

    version: int
    family: int
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    sec: int
    usec: int
    type: int
    capture_id: int
    correlation: str
    payload: bytes


def _field(line: str, name: str) -> str:
    start = line.index(f" {name}=") + len(name) + 2
    end = line.find(" ", start)
    return line[start:end if end >= 0 else None]


def parse_event(line: str) -> Decoded:
    corr_at = line.index(" corr=[") + 7
    corr = line[corr_at:line.index("] payload=", corr_at)]
    payload = line[line.index(" payload=") + 9:line.index(" END")]
    return Decoded(int(_field(line, "v")), int(_field(line, "fam")), int(_field(line, "proto")),
                   _field(line, "src").replace("<null>", ""), int(_field(line, "sport")),
                   _field(line, "dst").replace("<null>", ""), int(_field(line, "dport")),
                   int(_field(line, "sec")), int(_field(line, "usec")), int(_field(line, "type")),
                   int(_field(line, "cap")), corr, bytes.fromhex(payload))


async def kamailio_decode(workdir: Path, packets: list[bytes], port: int) -> list[Decoded]:
    """Replay ``packets`` to a Kamailio sipcapture on ``port``; its decoding, in order."""
    kamailio = need("kamailio", "kamailio")
    workdir.mkdir(parents=True, exist_ok=True)
    dbdir = workdir / "db"
    dbdir.mkdir(exist_ok=True)
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(host=LOOPBACK, port=port, modules=MODULES, dbdir=dbdir))
    log = workdir / "kamailio.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            kamailio, "-f", str(cfg), "-DD", "-E", "-m", "32", "-M", "8", "-Y", str(workdir),
            "-P", str(workdir / "kamailio.pid"), "-w", str(workdir),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        try:
            await wait_port_bound(proc, port, "udp", timeout=15)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text('latin-1')[-3000:]}") from None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in packets:
                s.sendto(p, (LOOPBACK, port))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # bounded poll of its log: kamailio raises nothing we could await
            lines = [ln for ln in log.read_text("latin-1").splitlines() if "HEPEVENT " in ln]
            if len(lines) >= len(packets) or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(lines) == len(packets), (f"kamailio decoded {len(lines)} of {len(packets)} "
                                            f"packets:\n{log.read_text('latin-1')[-3000:]}")
        return [parse_event(ln) for ln in lines]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# ----------------------------------------------------------------------------- sngrep + tshark


async def sngrep_decapsulate(workdir: Path, packets: list[bytes], port: int) -> Path:
    """Replay ``packets`` to sngrep's HEP listener; the pcap file it wrote of the SIP
    messages inside them."""
    sngrep = need("sngrep", "sngrep")
    out = workdir / "sngrep.pcap"
    proc = await asyncio.create_subprocess_exec(
        sngrep, "-N", "-q", "-F", "-L", f"udp:{LOOPBACK}:{port}", "-O", str(out),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_port_bound(proc, port, "udp", timeout=10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in packets:
                s.sendto(p, (LOOPBACK, port))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # sngrep writes each packet to the pcap as it decodes it (24-byte file header, then
        # a 16-byte record header and the frame per packet): wait for all of them
        while loop.time() < deadline and _pcap_records(out) < len(packets):
            await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return out


def _pcap_records(path: Path) -> int:
    if not path.exists():
        return 0
    data = path.read_bytes()
    at, n = 24, 0
    while at + 16 <= len(data):
        incl = struct.unpack("<I", data[at + 8:at + 12])[0]
        if at + 16 + incl > len(data):
            break
        at += 16 + incl
        n += 1
    return n


TSHARK_FIELDS = ("ip.src", "udp.srcport", "ip.dst", "udp.dstport", "sip.Call-ID",
                 "sip.Request-Line", "sip.Status-Line")


def tshark_sip(pcap: Path) -> list[dict[str, str]]:
    """Wireshark's SIP dissector over ``pcap``: one dict of :data:`TSHARK_FIELDS` per frame."""
    tshark = need("tshark", "tshark")
    argv = [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f"]
    for f in TSHARK_FIELDS:
        argv += ["-e", f]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [dict(zip(TSHARK_FIELDS, line.split("\t"), strict=False))
            for line in done.stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- a pcap artefact


def write_hep_pcap(path: Path, packets: list[tuple[float, bytes]], dport: int) -> None:
    """The HEP datagrams as a pcap (raw IPv4 + UDP, 127.0.0.1 -> 127.0.0.1:dport), for a
    Wireshark with a HEP dissector (sipcapture's plugin): a test artefact."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))  # LINKTYPE_RAW
        for t, payload in packets:
            udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
            head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                               socket.inet_aton(LOOPBACK), socket.inet_aton(LOOPBACK))
            check = sum(struct.unpack("!10H", head))
            check = (check >> 16) + (check & 0xFFFF)
            check = ~(check + (check >> 16)) & 0xFFFF
            frame = head[:10] + struct.pack("!H", check) + head[12:] + udp
            f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
            f.write(frame)
