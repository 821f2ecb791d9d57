//! The orchestration against in-process fake hosts ([`crate::ssh::fake`]): which commands run,
//! in which order, when a start fails, a node is lost, the run is interrupted, or hugepages had
//! to be allocated. The e2e tests run the same paths against sshd and QEMU; these pin down the
//! order and the bookkeeping exactly, in milliseconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use super::*;
use crate::plan::fixture::{dut, topology, vm};
use crate::report::{Reporter, Style};
use crate::ssh::fake::{Call, FakeHost, Reply};
use crate::ssh::{Session, SshError};
use crate::templates::Templates;
use crate::topology::{Node, Topology};

/// What a fake lab host does beyond answering every stage as a healthy host would.
#[derive(Clone, Default)]
struct Behaviour {
    /// VM names whose QEMU fails to start.
    failing_start: Vec<String>,
    /// Free 2M pages (default: plenty).
    free_pages: Option<u64>,
    /// Pages the allocation reports it added.
    added: u64,
    /// Lose the connection at the first upload.
    lost_at_upload: bool,
    /// Lose the connection while the QEMUs start, after the first one's line.
    lost_mid_start: bool,
    /// The serial log never shows the ready marker.
    never_ready: bool,
    /// `sudo -n` wants a password.
    no_sudo: bool,
    /// VM names whose QEMU is still exiting when their stop gives up.
    still_exiting: Vec<String>,
    /// VM names whose first stop loses the connection.
    lost_at_first_stop: Vec<String>,
    /// The guest agent's socket refuses (socat ends at once); QEMU alive or not.
    qga_refused: Option<bool>,
    /// The serial follower's first output arrives after this long (a slow channel).
    serial_latency: Option<Duration>,
    /// Stops seen so far (shared by the clones of one host's behaviour).
    stops: Arc<Mutex<Vec<String>>>,
    /// `lscpu -p` printed nothing (no CPU layout in the facts).
    no_lscpu: bool,
    /// The final manifest write never ends (a wedged node).
    wedged_final_manifest: bool,
}

/// The answers of a healthy host to each stage's command, with `b`'s faults.
fn lab_host(call: &Call, b: &Behaviour) -> Reply {
    let t = &call.text;
    if t.contains("sudo_rc=") {
        let sudo =
            if b.no_sudo { "sudo_rc=1\nsudo_err=sudo: a password is required\n" } else { "sudo_rc=0\nsudo_err=\n" };
        // With `lscpu -p` missing, the probe's markers still come, with nothing between them.
        let lscpu = if b.no_lscpu { "" } else { "# CPU,Core,Socket,Node\n0,0,0,0\n1,1,0,0\n2,2,0,0\n3,3,0,0\n" };
        return Reply::ok(
            sudo.to_string()
                + "arch=x86_64\nqemu_path=/usr/bin/qemu-system-x86_64\nqemu_version=QEMU 7.2\n\
             kvm_dev=0\ncpus_online=0-3\ncpus_isolated=\ntool_socat=/usr/bin/socat\ntool_taskset=/usr/bin/taskset\n\
             tool_chrt=/usr/bin/chrt\nnumanode=0\npool 2048 0 0 0 0 0\nmount /dev/hugepages hugetlbfs\n==lscpu\n"
                + lscpu
                + "==lscpu-end\n==lookups\nfound /opt/boot/initrd.img-1\nfound /opt/boot/vmlinuz-1\n",
        );
    }
    if b.wedged_final_manifest && t.contains("cat > \"$1\"") {
        return Reply::Hang;
    }
    if call.argv.first().is_some_and(|a| a == "sh") && (t.contains("cat > \"$1\"") || t.contains("base64 -d")) {
        if b.lost_at_upload {
            return Reply::Fail(SshError::Disconnected { node: "x".into(), message: "connection reset".into() });
        }
        return Reply::ok("");
    }
    if t.contains("echo reserved") {
        // The hugepage step (one script): short of pages only when the behaviour says so.
        return Reply::ok(match b.free_pages {
            Some(0) if t.contains("added=$added") => {
                format!("need 0 0 0 hugetlbfs\nalloc 0 ok added={} mounted=0 map_was=-\nreserved\n", b.added)
            }
            Some(0) => "need 0 0 0 hugetlbfs\n".to_string(),
            free => format!("need 0 {} 0 hugetlbfs\nreserved\n", free.unwrap_or(100_000)),
        });
    }
    if t.contains("printf 'pool") {
        let free = b.free_pages.unwrap_or(100_000);
        return Reply::ok(format!("pool 2048 {free} {free} 0 0 0\nmount /dev/hugepages hugetlbfs\n"));
    }
    if t.contains("added=$added") {
        return Reply::ok(format!("added={} mounted=0 map_was=-\n", b.added));
    }
    if is_qemu_start(call) {
        // The node's batch: per VM its argv length, pidfile and argv; one result line per VM.
        use base64::Engine as _;
        let (mut args, mut out, mut i) = (&call.argv[6..], String::new(), 0);
        while let [n, _pidfile, rest @ ..] = args {
            let n: usize = n.parse().expect("argv length");
            let name = rest[..n].iter().find(|a| a.ends_with(",debug-threads=on")).cloned().unwrap_or_default();
            if b.failing_start.iter().any(|v| name == format!("{v},debug-threads=on")) {
                let err = base64::engine::general_purpose::STANDARD.encode("qemu-system-x86_64: boom");
                out.push_str(&format!("fail {i} 1 {err}\n"));
            } else {
                out.push_str(&format!("ok {i} 1234\n"));
            }
            (args, i) = (&rest[n..], i + 1);
        }
        if b.lost_mid_start {
            return Reply::ok(out.lines().next().unwrap_or_default().to_string() + "\n");
        }
        return Reply::ok(out);
    }
    if b.lost_mid_start && call.argv == ["true"] {
        return Reply::Fail(SshError::Disconnected { node: "x".into(), message: "connection reset".into() });
    }
    if call.argv.first().is_some_and(|a| a == "cat") {
        return Reply::ok("1234\n");
    }
    if let Some(alive) = b.qga_refused {
        if call.argv.iter().any(|a| a == "socat") {
            return Reply::Done {
                stdout: String::new(),
                stderr: "socat: connect: Connection refused\n".into(),
                status: 1,
            };
        }
        if t.contains("echo \"alive $p\"") {
            return Reply::ok(if alive { "alive 1234\n" } else { "dead 1234\n" });
        }
    }
    if is_follower(call)
        && let Some(after) = b.serial_latency
    {
        return Reply::HoldAfter { after, stdout: "vpp v24 built by ci\n".into() };
    }
    if is_follower(call) {
        return if b.never_ready { Reply::Hang } else { Reply::Hold { stdout: "vpp v24 built by ci\n".into() } };
    }
    if t.contains("outcome=") {
        let vm = t.split("dir=/run/harness/t1/").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default();
        let first = {
            let mut stops = b.stops.lock().unwrap();
            stops.push(vm.to_string());
            stops.iter().filter(|s| *s == vm).count() == 1
        };
        if first && b.lost_at_first_stop.iter().any(|v| v == vm) {
            return Reply::Fail(SshError::Disconnected { node: "x".into(), message: "connection reset".into() });
        }
        if b.still_exiting.iter().any(|v| v == vm) {
            return Reply::ok("outcome=still_exiting pid=1234\n");
        }
        return Reply::ok("outcome=stopped pid=1234 how=quit\n");
    }
    Reply::ok("")
}

/// A VM's serial follower (`tail -F` of its serial log).
fn is_follower(c: &Call) -> bool {
    c.argv.iter().take(3).any(|a| a == "tail")
}

/// A QEMU start: the planned argv behind the one-round-trip wrapper that prints the pid.
fn is_qemu_start(c: &Call) -> bool {
    c.argv.iter().any(|a| a.contains("qemu-system")) && c.argv.iter().any(|a| a == "-daemonize")
}

/// One fake host per node name.
struct FakeLab {
    hosts: BTreeMap<String, Arc<FakeHost>>,
}

impl Connector for FakeLab {
    fn connect(&self, node: &Node) -> BoxFuture<'static, Result<Session, SshError>> {
        let host = self.hosts.get(&node.name).cloned();
        let name = node.name.clone();
        Box::pin(async move {
            let h = host.expect("a fake host per node");
            Ok(Session::with_transport(name, h as Arc<dyn crate::ssh::Transport>))
        })
    }
}

fn options(topo: Topology, lab: Arc<FakeLab>, interrupt: Option<Arc<tokio::sync::Notify>>) -> UpOptions {
    UpOptions {
        run_id: "t1".into(),
        topology_path: PathBuf::from("/t/lab.yaml"),
        topology: Arc::new(topo),
        templates: Arc::new(Templates::embedded()),
        only_vms: vec![],
        connect: crate::ssh::ConnectOptions::default(),
        stop_grace: Duration::from_secs(1),
        connector: Some(lab),
        interrupt,
        before_cleanup: None,
    }
}

fn lab(nodes: &[(&str, Behaviour)]) -> Arc<FakeLab> {
    let hosts = nodes
        .iter()
        .map(|(n, b)| {
            let b = b.clone();
            (n.to_string(), FakeHost::new(n, move |c| lab_host(c, &b)))
        })
        .collect();
    Arc::new(FakeLab { hosts })
}

fn run(opts: &UpOptions) -> RunResult {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (reporter, root) = Reporter::start(Style::Never);
        let res = up(opts, root.clone()).await;
        drop(root);
        reporter.finish().await;
        res
    })
}

/// Positions in `calls` of the commands whose text contains `needle`.
fn positions(calls: &[Call], needle: &str) -> Vec<usize> {
    calls.iter().enumerate().filter(|(_, c)| c.text.contains(needle)).map(|(i, _)| i).collect()
}

fn two_vm_topology() -> Topology {
    topology(vec![dut("DUT1")], vec![vm("DUT1", 1), vm("DUT1", 2)])
}

#[test]
fn a_healthy_fake_host_comes_up_with_the_plan_it_was_given() {
    let lab = lab(&[("DUT1", Behaviour::default())]);
    let res = run(&options(two_vm_topology(), lab.clone(), None));
    assert!(res.ok, "{res:?}");
    assert!(res.vms.iter().all(|v| v.state == VmState::Ready));
    let calls = lab.hosts["DUT1"].calls();
    // The planned argv ran unchanged, with the kernel the facts resolved.
    let qemu: Vec<&Call> = calls.iter().filter(|c| is_qemu_start(c)).collect();
    assert_eq!(qemu.len(), 1, "one start (one sudo) for all the node's QEMUs");
    let plan = res.vms.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    assert_eq!(qemu[0].argv.iter().filter(|a| a.as_str() == "-daemonize").count(), plan.len());
    assert!(qemu[0].argv.windows(2).any(|w| w[0] == "-kernel" && w[1] == "/opt/boot/vmlinuz-1"));
    assert!(positions(&calls, "outcome=").is_empty(), "nothing stopped on success");
    // Round trips are what scale costs (each is an sshd channel and a sudo on the host): all the
    // node's files go in one, all its QEMUs start in one, each reading its pid in that one.
    assert_eq!(positions(&calls, "base64 -d").len(), 1, "one upload for all files");
    assert!(positions(&calls, "cat > \"$1\"").iter().all(|&i| calls[i].text.contains("manifest-")));
    assert!(calls.iter().all(|c| c.argv[0] != "cat"), "no separate pidfile reads");
    // Each VM's serial log is created for the login user with its directory, so its follower
    // needs no sudo (one less sudo per VM on the host while its QEMUs start).
    let followers: Vec<&Call> = calls.iter().filter(|c| is_follower(c)).collect();
    assert_eq!(followers.len(), 2);
    assert!(followers.iter().all(|c| !c.sudo), "serial followers run without sudo");
    // The fallback to sudo reads tail's "Permission denied": never a translation of it.
    assert!(followers.iter().all(|c| c.argv[..3] == ["env", "LC_ALL=C", "tail"]), "{:?}", followers[0].argv);
    let put = &calls[positions(&calls, "base64 -d")[0]];
    assert!(put.sudo && put.text.contains("chown -- \"$SUDO_UID\""), "{}", put.text);
    assert!(plan.iter().all(|vm| put.text.contains(&format!("{vm}/serial.log"))));
    assert!(calls.len() <= 16, "{} commands for one node with 2 VMs", calls.len());
}

#[test]
fn cleanup_order_after_a_failed_start_stops_every_qemu_before_removing_the_run() {
    let b = Behaviour { failing_start: vec!["DUT1_2".into()], ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    let res = run(&options(two_vm_topology(), lab.clone(), None));
    assert!(!res.ok && !res.interrupted);
    assert!(res.nodes[0].error.as_deref().unwrap_or("").contains("boom"), "{:?}", res.nodes[0].error);
    let calls = lab.hosts["DUT1"].calls();
    let stops = positions(&calls, "outcome=");
    let release = positions(&calls, "manifest-DUT1.json");
    assert_eq!(stops.len(), 2, "both launched QEMUs are stopped (the failed one may be half-started)");
    let last_release = *release.last().expect("the run is released");
    assert!(stops.iter().all(|s| *s < last_release), "stops {stops:?} must come before the release {last_release}");
    let failed_start = calls.iter().position(|c| c.text.contains("DUT1_2,debug-threads=on")).unwrap();
    assert!(stops.iter().all(|s| *s > failed_start));
}

#[test]
fn a_node_lost_mid_run_fails_the_run_and_the_other_nodes_vms_are_stopped() {
    let topo = topology(vec![dut("DUT1"), dut("DUT2")], vec![vm("DUT1", 1), vm("DUT2", 1)]);
    let lost = Behaviour { lost_at_upload: true, ..Behaviour::default() };
    let lab = lab(&[("DUT1", Behaviour::default()), ("DUT2", lost)]);
    let res = run(&options(topo, lab.clone(), None));
    assert!(!res.ok);
    let dut2 = res.nodes.iter().find(|n| n.name == "DUT2").unwrap();
    assert!(dut2.error.as_deref().unwrap_or("").contains("connection reset"), "{:?}", dut2.error);
    // Regression: a connection lost in the claim's upload round trip was wrapped as a failed
    // write (exit 4, JUnit "infrastructure"); a lost node is exit 3 (README).
    assert!(dut2.unreachable, "a lost connection is a lost node: {dut2:?}");
    let d1 = lab.hosts["DUT1"].calls();
    let starts = d1.iter().filter(|c| is_qemu_start(c)).count();
    // Cleanup stops every planned VM of a claimed node (the stop script only touches our pid).
    assert!(positions(&d1, "outcome=").len() >= starts, "every QEMU DUT1 started is stopped");
    assert!(res.vms.iter().all(|v| v.state != VmState::Ready));
}

/// The start script's channel can end before its connection does: a VM whose line never came
/// then failed the run as if its QEMU had (exit 4), not as a lost node (exit 3). CI caught it in
/// fault_sshd_session_killed_mid_boot.
#[test]
fn regression_a_connection_lost_mid_start_is_a_lost_node_not_a_failed_qemu() {
    let lost = Behaviour { lost_mid_start: true, ..Behaviour::default() };
    let lab = lab(&[("DUT1", lost)]);
    let res = run(&options(two_vm_topology(), lab.clone(), None));
    assert!(!res.ok);
    let dut1 = &res.nodes[0];
    let err = dut1.error.as_deref().unwrap_or("");
    assert!(dut1.unreachable, "a lost node: {err}");
    assert!(err.contains("its start was cut short") && err.contains("connection lost"), "{err}");
    assert!(!err.contains("ended without a result"), "{err}");
}

#[test]
fn an_interrupt_between_start_and_pin_stops_everything_and_pins_nothing() {
    let mut v = vm("DUT1", 1);
    v.cpus = Some(vec![2, 3]);
    let topo = topology(vec![dut("DUT1")], vec![v]);
    let b = Behaviour { never_ready: true, ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    let interrupt = Arc::new(tokio::sync::Notify::new());
    let opts = options(topo, lab.clone(), Some(interrupt.clone()));
    // Interrupt once the serial wait has begun: QEMU is running, pinning has not happened.
    let host = lab.hosts["DUT1"].clone();
    let fired = Arc::new(Mutex::new(false));
    let watcher = {
        let fired = fired.clone();
        std::thread::spawn(move || {
            for _ in 0..500 {
                if host.calls().iter().any(is_follower) {
                    interrupt.notify_one();
                    *fired.lock().unwrap() = true;
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let res = run(&opts);
    watcher.join().unwrap();
    assert!(*fired.lock().unwrap(), "the serial wait never started");
    assert!(res.interrupted && !res.ok);
    let calls = lab.hosts["DUT1"].calls();
    assert_eq!(positions(&calls, "outcome=").len(), 1, "the started QEMU is stopped");
    assert!(positions(&calls, "taskset -pc").is_empty(), "nothing is pinned after the interrupt");
}

#[test]
fn hugepages_added_by_the_run_are_given_back_exactly() {
    // Short of pages, allocation allowed: the run adds 4096 and a failed start gives them back.
    let mut node = dut("DUT1");
    node.hugepages.allocate = true;
    let topo = topology(vec![node.clone()], vec![vm("DUT1", 1), vm("DUT1", 2)]);
    let b =
        Behaviour { free_pages: Some(0), added: 4096, failing_start: vec!["DUT1_2".into()], ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    let res = run(&options(topo, lab.clone(), None));
    assert_eq!(res.nodes[0].hugepages.iter().map(|h| h.added).sum::<u64>(), 4096);
    let calls = lab.hosts["DUT1"].calls();
    // The allocation journals on the host what it adds; the release restores from that journal.
    let alloc = calls.iter().find(|c| c.text.contains("added=$added")).expect("allocated");
    assert!(alloc.text.contains("hugepages-DUT1.journal"), "{}", alloc.text);
    let release =
        calls.iter().rev().find(|c| c.text.contains("hugepages-DUT1.journal") && !c.text.contains("added=$added"));
    assert!(release.is_some(), "the release gives back what the journal records");
    // Enough pages: nothing allocated, nothing to give back.
    let topo = topology(vec![node], vec![vm("DUT1", 1), vm("DUT1", 2)]);
    let b = Behaviour { failing_start: vec!["DUT1_2".into()], ..Behaviour::default() };
    let lab2 = self::lab(&[("DUT1", b)]);
    let res = run(&options(topo, lab2.clone(), None));
    assert!(res.nodes[0].hugepages.is_empty());
}

#[test]
fn the_before_cleanup_hook_sees_the_failed_run_before_anything_is_stopped() {
    let b = Behaviour { failing_start: vec!["DUT1_2".into()], ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    // What the hook saw: ok, how many commands had run, each VM's failure kind.
    type Seen = (bool, usize, Vec<(String, Option<FailureKind>)>);
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let mut opts = options(two_vm_topology(), lab.clone(), None);
    let (seen2, lab2) = (seen.clone(), lab.clone());
    opts.before_cleanup = Some(Arc::new(move |view: RunView| {
        let calls = lab2.hosts["DUT1"].calls().len();
        let vms = view.vms.iter().map(|v| (v.name.clone(), v.failure)).collect();
        *seen2.lock().unwrap() = Some((view.ok, calls, vms));
        Box::pin(async {})
    }));
    let res = run(&opts);
    assert!(!res.ok);
    let (ok, calls_then, vms) = seen.lock().unwrap().take().expect("the hook ran");
    assert!(!ok);
    assert!(vms.contains(&("DUT1_2".to_string(), Some(FailureKind::Infrastructure))), "{vms:?}");
    let calls = lab.hosts["DUT1"].calls();
    let stops = positions(&calls, "outcome=");
    assert!(
        !stops.is_empty() && stops.iter().all(|s| *s >= calls_then),
        "stops {stops:?} before the hook ({calls_then})"
    );
    assert_eq!(res.vms.iter().find(|v| v.name == "DUT1_2").unwrap().failure, Some(FailureKind::Infrastructure));
}

/// A panic in the before-cleanup hook (artifact collection) unwound through `up` past its
/// cleanup: a failed run's other VMs were left running. The hook now runs in its own task.
#[test]
fn regression_a_panicking_collection_hook_does_not_skip_cleanup() {
    let b = Behaviour { failing_start: vec!["DUT1_2".into()], ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    let mut opts = options(two_vm_topology(), lab.clone(), None);
    opts.before_cleanup = Some(Arc::new(|_: RunView| Box::pin(async { panic!("a collector bug") })));
    let res = run(&opts);
    assert!(!res.ok);
    assert!(!positions(&lab.hosts["DUT1"].calls(), "outcome=").is_empty(), "nothing was stopped");
    let cleanup = res.cleanup.as_ref().expect("cleanup ran");
    assert!(cleanup.complete && cleanup.left.is_empty(), "{cleanup:?}");
}

/// The fallback to a sudo follower reads tail's "Permission denied": in a translated locale
/// the message was translated and the VM waited out its boot timeout instead.
#[test]
fn regression_the_serial_follower_runs_tail_in_the_c_locale() {
    let lab = lab(&[("DUT1", Behaviour::default())]);
    let res = run(&options(two_vm_topology(), lab.clone(), None));
    assert!(res.ok, "{res:?}");
    let calls = lab.hosts["DUT1"].calls();
    let followers: Vec<&Call> = calls.iter().filter(|c| is_follower(c)).collect();
    assert!(!followers.is_empty());
    for f in followers {
        assert_eq!(f.argv[..3], ["env", "LC_ALL=C", "tail"], "{:?}", f.argv);
    }
}

/// A node without passwordless sudo went on to claim its run directory; sudo refused the claim,
/// and cleanup, unable to run as root either, reported the VM as possibly still running (and
/// spent 15 s retrying) although nothing had been started or written.
#[test]
fn regression_a_node_without_passwordless_sudo_fails_before_anything_is_written() {
    let lab = lab(&[("DUT1", Behaviour { no_sudo: true, ..Behaviour::default() })]);
    let res = run(&options(two_vm_topology(), lab.clone(), None));
    assert!(!res.ok);
    let err = res.nodes[0].error.as_deref().unwrap_or("");
    assert!(err.contains("passwordless `sudo -n`") && err.contains("a password is required"), "{err}");
    let calls = lab.hosts["DUT1"].calls();
    assert!(
        calls.iter().all(|c| !c.sudo),
        "nothing ran as root: {:?}",
        calls.iter().map(|c| &c.text).collect::<Vec<_>>()
    );
    assert_eq!(calls.len(), 1, "the facts probe and nothing else");
    assert!(res.cleanup.as_ref().is_none_or(|c| c.complete && c.left.is_empty()), "{:?}", res.cleanup);
}

/// Cleanup skipped a VM whose paths it could not build (a default name over 64 characters
/// that validation let through), then released the node, removing the run directory and the
/// hugepages under a QEMU that still ran. It now says the VM may run and keeps the node.
#[test]
fn regression_cleanup_does_not_release_a_node_with_a_vm_it_cannot_name() {
    let long = format!("{}_2", "D".repeat(70));
    let mut second = vm("DUT1", 2);
    second.name = long.clone();
    let b = Behaviour { failing_start: vec!["DUT1_1".into()], ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    let res = run(&options(topology(vec![dut("DUT1")], vec![vm("DUT1", 1), second]), lab.clone(), None));
    assert!(!res.ok);
    let cleanup = res.cleanup.as_ref().expect("cleanup ran");
    assert!(!cleanup.complete, "{cleanup:?}");
    assert!(cleanup.left.iter().any(|l| l.contains(&long) && l.contains("may still run")), "{cleanup:?}");
    assert!(cleanup.left.iter().any(|l| l.contains("not released")), "{cleanup:?}");
    assert!(positions(&lab.hosts["DUT1"].calls(), "echo released").is_empty(), "the node was released");
}

/// A VM whose stop failed (its QEMU still exiting) in the same attempt as another VM's stop
/// lost the connection was forgotten: only the unreached VM was retried, the node was then
/// released (its directory removed, its hugepages handed back) and cleanup said "complete".
#[test]
fn regression_a_vm_whose_stop_failed_is_not_forgotten_when_another_lost_the_connection() {
    let b = Behaviour {
        failing_start: vec!["DUT1_1".into()],
        still_exiting: vec!["DUT1_2".into()],
        lost_at_first_stop: vec!["DUT1_3".into()],
        ..Behaviour::default()
    };
    let lab = lab(&[("DUT1", b)]);
    let topo = topology(vec![dut("DUT1")], vec![vm("DUT1", 1), vm("DUT1", 2), vm("DUT1", 3)]);
    let res = run(&options(topo, lab.clone(), None));
    assert!(!res.ok);
    let cleanup = res.cleanup.as_ref().expect("cleanup ran");
    assert!(!cleanup.complete, "{cleanup:?}");
    assert!(
        cleanup.left.iter().any(|l| l.contains("DUT1_2 may still run") && l.contains("still exiting")),
        "{cleanup:?}"
    );
    assert!(!cleanup.left.iter().any(|l| l.contains("DUT1_3")), "DUT1_3 was stopped on the retry: {cleanup:?}");
    assert!(positions(&lab.hosts["DUT1"].calls(), "echo released").is_empty(), "the node was released");
}

/// A guest agent whose socket refused (QEMU died after its ready marker, or the socket went)
/// was retried with a fresh `sudo socat` tens of times a second until boot_timeout, and the
/// error said only "the channel was closed". A dead QEMU now ends the wait at once; a live one
/// is retried with backoff; socat's own words are in the error.
#[test]
fn regression_a_refused_guest_agent_is_not_retried_in_a_tight_loop() {
    let mut v = vm("DUT1", 1);
    v.qga = true;
    v.boot_timeout = Duration::from_secs(3);
    for alive in [false, true] {
        let b = Behaviour { qga_refused: Some(alive), ..Behaviour::default() };
        let lab = lab(&[("DUT1", b)]);
        let res = run(&options(topology(vec![dut("DUT1")], vec![v.clone()]), lab.clone(), None));
        assert!(!res.ok);
        let err = res.vms[0].error.clone().unwrap_or_default();
        let socats = lab.hosts["DUT1"].calls().iter().filter(|c| c.argv.iter().any(|a| a == "socat")).count();
        if alive {
            assert!(err.contains("did not answer before boot_timeout") && err.contains("Connection refused"), "{err}");
            assert!((2..=8).contains(&socats), "{socats} bridges in 3 s");
        } else {
            assert!(err.contains("qemu (pid 1234) exited while waiting for the guest agent"), "{err}");
            assert!(err.contains("Connection refused"), "{err}");
            assert_eq!(socats, 1);
        }
    }
}

/// A VM's serial follower that got its channel slot only at the boot deadline (a node with
/// more VMs than slots: later followers wait for earlier VMs) failed on its first poll with
/// "never appeared in serial.log", although the marker was there from byte 0. It now has a
/// few seconds to read the log, however late it started.
#[test]
fn regression_a_follower_starting_at_the_deadline_still_reads_the_log() {
    let mut v = vm("DUT1", 1);
    v.boot_timeout = Duration::ZERO;
    let b = Behaviour { serial_latency: Some(Duration::from_millis(200)), ..Behaviour::default() };
    let lab = lab(&[("DUT1", b)]);
    let res = run(&options(topology(vec![dut("DUT1")], vec![v.clone()]), lab, None));
    assert!(res.ok, "{:?}", res.vms[0].error);
}

/// The boot timeout named the markers in Rust's debug form: `Marker { all: ["vpp ", "built
/// by"] } never appeared`.
#[test]
fn regression_the_boot_timeout_names_its_markers_readably() {
    let mut v = vm("DUT1", 1);
    v.boot_timeout = Duration::from_millis(100);
    let lab = lab(&[("DUT1", Behaviour { never_ready: true, ..Behaviour::default() })]);
    let res = run(&options(topology(vec![dut("DUT1")], vec![v]), lab, None));
    let err = res.vms[0].error.clone().unwrap_or_default();
    assert!(err.contains(r#": "vpp " and "built by" on one line never appeared in"#), "{err}");
    // Regression: the node's failure said "infrastructure" for a guest that never got ready
    // (a pipeline retrying lab faults retried real guest failures); it keeps the VM's class.
    assert_eq!(res.vms[0].failure, Some(FailureKind::NotReady));
    assert_eq!(res.nodes[0].failure, Some(FailureKind::NotReady), "{:?}", res.nodes[0]);
}

/// Ctrl-C or SIGTERM while the before-cleanup hook collected counters and artifacts (after
/// the node tasks) was ignored: tokio's handler was installed, nobody listened any more, and
/// `up` went on to exit 0 with its VMs running. It now interrupts the collection and stops
/// the run.
#[test]
fn regression_a_signal_while_collecting_stops_the_run() {
    let interrupt = Arc::new(tokio::sync::Notify::new());
    let lab = lab(&[("DUT1", Behaviour::default())]);
    let mut opts = options(two_vm_topology(), lab.clone(), Some(interrupt.clone()));
    opts.before_cleanup = Some(Arc::new(move |_: RunView| {
        let interrupt = interrupt.clone();
        Box::pin(async move {
            interrupt.notify_one();
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
    }));
    let t = std::time::Instant::now();
    let res = run(&opts);
    assert!(res.interrupted && !res.ok, "{res:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "the collection ran to its end: {:?}", t.elapsed());
    let cleanup = res.cleanup.as_ref().expect("cleanup ran");
    assert!(cleanup.complete, "{cleanup:?}");
    assert!(!positions(&lab.hosts["DUT1"].calls(), "outcome=").is_empty(), "nothing was stopped");
}

/// A node that failed before claiming its run directory (no passwordless sudo, a missing
/// vhost-user socket) had no plan in the run record, so `replay` of that failed run called
/// every VM of the node drift ("planned now, not in the bundle") and refused with exit 5
/// although nothing had changed. Its plan is recorded as soon as it is made.
#[test]
fn regression_a_node_that_failed_before_its_claim_keeps_its_plan_for_replay() {
    let lab = lab(&[("DUT1", Behaviour { no_sudo: true, ..Behaviour::default() })]);
    let res = run(&options(two_vm_topology(), lab.clone(), None));
    assert!(!res.ok);
    let plan = res.nodes[0].plan.as_ref().expect("the node's plan is in the result");
    let names: Vec<&str> = plan.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["DUT1_1", "DUT1_2"]);
    assert!(lab.hosts["DUT1"].calls().iter().all(|c| !c.sudo), "nothing ran as root");
}

/// A node with a chain whose host printed no CPU layout (`lscpu -p` missing): the final plan had
/// only a note for the chain, so `up` claimed the run directory and started the node's other
/// VMs, the chain's VMs stayed pending, no cleanup ran (no node had "failed"), and the record
/// was dropped as if everything had been stopped: VMs left running that nothing knew of. Now
/// the node fails before anything is written, naming the VMs it cannot plan.
#[test]
fn regression_a_chain_the_host_cannot_place_fails_before_anything_is_written() {
    let text = "nodes:\n  DUT1:\n    type: DUT\n    host: 10.0.0.2\n    username: testuser\n\
                chains:\n  - {node: DUT1, nf_chains: 1, nf_nodes: 2, vnf: vppip4_2vhostvr1024, vs_dtc: 1, nf_dtc: 1,\n\
                \x20    tg_macs: [\"3c:fd:fe:aa:bb:01\", \"3c:fd:fe:aa:bb:02\"], vm: {kernel: /opt/boot/vmlinuz, initrd: /opt/boot/initrd.img}}\n\
                vms:\n  - {node: DUT1, vnf: none, ready_markers: [up], kernel: /opt/boot/vmlinuz, initrd: /opt/boot/initrd.img}\n";
    let topo = crate::topology::load_str_with(text, std::path::Path::new("chain.yaml"), &|_| true).unwrap();
    assert_eq!(topo.vm_names().len(), 3, "{:?}", topo.vm_names());
    let lab = lab(&[("DUT1", Behaviour { no_lscpu: true, ..Behaviour::default() })]);
    let res = run(&options(topo, lab.clone(), None));
    assert!(!res.ok);
    let err = res.nodes[0].error.as_deref().unwrap_or("");
    assert!(err.contains("cannot plan DUT1_1, DUT1_2 on this host") && err.contains("CPU layout"), "{err}");
    let calls = lab.hosts["DUT1"].calls();
    assert!(calls.iter().all(|c| !c.sudo || c.text.contains("sudo_rc=")), "nothing ran as root: {calls:?}");
    assert!(res.cleanup.as_ref().is_none_or(|c| c.complete && c.left.is_empty()), "{:?}", res.cleanup);
}

/// A Ctrl-C while the final manifests were written (after the last check of the signal, and up
/// to the command timeout on a wedged node) was swallowed: `up` exited 0 and left the VMs
/// running. It now stops the run like a signal in any other phase.
#[test]
fn regression_a_signal_while_writing_the_final_manifests_stops_the_run() {
    let interrupt = Arc::new(tokio::sync::Notify::new());
    let lab = lab(&[("DUT1", Behaviour { wedged_final_manifest: true, ..Behaviour::default() })]);
    let opts = options(two_vm_topology(), lab.clone(), Some(interrupt.clone()));
    let host = lab.hosts["DUT1"].clone();
    let watcher = std::thread::spawn(move || {
        for _ in 0..1000 {
            if host.calls().iter().any(|c| c.text.contains("cat > \"$1\"")) {
                interrupt.notify_one();
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let t = std::time::Instant::now();
    let res = run(&opts);
    assert!(watcher.join().unwrap(), "the final manifest was never written");
    assert!(res.interrupted && !res.ok, "{res:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "waited for the wedged write: {:?}", t.elapsed());
    assert!(res.cleanup.as_ref().is_some_and(|c| c.complete), "{:?}", res.cleanup);
    assert!(!positions(&lab.hosts["DUT1"].calls(), "outcome=").is_empty(), "nothing was stopped");
}

/// The guest-agent wait and the pinning ran side by side, but the pinning's result was looked
/// at only after the agent's: a pin that failed at once was reported only at the boot deadline,
/// and if the agent timed out too, the VM was "not ready" instead of the pinning's error.
#[test]
fn regression_a_pinning_failure_is_not_held_back_by_the_guest_agent() {
    let mut v = vm("DUT1", 1);
    v.cpus = Some(vec![2, 3]);
    v.qga = true;
    v.boot_timeout = Duration::from_secs(20);
    // The agent never answers (its QEMU alive); this fake host's pinning reads back no thread.
    let lab = lab(&[("DUT1", Behaviour { qga_refused: Some(true), ..Behaviour::default() })]);
    let t = std::time::Instant::now();
    let res = run(&options(topology(vec![dut("DUT1")], vec![v]), lab, None));
    let err = res.vms[0].error.clone().unwrap_or_default();
    assert!(err.contains("pinned vCPU threads"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "waited for the agent: {:?}", t.elapsed());
}
