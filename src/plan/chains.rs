//! A node's NF chain ([`ChainDef`]) turned into VMs: CSIT's placement
//! ([`crate::topology::chains::expand`]) on the host's `lscpu -p` rows from the facts, each VM
//! made from the chain's `vm:` template with its id, name, CPUs, sockets and MAC variables.
//!
//! Without the host's CPU layout the chain stays [`Unresolved`] (`render` without `--facts`);
//! `up` always has it. A template with `cpus:` pins every VM to those CPUs and needs no layout.
//! CPUs a chain VM shares with a `vms:` entry on the node are an error naming the chain's line
//! (chain VMs may share among themselves: CSIT puts two VMs on each main-thread core).

use std::collections::BTreeMap;

use super::{PlanError, Unresolved};
use crate::facts::HostFacts;
use crate::facts::lscpu;
use crate::topology::chains::{ChainVm, expand, wire};
use crate::topology::{ChainDef, Node, Topology, VhostUser, Vm, VmInterface};

/// `file:line:col: chains[i]` for messages.
fn at(topology: &Topology, def: &ChainDef) -> String {
    format!("{}:{}:{}: {}", topology.path.display(), def.line, def.column, def.path)
}

fn chain_error(topology: &Topology, def: &ChainDef, message: impl Into<String>) -> PlanError {
    PlanError::Chain { at: at(topology, def), message: message.into() }
}

/// The chain VMs of `node` (empty when it has no chain), or the note that they need the CPU
/// layout. `explicit` are the node's `vms:` entries, checked for shared CPUs.
pub(super) fn node_chain_vms(
    topology: &Topology,
    node: &Node,
    facts: Option<&HostFacts>,
    explicit: &[&Vm],
    unresolved: &mut Vec<Unresolved>,
) -> Result<Vec<Vm>, PlanError> {
    let Some(def) = topology.chain_on(&node.name) else { return Ok(Vec::new()) };
    let placed = match &def.template.cpus {
        Some(cpus) => shared_cpus(topology, def, cpus)?,
        None => match facts.and_then(|f| f.lscpu.as_deref()) {
            Some(text) => {
                let rows = lscpu::parse(text)
                    .map_err(|e| PlanError::Facts { node: node.name.clone(), message: e.to_string() })?;
                expand(&def.spec, &rows, interface_numa(node)).map_err(|e| chain_error(topology, def, e.to_string()))?
            }
            None => {
                unresolved.push(Unresolved {
                    node: node.name.clone(),
                    vm: None,
                    what: format!("{} ({} VMs)", at(topology, def), def.spec.vm_count()),
                    shown: format!(
                        "no VMs: the chain needs the host's CPU layout (--facts DIR with DIR/{}.lscpu)",
                        node.name
                    ),
                    up_decides: "reads it from the host (lscpu -p) and places the chain as CSIT".into(),
                });
                return Ok(Vec::new());
            }
        },
    };
    let dut_index = topology.duts().position(|n| n.name == node.name).unwrap_or(0) + 1;
    let vms: Vec<Vm> = placed.iter().map(|cv| chain_vm(def, cv, topology.unique_macs, dut_index)).collect();
    check_shared_cpus(topology, def, &vms, explicit)?;
    Ok(vms)
}

/// The template's `cpus:` for every VM (placement by hand): CSIT's wiring, no layout needed.
fn shared_cpus(topology: &Topology, def: &ChainDef, cpus: &[u32]) -> Result<Vec<ChainVm>, PlanError> {
    let per_vm = vec![cpus.to_vec(); def.spec.vm_count() as usize];
    wire(&def.spec, per_vm).map_err(|e| chain_error(topology, def, e.to_string()))
}

/// CSIT's `get_interfaces_numa_node(if1, if2)`: the most common `numa_node` of the DUT's first
/// two test ports (by port number), ignoring unknowns; `None` when neither says. The host
/// vswitch's `vhost*` ports (a `testpmd_mac` chain's next hops) are not test ports.
fn interface_numa(node: &Node) -> Option<u32> {
    let mut ports: Vec<(&String, Option<u32>)> =
        node.interfaces.iter().filter(|(k, _)| !k.starts_with("vhost")).map(|(k, i)| (k, i.numa_node)).collect();
    let number = |k: &str| k.trim_start_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().unwrap_or(u64::MAX);
    ports.sort_by_key(|(k, _)| (number(k), (*k).clone()));
    let known: Vec<u32> = ports.iter().take(2).filter_map(|(_, n)| *n).collect();
    // With two different nodes CSIT's Counter.most_common keeps the first.
    known.first().copied()
}

/// One VM of the chain: the template with CSIT's per-VM values.
fn chain_vm(def: &ChainDef, cv: &ChainVm, unique_macs: bool, dut_index: usize) -> Vm {
    let mut vm = def.template.clone();
    vm.node = def.spec.node.clone();
    vm.qemu_id = cv.qemu_id;
    vm.name = cv.name.clone();
    vm.smp = cv.cpus.len() as u32;
    vm.cpus = Some(cv.cpus.clone());
    // The template's NICs carry the settings (vectors, queue size, ...); sockets are per VM.
    let mut nics = def.template.interfaces.iter().filter_map(|i| match i {
        VmInterface::VhostUser(v) => Some(v.clone()),
        _ => None,
    });
    let mut first_two: Vec<VmInterface> = Vec::new();
    for socket in &cv.sockets {
        let base = nics.next().unwrap_or(VhostUser {
            socket: String::new(),
            server: true,
            queue_size: Some(1024),
            queues: vm.queues,
            csum: false,
            gso: false,
            vectors: None,
        });
        first_two.push(VmInterface::VhostUser(VhostUser { socket: socket.clone(), ..base }));
    }
    vm.interfaces = first_two;
    let mut vars: BTreeMap<String, String> = cv.vars.clone();
    if unique_macs {
        // The NICs get `52:54:00:<dut>:<id>:<nic>`: the wiring must name those MACs too.
        let own = format!("52:54:00:{dut_index:02x}:");
        for v in vars.values_mut() {
            if let Some(rest) = v.strip_prefix("52:54:00:00:")
                && def.spec.vnf != "testpmd_mac"
                && !def.spec.tg_macs.contains(v)
            {
                *v = format!("{own}{rest}");
            }
        }
    }
    vars.extend(def.template.vars.clone());
    vm.vars = vars;
    vm
}

/// A CPU both a chain VM and a `vms:` entry of the node are pinned to.
fn check_shared_cpus(topology: &Topology, def: &ChainDef, chain: &[Vm], explicit: &[&Vm]) -> Result<(), PlanError> {
    for v in explicit {
        for c in v.cpus.iter().flatten() {
            if let Some(cv) = chain.iter().find(|cv| cv.cpus.iter().flatten().any(|x| x == c)) {
                return Err(chain_error(
                    topology,
                    def,
                    format!("VM {} is placed on CPU {c}, which VM {} (vms:) is pinned to", cv.name, v.name),
                ));
            }
        }
    }
    Ok(())
}
