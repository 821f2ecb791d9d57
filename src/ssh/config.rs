//! Resolve an [`SshTarget`] against `~/.ssh/config`: the effective address, user, identities,
//! jump host and host-key policy. Values from the topology win over the config file, as an
//! explicit `-p`/`-l` wins over the config in OpenSSH.

use std::path::{Path, PathBuf};

use super::{ConnectOptions, SshError, SshTarget};

/// Everything needed to open one connection, after config resolution.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Address to connect to (HostName from the config, else the target's host).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// `IdentityFile` entries of the config (tried after the topology's own identities).
    pub config_identities: Vec<PathBuf>,
    pub proxy_jump: Option<String>,
    pub known_hosts: PathBuf,
    /// Record unknown host keys instead of refusing.
    pub accept_new: bool,
}

impl Resolved {
    /// `host:port` as shown in messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn expand_tilde(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), dirs::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_path_buf(),
    }
}

pub(crate) fn resolve(target: &SshTarget, opts: &ConnectOptions) -> Result<Resolved, SshError> {
    let hc = match &opts.ssh_config {
        Some(path) if path.exists() => match russh_config::parse_path(path, &target.host) {
            Ok(c) => c.host_config,
            // No matching `Host` block (or options before the first one): nothing applies.
            Err(russh_config::Error::HostNotFound) => Default::default(),
            Err(e) => {
                return Err(SshError::Config {
                    node: target.name.clone(),
                    message: format!("{}: {e}", path.display()),
                });
            }
        },
        _ => Default::default(),
    };
    let host = hc.hostname.clone().unwrap_or_else(|| target.host.clone());
    let port = target.port.or(hc.port).unwrap_or(22);
    let user = target
        .user
        .clone()
        .or(hc.user.clone())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_string());
    let config_identities = hc.identity_file.clone().unwrap_or_default().iter().map(|p| expand_tilde(p)).collect();
    let proxy_jump = target.proxy_jump.clone().or(hc.proxy_jump.clone()).filter(|j| !j.is_empty() && j != "none");
    let known_hosts = target
        .known_hosts
        .as_deref()
        .or(hc.user_known_hosts_file.as_deref())
        .map(expand_tilde)
        .or_else(|| dirs::home_dir().map(|h| h.join(".ssh/known_hosts")))
        .ok_or_else(|| SshError::Config {
            node: target.name.clone(),
            message: "no known_hosts file: set `known_hosts` on the node (no home directory)".into(),
        })?;
    // russh-config maps `StrictHostKeyChecking accept-new` (and `yes`) to true and `no` to false;
    // we only ever relax to "accept new", never to "accept changed".
    let accept_new =
        opts.accept_new_host_keys || target.accept_new_host_key || hc.strict_host_key_checking == Some(false);
    Ok(Resolved { host, port, user, config_identities, proxy_jump, known_hosts, accept_new })
}

/// Parse one ProxyJump hop, `[user@]host[:port]` (IPv6 as `[addr]:port`).
pub(crate) fn parse_jump(spec: &str) -> (Option<String>, String, Option<u16>) {
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, spec),
    };
    if let Some(r) = rest.strip_prefix('[')
        && let Some((h, tail)) = r.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (user, h.to_string(), port);
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (user, h.to_string(), Some(port)),
            Err(_) => (user, rest.to_string(), None),
        },
        _ => (user, rest.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_specs() {
        assert_eq!(parse_jump("jump"), (None, "jump".into(), None));
        assert_eq!(parse_jump("u@jump:2222"), (Some("u".into()), "jump".into(), Some(2222)));
        assert_eq!(parse_jump("[::1]:2201"), (None, "::1".into(), Some(2201)));
        assert_eq!(parse_jump("u@127.0.0.1"), (Some("u".into()), "127.0.0.1".into(), None));
    }

    #[test]
    fn config_file_fills_gaps_but_topology_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host dut\n  HostName 10.9.8.7\n  User cfguser\n  Port 2222\n  IdentityFile ~/.ssh/lab_key\n  ProxyJump bastion\n  UserKnownHostsFile /tmp/kh\n  StrictHostKeyChecking accept-new\n",
        )
        .unwrap();
        let opts = ConnectOptions { ssh_config: Some(cfg), ..ConnectOptions::default() };
        let mut t = SshTarget {
            name: "DUT1".into(),
            host: "dut".into(),
            port: None,
            user: None,
            auth: vec![],
            proxy_jump: None,
            known_hosts: None,
            accept_new_host_key: false,
        };
        let r = resolve(&t, &opts).unwrap();
        assert_eq!((r.host.as_str(), r.port, r.user.as_str()), ("10.9.8.7", 2222, "cfguser"));
        assert_eq!(r.proxy_jump.as_deref(), Some("bastion"));
        assert_eq!(r.known_hosts, PathBuf::from("/tmp/kh"));
        assert!(r.config_identities[0].ends_with(".ssh/lab_key"));
        assert!(!r.config_identities[0].starts_with("~"));
        t.port = Some(22);
        t.user = Some("topo".into());
        let r = resolve(&t, &opts).unwrap();
        assert_eq!((r.port, r.user.as_str()), (22, "topo"));
        t.host = "other".into();
        let r = resolve(&t, &opts).unwrap();
        assert_eq!(r.host, "other");
        assert!(r.proxy_jump.is_none());
    }
}
