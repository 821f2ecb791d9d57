//! End-to-end tests of the lab guest and of the QGA/QMP clients and serial watcher against it:
//! real `qemu-system-x86_64` (TCG, the harness' argv shape with hugepage-backed RAM), the
//! Debian kernel + initramfs from `scripts/build-guest.sh`, the host's `/` over 9p, and the
//! host's `qemu-ga` inside, started by `lab-vnf.sh`.
//!
//! Needs root (hugepages, 9p export of `/`), qemu-system-x86 and the guest (built on first use;
//! the build is cached). Only qemu processes started here are stopped, by the pid in their own
//! pidfile and only while their command line still names this test's directory, also when a
//! test fails (guards with `Drop`). VM tests run one at a time so the measurements do not
//! include another guest's boot.

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::plan::Marker;
use harness::run::qga::Qga;
use harness::run::qmp::Qmp;
use harness::run::serial::{SerialWatch, Verdict};
use tokio::net::UnixStream;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const QGA_TIMEOUT: Duration = Duration::from_secs(10);
/// Guest RAM (MiB) and the 2 MiB host pages it needs.
const GUEST_MEM_MB: u64 = 256;
const GUEST_PAGES: u64 = GUEST_MEM_MB / 2;
const HP_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// One VM at a time (also guards the hugepage read-modify-write).
static VM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "tests/guest.rs needs root (hugepages, qemu with a 9p export of /)");
}

/// Build (or validate the cache of) the guest once per test binary; returns its directory.
fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("HARNESS_LAB_DIR").map(PathBuf::from).unwrap_or("/var/tmp/harness-lab".into());
        let dir = base.join("guest");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-guest.sh");
        let t = Instant::now();
        let out = Command::new("bash").arg(&script).arg(&dir).output().expect("run build-guest.sh");
        assert!(
            out.status.success(),
            "build-guest.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("build-guest.sh: {:.2?}", t.elapsed());
        for f in ["vmlinux", "initrd.img", "lab-vnf.sh"] {
            assert!(dir.join(f).is_file(), "{} missing after build-guest.sh", dir.join(f).display());
        }
        dir
    })
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().parse().unwrap()
}

/// Adds this test's 2 MiB pages to `nr_hugepages` and takes exactly those away again on drop
/// (relative, so concurrent users of the pool keep theirs). Mounts hugetlbfs on /dev/hugepages
/// when missing and leaves it mounted: unmounting could pull it from under another user, whose
/// QEMU would then silently put its RAM in a plain file (lab-notes §5).
struct Hugepages {
    added: u64,
    /// Shared with the other tests' guards; the regression test below takes it exclusively.
    _pool: std::sync::RwLockReadGuard<'static, ()>,
}

/// Tests using the pool share it; the regression test that counts the pool runs alone.
static POOL: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Raise the pool by `pages` under the host lock; returns how many were added.
fn pool_add(pages: u64) -> u64 {
    let nr = format!("{HP_SYSFS}/nr_hugepages");
    let _lock = host_lock();
    let before = read_u64(&nr);
    std::fs::write(&nr, (before + pages).to_string()).unwrap();
    let after = read_u64(&nr);
    assert!(after >= before + pages, "could only raise nr_hugepages from {before} to {after}, need +{pages}");
    // Never more than ours: someone else may have raised the pool in between.
    after.saturating_sub(before).min(pages)
}

/// Lower the pool by `added` under the host lock.
fn pool_sub(added: u64) {
    let nr = format!("{HP_SYSFS}/nr_hugepages");
    let _lock = host_lock();
    let now = read_u64(&nr);
    let _ = std::fs::write(&nr, now.saturating_sub(added).to_string());
}

impl Hugepages {
    fn reserve(pages: u64) -> Self {
        let mounted = std::fs::read_to_string("/proc/mounts").unwrap().lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/dev/hugepages") && l.split_whitespace().nth(2) == Some("hugetlbfs")
        });
        if !mounted {
            std::fs::create_dir_all("/dev/hugepages").unwrap();
            let st = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "hugetlbfs", "/dev/hugepages"])
                .status()
                .unwrap();
            assert!(st.success(), "mounting hugetlbfs on /dev/hugepages failed");
        }
        let pool = POOL.read().unwrap_or_else(|e| e.into_inner());
        Hugepages { added: pool_add(pages), _pool: pool }
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        pool_sub(self.added);
    }
}

/// harness's host lock on hugepage changes. The pool is read, then written: two guards dropped
/// at the same moment (or a guard and a harness run allocating or giving back pages) each wrote
/// back what they had read less their own, and one change was lost (CI ended with 128 pages
/// the pool did not have before).
fn host_lock() -> std::fs::File {
    use harness::remote::lock::{LOCK_DIR, LOCK_FILE};
    if !Path::new(LOCK_DIR).exists() {
        std::fs::DirBuilder::new().mode(0o700).create(LOCK_DIR).unwrap();
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(LOCK_FILE).expect("the host lock file");
    f.lock().expect("the host lock");
    f
}

/// A qemu started by this test. Drop kills it (SIGKILL) if it still runs, identified by the pid
/// from its pidfile and only if its command line still names our directory.
struct Vm {
    dir: tempfile::TempDir,
    /// The VM's run directory as the plan lays it out (below `dir`).
    run_dir: PathBuf,
    pid: i32,
    started: Instant,
}

impl Vm {
    fn path(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    /// Until every thread has exited. A zombie leader (empty cmdline) counts as gone only once it
    /// is the last thread: QEMU's other threads still hold its memory, hugepages included, and a
    /// guard that lowered the pool then left surplus pages that the next guard's raise turned
    /// back into persistent ones (the pool ended 60 or 128 pages larger than it began).
    fn alive(&self) -> bool {
        let threads = match std::fs::read_dir(format!("/proc/{}/task", self.pid)) {
            Ok(d) => d.count(),
            Err(_) => return false,
        };
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let leader_gone = cmdline.is_empty() || stat.contains(") Z ");
        !(leader_gone && threads <= 1)
    }

    fn ours(&self) -> bool {
        let dir = self.dir.path().to_string_lossy().into_owned();
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|c| String::from_utf8_lossy(&c).contains(&dir))
            .unwrap_or(false)
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        self.wait_exit_polling(timeout, Duration::from_millis(20)).await
    }

    /// [`Vm::wait_exit`], checking every `poll`.
    async fn wait_exit_polling(&self, timeout: Duration, poll: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if !self.alive() {
                return true;
            }
            tokio::time::sleep(poll).await;
        }
        false
    }

    /// The first complete (newline-terminated) line of serial.log that starts with `start`,
    /// waiting for qemu to write the rest of it. A verdict can come from a partial line (the
    /// watcher matches markers before the newline), and under TCG the guest's UART writes a line
    /// byte by byte: asserting on the verdict's own line failed in CI with `qga=vir`.
    async fn complete_line(&self, start: &str) -> String {
        let path = self.path("serial.log");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let log = String::from_utf8_lossy(&log);
            let mut lines = log.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            if let Some(line) = lines.find(|l| l.starts_with(start)) {
                return line.trim_end().to_owned();
            }
            assert!(Instant::now() < end, "no complete line starting {start:?} in serial.log:\n{log}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Follow serial.log as it grows, feeding the watcher, until it decides; fails the test on
    /// timeout or if qemu exits first, with the serial tail.
    async fn wait_serial(&self, watch: &mut SerialWatch) -> Verdict {
        let path = self.path("serial.log");
        let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n > 0 {
                if let Some(v) = watch.feed(&buf[..n]) {
                    return v;
                }
                continue;
            }
            if !self.alive() {
                // Drain what qemu wrote last.
                let mut rest = Vec::new();
                file.read_to_end(&mut rest).unwrap();
                if let Some(v) = watch.feed(&rest) {
                    return v;
                }
                panic!("qemu exited before a verdict; serial tail:\n{}", watch.tail().join("\n"));
            }
            assert!(
                self.started.elapsed() < BOOT_TIMEOUT,
                "no verdict within {BOOT_TIMEOUT:?}; serial tail:\n{}",
                watch.tail().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.alive() && self.ours() {
            // SAFETY: plain kill(2) on a pid we started and just re-identified.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        // Killed, or exiting by itself (a guest that powered off): its last thread holds its
        // hugepages until it is gone, and the test's guard gives them back right after this.
        let end = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Which device carries the guest agent's chardev.
#[derive(Clone, Copy, PartialEq)]
enum AgentPort {
    /// `-device isa-serial` (COM2, /dev/ttyS1): what the harness uses on x86_64.
    IsaSerial,
    /// virtio-serial port `org.qemu.guest_agent.0`: lab-vnf.sh's fallback (aarch64).
    VirtioSerial,
}

/// The argv `harness up` would run for a small lab VM under TCG, from the planner itself (not a
/// copy of it): run root `root`, the lab guest's kernel and initrd, 256 MiB on 2M pages, the
/// guest agent on; facts say KVM is absent and resolve the boot files to themselves.
fn planned_vm(root: &Path) -> harness::plan::VmPlan {
    use harness::facts::{FactsByNode, HostFacts, Kvm};
    use harness::plan::{PlanOptions, fixture};
    use harness::topology::{Accel, Boot, Vnf};
    let guest = guest_dir();
    let (kernel, initrd) =
        (guest.join("vmlinux").display().to_string(), guest.join("initrd.img").display().to_string());
    let mut node = fixture::dut("DUT1");
    node.qemu.accel = Accel::Auto;
    node.run_root = root.display().to_string();
    let mut vm = fixture::vm("DUT1", 1);
    vm.name = "guest".into();
    vm.boot = Boot::Kernel { kernel: kernel.clone(), initrd: initrd.clone() };
    vm.smp = 1;
    vm.mem = GUEST_MEM_MB;
    vm.guest_hugepages = 16;
    vm.vnf = Vnf::None;
    vm.vars.clear();
    vm.interfaces.clear();
    vm.ready_markers = vec!["HARNESS-LAB-READY".into()];
    vm.qga = true;
    let facts = HostFacts {
        kvm: Some(Kvm::Absent),
        lookups: Some([(kernel.clone(), Some(kernel)), (initrd.clone(), Some(initrd))].into()),
        ..HostFacts::default()
    };
    let t = harness::templates::Templates::embedded();
    let plan = harness::plan::build(
        &fixture::topology(vec![node], vec![vm]),
        &FactsByNode::from([("DUT1".to_string(), facts)]),
        &PlanOptions { run_id: "t".into(), templates: &t, only_vms: &[] },
    )
    .expect("plan");
    plan.nodes[0].vms[0].clone()
}

/// Start qemu with the planned argv; `init_body` becomes the guest's init script.
fn start_vm(init_body: &str, port: AgentPort) -> Vm {
    // Not under /tmp: the guest init mounts a tmpfs there, hiding host paths below it.
    let dir = tempfile::Builder::new().prefix("harness-guest-test.").tempdir_in("/var/tmp").unwrap();
    let planned = planned_vm(dir.path());
    let run_dir = PathBuf::from(&planned.paths.run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    // The test's own init script at the planned init path (the plan's file is the VNF's init).
    let init = run_dir.join("init.sh");
    assert!(planned.argv.iter().any(|a| a.contains(&format!("init={}", init.display()))));
    std::fs::write(&init, init_body).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut args: Vec<String> = planned.argv[1..].to_vec();
    if port == AgentPort::VirtioSerial {
        // lab-vnf.sh's fallback (the aarch64 layout) on x86_64: swap the agent's device.
        let i = args.iter().position(|a| a == "isa-serial,chardev=qga0").expect("the planned agent device");
        args.splice(
            i - 1..=i,
            ["-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
                .map(String::from),
        );
    }
    let started = Instant::now();
    let out = Command::new(&planned.argv[0]).args(&args).output().expect("run qemu-system-x86_64");
    assert!(out.status.success(), "qemu failed to start: {}", String::from_utf8_lossy(&out.stderr));
    let pid: i32 = std::fs::read_to_string(&planned.paths.pidfile).unwrap().trim().parse().unwrap();
    Vm { dir, run_dir, pid, started }
}

/// What the harness' guest init template does before it runs the VNF (`init_command`).
fn lab_init() -> String {
    format!(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         # Unconditionally: through the 9p root, /proc and /sys are the host's, and neither\n\
         # mountpoint nor stat -f can tell.\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mkdir -p /dev/pts && mount -t devpts devpts /dev/pts\n\
         mount -t tmpfs -o mode=0755 tmpfs /run\n\
         mount -t tmpfs tmpfs /tmp\n\
         {}\n\
         poweroff -f 2>/dev/null || busybox poweroff -f || echo o > /proc/sysrq-trigger\n",
        guest_dir().join("lab-vnf.sh").display()
    )
}

fn markers() -> (Vec<Marker>, Vec<Marker>) {
    (
        vec![Marker::new(["HARNESS-LAB-READY"])],
        vec![Marker::new(["reboot: Power down"]), Marker::new(["Kernel panic"]), Marker::new(["HARNESS-LAB-FAILED"])],
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn ping_rtt<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(qga: &mut Qga<S>, n: usize) -> Duration {
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        qga.ping(QGA_TIMEOUT).await.unwrap();
        rtts.push(t.elapsed());
    }
    median(rtts)
}

#[tokio::test]
async fn guest_boots_ready_and_answers_qga_and_qmp() {
    require_root();
    let _serial = VM_LOCK.lock().await;
    guest_dir();
    let _hp = Hugepages::reserve(GUEST_PAGES);
    let vm = start_vm(&lab_init(), AgentPort::IsaSerial);

    // Ready marker, followed from the growing serial log.
    let (ready, fail) = markers();
    let mut watch = SerialWatch::new(ready, fail);
    let verdict = vm.wait_serial(&mut watch).await;
    let boot = vm.started.elapsed();
    assert!(verdict.is_ready(), "guest failed: {verdict:?}\n{}", watch.tail().join("\n"));
    eprintln!("boot: launch -> HARNESS-LAB-READY in {boot:.2?} ({})", verdict.line());
    assert!(watch.offset() > 0);

    // QGA over a persistent UnixStream. A stale request is written first: its reply arrives
    // before the sync reply and must be discarded.
    let mut stream = UnixStream::connect(vm.path("qga.sock")).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"{\"execute\":\"guest-info\"}\n").await.unwrap();
    let mut qga = Qga::new(stream);
    qga.sync(QGA_TIMEOUT).await.unwrap();
    qga.ping(QGA_TIMEOUT).await.unwrap();
    let info = qga.info(QGA_TIMEOUT).await.unwrap();
    assert!(!info.version.is_empty());
    for cmd in ["guest-ping", "guest-sync-delimited", "guest-network-get-interfaces"] {
        assert!(info.commands.iter().any(|c| c.name == cmd && c.enabled), "{cmd} not enabled in {info:?}");
    }
    let ifs = qga.network_interfaces(QGA_TIMEOUT).await.unwrap();
    let lo = ifs.iter().find(|i| i.name == "lo").unwrap_or_else(|| panic!("no lo in {ifs:?}"));
    assert!(lo.ips.iter().any(|ip| ip == "127.0.0.1"), "lo without 127.0.0.1: {lo:?}");
    // A command error from the real agent is typed.
    let err = qga.execute("guest-no-such-command", None, QGA_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, harness::run::qga::QgaError::Command { .. }), "{err:?}");
    let rtt_unix = ping_rtt(&mut qga, 50).await;
    drop(qga);

    // QGA over `socat - UNIX-CONNECT:` stdio, the path the harness uses inside an SSH channel.
    let (mut socat, io) = socat_stdio(&vm.path("qga.sock"));
    let mut qga = Qga::new(io);
    qga.sync(QGA_TIMEOUT).await.unwrap();
    let ifs = qga.network_interfaces(QGA_TIMEOUT).await.unwrap();
    assert!(ifs.iter().any(|i| i.name == "lo"), "{ifs:?}");
    let rtt_socat = ping_rtt(&mut qga, 50).await;
    drop(qga); // closes socat's stdin
    let _ = socat.kill().await;
    eprintln!("QGA guest-ping RTT, median of 50: UnixStream {rtt_unix:.2?}, socat stdio {rtt_socat:.2?}");

    // QMP: vCPU threads, status, quit.
    let stream = UnixStream::connect(vm.path("qmp.sock")).await.unwrap();
    let mut qmp = Qmp::connect(stream, Duration::from_secs(10)).await.unwrap();
    let status = qmp.status().await.unwrap();
    assert!(status.running && status.status == "running", "{status:?}");
    let threads = qmp.vcpu_threads().await.unwrap();
    assert_eq!(threads.len(), 1, "{threads:?}");
    assert_eq!(threads[0].cpu_index, 0);
    let comm = std::fs::read_to_string(format!("/proc/{}/task/{}/comm", vm.pid, threads[0].thread_id))
        .unwrap_or_else(|e| panic!("vCPU thread {} not a task of {}: {e}", threads[0].thread_id, vm.pid));
    assert_eq!(comm.trim(), "CPU 0/TCG");
    qmp.quit().await.unwrap();
    assert!(qmp.saw_event("SHUTDOWN"), "no SHUTDOWN event: {:?}", qmp.events().collect::<Vec<_>>());
    assert!(vm.wait_exit(Duration::from_secs(10)).await, "qemu {} still running after quit", vm.pid);
    assert!(!vm.path("qemu.pid").exists(), "pidfile left behind after quit");
}

#[tokio::test]
async fn guest_that_powers_off_is_reported_failed() {
    require_root();
    let _serial = VM_LOCK.lock().await;
    guest_dir();
    let _hp = Hugepages::reserve(GUEST_PAGES);
    let vm = start_vm("#!/bin/sh\necho 'vnf: cannot start, giving up'\nbusybox poweroff -f\n", AgentPort::IsaSerial);
    let (ready, fail) = markers();
    let mut watch = SerialWatch::new(ready, fail);
    let verdict = vm.wait_serial(&mut watch).await;
    eprintln!("power-off guest: verdict after {:.2?}: {verdict:?}", vm.started.elapsed());
    match &verdict {
        Verdict::Failed { marker, line } => {
            assert_eq!(marker, &Marker::new(["reboot: Power down"]));
            assert!(line.contains("reboot: Power down"), "{line}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        watch.tail().iter().any(|l| l.contains("vnf: cannot start")),
        "the guest's last words are not in the tail: {:?}",
        watch.tail()
    );
    // The guest powered off: qemu exits by itself.
    assert!(vm.wait_exit(Duration::from_secs(20)).await, "qemu {} did not exit after guest power-off", vm.pid);
}

/// Also checks lab-vnf.sh's defences: this init mounts nothing, so /proc, /sys and /run are the
/// host's directories seen through 9p until lab-vnf.sh mounts the guest's own.
#[tokio::test]
async fn lab_vnf_falls_back_to_virtio_serial_and_mounts_what_init_did_not() {
    require_root();
    let _serial = VM_LOCK.lock().await;
    guest_dir();
    let _hp = Hugepages::reserve(GUEST_PAGES);
    let bare_init = format!("#!/bin/sh\n{}\nbusybox poweroff -f\n", guest_dir().join("lab-vnf.sh").display());
    let vm = start_vm(&bare_init, AgentPort::VirtioSerial);
    let (ready, fail) = markers();
    let mut watch = SerialWatch::new(ready, fail);
    let verdict = vm.wait_serial(&mut watch).await;
    assert!(verdict.is_ready(), "guest failed: {verdict:?}\n{}", watch.tail().join("\n"));
    // The watcher decides on a partial line; the port is at the end of that line.
    let line = vm.complete_line(verdict.line()).await;
    assert!(line.contains("qga=virtio-serial:/dev/vport"), "{line}");
    eprintln!("virtio-serial boot: {:.2?} ({line})", vm.started.elapsed());
    let mut qga = Qga::new(UnixStream::connect(vm.path("qga.sock")).await.unwrap());
    qga.sync(QGA_TIMEOUT).await.unwrap();
    let rtt = ping_rtt(&mut qga, 50).await;
    eprintln!("QGA guest-ping RTT over virtio-serial, median of 50: {rtt:.2?}");
    drop(qga);
    // QMP through `socat - UNIX-CONNECT:` stdio as well: quit closes the channel under us.
    let (mut socat, io) = socat_stdio(&vm.path("qmp.sock"));
    let mut qmp = Qmp::connect(io, Duration::from_secs(10)).await.unwrap();
    assert_eq!(qmp.vcpu_threads().await.unwrap().len(), 1);
    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), socat.wait()).await;
    assert!(status.is_ok(), "socat did not exit after qemu quit");
    assert!(vm.wait_exit(Duration::from_secs(10)).await, "qemu {} still running after quit", vm.pid);
}

/// `socat - UNIX-CONNECT:<sock>` as a child whose stdio is one async stream: the bridge the
/// harness runs inside an SSH channel, here locally. The child dies with its handle.
fn socat_stdio(
    sock: &Path,
) -> (tokio::process::Child, impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + use<>) {
    let mut socat = tokio::process::Command::new("socat")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn socat");
    let io = tokio::io::join(socat.stdout.take().unwrap(), socat.stdin.take().unwrap());
    (socat, io)
}

/// Two guards dropped at the same moment each wrote back the pool they had read less their own
/// pages, and one of the two changes was lost: CI ended with 128 pages in the pool it did not
/// have before. 8 threads adding and removing one page 25 times each must leave the pool as it
/// was (run alone: the other tests' guards would move it).
#[test]
fn regression_concurrent_hugepage_guards_lose_no_pool_update() {
    require_root();
    let _alone = POOL.write().unwrap_or_else(|e| e.into_inner());
    let nr = format!("{HP_SYSFS}/nr_hugepages");
    let before = read_u64(&nr);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..25 {
                    let added = pool_add(1);
                    pool_sub(added);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(read_u64(&nr), before, "the pool must be back where it was");
}

/// A guest that powered off looked gone as soon as QEMU's main thread was a zombie, while its
/// other threads still held its memory: the guard then lowered the pool under pages still in
/// use, and CI ended with the pool 60 or 128 pages larger than it began. Once `Vm` says its
/// QEMU is gone, every page it used must be free again.
#[tokio::test]
async fn regression_a_powered_off_guest_is_gone_only_once_its_hugepages_are_free() {
    require_root();
    let _serial = VM_LOCK.lock().await;
    guest_dir();
    let _hp = Hugepages::reserve(GUEST_PAGES);
    let free = || read_u64(&format!("{HP_SYSFS}/free_hugepages"));
    let free_before = free();
    let vm = start_vm("#!/bin/sh\nbusybox poweroff -f\n", AgentPort::IsaSerial);
    // The very moment `alive` says gone (a slower poll would hide the window).
    let gone = vm.wait_exit_polling(Duration::from_secs(60), Duration::from_millis(1)).await;
    assert!(gone, "qemu {} did not exit after guest power-off", vm.pid);
    assert_eq!(free(), free_before, "qemu {} counted as gone while its hugepages were still in use", vm.pid);
}
