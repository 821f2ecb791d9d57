//! Tier 3: NF chains on the loopback lab with real QEMU guests and a real vswitch.
//!
//! `scripts/lab.sh up` writes `lab-chain.yaml` (1 chain × 2 lab guests on DUT1 that bridge their
//! NICs); `scripts/lab.sh vswitch up $LAB/vhost 1x2` runs dpdk-testpmd (io forwarding) between
//! the chain's vhost-user sockets and two host taps. Frames written into the ingress tap must
//! cross VM 1, the vswitch, VM 2 and come out at the egress tap, and every hop's counters must
//! show them. Also here, since each TCG boot costs seconds: `guest-exec` (exit code passthrough)
//! and the read-only 9p root, in the chain's guests; and the failures that need no boot: a
//! vhost-user server with no vswitch (start_timeout), a missing `server: false` socket, and a
//! CSIT placement the lab host cannot fit (proving `up` places with the host's own lscpu).
//!
//! Honours `HARNESS_LAB_DIR` (a private lab) and `VSWITCH_TAP_PREFIX` (distinct taps).

mod common;
use common::cli::{Harness, echoed};
use common::lab::{lab_dir, lab_topology, repo};
use common::procs::{alive, assert_nothing_left};

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// Frames injected at the chain's ingress.
const FRAMES: u64 = 200;

fn tap_prefix() -> String {
    std::env::var("VSWITCH_TAP_PREFIX").unwrap_or_else(|_| "vsw".into())
}

fn lab_sh(args: &[&str]) -> Output {
    echoed("lab.sh", args, Command::new("bash").arg(repo().join("scripts/lab.sh")).args(args).output().expect("lab.sh"))
}

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

    /// `lab-chain.yaml` with `edit` applied to its text, written to a temp file.
    fn topology(&self, edit: impl Fn(String) -> String) -> String {
        let text = std::fs::read_to_string(lab_topology("lab-chain.yaml")).expect("lab-chain.yaml (lab.sh up)");
        let path = self.dir.path().join("chain.yaml");
        std::fs::write(&path, edit(text)).unwrap();
        path.display().to_string()
    }
}

fn run_id(what: &str) -> String {
    format!("chain-{what}-{}", std::process::id())
}

/// Stops the vswitch this test started, whatever happens.
struct Vswitch;

impl Vswitch {
    fn up(sockets: &Path, chains: &str) -> Vswitch {
        // The guard exists before the assertion: a half-started vswitch is stopped too.
        let guard = Vswitch;
        let out = lab_sh(&["vswitch", "up", sockets.to_str().unwrap(), chains]);
        assert!(out.status.success(), "vswitch up failed");
        guard
    }

    /// The pid `vswitch up` recorded.
    fn pid() -> u32 {
        let f = lab_dir().join("vswitch/testpmd.pid");
        std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).trim().parse().unwrap()
    }

    /// Port counters by name (`vsw1in`, `sock-1-1`, ...) and tap kernel counters by tap name.
    fn stats() -> (Value, Value) {
        let out = lab_sh(&["vswitch", "stats", "--json"]);
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["ports"].clone(), v["taps"].clone())
    }
}

impl Drop for Vswitch {
    fn drop(&mut self) {
        lab_sh(&["vswitch", "down"]);
    }
}

fn port(ports: &Value, name: &str, key: &str) -> u64 {
    ports.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no port {name}"))[key]
        .as_u64()
        .unwrap()
}

fn tap(taps: &Value, name: &str, key: &str) -> u64 {
    taps.as_array().unwrap().iter().find(|p| p["tap"] == name).unwrap_or_else(|| panic!("no tap {name}"))[key]
        .as_u64()
        .unwrap()
}

/// A guest interface counter through `harness guest-exec`.
fn guest_counter(env: &Env, topo: &str, run: &str, vm: &str, iface: &str, what: &str) -> u64 {
    let path = format!("/sys/class/net/{iface}/statistics/{what}");
    let out = env.run(&["guest-exec", vm, topo, "--run", run, "--timeout", "20s", "--", "/bin/cat", &path]);
    assert_eq!(out.status.code(), Some(0), "guest-exec cat {path} in {vm}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Every guest counter of the path: (VM, iface, rx/tx).
const GUEST_HOPS: &[(&str, &str, &str)] = &[
    ("DUT1_1", "eth0", "rx_packets"),
    ("DUT1_1", "eth1", "tx_packets"),
    ("DUT1_2", "eth0", "rx_packets"),
    ("DUT1_2", "eth1", "tx_packets"),
];

#[test]
fn chain_traffic_crosses_both_vms_and_leaves_at_the_egress() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = lab_topology("lab-chain.yaml").display().to_string();
    let t0 = Instant::now();
    let _vswitch = Vswitch::up(&lab_dir().join("vhost"), "1x2");
    let run = run_id("traffic");
    let out = env.run(&["up", &topo, "--run-id", &run, "--format", "json"]);
    let res: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "up failed: {res}");
    let names: Vec<&str> = res["vms"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["DUT1_1", "DUT1_2"]);
    let up_s = t0.elapsed().as_secs_f64();

    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        chain_counts(&env, &topo, &run);
        guest_exec_and_read_only_root(&env, &topo, &run);
    }));
    let out = env.run(&["down", &topo, "--run", &run]);
    assert_eq!(out.status.code(), Some(0));
    if let Err(e) = check {
        std::panic::resume_unwind(e);
    }
    assert_nothing_left(&run);
    eprintln!("chain test: vswitch+up {up_s:.1}s, total {:.1}s", t0.elapsed().as_secs_f64());
}

/// Inject FRAMES at the ingress; every hop must count at least that many more.
fn chain_counts(env: &Env, topo: &str, run: &str) {
    let (tin, tout) = (format!("{}1in", tap_prefix()), format!("{}1out", tap_prefix()));
    let guest_before: Vec<u64> = GUEST_HOPS.iter().map(|(vm, i, w)| guest_counter(env, topo, run, vm, i, w)).collect();
    let (ports0, taps0) = Vswitch::stats();
    let out = lab_sh(&["vswitch", "send", "1", &FRAMES.to_string()]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ports, taps) = loop {
        let (p, t) = Vswitch::stats();
        if tap(&t, &tout, "kernel_rx") >= tap(&taps0, &tout, "kernel_rx") + FRAMES || Instant::now() > deadline {
            break (p, t);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let d = |name: &str, key: &str| port(&ports, name, key) - port(&ports0, name, key);
    let hops = [
        (tin.clone(), "rx"),
        ("sock-1-1".into(), "tx"),
        ("sock-1-2".into(), "rx"),
        ("sock-2-1".into(), "tx"),
        ("sock-2-2".into(), "rx"),
        (tout.clone(), "tx"),
    ];
    let mut report = Vec::new();
    for (name, key) in &hops {
        report.push(format!("vswitch {name} {key} +{}", d(name, key)));
    }
    for ((vm, iface, what), before) in GUEST_HOPS.iter().zip(&guest_before) {
        let now = guest_counter(env, topo, run, vm, iface, what);
        report.push(format!("{vm} {iface} {what} +{}", now - before));
    }
    let egress = tap(&taps, &tout, "kernel_rx") - tap(&taps0, &tout, "kernel_rx");
    report.push(format!("tap {tout} kernel rx +{egress}"));
    eprintln!("chain hops after {FRAMES} frames:\n  {}", report.join("\n  "));
    for line in &report {
        let n: u64 = line.rsplit('+').next().unwrap().parse().unwrap();
        assert!(n >= FRAMES, "hop below {FRAMES}: {line}\n{}", report.join("\n"));
    }
}

/// `guest-exec` passes exit codes through; the guest's root (the host's `/` over 9p) is read-only.
fn guest_exec_and_read_only_root(env: &Env, topo: &str, run: &str) {
    let out =
        env.run(&["guest-exec", "DUT1_1", topo, "--run", run, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let probe = format!("/harness-ro-probe-{run}");
    let out = env.run(&["guest-exec", "DUT1_2", topo, "--run", run, "--", "/bin/touch", &probe]);
    assert_ne!(out.status.code(), Some(0), "touch {probe} succeeded in the guest");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    assert!(!Path::new(&probe).exists(), "the guest wrote to the host's /");
    // What the guest writes goes to its own tmpfs.
    let out = env.run(&["guest-exec", "DUT1_2", topo, "--run", run, "--", "/bin/touch", "/tmp/harness-probe"]);
    assert_eq!(out.status.code(), Some(0));
    regression_guest_exec_reaches_the_vm_named_not_the_socket_its_manifest_names(env, topo, run);
}

/// `guest-exec` sent the command (as root in the guest) to the agent socket the host's manifest
/// named, unchecked: a manifest whose DUT1_2 names DUT1_1's socket ran DUT1_2's command in
/// DUT1_1. The socket is now recomputed from the run and the VM (as `ping` does): DUT1_2's
/// command finds the probe only DUT1_2's tmpfs has.
fn regression_guest_exec_reaches_the_vm_named_not_the_socket_its_manifest_names(env: &Env, topo: &str, run: &str) {
    let mf = format!("/run/harness/{run}/manifest-DUT1.json");
    let orig = std::fs::read(&mf).unwrap();
    let mut m: Value = serde_json::from_slice(&orig).unwrap();
    let vms = m["vms"].as_array_mut().unwrap();
    let sock1 = vms.iter().find(|v| v["name"] == "DUT1_1").unwrap()["qga"].clone();
    vms.iter_mut().filter(|v| v["name"] == "DUT1_2").for_each(|v| v["qga"] = sock1.clone());
    std::fs::write(&mf, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = env.run(&["guest-exec", "DUT1_2", topo, "--run", run, "--", "/bin/test", "-e", "/tmp/harness-probe"]);
    std::fs::write(&mf, &orig).unwrap();
    assert_eq!(out.status.code(), Some(0), "the command ran where the manifest pointed, not in DUT1_2: {out:?}");
}

#[test]
fn chain_vhost_user_server_without_vswitch_fails_within_start_timeout() {
    let env = Env::new();
    // A socket dir no vswitch serves, and a short start_timeout.
    let sockets = env.dir.path().join("nobody");
    std::fs::create_dir(&sockets).unwrap();
    let topo = env.topology(|t| {
        t.replace(
            &format!("socket_dir: {}", lab_dir().join("vhost").display()),
            &format!("socket_dir: {}", sockets.display()),
        )
        .replace("start_timeout: 30s", "start_timeout: 3s")
    });
    let run = run_id("nobody");
    let t = Instant::now();
    let out = env.run(&["up", &topo, "--run-id", &run]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    // Whichever VM's start gives up first is reported; each waits on its first NIC's socket.
    let waiting = |q: u32| {
        let sock = sockets.join(format!("sock-{q}-1"));
        err.contains(&format!(
            "QEMU is waiting for a vhost-user client on {}: is the vswitch configured?",
            sock.display()
        ))
    };
    assert!(waiting(1) || waiting(2), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // QEMU had not daemonized: the killed start command took it along.
    assert_nothing_left(&run);
}

#[test]
fn chain_vhost_user_client_without_socket_fails_before_qemu_starts() {
    let env = Env::new();
    let sockets = env.dir.path().join("none");
    let topo = env.topology(|t| {
        t.replace(
            &format!("socket_dir: {}", lab_dir().join("vhost").display()),
            &format!("socket_dir: {}", sockets.display()),
        )
        .replace("{vhost_user: {vectors: 0}}", "{vhost_user: {vectors: 0, server: false}}")
    });
    let run = run_id("client");
    let out = env.run(&["up", &topo, "--run-id", &run]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("DUT1_1: vhost-user socket {}/sock-1-1 does not exist", sockets.display()))
            && err.contains("start the vswitch first"),
        "{err}"
    );
    assert!(!err.contains("qemu failed"), "{err}");
    assert_nothing_left(&run);
}

#[test]
fn chain_up_places_with_the_hosts_own_cpu_layout() {
    let env = Env::new();
    // CSIT placement (no `cpus:` in the template) needs 5 CPUs for 2 VMs; the lab host's lscpu decides.
    let topo = env.topology(|t| t.replace("cpus: [0], ", ""));
    let host_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let run = run_id("place");
    let out = env.run(&["up", &topo, "--run-id", &run, "--format", "json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if host_cpus < 5 {
        assert_eq!(out.status.code(), Some(4));
        assert!(
            err.contains("chains[0]: DUT1: not enough CPU cores on NUMA node 0 for 2 chain VMs: need 5 cores"),
            "{err}"
        );
        assert!(err.contains(&format!("{host_cpus} available")), "{err}");
    } else {
        // Enough CPUs: it places (nothing boots without a vswitch; start_timeout ends it).
        assert!(!err.contains("not enough CPU cores"), "{err}");
    }
    assert_nothing_left(&run);
}

/// `vswitch up` polled for testpmd by its cmdline, and until the forked child has exec'd
/// `setsid` that cmdline is lab.sh's own: a slow fork made it call a starting testpmd dead,
/// exit 1 (silently, before the fix) and leave the testpmd running. strace holds the child's
/// execve of setsid for 1 s, which makes that window certain; `-b execve` detaches from each
/// process at its exec, so strace ends with lab.sh.
#[test]
fn regression_vswitch_up_called_a_testpmd_not_yet_execd_dead_and_left_it_running() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setsid = Command::new("sh").args(["-c", "command -v setsid"]).output().unwrap();
    let setsid = String::from_utf8(setsid.stdout).unwrap().trim().to_string();
    assert!(setsid.starts_with('/'), "setsid not found");
    let sockets = std::env::temp_dir().join(format!("harness-vsw-regression-{}", std::process::id()));
    let guard = Vswitch;
    let t0 = Instant::now();
    let out = echoed(
        "strace ... lab.sh",
        &["vswitch", "up", "1x1"],
        Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-b", "execve", "-P", &setsid])
            .args(["-e", "trace=execve", "-e", "inject=execve:delay_enter=1000000"])
            .arg("bash")
            .arg(repo().join("scripts/lab.sh"))
            .args(["vswitch", "up", sockets.to_str().unwrap(), "1x1"])
            .output()
            .expect("strace (scripts/install-deps.sh installs it)"),
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1), "the exec of setsid was not held ({took:?}): the test proves nothing");
    assert!(out.status.success(), "vswitch up failed while testpmd was starting");
    let pid = Vswitch::pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "dpdk-testpmd", "the recorded pid {pid} is not testpmd");
    assert!(lab_sh(&["vswitch", "status"]).status.success());
    drop(guard); // vswitch down
    assert!(!alive(pid), "testpmd {pid} still running after vswitch down");
    let _ = std::fs::remove_dir_all(&sockets);
}
