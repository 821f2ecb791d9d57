//! `harness logs VM [TOPOLOGY] [--run ID] [-f]`: print or follow a VM's serial log. Ctrl-C or
//! SIGTERM ends it with exit 130, a closed stdout with 0, both after the remote `tail` is
//! killed; a connection lost on the way is exit 3.

use std::io::Write;

use crate::cli::{GlobalArgs, LogsArgs};
use crate::exit;
use crate::ssh::{ChildEvent, RemoteCommand};

pub async fn run(g: &GlobalArgs, a: &LogsArgs) -> anyhow::Result<u8> {
    let super::LocatedVm { session: s, node, run_id, vm, run_root } =
        super::locate_vm(g, a.topology.as_deref(), a.run.as_deref(), &a.vm).await?;
    // The path is recomputed, never read from the manifest (root would print any file it named).
    let rd = crate::remote::layout::run_dir(&run_root, &run_id).map_err(anyhow::Error::msg)?;
    let serial_log = crate::remote::layout::vm_paths(&rd, &vm.name).map_err(anyhow::Error::msg)?.serial_log;
    eprintln!("== {} {} run {run_id}: {}", node, vm.name, serial_log);
    let mut argv = vec!["tail".to_string(), "-c".into(), "+0".into()];
    if a.follow {
        argv.extend(["-F".into(), "-s".into(), "0.2".into()]);
        if let Some(pid) = vm.pid {
            argv.push(format!("--pid={pid}"));
        }
    }
    argv.push(serial_log);
    let mut child = s
        .spawn(&RemoteCommand::new(argv).sudo().single_process().timeout(std::time::Duration::from_secs(365 * 86400)))
        .await?;
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
