//! Test helpers shared by unit tests: stand-in commands on `PATH` for running generated shell
//! scripts locally (a `sudo` that only drops its options, or one that wants a password).

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// `PATH` with a directory in front holding an executable `name` with this `sh` body; one
/// directory per distinct (name, body), kept for the test process's life.
pub fn path_with(name: &str, body: &str) -> String {
    static DIRS: OnceLock<Mutex<HashMap<(String, String), tempfile::TempDir>>> = OnceLock::new();
    let mut dirs = DIRS.get_or_init(Default::default).lock().unwrap();
    let dir = dirs.entry((name.into(), body.into())).or_insert_with(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        dir
    });
    format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default())
}

/// A `sudo` that checks for `-n --` or `-n` and runs the rest as the caller.
pub const PASSTHROUGH_SUDO: &str = "[ \"$1\" = -n ] || exit 99; shift; [ \"$1\" = -- ] && shift; exec \"$@\"";

/// A `sudo` that wants a password, as `sudo -n` says it.
pub const PASSWORD_SUDO: &str = "echo 'sudo: a password is required' >&2; exit 1";

/// Run `cmd` (built fresh each try). Another test thread that forked while a stand-in was being
/// written holds it open until its child execs: `Text file busy` for that moment only.
pub fn output(mut cmd: impl FnMut() -> Command) -> Output {
    for _ in 0..50 {
        let out = cmd().output().unwrap();
        if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("a stand-in command stayed busy");
}
