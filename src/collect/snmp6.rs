//! Parser for Linux `/proc/net/snmp6` (and the per-interface `/proc/net/dev_snmp6/<if>`):
//! IPv6, ICMPv6 and UDPv6 counters, one `Name<whitespace>value` per line.
//!
//! Guests report these so a run can show, e.g., that neighbour discovery towards the vswitch
//! happened (`Icmp6OutNeighborSolicits`) or that ICMPv6 errors were received. Counters are
//! kept by name in a sorted map: the set differs between kernel versions (`Icmp6InType*`
//! lines appear only once such a message was seen), so no fixed struct fits.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Snmp6Error {
    #[error("snmp6: line {line}: expected `Name value`, got {text:?}")]
    BadLine { line: usize, text: String },
    #[error("snmp6: no counters")]
    Empty,
}

/// All counters by name. Blank lines are ignored; anything else that is not a name and an
/// unsigned number is an error (a truncated read should not pass for zeros), and so is text
/// with no counter at all (the kernel always has some: an empty read is a failed one).
pub fn parse(text: &str) -> Result<BTreeMap<String, u64>, Snmp6Error> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (name, value) = match (words.next(), words.next(), words.next()) {
            (None, _, _) => continue,
            (Some(n), Some(v), None) => (n, v),
            _ => return Err(Snmp6Error::BadLine { line: i + 1, text: line.to_string() }),
        };
        let value: u64 = value.parse().map_err(|_| Snmp6Error::BadLine { line: i + 1, text: line.to_string() })?;
        out.insert(name.to_string(), value);
    }
    if out.is_empty() {
        return Err(Snmp6Error::Empty);
    }
    Ok(out)
}

/// The ICMPv6 counters (`Icmp6*`), names unchanged.
pub fn icmp6(counters: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counters.iter().filter(|(k, _)| k.starts_with("Icmp6")).map(|(k, v)| (k.clone(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat /proc/net/snmp6` from the development machine (see tests/fixtures/linux/README.md).
    fn fixture() -> String {
        let path = format!("{}/tests/fixtures/linux/proc-net-snmp6.txt", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_a_real_capture() {
        let text = fixture();
        let all = parse(&text).unwrap();
        assert_eq!(all.len(), text.lines().filter(|l| !l.trim().is_empty()).count());
        assert_eq!(all["Ip6InReceives"], 1);
        assert_eq!(all["Udp6InDatagrams"], 0);
        assert_eq!(all["Icmp6OutType135"], 4);

        let icmp = icmp6(&all);
        assert_eq!(icmp.len(), 40);
        assert!(icmp.keys().all(|k| k.starts_with("Icmp6")));
        assert_eq!(icmp["Icmp6InMsgs"], 1);
        assert_eq!(icmp["Icmp6OutMsgs"], 9);
        assert_eq!(icmp["Icmp6InDestUnreachs"], 1);
        assert!(!icmp.contains_key("Ip6InReceives") && !icmp.contains_key("Udp6InDatagrams"));
    }

    #[test]
    fn this_machine_parses_too() {
        // The live file has the same grammar on any kernel; only the names and values vary.
        let Ok(text) = std::fs::read_to_string("/proc/net/snmp6") else {
            panic!("/proc/net/snmp6 missing: IPv6 disabled on this machine?");
        };
        let all = parse(&text).unwrap();
        assert!(all.contains_key("Icmp6InMsgs"), "{all:?}");
    }

    /// `parse("")` returned `Ok({})`: a read that got nothing (IPv6 disabled in the guest)
    /// passed for a kernel with no ICMPv6 errors.
    #[test]
    fn regression_text_without_counters_is_an_error() {
        assert_eq!(parse(""), Err(Snmp6Error::Empty));
        assert_eq!(parse("\n  \n"), Err(Snmp6Error::Empty));
        assert_eq!(parse("Icmp6InErrors 0\n").unwrap()["Icmp6InErrors"], 0);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(parse("\nIcmp6InMsgs 3\n\n").unwrap()["Icmp6InMsgs"], 3);
        assert_eq!(
            parse("Icmp6InMsgs 3\nIcmp6OutMsgs\n"),
            Err(Snmp6Error::BadLine { line: 2, text: "Icmp6OutMsgs".into() })
        );
        assert!(parse("Icmp6InMsgs -1\n").is_err());
        assert!(parse("Icmp6InMsgs 1 2\n").is_err());
    }
}
