//! Running a program inside a guest through its agent: QGA `guest-exec` over one bridged
//! socket (`sudo socat` on the node), output captured and decoded, exit status passed through.
//! Used by `harness guest-exec`, by `collect:` commands and by tests.

use std::time::Duration;

use super::bridge::Bridge;
use super::qga::{ExecOutput, Qga, QgaError};
use crate::ssh::{Session, SshError};

#[derive(Debug, thiserror::Error)]
pub enum GuestExecError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Qga(#[from] QgaError),
    #[error("the VM has no guest agent socket (set `qga: true` on it)")]
    NoAgent,
    #[error("nothing to run")]
    NoCommand,
}

/// Run `argv` in the guest whose agent listens on `qga_sock` (on the node behind `session`),
/// waiting at most `timeout` for it to exit.
pub async fn exec(
    session: &Session,
    qga_sock: Option<&str>,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecOutput, GuestExecError> {
    let sock = qga_sock.ok_or(GuestExecError::NoAgent)?;
    let (path, args) = argv.split_first().ok_or(GuestExecError::NoCommand)?;
    let mut bridge = Bridge::unix_socket(session, sock).await?;
    let mut qga = Qga::new(bridge.stream());
    let res = async {
        qga.sync(timeout.min(Duration::from_secs(10))).await?;
        qga.exec(path, args, timeout).await
    }
    .await;
    drop(qga);
    bridge.close().await;
    Ok(res?)
}
