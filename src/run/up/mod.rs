//! `harness up`: on every node concurrently, gather the host's facts, plan the node with them,
//! and execute exactly that plan; prove every VM is ready.
//!
//! The stages of one node ([`node::node_up`]), each in its own module:
//!
//! 1. [`prepare`]: connect, gather [`crate::facts::HostFacts`] (one round trip), plan the node
//!    ([`crate::plan::plan_node`], the same function `render` uses), create the run directories;
//! 2. [`upload`]: the rendered files;
//! 3. [`hugepages`]: under the host lock, check (and if allowed allocate) the plan's hugepage
//!    needs less other runs' reservations, and reserve them ([`crate::remote::reserve`]);
//! 4. [`start`]: launch each QEMU, outside the lock (the reservation keeps other runs off the
//!    pages until preallocation has them), concurrently with other nodes sharing the host;
//! 5. [`readiness`]: per VM, follow the serial log until a ready marker, then the guest agent;
//! 6. [`pin`]: vCPU threads to their CPUs, read back (concurrently with the agent);
//! 7. [`cleanup`]: on any failure or interrupt, stop what the [`Tracker`] recorded, on every node.
//!
//! The plan is never patched after planning: what `up` runs is what `render --facts` shows, and
//! both the facts and the plan are written to the node manifest ([`record`]).

mod cleanup;
mod hugepages;
mod node;
mod pin;
mod prepare;
mod readiness;
mod record;
mod start;
mod tracker;
mod upload;

pub use cleanup::{CleanupReport, cleanup};
pub use tracker::{Launched, TrackedNode, Tracker};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::manifest::GuestInterfaceRecord;
use crate::facts::HostFacts;
use crate::plan::{AccelChoice, NodePlan, PlanError};
use crate::remote::hugepages::HugepageChange;
use crate::remote::lock::LockError;
use crate::remote::process::PinnedThread;
use crate::report::EventSink;
use crate::ssh::{ConnectOptions, SshError};
use crate::templates::Templates;
use crate::topology::Topology;

pub struct UpOptions {
    pub run_id: String,
    /// Absolute path of the topology (recorded in manifests).
    pub topology_path: PathBuf,
    pub topology: Arc<Topology>,
    pub templates: Arc<Templates>,
    /// Start only these VMs (by name); empty = all.
    pub only_vms: Vec<String>,
    pub connect: ConnectOptions,
    /// How long `down`/cleanup waits for QMP `quit` before SIGTERM.
    pub stop_grace: Duration,
    /// How to reach a node; `None` = SSH. Tests connect to in-process fake hosts.
    pub connector: Option<Arc<dyn Connector>>,
    /// Fires like Ctrl-C/SIGTERM (tests, and embedders with their own signal handling).
    pub interrupt: Option<Arc<tokio::sync::Notify>>,
    /// Called once every node task has ended, before cleanup stops anything (so artifacts and
    /// counters can still be read from live guests) and before the final manifests.
    pub before_cleanup: Option<BeforeCleanup>,
}

/// Opens the session to a node (the seam tests use to put a fake host behind a node).
pub trait Connector: Send + Sync {
    fn connect(
        &self,
        node: &crate::topology::Node,
    ) -> futures::future::BoxFuture<'static, Result<crate::ssh::Session, SshError>>;
}

/// See [`UpOptions::before_cleanup`]. It must bound its own time: cleanup waits for it.
pub type BeforeCleanup =
    Arc<dyn Fn(RunView) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// What the run looks like when the node tasks have ended, for [`BeforeCleanup`].
pub struct RunView {
    /// Every VM ready, nothing failed or interrupted.
    pub ok: bool,
    pub interrupted: bool,
    /// The nodes that were connected, with their sessions, facts and plans.
    pub nodes: Vec<(String, TrackedNode)>,
    pub vms: Vec<VmResult>,
}

/// Why a node or a VM failed: CI reports tell the thing under test (`<failure>`) from the lab
/// (`<error>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The guest never became ready: boot timeout, a failure marker, QEMU exiting during boot,
    /// a silent guest agent.
    NotReady,
    /// Connect, host key or authentication failed, or the connection broke mid-run.
    Unreachable,
    /// The host side: QEMU would not start, hugepages, locks, pinning, commands failing.
    Infrastructure,
}

/// Where a VM is. Serialised in snake_case (`pending`, `starting`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Not started (yet, or ever: another node failed first).
    Pending,
    Starting,
    Booting,
    Ready,
    Failed,
    Stopped,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Pending => "pending",
            VmState::Starting => "starting",
            VmState::Booting => "booting",
            VmState::Ready => "ready",
            VmState::Failed => "failed",
            VmState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub ok: bool,
    pub interrupted: bool,
    pub duration_s: f64,
    pub nodes: Vec<NodeResult>,
    pub vms: Vec<VmResult>,
    /// After a failure: whether cleanup undid everything, and what it could not.
    pub cleanup: Option<CleanupReport>,
    /// The run id was refused: it belongs to another run (nothing of that run was touched).
    pub run_id_in_use: bool,
    /// SSH handshakes a server dropped (sshd's `MaxStartups`) and this run retried, jump hosts
    /// included.
    pub handshake_retries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub name: String,
    pub host: String,
    /// Accelerator the plan chose.
    pub accel: Option<AccelChoice>,
    pub hugepages: Vec<HugepageChange>,
    pub error: Option<String>,
    /// The node could not be reached or refused us (connect, host key, auth), or its
    /// connection broke mid-run.
    pub unreachable: bool,
    /// Set with `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(skip)]
    pub run_id_in_use: bool,
    /// The facts gathered and the plan executed (kept for the run record, not printed).
    #[serde(skip)]
    pub facts: Option<HostFacts>,
    #[serde(skip)]
    pub plan: Option<NodePlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmResult {
    pub node: String,
    pub name: String,
    pub state: VmState,
    pub pid: Option<u32>,
    pub guest_interfaces: Vec<GuestInterfaceRecord>,
    pub pinned: Vec<PinnedThread>,
    /// Seconds per phase (`upload`, `start`, `boot`, `agent`, `pin`, `total`).
    pub timings: BTreeMap<String, f64>,
    pub error: Option<String>,
    /// Set with `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Last serial lines, on failure.
    pub serial_tail: Vec<String>,
}

impl VmResult {
    fn pending(node: &str, name: &str) -> Self {
        VmResult {
            node: node.into(),
            name: name.into(),
            state: VmState::Pending,
            pid: None,
            guest_interfaces: vec![],
            pinned: vec![],
            timings: BTreeMap::new(),
            error: None,
            failure: None,
            serial_tail: vec![],
        }
    }
}

/// Errors of one node or VM, already phrased for a person (node and VM named by the caller).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}")]
    Failed(String),
    /// The run id's directory exists on the node: another run (or its leftovers) owns it.
    #[error("{0}")]
    RunIdInUse(String),
    /// The connection to the node broke mid-run (message already names the node and VM).
    #[error("{0}")]
    Lost(String),
    #[error("{message}")]
    Guest { message: String, tail: Vec<String> },
}

impl UpError {
    /// Connect, handshake, host key or authentication failures: the node was never usable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, UpError::Ssh(e) if e.is_unreachable())
    }
    /// The connection broke while in use: the node is lost (exit 3), not the guest failed.
    pub fn is_lost(&self) -> bool {
        matches!(self, UpError::Lost(_)) || matches!(self, UpError::Ssh(e) if e.is_connection_lost())
    }
    /// This error, prefixed with `what` (a VM name), keeping whether the node was lost.
    pub fn context(self, what: &str) -> UpError {
        if self.is_lost() { UpError::Lost(format!("{what}: {self}")) } else { fail(format!("{what}: {self}")) }
    }

    pub fn failure_kind(&self) -> FailureKind {
        match self {
            UpError::Guest { .. } => FailureKind::NotReady,
            e if e.is_unreachable() || e.is_lost() => FailureKind::Unreachable,
            _ => FailureKind::Infrastructure,
        }
    }
}

pub(crate) fn fail(msg: impl Into<String>) -> UpError {
    UpError::Failed(msg.into())
}

/// Bring up every selected VM of the topology. Never returns with VMs of a failed run running.
pub async fn up(opts: &UpOptions, events: EventSink) -> RunResult {
    let started = Instant::now();
    // The process-wide count: this run's share is what it adds.
    let retries_before = crate::ssh::handshake_retries_total();
    let tracker = Arc::new(Tracker::new());
    let topo = opts.topology.clone();
    let selected = |name: &str| opts.only_vms.is_empty() || opts.only_vms.iter().any(|v| v == name);
    let order: Vec<(String, String)> = topo.vm_names().into_iter().filter(|(_, v)| selected(v)).collect();
    tracker.with(|t| {
        for (n, v) in &order {
            t.vms.insert((n.clone(), v.clone()), VmResult::pending(n, v));
        }
    });
    let mut node_results: BTreeMap<String, NodeResult> = BTreeMap::new();
    let mut set = JoinSet::new();
    let nodes: Vec<_> = topo.duts().filter(|n| order.iter().any(|(vn, _)| vn == &n.name)).collect();
    let slots = crate::slots::NodeSlots::new(opts.connect.max_parallel);
    if let Some(note) = slots.queued_note(nodes.len()) {
        events.info(note);
    }
    for node in nodes {
        node_results.insert(
            node.name.clone(),
            NodeResult {
                name: node.name.clone(),
                host: node.host.clone(),
                accel: None,
                hugepages: vec![],
                error: None,
                unreachable: false,
                failure: None,
                run_id_in_use: false,
                facts: None,
                plan: None,
            },
        );
        let ctx = node::NodeCtx::new(opts, node, tracker.clone(), events.for_node(&node.name));
        let slots = slots.clone();
        set.spawn(async move {
            if slots.full() {
                ctx.events.info("queued: waiting for a slot (--max-parallel)");
            }
            let _slot = slots.acquire().await;
            let res = node::node_up(&ctx).await;
            (ctx.node.name.clone(), res)
        });
    }
    // One listener for the whole run: a signal while collecting (after the node tasks) must
    // stop the run too. Once tokio's handler is installed a signal no longer ends the process,
    // and one that came after `supervise` returned was ignored: `up` went on to exit 0 with
    // its VMs running.
    let (signalled, listener) = signal_watch(opts.interrupt.clone());
    let (failed, mut interrupted) = supervise(&mut set, &mut node_results, &events, signalled.clone()).await;
    if let Some(hook) = &opts.before_cleanup {
        let vms: Vec<VmResult> = order.iter().filter_map(|(n, v)| tracker.vm_result(n, v)).collect();
        let ok = !failed && !interrupted && vms.iter().all(|v| v.state == VmState::Ready);
        // In a task of its own: a panic in the hook (artifact collection reads whatever the
        // hosts and guests sent) must not unwind past the cleanup below and leave the VMs running.
        let view = RunView { ok, interrupted, nodes: tracker.nodes(), vms };
        let mut task = tokio::spawn(hook(view));
        let mut signal = signalled.clone();
        tokio::select! {
            r = &mut task => if let Err(e) = r {
                events.warn(format!("collecting before cleanup failed: {e}"));
            },
            _ = signal.wait_for(|s| *s), if !interrupted => {
                task.abort();
                interrupted = true;
                events.warn("interrupted while collecting: stopping everything this run started");
            }
        }
    }
    interrupted |= *signalled.borrow();
    // A VM that is not ready with no node failed is a bug, but the run is not ok either: what
    // it started is stopped, never left running with its record dropped.
    let all_ready = order.iter().all(|(n, v)| tracker.vm_result(n, v).is_some_and(|r| r.state == VmState::Ready));
    if !failed && !interrupted && all_ready {
        // Still listening: a Ctrl-C while a wedged node takes its time with the manifest
        // (up to the command timeout) stops the run like one in any other phase.
        let mut signal = signalled.clone();
        tokio::select! {
            () = record::write_final_manifests(&tracker, opts, &events) => {}
            _ = signal.wait_for(|s| *s) => {
                interrupted = true;
                events.warn("interrupted while writing the manifests: stopping everything this run started");
            }
        }
    }
    let mut report = None;
    if failed || interrupted || !all_ready {
        let r = cleanup(&tracker, opts.stop_grace, &events).await;
        mark_stopped(&tracker, &r);
        report = Some(r);
    }
    for (name, tn) in tracker.nodes() {
        if let Some(nr) = node_results.get_mut(&name) {
            nr.accel = tn.plan.as_ref().map(|p| p.accel);
            nr.hugepages = tn.hugepages.clone();
            nr.facts = tn.facts.clone();
            nr.plan = tn.plan.clone();
        }
        tn.session.close().await;
    }
    listener.abort();
    let vms: Vec<VmResult> = order.iter().filter_map(|(n, v)| tracker.vm_result(n, v)).collect();
    let ok = !failed && !interrupted && vms.iter().all(|v| v.state == VmState::Ready);
    RunResult {
        run_id: opts.run_id.clone(),
        ok,
        interrupted,
        duration_s: started.elapsed().as_secs_f64(),
        run_id_in_use: node_results.values().any(|n| n.run_id_in_use),
        nodes: node_results.into_values().collect(),
        vms,
        cleanup: report,
        handshake_retries: crate::ssh::handshake_retries_total().saturating_sub(retries_before),
    }
}

/// After cleanup, a VM that was running (even ready) is stopped now, unless cleanup says it
/// could not stop it: the result must not call a stopped VM `ready`.
fn mark_stopped(tracker: &Tracker, report: &CleanupReport) {
    tracker.with(|t| {
        for ((node, vm), r) in t.vms.iter_mut() {
            let left = report.left.iter().any(|l| l.starts_with(&format!("{node}: {vm} ")));
            if matches!(r.state, VmState::Starting | VmState::Booting | VmState::Ready) && !left {
                r.state = VmState::Stopped;
            }
        }
    });
}

/// True once Ctrl-C, SIGTERM or `interrupt` came, at any point of the run; and the listener
/// task, to abort when the run is over.
fn signal_watch(
    interrupt: Option<Arc<tokio::sync::Notify>>,
) -> (tokio::sync::watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::spawn(async move {
        match interrupt {
            Some(n) => tokio::select! {
                _ = crate::run::shutdown_signal() => {}
                _ = n.notified() => {}
            },
            None => crate::run::shutdown_signal().await,
        }
        let _ = tx.send(true);
    });
    (rx, listener)
}

/// Wait for the node tasks; the first failure or a signal aborts the rest. Returns
/// `(failed, interrupted)`.
async fn supervise(
    set: &mut JoinSet<(String, Result<(), UpError>)>,
    node_results: &mut BTreeMap<String, NodeResult>,
    events: &EventSink,
    mut signalled: tokio::sync::watch::Receiver<bool>,
) -> (bool, bool) {
    let signal = async move {
        let _ = signalled.wait_for(|s| *s).await;
    };
    tokio::pin!(signal);
    let mut interrupted = false;
    let mut failed = false;
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok((name, Err(e)))) => {
                    failed = true;
                    events.for_node(&name).warn(format!("{e}"));
                    if let Some(nr) = node_results.get_mut(&name) {
                        nr.error = Some(e.to_string());
                        nr.unreachable = e.is_unreachable() || e.is_lost();
                        nr.run_id_in_use = matches!(e, UpError::RunIdInUse(_));
                        nr.failure = Some(e.failure_kind());
                    }
                    set.abort_all();
                }
                Some(Ok((_, Ok(())))) => {}
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => {
                    failed = true;
                    events.warn(format!("internal error: {e}"));
                    set.abort_all();
                }
            },
            _ = &mut signal, if !interrupted => {
                interrupted = true;
                events.warn("interrupted: stopping everything this run started");
                set.abort_all();
            }
        }
    }
    (failed, interrupted)
}

#[cfg(test)]
mod tests;
