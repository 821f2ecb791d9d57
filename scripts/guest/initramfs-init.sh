#!/bin/busybox sh
# /init of the lab guest's initramfs (built by scripts/build-guest.sh).
# Loads the virtio/9p modules, mounts the host's / over virtio-9p (read-only unless `rw`) and
# switch_roots to the kernel's `init=` path. The kernel consumes `init=` itself, so it is read
# back from /proc/cmdline. On any failure it says why on the console and powers off, so the
# host sees `reboot: Power down` at once instead of waiting for a boot timeout.
# The applet symlinks are made at build time (`busybox --install` here costs ~0.4 s under TCG).
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so /init starts without stdio.
exec 0<>/dev/console 1>&0 2>&0

fail() {
    echo "harness-initramfs: $*; powering off"
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 5
}

while read -r ko; do
    insmod "/lib/modules/$ko" || fail "insmod $ko failed"
done </lib/modules/load.order

ROOT=virtioroot FLAGS=trans=virtio INIT=/sbin/init RO=ro
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) ROOT=${arg#root=} ;;
        rootflags=*) FLAGS=${arg#rootflags=} ;;
        init=*) INIT=${arg#init=} ;;
        rw) RO=rw ;;
    esac
done

# cache=loose unless the command line chooses: the root is read-only and changes on the host
# during the guest's life are not expected; it cuts the time from /init to the VNF's ready
# marker by about 40 % under TCG (every exec otherwise re-reads binaries and libraries over 9p).
case ",$FLAGS," in
    *,cache=*) ;;
    *) FLAGS="$FLAGS,cache=loose" ;;
esac
mount -t 9p -o "$RO,$FLAGS,version=9p2000.L,msize=262144" "$ROOT" /newroot \
    || fail "cannot mount 9p root '$ROOT' ($FLAGS)"
[ -x "/newroot$INIT" ] || fail "init '$INIT' is not executable on the 9p root"
mount --move /dev /newroot/dev || fail "cannot move /dev"
umount /proc /sys
exec switch_root /newroot "$INIT"
