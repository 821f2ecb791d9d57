//! The plan: exactly what `harness up` will do on each node, computed without any I/O.
//!
//! `harness render` prints it; `run::up` executes it. Everything a person needs to reproduce a
//! run by hand is here: the qemu argv, every file with its bytes, and every remote path.

use std::time::Duration;

use serde::Serialize;

use crate::topology::{Accel, Arch, PageSize, Sched};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub run_id: String,
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    /// Everything the facts left open, over all nodes.
    pub fn unresolved(&self) -> impl Iterator<Item = &Unresolved> {
        self.nodes.iter().flat_map(|n| n.unresolved.iter())
    }
}

/// The accelerator a node's VMs run under: decided by the plan from the topology's `accel` and,
/// for `auto`, the host's KVM probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

/// A decision the plan could not make from the facts it had: what it shows instead, and how
/// `up` decides on the host. `render` lists these; a plan made by `up` has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unresolved {
    pub node: String,
    /// The VM it concerns, if not the whole node.
    pub vm: Option<String>,
    /// `accel`, `kernel`, `initrd`, `numa`.
    pub what: String,
    /// What the rendered plan shows in its place.
    pub shown: String,
    /// How `up` decides it.
    pub up_decides: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub host: String,
    pub arch: Arch,
    /// As written in the topology (`auto` stays visible next to the choice).
    pub accel_requested: Accel,
    pub accel: AccelChoice,
    /// `<run_root>/<run_id>`: everything this run creates on the node lives below it.
    pub run_dir: String,
    /// Pages needed per size and NUMA node (summed over the node's VMs), with the mount each
    /// size uses. The one place hugepage needs are computed.
    pub hugepages: Vec<HugepageNeed>,
    pub allocate_hugepages: bool,
    pub vms: Vec<VmPlan>,
    /// Decisions left open because facts were missing (empty for a plan made with full facts).
    pub unresolved: Vec<Unresolved>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugepageNeed {
    pub size: PageSize,
    /// The NUMA node whose pool must hold them (VMs bound there), or `None` for the global pool.
    pub numa: Option<u32>,
    pub pages: u64,
    pub mount: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmPlan {
    pub name: String,
    pub qemu_id: u32,
    /// Full argv, `argv[0]` = `<bin_dir>/qemu-system-<arch>`. Never joined into a shell string here.
    pub argv: Vec<String>,
    pub files: Vec<PlannedFile>,
    pub paths: VmPaths,
    pub readiness: Readiness,
    pub pinning: Option<Pinning>,
    /// Guest NICs in PCI-slot order, for mapping QGA's view back to the topology.
    pub nics: Vec<PlannedNic>,
    pub mem_mib: u64,
    pub page_size: PageSize,
    /// NUMA node the guest RAM is bound to (`host-nodes=N,policy=bind`), if any.
    pub numa: Option<u32>,
    /// How long the start command may take (QEMU blocks before daemonizing while a vhost-user
    /// server socket waits for its client).
    #[serde(with = "secs")]
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    StartupConf,
    Exec,
    Init,
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub role: FileRole,
    pub path: String,
    /// Octal string in JSON (`"0644"`).
    #[serde(serialize_with = "mode_octal")]
    pub mode: u32,
    pub content: String,
}

fn mode_octal<S: serde::Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{m:04o}"))
}

#[derive(Debug, Clone, Serialize)]
pub struct VmPaths {
    pub run_dir: String,
    pub pidfile: String,
    pub serial_log: String,
    pub qmp: String,
    pub qga: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Any of these anywhere in the serial stream means ready.
    pub ready_markers: Vec<Marker>,
    /// Any of these means the guest failed; the wait ends at once.
    pub fail_markers: Vec<Marker>,
    /// Also require the guest agent to answer `guest-sync-delimited`.
    pub qga: bool,
    #[serde(with = "secs")]
    pub timeout: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A serial-log marker: one line that contains every one of these substrings (CSIT's VPP check is
/// `vpp ` and `built by` on the same line). Serialised as the list of substrings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Marker {
    pub all: Vec<String>,
}

impl Marker {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(parts: I) -> Self {
        Marker { all: parts.into_iter().map(Into::into).collect() }
    }
    pub fn matches(&self, line: &str) -> bool {
        self.all.iter().all(|p| line.contains(p.as_str()))
    }
}

/// For messages: `"login:"`, or `"vpp " and "built by" on one line`.
impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.all.iter().map(|p| format!("{p:?}")).collect();
        match parts.len() {
            0 | 1 => write!(f, "{}", parts.join("")),
            _ => write!(f, "{} on one line", parts.join(" and ")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Pinning {
    /// Host CPU per vCPU, vCPU order.
    pub cpus: Vec<u32>,
    pub sched: Sched,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedNic {
    /// `vhost1`, `vfio1`, `mgmt` ...
    pub id: String,
    pub kind: String,
    /// Guest MAC, lower case (absent for vfio-pci: the device brings its own).
    pub mac: Option<String>,
    /// Guest PCI address, e.g. `0000:00:06.0`.
    pub guest_pci: Option<String>,
    /// vhost-user: the host socket, and whether QEMU is its server (then QEMU waits at start
    /// until the vswitch connects) or the client (the socket must exist before QEMU starts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<bool>,
}
