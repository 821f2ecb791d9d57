//! The seam under [`Session`](super::Session): what a node connection must do for everything
//! above the SSH layer (`up`'s stages, `down`, `check`): start a command on a channel, stream
//! its output and exit status, feed its stdin, kill it. russh implements it in
//! [`super::session`]; [`super::fake`] is an in-process host that scripts answers, so the
//! orchestration (cleanup order, lost nodes, interrupts, hugepage bookkeeping) is unit-tested
//! without sshd or QEMU. The real e2e tests still run against both.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{ChildEvent, Output, RemoteCommand, SshError};

/// A way to run commands on one node.
pub trait Transport: Send + Sync {
    /// `host:port` (or a name) for messages.
    fn addr(&self) -> &str;
    /// Start `cmd` on a new channel.
    fn start<'a>(&'a self, cmd: &'a RemoteCommand) -> BoxFuture<'a, Result<Box<dyn Channel>, SshError>>;
    fn is_closed(&self) -> bool;
    fn close(&self) {}
}

/// One running command.
pub trait Channel: Send {
    fn pid(&self) -> Option<u32>;
    /// Next output chunk or the exit; `None` after the exit.
    fn next(&mut self) -> BoxFuture<'_, Option<ChildEvent>>;
    fn write_stdin<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), SshError>>;
    fn close_stdin(&mut self) -> BoxFuture<'_, Result<(), SshError>>;
    fn kill(&mut self) -> BoxFuture<'_, Result<(), SshError>>;
}

/// Run `cmd` to completion on `t`, within its timeout (or `default_timeout`).
pub(super) async fn run(
    t: &dyn Transport,
    node: &str,
    cmd: &RemoteCommand,
    default_timeout: Duration,
) -> Result<Output, SshError> {
    let after = cmd.timeout.unwrap_or(default_timeout);
    let timed_out = || SshError::CommandTimeout { node: node.to_string(), command: cmd.wire(), after };
    let collect = async {
        let mut ch = t.start(cmd).await?;
        let mut out = Output { status: None, signal: None, stdout: Vec::new(), stderr: Vec::new() };
        if let Some(input) = &cmd.stdin {
            ch.write_stdin(input).await?;
            ch.close_stdin().await?;
        }
        while let Some(ev) = ch.next().await {
            match ev {
                ChildEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                ChildEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                ChildEvent::Exit(status) => out.status = status,
            }
        }
        Ok::<_, SshError>(out)
    };
    tokio::time::timeout(after, collect).await.map_err(|_| timed_out())?
}
