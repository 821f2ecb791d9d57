//! Run state kept on the node itself (`<run_root>/<run_id>/manifest.json`), so `down`, `status`
//! and `logs` work from the hosts alone, even when the jumpbox lost its local record.

use serde::{Deserialize, Serialize};

use crate::facts::HostFacts;
use crate::plan::{PlannedFile, VmPlan};
use crate::quote::quote;
use crate::remote::hugepages::HugepageChange;
use crate::remote::process::PinnedThread;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub run_id: String,
    pub node: String,
    pub host: String,
    /// Absolute path of the topology file on the jumpbox (how `down TOPOLOGY` finds its runs).
    pub topology: String,
    /// `user@host` of whoever ran `up`.
    pub started_by: String,
    pub created_unix: u64,
    pub run_dir: String,
    pub vms: Vec<VmRecord>,
    /// What `up` changed in the hugepage pools, undone by `down`.
    pub hugepages: Vec<HugepageChange>,
    /// The facts the node was planned with (`render --facts` reproduces the plan from them).
    #[serde(default)]
    pub facts: Option<HostFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmRecord {
    pub name: String,
    pub qemu_id: u32,
    pub run_dir: String,
    pub pidfile: String,
    pub serial_log: String,
    pub qmp: String,
    pub qga: Option<String>,
    /// `preparing` (written before anything else of the run exists), `starting`, `booting`,
    /// `ready`, `failed`.
    pub state: String,
    pub pid: Option<u32>,
    pub pinned: Vec<PinnedThread>,
    pub guest_interfaces: Vec<GuestInterfaceRecord>,
    /// The exact qemu argv `up` ran.
    #[serde(default)]
    pub argv: Vec<String>,
    /// The exact files `up` uploaded.
    #[serde(default)]
    pub files: Vec<FileRecord>,
}

/// A file as uploaded: path, mode and bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub path: String,
    pub mode: u32,
    pub content: String,
}

impl From<&PlannedFile> for FileRecord {
    fn from(f: &PlannedFile) -> Self {
        FileRecord { path: f.path.clone(), mode: f.mode, content: f.content.clone() }
    }
}

impl VmRecord {
    /// The record of a planned VM before it runs (state, pid and the rest filled in by `up`).
    pub fn planned(v: &VmPlan) -> Self {
        VmRecord {
            name: v.name.clone(),
            qemu_id: v.qemu_id,
            run_dir: v.paths.run_dir.clone(),
            pidfile: v.paths.pidfile.clone(),
            serial_log: v.paths.serial_log.clone(),
            qmp: v.paths.qmp.clone(),
            qga: v.paths.qga.clone(),
            state: "starting".into(),
            pid: None,
            pinned: vec![],
            guest_interfaces: vec![],
            argv: v.argv.clone(),
            files: v.files.iter().map(FileRecord::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestInterfaceRecord {
    /// Name inside the guest (`eth0`).
    pub name: String,
    pub mac: Option<String>,
    pub ips: Vec<String>,
    /// The planned NIC id this MAC belongs to (`vhost1`), if it is one of ours.
    pub nic: Option<String>,
}

/// Where a node's manifest lives. One file per node: several nodes of a topology may share a
/// host (and so the run directory), as the loopback lab's do.
pub fn path(run_dir: &str, node: &str) -> String {
    format!("{run_dir}/manifest-{node}.json")
}

/// Script listing every manifest under `run_root` as `== <path>` followed by its JSON.
pub fn list_script(run_root: &str) -> String {
    format!(
        "for f in {root}/*/manifest-*.json; do [ -f \"$f\" ] || continue; printf '== %s\\n' \"$f\"; cat \"$f\"; echo; done",
        root = quote(run_root)
    )
}

/// Parse [`list_script`] output, each manifest with the path it was read from.
pub fn parse_listed(out: &str) -> Vec<(String, Result<Manifest, String>)> {
    parse_list(out)
        .into_iter()
        .map(|r| match r {
            Ok((p, m)) => (p, Ok(m)),
            Err((p, e)) => (p, Err(e)),
        })
        .collect()
}

/// Parse [`list_script`] output. Unreadable manifests are returned as errors (path, message),
/// never silently skipped: a run we cannot read is a run we cannot stop.
#[allow(clippy::type_complexity)]
pub fn parse_list(out: &str) -> Vec<Result<(String, Manifest), (String, String)>> {
    let mut res = Vec::new();
    let mut cur: Option<(String, String)> = None;
    let flush = |cur: Option<(String, String)>, res: &mut Vec<_>| {
        if let Some((path, body)) = cur {
            res.push(match serde_json::from_str::<Manifest>(body.trim()) {
                Ok(m) => Ok((path, m)),
                Err(e) => Err((path, e.to_string())),
            });
        }
    };
    for line in out.lines() {
        if let Some(p) = line.strip_prefix("== ") {
            flush(cur.take(), &mut res);
            cur = Some((p.to_string(), String::new()));
        } else if let Some((_, body)) = cur.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(cur, &mut res);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(run: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            run_id: run.into(),
            node: "DUT1".into(),
            host: "127.0.0.1".into(),
            topology: "/x/lab.yaml".into(),
            started_by: "me@box".into(),
            created_unix: 1,
            run_dir: format!("/run/harness/{run}"),
            vms: vec![VmRecord {
                name: "DUT1_1".into(),
                qemu_id: 1,
                run_dir: format!("/run/harness/{run}/DUT1_1"),
                pidfile: "p".into(),
                serial_log: "s".into(),
                qmp: "q".into(),
                qga: None,
                state: "ready".into(),
                pid: Some(5),
                pinned: vec![],
                guest_interfaces: vec![],
                argv: vec!["qemu".into()],
                files: vec![FileRecord { path: "/x".into(), mode: 0o644, content: "y".into() }],
            }],
            hugepages: vec![],
            facts: None,
        }
    }

    #[test]
    fn list_output_round_trips_and_reports_broken_manifests() {
        let a = serde_json::to_string_pretty(&sample("r1")).unwrap();
        let b = serde_json::to_string(&sample("r2")).unwrap();
        let out = format!(
            "== /run/harness/r1/manifest.json\n{a}\n== /run/harness/bad/manifest.json\n{{nope\n== /run/harness/r2/manifest.json\n{b}\n"
        );
        let got = parse_list(&out);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().1, sample("r1"));
        assert_eq!(got[1].as_ref().unwrap_err().0, "/run/harness/bad/manifest.json");
        assert_eq!(got[2].as_ref().unwrap().1, sample("r2"));
    }
}
