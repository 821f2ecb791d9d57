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
    /// known_hosts files, never empty: all are read, new keys are recorded in the first.
    pub known_hosts: Vec<PathBuf>,
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

/// OpenSSH's default `GlobalKnownHostsFile`: read after the user's files, never written (a
/// config's own `GlobalKnownHostsFile` replaces it).
pub(crate) const GLOBAL_KNOWN_HOSTS: [&str; 2] = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// How deep `Include`s may nest (OpenSSH's own limit).
const MAX_INCLUDE_DEPTH: usize = 16;

/// The ssh config file as russh-config can read it, keeping OpenSSH's meaning for `target`:
/// - options before the first `Host` apply to every host: they become a `Host *` block, first
///   (the first value found wins, as in OpenSSH). russh-config refused the whole file for them,
///   so a config opening with `Include config.d/*` or `ServerAliveInterval 30` applied nothing;
/// - a `Match` block, which russh-config cannot read, is evaluated here (see [`Normalizer::matches`])
///   and becomes `Host *` when it applies to `target`, `Host !*` when not;
/// - `Include` is read in place (relative names from the including file's directory, `*` and
///   `?` in the file name, files in name order);
/// - `Key=Value`, `Key = Value` and tab-separated lines become `Key Value`;
/// - `UserKnownHostsFile`'s list of files (quotes allowed) becomes the files joined by NUL,
///   which no path contains: russh-config keeps the value as one path and strips quotes only
///   around the whole value;
/// - `GlobalKnownHostsFile`, which russh-config does not know, is returned beside the text: the
///   first list applying to `target` (None: OpenSSH's default).
///
/// Errors (an unreadable file, a `Match` harness cannot evaluate) are `file:line: message`.
fn normalized_config(path: &Path, target: &SshTarget) -> Result<(String, Option<Vec<String>>), String> {
    let mut n = Normalizer {
        original_host: &target.host,
        explicit_user: target.user.as_deref(),
        hostname: None,
        user: None,
        global_known_hosts: None,
        global_keys: Default::default(),
        global: String::new(),
        blocks: String::new(),
    };
    n.read(path, 0, false, true)?;
    let text = if n.global.is_empty() { n.blocks } else { format!("Host *\n{}{}", n.global, n.blocks) };
    Ok((text, n.global_known_hosts))
}

/// State of one pass over a config file and its `Include`s.
struct Normalizer<'a> {
    /// The destination as written in the topology (OpenSSH's `%n`, `Match originalhost`).
    original_host: &'a str,
    /// The topology's user, which wins over the config's (as `ssh -l` does).
    explicit_user: Option<&'a str>,
    /// The first `HostName` / `User` among the options applying so far: what `Match host` and
    /// `Match user` test, as OpenSSH tests the values set by the lines above the `Match`.
    hostname: Option<String>,
    user: Option<String>,
    /// The first `GlobalKnownHostsFile` list applying to the target.
    global_known_hosts: Option<Vec<String>>,
    /// Keys already given outside any block (the first value wins).
    global_keys: std::collections::HashSet<String>,
    global: String,
    blocks: String,
}

impl Normalizer<'_> {
    /// Append `path`'s lines. `in_block`: the including line was inside a `Host`/`Match` block;
    /// `applies`: that block's options (so these lines too, up to their own first block) apply
    /// to the target.
    fn read(&mut self, path: &Path, depth: usize, in_block: bool, applies: bool) -> Result<(), String> {
        self.read_in(path, depth, in_block, applies, "")
    }

    /// [`Self::read`], with `header` the enclosing block's line (re-opened after an `Include`).
    fn read_in(
        &mut self,
        path: &Path,
        depth: usize,
        mut in_block: bool,
        mut applies: bool,
        enclosing: &str,
    ) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut header = enclosing.to_string();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: String| format!("{}:{}: {message}", path.display(), number + 1);
            let (key, value) = match line.find(|c: char| c.is_whitespace() || c == '=') {
                Some(i) => {
                    (&line[..i], line[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim_end())
                }
                None => (line, ""),
            };
            // Outside any block the first value wins, as in OpenSSH: these lines all become one
            // `Host *` block, in which russh-config keeps the last.
            let out = |n: &mut Self, text: String| {
                if in_block {
                    n.blocks.push_str(&text);
                } else if n.global_keys.insert(key.to_ascii_lowercase()) {
                    n.global.push_str(&text);
                }
            };
            match key.to_ascii_lowercase().as_str() {
                // In a block that does not apply, nothing an Include brings applies either
                // (OpenSSH reads it as never matching): its own `Host *` must not apply here.
                "include" if in_block && !applies => {}
                "include" if depth < MAX_INCLUDE_DEPTH => {
                    for pattern in value.split_whitespace() {
                        let p = expand_tilde(Path::new(pattern));
                        let p = if p.is_absolute() { p } else { dir.join(p) };
                        for f in include_matches(&p) {
                            self.read_in(&f, depth + 1, in_block, applies, &header)?;
                        }
                    }
                    // The lines after it belong to this block again, not to the file's last one.
                    if in_block {
                        self.blocks.push_str(&header);
                    }
                }
                "host" => {
                    in_block = true;
                    applies = host_line_matches(value, self.original_host);
                    header = format!("Host {value}\n");
                    self.blocks.push_str(&header);
                }
                "match" => {
                    in_block = true;
                    applies = self.matches(value).map_err(|e| at(format!("Match {value}: {e}")))?;
                    header = (if applies { "Host *\n" } else { "Host !*\n" }).to_string();
                    self.blocks.push_str(&header);
                }
                // russh-config reads every value but `no` as strict. What harness relaxes to is
                // exactly OpenSSH's `accept-new` (a changed key is always refused), so `accept-new`,
                // `no` and `off` all become `no`, and `yes`/`ask` stay strict.
                "stricthostkeychecking" => {
                    let relaxed = matches!(value.to_ascii_lowercase().as_str(), "accept-new" | "no" | "off");
                    out(self, format!("{key} {}\n", if relaxed { "no" } else { "yes" }));
                }
                "userknownhostsfile" => {
                    let files = shlex::split(value).ok_or_else(|| at(format!("{key} {value}: unbalanced quotes")))?;
                    out(self, format!("{key} {}\n", files.join("\0")));
                }
                "globalknownhostsfile" => {
                    let files = shlex::split(value).ok_or_else(|| at(format!("{key} {value}: unbalanced quotes")))?;
                    if applies && self.global_known_hosts.is_none() {
                        self.global_known_hosts = Some(files);
                    }
                }
                lower => {
                    if applies {
                        match lower {
                            "hostname" if self.hostname.is_none() => {
                                // `%h` here is the name as given; other tokens are left for
                                // `resolve_in_chain` to expand (or refuse).
                                self.hostname = Some(value.replace("%h", self.original_host));
                            }
                            "user" if self.user.is_none() => self.user = Some(value.to_string()),
                            _ => {}
                        }
                    }
                    out(self, format!("{key} {value}\n"));
                }
            }
        }
        Ok(())
    }

    /// Does a `Match` line's criteria list select the target? All criteria must hold, each
    /// may be negated with `!`. Evaluated: `all`, `host` (after `HostName`), `originalhost`,
    /// `user` (the topology's, else the config's so far, else the local user), `localuser`,
    /// `canonical` (never: harness does not canonicalise) and `final` (always: there is one pass).
    /// `exec` and the rest are refused by name rather than silently never applying, unless an
    /// earlier criterion of the line already failed.
    fn matches(&self, criteria: &str) -> Result<bool, String> {
        let words = shlex::split(criteria).ok_or("unbalanced quotes")?;
        if words.is_empty() {
            return Err("no criteria (use `Match all`)".into());
        }
        let local_user = std::env::var("USER").unwrap_or_default();
        let (mut all_hold, mut words) = (true, words.iter());
        while let Some(word) = words.next() {
            let (negated, criterion) = match word.strip_prefix('!') {
                Some(c) => (true, c),
                None => (false, word.as_str()),
            };
            let mut argument = || words.next().ok_or(format!("`{criterion}` needs an argument"));
            let holds = match criterion.to_ascii_lowercase().as_str() {
                "all" | "final" => true,
                "canonical" => false,
                "host" => {
                    let name = self.hostname.as_deref().unwrap_or(self.original_host);
                    pattern_list_matches(argument()?, name, true)
                }
                "originalhost" => pattern_list_matches(argument()?, self.original_host, true),
                "user" => {
                    let user = self.explicit_user.or(self.user.as_deref()).unwrap_or(&local_user);
                    pattern_list_matches(argument()?, user, false)
                }
                "localuser" => pattern_list_matches(argument()?, &local_user, false),
                // As in OpenSSH, a criterion after one that failed is not evaluated: so
                // `Match host github.com exec "…"` does not stop harness reaching the DUTs.
                "exec" | "localnetwork" | "tagged" | "command" | "sessiontype" | "version" if !all_hold => {
                    argument()?;
                    continue;
                }
                "exec" | "localnetwork" | "tagged" | "command" | "sessiontype" | "version" => {
                    return Err(format!(
                        "`Match {criterion}` is not supported by harness; use a `Host` block, or -F none"
                    ));
                }
                other => return Err(format!("unknown criterion `{other}`")),
            };
            all_hold &= holds != negated;
        }
        Ok(all_hold)
    }
}

/// A `Host` line: whitespace-separated patterns; it applies when one matches and no `!pattern` does.
fn host_line_matches(patterns: &str, host: &str) -> bool {
    pattern_list_matches(&patterns.split_whitespace().collect::<Vec<_>>().join(","), host, true)
}

/// OpenSSH's pattern lists: comma-separated globs, any `!pattern` that matches vetoes the list.
fn pattern_list_matches(list: &str, name: &str, ignore_case: bool) -> bool {
    let mut matched = false;
    for p in list.split(',').filter(|p| !p.is_empty() && p.len() <= 1024) {
        match p.strip_prefix('!') {
            Some(neg) if super::hostkey::glob_match(neg.as_bytes(), name.as_bytes(), ignore_case) => return false,
            Some(_) => {}
            None => matched |= super::hostkey::glob_match(p.as_bytes(), name.as_bytes(), ignore_case),
        }
    }
    matched
}

/// The files an `Include` names: the path itself, or with `*`/`?` in its file name the matching
/// files of its directory, in name order.
fn include_matches(p: &Path) -> Vec<PathBuf> {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return if p.is_file() { vec![p.to_path_buf()] } else { vec![] };
    }
    let dir = p.parent().unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            f.is_file()
                && f.file_name()
                    .is_some_and(|n| super::hostkey::glob_match(name.as_bytes(), n.as_encoded_bytes(), false))
        })
        .collect();
    found.sort();
    found
}

fn expand_tilde(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), dirs::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_path_buf(),
    }
}

/// Most jump hosts in one chain: far more than any lab uses, and a bound on recursion whatever
/// the config says.
pub(crate) const MAX_JUMPS: usize = 8;

#[cfg(test)]
pub(crate) fn resolve(target: &SshTarget, opts: &ConnectOptions) -> Result<Resolved, SshError> {
    resolve_in_chain(target, opts, &[])
}

/// Resolve `target`, reached through the hosts in `chain` (outermost first: host as written
/// and port). A `ProxyJump` from the config file that names the target itself or a host already
/// in the chain is ignored, as OpenSSH ignores a ProxyJump equal to the destination: with
/// `Host *` + `ProxyJump X`, connecting to X must not jump through X again (that recursed until
/// the stack overflowed). An explicit jump (topology, or the rest of an `a,b,c` list) is kept.
pub(crate) fn resolve_in_chain(
    target: &SshTarget,
    opts: &ConnectOptions,
    chain: &[(String, u16)],
) -> Result<Resolved, SshError> {
    if chain.len() > MAX_JUMPS {
        return Err(SshError::Config {
            node: target.name.clone(),
            message: format!(
                "ProxyJump chain longer than {MAX_JUMPS} hops: {} -> {}",
                chain.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>().join(" -> "),
                target.host
            ),
        });
    }
    let (hc, global_known_hosts) = match &opts.ssh_config {
        Some(path) if path.exists() => {
            let (text, global) = normalized_config(path, target)
                .map_err(|message| SshError::Config { node: target.name.clone(), message })?;
            match russh_config::parse(&text, &target.host) {
                Ok(c) => (c.host_config, global),
                Err(russh_config::Error::HostNotFound) => (Default::default(), global),
                Err(e) => {
                    return Err(SshError::Config {
                        node: target.name.clone(),
                        message: format!("{}: {e}", path.display()),
                    });
                }
            }
        }
        _ => Default::default(),
    };
    let config_error = |message: String| SshError::Config { node: target.name.clone(), message };
    let host = match &hc.hostname {
        Some(h) => expand_tokens(h, &[('h', &target.host)]).map_err(|e| config_error(format!("HostName {h}: {e}")))?,
        None => target.host.clone(),
    };
    let port = target.port.or(hc.port).unwrap_or(22);
    let local_user = std::env::var("USER").ok();
    let user =
        target.user.clone().or(hc.user.clone()).or_else(|| local_user.clone()).unwrap_or_else(|| "root".to_string());
    // The tokens OpenSSH expands in IdentityFile and UserKnownHostsFile (`~/.ssh/%h.key`).
    let (home, port_s) = (dirs::home_dir().unwrap_or_default().display().to_string(), port.to_string());
    let local_user = local_user.unwrap_or_else(|| user.clone());
    // SAFETY: getuid has no preconditions and cannot fail.
    let (uid, local_host) = (unsafe { libc::getuid() }.to_string(), local_hostname());
    let local_short = local_host.split('.').next().unwrap_or_default().to_string();
    let tokens = [
        ('d', home.as_str()),
        ('h', host.as_str()),
        ('n', target.host.as_str()),
        ('p', port_s.as_str()),
        ('r', user.as_str()),
        ('u', local_user.as_str()),
        ('i', uid.as_str()),
        ('L', local_short.as_str()),
        ('l', local_host.as_str()),
    ];
    let path_tokens = |key: &str, p: &Path| -> Result<PathBuf, SshError> {
        let s = p.to_string_lossy();
        let expanded = expand_tokens(&s, &tokens).map_err(|e| config_error(format!("{key} {s}: {e}")))?;
        Ok(expand_tilde(Path::new(&expanded)))
    };
    let config_identities = hc
        .identity_file
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|p| path_tokens("IdentityFile", p))
        .collect::<Result<_, _>>()?;
    // A hop names a host of the chain (or the target) when the names match and, if the hop
    // gives a port, the ports do too (one address may serve several sshd ports).
    let own_port = target.port.or(hc.port).unwrap_or(22);
    let loops = |spec: &str| {
        spec.split(',').any(|hop| {
            let (_, h, p) = parse_jump(hop.trim());
            std::iter::once((&target.host, own_port))
                .chain(chain.iter().map(|(h, p)| (h, *p)))
                .any(|(ch, cp)| *ch == h && p.is_none_or(|p| p == cp))
        })
    };
    let from_config = hc.proxy_jump.clone().filter(|j| !loops(j));
    let proxy_jump = target.proxy_jump.clone().or(from_config).filter(|j| !j.is_empty() && j != "none");
    // The topology's file, else the config's list (see `normalized_config`), else OpenSSH's
    // default list; after a user list, the system's files, which OpenSSH always reads too
    // (labs distribute their DUTs' keys there: such a host was "unknown" and refused).
    // `none` (OpenSSH: no file) reads and records nothing: /dev/null, never a global file.
    let mut known_hosts: Vec<PathBuf> = match (&target.known_hosts, &hc.user_known_hosts_file) {
        (Some(p), _) => vec![expand_tilde(p)],
        // A jump host: its node's whole list, the system's files included (added there).
        (None, _) if !target.inherited_known_hosts.is_empty() => target.inherited_known_hosts.clone(),
        (None, Some(list)) if list.as_os_str() == "none" => vec![PathBuf::from("/dev/null")],
        (None, Some(list)) => list
            .to_string_lossy()
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(|f| path_tokens("UserKnownHostsFile", Path::new(f)))
            .collect::<Result<_, _>>()?,
        (None, None) => {
            dirs::home_dir().map(|h| vec![h.join(".ssh/known_hosts"), h.join(".ssh/known_hosts2")]).unwrap_or_default()
        }
    };
    if known_hosts.is_empty() {
        return Err(config_error("no known_hosts file: set `known_hosts` on the node (no home directory)".into()));
    }
    if target.known_hosts.is_none() && target.inherited_known_hosts.is_empty() {
        match global_known_hosts {
            Some(list) if list == ["none"] => {}
            Some(list) => known_hosts.extend(list.iter().map(|f| expand_tilde(Path::new(f)))),
            None => known_hosts.extend(GLOBAL_KNOWN_HOSTS.iter().map(PathBuf::from)),
        }
    }
    // russh-config maps `StrictHostKeyChecking accept-new` (and `yes`) to true and `no` to false;
    // we only ever relax to "accept new", never to "accept changed".
    let accept_new =
        opts.accept_new_host_keys || target.accept_new_host_key || hc.strict_host_key_checking == Some(false);
    Ok(Resolved { host, port, user, config_identities, proxy_jump, known_hosts, accept_new })
}

/// `s` with ssh_config(5)'s `%x` tokens replaced from `tokens` (and `%%` by `%`); an unknown
/// token is an error, as in OpenSSH, rather than a file name with a `%` in it.
fn expand_tokens(s: &str, tokens: &[(char, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(t) => match tokens.iter().find(|(k, _)| *k == t) {
                Some((_, v)) => out.push_str(v),
                None => return Err(format!("unknown or unsupported token %{t}")),
            },
            None => return Err("a lone % at the end (write %% for a percent sign)".into()),
        }
    }
    Ok(out)
}

/// This machine's host name (for `%l`/`%L`).
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
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
            inherited_known_hosts: Vec::new(),
            accept_new_host_key: false,
        };
        let r = resolve(&t, &opts).unwrap();
        assert_eq!((r.host.as_str(), r.port, r.user.as_str()), ("10.9.8.7", 2222, "cfguser"));
        assert_eq!(r.proxy_jump.as_deref(), Some("bastion"));
        assert_eq!(r.known_hosts[0], PathBuf::from("/tmp/kh"));
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

    /// A config opening with `Include` or a global option was refused whole by russh-config
    /// ("HostNotFound"), so no `HostName`, `User` or `ProxyJump` of it applied and harness dialled
    /// the bare names; a `Match` block's options merged into the `Host` block before it; and
    /// `Key=Value` or tab-separated lines were skipped.
    #[test]
    fn regression_global_options_include_match_and_equals_lines_keep_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/10-inc"), "Host dutinc\n  HostName 10.9.9.9\n  Port=2222\n").unwrap();
        std::fs::write(dir.path().join("config.d/20-other"), "ConnectTimeout 5\n").unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "# global first, as many users have it\nInclude config.d/*\nServerAliveInterval 30\nUser=globaluser\n\n\
             Host dut1\n    HostName 10.1.1.1\n    ProxyJump gw\n\n\
             Match host dut2\n    StrictHostKeyChecking no\n    User matchuser\n\n\
             Host dut2\n    HostName\t10.2.2.2\n    User = dut2user\n",
        )
        .unwrap();
        let opts = ConnectOptions { ssh_config: Some(cfg), ..ConnectOptions::default() };
        let r = resolve(&target("dut1"), &opts).unwrap();
        assert_eq!((r.host.as_str(), r.user.as_str()), ("10.1.1.1", "globaluser"));
        assert_eq!(r.proxy_jump.as_deref(), Some("gw"));
        let r = resolve(&target("dut2"), &opts).unwrap();
        // The global User comes first and wins, as in OpenSSH; the Match block's
        // StrictHostKeyChecking applies.
        assert_eq!((r.host.as_str(), r.user.as_str(), r.accept_new), ("10.2.2.2", "globaluser", true));
        let r = resolve(&target("dutinc"), &opts).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("10.9.9.9", 2222));
    }

    /// `Match` blocks were never evaluated: `Match host 10.2.*` + `User lab` (or any other
    /// criterion) applied nothing, and harness logged in with the wrong user, port or key.
    #[test]
    fn regression_match_blocks_are_evaluated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inc"), "User incuser\n").unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host dut1\n  HostName 10.2.0.1\nHost other\n  Include inc\n\
             Match host 10.2.*\n  User subnetuser\n  IdentityFile /keys/subnet\n\
             Match originalhost DUT2 !user root\n  IdentityFile /keys/dut2\n\
             Match user root\n  Port 2202\n\
             Match user incuser\n  Port 2300\n\
             Match all\n  StrictHostKeyChecking accept-new\n\
             Match canonical all\n  Port 1\n\
             Match \"!originalhost\" dut*,other localuser *\n  Port 2299\n",
        )
        .unwrap();
        let opts = ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() };
        // `host` is tested after HostName; `user` against the config's User so far.
        let r = resolve(&target("dut1"), &opts).unwrap();
        assert_eq!((r.host.as_str(), r.port, r.user.as_str(), r.accept_new), ("10.2.0.1", 22, "subnetuser", true));
        assert_eq!(r.config_identities, [PathBuf::from("/keys/subnet")]);
        // The topology's user is what `Match user` sees; `!` negates; hosts ignore case.
        let mut t = target("dut2");
        t.user = Some("root".into());
        let r = resolve(&t, &opts).unwrap();
        assert_eq!((r.port, r.config_identities.len()), (2202, 0));
        t.user = Some("tester".into());
        let r = resolve(&t, &opts).unwrap();
        assert_eq!((r.port, r.config_identities.clone()), (22, vec![PathBuf::from("/keys/dut2")]));
        // An Include inside a Host block belongs to it: its User counts only for that host.
        let r = resolve(&target("other"), &opts).unwrap();
        assert_eq!((r.port, r.user.as_str()), (2300, "incuser"));
        assert_eq!(resolve(&target("lab9"), &opts).unwrap().port, 2299);
        // An unsupported criterion after a failed one is not evaluated, as in OpenSSH.
        std::fs::write(&cfg, "Match originalhost github.com exec \"vpn-up\"\n  User git\nHost dut\n  User u\n")
            .unwrap();
        assert_eq!(resolve(&target("dut"), &opts).unwrap().user, "u");
        // What harness cannot evaluate is refused by file, line and criterion.
        for (line, message) in [
            ("Match exec \"ping -c1 gw\"", "`Match exec` is not supported"),
            ("Match bogus x", "unknown criterion `bogus`"),
            ("Match host dut exec true", "`Match exec` is not supported"),
            ("Match host", "`host` needs an argument"),
            ("Match", "no criteria"),
        ] {
            std::fs::write(&cfg, format!("Host dut\n  User u\n{line}\n  User v\n")).unwrap();
            let err = resolve(&target("dut"), &opts).unwrap_err().to_string();
            assert!(err.contains(&format!("{}:3: ", cfg.display())) && err.contains(message), "{err}");
        }
    }

    /// `StrictHostKeyChecking accept-new` in the ssh config was read as strict (russh-config
    /// treats every value but `no` so), and a user whose config asks for exactly that got
    /// "unknown host key" on every new node.
    #[test]
    fn regression_strict_host_key_checking_accept_new_in_the_config_accepts_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        let opts = ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() };
        for (value, accept_new) in
            [("accept-new", true), ("no", true), ("off", true), ("Accept-New", true), ("yes", false), ("ask", false)]
        {
            std::fs::write(&cfg, format!("Host dut\n  StrictHostKeyChecking {value}\n")).unwrap();
            assert_eq!(resolve(&target("dut"), &opts).unwrap().accept_new, accept_new, "{value}");
            std::fs::write(&cfg, format!("StrictHostKeyChecking={value}\nHost dut\n  User u\n")).unwrap();
            assert_eq!(resolve(&target("dut"), &opts).unwrap().accept_new, accept_new, "global {value}");
        }
    }

    /// `%h`, `%p`, `%r`… in HostName, IdentityFile and UserKnownHostsFile were used literally:
    /// `HostName %h.lab.example` dialled "%h.lab.example" and `IdentityFile ~/.ssh/%h.key`
    /// looked for a file named "%h.key".
    #[test]
    fn regression_percent_tokens_in_the_ssh_config_are_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host dut*\n  HostName %h.lab.example\n  User tester\n  Port 2201\n  \
             IdentityFile /keys/%h_%p_%r_%n_100%%.key\n  UserKnownHostsFile /kh/%n\n",
        )
        .unwrap();
        let opts = ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() };
        let mut t = target("dut7");
        t.known_hosts = None;
        let r = resolve(&t, &opts).unwrap();
        assert_eq!(r.host, "dut7.lab.example");
        assert_eq!(r.config_identities, [PathBuf::from("/keys/dut7.lab.example_2201_tester_dut7_100%.key")]);
        assert_eq!(r.known_hosts[0], PathBuf::from("/kh/dut7"));
        // The topology's known_hosts is the user's own path, not a config value.
        assert_eq!(resolve(&target("dut7"), &opts).unwrap().known_hosts, [PathBuf::from("/tmp/kh")]);
        std::fs::write(&cfg, "Host dut\n  IdentityFile /keys/%C\n").unwrap();
        let err = resolve(&target("dut"), &opts).unwrap_err().to_string();
        assert!(err.contains("IdentityFile /keys/%C") && err.contains("%C"), "{err}");
        assert_eq!(expand_tokens("100%", &[]).unwrap_err(), "a lone % at the end (write %% for a percent sign)");
    }

    /// `UserKnownHostsFile ~/.ssh/a ~/.ssh/b` (a list, OpenSSH's default being
    /// `~/.ssh/known_hosts ~/.ssh/known_hosts2`) was read as ONE path, "/home/u/.ssh/a ~/.ssh/b":
    /// no file was read, so every host was unknown and accept-new recorded any key.
    #[test]
    fn regression_user_known_hosts_file_lists_were_read_as_one_path() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        let opts = ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() };
        let home = dirs::home_dir().unwrap();
        let mut t = target("dut7");
        t.known_hosts = None;
        std::fs::write(&cfg, "Host dut*\n  UserKnownHostsFile ~/.ssh/kh1 /kh/%n\t\"/with space/kh\" ~/kh2\n").unwrap();
        let user_files = |r: Resolved| r.known_hosts[..r.known_hosts.len() - GLOBAL_KNOWN_HOSTS.len()].to_vec();
        assert_eq!(
            user_files(resolve(&t, &opts).unwrap()),
            [home.join(".ssh/kh1"), "/kh/dut7".into(), "/with space/kh".into(), home.join("kh2")]
        );
        std::fs::write(&cfg, "UserKnownHostsFile=\"/with space/kh\"\n").unwrap();
        assert_eq!(user_files(resolve(&t, &opts).unwrap()), [PathBuf::from("/with space/kh")]);
        std::fs::write(&cfg, "Host dut*\n  UserKnownHostsFile \"/kh/a\n").unwrap();
        let err = resolve(&t, &opts).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:2: ", cfg.display())) && err.contains("unbalanced quotes"), "{err}");
        // Without a config: OpenSSH's default list. The topology's file is the only one.
        let none = ConnectOptions { ssh_config: None, ..ConnectOptions::default() };
        assert_eq!(
            user_files(resolve(&t, &none).unwrap()),
            [home.join(".ssh/known_hosts"), home.join(".ssh/known_hosts2")]
        );
        assert_eq!(resolve(&target("dut7"), &none).unwrap().known_hosts, [PathBuf::from("/tmp/kh")]);
    }

    /// `/etc/ssh/ssh_known_hosts` (OpenSSH's GlobalKnownHostsFile, where labs distribute their
    /// DUTs' keys) was never read: such a host was "unknown" and refused. It is read after the
    /// user's files (new keys still go to the first user file); a node's own `known_hosts` in
    /// the topology stays its only file.
    #[test]
    fn regression_the_system_known_hosts_files_were_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "Host dut*\n  UserKnownHostsFile /kh/user\n").unwrap();
        let mut t = target("dut7");
        t.known_hosts = None;
        for opts in [
            ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() },
            ConnectOptions { ssh_config: None, ..ConnectOptions::default() },
        ] {
            let kh = resolve(&t, &opts).unwrap().known_hosts;
            assert_eq!(kh[kh.len() - 2..], [PathBuf::from(GLOBAL_KNOWN_HOSTS[0]), GLOBAL_KNOWN_HOSTS[1].into()]);
            assert!(!kh[0].starts_with("/etc"), "{kh:?}");
        }
        let opts = ConnectOptions { ssh_config: Some(cfg), ..ConnectOptions::default() };
        assert_eq!(resolve(&target("dut7"), &opts).unwrap().known_hosts, [PathBuf::from("/tmp/kh")]);
    }

    /// `UserKnownHostsFile none` (OpenSSH: no user file) was read as a file named `none` in
    /// the working directory, where accept-new then recorded keys; and a config's
    /// `GlobalKnownHostsFile` was ignored (the defaults read instead). `none` now reads and
    /// records nothing (/dev/null), and the config's global list, the first applying to the
    /// host, replaces the defaults (`none`: no global file).
    #[test]
    fn regression_known_hosts_file_none_and_global_known_hosts_file_were_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        let opts = ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() };
        let mut t = target("dut7");
        t.known_hosts = None;
        let files = |text: &str| {
            std::fs::write(&cfg, text).unwrap();
            resolve(&t, &opts).unwrap().known_hosts
        };
        let defaults: Vec<PathBuf> = GLOBAL_KNOWN_HOSTS.iter().map(PathBuf::from).collect();
        assert_eq!(
            files("Host dut*\n  UserKnownHostsFile none\n"),
            [&[PathBuf::from("/dev/null")][..], &defaults].concat()
        );
        assert_eq!(
            files("GlobalKnownHostsFile /etc/lab/kh \"/x y/kh\"\nHost dut*\n  UserKnownHostsFile /kh/user\n"),
            [PathBuf::from("/kh/user"), "/etc/lab/kh".into(), "/x y/kh".into()]
        );
        assert_eq!(
            files(
                "Host dut*\n  GlobalKnownHostsFile none\n  UserKnownHostsFile /kh/user\nHost *\n  GlobalKnownHostsFile /late\n"
            ),
            [PathBuf::from("/kh/user")]
        );
        // A block for another host does not apply.
        assert_eq!(
            files("Host other\n  GlobalKnownHostsFile /nope\nHost dut*\n  UserKnownHostsFile /kh/user\n"),
            [&[PathBuf::from("/kh/user")][..], &defaults].concat()
        );
        // The topology's own file stays the only one.
        assert_eq!(resolve(&target("dut7"), &opts).unwrap().known_hosts, [PathBuf::from("/tmp/kh")]);
    }

    /// The config rewriter lost OpenSSH's Include scoping: (a) an Include in a block that does
    /// not apply still applied its file's own `Host *` (a `Host *.lab` include turned off host
    /// key checking for every host); (b) the lines after an Include in a block landed under the
    /// included file's last `Host`; (c) options outside any block, joined into one `Host *`,
    /// kept the last value where OpenSSH keeps the first.
    #[test]
    fn regression_includes_keep_openssh_scoping_and_the_first_value_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        let opts = ConnectOptions { ssh_config: Some(cfg.clone()), ..ConnectOptions::default() };
        let mut t = target("dut1.prod");
        t.known_hosts = None;
        let home = dirs::home_dir().unwrap();
        std::fs::write(
            dir.path().join("lab.conf"),
            "Host *\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n",
        )
        .unwrap();
        std::fs::write(&cfg, "Host *.lab\n  Include lab.conf\n").unwrap();
        let r = resolve(&t, &opts).unwrap();
        assert!(!r.accept_new, "(a) an include of a block for other hosts applied");
        assert_eq!(r.known_hosts[0], home.join(".ssh/known_hosts"), "(a)");
        std::fs::write(dir.path().join("x.conf"), "Host other\n  Port 9\n").unwrap();
        std::fs::write(&cfg, "Host dut1*\n  Include x.conf\n  User fromdut\n").unwrap();
        let r = resolve(&target("dut1.prod"), &opts).unwrap();
        assert_eq!((r.user.as_str(), r.port), ("fromdut", 22), "(b)");
        std::fs::write(dir.path().join("g.conf"), "StrictHostKeyChecking no\n").unwrap();
        std::fs::write(&cfg, "StrictHostKeyChecking yes\nInclude g.conf\n").unwrap();
        assert!(!resolve(&t, &opts).unwrap().accept_new, "(c) the later global value won");
    }

    fn target(host: &str) -> SshTarget {
        SshTarget {
            name: "DUT1".into(),
            host: host.into(),
            port: None,
            user: None,
            auth: vec![],
            proxy_jump: None,
            known_hosts: Some("/tmp/kh".into()),
            inherited_known_hosts: Vec::new(),
            accept_new_host_key: false,
        }
    }

    #[test]
    fn regression_proxy_jump_host_star_recursion() {
        // `Host *` + `ProxyJump X`: X's own connection took ProxyJump X again, forever (SIGABRT).
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\nHost *\n  ProxyJump bastion\n").unwrap();
        let opts = ConnectOptions { ssh_config: Some(cfg), ..ConnectOptions::default() };
        let r = resolve_in_chain(&target("dut"), &opts, &[]).unwrap();
        assert_eq!(r.proxy_jump.as_deref(), Some("bastion"));
        // The jump host itself: its ProxyJump names itself, so it is ignored.
        let r = resolve_in_chain(&target("bastion"), &opts, &[("dut".into(), 22)]).unwrap();
        assert_eq!(r.proxy_jump, None);
        // a -> b -> a: b's jump points back into the chain and is ignored.
        assert_eq!(resolve_in_chain(&target("a"), &opts, &[]).unwrap().proxy_jump.as_deref(), Some("b"));
        let r = resolve_in_chain(&target("b"), &opts, &[("a".into(), 22)]).unwrap();
        assert_eq!(r.proxy_jump, None);
        // Same name on another port is another sshd: kept.
        let mut t = target("dut");
        t.proxy_jump = None;
        let r = resolve_in_chain(&target("bastion"), &opts, &[]).unwrap();
        assert_eq!(r.proxy_jump, None);
        std::fs::write(opts.ssh_config.as_ref().unwrap(), "Host *\n  ProxyJump h:2201\n").unwrap();
        t.host = "h".into();
        t.port = Some(2202);
        assert_eq!(resolve_in_chain(&t, &opts, &[]).unwrap().proxy_jump.as_deref(), Some("h:2201"));
        t.port = Some(2201);
        assert_eq!(resolve_in_chain(&t, &opts, &[]).unwrap().proxy_jump, None);
    }

    #[test]
    fn regression_proxy_jump_chain_depth_is_capped() {
        let chain: Vec<(String, u16)> = (0..=MAX_JUMPS).map(|i| (format!("j{i}"), 22)).collect();
        let opts = ConnectOptions { ssh_config: None, ..ConnectOptions::default() };
        let err = resolve_in_chain(&target("dut"), &opts, &chain).unwrap_err().to_string();
        assert!(err.contains("j0:22 -> j1:22") && err.ends_with("j8:22 -> dut"), "{err}");
    }
}
