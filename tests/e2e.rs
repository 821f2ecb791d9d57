//! Tier 3: `harness up` / `status` / `logs` / `down` against the loopback sshd lab with real
//! QEMU guests (TCG here), real socat bridges and a real guest agent.
//!
//! Needs `scripts/lab.sh up` and `scripts/build-guest.sh` (the test command runs both; the
//! tests run them too if the lab is missing). Tests that boot VMs take a process-wide lock so
//! the hugepage and process checks of one test are not disturbed by another.

mod common;
use common::cli::{Harness, json};
use common::lab::{lab_dir, lab_topology, repo};
use common::procs::{alive, assert_nothing_left, processes_of_run};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// The shared runner (`common::cli`) plus this file's topology edits.
struct Env(Harness);

impl std::ops::Deref for Env {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(Harness::new())
    }

    /// `topologies/lab.yaml` with `edit` applied to its `vms`, written to a temp file.
    fn topology(&self, name: &str, edit: impl Fn(&mut Vec<Value>)) -> PathBuf {
        let text = std::fs::read_to_string(lab_topology("lab.yaml")).expect("lab.yaml (scripts/lab.sh up writes it)");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let vms: Vec<Value> =
            serde_json::to_value(doc.get("vms").expect("lab.yaml has vms")).unwrap().as_array().unwrap().clone();
        let mut vms = vms;
        edit(&mut vms);
        doc["vms"] = serde_yaml::to_value(&vms).unwrap();
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
        path
    }
}

fn nr_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").unwrap().trim().parse().unwrap()
}

fn only(vms: &mut Vec<Value>, name: &str) {
    vms.retain(|v| format!("{}_{}", v["node"].as_str().unwrap(), v["qemu_id"]) == name);
}

/// `render --facts DIR` of the run must be byte-identical to what `up` ran: every VM's argv and
/// every file (path, mode, bytes), as the node manifests record them.
fn assert_render_matches_manifests(env: &Env, topo: &str, run_id: &str, facts: &Path) {
    let out = env.run(&["render", topo, "--run-id", run_id, "--facts", facts.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "render --facts failed");
    let plan = json(&out);
    let mut compared = 0;
    for node in plan["nodes"].as_array().unwrap() {
        assert!(node["unresolved"].as_array().unwrap().is_empty(), "facts left decisions open: {node}");
        let name = node["name"].as_str().unwrap();
        let manifest = std::fs::read(format!("/run/harness/{run_id}/manifest-{name}.json")).expect("manifest");
        let manifest: Value = serde_json::from_slice(&manifest).unwrap();
        for vm in node["vms"].as_array().unwrap() {
            let ran =
                manifest["vms"].as_array().unwrap().iter().find(|v| v["name"] == vm["name"]).expect("vm in manifest");
            assert_eq!(vm["argv"], ran["argv"], "argv of {} differs from what up ran", vm["name"]);
            let files = vm["files"].as_array().unwrap();
            let ran_files = ran["files"].as_array().unwrap();
            assert_eq!(files.len(), ran_files.len());
            for (f, r) in files.iter().zip(ran_files) {
                assert_eq!(f["path"], r["path"]);
                assert_eq!(
                    u32::from_str_radix(f["mode"].as_str().unwrap(), 8).unwrap() as u64,
                    r["mode"].as_u64().unwrap()
                );
                assert_eq!(f["content"], r["content"], "bytes of {} differ", f["path"]);
                // And the bytes on the host are those bytes.
                let on_host = std::fs::read_to_string(f["path"].as_str().unwrap()).unwrap();
                assert_eq!(on_host, f["content"].as_str().unwrap());
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 4);
}

/// The main job: 2 nodes × 2 VMs up, ready, agent answered, pinned; status; logs; down leaves
/// nothing behind and gives the hugepages back.
#[test]
fn up_status_logs_down_two_nodes_two_vms() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = lab_topology("lab.yaml");
    let topo = topo.to_str().unwrap();
    let hp_before = nr_hugepages();
    let saved = env.dir.path().join("facts");
    let out = env.run(&["check", topo, "--save-facts", saved.to_str().unwrap()]);
    assert!(saved.join("DUT1.json").exists() && saved.join("DUT1.lscpu").exists(), "{out:?}");
    let lscpu = std::process::Command::new("lscpu").arg("-p").output().unwrap().stdout;
    assert_eq!(std::fs::read(saved.join("DUT2.lscpu")).unwrap(), lscpu, "the .lscpu file is raw lscpu -p");

    let out = env.run(&["up", topo, "--format", "json", "--run-id", "e2e-main"]);
    let res = json(&out);
    assert_eq!(out.status.code(), Some(0), "up failed");
    // What ran is what render shows, with the facts that run kept and with check's facts.
    assert_render_matches_manifests(&env, topo, "e2e-main", &env.state.path().join("runs/e2e-main/facts"));
    assert_render_matches_manifests(&env, topo, "e2e-main", &saved);
    assert_eq!(res["ok"], true);
    let vms = res["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 4);
    let lab = std::fs::read_to_string(topo).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&lab).unwrap();
    for vm in vms {
        assert_eq!(vm["state"], "ready", "{vm}");
        let pid = vm["pid"].as_u64().unwrap();
        assert!(alive(pid as u32));
        // The guest agent answered: it listed the guest's loopback interface.
        assert!(vm["guest_interfaces"].as_array().unwrap().iter().any(|i| i["name"] == "lo"), "{vm}");
        // Pinned as asked, read back from the host.
        let name = vm["name"].as_str().unwrap();
        let want = doc["vms"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| format!("{}_{}", v["node"].as_str().unwrap(), v["qemu_id"].as_u64().unwrap()) == name)
            .unwrap();
        let cpus: Vec<String> =
            want["cpus"].as_sequence().unwrap().iter().map(|c| c.as_u64().unwrap().to_string()).collect();
        let pinned = vm["pinned"].as_array().unwrap();
        assert_eq!(pinned.len(), cpus.len());
        for (p, c) in pinned.iter().zip(&cpus) {
            assert_eq!(p["affinity"].as_str().unwrap(), c);
            assert_eq!(p["policy"], "SCHED_RR");
            let tid = p["tid"].as_u64().unwrap();
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            let allowed = st.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
            assert!(allowed.ends_with(&format!("\t{c}")), "{allowed}");
        }
    }

    let st = env.run(&["status", topo, "--format", "json"]);
    assert_eq!(st.status.code(), Some(0));
    let rows = json(&st)["vms"].as_array().unwrap().clone();
    let ours: Vec<&Value> = rows.iter().filter(|r| r["run_id"] == "e2e-main").collect();
    assert_eq!(ours.len(), 4);
    assert!(ours.iter().all(|r| r["alive"] == true));

    let logs = env.run(&["logs", "DUT1_2", topo, "--run", "e2e-main"]);
    assert_eq!(logs.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&logs.stdout).contains("HARNESS-LAB-READY"));

    // Follow mode streams the same log until we stop it.
    let mut follow =
        env.cmd(&["logs", "DUT2_1", topo, "--run", "e2e-main", "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = false;
    let mut line = String::new();
    use std::io::BufRead;
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains("HARNESS-LAB-READY") {
            seen = true;
            break;
        }
        line.clear();
    }
    unsafe { libc::kill(follow.id() as i32, libc::SIGINT) };
    let _ = follow.wait();
    assert!(seen, "logs -f streamed the ready marker");

    // The guest agent answers over one persistent channel, in milliseconds.
    let ping = env.run(&["ping", "DUT1_1", topo, "--run", "e2e-main", "--count", "20", "--format", "json"]);
    assert_eq!(ping.status.code(), Some(0));
    let p = json(&ping);
    assert_eq!(p["count"], 20);
    assert_eq!(p["rtt_ms"].as_array().unwrap().len(), 20);
    assert!(p["median_ms"].as_f64().unwrap() < 1000.0, "{p}");

    let down = env.run(&["down", topo, "--run", "e2e-main"]);
    assert_eq!(down.status.code(), Some(0));
    assert_nothing_left("e2e-main");
    assert_eq!(nr_hugepages(), hp_before, "hugepages restored");

    // Idempotent.
    let again = env.run(&["down", topo, "--run", "e2e-main"]);
    assert_eq!(again.status.code(), Some(0));
}

#[test]
fn boot_timeout_stops_the_vm_and_shows_the_serial_tail() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = env.topology("timeout.yaml", |vms| {
        only(vms, "DUT1_1");
        vms[0]["ready_markers"] = serde_json::json!(["THIS-NEVER-APPEARS"]);
        vms[0]["qga"] = serde_json::json!(false);
        vms[0]["boot_timeout"] = serde_json::json!("6s");
    });
    let t = Instant::now();
    let out = env.run(&["up", topo.to_str().unwrap(), "--format", "json", "--run-id", "e2e-timeout"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(t.elapsed() < Duration::from_secs(60));
    let res = json(&out);
    let vm = &res["vms"][0];
    assert_eq!(vm["state"], "failed");
    assert!(vm["error"].as_str().unwrap().contains("not ready after"), "{vm}");
    assert!(!vm["serial_tail"].as_array().unwrap().is_empty(), "serial tail in the error");
    assert_nothing_left("e2e-timeout");
}

#[test]
fn guest_that_powers_off_fails_fast_with_the_marker() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = env.topology("poweroff.yaml", |vms| {
        only(vms, "DUT2_1");
        vms[0]["init_command"] = serde_json::json!("/bin/true");
        vms[0]["qga"] = serde_json::json!(false);
        vms[0]["boot_timeout"] = serde_json::json!("300s");
    });
    let t = Instant::now();
    let out = env.run(&["up", topo.to_str().unwrap(), "--format", "json", "--run-id", "e2e-poweroff"]);
    assert_eq!(out.status.code(), Some(4));
    // Ends on the marker (or qemu exiting), long before the 300 s boot timeout.
    assert!(t.elapsed() < Duration::from_secs(90), "took {:?}", t.elapsed());
    let err = json(&out)["vms"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("reboot: Power down") || err.contains("qemu exited"), "{err}");
    assert_nothing_left("e2e-poweroff");
}

#[test]
fn qemu_that_fails_to_start_reports_its_stderr() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = env.topology("badopt.yaml", |vms| {
        only(vms, "DUT1_1");
        vms[0]["extra_args"] = serde_json::json!(["-no-such-option"]);
    });
    let out = env.run(&["up", topo.to_str().unwrap(), "--format", "json", "--run-id", "e2e-badopt"]);
    assert_eq!(out.status.code(), Some(4));
    let err = json(&out)["vms"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("qemu failed to start") && err.contains("no-such-option"), "{err}");
    assert_nothing_left("e2e-badopt");
}

#[test]
fn interrupt_during_up_stops_everything_started() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = lab_topology("lab.yaml");
    let mut child = env
        .cmd(&["up", topo.to_str().unwrap(), "--run-id", "e2e-sigint"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a VM is booting (a QEMU is running), then interrupt.
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(": booting") {
            break;
        }
    }
    assert!(seen.contains(": booting"), "never saw a booting VM:\n{seen}");
    assert!(!processes_of_run("e2e-sigint").is_empty(), "a QEMU of the run is running");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    for l in lines {
        seen.push_str(&l.unwrap_or_default());
        seen.push('\n');
    }
    let st = child.wait().unwrap();
    eprintln!("{seen}");
    assert_eq!(st.code(), Some(130));
    assert_nothing_left("e2e-sigint");
}

/// A QEMU someone else started on the host survives our `down` (CSIT's pkill would kill it).
#[test]
fn decoy_qemu_survives_down() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("decoy.pid");
    let st = Command::new("qemu-system-x86_64")
        .args([
            "-daemonize",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "pc,accel=tcg",
            "-m",
            "64M",
            "-name",
            "decoy",
        ])
        .arg("-pidfile")
        .arg(&pidfile)
        .status()
        .unwrap();
    assert!(st.success());
    let decoy: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let topo = env.topology("decoy.yaml", |vms| only(vms, "DUT1_1"));
    let up = env.run(&["up", topo.to_str().unwrap(), "--run-id", "e2e-decoy"]);
    let down = env.run(&["down", topo.to_str().unwrap()]);
    let survived = alive(decoy as u32);
    unsafe { libc::kill(decoy, libc::SIGKILL) };
    assert_eq!(up.status.code(), Some(0));
    assert_eq!(down.status.code(), Some(0));
    assert!(survived, "the decoy QEMU was killed by down");
    assert_nothing_left("e2e-decoy");
}

#[test]
fn two_concurrent_runs_do_not_collide() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = env.topology("two.yaml", |vms| only(vms, "DUT2_2"));
    let t = topo.to_str().unwrap();
    let a = env
        .cmd(&["up", t, "--run-id", "e2e-two-a", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = env
        .cmd(&["up", t, "--run-id", "e2e-two-b", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    eprintln!("{}\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.status.code(), Some(0));
    assert_eq!(b.status.code(), Some(0));
    let pa = json(&a)["vms"][0]["pid"].as_u64().unwrap();
    let pb = json(&b)["vms"][0]["pid"].as_u64().unwrap();
    assert_ne!(pa, pb);
    let down_a = env.run(&["down", t, "--run", "e2e-two-a"]);
    assert_eq!(down_a.status.code(), Some(0));
    assert_nothing_left("e2e-two-a");
    assert!(alive(pb as u32), "run b survives down of run a");
    let down_b = env.run(&["down", t, "--run", "e2e-two-b"]);
    assert_eq!(down_b.status.code(), Some(0));
    assert_nothing_left("e2e-two-b");
}

/// One node unreachable: `up` exits 3 (unreachable), names the node and the phase, and whatever
/// it had started on the other node is stopped again.
#[test]
fn unreachable_node_fails_the_run_and_stops_the_others() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let text = std::fs::read_to_string(lab_topology("lab.yaml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // Nothing listens on 127.0.0.1:9 (discard) in the lab.
    doc["nodes"]["DUT2"]["port"] = serde_yaml::Value::from(9);
    let path = env.dir.path().join("unreachable.yaml");
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let out = env.run(&["up", path.to_str().unwrap(), "--format", "json", "--run-id", "e2e-unreach"]);
    assert_eq!(out.status.code(), Some(3));
    let res = json(&out);
    let dut2 = res["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "DUT2").unwrap().clone();
    assert_eq!(dut2["unreachable"], true);
    assert!(dut2["error"].as_str().unwrap().contains("127.0.0.1:9"), "{dut2}");
    assert!(res["vms"].as_array().unwrap().iter().all(|v| v["state"] != "ready"));
    assert_nothing_left("e2e-unreach");
}

/// `status` exited 3 ("unreachable") for any node error. A node that answered but whose probe
/// failed (here: its sudo wants a password) is exit 1, and says why; one that cannot be reached
/// is still exit 3.
#[test]
fn regression_status_of_a_reachable_node_whose_probe_fails_exits_1_not_3() {
    let env = Env::new();
    let lab = common::lab::lab();
    let text = std::fs::read_to_string(lab_topology("lab.yaml")).unwrap();
    let write = |name: &str, port: u16, user: &str| {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        doc["nodes"]["DUT2"]["port"] = serde_yaml::Value::from(port);
        doc["nodes"]["DUT2"]["username"] = serde_yaml::Value::from(user);
        let path = env.dir.path().join(name);
        std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
        path
    };
    let sudopw = write("sudopw.yaml", lab.sudopw_port, &lab.sudopw_user);
    let out = env.run(&["status", sudopw.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("DUT2") && err.contains("sudo requires a password"), "{err}");
    // Nothing listens on 127.0.0.1:9 (discard) in the lab.
    let gone = write("unreachable.yaml", 9, &lab.sudopw_user);
    let out = env.run(&["status", gone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The guest agent's interface list is mapped back to the planned NICs by MAC. A user-mode NIC
/// (QEMU-internal network, no host traffic) gives the guest a real virtio-net device.
#[test]
fn guest_interfaces_are_mapped_to_planned_nics_by_mac() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = env.topology("nic.yaml", |vms| {
        only(vms, "DUT1_1");
        vms[0]["interfaces"] = serde_json::json!([{"net_user": {}}]);
    });
    let t = topo.to_str().unwrap();
    let out = env.run(&["up", t, "--format", "json", "--run-id", "e2e-nic"]);
    let down = env.run(&["down", t, "--run", "e2e-nic"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(down.status.code(), Some(0));
    let ifaces = json(&out)["vms"][0]["guest_interfaces"].as_array().unwrap().clone();
    let mgmt = ifaces.iter().find(|i| i["nic"] == "mgmt").unwrap_or_else(|| panic!("no NIC mapped: {ifaces:?}"));
    assert_eq!(mgmt["mac"], "52:54:00:00:01:ff");
    assert!(mgmt["name"].as_str().unwrap().starts_with("eth") || mgmt["name"].as_str().unwrap().starts_with("ens"));
    assert!(ifaces.iter().any(|i| i["name"] == "lo" && i["nic"].is_null()));
    assert_nothing_left("e2e-nic");
}

/// `logs -f` made a new Ctrl-C listener on each turn of its loop, so a SIGINT that came while it
/// was writing output (stdout full, the reader behind) was lost, and with the handler installed
/// the signal no longer ended the process either: it followed on forever. Here the reader stops
/// reading until harness is stuck writing into a full pipe, then sends one SIGINT and drains.
#[test]
fn regression_logs_follow_missed_a_sigint_that_came_while_it_was_writing() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    // The tiny guest: boots in milliseconds, the follower is what is under test.
    let run = "e2e-logs-sigint";
    let topo = up_tiny(&env, run);
    let topo = topo.to_str().unwrap();

    let mut follow = env.cmd(&["logs", "DUT1_1", topo, "--run", run, "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = follow.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("HARNESS-TINY-READY") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "logs -f ended before the marker");
        seen.extend_from_slice(&buf[..n]);
    }
    // A chatty guest: 4 MiB more serial output than any pipe holds.
    let log = format!("/run/harness/{run}/DUT1_1/serial.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &vec![b'x'; 4 << 20]).unwrap();
    // Wait until our end of the pipe is full: harness is then blocked in its write.
    let full = Instant::now() + Duration::from_secs(30);
    loop {
        let mut queued: libc::c_int = 0;
        unsafe { libc::ioctl(out.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if queued >= 60 * 1024 {
            break;
        }
        assert!(Instant::now() < full, "harness never filled the pipe ({queued} bytes)");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(follow.id() as i32, libc::SIGINT) };
    let drain = std::thread::spawn(move || while out.read(&mut buf).unwrap_or(0) > 0 {});
    let status = exit_within(&mut follow, Duration::from_secs(30));
    drain.join().unwrap();
    assert_eq!(env.run(&["down", topo, "--run", run]).status.code(), Some(0));
    assert_nothing_left(run);
    assert!(status.is_some(), "logs -f outlived its SIGINT by 30 s");
    assert_eq!(status.unwrap().code(), Some(130), "an interrupted follow exits 130");
}

/// SIGTERM (a pipeline's `timeout`, a CI job cancelled) took its default action on `logs -f`:
/// harness died and the remote `sudo tail -F` followed the serial log on, with nobody reading.
/// It is now handled like Ctrl-C: the remote tail is killed, and harness exits 130.
#[test]
fn regression_logs_follow_ended_by_sigterm_left_the_remote_tail_running() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let run = "e2e-logs-sigterm";
    let topo = up_tiny(&env, run);
    let topo = topo.to_str().unwrap();
    let Following { mut follow, tails, .. } = follow_to_ready(&env, topo, run);
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    let status = follow.wait().unwrap();
    let gone = tails.iter().all(|p| common::procs::wait_exit(*p, Duration::from_secs(10)));
    assert_eq!(env.run(&["down", topo, "--run", run]).status.code(), Some(0));
    assert_nothing_left(run);
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(gone, "the remote tail outlived harness: {tails:?}");
}

/// `logs -f VM | grep -m1 …`: when the reader went away, harness returned on the failed write
/// (exit 1, "Broken pipe") and its runtime dropped the background kill of the remote
/// `sudo tail -F`, which followed the log on until the VM exited. The tail is killed now, and
/// a closed stdout is exit 0.
#[test]
fn regression_logs_follow_whose_reader_went_away_left_the_remote_tail_running() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let run = "e2e-logs-epipe";
    let topo = up_tiny(&env, run);
    let topo = topo.to_str().unwrap();
    let Following { mut follow, lines, log, tails } = follow_to_ready(&env, topo, run);
    drop(lines);
    // More serial output: harness's next write finds the pipe closed.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"more guest output\n").unwrap();
    let status = exit_within(&mut follow, Duration::from_secs(30));
    let gone = tails.iter().all(|p| common::procs::wait_exit(*p, Duration::from_secs(10)));
    assert_eq!(env.run(&["down", topo, "--run", run]).status.code(), Some(0));
    assert_nothing_left(run);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "a follow whose reader went away exits 0");
    assert!(gone, "the remote tail outlived harness: {tails:?}");
}

/// A `harness logs -f` of run `run`'s DUT1_1 that has shown the ready marker.
struct Following {
    follow: std::process::Child,
    /// The rest of its stdout.
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// The VM's serial log on the host.
    log: String,
    /// The remote `sudo -n -- tail … -F` and the tail itself (QEMU's argv names the log too).
    tails: Vec<u32>,
}

fn follow_to_ready(env: &Env, topo: &str, run: &str) -> Following {
    use std::io::BufRead;
    let log = format!("/run/harness/{run}/DUT1_1/serial.log");
    let mut follow = env.cmd(&["logs", "DUT1_1", topo, "--run", run, "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("HARNESS-TINY-READY"))), "logs -f ended before the marker");
    let tails: Vec<u32> = common::procs::processes_mentioning(&log)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"tail"))
        })
        .collect();
    assert!(!tails.is_empty(), "no remote tail follows {log}");
    Following { follow, lines, log, tails }
}

/// `child`'s exit status if it exits within `within`; else it is killed and `None`.
fn exit_within(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `up` of one tiny-guest VM on DUT1 (boots in milliseconds; for tests of what follows the
/// boot) as run `run`; returns its topology.
fn up_tiny(env: &Env, run: &str) -> PathBuf {
    let st = Command::new("bash").arg(repo().join("scripts/build-guest.sh")).arg("--tiny").status().unwrap();
    assert!(st.success(), "build-guest.sh --tiny");
    let tiny = lab_dir().join("guest/tiny");
    let vm = serde_json::json!({
        "node": "DUT1", "qemu_id": 1, "smp": 1, "mem": 32, "guest_hugepages": 0, "sched": "none",
        "vnf": "none", "qga": false, "kernel": tiny.join("vmlinux-tiny"), "initrd": tiny.join("initrd-tiny"),
        "ready_markers": ["HARNESS-TINY-READY"], "boot_timeout": "60s",
    });
    let topo = env.topology(&format!("{run}.yaml"), |vms| *vms = vec![vm.clone()]);
    assert_eq!(env.run(&["up", topo.to_str().unwrap(), "--run-id", run]).status.code(), Some(0));
    topo
}
