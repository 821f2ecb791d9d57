//! A remote command's stdin/stdout as a local `AsyncRead + AsyncWrite` stream.
//!
//! QMP and QGA sockets on a node are root-owned unix sockets; the portable way to reach them is
//! one SSH channel running `sudo -n socat - UNIX-CONNECT:<sock>` (ssh-qga-notes C.7). The QMP and
//! QGA clients are written against plain async streams, so this module pumps the channel into a
//! tokio duplex pipe. Closing the bridge kills the remote socat: a QEMU chardev serves one client
//! at a time, and a lingering socat would block the next connection (lab-notes §3, pitfall 2).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use crate::ssh::{ChildEvent, RemoteCommand, Session, SshError};

pub struct Bridge {
    stream: Option<DuplexStream>,
    /// What the remote command said on stderr (its first 4 KiB): socat's reason for ending.
    pump: JoinHandle<Vec<u8>>,
}

impl Bridge {
    /// Start `cmd` and bridge its stdio.
    pub async fn open(session: &Session, cmd: RemoteCommand) -> Result<Bridge, SshError> {
        let mut child = session.spawn(&cmd).await?;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let pump = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(theirs);
            let mut buf = vec![0u8; 16 * 1024];
            let mut stderr = Vec::new();
            loop {
                tokio::select! {
                    ev = child.next() => match ev {
                        Some(ChildEvent::Stdout(b)) => {
                            if wr.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        Some(ChildEvent::Stderr(b)) => {
                            stderr.extend_from_slice(&b[..b.len().min(4096usize.saturating_sub(stderr.len()))]);
                        }
                        Some(ChildEvent::Exit(_)) | None => break,
                    },
                    n = rd.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if child.write_stdin(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    },
                }
            }
            let _ = wr.shutdown().await;
            let _ = child.kill().await;
            stderr
        });
        Ok(Bridge { stream: Some(ours), pump })
    }

    /// `sudo -n socat - UNIX-CONNECT:<path>`. A path socat would parse as options (`,`, `:`,
    /// ...) is refused, never passed on.
    pub async fn unix_socket(session: &Session, path: &str) -> Result<Bridge, SshError> {
        let addr = crate::quote::socat_unix_address(path).map_err(|e| SshError::CommandFailed {
            node: session.name().to_string(),
            command: "socat".into(),
            status: "-".into(),
            stderr: e.to_string(),
        })?;
        Self::open(session, socat_command(&addr)).await
    }

    /// The local end. Taken once; the bridge keeps pumping until it is dropped or closed.
    pub fn stream(&mut self) -> DuplexStream {
        self.stream.take().expect("bridge stream taken once")
    }

    /// Close our end and wait (briefly) until the remote socat is gone. Returns what it said on
    /// stderr (escaped), for errors.
    pub async fn close(mut self) -> String {
        self.stream.take();
        match tokio::time::timeout(Duration::from_secs(5), &mut self.pump).await {
            Ok(Ok(said)) => crate::report::sanitize::escape_control(&String::from_utf8_lossy(&said)).into_owned(),
            _ => String::new(),
        }
    }
}

/// `socat` is one process that ends on SIGTERM, and sudo relays the SSH `signal` request to it:
/// closing a bridge then starts no kill script (another sudo) on the host.
fn socat_command(addr: &str) -> RemoteCommand {
    RemoteCommand::new(["socat", "-", addr]).sudo().single_process()
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping our end makes the pump see EOF, kill the remote process and exit on its own.
        self.stream.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_is_closed_by_a_signal_not_a_kill_script() {
        let cmd = socat_command("UNIX-CONNECT:/run/harness/r/DUT1_1/qga.sock");
        assert!(cmd.sudo && cmd.single_process);
        assert_eq!(cmd.argv, ["socat", "-", "UNIX-CONNECT:/run/harness/r/DUT1_1/qga.sock"]);
    }
}
