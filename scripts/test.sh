#!/usr/bin/env bash
# The project's one test command (README "Tests"): installs the Debian packages it needs,
# builds, starts the loopback lab, builds the test guest and runs every test tier.
#   tier 1  pure logic: topology, plan, templates, quoting (unit + golden + property tests)
#   tier 2  SSH: real OpenSSH sshd nodes on 127.0.0.1 (scripts/lab.sh)
#   tier 3  end to end: real qemu guests (TCG here) with a real guest agent, driven over SSH;
#           and the fault suite (tests/faults.rs: lost sshd, SIGKILL/SIGINT at exact phases,
#           reused run id, full run_root, qemu killed) asserting nothing is left behind
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install-deps.sh

echo "== build"
cargo build --locked --all-targets
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

echo "== lab"
# 16 nodes with 4 tiny guests each for tests/scale.rs (nodes 1-2 and lab.yaml as with a plain
# `up`), and the MaxStartups-2 bastion for its handshake-retry test.
bash scripts/lab.sh up 16 --vms 4
trap 'bash scripts/lab.sh down' EXIT
bash scripts/lab.sh bastion-strict
bash scripts/build-guest.sh

echo "== tier 1: pure logic"
cargo test --locked --lib --bins --test topology --test plan_golden --test fuzz --test junit_schema --test chain_plan
echo "== tier 2: ssh against the loopback lab"
cargo test --locked --test ssh
echo "== tier 3: end to end (qemu guests, guest agent, NF chain through a dpdk-testpmd vswitch)"
bash scripts/install-deps.sh vswitch
cargo test --locked --test qga_exec --test guest --test e2e --test pipeline --test chain -- --test-threads 2
echo "== tier 3: scale (16 nodes x 4 tiny guests through one bastion, handshake retries)"
cargo test --locked --test scale
echo "== tier 3: fault suite (tiny guests; lab-scale.yaml rewritten by lab.sh up 2 --vms 2)"
bash scripts/lab.sh up 2 --vms 2
cargo test --locked --test faults -- --test-threads 1
