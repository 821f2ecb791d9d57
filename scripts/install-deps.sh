#!/usr/bin/env bash
# Debian packages the lab, the test guest and the tests need (idempotent; apt only when missing).
set -euo pipefail
need=(openssh-server openssh-client sudo socat qemu-system-x86 qemu-guest-agent busybox-static
      kmod xz-utils cpio iproute2 procps util-linux ca-certificates binutils)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
