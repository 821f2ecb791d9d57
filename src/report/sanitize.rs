//! Make untrusted text safe to print on a terminal.
//!
//! Node names, guest interface names, serial-log lines and remote error text come from files
//! and hosts we do not control. Printed raw, an ANSI escape in them can recolour, move the
//! cursor, rewrite earlier lines or set the window title, and a `\r` or `\n` can forge a line
//! of our own output. Every such character is rendered visibly instead (`\u{1b}`, `\r`);
//! tabs stay, as they are harmless and common in logs.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that change what the terminal shows rather than being shown: C0 and C1 controls
/// and DEL, plus the Unicode bidirectional overrides that can reorder a line ("Trojan Source").
pub(crate) fn is_dangerous(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character (except tab) rendered visibly; borrowed when clean.
/// Newlines are escaped too: use this for one-line fields such as names.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_dangerous(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Like [`escape_control`] but keeps `\n` as a line break: for multi-line messages (an error
/// with the last serial lines) whose lines are each made safe.
pub fn escape_control_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_dangerous(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.split('\n').map(escape_control).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_borrowed() {
        assert!(matches!(escape_control("DUT1_1 eth0\tup ü"), Cow::Borrowed(_)));
        assert!(matches!(escape_control_lines("a\nb"), Cow::Borrowed(_)));
    }

    #[test]
    fn regression_ansi_escape_in_node_name_reaches_terminal() {
        assert_eq!(escape_control("DUT\u{1b}[2J1"), "DUT\\u{1b}[2J1");
        assert_eq!(escape_control("a\r\nb"), "a\\r\\nb");
        assert_eq!(escape_control("x\u{7f}\u{9b}31m"), "x\\u{7f}\\u{9b}31m");
        assert_eq!(escape_control("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(escape_control("keep\ttabs"), "keep\ttabs");
        assert!(!escape_control("\u{1b}]0;title\u{7}").chars().any(|c| c.is_control()));
    }

    #[test]
    fn lines_keep_their_breaks() {
        assert_eq!(escape_control_lines("boot\u{1b}[31m\nfail\r"), "boot\\u{1b}[31m\nfail\\r");
    }
}
