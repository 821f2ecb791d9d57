//! `down --artifacts DIR`: before a node's runs are stopped, the same artifacts `up` collects
//! on failure, from the hosts' manifests, under `DIR/<run_id>/<node>/`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::artifacts::{self, NodeSource, VmSource};
use super::counters;
use crate::remote::layout;
use crate::run::down::{Selector, discover};
use crate::run::manifest::Manifest;
use crate::ssh::Session;
use crate::topology::Topology;

/// Collect the selected runs of one node; returns what is missing, one line each. It runs in a
/// task of its own: a panic in it (it parses whatever the hosts and guests send) becomes a
/// missing line and must not unwind past the node's `down`, which would leave its VMs running.
pub async fn before_down(
    session: Session,
    node: String,
    run_root: String,
    sel: Selector,
    topology: Arc<Topology>,
    dir: PathBuf,
) -> Vec<String> {
    let name = node.clone();
    isolated(&name, async move { collect(&session, &node, &run_root, &sel, &topology, &dir).await }).await
}

/// `collect` run as a task: its lines, or one saying it failed.
async fn isolated(node: &str, collect: impl Future<Output = Vec<String>> + Send + 'static) -> Vec<String> {
    match tokio::spawn(collect).await {
        Ok(missing) => missing,
        Err(e) => vec![format!("{node}: collecting artifacts failed: {e}")],
    }
}

async fn collect(
    session: &Session,
    node: &str,
    run_root: &str,
    sel: &Selector,
    topology: &Topology,
    dir: &Path,
) -> Vec<String> {
    let manifests = match discover(session, node, run_root).await {
        Ok(m) => m,
        Err(e) => return vec![format!("{node}: manifests not readable: {e}")],
    };
    let mut missing = Vec::new();
    for m in manifests.into_iter().flatten().filter(|m| sel.matches(m)) {
        let (run_dir, vms) = match sources(node, run_root, &m, topology) {
            Ok(s) => s,
            Err(e) => {
                missing.push(format!("{node}: run {:?}: {e}", m.run_id));
                continue;
            }
        };
        let nodes = [NodeSource { name: node.into(), session: session.clone(), run_dir, facts: m.facts, vms }];
        let collected = artifacts::counters(&nodes).await;
        let run_dir = dir.join(artifacts::safe(&m.run_id));
        missing.extend(artifacts::write_nodes(&run_dir, &nodes, &collected).await);
    }
    missing
}

/// The run directory and VMs to collect from, with every path recomputed from `run_root`, the
/// run id and the VM names ([`crate::remote::layout`]), never taken from the manifest: the files
/// are read as root, and a manifest is only a file on the host.
fn sources(node: &str, run_root: &str, m: &Manifest, topology: &Topology) -> Result<(String, Vec<VmSource>), String> {
    let run_dir = layout::run_dir(run_root, &m.run_id)?;
    let vms = m
        .vms
        .iter()
        .map(|v| {
            let paths = layout::vm_paths(&run_dir, &v.name)?;
            Ok(VmSource {
                name: v.name.clone(),
                serial_log: paths.serial_log,
                qga: v.qga.as_ref().map(|_| paths.qga),
                argv: v.argv.clone(),
                files: v.files.clone(),
                error: None,
                qemu_stderr: None,
                ready: v.state == "ready",
                commands: counters::commands_in(topology, node, &v.name),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((run_dir, vms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while collecting `down --artifacts` unwound through the node's `down` task:
    /// that node's VMs were left running and the command exited 1. It is a missing line now.
    #[test]
    fn regression_a_panic_while_collecting_becomes_a_missing_line() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let missing = rt.block_on(isolated("DUT1", async { panic!("a collector bug") }));
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].starts_with("DUT1: collecting artifacts failed: ") && missing[0].contains("panicked"),
            "{missing:?}"
        );
        let fine = rt.block_on(isolated("DUT1", async { vec!["x".to_string()] }));
        assert_eq!(fine, ["x"]);
    }

    /// `down --artifacts` read the serial log (`sudo tail`), the run's manifest (`sudo cat`)
    /// and the agent socket at the paths the manifest named: a manifest edited to name
    /// `/etc/shadow` put that file into the published artifacts.
    #[test]
    fn regression_artifacts_of_down_read_recomputed_paths_not_the_manifests() {
        let json = r#"{"format":1,"run_id":"r1","node":"DUT1","host":"h","topology":"/t.yaml","started_by":"u@j",
            "created_unix":0,"run_dir":"/etc","hugepages":[],"vms":[{"name":"DUT1_1","qemu_id":1,"run_dir":"/etc",
            "pidfile":"/etc/p","serial_log":"/etc/shadow","qga":"/run/other/qga.sock","qmp":"/etc/q","argv":[],
            "files":[],"state":"ready","pid":7,"pinned":[],"guest_interfaces":[]}]}"#;
        let m: Manifest = match serde_json::from_str(json) {
            Ok(m) => m,
            Err(e) => panic!("fixture no longer matches the manifest format: {e}"),
        };
        let topo = crate::plan::fixture::topology(vec![], vec![]);
        let (run_dir, vms) = sources("DUT1", "/run/harness", &m, &topo).unwrap();
        assert_eq!(run_dir, "/run/harness/r1");
        assert_eq!(vms[0].serial_log, "/run/harness/r1/DUT1_1/serial.log");
        assert_eq!(vms[0].qga.as_deref(), Some("/run/harness/r1/DUT1_1/qga.sock"));
        let mut bad = m.clone();
        bad.run_id = "../etc".into();
        assert!(sources("DUT1", "/run/harness", &bad, &topo).is_err());
    }

    /// `down --artifacts` never collected a chain VM's counters, not even an explicit
    /// `collect:`: it looked the VM up in `topology.vms`, which holds only `vms:` entries.
    #[test]
    fn regression_down_collects_chain_vms_counters() {
        let json = r#"{"format":1,"run_id":"r1","node":"DUT1","host":"h","topology":"/t.yaml","started_by":"u@j",
            "created_unix":0,"run_dir":"/run/harness/r1","hugepages":[],"vms":[{"name":"DUT1_3","qemu_id":3,
            "run_dir":"/run/harness/r1/DUT1_3","pidfile":"p","serial_log":"s","qga":"q","qmp":"m","argv":[],
            "files":[],"state":"ready","pid":7,"pinned":[],"guest_interfaces":[]}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        let path = format!("{}/topologies/csit-chain.yaml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!("{}\n      qga: true\n      collect: [\"cat /proc/net/snmp6\"]\n", text.trim_end());
        let topo = crate::topology::load_str_with(&text, Path::new(&path), &|_| true).unwrap();
        let (_, vms) = sources("DUT1", "/run/harness", &m, &topo).unwrap();
        assert_eq!(vms[0].commands, [["cat", "/proc/net/snmp6"]]);
    }
}
