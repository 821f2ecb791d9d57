//! SSH transport: one russh connection per node, many channels on it.
//!
//! Everything that crosses the wire to a DUT goes through [`Session`]: running an argv (quoted by
//! [`crate::quote`]), optionally under `sudo -n`; streaming long-lived commands (serial log
//! followers, socat bridges to QMP/QGA); uploading files atomically. Host keys are verified
//! against known_hosts; connect, handshake+auth and each command have their own timeouts, and
//! errors name the node and the phase that failed.

use std::path::PathBuf;
use std::time::Duration;

use crate::topology::{Auth, Node, Topology};

mod auth;
mod config;
mod error;
mod hostkey;
mod quickack;
pub use error::{KeyTypeChange, SshError};

/// How to reach one node. Built from a topology node (or a `--host` on the command line).
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Node name, used in every message (`DUT1`).
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub auth: Vec<Auth>,
    /// `[user@]host[:port]` of a jump host.
    pub proxy_jump: Option<String>,
    pub known_hosts: Option<PathBuf>,
    /// A jump host's: the known_hosts files of the node it serves (its user files and the
    /// system's), all judged together; empty for a node of the topology.
    pub inherited_known_hosts: Vec<PathBuf>,
    pub accept_new_host_key: bool,
}

impl SshTarget {
    pub fn from_node(node: &Node) -> Self {
        SshTarget {
            name: node.name.clone(),
            host: node.host.clone(),
            port: node.port,
            user: node.username.clone(),
            auth: node.auth.clone(),
            proxy_jump: node.proxy_jump.clone(),
            known_hosts: node.known_hosts.clone(),
            inherited_known_hosts: Vec::new(),
            accept_new_host_key: node.accept_new_host_key,
        }
    }
    /// Like [`SshTarget::from_node`], with a `proxy_jump` that names another node of the
    /// topology replaced by that node's `user@host:port`.
    pub fn for_node(topo: &Topology, node: &Node) -> Self {
        let mut t = Self::from_node(node);
        if let Some(jump) = t.proxy_jump.as_deref().and_then(|j| topo.node(j)).filter(|j| j.name != node.name) {
            let user = jump.username.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
            let port = jump.port.map(|p| format!(":{p}")).unwrap_or_default();
            // An IPv6 address needs brackets, or its last group reads as the port (`::1:22`).
            let host = if jump.host.contains(':') { format!("[{}]", jump.host) } else { jump.host.clone() };
            t.proxy_jump = Some(format!("{user}{host}{port}"));
        }
        t
    }
}

/// Connection-wide settings (command-line flags).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    pub auth_timeout: Duration,
    /// Default per-command timeout when a [`RemoteCommand`] sets none.
    pub command_timeout: Duration,
    pub keepalive_interval: Duration,
    /// `--accept-new-host-keys`: record unknown host keys (never changed ones).
    pub accept_new_host_keys: bool,
    /// `~/.ssh/config` (or `-F FILE`); `None` disables it.
    pub ssh_config: Option<PathBuf>,
    /// Max concurrent channels per connection (below sshd's MaxSessions, default 10).
    pub max_channels: usize,
    /// ssh-agent socket (default `$SSH_AUTH_SOCK`); `None` = do not use an agent.
    pub agent_socket: Option<PathBuf>,
    /// `--max-parallel`: nodes in flight at once (see [`crate::slots`]).
    pub max_parallel: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(20),
            command_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(15),
            accept_new_host_keys: false,
            ssh_config: dirs::home_dir().map(|h| h.join(".ssh/config")),
            max_channels: 8,
            agent_socket: std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).map(PathBuf::from),
            max_parallel: crate::slots::DEFAULT_MAX_PARALLEL,
        }
    }
}

/// A command to run remotely. The argv is quoted element by element; nothing is joined by hand.
#[derive(Debug, Clone, Default)]
pub struct RemoteCommand {
    pub argv: Vec<String>,
    /// Prefix `sudo -n --`; a sudo that wants a password fails with [`SshError::SudoPassword`].
    pub sudo: bool,
    pub stdin: Option<Vec<u8>>,
    /// `None` = the session default; on expiry the remote process is killed and
    /// [`SshError::CommandTimeout`] returned.
    pub timeout: Option<Duration>,
    /// Safe to run twice: when the connection drops, [`Session::run`] reconnects once and retries.
    pub idempotent: bool,
    /// The command is one process that ends on SIGTERM (e.g. `tail -F`): a kill may then be an
    /// SSH `signal` request alone, with no kill script started on the host. Without it (a shell
    /// with children under sudo, which the user's signal cannot reach) the kill script runs.
    pub single_process: bool,
}

impl RemoteCommand {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RemoteCommand { argv: argv.into_iter().map(Into::into).collect(), ..Default::default() }
    }
    /// `sh -c SCRIPT`: for pipelines. The script is one argument, quoted like any other; values
    /// interpolated into it must themselves go through [`crate::quote::quote`].
    pub fn sh(script: impl Into<String>) -> Self {
        Self::new(["sh".to_string(), "-c".to_string(), script.into()])
    }
    pub fn sudo(mut self) -> Self {
        self.sudo = true;
        self
    }
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
    /// See [`RemoteCommand::single_process`].
    pub fn single_process(mut self) -> Self {
        self.single_process = true;
        self
    }
    /// The exact string sent over SSH.
    pub fn wire(&self) -> String {
        let mut argv: Vec<&str> = Vec::new();
        if self.sudo {
            argv.extend(["sudo", "-n", "--"]);
        }
        argv.extend(self.argv.iter().map(String::as_str));
        crate::quote::join(&argv)
    }
}

/// Result of a finished remote command. A nonzero exit is not an error at this level.
#[derive(Debug, Clone)]
pub struct Output {
    /// `None` when the process died by a signal (see `signal`) or no status was sent.
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

mod session;
pub mod transport;
pub use session::{ChildEvent, Put, RemoteChild, Session, UPLOAD_MANY_MAX, handshake_retries_total};

/// The summary line `exec` always prints, and `up` whenever a handshake was retried.
pub fn retries_line(n: u64) -> String {
    format!("harness: {n} SSH handshake(s) dropped by a server and retried")
}
pub use transport::{Channel, Transport};
#[cfg(test)]
pub mod fake;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixture::{dut, topology};

    #[test]
    fn regression_ipv6_jump_host_by_node_name_unbracketed() {
        let mut jump = dut("JUMP");
        jump.host = "::1".into();
        jump.username = Some("lab".into());
        jump.port = Some(22);
        let mut d = dut("DUT1");
        d.proxy_jump = Some("JUMP".into());
        let topo = topology(vec![jump.clone(), d.clone()], vec![]);
        let t = SshTarget::for_node(&topo, &d);
        assert_eq!(t.proxy_jump.as_deref(), Some("lab@[::1]:22"));
        assert_eq!(config::parse_jump(t.proxy_jump.as_deref().unwrap()), (Some("lab".into()), "::1".into(), Some(22)));
        // Without a port: still bracketed, and read back as the whole address.
        jump.port = None;
        let topo = topology(vec![jump, d.clone()], vec![]);
        let t = SshTarget::for_node(&topo, &d);
        assert_eq!(t.proxy_jump.as_deref(), Some("lab@[::1]"));
        assert_eq!(config::parse_jump("lab@[::1]"), (Some("lab".into()), "::1".into(), None));
    }
}
