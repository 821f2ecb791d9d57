//! Stage 7, on any failure or interrupt: on every node whose run directory this invocation
//! claimed, stop every planned VM, give back the hugepages the host's journal records, and
//! remove the run directory; then say exactly what could not be undone.
//!
//! Cleanup acts only inside a directory whose owner file holds this invocation's nonce (checked
//! on the host, in the same script that acts), so a run refused for reusing a live run id never
//! touches the live run. Paths are recomputed ([`crate::remote::layout`]). A lost connection is
//! retried with a fresh one, a bounded number of times: the node may come back.

use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::tracker::{TrackedNode, Tracker};
use crate::remote::layout::{self, VmPaths};
use crate::remote::process::{self, StopOutcome};
use crate::report::{EventSink, Phase};
use crate::run::down::{self, NodeRelease};
use crate::ssh::{RemoteCommand, Session, SshError};

/// Connection attempts per node (the first included), with a growing pause between them.
const ATTEMPTS: u32 = 6;

/// What cleanup could not undo, per node, for the final message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// Everything this invocation created is gone again.
    pub complete: bool,
    /// `DUT1: DUT1_2 may still run (connection lost: …)`, one line per problem.
    pub left: Vec<String>,
    /// A node could not be reached again for it (exit 3, not 1).
    pub unreachable: bool,
}

/// Stop everything this invocation may have started, on every node, and release the nodes.
pub async fn cleanup(tracker: &Tracker, grace: Duration, events: &EventSink) -> CleanupReport {
    let mut set = JoinSet::new();
    for (name, tn) in tracker.nodes() {
        let ev = events.for_node(&name);
        let nonce = tracker.nonce.clone();
        set.spawn(async move { clean_node(&name, &tn, &nonce, grace, &ev).await });
    }
    let mut report = CleanupReport { complete: true, left: vec![], unreachable: false };
    while let Some(r) = set.join_next().await {
        match r {
            Ok((left, unreachable)) => {
                report.left.extend(left);
                report.unreachable |= unreachable;
            }
            Err(e) => report.left.push(format!("cleanup task failed: {e}")),
        }
    }
    report.complete = report.left.is_empty();
    report
}

/// One node: what is left, as messages (empty: nothing), and whether the node stayed
/// unreachable.
async fn clean_node(name: &str, tn: &TrackedNode, nonce: &str, grace: Duration, ev: &EventSink) -> (Vec<String>, bool) {
    if !tn.claimed {
        // Connected (maybe planned) but the run directory was never claimed: nothing exists.
        return (vec![], false);
    }
    // A VM whose paths cannot be built (validation refuses such names) is not silently skipped:
    // the others are stopped, and the node is not released while it may run.
    let (mut vms, mut unstoppable) = (Vec::<VmPaths>::new(), Vec::new());
    for v in tn.plan.iter().flat_map(|p| &p.vms) {
        match layout::vm_paths(&tn.run_dir, &v.name) {
            Ok(p) => vms.push(p),
            Err(e) => unstoppable.push(format!("{name}: {} may still run ({e})", v.name)),
        }
    }
    for v in &vms {
        ev.for_vm(&v.name).phase(Phase::Stopping);
    }
    let mut pending: Vec<VmPaths> = vms.clone();
    let mut last_err = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            ev.warn(format!("connection lost ({last_err}); reconnecting (attempt {attempt} of {ATTEMPTS})"));
            tokio::time::sleep(Duration::from_secs(u64::from(attempt - 1))).await;
        }
        let stop = stop_all(&tn.session, &tn.run_root, &tn.run_dir, nonce, &pending, grace, ev).await;
        pending = stop.unreached;
        // Reachable, but not (known to be) stopped: releasing the node would remove the VM's
        // directory and hand back hugepages its QEMU may still hold. Kept across attempts: a
        // VM that failed in an attempt that also lost the connection is not retried, and was
        // once forgotten, so the node was released under it and cleanup said "complete".
        unstoppable.extend(stop.failed.iter().map(|(vm, e)| format!("{name}: {vm} may still run ({e})")));
        if let Some(e) = stop.connection_error {
            last_err = e;
            continue;
        }
        if !unstoppable.is_empty() {
            // Left for `harness down --run`, which says so.
            unstoppable.push(format!("{name}: {} and its hugepages were not released", tn.run_dir));
            return (unstoppable, false);
        }
        let rel =
            NodeRelease { node: name, run_root: &tn.run_root, run_dir: &tn.run_dir, vms: &vms, nonce: Some(nonce) };
        match down::release_node(&tn.session, &rel, ev).await {
            Ok(()) => return (vec![], false),
            Err(e) if tn.session.is_closed() || e.contains("connection lost") || e.contains("connect failed") => {
                last_err = e;
            }
            Err(e) => return (vec![format!("{name}: {e}")], false),
        }
    }
    let mut left = unstoppable;
    left.extend(pending.iter().map(|v| format!("{name}: {} may still run ({last_err})", v.name)));
    left.push(format!(
        "{name}: {} and its hugepages were not released ({last_err})",
        if tn.run_dir.is_empty() { "the run directory" } else { &tn.run_dir }
    ));
    (left, true)
}

/// What [`stop_all`] left undone.
struct StopAll {
    /// VMs whose stop never ran or never answered (the connection failed).
    unreached: Vec<VmPaths>,
    /// Why the connection failed, if it did.
    connection_error: Option<String>,
    /// VMs (by name) whose stop ran but did not end with an outcome (a QEMU still exiting, a
    /// script that failed, a stop task that panicked), with why.
    failed: Vec<(String, String)>,
}

/// How one VM's stop ended.
enum One {
    Done,
    Unreached(String),
    Failed(String),
}

/// Stop `vms` concurrently.
async fn stop_all(
    session: &Session,
    run_root: &str,
    run_dir: &str,
    nonce: &str,
    vms: &[VmPaths],
    grace: Duration,
    ev: &EventSink,
) -> StopAll {
    let mut set = JoinSet::new();
    let mut names = std::collections::HashMap::new();
    for v in vms.iter().cloned() {
        let s = session.clone();
        let script = format!(
            "{claimed}claimed {rd} {nonce} || {{ echo outcome=not_ours; exit 0; }}\n{stop}",
            claimed = layout::claimed_fn(),
            rd = crate::quote::quote(run_dir),
            nonce = crate::quote::quote(nonce),
            stop = process::stop_script(run_root, &v, grace.as_secs() as u32),
        );
        let ev = ev.for_vm(&v.name);
        let name = v.name.clone();
        let task = set.spawn(async move {
            let cmd = RemoteCommand::sh(script).sudo().timeout(grace + Duration::from_secs(30)).idempotent();
            let res: Result<_, SshError> = s.run(&cmd).await;
            match res {
                Ok(o) => match process::parse_stop(&o.stdout_str()) {
                    Ok(r) if r.outcome == StopOutcome::NotOurs => {
                        ev.info("not this run's (left alone)".to_string());
                        (v, One::Done)
                    }
                    Ok(_) => {
                        ev.phase(Phase::Stopped);
                        (v, One::Done)
                    }
                    Err(e) => {
                        let e = match o.stderr_str().trim() {
                            "" => e,
                            said => format!("{e}: {said}"),
                        };
                        ev.warn(format!("stop failed: {e}"));
                        (v, One::Failed(e))
                    }
                },
                Err(e) => (v, One::Unreached(e.to_string())),
            }
        });
        names.insert(task.id(), name);
    }
    let mut out = StopAll { unreached: Vec::new(), connection_error: None, failed: Vec::new() };
    while let Some(r) = set.join_next().await {
        match r {
            Ok((_, One::Done)) => {}
            Ok((v, One::Unreached(why))) => {
                out.connection_error.get_or_insert(why);
                out.unreached.push(v);
            }
            Ok((v, One::Failed(why))) => out.failed.push((v.name, why)),
            Err(e) => out.failed.push((names.get(&e.id()).cloned().unwrap_or_default(), format!("stop task: {e}"))),
        }
    }
    out
}
