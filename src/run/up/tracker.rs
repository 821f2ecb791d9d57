//! What `up` has done so far, where: shared by the node tasks and the cleanup path.
//!
//! Every side effect is recorded *before* it is made (a VM directory before `mkdir`, a QEMU
//! before its start command, a hugepage change as soon as the allocation reports it), so an
//! error, a timeout or Ctrl-C at any point leaves cleanup a complete list of what to undo.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{VmResult, VmState};
use crate::facts::HostFacts;
use crate::plan::NodePlan;
use crate::remote::hugepages::HugepageChange;
use crate::ssh::Session;

#[derive(Default)]
pub struct Tracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Default)]
pub(super) struct TrackerInner {
    pub nodes: BTreeMap<String, TrackedNode>,
    pub vms: BTreeMap<(String, String), VmResult>,
}

/// A QEMU this run launched (or tried to): what cleanup needs to stop it.
#[derive(Debug, Clone)]
pub struct Launched {
    pub vm: String,
    pub pidfile: String,
    pub qmp: String,
    pub run_dir: String,
}

#[derive(Clone)]
pub struct TrackedNode {
    pub session: Session,
    pub host: String,
    pub run_root: String,
    pub run_dir: String,
    pub launched: Vec<Launched>,
    /// Every VM run directory this run may have created on the node (launched or not).
    pub vm_dirs: Vec<String>,
    pub hugepages: Vec<HugepageChange>,
    pub facts: Option<HostFacts>,
    pub plan: Option<NodePlan>,
}

impl Tracker {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut TrackerInner) -> R) -> R {
        f(&mut self.inner.lock().expect("tracker lock"))
    }
    pub fn vm(&self, node: &str, vm: &str, f: impl FnOnce(&mut VmResult)) {
        self.with(|t| {
            if let Some(v) = t.vms.get_mut(&(node.to_string(), vm.to_string())) {
                f(v)
            }
        })
    }
    pub fn set_state(&self, node: &str, vm: &str, state: VmState) {
        self.vm(node, vm, |r| r.state = state);
    }
    pub fn timing(&self, node: &str, vm: &str, key: &str, secs: f64) {
        self.vm(node, vm, |r| {
            r.timings.insert(key.to_string(), secs);
        });
    }
    pub fn node(&self, node: &str, f: impl FnOnce(&mut TrackedNode)) {
        self.with(|t| {
            if let Some(n) = t.nodes.get_mut(node) {
                f(n)
            }
        })
    }
    pub fn get_node(&self, node: &str) -> Option<TrackedNode> {
        self.with(|t| t.nodes.get(node).cloned())
    }
    pub fn nodes(&self) -> Vec<(String, TrackedNode)> {
        self.with(|t| t.nodes.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    pub fn vm_result(&self, node: &str, vm: &str) -> Option<VmResult> {
        self.with(|t| t.vms.get(&(node.to_string(), vm.to_string())).cloned())
    }
}
