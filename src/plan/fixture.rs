//! Ready-made topology values for tests and examples: a DUT node and a VM with CSIT's defaults
//! (the `_c_default` recipe: vppip4_2vhostvr1024, smp 2, 4096 MiB, two vhost-user NICs).
//!
//! The YAML loader is the normal way to get a [`Topology`]; these builders let the plan be tested
//! on exact values without going through YAML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::topology::{
    Accel, Arch, Boot, HugepagesConfig, Node, NodeType, PageSize, QemuConfig, Sched, Topology, VhostUser, Vm,
    VmInterface, Vnf,
};

/// A DUT node `name` at 127.0.0.1 with CSIT's defaults (x86_64, KVM, 2M pages, `/usr/bin`).
pub fn dut(name: &str) -> Node {
    Node {
        name: name.to_string(),
        node_type: NodeType::Dut,
        host: "127.0.0.1".to_string(),
        port: Some(22),
        username: Some("testuser".to_string()),
        auth: vec![],
        proxy_jump: None,
        known_hosts: None,
        accept_new_host_key: false,
        arch: Arch::X86_64,
        hugepages: HugepagesConfig { size: PageSize::M2, allocate: false, mounts: BTreeMap::new() },
        qemu: QemuConfig { bin_dir: "/usr/bin".to_string(), accel: Accel::Kvm },
        run_root: "/run/harness".to_string(),
        interfaces: BTreeMap::new(),
    }
}

/// A vhost-user NIC as CSIT's `_c_default` adds it (server, queue size 1024, mask 0).
pub fn vhost(socket: &str) -> VmInterface {
    VmInterface::VhostUser(VhostUser {
        socket: socket.to_string(),
        server: true,
        queue_size: Some(1024),
        queues: 1,
        csum: false,
        gso: false,
        vectors: None,
    })
}

/// CSIT's `_c_default` VM `{node}_{id}`: kernel VM, vppip4_2vhostvr1024, smp 2, 4096 MiB of 2M pages,
/// sockets `/run/vpp/sock-{id}-1|2`, vif MACs `3c:fd:fe:aa:bb:01|02`.
pub fn vm(node: &str, qemu_id: u32) -> Vm {
    let vars: BTreeMap<String, String> = [("vif1_mac", "3c:fd:fe:aa:bb:01"), ("vif2_mac", "3c:fd:fe:aa:bb:02")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Vm {
        node: node.to_string(),
        qemu_id,
        name: format!("{node}_{qemu_id}"),
        boot: Boot::Kernel { kernel: "/opt/boot/vmlinuz".to_string(), initrd: "/opt/boot/initrd.img".to_string() },
        smp: 2,
        mem: 4096,
        page_size: PageSize::M2,
        guest_hugepages: 512,
        vnf: Vnf::Vpp("vppip4_2vhostvr1024".to_string()),
        vars,
        queues: 1,
        jumbo: false,
        interfaces: vec![vhost(&format!("/run/vpp/sock-{qemu_id}-1")), vhost(&format!("/run/vpp/sock-{qemu_id}-2"))],
        drives: vec![],
        cpus: None,
        sched: Sched::None,
        boot_timeout: Duration::from_secs(120),
        start_timeout: Duration::from_secs(30),
        ready_markers: vec![],
        fail_markers: vec![],
        qga: false,
        init_command: None,
        extra_args: vec![],
        collect: None,
    }
}

/// An image VM `{node}_{id}` (`/var/lib/vm/image.qcow2`, qcow2, guest agent on, no VNF, no NICs
/// or drives yet): [`vm`] turned into CSIT's nested-VM successor.
pub fn image_vm(node: &str, qemu_id: u32) -> Vm {
    let mut v = vm(node, qemu_id);
    v.boot = Boot::Image { image: "/var/lib/vm/image.qcow2".to_string(), format: "qcow2".to_string() };
    v.vnf = Vnf::None;
    v.qga = true;
    v.vars.clear();
    v.interfaces.clear();
    v
}

/// A topology from nodes and VMs (no unique MACs).
pub fn topology(nodes: Vec<Node>, vms: Vec<Vm>) -> Topology {
    Topology {
        path: PathBuf::from("fixture.yaml"),
        nodes,
        vms,
        unique_macs: false,
        chains: vec![],
        written: BTreeMap::new(),
    }
}
