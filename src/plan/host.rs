//! The plan's host-dependent decisions, made from [`HostFacts`] and nothing else: the
//! accelerator, the kernel/initrd files behind a prefix, NUMA binding of guest RAM and the
//! hugepage needs that follow from it. Each decision the facts cannot settle becomes an
//! [`Unresolved`] note saying what the plan shows and how `up` decides on the host; `up` always
//! has full facts, so its plan has none.

use std::collections::BTreeMap;

use super::{AccelChoice, HugepageNeed, PlanError, Unresolved};
use crate::facts::{CpuLayout, HostFacts, Kvm};
use crate::topology::{Accel, Node, PageSize, Vm};

/// The decisions for one node.
pub(crate) struct HostDecisions<'a> {
    node: &'a Node,
    facts: Option<&'a HostFacts>,
    layout: Option<CpuLayout>,
    pub accel: AccelChoice,
    pub unresolved: Vec<Unresolved>,
}

impl<'a> HostDecisions<'a> {
    pub fn new(node: &'a Node, facts: Option<&'a HostFacts>) -> Result<Self, PlanError> {
        let layout = match facts.and_then(HostFacts::cpu_layout) {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                return Err(PlanError::Facts { node: node.name.clone(), message: e.to_string() });
            }
            None => None,
        };
        let mut d = HostDecisions { node, facts, layout, accel: AccelChoice::Kvm, unresolved: Vec::new() };
        d.accel = d.decide_accel();
        Ok(d)
    }

    fn note(&mut self, vm: Option<&str>, what: &str, shown: String, up_decides: &str) {
        self.unresolved.push(Unresolved {
            node: self.node.name.clone(),
            vm: vm.map(String::from),
            what: what.into(),
            shown,
            up_decides: up_decides.into(),
        });
    }

    /// `auto` picks KVM only on proof (a probe guest ran); broken, unverified or absent is TCG.
    fn decide_accel(&mut self) -> AccelChoice {
        match self.node.qemu.accel {
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg => AccelChoice::Tcg,
            Accel::Auto => match self.facts.and_then(|f| f.kvm.as_ref()) {
                Some(Kvm::Usable) => AccelChoice::Kvm,
                Some(_) => AccelChoice::Tcg,
                None => {
                    self.note(
                        None,
                        "accel",
                        "kvm".into(),
                        "boots a probe guest under KVM; KVM if it runs, TCG otherwise",
                    );
                    AccelChoice::Kvm
                }
            },
        }
    }

    /// The file a kernel/initrd prefix names on the host: the looked-up path, or the prefix
    /// itself (unresolved) when the facts have no lookup for it.
    pub fn boot_file(&mut self, vm: &Vm, what: &str, prefix: &str) -> Result<String, PlanError> {
        match self.facts.and_then(|f| f.lookups.as_ref()).and_then(|l| l.get(prefix)) {
            Some(Some(path)) => Ok(path.clone()),
            Some(None) => Err(PlanError::Invalid {
                vm: vm.name.clone(),
                message: format!(
                    "{what}: no file matches {prefix}* on node {} (CSIT would silently drop -{what})",
                    self.node.name
                ),
            }),
            None => {
                self.note(
                    Some(&vm.name),
                    what,
                    prefix.to_string(),
                    "uses the file itself if it exists, else the newest (version-sorted) match of the prefix",
                );
                Ok(prefix.to_string())
            }
        }
    }

    /// NUMA node to bind a pinned VM's RAM to: the node of all its CPUs, on hosts with several.
    pub fn numa_binding(&mut self, vm: &Vm) -> Result<Option<u32>, PlanError> {
        let Some(cpus) = vm.cpus.as_deref().filter(|c| !c.is_empty()) else { return Ok(None) };
        match &self.layout {
            Some(layout) => {
                if let Some(missing) = cpus.iter().find(|c| layout.node_of(**c).is_none()) {
                    return Err(PlanError::Invalid {
                        vm: vm.name.clone(),
                        message: format!(
                            "CPU {missing} is not a CPU of node {} (lscpu lists {} CPUs)",
                            self.node.name,
                            layout.rows.len()
                        ),
                    });
                }
                Ok(layout.binding(cpus))
            }
            None => {
                self.note(
                    Some(&vm.name),
                    "numa",
                    "no binding".into(),
                    "binds guest RAM to the NUMA node of the pinned CPUs when the host has several nodes",
                );
                Ok(None)
            }
        }
    }
}

/// The accelerator a node's plan uses with these facts.
pub fn accel(node: &Node, facts: Option<&HostFacts>) -> AccelChoice {
    let mut d = HostDecisions { node, facts, layout: None, accel: AccelChoice::Kvm, unresolved: Vec::new() };
    d.decide_accel()
}

/// Pages a VM needs: its RAM in its page size, rounded up.
pub fn pages_for(mem_mib: u64, size: PageSize) -> u64 {
    mem_mib.div_ceil(size.mib())
}

/// Hugepage needs per (size, NUMA node) of a set of VMs, given as `(mem MiB, size, binding)`:
/// the one implementation of this arithmetic (`check` and `up` both read the plan's result).
pub fn hugepage_needs(node: &Node, vms: impl IntoIterator<Item = (u64, PageSize, Option<u32>)>) -> Vec<HugepageNeed> {
    let mut needs: BTreeMap<(PageSize, Option<u32>), u64> = BTreeMap::new();
    for (mem, size, numa) in vms {
        *needs.entry((size, numa)).or_default() += pages_for(mem, size);
    }
    needs
        .into_iter()
        .map(|((size, numa), pages)| HugepageNeed { size, numa, pages, mount: node.hugepage_mount(size) })
        .collect()
}
