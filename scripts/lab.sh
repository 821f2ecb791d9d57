#!/usr/bin/env bash
# Loopback SSH lab: real OpenSSH sshd instances on 127.0.0.1 acting as DUT nodes.
#
#   scripts/lab.sh up [N] [--vms M]
#                           start N key-only nodes (default 2, max 128) on ports BASE+1..BASE+89,
#                           then BASE+100.. (node 90 on BASE+100: BASE+90..99 are the special nodes),
#                           a password-only node DUTPW on BASE+90, a node on BASE+91 whose sudo
#                           wants a password, a keyboard-interactive-only (PAM) node DUTKBD on
#                           BASE+92 and a jump host BASTION on BASE+95 (user hlabjump, TCP
#                           forwarding only); write lab.yaml, lab-chain.yaml (for `vswitch`),
#                           $LAB/fanout.yaml, $LAB/lab.env.
#                           With --vms M (1..64) also build the tiny guest (build-guest.sh --tiny)
#                           and write lab-scale.yaml (N nodes x M tiny TCG VMs) and
#                           lab-scale-jump.yaml (the same, every DUT reached through BASTION)
#   scripts/lab.sh bastion-strict
#                           start a second jump host BASTIONSTRICT on BASE+96 with MaxStartups 2
#                           (for handshake-retry tests; `up` also starts it when
#                           HARNESS_LAB_BASTION_STRICT=1); with a lab-scale.yaml present, write
#                           lab-scale-jump-strict.yaml
#   scripts/lab.sh down     stop the sshd processes started by `up` (by the pids in its pidfiles)
#   scripts/lab.sh status   show which nodes are listening
#   scripts/lab.sh vswitch up [SOCKET_DIR] [CHAINS]
#                           a host vswitch for NF chains: dpdk-testpmd (io forwarding) with one
#                           net_vhost client port per VM NIC socket SOCKET_DIR/sock-{q}-{1,2}
#                           (default $LAB/vhost) and a kernel tap per chain end; CHAINS is CxN
#                           (C chains of N VMs, qemu ids as CSIT: q = (c-1)*N + n; default 1x1)
#   scripts/lab.sh vswitch down|status
#   scripts/lab.sh vswitch stats [--json]   packet counters of every vswitch port and tap
#   scripts/lab.sh vswitch send C [COUNT]   inject COUNT frames (default 10) into chain C's ingress
#                           (see "vswitch" below for the wiring)
#
# Environment:
#   HARNESS_LAB_DIR        lab dir (default /var/tmp/harness-lab)
#   HARNESS_LAB_PORT_BASE  BASE above (default 2200); node i listens on BASE+i
#   HARNESS_LAB_BASTION_MAXSTARTUPS  BASTION's sshd MaxStartups (default 10:30:100, sshd's own)
#   HARNESS_LAB_BASTION_MAXSESSIONS  BASTION's sshd MaxSessions (default 10, sshd's own)
#   HARNESS_LAB_BASTION_STRICT=1     `up` also starts BASTIONSTRICT
# Generated topologies (lab.yaml, lab-scale*.yaml) go to the repo's topologies/ for the default
# lab dir, else to $LAB/topologies/ (so a private lab never overwrites another one's files).
# The hlab* users are shared by all labs on the machine; each lab's sshds accept only that lab's
# client key ($LAB/ssh/id_ed25519), from an AuthorizedKeysFile of the lab's own under
# /etc/ssh/harness-lab-keys/, whatever the users' homes are.
#
# Idempotent: `up` twice gives the same state and restarts dead nodes. Needs root (users,
# sudoers.d, sshd privilege separation).
set -euo pipefail

DEFAULT_LAB=/var/tmp/harness-lab
LAB=${HARNESS_LAB_DIR:-$DEFAULT_LAB}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_PORT=${HARNESS_LAB_PORT_BASE:-2200}
[[ "$BASE_PORT" =~ ^[0-9]+$ ]] && [ "$BASE_PORT" -ge 1 ] && [ "$BASE_PORT" -le 65400 ] \
    || { echo "lab.sh: HARNESS_LAB_PORT_BASE must be 1..65400" >&2; exit 2; }
PW_PORT=$((BASE_PORT + 90))
SUDOPW_PORT=$((BASE_PORT + 91))
KBD_PORT=$((BASE_PORT + 92))
BASTION_PORT=$((BASE_PORT + 95))
BASTION_STRICT_PORT=$((BASE_PORT + 96))
BASTION_USER=hlabjump
BASTION_MAXSTARTUPS=${HARNESS_LAB_BASTION_MAXSTARTUPS:-10:30:100}
BASTION_MAXSESSIONS=${HARNESS_LAB_BASTION_MAXSESSIONS:-10}
KBD_USER=hlabkbd
PW_USER=hlabpw
PW_PASS=hlab-pass
SUDOPW_USER=hlabsudo
MAX_NODES=128
MAX_VMS=64
if [ "$(cd "$(dirname "$LAB")" 2>/dev/null && pwd)/$(basename "$LAB")" = "$DEFAULT_LAB" ]; then
    IS_DEFAULT_LAB=1 TOPO_DIR=$REPO/topologies
else
    IS_DEFAULT_LAB=0 TOPO_DIR=$LAB/topologies
fi
# The lab's authorized key, for every node's sshd. A plain AuthorizedKeysFile, as on a real host:
# an AuthorizedKeysCommand costs sshd a fork+exec per key check (two per connection, ~9 ms of
# sshd CPU per connection here), which inflated every tool's share of the fan-out benchmarks.
# It lives under /etc/ssh because StrictModes refuses a key file below a world-writable
# directory such as /var/tmp; one file per lab dir keeps side-by-side labs apart.
AUTH_KEYS_DIR=/etc/ssh/harness-lab-keys
AUTH_KEYS=$AUTH_KEYS_DIR/$(printf '%s' "$LAB" | tr -c 'A-Za-z0-9._-' '_').pub

# Node i's port: BASE+i below 90, then BASE+i+10, past the special nodes on BASE+90..BASE+99.
node_port() { if [ "$1" -lt 90 ]; then echo $((BASE_PORT + $1)); else echo $((BASE_PORT + $1 + 10)); fi; }

die() { echo "lab.sh: $*" >&2; exit 1; }
log() { echo "lab.sh: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (creates users, sudoers.d entries and sshd instances)"

install_packages() {
    local missing=() p
    for p in openssh-server openssh-client sudo procps passwd; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
    fi
}

# True when process $1's command line (arguments joined by spaces) contains $2. No pipe into
# `grep -q`: under pipefail its early exit on a match can fail the pipeline (SIGPIPE).
cmdline_has() { # pid text
    local cmd
    [ -r "/proc/$1/cmdline" ] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline") || return 1
    [[ "$cmd" == *"$2"* ]]
}

# True when the pid in $1 (a pidfile) is alive and is the sshd using config $2.
pid_alive() {
    [ -s "$1" ] || return 1
    cmdline_has "$(cat "$1")" "$2"
}

# True when something speaking SSH answers on 127.0.0.1:$1.
listening() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c 4 <&3" 2>/dev/null | grep -q '^SSH-'
}

ensure_user() { # user password|-
    local user=$1 pass=$2 home=$LAB/home/$1
    if ! id "$user" >/dev/null 2>&1; then
        useradd -M -d "$home" -s /bin/bash "$user"
    elif [ "$IS_DEFAULT_LAB" = 1 ]; then
        # The users are shared by every lab on the machine: only the default lab moves their home.
        # (Each lab's sshd takes the key from its own $AUTH_KEYS, not from the home.)
        usermod -d "$home" "$user" >/dev/null 2>&1 || true
    fi
    if [ "$pass" = - ]; then
        usermod -p '*' "$user" >/dev/null 2>&1        # no password, but not locked (sshd with UsePAM no refuses locked accounts)
    else
        echo "$user:$pass" | chpasswd
    fi
    install -d -m 0755 -o "$user" -g "$user" "$home"
    install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
    install -m 0600 -o "$user" -g "$user" "$LAB/ssh/id_ed25519.pub" "$home/.ssh/authorized_keys"
}

install_auth_keys() {
    install -d -m 0755 "$AUTH_KEYS_DIR"
    install -m 0644 "$LAB/ssh/id_ed25519.pub" "$AUTH_KEYS"
}

ensure_sudoers() { # user nopasswd|password
    local f=/etc/sudoers.d/harness-lab-$1
    if [ "$2" = nopasswd ]; then
        echo "$1 ALL=(ALL) NOPASSWD: ALL" >"$f.tmp"
    else
        echo "$1 ALL=(ALL) ALL" >"$f.tmp"
    fi
    chmod 0440 "$f.tmp"
    visudo -cqf "$f.tmp" || die "bad sudoers entry for $1"
    mv -f "$f.tmp" "$f"
}

# Options after the fifth argument: kbdint (PAM keyboard-interactive only), maxstartups=S,
# maxsessions=N, jumponly (a bastion: no tty, no shell use, TCP forwarding to 127.0.0.1 only).
start_node() { # name port user pubkey(yes|no) password(yes|no) [option...]
    local name=$1 port=$2 user=$3 pubkey=$4 pw=$5 kbd=no pam=no d=$LAB/nodes/$1
    local maxstartups=100:30:200 maxsessions=20 extra='' opt
    shift 5
    for opt in "$@"; do
        case "$opt" in
            kbdint) kbd=yes; pam=yes ;;
            maxstartups=*) maxstartups=${opt#*=} ;;
            maxsessions=*) maxsessions=${opt#*=} ;;
            jumponly) extra=$'PermitOpen 127.0.0.1:*\nPermitTTY no\nX11Forwarding no\nAllowAgentForwarding no' ;;
            *) die "start_node: unknown option $opt" ;;
        esac
    done
    mkdir -p "$d"
    [ -f "$d/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "harness-lab-$name" -f "$d/ssh_host_ed25519_key"
    cat >"$d/sshd_config.new" <<CFG
ListenAddress 127.0.0.1:$port
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AllowUsers $user
PermitRootLogin no
PubkeyAuthentication $pubkey
AuthorizedKeysFile $AUTH_KEYS
PasswordAuthentication $pw
KbdInteractiveAuthentication $kbd
UsePAM $pam
StrictModes yes
MaxStartups $maxstartups
MaxSessions $maxsessions
UseDNS no
PrintMotd no
PrintLastLog no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
CFG
    [ -z "$extra" ] || printf '%s\n' "$extra" >>"$d/sshd_config.new"
    if ! cmp -s "$d/sshd_config.new" "$d/sshd_config" 2>/dev/null; then
        mv -f "$d/sshd_config.new" "$d/sshd_config"
        if pid_alive "$d/sshd.pid" "$d/sshd_config"; then
            kill -HUP "$(cat "$d/sshd.pid")"   # reload changed config
            sleep 0.2
        fi
    else
        rm -f "$d/sshd_config.new"
    fi
    if ! pid_alive "$d/sshd.pid" "$d/sshd_config"; then
        rm -f "$d/sshd.pid"
        /usr/sbin/sshd -t -f "$d/sshd_config" || die "$name: invalid sshd config"
        /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
    fi
    # sshd exits 0 even when the bind fails (it logs "Cannot bind any address"): connect to be sure.
    local i
    for i in $(seq 1 50); do
        listening "$port" && break
        sleep 0.1
    done
    listening "$port" || die "$name: sshd does not answer on 127.0.0.1:$port (see $d/sshd.log)"
    printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$LAB/ssh/known_hosts.new"
}

node_yaml() { # name port user [password|-] [proxy_jump]
    cat <<YAML
  $1:
    type: DUT
    host: 127.0.0.1
    port: $2
    username: $3
YAML
    [ -z "${5:-}" ] || echo "    proxy_jump: $5"
    if [ -n "${4:-}" ] && [ "$4" != - ]; then
        echo "    password: $4"
    else
        echo "    identity_file: $LAB/ssh/id_ed25519"
    fi
    cat <<YAML
    known_hosts: $LAB/ssh/known_hosts
    hugepages: {size: 2M, allocate: true}
    qemu: {accel: tcg}
YAML
}

# One NF chain (CSIT's chains: 1 chain x 2 VMs) of lab guests on DUT1 for the vswitch lab:
# `vswitch up $LAB/vhost 1x2` connects to their sockets. The guests bridge their two NICs
# (lab-vnf.sh --bridge), vhost-user NICs need vectors=0 under TCG (lab-notes §7), and both VMs
# share CPU 0 (`vm: {cpus: [0]}`: placed by hand; CSIT's placement needs at least 5 CPUs, and
# testpmd busy-polls CPU 1), without SCHED_RR so they never starve each other.
chain_yaml() {
    echo "# Generated by scripts/lab.sh up: one NF chain of 2 lab guests on DUT1 (scripts/lab.sh vswitch up). Do not edit."
    echo "metadata:"
    echo "  version: 0.1"
    echo "  schema: []"
    echo "nodes:"
    node_yaml DUT1 $((BASE_PORT + 1)) hlab1
    cat <<YAML
chains:
  - node: DUT1
    nf_chains: 1
    nf_nodes: 2
    vnf: none
    vs_dtc: 0
    nf_dtc: 1
    tg_macs: ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    socket_dir: $LAB/vhost
    vm: {mem: 256, guest_hugepages: 16, cpus: [0], sched: none, qga: true, kernel: $LAB/guest/vmlinux, initrd: $LAB/guest/initrd.img, init_command: "$LAB/guest/lab-vnf.sh --bridge", ready_markers: [HARNESS-LAB-READY], boot_timeout: 180s, start_timeout: 30s, interfaces: [{vhost_user: {vectors: 0}}, {vhost_user: {vectors: 0}}]}
YAML
}

# The scale topology: DUT1..DUT$1, $2 tiny TCG VMs each (32 MiB on 2M pages, no guest hugepages,
# no SCHED_RR), every DUT reached through $3 when given. VM j's vCPU is pinned to CPU j-1 when
# there are at least as many CPUs as VMs per node (harness refuses two VMs pinned to one CPU of a
# node), else not pinned.
scale_yaml() { # nodes vms [proxy_jump]
    local n=$1 m=$2 jump=${3:-} i j g=$LAB/guest/tiny pin
    echo "# Generated by scripts/lab.sh up $n --vms $m: $n loopback nodes x $m tiny guests${jump:+, through the jump host $jump}. Do not edit."
    echo "metadata:"
    echo "  version: 0.1"
    echo "  schema: []"
    echo "nodes:"
    for i in $(seq 1 "$n"); do node_yaml "DUT$i" $(node_port $i) "hlab$i" - "$jump"; done
    echo "vms:"
    for i in $(seq 1 "$n"); do
        for j in $(seq 1 "$m"); do
            pin=''
            [ "$m" -gt "$(nproc)" ] || pin=" cpus: [$((j - 1))],"
            echo "  - {node: DUT$i, qemu_id: $j, smp: 1, mem: 32, guest_hugepages: 0,$pin sched: none, vnf: none, qga: false, kernel: $g/vmlinux-tiny, initrd: $g/initrd-tiny, ready_markers: [HARNESS-TINY-READY], boot_timeout: 120s}"
        done
    done
}

write_file() { # path (content on stdin; replaced atomically)
    cat >"$1.tmp"
    mv -f "$1.tmp" "$1"
}

start_bastion() { # name port maxstartups maxsessions
    ensure_user $BASTION_USER -      # no sudo: it only forwards
    start_node "$1" "$2" $BASTION_USER yes no "maxstartups=$3" "maxsessions=$4" jumponly
}

# Writes lab-scale-jump-strict.yaml for the last `up N --vms M` when BASTIONSTRICT runs.
write_strict_yaml() {
    local d=$LAB/nodes/BASTIONSTRICT sn sm
    pid_alive "$d/sshd.pid" "$d/sshd_config" || return 0
    sn=$(sed -n 's/^LAB_SCALE_NODES=//p' "$LAB/lab.env" 2>/dev/null)
    sm=$(sed -n 's/^LAB_SCALE_VMS=//p' "$LAB/lab.env" 2>/dev/null)
    [ -n "$sn" ] && [ -n "$sm" ] || return 0
    scale_yaml "$sn" "$sm" "$BASTION_USER@127.0.0.1:$BASTION_STRICT_PORT" | write_file "$TOPO_DIR/lab-scale-jump-strict.yaml"
    log "wrote $TOPO_DIR/lab-scale-jump-strict.yaml"
}

cmd_bastion_strict() {
    [ -f "$LAB/ssh/id_ed25519" ] && [ -f "$LAB/ssh/known_hosts" ] || die "no lab in $LAB: run \`$0 up\` first"
    mkdir -p /run/sshd && chmod 0755 /run/sshd
    install_auth_keys
    : >"$LAB/ssh/known_hosts.new"
    start_bastion BASTIONSTRICT $BASTION_STRICT_PORT 2 "$BASTION_MAXSESSIONS"
    { grep -vF "[127.0.0.1]:$BASTION_STRICT_PORT " "$LAB/ssh/known_hosts" || true; cat "$LAB/ssh/known_hosts.new"; } \
        | write_file "$LAB/ssh/known_hosts"
    rm -f "$LAB/ssh/known_hosts.new"
    write_strict_yaml
    log "bastion-strict: BASTIONSTRICT $BASTION_USER@127.0.0.1:$BASTION_STRICT_PORT (MaxStartups 2)"
}

cmd_up() {
    local n=2 vms=''
    while [ $# -gt 0 ]; do
        case "$1" in
            --vms) [ $# -ge 2 ] || die "--vms needs a number"; vms=$2; shift ;;
            --vms=*) vms=${1#--vms=} ;;
            *) n=$1 ;;
        esac
        shift
    done
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $MAX_NODES ] || die "N must be 1..$MAX_NODES"
    [ -z "$vms" ] || { [[ "$vms" =~ ^[0-9]+$ ]] && [ "$vms" -ge 1 ] && [ "$vms" -le $MAX_VMS ]; } \
        || die "--vms M: M must be 1..$MAX_VMS"
    install_packages
    mkdir -p "$LAB/ssh" "$LAB/nodes" "$LAB/home"
    chmod 0755 "$LAB" "$LAB/home"
    mkdir -p /run/sshd && chmod 0755 /run/sshd       # privilege separation dir; no systemd creates it here
    [ -f "$LAB/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C harness-lab-client -f "$LAB/ssh/id_ed25519"
    install_auth_keys
    : >"$LAB/ssh/known_hosts.new"
    local i d users=() ports=()
    for i in $(seq 1 "$n"); do
        ensure_user "hlab$i" -
        ensure_sudoers "hlab$i" nopasswd
        start_node "DUT$i" $(node_port $i) "hlab$i" yes no
        users+=("hlab$i"); ports+=($(node_port $i))
    done
    ensure_user $PW_USER $PW_PASS
    ensure_sudoers $PW_USER nopasswd
    start_node DUTPW $PW_PORT $PW_USER no yes
    ensure_user $SUDOPW_USER -
    ensure_sudoers $SUDOPW_USER password
    start_node DUTSUDOPW $SUDOPW_PORT $SUDOPW_USER yes no
    # A server that offers only keyboard-interactive (through PAM), as many password-only DUTs do.
    ensure_user $KBD_USER $PW_PASS
    ensure_sudoers $KBD_USER nopasswd
    start_node DUTKBD $KBD_PORT $KBD_USER no no kbdint
    # Jump hosts (key auth as $BASTION_USER, forwarding to 127.0.0.1 only).
    start_bastion BASTION $BASTION_PORT "$BASTION_MAXSTARTUPS" "$BASTION_MAXSESSIONS"
    if [ "${HARNESS_LAB_BASTION_STRICT:-0}" = 1 ]; then
        start_bastion BASTIONSTRICT $BASTION_STRICT_PORT 2 "$BASTION_MAXSESSIONS"
    else
        d=$LAB/nodes/BASTIONSTRICT       # started earlier by `bastion-strict`: keep its host key known
        if pid_alive "$d/sshd.pid" "$d/sshd_config"; then
            printf '[127.0.0.1]:%s %s\n' $BASTION_STRICT_PORT "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$LAB/ssh/known_hosts.new"
        fi
    fi
    # Nodes from a larger earlier `up` that still run stay part of the lab (known_hosts, fanout.yaml,
    # lab.env): a concurrent `up 2` must not shrink the view of a 32-node benchmark.
    local keys
    keys=$(seq 1 "$n")
    for i in $(seq $((n + 1)) $MAX_NODES); do
        d=$LAB/nodes/DUT$i
        pid_alive "$d/sshd.pid" "$d/sshd_config" || continue
        printf '[127.0.0.1]:%s %s\n' $(node_port $i) "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$LAB/ssh/known_hosts.new"
        keys="$keys $i"
        users+=("hlab$i"); ports+=($(node_port $i))
    done
    mv -f "$LAB/ssh/known_hosts.new" "$LAB/ssh/known_hosts"
    # For plain ssh by hand: `ssh -F $LAB/ssh/config [-J hlabjump@127.0.0.1:PORT] -p PORT hlab1@127.0.0.1`
    # (-J hands -F to the jump hop; -o options would not reach it).
    write_file "$LAB/ssh/config" <<CFG
# Generated by scripts/lab.sh up.
Host 127.0.0.1
    IdentityFile $LAB/ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $LAB/ssh/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
CFG

    mkdir -p "$TOPO_DIR"
    {
        echo "# Generated by scripts/lab.sh up: loopback sshd nodes. Do not edit."
        echo "metadata:"
        echo "  version: 0.1"
        echo "  schema: []"
        echo "nodes:"
        node_yaml DUT1 $((BASE_PORT + 1)) hlab1
        [ "$n" -ge 2 ] && node_yaml DUT2 $((BASE_PORT + 2)) hlab2
        node_yaml DUTPW $PW_PORT $PW_USER $PW_PASS
        if [ "$n" -ge 2 ]; then
            cat <<YAML
vms:
  - {node: DUT1, qemu_id: 1, smp: 1, mem: 256, guest_hugepages: 16, cpus: [0], sched: rr, vnf: none, qga: true, kernel: $LAB/guest/vmlinux, initrd: $LAB/guest/initrd.img, init_command: $LAB/guest/lab-vnf.sh, ready_markers: [HARNESS-LAB-READY], boot_timeout: 120s}
  - {node: DUT1, qemu_id: 2, smp: 1, mem: 256, guest_hugepages: 16, cpus: [1], sched: rr, vnf: none, qga: true, kernel: $LAB/guest/vmlinux, initrd: $LAB/guest/initrd.img, init_command: $LAB/guest/lab-vnf.sh, ready_markers: [HARNESS-LAB-READY], boot_timeout: 120s}
  - {node: DUT2, qemu_id: 1, smp: 1, mem: 256, guest_hugepages: 16, cpus: [0], sched: rr, vnf: none, qga: true, kernel: $LAB/guest/vmlinux, initrd: $LAB/guest/initrd.img, init_command: $LAB/guest/lab-vnf.sh, ready_markers: [HARNESS-LAB-READY], boot_timeout: 120s}
  - {node: DUT2, qemu_id: 2, smp: 1, mem: 256, guest_hugepages: 16, cpus: [1], sched: rr, vnf: none, qga: true, kernel: $LAB/guest/vmlinux, initrd: $LAB/guest/initrd.img, init_command: $LAB/guest/lab-vnf.sh, ready_markers: [HARNESS-LAB-READY], boot_timeout: 120s}
YAML
        fi
    } | write_file "$TOPO_DIR/lab.yaml"
    chain_yaml | write_file "$TOPO_DIR/lab-chain.yaml"

    if [ -n "$vms" ]; then
        "$REPO/scripts/build-guest.sh" --tiny "$LAB/guest"
        scale_yaml "$n" "$vms" | write_file "$TOPO_DIR/lab-scale.yaml"
        scale_yaml "$n" "$vms" "$BASTION_USER@127.0.0.1:$BASTION_PORT" | write_file "$TOPO_DIR/lab-scale-jump.yaml"
    fi

    {
        echo "# Generated by scripts/lab.sh up: ${#ports[@]} key-only loopback nodes for the fan-out benchmark."
        echo "metadata:"
        echo "  version: 0.1"
        echo "  schema: []"
        echo "nodes:"
        for i in $keys; do node_yaml "DUT$i" $(node_port $i) "hlab$i"; done
    } >"$LAB/fanout.yaml"

    cat >"$LAB/lab.env" <<ENV
# Generated by scripts/lab.sh up; source it in tests and scripts.
LAB=$LAB
LAB_NODES=${#ports[@]}
LAB_HOST=127.0.0.1
LAB_PORTS="${ports[*]}"
LAB_USERS="${users[*]}"
LAB_KEY=$LAB/ssh/id_ed25519
LAB_KNOWN_HOSTS=$LAB/ssh/known_hosts
LAB_SSH_CONFIG=$LAB/ssh/config
LAB_PW_PORT=$PW_PORT
LAB_PW_USER=$PW_USER
LAB_PW_PASS=$PW_PASS
LAB_SUDOPW_PORT=$SUDOPW_PORT
LAB_SUDOPW_USER=$SUDOPW_USER
LAB_KBD_PORT=$KBD_PORT
LAB_KBD_USER=$KBD_USER
LAB_TOPOLOGY=$TOPO_DIR/lab.yaml
LAB_CHAIN_TOPOLOGY=$TOPO_DIR/lab-chain.yaml
LAB_FANOUT=$LAB/fanout.yaml
LAB_BASTION_PORT=$BASTION_PORT
LAB_BASTION_STRICT_PORT=$BASTION_STRICT_PORT
LAB_BASTION_USER=$BASTION_USER
ENV
    if [ -n "$vms" ]; then
        cat >>"$LAB/lab.env" <<ENV
LAB_SCALE_NODES=$n
LAB_SCALE_VMS=$vms
LAB_SCALE_TOPOLOGY=$TOPO_DIR/lab-scale.yaml
LAB_SCALE_JUMP_TOPOLOGY=$TOPO_DIR/lab-scale-jump.yaml
ENV
        write_strict_yaml
    fi
    log "up: ${#ports[@]} key nodes (ports ${ports[0]}..${ports[-1]}), DUTPW :$PW_PORT, sudo-password node :$SUDOPW_PORT, BASTION :$BASTION_PORT; lab dir $LAB, topologies in $TOPO_DIR${vms:+ (lab-scale*.yaml: $n x $vms tiny VMs)}"
}

cmd_down() {
    local d pid stopped=0
    rm -f "$LAB/lab.env"
    for d in "$LAB"/nodes/*/; do
        d=${d%/}
        [ -f "$d/sshd.pid" ] || continue
        if pid_alive "$d/sshd.pid" "$d/sshd_config"; then
            pid=$(cat "$d/sshd.pid")
            kill -TERM "$pid"
            stopped=$((stopped + 1))
        fi
        rm -f "$d/sshd.pid"
    done
    rm -f "$AUTH_KEYS"
    rmdir "$AUTH_KEYS_DIR" 2>/dev/null || true
    log "down: stopped $stopped sshd"
}

cmd_status() {
    local d name port rc=0
    for d in "$LAB"/nodes/*/; do
        d=${d%/}
        [ -f "$d/sshd_config" ] || continue
        name=${d##*/}
        port=$(awk '/^ListenAddress/{sub(/.*:/, "", $2); print $2}' "$d/sshd_config")
        if pid_alive "$d/sshd.pid" "$d/sshd_config" && listening "$port"; then
            echo "$name 127.0.0.1:$port up (pid $(cat "$d/sshd.pid"))"
        else
            echo "$name 127.0.0.1:$port down"
            rc=1
        fi
    done
    return $rc
}

# ---- vswitch: dpdk-testpmd between NF-chain VMs (lab-notes §7) ------------------------------
#
# Wiring of chain c with VMs q1..qN (QEMU is the vhost-user server on sock-{q}-{1,2}; testpmd
# connects as client and reconnects until the socket exists, so start order does not matter).
# testpmd's io forwarding pairs ports 0<->1, 2<->3, ... (port topology "paired", both ways), so
# the ports are created in this order, two per hop:
#     vsw{c}in  <-> sock-{q1}-1           ingress: the chain's TG side -> VM q1's first NIC
#     sock-{qk}-2 <-> sock-{qk+1}-1       VM qk's last NIC -> VM qk+1's first NIC
#     sock-{qN}-2 <-> vsw{c}out           egress: VM qN's last NIC -> the chain's TG side
# vsw{c}in / vsw{c}out are kernel tap interfaces on the host (net_tap attached to taps this script
# creates first, with IPv6 off, so the host puts nothing on them by itself). They are the traffic
# generator: `vswitch send c N` writes N frames to vsw{c}in (through an AF_PACKET socket), and
# what leaves the chain is received on vsw{c}out (its rx_packets); frames a VM sends out of its
# first NIC toward the TG land on vsw{c}in (rx_packets there). With the lab guest bridging its
# NICs (lab-vnf.sh --bridge) a frame from vsw{c}in crosses every VM and arrives on vsw{c}out.
#
# Counters: DPDK telemetry (testpmd's /var/run/dpdk/<prefix>/dpdk_telemetry.v2, /ethdev/stats)
# per port, on demand, plus the taps' kernel counters: `vswitch stats` prints one line per port
#     <port> <name> rx=<ipackets> tx=<opackets> [rx_missed=..] [rx_errors=..] [tx_errors=..] peer=<port>
# (`--json`: a list of objects). In io mode what a port receives is sent on its peer; frames the
# peer cannot take (a vhost port whose VM is not up) are dropped by testpmd and only show as rx
# on one side without tx on the other.
#
# Files in $LAB/vswitch: testpmd.pid (the only process `down` stops), testpmd.log, ports (one line
# per port: id name peer), taps, prefix; testpmd's stdin is a FIFO there, and a newline written
# to it makes testpmd stop its ports and exit cleanly. Memory: --no-huge (no hugepages needed or
# taken); the VMs' RAM must be shared (hugetlbfs, or memory-backend-memfd,share=on).
# Env: VSWITCH_LCORES (default 0-1: main lcore + one forwarding lcore), VSWITCH_QUEUES (1),
# VSWITCH_MEM_MB (256), VSWITCH_TAP_PREFIX (vsw).

VS=$LAB/vswitch

vswitch_alive() {
    [ -s "$VS/testpmd.pid" ] || return 1
    cmdline_has "$(cat "$VS/testpmd.pid")" "--file-prefix $(cat "$VS/prefix" 2>/dev/null || echo none) "
}

# Process PID exists and has not exited (a zombie has). For a child of this shell the pid
# cannot have been reused: this shell has not reaped it.
running() { # pid
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

vswitch_install() {
    command -v dpdk-testpmd >/dev/null && return 0
    "$REPO/scripts/install-deps.sh" vswitch >&2
    command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd missing after installing dpdk-dev"
}

cmd_vswitch_up() {
    local sockdir=${1:-$LAB/vhost} chains=${2:-1x1}
    local lcores=${VSWITCH_LCORES:-0-1} queues=${VSWITCH_QUEUES:-1} mem=${VSWITCH_MEM_MB:-256}
    local tp=${VSWITCH_TAP_PREFIX:-vsw}
    [[ "$chains" =~ ^([0-9]+)x([0-9]+)$ ]] || die "CHAINS must be CxN, e.g. 1x2 (got $chains)"
    local C=${BASH_REMATCH[1]} N=${BASH_REMATCH[2]}
    [ "$C" -ge 1 ] && [ "$N" -ge 1 ] && [ $((C * N)) -le 255 ] || die "CHAINS: 1 <= C*N <= 255"
    [[ "$sockdir" = /* ]] || die "SOCKET_DIR must be absolute"
    if vswitch_alive; then
        die "vswitch already running (pid $(cat "$VS/testpmd.pid")); 'vswitch down' first"
    fi
    # Any failure from here on says where, and stops what this call started (by the pid of the
    # child it forked, once there is one: see the wait loop below).
    local pid=''
    trap 'rc=$?; echo "lab.sh: vswitch up failed (line $LINENO, exit $rc)" >&2; cmd_vswitch_down "$pid" >&2 || true; exit $rc' ERR
    vswitch_install
    mkdir -p "$VS" "$sockdir"
    local prefix="hlab-vsw-$(echo "$VS" | md5sum | cut -c1-8)"
    echo "$prefix" >"$VS/prefix"
    # Port list in pairing order: name|vdev args.
    local -a names=() vdevs=() taps=()
    local c n q v=0 t=0 tin tout
    for c in $(seq 1 "$C"); do
        tin="$tp${c}in" tout="$tp${c}out"
        taps+=("$tin" "$tout")
        names+=("$tin"); vdevs+=("net_tap$t,iface=$tin"); t=$((t + 1))
        for n in $(seq 1 "$N"); do
            q=$(((c - 1) * N + n))
            names+=("sock-$q-1"); vdevs+=("net_vhost$v,iface=$sockdir/sock-$q-1,client=1,queues=$queues"); v=$((v + 1))
            names+=("sock-$q-2"); vdevs+=("net_vhost$v,iface=$sockdir/sock-$q-2,client=1,queues=$queues"); v=$((v + 1))
        done
        names+=("$tout"); vdevs+=("net_tap$t,iface=$tout"); t=$((t + 1))
    done
    # Taps first, quiet (no IPv6 autoconf, no ARP), so the host sends nothing into the chains.
    local tap
    for tap in "${taps[@]}"; do
        ip link del "$tap" 2>/dev/null || true
        ip tuntap add dev "$tap" mode tap multi_queue
        echo 1 >"/proc/sys/net/ipv6/conf/$tap/disable_ipv6"
        ip link set "$tap" arp off
    done
    printf '%s\n' "${taps[@]}" >"$VS/taps"
    : >"$VS/ports"
    local i
    for i in "${!names[@]}"; do
        echo "$i ${names[$i]} $((i ^ 1))" >>"$VS/ports"
    done
    # --no-huge (ordinary memory; implies legacy mem, which --in-memory refuses): nothing is left
    # in /dev/hugepages; the runtime dir /var/run/dpdk/<prefix> (telemetry socket) goes on `down`.
    local -a args=(-l "$lcores" -n 1 --no-pci --no-huge -m "$mem" --file-prefix "$prefix")
    for i in "${!vdevs[@]}"; do args+=(--vdev "${vdevs[$i]}"); done
    args+=(-- --forward-mode=io --port-topology=paired --auto-start --nb-cores=1 --disable-link-check
           --rxq="$queues" --txq="$queues" --total-num-mbufs=8192)
    rm -f "$VS/stdin"
    mkfifo "$VS/stdin"
    echo "dpdk-testpmd ${args[*]}" >"$VS/testpmd.log"
    # stdin is the FIFO opened read-write: testpmd's "Press enter to exit" read blocks until
    # `down` writes a newline. fd 9 (lab.sh's lock) must not be inherited. stdbuf: line-buffered
    # stdout (to a file it would be block-buffered and the log would lag behind).
    setsid stdbuf -oL -eL dpdk-testpmd "${args[@]}" <>"$VS/stdin" >>"$VS/testpmd.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$VS/testpmd.pid"
    # Liveness here is "our child has not exited", not vswitch_alive: until the forked child has
    # exec'd setsid its cmdline is this script's, so vswitch_alive would call a starting testpmd
    # dead, and the failure path would leave it running (regression test in tests/chain.rs).
    for i in $(seq 1 100); do
        grep -q "Press enter to exit" "$VS/testpmd.log" && break
        running "$pid" || { { grep -E 'EAL:|Fail|fail|rror' "$VS/testpmd.log" || true; } | tail -8 >&2; cmd_vswitch_down "$pid"; die "testpmd exited (log: $VS/testpmd.log)"; }
        sleep 0.1
    done
    grep -q "Press enter to exit" "$VS/testpmd.log" || { cmd_vswitch_down "$pid"; die "testpmd did not start forwarding in 10 s ($VS/testpmd.log)"; }
    for tap in "${taps[@]}"; do ip link set "$tap" up; done
    trap - ERR
    log "vswitch up: testpmd pid $(cat "$VS/testpmd.pid"), $C chain(s) x $N VM(s), ${#names[@]} ports, sockets in $sockdir, taps ${taps[*]}"
}

# `vswitch down [PID]`: PID is given only by a failing `vswitch up`, for the child it forked
# (which may not have exec'd testpmd yet); otherwise the recorded pid, if it is our testpmd.
cmd_vswitch_down() {
    local pid=${1:-} i tap
    if [ -n "$pid" ] && running "$pid" || vswitch_alive; then
        [ -n "$pid" ] || pid=$(cat "$VS/testpmd.pid")
        # Clean exit first (closes the vhost connections), then SIGTERM, then SIGKILL.
        timeout 2 sh -c "echo > '$VS/stdin'" 2>/dev/null || true
        for i in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
        running "$pid" && kill -TERM "$pid"
        for i in $(seq 1 30); do running "$pid" || break; sleep 0.1; done
        running "$pid" && kill -KILL "$pid"
        log "vswitch down: stopped testpmd pid $pid"
    else
        log "vswitch down: not running"
    fi
    rm -f "$VS/testpmd.pid" "$VS/stdin"
    [ -s "$VS/prefix" ] && rm -rf "/var/run/dpdk/$(cat "$VS/prefix")"
    if [ -f "$VS/taps" ]; then
        while read -r tap; do ip link del "$tap" 2>/dev/null || true; done <"$VS/taps"
        rm -f "$VS/taps"
    fi
}

# Telemetry query + tap counters; prints text or JSON.
vswitch_stats() {
    local json=${1:-}
    vswitch_alive || die "vswitch not running"
    python3 - "/var/run/dpdk/$(cat "$VS/prefix")/dpdk_telemetry.v2" "$VS/ports" "$VS/taps" "$json" <<'PY'
import json, socket, sys
sock_path, ports_file, taps_file, as_json = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sock_path)
s.recv(65536)  # greeting
def q(cmd):
    s.send(cmd.encode())
    return json.loads(s.recv(1 << 20))
out = []
for line in open(ports_file):
    pid, name, peer = line.split()
    st = q(f"/ethdev/stats,{pid}")["/ethdev/stats"]
    out.append({"port": int(pid), "name": name, "peer": int(peer), "rx": st["ipackets"], "tx": st["opackets"],
                "rx_missed": st["imissed"], "rx_errors": st["ierrors"], "tx_errors": st["oerrors"]})
taps = []
for tap in open(taps_file).read().split():
    d = f"/sys/class/net/{tap}/statistics/"
    taps.append({"tap": tap, "kernel_rx": int(open(d + "rx_packets").read()), "kernel_tx": int(open(d + "tx_packets").read())})
if as_json == "--json":
    print(json.dumps({"ports": out, "taps": taps}, indent=1))
else:
    for p in out:
        extra = "".join(f" {k}={p[k]}" for k in ("rx_missed", "rx_errors", "tx_errors") if p[k])
        print(f"{p['port']:3} {p['name']:14} rx={p['rx']:<8} tx={p['tx']:<8}{extra} peer={p['peer']}")
    for t in taps:
        print(f"tap {t['tap']:14} kernel rx={t['kernel_rx']:<8} tx={t['kernel_tx']}")
PY
}

# COUNT frames into chain C's ingress tap: dst 02:00:00:00:00:02 (unknown unicast: a bridge
# floods it on), src 02:00:00:00:00:01, EtherType 0x88b5 (local experimental), 60 bytes.
vswitch_send() {
    local c=${1:?chain number} count=${2:-10} tap=${VSWITCH_TAP_PREFIX:-vsw}${1}in
    vswitch_alive || die "vswitch not running"
    [ -e "/sys/class/net/$tap" ] || die "no tap $tap (chains: $(tr '\n' ' ' <"$VS/taps"))"
    python3 - "$tap" "$count" <<'PY'
import socket, sys
tap, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((tap, 0))
for i in range(count):
    payload = b"harness-chain " + str(i).encode()
    s.send((bytes.fromhex("020000000002020000000001") + b"\x88\xb5" + payload).ljust(60, b"\0"))
print(f"sent {count} frames into {tap}")
PY
}

cmd_vswitch() {
    case "${1:-}" in
        up) shift; cmd_vswitch_up "$@" ;;
        down) cmd_vswitch_down ;;
        status)
            if vswitch_alive; then echo "vswitch up (testpmd pid $(cat "$VS/testpmd.pid"))"; cat "$VS/ports"; else echo "vswitch down"; return 1; fi ;;
        stats) shift; vswitch_stats "${1:-}" ;;
        send) shift; vswitch_send "$@" ;;
        *) echo "usage: $0 vswitch up [SOCKET_DIR] [CxN] | down | status | stats [--json] | send C [COUNT]" >&2; exit 2 ;;
    esac
}

mkdir -p "$LAB"
exec 9>"$LAB/.lock"
flock 9          # concurrent `up`/`down` (parallel test runs, other worktrees) take turns

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    vswitch) shift; cmd_vswitch "$@" ;;
    bastion-strict) cmd_bastion_strict ;;
    *) echo "usage: $0 up [N] [--vms M] | bastion-strict | down | status | vswitch up|down|status|stats|send ..." >&2; exit 2 ;;
esac
