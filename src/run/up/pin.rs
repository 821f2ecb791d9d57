//! Stage 6: pin each vCPU thread to its planned host CPU (and SCHED_RR where asked), in vCPU
//! order, and read the result back.

use std::time::Duration;

use super::super::bridge::Bridge;
use super::super::qmp::Qmp;
use super::{UpError, fail};
use crate::plan::{Pinning, VmPlan};
use crate::remote::process::{self, PinnedThread};
use crate::ssh::{RemoteCommand, Session};
use crate::topology::Sched;

/// vCPU thread ids in vCPU order from QMP `query-cpus-fast` (fallback: thread names), then
/// taskset/chrt in one round trip, read back.
pub(super) async fn pin_vcpus(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    pin: &Pinning,
) -> Result<Vec<PinnedThread>, UpError> {
    let (cpus, rr) = (&pin.cpus, pin.sched == Sched::Rr);
    let mut threads: Vec<(u32, u32)> = Vec::new();
    if let Ok(mut bridge) = Bridge::unix_socket(session, &v.paths.qmp).await {
        if let Ok(mut qmp) = Qmp::connect(bridge.stream(), Duration::from_secs(5)).await
            && let Ok(t) = qmp.vcpu_threads().await
        {
            threads = t.into_iter().map(|t| (t.cpu_index, t.thread_id)).collect();
        }
        bridge.close().await;
    }
    if threads.len() != cpus.len() {
        let out = session.run_ok(&RemoteCommand::sh(process::threads_script(pid)).sudo()).await?;
        threads = process::parse_vcpu_threads(&out.stdout_str());
    }
    if threads.len() != cpus.len() {
        return Err(fail(format!("found {} vCPU threads, expected {} to pin", threads.len(), cpus.len())));
    }
    let plan: Vec<(u32, u32, u32)> = threads.iter().zip(cpus).map(|((vcpu, tid), cpu)| (*vcpu, *tid, *cpu)).collect();
    let out = session.run(&RemoteCommand::sh(process::pin_script(&plan, rr)).sudo()).await?;
    if !out.success() {
        return Err(fail(format!("pinning failed: {}", out.stderr_str().trim())));
    }
    let pinned = process::parse_pins(&out.stdout_str());
    for (p, cpu) in pinned.iter().zip(cpus) {
        if p.affinity != cpu.to_string() || (rr && p.policy != "SCHED_RR") {
            return Err(fail(format!(
                "vCPU {} (tid {}) reads back affinity {} policy {}, wanted {}{}",
                p.vcpu,
                p.tid,
                p.affinity,
                p.policy,
                cpu,
                if rr { " SCHED_RR" } else { "" }
            )));
        }
    }
    Ok(pinned)
}
