//! `harness up`: validate the plan (nothing touches a host if it cannot be made), execute it on
//! every node, print the run result, and keep the run's reproduction record in the local run
//! directory (`<state>/runs/<id>/`: facts, executed plan, topology bytes, template overlays,
//! meta). With `--junit` / `--artifacts`, also the CI outputs ([`crate::pipeline`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::cli::{ArtifactsOn, Format, GlobalArgs, PipelineArgs, UpArgs};
use crate::exit;
use crate::facts::FactsByNode;
use crate::pipeline::bundle::{self, Meta};
use crate::pipeline::run::{self as prun, Capture, Counters, RunFiles, When};
use crate::plan::{self, Plan, PlanOptions};
use crate::report::{EventLog, Reporter};
use crate::run::record::{self, RunRecord};
use crate::run::up::{self, RunResult, UpOptions, VmResult};
use crate::templates::Templates;
use crate::topology::Topology;

/// Everything one `up` needs, however the topology was obtained (a file, a bundle).
pub struct UpInput {
    /// Where the topology is recorded as coming from (manifests, run record).
    pub topology_path: PathBuf,
    /// The topology's bytes exactly as read (kept in the run record).
    pub topology_bytes: Vec<u8>,
    pub topology: Topology,
    pub templates: Templates,
    /// The `--templates` directory whose files the run used, if any.
    pub templates_dir: Option<PathBuf>,
    pub run_id: String,
    pub vms: Vec<String>,
    pub format: Format,
    pub pipeline: PipelineArgs,
}

pub async fn run(g: &GlobalArgs, a: &UpArgs) -> anyhow::Result<u8> {
    let templates = super::templates(g)?;
    // Read once: the bytes kept for reproduction are the bytes that were loaded.
    // Unreadable input is exit 2, as for `validate`, `render` and `check`.
    let bytes = std::fs::read(&a.topology)
        .map_err(|source| crate::topology::TopologyError::Read { path: a.topology.clone(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let topology = crate::topology::load_str(&text, &a.topology, &templates)?;
    let input = UpInput {
        topology_path: super::absolute(&a.topology).into(),
        topology_bytes: bytes,
        topology,
        templates,
        templates_dir: g.templates.clone(),
        run_id: a.run_id.clone().unwrap_or_else(crate::run::new_run_id),
        vms: a.vms.clone(),
        format: a.format,
        pipeline: a.pipeline.clone(),
    };
    execute(g, input).await
}

/// Plan, record, run, report. Shared by `up` and `replay`.
pub async fn execute(g: &GlobalArgs, input: UpInput) -> anyhow::Result<u8> {
    let run_id = input.run_id.clone();
    // Planned once without facts first: every input error surfaces before any host is touched.
    let draft = plan::build(
        &input.topology,
        &FactsByNode::new(),
        &PlanOptions { run_id: run_id.clone(), templates: &input.templates, only_vms: &input.vms },
    )
    .map_err(|e| super::positioned(&input.topology, e))?;
    if draft.nodes.is_empty() {
        eprintln!("error: {}: no VMs to start", input.topology_path.display());
        return Ok(exit::INVALID_INPUT);
    }
    let state = record::state_dir(g.state_dir.as_deref());
    let mut rec = RunRecord {
        run_id: run_id.clone(),
        topology: input.topology_path.clone(),
        nodes: draft.nodes.iter().map(|n| n.name.clone()).collect(),
        created_unix: crate::run::now_unix(),
        state: "starting".into(),
    };
    // Written first, so `down --run ID` works even if this process dies mid-way; created
    // exclusively, so two `up`s with one run id cannot both pass (a check, then a write, let
    // both through, and the loser's cleanup deleted the winner's record).
    let created =
        record::create(&state, &rec).with_context(|| format!("writing the run record under {}", state.display()))?;
    if !created {
        // Reusing a live run id would overwrite (and on failure delete) that run's record.
        eprintln!(
            "error: run id {run_id} is already in use (local record in {}): choose another --run-id, or stop it with `harness down --run {run_id}`",
            state.display()
        );
        return Ok(exit::INVALID_INPUT);
    }
    let rdir = record::run_dir(&state, &run_id);
    let meta = Meta::new(&run_id, &input.topology_path, input.templates_dir.as_deref(), &input.vms);
    if let Err(e) = bundle::record(&rdir, &meta, &input.topology_bytes) {
        // Nothing started: the id stays free for a retry.
        record::forget(&state, &run_id);
        return Err(e).context("writing the run's reproduction record");
    }
    // Said now, not first at replay time.
    if std::fs::read(rdir.join("topology.yaml")).is_ok_and(|t| bundle::is_withheld(&t)) {
        eprintln!(
            "harness: warning: the run record keeps no topology (its secrets could not be redacted \
             safely); `replay` of this run will need --topology"
        );
    }

    let topology = Arc::new(input.topology);
    let capture = Arc::new(Mutex::new(Capture::default()));
    let artifacts =
        input.pipeline.artifacts.clone().map(|d| {
            (d, if input.pipeline.artifacts_on == ArtifactsOn::Always { When::Always } else { When::Failure })
        });
    let opts = UpOptions {
        run_id: run_id.clone(),
        topology_path: input.topology_path.clone(),
        topology: topology.clone(),
        templates: Arc::new(input.templates),
        only_vms: input.vms.clone(),
        connect: super::connect_options(g),
        stop_grace: Duration::from_secs(10),
        connector: None,
        interrupt: None,
        before_cleanup: Some(prun::hook(topology, artifacts, capture.clone())),
    };
    let log = EventLog::default();
    let (reporter, root) = Reporter::start_logged(super::style(g), Some(log.clone()));
    let res = up::up(&opts, root.clone()).await;
    drop(root);
    reporter.finish().await;

    // Kept whatever the outcome: a failed run is the one worth reproducing.
    // A local file that cannot be written is said and fails an otherwise good run, but never
    // hides the run's own result or exit code.
    let mut outputs_ok = true;
    if let Err(e) = save_facts_and_plan(&state, &res) {
        eprintln!("harness: writing the run's facts under {}: {e:#}", state.display());
        outputs_ok = false;
    }
    if res.ok {
        rec.state = "ready".into();
        outputs_ok &= save_record(&state, &rec);
    } else if res.cleanup.as_ref().is_none_or(|c| c.complete) {
        // Everything was stopped again: `down` and `status` have nothing to find. The
        // reproduction record stays for `harness bundle`.
        record::forget(&state, &run_id);
    } else {
        // Something may remain: keep the record so `harness down --run ID` finds the topology.
        rec.state = if res.interrupted { "interrupted" } else { "failed" }.into();
        outputs_ok &= save_record(&state, &rec);
    }
    let capture = std::mem::take(&mut *capture.lock().expect("capture lock"));
    let result = prun::result_json(&res, &capture.counters);
    let suite = format!("harness up {}", input.topology_path.file_name().unwrap_or_default().to_string_lossy());
    let junit = crate::report::junit::to_xml(&crate::pipeline::junit::for_up(&suite, &res, &log.events()));
    if let Some(f) = &input.pipeline.junit
        && let Err(e) = super::write_report(f, junit.as_bytes())
    {
        eprintln!("harness: {e:#}");
        outputs_ok = false;
    }
    if let Some(dir) = &input.pipeline.artifacts
        && (capture.artifacts_written || !res.ok || input.pipeline.artifacts_on == ArtifactsOn::Always)
    {
        let junit = input.pipeline.junit.is_some().then_some(junit.as_str());
        write_artifacts(dir, &res, &result, &log, junit, &rdir, capture.missing);
    }
    match input.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Format::Text => print_text(&res, &capture.counters),
    }
    Ok(match exit_code(&res) {
        exit::OK if !outputs_ok => exit::FAILED,
        code => code,
    })
}

/// The run record brought up to date after the run. A failure is said and fails the command,
/// but the result, the JUnit report and the artifacts still follow: the VMs are running (or
/// stopped) whatever the local disk says. The record written before the run stays, so
/// `down --run ID` still finds the topology.
fn save_record(state: &Path, rec: &RunRecord) -> bool {
    match record::save(state, rec) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "harness: updating the run record under {} failed ({e}); `harness down --run {}` still works from the record written at the start",
                state.display(),
                rec.run_id
            );
            false
        }
    }
}

/// The run-level artifacts; a failure to write them is a warning, not the run's outcome.
fn write_artifacts(
    dir: &Path,
    res: &RunResult,
    result: &serde_json::Value,
    log: &EventLog,
    junit: Option<&str>,
    record_dir: &Path,
    mut missing: Vec<String>,
) {
    for n in res.nodes.iter().filter(|n| n.unreachable) {
        missing.push(format!("{}/: node not reached: {}", n.name, n.error.clone().unwrap_or_default()));
    }
    if res.interrupted {
        missing.push("*: remote artifacts not collected: the run was interrupted".into());
    }
    let files = RunFiles { result, events: log, junit, record_dir: Some(record_dir), missing };
    if let Err(e) = prun::write_run_files(dir, files) {
        eprintln!("warning: artifacts in {}: {e}", dir.display());
    }
}

fn exit_code(res: &RunResult) -> u8 {
    let unreachable = res.nodes.iter().any(|n| n.unreachable);
    if res.ok {
        exit::OK
    } else if res.run_id_in_use {
        exit::INVALID_INPUT
    } else if res.cleanup.as_ref().is_some_and(|c| !c.complete) {
        // 4 and 130 say everything was stopped again: a pipeline acting on the code alone must
        // not take a run that left VMs behind for one that did not.
        if unreachable || res.cleanup.as_ref().is_some_and(|c| c.unreachable) {
            exit::UNREACHABLE
        } else {
            exit::FAILED
        }
    } else if res.interrupted {
        exit::INTERRUPTED
    } else if unreachable {
        exit::UNREACHABLE
    } else {
        exit::UP_FAILED
    }
}

/// The facts each node was planned with (in `check --save-facts` form, so `render --facts`
/// reads them) and the plan that ran.
fn save_facts_and_plan(state: &Path, res: &RunResult) -> anyhow::Result<()> {
    let dir = record::run_dir(state, &res.run_id);
    for n in &res.nodes {
        if let Some(f) = &n.facts {
            crate::facts::store::save(&dir.join("facts"), &n.name, f)?;
        }
    }
    let plan = Plan { run_id: res.run_id.clone(), nodes: res.nodes.iter().filter_map(|n| n.plan.clone()).collect() };
    record::write_atomically(&dir.join("plan.json"), plan::render::json(&plan)?.as_bytes())?;
    Ok(())
}

/// One VM's lines of `up`'s text output. Errors, serial lines, guest interface names and
/// counter output come from hosts and guests: escaped, so a hostile guest cannot rewrite the
/// terminal.
fn vm_lines(v: &VmResult, counters: &Counters) -> Vec<String> {
    use crate::report::sanitize::{escape_control as esc, escape_control_lines as esc_lines};
    let t = |k: &str| v.timings.get(k).map(|s| format!("{k} {s:.1}s")).unwrap_or_default();
    let pins: Vec<String> = v.pinned.iter().map(|p| format!("vcpu{}→cpu{} {}", p.vcpu, p.affinity, p.policy)).collect();
    let ifs: Vec<String> = v
        .guest_interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .map(|i| esc(&format!("{} {}", i.name, i.mac.clone().unwrap_or_default())).into_owned())
        .collect();
    let mut out = vec![format!(
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
    )];
    if let Some(e) = &v.error {
        out.push(format!("         error: {}", esc_lines(e)));
        out.extend(v.serial_tail.iter().map(|l| format!("         | {}", esc(l))));
    }
    for c in counters.get(&v.node).and_then(|m| m.get(&v.name)).into_iter().flatten() {
        let how = match (&c.error, c.exit_code) {
            (Some(e), _) => esc(e).into_owned(),
            (None, Some(code)) => format!("exit {code}, {} lines", c.stdout.lines().count()),
            (None, None) => "no exit code".into(),
        };
        out.push(format!("         collect `{}`: {how}", esc(&c.argv.join(" "))));
    }
    out
}

/// The run in text.
fn print_text(res: &RunResult, counters: &Counters) {
    use crate::report::sanitize::escape_control_lines as esc_lines;
    for v in &res.vms {
        for line in vm_lines(v, counters) {
            println!("{line}");
        }
    }
    for n in &res.nodes {
        if let Some(e) = &n.error {
            eprintln!("{}: {}", n.name, esc_lines(e));
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
                println!("  {}", esc_lines(l));
            }
            println!("Finish with: harness down --run {}", res.run_id);
        }
        _ if res.run_id_in_use => {
            println!("run {} was refused: the run id is in use; nothing of that run was touched", res.run_id)
        }
        _ => println!("run {} {what}; everything it started was stopped", res.run_id),
    }
    // A node (or the jump host) whose sshd dropped handshakes (`MaxStartups`) is worth knowing
    // about even when every retry got through.
    if res.handshake_retries > 0 {
        eprintln!("{}", crate::ssh::retries_line(res.handshake_retries));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::manifest::GuestInterfaceRecord;
    use crate::run::up::VmState;

    /// `up` exited 4 or 130 ("everything it had started was stopped again") after a cleanup
    /// that could not stop everything, e.g. Ctrl-C with a node that stayed unreachable, or a
    /// QEMU that would not die: a pipeline acting on the code took VMs left running for none.
    /// Now 3 when a node was unreachable, else 1.
    #[test]
    fn regression_an_incomplete_cleanup_is_not_reported_as_everything_stopped() {
        use crate::run::up::{CleanupReport, NodeResult};
        let node = |unreachable| NodeResult {
            name: "DUT1".into(),
            host: "h".into(),
            accel: None,
            hugepages: vec![],
            error: Some("x".into()),
            unreachable,
            failure: None,
            run_id_in_use: false,
            facts: None,
            plan: None,
        };
        let res = |interrupted, unreachable, complete| RunResult {
            cleanup: Some(CleanupReport { complete, left: vec![], unreachable: false }),
            run_id: "r".into(),
            ok: false,
            interrupted,
            duration_s: 0.0,
            nodes: vec![node(unreachable)],
            vms: vec![],
            run_id_in_use: false,
            handshake_retries: 0,
        };
        assert_eq!(exit_code(&res(true, false, true)), exit::INTERRUPTED);
        assert_eq!(exit_code(&res(false, false, true)), exit::UP_FAILED);
        assert_eq!(exit_code(&res(true, true, false)), exit::UNREACHABLE);
        assert_eq!(exit_code(&res(false, false, false)), exit::FAILED);
        assert_eq!(exit_code(&res(true, false, false)), exit::FAILED);
        // A node lost during cleanup itself (after Ctrl-C no node has an error of its own).
        let mut lost = res(true, false, false);
        lost.cleanup = Some(CleanupReport { complete: false, left: vec![], unreachable: true });
        assert_eq!(exit_code(&lost), exit::UNREACHABLE);
    }

    /// `up` printed the serial tail, the error and the guest's interface names as they came:
    /// a guest whose console wrote `ESC]0;…BEL` or `ESC[2J` set the title or cleared the
    /// jumpbox's terminal, and a `\r` forged a line of harness's own output.
    #[test]
    fn regression_up_output_escapes_what_guests_and_hosts_said() {
        let v = VmResult {
            node: "DUT1".into(),
            name: "DUT1_1".into(),
            state: VmState::Failed,
            pid: Some(7),
            guest_interfaces: vec![GuestInterfaceRecord {
                name: "eth0\u{1b}[2J".into(),
                mac: Some("02:00:00:00:00:01".into()),
                ips: vec![],
                nic: None,
            }],
            pinned: vec![],
            timings: Default::default(),
            error: Some("boot timeout\n\u{1b}]0;OWNED\u{7}".into()),
            failure: None,
            serial_tail: vec!["login: \rrun tiny is up".into(), "\u{1b}[31mred".into()],
        };
        let lines = vm_lines(&v, &Counters::default());
        let text = lines.join("\n");
        assert!(!text.contains(['\u{1b}', '\u{7}', '\r']), "{text:?}");
        assert!(text.contains("eth0\\u{1b}[2J") && text.contains("login: \\rrun tiny is up"), "{text}");
        assert!(text.contains("\\u{1b}]0;OWNED\\u{7}") && text.contains("| \\u{1b}[31mred"), "{text}");
    }
}
