//! Scale tier (tier 3): 16 nodes × 4 tiny guests up → status → down through one jump host with
//! nothing left behind, and handshakes dropped by sshd's `MaxStartups` retried and counted.
//!
//! Needs `scripts/lab.sh up 16 --vms 4` and `scripts/lab.sh bastion-strict` (run here, both
//! idempotent; `scripts/test.sh` starts the lab that way). Run ids start with `scale-` so a
//! shared `/run/harness` never mixes them up with other tests' runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::lab::{lab_dir, lab_topology, repo};

const NODES: usize = 16;
const VMS: usize = 4;

/// The 16 × 4 scale lab and the strict bastion, once per test process.
/// The two tests on the `MaxStartups 2` bastion take turns: one floods it with handshakes on
/// purpose, which would make the other's "no retries needed" untrue (a flaky CI failure).
static STRICT_BASTION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ensure_scale_lab() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let lab = repo().join("scripts/lab.sh");
        let st = Command::new("bash").arg(&lab).args(["up", &NODES.to_string(), "--vms", &VMS.to_string()]).status();
        assert!(st.expect("lab.sh").success(), "lab.sh up {NODES} --vms {VMS} failed");
        let st = Command::new("bash").arg(&lab).arg("bastion-strict").status();
        assert!(st.expect("lab.sh").success(), "lab.sh bastion-strict failed");
    });
}

fn harness(args: &[&str]) -> Output {
    let state = lab_dir().join("scale-test-state");
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["-F", "none", "--progress", "never", "--state-dir"])
        .arg(&state)
        .args(args)
        .output()
        .expect("run harness")
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn lab_env(key: &str) -> String {
    let env = std::fs::read_to_string(lab_dir().join("lab.env")).expect("lab.env");
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in lab.env"))
        .into()
}

/// Processes whose command line mentions `needle` (QEMUs of a run carry its run dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Stops the run however the test ends (a failed assertion must not leave 64 QEMUs holding
/// a gigabyte of hugepages for the next test).
struct DownOnDrop<'a>(&'a str, &'a str);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = harness(&["down", self.0, "--run", self.1]);
    }
}

/// Whether the hugepage ledger still holds a reservation of `run_id` after a scan (the same
/// scan `up` runs under the host lock: it drops reservations whose pages are all mapped).
fn ledger_mentions(run_id: &str) -> bool {
    let script = harness::remote::lock::locked_script(
        &harness::remote::reserve::read_script(),
        "scale test",
        std::time::Duration::from_secs(60),
    );
    let out = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    assert!(out.status.success(), "ledger scan: {out:?}");
    std::fs::read_to_string(harness::remote::reserve::LEDGER).is_ok_and(|l| l.contains(run_id))
}

/// The two tests that start dozens of QEMUs at once take turns (2 cores).
static MANY_QEMUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn scale_16x4_through_bastion_up_status_down_leaves_nothing() {
    ensure_scale_lab();
    let _turn = MANY_QEMUS.lock().unwrap_or_else(|e| e.into_inner());
    let topo = lab_topology("lab-scale-jump.yaml");
    let topo = topo.to_str().unwrap();
    let run_id = format!("scale-e2e-{}", std::process::id());
    let _guard = DownOnDrop(topo, &run_id);
    up_status_down_leaves_nothing(topo, &run_id, NODES * VMS);
}

/// `up` of `topo` with every one of its `expected` VMs ready, `status` showing each QEMU alive,
/// then `down` leaving no run directory, process or hugepage reservation behind.
fn up_status_down_leaves_nothing(topo: &str, run_id: &str, expected: usize) {
    let run_dir = Path::new("/run/harness").join(run_id);
    let up = harness(&["up", topo, "--run-id", run_id, "--format", "json"]);
    let res: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&up)));
    let vms = res["vms"].as_array().expect("vms");
    let ready = vms.iter().filter(|v| v["state"] == "ready").count();
    if !up.status.success() || ready != expected {
        // The errors first: CI shows only the head of a long message.
        let errors: Vec<String> =
            vms.iter().filter(|v| !v["error"].is_null()).map(|v| format!("{}: {}", v["name"], v["error"])).collect();
        panic!("up: {ready} of {expected} ready; errors: {errors:#?}\n{}", text(&up));
    }
    assert!(run_dir.is_dir(), "the run directory exists while the run is up");
    assert!(!ledger_mentions(run_id), "a reservation holds nothing once its QEMUs have mapped their pages");

    let st = harness(&["status", topo, "--run", run_id, "--format", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let status: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&st)));
    let alive = status["vms"].as_array().expect("vms").iter().filter(|v| v["alive"] == true).count();
    assert_eq!(alive, expected, "status must show every QEMU alive: {}", text(&st));

    let down = harness(&["down", topo, "--run", run_id]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(!run_dir.exists(), "run directory left behind: {}", run_dir.display());
    let left = processes_mentioning(run_dir.to_str().unwrap());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    assert!(!ledger_mentions(run_id), "hugepage reservation left behind");
}

/// Topology `nodes:` of 24 nodes J1..J24 that are all the strict bastion (`MaxStartups 2`).
fn strict_bastion_nodes() -> String {
    let port = lab_env("LAB_BASTION_STRICT_PORT");
    let user = lab_env("LAB_BASTION_USER");
    let dir = lab_dir();
    let mut yaml = String::from("metadata: {version: 0.1, schema: []}\nnodes:\n");
    for i in 1..=24 {
        yaml.push_str(&format!(
            "  J{i}:\n    type: DUT\n    host: 127.0.0.1\n    port: {port}\n    username: {user}\n    \
             identity_file: {k}\n    known_hosts: {kh}\n",
            k = dir.join("ssh/id_ed25519").display(),
            kh = dir.join("ssh/known_hosts").display()
        ));
    }
    yaml
}

/// The total of `harness: N SSH handshake(s) dropped by a server and retried` in `err`.
fn retries_counted(err: &str) -> u64 {
    err.lines()
        .find_map(|l| l.strip_prefix("harness: ")?.strip_suffix(" SSH handshake(s) dropped by a server and retried"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry count in the output: {err}"))
}

/// 24 "nodes" that are all the strict bastion itself (sshd `MaxStartups 2`): most handshakes
/// are dropped at first, and every one must get through on a retry, with the retries counted.
#[test]
fn dropped_handshakes_are_retried_and_counted() {
    let _turn = STRICT_BASTION.lock().unwrap_or_else(|e| e.into_inner());
    ensure_scale_lab();
    let yaml = strict_bastion_nodes();
    let tmp = tempfile::tempdir().unwrap();
    let topo: PathBuf = tmp.path().join("strict.yaml");
    std::fs::write(&topo, yaml).unwrap();
    let out = harness(&["exec", topo.to_str().unwrap(), "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "every node must get through on a retry: {}", text(&out));
    let total = retries_counted(&err);
    assert!(total > 0, "24 concurrent handshakes against MaxStartups 2 must have been dropped: {err}");
    assert!(err.contains("handshake retr"), "per-node retries are shown: {err}");
}

/// `up` on 24 "nodes" that are the strict bastion (`MaxStartups 2`, and no sudo for its user):
/// the handshakes sshd dropped are retried and counted in `up`'s output too, and a node without
/// passwordless sudo fails before anything is written on it.
#[test]
fn up_counts_retried_handshakes_and_a_node_without_sudo_is_left_untouched() {
    let _turn = STRICT_BASTION.lock().unwrap_or_else(|e| e.into_inner());
    ensure_scale_lab();
    let tiny = lab_dir().join("guest/tiny");
    let mut vms = String::from("vms:\n");
    for i in 1..=24 {
        vms.push_str(&format!(
            "  - {{node: J{i}, qemu_id: 1, smp: 1, mem: 32, guest_hugepages: 0, sched: none, vnf: none, qga: false, \
             kernel: {t}/vmlinux-tiny, initrd: {t}/initrd-tiny, ready_markers: [HARNESS-TINY-READY]}}\n",
            t = tiny.display()
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo: PathBuf = tmp.path().join("strict-up.yaml");
    std::fs::write(&topo, strict_bastion_nodes() + &vms).unwrap();
    let run_id = format!("scale-nosudo-{}", std::process::id());
    let out = harness(&["up", topo.to_str().unwrap(), "--run-id", &run_id]);
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(err.contains("passwordless `sudo -n` is needed"), "{}", text(&out));
    assert!(stdout.contains("everything it started was stopped"), "{}", text(&out));
    assert!(!Path::new("/run/harness").join(&run_id).exists(), "nothing written on the host");
    let total = retries_counted(&err);
    assert!(total > 0, "24 concurrent handshakes against MaxStartups 2 must have been dropped: {err}");
}

/// Through the strict bastion every node's connection is a channel of one bastion connection:
/// 16 nodes cost it one handshake, so nothing even needs a retry at the bastion.
#[test]
fn nodes_behind_a_strict_bastion_share_one_connection() {
    let _turn = STRICT_BASTION.lock().unwrap_or_else(|e| e.into_inner());
    ensure_scale_lab();
    let topo = lab_topology("lab-scale-jump-strict.yaml");
    let out = harness(&["exec", topo.to_str().unwrap(), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(": exit 0").count(), NODES, "{err}");
    assert!(err.contains("harness: 0 SSH handshake(s) dropped"), "one shared connection needs no retries: {err}");
}

/// A node's VMs are waited for as each one's QEMU starts, not after the node's last start: here
/// DUT1_2's QEMU (behind a wrapper in the node's `bin_dir`) may only start once the output has
/// shown DUT1_1 ready. Before, every readiness wait began after the last start, so DUT1_1 could
/// not be ready first and the wrapper gave up after 90 s.
#[test]
fn a_vm_is_ready_while_a_slower_qemu_of_its_node_still_starts() {
    use std::io::BufRead as _;
    ensure_scale_lab();
    let tmp = tempfile::tempdir().unwrap();
    let release = tmp.path().join("release");
    let wrapper = tmp.path().join("qemu-system-x86_64");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" DUT1_2,\"*) i=0; while [ ! -e {rel} ] && [ $i -lt 1800 ]; do sleep 0.05; \
             i=$((i + 1)); done;; esac\nexec /usr/bin/qemu-system-x86_64 \"$@\"\n",
            rel = release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // DUT1 and its first two VMs from the scale topology, with the wrapper as its QEMU.
    let (node, vms) = dut1_of_scale_topology();
    let node = node.replace("qemu: {accel: tcg}", &format!("qemu: {{accel: tcg, bin_dir: {}}}", tmp.path().display()));
    // The held VM may wait up to 90 s (a CI host busy with the 16 x 4 test): its start_timeout
    // must outlast that.
    let two: Vec<String> = vms
        .iter()
        .take(2)
        .enumerate()
        .map(
            |(i, l)| if i == 1 { l.replacen("{node: DUT1,", "{node: DUT1, start_timeout: 120s,", 1) } else { l.into() },
        )
        .collect();
    let yaml = format!("metadata: {{version: 0.1, schema: []}}\nnodes:\n{node}vms:\n{}\n", two.join("\n"));
    let topo = tmp.path().join("pipelined.yaml");
    std::fs::write(&topo, &yaml).unwrap();
    let topo = topo.to_str().unwrap();
    let run_id = format!("scale-pipelined-{}", std::process::id());
    let _guard = DownOnDrop(topo, &run_id);

    let mut up = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["-F", "none", "--progress", "plain", "--state-dir"])
        .arg(lab_dir().join("scale-test-state"))
        .args(["up", topo, "--run-id", &run_id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(up.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.ends_with("DUT1/DUT1_1: ready") {
            std::fs::write(&release, "").unwrap();
        }
        lines.push(line);
    }
    assert!(up.wait().unwrap().success(), "{yaml}\n{}", lines.join("\n"));
    let at = |s: &str| {
        lines.iter().position(|l| l.ends_with(s)).unwrap_or_else(|| panic!("no {s:?}:\n{}", lines.join("\n")))
    };
    assert!(
        at("DUT1/DUT1_1: ready") < at("DUT1/DUT1_2: booting"),
        "DUT1_1 must be ready before DUT1_2's QEMU has started:\n{}",
        lines.join("\n")
    );
    let down = harness(&["down", topo, "--run", &run_id]);
    assert!(down.status.success(), "{}", text(&down));
    let left = processes_mentioning(&format!("/run/harness/{run_id}/"));
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// DUT1's node block (its lines, each ending in a newline) and its VM lines, from the scale
/// topology `lab.sh` wrote.
fn dut1_of_scale_topology() -> (String, Vec<String>) {
    let scale = std::fs::read_to_string(lab_topology("lab-scale.yaml")).unwrap();
    let (head, vms) = scale.split_once("\nvms:\n").unwrap();
    let node = head
        .lines()
        .skip_while(|l| *l != "  DUT1:")
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with("    "))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    (node, vms.lines().filter(|l| l.contains("node: DUT1,")).map(str::to_string).collect())
}

/// The first VM of DUT1 from the scale topology, with `node_extra` added to DUT1's keys.
fn one_tiny_vm(dir: &Path, node_extra: &str) -> PathBuf {
    let (node, vms) = dut1_of_scale_topology();
    let vm = &vms[0];
    let yaml = format!("metadata: {{version: 0.1, schema: []}}\nnodes:\n{node}{node_extra}vms:\n{vm}\n");
    let topo = dir.join("one.yaml");
    std::fs::write(&topo, yaml).unwrap();
    topo
}

#[test]
fn the_serial_follower_reads_as_the_login_user_and_falls_back_to_sudo_where_it_cannot() {
    ensure_scale_lab();
    let user = lab_env("LAB_USERS").trim_matches('"').split_whitespace().next().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    // 1. The default run root: the log is the login user's, readable without sudo.
    let topo = one_tiny_vm(tmp.path(), "");
    let topo = topo.to_str().unwrap();
    let run_id = format!("scale-owner-{}", std::process::id());
    let guard = DownOnDrop(topo, &run_id);
    let up = harness(&["up", topo, "--run-id", &run_id]);
    assert!(up.status.success(), "{}", text(&up));
    let log = format!("/run/harness/{run_id}/DUT1_1/serial.log");
    let st = Command::new("stat").args(["-c", "%U %a", &log]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), format!("{user} 600"));
    assert!(std::fs::read_to_string(&log).unwrap().contains("HARNESS-TINY-READY"));
    drop(guard);

    // 2. A run root inside a directory closed to the login user: `tail` is refused, says so,
    // and the follower starts again under sudo (without it, this waits out the boot timeout).
    let closed = format!("/root/harness-scale-closed-{}", std::process::id());
    std::fs::create_dir_all(&closed).unwrap();
    struct RemoveOnDrop(String);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _closed = RemoveOnDrop(closed.clone());
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let topo = one_tiny_vm(tmp.path(), &format!("    run_root: {closed}/runs\n"));
    let topo = topo.to_str().unwrap();
    let run_id = format!("scale-closed-{}", std::process::id());
    let guard = DownOnDrop(topo, &run_id);
    let t = std::time::Instant::now();
    let up = harness(&["up", topo, "--run-id", &run_id]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(t.elapsed() < std::time::Duration::from_secs(60), "ready only after {:?}", t.elapsed());
    let down = harness(&["down", topo, "--run", &run_id]);
    assert!(down.status.success(), "{}", text(&down));
    drop(guard);
    let left = processes_mentioning(&format!("{closed}/runs/{run_id}/"));
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// The vCPU threads are found by their names (`debug-threads=on`) in the pinning round trip;
/// a QEMU whose threads have no such names (here a wrapper drops `debug-threads=on`) is still
/// pinned, with the thread ids from QMP `query-cpus-fast`.
#[test]
fn vcpus_are_pinned_through_qmp_where_their_threads_have_no_names() {
    ensure_scale_lab();
    let tmp = tempfile::tempdir().unwrap();
    let wrapper = tmp.path().join("qemu-system-x86_64");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nfor a in \"$@\"; do shift; case \"$a\" in *,debug-threads=on) a=${a%,debug-threads=on};; esac; \
         set -- \"$@\" \"$a\"; done\nexec /usr/bin/qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let topo = one_tiny_vm(tmp.path(), "");
    let yaml = std::fs::read_to_string(&topo)
        .unwrap()
        .replace("qemu: {accel: tcg}", &format!("qemu: {{accel: tcg, bin_dir: {}}}", tmp.path().display()))
        .replace("sched: none,", "cpus: [1], sched: rr,");
    std::fs::write(&topo, &yaml).unwrap();
    let topo = topo.to_str().unwrap();
    let run_id = format!("scale-qmp-pin-{}", std::process::id());
    let _guard = DownOnDrop(topo, &run_id);
    let up = harness(&["up", topo, "--run-id", &run_id]);
    assert!(up.status.success(), "{yaml}\n{}", text(&up));
    let pid: u32 =
        std::fs::read_to_string(format!("/run/harness/{run_id}/DUT1_1/qemu.pid")).unwrap().trim().parse().unwrap();
    // No thread is named as a vCPU: the by-name round trip could not have pinned anything.
    let named: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|c| c.starts_with("CPU "))
        .collect();
    assert!(named.is_empty(), "{named:?}");
    // Exactly one thread of that QEMU runs SCHED_RR on CPU 1: the vCPU that QMP named.
    let pinned: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let sched = std::fs::read_to_string(t.path().join("sched")).unwrap_or_default();
            status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Cpus_allowed_list:", "1"])
                && sched.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["policy", ":", "2"])
        })
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pinned.len(), 1, "threads on CPU 1 with SCHED_RR: {pinned:?}");
    let down = harness(&["down", topo, "--run", &run_id]);
    assert!(down.status.success(), "{}", text(&down));
}

/// 40 VMs on one node: the commands that carry every VM of a node (the uploads, the start
/// batch, the stop of all of them) grew past one SSH packet, and sshd dropped the connection
/// ("Bad packet length 293656"): `up` failed for any node with about 40 VMs, and `down` of
/// about 30 failed with "Argument list too long". Up, status and down now work at 40 and leave
/// nothing behind.
#[test]
fn regression_forty_vms_on_one_node_come_up_and_go_down() {
    ensure_scale_lab();
    let _turn = MANY_QEMUS.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (node, vms) = dut1_of_scale_topology();
    let unpinned = without_cpus(&vms[0]);
    let lines: Vec<String> = (1..=N).map(|i| unpinned.replacen("qemu_id: 1,", &format!("qemu_id: {i},"), 1)).collect();
    let yaml = format!("metadata: {{version: 0.1, schema: []}}\nnodes:\n{node}vms:\n{}\n", lines.join("\n"));
    let topo = dir.path().join("forty.yaml");
    std::fs::write(&topo, yaml).unwrap();
    let topo = topo.to_str().unwrap();
    let run_id = format!("scale-forty-{}", std::process::id());
    let _guard = DownOnDrop(topo, &run_id);
    up_status_down_leaves_nothing(topo, &run_id, N);
}

/// A scale VM line without its `cpus: [N],` (40 VMs share DUT1's CPUs unpinned).
fn without_cpus(vm: &str) -> String {
    match vm.find(" cpus: [") {
        Some(a) => {
            let b = a + vm[a..].find("],").expect("cpus list ends") + 2;
            format!("{}{}", &vm[..a], &vm[b..])
        }
        None => vm.to_string(),
    }
}
