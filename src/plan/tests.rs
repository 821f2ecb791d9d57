//! Unit tests of the plan builder on exact values (golden files live in tests/golden/).

use super::fixture::{dut, image_vm, topology, vhost, vm};
use super::*;
use crate::facts::{FactsByNode, HostFacts};
use crate::topology::{Accel, Arch, PageSize, VmInterface, Vnf};
use crate::topology::{Drive, Sched, VhostUser};

fn build_one(node: Node, v: Vm) -> Result<VmPlan, PlanError> {
    let t = Templates::embedded();
    let topo = topology(vec![node], vec![v]);
    let plan = build(&topo, &FactsByNode::new(), &PlanOptions { run_id: "r1".into(), templates: &t, only_vms: &[] })?;
    Ok(plan.nodes[0].vms[0].clone())
}

fn value_after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    argv.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
}

#[test]
fn paths_live_in_the_vm_run_dir() {
    let p = build_one(dut("DUT1"), vm("DUT1", 1)).unwrap();
    assert_eq!(p.paths.run_dir, "/run/harness/r1/DUT1_1");
    assert_eq!(p.paths.pidfile, "/run/harness/r1/DUT1_1/qemu.pid");
    assert_eq!(p.paths.qga, None);
    let files: Vec<(&str, u32)> = p.files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert_eq!(
        files,
        [
            ("/run/harness/r1/DUT1_1/init.sh", 0o755),
            ("/run/harness/r1/DUT1_1/startup.conf", 0o644),
            ("/run/harness/r1/DUT1_1/running.exec", 0o644)
        ]
    );
    assert!(p.files[0].content.contains("\n/usr/bin/vpp -c /run/harness/r1/DUT1_1/startup.conf\n"));
    assert!(p.files[1].content.contains("  exec /run/harness/r1/DUT1_1/running.exec\n"));
}

#[test]
fn accel_arguments_follow_the_decided_accelerator() {
    let p = build_one(dut("DUT1"), vm("DUT1", 1)).unwrap();
    assert!(p.argv.contains(&"-enable-kvm".to_string()));
    assert_eq!(value_after(&p.argv, "-cpu"), ["host"]);
    assert_eq!(value_after(&p.argv, "-machine"), ["pc,accel=kvm,usb=off,mem-merge=off"]);
    let mut n = dut("DUT1");
    n.qemu.accel = Accel::Tcg;
    n.arch = Arch::Aarch64;
    let p = build_one(n, vm("DUT1", 1)).unwrap();
    assert!(!p.argv.contains(&"-enable-kvm".to_string()));
    assert_eq!(value_after(&p.argv, "-cpu"), ["max"]);
    assert_eq!(value_after(&p.argv, "-machine"), ["virt,accel=tcg,usb=off,mem-merge=off,gic-version=3"]);
    assert_eq!(p.argv[0], "/usr/bin/qemu-system-aarch64");
}

fn build_with_facts(node: Node, v: Vm, facts: HostFacts) -> Result<NodePlan, PlanError> {
    let t = Templates::embedded();
    let topo = topology(vec![node], vec![v]);
    let facts = FactsByNode::from([("DUT1".to_string(), facts)]);
    let plan = build(&topo, &facts, &PlanOptions { run_id: "r1".into(), templates: &t, only_vms: &[] })?;
    Ok(plan.nodes[0].clone())
}

/// `auto` is KVM only when the probe guest ran; without the fact it stays open and says so.
#[test]
fn auto_accel_is_decided_by_the_kvm_fact() {
    use crate::facts::Kvm;
    let mut n = dut("DUT1");
    n.qemu.accel = Accel::Auto;
    let broken = HostFacts { kvm: Some(Kvm::Broken("MSR".into())), ..HostFacts::default() };
    let np = build_with_facts(n.clone(), vm("DUT1", 1), broken).unwrap();
    assert_eq!(np.accel, AccelChoice::Tcg);
    assert!(!np.vms[0].argv.contains(&"-enable-kvm".to_string()));
    assert_eq!(value_after(&np.vms[0].argv, "-cpu"), ["max"]);
    assert!(np.unresolved.iter().all(|u| u.what != "accel"));
    let usable = HostFacts { kvm: Some(Kvm::Usable), ..HostFacts::default() };
    assert_eq!(build_with_facts(n.clone(), vm("DUT1", 1), usable).unwrap().accel, AccelChoice::Kvm);
    let unknown = build_with_facts(n, vm("DUT1", 1), HostFacts::default()).unwrap();
    let u = unknown.unresolved.iter().find(|u| u.what == "accel").expect("accel unresolved");
    assert!(u.up_decides.contains("probe guest"), "{u:?}");
}

/// Kernel prefixes: the looked-up file goes into argv; no lookup leaves the prefix (unresolved);
/// a lookup that found nothing is an error naming the prefix.
#[test]
fn kernel_and_initrd_prefixes_are_resolved_from_facts() {
    let p = build_one(dut("DUT1"), vm("DUT1", 1)).unwrap();
    assert_eq!(value_after(&p.argv, "-kernel"), ["/opt/boot/vmlinuz"]);
    let lookups = [
        ("/opt/boot/vmlinuz".to_string(), Some("/opt/boot/vmlinuz-6.1.0-amd64".to_string())),
        ("/opt/boot/initrd.img".to_string(), Some("/opt/boot/initrd.img-6.1.0-amd64".to_string())),
    ];
    let f = HostFacts { lookups: Some(lookups.clone().into()), ..HostFacts::default() };
    let np = build_with_facts(dut("DUT1"), vm("DUT1", 1), f).unwrap();
    assert_eq!(value_after(&np.vms[0].argv, "-kernel"), ["/opt/boot/vmlinuz-6.1.0-amd64"]);
    assert_eq!(value_after(&np.vms[0].argv, "-initrd"), ["/opt/boot/initrd.img-6.1.0-amd64"]);
    assert!(np.unresolved.is_empty(), "{:?}", np.unresolved);
    let unknown = build_with_facts(dut("DUT1"), vm("DUT1", 1), HostFacts::default()).unwrap();
    assert_eq!(unknown.unresolved.iter().filter(|u| u.what == "kernel" || u.what == "initrd").count(), 2);
    let mut none = lookups;
    none[0].1 = None;
    let f = HostFacts { lookups: Some(none.into()), ..HostFacts::default() };
    let e = build_with_facts(dut("DUT1"), vm("DUT1", 1), f).unwrap_err().to_string();
    assert!(e.contains("no file matches /opt/boot/vmlinuz*"), "{e}");
}

/// On a host with two NUMA nodes, guest RAM and its hugepage need follow the pinned CPUs' node.
#[test]
fn numa_binding_and_hugepage_needs_from_the_cpu_layout() {
    let lscpu = "# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,0,,1,1,1,0\n2,2,1,1,,2,2,2,1\n3,3,1,1,,3,3,3,1\n";
    let mut v = vm("DUT1", 1);
    v.cpus = Some(vec![2, 3]);
    let np = build_with_facts(dut("DUT1"), v.clone(), HostFacts::from_lscpu(lscpu.into())).unwrap();
    assert_eq!(np.vms[0].numa, Some(1));
    let mem = np.vms[0].argv.iter().find(|a| a.starts_with("memory-backend-file,")).unwrap();
    assert!(mem.ends_with(",share=on,prealloc=on,host-nodes=1,policy=bind"), "{mem}");
    assert_eq!(
        np.hugepages,
        [HugepageNeed { size: PageSize::M2, numa: Some(1), pages: 2048, mount: "/dev/hugepages".into() }]
    );
    // Without a layout the binding is open; a CPU the host lacks is an error.
    let unknown = build_with_facts(dut("DUT1"), v.clone(), HostFacts::default()).unwrap();
    assert!(unknown.unresolved.iter().any(|u| u.what == "numa"));
    assert_eq!(unknown.hugepages[0].numa, None);
    v.cpus = Some(vec![2, 9]);
    let e = build_with_facts(dut("DUT1"), v, HostFacts::from_lscpu(lscpu.into())).unwrap_err().to_string();
    assert!(e.contains("CPU 9 is not a CPU of node DUT1"), "{e}");
}

#[test]
fn unique_macs_carry_the_dut_index() {
    let t = Templates::embedded();
    let mut topo = topology(vec![dut("DUT1"), dut("DUT2")], vec![vm("DUT1", 1), vm("DUT2", 1)]);
    let plan =
        build(&topo, &FactsByNode::new(), &PlanOptions { run_id: "r".into(), templates: &t, only_vms: &[] }).unwrap();
    assert_eq!(plan.nodes[1].vms[0].nics[1].mac.as_deref(), Some("52:54:00:00:01:02"));
    topo.unique_macs = true;
    let plan =
        build(&topo, &FactsByNode::new(), &PlanOptions { run_id: "r".into(), templates: &t, only_vms: &[] }).unwrap();
    assert_eq!(plan.nodes[0].vms[0].nics[0].mac.as_deref(), Some("52:54:00:01:01:01"));
    assert_eq!(plan.nodes[1].vms[0].nics[1].mac.as_deref(), Some("52:54:00:02:01:02"));
    assert!(plan.nodes[1].vms[0].files[2].content.contains(" 52:54:00:02:01:02\n"));
}

#[test]
fn hugepages_are_summed_per_size() {
    let t = Templates::embedded();
    let mut big = vm("DUT1", 2);
    big.page_size = PageSize::G1;
    big.guest_hugepages = 3;
    let mut n = dut("DUT1");
    n.hugepages.mounts.insert(PageSize::G1, "/mnt/huge1g".into());
    let topo = topology(vec![n, dut("DUT2")], vec![vm("DUT1", 1), big, vm("DUT1", 3)]);
    let plan =
        build(&topo, &FactsByNode::new(), &PlanOptions { run_id: "r".into(), templates: &t, only_vms: &[] }).unwrap();
    assert_eq!(plan.nodes.len(), 1, "DUT2 has no VMs");
    let h: Vec<(PageSize, u64, &str)> =
        plan.nodes[0].hugepages.iter().map(|h| (h.size, h.pages, h.mount.as_str())).collect();
    assert_eq!(h, [(PageSize::M2, 4096, "/dev/hugepages"), (PageSize::G1, 4, "/mnt/huge1g")]);
    let obj = value_after(&plan.nodes[0].vms[1].argv, "-object");
    assert_eq!(obj, ["memory-backend-file,id=mem,size=4096M,mem-path=/mnt/huge1g,share=on,prealloc=on"]);
}

#[test]
fn vhost_device_has_no_trailing_comma_and_follows_gso() {
    let mut v = vm("DUT1", 12);
    v.interfaces = vec![VmInterface::VhostUser(VhostUser {
        socket: "/run/vpp/sock-12-1".into(),
        server: true,
        queue_size: None,
        queues: 2,
        csum: true,
        gso: true,
        vectors: None,
    })];
    let p = build_one(dut("DUT1"), v).unwrap();
    let dev = value_after(&p.argv, "-device");
    assert_eq!(
        dev.last().unwrap(),
        &"virtio-net-pci,netdev=vhost1,mac=52:54:00:00:0c:01,addr=6.0,mq=on,vectors=6,csum=on,gso=on,guest_tso4=on,guest_tso6=on,guest_ecn=on"
    );
}

#[test]
fn many_nics_get_hex_slots_and_too_many_fail() {
    let mut v = vm("DUT1", 1);
    v.interfaces = (1..=5).map(|i| vhost(&format!("/s{i}"))).collect();
    let p = build_one(dut("DUT1"), v.clone()).unwrap();
    assert_eq!(p.nics[4].guest_pci.as_deref(), Some("0000:00:0a.0"));
    assert!(value_after(&p.argv, "-device").iter().any(|d| d.contains(",addr=a.0,")));
    v.interfaces = (1..=27).map(|i| vhost(&format!("/s{i}"))).collect();
    let e = build_one(dut("DUT1"), v).unwrap_err().to_string();
    assert!(e.contains("too many NICs"), "{e}");
}

#[test]
fn commas_in_paths_are_escaped_for_qemu() {
    let mut v = vm("DUT1", 1);
    v.interfaces = vec![vhost("/run/a,b.sock")];
    let p = build_one(dut("DUT1"), v).unwrap();
    assert!(value_after(&p.argv, "-chardev").contains(&"socket,id=char1,path=/run/a,,b.sock,server=on"));
}

#[test]
fn image_vm_has_no_kernel_and_boots_from_its_drive() {
    let mut v = image_vm("DUT1", 3);
    v.interfaces = vec![VmInterface::NetUser { net: "10.0.2.0/24".into(), host_port: Some(10024) }];
    v.drives = vec![Drive { file: "/tmp/seed.iso".into(), format: "raw".into(), cdrom: true, index: Some(1) }];
    let p = build_one(dut("DUT1"), v).unwrap();
    for flag in ["-kernel", "-initrd", "-append", "-fsdev"] {
        assert!(!p.argv.iter().any(|a| a == flag), "{flag}");
    }
    assert!(p.files.is_empty());
    assert_eq!(
        value_after(&p.argv, "-drive"),
        [
            "file=/var/lib/vm/image.qcow2,format=qcow2,cache=none,if=virtio,file.locking=off",
            "file=/tmp/seed.iso,index=1,media=cdrom"
        ]
    );
    assert_eq!(value_after(&p.argv, "-netdev"), ["user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:10024-:22"]);
    assert_eq!(p.nics[0].mac.as_deref(), Some("52:54:00:00:03:ff"));
    assert_eq!(p.paths.qga.as_deref(), Some("/run/harness/r1/DUT1_3/qga.sock"));
    assert!(p.readiness.qga && p.readiness.ready_markers.is_empty());
}

/// `drives[].index` on a disk was accepted, checked for clashes, then left out of the argv
/// (only a cdrom's made it): the disk landed wherever QEMU put it.
#[test]
fn regression_a_disk_drive_keeps_its_index() {
    let mut v = image_vm("DUT1", 3);
    v.drives = vec![
        Drive { file: "/var/lib/vm/data.raw".into(), format: "raw".into(), cdrom: false, index: Some(2) },
        Drive { file: "/var/lib/vm/more.raw".into(), format: "raw".into(), cdrom: false, index: None },
    ];
    let p = build_one(dut("DUT1"), v).unwrap();
    assert_eq!(
        value_after(&p.argv, "-drive")[1..],
        [
            "file=/var/lib/vm/data.raw,format=raw,cache=none,if=virtio,index=2,file.locking=off",
            "file=/var/lib/vm/more.raw,format=raw,cache=none,if=virtio,file.locking=off"
        ]
    );
}

#[test]
fn testpmd_lines() {
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::TestpmdMac;
    v.smp = 3;
    v.queues = 2;
    v.jumbo = true;
    let p = build_one(dut("DUT1"), v.clone()).unwrap();
    let init = &p.files[0].content;
    assert_eq!(p.files.len(), 1);
    assert!(
        init.contains(
            "\n/opt/dpdk/build/app/dpdk-testpmd -v --lcores 0,1,2 -a 0000:00:06.0 -a 0000:00:07.0 --in-memory -- \
         --forward-mode=mac --burst=64 --txd=1024 --rxd=1024 --txq=2 --rxq=2 --tx-offloads=0x0 --numa --auto-start \
         --total-num-mbufs=32768 --nb-ports=2 --portmask=0x3 --disable-link-check --eth-peer=0,3c:fd:fe:aa:bb:01 \
         --eth-peer=1,3c:fd:fe:aa:bb:02 --max-pkt-len=9145 --mbuf-size=16384 --nb-cores=2\n"
        ),
        "{init}"
    );
    assert!(init.contains("/sys/bus/pci/drivers/vfio-pci/bind"));
    assert_eq!(p.readiness.ready_markers, [Marker::new(["Press enter to exit"])]);
    v.vars.remove("vif2_mac");
    let e = build_one(dut("DUT1"), v.clone()).unwrap_err().to_string();
    assert!(e.contains("vars.vif2_mac"), "{e}");
    v.smp = 1;
    v.vnf = Vnf::TestpmdIo;
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("smp >= 2"));
}

#[test]
fn init_script_follows_the_vm() {
    let mut v = vm("DUT1", 1);
    v.page_size = PageSize::G1;
    v.guest_hugepages = 3;
    v.init_command = Some("qemu-ga -m isa-serial -p /dev/ttyS1 &".into());
    let p = build_one(dut("DUT1"), v).unwrap();
    let init = &p.files[0].content;
    assert!(init.contains("pagesize=1G\" hugetlbfs /dev/hugepages\n"));
    assert!(init.contains("\nmount --bind /run/harness/r1/DUT1_1 /mnt\n"));
    assert!(init.contains("\nmkdir -p /run/harness/r1/DUT1_1 && mount --move /mnt /run/harness/r1/DUT1_1\n"));
    let ga = init.find("qemu-ga -m").unwrap();
    let vpp = init.find("\n/usr/bin/vpp -c").unwrap();
    let off = init.find("\npoweroff -f 2>/dev/null || busybox poweroff -f").unwrap();
    assert!(ga < vpp && vpp < off);
    assert!(init.ends_with("echo o > /proc/sysrq-trigger\n"));

    let mut v = vm("DUT1", 2);
    v.vnf = Vnf::None;
    v.ready_markers = vec!["READY".into()];
    let p = build_one(dut("DUT1"), v).unwrap();
    let init = &p.files[0].content;
    assert!(!init.contains("vfio") && !init.contains("/run/vpp"), "{init}");
    assert_eq!(p.readiness.ready_markers, [Marker::new(["READY"])]);
}

#[test]
fn strict_template_errors_name_the_vm_and_variable() {
    let mut v = vm("DUT1", 1);
    v.vars.remove("vif1_mac");
    let e = build_one(dut("DUT1"), v).unwrap_err().to_string();
    assert!(e.starts_with("VM DUT1_1: template vppip4_2vhostvr1024.exec:"), "{e}");
    assert!(e.contains("`vif1_mac`"), "{e}");
}

#[test]
fn invalid_inputs_are_refused() {
    let mut v = vm("DUT1", 1);
    v.mem = 1001;
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("multiple"));
    let mut v = vm("DUT1", 1);
    v.mem = 1024;
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("guest_hugepages 512 x 2M"));
    let mut v = vm("DUT1", 300);
    v.name = "x".into();
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("255"));
    let mut v = vm("DUT1", 1);
    v.cpus = Some(vec![1]);
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("smp is 2"));
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::Vpp("vppnope".into());
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("no template vppnope.exec"));
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::None;
    assert!(build_one(dut("DUT1"), v).unwrap_err().to_string().contains("nothing to wait for"));
    let t = Templates::embedded();
    let topo = topology(vec![dut("DUT1")], vec![vm("DUT1", 1)]);
    for bad in ["", "a b", "../x", "a/b"] {
        let r = build(&topo, &FactsByNode::new(), &PlanOptions { run_id: bad.into(), templates: &t, only_vms: &[] });
        assert!(matches!(r, Err(PlanError::RunId { .. })), "{bad:?}");
    }
}

/// `up --run-id .x` (or a 129-character `$BUILD_TAG`) started VMs that `down` and `status` then
/// refused to see (a dot directory escapes their glob, a long id their rule): they leaked with
/// their hugepages. `up` now applies the same rule, before anything reaches a host.
#[test]
fn regression_up_refuses_a_run_id_that_down_could_not_find() {
    let t = Templates::embedded();
    let topo = topology(vec![dut("DUT1")], vec![vm("DUT1", 1)]);
    let long = "x".repeat(129);
    for bad in [".x", ".hidden-run", long.as_str()] {
        let r = build(&topo, &FactsByNode::new(), &PlanOptions { run_id: bad.into(), templates: &t, only_vms: &[] });
        assert!(matches!(r, Err(PlanError::RunId { .. })), "{bad:?}");
        assert!(crate::remote::layout::run_id_problem(bad).is_some(), "{bad:?}");
    }
    assert!(crate::remote::layout::run_id_problem(&"x".repeat(128)).is_none());
    let ok = "x".repeat(40);
    assert!(build(&topo, &FactsByNode::new(), &PlanOptions { run_id: ok, templates: &t, only_vms: &[] }).is_ok());
}

#[test]
fn pinning_and_readiness() {
    let mut v = vm("DUT1", 1);
    v.cpus = Some(vec![3, 4]);
    v.sched = Sched::Rr;
    v.fail_markers = vec!["Segmentation fault".into()];
    let p = build_one(dut("DUT1"), v).unwrap();
    let pin = p.pinning.unwrap();
    assert_eq!((pin.cpus, pin.sched), (vec![3, 4], Sched::Rr));
    assert_eq!(p.readiness.ready_markers, [Marker::new(["vpp ", "built by"])]);
    assert_eq!(
        p.readiness.fail_markers,
        [Marker::new(["reboot: Power down"]), Marker::new(["Kernel panic"]), Marker::new(["Segmentation fault"])]
    );
}

#[test]
fn select_vms_filters_and_rejects_unknown() {
    let t = Templates::embedded();
    let topo = topology(vec![dut("DUT1"), dut("DUT2")], vec![vm("DUT1", 1), vm("DUT2", 1)]);
    let only = ["DUT2_1".to_string()];
    let plan =
        build(&topo, &FactsByNode::new(), &PlanOptions { run_id: "r".into(), templates: &t, only_vms: &only }).unwrap();
    assert_eq!(plan.nodes.len(), 1);
    assert_eq!(plan.nodes[0].name, "DUT2");
    let bad = ["DUT9_1".to_string()];
    let e = build(&topo, &FactsByNode::new(), &PlanOptions { run_id: "r".into(), templates: &t, only_vms: &bad })
        .unwrap_err();
    assert!(matches!(e, PlanError::UnknownVm { .. }));
    assert!(e.to_string().contains("DUT9_1"));
    // `harness render --vm DUT9_1` exits with "invalid input".
    assert_eq!(crate::commands::exit_code_for(&anyhow::Error::from(e)), crate::exit::INVALID_INPUT);
}

/// A Unix socket path past 107 bytes (a long VM name, run id or run_root) passed the plan and
/// failed only at QEMU's start, after hugepages were allocated and files uploaded.
#[test]
fn regression_a_socket_path_too_long_for_a_unix_socket_is_refused_by_the_plan() {
    let t = Templates::embedded();
    let mut v = vm("DUT1", 1);
    v.name = "v".repeat(64);
    let topo = topology(vec![dut("DUT1")], vec![v]);
    // /run/harness/<21>/<64>/qmp.sock: 108 bytes, one too many.
    let opts = PlanOptions { run_id: "r".repeat(21), templates: &t, only_vms: &[] };
    let e = build(&topo, &FactsByNode::new(), &opts).unwrap_err().to_string();
    assert!(e.contains("is 108 bytes, longer than the 107 a Unix socket can have"), "{e}");
    // A run id one shorter: 107 bytes, planned.
    let opts = PlanOptions { run_id: "r".repeat(20), templates: &t, only_vms: &[] };
    assert!(build(&topo, &FactsByNode::new(), &opts).is_ok());
}
