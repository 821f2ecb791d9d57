//! `harness guest-exec VM [TOPOLOGY] -- CMD ARGS…`: run a program inside a running guest through
//! its agent (QGA `guest-exec`, [`crate::run::guest::exec`]) and behave like that program: its
//! stdout and stderr are printed as they come back, and its exit code becomes ours (a signal
//! `N` becomes `128 + N`, as a shell reports it). Output the agent dropped beyond its capture
//! limit is reported on stderr, so a short output is never mistaken for the whole.

use std::io::Write;

use crate::cli::{GlobalArgs, GuestExecArgs};
use crate::run::qga::ExitStatus;

pub async fn run(g: &GlobalArgs, a: &GuestExecArgs) -> anyhow::Result<u8> {
    let super::LocatedVm { session, node, vm, run_id, run_root } =
        super::locate_vm(g, a.topology.as_deref(), a.run.as_deref(), &a.vm).await?;
    // The agent socket recomputed from the run and VM, and its QEMU alive: never the path the
    // manifest names (the command runs as root in whichever guest that socket leads to).
    let sock = match vm.qga {
        Some(_) => Some(super::live_agent_socket(&session, &run_root, &run_id, &a.vm).await?),
        None => None,
    };
    let res = crate::run::guest::exec(&session, sock.as_deref(), &a.command, a.timeout).await;
    session.close().await;
    // Typed, so an unreachable node exits 3 (`exit_code_for`).
    let out = res.map_err(|e| anyhow::Error::new(e).context(format!("VM {} on {node}", a.vm)))?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(&out.stderr)?;
    for (what, cut) in [("stdout", out.stdout_truncated), ("stderr", out.stderr_truncated)] {
        if cut {
            eprintln!("harness: the guest agent truncated the program's {what} (its capture limit)");
        }
    }
    Ok(exit_code(out.status))
}

/// The program's exit status as our exit code.
fn exit_code(status: ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => u8::try_from(c).unwrap_or(1),
        ExitStatus::Signal(s) => u8::try_from(128 + s).unwrap_or(1),
        ExitStatus::Unknown => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_pass_through_and_signals_are_128_plus() {
        assert_eq!(exit_code(ExitStatus::Code(0)), 0);
        assert_eq!(exit_code(ExitStatus::Code(7)), 7);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
        assert_eq!(exit_code(ExitStatus::Code(-1)), 1);
        assert_eq!(exit_code(ExitStatus::Unknown), 1);
    }
}
