//! NF chains: CSIT's expansion of `nf_chains` × `nf_nodes` VMs on one DUT into per-VM CPUs,
//! vhost-user sockets, MACs and next-hop template variables.
//!
//! This reproduces `QemuManager.construct_vms_on_node` and `CpuUtils.cpu_slice_of_list_for_nf`
//! (see `csit-chains.md`): chains outer, nodes inner, `q = (c-1)*N + n`, VM `{node}_{q}`,
//! main-thread cores shared by `nf_mtcr = 2` VMs, data-plane cores shared by `nf_dtcr` VMs,
//! `skip = 1 system + 1 vswitch main + vs_dtc`, and the same "odd round goes to the sibling
//! thread" arithmetic. Two VMs may share a main-thread CPU, as in CSIT.
//!
//! # Differences from CSIT
//!
//! 1. `nf_chains * nf_nodes > 255` is refused: `q` is written as two hex digits in the MACs.
//! 2. **Siblings come from lscpu's `Core` column.** CSIT takes the NUMA node's CPU list `L` in
//!    `lscpu -p` order and assumes its second half holds the SMT siblings of its first half:
//!    the sibling of `L[i]` is `L[i + len(L)/2]`, and "SMT used = off" keeps `L[:len(L)/2]`.
//!    Here `L` is first re-ordered by core: `V = F ++ S`, where `F` is the first CPU of each
//!    core (cores keyed by `(Socket, Core)`, in order of first appearance in `L`) and `S` the
//!    remaining threads, each core's second thread in `F`'s order (then third threads, ...).
//!    CSIT's arithmetic then runs unchanged on `V`, so `V[i + len(V)/2]` is the CPU sharing
//!    `V[i]`'s core, and the "first half" is one CPU per core.
//!    - Intel-style numbering (siblings `k` and `k + cores`): `V == L`, identical to CSIT.
//!    - Adjacent numbering (`0/1`, `2/3` share a core): `F = [0, 2, 4, ...]`,
//!      `S = [1, 3, 5, ...]`; a VM's "sibling" CPU is the other thread of its own core, where
//!      CSIT would hand out a thread of an unrelated core.
//!    - No core with two threads (the Core column shows no SMT): `V == L`, so even where
//!      CSIT's cache-id rule claims SMT on such a host (e.g. a VM whose lscpu prints equal or
//!      no cache ids) the result is CSIT's.
//!
//!    The host counts as having SMT when CSIT's cache-id rule ([`lscpu::csit_smt`]) **or** the
//!    Core column ([`lscpu::smt`]) says so; the second catches adjacent numbering, which CSIT's
//!    rule (first-half cache ids repeated in the second half) misses. `smt:` overrides whether
//!    SMT is *used*; `smt: true` on a host without SMT is an error, as in CSIT.
//! 3. CSIT's capacity check counts `dt_req` data cores even when each VM takes `nf_dtc > 1`, so
//!    for large chains its slices run past the first half (handing out siblings of the system
//!    and vswitch CPUs) or off the end of the list (VMs silently get fewer vCPUs). Here the
//!    check is `skip + mt_req + dt_req * nf_dtc <= available`, which is CSIT's check whenever
//!    `nf_dtc` is 1 or 0.5 and refuses exactly the placements CSIT would get wrong.
//!
//! Everything else (error cases, `nf_dtc: 0.5` needing SMT, default NUMA node from the DUT's
//! test interfaces, MAC and next-hop wiring, `testpmd_mac` next hops from host ports
//! `vhost{2q-1}`/`vhost{2q}`) is CSIT's.

use std::collections::BTreeMap;

use serde::Serialize;

use super::cx::Cx;
use super::yaml::{self, Value, join};
use crate::facts::lscpu::{self, LscpuRow};

/// Data-plane cores per VM: whole physical cores, or one SMT thread (CSIT's `nf_dtc: 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NfDtc {
    Cores(u32),
    Half,
}

/// One `chains:` entry: CSIT's parameters of a chain test on one DUT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSpec {
    /// The DUT.
    pub node: String,
    /// `C`: number of chains.
    pub nf_chains: u32,
    /// `N`: VMs per chain.
    pub nf_nodes: u32,
    /// The VNF every VM runs (`vppip4_2vhostvr1024`, `testpmd_io`, `testpmd_mac`, ...).
    pub vnf: String,
    /// Physical cores of the host vswitch's data plane.
    pub vs_dtc: u32,
    pub nf_dtc: NfDtc,
    /// VMs sharing one data-plane core (default 1).
    pub nf_dtcr: u32,
    /// NUMA node to place on; `None`: the DUT's test interfaces' node (the caller's), else 0.
    pub numa_node: Option<u32>,
    /// Use both SMT threads; `None`: when the host has SMT.
    pub smt: Option<bool>,
    /// vhost-user queues per NIC (default 1).
    pub queues: u32,
    /// The traffic generator's port-1 and port-2 MACs (first VM's `vif1_mac`, last VM's `vif2_mac`).
    pub tg_macs: [String; 2],
    /// Where the vhost-user sockets live (default `/run/vpp`).
    pub socket_dir: String,
    /// `testpmd_mac` only, not a YAML key: the host vswitch's port MACs by CSIT port name
    /// (`vhost1`, `vhost2`, ...), e.g. from the DUT's `interfaces:` in the topology.
    pub host_port_macs: BTreeMap<String, String>,
}

impl ChainSpec {
    /// A spec with CSIT's defaults for everything optional.
    pub fn new(
        node: &str,
        nf_chains: u32,
        nf_nodes: u32,
        vnf: &str,
        vs_dtc: u32,
        nf_dtc: NfDtc,
        tg_macs: [&str; 2],
    ) -> ChainSpec {
        ChainSpec {
            node: node.to_string(),
            nf_chains,
            nf_nodes,
            vnf: vnf.to_string(),
            vs_dtc,
            nf_dtc,
            nf_dtcr: 1,
            numa_node: None,
            smt: None,
            queues: 1,
            tg_macs: tg_macs.map(str::to_string),
            socket_dir: DEFAULT_SOCKET_DIR.to_string(),
            host_port_macs: BTreeMap::new(),
        }
    }

    /// Number of VMs, `C * N`.
    pub fn vm_count(&self) -> u64 {
        u64::from(self.nf_chains) * u64::from(self.nf_nodes)
    }
}

pub const DEFAULT_SOCKET_DIR: &str = "/run/vpp";
/// CSIT's `nf_mtcr`: VMs sharing one main-thread core.
pub const NF_MTCR: u32 = 2;
/// CSIT's `Constants.CPU_CNT_SYSTEM + Constants.CPU_CNT_MAIN`.
pub const SKIP_SYSTEM_AND_MAIN: u32 = 2;
/// `q` is two hex digits in the MACs.
pub const MAX_CHAIN_VMS: u64 = 255;

/// What one VM of a chain gets; the caller applies the `vm:` template and these on top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainVm {
    /// `{node}_{q}`.
    pub name: String,
    pub qemu_id: u32,
    /// 1-based chain number `c`.
    pub chain: u32,
    /// 1-based position `n` in the chain.
    pub position: u32,
    /// Host CPU per vCPU, in vCPU order: main thread first, then the data plane.
    pub cpus: Vec<u32>,
    /// `{socket_dir}/sock-{q}-1`, `{socket_dir}/sock-{q}-2` (QEMU is the server).
    pub sockets: [String; 2],
    /// Guest NIC MACs `52:54:00:00:{q:02x}:01` / `:02`.
    pub macs: [String; 2],
    /// Template variables: `mac1`, `mac2`, `vif1_mac`, `vif2_mac`.
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("{node}: {what} must be at least 1")]
    Zero { node: String, what: &'static str },
    #[error(
        "{node}: {count} VMs in chains (nf_chains × nf_nodes); at most {MAX_CHAIN_VMS}, since qemu_id is written as two hex digits in the MACs 52:54:00:00:<qemu_id>:0x"
    )]
    TooManyVms { node: String, count: u64 },
    #[error("{node}: smt: true, but the host has no SMT (no two CPUs share a core)")]
    SmtNotEnabled { node: String },
    #[error("{node}: nf_dtc: 0.5 (one SMT thread per VM) needs SMT, which is {why}")]
    HalfCoreWithoutSmt { node: String, why: &'static str },
    #[error("{node}: no CPUs on NUMA node {numa} in lscpu -p")]
    NoCpus { node: String, numa: u32 },
    #[error(
        "{node}: not enough CPU cores on NUMA node {numa} for {vms} chain VMs: need {needed} cores ({breakdown}), {available} available{smt} ({cpus})"
    )]
    NotEnoughCpus {
        node: String,
        numa: u32,
        vms: u64,
        needed: u64,
        breakdown: String,
        available: u64,
        /// Formatted list of the available CPUs (one per core when SMT is used).
        cpus: String,
        smt: &'static str,
    },
    #[error("{node}: vnf testpmd_mac needs the MAC of host port {port} (DUT interface `{port}`)")]
    HostPortMac { node: String, port: String },
}

/// The host has SMT for chain placement: CSIT's cache-id rule or the Core column (module docs).
pub fn host_smt(rows: &[LscpuRow]) -> bool {
    lscpu::csit_smt(rows) || lscpu::smt(rows)
}

/// The NUMA node's CPUs re-ordered as `V = F ++ S` (module docs): first threads of each core,
/// then the other threads in the same core order. Equal to the lscpu order on Intel numbering.
pub fn node_cpu_order(rows: &[LscpuRow], numa: u32) -> Vec<u32> {
    let mut cores: Vec<((u32, u32), Vec<u32>)> = Vec::new();
    for r in rows.iter().filter(|r| r.node.unwrap_or(0) == numa) {
        let key = (r.socket, r.core);
        match cores.iter_mut().find(|(k, _)| *k == key) {
            Some((_, cpus)) => cpus.push(r.cpu),
            None => cores.push((key, vec![r.cpu])),
        }
    }
    let rounds = cores.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    (0..rounds).flat_map(|k| cores.iter().filter_map(move |(_, c)| c.get(k).copied())).collect()
}

/// Python's `list[a:b]` for `0 <= a`, `0 <= b`.
fn slice(v: &[u32], a: usize, b: usize) -> Vec<u32> {
    let a = a.min(v.len());
    let b = b.min(v.len()).max(a);
    v[a..b].to_vec()
}

fn mac(q: u64, nic: u8) -> String {
    format!("52:54:00:00:{q:02x}:{nic:02x}")
}

/// `0-3,8,10-11`.
fn cpu_ranges(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if j > i { format!("{}-{}", cpus[i], cpus[j]) } else { cpus[i].to_string() });
        i = j + 1;
    }
    if out.is_empty() { "none".to_string() } else { format!("CPUs {}", out.join(",")) }
}

/// Expand a chain spec on a host with `lscpu -p` rows `rows`. `interface_numa` is the NUMA node
/// of the DUT's first two (test) interfaces as CSIT's `get_interfaces_numa_node` gives it, if
/// known; `spec.numa_node` overrides it; otherwise node 0.
pub fn expand(spec: &ChainSpec, rows: &[LscpuRow], interface_numa: Option<u32>) -> Result<Vec<ChainVm>, ChainError> {
    check_counts(spec)?;
    let (list, smt_used) = cpu_list(spec, rows, interface_numa)?;
    let cpus = place(spec, &list, smt_used);
    wire(spec, cpus)
}

/// Zero counts and the 255-VM limit.
fn check_counts(spec: &ChainSpec) -> Result<(), ChainError> {
    let node = spec.node.clone();
    for (what, v) in [("nf_chains", spec.nf_chains), ("nf_nodes", spec.nf_nodes), ("nf_dtcr", spec.nf_dtcr)] {
        if v == 0 {
            return Err(ChainError::Zero { node, what });
        }
    }
    if spec.nf_dtc == NfDtc::Cores(0) {
        return Err(ChainError::Zero { node, what: "nf_dtc" });
    }
    let count = spec.vm_count();
    if count > MAX_CHAIN_VMS {
        return Err(ChainError::TooManyVms { node, count });
    }
    Ok(())
}

/// `CpuUtils.cpu_list_per_node` (on the core-ordered list, module docs) and the checks of
/// `cpu_slice_of_list_for_nf` that precede the slicing: the list `L` and whether SMT is used.
fn cpu_list(spec: &ChainSpec, rows: &[LscpuRow], interface_numa: Option<u32>) -> Result<(Vec<u32>, bool), ChainError> {
    let node = spec.node.clone();
    let smt_enabled = host_smt(rows);
    let smt_used = spec.smt.unwrap_or(smt_enabled);
    if smt_used && !smt_enabled {
        return Err(ChainError::SmtNotEnabled { node });
    }
    let numa = spec.numa_node.or(interface_numa).unwrap_or(0);
    let mut list = node_cpu_order(rows, numa);
    if list.is_empty() {
        return Err(ChainError::NoCpus { node, numa });
    }
    if smt_enabled && !smt_used {
        list.truncate(list.len() / 2);
    }
    if spec.nf_dtc == NfDtc::Half && !smt_used {
        let why = if smt_enabled { "turned off (smt: false)" } else { "not present on this host" };
        return Err(ChainError::HalfCoreWithoutSmt { node, why });
    }
    check_capacity(spec, &list, smt_used, numa)?;
    Ok((list, smt_used))
}

/// Data-plane CPUs per VM (`d`): `nf_dtc`, or 1 thread for `0.5`.
fn data_width(spec: &ChainSpec) -> u64 {
    match spec.nf_dtc {
        NfDtc::Cores(n) => u64::from(n),
        NfDtc::Half => 1,
    }
}

/// `skip + mt_req + dt_req * d <= available` (module docs, difference 3).
fn check_capacity(spec: &ChainSpec, list: &[u32], smt_used: bool, numa: u32) -> Result<(), ChainError> {
    let count = spec.vm_count();
    let d = data_width(spec);
    let mt_req = count.div_ceil(u64::from(NF_MTCR));
    let dt_req = count.div_ceil(u64::from(spec.nf_dtcr));
    let skip = u64::from(SKIP_SYSTEM_AND_MAIN) + u64::from(spec.vs_dtc);
    let available = if smt_used { list.len() / 2 } else { list.len() } as u64;
    let needed = skip + mt_req + dt_req * d;
    if needed <= available {
        return Ok(());
    }
    let mut sorted = list[..available as usize].to_vec();
    sorted.sort_unstable();
    let dtc = match spec.nf_dtc {
        NfDtc::Cores(n) => format!("{n}"),
        NfDtc::Half => "0.5".to_string(),
    };
    Err(ChainError::NotEnoughCpus {
        node: spec.node.clone(),
        numa,
        vms: count,
        needed,
        breakdown: format!(
            "1 system + 1 vswitch main + {} vswitch data + {mt_req} VM main (2 VMs per core) + {dt_req} × {d} VM data ({} VMs per core, nf_dtc {dtc})",
            spec.vs_dtc, spec.nf_dtcr
        ),
        available,
        cpus: cpu_ranges(&sorted),
        smt: if smt_used { " (one thread per core; siblings are used too)" } else { "" },
    })
}

/// `CpuUtils.cpu_slice_of_list_for_nf` for every VM in CSIT's order: host CPU per vCPU.
fn place(spec: &ChainSpec, list: &[u32], smt_used: bool) -> Vec<Vec<u32>> {
    let count = spec.vm_count() as usize;
    let sib = list.len() / 2;
    let half = spec.nf_dtc == NfDtc::Half;
    let d = data_width(spec) as usize;
    let mt_req = count.div_ceil(NF_MTCR as usize);
    let dt_req = count.div_ceil(spec.nf_dtcr as usize);
    let skip = SKIP_SYSTEM_AND_MAIN as usize + spec.vs_dtc as usize;
    (0..count)
        .map(|o| {
            let mut mt = skip + o % mt_req;
            let dt = skip + mt_req + (o % dt_req) * d;
            let mut data = slice(list, dt, dt + d);
            if smt_used {
                if (o / mt_req) % 2 == 1 {
                    mt += sib;
                }
                if !half {
                    data.extend(slice(list, dt + sib, dt + sib + d));
                } else if (o / dt_req) % 2 == 1 {
                    data = slice(list, dt + sib, dt + sib + d);
                }
            }
            let mut cpus = slice(list, mt, mt + 1);
            cpus.extend(data);
            cpus
        })
        .collect()
}

/// CSIT's `_c_default` wiring of VM `q = 1..` with host CPUs `cpus[q-1]`: name, sockets, MACs
/// and next hops. Public so that a chain placed by hand (every VM on the same CPUs) is wired
/// the same way.
pub fn wire(spec: &ChainSpec, cpus: Vec<Vec<u32>>) -> Result<Vec<ChainVm>, ChainError> {
    let n_nodes = spec.nf_nodes as usize;
    let dir = spec.socket_dir.trim_end_matches('/');
    let mut out = Vec::with_capacity(cpus.len());
    for (o, cpus) in cpus.into_iter().enumerate() {
        let q = o + 1;
        let (c, n) = (o / n_nodes + 1, o % n_nodes + 1);
        let q64 = q as u64;
        let macs = [mac(q64, 1), mac(q64, 2)];
        let (vif1, vif2) = if spec.vnf == "testpmd_mac" {
            let port = |i: usize| {
                let p = format!("vhost{i}");
                spec.host_port_macs
                    .get(&p)
                    .cloned()
                    .ok_or_else(|| ChainError::HostPortMac { node: spec.node.clone(), port: p })
            };
            (port(2 * q - 1)?, port(2 * q)?)
        } else {
            let vif1 = if n == 1 { spec.tg_macs[0].clone() } else { mac(q64 - 1, 2) };
            let vif2 = if n == n_nodes { spec.tg_macs[1].clone() } else { mac(q64 + 1, 1) };
            (vif1, vif2)
        };
        let vars = BTreeMap::from([
            ("mac1".to_string(), macs[0].clone()),
            ("mac2".to_string(), macs[1].clone()),
            ("vif1_mac".to_string(), vif1),
            ("vif2_mac".to_string(), vif2),
        ]);
        out.push(ChainVm {
            name: format!("{}_{q}", spec.node),
            qemu_id: q as u32,
            chain: c as u32,
            position: n as u32,
            cpus,
            sockets: [format!("{dir}/sock-{q}-1"), format!("{dir}/sock-{q}-2")],
            macs,
            vars,
        });
    }
    Ok(out)
}

/// The keys of one `chains:` entry.
pub const CHAIN_KEYS: &[&str] = &[
    "node",
    "nf_chains",
    "nf_nodes",
    "vnf",
    "vs_dtc",
    "nf_dtc",
    "nf_dtcr",
    "numa_node",
    "smt",
    "queues",
    "tg_macs",
    "socket_dir",
    "vm",
];

/// `nf_dtc`: whole cores, or `0.5` (one SMT thread).
fn read_nf_dtc(cx: &mut Cx, v: &yaml::Node, path: &str) -> Option<NfDtc> {
    let text = match &v.value {
        Value::Scalar { text, plain: true } => Some(text.as_str()),
        _ => None,
    };
    match text {
        Some("0.5") | Some(".5") => Some(NfDtc::Half),
        Some(t) if t.parse::<u32>().is_ok_and(|x| (1..=u32::from(u16::MAX)).contains(&x)) => {
            Some(NfDtc::Cores(t.parse().unwrap()))
        }
        _ => {
            cx.err(v.pos, path, "expected a positive whole number of cores, or 0.5 (one SMT thread)");
            None
        }
    }
}

/// `tg_macs`: the TG's port-1 and port-2 MACs.
fn read_tg_macs(cx: &mut Cx, v: &yaml::Node, p: &str) -> Option<[String; 2]> {
    let items = cx.seq(v, p)?;
    if items.len() != 2 {
        cx.err(v.pos, p, format!("expected two MACs (TG port 1, TG port 2), found {}", items.len()));
        return None;
    }
    let mut macs = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let ip = join(p, &format!("[{i}]"));
        let s = cx.string(it, &ip)?;
        if !super::validate::is_mac(&s) {
            cx.err(it.pos, &ip, format!("`{s}` is not a MAC address like `3c:fd:fe:aa:bb:01`"));
            return None;
        }
        macs.push(s);
    }
    Some([macs[0].clone(), macs[1].clone()])
}

/// Read one `chains:` entry at `path` (e.g. `chains[0]`). Every problem goes to `cx`; `None`
/// when any was found. The `vm:` template node (a map, if given) is returned unread: the caller
/// applies it to every VM of the chain.
pub(crate) fn parse_chain<'n>(
    cx: &mut Cx,
    n: &'n yaml::Node,
    path: &str,
) -> Option<(ChainSpec, Option<&'n yaml::Node>)> {
    let before = cx.diags.len();
    let f = cx.fields(n, path, n.pos, CHAIN_KEYS)?;

    let node = f.required(cx, "node").and_then(|v| cx.string(v, &f.path("node")));
    let count = |cx: &mut Cx, key: &str| {
        f.required(cx, key)
            .and_then(|v| cx.int(v, &f.path(key), 1, MAX_CHAIN_VMS, "a positive integer"))
            .map(|v| v as u32)
    };
    let nf_chains = count(cx, "nf_chains");
    let nf_nodes = count(cx, "nf_nodes");
    let vnf = f.required(cx, "vnf").and_then(|v| cx.string(v, &f.path("vnf")));
    // A chain wires two vhost-user NICs per VM; CSIT's `vpp_2vfpt_*` recipes take PCI
    // passthrough NICs (vfio-pci) instead: rendered here they would start VPP on `avf`
    // devices the VM does not have.
    let vnf = vnf.filter(|name| {
        let passthrough = name.starts_with("vpp_2vfpt");
        if passthrough {
            cx.err(
                f.get("vnf").map_or(f.key_pos("vnf"), |v| v.pos),
                &f.path("vnf"),
                format!(
                    "`{name}` takes PCI passthrough NICs (CSIT's vfio-pci recipe); a chain wires vhost-user NICs only: define these VMs under `vms:` with `vfio_pci` interfaces"
                ),
            );
        }
        !passthrough
    });
    let vs_dtc = f
        .required(cx, "vs_dtc")
        .and_then(|v| cx.int(v, &f.path("vs_dtc"), 0, u64::from(u16::MAX), "a whole number of cores (0 or more)"))
        .map(|v| v as u32);
    let nf_dtc = f.required(cx, "nf_dtc").and_then(|v| read_nf_dtc(cx, v, &f.path("nf_dtc")));
    let nf_dtcr = match f.get("nf_dtcr") {
        Some(v) => cx
            .int(v, &f.path("nf_dtcr"), 1, MAX_CHAIN_VMS, "a positive integer (VMs per data-plane core)")
            .map(|v| v as u32),
        None => Some(1),
    };
    let numa_node = match f.get("numa_node") {
        Some(v) => cx.int(v, &f.path("numa_node"), 0, 1023, "a NUMA node number").map(|v| Some(v as u32)),
        None => Some(None),
    };
    let smt = match f.get("smt") {
        Some(v) => cx.boolean(v, &f.path("smt")).map(Some),
        None => Some(None),
    };
    let queues = match f.get("queues") {
        Some(v) => cx.queues(v, &f.path("queues")),
        None => Some(1),
    };
    let tg_macs = f.required(cx, "tg_macs").and_then(|v| read_tg_macs(cx, v, &f.path("tg_macs")));
    let socket_dir = match f.get("socket_dir") {
        Some(v) => cx.abs_path(v, &f.path("socket_dir")),
        None => Some(DEFAULT_SOCKET_DIR.to_string()),
    };
    let vm = match f.get("vm") {
        Some(v) if matches!(v.value, Value::Map(_)) => Some(Some(v)),
        Some(v) => {
            cx.err(v.pos, &f.path("vm"), format!("expected a map (the VM template), found {}", v.kind_name()));
            None
        }
        None => Some(None),
    };
    if let (Some(c), Some(nn)) = (nf_chains, nf_nodes) {
        let total = u64::from(c) * u64::from(nn);
        if total > MAX_CHAIN_VMS {
            cx.err(
                f.key_pos("nf_chains"),
                &f.path("nf_chains"),
                format!(
                    "nf_chains × nf_nodes = {total} VMs; at most {MAX_CHAIN_VMS} (qemu_id is two hex digits in the MACs 52:54:00:00:<qemu_id>:0x)"
                ),
            );
        }
    }
    if cx.diags.len() != before {
        return None;
    }
    let spec = ChainSpec {
        node: node?,
        nf_chains: nf_chains?,
        nf_nodes: nf_nodes?,
        vnf: vnf?,
        vs_dtc: vs_dtc?,
        nf_dtc: nf_dtc?,
        nf_dtcr: nf_dtcr?,
        numa_node: numa_node?,
        smt: smt?,
        queues: queues?,
        tg_macs: tg_macs?,
        socket_dir: socket_dir?,
        host_port_macs: BTreeMap::new(),
    };
    Some((spec, vm?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const T1: &str = "3c:fd:fe:00:00:01";
    const T2: &str = "3c:fd:fe:00:00:02";

    /// CSIT's example host: 2 sockets × 28 cores, SMT, Intel numbering: NUMA0 = CPUs 0–27 and
    /// 56–83, NUMA1 = 28–55 and 84–111; CPU k and k+56 share a core.
    fn csit_host() -> Vec<LscpuRow> {
        let mut text = String::from("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n");
        for cpu in 0..112u32 {
            let core = cpu % 56;
            let socket = core / 28;
            text.push_str(&format!("{cpu},{core},{socket},{socket},,{core},{core},{core},{socket}\n"));
        }
        lscpu::parse(&text).unwrap()
    }

    /// One socket, 8 cores × 2 threads numbered adjacently: CPUs 2k and 2k+1 share core k.
    fn adjacent_host() -> Vec<LscpuRow> {
        let mut text = String::from("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n");
        for cpu in 0..16u32 {
            let core = cpu / 2;
            text.push_str(&format!("{cpu},{core},0,0,,{core},{core},{core},0\n"));
        }
        lscpu::parse(&text).unwrap()
    }

    /// One socket, 12 cores, no SMT.
    fn no_smt_host() -> Vec<LscpuRow> {
        let mut text = String::from("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n");
        for cpu in 0..12u32 {
            text.push_str(&format!("{cpu},{cpu},0,0,,{cpu},{cpu},{cpu},0\n"));
        }
        lscpu::parse(&text).unwrap()
    }

    fn spec(c: u32, n: u32, vs_dtc: u32, nf_dtc: NfDtc, nf_dtcr: u32) -> ChainSpec {
        let mut s = ChainSpec::new("DUT1", c, n, "vppip4_2vhostvr1024", vs_dtc, nf_dtc, [T1, T2]);
        s.nf_dtcr = nf_dtcr;
        s
    }

    fn cpus(vms: &[ChainVm]) -> Vec<Vec<u32>> {
        vms.iter().map(|v| v.cpus.clone()).collect()
    }

    fn m(q: u32, nic: u8) -> String {
        mac(u64::from(q), nic)
    }

    #[test]
    fn chains_csit_host_is_detected_as_smt_in_lscpu_order() {
        let rows = csit_host();
        assert!(lscpu::csit_smt(&rows) && lscpu::smt(&rows));
        let numa0: Vec<u32> = (0..28).chain(56..84).collect();
        assert_eq!(node_cpu_order(&rows, 0), numa0);
        assert_eq!(lscpu::cpus_of_node(&rows, 0), numa0);
    }

    #[test]
    fn chains_csit_example_1() {
        let vms = expand(&spec(1, 1, 2, NfDtc::Cores(2), 1), &csit_host(), None).unwrap();
        assert_eq!(vms.len(), 1);
        let v = &vms[0];
        assert_eq!(v.name, "DUT1_1");
        assert_eq!((v.qemu_id, v.chain, v.position), (1, 1, 1));
        assert_eq!(v.cpus, vec![4, 5, 6, 61, 62]);
        assert_eq!(v.sockets, ["/run/vpp/sock-1-1".to_string(), "/run/vpp/sock-1-2".to_string()]);
        assert_eq!(v.macs, ["52:54:00:00:01:01".to_string(), "52:54:00:00:01:02".to_string()]);
        assert_eq!(v.vars["mac1"], "52:54:00:00:01:01");
        assert_eq!(v.vars["mac2"], "52:54:00:00:01:02");
        assert_eq!(v.vars["vif1_mac"], T1);
        assert_eq!(v.vars["vif2_mac"], T2);
    }

    #[test]
    fn chains_csit_example_2() {
        let vms = expand(&spec(1, 6, 1, NfDtc::Half, 2), &csit_host(), None).unwrap();
        assert_eq!(cpus(&vms), vec![vec![3, 6], vec![4, 7], vec![5, 8], vec![59, 62], vec![60, 63], vec![61, 64]]);
        let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["DUT1_1", "DUT1_2", "DUT1_3", "DUT1_4", "DUT1_5", "DUT1_6"]);
        assert_eq!(vms[2].vars["vif1_mac"], m(2, 2));
        assert_eq!(vms[2].vars["vif2_mac"], m(4, 1));
        assert_eq!(vms[5].vars["vif1_mac"], m(5, 2));
        assert_eq!(vms[5].vars["vif2_mac"], T2);
        assert_eq!(vms[0].vars["vif1_mac"], T1);
    }

    #[test]
    fn chains_csit_example_3() {
        let vms = expand(&spec(2, 2, 2, NfDtc::Cores(1), 1), &csit_host(), None).unwrap();
        assert_eq!(cpus(&vms), vec![vec![4, 6, 62], vec![5, 7, 63], vec![60, 8, 64], vec![61, 9, 65]]);
        let wiring: Vec<(u32, u32, String, String)> =
            vms.iter().map(|v| (v.chain, v.position, v.vars["vif1_mac"].clone(), v.vars["vif2_mac"].clone())).collect();
        assert_eq!(
            wiring,
            vec![
                (1, 1, T1.to_string(), m(2, 1)),
                (1, 2, m(1, 2), T2.to_string()),
                (2, 1, T1.to_string(), m(4, 1)),
                (2, 2, m(3, 2), T2.to_string()),
            ]
        );
        assert_eq!(vms[3].sockets[1], "/run/vpp/sock-4-2");
    }

    #[test]
    fn chains_csit_example_3_smt_not_used() {
        let mut s = spec(2, 2, 2, NfDtc::Cores(1), 1);
        s.smt = Some(false);
        let vms = expand(&s, &csit_host(), None).unwrap();
        // Two VMs share a main-thread CPU, as CSIT intends with nf_mtcr = 2.
        assert_eq!(cpus(&vms), vec![vec![4, 6], vec![5, 7], vec![4, 8], vec![5, 9]]);
    }

    #[test]
    fn chains_numa_node_1_from_interfaces_or_override() {
        let rows = csit_host();
        let vms = expand(&spec(2, 2, 2, NfDtc::Cores(1), 1), &rows, Some(1)).unwrap();
        assert_eq!(cpus(&vms), vec![vec![32, 34, 90], vec![33, 35, 91], vec![88, 36, 92], vec![89, 37, 93]]);
        let mut s = spec(2, 2, 2, NfDtc::Cores(1), 1);
        s.numa_node = Some(1);
        assert_eq!(expand(&s, &rows, Some(0)).unwrap(), vms);
        s.numa_node = Some(0);
        assert_eq!(cpus(&expand(&s, &rows, Some(1)).unwrap())[0], vec![4, 6, 62]);
        s.numa_node = Some(2);
        assert_eq!(expand(&s, &rows, None), Err(ChainError::NoCpus { node: "DUT1".into(), numa: 2 }));
    }

    #[test]
    fn chains_no_smt_host() {
        let rows = no_smt_host();
        assert!(!host_smt(&rows));
        let vms = expand(&spec(1, 3, 1, NfDtc::Cores(1), 1), &rows, None).unwrap();
        // skip 3, mt_req 2, dt_req 3: mains 3,4,3; data 5,6,7.
        assert_eq!(cpus(&vms), vec![vec![3, 5], vec![4, 6], vec![3, 7]]);
        let mut s = spec(1, 1, 1, NfDtc::Cores(1), 1);
        s.smt = Some(true);
        assert_eq!(expand(&s, &rows, None), Err(ChainError::SmtNotEnabled { node: "DUT1".into() }));
    }

    #[test]
    fn chains_half_core() {
        // nf_dtc 0.5 with nf_dtcr 1: every VM its own data thread, odd rounds on the siblings.
        let vms = expand(&spec(1, 4, 2, NfDtc::Half, 1), &csit_host(), None).unwrap();
        assert_eq!(cpus(&vms), vec![vec![4, 6], vec![5, 7], vec![60, 8], vec![61, 9]]);
        let e = expand(&spec(1, 2, 1, NfDtc::Half, 2), &no_smt_host(), None).unwrap_err();
        assert!(matches!(e, ChainError::HalfCoreWithoutSmt { why: "not present on this host", .. }), "{e}");
        let mut s = spec(1, 2, 1, NfDtc::Half, 2);
        s.smt = Some(false);
        let e = expand(&s, &csit_host(), None).unwrap_err();
        assert!(matches!(e, ChainError::HalfCoreWithoutSmt { why: "turned off (smt: false)", .. }), "{e}");
    }

    #[test]
    fn chains_nf_dtcr_2() {
        // 4 VMs, 2 per data core: dt_req 2, data cores 6,7 shared by VMs 1/3 and 2/4.
        let vms = expand(&spec(1, 4, 2, NfDtc::Cores(1), 2), &csit_host(), None).unwrap();
        assert_eq!(cpus(&vms), vec![vec![4, 6, 62], vec![5, 7, 63], vec![60, 6, 62], vec![61, 7, 63]]);
        let vms = expand(&spec(2, 3, 1, NfDtc::Cores(2), 2), &no_smt_host(), None).unwrap();
        // skip 3, mt_req 3, dt_req 3, d 2: data at 6,8,10.
        assert_eq!(
            cpus(&vms),
            vec![vec![3, 6, 7], vec![4, 8, 9], vec![5, 10, 11], vec![3, 6, 7], vec![4, 8, 9], vec![5, 10, 11]]
        );
    }

    #[test]
    fn chains_impossible_placement_names_needed_and_available() {
        // 28 cores per node with SMT: 4 + 8 + 16 = 28 fits, one more VM does not.
        assert!(expand(&spec(4, 4, 2, NfDtc::Cores(1), 1), &csit_host(), None).is_ok());
        let e = expand(&spec(1, 17, 2, NfDtc::Cores(1), 1), &csit_host(), None).unwrap_err();
        let ChainError::NotEnoughCpus { needed, available, ref cpus, .. } = e else { panic!("{e}") };
        assert_eq!((needed, available), (30, 28));
        assert_eq!(cpus, "CPUs 0-27");
        let msg = e.to_string();
        assert!(msg.contains("need 30 cores") && msg.contains("28 available") && msg.contains("CPUs 0-27"), "{msg}");
        // No SMT: 12 CPUs, skip 3 + mt 2 + dt 4*2 = 13.
        let e = expand(&spec(1, 4, 1, NfDtc::Cores(2), 1), &no_smt_host(), None).unwrap_err();
        assert!(matches!(e, ChainError::NotEnoughCpus { needed: 13, available: 12, .. }), "{e}");
        assert!(e.to_string().contains("CPUs 0-11"), "{e}");
    }

    #[test]
    fn chains_nf_dtc_counts_in_capacity() {
        // CSIT's own check (4 + 8 + 16 <= 28) passes, but 16 VMs × 2 data cores run past the
        // first half; CSIT would hand out siblings of the system CPUs. Refused here.
        let e = expand(&spec(4, 4, 2, NfDtc::Cores(2), 1), &csit_host(), None).unwrap_err();
        assert!(matches!(e, ChainError::NotEnoughCpus { needed: 44, available: 28, .. }), "{e}");
    }

    #[test]
    fn chains_refuse_256_vms() {
        let e = expand(&spec(2, 128, 0, NfDtc::Cores(1), 1), &csit_host(), None).unwrap_err();
        assert_eq!(e, ChainError::TooManyVms { node: "DUT1".into(), count: 256 });
        assert!(e.to_string().contains("at most 255"));
    }

    #[test]
    fn chains_adjacent_sibling_numbering() {
        let rows = adjacent_host();
        assert!(!lscpu::csit_smt(&rows), "CSIT's cache rule misses adjacent numbering");
        assert!(host_smt(&rows));
        assert_eq!(node_cpu_order(&rows, 0), vec![0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]);
        // Example 1's parameters: main on core 4 (CPU 8), data on cores 5,6 and their siblings.
        let vms = expand(&spec(1, 1, 2, NfDtc::Cores(2), 1), &rows, None).unwrap();
        assert_eq!(vms[0].cpus, vec![8, 10, 12, 11, 13]);
        // 0.5 cores: the second round takes the sibling thread of the same core.
        // Two VMs on one data core (nf_dtcr 2): thread 6 and its sibling 7; mains 4 and 5 likewise.
        let vms = expand(&spec(1, 2, 0, NfDtc::Half, 2), &rows, None).unwrap();
        assert_eq!(cpus(&vms), vec![vec![4, 6], vec![5, 7]]);
        // SMT not used: one CPU per core.
        let mut s = spec(2, 2, 0, NfDtc::Cores(1), 1);
        s.smt = Some(false);
        let vms = expand(&s, &rows, None).unwrap();
        assert_eq!(cpus(&vms), vec![vec![4, 8], vec![6, 10], vec![4, 12], vec![6, 14]]);
    }

    #[test]
    fn chains_testpmd_mac_next_hops_are_host_ports() {
        let mut s = spec(1, 2, 1, NfDtc::Cores(1), 1);
        s.vnf = "testpmd_mac".into();
        let e = expand(&s, &csit_host(), None).unwrap_err();
        assert_eq!(e, ChainError::HostPortMac { node: "DUT1".into(), port: "vhost1".into() });
        for i in 1..=4 {
            s.host_port_macs.insert(format!("vhost{i}"), format!("02:fe:00:00:00:{i:02x}"));
        }
        let vms = expand(&s, &csit_host(), None).unwrap();
        assert_eq!(vms[1].vars["vif1_mac"], "02:fe:00:00:00:03");
        assert_eq!(vms[1].vars["vif2_mac"], "02:fe:00:00:00:04");
        assert_eq!(vms[1].vars["mac1"], m(2, 1));
    }

    #[test]
    fn chains_socket_dir() {
        let mut s = spec(1, 1, 1, NfDtc::Cores(1), 1);
        s.socket_dir = "/var/tmp/chains/".into();
        let vms = expand(&s, &csit_host(), None).unwrap();
        assert_eq!(vms[0].sockets, ["/var/tmp/chains/sock-1-1".to_string(), "/var/tmp/chains/sock-1-2".to_string()]);
    }

    // ---- parse_chain ----

    fn parse_entry(text: &str) -> (Option<(ChainSpec, bool)>, Vec<String>) {
        let parsed = yaml::parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let root = parsed.root.unwrap();
        let mut cx = Cx { file: Path::new("t.yaml"), diags: Vec::new() };
        let r = parse_chain(&mut cx, &root, "chains[0]").map(|(s, vm)| (s, vm.is_some()));
        (r, cx.diags.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn chains_parse_full_entry() {
        let (r, diags) = parse_entry(
            "node: DUT1\nnf_chains: 2\nnf_nodes: 3\nvnf: testpmd_io\nvs_dtc: 1\nnf_dtc: 0.5\nnf_dtcr: 2\nnuma_node: 1\nsmt: false\nqueues: 2\ntg_macs: [\"3c:fd:fe:00:00:01\", \"3c:fd:fe:00:00:02\"]\nsocket_dir: /var/tmp/chains\nvm: {kind: kernel, mem: 1024}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let (s, has_vm) = r.unwrap();
        assert!(has_vm);
        let mut want = ChainSpec::new("DUT1", 2, 3, "testpmd_io", 1, NfDtc::Half, [T1, T2]);
        want.nf_dtcr = 2;
        want.numa_node = Some(1);
        want.smt = Some(false);
        want.queues = 2;
        want.socket_dir = "/var/tmp/chains".into();
        assert_eq!(s, want);
    }

    #[test]
    fn chains_parse_defaults() {
        let (r, diags) = parse_entry(
            "node: DUT1\nnf_chains: 1\nnf_nodes: 1\nvnf: vppip4_2vhostvr1024\nvs_dtc: 2\nnf_dtc: 2\ntg_macs: [\"3c:fd:fe:00:00:01\", \"3c:fd:fe:00:00:02\"]\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let (s, has_vm) = r.unwrap();
        assert!(!has_vm);
        assert_eq!(s, ChainSpec::new("DUT1", 1, 1, "vppip4_2vhostvr1024", 2, NfDtc::Cores(2), [T1, T2]));
    }

    #[test]
    fn chains_parse_errors_with_lines() {
        let (r, diags) = parse_entry(
            "node: DUT1\nnf_chain: 2\nnf_nodes: 0\nvnf: testpmd_io\nvs_dtc: -1\nnf_dtc: 0.25\nnf_dtcr: two\ntg_macs: [\"3c:fd:fe:00:00:01\"]\nsocket_dir: run/vpp\nsmt: yes\nvm: [1]\n",
        );
        assert!(r.is_none());
        assert_eq!(
            diags,
            vec![
                "t.yaml:2:1: chains[0].nf_chain: unknown key; did you mean `nf_chains`?",
                "t.yaml:1:1: chains[0]: missing required key `nf_chains`",
                "t.yaml:3:11: chains[0].nf_nodes: expected a positive integer",
                "t.yaml:5:9: chains[0].vs_dtc: expected a whole number of cores (0 or more)",
                "t.yaml:6:9: chains[0].nf_dtc: expected a positive whole number of cores, or 0.5 (one SMT thread)",
                "t.yaml:7:10: chains[0].nf_dtcr: expected a positive integer (VMs per data-plane core)",
                "t.yaml:10:6: chains[0].smt: expected true or false",
                "t.yaml:8:10: chains[0].tg_macs: expected two MACs (TG port 1, TG port 2), found 1",
                "t.yaml:9:13: chains[0].socket_dir: must be an absolute path (found `run/vpp`)",
                "t.yaml:11:5: chains[0].vm: expected a map (the VM template), found a list",
            ]
        );
    }

    /// A chain of `vpp_2vfpt_*` VMs was accepted: every VM got two vhost-user NICs and an
    /// `.exec` that creates `avf` interfaces on PCI devices the VM does not have (CSIT's recipe
    /// for these VNFs is vfio-pci passthrough). Refused with the key's position.
    #[test]
    fn regression_a_chain_of_passthrough_vnfs_is_refused() {
        let (r, diags) = parse_entry(
            "node: DUT1\nnf_chains: 1\nnf_nodes: 1\nvnf: vpp_2vfpt_ip4base_plen24\nvs_dtc: 2\nnf_dtc: 2\ntg_macs: [\"3c:fd:fe:00:00:01\", \"3c:fd:fe:00:00:02\"]\n",
        );
        assert!(r.is_none());
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0].starts_with("t.yaml:4:6: chains[0].vnf: `vpp_2vfpt_ip4base_plen24` takes PCI passthrough NICs"),
            "{diags:?}"
        );
    }

    #[test]
    fn chains_parse_bad_mac_and_too_many_vms() {
        let (r, diags) = parse_entry(
            "node: DUT1\nnf_chains: 16\nnf_nodes: 16\nvnf: testpmd_io\nvs_dtc: 1\nnf_dtc: 1\ntg_macs:\n  - 3c:fd:fe:00:00:01\n  - 3c:fd:fe:00:00\n",
        );
        assert!(r.is_none());
        assert_eq!(
            diags,
            vec![
                "t.yaml:9:5: chains[0].tg_macs[1]: `3c:fd:fe:00:00` is not a MAC address like `3c:fd:fe:aa:bb:01`",
                "t.yaml:2:1: chains[0].nf_chains: nf_chains × nf_nodes = 256 VMs; at most 255 (qemu_id is two hex digits in the MACs 52:54:00:00:<qemu_id>:0x)",
            ]
        );
    }
}

/// CSIT's own `CpuUtils.cpu_slice_of_list_for_nf` run on generated Intel-numbered layouts
/// (`tests/fixtures/chains/csit-placements.json`, see the README there): every placement
/// must be CSIT's; where CSIT's slices overflow ("overflow"), we refuse instead.
#[cfg(test)]
mod csit_golden {
    use super::*;

    #[test]
    fn chains_match_csit_on_generated_layouts() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/chains/csit-placements.json")).unwrap();
        let hosts: BTreeMap<String, Vec<LscpuRow>> = golden["hosts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), lscpu::parse(v.as_str().unwrap()).unwrap()))
            .collect();
        let cases = golden["cases"].as_array().unwrap();
        assert!(cases.len() > 1000);
        for case in cases {
            let u = |k: &str| case[k].as_u64().unwrap() as u32;
            let nf_dtc = if case["nf_dtc"].as_f64() == Some(0.5) { NfDtc::Half } else { NfDtc::Cores(u("nf_dtc")) };
            let mut s = ChainSpec::new("DUT1", u("c"), u("n"), "testpmd_io", u("vs_dtc"), nf_dtc, ["T1", "T2"]);
            s.nf_dtcr = u("nf_dtcr");
            s.smt = case["smt"].as_bool();
            let got = expand(&s, &hosts[case["host"].as_str().unwrap()], Some(u("numa")));
            match (case.get("cpus"), case.get("error").and_then(|e| e.as_str()), &got) {
                (Some(want), _, Ok(vms)) => {
                    let want: Vec<Vec<u32>> = serde_json::from_value(want.clone()).unwrap();
                    let got: Vec<Vec<u32>> = vms.iter().map(|v| v.cpus.clone()).collect();
                    assert_eq!(got, want, "{case}");
                }
                (None, Some("not_enough" | "overflow"), Err(ChainError::NotEnoughCpus { .. })) => {}
                (None, Some("half"), Err(ChainError::HalfCoreWithoutSmt { .. })) => {}
                _ => panic!("{case}: got {got:?}"),
            }
        }
    }
}
