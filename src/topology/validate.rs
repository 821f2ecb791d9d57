//! Checks and defaults that span several VMs: `qemu_id` assignment and uniqueness per node,
//! default and unique names, and host resources that two VMs on one node cannot share
//! (CPUs, vfio-pci devices, vhost-user sockets, forwarded host ports).

use std::collections::{BTreeMap, BTreeSet};

use super::load::{Cx, VmDraft};
use super::model::Vm;
use super::yaml::Pos;

/// Where a VM's cross-checked values were written, for messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct VmSpans {
    /// `vms[i]`.
    pub path: String,
    /// The list item.
    pub pos: Pos,
    pub node: Pos,
    pub qemu_id: Option<Pos>,
    pub name: Option<Pos>,
    pub cpus_key: Pos,
    /// One per entry of `cpus`, same order.
    pub cpus: Vec<Pos>,
    /// (address lower-cased, position, key path)
    pub vfio: Vec<(String, Pos, String)>,
    pub sockets: Vec<(String, Pos, String)>,
    pub host_ports: Vec<(u16, Pos, String)>,
}

/// Assign ids and names, then check what VMs on one node (or in the file) must not share.
pub(crate) fn finish_vms(cx: &mut Cx, mut drafts: Vec<VmDraft>) -> Vec<Vm> {
    // Explicit ids first, so an automatic id never takes one written later in the file.
    let mut used: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut duplicate_id = BTreeSet::new();
    for (i, d) in drafts.iter().enumerate() {
        if let Some(id) = d.explicit_id {
            let key = (d.vm.node.clone(), id);
            if let Some(first) = used.get(&key) {
                duplicate_id.insert(i);
                let pos = d.spans.qemu_id.unwrap_or(d.spans.pos);
                cx.err(
                    pos,
                    &format!("{}.qemu_id", d.spans.path),
                    format!("qemu_id {id} is already used on node {} by {first}", d.vm.node),
                );
            } else {
                used.insert(key, d.spans.path.clone());
            }
        }
    }
    for d in &mut drafts {
        let id = match d.explicit_id {
            Some(id) => id,
            None => {
                let free = (1..=255u32).find(|i| !used.contains_key(&(d.vm.node.clone(), *i)));
                let Some(id) = free else {
                    cx.err(d.spans.pos, &d.spans.path, format!("no free qemu_id (1-255) left on node {}", d.vm.node));
                    continue;
                };
                used.insert((d.vm.node.clone(), id), d.spans.path.clone());
                id
            }
        };
        d.vm.qemu_id = id;
        if !d.explicit_name {
            d.vm.name = format!("{}_{}", d.vm.node, id);
        }
    }

    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, d) in drafts.iter().enumerate() {
        // A default name repeats a duplicate id: that is one problem, already reported.
        if duplicate_id.contains(&i) && !d.explicit_name {
            continue;
        }
        if let Some(first) = names.get(d.vm.name.as_str()) {
            let (pos, key) = match d.spans.name {
                Some(p) => (p, format!("{}.name", d.spans.path)),
                None => (d.spans.pos, d.spans.path.clone()),
            };
            cx.err(pos, &key, format!("VM name `{}` is already used by {first}", d.vm.name));
        } else {
            names.insert(&d.vm.name, &d.spans.path);
        }
    }

    // Per node: CPUs, passthrough devices, sockets and host ports belong to one VM only.
    let mut cpus: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    let mut vfio: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut sockets: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut ports: BTreeMap<(&str, u16), &str> = BTreeMap::new();
    for d in &drafts {
        let node = d.vm.node.as_str();
        let owner = d.spans.path.as_str();
        let mut mine = BTreeSet::new();
        for (i, (c, pos)) in d.vm.cpus.iter().flatten().zip(&d.spans.cpus).enumerate() {
            if !mine.insert(*c) {
                continue; // listed twice in one VM: reported while loading
            }
            if let Some(first) = cpus.get(&(node, *c)) {
                cx.err(*pos, &format!("{owner}.cpus[{i}]"), format!("CPU {c} on {node} is already used by {first}"));
            } else {
                cpus.insert((node, *c), owner);
            }
        }
        for (addr, pos, key) in &d.spans.vfio {
            if let Some(first) = vfio.insert((node, addr), owner) {
                cx.err(*pos, key, format!("PCI device {addr} on {node} is already passed to {first}"));
                vfio.insert((node, addr), first);
            }
        }
        for (sock, pos, key) in &d.spans.sockets {
            if let Some(first) = sockets.insert((node, sock), owner) {
                cx.err(*pos, key, format!("socket {sock} on {node} is already used by {first}"));
                sockets.insert((node, sock), first);
            }
        }
        for (port, pos, key) in &d.spans.host_ports {
            if let Some(first) = ports.insert((node, *port), owner) {
                cx.err(*pos, key, format!("host port {port} on {node} is already forwarded for {first}"));
                ports.insert((node, *port), first);
            }
        }
    }

    drafts.into_iter().map(|d| d.vm).collect()
}
