//! Stage 3 (under the host lock): check the plan's hugepage needs (per size and NUMA node)
//! against the host's pools right now, and allocate exactly the shortfall where the node allows.
//! The allocation journals each change on the host before making it (see
//! [`hugepages::allocate_script`]), so cancellation never loses a change.

use super::node::NodeCtx;
use super::{UpError, fail};
use crate::plan::NodePlan;
use crate::remote::hugepages::{self, HugepageChange};
use crate::run::layout;
use crate::ssh::{RemoteCommand, Session};

pub(super) async fn ensure(ctx: &NodeCtx, session: &Session, np: &NodePlan) -> Result<Vec<HugepageChange>, UpError> {
    let mut mounts: Vec<&str> = np.hugepages.iter().map(|h| h.mount.as_str()).collect();
    mounts.dedup();
    let out = session.run_ok(&RemoteCommand::sh(hugepages::probe_script(&mounts))).await?;
    let st = hugepages::parse_probe(&out.stdout_str()).map_err(fail)?;
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for need in &np.hugepages {
        let (size, numa, pages, mount) = (need.size, need.numa, need.pages, &need.mount);
        let short = st.available_on(size, numa).map(|a| pages.saturating_sub(a));
        let mounted = st.mounts.get(mount).map(String::as_str) == Some("hugetlbfs");
        if short == Some(0) && mounted {
            continue;
        }
        let on = numa.map(|n| format!(" on NUMA node {n}")).unwrap_or_default();
        if !np.allocate_hugepages {
            let what = match short {
                None => format!("the host has no {} hugepage pool{on}", size.as_str()),
                Some(0) => String::new(),
                Some(n) => {
                    format!("{n} more {} hugepages needed{on} ({pages} needed, {} available)", size.as_str(), pages - n)
                }
            };
            let mnt = if mounted { String::new() } else { format!("{mount} is not a hugetlbfs mount") };
            problems.push([what, mnt].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; "));
            continue;
        }
        // Recorded before it is sent: if this task is cancelled while the script runs, cleanup
        // still restores what the host's journal says was done.
        ctx.tracker.node(&np.name, |n| n.hugepages_in_flight = true);
        let journal = layout::hugepage_journal(&np.run_dir, &np.name);
        let script = hugepages::allocate_script(size, pages, mount, numa, &journal);
        let cmd = RemoteCommand::sh(script).sudo();
        let (out, ()) = tokio::join!(session.run(&cmd), super::testpause::at("hugepages", &np.name));
        let out = out?;
        if !out.success() {
            return Err(fail(format!("hugepage allocation failed: {}", out.stderr_str().trim())));
        }
        changes.push(hugepages::parse_allocation(size, mount, numa, &out.stdout_str()).map_err(fail)?);
    }
    if !problems.is_empty() {
        return Err(fail(format!(
            "{} (set `hugepages: {{allocate: true}}` on the node to let harness allocate them)",
            problems.join("; ")
        )));
    }
    Ok(changes)
}
