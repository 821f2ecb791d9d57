#!/bin/sh
# The lab's "VNF" for the test guest (installed as <guest dir>/lab-vnf.sh by build-guest.sh).
# The harness' guest init script runs it as root, as a child of PID 1, with the host's / read-only
# over 9p, proc/sys/dev mounted and tmpfs on /run and /tmp. It starts the host's qemu-ga on the
# agent's port, waits until qemu-ga really holds that port (bytes sent earlier arrive mangled,
# lab-notes §3), prints HARNESS-LAB-READY on the console (our stdout) and then waits on qemu-ga:
# when qemu-ga dies this script exits and the init powers the guest off.
#
# Chain hop (opt-in): `lab-vnf.sh --bridge` (as the VM's `init_command`), LAB_VNF_BRIDGE=1 in the
# environment, or `lab.bridge=1` on the kernel command line bridges every virtio-net NIC (eth*)
# into br0, so a frame entering the VM's first NIC leaves through its last (and the other way).
# `--bridge=eth0,eth1` names the NICs instead. The bridge runs without STP (a chain has no loops)
# or multicast snooping, and with IPv6 off on br0 and its ports, so the guest itself puts no frame
# on the data path and per-hop packet counts are exact. Needs the bridge module from the initramfs (build-guest.sh).
# Before the ready marker it prints `HARNESS-LAB-BRIDGE br0: eth0 eth1` (or -FAILED: why).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

BRIDGE=${LAB_VNF_BRIDGE:-}
[ "$BRIDGE" = 0 ] && BRIDGE=
for arg in "$@"; do
    case "$arg" in
        --bridge) BRIDGE=1 ;;
        --bridge=*) BRIDGE=${arg#--bridge=} ;;
        *) echo "harness-lab-vnf: unknown argument $arg (expected --bridge[=eth0,eth1])" ;;
    esac
done

# Defensive: through the 9p export of the host's /, /proc and /run are the *host's* directories
# until the init mounts its own; neither `mountpoint` (multidevs=remap gives every host mount its
# own st_dev) nor `stat -f` (9p passes the host's statfs through) can tell. /proc/self naming us
# can (and then the guest's /proc/mounts). The /proc/$QPID/fd check below needs the guest's
# procfs, the port lookup its sysfs, qemu-ga a writable /run.
read -r selfpid _ </proc/self/stat 2>/dev/null || selfpid=
[ "$selfpid" = "$$" ] || mount -t proc proc /proc
# Shell builtins where possible: under TCG every exec of a dynamic binary over 9p costs ~0.1 s.
run_tmpfs=no sys_ok=no
while read -r _ mnt fstype _; do
    [ "$mnt" = /run ] && [ "$fstype" = tmpfs ] && run_tmpfs=yes
    [ "$mnt" = /sys ] && [ "$fstype" = sysfs ] && sys_ok=yes
done </proc/mounts
[ "$run_tmpfs" = yes ] || mount -t tmpfs -o mode=0755,size=16M tmpfs /run
# The host's /sys/class/virtio-ports could name a port that is not ours.
[ "$sys_ok" = yes ] || mount -t sysfs sysfs /sys

QGA=$(command -v qemu-ga || true)
if [ -z "$QGA" ]; then
    echo "HARNESS-LAB-FAILED: qemu-ga not found on the host root (install qemu-guest-agent)"
    exit 1
fi

# A virtio-serial port named like QEMU's default agent channel wins (aarch64, or virtio setups);
# otherwise the agent is on the second isa-serial port (COM2 = ttyS1; COM1 is the console).
MODE=isa-serial PORT=/dev/ttyS1
for f in /sys/class/virtio-ports/*/name; do
    [ -r "$f" ] || continue
    read -r name <"$f" || continue
    if [ "$name" = org.qemu.guest_agent.0 ]; then
        MODE=virtio-serial
        dev=${f%/name}
        PORT=/dev/${dev##*/}
    fi
done

"$QGA" -m "$MODE" -p "$PORT" -t /run &
QPID=$!
# Overlaps with qemu-ga's start; waited for before the marker so lo has 127.0.0.1 by then.
ip link set lo up 2>/dev/null &
IPPID=$!

# Ready only once qemu-ga has the port open and (for a tty) in raw mode. One `ls` per poll, not
# one `readlink` per descriptor.
i=0
while :; do
    case "$(ls -l /proc/"$QPID"/fd 2>/dev/null)" in
        *"-> $PORT"*) break ;;
    esac
    if ! kill -0 "$QPID" 2>/dev/null; then
        echo "HARNESS-LAB-FAILED: qemu-ga exited before opening $PORT"
        exit 1
    fi
    i=$((i + 1))
    if [ "$i" -gt 500 ]; then
        echo "HARNESS-LAB-FAILED: qemu-ga did not open $PORT within 10 s"
        kill "$QPID" 2>/dev/null
        exit 1
    fi
    sleep 0.02
done
if [ "$MODE" = isa-serial ]; then
    # qemu-ga opens the tty, then switches it to raw mode (cfmakeraw clears icanon).
    i=0
    while [ "$i" -lt 100 ]; do
        case "$(stty -F "$PORT" -a 2>/dev/null)" in
            *-icanon*) break ;;
        esac
        i=$((i + 1))
        sleep 0.01
    done
fi

wait "$IPPID"

if [ -z "$BRIDGE" ]; then
    # The kernel command line; read once, builtins only.
    read -r cmdline </proc/cmdline
    for w in $cmdline; do
        case "$w" in
            lab.bridge=1) BRIDGE=1 ;;
            lab.bridge=*,*) BRIDGE=${w#lab.bridge=} ;;
        esac
    done
fi
if [ -n "$BRIDGE" ]; then
    if [ "$BRIDGE" = 1 ]; then
        # Every virtio-net NIC, in name order (eth0 = the VM's first NIC).
        nics=
        for d in /sys/class/net/eth*; do
            [ -e "$d/device/driver" ] || continue
            case "$(ls -l "$d/device/driver")" in
                */virtio_net) nics="$nics ${d##*/}" ;;
            esac
        done
    else
        nics=$(echo "$BRIDGE" | tr ',' ' ')
    fi
    why=
    set -- $nics
    [ "$#" -ge 2 ] || why="needs at least two NICs (found:${nics:- none})"
    if [ -z "$why" ] && [ ! -d /sys/module/bridge ]; then
        why="no bridge module (rebuild the guest with scripts/build-guest.sh)"
    fi
    if [ -z "$why" ]; then
        echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null
        # mcast_snooping 0: with snooping on, br0 joins 224.0.0.106 (multicast router discovery)
        # and sends IGMP reports of its own into the chain.
        ip link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0 || why="ip link add br0 failed"
    fi
    if [ -z "$why" ]; then
        echo 1 >/proc/sys/net/ipv6/conf/br0/disable_ipv6 2>/dev/null
        for nic in $nics; do
            echo 1 >"/proc/sys/net/ipv6/conf/$nic/disable_ipv6" 2>/dev/null
            ip link set "$nic" master br0 && ip link set "$nic" up || why="cannot add $nic to br0"
        done
        ip link set br0 up || why="cannot bring br0 up"
    fi
    if [ -n "$why" ]; then
        echo "HARNESS-LAB-BRIDGE-FAILED: $why"
    else
        echo "HARNESS-LAB-BRIDGE br0:$nics"
    fi
fi

read -r up _ </proc/uptime
echo "HARNESS-LAB-READY qga=$MODE:$PORT uptime=$up"
wait "$QPID"
rc=$?
echo "harness-lab-vnf: qemu-ga exited with status $rc"
exit "$rc"
