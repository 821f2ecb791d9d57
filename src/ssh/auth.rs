//! Client authentication, in a fixed order of preference: the topology's identity files, the
//! ssh config's `IdentityFile`s, ssh-agent, default keys (only when no identity is configured),
//! password from an env var, plaintext password, then keyboard-interactive with that password.
//! A node that names a password has it tried right after its own keys, before ssh-agent and
//! the default keys: every rejected key counts against sshd's `MaxAuthTries` (6 by default),
//! and an agent holding many keys used them up before the password was ever offered ("Too many
//! authentication failures"). Every attempt is recorded so an auth failure says what was tried.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::MethodKind;
use russh::client::{AuthResult, Handle, KeyboardInteractiveAuthResponse, Prompt};
use russh::keys::PrivateKeyWithHashAlg;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;

use super::config::Resolved;
use super::hostkey::Client;
use crate::topology::Auth;

/// Why authentication failed: the attempts, for the error message.
pub(crate) struct Attempts {
    tried: Vec<String>,
    /// Methods the server still offers after the last failure.
    remaining: Option<Vec<&'static str>>,
}

impl Attempts {
    pub fn summary(&self) -> String {
        let tried = if self.tried.is_empty() { "no credentials available".to_string() } else { self.tried.join(", ") };
        match &self.remaining {
            Some(m) if !m.is_empty() => format!("{tried}; server accepts: {}", m.join(",")),
            _ => tried,
        }
    }
}

enum Step {
    Done,
    Next,
}

/// Authenticate `handle`. `Ok(())` on success; else what was tried, and the error that ended
/// it early if one did (the server hung up: sshd's `MaxAuthTries`).
pub(crate) async fn authenticate(
    handle: &mut Handle<Client>,
    r: &Resolved,
    explicit: &[Auth],
    agent_socket: Option<&Path>,
) -> Result<(), (Attempts, Option<russh::Error>)> {
    let mut at = Attempts { tried: Vec::new(), remaining: None };
    // One step's result, or out with the attempts so far when the connection failed.
    macro_rules! step {
        ($e:expr) => {
            match $e.await {
                Ok(v) => v,
                Err(e) => return Err((at, Some(e))),
            }
        };
    }
    let user = r.user.clone();

    let mut key_files: Vec<(PathBuf, Option<String>)> = Vec::new();
    for a in explicit {
        if let Auth::IdentityFile { path, passphrase_env } = a {
            let pass = passphrase_env.as_ref().and_then(|v| std::env::var(v).ok());
            key_files.push((path.clone(), pass));
        }
    }
    for p in &r.config_identities {
        if !key_files.iter().any(|(k, _)| k == p) {
            key_files.push((p.clone(), None));
        }
    }
    let had_identities = !key_files.is_empty() || explicit.iter().any(|a| matches!(a, Auth::PrivateKeyPem(_)));

    for (path, pass) in &key_files {
        if let Step::Done = step!(try_key_file(handle, &user, path, pass.as_deref(), &mut at)) {
            return Ok(());
        }
    }
    for a in explicit {
        if let Auth::PrivateKeyPem(pem) = a
            && let Step::Done = step!(try_key_pem(handle, &user, pem, &mut at))
        {
            return Ok(());
        }
    }
    let mut passwords: Vec<(String, String)> = Vec::new();
    for a in explicit {
        // if-let rather than match: other credential kinds are handled above (or not at all).
        if let Auth::PasswordEnv(var) = a {
            match std::env::var(var) {
                Ok(p) => passwords.push((format!("password from ${var}"), p)),
                Err(_) => at.tried.push(format!("password_env ${var} (not set)")),
            }
        } else if let Auth::Password(p) = a {
            passwords.push(("password".to_string(), p.clone()));
        }
    }
    // The node's password first when it names one (see the module doc), else last as before.
    let password_first = !passwords.is_empty();
    if password_first && step!(try_passwords(handle, &user, &passwords, &mut at)) {
        return Ok(());
    }
    if let Step::Done = step!(try_agent(handle, &user, agent_socket, &mut at)) {
        return Ok(());
    }
    if !had_identities && let Some(home) = dirs::home_dir() {
        for name in ["id_ed25519", "id_rsa", "id_ecdsa"] {
            let p = home.join(".ssh").join(name);
            if p.exists()
                && let Step::Done = step!(try_key_file(handle, &user, &p, None, &mut at))
            {
                return Ok(());
            }
        }
    }
    Err((at, None))
}

/// Each password with the `password` method, then (for password-only servers that offer
/// keyboard-interactive instead) with keyboard-interactive. True on success.
async fn try_passwords(
    handle: &mut Handle<Client>,
    user: &str,
    passwords: &[(String, String)],
    at: &mut Attempts,
) -> Result<bool, russh::Error> {
    // A password the `password` method rejected is wrong: sent again over keyboard-interactive
    // it was a second PAM failure per connect (six reconnects of a cleanup then met
    // pam_faillock's `deny=3` and locked the lab account).
    let mut rejected: Vec<&str> = Vec::new();
    for (label, pw) in passwords {
        if server_refuses(at, "password") {
            break;
        }
        let res = handle.authenticate_password(user, pw.clone()).await?;
        if record(at, label.clone(), res) {
            return Ok(true);
        }
        // Rejected by a server that takes passwords this way: wrong. A server that does not
        // (keyboard-interactive only) says so in the methods left, and gets it that way.
        if !server_refuses(at, "password") {
            rejected.push(pw);
        }
    }
    for (label, pw) in kbd_candidates(passwords, &rejected) {
        if server_refuses(at, "keyboard-interactive") {
            break;
        }
        if try_kbd_interactive(handle, user, pw, at, label).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The passwords still worth trying over keyboard-interactive: not one the `password` method
/// already rejected.
fn kbd_candidates<'a>(passwords: &'a [(String, String)], rejected: &[&str]) -> Vec<&'a (String, String)> {
    passwords.iter().filter(|(_, pw)| !rejected.contains(&pw.as_str())).collect()
}

fn server_refuses(at: &Attempts, method: &str) -> bool {
    at.remaining.as_ref().is_some_and(|m| !m.contains(&method))
}

/// Record an attempt; true on success.
fn record(at: &mut Attempts, label: String, res: AuthResult) -> bool {
    match res {
        AuthResult::Success => true,
        AuthResult::Failure { remaining_methods, .. } => {
            at.tried.push(format!("{label} (rejected)"));
            at.remaining = Some(remaining_methods.iter().map(<&'static str>::from).collect());
            false
        }
    }
}

async fn try_key_file(
    handle: &mut Handle<Client>,
    user: &str,
    path: &Path,
    pass: Option<&str>,
    at: &mut Attempts,
) -> Result<Step, russh::Error> {
    if server_refuses(at, <&str>::from(&MethodKind::PublicKey)) {
        return Ok(Step::Next);
    }
    let key = match russh::keys::load_secret_key(path, pass) {
        Ok(k) => k,
        Err(russh::keys::Error::KeyIsEncrypted) => {
            at.tried.push(format!("key {} (encrypted; set its passphrase_env)", path.display()));
            return Ok(Step::Next);
        }
        Err(e) => {
            at.tried.push(format!("key {} (unreadable: {e})", path.display()));
            return Ok(Step::Next);
        }
    };
    try_key(handle, user, key, format!("key {}", path.display()), at).await
}

/// CSIT's `priv_key:` (the PEM text itself in the topology).
async fn try_key_pem(
    handle: &mut Handle<Client>,
    user: &str,
    pem: &str,
    at: &mut Attempts,
) -> Result<Step, russh::Error> {
    if server_refuses(at, <&str>::from(&MethodKind::PublicKey)) {
        return Ok(Step::Next);
    }
    match russh::keys::decode_secret_key(pem, None) {
        Ok(key) => try_key(handle, user, key, "priv_key from the topology".to_string(), at).await,
        Err(e) => {
            at.tried.push(format!("priv_key from the topology (unreadable: {e})"));
            Ok(Step::Next)
        }
    }
}

async fn try_key(
    handle: &mut Handle<Client>,
    user: &str,
    key: russh::keys::PrivateKey,
    label: String,
    at: &mut Attempts,
) -> Result<Step, russh::Error> {
    let hash = if key.algorithm().is_rsa() { handle.best_supported_rsa_hash().await?.flatten() } else { None };
    let res = handle.authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await?;
    Ok(if record(at, label, res) { Step::Done } else { Step::Next })
}

async fn try_agent(
    handle: &mut Handle<Client>,
    user: &str,
    agent_socket: Option<&Path>,
    at: &mut Attempts,
) -> Result<Step, russh::Error> {
    let Some(sock) = agent_socket else { return Ok(Step::Next) };
    if server_refuses(at, "publickey") {
        return Ok(Step::Next);
    }
    let mut agent = match AgentClient::connect_uds(&sock).await {
        Ok(a) => a,
        Err(e) => {
            at.tried.push(format!("ssh-agent (unreachable: {e})"));
            return Ok(Step::Next);
        }
    };
    let ids = match agent.request_identities().await {
        Ok(ids) => ids,
        Err(e) => {
            at.tried.push(format!("ssh-agent ({e})"));
            return Ok(Step::Next);
        }
    };
    for id in ids {
        let (key, comment) = match id {
            AgentIdentity::PublicKey { key, comment } => (key, comment),
            _ => continue,
        };
        let hash = if key.algorithm().is_rsa() { handle.best_supported_rsa_hash().await?.flatten() } else { None };
        match handle.authenticate_publickey_with(user, key, hash, &mut agent).await {
            Ok(res) => {
                if record(at, format!("ssh-agent key {comment}"), res) {
                    return Ok(Step::Done);
                }
            }
            // The server hung up (MaxAuthTries): no later key can help, and the caller says why.
            Err(_) if handle.is_closed() => {
                at.tried.push(format!("ssh-agent key {comment}"));
                return Err(russh::Error::Disconnect);
            }
            Err(e) => at.tried.push(format!("ssh-agent key {comment} ({e})")),
        }
    }
    Ok(Step::Next)
}

async fn try_kbd_interactive(
    handle: &mut Handle<Client>,
    user: &str,
    pw: &str,
    at: &mut Attempts,
    label: &str,
) -> Result<bool, russh::Error> {
    let mut resp = handle.authenticate_keyboard_interactive_start(user, None).await?;
    // Servers may send several rounds (including empty ones); only the first hidden prompt gets
    // the password: a later one ("Verification code:", "New password:") is not asking for it.
    let mut sent = false;
    for _ in 0..5 {
        match resp {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure { remaining_methods, .. } => {
                at.tried.push(format!("keyboard-interactive with {label} (rejected)"));
                at.remaining = Some(remaining_methods.iter().map(<&'static str>::from).collect());
                return Ok(false);
            }
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                let answers = kbd_answers(&prompts, pw, &mut sent);
                resp = handle.authenticate_keyboard_interactive_respond(answers).await?;
            }
        }
    }
    at.tried.push(format!("keyboard-interactive with {label} (too many rounds)"));
    Ok(false)
}

/// Answers to one keyboard-interactive round. The password goes only to hidden (no-echo)
/// prompts, which is how servers ask for secrets; an echoed prompt ("Username:", "Token
/// label:", a banner question) is shown on screen, logged by some PAM modules, and gets an
/// empty answer instead of the password.
fn kbd_answers(prompts: &[Prompt], pw: &str, sent: &mut bool) -> Vec<String> {
    prompts
        .iter()
        .map(|p| {
            if p.echo || *sent {
                String::new()
            } else {
                *sent = true;
                pw.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_keyboard_interactive_sends_password_to_echo_prompts() {
        let prompts = vec![
            Prompt { prompt: "Username: ".into(), echo: true },
            Prompt { prompt: "Password: ".into(), echo: false },
            Prompt { prompt: "Say anything: ".into(), echo: true },
        ];
        assert_eq!(kbd_answers(&prompts, "s3cret", &mut false), ["", "s3cret", ""]);
        assert!(kbd_answers(&[], "s3cret", &mut false).is_empty());
    }

    /// The password went to every hidden prompt of every keyboard-interactive round (an OTP
    /// "Verification code:" too), and a password the `password` method had just rejected was
    /// sent again over keyboard-interactive: two PAM failures per connect.
    #[test]
    fn regression_a_password_is_sent_once_and_never_after_its_rejection() {
        let hidden = |p: &str| Prompt { prompt: p.into(), echo: false };
        let mut sent = false;
        assert_eq!(kbd_answers(&[hidden("Password: ")], "s3cret", &mut sent), ["s3cret"]);
        assert_eq!(kbd_answers(&[hidden("Verification code: ")], "s3cret", &mut sent), [""]);
        let pws = vec![("password".to_string(), "a".to_string()), ("password_env X".to_string(), "b".to_string())];
        let left: Vec<&str> = kbd_candidates(&pws, &["a"]).iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(left, ["b"]);
        assert_eq!(kbd_candidates(&pws, &[]).len(), 2);
    }
}
