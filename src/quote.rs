//! Shell quoting for remote commands: the one function every remote argument goes through.
//!
//! SSH carries a single command string that the remote user's shell parses, so each argv
//! element must be quoted. Single quotes make everything literal except `'` itself, which is
//! written as `'\''`. Safe words are left bare so rendered commands stay readable.

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
}
