//! `harness status [TOPOLOGY] [--run ID]`: what runs where, read from the hosts. Exits 1 when a
//! VM of a listed run is not running (or a run directory has no manifest, or a manifest cannot
//! be read) or a node's probe
//! failed, 3 when a node could not be reached or lost its connection: a script can trust exit 0
//! to mean "everything listed is alive".

use std::collections::HashSet;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::cli::{Format, GlobalArgs, StatusArgs};
use crate::exit;
use crate::run::down::Selector;
use crate::run::status::{self, VmStatus};
use crate::ssh::{Session, SshTarget};

pub async fn run(g: &GlobalArgs, a: &StatusArgs) -> anyhow::Result<u8> {
    let (topo, mut sel) = super::down::resolve(g, a.topology.as_deref(), a.run.as_deref())?;
    // Status shows every run on these hosts, whoever started it, unless one is named.
    sel.topology = None;
    sel.started_by = None;
    let sel = Arc::new(Selector { run_id: a.run.clone(), ..sel });
    let opts = Arc::new(super::connect_options(g));
    let mut set = JoinSet::new();
    for node in topo.duts() {
        let target = SshTarget::for_node(&topo, node);
        let (opts, sel) = (opts.clone(), sel.clone());
        let (name, run_root) = (node.name.clone(), node.run_root.clone());
        set.spawn(async move {
            let fail = |e: crate::ssh::SshError| (super::node_error(&name, &e.to_string()), lost(&e));
            let s = Session::connect(&target, &opts).await.map_err(fail)?;
            let r = status::status_node(&s, &name, &run_root, &sel).await.map_err(fail);
            s.close().await;
            r
        });
    }
    let mut rows: Vec<VmStatus> = Vec::new();
    let mut errors = Vec::new();
    let mut unreachable = false;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(v)) => rows.extend(v),
            Ok(Err((e, unr))) => {
                unreachable |= unr;
                errors.push(e)
            }
            Err(e) => errors.push(format!("internal: {e}")),
        }
    }
    let rows = list_orphans_once(rows);
    let dead = rows.iter().filter(|r| !r.alive).count();
    match a.format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"vms": rows, "errors": errors}))?)
        }
        Format::Text => print_text(&rows, &errors, dead),
    }
    Ok(if unreachable {
        exit::UNREACHABLE
    } else if !errors.is_empty() || dead > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// The node could not be asked at all (as opposed to a probe that failed on a reachable node).
fn lost(e: &crate::ssh::SshError) -> bool {
    e.is_unreachable() || e.is_connection_lost()
}

/// Rows sorted by run, node and VM; a manifest-less run directory seen by several nodes that
/// share its host and run root is listed once (under the first such node), but the same run id
/// orphaned on two hosts is two rows.
fn list_orphans_once(mut rows: Vec<VmStatus>) -> Vec<VmStatus> {
    rows.sort_by(|a, b| (&a.run_id, &a.node, &a.vm).cmp(&(&b.run_id, &b.node, &b.vm)));
    let mut seen = HashSet::new();
    rows.retain(|r| r.orphan_dir.as_ref().is_none_or(|d| seen.insert(d.clone())));
    rows
}

fn print_text(rows: &[VmStatus], errors: &[String], dead: usize) {
    use crate::report::sanitize::escape_control_lines as esc_lines;
    print!("{}", rows_text(rows, dead));
    for e in errors {
        eprintln!("error: {}", esc_lines(e));
    }
}

/// The rows in text. Every field but the node comes from a manifest on a host: escaped, so a
/// manifest (a file any root on the host can edit) cannot rewrite the terminal.
fn rows_text(rows: &[VmStatus], dead: usize) -> String {
    use crate::report::sanitize::escape_control as esc;
    use std::fmt::Write;
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no runs on these hosts\n");
    }
    for r in rows {
        let _ = writeln!(
            out,
            "{:<22} {:<8} {:<12} {:<9} pid {:<8} {:<20} {}",
            esc(&r.run_id),
            r.node,
            esc(&r.vm),
            esc(&r.state),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            esc(&r.started_by),
            esc(&r.pinned.join(", "))
        );
        if let Some(n) = &r.note {
            let _ = writeln!(out, "{:<22} {}", "", esc(n));
        }
    }
    if dead > 0 {
        let _ = writeln!(out, "{dead} VM(s) not running");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(node: &str, run: &str, vm: &str, dir: Option<&str>) -> VmStatus {
        VmStatus {
            orphan_dir: dir.map(str::to_string),
            node: node.into(),
            run_id: run.into(),
            vm: vm.into(),
            state: if dir.is_some() { "orphan" } else { "ready" }.into(),
            pid: None,
            alive: false,
            started_by: "u@h".into(),
            pinned: vec![],
            note: None,
        }
    }

    /// `status` printed run ids, VM names, states, owners and notes from the hosts' manifests
    /// as they were: an edited manifest could clear the screen or forge lines on the jumpbox.
    #[test]
    fn regression_status_escapes_what_the_manifests_say() {
        let mut r = row("DUT1", "r1\u{1b}[2J", "DUT1_1\rok", None);
        r.started_by = "u@h\u{1b}]0;x\u{7}".into();
        r.note = Some("clean with `harness down --run r1\u{1b}[2J`\nforged".into());
        let text = rows_text(&[r], 1);
        assert!(!text.contains(['\u{1b}', '\u{7}', '\r']), "{text:?}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("r1\\u{1b}[2J") && text.contains("DUT1_1\\rok"), "{text}");
    }

    /// Orphans were deduplicated by run id and VM only, and only when their rows happened to be
    /// adjacent: the same orphaned run on two hosts was listed once, and one orphan seen by two
    /// nodes of a host was listed twice when one of the nodes had other rows between them. The
    /// lab's nodes are one host on several sshd ports: the directory itself, not the address,
    /// says which rows are one.
    #[test]
    fn regression_orphans_are_listed_once_per_directory_not_once_per_name() {
        let (a, b) = (Some("boot-a:2049:11"), Some("boot-b:2049:11"));
        let rows = list_orphans_once(vec![
            row("DUT1", "r1", "DUT1_1", a),
            row("DUT1", "r1", "DUT1_2", None),
            row("DUT3", "r1", "DUT1_1", a),
            row("DUT4", "r1", "DUT1_1", b),
            row("DUT5", "r1", "DUT1_1", b),
        ]);
        let got: Vec<_> = rows.iter().map(|r| (r.node.as_str(), r.vm.as_str())).collect();
        assert_eq!(got, [("DUT1", "DUT1_1"), ("DUT1", "DUT1_2"), ("DUT4", "DUT1_1")]);
    }
}
