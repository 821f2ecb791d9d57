//! `harness logs VM [TOPOLOGY] [--run ID] [-f]`: print or follow a VM's serial log. Ctrl-C or
//! SIGTERM ends it with exit 130, a closed stdout with 0, both after the remote `tail` is
//! killed; a connection lost on the way is exit 3.

use std::io::Write;

use crate::cli::{GlobalArgs, LogsArgs};
use crate::exit;
use crate::ssh::{ChildEvent, RemoteCommand};

/// How long `logs -f` waits for a starting VM's QEMU to write its pidfile.
const PIDFILE_WAIT_S: u32 = 60;

/// `tail -F` of the log for as long as the VM's QEMU runs. Its pid is read from the pidfile on
/// the host and used only if that process names the pidfile (this VM's QEMU, not a reused pid):
/// a manifest written while `up` was still starting has no pid, and `tail -F` without `--pid`
/// followed forever after the VM was gone. A pidfile that does not come within `wait_s`
/// seconds (the VM is not running) prints the log as it is and ends.
fn follow_script(pidfile: &str, log: &str, wait_s: u32) -> String {
    use crate::quote::quote;
    format!(
        "pf={pf}; log={log}; i=0\n\
         while :; do\n\
         \x20 p=$(cat -- \"$pf\" 2>/dev/null) || p=\n\
         \x20 case $p in ''|*[!0-9]*) ;; *) if tr '\\0' '\\n' < /proc/$p/cmdline 2>/dev/null | grep -qxF -- \"$pf\"; then\n\
         \x20   exec tail -c +0 -F -s 0.2 --pid=\"$p\" -- \"$log\"; fi;; esac\n\
         \x20 [ $i -ge {n} ] && break; i=$((i + 1)); sleep 0.2\n\
         done\n\
         exec tail -c +0 -- \"$log\"",
        pf = quote(pidfile),
        log = quote(log),
        n = wait_s * 5,
    )
}

pub async fn run(g: &GlobalArgs, a: &LogsArgs) -> anyhow::Result<u8> {
    let super::LocatedVm { session: s, node, run_id, vm, run_root } =
        super::locate_vm(g, a.topology.as_deref(), a.run.as_deref(), &a.vm).await?;
    // The path is recomputed, never read from the manifest (root would print any file it named).
    let rd = crate::remote::layout::run_dir(&run_root, &run_id).map_err(anyhow::Error::msg)?;
    let paths = crate::remote::layout::vm_paths(&rd, &vm.name).map_err(anyhow::Error::msg)?;
    eprintln!("== {} {} run {run_id}: {}", node, vm.name, paths.serial_log);
    let cmd = if a.follow {
        RemoteCommand::sh(follow_script(&paths.pidfile, &paths.serial_log, PIDFILE_WAIT_S))
    } else {
        RemoteCommand::new(["tail", "-c", "+0", paths.serial_log.as_str()])
    };
    let mut child = s.spawn(&cmd.sudo().single_process().timeout(std::time::Duration::from_secs(365 * 86400))).await?;
    let mut out = std::io::stdout();
    let mut code = exit::OK;
    // One listener for the whole loop: a `ctrl_c()` made anew each iteration misses a SIGINT
    // that lands between two iterations (while output is written), and since the handler is
    // installed the signal no longer ends the process either: `logs -f` then never returned.
    // SIGTERM too: its default action ended harness without killing the remote `tail -F`.
    let interrupted = crate::run::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            ev = child.next() => match ev {
                Some(ChildEvent::Stdout(b)) => {
                    // The reader went away (`logs -f VM | grep -m1 login:`): the remote
                    // `tail -F` is killed here, as on Ctrl-C. Returning with it left a root
                    // tail running on the host until the VM exited (the runtime dropped the
                    // child's background kill before it ran).
                    if out.write_all(&b).and_then(|()| out.flush()).is_err() {
                        let _ = child.kill().await;
                        break;
                    }
                }
                Some(ChildEvent::Stderr(b)) => {
                    let said = String::from_utf8_lossy(&b);
                    let _ = write!(std::io::stderr(), "{}", crate::report::sanitize::escape_control_lines(&said));
                }
                // No status and the connection gone: lost mid-run, exit 3 (README).
                Some(ChildEvent::Exit(None)) | None if s.is_closed() => { code = exit::UNREACHABLE; break; }
                Some(ChildEvent::Exit(st)) => { if st != Some(0) { code = exit::FAILED; } break; }
                None => break,
            },
            _ = &mut interrupted => { let _ = child.kill().await; code = exit::INTERRUPTED; break; }
        }
    }
    s.close().await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `logs -f` of a VM whose manifest had no pid yet (written while `up` was starting) ran
    /// `tail -F` without `--pid` and followed forever once the VM was gone. The pid now comes
    /// from the pidfile, only if that process names it: the follow ends with the process, and
    /// a VM without a running QEMU gets its log printed and the command ends.
    #[test]
    fn regression_logs_follow_without_a_recorded_pid_ends_with_the_vm() {
        let d = tempfile::tempdir().unwrap();
        let (pf, log) = (d.path().join("qemu.pid"), d.path().join("serial.log"));
        let (pf, log) = (pf.to_str().unwrap(), log.to_str().unwrap());
        std::fs::write(log, "booting\n").unwrap();
        // A stand-in QEMU that names its pidfile, as QEMU's argv does.
        let mut qemu = std::process::Command::new("sh").args(["-c", "sleep 30", "sh", pf]).spawn().unwrap();
        std::fs::write(pf, format!("{}\n", qemu.id())).unwrap();
        let follower = std::process::Command::new("sh")
            .arg("-c")
            .arg(follow_script(pf, log, 1))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        qemu.kill().unwrap();
        qemu.wait().unwrap();
        let t = std::time::Instant::now();
        let out = follower.wait_with_output().unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "followed on after the VM ended");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "booting\n");
        // A pid that is not this VM's QEMU (reused, or the pidfile of a dead VM): not followed.
        std::fs::write(pf, format!("{}\n", std::process::id())).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(follow_script(pf, log, 1)).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout) == "booting\n", "{out:?}");
    }
}
