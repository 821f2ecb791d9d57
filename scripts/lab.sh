#!/usr/bin/env bash
# Loopback SSH lab: real OpenSSH sshd instances on 127.0.0.1 acting as DUT nodes.
#
#   scripts/lab.sh up [N]   start N key-only nodes (default 2, max 32) on ports 2201..2200+N,
#                           a password-only node DUTPW on 2290 and a node on 2291 whose sudo
#                           wants a password, a keyboard-interactive-only (PAM) node DUTKBD on 2292; write topologies/lab.yaml, $LAB/fanout.yaml, $LAB/lab.env
#   scripts/lab.sh down     stop the sshd processes started by `up` (by the pids in its pidfiles)
#   scripts/lab.sh status   show which nodes are listening
#
# Lab dir: ${HARNESS_LAB_DIR:-/var/tmp/harness-lab}. Idempotent: `up` twice gives the same state
# and restarts dead nodes. Needs root (users, sudoers.d, sshd privilege separation).
set -euo pipefail

LAB=${HARNESS_LAB_DIR:-/var/tmp/harness-lab}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_PORT=2200
PW_PORT=2290
SUDOPW_PORT=2291
KBD_PORT=2292
KBD_USER=hlabkbd
PW_USER=hlabpw
PW_PASS=hlab-pass
SUDOPW_USER=hlabsudo
MAX_NODES=32

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

# True when the pid in $1 (a pidfile) is alive and is the sshd using config $2.
pid_alive() {
    local pidfile=$1 cfg=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$cfg"
}

# True when something speaking SSH answers on 127.0.0.1:$1.
listening() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c 4 <&3" 2>/dev/null | grep -q '^SSH-'
}

ensure_user() { # user password|-
    local user=$1 pass=$2 home=$LAB/home/$1
    if ! id "$user" >/dev/null 2>&1; then
        useradd -M -d "$home" -s /bin/bash "$user"
    fi
    usermod -d "$home" "$user" >/dev/null 2>&1 || true
    if [ "$pass" = - ]; then
        usermod -p '*' "$user" >/dev/null 2>&1        # no password, but not locked (sshd with UsePAM no refuses locked accounts)
    else
        echo "$user:$pass" | chpasswd
    fi
    install -d -m 0755 -o "$user" -g "$user" "$home"
    install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
    install -m 0600 -o "$user" -g "$user" "$LAB/ssh/id_ed25519.pub" "$home/.ssh/authorized_keys"
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

start_node() { # name port user pubkey(yes|no) password(yes|no) [kbdint: PAM keyboard-interactive only]
    local name=$1 port=$2 user=$3 pubkey=$4 pw=$5 kbd=no pam=no d=$LAB/nodes/$1
    [ "${6:-}" = kbdint ] && { kbd=yes; pam=yes; }
    mkdir -p "$d"
    [ -f "$d/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "harness-lab-$name" -f "$d/ssh_host_ed25519_key"
    cat >"$d/sshd_config.new" <<CFG
ListenAddress 127.0.0.1:$port
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AllowUsers $user
PermitRootLogin no
PubkeyAuthentication $pubkey
PasswordAuthentication $pw
KbdInteractiveAuthentication $kbd
UsePAM $pam
StrictModes yes
MaxStartups 100:30:200
MaxSessions 20
UseDNS no
PrintMotd no
PrintLastLog no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
CFG
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

node_yaml() { # name port user [password]
    cat <<YAML
  $1:
    type: DUT
    host: 127.0.0.1
    port: $2
    username: $3
YAML
    if [ -n "${4:-}" ]; then
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

cmd_up() {
    local n=${1:-2}
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $MAX_NODES ] || die "N must be 1..$MAX_NODES"
    install_packages
    mkdir -p "$LAB/ssh" "$LAB/nodes" "$LAB/home"
    chmod 0755 "$LAB" "$LAB/home"
    mkdir -p /run/sshd && chmod 0755 /run/sshd       # privilege separation dir; no systemd creates it here
    [ -f "$LAB/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C harness-lab-client -f "$LAB/ssh/id_ed25519"
    : >"$LAB/ssh/known_hosts.new"
    local i d users=() ports=()
    for i in $(seq 1 "$n"); do
        ensure_user "hlab$i" -
        ensure_sudoers "hlab$i" nopasswd
        start_node "DUT$i" $((BASE_PORT + i)) "hlab$i" yes no
        users+=("hlab$i"); ports+=($((BASE_PORT + i)))
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
    # Nodes from a larger earlier `up` that still run stay part of the lab (known_hosts, fanout.yaml,
    # lab.env): a concurrent `up 2` must not shrink the view of a 32-node benchmark.
    local keys=$(seq 1 "$n")
    for i in $(seq $((n + 1)) $MAX_NODES); do
        d=$LAB/nodes/DUT$i
        pid_alive "$d/sshd.pid" "$d/sshd_config" || continue
        printf '[127.0.0.1]:%s %s\n' $((BASE_PORT + i)) "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$LAB/ssh/known_hosts.new"
        keys="$keys $i"
        users+=("hlab$i"); ports+=($((BASE_PORT + i)))
    done
    mv -f "$LAB/ssh/known_hosts.new" "$LAB/ssh/known_hosts"

    mkdir -p "$REPO/topologies"
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
    } >"$REPO/topologies/lab.yaml.tmp"
    mv -f "$REPO/topologies/lab.yaml.tmp" "$REPO/topologies/lab.yaml"

    {
        echo "# Generated by scripts/lab.sh up: ${#ports[@]} key-only loopback nodes for the fan-out benchmark."
        echo "metadata:"
        echo "  version: 0.1"
        echo "  schema: []"
        echo "nodes:"
        for i in $keys; do node_yaml "DUT$i" $((BASE_PORT + i)) "hlab$i"; done
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
LAB_PW_PORT=$PW_PORT
LAB_PW_USER=$PW_USER
LAB_PW_PASS=$PW_PASS
LAB_SUDOPW_PORT=$SUDOPW_PORT
LAB_SUDOPW_USER=$SUDOPW_USER
LAB_KBD_PORT=$KBD_PORT
LAB_KBD_USER=$KBD_USER
LAB_TOPOLOGY=$REPO/topologies/lab.yaml
LAB_FANOUT=$LAB/fanout.yaml
ENV
    log "up: ${#ports[@]} key nodes (ports ${ports[0]}..${ports[-1]}), DUTPW :$PW_PORT, sudo-password node :$SUDOPW_PORT; lab dir $LAB"
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

mkdir -p "$LAB"
exec 9>"$LAB/.lock"
flock 9          # concurrent `up`/`down` (parallel test runs, other worktrees) take turns

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up [N] | down | status" >&2; exit 2 ;;
esac
