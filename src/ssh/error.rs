//! Typed SSH errors. Each names the node and the phase that failed.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{node} ({addr}): connect failed: {message}")]
    Connect { node: String, addr: String, message: String },
    #[error("{node} ({addr}): {phase} timed out after {after:?}")]
    Timeout { node: String, addr: String, phase: &'static str, after: Duration },
    #[error(
        "{node} ({addr}): unknown host key {fingerprint}; to trust it, re-run with --accept-new-host-keys \
         (or set `accept_new_host_key: true` on the node); it will be recorded in {known_hosts}"
    )]
    HostKeyUnknown { node: String, addr: String, fingerprint: String, known_hosts: String },
    #[error(
        "{node} ({addr}): HOST KEY CHANGED: the server offered {fingerprint}, but {known_hosts}:{line} \
         holds a different key. This may be an attack. Refusing to connect; remove the stale entry only \
         if you know why the key changed"
    )]
    HostKeyChanged { node: String, addr: String, fingerprint: String, known_hosts: String, line: usize },
    #[error(
        "{} ({}): HOST KEY CHANGED: the server offered a {} key {}, but {}:{} records this host with \
         a {} key and no {} key. This may be an attack (a downgrade to a key type the attacker holds). \
         Refusing to connect; add the new key by hand only if you know the host has it",
        .0.node, .0.addr, .0.algorithm, .0.fingerprint, .0.known_hosts, .0.line, .0.known, .0.algorithm
    )]
    HostKeyTypeChanged(Box<KeyTypeChange>),
    #[error("{node} ({addr}): host key {fingerprint} is marked @revoked in {known_hosts}:{line}; refusing to connect")]
    HostKeyRevoked { node: String, addr: String, fingerprint: String, known_hosts: String, line: usize },
    #[error("{node} ({addr}): auth failed: {message}")]
    Auth { node: String, addr: String, message: String },
    #[error("{node}: sudo requires a password (passwordless `sudo -n` is needed): {}", short_command(command))]
    SudoPassword { node: String, command: String },
    #[error("{node}: command timed out after {after:?} and was killed: {}", short_command(command))]
    CommandTimeout { node: String, command: String, after: Duration },
    #[error("{node}: command failed (exit {status}): {}: {stderr}", short_command(command))]
    CommandFailed { node: String, command: String, status: String, stderr: String },
    #[error("{node}: connection lost: {message}")]
    Disconnected { node: String, message: String },
    #[error("{node}: channel error: {message}")]
    Channel { node: String, message: String },
    #[error("{node}: {message}")]
    Config { node: String, message: String },
}

/// [`SshError::HostKeyTypeChanged`]'s details (boxed: they would double the size of every
/// `Result<_, SshError>`).
#[derive(Debug)]
pub struct KeyTypeChange {
    pub node: String,
    pub addr: String,
    pub fingerprint: String,
    /// Type of the offered key (`ssh-rsa`).
    pub algorithm: String,
    /// Types recorded for the host (`ssh-ed25519, ecdsa-sha2-nistp256`).
    pub known: String,
    pub known_hosts: String,
    /// 1-based line of the first recorded key.
    pub line: usize,
}

/// A command as error messages show it: its first line, at most 100 characters. Scripts are
/// long and multi-line (and may carry uploaded content); the full text is in `command`.
pub fn short_command(command: &str) -> String {
    let first = command.lines().next().unwrap_or("");
    let mut s: String = first.chars().take(100).collect();
    if s.len() < first.len() || command.lines().nth(1).is_some() {
        s.push_str(" …");
    }
    s
}

impl SshError {
    /// The connection broke while in use (as opposed to never being made).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, SshError::Disconnected { .. })
    }

    /// The node could not be reached or refused us: connect, handshake, host key or auth.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SshError::Connect { .. }
                | SshError::Timeout { .. }
                | SshError::HostKeyUnknown { .. }
                | SshError::HostKeyChanged { .. }
                | SshError::HostKeyTypeChanged(_)
                | SshError::HostKeyRevoked { .. }
                | SshError::Auth { .. }
        )
    }
}
