#!/bin/bash
# Instructions per call of the whole proxy process (runtime, event loop, core), counted by
# valgrind's callgrind while sipp places calls through it at a low rate: a deterministic
# figure to compare two versions of the code (the sipp benchmark, bench/run.py, measures
# speed; this counts work, unmoved by the machine's load or phase). Kernel time is not
# counted (sendto and recvfrom cost as much in any SIP proxy).
#
#   bench/instructions.sh [CALLS]        # default 300 calls, after 100 calls of warm-up
#
# Needs valgrind and sipp; uses UDP ports 5060 (proxy), 5062 (UAC) and 5070 (UAS).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-300}
DIR=$(mktemp -d)
VP=
cleanup() {
  pkill -f "sipp -sf bench/uas_rr.xml -i 127.0.0.1 -p 5070 -mp 17100" || true
  [ -n "$VP" ] && kill "$VP" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
cat > "$DIR/policy.yaml" <<'YAML'
rules:
  - name: everything-else
    match: {status: "100-699"}
    action: forward
YAML
cat > "$DIR/proxy.yaml" <<'YAML'
listen:
  - udp:127.0.0.1:5060
upstreams:
  - sip:127.0.0.1:5070
policy: policy.yaml
state: "memory:"
record_route: true
registrar: local
log_level: info
upstream_probe: {interval: 0}
YAML
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
  .venv/bin/python -m proxy run --config "$DIR/proxy.yaml" > "$DIR/proxy.out" 2>&1 &
VP=$!
for _ in $(seq 1 240); do
  ss -lun | grep -q '127.0.0.1:5060 ' && break
  kill -0 $VP 2>/dev/null || { cat "$DIR/proxy.out"; exit 1; }
  sleep 0.5
done
sipp -sf bench/uas_rr.xml -i 127.0.0.1 -p 5070 -mp 17100 -cp 18990 -nostdin -bg > /dev/null 2>&1 || true
uac() {
  sipp -sf bench/uac_rr.xml -i 127.0.0.1 -p 5062 -mp 16100 -cp 18991 -nostdin -r 20 -m "$1" \
    -rsa 127.0.0.1:5060 127.0.0.1:5070 -s service -default_behaviors all,-abortunexp \
    > "$DIR/uac.out" 2>&1
}
uac 100                                  # warm-up: memos, caches, first allocations
callgrind_control -z $VP > /dev/null     # count from here
uac "$CALLS"
callgrind_control -d $VP > /dev/null 2>&1
kill -TERM $VP; wait $VP || true
VP=
f=$(ls -t "$DIR"/cg.out.* | head -1)
ir=$(grep -m1 '^summary:\|^totals:' "$f" | awk '{print $2}')
echo "$CALLS calls: $ir instructions, $((ir / CALLS)) per call ($(.venv/bin/python -m proxy --version))"
if [ -n "${KEEP:-}" ]; then cp "$f" "$KEEP"; echo "callgrind file: $KEEP (callgrind_annotate --inclusive=yes)"; fi
