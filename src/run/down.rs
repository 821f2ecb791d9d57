//! `harness down`, `status` and `logs`: everything works from the manifests on the hosts.
//!
//! `down` stops each VM of the selected runs (QMP `quit`, then SIGTERM, then SIGKILL, only for
//! processes carrying our pidfile path), removes the run directory and gives back the hugepages
//! the run added. Running it twice is harmless.

use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::manifest::{self, Manifest};
use crate::quote::quote;
use crate::remote::hugepages::{self, HugepageChange};
use crate::remote::lock;
use crate::remote::process::{self, StopReport};
use crate::report::{EventSink, Phase};
use crate::ssh::{RemoteCommand, Session, SshError};

/// Which runs to act on.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub run_id: Option<String>,
    /// Only runs started from this topology file (absolute path as recorded in manifests).
    pub topology: Option<String>,
}

impl Selector {
    pub fn matches(&self, m: &Manifest) -> bool {
        self.run_id.as_ref().is_none_or(|r| &m.run_id == r) && self.topology.as_ref().is_none_or(|t| &m.topology == t)
    }
}

/// Read this node's manifests under `run_root` (other nodes sharing the host are skipped).
pub async fn discover(
    session: &Session,
    node: &str,
    run_root: &str,
) -> Result<Vec<Result<Manifest, (String, String)>>, SshError> {
    let out = session.run_ok(&RemoteCommand::sh(manifest::list_script(run_root)).sudo()).await?;
    Ok(manifest::parse_list(&out.stdout_str())
        .into_iter()
        .filter(|m| match m {
            Ok(m) => m.node == node,
            Err((path, _)) => path.ends_with(&format!("/manifest-{node}.json")),
        })
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct StoppedVm {
    pub node: String,
    pub run_id: String,
    pub vm: String,
    pub report: Option<StopReport>,
    pub error: Option<String>,
}

/// Stop the selected runs on one node.
pub async fn down_node(
    session: &Session,
    node: &str,
    run_root: &str,
    sel: &Selector,
    grace: Duration,
    ev: &EventSink,
) -> Result<Vec<StoppedVm>, SshError> {
    let mut out = Vec::new();
    for m in discover(session, node, run_root).await? {
        let m = match m {
            Ok(m) => m,
            Err((path, msg)) => {
                ev.warn(format!("unreadable manifest {path}: {msg} (left in place)"));
                continue;
            }
        };
        if !sel.matches(&m) || !under(run_root, &m.run_dir) {
            continue;
        }
        let mut set = JoinSet::new();
        for vm in m.vms.clone() {
            let s = session.clone();
            let ev = ev.for_vm(&vm.name);
            let (node, run_id) = (node.to_string(), m.run_id.clone());
            let ok_dir = under(&m.run_dir, &vm.run_dir);
            set.spawn(async move {
                ev.phase(Phase::Stopping);
                if !ok_dir {
                    return StoppedVm {
                        node,
                        run_id,
                        vm: vm.name,
                        report: None,
                        error: Some("VM run dir outside the run dir: refused".into()),
                    };
                }
                let script = process::stop_script(&vm.pidfile, &vm.qmp, &vm.run_dir, grace.as_secs() as u32);
                let res = s.run(&RemoteCommand::sh(script).sudo().timeout(grace + Duration::from_secs(30))).await;
                match res.map_err(|e| e.to_string()).and_then(|o| process::parse_stop(&o.stdout_str())) {
                    Ok(r) => {
                        ev.phase(Phase::Stopped);
                        StoppedVm { node, run_id, vm: vm.name, report: Some(r), error: None }
                    }
                    Err(e) => {
                        ev.warn(format!("stop failed: {e}"));
                        StoppedVm { node, run_id, vm: vm.name, report: None, error: Some(e) }
                    }
                }
            });
        }
        let mut all_ok = true;
        while let Some(r) = set.join_next().await {
            if let Ok(s) = r {
                all_ok &= s.error.is_none();
                out.push(s);
            }
        }
        if all_ok {
            let dirs: Vec<String> = m.vms.iter().map(|v| v.run_dir.clone()).collect();
            let rel = NodeRelease { node, run_root, run_dir: &m.run_dir, vm_dirs: &dirs, changes: &m.hugepages };
            release_node(session, &rel, ev).await;
        } else {
            ev.warn(format!("run {} kept its manifest: some VMs could not be stopped", m.run_id));
        }
    }
    Ok(out)
}

/// What one node of one run leaves to clean up after its VMs are stopped.
pub struct NodeRelease<'a> {
    pub node: &'a str,
    pub run_root: &'a str,
    pub run_dir: &'a str,
    pub vm_dirs: &'a [String],
    pub changes: &'a [HugepageChange],
}

/// Remove a node's VM directories and manifest (and the run directory once no other node of the
/// run uses it), then undo its hugepage changes, under the host lock.
pub async fn release_node(session: &Session, r: &NodeRelease<'_>, ev: &EventSink) {
    if !under(r.run_root, r.run_dir) || !r.vm_dirs.iter().all(|d| under(r.run_dir, d)) {
        ev.warn(format!("refusing to remove {}: not under {}", r.run_dir, r.run_root));
        return;
    }
    let mut script = String::new();
    for d in r.vm_dirs {
        script.push_str(&format!("rm -rf -- {}\n", quote(d)));
    }
    script.push_str(&format!(
        "rm -f -- {}\nrmdir -- {} 2>/dev/null\n",
        quote(&manifest::path(r.run_dir, r.node)),
        quote(r.run_dir)
    ));
    for ch in r.changes {
        script.push_str(&hugepages::restore_script(ch, r.run_root));
    }
    script.push_str("true\n");
    let holder = format!("cleanup of {} ({})", r.run_dir, super::started_by());
    let cmd = lock::locked_script(&script, &holder, Duration::from_secs(60));
    match session.run(&RemoteCommand::sh(cmd).sudo().timeout(Duration::from_secs(90))).await {
        Ok(o) if o.success() => {}
        Ok(o) => ev.warn(format!("cleanup of {}: {}", r.run_dir, o.stderr_str().trim())),
        Err(e) => ev.warn(format!("cleanup of {}: {e}", r.run_dir)),
    }
}

/// Is `path` strictly below `root` (no `..` games)?
pub fn under(root: &str, path: &str) -> bool {
    let root = root.trim_end_matches('/');
    path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        && !path.split('/').any(|c| c == ".." || c == ".")
}

#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub node: String,
    pub run_id: String,
    pub vm: String,
    pub state: String,
    pub pid: Option<u32>,
    pub alive: bool,
    pub pinned: Vec<String>,
}

/// Manifests of a node plus, per VM, whether its QEMU (our pid, our pidfile argument) still runs.
pub async fn status_node(
    session: &Session,
    node: &str,
    run_root: &str,
    sel: &Selector,
) -> Result<Vec<VmStatus>, SshError> {
    let mut rows = Vec::new();
    let manifests: Vec<Manifest> =
        discover(session, node, run_root).await?.into_iter().flatten().filter(|m| sel.matches(m)).collect();
    let mut script = String::new();
    for m in &manifests {
        for vm in &m.vms {
            script.push_str(&format!(
                "p=$(cat {pf} 2>/dev/null); if [ -n \"$p\" ] && [ -r /proc/$p/cmdline ] && tr '\\0' '\\n' < /proc/$p/cmdline | grep -qxF -- {pf}; \
                 then echo \"alive {id} $p\"; else echo \"dead {id}\"; fi\n",
                pf = quote(&vm.pidfile),
                id = quote(&format!("{}/{}", m.run_id, vm.name)),
            ));
        }
    }
    let out = if script.is_empty() {
        String::new()
    } else {
        session.run_ok(&RemoteCommand::sh(script).sudo()).await?.stdout_str()
    };
    for m in &manifests {
        for vm in &m.vms {
            let id = format!("{}/{}", m.run_id, vm.name);
            let line = out.lines().find(|l| l.split_whitespace().nth(1) == Some(id.as_str()));
            let alive = line.is_some_and(|l| l.starts_with("alive "));
            let pid = line.and_then(|l| l.split_whitespace().nth(2)).and_then(|p| p.parse().ok()).or(vm.pid);
            rows.push(VmStatus {
                node: node.into(),
                run_id: m.run_id.clone(),
                vm: vm.name.clone(),
                state: if alive { vm.state.clone() } else { "dead".into() },
                pid,
                alive,
                pinned: vm.pinned.iter().map(|p| format!("vcpu{}->{} {}", p.vcpu, p.affinity, p.policy)).collect(),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_refuses_escapes() {
        assert!(under("/run/harness", "/run/harness/r1"));
        assert!(under("/run/harness/", "/run/harness/r1/DUT1_1"));
        assert!(!under("/run/harness", "/run/harness"));
        assert!(!under("/run/harness", "/run/harness/"));
        assert!(!under("/run/harness", "/run/harnessX/r1"));
        assert!(!under("/run/harness", "/run/harness/../etc"));
        assert!(!under("/run/harness", "/etc"));
    }

    #[test]
    fn selector_filters_by_run_and_topology() {
        let m = Manifest {
            format: 1,
            run_id: "r1".into(),
            node: "DUT1".into(),
            host: "h".into(),
            topology: "/t/a.yaml".into(),
            started_by: "x".into(),
            created_unix: 0,
            run_dir: "/run/harness/r1".into(),
            vms: vec![],
            hugepages: vec![],
            facts: None,
        };
        assert!(Selector::default().matches(&m));
        assert!(Selector { run_id: Some("r1".into()), topology: None }.matches(&m));
        assert!(!Selector { run_id: Some("r2".into()), topology: None }.matches(&m));
        assert!(!Selector { run_id: None, topology: Some("/t/b.yaml".into()) }.matches(&m));
    }
}
