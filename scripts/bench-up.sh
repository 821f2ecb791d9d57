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
SSHO=(-i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile="$LAB/ssh/known_hosts" -o StrictHostKeyChecking=yes)
now() { date +%s.%N; }
med() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Node -> ssh target, from the topology.
declare -A PORT USER
while read -r n p u; do PORT[$n]=$p; USER[$n]=$u; done < <(python3 - "$TOPO" <<'PY'
import sys, re
node = None; port = user = None
for line in open(sys.argv[1]):
    m = re.match(r'^  (\w+):\s*$', line)
    if m:
        if node and port: print(node, port, user)
        node, port, user = m.group(1), None, None
    m = re.match(r'^\s+port: (\d+)', line)
    if m: port = m.group(1)
    m = re.match(r'^\s+username: (\S+)', line)
    if m: user = m.group(1)
    if line.startswith('vms:'): break
if node and port: print(node, port, user)
PY
)

run_harness() {
  local t0 t1; t0=$(now)
  $H up "$TOPO" --run-id "bench-h-$1" >/dev/null
  t1=$(now)
  $H down "$TOPO" --run "bench-h-$1" >/dev/null
  echo "$t1 - $t0" | bc
}

# Files and argv of every VM from `harness render --format json`, as shell-quoted lines.
plan_json() { target/release/harness render "$TOPO" --format json --run-id "$1"; }

run_direct() {
  local id="bench-d-$1" t0 t1
  plan_json "$id" > /tmp/bench-plan.json
  python3 - /tmp/bench-plan.json > /tmp/bench-direct.sh <<'PY'
import json, sys, shlex
p = json.load(open(sys.argv[1]))
need = sum(v.get("mem_mib", 0) // 2 for n in p["nodes"] for v in n["vms"])
print(f"nr=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages); echo $((nr + {need})) > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
for n in p["nodes"]:
    for v in n["vms"]:
        print(f"mkdir -p {shlex.quote(v['paths']['run_dir'])}")
        for f in v["files"]:
            print(f"printf %s {shlex.quote(f['content'])} > {shlex.quote(f['path'])}; chmod {f['mode']} {shlex.quote(f['path'])}")
print("t0=$(date +%s.%N)")
for n in p["nodes"]:
    for v in n["vms"]:
        print(" ".join(shlex.quote(a) for a in v["argv"]) + " &")
print("wait")
logs = [v["paths"]["serial_log"] for n in p["nodes"] for v in n["vms"]]
print("for l in " + " ".join(shlex.quote(l) for l in logs) + "; do until grep -qa HARNESS-LAB-READY \"$l\" 2>/dev/null; do sleep 0.01; done; done")
print("t1=$(date +%s.%N); echo \"$t1 - $t0\" | bc")
for n in p["nodes"]:
    for v in n["vms"]:
        pf = shlex.quote(v["paths"]["pidfile"])
        print(f"kill $(cat {pf}); while [ -e /proc/$(cat {pf} 2>/dev/null)/cmdline ] && [ -f {pf} ]; do sleep 0.05; done")
print(f"echo $nr > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
print(f"rm -rf /run/harness/{p['run_id']}")
PY
  bash /tmp/bench-direct.sh | tail -1
}

run_csit() {
  local id="bench-c-$1" t0 t1
  plan_json "$id" > /tmp/bench-plan.json
  python3 - /tmp/bench-plan.json "$KEY" "$LAB/ssh/known_hosts" > /tmp/bench-csit.sh <<PY
import json, sys, shlex
p = json.load(open(sys.argv[1]))
ports = {$(for n in "${!PORT[@]}"; do printf '"%s": ("%s", "%s"), ' "$n" "${PORT[$n]}" "${USER[$n]}"; done)}
ssh = lambda node: f"ssh -i {sys.argv[2]} -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile={sys.argv[3]} -p {ports[node][0]} {ports[node][1]}@127.0.0.1"
q = shlex.quote
print("t0=\$(date +%s.%N)")
for n in p["nodes"]:
    S = ssh(n["name"])
    for v in n["vms"]:
        print(f"{S} {q('sudo -n mkdir -p ' + q(v['paths']['run_dir']))}")
        for f in v["files"]:
            print(f"{S} {q('echo ' + q(f['content']) + ' | sudo -n tee ' + q(f['path']) + ' >/dev/null; sudo -n chmod +x ' + q(f['path']))}")
        print(f"{S} 'cat /sys/kernel/mm/hugepages/hugepages-2048kB/*hugepages*' >/dev/null")
        print(f"{S} 'nr=\$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages); echo \$((nr + {v['mem_mib'] // 2})) | sudo -n tee /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages >/dev/null'")
        print(f"{S} {q('sudo -n ' + ' '.join(q(a) for a in v['argv']))}")
        print(f"until {S} {q('sudo -n tail -1 ' + q(v['paths']['serial_log']))} | grep -qa HARNESS-LAB-READY; do sleep 1; done")
        qga = v['paths']['qga']
        print(f"until {S} {q('(echo ' + q(chr(123) + '\"execute\":\"guest-ping\"' + chr(125)) + '; sleep 1) | sudo -n socat - UNIX-CONNECT:' + qga)} | grep -q return; do sleep 1; done")
        print(f"pid=\$({S} {q('sudo -n cat ' + q(v['paths']['pidfile']))})")
        print(f"for t in \$({S} \"grep -rwl CPU /proc/\$pid/task/*/comm | xargs dirname | sed -e 's/\\\\/.*\\\\///g' | uniq\"); do {S} \"sudo -n taskset -pc {v['pinning']['cpus'][0]} \$t\" >/dev/null; done")
print("t1=\$(date +%s.%N); echo \"\$t1 - \$t0\" | bc")
for n in p["nodes"]:
    S = ssh(n["name"])
    for v in n["vms"]:
        pf = q(v["paths"]["pidfile"])
        print(f"{S} {q('sudo -n kill \$(sudo -n cat ' + pf + '); sleep 0.5; nr=\$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages); echo \$((nr - ' + str(v['mem_mib'] // 2) + ')) | sudo -n tee /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages >/dev/null')}")
print(f"sudo -n rm -rf /run/harness/{p['run_id']}")
PY
  bash /tmp/bench-csit.sh 2>/dev/null | tail -1
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
