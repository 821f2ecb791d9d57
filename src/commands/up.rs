//! `harness up`: validate the plan (nothing touches a host if it cannot be made), execute it on
//! every node, print the run result, and keep the facts and the executed plan in the local run
//! record (`<state>/runs/<id>/facts/`, `<state>/runs/<id>/plan.json`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::{Format, GlobalArgs, UpArgs};
use crate::exit;
use crate::facts::FactsByNode;
use crate::plan::{self, Plan, PlanOptions};
use crate::report::Reporter;
use crate::run::record::{self, RunRecord};
use crate::run::up::{self, RunResult, UpOptions};

pub async fn run(g: &GlobalArgs, a: &UpArgs) -> anyhow::Result<u8> {
    let (topo, templates) = super::load_topology(g, &a.topology)?;
    let run_id = a.run_id.clone().unwrap_or_else(crate::run::new_run_id);
    // Planned once without facts first: every input error surfaces before any host is touched.
    let draft = plan::build(
        &topo,
        &FactsByNode::new(),
        &PlanOptions { run_id: run_id.clone(), templates: &templates, only_vms: &a.vms },
    )?;
    if draft.nodes.is_empty() {
        bail!("{}: no VMs to start", a.topology.display());
    }
    let state = record::state_dir(g.state_dir.as_deref());
    if record::load(&state, &run_id).is_ok() {
        // Reusing a live run id would overwrite (and on failure delete) that run's record.
        eprintln!(
            "error: run id {run_id} is already in use (local record in {}): choose another --run-id, or stop it with `harness down --run {run_id}`",
            state.display()
        );
        return Ok(exit::INVALID_INPUT);
    }
    let topology_path = super::absolute(&a.topology);
    let mut rec = RunRecord {
        run_id: run_id.clone(),
        topology: topology_path.clone().into(),
        nodes: draft.nodes.iter().map(|n| n.name.clone()).collect(),
        created_unix: crate::run::now_unix(),
        state: "starting".into(),
    };
    // Written first, so `down --run ID` works even if this process dies mid-way.
    record::save(&state, &rec).with_context(|| format!("writing the run record under {}", state.display()))?;

    let opts = UpOptions {
        run_id: run_id.clone(),
        topology_path: topology_path.into(),
        topology: Arc::new(topo),
        templates: Arc::new(templates),
        only_vms: a.vms.clone(),
        connect: super::connect_options(g),
        stop_grace: Duration::from_secs(10),
        connector: None,
        interrupt: None,
    };
    let (reporter, root) = Reporter::start(super::style(g));
    let res = up::up(&opts, root.clone()).await;
    drop(root);
    reporter.finish().await;

    if res.ok {
        rec.state = "ready".into();
        record::save(&state, &rec)?;
        save_facts_and_plan(&state, &res)
            .with_context(|| format!("writing the run's facts under {}", state.display()))?;
    } else if res.cleanup.as_ref().is_none_or(|c| c.complete) {
        // Everything was stopped again: nothing left to record.
        record::remove(&state, &run_id);
    } else {
        // Something may remain: keep the record so `harness down --run ID` finds the topology.
        rec.state = if res.interrupted { "interrupted" } else { "failed" }.into();
        record::save(&state, &rec)?;
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&res)?),
        Format::Text => print_text(&res),
    }
    Ok(if res.ok {
        exit::OK
    } else if res.run_id_in_use {
        exit::INVALID_INPUT
    } else if res.interrupted {
        exit::INTERRUPTED
    } else if res.nodes.iter().any(|n| n.unreachable) {
        exit::UNREACHABLE
    } else {
        exit::UP_FAILED
    })
}

/// The facts each node was planned with (in `check --save-facts` form, so `render --facts`
/// reads them) and the plan that ran.
fn save_facts_and_plan(state: &std::path::Path, res: &RunResult) -> anyhow::Result<()> {
    let dir = record::run_dir(state, &res.run_id);
    for n in &res.nodes {
        if let Some(f) = &n.facts {
            crate::facts::store::save(&dir.join("facts"), &n.name, f)?;
        }
    }
    let plan = Plan { run_id: res.run_id.clone(), nodes: res.nodes.iter().filter_map(|n| n.plan.clone()).collect() };
    std::fs::write(dir.join("plan.json"), plan::render::json(&plan)?)?;
    Ok(())
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
            v.state.as_str(),
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
    let what = if res.interrupted { "was interrupted" } else { "failed" };
    match &res.cleanup {
        _ if res.ok => println!(
            "run {} is up ({:.1}s). Stop it with: harness down --run {}",
            res.run_id, res.duration_s, res.run_id
        ),
        Some(c) if !c.complete => {
            println!("run {} {what}; NOT everything it started could be stopped:", res.run_id);
            for l in &c.left {
                println!("  {l}");
            }
            println!("Finish with: harness down --run {}", res.run_id);
        }
        _ if res.run_id_in_use => {
            println!("run {} was refused: the run id is in use; nothing of that run was touched", res.run_id)
        }
        _ => println!("run {} {what}; everything it started was stopped", res.run_id),
    }
}
