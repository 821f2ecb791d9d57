//! `harness status [TOPOLOGY] [--run ID]`: what runs where, read from the hosts. Exits 1 when a
//! VM of a listed run is not running (or a run directory has no manifest), 3 when a node could
//! not be reached: a script can trust exit 0 to mean "everything listed is alive".

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
            let s = Session::connect(&target, &opts).await.map_err(|e| super::node_error(&name, &e.to_string()))?;
            let r = status::status_node(&s, &name, &run_root, &sel)
                .await
                .map_err(|e| super::node_error(&name, &e.to_string()));
            s.close().await;
            r
        });
    }
    let mut rows: Vec<VmStatus> = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(v)) => rows.extend(v),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("internal: {e}")),
        }
    }
    rows.sort_by(|a, b| (&a.run_id, &a.node, &a.vm).cmp(&(&b.run_id, &b.node, &b.vm)));
    // Nodes sharing a host both see a manifest-less run directory: list it once.
    rows.dedup_by(|a, b| a.state == "orphan" && b.state == "orphan" && a.run_id == b.run_id && a.vm == b.vm);
    let dead = rows.iter().filter(|r| !r.alive).count();
    match a.format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"vms": rows, "errors": errors}))?)
        }
        Format::Text => print_text(&rows, &errors, dead),
    }
    Ok(if !errors.is_empty() {
        exit::UNREACHABLE
    } else if dead > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn print_text(rows: &[VmStatus], errors: &[String], dead: usize) {
    if rows.is_empty() {
        println!("no runs on these hosts");
    }
    for r in rows {
        println!(
            "{:<22} {:<8} {:<12} {:<9} pid {:<8} {:<20} {}",
            r.run_id,
            r.node,
            r.vm,
            r.state,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.started_by,
            r.pinned.join(", ")
        );
        if let Some(n) = &r.note {
            println!("{:<22} {}", "", n);
        }
    }
    if dead > 0 {
        println!("{dead} VM(s) not running");
    }
    for e in errors {
        eprintln!("error: {e}");
    }
}
