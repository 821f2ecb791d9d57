//! Planning: a pure function from a validated [`Topology`] and the nodes' [`HostFacts`] to a
//! [`Plan`].
//!
//! This is where every decision is made: the accelerator, kernel paths, NUMA binding, hugepage
//! needs per node/size/NUMA, pinning, and CSIT fidelity (qemu argv, startup.conf, testpmd
//! command line, templates), with CSIT's weaknesses fixed; each deliberate difference is listed
//! in the README (Differences from CSIT). Nothing here does I/O: the same topology and facts
//! always give the same plan, byte for byte. `up` plans with the facts it gathers and runs that
//! plan unchanged; `render --facts` shows the same plan; without facts, `render` lists what
//! stays [`Unresolved`].
//!
//! * [`host`]: decisions that depend on the host's facts;
//! * [`argv`]: the qemu argv;
//! * [`vnf`]: what runs inside the guest and the rendered files.

mod argv;
mod chains;
pub mod fixture;
pub mod host;
mod model;
pub mod render;
mod vnf;

pub use model::*;

use crate::facts::{FactsByNode, HostFacts};
use crate::templates::{TemplateError, Templates};
use crate::topology::{Boot, Node, Topology, Vm, VmInterface, VmKind, Vnf};

pub struct PlanOptions<'a> {
    /// Run id; remote paths are `<run_root>/<run_id>/<vm>/...`.
    pub run_id: String,
    pub templates: &'a Templates,
    /// Plan only these VMs (by name); empty = all.
    pub only_vms: &'a [String],
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("VM {vm}: {source}")]
    Template { vm: String, source: TemplateError },
    #[error("VM {vm}: {message}")]
    Invalid { vm: String, message: String },
    #[error("no VM named {name} in the topology (VMs: {known})")]
    UnknownVm { name: String, known: String },
    #[error("run id {run_id:?}: {message}")]
    RunId { run_id: String, message: String },
    #[error("facts of node {node}: {message}")]
    Facts { node: String, message: String },
    /// A `chains:` entry that cannot be placed on this host, or clashes with `vms:`.
    /// `at` is `file:line:col: chains[i]`.
    #[error("{at}: {message}")]
    Chain { at: String, message: String },
}

/// CSIT's testpmd `--max-pkt-len` (`Constants.get_mtu`, HEAD): jumbo and normal.
pub const MTU_JUMBO: u32 = 9145;
pub const MTU_NORMAL: u32 = 1800;
/// Where the guest finds the two data-plane NICs (QEMU slots 6 and 7), as CSIT hard-codes.
pub const GUEST_PCI: [&str; 2] = ["0000:00:06.0", "0000:00:07.0"];

/// Build the plan for every DUT that has (selected) VMs, with the facts known per node.
pub fn build(topology: &Topology, facts: &FactsByNode, opts: &PlanOptions) -> Result<Plan, PlanError> {
    check_run_id(&opts.run_id)?;
    check_selection(topology, opts.only_vms)?;
    let mut nodes = Vec::new();
    for node in topology.duts() {
        if let Some(np) = plan_node(topology, node, facts.get(&node.name), opts)? {
            nodes.push(np);
        }
    }
    Ok(Plan { run_id: opts.run_id.clone(), nodes })
}

/// The plan of one node (`None` if none of its VMs is selected). `up` calls this per node with
/// the facts it just gathered; [`build`] calls it for every node.
pub fn plan_node(
    topology: &Topology,
    node: &Node,
    facts: Option<&HostFacts>,
    opts: &PlanOptions,
) -> Result<Option<NodePlan>, PlanError> {
    check_run_id(&opts.run_id)?;
    let selected = |v: &Vm| opts.only_vms.is_empty() || opts.only_vms.contains(&v.name);
    let explicit: Vec<&Vm> = topology.vms_on(&node.name).collect();
    let mut chain_notes = Vec::new();
    let chained = chains::node_chain_vms(topology, node, facts, &explicit, &mut chain_notes)?;
    let vms: Vec<&Vm> = explicit.into_iter().chain(&chained).filter(|v| selected(v)).collect();
    let chain_selected = topology
        .chain_on(&node.name)
        .is_some_and(|c| opts.only_vms.is_empty() || c.vm_ids().iter().any(|(_, n)| opts.only_vms.contains(n)));
    // A node whose only VMs are an unplaced chain still has a plan: the note saying why.
    let chain_pending = chain_selected && !chain_notes.is_empty();
    if vms.is_empty() && !chain_pending {
        return Ok(None);
    }
    // 1-based position among the DUTs (for unique MACs).
    let dut_index = topology.duts().position(|n| n.name == node.name).unwrap_or(0) + 1;
    let run_dir = format!("{}/{}", node.run_root.trim_end_matches('/'), opts.run_id);
    let mut decide = host::HostDecisions::new(node, facts)?;
    decide.unresolved.extend(chain_notes);
    let mut vm_plans = Vec::new();
    for vm in vms {
        vm_plans.push(plan_vm(topology, node, dut_index, &run_dir, &mut decide, opts, vm)?);
    }
    let hugepages = host::hugepage_needs(node, vm_plans.iter().map(|v| (v.mem_mib, v.page_size, v.numa)));
    Ok(Some(NodePlan {
        name: node.name.clone(),
        host: node.host.clone(),
        arch: node.arch,
        accel_requested: node.qemu.accel,
        accel: decide.accel,
        run_dir,
        hugepages,
        allocate_hugepages: node.hugepages.allocate,
        vms: vm_plans,
        unresolved: decide.unresolved,
    }))
}

/// Every name in `only` must be a VM of the topology.
fn check_selection(topology: &Topology, only: &[String]) -> Result<(), PlanError> {
    let names = topology.vm_names();
    let known: Vec<&str> = names.iter().map(|(_, v)| v.as_str()).collect();
    match only.iter().find(|n| !known.contains(&n.as_str())) {
        Some(bad) => Err(PlanError::UnknownVm { name: bad.clone(), known: known.join(", ") }),
        None => Ok(()),
    }
}

/// The run id becomes a path component on every node and part of the guest kernel command line.
/// The one rule for run ids ([`crate::remote::layout::run_id_problem`]): the same that `down`,
/// `status` and the local records apply, so no run starts that they could not find again.
fn check_run_id(run_id: &str) -> Result<(), PlanError> {
    match crate::remote::layout::run_id_problem(run_id) {
        None => Ok(()),
        Some(m) => Err(PlanError::RunId { run_id: run_id.to_string(), message: m.to_string() }),
    }
}

/// Guest NIC MAC for NIC counter `n`: CSIT's per-node `52:54:00:00:<id>:<n>`, or with
/// `unique_macs` the DUT's index in the second byte.
fn mac(unique: bool, dut_index: usize, vm: &Vm, n: u32) -> String {
    if unique {
        format!("52:54:00:{:02x}:{:02x}:{:02x}", dut_index, vm.qemu_id, n)
    } else {
        format!("52:54:00:00:{:02x}:{:02x}", vm.qemu_id, n)
    }
}

pub(crate) fn invalid(vm: &Vm, message: impl Into<String>) -> PlanError {
    PlanError::Invalid { vm: vm.name.clone(), message: message.into() }
}

fn plan_vm(
    topology: &Topology,
    node: &Node,
    dut_index: usize,
    run_dir: &str,
    decide: &mut host::HostDecisions,
    opts: &PlanOptions,
    vm: &Vm,
) -> Result<VmPlan, PlanError> {
    let vm_run_dir = format!("{run_dir}/{}", vm.name);
    check_vm(topology, dut_index, vm, &vm_run_dir)?;
    let paths = VmPaths {
        run_dir: vm_run_dir.clone(),
        pidfile: format!("{vm_run_dir}/qemu.pid"),
        serial_log: format!("{vm_run_dir}/serial.log"),
        qmp: format!("{vm_run_dir}/qmp.sock"),
        qga: vm.qga.then(|| format!("{vm_run_dir}/qga.sock")),
    };
    let init_path = format!("{vm_run_dir}/init.sh");
    let mac = |n: u32| mac(topology.unique_macs, dut_index, vm, n);
    let boot_files = match &vm.boot {
        Boot::Kernel { kernel: k, initrd: i } => {
            Some((decide.boot_file(vm, "kernel", k)?, decide.boot_file(vm, "initrd", i)?))
        }
        _ => None,
    };
    let numa = decide.numa_binding(vm)?;
    let decided = argv::Decided { accel: decide.accel, boot_files, numa, init_path: &init_path, mac: &mac };
    let (argv, nics) = argv::build(node, vm, &paths, &decided)?;
    let inputs = vnf::TemplateInputs {
        run_id: &opts.run_id,
        arch: node.arch.as_str(),
        vm_run_dir: &vm_run_dir,
        init_path: &init_path,
        startup_path: &format!("{vm_run_dir}/startup.conf"),
        exec_path: &format!("{vm_run_dir}/running.exec"),
        mac: &mac,
    };
    let files = vnf::files(opts.templates, vm, &inputs)?;
    let (readiness, pinning) = readiness_and_pinning(vm)?;
    Ok(VmPlan {
        name: vm.name.clone(),
        qemu_id: vm.qemu_id,
        argv,
        files,
        paths,
        readiness,
        pinning,
        nics,
        mem_mib: vm.mem,
        page_size: vm.page_size,
        numa,
        start_timeout: vm.start_timeout,
    })
}

/// Inputs the plan cannot turn into a working VM (the loader checks most; these depend on the plan).
fn check_vm(topology: &Topology, dut_index: usize, vm: &Vm, vm_run_dir: &str) -> Result<(), PlanError> {
    if vm.qemu_id > 255 {
        return Err(invalid(vm, format!("qemu_id {} does not fit in a MAC byte (max 255)", vm.qemu_id)));
    }
    if dut_index > 255 && topology.unique_macs {
        return Err(invalid(vm, "more than 255 DUTs: unique_macs cannot number them"));
    }
    if vm.smp == 0 {
        return Err(invalid(vm, "smp must be at least 1"));
    }
    if vm.mem == 0 || !vm.mem.is_multiple_of(vm.page_size.mib()) {
        return Err(invalid(
            vm,
            format!("mem {} MiB is not a positive multiple of the {} page size", vm.mem, vm.page_size.as_str()),
        ));
    }
    if vm.kind() == VmKind::Kernel && vm.guest_hugepages * vm.page_size.mib() >= vm.mem {
        // The guest kernel would reserve all its RAM as hugepages and die at boot.
        return Err(invalid(
            vm,
            format!(
                "guest_hugepages {} x {} does not fit in mem {} MiB; lower guest_hugepages or raise mem",
                vm.guest_hugepages,
                vm.page_size.as_str(),
                vm.mem
            ),
        ));
    }
    if vm_run_dir.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
        // The init path goes on the guest kernel command line, which splits on spaces.
        return Err(invalid(vm, format!("run directory {vm_run_dir:?} must not contain spaces or quotes")));
    }
    // The longest of the VM's own sockets (`qmp.sock`, `qga.sock`) and its vhost-user ones.
    let own = format!("{vm_run_dir}/qmp.sock");
    let vhost = vm.interfaces.iter().filter_map(|i| match i {
        VmInterface::VhostUser(v) => Some(v.socket.as_str()),
        _ => None,
    });
    if let Some(long) = std::iter::once(own.as_str()).chain(vhost).find(|p| p.len() > MAX_SOCKET_PATH) {
        return Err(invalid(
            vm,
            format!(
                "socket path {long} is {} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket can have \
                 (shorten run_root, the run id or the VM name)",
                long.len()
            ),
        ));
    }
    Ok(())
}

/// Longest Unix socket path: `sun_path` holds 108 bytes, the terminating NUL included (QEMU
/// failed at start, after hugepages were allocated and files uploaded).
pub const MAX_SOCKET_PATH: usize = 107;

fn readiness_and_pinning(vm: &Vm) -> Result<(Readiness, Option<Pinning>), PlanError> {
    let mut ready_markers = match &vm.vnf {
        Vnf::Vpp(_) => vec![Marker::new(["vpp ", "built by"])],
        Vnf::TestpmdIo | Vnf::TestpmdMac => vec![Marker::new(["Press enter to exit"])],
        Vnf::None => vec![],
    };
    ready_markers.extend(vm.ready_markers.iter().map(|m| Marker::new([m.as_str()])));
    let mut fail_markers = vec![Marker::new(["reboot: Power down"]), Marker::new(["Kernel panic"])];
    fail_markers.extend(vm.fail_markers.iter().map(|m| Marker::new([m.as_str()])));
    if ready_markers.is_empty() && !vm.qga {
        return Err(invalid(vm, "nothing to wait for: vnf none needs `ready_markers` or `qga: true`"));
    }
    let pinning = match &vm.cpus {
        Some(cpus) if cpus.len() != vm.smp as usize => {
            return Err(invalid(vm, format!("cpus lists {} CPUs but smp is {}", cpus.len(), vm.smp)));
        }
        Some(cpus) => Some(Pinning { cpus: cpus.clone(), sched: vm.sched }),
        None => None,
    };

    let readiness = Readiness { ready_markers, fail_markers, qga: vm.qga, timeout: vm.boot_timeout };
    Ok((readiness, pinning))
}

#[cfg(test)]
mod tests;
