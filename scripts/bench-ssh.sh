#!/usr/bin/env bash
# SSH benchmark, all measured in the same run against the loopback lab (scripts/lab.sh):
#   1. N sequential `true` on one node: `harness exec --repeat N` (one connection)
#      vs N × fresh `ssh` vs N × `ssh` through a ControlMaster socket;
#   2. fan-out: `harness exec` on 32 nodes vs a shell loop of `ssh` to the 32 nodes
#      vs `harness exec` on 1 node.
# Prints times and ratios against the targets (≥1.5× ControlMaster per command, ≥10× fresh ssh,
# 32-node fan-out within 2× of one node). BENCH_N overrides N (default 500), BENCH_REPS the
# repetitions of the fan-out measurements (default 5, median reported).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB=${HARNESS_LAB_DIR:-/var/tmp/harness-lab}
N=${BENCH_N:-500}
REPS=${BENCH_REPS:-5}
NODES=32

cd "$REPO"
echo "building release binary..." >&2
cargo build --release --quiet --bin harness
H=${CARGO_TARGET_DIR:-$REPO/target}/release/harness

started_lab=no
if ! "$REPO/scripts/lab.sh" status >/dev/null 2>&1; then started_lab=yes; fi
"$REPO/scripts/lab.sh" up $NODES
# shellcheck disable=SC1091
. "$LAB/lab.env"
cm_dir=$(mktemp -d)
# Private copy: another `lab.sh up` (parallel tests) may rewrite $LAB/fanout.yaml meanwhile.
LAB_FANOUT_COPY=$cm_dir/fanout.yaml
cp "$LAB_FANOUT" "$LAB_FANOUT_COPY"
LAB_FANOUT=$LAB_FANOUT_COPY
[ "$(grep -c 'type: DUT' "$LAB_FANOUT")" -ge $NODES ] || { echo "fanout.yaml has fewer than $NODES nodes" >&2; exit 1; }
LAB_PORTS=$(echo "$LAB_PORTS" | tr ' ' '\n' | head -n $NODES | tr '\n' ' ')
cleanup() {
    ssh -o ControlPath="$cm_dir/cm" -O exit -p "${LAB_PORTS%% *}" "hlab1@127.0.0.1" 2>/dev/null || true
    rm -rf "$cm_dir"
    if [ "$started_lab" = yes ]; then "$REPO/scripts/lab.sh" down; fi
}
trap cleanup EXIT

SSH_OPTS=(-i "$LAB_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
          -o UserKnownHostsFile="$LAB_KNOWN_HOSTS" -o LogLevel=ERROR)
port1=${LAB_PORTS%% *}

now() { date +%s%N; }
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%d", ($2+$3+$4+$7+$8) * 1000 / hz}' /proc/stat; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.1f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" -v dir="$3" 'BEGIN { ok = (dir == "ge") ? (r >= t) : (r <= t); print ok ? "PASS" : "MISS" }'; }

# Warm-up: page cache, sshd accept paths.
"$H" exec "$LAB_FANOUT" --node DUT1 -- true 2>/dev/null
ssh "${SSH_OPTS[@]}" -p "$port1" hlab1@127.0.0.1 true

echo "== $N sequential \`true\` on one node ==" >&2
t0=$(now); "$H" exec "$LAB_FANOUT" --node DUT1 --repeat "$N" -- true 2>/dev/null; t1=$(now)
harness_ms=$(ms "$t0" "$t1")

t0=$(now)
for _ in $(seq "$N"); do ssh "${SSH_OPTS[@]}" -p "$port1" hlab1@127.0.0.1 true; done
t1=$(now)
fresh_ms=$(ms "$t0" "$t1")

ssh "${SSH_OPTS[@]}" -o ControlMaster=yes -o ControlPath="$cm_dir/cm" -o ControlPersist=120 -fN -p "$port1" hlab1@127.0.0.1
t0=$(now)
for _ in $(seq "$N"); do ssh "${SSH_OPTS[@]}" -o ControlPath="$cm_dir/cm" -p "$port1" hlab1@127.0.0.1 true; done
t1=$(now)
cm_ms=$(ms "$t0" "$t1")

echo "== fan-out: one \`true\` on each of $NODES nodes (median of $REPS) ==" >&2
fan=(); loop=(); one=(); fancpu=()
for _ in $(seq "$REPS"); do
    c0=$(cpu_ms)
    t0=$(now); "$H" exec "$LAB_FANOUT" -- true 2>"$cm_dir/fan.err"; t1=$(now); fan+=("$(ms "$t0" "$t1")")
    fancpu+=($(( $(cpu_ms) - c0 )))
    [ "$(grep -c ': exit 0' "$cm_dir/fan.err")" -ge $NODES ] || { cat "$cm_dir/fan.err" >&2; exit 1; }
    t0=$(now); "$H" exec "$LAB_FANOUT" --node DUT1 -- true 2>/dev/null; t1=$(now); one+=("$(ms "$t0" "$t1")")
    t0=$(now)
    i=0
    for p in $LAB_PORTS; do i=$((i + 1)); ssh "${SSH_OPTS[@]}" -p "$p" "hlab$i@127.0.0.1" true; done
    t1=$(now); loop+=("$(ms "$t0" "$t1")")
done
fan_ms=$(printf '%s\n' "${fan[@]}" | median)
one_ms=$(printf '%s\n' "${one[@]}" | median)
loop_ms=$(printf '%s\n' "${loop[@]}" | median)
fancpu_ms=$(printf '%s\n' "${fancpu[@]}" | median)
cores=$(nproc)

per() { awk -v t="$1" -v n="$N" 'BEGIN { printf "%.2f", t / n }'; }
r_cm=$(ratio "$cm_ms" "$harness_ms")
r_fresh=$(ratio "$fresh_ms" "$harness_ms")
r_fan=$(ratio "$fan_ms" "$one_ms")
r_loop=$(ratio "$loop_ms" "$fan_ms")
cat <<OUT

$N sequential \`true\` on one node (wall time, harness includes its one connect):
  harness exec --repeat $N   ${harness_ms} ms   ($(per "$harness_ms") ms/command)
  ssh with ControlMaster     ${cm_ms} ms   ($(per "$cm_ms") ms/command)
  fresh ssh per command      ${fresh_ms} ms   ($(per "$fresh_ms") ms/command)
  harness vs ControlMaster   ${r_cm}x faster   (target >= 1.5x: $(verdict "$r_cm" 1.5 ge))
  harness vs fresh ssh       ${r_fresh}x faster   (target >= 10x: $(verdict "$r_fresh" 10 ge))

Fan-out, one \`true\` per node (median of $REPS):
  harness exec, $NODES nodes      ${fan_ms} ms
  harness exec, 1 node        ${one_ms} ms
  shell loop of ssh, $NODES nodes ${loop_ms} ms
  $NODES nodes vs 1 node          ${r_fan}x   (target <= 2x: $(verdict "$r_fan" 2 le))
  ssh loop vs harness         ${r_loop}x slower
  CPU used by the 32-node run ${fancpu_ms} ms on all cores (harness + all sshd), i.e. $((fancpu_ms / NODES)) ms per
  connection; with $cores cores the fan-out cannot finish in under $((fancpu_ms / cores)) ms on this machine.
OUT
