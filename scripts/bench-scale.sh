#!/usr/bin/env bash
# Scale benchmark, every figure against its baseline in the same run (README "Benchmarks"):
#   1. harness up+down of N nodes x M tiny VMs (default 32 x 4) vs the same QEMUs started
#      directly on this host in parallel and waited for with a 10 ms loop (target <= 1.5x),
#      with the absolute overhead per VM and harness's own peak RSS and CPU time (getrusage of
#      the child, via GNU time);
#   2. the same through the bastion vs direct ssh (target <= 1.3x);
#   3. 8 tiny VMs on one node vs 1 VM on one node (target <= 2x: starts are not serialised),
#      median of BENCH_ONE_REPS (3) interleaved pairs, next to the same 1 and 8 QEMUs started
#      directly (what 8 QEMUs cost this host by themselves), harness's cost per extra VM, and
#      the best ratio possible with that 1-VM up (harness adding nothing per extra VM).
# Every timed run starts from the same state of the host's free memory (see settle below).
# Usage: scripts/bench-scale.sh [--markdown] [N [M]]. Honours HARNESS_LAB_DIR/HARNESS_LAB_PORT_BASE.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
MD=0; [ "${1:-}" = --markdown ] && { MD=1; shift; }
N=${1:-32}; M=${2:-4}
bash scripts/install-deps.sh >/dev/null
command -v /usr/bin/time >/dev/null || apt-get install -y --no-install-recommends time >/dev/null
cargo build --release --locked -q
bash scripts/lab.sh up "$N" --vms "$M" >/dev/null
LAB=${HARNESS_LAB_DIR:-/var/tmp/harness-lab}
TD=$( [ "$LAB" = /var/tmp/harness-lab ] && echo topologies || echo "$LAB/topologies")
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
H="target/release/harness -F none --state-dir $W/state --progress never"
export BENCH_MARKER=HARNESS-TINY-READY
# One node: 1 VM and 8 VMs (unpinned), cut from the scale topology.
python3 - "$TD/lab-scale.yaml" "$W" <<'PY'
import sys, re
src, w = sys.argv[1], sys.argv[2]
text = open(src).read()
head, vms = text.split("\nvms:\n")
node = re.search(r"(  DUT1:\n(?:    .*\n)+)", head + "\n").group(1)
vm = [l for l in vms.splitlines() if "node: DUT1," in l][0]
vm = re.sub(r" cpus: \[\d+\],", "", vm)
for k in (1, 8):
    lines = [re.sub(r"qemu_id: \d+", f"qemu_id: {i}", vm) for i in range(1, k + 1)]
    open(f"{w}/one-{k}.yaml", "w").write("metadata: {version: 0.1, schema: []}\nnodes:\n" + node + "vms:\n" + "\n".join(lines) + "\n")
PY
now() { date +%s.%N; }
# Where this machine is itself a VM whose kernel reports freed memory back to the hypervisor
# (free page reporting: /sys/module/page_reporting), a reported page costs a hypervisor fault
# when next touched. QEMU's hugepage preallocation then runs ~1.7x slower on memory freed long
# ago than on memory freed a second before: a run right after another's teardown gets cheap
# pages, a run after a pause dear ones (direct: 7.5 s vs 12.4 s here). So every timed run
# starts once reporting has caught up (its counter unchanged for 5 s, waited for at most 60 s):
# all of them from the same state. Elsewhere (no such counter) this returns at once.
settle() {
  local f=/sys/module/page_reporting/parameters/reported_kib last v same=0 i=0
  [ -r "$f" ] || return 0
  last=$(cat "$f")
  while [ "$same" -lt 10 ] && [ "$i" -lt 120 ]; do
    sleep 0.5; i=$((i + 1)); v=$(cat "$f")
    if [ "$v" = "$last" ]; then same=$((same + 1)); else same=0; last=$v; fi
  done
}
# harness up (timed, GNU time for RSS/CPU) then down; prints "UP_S DOWN_S RSS_KB CPU_S RETRIED",
# RETRIED being the handshakes a server dropped and harness retried (its summary line, if any).
hrun() {
  local topo=$1 id=scale-bench-$RANDOM t0 t1 t2
  settle
  t0=$(now)
  /usr/bin/time -f "%M %U %S" -o "$W/time" $H up "$topo" --run-id "$id" >/dev/null 2>"$W/up.err" || { cat "$W/up.err" >&2; $H down "$topo" --run "$id" >/dev/null 2>&1; exit 1; }
  t1=$(now); $H down "$topo" --run "$id" >/dev/null 2>&1; t2=$(now)
  read -r rss u s <"$W/time"
  n=$(sed -n 's/^harness: \([0-9]*\) SSH handshake(s) dropped.*/\1/p' "$W/up.err" | grep . || echo 0)
  awk -v a="$t0" -v b="$t1" -v c="$t2" -v r="$rss" -v u="$u" -v s="$s" -v n="$n" 'BEGIN { printf "%.2f %.2f %d %.2f %d\n", b - a, c - b, r, u + s, n }'
}
direct() {
  target/release/harness render "$1" --format json --run-id "scale-direct-$RANDOM" >"$W/plan.json"
  settle
  python3 scripts/bench_baselines.py direct "$W/plan.json"
}
r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
v() { awk -v r="$1" -v t="$2" 'BEGIN { print (r <= t) ? "PASS" : "MISS" }'; }
load=$(cut -d' ' -f1-3 /proc/loadavg)

read -r hu hd rss cpu hr <<<"$(hrun "$TD/lab-scale.yaml")"
d=$(direct "$TD/lab-scale.yaml")
read -r ju jd _ _ jr <<<"$(hrun "$TD/lab-scale-jump.yaml")"
# 8 vs 1: a few seconds a pair, so the median of ONE_REPS interleaved pairs (one pair swung
# 1.4-2.5x with QEMU's start-up on 2 cores).
ONE_REPS=${BENCH_ONE_REPS:-3}
# The same 1 and 8 QEMUs started directly, interleaved too: what 8 QEMUs cost this host against
# 1 by themselves, and so what harness adds per extra VM.
o1s=() o8s=() d1s=() d8s=()
for _ in $(seq "$ONE_REPS"); do
  read -r t _ _ _ <<<"$(hrun "$W/one-1.yaml")"; o1s+=("$t")
  read -r t _ _ _ <<<"$(hrun "$W/one-8.yaml")"; o8s+=("$t")
  d1s+=("$(direct "$W/one-1.yaml")"); d8s+=("$(direct "$W/one-8.yaml")")
done
med() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f", a[int((NR + 1) / 2)] }'; }
o1=$(med "${o1s[@]}"); o8=$(med "${o8s[@]}"); d1=$(med "${d1s[@]}"); d8=$(med "${d8s[@]}")
vms=$((N * M))
r1=$(r "$hu" "$d"); r2=$(r "$ju" "$hu"); r3=$(r "$o8" "$o1"); rd=$(r "$d8" "$d1")
# harness's cost of each of the 7 extra VMs beyond what the 7 extra QEMUs cost by themselves.
extra=$(awk -v a="$o8" -v b="$o1" -v c="$d8" -v e="$d1" 'BEGIN { printf "%.0f", ((a - b) - (c - e)) * 1000 / 7 }')
# The best the row could be with this 1-VM up: a harness adding nothing per extra VM, i.e. its
# 8-VM up = its 1-VM up + what the 7 extra QEMUs cost by themselves (like bench-ssh's ceiling).
best=$(awk -v b="$o1" -v c="$d8" -v e="$d1" 'BEGIN { printf "%.2f", (b + c - e) / b }')
per=$(awk -v h="$hu" -v d="$d" -v n="$vms" 'BEGIN { printf "%.0f", (h - d) * 1000 / n }')
if [ "$MD" = 1 ]; then
  cat <<OUT
| benchmark ($(nproc) cores, load $load) | result |
|---|---|
| \`harness up\` $N nodes × $M tiny VMs vs the same $vms QEMUs started directly in parallel | ${hu} s vs ${d} s: ${r1}× (target ≤ 1.5×: $(v "$r1" 1.5)), ${per} ms overhead per VM; down ${hd} s |
| harness peak RSS / CPU time, that run; handshakes retried | $((rss / 1024)) MiB / ${cpu} s; ${hr} retried (${jr} through the bastion) |
| the same through one bastion vs direct ssh | ${ju} s vs ${hu} s: ${r2}× (target ≤ 1.3×: $(v "$r2" 1.3)); down ${jd} s |
| 8 tiny VMs on one node vs 1 VM (median of $ONE_REPS each) | ${o8} s vs ${o1} s: ${r3}× (target ≤ 2×: $(v "$r3" 2)); the same QEMUs started directly: ${d8} s vs ${d1} s, ${rd}×; harness adds ${extra} ms per extra VM; adding none it would be ${best}× |
OUT
else
  cat <<OUT
bench-scale ($(nproc) cores, load $load):
  harness up, $N x $M tiny VMs       ${hu} s   (down ${hd} s; peak RSS $((rss / 1024)) MiB, CPU ${cpu} s; ${hr} handshakes retried)
  direct parallel QEMUs               ${d} s
  ratio                               ${r1}x   (target <= 1.5x: $(v "$r1" 1.5)); overhead ${per} ms per VM
  through the bastion                 ${ju} s   (down ${jd} s; ${jr} handshakes retried)
  bastion vs direct ssh               ${r2}x   (target <= 1.3x: $(v "$r2" 1.3))
  8 VMs on one node vs 1 VM           ${o8} s vs ${o1} s: ${r3}x   (target <= 2x: $(v "$r3" 2); median of $ONE_REPS each)
  the same QEMUs started directly     ${d8} s vs ${d1} s: ${rd}x; harness adds ${extra} ms per extra VM
    best possible with this 1-VM up   ${best}x   (harness adding nothing per extra VM)
OUT
fi
