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

/// Find, pin and read back each vCPU thread in one round trip by the threads' names
/// ([`process::pin_by_name_script`]); where a name is missing, thread ids in vCPU order from
/// QMP `query-cpus-fast`, then taskset/chrt in a second round trip. Either way every thread's
/// affinity (and policy) is checked as read back.
pub(super) async fn pin_vcpus(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    pin: &Pinning,
) -> Result<Vec<PinnedThread>, UpError> {
    let (cpus, rr) = (&pin.cpus, pin.sched == Sched::Rr);
    let out = session.run(&RemoteCommand::sh(process::pin_by_name_script(pid, cpus, rr)).sudo()).await?;
    let pinned = match out.status {
        Some(0) => process::parse_pins_by_name(&out.stdout_str()),
        Some(process::PIN_THREAD_MISSING) => pin_via_qmp(session, v, pid, cpus, rr).await?,
        _ => return Err(fail(format!("pinning failed: {}", out.stderr_str().trim()))),
    };
    if pinned.len() != cpus.len() {
        return Err(fail(format!("read back {} pinned vCPU threads, expected {}", pinned.len(), cpus.len())));
    }
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

/// vCPU thread ids in vCPU order from QMP `query-cpus-fast` (fallback: the threads' names
/// again, listed), then taskset/chrt in one round trip, read back.
async fn pin_via_qmp(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    cpus: &[u32],
    rr: bool,
) -> Result<Vec<PinnedThread>, UpError> {
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
    Ok(process::parse_pins(&out.stdout_str()))
}
