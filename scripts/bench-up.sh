#!/usr/bin/env bash
# Benchmark of `harness up` on the lab topology, against two baselines measured in the same run:
#   direct  the same qemu commands (from `harness render`) started locally in parallel and waited
#           for with a tight 10 ms loop on the serial logs: the physical limit on this machine
#   csit    the same VMs brought up CSIT's way: one fresh `ssh` per command, VMs one after
#           another, `sudo tail -1` serial polls with 1 s sleeps, one-shot socat QGA calls,
#           one `ssh` per taskset
# plus `harness ping`: guest-agent round trips over one persistent channel.
# Prints seconds and ratios. Needs root (the lab nodes are this machine). Usage: scripts/bench-up.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
REPS=${1:-3}
bash scripts/install-deps.sh >/dev/null
cargo build --release --locked -q
bash scripts/lab.sh up >/dev/null
bash scripts/build-guest.sh >/dev/null
LAB=${HARNESS_LAB_DIR:-/var/tmp/harness-lab}
H="target/release/harness --state-dir $(mktemp -d) --progress never"
TOPO=topologies/lab.yaml
KEY=$LAB/ssh/id_ed25519
now() { date +%s.%N; }
med() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Node -> "NODE=PORT:USER" for the key-auth nodes, from the topology.
NODES=$(python3 - "$TOPO" <<'PY2'
import sys, re
out, node, port, user = [], None, None, None
for line in open(sys.argv[1]):
    if line.startswith('vms:'): break
    m = re.match(r'^  (\w+):\s*$', line)
    if m:
        if node and port and user: out.append(f"{node}={port}:{user}")
        node, port, user = m.group(1), None, None
    m = re.match(r'^\s+port: (\d+)', line); port = m.group(1) if m else port
    m = re.match(r'^\s+username: (\S+)', line); user = m.group(1) if m else user
if node and port and user: out.append(f"{node}={port}:{user}")
print(" ".join(out))
PY2
)

run_harness() {
  local t0 t1; t0=$(now)
  $H up "$TOPO" --run-id "bench-h-$1" >/dev/null
  t1=$(now)
  $H down "$TOPO" --run "bench-h-$1" >/dev/null
  echo "$t1 - $t0" | bc
}

plan_json() { target/release/harness render "$TOPO" --format json --run-id "$1" > "$2"; }

run_direct() {
  plan_json "bench-d-$1" /tmp/bench-plan.json
  python3 scripts/bench_baselines.py direct /tmp/bench-plan.json
}

run_csit() {
  plan_json "bench-c-$1" /tmp/bench-plan.json
  # shellcheck disable=SC2086
  python3 scripts/bench_baselines.py csit /tmp/bench-plan.json "$KEY" "$LAB/ssh/known_hosts" $NODES
}

echo "bench-up: $TOPO, $REPS repetitions each (medians)"
H_T=(); D_T=(); C_T=()
for i in $(seq "$REPS"); do
  D_T+=("$(run_direct "$i")")
  H_T+=("$(run_harness "$i")")
done
C_T+=("$(run_csit 1)")
h=$(printf '%s\n' "${H_T[@]}" | med); d=$(printf '%s\n' "${D_T[@]}" | med); c=$(printf '%s\n' "${C_T[@]}" | med)
printf 'harness up        %6.2f s   (runs: %s)\n' "$h" "${H_T[*]}"
printf 'direct parallel   %6.2f s   (runs: %s)\n' "$d" "${D_T[*]}"
printf 'csit-style        %6.2f s   (1 run)\n' "$c"
printf 'ratio harness/direct  %.2f   (target <= 1.2)\n' "$(echo "$h / $d" | bc -l)"
printf 'ratio csit/harness    %.2f   (target >= 3)\n' "$(echo "$c / $h" | bc -l)"

$H up "$TOPO" --run-id bench-ping --vm DUT1_1 >/dev/null
$H ping DUT1_1 "$TOPO" --run bench-ping --count 200
$H down "$TOPO" --run bench-ping >/dev/null
