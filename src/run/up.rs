//! `harness up`: execute a [`Plan`] on every node, concurrently, and prove every VM is ready.
//!
//! Per node (one SSH connection): create the run directory, resolve kernel prefixes and the
//! accelerator, upload the rendered files, then, holding the host-wide hugepage lock, check (and
//! if allowed allocate) hugepages and start each QEMU. Per VM: follow the serial log as a stream
//! until a ready marker (a failure marker or QEMU exiting ends the wait at once), sync with the
//! guest agent, map guest interfaces, pin vCPU threads and read the pinning back.
//!
//! Everything started is recorded in a [`Tracker`] the moment it is started, so an error on any
//! node, a timeout or Ctrl-C/SIGTERM stops exactly that on every node before `up` returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::bridge::Bridge;
use super::manifest::{GuestInterfaceRecord, Manifest, VmRecord};
use super::qga::Qga;
use super::qmp::Qmp;
use super::serial::{SerialWatch, Verdict};
use crate::plan::{NodePlan, Plan, VmPlan};
use crate::quote::quote;
use crate::remote::hugepages::{self, HugepageChange};
use crate::remote::process::{self, PinnedThread};
use crate::report::{EventSink, Phase};
use crate::ssh::{ConnectOptions, RemoteCommand, Session, SshError, SshTarget};
use crate::topology::{Accel, PageSize, Sched, Topology};

/// Host-wide lock serialising hugepage check/allocation and QEMU preallocation between runs and
/// between nodes that share a kernel.
pub const HOST_LOCK: &str = "/run/lock/harness-hugepages.lock";

pub struct UpOptions {
    pub run_id: String,
    /// Absolute path of the topology (recorded in manifests).
    pub topology_path: PathBuf,
    pub connect: ConnectOptions,
    /// How long `down`/cleanup waits for QMP `quit` before SIGTERM.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub ok: bool,
    pub interrupted: bool,
    pub duration_s: f64,
    pub nodes: Vec<NodeResult>,
    pub vms: Vec<VmResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub name: String,
    pub host: String,
    /// Accelerator actually used (`kvm` / `tcg`).
    pub accel: Option<String>,
    pub hugepages: Vec<HugepageChange>,
    pub error: Option<String>,
    /// The node could not be reached or refused us (connect, host key, auth).
    pub unreachable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmResult {
    pub node: String,
    pub name: String,
    /// `pending`, `starting`, `ready`, `failed`, `stopped`.
    pub state: String,
    pub pid: Option<u32>,
    pub guest_interfaces: Vec<GuestInterfaceRecord>,
    pub pinned: Vec<PinnedThread>,
    /// Seconds per phase (`upload`, `start`, `boot`, `agent`, `pin`, `total`).
    pub timings: BTreeMap<String, f64>,
    pub error: Option<String>,
    /// Last serial lines, on failure.
    pub serial_tail: Vec<String>,
}

/// What has been started where; shared by node tasks and the cleanup path.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    nodes: BTreeMap<String, TrackedNode>,
    vms: BTreeMap<(String, String), VmResult>,
}

#[derive(Clone)]
pub struct TrackedNode {
    pub session: Session,
    pub target: SshTarget,
    pub host: String,
    pub run_root: String,
    pub run_dir: String,
    pub dir_created: bool,
    /// VMs whose QEMU we launched (or tried to): (name, pidfile, qmp, vm run dir).
    pub launched: Vec<(String, String, String, String)>,
    /// Every VM run directory created on the node (launched or not).
    pub vm_dirs: Vec<String>,
    pub hugepages: Vec<HugepageChange>,
    pub accel: Option<String>,
}

impl Tracker {
    fn with<R>(&self, f: impl FnOnce(&mut TrackerInner) -> R) -> R {
        f(&mut self.inner.lock().expect("tracker lock"))
    }
    fn vm(&self, node: &str, vm: &str, f: impl FnOnce(&mut VmResult)) {
        self.with(|t| {
            if let Some(v) = t.vms.get_mut(&(node.to_string(), vm.to_string())) {
                f(v)
            }
        })
    }
    fn node(&self, node: &str, f: impl FnOnce(&mut TrackedNode)) {
        self.with(|t| {
            if let Some(n) = t.nodes.get_mut(node) {
                f(n)
            }
        })
    }
    pub fn nodes(&self) -> Vec<(String, TrackedNode)> {
        self.with(|t| t.nodes.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// Errors of one node or VM, already phrased for a person (node and VM named by the caller).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{0}")]
    Failed(String),
    #[error("{message}")]
    Guest { message: String, tail: Vec<String> },
}

impl UpError {
    /// Connect, handshake, host key or authentication failures: the node was never usable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, UpError::Ssh(e) if e.is_unreachable())
    }
}

fn fail(msg: impl Into<String>) -> UpError {
    UpError::Failed(msg.into())
}

/// Bring up every VM of `plan`. Never returns with VMs of a failed run still running.
pub async fn up(topology: &Topology, plan: &Plan, opts: &UpOptions, events: EventSink) -> RunResult {
    let started = Instant::now();
    let tracker = Arc::new(Tracker::default());
    tracker.with(|t| {
        for n in &plan.nodes {
            for v in &n.vms {
                t.vms.insert((n.name.clone(), v.name.clone()), VmResult::pending(&n.name, &v.name));
            }
        }
    });
    let mut node_results: BTreeMap<String, NodeResult> = BTreeMap::new();
    let mut set = JoinSet::new();
    for np in &plan.nodes {
        let Some(node) = topology.node(&np.name) else { continue };
        node_results.insert(
            np.name.clone(),
            NodeResult {
                name: np.name.clone(),
                host: np.host.clone(),
                accel: None,
                hugepages: vec![],
                error: None,
                unreachable: false,
            },
        );
        let ctx = NodeCtx {
            plan: np.clone(),
            target: SshTarget::for_node(topology, node),
            run_root: node.run_root.clone(),
            run_id: opts.run_id.clone(),
            topology_path: opts.topology_path.display().to_string(),
            connect: opts.connect.clone(),
            tracker: tracker.clone(),
            events: events.for_node(&np.name),
        };
        set.spawn(async move {
            let name = ctx.plan.name.clone();
            let res = node_up(&ctx).await;
            (name, res)
        });
    }

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut interrupted = false;
    let mut failed = false;
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok((name, res))) => {
                    if let Err(e) = res {
                        failed = true;
                        events.for_node(&name).warn(format!("{e}"));
                        if let Some(nr) = node_results.get_mut(&name) {
                            nr.error = Some(e.to_string());
                            nr.unreachable = e.is_unreachable();
                        }
                        set.abort_all();
                    }
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => {
                    failed = true;
                    events.warn(format!("internal error: {e}"));
                    set.abort_all();
                }
            },
            _ = &mut signal, if !interrupted => {
                interrupted = true;
                events.warn("interrupted: stopping everything this run started");
                set.abort_all();
            }
        }
    }

    if failed || interrupted {
        cleanup(&tracker, opts.stop_grace, &events).await;
    } else {
        // Final manifests carry pids, pinning and guest interfaces.
        for (name, tn) in tracker.nodes() {
            if let Some(np) = plan.nodes.iter().find(|n| n.name == name) {
                let m = manifest_for(&tracker, np, &tn, &opts.run_id, &opts.topology_path.display().to_string());
                if let Err(e) = write_manifest(&tn.session, &tn.run_dir, &m).await {
                    events.for_node(&name).warn(format!("could not update the manifest: {e}"));
                }
            }
        }
    }
    for (name, tn) in tracker.nodes() {
        if let Some(nr) = node_results.get_mut(&name) {
            nr.accel = tn.accel.clone();
            nr.hugepages = tn.hugepages.clone();
        }
        tn.session.close().await;
    }
    let vms: Vec<VmResult> = tracker.with(|t| {
        plan.nodes
            .iter()
            .flat_map(|n| n.vms.iter().map(move |v| (n.name.clone(), v.name.clone())))
            .filter_map(|k| t.vms.get(&k).cloned())
            .collect()
    });
    let ok = !failed && !interrupted && vms.iter().all(|v| v.state == "ready");
    RunResult {
        run_id: opts.run_id.clone(),
        ok,
        interrupted,
        duration_s: started.elapsed().as_secs_f64(),
        nodes: node_results.into_values().collect(),
        vms,
    }
}

impl VmResult {
    fn pending(node: &str, name: &str) -> Self {
        VmResult {
            node: node.into(),
            name: name.into(),
            state: "pending".into(),
            pid: None,
            guest_interfaces: vec![],
            pinned: vec![],
            timings: BTreeMap::new(),
            error: None,
            serial_tail: vec![],
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

struct NodeCtx {
    plan: NodePlan,
    target: SshTarget,
    run_root: String,
    run_id: String,
    topology_path: String,
    connect: ConnectOptions,
    tracker: Arc<Tracker>,
    events: EventSink,
}

async fn node_up(ctx: &NodeCtx) -> Result<(), UpError> {
    let ev = &ctx.events;
    let np = &ctx.plan;
    ev.phase(Phase::Connecting);
    let session = Session::connect(&ctx.target, &ctx.connect).await?;
    ctx.tracker.with(|t| {
        t.nodes.insert(
            np.name.clone(),
            TrackedNode {
                session: session.clone(),
                target: ctx.target.clone(),
                host: np.host.clone(),
                run_root: ctx.run_root.clone(),
                run_dir: np.run_dir.clone(),
                dir_created: false,
                launched: vec![],
                vm_dirs: np.vms.iter().map(|v| v.paths.run_dir.clone()).collect(),
                hugepages: vec![],
                accel: None,
            },
        )
    });

    // One round trip: run directories, kernel/initrd lookups, KVM usability.
    ev.phase(Phase::Preparing);
    let mut vms: Vec<VmPlan> = np.vms.clone();
    let prefixes: Vec<String> = vms.iter().flat_map(|v| v.host_lookups.iter().map(|l| l.prefix.clone())).collect();
    let mut script = format!("set -e\nmkdir -p -m 0755 {}\n", quote(&np.run_dir));
    for v in &vms {
        script.push_str(&format!("mkdir -p -m 0755 {}\n", quote(&v.paths.run_dir)));
    }
    script.push_str("set +e\n");
    script.push_str(&process::lookup_script(&prefixes.iter().map(String::as_str).collect::<Vec<_>>()));
    script.push_str(&hugepages::layout_script("/sys"));
    if np.accel == Accel::Auto {
        script.push_str(&crate::remote::kvm::probe_script(np.arch.as_str(), &qemu_bin(&vms)));
    }
    // Lookups and probes report through their output; only the mkdirs above may fail the step.
    script.push_str("true\n");
    ctx.tracker.node(&np.name, |n| n.dir_created = true);
    let out = session.run_ok(&RemoteCommand::sh(script).sudo()).await?;
    let stdout = out.stdout_str();
    let found = process::parse_lookup(&stdout);
    let mut fi = found.into_iter();
    for v in vms.iter_mut() {
        let lookups = v.host_lookups.clone();
        for l in lookups {
            match fi.next() {
                Some(Ok(path)) => v.argv[l.argv_index] = format!("{}{}{}", l.before, path, l.after),
                Some(Err(p)) => {
                    return Err(fail(format!(
                        "{}: {}: no file matches {p}* on the host (CSIT would silently drop -{})",
                        v.name, l.what, l.what
                    )));
                }
                None => return Err(fail(format!("{}: {} lookup gave no answer", v.name, l.what))),
            }
        }
    }
    let accel = match np.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
        Accel::Auto => {
            if crate::remote::kvm::probe_ok(&stdout) {
                "kvm"
            } else {
                ev.info("KVM not usable here (probe failed); using TCG");
                "tcg"
            }
        }
    };
    if accel == "tcg" {
        for v in vms.iter_mut() {
            switch_to_tcg(v);
        }
    }
    ctx.tracker.node(&np.name, |n| n.accel = Some(accel.to_string()));
    // Where NUMA matters (several nodes), guest RAM follows the pinned CPUs' node.
    let layout = hugepages::parse_layout(&stdout);
    let mut numa_of: BTreeMap<String, u32> = BTreeMap::new();
    for v in vms.iter_mut() {
        if let Some(n) = v.pinning.as_ref().and_then(|p| layout.binding(&p.cpus)) {
            bind_memory(v, n);
            numa_of.insert(v.name.clone(), n);
            ev.for_vm(&v.name).info(format!("guest memory bound to NUMA node {n}, the node of its CPUs"));
        }
    }

    // Files first (outside the host lock: they can be slow on big templates).
    ev.phase(Phase::Uploading);
    let mut uploads = JoinSet::new();
    for v in &vms {
        for f in &v.files {
            let s = session.clone();
            let (content, path, mode) = (f.content.clone().into_bytes(), f.path.clone(), f.mode);
            let vm = v.name.clone();
            uploads.spawn(async move { s.upload(&content, &path, mode, true).await.map_err(|e| (vm, e)) });
        }
    }
    let t_upload = Instant::now();
    while let Some(r) = uploads.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err((vm, e))) => return Err(fail(format!("{vm}: upload failed: {e}"))),
            Err(e) => return Err(fail(format!("upload task: {e}"))),
        }
    }
    let upload_s = t_upload.elapsed().as_secs_f64();

    // Hugepages + QEMU start under the host lock.
    ev.phase(Phase::Hugepages);
    let lock = HostLock::acquire(&session).await?;
    let result = async {
        let changes = ensure_hugepages(&session, np, &vms, &numa_of).await?;
        ctx.tracker.node(&np.name, |n| n.hugepages = changes.clone());
        let tn = ctx.tracker.with(|t| t.nodes.get(&np.name).cloned()).expect("tracked");
        let m = manifest_for(&ctx.tracker, np, &tn, &ctx.run_id, &ctx.topology_path);
        write_manifest(&session, &np.run_dir, &m).await?;
        let mut starts = JoinSet::new();
        for v in &vms {
            let s = session.clone();
            let v = v.clone();
            let tracker = ctx.tracker.clone();
            let node = np.name.clone();
            let ev = ev.for_vm(&v.name);
            starts.spawn(async move {
                ev.phase(Phase::Starting);
                tracker.node(&node, |n| {
                    n.launched.push((
                        v.name.clone(),
                        v.paths.pidfile.clone(),
                        v.paths.qmp.clone(),
                        v.paths.run_dir.clone(),
                    ))
                });
                tracker.vm(&node, &v.name, |r| r.state = "starting".into());
                let t = Instant::now();
                let res = start_qemu(&s, &v).await;
                let dt = t.elapsed().as_secs_f64();
                tracker.vm(&node, &v.name, |r| {
                    r.timings.insert("start".into(), dt);
                });
                res.map(|pid| (v.name.clone(), pid)).map_err(|e| (v.name.clone(), e))
            });
        }
        let mut pids = BTreeMap::new();
        let mut first_err = None;
        while let Some(r) = starts.join_next().await {
            match r {
                Ok(Ok((vm, pid))) => {
                    pids.insert(vm, pid);
                }
                Ok(Err((vm, e))) => {
                    ctx.tracker.vm(&np.name, &vm, |r| {
                        r.state = "failed".into();
                        r.error = Some(e.to_string());
                    });
                    ev.for_vm(&vm).phase(Phase::Failed);
                    first_err.get_or_insert(fail(format!("{vm}: {e}")));
                }
                Err(e) => {
                    first_err.get_or_insert(fail(format!("start task: {e}")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(pids),
        }
    }
    .await;
    lock.release().await;
    let pids = result?;
    ev.phase(Phase::Booting);

    // Readiness and pinning, every VM concurrently.
    let mut waits = JoinSet::new();
    for v in vms {
        let s = session.clone();
        let tracker = ctx.tracker.clone();
        let node = np.name.clone();
        let ev = ev.for_vm(&v.name);
        let pid = pids[&v.name];
        tracker.vm(&node, &v.name, |r| {
            r.pid = Some(pid);
            r.timings.insert("upload".into(), upload_s);
        });
        waits.spawn(async move {
            let res = vm_ready(&s, &v, pid, &tracker, &node, &ev).await;
            (v.name.clone(), res)
        });
    }
    let mut first_err = None;
    while let Some(r) = waits.join_next().await {
        match r {
            Ok((vm, Ok(()))) => ctx.tracker.vm(&np.name, &vm, |r| r.state = "ready".into()),
            Ok((vm, Err(e))) => {
                let tail = match &e {
                    UpError::Guest { tail, .. } => tail.clone(),
                    _ => vec![],
                };
                ctx.tracker.vm(&np.name, &vm, |r| {
                    r.state = "failed".into();
                    r.error = Some(e.to_string());
                    r.serial_tail = tail.clone();
                });
                ev.for_vm(&vm).phase(Phase::Failed);
                let mut msg = format!("{vm}: {e}");
                if !tail.is_empty() {
                    msg.push_str("\n    last serial lines:\n");
                    for l in &tail {
                        msg.push_str(&format!("    | {l}\n"));
                    }
                }
                first_err.get_or_insert(fail(msg));
                // Fail fast: the run is lost, stop waiting for the others.
                waits.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_err.get_or_insert(fail(format!("wait task: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            ev.phase(Phase::Ready);
            Ok(())
        }
    }
}

/// The `qemu-system-*` path of a node's VMs (for the KVM probe).
fn qemu_bin(vms: &[VmPlan]) -> String {
    vms.first().map(|v| v.argv[0].clone()).unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// Rewrite a KVM plan for TCG: no `-enable-kvm`, a TCG-valid `-cpu`, `accel=tcg`.
pub fn switch_to_tcg(v: &mut VmPlan) {
    if let Some(i) = v.accel_args.cpu_value
        && v.argv[i] == "host"
    {
        v.argv[i] = "max".into();
    }
    if let Some(i) = v.accel_args.machine_value {
        v.argv[i] = v.argv[i].replace("accel=kvm", "accel=tcg");
    }
    if let Some(i) = v.accel_args.enable_kvm {
        if v.argv[i] == "-enable-kvm" {
            v.argv.remove(i);
            // Indexes after the removed one shift left.
            for idx in [&mut v.accel_args.cpu_value, &mut v.accel_args.machine_value].into_iter().flatten() {
                if *idx > i {
                    *idx -= 1;
                }
            }
            for l in v.host_lookups.iter_mut() {
                if l.argv_index > i {
                    l.argv_index -= 1;
                }
            }
        }
        v.accel_args.enable_kvm = None;
    }
}

/// A `flock` on [`HOST_LOCK`] held by a remote process for as long as our channel stays open.
struct HostLock {
    child: crate::ssh::RemoteChild,
}

impl HostLock {
    async fn acquire(session: &Session) -> Result<HostLock, UpError> {
        let script =
            format!("mkdir -p /run/lock && exec flock {} sh -c 'echo locked; exec cat >/dev/null'", quote(HOST_LOCK));
        let mut child = session.spawn(&RemoteCommand::sh(script).sudo()).await?;
        let mut seen = Vec::new();
        let wait = async {
            while let Some(ev) = child.next().await {
                match ev {
                    crate::ssh::ChildEvent::Stdout(b) => {
                        seen.extend_from_slice(&b);
                        if seen.windows(6).any(|w| w == b"locked") {
                            return Ok(());
                        }
                    }
                    crate::ssh::ChildEvent::Stderr(b) => seen.extend_from_slice(&b),
                    crate::ssh::ChildEvent::Exit(_) => break,
                }
            }
            Err(fail(format!(
                "could not take the hugepage lock {HOST_LOCK}: {}",
                String::from_utf8_lossy(&seen).trim()
            )))
        };
        match tokio::time::timeout(Duration::from_secs(300), wait).await {
            Ok(Ok(())) => Ok(HostLock { child }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(fail(format!("waited 300s for the hugepage lock {HOST_LOCK} (another run holds it)"))),
        }
    }
    async fn release(mut self) {
        let _ = self.child.close_stdin().await;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while self.child.next().await.is_some() {} }).await;
    }
}

/// Check every page size (and, for VMs bound to a NUMA node, that node's pool) the node's VMs
/// use; allocate the shortfall where allowed.
async fn ensure_hugepages(
    session: &Session,
    np: &NodePlan,
    vms: &[VmPlan],
    numa_of: &BTreeMap<String, u32>,
) -> Result<Vec<HugepageChange>, UpError> {
    let mounts: Vec<&str> = np.hugepages.iter().map(|h| h.mount.as_str()).collect();
    let out = session.run_ok(&RemoteCommand::sh(hugepages::probe_script(&mounts))).await?;
    let st = hugepages::parse_probe(&out.stdout_str()).map_err(fail)?;
    let mut needs: BTreeMap<(PageSize, Option<u32>), u64> = BTreeMap::new();
    for v in vms {
        *needs.entry((v.page_size, numa_of.get(&v.name).copied())).or_default() += v.mem_mib / v.page_size.mib();
    }
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for ((size, numa), pages) in needs {
        let mount = np.hugepages.iter().find(|h| h.size == size).map(|h| h.mount.clone()).unwrap_or_default();
        let short = st.available_on(size, numa).map(|a| pages.saturating_sub(a));
        let mounted = st.mounts.get(&mount).map(String::as_str) == Some("hugetlbfs");
        if short == Some(0) && mounted {
            continue;
        }
        let on = numa.map(|n| format!(" on NUMA node {n}")).unwrap_or_default();
        if !np.allocate_hugepages {
            let what = match short {
                None => format!("the host has no {} hugepage pool{on}", size.as_str()),
                Some(0) => String::new(),
                Some(n) => {
                    format!("{n} more {} hugepages needed{on} ({pages} needed, {} available)", size.as_str(), pages - n)
                }
            };
            let mnt = if mounted { String::new() } else { format!("{mount} is not a hugetlbfs mount") };
            problems.push([what, mnt].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; "));
            continue;
        }
        let out = session.run(&RemoteCommand::sh(hugepages::allocate_script(size, pages, &mount, numa)).sudo()).await?;
        if !out.success() {
            return Err(fail(format!("hugepage allocation failed: {}", out.stderr_str().trim())));
        }
        changes.push(hugepages::parse_allocation(size, &mount, numa, &out.stdout_str()).map_err(fail)?);
    }
    if !problems.is_empty() {
        return Err(fail(format!(
            "{} (set `hugepages: {{allocate: true}}` on the node to let harness allocate them)",
            problems.join("; ")
        )));
    }
    Ok(changes)
}

/// Bind a VM's guest RAM to NUMA node `node` (the node of its pinned CPUs).
pub fn bind_memory(v: &mut VmPlan, node: u32) {
    if let Some(a) = v.argv.iter_mut().find(|a| a.starts_with("memory-backend-file,")) {
        a.push_str(&format!(",host-nodes={node},policy=bind"));
    }
}

async fn start_qemu(session: &Session, v: &VmPlan) -> Result<u32, UpError> {
    let out = session.run(&RemoteCommand::new(v.argv.clone()).sudo().timeout(Duration::from_secs(300))).await?;
    if !out.success() {
        let err = out.stderr_str();
        return Err(fail(format!(
            "qemu failed to start (exit {}): {}",
            out.status.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            err.trim()
        )));
    }
    let out = session.run_ok(&RemoteCommand::new(["cat", &v.paths.pidfile]).sudo()).await?;
    out.stdout_str().trim().parse::<u32>().map_err(|_| fail(format!("unreadable pidfile {}", v.paths.pidfile)))
}

async fn vm_ready(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    tracker: &Tracker,
    node: &str,
    ev: &EventSink,
) -> Result<(), UpError> {
    let deadline = tokio::time::Instant::now() + v.readiness.timeout;
    let t0 = Instant::now();
    ev.phase(Phase::Booting);
    if !v.readiness.ready_markers.is_empty() {
        wait_serial(session, v, pid, deadline).await?;
    }
    let boot = t0.elapsed().as_secs_f64();
    tracker.vm(node, &v.name, |r| {
        r.timings.insert("boot".into(), boot);
    });
    // The guest agent (QGA socket) and pinning (QMP socket) are independent: do both at once.
    let agent = async {
        if !v.readiness.qga {
            return Ok(());
        }
        ev.phase(Phase::Agent);
        let t = Instant::now();
        let ifaces = qga_ready(session, v, deadline).await?;
        let dt = t.elapsed().as_secs_f64();
        tracker.vm(node, &v.name, |r| {
            r.timings.insert("agent".into(), dt);
            r.guest_interfaces = ifaces;
        });
        Ok::<(), UpError>(())
    };
    let pinning = async {
        let Some(pin) = &v.pinning else { return Ok(()) };
        ev.phase(Phase::Pinning);
        let t = Instant::now();
        let pinned = pin_vcpus(session, v, pid, &pin.cpus, pin.sched == Sched::Rr).await?;
        let dt = t.elapsed().as_secs_f64();
        tracker.vm(node, &v.name, |r| {
            r.timings.insert("pin".into(), dt);
            r.pinned = pinned;
        });
        Ok::<(), UpError>(())
    };
    let (a, p) = tokio::join!(agent, pinning);
    a?;
    p?;
    let total = t0.elapsed().as_secs_f64();
    tracker.vm(node, &v.name, |r| {
        r.timings.insert("total".into(), total);
    });
    ev.phase(Phase::Ready);
    Ok(())
}

/// Follow the serial log as a stream (`tail -F` from byte 0, ending when QEMU exits) until a
/// ready or failure marker appears anywhere in it.
async fn wait_serial(session: &Session, v: &VmPlan, pid: u32, deadline: tokio::time::Instant) -> Result<(), UpError> {
    let cmd = RemoteCommand::new(["tail", "-c", "+0", "-F", "-s", "0.2", &format!("--pid={pid}"), &v.paths.serial_log])
        .sudo()
        .timeout(v.readiness.timeout + Duration::from_secs(30));
    let mut child = session.spawn(&cmd).await?;
    let mut watch = SerialWatch::new(v.readiness.ready_markers.clone(), v.readiness.fail_markers.clone());
    let result = loop {
        let ev = match tokio::time::timeout_at(deadline, child.next()).await {
            Ok(ev) => ev,
            Err(_) => {
                break Err(UpError::Guest {
                    message: format!("not ready after {:?} (boot_timeout)", v.readiness.timeout),
                    tail: watch.tail(),
                });
            }
        };
        match ev {
            Some(crate::ssh::ChildEvent::Stdout(b)) => match watch.feed(&b) {
                Some(Verdict::Ready { .. }) => break Ok(()),
                Some(Verdict::Failed { line, .. }) => {
                    break Err(UpError::Guest {
                        message: format!("guest failed: {}", line.trim()),
                        tail: watch.tail(),
                    });
                }
                None => {}
            },
            Some(crate::ssh::ChildEvent::Stderr(_)) => {}
            Some(crate::ssh::ChildEvent::Exit(_)) | None => {
                break Err(UpError::Guest { message: "qemu exited during boot".into(), tail: watch.tail() });
            }
        }
    };
    let _ = child.kill().await;
    result
}

/// Sync with the guest agent over one socat bridge (re-opened after each timed-out attempt, as
/// the QGA protocol requires), then map guest interfaces to our NICs by MAC.
async fn qga_ready(
    session: &Session,
    v: &VmPlan,
    deadline: tokio::time::Instant,
) -> Result<Vec<GuestInterfaceRecord>, UpError> {
    let path = v.paths.qga.clone().ok_or_else(|| fail("qga requested but no qga socket planned"))?;
    let mut last_err = String::new();
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(format!("guest agent did not answer before boot_timeout: {last_err}")));
        }
        let mut bridge = Bridge::unix_socket(session, &path).await?;
        let mut qga = Qga::new(bridge.stream());
        match qga.sync(Duration::from_secs(3)).await {
            Ok(()) => {
                let ifaces = qga
                    .network_interfaces(Duration::from_secs(10))
                    .await
                    .map_err(|e| fail(format!("guest-network-get-interfaces: {e}")))?;
                drop(qga);
                bridge.close().await;
                return Ok(ifaces
                    .into_iter()
                    .map(|i| {
                        let nic = v
                            .nics
                            .iter()
                            .find(|n| {
                                n.mac.is_some()
                                    && n.mac.as_deref().map(str::to_ascii_lowercase)
                                        == i.mac.as_deref().map(str::to_ascii_lowercase)
                            })
                            .map(|n| n.id.clone());
                        GuestInterfaceRecord { name: i.name, mac: i.mac, ips: i.ips, nic }
                    })
                    .collect());
            }
            Err(e) => {
                last_err = e.to_string();
                drop(qga);
                bridge.close().await;
            }
        }
    }
}

/// vCPU thread ids in vCPU order from QMP `query-cpus-fast` (fallback: thread names), then
/// taskset/chrt in one round trip, read back.
async fn pin_vcpus(
    session: &Session,
    v: &VmPlan,
    pid: u32,
    cpus: &[u32],
    rr: bool,
) -> Result<Vec<PinnedThread>, UpError> {
    let mut threads: Vec<(u32, u32)> = Vec::new();
    if let Ok(mut bridge) = Bridge::unix_socket(session, &v.paths.qmp).await {
        if let Ok(mut qmp) = Qmp::connect(bridge.stream(), Duration::from_secs(5)).await
            && let Ok(t) = qmp.vcpu_threads().await
        {
            threads = t.into_iter().map(|t| (t.cpu_index, t.thread_id)).collect();
        }
        bridge.close().await;
    }
    if threads.len() != cpus.len() {
        let out = session.run_ok(&RemoteCommand::sh(process::threads_script(pid)).sudo()).await?;
        threads = process::parse_vcpu_threads(&out.stdout_str());
    }
    if threads.len() != cpus.len() {
        return Err(fail(format!("found {} vCPU threads, expected {} to pin", threads.len(), cpus.len())));
    }
    let plan: Vec<(u32, u32, u32)> = threads.iter().zip(cpus).map(|((vcpu, tid), cpu)| (*vcpu, *tid, *cpu)).collect();
    let out = session.run(&RemoteCommand::sh(process::pin_script(&plan, rr)).sudo()).await?;
    if !out.success() {
        return Err(fail(format!("pinning failed: {}", out.stderr_str().trim())));
    }
    let pinned = process::parse_pins(&out.stdout_str());
    for (p, cpu) in pinned.iter().zip(cpus) {
        if p.affinity != cpu.to_string() || (rr && p.policy != "SCHED_RR") {
            return Err(fail(format!(
                "vCPU {} (tid {}) reads back affinity {} policy {}, wanted {}{}",
                p.vcpu,
                p.tid,
                p.affinity,
                p.policy,
                cpu,
                if rr { " SCHED_RR" } else { "" }
            )));
        }
    }
    Ok(pinned)
}

fn manifest_for(tracker: &Tracker, np: &NodePlan, tn: &TrackedNode, run_id: &str, topology: &str) -> Manifest {
    let vms = np
        .vms
        .iter()
        .map(|v| {
            let r = tracker.with(|t| t.vms.get(&(np.name.clone(), v.name.clone())).cloned());
            VmRecord {
                name: v.name.clone(),
                qemu_id: v.qemu_id,
                run_dir: v.paths.run_dir.clone(),
                pidfile: v.paths.pidfile.clone(),
                serial_log: v.paths.serial_log.clone(),
                qmp: v.paths.qmp.clone(),
                qga: v.paths.qga.clone(),
                state: r.as_ref().map(|r| r.state.clone()).unwrap_or_else(|| "starting".into()),
                pid: r.as_ref().and_then(|r| r.pid),
                pinned: r.as_ref().map(|r| r.pinned.clone()).unwrap_or_default(),
                guest_interfaces: r.map(|r| r.guest_interfaces).unwrap_or_default(),
            }
        })
        .collect();
    Manifest {
        format: super::manifest::FORMAT,
        run_id: run_id.into(),
        node: np.name.clone(),
        host: np.host.clone(),
        topology: topology.into(),
        started_by: super::started_by(),
        created_unix: super::now_unix(),
        run_dir: np.run_dir.clone(),
        vms,
        hugepages: tn.hugepages.clone(),
    }
}

async fn write_manifest(session: &Session, run_dir: &str, m: &Manifest) -> Result<(), SshError> {
    let bytes = serde_json::to_vec_pretty(m).expect("serialisable");
    session.upload(&bytes, &super::manifest::path(run_dir, &m.node), 0o644, true).await
}

/// Stop everything the tracker says this run started, on every node, then give back hugepages
/// and remove the run directories.
pub async fn cleanup(tracker: &Tracker, grace: Duration, events: &EventSink) {
    let mut set = JoinSet::new();
    for (name, tn) in tracker.nodes() {
        let ev = events.for_node(&name);
        set.spawn(async move {
            for (vm, ..) in &tn.launched {
                ev.for_vm(vm).phase(Phase::Stopping);
            }
            let mut stops = JoinSet::new();
            for (vm, pidfile, qmp, dir) in tn.launched.clone() {
                let s = tn.session.clone();
                let ev = ev.for_vm(&vm);
                stops.spawn(async move {
                    let script = process::stop_script(&pidfile, &qmp, &dir, grace.as_secs() as u32);
                    match s.run(&RemoteCommand::sh(script).sudo().timeout(grace + Duration::from_secs(30))).await {
                        Ok(o) if o.success() => ev.phase(Phase::Stopped),
                        Ok(o) => ev.warn(format!("stop failed: {}", o.stderr_str().trim())),
                        Err(e) => ev.warn(format!("stop failed: {e}")),
                    }
                });
            }
            while stops.join_next().await.is_some() {}
            let node = super::down::NodeRelease {
                node: &name,
                run_root: &tn.run_root,
                run_dir: &tn.run_dir,
                vm_dirs: &tn.vm_dirs,
                changes: &tn.hugepages,
            };
            super::down::release_node(&tn.session, &node, &ev).await;
        });
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixture::{dut, topology, vm};
    use crate::plan::{self, PlanOptions};
    use crate::templates::Templates;

    fn planned(accel: Accel) -> VmPlan {
        let mut node = dut("DUT1");
        node.qemu.accel = accel;
        let mut v = vm("DUT1", 1);
        v.cpus = Some(vec![2, 3]);
        let t = Templates::embedded();
        let p =
            plan::build(&topology(vec![node], vec![v]), &PlanOptions { run_id: "r".into(), templates: &t }).unwrap();
        p.nodes[0].vms[0].clone()
    }

    #[test]
    fn switch_to_tcg_rewrites_exactly_the_kvm_arguments() {
        let mut v = planned(Accel::Auto);
        assert!(v.argv.contains(&"-enable-kvm".to_string()));
        let kernel_before = v.argv[v.host_lookups[0].argv_index].clone();
        switch_to_tcg(&mut v);
        assert!(!v.argv.contains(&"-enable-kvm".to_string()));
        let cpu = v.argv.iter().position(|a| a == "-cpu").unwrap();
        assert_eq!(v.argv[cpu + 1], "max");
        let machine = v.argv.iter().position(|a| a == "-machine").unwrap();
        assert!(v.argv[machine + 1].starts_with("pc,accel=tcg,"), "{}", v.argv[machine + 1]);
        // Indexes recorded in the plan still point at the same values after the removal.
        assert_eq!(v.argv[v.host_lookups[0].argv_index], kernel_before);
        assert_eq!(v.argv[v.accel_args.cpu_value.unwrap()], "max");
        // A TCG plan is left as it is.
        let mut t = planned(Accel::Tcg);
        let before = t.argv.clone();
        switch_to_tcg(&mut t);
        assert_eq!(t.argv, before);
    }

    #[test]
    fn bind_memory_pins_guest_ram_to_the_node() {
        let mut v = planned(Accel::Tcg);
        bind_memory(&mut v, 1);
        let mem = v.argv.iter().find(|a| a.starts_with("memory-backend-file,")).unwrap();
        assert!(mem.ends_with(",share=on,prealloc=on,host-nodes=1,policy=bind"), "{mem}");
    }
}
