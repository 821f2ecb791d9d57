//! Stage 3 (under the host lock): check the plan's hugepage needs (per size and NUMA node)
//! against the host's pools right now, less what other runs have reserved, allocate exactly the
//! shortfall where the node allows, and reserve the pages ([`reserve`]) so the node's QEMUs can
//! start after the lock is released. The allocation journals each change on the host before
//! making it (see [`hugepages::allocate_script`]), so cancellation never loses a change.

use super::node::NodeCtx;
use super::{UpError, fail};
use crate::plan::NodePlan;
use std::time::Duration;

use crate::remote::hugepages::{self, HugepageChange};
use crate::remote::layout;
use crate::remote::{lock, reserve};
use crate::ssh::{RemoteCommand, Session};

/// `ensure` under the host lock, reserving the pages for `reservation` (an id unique to this run
/// and node): the caller releases the lock, starts the QEMUs, then calls [`unreserve`].
pub(super) async fn ensure(
    ctx: &NodeCtx,
    session: &Session,
    np: &NodePlan,
    reservation: &str,
) -> Result<Vec<HugepageChange>, UpError> {
    let mut mounts: Vec<&str> = np.hugepages.iter().map(|h| h.mount.as_str()).collect();
    mounts.dedup();
    // Reservations before pools: a QEMU mapping in between then counts twice, never zero times.
    let script = format!("{}{}", reserve::read_script(), hugepages::probe_script(&mounts));
    let out = session.run_ok(&RemoteCommand::sh(script).sudo()).await?;
    let st = hugepages::parse_probe(&out.stdout_str()).map_err(fail)?;
    let held = reserve::parse(&out.stdout_str());
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for need in &np.hugepages {
        // Pages other runs reserved are not there for us: need them on top of our own.
        let others = reserve::held_by_others(&held, reservation, need.size.kib(), need.numa);
        let (size, numa, pages, mount) = (need.size, need.numa, need.pages + others, &need.mount);
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
                    let by =
                        if others > 0 { format!(", {others} of them reserved by other runs") } else { String::new() };
                    format!(
                        "{n} more {} hugepages needed{on} ({pages} needed{by}, {} available)",
                        size.as_str(),
                        pages - n
                    )
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
    let needs: Vec<_> = np.hugepages.iter().map(|n| (n.size.kib(), n.numa, n.pages)).collect();
    let pidfiles: Vec<String> = np.vms.iter().map(|v| v.paths.pidfile.clone()).collect();
    session.run_ok(&RemoteCommand::sh(reserve::add_script(reservation, &needs, &pidfiles)).sudo()).await?;
    Ok(changes)
}

/// Drop the node's reservation once its QEMUs hold their pages (or failed to start). A node
/// task aborted before this leaves it behind, but it holds nothing once its VMs' pages are
/// mapped, or their directories are gone (cleanup), or it expired.
pub(super) async fn unreserve(session: &Session, reservation: &str) {
    let holder = format!("reservation {reservation}");
    let script = lock::locked_script(&reserve::remove_script(reservation), &holder, Duration::from_secs(60));
    let _ = session.run(&RemoteCommand::sh(script).sudo().timeout(Duration::from_secs(90))).await;
}
