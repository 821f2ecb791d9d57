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

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub host: String,
    pub arch: Arch,
    pub accel: Accel,
    /// `<run_root>/<run_id>`: everything this run creates on the node lives below it.
    pub run_dir: String,
    /// Pages needed per size (summed over the node's VMs), with the mount each size uses.
    pub hugepages: Vec<HugepageNeed>,
    pub allocate_hugepages: bool,
    pub vms: Vec<VmPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HugepageNeed {
    pub size: PageSize,
    pub pages: u64,
    pub mount: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmPlan {
    pub name: String,
    pub qemu_id: u32,
    /// Full argv, `argv[0]` = `<bin_dir>/qemu-system-<arch>`. Never joined into a shell string here.
    pub argv: Vec<String>,
    /// argv entries whose value is a path *prefix* to resolve on the host (newest match), as CSIT's
    /// `ls -1 /opt/boot/vmlinuz* | tail -1`, but failing loudly when nothing matches.
    pub host_lookups: Vec<HostLookup>,
    /// Index in `argv` of the accelerator-dependent arguments, rewritten by `run` when
    /// `accel: auto` resolves to TCG (see [`AccelArgs`]).
    pub accel_args: AccelArgs,
    pub files: Vec<PlannedFile>,
    pub paths: VmPaths,
    pub readiness: Readiness,
    pub pinning: Option<Pinning>,
    /// Guest NICs in PCI-slot order, for mapping QGA's view back to the topology.
    pub nics: Vec<PlannedNic>,
    pub mem_mib: u64,
    pub page_size: PageSize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostLookup {
    pub argv_index: usize,
    /// What the value is, for messages (`kernel`, `initrd`).
    pub what: String,
    /// Prefix: an exact path wins; otherwise the newest (version-sorted) `prefix*` match.
    pub prefix: String,
    /// Text around the value inside the argv element (e.g. `-kernel` takes it whole: both empty).
    pub before: String,
    pub after: String,
}

/// Where in argv the accelerator shows, so `run` can switch a KVM plan to TCG after probing.
#[derive(Debug, Clone, Serialize)]
pub struct AccelArgs {
    /// Index of `-enable-kvm` if present.
    pub enable_kvm: Option<usize>,
    /// Index of the `-cpu` value (`host` under KVM).
    pub cpu_value: Option<usize>,
    /// Index of the `-machine` value (contains `accel=kvm` or `accel=tcg`).
    pub machine_value: Option<usize>,
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
}
