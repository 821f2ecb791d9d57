#!/usr/bin/env bash
# Build the lab's test guest from Debian packages only:
#   DIR/vmlinux     uncompressed Debian kernel with its PVH entry (QEMU boots it directly with
#                   -kernel: ~4 s to userspace under TCG vs ~8 s for the bzImage, lab-notes §2)
#   DIR/initrd.img  busybox-static initramfs with the virtio/9p/virtio_net/virtio_console modules
#                   and bridge (+ stp, llc: lab-vnf.sh --bridge forwards a chain hop with it; the
#                   host's /lib/modules is another kernel's, so it must be loaded here);
#                   its /init mounts the host's / over 9p and switch_roots to the `init=` path
#   DIR/lab-vnf.sh  the lab "VNF": starts the host's qemu-ga, prints HARNESS-LAB-READY once
#                   qemu-ga holds its port
# The kernel package is downloaded and unpacked, never installed. Idempotent and cached: when the
# outputs exist and were built from the same inputs (this script and scripts/guest/*), it exits at
# once. `--force` rebuilds (e.g. to pick up a newer kernel package).
#
# `--tiny` builds instead the scale-test guest (binutils only, no kernel package):
#   DIR/tiny/vmlinux-tiny  a PVH ELF from scripts/guest/tiny.S + tiny.ld: prints HARNESS-TINY-READY
#                          on COM1 and halts forever (~0.25 s from QEMU start to the marker, TCG)
#   DIR/tiny/initrd-tiny   an empty newc cpio (harness kernel VMs always pass -initrd)
#
# Usage: scripts/build-guest.sh [--force] [--tiny] [DIR]
#        DIR defaults to ${HARNESS_LAB_DIR:-/var/tmp/harness-lab}/guest
set -euo pipefail

FORCE=0 TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --tiny) TINY=1 ;;
        -*) echo "usage: $0 [--force] [--tiny] [DIR]" >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done
DIR=${1:-${HARNESS_LAB_DIR:-/var/tmp/harness-lab}/guest}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$HERE/guest
export LC_ALL=C

log() { printf '[build-guest %6.2fs] %s\n' "$(($(date +%s%N) - T0))e-9" "$*" >&2; }
T0=$(date +%s%N)

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# --- tiny guest (--tiny) ------------------------------------------------------------------------
build_tiny() {
    local out=$DIR/tiny stamp
    mkdir -p "$out"
    exec 8>"$out/.build.lock"
    flock 8
    # Inputs: the assembly, the linker script and the assembler/linker version.
    if ! command -v as >/dev/null || ! command -v ld >/dev/null; then
        log "installing binutils"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends --no-upgrade binutils >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends --no-upgrade binutils >/dev/null; }
    fi
    stamp=$({ cat "$SRC/tiny.S" "$SRC/tiny.ld"; as --version | head -1; ld --version | head -1; } | sha256sum | cut -d' ' -f1)
    if [ "$FORCE" = 0 ] && [ -s "$out/vmlinux-tiny" ] && [ -s "$out/initrd-tiny" ] \
        && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
        log "tiny guest up to date in $out"
        return 0
    fi
    as --64 -o "$out/tiny.o" "$SRC/tiny.S"
    ld -m elf_x86_64 -T "$SRC/tiny.ld" --build-id=none -z noexecstack -o "$out/vmlinux-tiny.tmp" "$out/tiny.o"
    rm -f "$out/tiny.o"
    # QEMU takes the PVH entry from this note; without it, -kernel would reject the ELF.
    LC_ALL=C readelf -n "$out/vmlinux-tiny.tmp" | grep -q 'Xen .*0x00000012' \
        || { echo "build-guest: no XEN_ELFNOTE_PHYS32_ENTRY note in $out/vmlinux-tiny.tmp" >&2; exit 1; }
    # Empty newc cpio: only the TRAILER!!! entry (110-byte header + 11-byte name), padded to 512.
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        0 0 0 0 1 0 0 0 0 0 0 11 0 'TRAILER!!!' >"$out/initrd-tiny.tmp"
    truncate -s 512 "$out/initrd-tiny.tmp"
    mv -f "$out/vmlinux-tiny.tmp" "$out/vmlinux-tiny"
    mv -f "$out/initrd-tiny.tmp" "$out/initrd-tiny"
    echo "$stamp" >"$out/.stamp"
    log "built $out/{vmlinux-tiny,initrd-tiny}"
}
if [ "$TINY" = 1 ]; then
    build_tiny
    exit 0
fi

# Concurrent callers (several test binaries) wait for one build instead of racing on the files.
exec 9>"$DIR/.build.lock"
flock 9

# lab-vnf.sh is a plain copy: refresh it whenever it differs (no kernel work needed for that).
if ! cmp -s "$SRC/lab-vnf.sh" "$DIR/lab-vnf.sh"; then
    install -m 0755 "$SRC/lab-vnf.sh" "$DIR/lab-vnf.sh.tmp"
    mv -f "$DIR/lab-vnf.sh.tmp" "$DIR/lab-vnf.sh"
    log "installed $DIR/lab-vnf.sh"
fi
# The stamp is a hash of every input that shapes the kernel and the initramfs.
STAMP=$(cat "${BASH_SOURCE[0]}" "$SRC/initramfs-init.sh" | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ] && [ -s "$DIR/vmlinux" ] && [ -s "$DIR/initrd.img" ] \
    && [ "$(cat "$DIR/.stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "up to date in $DIR ($(cat "$DIR/.kernel-version" 2>/dev/null || echo '?'))"
    exit 0
fi

# --- packages ---------------------------------------------------------------------------------
need=()
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v depmod >/dev/null && command -v modprobe >/dev/null || need+=(kmod)
command -v xz >/dev/null || need+=(xz-utils)
command -v qemu-ga >/dev/null || [ -x /usr/sbin/qemu-ga ] || need+=(qemu-guest-agent)
command -v flock >/dev/null || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends --no-upgrade "${need[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends --no-upgrade "${need[@]}" >/dev/null; }
fi

# --- kernel package -----------------------------------------------------------------------------
resolve_kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
KPKG=$(resolve_kpkg)
if [ -z "$KPKG" ]; then
    apt-get update -q >/dev/null
    KPKG=$(resolve_kpkg)
fi
[ -n "$KPKG" ] || { echo "build-guest: cannot resolve the kernel package behind linux-image-amd64" >&2; exit 1; }
KV=${KPKG#linux-image-}
log "kernel package $KPKG"

WORK=$DIR/work
mkdir -p "$WORK"
DEB=$(ls "$WORK/${KPKG}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$DEB" ]; then
    rm -f "$WORK"/linux-image-*.deb
    # _apt must be able to write into the download directory, or apt warns and downloads as root.
    (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null 2>&1) \
        || { apt-get update -q >/dev/null && (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null); }
    DEB=$(ls "$WORK/${KPKG}"_*.deb | head -1)
    log "downloaded $(basename "$DEB")"
fi

KROOT=$WORK/kroot
rm -rf "$KROOT"
dpkg-deb -x "$DEB" "$KROOT"
MODDIR=$KROOT/lib/modules
[ -d "$MODDIR/$KV" ] || MODDIR=$KROOT/usr/lib/modules
[ -d "$MODDIR/$KV" ] || { echo "build-guest: no modules for $KV in $DEB" >&2; exit 1; }
# The .deb ships no modules.dep; depmod -b wants <base>/lib/modules/<kv>.
depmod -b "${MODDIR%/lib/modules}" "$KV"
log "unpacked and depmod'ed"

# --- vmlinux: the XZ payload of vmlinuz (Debian builds CONFIG_KERNEL_XZ) -------------------------
VMLINUZ=$KROOT/boot/vmlinuz-$KV
[ -f "$VMLINUZ" ] || { echo "build-guest: $VMLINUZ missing from the package" >&2; exit 1; }
rm -f "$WORK/vmlinux.tmp"
for off in $(grep -abo $'\xfd7zXZ' "$VMLINUZ" | cut -d: -f1); do
    # xz complains about the trailing data after the stream; the ELF check below is what counts.
    tail -c +$((off + 1)) "$VMLINUZ" | xz -dc 2>/dev/null >"$WORK/vmlinux.tmp" || true
    [ "$(head -c 4 "$WORK/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ] && break
    rm -f "$WORK/vmlinux.tmp"
done
[ -s "$WORK/vmlinux.tmp" ] || { echo "build-guest: no XZ-compressed ELF kernel inside $VMLINUZ" >&2; exit 1; }
log "extracted vmlinux ($(stat -c %s "$WORK/vmlinux.tmp") bytes)"

# --- initramfs --------------------------------------------------------------------------------
IR=$WORK/initramfs
rm -rf "$IR"
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,lib/modules}
# busybox-static ships /bin/busybox (the dynamic `busybox` package conflicts with it).
cp /bin/busybox "$IR/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$IR/bin/$applet"
done
install -m 0755 "$SRC/initramfs-init.sh" "$IR/init"
# Load order from modprobe itself (dependencies first), de-duplicated.
modprobe -d "${MODDIR%/lib/modules}" -S "$KV" --show-depends -a \
    virtio_pci 9pnet_virtio 9p virtio_net virtio_console bridge \
    | awk '$1 == "insmod" && !seen[$2]++ {print $2}' >"$WORK/modules.list"
: >"$IR/lib/modules/load.order"
while read -r ko; do
    case "$ko" in
        *.ko) ;;
        *) echo "build-guest: compressed module $ko: busybox insmod cannot load it" >&2; exit 1 ;;
    esac
    cp "$ko" "$IR/lib/modules/"
    basename "$ko" >>"$IR/lib/modules/load.order"
done <"$WORK/modules.list"
log "initramfs modules: $(tr '\n' ' ' <"$IR/lib/modules/load.order")"
(cd "$IR" && find . | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1 >"$WORK/initrd.tmp")

# --- install outputs atomically ---------------------------------------------------------------
mv -f "$WORK/vmlinux.tmp" "$DIR/vmlinux"
mv -f "$WORK/initrd.tmp" "$DIR/initrd.img"
echo "$KV" >"$DIR/.kernel-version"
echo "$STAMP" >"$DIR/.stamp"
# Keep the .deb (a rebuild after a script change then needs no download); drop the 400 MB tree.
rm -rf "$KROOT" "$IR"
log "built $DIR/{vmlinux,initrd.img} for $KV"
