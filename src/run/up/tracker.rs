//! What `up` has done so far, where: shared by the node tasks and the cleanup path.
//!
//! Every side effect is recorded *before* it is made, so an error, a timeout, a lost connection or
//! Ctrl-C at any point leaves cleanup a complete list of what to undo: the run directory is
//! marked `claimed` before the claim is sent (cleanup then asks the host, and acts only on a
//! directory whose owner file holds this invocation's nonce, so it never touches another run's
//! directory), every planned VM directory counts as possibly created, and a hugepage allocation
//! is marked in flight before it is sent (the host journals what it really did; cleanup restores
//! from that journal). A QEMU counts as `launched` (for the report) once it has started; cleanup
//! stops every planned VM of a claimed directory anyway, since a start may have been cut short.

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
    /// This invocation's nonce: the first line of the owner file of every run directory it claims.
    pub nonce: String,
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
    /// The claim of the run directory was sent (it may exist, owned by us).
    pub claimed: bool,
    /// A hugepage allocation was sent (its journal on the host says what it did).
    pub hugepages_in_flight: bool,
    pub hugepages: Vec<HugepageChange>,
    pub facts: Option<HostFacts>,
    pub plan: Option<NodePlan>,
}

impl Tracker {
    pub fn new() -> Self {
        Tracker { inner: Mutex::default(), nonce: format!("{:016x}", rand::random::<u64>()) }
    }
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
