#!/bin/sh
# Instructions per call of the proxy and of Kamailio's processes, counted by valgrind's
# callgrind while sipp places the same calls through each at a low rate: a deterministic
# figure to compare two versions of the code, and the proxy with Kamailio (the sipp
# benchmark, bench/run.py, measures speed; this counts work, unmoved by the machine's load or
# phase). Kernel time is not counted (sendto and recvfrom cost as much in any SIP proxy).
#
#   bench/instructions.sh [CALLS]                    # both, 300 calls after 100 of warm-up
#   bench/instructions.sh --target proxy [CALLS]     # the proxy alone (--target kamailio)
#   bench/instructions.sh --keep DIR ...             # keep the callgrind files in DIR
#   bench/instructions.sh --help                     # ports, rate, Kamailio's config, --drain
#
# Needs valgrind, sipp and kamailio; uses UDP ports 5060 (target), 5062 (UAC) and 5070 (UAS)
# unless told otherwise. bench/instructions.py does the work (standard library only).
set -eu
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" bench/instructions.py "$@"
