"""Replay the benchmark's call flow through the sans-IO core, in one process, no sockets.

A developer's profiler, not a measure of speed (the sipp benchmark, bench/run.py, is): it
feeds ProxyCore the messages sipp's uac_rr.xml and uas_rr.xml exchange through the proxy
(INVITE, 180, 200, ACK, BYE, 200 with Record-Route honoured), so that cProfile shows where the
core spends its time per call without sipp, the kernel or the event loop in the picture.

    .venv/bin/python bench/replay.py --calls 20000 --profile 25

``--hold N`` measures what calls in flight cost instead: N calls placed at ``--rate`` and
all still held by their transactions' last timers (Timers J, K, L, M), start-up frozen as
the runtime freezes it; it prints the bytes (tracemalloc) and the objects the cyclic
collector tracks per held call, and the pause of one full collection with them held
(proxy.runtime.memory).

    .venv/bin/python bench/replay.py --hold 25600 --rate 800
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.core.access.sources import AddressSet  # noqa: E402
from proxy.core.core import CoreSettings, ProxyCore  # noqa: E402
from proxy.core.effects import Effects  # noqa: E402
from proxy.core.registrar.location import MemoryLocation  # noqa: E402
from proxy.core.types import LocalAddress, Send, Source, Target  # noqa: E402
from proxy.policy import load_policy  # noqa: E402
from proxy.runtime.memory import OLD, YOUNG  # noqa: E402
from proxy.transaction import TimerConfig  # noqa: E402

PROXY = ("127.0.0.1", 5060)
UAC = Source("udp", "127.0.0.1", 5062)
UAS = Source("udp", "127.0.0.1", 5070)
POLICY = """rules:
  - name: everything-else
    match: {status: "100-699"}
    action: forward
"""

INVITE = (
    "INVITE sip:service@127.0.0.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{n}-1-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5062>;tag=42SIPpTag00{n}\r\n"
    "To: service <sip:service@127.0.0.1:5070>\r\n"
    "Call-ID: {n}-42@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: sip:sipp@127.0.0.1:5062\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 129\r\n\r\n"
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
IN_DIALOG = (
    "{method} sip:127.0.0.1:5070;transport=UDP SIP/2.0\r\n"
    "{routes}"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{n}-{cseq}-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5062>;tag=42SIPpTag00{n}\r\n"
    "To: service <sip:service@127.0.0.1:5070>;tag=43SIPpTag01{n}\r\n"
    "Call-ID: {n}-42@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Contact: sip:sipp@127.0.0.1:5062\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
    "Content-Length: 0\r\n\r\n"
)


def header(msg: str, name: str) -> list[str]:
    head = msg.split("\r\n\r\n", 1)[0].split("\r\n")
    return [line for line in head if line.lower().startswith(name.lower() + ":")]


def answer(request: bytes, status: str, n: int, body: bool) -> bytes:
    """What sipp's UAS (uas_rr.xml) sends: the last request's Via, From, To (tagged),
    Call-ID, CSeq and Record-Route copied; sipp's [last_Via:] joins the Via values on one
    line."""
    text = request.decode()
    vias = [line.split(":", 1)[1].strip() for line in header(text, "Via")]
    lines = [f"SIP/2.0 {status}", "Via: " + ", ".join(vias)]
    lines += header(text, "From")
    to = header(text, "To")[0]
    lines.append(to if ";tag=" in to else f"{to};tag=43SIPpTag01{n}")
    lines += header(text, "Call-ID") + header(text, "CSeq") + header(text, "Record-Route")
    lines.append("Contact: <sip:127.0.0.1:5070;transport=UDP>")
    sdp = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
           "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    if body:
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(sdp)}", "", sdp]
    else:
        lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def make_core() -> ProxyCore:
    settings = CoreSettings(
        upstreams=(Target("udp", "127.0.0.1", 5070, label="sip:127.0.0.1:5070"),),
        record_route=True, registrar_local=True, timers=TimerConfig(),
        trusted_relays=AddressSet(()), probe_interval=0, secret=b"replay" * 6,
    )
    local = [LocalAddress("udp", *PROXY, "127.0.0.1:5060")]
    path = Path("/tmp/replay-policy.yaml")
    path.write_text(POLICY)
    return ProxyCore(settings, load_policy(path)[0], local, MemoryLocation())


def one(sends: list[Send], port: int) -> bytes:
    [data] = [s.data for s in sends if s.port == port]
    return data


class Timed:
    """ProxyCore.on_message, timed in CPU seconds of this thread (steadier than wall time on
    a busy machine): the replay's own message building is not counted."""

    def __init__(self, core: ProxyCore) -> None:
        self.core, self.seconds = core, 0.0

    def on_message(self, data: bytes, src: Source, now: float) -> Effects:
        t0 = time.thread_time()
        fx = self.core.on_message(data, src, now)
        self.seconds += time.thread_time() - t0
        return fx


def call(core: Timed, n: int, now: float) -> None:
    """One call as sipp places it through the proxy; every hop is checked."""
    out = core.on_message(INVITE.format(n=n).encode(), UAC, now).sends
    invite = one(out, 5070)
    core.on_message(answer(invite, "180 Ringing", n, False), UAS, now)
    ok = answer(invite, "200 OK", n, True)
    out = core.on_message(ok, UAS, now).sends
    rr = header(one(out, 5062).decode(), "Record-Route")
    routes = "".join(r.replace("Record-Route", "Route", 1) + "\r\n" for r in rr)
    ack = IN_DIALOG.format(method="ACK", routes=routes, n=n, cseq=1).encode()
    one(core.on_message(ack, UAC, now).sends, 5070)
    bye = IN_DIALOG.format(method="BYE", routes=routes, n=n, cseq=2).encode()
    fwd = one(core.on_message(bye, UAC, now).sends, 5070)
    one(core.on_message(answer(fwd, "200 OK", n, False), UAS, now).sends, 5062)


def run(timed: Timed, first: int, calls: int, rate: int) -> None:
    now = 1000.0 + first / rate
    core = timed.core
    for n in range(first, first + calls):
        now += 1.0 / rate
        call(timed, n, now)
        deadline = core.next_deadline()
        t0 = time.thread_time()
        while deadline is not None and deadline <= now:
            core.on_timer(now)
            deadline = core.next_deadline()
        timed.seconds += time.thread_time() - t0


def hold(calls: int, rate: int) -> None:
    """Place ``calls`` calls and keep them held; print what they cost (see the docstring)."""
    import tracemalloc

    timed = Timed(make_core())
    run(timed, 0, 200, rate)  # warm up, then let the warm-up calls expire
    core = timed.core
    deadline = core.next_deadline()
    while deadline is not None and deadline <= 1100.0:
        core.on_timer(deadline)
        deadline = core.next_deadline()
    gc.collect()
    gc.freeze()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run(timed, 200 * rate, calls, rate)  # from 1200.0 on, the clock moves 1/rate per call, timers fire as due
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    objects = len(gc.get_objects()) - tracked
    pauses = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - t0)
    pause = sorted(pauses)[1]  # the median of three
    print(f"{calls} calls at {rate}/s, {core.active_transactions} transactions held: "
          f"{grown / calls:.0f} bytes and {objects / calls:.1f} tracked objects per call "
          f"(tracemalloc, gc.get_objects); a full collection over them: {1000 * pause:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=600, help="calls/s of simulated time")
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions")
    ap.add_argument("--hold", type=int, default=0,
                    help="measure N calls held instead (bytes, tracked objects, full pass)")
    args = ap.parse_args()
    if args.hold:
        hold(args.hold, args.rate)
        return
    core = Timed(make_core())
    run(core, 0, 200, args.rate)  # warm up
    core.seconds = 0.0
    gc.collect()  # as the runtime does after start-up (proxy.runtime.server)
    gc.freeze()
    gc.set_threshold(*YOUNG, OLD)  # as the runtime does (proxy.runtime.memory)
    prof = cProfile.Profile() if args.profile else None
    t0 = time.thread_time()
    if prof:
        prof.enable()
    run(core, 200, args.calls, args.rate)
    if prof:
        prof.disable()
    dt = time.thread_time() - t0
    import proxy.sip.message as m
    kind = "compiled" if m.__file__ and not m.__file__.endswith(".py") else "pure"
    print(f"{args.calls} calls in {dt:.2f} s, {core.seconds:.2f} s of them in the core: "
          f"{1e6 * core.seconds / args.calls:.0f} µs/call in the core ({kind})")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
