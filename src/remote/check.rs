//! `harness check`: gather each DUT's [`HostFacts`] (one round trip, [`crate::remote::facts`]),
//! plan the node with them, and judge: sudo, QEMU, the accelerator the plan chose, hugetlbfs
//! mounts and hugepages against the plan's needs, the pinned CPUs, the tools. Changes nothing on
//! the host. The facts are returned too, for `check --save-facts`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::facts::{HostFacts, Kvm};
use crate::plan::{self, AccelChoice, NodePlan, PlanOptions};
use crate::remote::facts::{self, TOOLS, Wanted};
use crate::ssh::{ConnectOptions, Session, SshTarget};
use crate::topology::{Accel, Boot, Node, PageSize, Topology};

/// Outcome of one check item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Not fatal (e.g. hugepages short but `allocate: true`).
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// `ssh`, `sudo`, `qemu`, `kvm`, `hugetlbfs`, `hugepages`, `cpus`, `socat`, ...
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl Item {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Item {
        Item { name: name.to_string(), status, detail: detail.into() }
    }
}

/// Everything `check` knows about one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub addr: String,
    pub reachable: bool,
    /// Connect/auth/probe error (phase named) when the node could not be probed.
    pub error: Option<String>,
    /// SSH connect + auth time.
    pub connect_ms: u64,
    /// Probe round trip.
    pub probe_ms: u64,
    /// Accelerator `up` would use.
    pub accel: Option<AccelChoice>,
    pub items: Vec<Item>,
    pub facts: Option<HostFacts>,
}

impl NodeReport {
    pub fn failed(&self) -> bool {
        self.items.iter().any(|i| i.status == Status::Fail)
    }
}

fn fmt_cpus(c: &[u32]) -> String {
    if c.is_empty() {
        return "none".to_string();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let mut j = i;
        while j + 1 < c.len() && c[j + 1] == c[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { c[i].to_string() } else { format!("{}-{}", c[i], c[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// Judge the facts against the node's plan (or the error planning gave).
/// `pinned` are the CPUs the topology pins the node's VMs to.
pub fn evaluate(node: &Node, pinned: &[u32], plan: Result<Option<&NodePlan>, String>, f: &HostFacts) -> Vec<Item> {
    let mut items = Vec::new();
    items.push(match &f.sudo {
        Some(s) if s.ok => Item::new("sudo", Status::Ok, "passwordless sudo -n"),
        Some(s) => {
            Item::new("sudo", Status::Fail, format!("`sudo -n true` failed: {}", s.error.as_deref().unwrap_or("")))
        }
        None => Item::new("sudo", Status::Fail, "not probed"),
    });
    let qemu_path = f.qemu.as_ref().map(|q| q.path.clone()).unwrap_or_else(|| node.qemu_binary());
    items.push(match f.qemu.as_ref().and_then(|q| q.version.as_ref()) {
        Some(v) => Item::new("qemu", Status::Ok, format!("{qemu_path} ({v})")),
        None => match f.qemu.as_ref().and_then(|q| q.error.as_ref()) {
            Some(e) => Item::new("qemu", Status::Fail, format!("{qemu_path} cannot run: {e}")),
            None => Item::new("qemu", Status::Fail, format!("{qemu_path} not found or not executable")),
        },
    });
    let np = match plan {
        Ok(np) => np,
        Err(e) => {
            items.push(Item::new("plan", Status::Fail, e));
            None
        }
    };
    items.push(kvm_item(node, np, f));
    hugepage_items(&mut items, node, np, f);
    items.push(cpus_item(pinned, f));
    let tools = f.tools.clone().unwrap_or_default();
    for t in TOOLS {
        items.push(match tools.get(*t).cloned().flatten() {
            Some(p) => Item::new(t, Status::Ok, p),
            None => Item::new(t, Status::Fail, format!("`{t}` not found in PATH")),
        });
    }
    items
}

fn kvm_item(node: &Node, np: Option<&NodePlan>, f: &HostFacts) -> Item {
    let kvm = f.kvm.clone().unwrap_or(Kvm::Absent);
    let usable = kvm == Kvm::Usable;
    let kvm_text = match &kvm {
        Kvm::Usable => "usable (probe guest ran)".to_string(),
        Kvm::Broken(e) => format!("/dev/kvm present but a guest cannot run: {e}"),
        Kvm::Unverified(why) => format!("present, unverified ({why})"),
        Kvm::Absent => "no /dev/kvm".to_string(),
    };
    let accel = np.map(|n| n.accel.as_str()).unwrap_or("?");
    let status = match node.qemu.accel {
        Accel::Kvm if usable => Status::Ok,
        Accel::Kvm => Status::Fail,
        Accel::Tcg => Status::Ok,
        Accel::Auto if usable || kvm == Kvm::Absent => Status::Ok,
        // `auto` only picks KVM on proof; a present but unusable KVM is worth a warning.
        Accel::Auto => Status::Warn,
    };
    Item::new("kvm", status, format!("{kvm_text}; accel {accel}"))
}

/// Per page size: the mount, then the pages the plan needs (per NUMA node where bound) against
/// what the host's pools can give.
fn hugepage_items(items: &mut Vec<Item>, node: &Node, np: Option<&NodePlan>, f: &HostFacts) {
    let hp = f.hugepages.clone().unwrap_or_default();
    let needs = np.map(|n| n.hugepages.clone()).unwrap_or_default();
    let mut sizes: Vec<PageSize> = needs.iter().map(|h| h.size).chain([node.hugepages.size]).collect();
    sizes.sort();
    sizes.dedup();
    for size in sizes {
        let mount = node.hugepage_mount(size);
        let fstype = hp.mounts.get(&mount).map(String::as_str).unwrap_or("missing");
        let pages: u64 = needs.iter().filter(|h| h.size == size).map(|h| h.pages).sum();
        let needed_here = pages > 0;
        if let Some(m) = crate::remote::hugepages::wrong_page_size(&mount, size, fstype) {
            items.push(Item::new("hugetlbfs", if needed_here { Status::Fail } else { Status::Warn }, m));
        } else {
            let st = if fstype == "hugetlbfs" {
                Status::Ok
            } else if !needed_here || node.hugepages.allocate {
                Status::Warn
            } else {
                Status::Fail
            };
            let note =
                if fstype != "hugetlbfs" && node.hugepages.allocate && needed_here { "; up will mount it" } else { "" };
            items.push(Item::new("hugetlbfs", st, format!("{mount} is {fstype}{note}")));
        }

        let per_numa: Vec<String> = hp
            .numa
            .iter()
            .filter(|n| n.size_kb == size.kib())
            .map(|n| format!("node{} {}/{}", n.node, n.free, n.nr))
            .collect();
        let numa =
            if per_numa.is_empty() { String::new() } else { format!("; free/total per NUMA: {}", per_numa.join(" ")) };
        let Some(p) = hp.pools.get(&size.kib()) else {
            items.push(Item::new(
                "hugepages",
                if needed_here { Status::Fail } else { Status::Warn },
                format!("{}: no such hugepage pool on this kernel", size.as_str()),
            ));
            continue;
        };
        // A need bound to a NUMA node can only use that node's free pages.
        let mut avail = 0;
        let mut short = 0;
        for h in needs.iter().filter(|h| h.size == size) {
            let a = match h.numa {
                None => p.available(),
                Some(n) => hp.numa.iter().find(|x| x.node == n && x.size_kb == size.kib()).map_or(0, |x| x.free),
            };
            avail += a;
            short += h.pages.saturating_sub(a);
        }
        if !needed_here {
            avail = p.available();
        }
        let text = format!(
            "{}: need {pages}, available {avail} (total {} free {} resv {} surplus {} overcommit {}){numa}",
            size.as_str(),
            p.nr,
            p.free,
            p.resv,
            p.surplus,
            p.overcommit
        );
        items.push(if short == 0 {
            Item::new("hugepages", Status::Ok, text)
        } else if node.hugepages.allocate {
            Item::new("hugepages", Status::Warn, format!("{text}; up will allocate {short} more"))
        } else {
            Item::new("hugepages", Status::Fail, format!("{text}; short by {short} (set allocate: true)"))
        });
    }
}

/// CPUs the VMs pin to must be online.
fn cpus_item(pinned: &[u32], f: &HostFacts) -> Item {
    let online = f.cpus_online.clone().unwrap_or_default();
    let isolated = f.cpus_isolated.clone().unwrap_or_default();
    let mut wanted = pinned.to_vec();
    wanted.sort();
    wanted.dedup();
    let offline: Vec<u32> = wanted.iter().copied().filter(|c| !online.contains(c)).collect();
    let isolated_note = if isolated.is_empty() { String::new() } else { format!(", isolated {}", fmt_cpus(&isolated)) };
    if offline.is_empty() {
        Item::new(
            "cpus",
            Status::Ok,
            format!("online {}{isolated_note}; VMs use {}", fmt_cpus(&online), fmt_cpus(&wanted)),
        )
    } else {
        Item::new(
            "cpus",
            Status::Fail,
            format!("VM CPUs {} not online (online {}{isolated_note})", fmt_cpus(&offline), fmt_cpus(&online)),
        )
    }
}

/// What to gather for a node: the KVM probe always (check reports it), and the boot-file
/// prefixes of its VMs.
pub fn wanted(topology: &Topology, node: &Node, kvm_probe: bool) -> Wanted {
    // A chain's VMs boot what its template names.
    let chain = topology.chain_on(&node.name).map(|c| &c.template);
    let lookups = topology
        .vms_on(&node.name)
        .chain(chain)
        .flat_map(|v| match &v.boot {
            Boot::Kernel { kernel, initrd } => vec![kernel.clone(), initrd.clone()],
            Boot::Image { .. } => vec![],
        })
        .collect();
    Wanted { kvm_probe, lookups }
}

/// The CPUs the topology pins the node's VMs to.
pub fn pinned_cpus(topology: &Topology, node: &Node) -> Vec<u32> {
    topology.vms_on(&node.name).flat_map(|v| v.cpus.iter().flatten().copied()).collect()
}

/// Connect, gather facts, plan and judge one node. Never fails: problems end up in the report.
pub async fn check_node(
    target: &SshTarget,
    opts: &ConnectOptions,
    topology: &Topology,
    node: &Node,
    plan_opts: &PlanOptions<'_>,
) -> NodeReport {
    let addr = format!("{}:{}", target.host, target.port.unwrap_or(22));
    let mut report = NodeReport {
        node: node.name.clone(),
        addr,
        reachable: false,
        error: None,
        connect_ms: 0,
        probe_ms: 0,
        accel: None,
        items: Vec::new(),
        facts: None,
    };
    let t = Instant::now();
    let session = match Session::connect(target, opts).await {
        Ok(s) => s,
        Err(e) => {
            report.connect_ms = t.elapsed().as_millis() as u64;
            report.items.push(Item::new("ssh", Status::Fail, e.to_string()));
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.addr = session.addr().to_string();
    report.connect_ms = t.elapsed().as_millis() as u64;
    report.reachable = true;
    report.items.push(Item::new("ssh", Status::Ok, format!("connected in {} ms", report.connect_ms)));
    let t = Instant::now();
    // The KVM probe alone may take up to 10 s (its own timeout); leave room.
    let wanted = wanted(topology, node, true);
    match facts::gather(&session, node, &wanted, opts.command_timeout.max(Duration::from_secs(20))).await {
        Ok(facts) => {
            report.probe_ms = t.elapsed().as_millis() as u64;
            let planned = plan::plan_node(topology, node, Some(&facts), plan_opts).map_err(|e| e.to_string());
            report.accel = Some(plan::host::accel(node, Some(&facts)));
            let pinned = pinned_cpus(topology, node);
            let planned = planned.as_ref().map(Option::as_ref).map_err(Clone::clone);
            report.items.extend(evaluate(node, &pinned, planned, &facts));
            report.facts = Some(facts);
        }
        Err(e) => {
            report.probe_ms = t.elapsed().as_millis() as u64;
            report.items.push(Item::new("probe", Status::Fail, e.to_string()));
            report.error = Some(e.to_string());
        }
    }
    session.close().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::FactsByNode;
    use crate::templates::Templates;

    const SAMPLE: &str = "sudo_rc=0\nsudo_err=\nqemu_path=/usr/bin/qemu-system-x86_64\n\
        qemu_version=QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nkvm_dev=1\nkvm_probe=134\n\
        kvm_err=qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\ncpus_online=0-3,6\ncpus_isolated=2-3\n\
        tool_socat=/usr/bin/socat\ntool_taskset=/usr/bin/taskset\ntool_chrt=\n\
        numa 0 2048 64 60 0\nnuma 1 2048 64 64 0\n\
        pool 1048576 0 0 0 0 0\npool 2048 128 124 4 0 0\nmount /dev/hugepages hugetlbfs\nmount /dev/hugepages1G missing\n";

    #[test]
    fn cpu_list_format() {
        assert_eq!(fmt_cpus(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(fmt_cpus(&[]), "none");
    }

    fn judge(node: &Node, vm: crate::topology::Vm, f: &HostFacts) -> (Vec<Item>, Option<AccelChoice>) {
        let t = Templates::embedded();
        let topo = crate::plan::fixture::topology(vec![node.clone()], vec![vm]);
        let po = PlanOptions { run_id: "r".into(), templates: &t, only_vms: &[] };
        let facts = FactsByNode::from([(node.name.clone(), f.clone())]);
        let plan = plan::build(&topo, &facts, &po).map_err(|e| e.to_string());
        let np = plan.as_ref().map(|p| p.nodes.first()).map_err(Clone::clone);
        let accel = Some(plan::host::accel(node, Some(f)));
        (evaluate(node, &pinned_cpus(&topo, node), np, f), accel)
    }

    #[test]
    fn fit_against_topology() {
        let mut node = crate::plan::fixture::dut("DUT1");
        node.qemu.accel = Accel::Auto;
        let w = Wanted { kvm_probe: true, lookups: vec![] };
        let f = facts::parse(SAMPLE, &w).unwrap();
        let mut vm = crate::plan::fixture::vm(&node.name, 1);
        vm.mem = 512; // 256 pages of 2M: more than the 120 available
        vm.guest_hugepages = 64; // so the plan itself is valid: check judges the plan's needs
        vm.cpus = Some(vec![0, 4]);
        let (items, accel) = judge(&node, vm.clone(), &f);
        let get = |n: &str| items.iter().find(|i| i.name == n).unwrap().clone();
        assert_eq!(accel, Some(AccelChoice::Tcg));
        assert_eq!(get("kvm").status, Status::Warn, "auto + broken KVM = tcg with a warning");
        assert_eq!(get("hugepages").status, Status::Fail);
        assert!(get("hugepages").detail.contains("short by 136"), "{}", get("hugepages").detail);
        assert_eq!(get("cpus").status, Status::Fail);
        assert!(get("cpus").detail.contains("VM CPUs 4 not online"));
        assert_eq!(get("chrt").status, Status::Fail);
        node.hugepages.allocate = true;
        node.qemu.accel = Accel::Kvm;
        let (items, _) = judge(&node, vm, &f);
        let get = |n: &str| items.iter().find(|i| i.name == n).unwrap().clone();
        assert_eq!(get("hugepages").status, Status::Warn);
        assert_eq!(get("kvm").status, Status::Fail, "accel kvm needs a usable KVM");
    }
}
