//! Parser for `vppctl show errors`: one [`ErrorCounter`] per row, for run reports and for
//! checks like "no packet was dropped for a reason other than X".
//!
//! Two layouts exist (FDio/vpp `src/vlib/error.c`): before VPP 21.01, `Count Node Reason`
//! with the reason left-aligned after a 40-wide centred node; since then a `Severity` column
//! follows, and node and reason are each centred in 35 characters and cut to that width. The
//! header line says which layout (and whether `show errors verbose` added `Index`).
//!
//! Rows are not split at the header's title positions: titles are centred over their fields
//! while values are centred or left-aligned independently of them, counts above 10 digits
//! push the rest of the row right, and pasted output is often reflowed (see
//! tests/fixtures/vpp/README.md). Instead each row is anchored at both ends: the count and
//! the node are the first two words (VPP node names have no spaces), the severity (and
//! index) the last, and the reason is everything in between, inner spaces kept.

use std::collections::BTreeMap;

use serde::Serialize;

/// One row of `show errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCounter {
    pub count: u64,
    /// Graph node, e.g. `ip6-icmp-input`.
    pub node: String,
    /// Counter description, e.g. `neighbor solicitations from source not on link`; VPP 21.01+
    /// cuts it to 35 characters.
    pub reason: String,
    /// `error`, `warn` or `info` (VPP 21.01+); `None` for the older layout.
    pub severity: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("show errors: no `Count Node Reason` header line")]
    NoHeader,
    #[error("show errors: line {line}: {why}: {text:?}")]
    BadRow { line: usize, text: String, why: String },
}

/// The words `sev2str()` in VPP's error.c can print.
const SEVERITIES: [&str; 4] = ["error", "warn", "info", "unknown"];

/// Parse the output of `show errors` (or `show errors verbose`). Text before the header (a
/// prompt, the command echo) is ignored. In verbose output, `Thread N (...):` lines are
/// skipped and the `Total:` section (per-counter sums of the rows above) ends the table.
/// An empty table (header only: nothing counted since the last `clear errors`) is `Ok(vec![])`.
pub fn parse(text: &str) -> Result<Vec<ErrorCounter>, ParseError> {
    let mut lines = text.lines().enumerate();
    let header = loop {
        let Some((_, line)) = lines.next() else { return Err(ParseError::NoHeader) };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 3 && words[..3] == ["Count", "Node", "Reason"] {
            break words;
        }
    };
    let has_severity = header.contains(&"Severity");
    let has_index = header.contains(&"Index");
    let mut out = Vec::new();
    for (i, line) in lines {
        let bad = |why: &str| ParseError::BadRow { line: i + 1, text: line.to_string(), why: why.to_string() };
        let trimmed = line.trim();
        if trimmed == "Total:" {
            break;
        }
        // Blank lines, verbose `Thread 0 (vpp_main):` labels, a repeated header or a trailing
        // prompt: only rows start with a count.
        if !trimmed.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let (count, rest) = split_word(trimmed);
        let count: u64 = count.parse().map_err(|_| bad("count is not a number"))?;
        let (node, mut rest) = split_word(rest);
        if node.is_empty() {
            return Err(bad("no node name"));
        }
        if has_index {
            let (before, last) = split_last_word(rest);
            if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
                rest = before;
            }
        }
        let mut severity = None;
        if has_severity {
            let (before, last) = split_last_word(rest);
            if SEVERITIES.contains(&last) {
                severity = Some(last.to_string());
                rest = before;
            }
        }
        out.push(ErrorCounter { count, node: node.to_string(), reason: rest.trim().to_string(), severity });
    }
    Ok(out)
}

/// Sum rows with the same node and reason: without `verbose`, VPP prints one row per thread
/// (main and each worker) with no thread label, so a counter can appear several times.
pub fn totals(counters: &[ErrorCounter]) -> Vec<ErrorCounter> {
    let mut sums: BTreeMap<(&str, &str), ErrorCounter> = BTreeMap::new();
    for c in counters {
        sums.entry((&c.node, &c.reason)).and_modify(|t| t.count += c.count).or_insert_with(|| c.clone());
    }
    sums.into_values().collect()
}

/// First whitespace-delimited word of `s` (already left-trimmed) and the rest after it.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(end) => (&s[..end], &s[end..]),
        None => (s, ""),
    }
}

/// `s` without its last word, and that word.
fn split_last_word(s: &str) -> (&str, &str) {
    let s = s.trim_end();
    // The whitespace may be several bytes long (U+00A0 in a guest's output): skip all of it.
    match s.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
        Some((start, c)) => (&s[..start], &s[start + c.len_utf8()..]),
        None => ("", s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/vpp/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn row(count: u64, node: &str, reason: &str, severity: Option<&str>) -> ErrorCounter {
        ErrorCounter { count, node: node.into(), reason: reason.into(), severity: severity.map(Into::into) }
    }

    #[test]
    fn old_layout_with_full_width_counts() {
        let got = parse(&fixture("show-errors-pre2101-ioam-encap.txt")).unwrap();
        assert_eq!(
            got,
            vec![
                row(1208804706, "ip6-inacl", "input ACL hits", None),
                row(1208804706, "ip6-add-hop-by-hop", "Pkts w/ added ip6 hop-by-hop options", None),
            ]
        );
    }

    #[test]
    fn old_layout_reasons_with_spaces() {
        let got = parse(&fixture("show-errors-pre2101-nsim.txt")).unwrap();
        assert_eq!(
            got,
            vec![
                row(9991, "nsim", "Packets buffered", None),
                row(9, "nsim", "Network loss simulation drop packets", None),
                row(9991, "ethernet-input", "l3 mac mismatch", None),
            ]
        );
    }

    #[test]
    fn severity_layout_reflowed_and_cut_reasons() {
        let got = parse(&fixture("show-errors-2101-calico.txt")).unwrap();
        assert_eq!(got.len(), 20);
        assert_eq!(got[0], row(1, "acl-plugin-out-ip4-fa", "ACL deny packets", Some("error")));
        assert_eq!(got[6], row(2042, "arp-reply", "ARP request IP4 source address lear", Some("info")));
        // The node runs into the reason with a single space here.
        assert_eq!(got[15], row(17, "ip6-local-hop-by-hop", "Unknown protocol ip6 local h-b-h pa", Some("error")));
        assert_eq!(got[16], row(47074, "ip6-icmp-input", "neighbor solicitations for unknown", Some("error")));
        assert_eq!(got[19], row(150, "ip6-icmp-input", "neighbor discovery not configured", Some("error")));
        assert!(got.iter().all(|c| c.severity.is_some()), "{got:?}");
        assert_eq!(got.iter().map(|c| c.count).sum::<u64>(), 676_172);
    }

    /// Rows laid out exactly by VPP's format strings (`%10lu%=35v%=35s%=10s`), for what no
    /// published capture shows: an 11-digit count shifting the row, a reason filling its
    /// 35 characters, a prompt before the header and per-thread duplicates.
    #[test]
    fn severity_layout_as_vpp_formats_it() {
        let text = "vpp# show errors\n\
            \x20  Count                  Node                              Reason               Severity \n\
            \x20       12            ip6-icmp-input                  hop_limit != 255              error   \n\
            \x20 12345678901         ip6-icmp-input          neighbor solicitations from source   error   \n\
            \x20        3             ip4-input                    valid ip4 packets              info    \n\
            \x20        4             ip4-input                    valid ip4 packets              info    \n\
            vpp# ";
        let got = parse(text).unwrap();
        assert_eq!(
            got,
            vec![
                row(12, "ip6-icmp-input", "hop_limit != 255", Some("error")),
                row(12_345_678_901, "ip6-icmp-input", "neighbor solicitations from source", Some("error")),
                row(3, "ip4-input", "valid ip4 packets", Some("info")),
                row(4, "ip4-input", "valid ip4 packets", Some("info")),
            ]
        );
        let t = totals(&got);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], row(7, "ip4-input", "valid ip4 packets", Some("info")));
    }

    #[test]
    fn verbose_threads_and_index_and_total_section() {
        let text = "   Count                  Node                              Reason               Severity  Index\n\
            Thread 0 (vpp_main):\n\
            \x20       5             ip4-input                    valid ip4 packets              info    381 \n\
            Thread 1 (vpp_wk_0):\n\
            \x20       7             ip4-input                    valid ip4 packets              info    381 \n\
            Total:\n\
            \x20      12                ip4-input                  valid ip4 packets          381\n";
        let got = parse(text).unwrap();
        assert_eq!(
            got,
            vec![
                row(5, "ip4-input", "valid ip4 packets", Some("info")),
                row(7, "ip4-input", "valid ip4 packets", Some("info")),
            ]
        );
    }

    /// A row whose last separator was a multi-byte space (U+00A0) sliced inside that character:
    /// a panic in `up`'s collection hook, before its cleanup, left the failed run's VMs running.
    #[test]
    fn regression_a_multi_byte_space_before_the_last_word_does_not_panic() {
        assert_eq!(split_last_word("valid ip4\u{a0}error"), ("valid ip4", "error"));
        assert_eq!(split_last_word("a\u{3000}b  "), ("a", "b"));
        let text = "   Count                    Node                  Reason               Severity\n\
            \x20       5             ip4-input                    valid ip4 packets\u{a0}error\n";
        let _ = parse(text);
    }

    #[test]
    fn empty_table_missing_header_and_bad_rows() {
        assert_eq!(parse("   Count                    Node                  Reason\n").unwrap(), vec![]);
        assert_eq!(parse("vpp# show errors\nunknown input `foo'\n"), Err(ParseError::NoHeader));
        let err = parse("   Count   Node   Reason\n  99999999999999999999999  ip4-input  x\n").unwrap_err();
        assert!(matches!(err, ParseError::BadRow { line: 2, .. }), "{err:?}");
        let err = parse("   Count   Node   Reason\n  12\n").unwrap_err();
        assert!(err.to_string().contains("no node name"), "{err}");
    }

    #[test]
    fn serialises_as_count_node_reason_severity() {
        let v = serde_json::to_value(row(9, "nsim", "Packets buffered", None)).unwrap();
        assert_eq!(v, serde_json::json!({"count": 9, "node": "nsim", "reason": "Packets buffered", "severity": null}));
        let v = serde_json::to_value(row(1, "arp-reply", "ARP replies sent", Some("info"))).unwrap();
        assert_eq!(v["severity"], "info");
    }
}
