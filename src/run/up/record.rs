//! The node manifest `up` writes: when it claims the run directory, again in the round trip
//! that starts the QEMUs (before the first one, so `down` finds a half-started run), and once
//! more at the end with pids, pinning and guest interfaces. It carries the facts the node was
//! planned with and the exact argv and files that ran.

use super::node::NodeCtx;
use super::tracker::{TrackedNode, Tracker};
use super::{UpError, UpOptions, VmState, fail};
use crate::plan::NodePlan;
use crate::report::{EventSink, Phase};
use crate::run::manifest::{self, Manifest, VmRecord};
use crate::ssh::{Session, SshError};

fn manifest_for(tracker: &Tracker, np: &NodePlan, tn: &TrackedNode, run_id: &str, topology: &str) -> Manifest {
    let vms = np
        .vms
        .iter()
        .map(|v| {
            let mut rec = VmRecord::planned(v);
            if let Some(r) = tracker.vm_result(&np.name, &v.name) {
                rec.state = match r.state {
                    // Written before anything else of the run exists on the host.
                    VmState::Pending => "preparing",
                    s => s.as_str(),
                }
                .to_string();
                rec.pid = r.pid;
                rec.pinned = r.pinned;
                rec.guest_interfaces = r.guest_interfaces;
            }
            rec
        })
        .collect();
    Manifest {
        format: manifest::FORMAT,
        run_id: run_id.into(),
        node: np.name.clone(),
        host: np.host.clone(),
        topology: topology.into(),
        started_by: crate::run::started_by(),
        created_unix: crate::run::now_unix(),
        run_dir: np.run_dir.clone(),
        vms,
        hugepages: tn.hugepages.clone(),
        facts: tn.facts.clone(),
    }
}

/// `m` serialised, and the path it goes to under `run_dir`.
fn encoded(run_dir: &str, m: &Manifest) -> (Vec<u8>, String) {
    (serde_json::to_vec_pretty(m).expect("serialisable"), manifest::path(run_dir, &m.node))
}

async fn upload(session: &Session, run_dir: &str, m: &Manifest) -> Result<(), SshError> {
    let (bytes, path) = encoded(run_dir, m);
    session.upload(&bytes, &path, 0o644, true).await
}

/// The node's manifest as it stands now, serialised, and the path it goes to (for a caller
/// that writes it in the same round trip as other files).
pub(super) fn manifest_file(ctx: &NodeCtx, np: &NodePlan) -> Result<(Vec<u8>, String), UpError> {
    let tn = ctx.tracker.get_node(&np.name).ok_or_else(|| fail("node not tracked"))?;
    Ok(encoded(&np.run_dir, &manifest_for(&ctx.tracker, np, &tn, &ctx.run_id, &ctx.topology_path)))
}

/// After a successful run: every node's manifest with pids, pinning and guest interfaces.
pub(super) async fn write_final_manifests(tracker: &Tracker, opts: &UpOptions, events: &EventSink) {
    // Every node at once: one round trip each, and dozens of nodes one after another add up.
    let writes = tracker.nodes().into_iter().filter_map(|(name, tn)| {
        let np = tn.plan.as_ref()?;
        let m = manifest_for(tracker, np, &tn, &opts.run_id, &opts.topology_path.display().to_string());
        Some(async move {
            if let Err(e) = upload(&tn.session, &tn.run_dir, &m).await {
                events.for_node(&name).warn(format!("could not update the manifest: {e}"));
            }
        })
    });
    futures::future::join_all(writes).await;
}

/// Record a VM's failure and phrase it, with the serial tail, for the node's error.
pub(super) fn vm_failed(ctx: &NodeCtx, node: &str, vm: &str, e: UpError) -> UpError {
    let tail = match &e {
        UpError::Guest { tail, .. } => tail.clone(),
        _ => vec![],
    };
    ctx.tracker.vm(node, vm, |r| {
        r.state = VmState::Failed;
        r.error = Some(e.to_string());
        r.failure = Some(e.failure_kind());
        r.serial_tail = tail.clone();
    });
    ctx.events.for_vm(vm).phase(Phase::Failed);
    let lost = e.is_lost();
    let mut msg = format!("{vm}: {e}");
    if !tail.is_empty() {
        msg.push_str("\n    last serial lines:\n");
        for l in &tail {
            msg.push_str(&format!("    | {l}\n"));
        }
    }
    // The node's error keeps the VM's class: a guest that never got ready is `not_ready` for
    // the node too, not an infrastructure fault a pipeline would retry.
    match e {
        _ if lost => UpError::Lost(msg),
        UpError::Guest { .. } => UpError::Guest { message: msg, tail: vec![] },
        _ => fail(msg),
    }
}
