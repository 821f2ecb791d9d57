//! The host-wide lock that serialises hugepage check/allocation, QEMU preallocation and their
//! undoing between runs (and between nodes that share one kernel, as the loopback lab's do).
//!
//! One lock file, in a directory only root can create (`/run` is root-owned, unlike the
//! world-writable `/run/lock`, where any user could hold the lock and stall every run). Every
//! wait is bounded; whoever takes the lock writes who they are next to it, so a timeout can say
//! who holds it. [`locked_script`] wraps one script in it: the script's own shell holds the lock
//! until it ends, so a lost connection never lets another run in halfway (a lock held by a
//! channel kept open for several round trips did).

use std::time::Duration;

use crate::quote::quote;
use crate::ssh::SshError;

/// The lock file.
pub const LOCK_DIR: &str = "/run/harness-locks";
pub const LOCK_FILE: &str = "/run/harness-locks/hugepages.lock";
const HOLDER_FILE: &str = "/run/harness-locks/hugepages.holder";

/// Exit status of [`locked_script`] when the lock was not had in time.
pub const LOCK_TIMEOUT_STATUS: u32 = 75;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("waited {waited:?} for the hugepage lock {LOCK_FILE}; it is held by {holder}")]
    Timeout { waited: Duration, holder: String },
}

/// Shell (run as root) that makes the lock directory root-only and refuses one we do not own.
fn prepare() -> String {
    format!(
        "mkdir -p -m 0700 {d} && [ \"$(stat -c %u {d})\" = 0 ] || {{ echo \"{d} is not owned by root\" >&2; exit 1; }}\n",
        d = quote(LOCK_DIR)
    )
}

/// `script` run under the lock (as root), waiting at most `wait`. On timeout it prints the
/// holder on stderr and exits [`LOCK_TIMEOUT_STATUS`].
///
/// The script runs at a raised CPU priority: everyone else on the host waits while it holds the
/// lock, and it competes for CPU with the QEMUs that earlier holders just started. At nice 0 a
/// few milliseconds of shell took up to a second on a busy 2-core host (32 lab nodes sharing one
/// kernel queued 25 s for the lock). `renice` alone is not enough where the kernel groups tasks
/// by session (`CONFIG_SCHED_AUTOGROUP`, on in Debian's and Ubuntu's kernels): nice then only
/// ranks tasks within a session, every `-daemonize`d QEMU is a session of its own, and this
/// script, a session of sshd's, got 1/(QEMUs + 1) of the CPU; so its session's autogroup is
/// raised too (the session holds only this script). `up` of 32 lab nodes × 4 tiny VMs: the
/// holds summed to 7.1 s (0.05-0.86 s each) with renice alone, 0.47 s (0.01-0.04 s) with both.
pub fn locked_script(script: &str, holder: &str, wait: Duration) -> String {
    format!(
        "{prep}renice -n -20 -p $$ >/dev/null 2>&1 || true\n{{ echo -20 > /proc/$$/autogroup; }} 2>/dev/null || true\nexec 9>{f}\nif ! flock -w {w} 9; then echo \"held by $(cat {h} 2>/dev/null || echo unknown)\" >&2; exit {rc}; fi\n\
         printf '%s\\n' {me} > {h}\n{script}",
        prep = prepare(),
        f = quote(LOCK_FILE),
        h = quote(HOLDER_FILE),
        w = wait.as_secs().max(1),
        rc = LOCK_TIMEOUT_STATUS,
        me = quote(holder),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrapper against a scratch lock: a second taker times out and names the holder.
    #[test]
    fn second_taker_times_out_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        let fix = |s: String| s.replace(LOCK_DIR, dir).replace("[ \"$(stat -c %u", "[ 0 = 0 ] || [ \"$(stat -c %u");
        let first = fix(locked_script("sleep 3\n", "run-A pid 1", Duration::from_secs(1)));
        let mut holder = std::process::Command::new("sh").arg("-c").arg(&first).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let second = fix(locked_script("echo got it\n", "run-B", Duration::from_secs(1)));
        let out = std::process::Command::new("sh").arg("-c").arg(&second).output().unwrap();
        assert_eq!(out.status.code(), Some(LOCK_TIMEOUT_STATUS as i32), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("held by run-A pid 1"), "{out:?}");
        holder.wait().unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(&second).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got it");
    }
}
