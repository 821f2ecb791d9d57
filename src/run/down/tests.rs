//! Hardening 4h: `down` recomputes every path; a tampered manifest field changes nothing it
//! acts on. One regression test per field.

use super::*;
use crate::run::manifest::VmRecord;

fn manifest(root: &str, run: &str) -> Manifest {
    let rd = format!("{root}/{run}");
    Manifest {
        format: 1,
        run_id: run.into(),
        node: "DUT1".into(),
        host: "h".into(),
        topology: "/t/a.yaml".into(),
        started_by: "me@box".into(),
        created_unix: 0,
        run_dir: rd.clone(),
        vms: vec![VmRecord {
            name: "DUT1_1".into(),
            qemu_id: 1,
            run_dir: format!("{rd}/DUT1_1"),
            pidfile: format!("{rd}/DUT1_1/qemu.pid"),
            serial_log: format!("{rd}/DUT1_1/serial.log"),
            qmp: format!("{rd}/DUT1_1/qmp.sock"),
            qga: None,
            state: "ready".into(),
            pid: Some(1),
            pinned: vec![],
            guest_interfaces: vec![],
            argv: vec![],
            files: vec![],
        }],
        hugepages: vec![],
        facts: None,
    }
}

fn sh(script: &str) -> std::process::Output {
    std::process::Command::new("sh").arg("-c").arg(script).output().unwrap()
}

fn expected(root: &str) -> (String, Vec<VmPaths>) {
    targets(root, &manifest(root, "r1")).unwrap()
}

#[test]
fn regression_down_trusts_manifest_pidfile() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("r1/DUT1_1")).unwrap();
    let root = root.to_str().unwrap();
    // A process that is not ours, carrying the tampered pidfile path as an argument.
    let decoy_pf = d.path().join("decoy.pid");
    let mut decoy = std::process::Command::new("sh")
        .arg("-c")
        .arg("sleep 30; : \"$0\"")
        .arg(decoy_pf.to_str().unwrap())
        .spawn()
        .unwrap();
    std::fs::write(&decoy_pf, decoy.id().to_string()).unwrap();
    let mut m = manifest(root, "r1");
    m.vms[0].pidfile = decoy_pf.to_str().unwrap().into();
    let (_, vms) = targets(root, &m).unwrap();
    assert_eq!(vms, expected(root).1);
    let r = process::parse_stop(&sh(&process::stop_script(root, &vms[0], 1)).stdout_str_lossy()).unwrap();
    let survived = decoy.try_wait().unwrap().is_none();
    decoy.kill().ok();
    decoy.wait().ok();
    assert!(survived, "down killed a process named by a tampered pidfile");
    assert_eq!(r.outcome, process::StopOutcome::NotRunning);
}

#[test]
fn regression_down_trusts_manifest_qmp() {
    let mut m = manifest("/run/harness", "r1");
    m.vms[0].qmp = "/run/other/qmp.sock".into();
    let (_, vms) = targets("/run/harness", &m).unwrap();
    assert_eq!(vms[0].qmp, "/run/harness/r1/DUT1_1/qmp.sock");
    assert!(!process::stop_script("/run/harness", &vms[0], 1).contains("/run/other"));
}

#[test]
fn regression_down_trusts_manifest_run_dir() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("r1/DUT1_1")).unwrap();
    std::fs::create_dir_all(root.join("precious")).unwrap();
    let root_s = root.to_str().unwrap();
    for tampered in [format!("{root_s}//"), format!("{root_s}/precious"), "/".into()] {
        let mut m = manifest(root_s, "r1");
        m.run_dir = tampered;
        let (rd, vms) = targets(root_s, &m).unwrap();
        assert_eq!(rd, format!("{root_s}/r1"));
        let rel = NodeRelease { node: "DUT1", run_root: root_s, run_dir: &rd, vms: &vms, nonce: None };
        let roots = hugepages::Roots { sys: "/nonexistent", proc_sys: "/nonexistent", owed: "/nonexistent/owed" };
        let out = sh(&release_script(&rel, &roots));
        assert!(out.status.success(), "{out:?}");
        assert!(root.join("precious").exists(), "down removed a directory named by a tampered run_dir");
        std::fs::create_dir_all(root.join("r1/DUT1_1")).unwrap();
    }
}

/// A run directory that is a symlink to somewhere else is refused, not followed.
#[test]
fn regression_down_trusts_manifest_run_dir_symlink() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(d.path().join("elsewhere/DUT1_1")).unwrap();
    std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("r1")).unwrap();
    let root_s = root.to_str().unwrap();
    let (rd, vms) = expected(root_s);
    let rel = NodeRelease { node: "DUT1", run_root: root_s, run_dir: &rd, vms: &vms, nonce: None };
    let roots = hugepages::Roots { sys: "/nonexistent", proc_sys: "/nonexistent", owed: "/nonexistent/owed" };
    let out = sh(&release_script(&rel, &roots));
    assert!(!out.status.success());
    assert!(d.path().join("elsewhere/DUT1_1").exists(), "followed a symlinked run dir");
    let out = sh(&process::stop_script(root_s, &vms[0], 1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{out:?}");
    assert!(d.path().join("elsewhere/DUT1_1").exists());
}

#[test]
fn regression_down_trusts_manifest_vm_run_dir() {
    let mut m = manifest("/run/harness", "r1");
    m.vms[0].run_dir = "/etc".into();
    m.vms[0].serial_log = "/etc/shadow".into();
    assert_eq!(targets("/run/harness", &m).unwrap(), expected("/run/harness"));
}

#[test]
fn regression_down_trusts_manifest_vm_name() {
    for bad in ["../../etc", "a/b", ".", ""] {
        let mut m = manifest("/run/harness", "r1");
        m.vms[0].name = bad.into();
        assert!(targets("/run/harness", &m).is_err(), "{bad:?}");
    }
}

#[test]
fn regression_down_trusts_manifest_run_id() {
    for bad in ["../../etc", "a/b", "..", "", "-/x"] {
        let m = manifest("/run/harness", bad);
        assert!(targets("/run/harness", &m).is_err(), "{bad:?}");
    }
    // On the jumpbox: a run id from a manifest never leaves the state directory.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("outside")).unwrap();
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    crate::run::record::remove(&state, "../outside");
    assert!(d.path().join("outside").exists());
}

/// Hugepages come from the run's own journal on the host, never from the manifest's values.
#[test]
fn regression_down_trusts_manifest_hugepages() {
    let mut m = manifest("/run/harness", "r1");
    m.hugepages = vec![crate::remote::hugepages::HugepageChange {
        size_kb: 2048,
        numa: None,
        added: 123_456,
        mounted: Some("/".into()),
        max_map_count_was: Some(7),
    }];
    let (rd, vms) = targets("/run/harness", &m).unwrap();
    let rel = NodeRelease { node: "DUT1", run_root: "/run/harness", run_dir: &rd, vms: &vms, nonce: None };
    let s = release_script(&rel, &hugepages::REAL_ROOTS);
    assert!(!s.contains("123456") && !s.contains("umount -- /") && !s.contains("echo 7"), "{s}");
    assert!(s.contains("/run/harness/r1/hugepages-DUT1.journal"));
}

#[test]
fn orphans_parse_and_refuse_bad_ids() {
    let o = parse_orphans(
        "orphan r1 me@box L3QvYS55YW1s b:1:2 DUT1_1 DUT1_2\norphan .. me@box - b:1:3\norphan r2 - - b:1:4\n",
    );
    assert_eq!(o.len(), 2);
    assert_eq!(
        o[0],
        Orphan {
            run_id: "r1".into(),
            owner: "me@box".into(),
            topology: Some("/t/a.yaml".into()),
            dir: "b:1:2".into(),
            vms: vec!["DUT1_1".into(), "DUT1_2".into()]
        }
    );
    assert_eq!((o[1].owner.as_str(), o[1].topology.as_deref()), ("-", None));
}

/// `down TOPOLOGY` cleaned every manifest-less run directory of the caller's: its own `up` of
/// another topology, still uploading on the same host (the manifest is written only just before
/// QEMU starts), had its directory stopped and removed under it. The owner file now records the
/// topology, and only that topology's orphans are cleaned (`--run ID` still names any run).
#[test]
fn regression_down_of_a_topology_leaves_another_topologys_starting_run_alone() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_str().unwrap();
    let claim = |run: &str, topo: &str| {
        let script = crate::remote::layout::claim_script(root, &format!("{root}/{run}"), "DUT1", run, "me@box", topo);
        assert!(std::process::Command::new("sh").arg("-c").arg(script).status().unwrap().success());
    };
    claim("mine", "/t/a b.yaml");
    claim("starting", "/t/other.yaml");
    claim("theirs", "/t/a b.yaml");
    std::fs::write(format!("{root}/theirs/{}", crate::remote::layout::OWNER_FILE), "nonce\nci@agent\n").unwrap();
    std::fs::create_dir_all(format!("{root}/old")).unwrap();
    std::fs::write(format!("{root}/old/{}", crate::remote::layout::OWNER_FILE), "nonce\nme@box\n").unwrap();
    let out = std::process::Command::new("sh").arg("-c").arg(orphans_script(root)).output().unwrap();
    let orphans = parse_orphans(&out.stdout_str_lossy());
    let topo = Selector { topology: Some("/t/a b.yaml".into()), started_by: Some("me@box".into()), run_id: None };
    let mut picked: Vec<&str> =
        orphans.iter().filter(|o| o.selected_by(&topo, "me@box")).map(|o| o.run_id.as_str()).collect();
    picked.sort();
    // An owner file without a topology (an older harness) is still the caller's to clean.
    assert_eq!(picked, ["mine", "old"], "{orphans:?}");
    let named = Selector { run_id: Some("starting".into()), ..topo };
    let picked: Vec<&str> =
        orphans.iter().filter(|o| o.selected_by(&named, "me@box")).map(|o| o.run_id.as_str()).collect();
    assert_eq!(picked, ["starting"]);
}

#[test]
fn selector_filters_by_run_topology_and_owner() {
    let m = manifest("/run/harness", "r1");
    assert!(Selector::default().matches(&m));
    assert!(Selector { run_id: Some("r1".into()), ..Default::default() }.matches(&m));
    assert!(!Selector { run_id: Some("r2".into()), ..Default::default() }.matches(&m));
    assert!(!Selector { topology: Some("/t/b.yaml".into()), ..Default::default() }.matches(&m));
    assert!(Selector { started_by: Some("me@box".into()), ..Default::default() }.matches(&m));
    assert!(!Selector { started_by: Some("other@ci".into()), ..Default::default() }.matches(&m));
}

trait Lossy {
    fn stdout_str_lossy(&self) -> String;
}
impl Lossy for std::process::Output {
    fn stdout_str_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// One round trip stops every VM of a node: each VM's result comes back behind its own index,
/// in `vms` order, whatever order the background stops finish in; stderr stays with its VM.
#[test]
fn stop_all_script_reports_each_vm_behind_its_index() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_str().unwrap();
    let rd = format!("{root}/r1");
    let vms: Vec<VmPaths> = ["DUT1_1", "DUT1_2", "DUT1_3"].iter().map(|n| layout::vm_paths(&rd, n).unwrap()).collect();
    for v in &vms {
        std::fs::create_dir_all(&v.dir).unwrap();
    }
    // DUT1_2 runs (a process carrying its pidfile path, as QEMU's argv does); the others do not.
    let mut ours =
        std::process::Command::new("sh").arg("-c").arg("sleep 30; : \"$0\"").arg(&vms[1].pidfile).spawn().unwrap();
    std::fs::write(&vms[1].pidfile, ours.id().to_string()).unwrap();
    let out = sh(&stop_all_script(root, &vms, Duration::from_secs(1)));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let reports: Vec<StopReport> = (0..3)
        .map(|i| {
            let lines: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix(&format!("{i} "))).collect();
            process::parse_stop(&lines.join("\n")).unwrap()
        })
        .collect();
    assert_eq!(reports[0].outcome, process::StopOutcome::NotRunning, "{text}");
    assert_eq!((reports[1].outcome, reports[1].pid), (process::StopOutcome::Stopped, Some(ours.id())), "{text}");
    assert_eq!(reports[1].how.as_deref(), Some("term"), "{text}");
    assert_eq!(reports[2].outcome, process::StopOutcome::NotRunning, "{text}");
    assert!(ours.try_wait().unwrap().is_some(), "DUT1_2's process was stopped");
    assert!(vms.iter().all(|v| !std::path::Path::new(&v.dir).exists()), "VM directories removed");
}

/// The release kept the run directory when anything but the owner file was left in it, with
/// `grep -vx .owner`: a regex, where `.` is any character. Another node's VM directory named
/// `Xowner` was then taken for the owner file: the owner file was removed under it and the
/// directory, no longer owned, looked like an orphan. Matched literally now.
#[test]
fn regression_a_vm_directory_like_the_owner_file_keeps_the_run_directory_owned() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("r1/DUT1_1")).unwrap();
    std::fs::create_dir_all(root.join("r1/Xowner")).unwrap();
    std::fs::write(root.join("r1").join(crate::remote::layout::OWNER_FILE), "n\nme@h\n").unwrap();
    let root_s = root.to_str().unwrap();
    let (rd, vms) = expected(root_s);
    let rel = NodeRelease { node: "DUT1", run_root: root_s, run_dir: &rd, vms: &vms, nonce: None };
    let roots = hugepages::Roots { sys: "/nonexistent", proc_sys: "/nonexistent", owed: "/nonexistent/owed" };
    let out = sh(&release_script(&rel, &roots));
    assert!(out.status.success(), "{out:?}");
    assert!(root.join("r1/Xowner").exists() && root.join("r1").join(crate::remote::layout::OWNER_FILE).exists());
}

/// `down` stopped a run, then listing the node's orphaned directories failed (the connection
/// dropped): the `?` threw away the rows of what had been stopped, so the output and the JUnit
/// report left out VMs `down` had in fact stopped. They now come back with the error.
#[test]
fn regression_an_orphan_listing_failure_keeps_the_rows_of_what_was_stopped() {
    use crate::ssh::SshError;
    use crate::ssh::fake::{FakeHost, Reply};
    let m = serde_json::to_string(&manifest("/run/harness", "r1")).unwrap();
    let host = FakeHost::new("DUT1", move |c| {
        let t = &c.text;
        if t.contains("manifest-*.json; do") {
            Reply::ok(format!("== /run/harness/r1/manifest-DUT1.json\n{m}\n"))
        } else if t.contains("outcome=") {
            Reply::ok("0 outcome=stopped pid=1 how=quit\n")
        } else if t.contains("printf 'orphan") {
            Reply::Fail(SshError::Disconnected { node: "DUT1".into(), message: "connection reset".into() })
        } else {
            Reply::ok("released\n")
        }
    });
    let session = crate::ssh::Session::with_transport("DUT1", host as std::sync::Arc<dyn crate::ssh::Transport>);
    let sel = Selector { run_id: None, topology: Some("/t/a.yaml".into()), started_by: Some("me@box".into()) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let r = rt.block_on(async {
        let (reporter, root) = crate::report::Reporter::start(crate::report::Style::Never);
        let r = down_node(&session, "DUT1", "/run/harness", &sel, Duration::from_secs(1), &root).await;
        drop(root);
        reporter.finish().await;
        r
    });
    let (rows, e) = r.expect_err("the listing failed");
    assert!(e.is_connection_lost(), "{e}");
    assert_eq!(rows.iter().map(|r| (r.run_id.as_str(), r.vm.as_str())).collect::<Vec<_>>(), [("r1", "DUT1_1")]);
}
