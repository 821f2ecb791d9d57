//! `lscpu -p` output: which CPUs exist, their core, socket and NUMA node, and their cache ids.
//!
//! The default `lscpu -p` layout is `# CPU,Core,Socket,Node,,L1d,L1i,L2,L3` followed by one row
//! per online CPU, e.g. `0,0,0,0,,0,0,0,0`. Newer util-linux adds columns on some machines
//! (`Cluster` on arm64, `Book`/`Drawer` on s390x), so when the `# CPU,...` header is present it
//! locates the columns; without it the default positions are assumed (CPU, Core, Socket, Node
//! in the first four fields, caches after the blank fifth one).
//!
//! Two SMT rules live here:
//! - [`smt`]: the host has SMT when some core (same `Socket` and `Core` ids) has two or more
//!   CPUs. This is what `lscpu` itself means by "Thread(s) per core".
//! - [`csit_smt`]: CSIT's `CpuUtils.is_smt_enabled`, kept bit for bit because the chain
//!   placement must match CSIT's: SMT is "enabled" when the last four fields (L1d, L1i, L2, L3
//!   ids, non-numbers counting as 0) of every row in the first half of the rows also occur as
//!   the last four fields of some row in the second half. It assumes Intel-style numbering
//!   (siblings of the first half are the second half) and real cache ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One CPU row of `lscpu -p`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LscpuRow {
    pub cpu: u32,
    pub core: u32,
    pub socket: u32,
    /// `None` when lscpu prints no NUMA node (empty field or no `Node` column). CSIT reads an
    /// empty node as 0, and so does [`cpus_of_node`].
    pub node: Option<u32>,
    /// The raw cache-id fields (`L1d,L1i,L2,L3` in the default layout), joined with `,`.
    pub caches: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LscpuError {
    #[error("lscpu -p output has no CPU rows")]
    Empty,
    #[error("lscpu -p output, line {line}: {message}")]
    Line { line: usize, message: String },
}

/// Column positions of one layout.
struct Columns {
    cpu: usize,
    core: Option<usize>,
    socket: Option<usize>,
    node: Option<usize>,
    /// Cache-id columns; `None` = the default layout: everything after the Node column, minus
    /// the blank column that precedes the caches.
    caches: Option<Vec<usize>>,
}

impl Columns {
    const DEFAULT: Columns = Columns { cpu: 0, core: Some(1), socket: Some(2), node: Some(3), caches: None };

    /// From a header such as `CPU,Core,Socket,Node,,L1d,L1i,L2,L3` (without the `#`).
    fn from_header(names: &[&str]) -> Option<Columns> {
        let find = |want: &str| names.iter().position(|n| n.trim().eq_ignore_ascii_case(want));
        let cpu = find("CPU")?;
        let caches = names
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                let n = n.trim();
                let b = n.as_bytes();
                n.eq_ignore_ascii_case("cache")
                    || (b.len() >= 2 && (b[0] == b'L' || b[0] == b'l') && b[1].is_ascii_digit())
            })
            .map(|(i, _)| i)
            .collect();
        Some(Columns { cpu, core: find("Core"), socket: find("Socket"), node: find("Node"), caches: Some(caches) })
    }
}

/// Parse `lscpu -p` output. Comment lines start with `#`; the comment `# CPU,...` is the header.
pub fn parse(text: &str) -> Result<Vec<LscpuRow>, LscpuError> {
    let mut cols = Columns::DEFAULT;
    let mut rows = Vec::new();
    // CPU id -> its line: a CPU listed twice would pass for its own SMT sibling, and a chain
    // VM would get two vCPUs pinned to one host CPU.
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let names: Vec<&str> = comment.trim().split(',').collect();
            if names.len() > 1
                && let Some(c) = Columns::from_header(&names)
            {
                cols = c;
            }
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let err = |message: String| LscpuError::Line { line: lineno, message };
        let field = |idx: usize, name: &str| -> Result<&str, LscpuError> {
            fields.get(idx).copied().ok_or_else(|| err(format!("no {name} field (column {})", idx + 1)))
        };
        let number = |idx: usize, name: &str| -> Result<u32, LscpuError> {
            let f = field(idx, name)?;
            f.parse::<u32>().map_err(|_| err(format!("{name} `{f}` is not a number")))
        };
        let cpu = number(cols.cpu, "CPU")?;
        if let Some(first) = seen.insert(cpu, lineno) {
            return Err(err(format!("CPU {cpu} is listed twice (first on line {first})")));
        }
        // Without a Core column every CPU is its own core; without Socket, one socket.
        let core = match cols.core {
            Some(c) => number(c, "Core")?,
            None => cpu,
        };
        let socket = match cols.socket {
            Some(c) => number(c, "Socket")?,
            None => 0,
        };
        let node = match cols.node {
            Some(c) => match field(c, "Node")? {
                "" | "-" => None,
                f => Some(f.parse::<u32>().map_err(|_| err(format!("Node `{f}` is not a number")))?),
            },
            None => None,
        };
        let caches = match &cols.caches {
            Some(idx) => idx.iter().filter_map(|i| fields.get(*i).copied()).collect::<Vec<_>>().join(","),
            None => {
                let after = cols.node.map_or(fields.len(), |n| (n + 1).min(fields.len()));
                let rest = &fields[after..];
                let rest = if rest.first() == Some(&"") { &rest[1..] } else { rest };
                rest.join(",")
            }
        };
        rows.push(LscpuRow { cpu, core, socket, node, caches });
    }
    if rows.is_empty() {
        return Err(LscpuError::Empty);
    }
    Ok(rows)
}

/// The host has SMT: some core (same socket and core id) has two or more CPUs.
pub fn smt(rows: &[LscpuRow]) -> bool {
    let mut per_core: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for r in rows {
        *per_core.entry((r.socket, r.core)).or_default() += 1;
    }
    per_core.values().any(|n| *n >= 2)
}

/// CSIT's `is_smt_enabled` (see the module docs): every first-half row's cache-id tuple occurs
/// in the second half. The tuple is the last four comma-separated fields of the row as printed
/// in the default layout (`CPU,Core,Socket,Node,,caches`, or `CPU,Core,Socket,Node` without
/// caches), each non-number read as 0, exactly
/// as CSIT's `item[-4:]` of its `__str2int`-converted row.
pub fn csit_smt(rows: &[LscpuRow]) -> bool {
    let keys: Vec<Vec<u64>> = rows.iter().map(csit_cache_key).collect();
    let half = keys.len() / 2;
    let (first, second) = keys.split_at(half);
    first.iter().all(|k| second.contains(k))
}

fn csit_cache_key(r: &LscpuRow) -> Vec<u64> {
    let node = r.node.map(|n| n.to_string()).unwrap_or_default();
    let mut fields = vec![r.cpu.to_string(), r.core.to_string(), r.socket.to_string(), node];
    if !r.caches.is_empty() {
        fields.push(String::new());
        fields.extend(r.caches.split(',').map(str::to_string));
    }
    let n = fields.len();
    fields[n.saturating_sub(4)..].iter().map(|f| f.trim().parse::<u64>().unwrap_or(0)).collect()
}

/// The CPUs of NUMA node `node`, in `lscpu -p` order. A row without a node counts as node 0
/// (CSIT reads the empty field as 0).
pub fn cpus_of_node(rows: &[LscpuRow], node: u32) -> Vec<u32> {
    rows.iter().filter(|r| r.node.unwrap_or(0) == node).map(|r| r.cpu).collect()
}

/// The parsed rows of a host, in lscpu order, with the questions the planner asks of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuLayout {
    pub rows: Vec<LscpuRow>,
}

impl CpuLayout {
    pub fn parse(text: &str) -> Result<CpuLayout, LscpuError> {
        parse(text).map(|rows| CpuLayout { rows })
    }

    /// NUMA node of `cpu` (0 on hosts without NUMA), `None` if the host has no such CPU.
    pub fn node_of(&self, cpu: u32) -> Option<u32> {
        self.rows.iter().find(|r| r.cpu == cpu).map(|r| r.node.unwrap_or(0))
    }

    /// The NUMA nodes that have CPUs.
    pub fn nodes(&self) -> std::collections::BTreeSet<u32> {
        self.rows.iter().map(|r| r.node.unwrap_or(0)).collect()
    }

    /// The node to bind a VM's memory to: only where it matters (several NUMA nodes) and only
    /// when all of its pinned CPUs sit on the same node.
    pub fn binding(&self, cpus: &[u32]) -> Option<u32> {
        if self.nodes().len() < 2 || cpus.is_empty() {
            return None;
        }
        let first = self.node_of(cpus[0])?;
        cpus.iter().all(|c| self.node_of(*c) == Some(first)).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THIS_VM: &str = include_str!("../../tests/fixtures/lscpu/debian12-2vcpu-vm.lscpu");

    #[test]
    fn lscpu_parses_this_machine() {
        let rows = parse(THIS_VM).unwrap();
        assert_eq!(
            rows,
            vec![
                LscpuRow { cpu: 0, core: 0, socket: 0, node: Some(0), caches: "0,0,0,0".into() },
                LscpuRow { cpu: 1, core: 1, socket: 0, node: Some(0), caches: "1,1,1,0".into() },
            ]
        );
        assert!(!smt(&rows));
        assert!(!csit_smt(&rows));
        assert_eq!(cpus_of_node(&rows, 0), vec![0, 1]);
        assert!(cpus_of_node(&rows, 1).is_empty());
    }

    #[test]
    fn lscpu_header_locates_columns() {
        // arm64 util-linux adds a Cluster column before Socket.
        let text = "# CPU,Core,Cluster,Socket,Node,,L1d,L1i,L2\n0,0,0,1,1,,0,0,0\n1,0,0,1,1,,0,0,0\n";
        let rows = parse(text).unwrap();
        assert_eq!(rows[1], LscpuRow { cpu: 1, core: 0, socket: 1, node: Some(1), caches: "0,0,0".into() });
        assert!(smt(&rows));
        assert_eq!(cpus_of_node(&rows, 1), vec![0, 1]);
    }

    #[test]
    fn lscpu_without_header_uses_default_positions() {
        let rows = parse("0,0,0,,,0,0,0,0\n1,0,0,,,0,0,0,0\n").unwrap();
        assert_eq!(rows[0].node, None);
        assert_eq!(rows[0].caches, "0,0,0,0");
        assert_eq!(cpus_of_node(&rows, 0), vec![0, 1]);
        assert!(smt(&rows));
    }

    #[test]
    fn lscpu_errors_name_the_line() {
        assert_eq!(parse("# CPU,Core,Socket,Node\n"), Err(LscpuError::Empty));
        let e = parse("# CPU,Core,Socket,Node\n0,0,0,0\nx,0,0,0\n").unwrap_err();
        assert_eq!(e, LscpuError::Line { line: 3, message: "CPU `x` is not a number".into() });
        let e = parse("0,0\n").unwrap_err();
        assert!(e.to_string().contains("line 1: no Socket field"), "{e}");
    }

    /// A CPU row repeated (a concatenated or corrupted facts file) was accepted: the chain
    /// placement took the repeat for an SMT sibling of the same CPU and pinned two vCPUs of a
    /// VM to one host CPU (`vCPU1->4 vCPU2->4`).
    #[test]
    fn regression_a_repeated_cpu_row_is_accepted() {
        let text = "# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,0,,1,1,1,0\n0,0,0,0,,0,0,0,0\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e, LscpuError::Line { line: 4, message: "CPU 0 is listed twice (first on line 2)".into() });
        assert!(e.to_string().contains("line 4: CPU 0 is listed twice"), "{e}");
        // The same id on another core or socket is no better.
        assert!(parse("0,0,0,0\n1,1,0,0\n1,0,1,0\n").is_err());
    }

    #[test]
    fn lscpu_csit_smt_rule_is_cache_based() {
        // Two CPUs on different cores but identical cache ids (as some VMs report): CSIT calls
        // this SMT, the Core column does not.
        let rows = parse("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,0,,0,0,0,0\n").unwrap();
        assert!(csit_smt(&rows));
        assert!(!smt(&rows));
        // Adjacent siblings (0/1 share core 0): the first half's caches are not in the second.
        let rows = parse("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,0,0,0,,0,0,0,0\n2,1,0,0,,1,1,1,0\n3,1,0,0,,1,1,1,0\n").unwrap();
        assert!(!csit_smt(&rows));
        assert!(smt(&rows));
    }

    const TWO_NODES: &str = "# The following is the parsable format, which can be fed to other\n\
        # programs. Each different item in every column has an unique ID\n# starting usually from zero.\n\
        # CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,0,,1,1,1,0\n2,2,1,1,,2,2,2,1\n3,3,1,1,,3,3,3,1\n";

    #[test]
    fn parses_rows_by_header() {
        let l = CpuLayout::parse(TWO_NODES).unwrap();
        assert_eq!(l.rows.len(), 4);
        assert_eq!(l.rows[2], LscpuRow { cpu: 2, core: 2, socket: 1, node: Some(1), caches: "2,2,2,1".into() });
        assert_eq!(l.nodes().into_iter().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn binding_only_with_several_nodes_and_one_node_per_vm() {
        let l = CpuLayout::parse(TWO_NODES).unwrap();
        assert_eq!(l.binding(&[2, 3]), Some(1));
        assert_eq!(l.binding(&[1, 2]), None, "CPUs on two nodes: no binding");
        assert_eq!(l.binding(&[7]), None, "unknown CPU");
        assert_eq!(l.binding(&[0, 1]), Some(0));
        assert_eq!(l.binding(&[]), None);
        let one =
            CpuLayout::parse("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,,,0,0,0,0\n1,1,0,,,1,1,1,0\n").unwrap();
        assert_eq!(one.node_of(1), Some(0));
        assert_eq!(one.binding(&[0, 1]), None, "one NUMA node: nothing to bind");
    }
}
