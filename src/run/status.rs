//! `harness status`: per VM of every run on a node, whether its QEMU really runs (our pid, our
//! pidfile argument: the one check of [`crate::remote::process::ours_fns`]), who started the run,
//! and run directories an interrupted `up` left without a manifest.

use serde::Serialize;

use super::down::{self, Selector};
use super::manifest::Manifest;
use crate::quote::quote;
use crate::remote::layout;
use crate::remote::process;
use crate::ssh::{RemoteCommand, Session, SshError};

#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub node: String,
    pub run_id: String,
    pub vm: String,
    /// The manifest's state while QEMU runs; `dead` when it does not; `orphan` for a directory
    /// without a manifest.
    pub state: String,
    pub pid: Option<u32>,
    pub alive: bool,
    /// `user@host` that started the run.
    pub started_by: String,
    pub pinned: Vec<String>,
    /// Why the VM is not running, for people.
    pub note: Option<String>,
    /// An orphan's directory ([`down::Orphan::dir`]): nodes sharing a host list it once.
    #[serde(skip)]
    pub orphan_dir: Option<String>,
}

/// Script probing every VM's pidfile (recomputed paths), one `<id> alive|dead <pid|->` line each.
fn probe_all(rows: &[(String, String)]) -> String {
    let mut s = String::from(process::ours_fns());
    for (id, pidfile) in rows {
        s.push_str(&format!(
            "pf={pf}; ourpid \"$pf\"; if [ -n \"$p\" ] && alive \"$p\" && ours \"$p\" \"$pf\"; then echo {id} alive $p; else echo {id} dead ${{p:--}}; fi\n",
            pf = quote(pidfile),
            id = quote(id),
        ));
    }
    s
}

fn note_for(m: &Manifest, state: &str, pid: Option<u32>) -> String {
    match (state, pid) {
        ("preparing" | "starting", None) => {
            format!("never started: left by an interrupted up; clean with `harness down --run {}`", m.run_id)
        }
        (_, Some(p)) => format!("qemu (pid {p}) is not running; clean with `harness down --run {}`", m.run_id),
        (_, None) => format!("qemu is not running; clean with `harness down --run {}`", m.run_id),
    }
}

/// Manifests of a node plus, per VM, whether its QEMU still runs; and the node's orphan run
/// directories (no manifest).
pub async fn status_node(
    session: &Session,
    node: &str,
    run_root: &str,
    sel: &Selector,
) -> Result<Vec<VmStatus>, SshError> {
    let (mut manifests, mut unreadable) = (Vec::<Manifest>::new(), Vec::new());
    for m in down::discover(session, node, run_root).await? {
        match m {
            Ok(m) if sel.matches(&m) => manifests.push(m),
            Ok(_) => {}
            Err(e) => unreadable.push(e),
        }
    }
    let mut probes = Vec::new();
    for m in &manifests {
        if let Ok((_, vms)) = down::targets(run_root, m) {
            probes.extend(vms.into_iter().map(|v| (format!("{}/{}", m.run_id, v.name), v.pidfile)));
        }
    }
    let out = if probes.is_empty() {
        String::new()
    } else {
        session.run_ok(&RemoteCommand::sh(probe_all(&probes)).sudo().idempotent()).await?.stdout_str()
    };
    let mut rows = Vec::new();
    for m in &manifests {
        for vm in &m.vms {
            let id = format!("{}/{}", m.run_id, vm.name);
            let line: Vec<&str> = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id.as_str()))
                .unwrap_or("")
                .split(' ')
                .collect();
            let alive = line.get(1) == Some(&"alive");
            let pid = line.get(2).and_then(|p| p.parse().ok()).or(vm.pid);
            rows.push(VmStatus {
                node: node.into(),
                run_id: m.run_id.clone(),
                vm: vm.name.clone(),
                state: if alive { vm.state.clone() } else { "dead".into() },
                pid,
                alive,
                started_by: m.started_by.clone(),
                pinned: vm.pinned.iter().map(|p| format!("vcpu{}->{} {}", p.vcpu, p.affinity, p.policy)).collect(),
                note: (!alive).then(|| note_for(m, &vm.state, pid)),
                orphan_dir: None,
            });
        }
    }
    // A manifest that cannot be read is a run whose VMs may still run: a row, never skipped
    // (it was, and `status` exited 0 over QEMUs it could not see). Its run id is its directory's.
    for (path, why) in unreadable {
        let run_id = path.rsplit('/').nth(1).unwrap_or("?").to_string();
        if sel.run_id.as_ref().is_some_and(|r| r != &run_id) {
            continue;
        }
        rows.push(VmStatus {
            node: node.into(),
            vm: "-".into(),
            state: "unreadable".into(),
            pid: None,
            alive: false,
            started_by: "?".into(),
            pinned: vec![],
            note: Some(format!(
                "manifest {path} cannot be read ({why}): its VMs may still run; `harness down` leaves it in place"
            )),
            orphan_dir: None,
            run_id,
        });
    }
    if sel.topology.is_none() && sel.started_by.is_none() {
        for o in down::list_orphans(session, run_root).await? {
            if sel.run_id.as_ref().is_some_and(|r| r != &o.run_id) || layout::run_id_problem(&o.run_id).is_some() {
                continue;
            }
            rows.push(VmStatus {
                node: node.into(),
                run_id: o.run_id.clone(),
                vm: if o.vms.is_empty() { "-".into() } else { o.vms.join(",") },
                state: "orphan".into(),
                pid: None,
                alive: false,
                started_by: o.owner.clone(),
                pinned: vec![],
                note: Some(format!(
                    "run directory without a manifest (an interrupted up); clean with `harness down --run {}`",
                    o.run_id
                )),
                orphan_dir: Some(o.dir.clone()),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::fake::{FakeHost, Reply};

    /// `status` dropped a manifest it could not parse (another harness version's, or a cut
    /// write) without a word, and exited 0 although that run's QEMUs might be running. `down`
    /// already warned about it.
    #[test]
    fn regression_status_lists_an_unreadable_manifest_instead_of_skipping_it() {
        let host = FakeHost::new("DUT1", |c| {
            if c.text.contains("manifest-") {
                Reply::ok("== /run/harness/r9/manifest-DUT1.json\n{\"format\": 1, \"run_id\": \"r9\"\n")
            } else {
                Reply::ok("")
            }
        });
        let session = Session::with_transport("DUT1".to_string(), host as std::sync::Arc<dyn crate::ssh::Transport>);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let rows = rt.block_on(status_node(&session, "DUT1", "/run/harness", &Selector::default())).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!((r.run_id.as_str(), r.state.as_str(), r.alive), ("r9", "unreadable", false));
        assert!(r.note.as_ref().unwrap().contains("/run/harness/r9/manifest-DUT1.json cannot be read"), "{r:?}");
        // Another run named: not listed.
        let sel = Selector { run_id: Some("r1".into()), ..Selector::default() };
        assert!(rt.block_on(status_node(&session, "DUT1", "/run/harness", &sel)).unwrap().is_empty());
    }
}
