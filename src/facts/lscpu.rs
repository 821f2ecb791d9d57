//! The CPU layout of a host, from `lscpu -p` (kept verbatim in the facts).
//!
//! `lscpu -p` prints `#` comment lines, the last of which names the columns
//! (`# CPU,Core,Socket,Node,,L1d,L1i,L2,L3`), then one comma-separated row per CPU. The columns
//! are located by that header when present, else CPU,Core,Socket,Node is assumed (the default
//! order). A host without NUMA leaves `Node` empty: every CPU is then on node 0.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One `lscpu -p` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LscpuRow {
    pub cpu: u32,
    pub core: u32,
    pub socket: u32,
    /// `None` when lscpu leaves the column empty (no NUMA).
    pub node: Option<u32>,
    /// The cache-id fields (`L1d:L1i:L2:L3`), as printed.
    pub caches: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lscpu -p line {line}: {message}")]
pub struct LscpuError {
    pub line: usize,
    pub message: String,
}

/// The parsed rows, in lscpu order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuLayout {
    pub rows: Vec<LscpuRow>,
}

impl CpuLayout {
    pub fn parse(text: &str) -> Result<CpuLayout, LscpuError> {
        let mut cols = ["cpu", "core", "socket", "node"].map(String::from).to_vec();
        let mut rows = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if let Some(comment) = line.strip_prefix('#') {
                // The header is the comment line listing the columns.
                if comment.contains(',') && comment.to_ascii_lowercase().contains("cpu") {
                    cols = comment.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let err = |message: String| LscpuError { line: i + 1, message };
            let field = |name: &str| cols.iter().position(|c| c == name).and_then(|p| fields.get(p)).map(|f| f.trim());
            let num = |name: &str| -> Result<Option<u32>, LscpuError> {
                match field(name) {
                    None | Some("") => Ok(None),
                    Some(v) => v.parse().map(Some).map_err(|_| err(format!("{name} `{v}` is not a number"))),
                }
            };
            let cpu = num("cpu")?.ok_or_else(|| err("no CPU number".into()))?;
            let core = num("core")?.unwrap_or(cpu);
            let socket = num("socket")?.unwrap_or(0);
            let node = num("node")?;
            let cache_cols: Vec<&str> = cols
                .iter()
                .enumerate()
                .filter(|(_, c)| c.starts_with('l') && c.len() <= 4)
                .filter_map(|(p, _)| fields.get(p).copied())
                .collect();
            rows.push(LscpuRow { cpu, core, socket, node, caches: cache_cols.join(":") });
        }
        if rows.is_empty() {
            return Err(LscpuError { line: 0, message: "no CPU rows".into() });
        }
        Ok(CpuLayout { rows })
    }

    /// NUMA node of `cpu` (0 on hosts without NUMA), `None` if the host has no such CPU.
    pub fn node_of(&self, cpu: u32) -> Option<u32> {
        self.rows.iter().find(|r| r.cpu == cpu).map(|r| r.node.unwrap_or(0))
    }

    /// The NUMA nodes that have CPUs.
    pub fn nodes(&self) -> BTreeSet<u32> {
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

    const TWO_NODES: &str = "# The following is the parsable format, which can be fed to other\n\
        # programs. Each different item in every column has an unique ID\n# starting usually from zero.\n\
        # CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,0,,1,1,1,0\n2,2,1,1,,2,2,2,1\n3,3,1,1,,3,3,3,1\n";

    #[test]
    fn parses_rows_by_header() {
        let l = CpuLayout::parse(TWO_NODES).unwrap();
        assert_eq!(l.rows.len(), 4);
        assert_eq!(l.rows[2], LscpuRow { cpu: 2, core: 2, socket: 1, node: Some(1), caches: "2:2:2:1".into() });
        assert_eq!(l.nodes().into_iter().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn binding_only_with_several_nodes_and_one_node_per_vm() {
        let l = CpuLayout::parse(TWO_NODES).unwrap();
        assert_eq!(l.binding(&[2, 3]), Some(1));
        assert_eq!(l.binding(&[1, 2]), None, "CPUs on two nodes: no binding");
        assert_eq!(l.binding(&[7]), None, "unknown CPU");
        let one =
            CpuLayout::parse("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,,,0,0,0,0\n1,1,0,,,1,1,1,0\n").unwrap();
        assert_eq!(one.node_of(1), Some(0));
        assert_eq!(one.binding(&[0, 1]), None, "one NUMA node: nothing to bind");
    }

    #[test]
    fn bad_rows_name_their_line() {
        let e = CpuLayout::parse("# CPU,Core,Socket,Node\n0,0,0,0\nx,1,0,0\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(CpuLayout::parse("# only comments\n").is_err());
    }
}
