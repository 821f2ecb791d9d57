//! `harness status [TOPOLOGY] [--run ID]`: what runs where, read from the hosts.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::cli::{Format, GlobalArgs, StatusArgs};
use crate::exit;
use crate::run::down::{self, Selector, VmStatus};
use crate::ssh::{Session, SshTarget};

pub async fn run(g: &GlobalArgs, a: &StatusArgs) -> anyhow::Result<u8> {
    let (topo, mut sel) = super::down::resolve(g, a.topology.as_deref(), a.run.as_deref())?;
    // Status shows every run on these hosts unless one is named.
    sel.topology = None;
    let sel = Arc::new(Selector { run_id: a.run.clone(), ..sel });
    let opts = Arc::new(super::connect_options(g));
    let mut set = JoinSet::new();
    for node in topo.duts() {
        let target = SshTarget::for_node(&topo, node);
        let (opts, sel) = (opts.clone(), sel.clone());
        let (name, run_root) = (node.name.clone(), node.run_root.clone());
        set.spawn(async move {
            let s = Session::connect(&target, &opts).await.map_err(|e| format!("{name}: {e}"))?;
            let r = down::status_node(&s, &name, &run_root, &sel).await.map_err(|e| format!("{name}: {e}"));
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
    match a.format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"vms": rows, "errors": errors}))?)
        }
        Format::Text => {
            if rows.is_empty() {
                println!("no runs on these hosts");
            }
            for r in &rows {
                println!(
                    "{:<22} {:<8} {:<12} {:<6} pid {:<8} {}",
                    r.run_id,
                    r.node,
                    r.vm,
                    r.state,
                    r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    r.pinned.join(", ")
                );
            }
            for e in &errors {
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if errors.is_empty() { exit::OK } else { exit::UNREACHABLE })
}
