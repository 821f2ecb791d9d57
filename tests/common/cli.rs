//! Running the `harness` binary in the tier-3 tests: the lab started (and the guest built) once
//! per test process, a private state and scratch directory per test, and every run's argv, exit
//! code and output echoed into the test's log (shown when it fails).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::lab::{lab_dir, repo};

/// `scripts/lab.sh up`, and `scripts/build-guest.sh` if the guest is missing (both idempotent);
/// once per test process.
pub fn ensure_lab() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let st = Command::new("bash").arg(repo().join("scripts/lab.sh")).arg("up").status().expect("lab.sh");
        assert!(st.success(), "scripts/lab.sh up failed");
        if !lab_dir().join("guest/vmlinux").exists() {
            let st = Command::new("bash").arg(repo().join("scripts/build-guest.sh")).status().expect("build-guest.sh");
            assert!(st.success(), "scripts/build-guest.sh failed");
        }
    });
}

/// One test's harness: its own `--state-dir` and a scratch directory for topologies.
pub struct Harness {
    pub state: tempfile::TempDir,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        ensure_lab();
        Harness { state: tempfile::tempdir().unwrap(), dir: tempfile::tempdir().unwrap() }
    }

    /// `harness --state-dir STATE --progress plain ARGS...`: the global options go first, so
    /// everything after a `--` in `args` stays the guest's command.
    pub fn cmd_in(&self, state: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
        c.arg("--state-dir").arg(state).args(["--progress", "plain"]).args(args);
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_in(self.state.path(), args)
    }

    /// Run to completion with another state dir (a replay elsewhere), echoing everything.
    pub fn run_in(&self, state: &Path, args: &[&str]) -> Output {
        echoed("harness", args, self.cmd_in(state, args).output().expect("run harness"))
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(self.state.path(), args)
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `out` of `$ program args…`, after echoing the command, its exit code and its output into
/// the test's log (shown when the test fails).
pub fn echoed(program: &str, args: &[&str], out: Output) -> Output {
    eprintln!(
        "$ {program} {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stdout parsed as JSON, or a panic showing what it was.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}
