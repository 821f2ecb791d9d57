//! `harness up`: plan, then execute on every node; print the run result.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::{Format, GlobalArgs, Progress, UpArgs};
use crate::exit;
use crate::plan::{self, PlanOptions};
use crate::report::{Reporter, Style};
use crate::run::record::{self, RunRecord};
use crate::run::up::{self, RunResult, UpOptions};

pub fn style(g: &GlobalArgs) -> Style {
    match g.progress {
        Progress::Auto => Style::auto(),
        Progress::Bars => Style::Bars,
        Progress::Plain => Style::Plain,
        Progress::Never => Style::Never,
    }
}

pub fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

pub async fn run(g: &GlobalArgs, a: &UpArgs) -> anyhow::Result<u8> {
    let (topo, templates) = super::load_topology(g, &a.topology)?;
    let run_id = a.run_id.clone().unwrap_or_else(crate::run::new_run_id);
    let mut plan = plan::build(&topo, &PlanOptions { run_id: run_id.clone(), templates: &templates })?;
    plan::select_vms(&mut plan, &a.vms)?;
    for n in plan.nodes.iter_mut() {
        // Only the selected VMs' pages are needed.
        for need in n.hugepages.iter_mut() {
            need.pages = n.vms.iter().filter(|v| v.page_size == need.size).map(|v| v.mem_mib / need.size.mib()).sum();
        }
        n.hugepages.retain(|h| h.pages > 0);
    }
    if plan.nodes.is_empty() {
        bail!("{}: no VMs to start", a.topology.display());
    }
    let state = record::state_dir(g.state_dir.as_deref());
    let topology_path = absolute(&a.topology);
    let mut rec = RunRecord {
        run_id: run_id.clone(),
        topology: topology_path.clone().into(),
        nodes: plan.nodes.iter().map(|n| n.name.clone()).collect(),
        created_unix: crate::run::now_unix(),
        state: "starting".into(),
    };
    // Written first, so `down --run ID` works even if this process dies mid-way.
    record::save(&state, &rec).with_context(|| format!("writing the run record under {}", state.display()))?;

    let opts = UpOptions {
        run_id: run_id.clone(),
        topology_path: topology_path.into(),
        connect: super::connect_options(g),
        stop_grace: Duration::from_secs(10),
    };
    let (reporter, root) = Reporter::start(style(g));
    let res = up::up(&topo, &plan, &opts, root.clone()).await;
    drop(root);
    reporter.finish().await;

    if res.ok {
        rec.state = "ready".into();
        record::save(&state, &rec)?;
    } else {
        // Everything was stopped again: nothing left to record.
        record::remove(&state, &run_id);
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&res)?),
        Format::Text => print_text(&res),
    }
    Ok(if res.ok {
        exit::OK
    } else if res.interrupted {
        exit::INTERRUPTED
    } else if res.nodes.iter().any(|n| n.unreachable) {
        exit::UNREACHABLE
    } else {
        exit::UP_FAILED
    })
}

fn print_text(res: &RunResult) {
    for v in &res.vms {
        let t = |k: &str| v.timings.get(k).map(|s| format!("{k} {s:.1}s")).unwrap_or_default();
        let pins: Vec<String> =
            v.pinned.iter().map(|p| format!("vcpu{}→cpu{} {}", p.vcpu, p.affinity, p.policy)).collect();
        let ifs: Vec<String> = v
            .guest_interfaces
            .iter()
            .filter(|i| i.name != "lo")
            .map(|i| format!("{} {}", i.name, i.mac.clone().unwrap_or_default()))
            .collect();
        println!(
            "{:<8} {:<12} {:<8} pid {:<8} {} {} {} {}  {}  {}",
            v.node,
            v.name,
            v.state,
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            t("start"),
            t("boot"),
            t("agent"),
            t("pin"),
            pins.join(", "),
            ifs.join(", ")
        );
        if let Some(e) = &v.error {
            println!("         error: {e}");
            for l in &v.serial_tail {
                println!("         | {l}");
            }
        }
    }
    for n in &res.nodes {
        if let Some(e) = &n.error {
            eprintln!("{}: {e}", n.name);
        }
    }
    if res.ok {
        println!("run {} is up ({:.1}s). Stop it with: harness down --run {}", res.run_id, res.duration_s, res.run_id);
    } else if res.interrupted {
        println!("run {} was interrupted; everything it started was stopped", res.run_id);
    } else {
        println!("run {} failed; everything it started was stopped", res.run_id);
    }
}
