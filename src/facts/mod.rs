//! Host facts: everything `up` learns about a node before it starts anything, in one value.
//!
//! This is the single place where knowledge of a host enters planning. `check` and `up` gather
//! it in one round trip ([`crate::remote::facts`]); `check --save-facts DIR` and every `up` run
//! record write it as `DIR/<node>.json` plus the raw `lscpu -p` text as `DIR/<node>.lscpu`
//! ([`store`]); `render --facts DIR` reads it back, so the plan `render` prints is the plan `up`
//! runs. Every fact is optional: `None` means "not known" (a node given only as a `.lscpu` file
//! knows nothing else), and the planner says what stays unresolved instead of guessing.

pub mod lscpu;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use lscpu::{CpuLayout, LscpuRow};

/// On-disk format version of [`HostFacts`] JSON.
pub const FORMAT: u32 = 1;

/// KVM as found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Kvm {
    /// The probe ran guest code under KVM.
    Usable,
    /// `/dev/kvm` exists but the probe failed (QEMU's first error line).
    Broken(String),
    /// `/dev/kvm` exists; no probe possible (why).
    Unverified(String),
    Absent,
}

/// The QEMU binary a node's VMs use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuFacts {
    pub path: String,
    /// First line of `qemu-system-* --version`, only when it ran cleanly and names QEMU; `None`
    /// when the binary is missing or cannot run.
    pub version: Option<String>,
    /// Why an executable at `path` does not count as QEMU: `--version`'s exit status and first
    /// line (e.g. a missing shared library).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `sudo -n` as the login user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudoFacts {
    pub ok: bool,
    /// sudo's complaint when `sudo -n true` failed.
    pub error: Option<String>,
}

/// One hugepage pool (`/sys/kernel/mm/hugepages/hugepages-<kb>kB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub size_kb: u64,
    pub nr: u64,
    pub free: u64,
    pub resv: u64,
    pub surplus: u64,
    pub overcommit: u64,
}

impl Pool {
    /// Pages a new mapping can get: free persistent pages not reserved by someone else, plus
    /// the overcommit headroom not yet used by surplus pages.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.resv) + self.overcommit.saturating_sub(self.surplus)
    }
}

/// Hugepages of one size on one NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaPool {
    pub node: u32,
    pub size_kb: u64,
    pub nr: u64,
    pub free: u64,
    pub surplus: u64,
}

/// Hugepage pools (global and per NUMA node) and hugetlbfs mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HugepageFacts {
    /// Global pools by page size in kB.
    pub pools: BTreeMap<u64, Pool>,
    pub numa: Vec<NumaPool>,
    /// Filesystem type per mount point asked about (`hugetlbfs`, `tmpfs`, `missing`).
    pub mounts: BTreeMap<String, String>,
}

/// Everything known about one node. See the module docs for what `None` means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostFacts {
    #[serde(default)]
    pub format: u32,
    /// `uname -m`.
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub sudo: Option<SudoFacts>,
    #[serde(default)]
    pub qemu: Option<QemuFacts>,
    /// `None`: not probed (e.g. `up` with an explicit `accel`, where it cannot matter).
    #[serde(default)]
    pub kvm: Option<Kvm>,
    /// `lscpu -p` output, verbatim.
    #[serde(default)]
    pub lscpu: Option<String>,
    #[serde(default)]
    pub cpus_online: Option<Vec<u32>>,
    #[serde(default)]
    pub cpus_isolated: Option<Vec<u32>>,
    /// NUMA nodes present under `/sys/devices/system/node`.
    #[serde(default)]
    pub numa_nodes: Option<Vec<u32>>,
    #[serde(default)]
    pub hugepages: Option<HugepageFacts>,
    /// Kernel/initrd prefix → the file `up` uses (an exact file, else the newest `prefix*`
    /// match); `None` = nothing matches.
    #[serde(default)]
    pub lookups: Option<BTreeMap<String, Option<String>>>,
    /// Tool → path (`None` = not found).
    #[serde(default)]
    pub tools: Option<BTreeMap<String, Option<String>>>,
}

impl HostFacts {
    /// Facts that hold only a CPU layout (a node given as a bare `.lscpu` file).
    pub fn from_lscpu(text: String) -> Self {
        HostFacts { format: FORMAT, lscpu: Some(text), ..HostFacts::default() }
    }

    /// The CPU layout, when `lscpu -p` is known and parses.
    pub fn cpu_layout(&self) -> Option<Result<CpuLayout, lscpu::LscpuError>> {
        self.lscpu.as_deref().map(CpuLayout::parse)
    }
}

/// Facts per node name, as `render --facts` and `up` hand them to the planner.
pub type FactsByNode = BTreeMap<String, HostFacts>;
