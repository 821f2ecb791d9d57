//! russh session: connect, authenticate, verify host keys, run commands, upload files.

use std::time::Duration;

use bytes::Bytes;

use super::{ConnectOptions, Output, RemoteCommand, SshError, SshTarget};

/// One authenticated connection to a node. Cheap to clone; channels are opened concurrently.
#[derive(Clone)]
pub struct Session {
    name: String,
}

impl Session {
    pub async fn connect(_target: &SshTarget, _opts: &ConnectOptions) -> Result<Session, SshError> {
        todo!("ssh: connect")
    }
    /// Node name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Run to completion, capturing stdout/stderr/exit status.
    pub async fn run(&self, _cmd: &RemoteCommand) -> Result<Output, SshError> {
        todo!("ssh: run")
    }
    /// Like [`Session::run`] but a nonzero exit becomes [`SshError::CommandFailed`].
    pub async fn run_ok(&self, cmd: &RemoteCommand) -> Result<Output, SshError> {
        let out = self.run(cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(SshError::CommandFailed {
                node: self.name.clone(),
                command: cmd.wire(),
                status: out.status.map(|s| s.to_string()).or(out.signal.clone()).unwrap_or_else(|| "?".into()),
                stderr: out.stderr_str().trim().to_string(),
            })
        }
    }
    /// Start a long-lived command and stream its output (serial followers, socat bridges).
    pub async fn spawn(&self, _cmd: &RemoteCommand) -> Result<RemoteChild, SshError> {
        todo!("ssh: spawn")
    }
    /// Write `content` to `path` atomically: temp file next to it, then chmod + rename.
    pub async fn upload(&self, _content: &[u8], _path: &str, _mode: u32, _sudo: bool) -> Result<(), SshError> {
        todo!("ssh: upload")
    }
    /// Close the connection politely.
    pub async fn close(&self) {}
    pub fn is_closed(&self) -> bool {
        false
    }
    /// Round-trip time of one no-op command, for diagnostics.
    pub async fn ping(&self) -> Result<Duration, SshError> {
        todo!("ssh: ping")
    }
}

/// Output of a [`RemoteChild`], in arrival order.
#[derive(Debug)]
pub enum ChildEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Exit status (or `None` when killed by a signal); no more events follow.
    Exit(Option<u32>),
}

/// A running remote command on its own channel.
pub struct RemoteChild {}

impl RemoteChild {
    /// Next output chunk or the exit; `None` once the channel is closed.
    pub async fn next(&mut self) -> Option<ChildEvent> {
        todo!("ssh: child next")
    }
    pub async fn write_stdin(&mut self, _bytes: &[u8]) -> Result<(), SshError> {
        todo!("ssh: child stdin")
    }
    /// Send EOF on stdin.
    pub async fn close_stdin(&mut self) -> Result<(), SshError> {
        todo!("ssh: child eof")
    }
    /// Terminate the remote process (not just the channel) and close the channel.
    pub async fn kill(&mut self) -> Result<(), SshError> {
        todo!("ssh: child kill")
    }
}
