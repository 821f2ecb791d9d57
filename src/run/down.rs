//! `harness down`: everything works from the hosts' own state (manifests, run directories).
//!
//! `down` stops each VM of the selected runs (QMP `quit`, then SIGTERM, then SIGKILL, only for
//! processes carrying our pidfile path), removes the run directory and gives back the hugepages
//! the run's journal says it added. Running it twice is harmless. A manifest is read for *which*
//! runs and VMs exist, never for *where* they are: every path is recomputed from the node's
//! `run_root`, the validated run id and VM name ([`crate::remote::layout`]), so a tampered manifest cannot
//! point `down` at another process, socket, directory or sysctl value. Run directories an
//! interrupted `up` left without any manifest are found too, and cleaned when their owner file
//! names the caller.

use std::time::Duration;

use serde::Serialize;

use super::manifest::{self, Manifest};
use crate::quote::quote;
use crate::remote::hugepages;
use crate::remote::layout::{self, VmPaths};
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
    /// Only runs started by this `user@host` (`down TOPOLOGY` without `--all`).
    pub started_by: Option<String>,
}

impl Selector {
    pub fn matches(&self, m: &Manifest) -> bool {
        self.run_id.as_ref().is_none_or(|r| &m.run_id == r)
            && self.topology.as_ref().is_none_or(|t| &m.topology == t)
            && self.started_by.as_ref().is_none_or(|s| &m.started_by == s)
    }
}

/// Read this node's manifests under `run_root` (other nodes sharing the host are skipped). A
/// manifest is accepted only at the path its own run id and node name give.
pub async fn discover(
    session: &Session,
    node: &str,
    run_root: &str,
) -> Result<Vec<Result<Manifest, (String, String)>>, SshError> {
    let out = session.run_ok(&RemoteCommand::sh(manifest::list_script(run_root)).sudo().idempotent()).await?;
    Ok(manifest::parse_listed(&out.stdout_str())
        .into_iter()
        .filter_map(|(path, m)| match m {
            Ok(m) if m.node != node => None,
            Ok(m) => match layout::run_dir(run_root, &m.run_id).map(|d| manifest::path(&d, node)) {
                Ok(expected) if expected == path => Some(Ok(m)),
                Ok(expected) => Some(Err((path, format!("manifest names run {} (expected at {expected})", m.run_id)))),
                Err(e) => Some(Err((path, e))),
            },
            Err(e) => path.ends_with(&format!("/manifest-{node}.json")).then_some(Err((path, e))),
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

/// The recomputed paths of a manifest's VMs, or why the manifest cannot be acted on.
pub fn targets(run_root: &str, m: &Manifest) -> Result<(String, Vec<VmPaths>), String> {
    let rd = layout::run_dir(run_root, &m.run_id)?;
    let vms = m.vms.iter().map(|v| layout::vm_paths(&rd, &v.name)).collect::<Result<Vec<_>, _>>()?;
    Ok((rd, vms))
}

/// Stop a node's VMs (paths recomputed) in ONE round trip, with a reconnect if the connection
/// dropped: one sudo on the host for all of them, not one per VM. Each VM's
/// [`process::stop_script`] runs in the background, its output lines prefixed with its index.
/// One result per VM, in `vms` order.
pub async fn stop_vms(
    session: &Session,
    run_root: &str,
    vms: &[VmPaths],
    grace: Duration,
) -> Vec<Result<StopReport, String>> {
    if vms.is_empty() {
        return Vec::new();
    }
    let cmd = RemoteCommand::sh(stop_all_script(run_root, vms, grace))
        .sudo()
        .timeout(grace + Duration::from_secs(30))
        .idempotent();
    match session.run(&cmd).await {
        Ok(out) => {
            let text = out.stdout_str();
            (0..vms.len())
                .map(|i| {
                    let prefix = format!("{i} ");
                    let lines: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix(&prefix)).collect();
                    process::parse_stop(&lines.join("\n")).map_err(|_| {
                        let said =
                            if lines.is_empty() { out.stderr_str().trim().to_string() } else { lines.join("; ") };
                        format!("stop script failed: {said}")
                    })
                })
                .collect()
        }
        Err(e) => vms.iter().map(|_| Err(e.to_string())).collect(),
    }
}

/// The script of [`stop_vms`]: each VM's stop script in a background subshell whose output
/// (stderr too) comes back line by line behind the VM's index; then wait for all of them.
fn stop_all_script(run_root: &str, vms: &[VmPaths], grace: Duration) -> String {
    let mut s = String::new();
    for (i, vm) in vms.iter().enumerate() {
        let one = process::stop_script(run_root, vm, grace.as_secs() as u32);
        s.push_str(&format!(
            "(o=$( (\n{one}\n) 2>&1 ); printf '%s\\n' \"$o\" | while IFS= read -r l; do printf '{i} %s\\n' \"$l\"; done) &\n"
        ));
    }
    s.push_str("wait\n");
    s
}

/// Stop the selected runs on one node, then clean the caller's run directories that have no
/// manifest at all (an `up` killed before it wrote one). An error after some runs were stopped
/// comes with their rows: the output and the JUnit report still name what was stopped.
pub async fn down_node(
    session: &Session,
    node: &str,
    run_root: &str,
    sel: &Selector,
    grace: Duration,
    ev: &EventSink,
) -> Result<Vec<StoppedVm>, (Vec<StoppedVm>, SshError)> {
    let mut out = Vec::new();
    for m in discover(session, node, run_root).await.map_err(|e| (Vec::new(), e))? {
        let m = match m {
            Ok(m) => m,
            Err((path, msg)) => {
                ev.warn(format!("unreadable manifest {path}: {msg} (left in place)"));
                // The run asked for by id: its VMs may still run, and the local record is the
                // only pointer to them. A row with an error keeps it and fails the command (an
                // unreadable manifest of some other run says nothing about this `down`).
                let run = path.rsplit('/').nth(1).unwrap_or_default();
                if sel.run_id.as_deref() == Some(run) {
                    out.push(StoppedVm {
                        node: node.to_string(),
                        run_id: run.to_string(),
                        vm: "-".into(),
                        report: None,
                        error: Some(format!(
                            "unreadable manifest {path}: {msg}; its VMs may still run (left in place)"
                        )),
                    });
                }
                continue;
            }
        };
        if !sel.matches(&m) {
            continue;
        }
        out.extend(down_run(session, node, run_root, &m, grace, ev).await);
    }
    if sel.run_id.is_none() || sel.run_id.as_ref().is_some_and(|r| layout::run_id_problem(r).is_none()) {
        match clean_orphans(session, node, run_root, sel, grace, ev).await {
            Ok(rows) => out.extend(rows),
            Err(e) => return Err((out, e)),
        }
    }
    Ok(out)
}

async fn down_run(
    session: &Session,
    node: &str,
    run_root: &str,
    m: &Manifest,
    grace: Duration,
    ev: &EventSink,
) -> Vec<StoppedVm> {
    let row = |vm: &str, report, error| StoppedVm {
        node: node.to_string(),
        run_id: m.run_id.clone(),
        vm: vm.to_string(),
        report,
        error,
    };
    let (rd, vms) = match targets(run_root, m) {
        Ok(t) => t,
        Err(e) => {
            ev.warn(format!("run {:?}: {e}: refused (left in place)", m.run_id));
            return vec![row("-", None, Some(format!("refused: {e}")))];
        }
    };
    crate::run::testpause::at("down", node).await;
    for vm in &vms {
        ev.for_vm(&vm.name).phase(Phase::Stopping);
    }
    let mut rows = Vec::new();
    for (vm, r) in vms.iter().zip(stop_vms(session, run_root, &vms, grace).await) {
        match r {
            Ok(rep) => {
                ev.for_vm(&vm.name).phase(Phase::Stopped);
                rows.push(row(&vm.name, Some(rep), None));
            }
            Err(e) => {
                ev.for_vm(&vm.name).warn(format!("stop failed: {e}"));
                rows.push(row(&vm.name, None, Some(e)));
            }
        }
    }
    if rows.iter().all(|r| r.error.is_none()) {
        let rel = NodeRelease { node, run_root, run_dir: &rd, vms: &vms, nonce: None };
        if let Err(e) = release_node(session, &rel, ev).await {
            rows.push(row("-", None, Some(e)));
        }
    } else {
        ev.warn(format!("run {} kept its manifest: some VMs could not be stopped", m.run_id));
    }
    rows
}

/// What one node of one run leaves to clean up after its VMs are stopped (paths recomputed).
pub struct NodeRelease<'a> {
    pub node: &'a str,
    pub run_root: &'a str,
    pub run_dir: &'a str,
    pub vms: &'a [VmPaths],
    /// `up`'s own cleanup: act only if the run directory's owner file holds this nonce (the
    /// directory is this invocation's, not another run's with the same id).
    pub nonce: Option<&'a str>,
}

/// Script: give back the node's hugepages from its journal, remove its VM directories and
/// manifest, and the run directory once nothing of another node is left in it.
pub fn release_script(r: &NodeRelease<'_>, roots: &hugepages::Roots) -> String {
    let journal = layout::hugepage_journal(r.run_dir, r.node);
    let mut s = format!(
        "root={root}; rd={rd}\n{safe}{claimed}",
        root = quote(r.run_root),
        rd = quote(r.run_dir),
        safe = layout::safe_dir_fn(),
        claimed = layout::claimed_fn(),
    );
    if let Some(n) = r.nonce {
        s.push_str(&format!("claimed \"$rd\" {} || {{ echo not-ours; exit 0; }}\n", quote(n)));
    }
    s.push_str("if [ ! -e \"$rd\" ]; then echo gone; exit 0; fi\n");
    s.push_str("safe_dir \"$rd\" || { echo \"refused to clean $rd: not a directory below $root\" >&2; exit 3; }\n");
    s.push_str(&hugepages::restore_script(&journal, r.run_root, r.run_dir, r.node, roots));
    s.push_str(&format!("rm -f -- {}\n", quote(&journal)));
    for v in r.vms {
        s.push_str(&format!("d={}; if safe_dir \"$d\"; then rm -rf -- \"$d\"; fi\n", quote(&v.dir)));
    }
    s.push_str(&format!(
        "rm -f -- {m}\nif [ -z \"$(ls -A \"$rd\" | grep -vxF {o})\" ]; then rm -f -- \"$rd/{o}\"; rmdir -- \"$rd\"; fi\necho released\n",
        m = quote(&manifest::path(r.run_dir, r.node)),
        o = layout::OWNER_FILE,
    ));
    s
}

/// Run [`release_script`] under the host lock. `Err` says why the node was not released.
pub async fn release_node(session: &Session, r: &NodeRelease<'_>, ev: &EventSink) -> Result<(), String> {
    let script = release_script(r, &hugepages::REAL_ROOTS);
    let holder = format!("cleanup of {} ({})", r.run_dir, super::started_by());
    let cmd = lock::locked_script(&script, &holder, Duration::from_secs(60));
    let res = session.run(&RemoteCommand::sh(cmd).sudo().timeout(Duration::from_secs(90)).idempotent()).await;
    match res {
        Ok(o) if o.success() => {
            if o.stdout_str().contains("not-ours") {
                ev.warn(format!("{} belongs to another run with this id: left alone", r.run_dir));
            }
            Ok(())
        }
        Ok(o) => {
            let e = format!("cleanup of {}: {}", r.run_dir, o.stderr_str().trim());
            ev.warn(e.clone());
            Err(e)
        }
        Err(e) => {
            let e = format!("cleanup of {}: {e}", r.run_dir);
            ev.warn(e.clone());
            Err(e)
        }
    }
}

/// Script listing run directories under `run_root` that hold no manifest at all, as
/// `orphan <run_id> <owner> <topology> <dir> <vm>...` (owner: second line of the owner file,
/// topology: its third, base64; `-` if none; dir: the host's boot id and the directory's device
/// and inode, the same for every node that shares the directory).
pub fn orphans_script(run_root: &str) -> String {
    format!(
        r#"root={root}; b=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
for d in "$root"/*/; do d=${{d%/}}; [ -d "$d" ] && [ ! -L "$d" ] || continue
  ls "$d"/manifest-*.json >/dev/null 2>&1 && continue
  o=$(sed -n 2p "$d/{o}" 2>/dev/null | tr -d ' '); t=$(sed -n 3p "$d/{o}" 2>/dev/null | tr -d ' ')
  printf 'orphan %s %s %s %s' "${{d##*/}}" "${{o:--}}" "${{t:--}}" "${{b:--}}:$(stat -c %d:%i -- "$d")"
  for v in "$d"/*/; do [ -d "$v" ] && printf ' %s' "$(basename "$v")"; done; echo
done
"#,
        root = quote(run_root),
        o = layout::OWNER_FILE
    )
}

/// A run directory without any manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub run_id: String,
    pub owner: String,
    /// The topology the interrupted `up` ran (`None`: not recorded, an older harness).
    pub topology: Option<String>,
    /// Which directory this is, whichever node looked (`<boot id>:<device>:<inode>`): nodes
    /// that share a host and run root see the same one.
    pub dir: String,
    pub vms: Vec<String>,
}

impl Orphan {
    /// `down TOPOLOGY` (no `--run`) cleans only the caller's orphans of that topology: a
    /// directory without a manifest may be the caller's own `up` of another topology, still
    /// starting (it writes its manifest only just before launching QEMU).
    fn selected_by(&self, sel: &Selector, me: &str) -> bool {
        match &sel.run_id {
            Some(r) => r == &self.run_id,
            None => {
                self.owner == me && sel.topology.as_ref().is_none_or(|t| self.topology.as_ref().is_none_or(|o| o == t))
            }
        }
    }
}

pub fn parse_orphans(out: &str) -> Vec<Orphan> {
    use base64::Engine as _;
    out.lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("orphan ")?.split_whitespace();
            let (run_id, owner, topology) = (it.next()?.to_string(), it.next()?.to_string(), it.next()?);
            let dir = it.next()?.to_string();
            let topology = base64::engine::general_purpose::STANDARD
                .decode(topology)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|t| !t.is_empty());
            Some(Orphan { run_id, owner, topology, dir, vms: it.map(str::to_string).collect() })
        })
        .filter(|o| layout::run_id_problem(&o.run_id).is_none())
        .collect()
}

pub async fn list_orphans(session: &Session, run_root: &str) -> Result<Vec<Orphan>, SshError> {
    let out = session.run_ok(&RemoteCommand::sh(orphans_script(run_root)).sudo().idempotent()).await?;
    Ok(parse_orphans(&out.stdout_str()))
}

/// Stop and remove the caller's manifest-less run directories (never anyone else's: their
/// owner file must name the caller, or the run be named with `--run`).
async fn clean_orphans(
    session: &Session,
    node: &str,
    run_root: &str,
    sel: &Selector,
    grace: Duration,
    ev: &EventSink,
) -> Result<Vec<StoppedVm>, SshError> {
    let me = super::started_by();
    let mut rows = Vec::new();
    for o in list_orphans(session, run_root).await? {
        if !o.selected_by(sel, &me) {
            continue;
        }
        let Ok(rd) = layout::run_dir(run_root, &o.run_id) else { continue };
        let vms: Vec<VmPaths> = o.vms.iter().filter_map(|v| layout::vm_paths(&rd, v).ok()).collect();
        ev.info(format!("run {}: directory without a manifest (an interrupted up): cleaning it", o.run_id));
        let mut ok = true;
        for (vm, r) in vms.iter().zip(stop_vms(session, run_root, &vms, grace).await) {
            ok &= r.is_ok();
            let (report, error) = match r {
                Ok(rep) => (Some(rep), None),
                Err(e) => (None, Some(e)),
            };
            rows.push(StoppedVm { node: node.into(), run_id: o.run_id.clone(), vm: vm.name.clone(), report, error });
        }
        if ok {
            let rel = NodeRelease { node, run_root, run_dir: &rd, vms: &vms, nonce: None };
            match release_node(session, &rel, ev).await {
                Ok(()) if vms.is_empty() => rows.push(StoppedVm {
                    node: node.into(),
                    run_id: o.run_id.clone(),
                    vm: "-".into(),
                    report: None,
                    error: None,
                }),
                Ok(()) => {}
                Err(e) => rows.push(StoppedVm {
                    node: node.into(),
                    run_id: o.run_id.clone(),
                    vm: "-".into(),
                    report: None,
                    error: Some(e),
                }),
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests;
