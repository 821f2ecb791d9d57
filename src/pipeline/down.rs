//! `down --artifacts DIR`: before a node's runs are stopped, the same artifacts `up` collects
//! on failure, from the hosts' manifests, under `DIR/<run_id>/<node>/`.

use std::path::Path;

use super::artifacts::{self, NodeSource, VmSource};
use super::counters;
use crate::remote::layout;
use crate::run::down::{Selector, discover};
use crate::run::manifest::Manifest;
use crate::ssh::Session;
use crate::topology::Topology;

/// Collect the selected runs of one node; returns what is missing, one line each.
pub async fn before_down(
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
        let (run_dir, vms) = match sources(run_root, &m, topology) {
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
fn sources(run_root: &str, m: &Manifest, topology: &Topology) -> Result<(String, Vec<VmSource>), String> {
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
                commands: topology
                    .vms
                    .iter()
                    .find(|t| t.name == v.name)
                    .map(counters::commands_for)
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((run_dir, vms))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (run_dir, vms) = sources("/run/harness", &m, &topo).unwrap();
        assert_eq!(run_dir, "/run/harness/r1");
        assert_eq!(vms[0].serial_log, "/run/harness/r1/DUT1_1/serial.log");
        assert_eq!(vms[0].qga.as_deref(), Some("/run/harness/r1/DUT1_1/qga.sock"));
        let mut bad = m.clone();
        bad.run_id = "../etc".into();
        assert!(sources("/run/harness", &bad, &topo).is_err());
    }
}
