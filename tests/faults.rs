//! Tier 3 fault suite: `up` under faults on the loopback lab with tiny guests. Each case
//! asserts the exit code, the key phrase of the message, and that nothing is left: no live QEMU
//! of the run (zombies count as exited), no run directory, hugepages back to their start value,
//! and a decoy QEMU (started here with an unrelated pidfile) still alive.
//!
//! Timing is deterministic: `HARNESS_TEST_PAUSE_AT=<phase>[:<name>]` makes `up` print
//! `harness-test: paused at …` and wait for SIGUSR1 at that phase (see
//! `src/run/up/testpause.rs`); the test acts (kills, signals) while it waits.
//!
//! Needs `scripts/lab.sh up N --vms M` (lab-scale.yaml; set HARNESS_LAB_DIR for a private lab).

mod common;
use common::cli::echoed;
use common::lab;
use common::procs::{alive, processes_mentioning, processes_with_argv, wait_exit};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harness"))
}

struct Env {
    state: tempfile::TempDir,
    dir: tempfile::TempDir,
    hugepages: u64,
    decoy: i32,
    t0: Instant,
    /// (topology, run id) of every `up` this test ran: stopped if the test fails half-way.
    ups: std::cell::RefCell<Vec<(String, String)>>,
    _decoy_dir: tempfile::TempDir,
    _g: std::sync::MutexGuard<'static, ()>,
}

/// One value of the host's 2 MiB hugepage pool.
fn pool(file: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{file}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn nr_hugepages() -> u64 {
    pool("nr_hugepages")
}

/// `mem` (MiB) per VM so that the lab's 4 VMs need more 2 MiB pages than the pool has available
/// now (other tests may have raised it).
fn mem_beyond_the_pool_mib() -> u64 {
    let avail = pool("free_hugepages").saturating_sub(pool("resv_hugepages")) + pool("nr_overcommit_hugepages");
    (avail / 4 + 64) * 2
}

impl Env {
    fn new() -> Env {
        let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let _ = lab::lab();
        assert!(lab::lab_topology("lab-scale.yaml").exists(), "run scripts/lab.sh up 2 --vms 2 first");
        let decoy_dir = tempfile::tempdir().unwrap();
        let pidfile = decoy_dir.path().join("decoy.pid");
        let st = Command::new("qemu-system-x86_64")
            .args(["-daemonize", "-S", "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg", "-m", "16M"])
            .arg("-pidfile")
            .arg(&pidfile)
            .status()
            .unwrap();
        assert!(st.success());
        let decoy = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        Env {
            state: tempfile::tempdir().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            hugepages: nr_hugepages(),
            decoy,
            t0: Instant::now(),
            ups: Default::default(),
            _decoy_dir: decoy_dir,
            _g: g,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        if let ["up", topo, .., "--run-id", id] = args {
            self.ups.borrow_mut().push((topo.to_string(), id.to_string()));
        }
        let mut c = harness();
        c.args(args).arg("--state-dir").arg(self.state.path()).arg("--progress").arg("plain");
        c.env_remove("HARNESS_TEST_PAUSE_AT");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        echoed("harness", args, self.cmd(args).output().unwrap())
    }

    /// lab-scale.yaml with `edit` applied to the text.
    fn topology(&self, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let text = std::fs::read_to_string(lab::lab_topology("lab-scale.yaml")).unwrap();
        let path = self.dir.path().join(name);
        std::fs::write(&path, edit(text)).unwrap();
        path
    }

    /// Start `up` paused at `pause`; returns once it printed the pause line.
    fn up_paused(&self, topo: &Path, run_id: &str, pause: &str) -> Paused {
        let mut p = self.up_spawned(topo, run_id, Some(pause));
        p.wait_for("harness-test: paused at", Duration::from_secs(60));
        p
    }

    /// Start `up` (paused at `pause`, if any) and return at once.
    fn up_spawned(&self, topo: &Path, run_id: &str, pause: Option<&str>) -> Paused {
        let mut c = self.cmd(&["up", topo.to_str().unwrap(), "--run-id", run_id]);
        if let Some(pause) = pause {
            c.env("HARNESS_TEST_PAUSE_AT", pause);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        Paused::spawn(c)
    }

    /// Start `down ARGS` paused at `pause` (a `down[:NODE]` phase); returns once it printed
    /// the pause line.
    fn down_paused(&self, args: &[&str], pause: &str) -> Paused {
        let mut c = self.cmd(&[&["down"], args].concat());
        c.env("HARNESS_TEST_PAUSE_AT", pause).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut p = Paused::spawn(c);
        p.wait_for(&format!("harness-test: paused at {}", pause.replace(':', " ")), Duration::from_secs(60));
        p
    }

    /// Nothing of the run left; hugepages as found; the decoy alive.
    fn assert_nothing_left(&self, run_root: &str, run_id: &str) {
        let dir = format!("{run_root}/{run_id}");
        let procs = processes_mentioning(&format!("{dir}/"));
        assert!(procs.is_empty(), "processes of {dir} still alive: {procs:?}");
        assert!(!Path::new(&dir).exists(), "{dir} still exists");
        assert_eq!(nr_hugepages(), self.hugepages, "hugepages not back to their start value");
        assert!(alive(self.decoy as u32), "the decoy QEMU was killed");
        eprintln!("FAULT {run_id}: nothing left, {:.1}s", self.t0.elapsed().as_secs_f64());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A failed assertion must not leave a run's QEMUs and hugepages to the next test.
        if std::thread::panicking() {
            for (topo, id) in self.ups.borrow().iter() {
                let _ = harness().args(["down", topo, "--run", id]).arg("--state-dir").arg(self.state.path()).output();
            }
        }
        unsafe { libc::kill(self.decoy, libc::SIGKILL) };
    }
}

struct Paused {
    child: Child,
    lines: Receiver<String>,
    seen: String,
}

impl Drop for Paused {
    /// A failed assertion must not leave a paused `up` behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Paused {
    /// Spawn `c` (stdout and stderr piped) and follow its stderr.
    fn spawn(mut c: Command) -> Paused {
        let mut child = c.spawn().unwrap();
        let (tx, rx) = channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Paused { child, lines: rx, seen: String::new() }
    }

    fn wait_for(&mut self, needle: &str, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    self.seen.push_str(&l);
                    self.seen.push('\n');
                    if l.contains(needle) {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!("never saw {needle:?}:\n{}", self.seen);
    }
    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
    /// Wait for exit; (code, stdout + stderr).
    fn finish(&mut self) -> (Option<i32>, String, Duration) {
        let t = Instant::now();
        let mut out = String::new();
        if let Some(mut so) = self.child.stdout.take() {
            use std::io::Read;
            so.read_to_string(&mut out).ok();
        }
        let st = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push_str(&l);
            self.seen.push('\n');
        }
        let all = format!("{out}{}", self.seen);
        eprintln!("--- up exit {:?}\n{all}", st.code());
        (st.code(), all, t.elapsed())
    }
}

/// The per-connection sshd processes of lab node `i` (children of its listener), and the
/// listener's pid and start command.
fn sshd_of(i: usize) -> (i32, Vec<i32>, Vec<String>) {
    let node = lab::lab_dir().join(format!("nodes/DUT{i}"));
    let listener: i32 = std::fs::read_to_string(node.join("sshd.pid")).unwrap().trim().parse().unwrap();
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.split(' ').nth(1).map(str::to_string)))
                .flatten()
                .is_some_and(|pp| pp == listener.to_string())
        })
        .collect();
    let start = vec![
        "/usr/sbin/sshd".to_string(),
        "-f".into(),
        node.join("sshd_config").display().to_string(),
        "-E".into(),
        node.join("sshd.log").display().to_string(),
    ];
    (listener, children, start)
}

const ROOT: &str = "/run/harness";

#[test]
fn fault_sshd_session_killed_mid_boot() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let mut p = env.up_paused(&topo, "fault-sesskill", "serial:DUT1_1");
    let (_, children, _) = sshd_of(1);
    assert!(!children.is_empty(), "no sshd session of DUT1");
    for c in children {
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    p.signal(libc::SIGUSR1);
    let (code, out, took) = p.finish();
    assert_eq!(code, Some(3), "a lost node is exit 3");
    assert!(out.contains("connection lost"), "{out}");
    assert!(!out.contains("qemu exited during boot"), "a lost connection is not a dead qemu: {out}");
    assert!(!out.contains("Russh("), "debug format in messages: {out}");
    assert!(out.contains("everything it started was stopped"), "{out}");
    eprintln!("fault_sshd_session_killed_mid_boot: exit 3 in {took:?}");
    env.assert_nothing_left(ROOT, "fault-sesskill");
}

#[test]
fn fault_sshd_listener_stopped_mid_boot_then_restarted() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let mut p = env.up_paused(&topo, "fault-listener", "serial:DUT1_1");
    let mut restart = lose_node(1);
    p.signal(libc::SIGUSR1);
    // Cleanup announces its reconnect attempts; bring the node back on the first one.
    p.wait_for("reconnecting", Duration::from_secs(60));
    assert!(restart.restart(), "restarting DUT1's sshd");
    let (code, out, _) = p.finish();
    assert_eq!(code, Some(3));
    assert!(out.contains("connection lost"), "{out}");
    assert!(out.contains("everything it started was stopped"), "{out}");
    env.assert_nothing_left(ROOT, "fault-listener");
}

/// Every process below `root` (children, grandchildren, …), as seen now.
fn descendants(root: i32) -> Vec<i32> {
    let parent_of = |p: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
    };
    let pids: Vec<i32> =
        std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    let mut found = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &pids {
            if !found.contains(&p) && parent_of(p).is_some_and(|pp| found.contains(&pp)) {
                found.push(p);
                grew = true;
            }
        }
    }
    found.retain(|&p| p != root);
    found
}

/// Lab node `i` goes away: its sshd listener is stopped (and gone, so its port refuses) and
/// its sessions are killed. The returned guard starts the listener again.
fn lose_node(i: usize) -> RestartOnDrop {
    let (listener, children, start) = sshd_of(i);
    let restart = RestartOnDrop(Some(start));
    unsafe { libc::kill(listener, libc::SIGTERM) };
    // Only once it is gone does its port refuse: cleanup's first, silent reconnect came in while
    // the listener was still handling SIGTERM, got through, and no "reconnecting" was ever shown.
    assert!(wait_exit(listener as u32, Duration::from_secs(10)), "DUT{i}'s sshd listener ignored SIGTERM");
    for c in children {
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    restart
}

/// A stopped lab sshd, started again however its test ends: a failed assertion must not leave
/// the node down for the tests after it (they would fail with "connection refused").
struct RestartOnDrop(Option<Vec<String>>);

impl RestartOnDrop {
    fn restart(&mut self) -> bool {
        match self.0.take() {
            Some(start) => Command::new(&start[0]).args(&start[1..]).status().is_ok_and(|st| st.success()),
            None => true,
        }
    }
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        self.restart();
    }
}

/// SIGKILL at a phase, then `down` (with `--run`, or the topology alone for the caller's runs).
/// `status_code`: what `status` says before `down` (1 while a VM of the run is not running or its
/// directory has no manifest; 0 when every VM started is alive).
fn killed_then_down(pause: &str, run_id: &str, down_by_topology: bool, status_code: i32) {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let mut p = env.up_paused(&topo, run_id, pause);
    p.signal(libc::SIGKILL);
    let (code, _, _) = p.finish();
    assert_eq!(code, None, "killed by a signal");
    let st = env.run(&["status", topo.to_str().unwrap(), "--run", run_id]);
    assert_eq!(st.status.code(), Some(status_code), "status of a half-started run");
    // The lab's nodes share one host and run root: a directory without a manifest is one row.
    let st = env.run(&["status", topo.to_str().unwrap(), "--run", run_id, "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let orphans = rows["vms"].as_array().unwrap().iter().filter(|r| r["state"] == "orphan").count();
    assert!(orphans <= 1, "one orphaned directory listed {orphans} times: {rows}");
    let down = if down_by_topology {
        env.run(&["down", topo.to_str().unwrap()])
    } else {
        env.run(&["down", topo.to_str().unwrap(), "--run", run_id])
    };
    assert_eq!(down.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&down.stdout).contains("nothing to stop"));
    env.assert_nothing_left(ROOT, run_id);
}

#[test]
fn fault_sigkill_right_after_claim_then_down() {
    killed_then_down("claimed", "fault-kill-claim", true, 1);
}

#[test]
fn fault_sigkill_after_upload_then_down() {
    killed_then_down("uploaded", "fault-kill-upload", false, 1);
}

#[test]
fn fault_sigkill_mid_boot_then_down() {
    killed_then_down("serial:DUT1_1", "fault-kill-boot", false, 0);
}

#[test]
fn fault_sigint_during_hugepage_allocation() {
    let env = Env::new();
    // More pages than the pool has available, so `up` allocates.
    let per_vm_mib = mem_beyond_the_pool_mib();
    let topo = env.topology("big.yaml", |t| t.replace("mem: 32,", &format!("mem: {per_vm_mib},")));
    let mut p = env.up_paused(&topo, "fault-sigint-hp", "hugepages");
    p.signal(libc::SIGINT);
    let (code, out, _) = p.finish();
    assert_eq!(code, Some(130));
    assert!(out.contains("interrupted"), "{out}");
    env.assert_nothing_left(ROOT, "fault-sigint-hp");
}

/// Ctrl-C while a node's QEMUs were still starting left some running (and their hugepages
/// taken) although `up` said "everything it started was stopped": with no pidfile written yet,
/// stop killed the first process carrying the pidfile, often the start's own shell. Here every
/// QEMU is a stand-in stuck in that window for good: `-daemonize` has forked its child, which
/// left the session (setsid, as QEMU's does) and never writes the pidfile; the parent waits for
/// it and, like QEMU's (its SIGTERM handler only requests a shutdown), outlives a SIGTERM.
#[test]
fn regression_sigint_while_qemus_start_leaves_none_running() {
    let env = Env::new();
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fifo = env.dir.path().join("forked");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    // Read and write: never EOF between the stand-ins' writes, never blocks their open.
    let reader = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let qemu = bin.join("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in *\" -daemonize \"*) ;; *) exec /usr/bin/qemu-system-x86_64 \"$@\" ;; esac\n\
             trap '' TERM\n\
             setsid /bin/sh -c 'echo forked > {fifo}; while :; do sleep 0.1; done' sh \"$@\" &\n\
             wait\n",
            fifo = fifo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let topo = env.topology("slow-start.yaml", |t| {
        t.replace("qemu: {accel: tcg}", &format!("qemu: {{accel: tcg, bin_dir: {}}}", bin.display()))
    });
    let vms = std::fs::read_to_string(&topo).unwrap().matches("qemu_id:").count();
    assert!(vms >= 2, "{}", topo.display());
    let mut p = env.up_spawned(&topo, "fault-sigint-start", None);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(reader).lines() {
            if l.is_err() || tx.send(()).is_err() {
                break;
            }
        }
    });
    for i in 0..vms {
        assert!(rx.recv_timeout(Duration::from_secs(60)).is_ok(), "only {i} of {vms} QEMUs forked");
    }
    p.signal(libc::SIGINT);
    let (code, out, _) = p.finish();
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("everything it started was stopped"), "{out}");
    env.assert_nothing_left(ROOT, "fault-sigint-start");
}

/// Ctrl-C during `down` ended it silently with 130: nothing said that VMs were left or how to
/// finish. It now says so, keeps the run's local record, and a second `down` finishes the job.
#[test]
fn regression_an_interrupted_down_says_how_to_finish() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let topo = topo.to_str().unwrap();
    let up = env.run(&["up", topo, "--run-id", "fault-sigint-down"]);
    assert_eq!(up.status.code(), Some(0));
    let mut p = env.down_paused(&[topo, "--run", "fault-sigint-down"], "down");
    p.signal(libc::SIGINT);
    let (code, out, _) = p.finish();
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("down interrupted") && out.contains("harness down --run fault-sigint-down"), "{out}");
    let st = env.run(&["status", topo, "--run", "fault-sigint-down"]);
    assert_ne!(String::from_utf8_lossy(&st.stdout).matches(" ready ").count(), 0, "no VM left to finish");
    let down = env.run(&["down", "--run", "fault-sigint-down"]);
    assert_eq!(down.status.code(), Some(0), "the local record was kept: --run alone finds the topology");
    env.assert_nothing_left(ROOT, "fault-sigint-down");
}

/// `down A.yaml` cleaned every run directory of the caller's that had no manifest yet, so the
/// caller's own `up B.yaml` on the same host, still uploading, had its directory removed under
/// it and failed. Only A's manifest-less directories are cleaned now; B starts as if alone.
#[test]
fn regression_down_of_one_topology_leaves_another_topologys_starting_up_alone() {
    let env = Env::new();
    let a = env.topology("a.yaml", |t| t);
    let b = env.topology("b.yaml", |t| t);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    // Both nodes paused right after the claim (they share the host's run directory, and a
    // node's manifest goes up with its files: either would make the directory no orphan).
    let mut p = env.up_paused(Path::new(b), "fault-other-topo", "claimed");
    p.wait_for("harness-test: paused at claimed", Duration::from_secs(60));
    let rd = format!("{ROOT}/fault-other-topo");
    assert!(
        std::fs::read_dir(&rd).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with("manifest"))
    );
    let down = env.run(&["down", a]);
    assert_eq!(down.status.code(), Some(0));
    assert!(Path::new(&rd).is_dir(), "down of a.yaml removed b.yaml's run directory");
    p.signal(libc::SIGUSR1);
    let (code, out, _) = p.finish();
    assert_eq!(code, Some(0), "b.yaml's up failed: {out}");
    assert_eq!(env.run(&["down", b]).status.code(), Some(0));
    env.assert_nothing_left(ROOT, "fault-other-topo");
}

/// `down` that lost its node half-way exited 1 ("a remote command failed"), as if the node had
/// answered: its reconnect's connect error did not count as the node being unreachable. It is
/// exit 3 now, the run's record is kept, and a `down --run` once the node is back finishes.
#[test]
fn regression_a_down_that_loses_its_node_exits_3() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let topo = topo.to_str().unwrap();
    let run = "fault-down-lost";
    assert_eq!(env.run(&["up", topo, "--run-id", run]).status.code(), Some(0));
    let mut p = env.down_paused(&[topo, "--run", run], "down:DUT1");
    let mut restart = lose_node(1);
    p.signal(libc::SIGUSR1);
    let (code, out, _) = p.finish();
    assert!(restart.restart(), "restarting DUT1's sshd");
    assert_eq!(code, Some(3), "a node lost during down is exit 3: {out}");
    assert!(out.contains("DUT1"), "{out}");
    let down = env.run(&["down", "--run", run]);
    assert_eq!(down.status.code(), Some(0), "the local record was kept: --run alone finds the topology");
    env.assert_nothing_left(ROOT, run);
}

/// Too few pages and `allocate: false`: `up` says how many pages are missing and how to let it
/// allocate them, and changes nothing (the hugepage step is one script under the host lock).
#[test]
fn fault_missing_hugepages_without_allocate_changes_nothing() {
    let env = Env::new();
    let per_vm_mib = mem_beyond_the_pool_mib();
    let topo = env.topology("short.yaml", |t| {
        t.replace("allocate: true", "allocate: false").replace("mem: 32,", &format!("mem: {per_vm_mib},"))
    });
    let out = env.run(&["up", topo.to_str().unwrap(), "--run-id", "fault-short-hp"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(text.contains("more 2M hugepages needed"), "{text}");
    assert!(text.contains("allocate: true"), "{text}");
    env.assert_nothing_left(ROOT, "fault-short-hp");
}

/// A hugetlbfs mount of 1G pages given as the 2M mount (a host booted with
/// `default_hugepagesz=1G`, whose `/dev/hugepages` systemd mounts with 1G pages) passed as a
/// hugetlbfs mount: QEMU's `mem-path` there would take 1G pages nobody reserved, and with
/// `allocate` the 2M pool was raised for nothing. `check` and `up` now name the page size,
/// `up` changes nothing and mounts nothing over it.
#[test]
fn regression_a_hugetlbfs_mount_of_another_page_size_is_refused() {
    let env = Env::new();
    let mnt = env.dir.path().join("huge1g");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap().to_string();
    let st = Command::new("mount").args(["-t", "hugetlbfs", "-o", "pagesize=1G", "none", &m]).status().unwrap();
    assert!(st.success(), "mount hugetlbfs pagesize=1G on {m}");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(m.clone());
    let topo = env.topology("wrong-size.yaml", |t| {
        t.replace("allocate: true}", &format!("allocate: true, mounts: {{2M: \"{m}\"}}}}"))
    });
    let want = format!("{m} is a hugetlbfs mount of 1024M pages, not 2M: set hugepages.mounts.2M");
    let check = env.run(&["check", topo.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert_ne!(check.status.code(), Some(0), "{text}");
    assert!(text.contains(&want), "{text}");
    let up = env.run(&["up", topo.to_str().unwrap(), "--run-id", "fault-wrong-pagesize"]);
    let text = String::from_utf8_lossy(&up.stderr);
    assert_ne!(up.status.code(), Some(0));
    assert!(text.contains(&want), "{text}");
    env.assert_nothing_left(ROOT, "fault-wrong-pagesize");
    // Without `allocate`, the same words and no advice to allocate (it would not help).
    let no_alloc = env.topology("wrong-size-no-alloc.yaml", |t| {
        t.replace("allocate: true}", &format!("allocate: false, mounts: {{2M: \"{m}\"}}}}"))
    });
    let up = env.run(&["up", no_alloc.to_str().unwrap(), "--run-id", "fault-wrong-pagesize"]);
    let text = String::from_utf8_lossy(&up.stderr);
    assert_ne!(up.status.code(), Some(0));
    assert!(text.contains(&want) && !text.contains("allocate: true"), "{text}");
    env.assert_nothing_left(ROOT, "fault-wrong-pagesize");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let here: Vec<&str> = mounts.lines().filter(|l| l.split(' ').nth(1) == Some(m.as_str())).collect();
    assert_eq!(here.len(), 1, "mounted over: {here:?}");
    assert!(here[0].contains("pagesize=1024M"), "{here:?}");
}

/// `down OTHER.yaml --run ID` on a topology whose nodes do not have the run found nothing,
/// said "nothing to stop", exited 0 and deleted ID's local record: the only pointer to the
/// right topology, so `down --run ID` then failed with "no local record" and the VMs ran on.
/// The scale topology with only node `keep`: its block under `nodes:` and its VMs.
fn only_node(t: &str, keep: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for l in t.lines() {
        let node_key = l.strip_prefix("  ").and_then(|n| n.strip_suffix(':')).filter(|n| !n.starts_with([' ', '-']));
        match node_key {
            Some(name) => skipping = name != keep,
            None if !l.starts_with("    ") => skipping = false,
            None => {}
        }
        let other_vm = l.contains("node: ") && !l.contains(&format!("node: {keep},"));
        if !skipping && !other_vm {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn regression_down_of_another_topology_keeps_the_runs_record() {
    let env = Env::new();
    let dut1 = env.topology("dut1.yaml", |t| only_node(&t, "DUT1"));
    let dut2 = env.topology("dut2.yaml", |t| only_node(&t, "DUT2"));
    for (t, gone) in [(&dut1, "DUT2"), (&dut2, "DUT1")] {
        let text = std::fs::read_to_string(t).unwrap();
        assert!(!text.contains(&format!("  {gone}:")) && !text.contains(&format!("node: {gone},")), "{text}");
    }
    let run = "fault-other-topology";
    let up = env.run(&["up", dut1.to_str().unwrap(), "--run-id", run]);
    assert_eq!(up.status.code(), Some(0));
    let wrong = env.run(&["down", dut2.to_str().unwrap(), "--run", run]);
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("its local record (another topology) is kept"),
        "{wrong:?}"
    );
    let down = env.run(&["down", "--run", run]);
    assert_eq!(down.status.code(), Some(0), "the record was lost: {down:?}");
    env.assert_nothing_left(ROOT, run);
}

/// `--junit reports/up.xml` with no `reports/` made a good `up` exit 1 with no result printed
/// (a failed one lost its exit code 4 and its artifacts), and `down` exit before removing its
/// records and printing what it stopped. The directory is created now; a report that still
/// cannot be written is said, fails the command, and hides nothing else.
#[test]
fn regression_a_junit_file_that_cannot_be_written_hides_no_result() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let run = "fault-junit-path";
    let nested = env.dir.path().join("reports/nightly/up.xml");
    let up = env.run(&["up", topo.to_str().unwrap(), "--run-id", run, "--junit", nested.to_str().unwrap()]);
    assert_eq!(up.status.code(), Some(0), "{up:?}");
    assert!(std::fs::read_to_string(&nested).unwrap().contains("<testsuite"), "JUnit not written");
    let file = env.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad = file.join("down.xml");
    let down = env.run(&["down", "--run", run, "--junit", bad.to_str().unwrap()]);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stdout).contains("stopped"), "the result was not printed: {down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("a-file"), "{down:?}");
    env.assert_nothing_left(ROOT, run);
    let again = env.run(&["down", "--run", run]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no local record"), "record kept: {again:?}");
}

/// The run record was brought up to date after `up` with `?`: a state directory that could
/// not be written then ended `up` with an error before it printed the result, wrote the JUnit
/// report or chose its exit code, with every VM up. Now the failure is said, exits 1, and the
/// result and the report still come; the record written at the start keeps `down --run` working.
#[test]
fn regression_a_run_record_that_cannot_be_updated_hides_no_result() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let run = "fault-record-update";
    let junit = env.dir.path().join("up.xml");
    // `--run-id` last: a failed assertion then stops the run (see `Env::cmd`).
    let mut c = env.cmd(&["up", topo.to_str().unwrap(), "--junit", junit.to_str().unwrap(), "--run-id", run]);
    c.env("HARNESS_TEST_PAUSE_AT", "serial:DUT1_1").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut p = Paused::spawn(c);
    p.wait_for("harness-test: paused at serial", Duration::from_secs(60));
    // The record's temporary file is a directory now: the update after the run cannot be written.
    let blocker = env.state.path().join(format!("runs/.{run}.json.tmp"));
    std::fs::create_dir(&blocker).unwrap();
    p.signal(libc::SIGUSR1);
    let (code, out, _) = p.finish();
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("run {run} is up")), "the result was not printed: {out}");
    assert!(out.contains("updating the run record"), "the failure was not said: {out}");
    assert!(std::fs::read_to_string(&junit).unwrap().contains("<testsuite"), "JUnit not written");
    let down = env.run(&["down", "--run", run]);
    assert_eq!(down.status.code(), Some(0), "{down:?}");
    env.assert_nothing_left(ROOT, run);
}

/// `down --run ID` on a run whose manifest could not be read only warned (a warning the
/// default output of a pipeline never shows), found nothing to stop, removed the local record and
/// exited 0, with every QEMU of the run still running. It now fails that node (exit 1) and keeps
/// the record, so `down --run ID` can be repeated once the manifest is repaired.
#[test]
fn regression_down_of_a_run_with_an_unreadable_manifest_keeps_the_record() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let run = "fault-bad-manifest";
    let up = env.run(&["up", topo.to_str().unwrap(), "--run-id", run]);
    assert_eq!(up.status.code(), Some(0), "{up:?}");
    let path = format!("{ROOT}/{run}/manifest-DUT1.json");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"{ not json").unwrap();
    let down = env.run(&["down", "--run", run]);
    std::fs::write(&path, &good).unwrap();
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    let text = format!("{}{}", String::from_utf8_lossy(&down.stdout), String::from_utf8_lossy(&down.stderr));
    assert!(text.contains("unreadable manifest"), "{text}");
    let again = env.run(&["down", "--run", run]);
    assert_eq!(again.status.code(), Some(0), "the record was removed: {again:?}");
    env.assert_nothing_left(ROOT, run);
}

/// Ctrl-C during `exec` ended harness at once and left the remote commands running (sshd does
/// not signal a command without a pty when the connection goes): `exec --sudo -- iperf3 -s`
/// stayed on every node as root. Now each node's command is killed first, and harness exits 130.
#[test]
fn regression_ctrl_c_during_exec_kills_the_remote_commands() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let argv: &[u8] = b"sleep\x0037.3125\x00";
    let sleeps = || processes_with_argv(argv);
    let mut c = harness();
    c.arg("--state-dir").arg(env.state.path()).args(["--progress", "plain", "exec", topo.to_str().unwrap()]);
    c.args(["--sudo", "--", "sleep", "37.3125"]).stdout(Stdio::null()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let t = Instant::now();
    while sleeps().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "the remote sleeps never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let left = sleeps();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(left.is_empty(), "remote commands still running after Ctrl-C: {left:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A node lost while `exec` ran its command was exit 1 ("error: … disconnected"), though the
/// README's exit 3 is "lost its connection mid-run" (as `up` and `down` say it).
#[test]
fn regression_exec_that_loses_a_node_mid_command_exits_3() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let argv: &[u8] = b"sleep\x004.4375\x00";
    let sleeps = || processes_with_argv(argv);
    let mut c = harness();
    c.arg("--state-dir").arg(env.state.path()).args(["--progress", "never", "exec", topo.to_str().unwrap()]);
    c.args(["--", "sleep", "4.4375"]).stdout(Stdio::null()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let t = Instant::now();
    while sleeps().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "the remote sleeps never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The listener and every sshd process under it: a connection lives in its privileged
    // monitor and the unprivileged child both (lose_node kills only the first).
    // Found before the listener goes (its orphans are re-parented then).
    let (listener, ..) = sshd_of(1);
    let sessions: Vec<i32> = descendants(listener)
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sshd"))
        .collect();
    let mut restart = lose_node(1);
    for p in sessions {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let out = child.wait_with_output().unwrap();
    assert!(restart.restart(), "restarting DUT1's sshd");
    // The remote sleep lost its session; it is ours (this test started it): end it.
    for p in sleeps() {
        unsafe { libc::kill(p as i32, libc::SIGTERM) };
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.lines().any(|l| l.starts_with("DUT1") && l.contains("unreachable")), "{err}");
    assert!(err.lines().any(|l| l.starts_with("DUT2") && l.contains("exit 0")), "{err}");
}

/// `exec --format json` (now on the same killable streaming path as text mode) still captures
/// each node's output and status.
#[test]
fn exec_json_captures_each_nodes_output_and_status() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let mut c = harness();
    c.arg("--state-dir").arg(env.state.path()).args(["--progress", "never", "exec", topo.to_str().unwrap()]);
    let out = c.args(["--format", "json", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v.as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{v}");
    for n in nodes {
        assert_eq!(
            (n["status"].as_u64(), n["stdout"].as_str(), n["stderr"].as_str()),
            (Some(3), Some("out\n"), Some("err\n"))
        );
    }
}

#[test]
fn fault_same_run_id_twice() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let first = env.run(&["up", topo.to_str().unwrap(), "--run-id", "fault-twice"]);
    assert_eq!(first.status.code(), Some(0));
    // Same local state: refused before any host is touched.
    let again = env.run(&["up", topo.to_str().unwrap(), "--run-id", "fault-twice"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in use"));
    // Another jumpbox (no local record): refused by the hosts, the first run untouched.
    let other = tempfile::tempdir().unwrap();
    let out = harness()
        .args(["up", topo.to_str().unwrap(), "--run-id", "fault-twice", "--progress", "plain", "--state-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(2));
    assert!(text.contains("already in use"), "{text}");
    let st = env.run(&["status", topo.to_str().unwrap(), "--run", "fault-twice"]);
    assert_eq!(st.status.code(), Some(0), "the first run's VMs must survive the second up");
    assert_eq!(processes_mentioning(&format!("{ROOT}/fault-twice/")).len(), 4);
    let down = env.run(&["down", topo.to_str().unwrap(), "--run", "fault-twice"]);
    assert_eq!(down.status.code(), Some(0));
    env.assert_nothing_left(ROOT, "fault-twice");
}

#[test]
fn fault_full_run_root() {
    let env = Env::new();
    let root = "/run/harness-fault-tiny";
    std::fs::create_dir_all(root).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k,mode=0755", "harness-fault-tiny", root])
        .status()
        .unwrap();
    assert!(st.success(), "mount a tiny tmpfs");
    let topo = env.topology("tiny.yaml", |t| {
        t.replace("    qemu: {accel: tcg}\n", &format!("    qemu: {{accel: tcg}}\n    run_root: {root}\n"))
    });
    let up = env.run(&["up", topo.to_str().unwrap(), "--run-id", "fault-full"]);
    let text = format!("{}{}", String::from_utf8_lossy(&up.stdout), String::from_utf8_lossy(&up.stderr));
    let left = std::fs::read_dir(root).map(|d| d.count()).unwrap_or(0);
    Command::new("umount").arg(root).status().unwrap();
    let _ = std::fs::remove_dir(root);
    assert_eq!(up.status.code(), Some(4));
    assert!(text.contains("is full"), "no hint that the disk is full: {text}");
    assert_eq!(left, 0, "something left in the full run_root");
    env.assert_nothing_left(root, "fault-full");
}

#[test]
fn fault_qemu_killed_externally() {
    let env = Env::new();
    let topo = env.topology("t.yaml", |t| t);
    let up = env.run(&["up", topo.to_str().unwrap(), "--run-id", "fault-qkill"]);
    assert_eq!(up.status.code(), Some(0));
    let pid: i32 =
        std::fs::read_to_string(format!("{ROOT}/fault-qkill/DUT1_1/qemu.pid")).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t = Instant::now();
    while alive(pid as u32) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = env.run(&["status", topo.to_str().unwrap(), "--run", "fault-qkill"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert_eq!(st.status.code(), Some(1), "a dead VM is not ok");
    assert!(text.contains(&format!("qemu (pid {pid}) is not running")), "{text}");
    let down = env.run(&["down", topo.to_str().unwrap(), "--run", "fault-qkill"]);
    assert_eq!(down.status.code(), Some(0));
    env.assert_nothing_left(ROOT, "fault-qkill");
}
