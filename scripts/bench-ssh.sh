#!/usr/bin/env bash
# SSH benchmark, every figure against its baselines in the same run, on the loopback lab
# (scripts/lab.sh), printed as ratios with a verdict per target (README "Benchmarks"):
#   1. BENCH_N (500) sequential `true` on one node: `harness exec --repeat N` (one connection)
#      vs N x fresh `ssh` (target: harness >= 10x faster) vs N x `ssh` through a ControlMaster
#      socket (target >= 1.5x);
#   2. for each node count K (default 32 and 128), one `true` on each of the same K nodes, all K
#      in flight at once:
#        harness exec --max-parallel K          vs  parallel-ssh -p K       (target >= 5x faster)
#                                               vs  ansible -f K -m raw     (target >= 10x faster)
#      and the sshd CPU floor: the CPU time the lab's sshds (listeners and every process under
#      them, read from a cgroup holding them where the kernel allows, else from /proc) spent
#      during the harness run, divided by the cores: no client can finish before the servers
#      have done their share (target: harness wall time <= 1.15x that floor).
#      Every tool uses the lab's ssh config, key and known_hosts (strict host key checking) and
#      the same user/host/port list; each is run once for warm-up, then BENCH_REPS times (5),
#      interleaved, and the median is reported.
# Usage: scripts/bench-ssh.sh [--markdown] [K...]
#   --markdown  print the README table rows (figures come from this run only)
# Installs pssh and ansible-core (apt) if missing. Honours HARNESS_LAB_DIR/HARNESS_LAB_PORT_BASE
# (a private lab: HARNESS_LAB_DIR=/var/tmp/harness-lab-bench HARNESS_LAB_PORT_BASE=5000); brings
# the lab up with max(K) nodes and down again at the end if it was not up before.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export PATH="$HOME/.cargo/bin:$PATH"
MD=0; [ "${1:-}" = --markdown ] && { MD=1; shift; }
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(32 128)
for k in "${SIZES[@]}"; do
    if [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$k" -le 128 ]; then continue; fi
    { echo "bench-ssh: node counts are 1..128 (got $k)" >&2; exit 2; }
done
MAXK=$(printf '%s\n' "${SIZES[@]}" | sort -n | tail -1)
LAB=${HARNESS_LAB_DIR:-/var/tmp/harness-lab}
N=${BENCH_N:-500}
REPS=${BENCH_REPS:-5}
log() { echo "bench-ssh: $*" >&2; }

missing=()
command -v parallel-ssh >/dev/null || missing+=(pssh)
command -v ansible >/dev/null || missing+=(ansible-core)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

log "building the release binary..."
cargo build --release --locked --quiet --bin harness
H=${CARGO_TARGET_DIR:-$REPO/target}/release/harness

started_lab=no
"$REPO/scripts/lab.sh" status >/dev/null 2>&1 || started_lab=yes
"$REPO/scripts/lab.sh" up "$MAXK" 2>/dev/null
# shellcheck disable=SC1091
. "$LAB/lab.env"
W=$(mktemp -d)
cleanup() {
    cg_teardown
    ssh -o ControlPath="$W/cm" -O exit -p "${LAB_PORTS%% *}" hlab1@127.0.0.1 2>/dev/null || true
    rm -rf "$W"
    if [ "$started_lab" = yes ]; then "$REPO/scripts/lab.sh" down 2>/dev/null; fi
}
trap cleanup EXIT
cores=$(nproc)
load() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(load)

HX=("$H" -F "$LAB_SSH_CONFIG" --progress never --state-dir "$W/state")
SSH_OPTS=(-F "$LAB_SSH_CONFIG" -o LogLevel=ERROR)
port1=${LAB_PORTS%% *}

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.1f", a / b }'; }
ratio2() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" -v dir="$3" 'BEGIN { ok = (dir == "ge") ? (r >= t) : (r <= t); print ok ? "PASS" : "MISS" }'; }
secs() { awk -v m="$1" 'BEGIN { printf "%.2f", m / 1000 }'; }

# CPU time (ms) of the lab's sshd listeners and every process under them: utime+stime of the
# live ones plus cutime+cstime (their reaped descendants), so a connection's processes count
# once whether they are still running or already gone.
SSHD_PIDS=$(cat "$LAB"/nodes/*/sshd.pid 2>/dev/null | tr '\n' ' ')
sshd_tree() { # prints "CPU_MS LIVE_CHILDREN"
    python3 - "$SSHD_PIDS" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1].split()}
stat = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            s = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        stat[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))  # ppid, utime+stime+cutime+cstime
kids = {}
for pid, (ppid, _) in stat.items():
    kids.setdefault(ppid, []).append(pid)
todo, ticks, live = [p for p in roots if p in stat], 0, 0
while todo:
    p = todo.pop()
    ticks += stat[p][1]
    live += p not in roots
    todo.extend(kids.get(p, []))
print(ticks * 1000 // os.sysconf("SC_CLK_TCK"), live)
PY
}
# The tree above misses CPU: summing utime/stime/cutime/cstime over /proc undercounted the
# lab's sshds by ~20% against the kernel's own per-cgroup accounting (and `perf record -a`),
# e.g. 540 ms vs 680 ms for 32 connections: time of processes that are not reaped up the
# tree is lost. So where it can, the bench puts the listeners in a cgroup of their own (every
# process they fork lands there too) and reads its exact CPU time; the tree is the fallback.
CG=; CG_V=; CG_HOME=()
cg_setup() {
    local name=harness-bench-ssh-$$ p
    if [ -w /sys/fs/cgroup/cpuacct ] && mkdir "/sys/fs/cgroup/cpuacct/$name" 2>/dev/null; then
        CG=/sys/fs/cgroup/cpuacct/$name; CG_V=1
    elif [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir "/sys/fs/cgroup/$name" 2>/dev/null; then
        CG=/sys/fs/cgroup/$name; CG_V=2
    else
        return 0
    fi
    for p in $SSHD_PIDS; do
        CG_HOME+=("$p $(awk -F: -v v="$CG_V" '(v == 1 && $2 ~ /(^|,)cpuacct(,|$)/) || (v == 2 && $1 == 0) { print $3 }' "/proc/$p/cgroup")")
        echo "$p" >"$CG/cgroup.procs" || { cg_teardown; return 0; }
    done
}
cg_teardown() { # the listeners back where they were, then the (empty) cgroup away
    [ -n "$CG" ] || return 0
    local root=${CG%/*} e
    for e in "${CG_HOME[@]}"; do echo "${e%% *}" >"$root${e#* }/cgroup.procs" 2>/dev/null || true; done
    rmdir "$CG" 2>/dev/null || true
    CG=
}
sshd_cpu_ms() {
    if [ "$CG_V" = 1 ]; then echo $(( $(cat "$CG/cpuacct.usage") / 1000000 ))
    elif [ "$CG_V" = 2 ]; then awk '$1 == "usage_usec" { print int($2 / 1000) }' "$CG/cpu.stat"
    else sshd_tree | cut -d' ' -f1; fi
}
# After a client returns, the sshd side of its connections may still be tearing down: wait
# (up to 3 s) until no connection process is left, then read the CPU.
sshd_cpu_settled() {
    local cpu live
    for _ in $(seq 30); do
        read -r cpu live <<<"$(sshd_tree)"
        [ "$live" = 0 ] && break
        sleep 0.1
    done
    sshd_cpu_ms
}

cg_setup
if [ -n "$CG" ]; then SSHD_CPU_HOW="cgroup v$CG_V CPU accounting"; else SSHD_CPU_HOW="/proc process tree"; fi
log "sshd CPU from the $SSHD_CPU_HOW"

# ---- 1. sequential commands on one node ---------------------------------------------------
# Private copy: another `lab.sh up` on this lab dir may rewrite fanout.yaml meanwhile.
cp "$LAB_FANOUT" "$W/fanout.yaml"; LAB_FANOUT=$W/fanout.yaml
"${HX[@]}" exec "$LAB_FANOUT" --node DUT1 -- true >/dev/null 2>&1    # warm-up
ssh "${SSH_OPTS[@]}" -p "$port1" hlab1@127.0.0.1 true

log "$N sequential \`true\` on one node"
t0=$(now); "${HX[@]}" exec "$LAB_FANOUT" --node DUT1 --repeat "$N" -- true >/dev/null 2>&1; t1=$(now)
seq_h=$(ms "$t0" "$t1")
t0=$(now)
for _ in $(seq "$N"); do ssh "${SSH_OPTS[@]}" -p "$port1" hlab1@127.0.0.1 true; done
t1=$(now)
seq_fresh=$(ms "$t0" "$t1")
ssh "${SSH_OPTS[@]}" -o ControlMaster=yes -o ControlPath="$W/cm" -o ControlPersist=120 -fN -p "$port1" hlab1@127.0.0.1
t0=$(now)
for _ in $(seq "$N"); do ssh "${SSH_OPTS[@]}" -o ControlPath="$W/cm" -p "$port1" hlab1@127.0.0.1 true; done
t1=$(now)
seq_cm=$(ms "$t0" "$t1")
ssh -o ControlPath="$W/cm" -O exit -p "$port1" hlab1@127.0.0.1 2>/dev/null || true
per() { awk -v t="$1" -v n="$N" 'BEGIN { printf "%.1f", t / n }'; }
r_cm=$(ratio "$seq_cm" "$seq_h"); r_fresh=$(ratio "$seq_fresh" "$seq_h")

# ---- 2. fan-out to K nodes ------------------------------------------------------------------
# The first K key nodes of the lab (DUT1..DUTK), cut from the lab's fanout.yaml; pssh's host
# list and ansible's inventory are written from that same file.
prepare() { # K -> $W/K/{topo.yaml,hosts,inventory,ansible.cfg}
    local k=$1 d=$W/$1
    mkdir -p "$d"
    awk -v k="$k" '
        /^nodes:/ { print; body = 1; next }
        !body { print; next }
        /^  [^ ]/ { n = substr($1, 4, length($1) - 4) + 0; keep = (n >= 1 && n <= k) }
        keep' "$LAB_FANOUT" >"$d/topo.yaml"
    [ "$(grep -c 'type: DUT' "$d/topo.yaml")" = "$k" ] || { log "$LAB_FANOUT has fewer than $k key nodes"; exit 1; }
    awk '/^  [^ ]/ { name = substr($1, 1, length($1) - 1) } /port:/ { port = $2 } /username:/ { print name, port, $2 }' \
        "$d/topo.yaml" >"$d/nodes"
    awk '{ print "127.0.0.1:" $2, $3 }' "$d/nodes" >"$d/hosts"
    {
        echo "[lab]"
        awk -v key="$LAB_KEY" '{ print $1, "ansible_host=127.0.0.1", "ansible_port=" $2, "ansible_user=" $3, "ansible_ssh_private_key_file=" key }' "$d/nodes"
        echo "[lab:vars]"
        echo "ansible_ssh_common_args='-F $LAB_SSH_CONFIG'"
    } >"$d/inventory"
    # ansible's default ssh_args minus ControlPersist: every repetition connects afresh, as
    # harness and parallel-ssh do (a master left from the previous one would skip the handshake).
    cat >"$d/ansible.cfg" <<CFG
[defaults]
inventory = $d/inventory
host_key_checking = True
local_tmp = $d/ansible-tmp
[ssh_connection]
ssh_args = -C -o ControlMaster=no
CFG
}
run_harness() { "${HX[@]}" --max-parallel "$1" exec "$W/$1/topo.yaml" -- true >/dev/null 2>"$W/$1/harness.err"; }
run_pssh() { parallel-ssh -p "$1" -h "$W/$1/hosts" -x "-F $LAB_SSH_CONFIG -o LogLevel=ERROR" true >"$W/$1/pssh.out" 2>&1; }
run_ansible() { ANSIBLE_CONFIG=$W/$1/ansible.cfg ansible lab -f "$1" -m raw -a true >"$W/$1/ansible.out" 2>&1; }
check() { # tool K rc
    [ "$3" = 0 ] && return 0
    log "$1 failed on $2 nodes (exit $3):"; tail -20 "$W/$2/$1".* >&2; exit 1
}
# Times one run of `tool K` (ms) and the lab sshds' CPU during it (ms): prints "WALL SSHD_CPU".
timed() {
    local tool=$1 k=$2 c0 t0 t1 rc=0
    c0=$(sshd_cpu_settled)
    t0=$(now); "run_$tool" "$k" || rc=$?; t1=$(now)
    check "$tool" "$k" "$rc"
    echo "$(ms "$t0" "$t1") $(( $(sshd_cpu_settled) - c0 ))"
}

# Handshakes a server dropped and harness retried, from the summary line `exec` always prints.
retried() { sed -n 's/^harness: \([0-9]*\) SSH handshake(s) dropped.*/\1/p' "$1" | grep . || echo 0; }
declare -A R retries
for k in "${SIZES[@]}"; do
    prepare "$k"
    log "fan-out to $k nodes: warm-up"
    for tool in harness pssh ansible; do [ -n "$(timed "$tool" "$k")" ] || exit 1; done
    l0=$(load)
    declare -A wall=() cpu=()
    for rep in $(seq "$REPS"); do
        for tool in harness pssh ansible; do
            read -r w c <<<"$(timed "$tool" "$k")"
            [ -n "$c" ] || exit 1
            wall[$tool]+="$w "; cpu[$tool]+="$c "
            [ "$tool" = harness ] && retries[$k]=$(( ${retries[$k]:-0} + $(retried "$W/$k/harness.err") ))
            log "fan-out to $k nodes, rep $rep/$REPS: $tool ${w} ms (sshd CPU ${c} ms)"
        done
    done
    for tool in harness pssh ansible; do
        R[$k,$tool]=$(echo "${wall[$tool]}" | tr ' ' '\n' | grep . | median)
        R[$k,$tool,cpu]=$(echo "${cpu[$tool]}" | tr ' ' '\n' | grep . | median)
    done
    R[$k,load]="$l0 -> $(load)"
    R[$k,load1]="${l0%% *} → $(cut -d' ' -f1 /proc/loadavg)"
    R[$k,floor]=$(( ${R[$k,harness,cpu]} / cores ))
    R[$k,r_pssh]=$(ratio "${R[$k,pssh]}" "${R[$k,harness]}")
    R[$k,r_ans]=$(ratio "${R[$k,ansible]}" "${R[$k,harness]}")
    R[$k,r_floor]=$(ratio2 "${R[$k,harness]}" "${R[$k,floor]}")
    # The best ratio any client could reach against ansible on these servers: one that finished
    # the moment the sshds had done harness's connections' work.
    R[$k,ceil_ans]=$(ratio "${R[$k,ansible]}" "${R[$k,floor]}")
    for tool in harness pssh ansible; do
        R[$k,$tool,per]=$(awk -v c="${R[$k,$tool,cpu]}" -v k="$k" 'BEGIN { printf "%.1f", c / k }')
    done
done
load_end=$(load)

# ---- report ---------------------------------------------------------------------------------
# The text report always; with --markdown it goes to stderr and stdout gets the README rows.
text_report() {
    cat <<OUT

bench-ssh ($cores cores, load $load_start at start, $load_end at end)

$N sequential \`true\` on one node (wall time, harness includes its one connect):
  harness exec --repeat $N   ${seq_h} ms   ($(per "$seq_h") ms/command)
  ssh with ControlMaster     ${seq_cm} ms   ($(per "$seq_cm") ms/command)
  fresh ssh per command      ${seq_fresh} ms   ($(per "$seq_fresh") ms/command)
  harness vs ControlMaster   ${r_cm}x faster   (target >= 1.5x: $(verdict "$r_cm" 1.5 ge))
  harness vs fresh ssh       ${r_fresh}x faster   (target >= 10x: $(verdict "$r_fresh" 10 ge))
OUT
    for k in "${SIZES[@]}"; do
        cat <<OUT

Fan-out: one \`true\` on each of $k nodes, all in flight (median of $REPS; load ${R[$k,load]}):
  tool                              wall      sshd CPU  (per connection)
  harness exec --max-parallel $k   $(printf '%6s' "${R[$k,harness]}") ms  $(printf '%6s' "${R[$k,harness,cpu]}") ms  (${R[$k,harness,per]} ms)
  parallel-ssh -p $k               $(printf '%6s' "${R[$k,pssh]}") ms  $(printf '%6s' "${R[$k,pssh,cpu]}") ms  (${R[$k,pssh,per]} ms)
  ansible -f $k -m raw -a true     $(printf '%6s' "${R[$k,ansible]}") ms  $(printf '%6s' "${R[$k,ansible,cpu]}") ms  (${R[$k,ansible,per]} ms)
  handshakes retried by harness     ${retries[$k]:-0} in $REPS runs
  harness vs parallel-ssh           ${R[$k,r_pssh]}x faster   (target >= 5x: $(verdict "${R[$k,r_pssh]}" 5 ge))
  harness vs ansible                ${R[$k,r_ans]}x faster   (target >= 10x: $(verdict "${R[$k,r_ans]}" 10 ge))
    ceiling on these sshds          ${R[$k,ceil_ans]}x   (ansible's wall time / the sshd CPU floor below)
  sshd CPU floor ($SSHD_CPU_HOW) ${R[$k,harness,cpu]} ms / $cores cores = ${R[$k,floor]} ms;
  harness vs the floor              ${R[$k,r_floor]}x   (target <= 1.15x: $(verdict "${R[$k,r_floor]}" 1.15 le))
OUT
    done
}
if [ "$MD" = 1 ]; then
    text_report >&2
    echo "| $N sequential \`true\` on one node, one harness connection vs \`ssh\` with ControlMaster vs fresh \`ssh\` (1-min load ${load_start%% *} at start) | $(per "$seq_h") ms vs $(per "$seq_cm") ms vs $(per "$seq_fresh") ms per command: ${r_cm}× faster than ControlMaster (target ≥ 1.5×: $(verdict "$r_cm" 1.5 ge)), ${r_fresh}× faster than fresh \`ssh\` (target ≥ 10×: $(verdict "$r_fresh" 10 ge)) |"
    for k in "${SIZES[@]}"; do
        h=${R[$k,harness]}
        echo "| \`harness exec -- true\` on $k nodes vs \`parallel-ssh -p $k\` (median of $REPS, 1-min load ${R[$k,load1]}, its own clients included) | $(secs "$h") s vs $(secs "${R[$k,pssh]}") s: ${R[$k,r_pssh]}× faster (target ≥ 5×: $(verdict "${R[$k,r_pssh]}" 5 ge)); handshakes retried by harness: ${retries[$k]:-0} in $REPS runs |"
        echo "| the same vs \`ansible -f $k -m raw -a true\` | $(secs "$h") s vs $(secs "${R[$k,ansible]}") s: ${R[$k,r_ans]}× faster (target ≥ 10×: $(verdict "${R[$k,r_ans]}" 10 ge)); a client finishing at the sshd floor would be ${R[$k,ceil_ans]}× |"
        echo "| the same vs the sshd CPU floor ($k nodes) | the lab's sshds used $(secs "${R[$k,harness,cpu]}") s of CPU during the harness run (${R[$k,harness,per]} ms per connection; parallel-ssh's ${R[$k,pssh,per]}, ansible's ${R[$k,ansible,per]}), / $cores cores = $(secs "${R[$k,floor]}") s; harness $(secs "$h") s: ${R[$k,r_floor]}× the floor (target ≤ 1.15×: $(verdict "${R[$k,r_floor]}" 1.15 le)) |"
    done
else
    text_report
fi
