#!/usr/bin/env bash
# Debian packages the lab, the test guest and the tests need (idempotent; apt only when missing).
set -euo pipefail
# `install-deps.sh vswitch` adds dpdk-dev (dpdk-testpmd and its net_vhost/net_tap PMDs, ~30 s,
# 200+ packages) for `scripts/lab.sh vswitch` (NF chains); the default set leaves it out.
need=(openssh-server openssh-client sudo socat qemu-system-x86 qemu-guest-agent busybox-static libxml2-utils python3-junitparser
      kmod xz-utils cpio iproute2 procps util-linux ca-certificates binutils strace)
for extra in "$@"; do
  case "$extra" in
    vswitch) need+=(dpdk-dev python3) ;;
    *) echo "install-deps.sh: unknown extra '$extra' (known: vswitch)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
