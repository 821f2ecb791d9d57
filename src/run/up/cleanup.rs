//! Stage 7, on any failure or interrupt: stop everything the [`Tracker`] says this run started,
//! on every node, then give back hugepages and remove the run directories.

use std::time::Duration;

use tokio::task::JoinSet;

use super::tracker::Tracker;
use crate::remote::process;
use crate::report::{EventSink, Phase};
use crate::ssh::RemoteCommand;

/// Stop everything the tracker says this run started, on every node, then give back hugepages
/// and remove the run directories.
pub async fn cleanup(tracker: &Tracker, grace: Duration, events: &EventSink) {
    let mut set = JoinSet::new();
    for (name, tn) in tracker.nodes() {
        let ev = events.for_node(&name);
        set.spawn(async move {
            for l in &tn.launched {
                ev.for_vm(&l.vm).phase(Phase::Stopping);
            }
            let mut stops = JoinSet::new();
            for l in tn.launched.clone() {
                let s = tn.session.clone();
                let ev = ev.for_vm(&l.vm);
                stops.spawn(async move {
                    let script = process::stop_script(&l.pidfile, &l.qmp, &l.run_dir, grace.as_secs() as u32);
                    match s.run(&RemoteCommand::sh(script).sudo().timeout(grace + Duration::from_secs(30))).await {
                        Ok(o) if o.success() => ev.phase(Phase::Stopped),
                        Ok(o) => ev.warn(format!("stop failed: {}", o.stderr_str().trim())),
                        Err(e) => ev.warn(format!("stop failed: {e}")),
                    }
                });
            }
            while stops.join_next().await.is_some() {}
            if tn.run_dir.is_empty() {
                // Connected but never planned: nothing was created on the node.
                return;
            }
            let node = crate::run::down::NodeRelease {
                node: &name,
                run_root: &tn.run_root,
                run_dir: &tn.run_dir,
                vm_dirs: &tn.vm_dirs,
                changes: &tn.hugepages,
            };
            crate::run::down::release_node(&tn.session, &node, &ev).await;
        });
    }
    while set.join_next().await.is_some() {}
}
