//! Stage 3: check the plan's hugepage needs (per size and NUMA node) against the host's pools
//! right now, less what other runs have reserved, allocate exactly the shortfall where the node
//! allows, and reserve the pages ([`crate::remote::reserve`]) so the node's QEMUs can start after the lock is
//! released. All of it is one root script under the host lock ([`hugepage_ensure`]): nodes that
//! share a kernel queue for that lock, so it is held for one short script, not four round
//! trips. The allocation journals each change on the host before making it (see
//! [`hugepages::allocate_script`]), so cancellation never loses a change.

use super::node::NodeCtx;
use super::{UpError, fail};
use crate::plan::NodePlan;
use std::time::Duration;

use crate::remote::hugepage_ensure::{self, Need, Request};
use crate::remote::hugepages::{self, HugepageChange};
use crate::remote::layout;
use crate::remote::lock::{self, LOCK_TIMEOUT_STATUS, LockError};
use crate::ssh::{RemoteCommand, Session};

/// How long a node waits for another run's hold on the host lock.
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// Ensure the node's pages and reserve them for `reservation` (an id unique to this run and
/// node), in one round trip under the host lock; the caller then starts the QEMUs. Nobody
/// removes the reservation: the next scan drops it once the QEMUs have mapped every page, once
/// their directories are gone (cleanup, `down`), or when it expires. Removing it took the lock
/// once more per node, and nodes sharing a kernel queue for that lock.
pub(super) async fn ensure(
    ctx: &NodeCtx,
    session: &Session,
    np: &NodePlan,
    reservation: &str,
) -> Result<Vec<HugepageChange>, UpError> {
    let pidfiles: Vec<String> = np.vms.iter().map(|v| v.paths.pidfile.clone()).collect();
    let journal = layout::hugepage_journal(&np.run_dir, &np.name);
    let needs =
        np.hugepages.iter().map(|h| Need { size: h.size, numa: h.numa, pages: h.pages, mount: &h.mount }).collect();
    let req = Request { needs, allocate: np.allocate_hugepages, reservation, pidfiles: &pidfiles, journal: &journal };
    let holder = format!("run {} node {} ({})", ctx.run_id, ctx.node.name, crate::run::started_by());
    let script = lock::locked_script(&hugepage_ensure::script(&req), &holder, LOCK_WAIT);
    if np.allocate_hugepages && !np.hugepages.is_empty() {
        // Recorded before it is sent: if this task is cancelled while the script runs, cleanup
        // still restores what the host's journal says was done.
        ctx.tracker.node(&np.name, |n| n.hugepages_in_flight = true);
    }
    let cmd = RemoteCommand::sh(script).sudo().timeout(LOCK_WAIT + Duration::from_secs(120));
    let (out, ()) = tokio::join!(session.run(&cmd), crate::run::testpause::at("hugepages", &np.name));
    let out = out?;
    if out.status == Some(LOCK_TIMEOUT_STATUS) {
        let text = out.stderr_str().trim().to_string();
        let holder = text.strip_prefix("held by ").unwrap_or(&text).to_string();
        return Err(LockError::Timeout { waited: LOCK_WAIT, holder }.into());
    }
    if !out.success() {
        return Err(fail(format!("hugepage check failed: {}", out.stderr_str().trim())));
    }
    let report = hugepage_ensure::parse(&out.stdout_str()).map_err(fail)?;
    judge(np, &report)
}

/// The changes the script made, or the error that says what is missing or what failed.
fn judge(np: &NodePlan, report: &hugepage_ensure::Report) -> Result<Vec<HugepageChange>, UpError> {
    let mut changes = Vec::new();
    for (i, res) in &report.allocations {
        let need = &np.hugepages[*i];
        match res {
            Ok(line) => {
                changes.push(hugepages::parse_allocation(need.size, &need.mount, need.numa, line).map_err(fail)?)
            }
            Err(msg) => return Err(fail(format!("hugepage allocation failed: {msg}"))),
        }
    }
    if report.reserved {
        return Ok(changes);
    }
    let mut problems = Vec::new();
    for (i, found) in &report.found {
        let need = &np.hugepages[*i];
        let (size, others) = (need.size, found.others);
        let pages = need.pages + others;
        let on = need.numa.map(|n| format!(" on NUMA node {n}")).unwrap_or_default();
        let what = match found.available {
            None => format!("the host has no {} hugepage pool{on}", size.as_str()),
            Some(a) if a >= pages => String::new(),
            Some(a) => {
                let by = if others > 0 { format!(", {others} of them reserved by other runs") } else { String::new() };
                format!("{} more {} hugepages needed{on} ({pages} needed{by}, {a} available)", pages - a, size.as_str())
            }
        };
        if let Some(m) = hugepages::wrong_page_size(&need.mount, size, &found.fstype) {
            return Err(fail(m));
        }
        let mnt = if found.fstype == "hugetlbfs" {
            String::new()
        } else {
            format!("{} is not a hugetlbfs mount", need.mount)
        };
        let p: Vec<String> = [what, mnt].into_iter().filter(|s| !s.is_empty()).collect();
        if !p.is_empty() {
            problems.push(p.join("; "));
        }
    }
    if problems.is_empty() {
        return Err(fail(format!("hugepage check: no reservation recorded (host said: {report:?})")));
    }
    Err(fail(format!(
        "{} (set `hugepages: {{allocate: true}}` on the node to let harness allocate them)",
        problems.join("; ")
    )))
}
