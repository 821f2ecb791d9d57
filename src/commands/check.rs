//! `harness check`: pre-flight every DUT in parallel (one SSH round trip per node), print one
//! line per node (✓/✗ on a terminal, `ok`/`FAIL` otherwise) or JSON, and exit 0 (all required
//! items pass), 1 (a requirement fails) or 3 (a node is unreachable). `--save-facts DIR` keeps
//! each node's facts for `render --facts DIR`.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::{CheckArgs, Format, GlobalArgs};
use crate::exit;
use crate::facts::Kvm;
use crate::plan::PlanOptions;
use crate::remote::check::{self, NodeReport, Status};
use crate::ssh::SshTarget;

pub async fn run(g: &GlobalArgs, a: &CheckArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let (topo, templates) = super::load_topology(g, &a.topology)?;
    let (topo, templates) = (Arc::new(topo), Arc::new(templates));
    let opts = super::connect_options(g);
    let tasks: Vec<_> = topo
        .duts()
        .map(|node| {
            let (node, topo, templates) = (node.clone(), topo.clone(), templates.clone());
            let target = SshTarget::for_node(&topo, &node);
            let opts = opts.clone();
            tokio::spawn(async move {
                // Checked with the run id `render` shows by default: paths do not affect the checks.
                let po = PlanOptions { run_id: "RUN_ID".into(), templates: &templates, only_vms: &[] };
                check::check_node(&target, &opts, &topo, &node, &po).await
            })
        })
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await?);
    }
    let mut junit_ok = true;
    if let Some(f) = &a.junit {
        let suite = format!("harness check {}", a.topology.file_name().unwrap_or_default().to_string_lossy());
        let run = crate::pipeline::junit::for_check(&suite, &reports, started.elapsed());
        if let Err(e) = super::write_report(f, crate::report::junit::to_xml(&run).as_bytes()) {
            eprintln!("harness: {e:#}");
            junit_ok = false;
        }
    }
    if let Some(dir) = &a.save_facts {
        for r in &reports {
            if let Some(f) = &r.facts {
                crate::facts::store::save(dir, &r.node, f)
                    .with_context(|| format!("saving the facts of {}", r.node))?;
            }
        }
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Format::Text => print_text(&reports, std::io::stdout().is_terminal()),
    }
    Ok(match exit_code(&reports) {
        exit::OK if !junit_ok => exit::FAILED,
        code => code,
    })
}

fn exit_code(reports: &[NodeReport]) -> u8 {
    if reports.iter().any(|r| !r.reachable) {
        exit::UNREACHABLE
    } else if reports.iter().any(NodeReport::failed) {
        exit::FAILED
    } else {
        exit::OK
    }
}

fn mark(s: Status, tty: bool) -> &'static str {
    match (s, tty) {
        (Status::Ok, true) => "✓",
        (Status::Warn, true) => "!",
        (Status::Fail, true) => "✗",
        (Status::Ok, false) => "ok",
        (Status::Warn, false) => "warn",
        (Status::Fail, false) => "FAIL",
    }
}

/// One line per node, then an indented line for every item that is not plainly ok.
fn print_text(reports: &[NodeReport], tty: bool) {
    let width = reports.iter().map(|r| r.node.len()).max().unwrap_or(0);
    for r in reports {
        let mut line = format!("{:width$}  {:21}", r.node, r.addr);
        for it in &r.items {
            let sep = if tty { "" } else { ":" };
            line.push_str(&format!(" {}{sep}{}", mark(it.status, tty), it.name));
        }
        if let Some(accel) = &r.accel {
            line.push_str(&format!("  accel={}", accel.as_str()));
        }
        if let Some(kvm) = r.facts.as_ref().and_then(|f| f.kvm.as_ref()) {
            let state = match kvm {
                Kvm::Usable => "usable",
                Kvm::Broken(_) => "broken",
                Kvm::Unverified(_) => "unverified",
                Kvm::Absent => "absent",
            };
            line.push_str(&format!(" kvm={state}"));
        }
        if r.reachable {
            line.push_str(&format!("  ({} ms + {} ms)", r.connect_ms, r.probe_ms));
        }
        println!("{line}");
        for it in r.items.iter().filter(|i| i.status != Status::Ok || !r.reachable) {
            println!("{:width$}    {} {}: {}", "", mark(it.status, tty), it.name, it.detail);
        }
    }
}
