//! `up`'s pipeline hooks: counters and artifacts gathered before cleanup, then the local files
//! (`events.jsonl`, `result.json`, `junit.xml`, `bundle.tar.gz`, `missing.txt`) once the
//! result is known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::artifacts::{self, NodeSource, VmSource};
use super::counters::{self, Collected};
use crate::report::EventLog;
use crate::run::manifest::FileRecord;
use crate::run::up::{BeforeCleanup, FailureKind, RunResult, RunView, VmState};
use crate::topology::Topology;

/// node -> vm -> collected outputs.
pub type Counters = BTreeMap<String, BTreeMap<String, Vec<Collected>>>;

/// When `--artifacts DIR` collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Failure,
    Always,
}

/// What the hook found, read by the command once `up` returns.
#[derive(Debug, Default)]
pub struct Capture {
    pub counters: Counters,
    pub missing: Vec<String>,
    /// The remote part of the artifacts was written (the run qualified for collection).
    pub artifacts_written: bool,
}

/// The hook `up` calls before cleanup: counters of every ready VM (always), and the remote
/// artifacts when `artifacts` is set and the run qualifies. Skipped on an interrupt: the user
/// asked to stop, and every source would add its timeout.
pub fn hook(
    topology: Arc<Topology>,
    artifacts: Option<(PathBuf, When)>,
    capture: Arc<Mutex<Capture>>,
) -> BeforeCleanup {
    Arc::new(move |view: RunView| {
        let (topology, artifacts, capture) = (topology.clone(), artifacts.clone(), capture.clone());
        Box::pin(async move {
            if view.interrupted {
                return;
            }
            let nodes = node_sources(&view, &topology);
            let counters = artifacts::counters(&nodes).await;
            let mut written = false;
            let mut missing = vec![];
            if let Some((dir, when)) = artifacts
                && (when == When::Always || !view.ok)
            {
                missing = artifacts::write_nodes(&dir, &nodes, &counters).await;
                written = true;
            }
            let mut c = capture.lock().expect("capture lock");
            c.counters = counters;
            c.missing = missing;
            c.artifacts_written = written;
        })
    })
}

/// The connected nodes and their planned VMs, as artifact sources.
pub fn node_sources(view: &RunView, topology: &Topology) -> Vec<NodeSource> {
    view.nodes
        .iter()
        .map(|(name, tn)| {
            // An unclaimed node has a plan but nothing on the host to collect.
            let vms = tn.plan.iter().filter(|_| tn.claimed).flat_map(|p| &p.vms).map(|vp| {
                let r = view.vms.iter().find(|r| &r.node == name && r.name == vp.name);
                let error = r.and_then(|r| r.error.clone());
                let start_failed = r.is_some_and(|r| r.failure == Some(FailureKind::Infrastructure))
                    && error.as_deref().is_some_and(|e| e.contains("qemu failed to start"));
                VmSource {
                    name: vp.name.clone(),
                    serial_log: vp.paths.serial_log.clone(),
                    qga: vp.paths.qga.clone(),
                    argv: vp.argv.clone(),
                    files: vp.files.iter().map(FileRecord::from).collect(),
                    qemu_stderr: if start_failed { error.clone() } else { None },
                    error,
                    ready: r.is_some_and(|r| r.state == VmState::Ready),
                    commands: counters::commands_in(topology, name, &vp.name),
                }
            });
            NodeSource {
                name: name.clone(),
                session: tn.session.clone(),
                run_dir: tn.run_dir.clone(),
                facts: tn.facts.clone(),
                vms: vms.collect(),
            }
        })
        .collect()
}

/// The `--format json` result with each VM's collected outputs (`collected`) added.
pub fn result_json(res: &RunResult, counters: &Counters) -> Value {
    let mut v = serde_json::to_value(res).expect("serialisable");
    if let Some(vms) = v["vms"].as_array_mut() {
        for vm in vms {
            let (node, name) = (vm["node"].as_str().unwrap_or_default(), vm["name"].as_str().unwrap_or_default());
            if let Some(c) = counters.get(node).and_then(|m| m.get(name)) {
                vm["collected"] = serde_json::to_value(c).expect("serialisable");
            }
        }
    }
    v
}

/// The run-level artifacts, written once the result is known.
pub struct RunFiles<'a> {
    pub result: &'a Value,
    pub events: &'a EventLog,
    pub junit: Option<&'a str>,
    /// The run's reproduction record, packed as `bundle.tar.gz`.
    pub record_dir: Option<&'a Path>,
    pub missing: Vec<String>,
}

/// Every file whole or not at all (a temporary file, then a rename), as `--junit` is.
pub fn write_run_files(dir: &Path, f: RunFiles<'_>) -> std::io::Result<()> {
    use crate::run::record::write_atomically;
    std::fs::create_dir_all(dir)?;
    write_atomically(&dir.join("events.jsonl"), f.events.to_jsonl().as_bytes())?;
    write_atomically(&dir.join("result.json"), &serde_json::to_vec_pretty(f.result).expect("serialisable"))?;
    if let Some(x) = f.junit {
        write_atomically(&dir.join("junit.xml"), x.as_bytes())?;
    }
    let mut missing = f.missing;
    match f.record_dir {
        Some(r) => {
            if let Err(e) = super::bundle::pack(r, &dir.join("bundle.tar.gz")) {
                missing.push(format!("bundle.tar.gz: {e}"));
            }
        }
        None => missing.push("bundle.tar.gz: no run record".into()),
    }
    artifacts::write_missing(dir, &missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// The run's artifacts (`events.jsonl`, `result.json`, `junit.xml`, `missing.txt`) were
    /// written in place: an upload step reading them, or a failure half-way, got truncated files.
    #[test]
    fn regression_run_files_are_replaced_whole_not_rewritten_in_place() {
        let d = tempfile::tempdir().unwrap();
        let names = ["events.jsonl", "result.json", "junit.xml", "missing.txt"];
        for n in names {
            std::fs::write(d.path().join(n), "old").unwrap();
        }
        let mut readers: Vec<_> = names.iter().map(|n| std::fs::File::open(d.path().join(n)).unwrap()).collect();
        let result = serde_json::json!({"ok": true});
        let events = EventLog::default();
        let files =
            RunFiles { result: &result, events: &events, junit: Some("<x/>"), record_dir: None, missing: vec![] };
        write_run_files(d.path(), files).unwrap();
        for (n, r) in names.iter().zip(&mut readers) {
            let mut seen = String::new();
            r.read_to_string(&mut seen).unwrap();
            assert_eq!(seen, "old", "{n}: the previous file was rewritten in place");
        }
        assert_eq!(std::fs::read_to_string(d.path().join("junit.xml")).unwrap(), "<x/>");
        assert_eq!(std::fs::read_to_string(d.path().join("missing.txt")).unwrap(), "bundle.tar.gz: no run record\n");
        let mut left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        left.sort();
        assert_eq!(left, ["events.jsonl", "junit.xml", "missing.txt", "result.json"], "no temporary file left");
    }
}
