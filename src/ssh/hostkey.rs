//! Host-key verification against known_hosts, and the russh client handler that runs it.
//!
//! Unknown keys are refused with their SHA256 fingerprint unless accepting new keys was asked
//! for (then they are recorded); a key that differs from the recorded one is always refused.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};

use super::SshError;

/// What to check the server's key against.
#[derive(Debug, Clone)]
pub(crate) struct HostKeyPolicy {
    pub node: String,
    pub addr: String,
    /// Name the key is recorded under (the connect host; `[host]:port` is added for non-22).
    pub host: String,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub accept_new: bool,
}

impl HostKeyPolicy {
    pub fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let kh = self.known_hosts.display().to_string();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(()),
            Ok(false) if self.accept_new => {
                if let Some(dir) = self.known_hosts.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                russh::keys::known_hosts::learn_known_hosts_path(&self.host, self.port, key, &self.known_hosts).map_err(
                    |e| SshError::Config {
                        node: self.node.clone(),
                        message: format!("cannot record host key {fingerprint} in {kh}: {e}"),
                    },
                )
            }
            Ok(false) => Err(SshError::HostKeyUnknown {
                node: self.node.clone(),
                addr: self.addr.clone(),
                fingerprint,
                known_hosts: kh,
            }),
            Err(russh::keys::Error::KeyChanged { line }) => Err(SshError::HostKeyChanged {
                node: self.node.clone(),
                addr: self.addr.clone(),
                fingerprint,
                line: file_line(&self.known_hosts, line),
                known_hosts: kh,
            }),
            Err(e) => Err(SshError::Config { node: self.node.clone(), message: format!("{kh}: {e}") }),
        }
    }
}

/// russh numbers known_hosts entries without counting `#` comment lines; map its number back
/// to the real line of the file so the message points at the right place.
fn file_line(path: &std::path::Path, entry: usize) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else { return entry };
    let mut n = 0;
    for (i, l) in text.lines().enumerate() {
        if !l.starts_with('#') {
            n += 1;
            if n == entry {
                return i + 1;
            }
        }
    }
    entry
}

/// Error type of the russh handler: either russh's own or our host-key verdict.
#[derive(Debug)]
pub(crate) enum HandlerError {
    Russh(russh::Error),
    HostKey(Box<SshError>),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Russh(e)
    }
}

/// The russh client handler: host-key check, and a note of why the connection ended.
pub(crate) struct Client {
    pub policy: HostKeyPolicy,
    /// Set when the server or the transport ends the connection (for `Disconnected` messages).
    pub disconnect: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A CA-signed host key: we do not support @cert-authority; check its plain key.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        self.policy.verify(&key).map_err(|e| HandlerError::HostKey(Box::new(e)))?;
        Ok(true)
    }

    async fn disconnected(&mut self, reason: russh::client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let text = match &reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("server disconnected: {:?} {}", info.reason_code, info.message)
            }
            russh::client::DisconnectReason::Error(e) => format!("{e:?}"),
        };
        if let Ok(mut d) = self.disconnect.lock() {
            d.get_or_insert(text);
        }
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            russh::client::DisconnectReason::Error(e) => Err(e),
        }
    }
}
