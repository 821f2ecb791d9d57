#!/usr/bin/env bash
# The main job on the built-in local lab, from a fresh Debian 12 machine:
# packages, build, loopback sshd lab, test guest, then `harness check` and `harness up` of
# topologies/lab.yaml (2 nodes x 2 VMs under TCG, guest agent, pinned vCPUs) and `status`.
# The VMs stay up; the last line says how to stop them. `scripts/demo.sh --down` stops them too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh
cargo build --release --locked
bash scripts/lab.sh up
bash scripts/build-guest.sh
H=target/release/harness
$H check topologies/lab.yaml
$H up topologies/lab.yaml
$H status topologies/lab.yaml
if [ "${1:-}" = "--down" ]; then
  $H down topologies/lab.yaml
else
  echo "stop it with: $H down topologies/lab.yaml   (and the lab with: scripts/lab.sh down)"
fi
