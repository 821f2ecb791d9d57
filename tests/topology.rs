//! Topology loading and validation through the public API: every CSIT file, the examples under
//! `topologies/`, defaults, and one test per class of error (exact line:col, key path, message).

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::plan::fixture::vhost;

use harness::topology::{
    self, Accel, Arch, Auth, Boot, Diagnostic, NodeType, PageSize, Sched, Topology, TopologyError, VhostUser,
    VmInterface, VmKind, Vnf,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// VNF check for tests: the CSIT templates the examples use (the real check asks `Templates`).
fn known_vnf(name: &str) -> bool {
    ["vppip4_2vhostvr1024", "vppl2xc_2vhostvr1024", "vpp_2vfpt_ip4base_plen24"].contains(&name)
}

fn load(text: &str) -> Result<Topology, TopologyError> {
    topology::load_str_with(text, Path::new("topology.yaml"), &known_vnf)
}

fn ok(text: &str) -> Topology {
    load(text).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match load(text) {
        Ok(_) => panic!("expected errors, the topology loaded"),
        Err(TopologyError::Invalid(d)) => d,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Assert that exactly one diagnostic exists at line:col with this key and message fragment.
#[track_caller]
fn one(text: &str, line: usize, column: usize, key: &str, fragment: &str) {
    let d = errors(text);
    let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
    assert_eq!(d.len(), 1, "expected one diagnostic, got:\n{all}");
    let d = &d[0];
    assert_eq!((d.line, d.column, d.key.as_str()), (line, column, key), "{all}");
    assert!(d.message.contains(fragment), "`{fragment}` not in: {all}");
    assert_eq!(d.file, PathBuf::from("topology.yaml"));
}

/// TG + DUT1 + DUT2; VMs appended by the tests start on line 12.
const BASE: &str = "\
nodes:
  TG:
    type: TG
    host: 10.0.0.1
  DUT1:
    type: DUT
    host: 10.0.0.2
  DUT2:
    type: DUT
    host: 10.0.0.3
vms:
";

fn with_vms(vms: &str) -> String {
    format!("{BASE}{vms}")
}

/// A valid VM on DUT1 (lines 12-13) followed by `extra` lines of the same VM (from line 14).
fn vm(extra: &str) -> String {
    with_vms(&format!("  - node: DUT1\n    qga: true\n{extra}"))
}

// ---------------------------------------------------------------- files that must load

#[test]
fn every_csit_topology_loads_unchanged() {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(root().join("tests/fixtures/csit-topologies")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut loaded = 0;
    for path in &paths {
        let topo = topology::load_with(path, &|_| panic!("CSIT files have no VMs"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(topo.node("TG").is_some_and(|n| n.node_type == NodeType::Tg), "{}", path.display());
        assert!(topo.node("DUT1").is_some_and(|n| n.node_type == NodeType::Dut), "{}", path.display());
        assert!(topo.vms.is_empty());
        loaded += 1;
    }
    assert_eq!(loaded, 22);
    assert!(paths.iter().any(|p| p.to_string_lossy().ends_with(".yaml.example")));
}

#[test]
fn csit_fields_are_kept() {
    let t = topology::load_with(&root().join("tests/fixtures/csit-topologies/lf_3n_oct_testbed215.yaml"), &|_| false)
        .unwrap();
    assert_eq!(t.nodes.len(), 3);
    assert_eq!(t.duts().count(), 2);
    let tg = t.node("TG").unwrap();
    assert_eq!(tg.port, Some(6001));
    assert_eq!(tg.username.as_deref(), Some("testuser"));
    assert_eq!(tg.auth, vec![Auth::Password("Csit1234".into())]);
    let dut = t.node("DUT1").unwrap();
    assert_eq!(dut.arch, Arch::Aarch64);
    assert_eq!(dut.host, "10.30.51.95");
    let p1 = &dut.interfaces["port1"];
    assert_eq!(p1.mac_address.as_deref(), Some("1a:cc:6a:50:05:2a"));
    assert_eq!(p1.pci_address.as_deref(), Some("0002:02:00.0"));
    assert_eq!(p1.link.as_deref(), Some("link1"));
    assert_eq!(p1.driver.as_deref(), Some("rvu_nicpf"));
    assert_eq!(p1.model.as_deref(), Some("Cavium-A063-100G"));
}

const EXAMPLES: &[&str] = &["csit-2n-vpp.yaml", "testpmd.yaml", "vfio.yaml", "image-vm.yaml", "aarch64-1g.yaml"];

#[test]
fn every_example_loads() {
    for name in EXAMPLES {
        let path = root().join("topologies").join(name);
        let t = topology::load_with(&path, &known_vnf).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!t.vms.is_empty(), "{name}");
    }
}

#[test]
fn csit_2n_vpp_example_matches_csits_golden_vm() {
    let t = topology::load_with(&root().join("topologies/csit-2n-vpp.yaml"), &known_vnf).unwrap();
    assert_eq!(t.nodes.len(), 2);
    assert_eq!(t.vms.len(), 1);
    let vm = &t.vms[0];
    assert_eq!((vm.node.as_str(), vm.qemu_id, vm.name.as_str()), ("DUT1", 1, "DUT1_1"));
    assert_eq!(vm.kind(), VmKind::Kernel);
    assert_eq!(vm.boot, Boot::Kernel { kernel: "/opt/boot/vmlinuz".into(), initrd: "/opt/boot/initrd.img".into() });
    assert_eq!((vm.smp, vm.mem, vm.page_size, vm.guest_hugepages), (2, 4096, PageSize::M2, 512));
    assert_eq!(vm.vnf, Vnf::Vpp("vppip4_2vhostvr1024".into()));
    assert_eq!(vm.vars["vif1_mac"], "3c:fd:fe:aa:bb:01");
    assert_eq!(vm.vars["vif2_mac"], "3c:fd:fe:aa:bb:02");
    assert_eq!(vm.cpus, Some(vec![3, 4]));
    assert_eq!(vm.sched, Sched::Rr);
    // The same vhost-user NICs CSIT's `_c_default` adds (server, queue size 1024, csum/gso off).
    assert_eq!(vm.interfaces, vec![vhost("/run/vpp/sock-1-1"), vhost("/run/vpp/sock-1-2")]);
    let dut = t.node("DUT1").unwrap();
    match &dut.auth[..] {
        [Auth::IdentityFile { path, passphrase_env: None }] => assert!(path.ends_with(".ssh/id_ed25519")),
        a => panic!("{a:?}"),
    }
    assert!(!path_starts_with_tilde(&dut.auth));
}

fn path_starts_with_tilde(auth: &[Auth]) -> bool {
    auth.iter().any(|a| matches!(a, Auth::IdentityFile { path, .. } if path.starts_with("~")))
}

#[test]
fn testpmd_vfio_image_and_aarch64_examples() {
    let load = |n: &str| topology::load_with(&root().join("topologies").join(n), &known_vnf).unwrap();
    let t = load("testpmd.yaml");
    assert_eq!(t.vms[0].vnf, Vnf::TestpmdIo);
    assert_eq!(t.vms[1].vnf, Vnf::TestpmdMac);
    assert_eq!((t.vms[0].qemu_id, t.vms[1].qemu_id), (1, 2));
    assert!(t.vms.iter().all(|v| v.queues == 2));
    assert!(!t.vms[0].jumbo && t.vms[1].jumbo);
    assert!(matches!(&t.vms[0].interfaces[0], VmInterface::VhostUser(v) if v.queues == 2));
    assert_eq!(t.vms[1].boot_timeout, Duration::from_secs(180));

    let t = load("vfio.yaml");
    let vm = &t.vms[0];
    assert_eq!(vm.page_size, PageSize::G1);
    assert_eq!(vm.guest_hugepages, 3);
    assert_eq!(
        vm.interfaces,
        vec![VmInterface::VfioPci("0000:86:0a.0".into()), VmInterface::VfioPci("0000:86:0a.1".into())]
    );
    for var in [
        "ip1", "ip2", "route1", "nexthop1", "routeif1", "route2", "nexthop2", "routeif2", "arpif1", "arpip1", "arpmac1",
    ] {
        assert!(vm.vars.contains_key(var), "{var}");
    }

    let t = load("image-vm.yaml");
    let vm = &t.vms[0];
    assert_eq!(vm.kind(), VmKind::Image);
    assert_eq!(vm.name, "ubuntu-guest");
    // An image VM has an image and a format, and no kernel or initrd at all.
    assert_eq!(vm.boot, Boot::Image { image: "/var/lib/vm/ubuntu.qcow2".into(), format: "qcow2".into() });
    assert!(vm.qga);
    assert!(vm.drives[0].cdrom && !vm.drives[1].cdrom);
    assert_eq!(vm.drives[1].index, Some(2));
    assert_eq!(vm.interfaces, vec![VmInterface::NetUser { net: "10.0.2.0/24".into(), host_port: Some(10022) }]);
    assert_eq!(t.nodes[0].auth, vec![Auth::PasswordEnv("DUT1_PASSWORD".into())]);

    let t = load("aarch64-1g.yaml");
    assert!(t.unique_macs);
    assert_eq!(t.duts().count(), 2);
    for n in &t.nodes {
        assert_eq!(n.arch, Arch::Aarch64);
        assert_eq!(n.hugepages.size, PageSize::G1);
        assert!(n.hugepages.allocate);
    }
    assert_eq!(t.nodes[0].qemu.accel, Accel::Kvm);
    assert_eq!(t.nodes[1].qemu.accel, Accel::Auto);
    assert_eq!(t.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["DUT1_1", "DUT2_1"]);
    assert!(t.vms.iter().all(|v| v.page_size == PageSize::G1 && v.guest_hugepages == 3));
}

// ---------------------------------------------------------------- defaults

#[test]
fn node_defaults() {
    let t = ok(BASE);
    let n = t.node("DUT1").unwrap();
    assert_eq!((n.port, n.username.as_deref()), (None, None));
    assert!(n.auth.is_empty());
    assert_eq!(n.arch, Arch::X86_64);
    assert_eq!(n.hugepages.size, PageSize::M2);
    assert!(!n.hugepages.allocate);
    assert_eq!(n.hugepages.mounts[&PageSize::M2], "/dev/hugepages");
    assert_eq!(n.hugepages.mounts[&PageSize::G1], "/dev/hugepages1G");
    assert_eq!((n.qemu.bin_dir.as_str(), n.qemu.accel), ("/usr/bin", Accel::Auto));
    assert_eq!(n.run_root, "/run/harness");
    assert!(!n.accept_new_host_key);
    assert!(!t.unique_macs);
    assert!(t.vms.is_empty());
}

#[test]
fn node_keys_and_auth_order() {
    let t = ok("nodes:
  DUT1:
    type: DUT
    host: h
    port: 2201
    username: u
    password: plain
    password_env: PW
    identity_file: /keys/id
    identity_passphrase_env: PASS
    proxy_jump: jump@bastion:2222
    known_hosts: kh
    accept_new_host_key: true
    hugepages: {size: 1G, allocate: true, mounts: {2M: /mnt/h2}}
    qemu: {bin_dir: /opt/qemu/bin, accel: tcg}
    run_root: /var/run/h
");
    let n = &t.nodes[0];
    assert_eq!(
        n.auth,
        vec![
            Auth::IdentityFile { path: "/keys/id".into(), passphrase_env: Some("PASS".into()) },
            Auth::PasswordEnv("PW".into()),
            Auth::Password("plain".into()),
        ]
    );
    assert_eq!((n.port, n.username.as_deref()), (Some(2201), Some("u")));
    assert_eq!(n.proxy_jump.as_deref(), Some("jump@bastion:2222"));
    // Relative paths are taken from the topology file's directory.
    assert_eq!(n.known_hosts, Some(PathBuf::from("kh")));
    assert!(n.accept_new_host_key);
    assert_eq!(n.hugepages.mounts[&PageSize::M2], "/mnt/h2");
    assert_eq!(n.hugepages.mounts[&PageSize::G1], "/dev/hugepages1G");
    assert_eq!((n.qemu.bin_dir.as_str(), n.qemu.accel), ("/opt/qemu/bin", Accel::Tcg));
    assert_eq!(n.run_root, "/var/run/h");
    // Passwords never appear in serialised output.
    let json = serde_json::to_string(&t).unwrap();
    assert!(!json.contains("plain") && json.contains("<redacted>"), "{json}");
}

#[test]
fn vm_defaults() {
    let t = ok(&with_vms(
        "  - node: DUT1
    qemu_id: 2
    qga: true
  - node: DUT1
    ready_markers: [up]
  - node: DUT1
    cpus: [4, 5, 6]
    qga: true
  - node: DUT2
    kind: image
    image: /img.qcow2
",
    ));
    let v: Vec<_> = t.vms.iter().map(|v| (v.node.as_str(), v.qemu_id, v.name.as_str())).collect();
    // Explicit ids are reserved first; the others take the next free id on their node, in file order.
    assert_eq!(v, [("DUT1", 2, "DUT1_2"), ("DUT1", 1, "DUT1_1"), ("DUT1", 3, "DUT1_3"), ("DUT2", 1, "DUT2_1")]);
    let k = &t.vms[1];
    assert_eq!(k.kind(), VmKind::Kernel);
    // A kernel VM has a kernel and an initrd, and no image.
    assert_eq!(k.boot, Boot::Kernel { kernel: "/opt/boot/vmlinuz".into(), initrd: "/opt/boot/initrd.img".into() });
    assert_eq!((k.smp, k.mem, k.page_size, k.guest_hugepages), (1, 4096, PageSize::M2, 512));
    assert_eq!(k.vnf, Vnf::None);
    assert_eq!((k.queues, k.jumbo, k.sched), (1, false, Sched::None));
    assert_eq!(k.boot_timeout, Duration::from_secs(120));
    assert!(!k.qga, "kernel VMs default to no guest agent");
    assert_eq!(k.ready_markers, ["up"]);
    assert!(k.interfaces.is_empty() && k.drives.is_empty() && k.cpus.is_none() && k.extra_args.is_empty());
    assert_eq!(t.vms[2].smp, 3, "smp defaults to the number of cpus");
    let img = &t.vms[3];
    assert!(img.qga, "image VMs default to the guest agent");
    assert!(matches!(img.boot, Boot::Image { ref format, .. } if format == "raw"), "{:?}", img.boot);
}

#[test]
fn page_size_and_guest_hugepages_follow_the_node() {
    let t = ok("nodes:
  DUT1: {type: DUT, host: h, hugepages: {size: 1G}}
vms:
  - {node: DUT1, qga: true}
  - {node: DUT1, qga: true, page_size: 2M}
  - {node: DUT1, qga: true, guest_hugepages: 1, mem: 2048}
");
    let p: Vec<_> = t.vms.iter().map(|v| (v.page_size, v.guest_hugepages)).collect();
    assert_eq!(p, [(PageSize::G1, 3), (PageSize::M2, 512), (PageSize::G1, 1)]);
}

#[test]
fn interface_and_other_vm_keys() {
    let t = ok(&vm("    queues: 4
    vnf: vppip4_2vhostvr1024
    interfaces:
      - vhost_user: {socket: /s1, server: false, queue_size: ~, csum: true, gso: true, vectors: 0}
      - vhost_user: {socket: /s2, queues: 2, queue_size: 256}
      - net_user:
      - vfio_pci: 0000:AF:00.1
    vars: {n: 5, b: true, s: text}
    boot_timeout: 90
    fail_markers: [panic]
    init_command: /usr/bin/true
    extra_args: [-nographic]
"));
    let vm = &t.vms[0];
    assert_eq!(
        vm.interfaces,
        vec![
            VmInterface::VhostUser(VhostUser {
                socket: "/s1".into(),
                server: false,
                queue_size: None,
                queues: 4,
                csum: true,
                gso: true,
                vectors: Some(0)
            }),
            VmInterface::VhostUser(VhostUser {
                socket: "/s2".into(),
                server: true,
                queue_size: Some(256),
                queues: 2,
                csum: false,
                gso: false,
                vectors: None
            }),
            VmInterface::NetUser { net: "10.0.2.0/24".into(), host_port: None },
            VmInterface::VfioPci("0000:AF:00.1".into()),
        ]
    );
    let vars: Vec<_> = vm.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(vars, [("b", "true"), ("n", "5"), ("s", "text")]);
    assert_eq!(vm.boot_timeout, Duration::from_secs(90));
    assert_eq!(vm.fail_markers, ["panic"]);
    assert_eq!(vm.init_command.as_deref(), Some("/usr/bin/true"));
    assert_eq!(vm.extra_args, ["-nographic"]);
}

#[test]
fn unique_macs_is_parsed() {
    assert!(ok(&format!("unique_macs: true\n{BASE}")).unique_macs);
    assert!(!ok(&format!("unique_macs: false\n{BASE}")).unique_macs);
    one(&format!("unique_macs: yes\n{BASE}"), 1, 14, "unique_macs", "expected true or false");
}

#[test]
fn metadata_is_opaque_and_anchors_work() {
    let t = ok("metadata: {anything: [goes, {here: 1}]}
nodes:
  DUT1: &dut {type: DUT, host: h}
  DUT2: *dut
");
    assert_eq!(t.nodes.len(), 2);
    assert_eq!(t.nodes[1].host, "h");
}

// ---------------------------------------------------------------- one test per error class

#[test]
fn yaml_syntax_error() {
    one("nodes:\n  DUT1:\n    host: \"unterminated\n", 3, 11, "nodes.DUT1.host", "YAML syntax error");
}

#[test]
fn duplicate_key() {
    one(&vm("    smp: 1\n    smp: 2\n"), 15, 5, "vms[0].smp", "duplicate key `smp` (first at line 14)");
}

#[test]
fn unknown_key_with_and_without_hint() {
    one(&vm("    smpp: 2\n"), 14, 5, "vms[0].smpp", "unknown key; did you mean `smp`?");
    let d = errors(&format!("{BASE}frobnicate: 1\n"));
    assert_eq!(
        (d[0].line, d[0].column, d[0].key.as_str(), d[0].message.as_str()),
        (12, 1, "frobnicate", "unknown key")
    );
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, hugepage: {}}\n",
        2,
        30,
        "nodes.DUT1.hugepage",
        "did you mean `hugepages`?",
    );
    one(
        "nodes:\n  DUT1:\n    type: DUT\n    host: h\n    interfaces:\n      port1: {link: l, mac: x}\n",
        6,
        24,
        "nodes.DUT1.interfaces.port1.mac",
        "unknown key",
    );
}

#[test]
fn not_a_positive_integer() {
    one(&vm("    smp: 0\n"), 14, 10, "vms[0].smp", "expected a positive integer");
    one(&vm("    queues: two\n"), 14, 13, "vms[0].queues", "expected a positive integer");
    one(&vm("    mem: 0\n"), 14, 10, "vms[0].mem", "expected a positive integer");
    one(&vm("    queues: 300\n"), 14, 13, "vms[0].queues", "at most 256");
    one(&vm("    mem: 99999999999999999999999\n"), 14, 10, "vms[0].mem", "expected a positive integer");
}

#[test]
fn wrong_type() {
    one(&vm("    jumbo: yes\n"), 14, 12, "vms[0].jumbo", "expected true or false");
    one(&vm("    cpus: 3\n"), 14, 11, "vms[0].cpus", "expected a list");
    one(&vm("    vars: [a]\n"), 14, 11, "vms[0].vars", "expected a map");
    one(&vm("    vars: {a: [1]}\n"), 14, 15, "vms[0].vars.a", "expected a scalar value");
    one(&vm("    vars: {a-b: 1}\n"), 14, 12, "vms[0].vars.a-b", "template variable names");
    one("nodes: [DUT1]\n", 1, 8, "nodes", "expected a map, found a list");
    one("- a\n", 1, 1, "(top)", "expected a map");
}

#[test]
fn missing_required_keys() {
    one("vms: []\n", 1, 1, "(top)", "missing required key `nodes`");
    one("nodes:\n  DUT1:\n    type: DUT\n", 2, 3, "nodes.DUT1", "missing required key `host`");
    one("nodes:\n  DUT1: {host: h}\n", 2, 3, "nodes.DUT1", "missing required key `type`");
    one(&with_vms("  - qga: true\n"), 12, 5, "vms[0]", "missing required key `node`");
    one(
        &vm("    interfaces:\n      - vhost_user: {server: true}\n"),
        15,
        9,
        "vms[0].interfaces[0].vhost_user",
        "missing required key `socket`",
    );
    one(&vm("    drives:\n      - {format: raw}\n"), 15, 9, "vms[0].drives[0]", "missing required key `file`");
    one("", 1, 1, "(top)", "empty topology file");
}

#[test]
fn bad_choice_with_hint() {
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, arch: arm64}\n",
        2,
        36,
        "nodes.DUT1.arch",
        "expected one of `x86_64`, `aarch64`",
    );
    one(&vm("    sched: fifo\n"), 14, 12, "vms[0].sched", "expected one of `rr`, `none`");
    one(&vm("    page_size: 2m\n"), 14, 16, "vms[0].page_size", "did you mean `2M`?");
    one(&vm("    kind: kernal\n"), 14, 11, "vms[0].kind", "did you mean `kernel`?");
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, qemu: {accel: kwm}}\n",
        2,
        44,
        "nodes.DUT1.qemu.accel",
        "did you mean `kvm`?",
    );
}

#[test]
fn port_range() {
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, port: 70000}\n",
        2,
        36,
        "nodes.DUT1.port",
        "port number (1-65535), at most 65535",
    );
    one("nodes:\n  DUT1: {type: DUT, host: h, port: \"22\"}\n", 2, 36, "nodes.DUT1.port", "expected a port number");
}

#[test]
fn vm_node_must_exist_and_be_a_dut() {
    one(
        &with_vms("  - {node: DUT3, qga: true}\n"),
        12,
        12,
        "vms[0].node",
        "no node `DUT3` in `nodes:`; did you mean `DUT1`?",
    );
    one(&with_vms("  - {node: TG, qga: true}\n"), 12, 12, "vms[0].node", "node `TG` is not a DUT");
}

#[test]
fn qemu_id_range_and_uniqueness() {
    one(&vm("    qemu_id: 0\n"), 14, 14, "vms[0].qemu_id", "an integer from 1 to 255");
    one(&vm("    qemu_id: 256\n"), 14, 14, "vms[0].qemu_id", "at most 255");
    one(
        &with_vms(
            "  - {node: DUT1, qemu_id: 7, qga: true}\n  - {node: DUT2, qemu_id: 7, qga: true}\n  - {node: DUT1, qemu_id: 7, qga: true}\n",
        ),
        14,
        27,
        "vms[2].qemu_id",
        "qemu_id 7 is already used on node DUT1 by vms[0]",
    );
}

#[test]
fn vm_names_unique_and_safe() {
    // The second VM gets DUT1_1 by default, which the first took explicitly.
    one(
        &with_vms("  - {node: DUT1, qemu_id: 5, name: DUT1_1, qga: true}\n  - {node: DUT1, qga: true}\n"),
        13,
        5,
        "vms[1]",
        "VM name `DUT1_1` is already used by vms[0]",
    );
    one(
        &with_vms("  - {node: DUT1, name: a, qga: true}\n  - {node: DUT2, name: a, qga: true}\n"),
        13,
        24,
        "vms[1].name",
        "already used by vms[0]",
    );
    one(&vm("    name: ../etc\n"), 14, 11, "vms[0].name", "may only contain");
}

#[test]
fn cpus_length_and_sharing() {
    one(&vm("    smp: 2\n    cpus: [1, 2, 3]\n"), 15, 5, "vms[0].cpus", "lists 3 CPUs but smp is 2");
    one(&vm("    cpus: [1, 1]\n"), 14, 15, "vms[0].cpus[1]", "CPU 1 is listed twice");
    one(
        &with_vms(
            "  - {node: DUT1, cpus: [1, 2], qga: true}\n  - {node: DUT2, cpus: [2], qga: true}\n  - {node: DUT1, cpus: [3, 2], qga: true}\n",
        ),
        14,
        28,
        "vms[2].cpus[1]",
        "CPU 2 on DUT1 is already used by vms[0]",
    );
}

#[test]
fn vfio_pci_address_shape_and_sharing() {
    one(
        &vm("    interfaces:\n      - vfio_pci: 86:0a.1\n"),
        15,
        19,
        "vms[0].interfaces[0].vfio_pci",
        "not a PCI address",
    );
    one(
        &vm("    interfaces:\n      - vfio_pci: \"0000:86:0a.8\"\n"),
        15,
        19,
        "vms[0].interfaces[0].vfio_pci",
        "not a PCI address",
    );
    one(
        &with_vms(
            "  - {node: DUT1, qga: true, interfaces: [vfio_pci: 0000:86:0a.1]}\n  - {node: DUT1, qga: true, interfaces: [vfio_pci: 0000:86:0A.1]}\n",
        ),
        13,
        52,
        "vms[1].interfaces[0].vfio_pci",
        "PCI device 0000:86:0a.1 on DUT1 is already passed to vms[0]",
    );
}

#[test]
fn paths_must_be_absolute() {
    one(
        &vm("    interfaces:\n      - vhost_user: {socket: sock-1}\n"),
        15,
        30,
        "vms[0].interfaces[0].vhost_user.socket",
        "must be an absolute path",
    );
    one(&vm("    kernel: vmlinuz\n"), 14, 13, "vms[0].kernel", "must be an absolute path");
    one(&vm("    initrd: ./initrd\n"), 14, 13, "vms[0].initrd", "must be an absolute path");
    one(&with_vms("  - {node: DUT1, kind: image, image: a.img}\n"), 12, 38, "vms[0].image", "must be an absolute path");
    one(&vm("    drives: [{file: d.raw}]\n"), 14, 21, "vms[0].drives[0].file", "must be an absolute path");
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, run_root: run}\n",
        2,
        40,
        "nodes.DUT1.run_root",
        "must be an absolute path",
    );
}

#[test]
fn socket_and_host_port_sharing() {
    one(
        &with_vms(
            "  - {node: DUT1, qga: true, interfaces: [vhost_user: {socket: /s}]}\n  - {node: DUT1, qga: true, interfaces: [vhost_user: {socket: /s}]}\n",
        ),
        13,
        63,
        "vms[1].interfaces[0].vhost_user.socket",
        "socket /s on DUT1 is already used by vms[0]",
    );
    one(
        &with_vms(
            "  - {node: DUT1, kind: image, image: /a, interfaces: [net_user: {host_port: 2222}]}\n  - {node: DUT1, kind: image, image: /b, interfaces: [net_user: {host_port: 2222}]}\n",
        ),
        13,
        77,
        "vms[1].interfaces[0].net_user.host_port",
        "host port 2222 on DUT1 is already forwarded for vms[0]",
    );
}

#[test]
fn mem_must_be_a_multiple_of_the_page_size() {
    one(
        &vm("    page_size: 1G\n    mem: 4000\n"),
        15,
        10,
        "vms[0].mem",
        "4000 MiB is not a multiple of the 1G page size",
    );
    one(&vm("    mem: 4095\n"), 14, 10, "vms[0].mem", "not a multiple of the 2M page size");
}

#[test]
fn guest_hugepages_must_fit() {
    one(
        &vm("    mem: 1024\n"),
        14,
        10,
        "vms[0].mem",
        "512 x 2M hugepages = 1024 MiB, which does not fit in mem 1024 MiB",
    );
    one(&vm("    mem: 2048\n    guest_hugepages: 2000\n"), 15, 22, "vms[0].guest_hugepages", "does not fit");
}

#[test]
fn too_many_nics() {
    let nics: String = (0..27).map(|i| format!("      - vhost_user: {{socket: /s{i}}}\n")).collect();
    one(&vm(&format!("    interfaces:\n{nics}")), 15, 7, "vms[0].interfaces", "27 NICs; at most 26");
}

#[test]
fn vnf_template_and_name() {
    one(
        &vm("    vnf: vppip4_nothere\n    interfaces: [vfio_pci: 0000:00:01.0, vfio_pci: 0000:00:02.0]\n"),
        14,
        10,
        "vms[0].vnf",
        "no template `vppip4_nothere.exec`",
    );
    one(&vm("    vnf: testpmd_ios\n"), 14, 10, "vms[0].vnf", "did you mean `testpmd_io`?");
}

#[test]
fn image_only_on_image_vms_and_required_there() {
    one(&vm("    image: /a.img\n"), 14, 5, "vms[0].image", "only applies to `kind: image` VMs");
    one(&with_vms("  - {node: DUT1, kind: image}\n"), 12, 5, "vms[0]", "missing required key `image`");
    one(
        &with_vms("  - {node: DUT1, kind: image, image: /a, kernel: /k}\n"),
        12,
        42,
        "vms[0].kernel",
        "only applies to `kind: kernel` VMs",
    );
    one(
        &with_vms(
            "  - {node: DUT1, kind: image, image: /a, vnf: testpmd_io, interfaces: [vfio_pci: 0000:00:01.0, vfio_pci: 0000:00:02.0]}\n",
        ),
        12,
        47,
        "vms[0].vnf",
        "image VM runs its own OS",
    );
}

#[test]
fn vnfs_need_two_nics() {
    one(
        &vm("    vnf: vppip4_2vhostvr1024\n    interfaces:\n      - vhost_user: {socket: /s1}\n"),
        14,
        10,
        "vms[0].vnf",
        "needs at least 2 vhost_user/vfio_pci interfaces",
    );
    one(&with_vms("  - {node: DUT1, vnf: testpmd_mac}\n"), 12, 23, "vms[0].vnf", "found 0");
    one(
        &vm("    vnf: testpmd_io\n    interfaces:\n      - vhost_user: {socket: /s1}\n      - net_user: {}\n"),
        14,
        10,
        "vms[0].vnf",
        "found 1",
    );
}

#[test]
fn a_vm_needs_a_readiness_check() {
    one(&with_vms("  - node: DUT1\n    smp: 1\n"), 12, 5, "vms[0]", "no readiness check");
    one(&with_vms("  - {node: DUT1, kind: image, image: /a, qga: false}\n"), 12, 5, "vms[0]", "no readiness check");
}

#[test]
fn vhost_user_values() {
    // Items start on line 15, the item kind at column 9.
    let item = |s: &str| vm(&format!("    interfaces:\n      - {s}\n"));
    let qs = "vms[0].interfaces[0].vhost_user.queue_size";
    one(&item("vhost_user: {socket: /s, queue_size: 512x}"), 15, 46, qs, "power of two");
    one(&item("vhost_user: {socket: /s, queue_size: 768}"), 15, 46, qs, "power of two");
    one(&item("vhost_user: {socket: /s, queue_size: 2048}"), 15, 46, qs, "at most 1024");
    one(&item("vhost_usr: {socket: /s}"), 15, 9, "vms[0].interfaces[0].vhost_usr", "did you mean `vhost_user`?");
    one(&item("net_user: {net: 10.0.2.0}"), 15, 25, "vms[0].interfaces[0].net_user.net", "not an IPv4 network");
    one(
        &item("vhost_user: {socket: /s}\n        vfio_pci: 0000:00:01.0"),
        15,
        9,
        "vms[0].interfaces[0]",
        "exactly one of",
    );
    one(
        &vm("    interfaces: [{vhost_user: {socket: /s}}, 3]\n"),
        14,
        46,
        "vms[0].interfaces[1]",
        "expected a one-key map",
    );
}

#[test]
fn durations_and_markers() {
    one(&vm("    boot_timeout: soon\n"), 14, 19, "vms[0].boot_timeout", "expected a duration");
    one(&vm("    boot_timeout: 0s\n"), 14, 19, "vms[0].boot_timeout", "expected a duration");
    one(&vm("    boot_timeout: 25h\n"), 14, 19, "vms[0].boot_timeout", "from 1ms to 24h");
    one(&vm("    ready_markers: [\"\"]\n"), 14, 5, "vms[0].ready_markers", "empty marker");
}

#[test]
fn passphrase_needs_identity_file() {
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, identity_passphrase_env: X}\n",
        2,
        30,
        "nodes.DUT1.identity_passphrase_env",
        "needs `identity_file`",
    );
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = "\
nodes:
  DUT1:
    type: DUT
    host: h
    port: 0
    archh: x86_64
vms:
  - node: DUT1
    smp: 0
    qga: true
  - node: NOPE
    qga: true
  - node: DUT1
    mem: 3
    qga: maybe
";
    let d = errors(text);
    let got: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        [
            "topology.yaml:5:11: nodes.DUT1.port: expected a port number (1-65535)",
            "topology.yaml:6:5: nodes.DUT1.archh: unknown key; did you mean `arch`?",
            "topology.yaml:9:10: vms[0].smp: expected a positive integer",
            "topology.yaml:11:11: vms[1].node: no node `NOPE` in `nodes:`",
            "topology.yaml:14:10: vms[2].mem: 3 MiB is not a multiple of the 2M page size",
            "topology.yaml:15:10: vms[2].qga: expected true or false",
        ]
    );
    // The error's Display is what the CLI prints: one line per diagnostic and a count.
    let e = load(text).unwrap_err().to_string();
    assert!(e.starts_with("6 error(s) in topology topology.yaml:\n"), "{e}");
    assert_eq!(e.lines().skip(1).collect::<Vec<_>>(), got);
}

#[test]
fn fixture_with_many_errors_reports_each_with_the_real_file_name() {
    let path = root().join("tests/fixtures/topology/many-errors.yaml");
    let d = match topology::load_with(&path, &known_vnf) {
        Err(TopologyError::Invalid(d)) => d,
        other => panic!("{other:?}"),
    };
    let got: Vec<(usize, usize, &str)> = d.iter().map(|d| (d.line, d.column, d.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (8, 5, "nodes.DUT1.host"),
            (10, 23, "nodes.DUT1.hugepages.size"),
            (12, 11, "vms[0].node"),
            (19, 19, "vms[1].interfaces[1].vfio_pci"),
            (22, 14, "vms[2].qemu_id"),
            (24, 12, "vms[2].cpus[0]"),
        ],
        "{d:#?}"
    );
    assert!(d.iter().all(|d| d.file == path));
    assert_eq!(d[0].message, "needs a value");
    assert!(!d[1].message.contains("did you mean"), "4K is no typo of 2M: {}", d[1].message);
}

#[test]
fn load_str_with_templates_needs_them_only_for_vpp_vnfs() {
    // No vpp VNF here, so the template set is never asked.
    let t = topology::load_str(
        &vm("    vnf: testpmd_io\n    interfaces: [{vfio_pci: 0000:00:01.0}, {vfio_pci: 0000:00:02.0}]\n"),
        Path::new("t.yaml"),
        &harness::templates::Templates::embedded(),
    )
    .unwrap();
    assert_eq!(t.vms[0].vnf, Vnf::TestpmdIo);
    assert_eq!(t.path, PathBuf::from("t.yaml"));
}

/// Regression: a missing file printed its cause twice (`…: No such file…: No such file…`)
/// because the message embedded the io::Error that is also its source.
#[test]
fn regression_unreadable_file_states_its_cause_once() {
    let t = harness::templates::Templates::embedded();
    let err = harness::topology::load(std::path::Path::new("/nonexistent/topology.yaml"), &t).unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.starts_with("/nonexistent/topology.yaml: cannot read"), "{shown}");
    assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
}

// ---------------------------------------------------------------- security boundaries

/// Regression: a node name became part of the default VM name and so of a remote path:
/// `render` showed `/run/harness/RUN_ID/../../../etc/cron.d/x_1`.
#[test]
fn regression_node_name_path_traversal() {
    one(
        "nodes:\n  ../../../etc/cron.d/x: {type: DUT, host: h}\nvms:\n  - {node: ../../../etc/cron.d/x, qga: true}\n",
        2,
        3,
        "nodes",
        "node name `../../../etc/cron.d/x` may only contain letters, digits, `_`, `-` and `.`",
    );
    one("nodes:\n  .hidden: {type: DUT, host: h}\n", 2, 3, "nodes", "must not start with `.`");
    one("nodes:\n  '': {type: DUT, host: h}\n", 2, 3, "nodes", "must not be empty");
}

/// Regression: a newline in a node name injected a line into the guest's init.sh, and an
/// escape sequence in it reached the terminal through the diagnostic itself.
#[test]
fn regression_node_name_newline_injection() {
    let d = errors("nodes:\n  \"DUT1\\nreboot\": {type: DUT, host: h}\n  \"D\\e[2J\": {type: DUT, host: h}\n");
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d[0].message.contains("(found U+000A)"), "{}", d[0].message);
    for d in &d {
        let shown = d.to_string();
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "{shown:?}");
    }
}

#[test]
fn regression_vm_name_leading_dot() {
    one(&vm("    name: .hidden\n"), 14, 11, "vms[0].name", "must not start with `.`");
    // CSIT-style names stay valid.
    ok(&vm("    name: DUT1_vm-1.a\n"));
}

/// Regression: `run_root` took `..`, `/.`, `//` and world-writable directories.
#[test]
fn regression_run_root_not_normalised() {
    let node = |root: &str| format!("nodes:\n  DUT1: {{type: DUT, host: h, run_root: '{root}'}}\n");
    for (root, fragment) in [
        ("/", "must not be `/`"),
        ("/run/../etc", "`.` or `..` components"),
        ("/run/./h", "`.` or `..` components"),
        ("/run/h/..", "`.` or `..` components"),
        ("/run//h", "normalised"),
        ("/run/h/", "normalised"),
        ("/tmp/h", "world-writable /tmp"),
        ("/var/tmp", "world-writable /var/tmp"),
        ("/dev/shm/x", "world-writable /dev/shm"),
        ("/run/h,fork", "must not contain `,`"),
        ("/run/h x", "must not contain a space"),
    ] {
        one(&node(root), 2, 40, "nodes.DUT1.run_root", fragment);
    }
    assert_eq!(ok(&node("/var/run/harness.d/x-1")).nodes[0].run_root, "/var/run/harness.d/x-1");
    assert_eq!(ok(&node("/tmpfoo/h")).nodes[0].run_root, "/tmpfoo/h");
}

/// Regression: socket paths went to `socat - UNIX-CONNECT:<path>` (and QEMU's `-chardev
/// socket,path=`) unescaped, where `,` and `:` start options.
#[test]
fn regression_socket_path_reaches_socat_unescaped() {
    for (sock, fragment) in [
        ("/run/vpp/s,fork", "`,`"),
        ("/run/vpp/s:1", "`:`"),
        ("/run/vpp/s!!x", "`!`"),
        ("/run/vpp/s x", "a space"),
        ("/run/vpp/s\\ty", "control characters (found U+0009)"),
        ("/run/vpp/\\\"q\\\"", "`\"`"),
    ] {
        one(
            &vm(&format!("    interfaces:\n      - vhost_user: {{socket: \"{sock}\"}}\n")),
            15,
            30,
            "vms[0].interfaces[0].vhost_user.socket",
            fragment,
        );
    }
}

/// Regression: a newline in a `vars` value added lines to startup.conf and the `.exec` file.
#[test]
fn regression_vars_newline_injection() {
    one(
        &vm("    vars: {vif1_mac: \"3c:fd:fe:aa:bb:01\\nexec /tmp/evil\"}\n"),
        14,
        22,
        "vms[0].vars.vif1_mac",
        "must not contain control characters (found U+000A)",
    );
    one(&vm("    vars: {x: \"a\\e[31m\"}\n"), 14, 15, "vms[0].vars.x", "U+001B");
    assert_eq!(ok(&vm("    vars: {x: \"a\\tb\"}\n")).vms[0].vars["x"], "a\tb");
}

/// Regression: a bad enum value was not echoed ("expected one of ..." without what was read).
#[test]
fn regression_enum_errors_echo_the_value() {
    one(&vm("    vnf: nosuchvnf\n"), 14, 10, "vms[0].vnf", "unknown vnf `nosuchvnf`");
    one("nodes:\n  DUT1: {type: DUT, host: h, arch: arm64}\n", 2, 36, "nodes.DUT1.arch", "unknown arch `arm64`");
    one(&vm("    sched: fifo\n"), 14, 12, "vms[0].sched", "unknown sched `fifo`");
    one(&vm("    kind: kernal\n"), 14, 11, "vms[0].kind", "unknown kind `kernal`");
    one(&vm("    page_size: 4K\n"), 14, 16, "vms[0].page_size", "unknown page_size `4K`");
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, qemu: {accel: kwm}}\n",
        2,
        44,
        "nodes.DUT1.qemu.accel",
        "unknown accel `kwm`",
    );
}

/// Regression: a UTF-8 byte order mark became part of the first key (`\u{feff}nodes`).
#[test]
fn regression_utf8_bom() {
    let t = ok(&format!("\u{feff}{}", vm("")));
    assert_eq!(t.nodes.len(), 3);
}

/// Regression: billion laughs (6 GB) and a 100k-deep list (SIGABRT) are clean errors.
#[test]
fn regression_yaml_bombs_are_clean_errors() {
    let mut laughs = String::from("metadata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        laughs.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
    }
    laughs.push_str("nodes: {}\n");
    let d = errors(&laughs);
    assert!(d[0].message.contains("more than 100000 nodes"), "{d:?}");
    let deep: String = (0..100_000).map(|i| format!("{}-\n", " ".repeat(i % 300))).collect();
    let d = errors(&format!("metadata:\n{}", deep.lines().map(|l| format!("  {l}\n")).collect::<String>()));
    assert!(d[0].message.contains("deeper than 256"), "{d:?}");
}

/// Hardening 15: `validate` said "ok" on inputs `render` then rejected, and plan errors had no
/// position. Now both refuse them the same way, at the VM's `file:line:col`, exit 2.
#[test]
fn regression_validate_accepts_what_render_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A VPP VNF whose `.exec` template needs vif1_mac/vif2_mac, which nothing sets.
        (
            "    vnf: vppip4_2vhostvr1024\n    interfaces:\n      - vhost_user: {socket: /run/vpp/a}\n      - vhost_user: {socket: /run/vpp/b}\n",
            "vif1_mac",
        ),
        // testpmd needs a main lcore and a forwarding core.
        (
            "    vnf: testpmd_io\n    smp: 1\n    interfaces:\n      - vhost_user: {socket: /run/vpp/a}\n      - vhost_user: {socket: /run/vpp/b}\n",
            "testpmd needs smp >= 2",
        ),
    ];
    for (i, (extra, fragment)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("t{i}.yaml"));
        std::fs::write(&path, vm(extra)).unwrap();
        for cmd in ["validate", "render"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness")).arg(cmd).arg(&path).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {i}: {err}");
            assert!(err.contains(&format!("{}:12:5: vms[0]: ", path.display())), "{cmd} {i}: {err}");
            assert!(err.contains(fragment), "{cmd} {i}: {err}");
        }
    }
}

/// `replay --vm NAME` with a VM the bundle does not have is an input error: exit 2, naming the
/// VM, before any host is asked (it exited 1). The node's address (10.0.0.2) is not on this
/// machine, so a connection attempt would end in a connection error instead.
#[test]
fn regression_replay_unknown_vm_exited_1_not_2() {
    let dir = tempfile::tempdir().unwrap();
    let topo = vm("");
    let topo_path = dir.path().join("lab.yaml");
    std::fs::write(&topo_path, &topo).unwrap();
    let run_dir = dir.path().join("r1");
    let meta = harness::pipeline::bundle::Meta::new("r1", &topo_path, None, &[]);
    harness::pipeline::bundle::record(&run_dir, &meta, topo.as_bytes()).unwrap();
    std::fs::write(run_dir.join("plan.json"), "{}").unwrap();
    let bundle = dir.path().join("r1.tar.gz");
    harness::pipeline::bundle::pack(&run_dir, &bundle).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["replay", bundle.to_str().unwrap(), "--vm", "NOPE_9", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("NOPE_9"), "{err}");
}

/// A hugetlbfs mount point with a space passed validation: the host's hugepage journal, read
/// back one space-separated word at a time, then named only its first word, so the run's own
/// mount was never unmounted (and `/dev/hugepages 1G` would have unmounted `/dev/hugepages`).
#[test]
fn regression_a_hugepage_mount_path_with_whitespace_is_refused() {
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, hugepages: {mounts: {1G: \"/dev/hugepages 1G\"}}}\n",
        2,
        55,
        "nodes.DUT1.hugepages.mounts.1G",
        "must not contain whitespace or control characters (found U+0020)",
    );
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, hugepages: {mounts: {2M: \"/mnt/h\\tx\"}}}\n",
        2,
        55,
        "nodes.DUT1.hugepages.mounts.2M",
        "(found U+0009)",
    );
    assert_eq!(
        ok("nodes:\n  DUT1: {type: DUT, host: h, hugepages: {mounts: {2M: \"/mnt/h,x\"}}}\n").nodes[0].hugepages.mounts
            [&topology::PageSize::M2],
        "/mnt/h,x"
    );
}

/// A newline in a path (`qemu.bin_dir: "/usr/bin\nsudo_rc=0"`) reached the host-facts probe's
/// `key=value` output as a line of its own: a topology could spoof facts. Paths with control
/// characters are refused where they are written.
#[test]
fn regression_a_path_with_a_control_character_is_refused() {
    one(
        "nodes:\n  DUT1: {type: DUT, host: h, qemu: {bin_dir: \"/usr/bin\\nsudo_rc=0\"}}\n",
        2,
        46,
        "nodes.DUT1.qemu.bin_dir",
        "must not contain control characters (found U+000A)",
    );
    one(&vm("    kernel: \"/boot/vm\\tlinuz\"\n"), 14, 13, "vms[0].kernel", "(found U+0009)");
}

/// A default `<node>_<qemu_id>` name longer than 64 characters validated (only written names
/// were checked), and then `up`'s cleanup and `down` could not build its paths: a failed `up`
/// left that QEMU running.
#[test]
fn regression_default_and_chain_vm_names_longer_than_64_characters_are_refused() {
    let node = "D".repeat(64);
    let text = format!(
        "nodes:\n  {node}:\n    type: DUT\n    host: 10.0.0.2\nvms:\n  - node: {node}\n    qemu_id: 200\n    qga: true\n"
    );
    one(&text, 6, 5, "vms[0]", &format!("the default name `{node}_200` is longer than 64 characters"));
    let chain = format!(
        "nodes:\n  {node}:\n    type: DUT\n    host: 10.0.0.2\nchains:\n  - node: {node}\n    nf_chains: 1\n    \
         nf_nodes: 1\n    vnf: vppip4_2vhostvr1024\n    vs_dtc: 1\n    nf_dtc: 1\n    \
         tg_macs: [\"02:00:00:00:00:01\", \"02:00:00:00:00:02\"]\n    vm: {{kernel: /k}}\n"
    );
    let d = errors(&chain);
    let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        d.iter().any(|d| d.line == 6
            && d.key == "chains[0]"
            && d.message.contains(&format!("`{node}_1` is longer than 64 characters"))),
        "{all}"
    );
    // 63 characters + `_1` still fits.
    let fits = "D".repeat(62);
    ok(&format!("nodes:\n  {fits}:\n    type: DUT\n    host: 10.0.0.2\nvms:\n  - node: {fits}\n    qga: true\n"));
}

/// A node's `interfaces.*.mac_address` was read as any string: it becomes a `testpmd_mac`
/// chain VM's `vif1_mac`/`vif2_mac`, testpmd's `--eth-peer` and `render` output, so
/// `mac_address: "x'$(touch /tmp/pwn)'"` went into the guest's init script.
#[test]
fn regression_a_node_mac_address_is_not_validated() {
    let node = |mac: &str| {
        format!(
            "nodes:\n  DUT1:\n    type: DUT\n    host: h\n    interfaces:\n      vhost1: {{mac_address: \"{mac}\"}}\n"
        )
    };
    let key = "nodes.DUT1.interfaces.vhost1.mac_address";
    for mac in ["x'$(touch /tmp/pwn)'", "aa:bb", "3c:fd:fe:aa:bb:0g", "3c-fd-fe-aa-bb-01", "3c:fd:fe:aa:bb:01:02"] {
        one(&node(mac), 6, 29, key, "is not a MAC address like `3c:fd:fe:aa:bb:01`");
    }
    one(&node("aa:bb\\e]0;PWNED\\a"), 6, 29, key, "must not contain control characters (found U+001B)");
    let t = ok(&node("3C:FD:FE:aa:bb:01"));
    assert_eq!(t.nodes[0].interfaces["vhost1"].mac_address.as_deref(), Some("3C:FD:FE:aa:bb:01"));
    // The reviewer's chain: both host ports refused, nothing reaches the chain's VMs.
    let d = errors(
        "nodes:\n  DUT1:\n    type: DUT\n    host: 10.0.0.2\n    interfaces:\n      \
         vhost1: {mac_address: \"aa:bb\\e]0;PWNED\\a\\e[2J\"}\n      \
         vhost2: {mac_address: \"x'$(touch /tmp/pwn)'\\nreboot\"}\nchains:\n  - node: DUT1\n    nf_chains: 1\n    \
         nf_nodes: 1\n    vnf: testpmd_mac\n    vs_dtc: 0\n    nf_dtc: 1\n    \
         tg_macs: [\"3c:fd:fe:aa:bb:01\", \"3c:fd:fe:aa:bb:02\"]\n    vm: {cpus: [2, 3], kernel: /opt/boot/vmlinuz}\n",
    );
    let keys: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["nodes.DUT1.interfaces.vhost1.mac_address", "nodes.DUT1.interfaces.vhost2.mac_address"]);
}

/// Strings the loader read (`host`, `username`, markers, `extra_args`, `collect`,
/// `init_command`, ...) were never checked for control characters: `harness render` wrote a
/// `host: "10.0.0.2\e[2J"` raw to the terminal, and a CR in `username` overwrote its line.
#[test]
fn regression_control_characters_in_topology_strings_are_refused() {
    let node = |extra: &str| format!("nodes:\n  DUT1:\n    type: DUT\n    host: h\n{extra}");
    let cases = [
        ("    username: \"u\\rFAKE LINE\"\n", 15, "nodes.DUT1.username", "U+000D"),
        ("    password: \"hunter2\\a\"\n", 15, "nodes.DUT1.password", "U+0007"),
        ("    proxy_jump: \"jump\\x9b2J\"\n", 17, "nodes.DUT1.proxy_jump", "U+009B"),
        ("    identity_file: \"~/.ssh/id\\x7f\"\n", 20, "nodes.DUT1.identity_file", "U+007F"),
        ("    interfaces: {port1: {model: \"X\\e[5m\"}}\n", 33, "nodes.DUT1.interfaces.port1.model", "U+001B"),
        ("    interfaces: {\"port\\e[1\": {link: l}}\n", 18, "nodes.DUT1.interfaces", "U+001B"),
    ];
    for (extra, column, key, code) in cases {
        one(&node(extra), 5, column, key, &format!("must not contain control characters (found {code})"));
    }
    one(
        "nodes:\n  DUT1:\n    type: DUT\n    host: \"10.0.0.2\\e[2J\\e]0;host-title\\a\"\n",
        4,
        11,
        "nodes.DUT1.host",
        "must not contain control characters (found U+001B)",
    );
    let d = errors(&node("    password: \"hunter2\\e\"\n"));
    assert!(!d[0].to_string().contains("hunter2"), "the message must not show the password: {}", d[0]);
    let vm_cases = [
        ("    ready_markers: [\"READY\\e[31m red\"]\n", 21, "vms[0].ready_markers[0]"),
        ("    fail_markers: [\"\\e]0;fail-title\\a\"]\n", 20, "vms[0].fail_markers[0]"),
        ("    init_command: \"echo hi\\e[5m\"\n", 19, "vms[0].init_command"),
        ("    extra_args: [\"-device\", \"virtio-rng-pci\\e[1A\"]\n", 29, "vms[0].extra_args[1]"),
        ("    collect: [[\"cat\", \"/proc/x\\e[7m\"]]\n", 23, "vms[0].collect[0][1]"),
        ("    collect: [\"cat /proc/x\\e[7m\"]\n", 15, "vms[0].collect[0]"),
        ("    extra_args: [\"-device\", \"a\\nb\"]\n", 29, "vms[0].extra_args[1]"),
    ];
    for (extra, column, key) in vm_cases {
        one(&vm(extra), 14, column, key, "must not contain control characters (found U+00");
    }
    // Tabs are fine; a private key and the init commands are several lines by nature.
    let t = ok(&format!(
        "{}  - node: DUT1\n    qga: true\n    init_command: |\n      modprobe vfio\n      /opt/lab/agent &\n    \
         ready_markers: [\"READY\\tok\"]\n",
        BASE.replace(
            "    host: 10.0.0.2\n",
            "    host: 10.0.0.2\n    priv_key: |\n      -----BEGIN KEY-----\n      \
                      c2VjcmV0\n      -----END KEY-----\n"
        )
    ));
    assert_eq!(t.vms[0].init_command.as_deref(), Some("modprobe vfio\n/opt/lab/agent &\n"));
    assert_eq!(t.vms[0].ready_markers[0], "READY\tok");
    assert_eq!(
        t.node("DUT1").unwrap().auth,
        vec![Auth::PrivateKeyPem("-----BEGIN KEY-----\nc2VjcmV0\n-----END KEY-----\n".into())]
    );
    // ... but not with a CR; and no string may reorder what the terminal shows.
    one(&vm("    init_command: \"a\\r\\nb\"\n"), 14, 19, "vms[0].init_command", "(found U+000D)");
    one(
        &vm("    extra_args: [\"-device\", \"a\\u202eb\"]\n"),
        14,
        29,
        "vms[0].extra_args[1]",
        "bidirectional overrides (found U+202E)",
    );
}

/// `up` of a topology without a VM exited 1 ("a remote command failed") although nothing was
/// asked of any host: it is invalid input, exit 2, like every other topology problem. The node's
/// address (10.0.0.2) is not on this machine: a connection attempt would fail differently.
#[test]
fn regression_up_with_no_vms_exited_1_not_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    std::fs::write(&path, "nodes:\n  DUT1: {type: DUT, host: 10.0.0.2}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["up", path.to_str().unwrap(), "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no VMs to start"), "{err}");
}

/// `hugepages.mounts` took any path, and `allocate: true` mounts hugetlbfs there as root: `2M:
/// /etc` would hide the host's /etc (sudo broken from then on). A mount point must be absolute,
/// normalised and not a system directory; the host refuses a non-empty directory too.
#[test]
fn regression_a_hugepage_mount_over_a_system_directory_is_refused() {
    for (path, fragment) in [
        ("/etc", "system directory /etc"),
        ("/", "system directory /"),
        ("/run", "system directory /run"),
        ("/dev/hugepages/../../usr", "`.` or `..`"),
        ("/mnt//huge", "normalised"),
        ("mnt/huge", "absolute"),
    ] {
        one(
            &format!("nodes:\n  DUT1: {{type: DUT, host: h, hugepages: {{mounts: {{2M: \"{path}\"}}}}}}\n"),
            2,
            55,
            "nodes.DUT1.hugepages.mounts.2M",
            fragment,
        );
    }
    ok("nodes:\n  DUT1: {type: DUT, host: h, hugepages: {mounts: {2M: /mnt/huge, 1G: /dev/hugepages1G}}}\n");
}

/// Two VMs of a node could name one writable disk (`image`, or a non-cdrom drive): with QEMU's
/// image locking off (`file.locking=off`) both would write it and corrupt it. A shared cdrom is
/// fine.
#[test]
fn regression_two_vms_writing_one_disk_are_refused() {
    let e = errors(&with_vms(
        "  - {node: DUT1, kind: image, image: /var/lib/vm/u.qcow2}\n  - {node: DUT1, kind: image, image: /var/lib/vm/u.qcow2}\n",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].to_string().contains("disk /var/lib/vm/u.qcow2 on DUT1 is already used by vms[0]"), "{}", e[0]);
    let e = errors(&with_vms(
        "  - {node: DUT1, qga: true, drives: [{file: /d.raw}]}\n  - {node: DUT1, qga: true, drives: [{file: /d.raw}]}\n",
    ));
    assert!(e[0].to_string().contains("disk /d.raw"), "{}", e[0]);
    // Another node, or a cdrom: no conflict.
    ok(&with_vms("  - {node: DUT1, kind: image, image: /u.qcow2}\n  - {node: DUT2, kind: image, image: /u.qcow2}\n"));
    ok(&with_vms(
        "  - {node: DUT1, qga: true, drives: [{file: /s.iso, cdrom: true}]}\n  - {node: DUT1, qga: true, drives: [{file: /s.iso, cdrom: true}]}\n",
    ));
}

/// Socket uniqueness compared the paths as written: `/run/vpp//a` and `/run/vpp/./a` passed as
/// different sockets beside `/run/vpp/a`, and two QEMU servers then bound one file. Socket
/// paths must be normalised now.
#[test]
fn regression_two_spellings_of_one_socket_are_refused() {
    for (sock, fragment) in
        [("/run/vpp//a", "normalised"), ("/run/vpp/./a", "`.` or `..`"), ("/run/vpp/a/", "normalised")]
    {
        let e = errors(&vm(&format!("    interfaces:\n      - vhost_user: {{socket: \"{sock}\"}}\n")));
        assert!(e.iter().any(|d| d.message.contains(fragment) && d.key.ends_with("socket")), "{sock}: {e:?}");
    }
}

/// Three ways `vars` slipped past the loader: `vpp_cli_listen`/`vpp_api_socket` went into
/// startup.conf unescaped (`/s } plugins { plugin default { enable } } unix {` closed the
/// `unix` section and enabled every plugin); a name harness computes (`queues`, `smp`, ...) was
/// silently overwritten; and a null value became the text `~` or nothing, passing the
/// "needs vars.vif1_mac" check.
#[test]
fn regression_vars_that_inject_config_are_dropped_or_null_are_refused() {
    let with = |vars: &str| {
        vm(&format!(
            "    vnf: vppip4_2vhostvr1024\n    interfaces: [{{vhost_user: {{socket: /run/vpp/a}}}}, {{vhost_user: {{socket: /run/vpp/b}}}}]\n    vars: {{vif2_mac: \"02:00:00:00:00:02\", {vars}}}\n"
        ))
    };
    let e =
        errors(&with("vpp_cli_listen: \"/run/vpp/cli.sock } plugins { plugin default { enable } } unix { nodaemon\""));
    assert!(e.iter().any(|d| d.key == "vms[0].vars.vpp_cli_listen" && d.message.contains("a space")), "{e:?}");
    let e = errors(&with("vpp_api_socket: api.sock"));
    assert!(e.iter().any(|d| d.key == "vms[0].vars.vpp_api_socket" && d.message.contains("absolute")), "{e:?}");
    let e = errors(&with("queues: 4"));
    assert!(e.iter().any(|d| d.key == "vms[0].vars.queues" && d.message.contains("`queues:`")), "{e:?}");
    for null in ["vif1_mac: ", "vif1_mac: ~", "vif1_mac: null"] {
        let e = errors(&with(null));
        assert!(
            e.iter().any(|d| d.key == "vms[0].vars.vif1_mac" && d.message.contains("found nothing")),
            "{null}: {e:?}"
        );
    }
    ok(&with(
        "vif1_mac: \"02:00:00:00:00:01\", vpp_cli_listen: /run/vpp/cli-1.sock, vpp_api_socket: /run/vpp/api-1.sock, empty: \"\"",
    ));
}

/// A VM named `manifest-x.json` (or `hugepages-DUT1.journal`) passed: its directory was taken
/// for a node's manifest by the host's scripts (`down` then never unmounted hugetlbfs), or
/// turned the journal path into a directory. And `run_root: /mnt/h` passed, where a kernel
/// guest mounts its run directory out of sight: VPP never found its configuration.
#[test]
fn regression_vm_names_of_run_files_and_run_roots_the_guest_hides_are_refused() {
    for name in ["manifest-x.json", "hugepages-DUT1.journal"] {
        let e = errors(&vm(&format!("    name: {name}\n")));
        assert!(e.iter().any(|d| d.key == "vms[0].name" && d.message.contains("run file")), "{name}: {e:?}");
    }
    ok(&vm("    name: manifest-x\n"));
    for root in ["/mnt/harness", "/mnt", "/dev/shm2/h", "/proc/h"] {
        let e = errors(&format!("nodes:\n  DUT1: {{type: DUT, host: h, run_root: '{root}'}}\n"));
        assert!(e.iter().any(|d| d.key == "nodes.DUT1.run_root"), "{root}: {e:?}");
    }
    ok("nodes:\n  DUT1: {type: DUT, host: h, run_root: /mntx/h}\n");
}

/// `smp` is at most 1024, but without `smp` it came from `len(cpus)`: a 2000-entry `cpus` list
/// validated and rendered `-smp 2000`.
#[test]
fn regression_a_cpus_list_longer_than_the_vcpu_limit_is_refused() {
    let list: Vec<String> = (0..1025).map(|i| i.to_string()).collect();
    let e = errors(&vm(&format!("    cpus: [{}]\n", list.join(", "))));
    assert!(e.iter().any(|d| d.key == "vms[0].cpus" && d.message.contains("at most 1024 vCPUs")), "{e:?}");
}

/// A run whose topology was withheld from its record (secrets behind a YAML alias) printed
/// "replay of this run will need --topology", but `replay --topology NEW.yaml` then failed (the
/// placeholder is not a mapping) and without it the error was "empty topology file". Now the
/// given topology is planned whole, and without one the error says to give it (exit 2).
#[test]
fn regression_a_withheld_topology_replays_with_the_one_given() {
    let dir = tempfile::tempdir().unwrap();
    let topo = "nodes:\n  DUT1: {type: DUT, host: 127.0.0.9, port: 1, password: &pw hunter2}\nmetadata: {x: *pw}\nvms:\n  - {node: DUT1, qga: true}\n";
    let topo_path = dir.path().join("lab.yaml");
    std::fs::write(&topo_path, topo).unwrap();
    let run_dir = dir.path().join("r1");
    let meta = harness::pipeline::bundle::Meta::new("r1", &topo_path, None, &[]);
    harness::pipeline::bundle::record(&run_dir, &meta, topo.as_bytes()).unwrap();
    assert!(harness::pipeline::bundle::is_withheld(&std::fs::read(run_dir.join("topology.yaml")).unwrap()));
    std::fs::write(run_dir.join("plan.json"), "{}").unwrap();
    let bundle = dir.path().join("r1.tar.gz");
    harness::pipeline::bundle::pack(&run_dir, &bundle).unwrap();
    let replay = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["replay", bundle.to_str().unwrap(), "--dry-run", "--connect-timeout", "2s"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = replay(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--topology"), "{err}");
    // With one: planned whole, up to the facts (the node is not there: unreachable, exit 3).
    let new = dir.path().join("new.yaml");
    std::fs::write(&new, "nodes:\n  DUT1: {type: DUT, host: 127.0.0.9, port: 1}\nvms:\n  - {node: DUT1, qga: true}\n")
        .unwrap();
    let out = replay(&["--topology", new.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("planning") && !err.contains("empty"), "{err}");
}

/// `vnf: vpp_2vfpt_*` over vhost_user NICs loaded: its .exec creates avf interfaces on PCI
/// devices the VM does not have (CSIT's recipe passes them through with vfio-pci). A chain of
/// them was refused already; a `vms:` entry now too.
#[test]
fn regression_a_passthrough_vnf_over_vhost_nics_is_refused() {
    let e = errors(&vm(
        "    vnf: vpp_2vfpt_ip4base_plen24\n    interfaces: [{vhost_user: {socket: /run/vpp/a}}, {vhost_user: {socket: /run/vpp/b}}]\n",
    ));
    assert!(e.iter().any(|d| d.key == "vms[0].vnf" && d.message.contains("vfio_pci")), "{e:?}");
}

/// Four `net_user` NICs listed before the data NICs of a kernel VM took the auto PCI slots 3 to
/// 6 (the 9p root has 2): the first vhost NIC's `addr=6.0` was taken and QEMU refused to start,
/// long after `validate` said the topology was fine.
#[test]
fn regression_net_user_nics_before_the_data_nics_cannot_take_slot_6() {
    let nu = "{net_user: {net: 10.0.2.0/24}}";
    let data = "{vhost_user: {socket: /run/vpp/a}}, {vhost_user: {socket: /run/vpp/b}}";
    let topo = |ifaces: String| vm(&format!("    vnf: testpmd_io\n    smp: 2\n    interfaces: [{ifaces}]\n"));
    let dir = tempfile::tempdir().unwrap();
    let validate = |text: String| {
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_harness")).arg("validate").arg(&p).output().unwrap()
    };
    let out = validate(topo(format!("{nu}, {nu}, {nu}, {nu}, {data}")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PCI slot 6"), "{out:?}");
    // Three before, or any number after: fine.
    assert!(validate(topo(format!("{nu}, {nu}, {nu}, {data}"))).status.success());
    assert!(validate(topo(format!("{data}, {nu}, {nu}, {nu}, {nu}"))).status.success());
}
