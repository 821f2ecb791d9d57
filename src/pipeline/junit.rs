//! From a command's result to [`crate::report::junit::JunitRun`]: which testcase passed,
//! failed (the guest's fault), errored (the lab's) or was skipped.
//!
//! Node setup phases exist only as progress events, so they are measured from the event log:
//! `connect` (connecting→preparing), `facts` (→uploading), `upload` (→hugepages), `hugepages`
//! (→booting: the hugepage check under the host lock, then the node's QEMU starts outside it).

use std::time::Duration;

use crate::report::LoggedEvent;
use crate::report::junit::{JunitNode, JunitRun, JunitVm, Outcome};
use crate::run::up::{FailureKind, NodeResult, RunResult, VmResult, VmState};

/// Node setup phases: the phase that starts one, and its name.
const SETUP_PHASES: [(&str, &str); 4] =
    [("connecting", "connect"), ("preparing", "facts"), ("uploading", "upload"), ("hugepages", "hugepages")];
/// VM timings in the order they happen.
const VM_PHASES: [&str; 5] = ["upload", "start", "boot", "agent", "pin"];

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default()
}

/// `harness up`'s result as one test suite.
pub fn for_up(suite_name: &str, res: &RunResult, events: &[LoggedEvent]) -> JunitRun {
    JunitRun {
        suite_name: suite_name.into(),
        run_id: res.run_id.clone(),
        duration: secs(res.duration_s),
        nodes: res.nodes.iter().map(|n| node_case(n, res, events)).collect(),
        vms: res.vms.iter().map(|v| vm_case(v, res, events)).collect(),
    }
}

/// Node-level phase events of `node`, `(phase, elapsed)`.
fn node_phases<'a>(node: &'a str, events: &'a [LoggedEvent]) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    events.iter().filter(move |e| e.node == node && e.vm.is_none()).filter_map(|e| Some((e.phase?, e.elapsed_s)))
}

fn node_case(n: &NodeResult, res: &RunResult, events: &[LoggedEvent]) -> JunitNode {
    let seen: Vec<(&str, f64)> = node_phases(&n.name, events).collect();
    let mut phases = Vec::new();
    for (i, (p, t)) in seen.iter().enumerate() {
        if let Some((_, name)) = SETUP_PHASES.iter().find(|(sp, _)| sp == p) {
            let end = seen.get(i + 1).map(|(_, t)| *t).unwrap_or(*t);
            phases.push((name.to_string(), secs(end - t)));
        }
    }
    let setup_done = seen.iter().any(|(p, _)| *p == "booting" || *p == "ready");
    let start = seen.first().map(|(_, t)| *t).unwrap_or(0.0);
    let end = seen.iter().find(|(p, _)| *p == "booting").or(seen.last()).map(|(_, t)| *t).unwrap_or(start);
    let own_vm_error = res.vms.iter().any(|v| v.node == n.name && v.error.is_some());
    let setup = match &n.error {
        Some(e) if !own_vm_error => Outcome::Error { message: first_line(e), detail: e.clone() },
        _ if setup_done || own_vm_error => Outcome::Passed,
        _ if res.ok => Outcome::Passed,
        _ => Outcome::Skipped { message: "not finished: the run failed or was interrupted elsewhere".into() },
    };
    JunitNode { name: n.name.clone(), setup, setup_duration: secs(end - start), phases }
}

fn vm_case(v: &VmResult, res: &RunResult, events: &[LoggedEvent]) -> JunitVm {
    // The VM's own node's failure explains it best; else the first node that failed.
    let failed = |n: &&NodeResult| n.error.is_some();
    let run_failure = res.nodes.iter().filter(failed).find(|n| n.name == v.node).or(res.nodes.iter().find(failed));
    let run_failure = run_failure.map(|n| (n.name.clone(), n.error.clone().unwrap_or_default()));
    let why_not = || match (&run_failure, res.interrupted) {
        (_, true) => "the run was interrupted".to_string(),
        (Some((node, e)), _) if node == &v.node => format!("node {node} failed: {}", first_line(e)),
        (Some((node, _)), _) => format!("node {node} failed"),
        (None, _) => "the run failed".to_string(),
    };
    // Cleanup turns whatever ran into `Stopped`: what the VM had reached is in its events.
    let reached: Option<&str> = events
        .iter()
        .filter(|e| e.node == v.node && e.vm.as_deref() == Some(v.name.as_str()))
        .filter_map(|e| e.phase)
        .rfind(|p| !matches!(*p, "stopping" | "stopped"));
    let outcome = match (v.state, v.failure) {
        (VmState::Ready, _) => Outcome::Passed,
        // Ready before another node's failure stopped the run: its own test passed.
        (VmState::Stopped, _) if reached == Some("ready") => Outcome::Passed,
        (VmState::Stopped, _) => {
            let was = reached.unwrap_or("starting");
            Outcome::Skipped { message: format!("stopped while {was}: {}", why_not()) }
        }
        (VmState::Failed, Some(FailureKind::NotReady)) => {
            Outcome::Failure { message: v.error.clone().unwrap_or_default(), detail: String::new() }
        }
        (VmState::Failed, _) => {
            let e = v.error.clone().unwrap_or_default();
            Outcome::Error { message: first_line(&e), detail: e }
        }
        (VmState::Pending, _) => Outcome::Skipped { message: format!("not started: {}", why_not()) },
        (s, _) => Outcome::Skipped { message: format!("stopped while {}: {}", s.as_str(), why_not()) },
    };
    let times: Vec<f64> = events
        .iter()
        .filter(|e| e.node == v.node && e.vm.as_deref() == Some(v.name.as_str()) && e.phase.is_some())
        .map(|e| e.elapsed_s)
        .collect();
    let duration = match (times.first(), times.last()) {
        (Some(a), Some(b)) => secs(b - a),
        _ => secs(v.timings.values().sum()),
    };
    let phases = VM_PHASES.iter().filter_map(|p| v.timings.get(*p).map(|s| (p.to_string(), secs(*s)))).collect();
    JunitVm {
        node: v.node.clone(),
        name: v.name.clone(),
        outcome,
        duration,
        serial_tail: v.serial_tail.clone(),
        phases,
    }
}

/// A node's connection as its setup testcase: passed, or the error that kept us out.
fn reach_case(name: &str, error: Option<&str>, duration: Duration) -> JunitNode {
    let setup = match error {
        Some(e) => Outcome::Error { message: first_line(e), detail: e.to_string() },
        None => Outcome::Passed,
    };
    JunitNode { name: name.into(), setup, setup_duration: duration, phases: vec![] }
}

/// A plain testcase (`classname` = node).
fn case(node: &str, name: &str, outcome: Outcome) -> JunitVm {
    JunitVm {
        node: node.into(),
        name: name.into(),
        outcome,
        duration: Duration::ZERO,
        serial_tail: vec![],
        phases: vec![],
    }
}

/// `harness check`: per node a setup testcase (reached or not) and a testcase per check item;
/// a failed requirement is a `<failure>`. A node not reached is one `<error>` (its setup case,
/// not again as a failed `ssh` item), and a probe that could not run is an `<error>` too: both
/// are lab faults, not requirements the host failed.
pub fn for_check(suite_name: &str, reports: &[crate::remote::check::NodeReport], duration: Duration) -> JunitRun {
    use crate::remote::check::Status;
    let mut run =
        JunitRun { suite_name: suite_name.into(), run_id: String::new(), duration, nodes: vec![], vms: vec![] };
    for r in reports {
        let err = if r.reachable { None } else { Some(r.error.clone().unwrap_or_else(|| "unreachable".into())) };
        run.nodes.push(reach_case(&r.node, err.as_deref(), Duration::from_millis(r.connect_ms + r.probe_ms)));
        for it in r.items.iter().filter(|it| r.reachable || it.name != "ssh") {
            let outcome = match it.status {
                Status::Fail if it.name == "probe" => {
                    Outcome::Error { message: first_line(&it.detail), detail: it.detail.clone() }
                }
                Status::Fail => Outcome::Failure { message: it.detail.clone(), detail: String::new() },
                _ => Outcome::Passed,
            };
            run.vms.push(case(&r.node, &it.name, outcome));
        }
    }
    run
}

/// `harness down`: per node a setup testcase (reached or not), a testcase per VM stopped.
pub fn for_down(
    suite_name: &str,
    nodes: &[(String, Option<String>)],
    stopped: &[crate::run::down::StoppedVm],
    duration: Duration,
) -> JunitRun {
    JunitRun {
        suite_name: suite_name.into(),
        run_id: String::new(),
        duration,
        nodes: nodes.iter().map(|(n, e)| reach_case(n, e.as_deref(), Duration::ZERO)).collect(),
        vms: stopped
            .iter()
            .map(|s| {
                let outcome = match &s.error {
                    Some(e) => Outcome::Error { message: first_line(e), detail: e.clone() },
                    None => Outcome::Passed,
                };
                case(&s.node, &format!("{}/{}", s.run_id, s.vm), outcome)
            })
            .collect(),
    }
}

/// Attribute-sized: the first line of a multi-line error.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vm(node: &str, name: &str, state: VmState, failure: Option<FailureKind>, error: Option<&str>) -> VmResult {
        VmResult {
            node: node.into(),
            name: name.into(),
            state,
            pid: None,
            guest_interfaces: vec![],
            pinned: vec![],
            timings: BTreeMap::from([("boot".to_string(), 6.0), ("start".to_string(), 0.5)]),
            error: error.map(String::from),
            failure,
            serial_tail: vec!["last line".into()],
        }
    }

    fn node(name: &str, error: Option<&str>, failure: Option<FailureKind>) -> NodeResult {
        NodeResult {
            name: name.into(),
            host: "h".into(),
            accel: None,
            hugepages: vec![],
            error: error.map(String::from),
            unreachable: failure == Some(FailureKind::Unreachable),
            failure,
            run_id_in_use: false,
            facts: None,
            plan: None,
        }
    }

    fn ev(node: &str, vm: Option<&str>, phase: &'static str, t: f64) -> LoggedEvent {
        LoggedEvent {
            unix: t,
            elapsed_s: t,
            node: node.into(),
            vm: vm.map(String::from),
            kind: "phase",
            phase: Some(phase),
            message: None,
        }
    }

    /// `check --junit` counted an unreachable node twice (`errors="1" failures="1"`: its setup
    /// case and its failed `ssh` item) and called a probe that could not run (a lost
    /// connection, sudo) a failed requirement. Both are one `<error>` now.
    #[test]
    fn regression_check_counts_an_unreachable_node_once_as_an_error() {
        use crate::remote::check::{Item, NodeReport, Status};
        let report = |reachable: bool, items: Vec<Item>| NodeReport {
            node: "DUT1".into(),
            addr: String::new(),
            reachable,
            error: (!reachable).then(|| "DUT1 (10.0.0.2:22): connect failed: refused".into()),
            connect_ms: 1,
            probe_ms: 0,
            accel: None,
            items,
            facts: None,
        };
        let item = |name: &str, status| Item { name: name.into(), status, detail: format!("{name} said no") };
        let xml = crate::report::junit::to_xml(&for_check(
            "c",
            &[report(false, vec![item("ssh", Status::Fail)])],
            Duration::ZERO,
        ));
        assert!(xml.contains("failures=\"0\"") && xml.contains("errors=\"1\""), "{xml}");
        let reports = [report(true, vec![item("ssh", Status::Ok), item("probe", Status::Fail)])];
        let xml = crate::report::junit::to_xml(&for_check("c", &reports, Duration::ZERO));
        assert!(xml.contains("failures=\"0\"") && xml.contains("errors=\"1\""), "{xml}");
        let xml = crate::report::junit::to_xml(&for_check(
            "c",
            &[report(true, vec![item("kvm", Status::Fail)])],
            Duration::ZERO,
        ));
        assert!(xml.contains("failures=\"1\""), "a failed requirement stays a failure: {xml}");
    }

    #[test]
    fn timeout_is_a_failure_unreachable_an_error_and_the_rest_skipped() {
        let res = RunResult {
            run_id: "r".into(),
            ok: false,
            interrupted: false,
            duration_s: 9.0,
            nodes: vec![
                node("DUT1", Some("DUT1_1: not ready"), Some(FailureKind::NotReady)),
                node("DUT2", Some("DUT2 (127.0.0.1:9): connect: refused"), Some(FailureKind::Unreachable)),
            ],
            cleanup: None,
            handshake_retries: 0,
            run_id_in_use: false,
            vms: vec![
                vm("DUT1", "DUT1_1", VmState::Failed, Some(FailureKind::NotReady), Some("not ready after 6s")),
                vm("DUT1", "DUT1_2", VmState::Booting, None, None),
                vm("DUT2", "DUT2_1", VmState::Pending, None, None),
            ],
        };
        let events = vec![
            ev("DUT1", None, "connecting", 0.0),
            ev("DUT1", None, "preparing", 0.5),
            ev("DUT1", None, "uploading", 1.0),
            ev("DUT1", None, "hugepages", 1.5),
            ev("DUT1", None, "booting", 2.5),
            ev("DUT1", Some("DUT1_1"), "starting", 1.6),
            ev("DUT1", Some("DUT1_1"), "FAILED", 8.6),
            ev("DUT2", None, "connecting", 0.0),
        ];
        let j = for_up("s", &res, &events);
        assert_eq!(j.nodes[0].setup, Outcome::Passed);
        assert_eq!(j.nodes[0].setup_duration, Duration::from_millis(2500));
        let names: Vec<&str> = j.nodes[0].phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["connect", "facts", "upload", "hugepages"]);
        assert!(matches!(&j.nodes[1].setup, Outcome::Error { message, .. } if message.contains("127.0.0.1:9")));
        assert!(matches!(&j.vms[0].outcome, Outcome::Failure { message, .. } if message == "not ready after 6s"));
        assert_eq!(j.vms[0].duration, Duration::from_secs(7));
        assert_eq!(j.vms[0].phases[0].0, "start");
        assert!(
            matches!(&j.vms[1].outcome, Outcome::Skipped { message } if message.starts_with("stopped while booting"))
        );
        assert!(
            matches!(&j.vms[2].outcome, Outcome::Skipped { message } if message.contains("node DUT2 failed: DUT2 (127.0.0.1:9)")),
            "{:?}",
            j.vms[2].outcome
        );
    }

    /// After cleanup every VM that ran is `Stopped`, and a VM that had become ready before
    /// another node failed was reported `<skipped message="stopped while stopped: …">`.
    #[test]
    fn regression_a_vm_ready_before_another_node_failed_passes() {
        let res = RunResult {
            run_id: "r".into(),
            ok: false,
            interrupted: false,
            duration_s: 9.0,
            nodes: vec![node("DUT1", None, None), node("DUT2", Some("DUT2_1: not ready"), Some(FailureKind::NotReady))],
            cleanup: None,
            handshake_retries: 0,
            run_id_in_use: false,
            vms: vec![
                vm("DUT1", "DUT1_1", VmState::Stopped, None, None),
                vm("DUT1", "DUT1_2", VmState::Stopped, None, None),
                vm("DUT2", "DUT2_1", VmState::Failed, Some(FailureKind::NotReady), Some("not ready after 6s")),
            ],
        };
        let events = vec![
            ev("DUT1", Some("DUT1_1"), "starting", 1.0),
            ev("DUT1", Some("DUT1_1"), "booting", 1.5),
            ev("DUT1", Some("DUT1_1"), "ready", 3.0),
            ev("DUT1", Some("DUT1_1"), "stopping", 8.0),
            ev("DUT1", Some("DUT1_1"), "stopped", 8.5),
            ev("DUT1", Some("DUT1_2"), "booting", 1.5),
            ev("DUT1", Some("DUT1_2"), "stopping", 8.0),
        ];
        let j = for_up("s", &res, &events);
        assert_eq!(j.vms[0].outcome, Outcome::Passed);
        assert!(
            matches!(&j.vms[1].outcome, Outcome::Skipped { message } if message == "stopped while booting: node DUT2 failed"),
            "{:?}",
            j.vms[1].outcome
        );
    }

    #[test]
    fn qemu_start_failure_is_an_error() {
        let v = vm("DUT1", "DUT1_1", VmState::Failed, Some(FailureKind::Infrastructure), Some("qemu failed\nstderr"));
        let res = RunResult {
            run_id: "r".into(),
            ok: false,
            interrupted: false,
            duration_s: 1.0,
            nodes: vec![node("DUT1", Some("DUT1_1: qemu failed"), Some(FailureKind::Infrastructure))],
            vms: vec![v],
            cleanup: None,
            handshake_retries: 0,
            run_id_in_use: false,
        };
        let j = for_up("s", &res, &[]);
        assert!(
            matches!(&j.vms[0].outcome, Outcome::Error { message, detail } if message == "qemu failed" && detail.contains("stderr"))
        );
        assert_eq!(j.nodes[0].setup, Outcome::Passed);
    }
}
