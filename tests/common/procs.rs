//! Processes on this machine, for tests that must prove a run left nothing behind. A zombie has
//! exited (daemonized QEMUs wait for this sandbox's init to reap them).

#![allow(dead_code)]

use std::path::Path;

/// Running: not exited and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| st.lines().find(|l| l.starts_with("State:")).map(|l| !l.contains("Z (zombie)")))
        .unwrap_or(false)
}

/// Wait until `pid` (not necessarily our child) has exited, at most `within`; true if it did.
/// Event-driven: a pidfd turns readable when its process exits (zombie or reaped).
pub fn wait_exit(pid: u32, within: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        return !alive(pid); // already gone (ESRCH)
    }
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; the fd is ours and closed right after.
    let n = unsafe { libc::poll(&mut p, 1, within.as_millis().min(i32::MAX as u128) as i32) };
    unsafe { libc::close(fd) };
    n == 1
}

/// Live processes whose argv mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Live processes whose argv is exactly `argv` (NUL-terminated arguments, as in
/// `/proc/PID/cmdline`): the command itself, not the shells and sudos that carry it.
pub fn processes_with_argv(argv: &[u8]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == argv))
        .filter(|pid| alive(*pid))
        .collect()
}

/// Live processes whose argv mentions this run's directory (QEMU, sudo, socat).
pub fn processes_of_run(run_id: &str) -> Vec<u32> {
    processes_mentioning(&format!("/run/harness/{run_id}/"))
}

/// No live process of the run and no run directory.
pub fn assert_nothing_left(run_id: &str) {
    let procs = processes_of_run(run_id);
    assert!(procs.is_empty(), "processes of run {run_id} still alive: {procs:?}");
    assert!(!Path::new(&format!("/run/harness/{run_id}")).exists(), "run dir of {run_id} still exists");
}
