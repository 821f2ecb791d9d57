//! `down --artifacts DIR`: before a node's runs are stopped, the same artifacts `up` collects
//! on failure, from the hosts' manifests, under `DIR/<run_id>/<node>/`.

use std::path::Path;

use super::artifacts::{self, NodeSource, VmSource};
use super::counters;
use crate::run::down::{Selector, discover};
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
        let vms = m
            .vms
            .iter()
            .map(|v| VmSource {
                name: v.name.clone(),
                serial_log: v.serial_log.clone(),
                qga: v.qga.clone(),
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
            .collect();
        let nodes = [NodeSource {
            name: node.into(),
            session: session.clone(),
            run_dir: m.run_dir.clone(),
            facts: m.facts,
            vms,
        }];
        let collected = artifacts::counters(&nodes).await;
        let run_dir = dir.join(artifacts::safe(&m.run_id));
        missing.extend(artifacts::write_nodes(&run_dir, &nodes, &collected).await);
    }
    missing
}
