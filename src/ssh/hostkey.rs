//! Host-key verification against known_hosts, and the russh client handler that runs it.
//!
//! Unknown keys are refused with their SHA256 fingerprint unless accepting new keys was asked
//! for (then they are recorded); a key that differs from the recorded one is always refused.
//! The file is read here rather than by russh, whose reader splits on single spaces only (tabs
//! are legal), ignores `@revoked` markers and only compares keys of the offered type: a host
//! known by its ed25519 key that suddenly offers an RSA key counted as "unknown" and was
//! recorded under `--accept-new-host-keys`, which is exactly the downgrade an attacker holding
//! some RSA key wants. As in OpenSSH, such a host is "changed" unless the offered type is known
//! too, and a revoked key is refused whatever the flags say.
//!
//! `UserKnownHostsFile` may list several files (OpenSSH's default is `~/.ssh/known_hosts
//! ~/.ssh/known_hosts2`): their entries are judged together, as OpenSSH does (a key any file
//! records is known; else a recorded key of its type makes it changed; `@revoked` anywhere wins),
//! and new keys are recorded in the first.
//!
//! A new key is recorded under an exclusive `flock` of that file, after judging the host again:
//! nodes sharing a host, or two harness runs, may accept a key at once. The line is written,
//! flushed and synced here, and a failure is an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use data_encoding::BASE64;
use russh::keys::{Algorithm, HashAlg, PublicKey, PublicKeyOrCertificate};

use super::SshError;
use super::error::KeyTypeChange;

/// What to check the server's key against.
#[derive(Debug, Clone)]
pub(crate) struct HostKeyPolicy {
    pub node: String,
    pub addr: String,
    /// Name the key is recorded under (the connect host; `[host]:port` is added for non-22).
    pub host: String,
    pub port: u16,
    /// The known_hosts files, never empty: all are read, new keys go to the first.
    pub known_hosts: Vec<PathBuf>,
    pub accept_new: bool,
}

/// A known_hosts line that names the host we connect to.
#[derive(Debug, Clone)]
pub(crate) struct KnownKey {
    /// Index of its file in [`HostKeyPolicy::known_hosts`].
    pub file: usize,
    /// 1-based line in the file (comments counted).
    pub line: usize,
    pub revoked: bool,
    pub key: PublicKey,
}

/// The verdict on an offered key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Known,
    Unknown,
    /// A key of the same type is recorded and differs.
    Changed {
        file: usize,
        line: usize,
    },
    /// The host is known only by keys of other types.
    TypeChanged {
        file: usize,
        line: usize,
        known: String,
    },
    Revoked {
        file: usize,
        line: usize,
    },
}

/// The name a host is looked up and recorded under: `host`, or `[host]:port` for a port other
/// than 22. A host name (not an address) is lowercased first, as OpenSSH does before matching
/// and before hashing (`HashKnownHosts`): a hashed entry it wrote for `dut1.lab` must match a
/// topology saying `DUT1.lab`.
fn host_port(host: &str, port: u16) -> String {
    let host = if host.parse::<std::net::IpAddr>().is_ok() { host.to_string() } else { host.to_ascii_lowercase() };
    if port == 22 { host } else { format!("[{host}]:{port}") }
}

/// `*` and `?` glob of OpenSSH host patterns (host names: ASCII case ignored).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    glob_match(pattern, text, true)
}

/// `*` and `?` glob, for host patterns here and `Include` file names in [`super::config`].
pub(crate) fn glob_match(pattern: &[u8], text: &[u8], ignore_case: bool) -> bool {
    let same = |p: &u8, t: &u8| if ignore_case { p.eq_ignore_ascii_case(t) } else { p == t };
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], text, ignore_case)
                || (!text.is_empty() && glob_match(pattern, &text[1..], ignore_case))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &text[1..], ignore_case),
        (Some(p), Some(t)) if same(p, t) => glob_match(&pattern[1..], &text[1..], ignore_case),
        _ => false,
    }
}

/// Does a `|1|salt|hash` entry (HMAC-SHA1 of the name, `ssh-keygen -H`) name `name`?
fn hashed_match(entry: &str, name: &str) -> bool {
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
    let (Ok(salt), Ok(hash)) = (BASE64.decode(salt.as_bytes()), BASE64.decode(hash.as_bytes())) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// OpenSSH's host list semantics: comma-separated patterns, `!pattern` vetoes the line.
fn hosts_match(list: &str, name: &str) -> bool {
    if list.starts_with("|1|") {
        return hashed_match(list, name);
    }
    let mut matched = false;
    for p in list.split(',') {
        // Patterns are too short for the glob's backtracking to matter; guard against a
        // pathological line anyway.
        if p.len() > 1024 {
            continue;
        }
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// Every key recorded for `host`:`port` in `text` (a known_hosts file), in file order.
/// Lines that do not parse are skipped, as OpenSSH does; `@cert-authority` lines are ignored
/// (not supported).
pub(crate) fn known_keys(text: &str, host: &str, port: u16) -> Vec<KnownKey> {
    let name = host_port(host, port);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut fields = raw.split_ascii_whitespace();
        let Some(mut first) = fields.next() else { continue };
        if first.starts_with('#') {
            continue;
        }
        let mut revoked = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                _ => continue,
            }
            let Some(f) = fields.next() else { continue };
            first = f;
        }
        let (Some(_kind), Some(b64)) = (fields.next(), fields.next()) else { continue };
        if !hosts_match(first, &name) {
            continue;
        }
        if let Ok(key) = russh::keys::parse_public_key_base64(b64) {
            out.push(KnownKey { file: 0, line: i + 1, revoked, key });
        }
    }
    out
}

/// Same key type, for "is this type known": RSA keys are one type whatever signature hash.
fn same_type(a: &Algorithm, b: &Algorithm) -> bool {
    matches!((a, b), (Algorithm::Rsa { .. }, Algorithm::Rsa { .. })) || a == b
}

/// Judge `key` against the recorded keys of its host.
pub(crate) fn judge(known: &[KnownKey], key: &PublicKey) -> Verdict {
    let data = key.key_data();
    if let Some(k) = known.iter().find(|k| k.revoked && k.key.key_data() == data) {
        return Verdict::Revoked { file: k.file, line: k.line };
    }
    let plain: Vec<&KnownKey> = known.iter().filter(|k| !k.revoked).collect();
    if plain.iter().any(|k| k.key.key_data() == data) {
        return Verdict::Known;
    }
    let alg = key.algorithm();
    if let Some(k) = plain.iter().find(|k| same_type(&k.key.algorithm(), &alg)) {
        return Verdict::Changed { file: k.file, line: k.line };
    }
    match plain.first() {
        Some(k) => {
            let mut types: Vec<String> = plain.iter().map(|k| k.key.algorithm().as_str().to_string()).collect();
            types.dedup();
            Verdict::TypeChanged { file: k.file, line: k.line, known: types.join(", ") }
        }
        None => Verdict::Unknown,
    }
}

/// The host-key algorithms to offer, known types first: a host recorded with an RSA key must
/// not be asked for its ed25519 key first (it would look "changed"), as OpenSSH orders
/// HostKeyAlgorithms by the known_hosts entries.
pub(crate) fn preferred_key_order(known: &[KnownKey]) -> Vec<Algorithm> {
    let defaults: &[Algorithm] = &russh::Preferred::DEFAULT.key;
    let is_known = |a: &Algorithm| known.iter().any(|k| !k.revoked && same_type(&k.key.algorithm(), a));
    let mut out: Vec<Algorithm> = defaults.iter().filter(|a| is_known(a)).cloned().collect();
    out.extend(defaults.iter().filter(|a| !is_known(a)).cloned());
    out
}

/// Read the recorded keys of `host`:`port` from every file of `paths` (in order, each key
/// tagged with its file's index); a missing file knows nothing, nor does a device such as
/// /dev/null (/dev/zero or /dev/full would be read forever). Errors are `path: error`.
pub(crate) fn read_known_keys(paths: &[PathBuf], host: &str, port: u16) -> Result<Vec<KnownKey>, String> {
    let mut out = Vec::new();
    for (file, path) in paths.iter().enumerate() {
        if std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())) {
            continue;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // The system's files are read as OpenSSH reads them: one we may not read is skipped.
            Err(_) if super::config::GLOBAL_KNOWN_HOSTS.iter().any(|g| path == Path::new(g)) => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        out.extend(known_keys(&text, host, port).into_iter().map(|k| KnownKey { file, ..k }));
    }
    Ok(out)
}

impl HostKeyPolicy {
    pub fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let first = self.first()?;
        let known = self.read()?;
        match judge(&known, key) {
            Verdict::Unknown if self.accept_new => self.record(first, key),
            verdict => self.outcome(verdict, key),
        }
    }

    /// The file new keys are recorded in.
    fn first(&self) -> Result<&Path, SshError> {
        self.known_hosts
            .first()
            .map(PathBuf::as_path)
            .ok_or_else(|| SshError::Config { node: self.node.clone(), message: "no known_hosts file".into() })
    }

    /// The recorded keys of the host, from every file.
    fn read(&self) -> Result<Vec<KnownKey>, SshError> {
        read_known_keys(&self.known_hosts, &self.host, self.port)
            .map_err(|message| SshError::Config { node: self.node.clone(), message })
    }

    /// Record `key` in `first`. Under an exclusive lock on the file the host is judged again: a
    /// node sharing this host, or another harness run, may have recorded a key since our
    /// judgement. The same key is not written twice; a different one makes ours a changed key.
    fn record(&self, first: &Path, key: &PublicKey) -> Result<(), SshError> {
        let fail = |e: String| SshError::Config {
            node: self.node.clone(),
            message: format!("cannot record host key {} in {}: {e}", key.fingerprint(HashAlg::Sha256), first.display()),
        };
        if let Some(dir) = first.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut file = lock_known_hosts(first).map_err(|e| fail(e.to_string()))?;
        match judge(&self.read()?, key) {
            Verdict::Unknown => {}
            verdict => return self.outcome(verdict, key),
        }
        // A last line without its newline must not swallow ours.
        let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut last = [b'\n'];
        if len > 0 {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1).map_err(|e| fail(e.to_string()))?;
        }
        let openssh = key.to_openssh().map_err(|e| fail(e.to_string()))?;
        let line =
            format!("{}{} {openssh}\n", if last[0] == b'\n' { "" } else { "\n" }, host_port(&self.host, self.port));
        append(&mut file, line.as_bytes()).map_err(|e| fail(e.to_string()))
    }

    /// What a verdict means for the connection (`Unknown` here: not to be recorded).
    fn outcome(&self, verdict: Verdict, key: &PublicKey) -> Result<(), SshError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        // Where a verdict's line is: the file that says so.
        let file = |i: usize| self.known_hosts.get(i).map(|p| p.display().to_string()).unwrap_or_default();
        match verdict {
            Verdict::Known => Ok(()),
            Verdict::Unknown => Err(SshError::HostKeyUnknown {
                node: self.node.clone(),
                addr: self.addr.clone(),
                fingerprint,
                known_hosts: file(0),
            }),
            Verdict::Changed { file: f, line } => Err(SshError::HostKeyChanged {
                node: self.node.clone(),
                addr: self.addr.clone(),
                fingerprint,
                line,
                known_hosts: file(f),
            }),
            Verdict::TypeChanged { file: f, line, known } => {
                Err(SshError::HostKeyTypeChanged(Box::new(KeyTypeChange {
                    node: self.node.clone(),
                    addr: self.addr.clone(),
                    fingerprint,
                    algorithm: key.algorithm().as_str().to_string(),
                    known,
                    line,
                    known_hosts: file(f),
                })))
            }
            Verdict::Revoked { file: f, line } => Err(SshError::HostKeyRevoked {
                node: self.node.clone(),
                addr: self.addr.clone(),
                fingerprint,
                line,
                known_hosts: file(f),
            }),
        }
    }
}

/// `path` opened for appending and exclusively `flock`ed. A file replaced meanwhile (`ssh-keygen
/// -R` renames a new one in) is opened again: the lock must be on the file that is read and
/// written. A device (`UserKnownHostsFile /dev/null`) is not locked: it holds no entries to race
/// on and its lock would be shared with the whole system.
fn lock_known_hosts(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    loop {
        let file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let ours = file.metadata()?;
        if !ours.is_file() {
            return Ok(file);
        }
        // SAFETY: flock on a descriptor we own; the lock goes with it when the file is dropped.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        match std::fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (ours.dev(), ours.ino()) => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // The system's files are read as OpenSSH reads them: one we may not read is skipped.
            Err(_) if super::config::GLOBAL_KNOWN_HOSTS.iter().any(|g| path == Path::new(g)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Append `bytes` and make them durable. Every failure is returned: a full disk may only show
/// at the flush or the sync (russh's writer flushed in `Drop` and reported a lost key as
/// recorded).
fn append(file: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    file.write_all(bytes)?;
    file.flush()?;
    // A device (/dev/null) has nothing to sync and refuses fsync.
    if file.metadata()?.is_file() {
        file.sync_data()?;
    }
    Ok(())
}

/// Error type of the russh handler: either russh's own or our host-key verdict.
#[derive(Debug)]
pub(crate) enum HandlerError {
    Russh(russh::Error),
    HostKey(Box<SshError>),
}

/// For people: russh's own messages, with the common "peer went away" cases said plainly
/// (never Rust debug output such as `Russh(IO(Custom { kind: UnexpectedEof, .. }))`).
impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Russh(russh::Error::IO(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                write!(f, "the server closed the connection ({e})")
            }
            HandlerError::Russh(e) => write!(f, "{e}"),
            HandlerError::HostKey(e) => write!(f, "{e}"),
        }
    }
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
            russh::client::DisconnectReason::Error(e) => e.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const E1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICW27ihs5A2DK/ObKy2QG2aauyEkn4TjjUOfUkbtAEW9";
    const E2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO9UrFM+7k+euIwYRLyrDKK2TiTZZ1w5GG8Y1hq7TZng";
    const R1: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDXa2c0ubcSvcHGjH1R1bP3JisidmPov2FBb04SRvq+MAp2ARa8lFOM2FehwaSHHH5yfDbyAJRQRTV0ZHaGyrkhPH9kjwU9ezpIM8CFNelnKncEQgmnYi9CgD9SqNGG8tosaFk3dclsuHoH8utUP/Mh5BfLYXgvqjg8NAp9siAVZw==";
    const C1: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOlMqR3JwU/mO1taJuyDP8TGGn7tFOUrqD0mrg7O+aO0qJnldbKxg/Cp9lONuuI7q1/cKFRf2cMH5pK0O+MwiFU=";

    fn key(line: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(line.split(' ').nth(1).unwrap()).unwrap()
    }

    /// The policy against a temp known_hosts file with `text`, accepting new keys.
    fn policy(text: &str) -> (tempfile::TempDir, HostKeyPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).unwrap();
        let p = HostKeyPolicy {
            node: "DUT1".into(),
            addr: "10.0.0.2:22".into(),
            host: "10.0.0.2".into(),
            port: 22,
            known_hosts: vec![path],
            accept_new: true,
        };
        (dir, p)
    }

    /// `UserKnownHostsFile /dev/null` + `StrictHostKeyChecking no` failed every connection:
    /// "cannot record host key … failed to fill whole buffer".
    #[test]
    fn regression_accepting_into_dev_null_records_nothing_and_connects() {
        let (_d, mut p) = policy("");
        p.known_hosts = vec!["/dev/null".into()];
        p.verify(&key(E1)).unwrap();
        p.accept_new = false;
        assert!(matches!(p.verify(&key(E1)), Err(SshError::HostKeyUnknown { .. })));
    }

    #[test]
    fn known_unknown_and_changed() {
        let text = format!("# c\n10.0.0.2 {E1}\n");
        let known = known_keys(&text, "10.0.0.2", 22);
        assert_eq!(judge(&known, &key(E1)), Verdict::Known);
        assert_eq!(judge(&known, &key(E2)), Verdict::Changed { file: 0, line: 2 });
        assert_eq!(judge(&known_keys(&text, "10.0.0.3", 22), &key(E2)), Verdict::Unknown);
        // Non-22 ports are recorded as [host]:port and only match that way.
        assert_eq!(judge(&known_keys(&text, "10.0.0.2", 2222), &key(E1)), Verdict::Unknown);
    }

    #[test]
    fn regression_host_key_of_another_type_counts_as_unknown() {
        // Known by ed25519; the server (or an attacker) now offers RSA: refused, never recorded.
        let (_d, p) = policy(&format!("10.0.0.2 {E1}\n"));
        let err = p.verify(&key(R1)).unwrap_err();
        match &err {
            SshError::HostKeyTypeChanged(c) => {
                assert_eq!((c.line, c.known.as_str(), c.algorithm.as_str()), (1, "ssh-ed25519", "ssh-rsa"))
            }
            e => panic!("expected HostKeyTypeChanged, got {e}"),
        }
        assert!(err.is_unreachable());
        assert_eq!(std::fs::read_to_string(&p.known_hosts[0]).unwrap().lines().count(), 1, "must not record");
        // When that type is known too, its key is simply checked.
        let (_d, p) = policy(&format!("10.0.0.2 {E1}\n10.0.0.2 {R1}\n"));
        p.verify(&key(R1)).unwrap();
        assert!(matches!(p.verify(&key(C1)), Err(SshError::HostKeyTypeChanged(_))));
    }

    #[test]
    fn regression_revoked_host_key_counts_as_unknown() {
        let (_d, p) = policy(&format!("@revoked 10.0.0.2 {E2}\n"));
        match p.verify(&key(E2)) {
            Err(SshError::HostKeyRevoked { line: 1, .. }) => {}
            r => panic!("expected HostKeyRevoked, got {r:?}"),
        }
        assert_eq!(std::fs::read_to_string(&p.known_hosts[0]).unwrap().lines().count(), 1, "must not record");
        // Revoked wins over a plain entry of the same key; wildcards apply to markers too.
        let (_d, p) = policy(&format!("10.0.0.2 {E2}\n@revoked * {E2}\n"));
        assert!(matches!(p.verify(&key(E2)), Err(SshError::HostKeyRevoked { line: 2, .. })));
        // A revoked key does not make other keys "known" or "changed".
        let (_d, p) = policy(&format!("@revoked 10.0.0.2 {E2}\n"));
        p.verify(&key(E1)).unwrap();
        assert!(std::fs::read_to_string(&p.known_hosts[0]).unwrap().contains(E1), "new key recorded");
    }

    #[test]
    fn regression_tab_separated_known_hosts_lines_are_ignored() {
        let text = format!("10.0.0.2\t{}\n", E1.replace(' ', "\t"));
        let known = known_keys(&text, "10.0.0.2", 22);
        assert_eq!(known.len(), 1);
        assert_eq!(judge(&known, &key(E2)), Verdict::Changed { file: 0, line: 1 });
        let (_d, p) = policy(&text);
        assert!(matches!(p.verify(&key(E2)), Err(SshError::HostKeyChanged { line: 1, .. })));
    }

    #[test]
    fn patterns_negation_and_hashed_entries() {
        let text = format!(
            "*.lab,!bad.lab {E1}\n10.0.0.?,dut {R1}\n|1|8KYRheUGKI03cFL62GiD0KWpSPQ=|TgSSWz0M26AuqVcq/kICWmi7vqA= {E2}\nbroken-line\nh ssh-ed25519 !!notbase64\n@cert-authority * {C1}\n"
        );
        assert_eq!(known_keys(&text, "a.lab", 22).len(), 1);
        assert_eq!(known_keys(&text, "bad.lab", 22).len(), 0);
        assert_eq!(known_keys(&text, "10.0.0.7", 22)[0].line, 2);
        assert_eq!(known_keys(&text, "DUT", 22).len(), 1, "host names are case-insensitive");
        let hashed = known_keys(&text, "dut.example", 2222);
        assert_eq!((hashed.len(), hashed[0].line), (1, 3));
        assert!(known_keys(&text, "dut.example", 22).is_empty());
        assert!(known_keys(&text, "h", 22).is_empty(), "bad lines and @cert-authority are skipped");
    }

    /// `|1|salt|hash` for `name`, as `ssh-keygen -H` writes it.
    fn hashed(name: &str) -> String {
        let salt = [0x5au8; 20];
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        format!("|1|{}|{}", BASE64.encode(&salt), BASE64.encode(ring::hmac::sign(&key, name.as_bytes()).as_ref()))
    }

    /// OpenSSH lowercases a host name before hashing it, harness hashed it as the topology spelled
    /// it: `DUT1.lab.example` missed the entry OpenSSH wrote for `dut1.lab.example`, so the host
    /// was "unknown", accept-new recorded whatever key it offered (a changed key accepted) and a
    /// hashed `@revoked` line was skipped.
    #[test]
    fn regression_hashed_known_hosts_entries_ignored_upper_case_host_names() {
        let text =
            format!("{} {E1}\n@revoked {} {E2}\n", hashed("dut1.lab.example"), hashed("[dut1.lab.example]:2222"));
        let (_d, mut p) = policy(&text);
        p.host = "DUT1.Lab.Example".into();
        p.verify(&key(E1)).unwrap();
        assert!(matches!(p.verify(&key(E2)), Err(SshError::HostKeyChanged { line: 1, .. })));
        p.port = 2222;
        assert!(matches!(p.verify(&key(E2)), Err(SshError::HostKeyRevoked { line: 2, .. })));
        // A new host is recorded under the lowercased name, which OpenSSH then finds too.
        p.host = "New.Lab.Example".into();
        p.verify(&key(E1)).unwrap();
        let written = std::fs::read_to_string(&p.known_hosts[0]).unwrap();
        assert!(written.lines().last().unwrap().starts_with("[new.lab.example]:2222 ssh-ed25519 "), "{written}");
        // Addresses are left as written.
        assert_eq!(host_port("fe80::A", 22), "fe80::A");
    }

    /// `UserKnownHostsFile a b` was read as one file named "a b": neither was read, every host
    /// was unknown and, under accept-new, any key offered was recorded (a changed key accepted).
    #[test]
    fn regression_known_hosts_files_after_the_first_were_ignored() {
        let (d, mut p) = policy(&format!("10.0.0.2 {E1}\n"));
        let second = d.path().join("known_hosts2");
        std::fs::write(&second, format!("# c\n10.0.0.3 {E1}\n@revoked 10.0.0.4 {E2}\n10.0.0.4 {E2}\n")).unwrap();
        p.known_hosts.push(second.clone());
        let kh2 = second.display().to_string();
        p.verify(&key(E1)).unwrap();
        p.host = "10.0.0.3".into();
        p.verify(&key(E1)).unwrap();
        match p.verify(&key(E2)) {
            Err(SshError::HostKeyChanged { line: 2, known_hosts, .. }) if known_hosts == kh2 => {}
            r => panic!("expected a changed key at {kh2}:2, got {r:?}"),
        }
        p.host = "10.0.0.4".into();
        match p.verify(&key(E2)) {
            Err(SshError::HostKeyRevoked { line: 3, known_hosts, .. }) if known_hosts == kh2 => {}
            r => panic!("expected a revoked key at {kh2}:3, got {r:?}"),
        }
        // As in OpenSSH, a key any file records is known, whatever other files say.
        std::fs::write(&second, format!("10.0.0.2 {E2}\n")).unwrap();
        p.host = "10.0.0.2".into();
        p.verify(&key(E1)).unwrap();
        p.verify(&key(E2)).unwrap();
        // New keys go to the first file only.
        p.host = "10.0.0.9".into();
        p.verify(&key(E1)).unwrap();
        assert!(std::fs::read_to_string(&p.known_hosts[0]).unwrap().contains("10.0.0.9 ssh-ed25519 "));
        assert_eq!(std::fs::read_to_string(&second).unwrap(), format!("10.0.0.2 {E2}\n"));
    }

    /// Recording an accepted key was unlocked and never re-checked: nodes sharing one host, or
    /// two harness runs, connecting at once under accept-new all judged it unknown and all
    /// appended, the same line several times or several different keys, each accepted.
    #[test]
    fn regression_concurrent_recordings_of_a_new_host_key_were_unlocked_and_unchecked() {
        for _ in 0..10 {
            let (_d, p) = policy("");
            let start = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let (p, start) = (p.clone(), start.clone());
                    let k = if i % 2 == 0 { E1 } else { E2 };
                    std::thread::spawn(move || {
                        start.wait();
                        (k, p.verify(&key(k)))
                    })
                })
                .collect();
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let text = std::fs::read_to_string(&p.known_hosts[0]).unwrap();
            assert_eq!(text.lines().count(), 1, "{text}");
            for (k, r) in results {
                match r {
                    Ok(()) => assert!(text.contains(k), "{k} accepted but {text} recorded"),
                    Err(SshError::HostKeyChanged { line: 1, .. }) => assert!(!text.contains(k)),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        // The same, step by step: a key recorded between our judgement and our write.
        let (_d, p) = policy(&format!("10.0.0.2 {E2}"));
        let first = p.known_hosts[0].clone();
        assert!(matches!(p.record(&first, &key(E1)), Err(SshError::HostKeyChanged { line: 1, .. })));
        p.record(&first, &key(E2)).unwrap();
        assert_eq!(std::fs::read_to_string(&first).unwrap(), format!("10.0.0.2 {E2}"), "nothing written");
        // A last line without its newline keeps it apart from ours.
        let mut p = p;
        p.host = "10.0.0.3".into();
        p.record(&first, &key(E1)).unwrap();
        assert_eq!(std::fs::read_to_string(&first).unwrap(), format!("10.0.0.2 {E2}\n10.0.0.3 {E1}\n"));
    }

    /// A key that could not be written was reported as recorded: russh's writer returned Ok
    /// before its buffer was flushed, and a full disk only shows there.
    #[test]
    fn regression_a_host_key_that_could_not_be_written_counted_as_recorded() {
        let (_d, mut p) = policy("");
        p.known_hosts = vec!["/dev/full".into()];
        let err = p.verify(&key(E1)).unwrap_err().to_string();
        assert!(err.contains("cannot record host key SHA256:") && err.contains("in /dev/full: "), "{err}");
    }

    #[test]
    fn known_key_types_are_offered_first() {
        let default: Vec<Algorithm> = russh::Preferred::DEFAULT.key.to_vec();
        assert_eq!(preferred_key_order(&[]), default);
        let known = known_keys(&format!("h {R1}\n"), "h", 22);
        let order = preferred_key_order(&known);
        assert!(order[..3].iter().all(|a| matches!(a, Algorithm::Rsa { .. })), "{order:?}");
        assert_eq!(order.len(), default.len());
        let known = known_keys(&format!("h {C1}\n"), "h", 22);
        assert_eq!(preferred_key_order(&known)[0], key(C1).algorithm());
    }
}
