//! Shell quoting for remote commands: the one function every remote argument goes through.
//!
//! SSH carries a single command string that the remote user's shell parses, so each argv
//! element must be quoted. Single quotes make everything literal except `'` itself, which is
//! written as `'\''`. Safe words are left bare so rendered commands stay readable.
//!
//! socat addresses are a second language on top of the shell's: `UNIX-CONNECT:<path>` is split
//! at `,` (options follow) and `:`, and `!!`, quotes and brackets mean something too. Rather
//! than rely on an escaping syntax that differs between socat versions, [`socat_unix_address`]
//! refuses paths with any such character; the topology loader refuses them earlier still.

/// Quote one argument for a POSIX shell.
pub fn quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b',' | b'=' | b'+' | b'@' | b'%')
        });
    if safe {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quote and join an argv into one command line.
pub fn join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter().map(|a| quote(a.as_ref())).collect::<Vec<_>>().join(" ")
}

/// A path that cannot be written safely inside a socat address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket path `{}` contains {what}, which socat would parse; use letters, digits and `/._-+@=%~`", path.escape_debug())]
pub struct SocatPathError {
    pub path: String,
    /// The first offending character, described (`` `,` ``, `a space`, `control character U+001B`).
    pub what: String,
}

/// The first character of `path` that is not plain inside a socat address, described for
/// messages; `None` when the whole path is safe. Shared with the topology loader.
pub fn socat_unsafe_char(path: &str) -> Option<String> {
    let bad = path.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._-+@=%~".contains(*c)))?;
    Some(match bad {
        ' ' => "a space".to_string(),
        c if c.is_control() || c.is_whitespace() => format!("control character U+{:04X}", c as u32),
        c if !c.is_ascii() => format!("non-ASCII `{c}`"),
        c => format!("`{c}`"),
    })
}

/// `UNIX-CONNECT:<path>` for `socat`, refusing paths socat would read as options or a second
/// address (`,`, `:`, `!`, quotes, brackets, whitespace, control characters, ...).
pub fn socat_unix_address(path: &str) -> Result<String, SocatPathError> {
    if path.is_empty() {
        return Err(SocatPathError { path: String::new(), what: "nothing".into() });
    }
    match socat_unsafe_char(path) {
        None => Ok(format!("UNIX-CONNECT:{path}")),
        Some(what) => Err(SocatPathError { path: path.to_string(), what }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_words_stay_bare() {
        assert_eq!(quote("-device"), "-device");
        assert_eq!(
            quote("virtio-net-pci,netdev=vhost1,mac=52:54:00:00:01:01"),
            "virtio-net-pci,netdev=vhost1,mac=52:54:00:00:01:01"
        );
    }

    #[test]
    fn specials_are_single_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("a\nb"), "'a\nb'");
        assert_eq!(quote("*"), "'*'");
    }

    /// The quoted form must come back as the same argv from a real shell.
    #[test]
    fn round_trips_through_sh() {
        let argv = ["printf", "%s\\n", "a b", "it's", "$(id)", "`id`", "\"q\"", "new\nline", "", "~", "*", "\\", "ü"];
        let out = std::process::Command::new("sh").arg("-c").arg(join(&argv)).output().unwrap();
        let got = String::from_utf8(out.stdout).unwrap();
        let want: String = argv[2..].iter().map(|a| format!("{a}\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn regression_socket_path_reaches_socat_unescaped() {
        // `,fork` or `:...` in a path would have become socat options / address parts.
        assert_eq!(
            socat_unix_address("/run/harness/20250101-000000-abcd/DUT1_1/qmp.sock").unwrap(),
            "UNIX-CONNECT:/run/harness/20250101-000000-abcd/DUT1_1/qmp.sock"
        );
        for bad in [
            "/run/x,fork",
            "/run/x:y",
            "/run/x!!/y",
            "/run/\"x\"",
            "/run/'x'",
            "/run/x y",
            "/run/x\ty",
            "/run/x\ny",
            "/run/x\u{1b}[31m",
            "/run/{x}",
            "/run/[x]",
            "/run/(x)",
            "/run/x\\y",
            "/run/x;y",
            "/run/ü",
            "",
        ] {
            let e = socat_unix_address(bad).unwrap_err();
            assert!(!e.to_string().contains('\n') && !e.to_string().contains('\u{1b}'), "{e}");
        }
        assert_eq!(socat_unsafe_char("/a,b").as_deref(), Some("`,`"));
        assert_eq!(socat_unsafe_char("/a b").as_deref(), Some("a space"));
        assert_eq!(socat_unsafe_char("/a\u{1b}").as_deref(), Some("control character U+001B"));
        assert_eq!(socat_unsafe_char("/var/run/vpp/sock-1-1"), None);
    }
}
