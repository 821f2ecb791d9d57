//! `harness down [TOPOLOGY] [--run ID] [--all]`: stop runs, using the hosts' own manifests.
//!
//! `down TOPOLOGY` stops the caller's runs of that topology (`started_by` = this `user@host`;
//! another CI agent's runs of the same file are left alone unless `--all`). The local run record
//! goes only once every VM of the run is gone on every node.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::task::JoinSet;

use crate::cli::{DownArgs, Format, GlobalArgs};
use crate::exit;
use crate::report::Reporter;
use crate::run::down::{self, Selector, StoppedVm};
use crate::run::record;
use crate::ssh::{Session, SshTarget};
use crate::topology::Topology;

/// The topology to act on and the run selector, from the arguments and local run records.
pub fn resolve(
    g: &GlobalArgs,
    topology: Option<&std::path::Path>,
    run: Option<&str>,
) -> anyhow::Result<(Topology, Selector)> {
    let state = record::state_dir(g.state_dir.as_deref());
    let topo_path = match (topology, run) {
        (Some(t), _) => t.to_path_buf(),
        (None, Some(r)) => match record::load(&state, r) {
            Ok(rec) => rec.topology,
            Err(_) => bail!("no local record of run {r}: name the topology too (harness down TOPOLOGY --run {r})"),
        },
        (None, None) => match record::list(&state).first() {
            Some(rec) => rec.topology.clone(),
            None => bail!("no local run records: name the topology (harness down TOPOLOGY)"),
        },
    };
    let (topo, _) = super::load_topology(g, &topo_path)?;
    let sel = Selector {
        run_id: run.map(str::to_string),
        topology: if run.is_none() { Some(super::absolute(&topo_path)) } else { None },
        started_by: if run.is_none() { Some(crate::run::started_by()) } else { None },
    };
    Ok((topo, sel))
}

/// Whether run `run_id`'s local record names `topology` (or there is no record to keep).
fn same_topology(state: &std::path::Path, run_id: &str, topology: &std::path::Path) -> bool {
    match record::load(state, run_id) {
        Ok(rec) => super::absolute(&rec.topology) == super::absolute(topology),
        Err(_) => true,
    }
}

pub async fn run(g: &GlobalArgs, a: &DownArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let (topo, mut sel) = resolve(g, a.topology.as_deref(), a.run.as_deref())?;
    if a.all {
        sel.started_by = None;
    }
    let topo = Arc::new(topo);
    let opts = Arc::new(super::connect_options(g));
    let (reporter, root) = Reporter::start(super::style(g));
    let mut set = JoinSet::new();
    for node in topo.duts() {
        let target = SshTarget::for_node(&topo, node);
        let (opts, sel, ev) = (opts.clone(), sel.clone(), root.for_node(&node.name));
        let (name, run_root) = (node.name.clone(), node.run_root.clone());
        let (topo, artifacts) = (topo.clone(), a.artifacts.clone());
        set.spawn(async move {
            let s =
                Session::connect(&target, &opts).await.map_err(|e| (name.clone(), Vec::new(), e.to_string(), true))?;
            // Collected while the VMs still run: counters need a live guest agent.
            let missing = match &artifacts {
                Some(dir) => {
                    let (s, name, run_root, sel) = (s.clone(), name.clone(), run_root.clone(), sel.clone());
                    crate::pipeline::down::before_down(s, name, run_root, sel, topo.clone(), dir.clone()).await
                }
                None => vec![],
            };
            let r = down::down_node(&s, &name, &run_root, &sel, Duration::from_secs(10), &ev)
                .await
                .map_err(|(rows, e)| (name.clone(), rows, e.to_string(), e.is_connection_lost() || e.is_unreachable()));
            s.close().await;
            r.map(|v| (name, v, missing))
        });
    }
    let mut stopped: Vec<StoppedVm> = Vec::new();
    let mut errors = Vec::new();
    let mut nodes: Vec<(String, Option<String>)> = Vec::new();
    let mut missing = Vec::new();
    let mut unreachable = false;
    let signal = crate::run::shutdown_signal();
    tokio::pin!(signal);
    loop {
        let r = tokio::select! {
            r = set.join_next() => match r { Some(r) => r, None => break },
            _ = &mut signal => {
                // Stops already sent run to their end on the hosts; the local record stays.
                set.abort_all();
                drop(root);
                reporter.finish().await;
                eprintln!("{}", interrupted_hint(&sel));
                return Ok(exit::INTERRUPTED);
            }
        };
        match r {
            Ok(Ok((node, v, m))) => {
                nodes.push((node, None));
                stopped.extend(v);
                missing.extend(m);
            }
            Ok(Err((node, rows, e, unr))) => {
                // What was stopped before the error is reported too (and keeps its record
                // bookkeeping: the node's error keeps every record anyway).
                stopped.extend(rows);
                unreachable |= unr;
                errors.push(super::node_error(&node, &e));
                missing.push(format!("{node}/: {e}"));
                nodes.push((node, Some(e)));
            }
            Err(e) => errors.push(format!("internal: {e}")),
        }
    }
    nodes.sort();
    // A report that cannot be written is said and fails the command, but never stops it
    // short of its records and its result.
    let outputs_ok = match pipeline_outputs(a, &sel, &nodes, &stopped, &missing, started.elapsed()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("harness: {e:#}");
            false
        }
    };
    drop(root);
    reporter.finish().await;
    let state = record::state_dir(g.state_dir.as_deref());
    // A run's record goes only when every VM of it is gone on every node: a node we could not
    // reach, or a VM we could not stop, keeps it (so `down --run ID` can be repeated).
    if errors.is_empty() {
        let mut runs: Vec<&str> = stopped.iter().map(|s| s.run_id.as_str()).collect();
        runs.extend(sel.run_id.as_deref());
        runs.sort();
        runs.dedup();
        for r in runs {
            let found = stopped.iter().any(|s| s.run_id == r);
            if !found && !same_topology(&state, r, &topo.path) {
                // Nothing of it on another topology's nodes says nothing about where it runs:
                // its record is the only pointer to the right hosts.
                eprintln!(
                    "harness: run {r} was not found on the nodes of {}; its local record (another topology) is kept",
                    topo.path.display()
                );
                continue;
            }
            if stopped.iter().all(|s| s.run_id != r || s.error.is_none()) {
                record::remove(&state, r);
            }
        }
    }
    let failed = print_result(a, &sel, &stopped, &errors)?;
    Ok(if unreachable {
        exit::UNREACHABLE
    } else if !errors.is_empty() || failed || !outputs_ok {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// What `down` says when Ctrl-C or SIGTERM cut it short.
fn interrupted_hint(sel: &Selector) -> String {
    let again = match &sel.run_id {
        Some(id) => format!("harness down --run {id}"),
        None => "harness down with the same arguments".to_string(),
    };
    format!(
        "down interrupted: stops already sent finish on the hosts, the rest may still run \
         (`harness status` shows what is left); run `{again}` to finish"
    )
}

/// `--artifacts` (its `missing.txt`; the rest was written per node) and `--junit`.
fn pipeline_outputs(
    a: &DownArgs,
    sel: &down::Selector,
    nodes: &[(String, Option<String>)],
    stopped: &[StoppedVm],
    missing: &[String],
    took: Duration,
) -> anyhow::Result<()> {
    if let Some(dir) = &a.artifacts {
        anyhow::Context::with_context(std::fs::create_dir_all(dir), || format!("creating {}", dir.display()))?;
        crate::pipeline::artifacts::write_missing(dir, missing)?;
    }
    if let Some(f) = &a.junit {
        let suite = format!("harness down {}", sel.run_id.clone().unwrap_or_default());
        let run = crate::pipeline::junit::for_down(suite.trim(), nodes, stopped, took);
        super::write_report(f, crate::report::junit::to_xml(&run).as_bytes())?;
    }
    Ok(())
}

/// The result, as JSON or one line per VM; true when a VM could not be stopped.
fn print_result(a: &DownArgs, sel: &Selector, stopped: &[StoppedVm], errors: &[String]) -> anyhow::Result<bool> {
    let failed: Vec<&StoppedVm> = stopped.iter().filter(|s| s.error.is_some()).collect();
    match a.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"stopped": stopped, "errors": errors, "ok": errors.is_empty() && failed.is_empty()})
            )?
        ),
        Format::Text => {
            for s in stopped {
                let how = s.report.as_ref().map(|r| {
                    format!("{}{}", r.outcome.as_str(), r.how.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())
                });
                println!("{:<8} {:<22} {:<12} {}", s.node, s.run_id, s.vm, s.error.clone().or(how).unwrap_or_default());
            }
            for e in errors {
                eprintln!("error: {e}");
            }
            if stopped.is_empty() && errors.is_empty() {
                println!("nothing to stop");
                if sel.started_by.is_some() {
                    println!("(only runs started by {} are stopped; --all stops everyone's)", crate::run::started_by());
                }
            }
        }
    }
    Ok(!failed.is_empty())
}
