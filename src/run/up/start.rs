//! Stage 4 (under the host lock): launch every QEMU of the node at once and read back its pid.
//! A VM is recorded as launched once its QEMU has started; cleanup does not depend on that
//! record (it stops every planned VM of a directory this run claimed), so a start cut short
//! is still stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::node::NodeCtx;
use super::tracker::Launched;
use super::{UpError, VmState, fail};
use crate::plan::{NodePlan, VmPlan};
use crate::report::Phase;
use crate::ssh::{RemoteCommand, Session};

pub(super) async fn all(ctx: &NodeCtx, session: &Session, np: &NodePlan) -> Result<BTreeMap<String, u32>, UpError> {
    let mut starts = JoinSet::new();
    for v in np.vms.iter().cloned() {
        let (s, tracker, node) = (session.clone(), ctx.tracker.clone(), np.name.clone());
        let ev = ctx.events.for_vm(&v.name);
        starts.spawn(async move {
            ev.phase(Phase::Starting);
            tracker.set_state(&node, &v.name, VmState::Starting);
            let t = Instant::now();
            let res = start_qemu(&s, &v).await;
            if res.is_ok() {
                tracker.node(&node, |n| {
                    n.launched.push(Launched {
                        vm: v.name.clone(),
                        pidfile: v.paths.pidfile.clone(),
                        qmp: v.paths.qmp.clone(),
                        run_dir: v.paths.run_dir.clone(),
                    })
                });
            }
            tracker.timing(&node, &v.name, "start", t.elapsed().as_secs_f64());
            res.map(|pid| (v.name.clone(), pid)).map_err(|e| (v.name.clone(), e))
        });
    }
    let mut pids = BTreeMap::new();
    let mut first_err = None;
    while let Some(r) = starts.join_next().await {
        match r {
            Ok(Ok((vm, pid))) => {
                pids.insert(vm, pid);
            }
            Ok(Err((vm, e))) => {
                let msg = e.to_string();
                ctx.tracker.vm(&np.name, &vm, |r| {
                    r.state = VmState::Failed;
                    r.error = Some(msg);
                    r.failure = Some(e.failure_kind());
                });
                ctx.events.for_vm(&vm).phase(Phase::Failed);
                first_err.get_or_insert(e.context(&vm));
            }
            Err(e) => {
                first_err.get_or_insert(fail(format!("start task: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(pids),
    }
}

/// `sudo -n qemu-system-… -daemonize -pidfile …`, then the pid from the pidfile.
async fn start_qemu(session: &Session, v: &VmPlan) -> Result<u32, UpError> {
    let out = session.run(&RemoteCommand::new(v.argv.clone()).sudo().timeout(Duration::from_secs(300))).await?;
    if !out.success() {
        let err = out.stderr_str();
        return Err(fail(format!(
            "qemu failed to start (exit {}): {}",
            out.status.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            err.trim()
        )));
    }
    let out = session.run_ok(&RemoteCommand::new(["cat", &v.paths.pidfile]).sudo()).await?;
    out.stdout_str().trim().parse::<u32>().map_err(|_| fail(format!("unreadable pidfile {}", v.paths.pidfile)))
}
