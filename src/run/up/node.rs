//! One node's `up`: the stages in order, over one SSH connection.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::tracker::Tracker;
use super::{UpError, UpOptions, VmState, fail, hugepages, pin, prepare, readiness, record, start, upload};
use crate::plan::{NodePlan, PlanOptions, VmPlan};
use crate::report::{EventSink, Phase};
use crate::ssh::{ConnectOptions, Session};
use crate::templates::Templates;
use crate::topology::{Node, Topology};

/// Everything a node task needs, owned (node tasks are spawned).
pub(super) struct NodeCtx {
    pub node: Node,
    pub topology: Arc<Topology>,
    pub templates: Arc<Templates>,
    pub only_vms: Vec<String>,
    pub run_id: String,
    pub topology_path: String,
    pub connect: ConnectOptions,
    pub connector: Option<Arc<dyn super::Connector>>,
    pub tracker: Arc<Tracker>,
    pub events: EventSink,
}

impl NodeCtx {
    pub fn new(opts: &UpOptions, node: &Node, tracker: Arc<Tracker>, events: EventSink) -> Self {
        NodeCtx {
            node: node.clone(),
            topology: opts.topology.clone(),
            templates: opts.templates.clone(),
            only_vms: opts.only_vms.clone(),
            run_id: opts.run_id.clone(),
            topology_path: opts.topology_path.display().to_string(),
            connect: opts.connect.clone(),
            connector: opts.connector.clone(),
            tracker,
            events,
        }
    }

    /// Whether `--vm` selects VM `name` (no `--vm`: every VM).
    pub fn selected(&self, name: &str) -> bool {
        self.only_vms.is_empty() || self.only_vms.iter().any(|v| v == name)
    }

    pub fn plan_options(&self) -> PlanOptions<'_> {
        PlanOptions { run_id: self.run_id.clone(), templates: &self.templates, only_vms: &self.only_vms }
    }
}

pub(super) async fn node_up(ctx: &NodeCtx) -> Result<(), UpError> {
    let (session, np, uploaded) = prepare::prepare(ctx).await?;
    let ev = &ctx.events;

    ev.phase(Phase::Uploading);
    let t = Instant::now();
    // `uploaded`: already written with the VM directories (prepare's one round trip).
    if !uploaded && let Err(e) = upload::files(&session, &np).await {
        if e.is_lost() || e.is_unreachable() {
            return Err(e);
        }
        return Err(fail(prepare::full_hint(&session, &e.to_string(), &ctx.node.run_root).await));
    }
    let upload_s = t.elapsed().as_secs_f64();
    crate::run::testpause::at("uploaded", &np.name).await;

    // Hugepages checked, allocated and reserved under the host lock; the QEMUs start outside it,
    // concurrently with other nodes' (the reservation keeps other runs off these pages until
    // QEMU's preallocation has them: see crate::remote::reserve).
    ev.phase(Phase::Hugepages);
    let reservation = crate::remote::hugepages::own_reservation(&np.run_dir, &ctx.node.name);
    let changes = hugepages::ensure(ctx, &session, &np, &reservation).await?;
    ctx.tracker.node(&np.name, |n| n.hugepages = changes.clone());
    // Each VM's readiness wait starts as soon as its own QEMU is up, not after the node's last.
    let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut ready = std::pin::pin!(wait_all(ctx, &session, &np, started_rx, upload_s));
    // `ready` cannot end before the start side has (it waits for `started` to close), so this
    // drives both until the starts are done. A failed start is the error, and dropping `ready`
    // then stops the waits already under way.
    tokio::select! {
        r = start::all(ctx, &session, &np, started_tx) => r?,
        r = &mut ready => return r,
    }
    ev.phase(Phase::Booting);
    ready.await
}

/// Readiness and pinning of every VM as it starts, concurrently, until the start side is done
/// (`started` closed) and every wait has ended; the first failure stops the wait for the rest.
async fn wait_all(
    ctx: &NodeCtx,
    session: &Session,
    np: &NodePlan,
    mut started: tokio::sync::mpsc::UnboundedReceiver<(VmPlan, u32)>,
    upload_s: f64,
) -> Result<(), UpError> {
    let mut waits = JoinSet::new();
    let mut first_err = None;
    let mut starting = true;
    while starting || !waits.is_empty() {
        tokio::select! {
            s = started.recv(), if starting => match s {
                // After a failure nothing new is waited for; the start side still runs to its end.
                Some((v, pid)) if first_err.is_none() => {
                    let (s, tracker, node) = (session.clone(), ctx.tracker.clone(), np.name.clone());
                    let ev = ctx.events.for_vm(&v.name);
                    tracker.vm(&node, &v.name, |r| r.pid = Some(pid));
                    tracker.timing(&node, &v.name, "upload", upload_s);
                    tracker.set_state(&node, &v.name, VmState::Booting);
                    waits.spawn(async move {
                        let res = vm_ready(&s, &v, pid, &tracker, &node, &ev).await;
                        (v.name.clone(), res)
                    });
                }
                Some(_) => {}
                None => starting = false,
            },
            Some(r) = waits.join_next(), if !waits.is_empty() => match r {
                Ok((vm, Ok(()))) => ctx.tracker.set_state(&np.name, &vm, VmState::Ready),
                Ok((vm, Err(e))) => {
                    first_err.get_or_insert(record::vm_failed(ctx, &np.name, &vm, e));
                    // Fail fast: the run is lost, stop waiting for the others.
                    waits.abort_all();
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    first_err.get_or_insert(fail(format!("wait task: {e}")));
                }
            },
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            ctx.events.phase(Phase::Ready);
            Ok(())
        }
    }
}

/// One VM: serial readiness, then the guest agent and pinning at once (independent sockets).
async fn vm_ready(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    tracker: &Tracker,
    node: &str,
    ev: &EventSink,
) -> Result<(), UpError> {
    let deadline = tokio::time::Instant::now() + v.readiness.timeout;
    let t0 = Instant::now();
    ev.phase(Phase::Booting);
    if !v.readiness.ready_markers.is_empty() {
        readiness::wait_serial(session, v, pid, deadline).await?;
    }
    tracker.timing(node, &v.name, "boot", t0.elapsed().as_secs_f64());
    let agent = async {
        if !v.readiness.qga {
            return Ok(());
        }
        ev.phase(Phase::Agent);
        let t = Instant::now();
        let ifaces = readiness::qga_ready(session, v, deadline).await?;
        tracker.timing(node, &v.name, "agent", t.elapsed().as_secs_f64());
        tracker.vm(node, &v.name, |r| r.guest_interfaces = ifaces);
        Ok::<(), UpError>(())
    };
    let pinning = async {
        let Some(p) = &v.pinning else { return Ok(()) };
        ev.phase(Phase::Pinning);
        let t = Instant::now();
        let pinned = pin::pin_vcpus(session, v, pid, p).await?;
        tracker.timing(node, &v.name, "pin", t.elapsed().as_secs_f64());
        tracker.vm(node, &v.name, |r| r.pinned = pinned);
        Ok::<(), UpError>(())
    };
    // The first failure of either ends the wait: a pinning error is not held back (nor
    // hidden) by a guest agent that takes until the boot deadline.
    tokio::try_join!(agent, pinning)?;
    tracker.timing(node, &v.name, "total", t0.elapsed().as_secs_f64());
    ev.phase(Phase::Ready);
    Ok(())
}
