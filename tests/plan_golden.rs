//! Golden files for `plan::build` + `harness render`, and fidelity against CSIT HEAD's real output.
//!
//! Each case builds a topology in Rust, plans it and renders the text form into
//! `tests/golden/<case>.txt` (one case also as JSON). Regenerate after an intended change with
//! `UPDATE_GOLDEN=1 cargo test --test plan_golden` and review the diff in git.
//!
//! The fidelity tests take CSIT's golden strings from the behaviour reference (§1.4 qemu command,
//! §1.5 testpmd lines, §4.4 startup.conf, Appendix A running.exec) and require our output for the
//! same input to be identical except for an explicit list of differences, each one a row in
//! the README (Differences from CSIT).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::facts::{FactsByNode, HostFacts};
use harness::plan::fixture::{dut, image_vm, topology, vhost, vm};
use harness::plan::{self, Plan, PlanOptions, VmPlan};
use harness::templates::Templates;
use harness::topology::{Accel, Arch, Boot, Drive, Node, PageSize, Sched, Topology, VhostUser, Vm, VmInterface, Vnf};

const RUN_ID: &str = "RUN_ID";

fn build(topo: &Topology) -> Plan {
    build_with(topo, &FactsByNode::new())
}

fn build_with(topo: &Topology, facts: &FactsByNode) -> Plan {
    let t = Templates::embedded();
    plan::build(topo, facts, &PlanOptions { run_id: RUN_ID.into(), templates: &t, only_vms: &[] })
        .unwrap_or_else(|e| panic!("{e}"))
}

fn one(node: Node, v: Vm) -> Topology {
    topology(vec![node], vec![v])
}

fn set_vars(v: &mut Vm, pairs: &[(&str, &str)]) {
    for (k, val) in pairs {
        v.vars.insert(k.to_string(), val.to_string());
    }
}

/// CSIT `_c_vpp_2vfpt_*` on DUT1: two passthrough VFs and its fixed addressing.
fn vfpt(vnf: &str, plen: &str) -> Vm {
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::Vpp(vnf.into());
    v.smp = 3;
    v.vars.clear();
    v.interfaces = vec![VmInterface::VfioPci("0000:86:0a.1".into()), VmInterface::VfioPci("0000:86:0a.0".into())];
    set_vars(
        &mut v,
        &[
            ("ip1", "2.2.2.1/30"),
            ("ip2", "1.1.1.2/30"),
            ("route1", &format!("20.0.0.0/{plen}")),
            ("routeif1", "avf-0/0/6/0"),
            ("nexthop1", "2.2.2.2"),
            ("route2", &format!("10.0.0.0/{plen}")),
            ("routeif2", "avf-0/0/7/0"),
            ("nexthop2", "1.1.1.1"),
            ("arpmac1", "3c:fd:fe:d1:5c:d8"),
            ("arpip1", "1.1.1.1"),
            ("arpif1", "avf-0/0/7/0"),
        ],
    );
    v
}

fn with_vnf(vnf: &str) -> Vm {
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::Vpp(vnf.into());
    v
}

fn vhost_opts(f: impl Fn(&mut VhostUser)) -> impl Fn(VmInterface) -> VmInterface {
    move |i| match i {
        VmInterface::VhostUser(mut v) => {
            f(&mut v);
            VmInterface::VhostUser(v)
        }
        other => other,
    }
}

/// Every golden case: name → topology.
fn cases() -> Vec<(&'static str, Topology)> {
    let mut c: Vec<(&'static str, Topology)> = Vec::new();

    // One case per shipped VPP VNF template, CSIT's recipe for it.
    for vnf in [
        "vppip4_2vhostvr1024",
        "vppip4_2virtiovr1024",
        "vppip4noarp_2vhostvr1024",
        "vppip4noarp_2virtiovr1024",
        "vppip6_2vhostvr1024",
        "vppip6_2virtiovr1024",
        "vppl2xc_2vhostvr1024",
        "vppl2xc_2virtiovr1024",
    ] {
        c.push((vnf, one(dut("DUT1"), with_vnf(vnf))));
    }
    c.push(("vpp_2vfpt_ip4base_plen24", one(dut("DUT1"), vfpt("vpp_2vfpt_ip4base_plen24", "24"))));
    for vnf in ["vpp_2vfpt_ip4scale2k_plen30", "vpp_2vfpt_ip4scale20k_plen30", "vpp_2vfpt_ip4scale200k_plen30"] {
        c.push((vnf, one(dut("DUT1"), vfpt(vnf, "30"))));
    }
    for vnf in [
        "vpp_2vfpt_ethip4_nat44ed_h1024_p63_s64512",
        "vpp_2vfpt_ethip4_nat44ed_h4096_p63_s258048",
        "vpp_2vfpt_ethip4_nat44ed_h16384_p63_s1032192",
    ] {
        let mut v = vfpt(vnf, "24");
        set_vars(&mut v, &[("nat", "nat44 add address 172.16.0.1 - 172.16.0.63")]);
        c.push((vnf, one(dut("DUT1"), v)));
    }
    for vnf in ["vpp_2vfpt_ethip4ipsec1tnl_plen30", "vpp_2vfpt_ethip4ipsec40tnl_plen30"] {
        let mut v = vfpt(vnf, "30");
        set_vars(&mut v, &[("ipsec", "ipsec itf create instance 0")]);
        c.push((vnf, one(dut("DUT1"), v)));
    }

    // testpmd, CSIT's §1.5 inputs.
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::TestpmdIo;
    c.push(("testpmd_io", one(dut("DUT1"), v)));
    let mut v = vm("DUT1", 1);
    v.vnf = Vnf::TestpmdMac;
    set_vars(&mut v, &[("dpdk_dir", "/opt/dpdk-23.11")]);
    c.push(("testpmd_mac_dpdk_dir", one(dut("DUT1"), v)));

    // Queues 2 and 4 with 4 and 5 vCPUs, pinned, SCHED_RR.
    for (name, q, cpus) in [("queues2_pinned_rr", 2, vec![3, 4, 60]), ("queues4_pinned", 4, vec![4, 5, 6, 61, 62])] {
        let mut v = vm("DUT1", 1);
        v.queues = q;
        v.smp = cpus.len() as u32;
        v.sched = if q == 2 { Sched::Rr } else { Sched::None };
        v.cpus = Some(cpus);
        v.interfaces = v.interfaces.into_iter().map(vhost_opts(move |h| h.queues = q)).collect();
        c.push((name, one(dut("DUT1"), v)));
    }

    // Jumbo frames, csum+gso, no queue size, vhost client, vectors override.
    let mut v = vm("DUT1", 2);
    v.jumbo = true;
    v.interfaces = v
        .interfaces
        .into_iter()
        .map(vhost_opts(|h| {
            h.csum = true;
            h.gso = true;
            h.queue_size = None;
        }))
        .collect();
    c.push(("jumbo_csum_gso_no_queue_size", one(dut("DUT1"), v)));
    let mut v = vm("DUT1", 12);
    v.interfaces = v
        .interfaces
        .into_iter()
        .map(vhost_opts(|h| {
            h.server = false;
            h.vectors = Some(0);
        }))
        .collect();
    c.push(("vhost_client_vectors0_id12", one(dut("DUT1"), v)));

    // aarch64 with 1G pages, TCG, a guest agent (virtio-serial) and a custom hugepage mount.
    let mut n = dut("DUT1");
    n.arch = Arch::Aarch64;
    n.qemu.accel = Accel::Tcg;
    n.qemu.bin_dir = "/opt/qemu/bin".into();
    n.hugepages.mounts.insert(PageSize::G1, "/mnt/huge1G".into());
    let mut v = vm("DUT1", 1);
    v.page_size = PageSize::G1;
    v.guest_hugepages = 3;
    v.qga = true;
    c.push(("aarch64_1g_tcg_qga", one(n, v)));

    // x86_64, 1G pages, accel auto, qga on isa-serial, vnf none with an init command.
    let mut n = dut("DUT1");
    n.qemu.accel = Accel::Auto;
    n.hugepages.allocate = true;
    let mut v = vm("DUT1", 1);
    v.page_size = PageSize::G1;
    v.mem = 2048;
    v.guest_hugepages = 0;
    v.vnf = Vnf::None;
    v.qga = true;
    v.init_command = Some("qemu-ga -m isa-serial -p /dev/ttyS1 -t /run &".into());
    v.ready_markers = vec!["LAB-GUEST-BOOTED".into()];
    v.fail_markers = vec!["Oops".into()];
    c.push(("x86_1g_auto_none_init_command", one(n, v)));

    // Two DUTs, two VMs each, unique MACs.
    let mut t =
        topology(vec![dut("DUT1"), dut("DUT2")], vec![vm("DUT1", 1), vm("DUT1", 2), vm("DUT2", 1), vm("DUT2", 2)]);
    t.unique_macs = true;
    t.nodes[1].host = "127.0.0.2".into();
    t.nodes[1].run_root = "/var/run/harness/".into();
    c.push(("two_duts_unique_macs", t));

    // Image VM: disk image + cdrom + user networking with a loopback ssh forward + extra args.
    let mut v = image_vm("DUT1", 5);
    v.interfaces = vec![
        VmInterface::NetUser { net: "10.0.2.0/24".into(), host_port: Some(10026) },
        vhost("/run/vpp/sock-5-1"),
        VmInterface::VfioPci("0000:18:02.0".into()),
    ];
    v.drives = vec![
        Drive { file: "/tmp/seed.iso".into(), format: "raw".into(), cdrom: true, index: Some(1) },
        Drive { file: "/tmp/x.iso".into(), format: "raw".into(), cdrom: true, index: None },
        Drive { file: "/var/lib/vm/data,1.img".into(), format: "raw".into(), cdrom: false, index: None },
    ];
    v.extra_args = vec!["-device".into(), "virtio-rng-pci".into()];
    c.push(("image_vm_net_user_drives", one(dut("DUT1"), v)));

    c
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = golden_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut outputs: BTreeMap<String, String> = BTreeMap::new();
    for (name, topo) in cases() {
        let plan = build(&topo);
        outputs.insert(format!("{name}.txt"), plan::render::text(&plan));
        if name == "vppip4_2vhostvr1024" {
            outputs.insert(format!("{name}.json"), plan::render::json(&plan).unwrap());
        }
    }
    let mut failures = Vec::new();
    for (file, got) in &outputs {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if &want == got => {}
            Ok(want) => failures.push(format!(
                "{file} differs (left: golden, right: now):\n{}",
                pretty_assertions::StrComparison::new(&want, got)
            )),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    // A golden file without a case is stale: remove it on update, fail otherwise.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if !outputs.contains_key(&name) {
            if update {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                failures.push(format!("stale golden file {name}: no case produces it"));
            }
        }
    }
    println!("{} golden files from {} cases", outputs.len(), cases().len());
    assert!(
        failures.is_empty(),
        "{}\n\n{} golden mismatch(es); if intended: UPDATE_GOLDEN=1 cargo test --test plan_golden",
        failures.join("\n\n"),
        failures.len()
    );
}

/// Every shipped VNF template has a golden case, so none can change unnoticed.
#[test]
fn every_vnf_template_has_a_case() {
    let names: Vec<&str> = cases().iter().map(|(n, _)| *n).collect();
    for vnf in Templates::embedded().vpp_vnfs() {
        assert!(names.contains(&vnf.as_str()), "no golden case for {vnf}");
    }
}

// ------------------------------------------------------------------------------------------------
// Fidelity against CSIT HEAD (reference §1.4, §1.5, §4.4, Appendix A), verbatim.

const CSIT_QEMU_HEAD: &str = "/usr/bin/qemu-system-x86_64 -daemonize -nodefaults -name vnf1,debug-threads=on -no-user-config -nographic -enable-kvm -pidfile /run/qemu_1.pid -cpu host -machine pc,accel=kvm,usb=off,mem-merge=off -smp 2,sockets=1,cores=2,threads=1 -object memory-backend-file,id=mem,size=4096M,mem-path=/dev/hugepages,share=on -m 4096M -numa node,memdev=mem -serial file:/tmp/serial_1.log -fsdev local,id=root9p,path=/,security_model=none -device virtio-9p-pci,fsdev=root9p,mount_tag=virtioroot -kernel /opt/boot/vmlinuz-6.8.0-generic -initrd /opt/boot/initrd.img-6.8.0-generic -append 'ro rootfstype=9p rootflags=trans=virtio root=virtioroot console=ttyS0 tsc=reliable hugepages=512 hugepagesz=2M init=/etc/vm_init_1.conf fastboot' -chardev socket,id=char1,path=/run/vpp/sock-1-1,server=on -netdev vhost-user,id=vhost1,chardev=char1,queues=1 -device virtio-net-pci,netdev=vhost1,mac=52:54:00:00:01:01,addr=6.0,mq=on,vectors=4,csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,rx_queue_size=1024,tx_queue_size=1024 -chardev socket,id=char2,path=/run/vpp/sock-1-2,server=on -netdev vhost-user,id=vhost2,chardev=char2,queues=1 -device virtio-net-pci,netdev=vhost2,mac=52:54:00:00:01:02,addr=7.0,mq=on,vectors=4,csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,rx_queue_size=1024,tx_queue_size=1024";

const CSIT_STARTUP_CONF_HEAD: &str = "\"unix\\n{\\n  nodaemon \\n  cli-listen /run/vpp/cli.sock\\n  exec /etc/vpp/vm_running_1.exec\\n}\\nsocksvr\\n{\\n  socket-name /run/vpp/api.sock\\n}\\nmemory\\n{\\n  main-heap-size 512M\\n  main-heap-page-size 2M\\n  default-hugepage-size 2M\\n}\\nstatseg\\n{\\n  size 512M\\n  page-size 2M\\n  per-node-counters on\\n}\\nbuffers\\n{\\n  buffers-per-numa 107520\\n}\\ncpu\\n{\\n  main-core 0\\n  corelist-workers 1-1\\n}\\nplugins\\n{\\n  plugin default\\n  {\\n    disable  \\n  }\\n  plugin ping_plugin.so\\n  {\\n    enable  \\n  }\\n  plugin dpdk_plugin.so\\n  {\\n    enable  \\n  }\\n}\\ndpdk\\n{\\n  dev 0000:00:06.0 \\n  dev 0000:00:07.0 \\n  dev default\\n  {\\n    num-rx-queues 1\\n  }\\n  log-level debug\\n  no-multi-seg \\n  no-tx-checksum-offload \\n}\\n\"";

/// Appendix A: the `echo '…' | sudo tee /etc/vpp/vm_running_1.exec` upload.
const CSIT_EXEC_UPLOAD_HEAD: &str = "echo 'set interface state GigabitEthernet0/6/0 up
set interface state GigabitEthernet0/7/0 up

set interface mac address GigabitEthernet0/6/0 52:54:00:00:01:01
set interface ip address GigabitEthernet0/6/0 1.1.1.1/24
set interface state GigabitEthernet0/6/0 up

set interface mac address GigabitEthernet0/7/0 52:54:00:00:01:02
set interface ip address GigabitEthernet0/7/0 1.1.2.1/24
set interface state GigabitEthernet0/7/0 up

set ip neighbor static GigabitEthernet0/6/0 1.1.1.2 3c:fd:fe:aa:bb:01
set ip neighbor static GigabitEthernet0/7/0 1.1.2.2 3c:fd:fe:aa:bb:02

ip route add 10.0.0.0/8 via 1.1.1.2
ip route add 20.0.0.0/8 via 1.1.2.2

show logging

show version
' | sudo tee /etc/vpp/vm_running_1.exec";

const CSIT_TESTPMD_IO_HEAD: &str = "/opt/dpdk/build/app/dpdk-testpmd -v --lcores 0,1 -a 0000:00:06.0 -a 0000:00:07.0 --in-memory -- --forward-mode=io --burst=64 --txd=1024 --rxd=1024 --txq=1 --rxq=1 --tx-offloads=0x0 --numa --auto-start --total-num-mbufs=32768 --nb-ports=2 --portmask=0x3 --disable-link-check --max-pkt-len=1800 --mbuf-size=16384 --nb-cores=1";
const CSIT_TESTPMD_MAC_HEAD: &str = "/opt/dpdk/build/app/dpdk-testpmd -v --lcores 0,1 -a 0000:00:06.0 -a 0000:00:07.0 --in-memory -- --forward-mode=mac --burst=64 --txd=1024 --rxd=1024 --txq=1 --rxq=1 --tx-offloads=0x0 --numa --auto-start --total-num-mbufs=32768 --nb-ports=2 --portmask=0x3 --disable-link-check --eth-peer=0,3c:fd:fe:aa:bb:01 --eth-peer=1,3c:fd:fe:aa:bb:02 --max-pkt-len=1800 --mbuf-size=16384 --nb-cores=1";

/// Our plan for CSIT's golden setup, with the kernel/initrd lookups resolved as in CSIT's run.
fn csit_setup_plan(node: Node, v: Vm) -> VmPlan {
    let Boot::Kernel { kernel, initrd } = v.boot.clone() else { panic!("a kernel VM") };
    let lookups = [
        (kernel, Some("/opt/boot/vmlinuz-6.8.0-generic".to_string())),
        (initrd, Some("/opt/boot/initrd.img-6.8.0-generic".to_string())),
    ];
    for (prefix, found) in &lookups {
        assert!(found.as_deref().unwrap().starts_with(prefix.as_str()));
    }
    let facts = HostFacts { lookups: Some(lookups.into()), ..HostFacts::default() };
    let facts = FactsByNode::from([(node.name.clone(), facts)]);
    build_with(&one(node, v), &facts).nodes.remove(0).vms.remove(0)
}

fn replace_value(tokens: &mut [String], flag: &str, from: &str, to: &str) {
    let i = tokens.iter().position(|t| t == flag).unwrap_or_else(|| panic!("no {flag}")) + 1;
    assert!(tokens[i].contains(from), "{flag} {} lacks {from}", tokens[i]);
    tokens[i] = tokens[i].replace(from, to);
}

/// CSIT's HEAD tokens turned into ours by exactly the documented differences; nothing else may differ.
fn expected_from_csit(csit: &str, p: &VmPlan) -> Vec<String> {
    // D8: the CSIT string is for a shell; its `-append '…'` is one argv element without quotes.
    let mut t: Vec<String> = shlex::split(csit).unwrap();
    let dir = &p.paths.run_dir;
    // D1 (weakness 7, 10): every per-VM path lives in the run directory, not /run, /tmp, /etc.
    replace_value(&mut t, "-pidfile", "/run/qemu_1.pid", &p.paths.pidfile);
    replace_value(&mut t, "-append", "init=/etc/vm_init_1.conf", &format!("init={dir}/init.sh"));
    // D2: -name is the VM's name (CSIT's node name DUT1_1), not vnf{id}, unique across DUTs.
    replace_value(&mut t, "-name", "vnf1,", "DUT1_1,");
    // D3: guest RAM is preallocated, so missing hugepages fail at start, not mid-test.
    replace_value(&mut t, "-object", "share=on", "share=on,prealloc=on");
    // D4: 9p export with multidevs=remap (no inode clashes across host mounts, no QEMU warning).
    replace_value(&mut t, "-fsdev", "security_model=none", "security_model=none,multidevs=remap");
    // D5: serial log through an append-mode file chardev (a restart never truncates evidence).
    let i = t.iter().position(|x| x == "-serial").unwrap();
    t.splice(
        i..i + 2,
        [
            "-chardev".to_string(),
            format!("file,id=serial0,path={},append=on", p.paths.serial_log),
            "-serial".into(),
            "chardev:serial0".into(),
        ],
    );
    // D6: always a QMP socket (graceful quit, vCPU thread ids), after the kernel VM params.
    let i = t.iter().position(|x| x == "-append").unwrap() + 2;
    t.splice(i..i, ["-qmp".to_string(), format!("unix:{},server=on,wait=off", p.paths.qmp)]);
    t
}

/// The differences the fidelity tests allow, each a row marked *(fidelity)* in the docs.
const FIDELITY_DIFFERENCES: &[&str] = &["D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8"];

#[test]
fn fidelity_differences_are_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for id in FIDELITY_DIFFERENCES {
        assert!(doc.contains(&format!("| {id} *(fidelity)* |")), "{id} is not a documented fidelity difference");
    }
    let this = include_str!("plan_golden.rs");
    let ids = this
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("// D"))
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()));
    for rest in ids {
        let id = format!("D{}", rest.split([':', ' ']).next().unwrap());
        assert!(FIDELITY_DIFFERENCES.contains(&id.as_str()), "{id} used in a fidelity test but not listed");
    }
}

#[test]
fn fidelity_qemu_command_x86_64() {
    let p = csit_setup_plan(dut("DUT1"), vm("DUT1", 1));
    pretty_assertions::assert_eq!(p.argv, expected_from_csit(CSIT_QEMU_HEAD, &p));
}

/// §1.4: "The same setup with aarch64 and page_size 1G differs only in …" (applied to the x86 string).
#[test]
fn fidelity_qemu_command_aarch64_1g() {
    let csit = CSIT_QEMU_HEAD
        .replace("/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-aarch64")
        .replace(
            "-machine pc,accel=kvm,usb=off,mem-merge=off",
            "-machine virt,accel=kvm,usb=off,mem-merge=off,gic-version=3",
        )
        .replace("mem-path=/dev/hugepages,", "mem-path=/dev/hugepages1G,")
        .replace("console=ttyS0", "console=ttyAMA0")
        .replace("hugepages=512 hugepagesz=2M", "hugepages=3 hugepagesz=1G");
    let mut n = dut("DUT1");
    n.arch = Arch::Aarch64;
    let mut v = vm("DUT1", 1);
    v.page_size = PageSize::G1;
    v.guest_hugepages = 3;
    let p = csit_setup_plan(n, v);
    pretty_assertions::assert_eq!(p.argv, expected_from_csit(&csit, &p));
}

#[test]
fn fidelity_startup_conf() {
    let csit_text: String = serde_json::from_str(CSIT_STARTUP_CONF_HEAD).unwrap();
    assert_eq!(csit_text.len(), 652, "the reference says 652 characters");
    // CSIT's remote file is the serialisation plus echo's newline.
    let csit_file = format!("{csit_text}\n");
    let p = build(&one(dut("DUT1"), vm("DUT1", 1))).nodes.remove(0).vms.remove(0);
    let ours = &p.files.iter().find(|f| f.role == plan::FileRole::StartupConf).unwrap().content;
    // D1: the exec file path is in the run directory.
    // D7: no extra trailing newline (the file is exactly the serialisation).
    // Page sizes: the VM's real page size, which for this input (2M) equals CSIT's.
    let expected = csit_file
        .replace("exec /etc/vpp/vm_running_1.exec", &format!("exec {}/running.exec", p.paths.run_dir))
        .strip_suffix('\n')
        .unwrap()
        .to_string();
    pretty_assertions::assert_eq!(ours, &expected);
}

#[test]
fn fidelity_running_exec() {
    let rest = CSIT_EXEC_UPLOAD_HEAD.strip_prefix("echo '").unwrap();
    let rendered = rest.strip_suffix("' | sudo tee /etc/vpp/vm_running_1.exec").unwrap();
    let csit_file = format!("{rendered}\n"); // echo's newline
    let p = build(&one(dut("DUT1"), vm("DUT1", 1))).nodes.remove(0).vms.remove(0);
    let ours = &p.files.iter().find(|f| f.role == plan::FileRole::Exec).unwrap().content;
    // D7: identical apart from echo's extra trailing newline.
    assert_eq!(ours, rendered);
    assert_eq!(format!("{ours}\n"), csit_file);
}

#[test]
fn fidelity_testpmd_lines() {
    for (vnf, csit) in [(Vnf::TestpmdIo, CSIT_TESTPMD_IO_HEAD), (Vnf::TestpmdMac, CSIT_TESTPMD_MAC_HEAD)] {
        let mut v = vm("DUT1", 1);
        v.vnf = vnf;
        let p = build(&one(dut("DUT1"), v)).nodes.remove(0).vms.remove(0);
        let init = &p.files[0].content;
        // Identical: the command line is the init script's payload line, unchanged.
        assert!(init.lines().any(|l| l == csit), "{csit}\nnot in\n{init}");
    }
}

// ------------------------------------------------------------------------------------------------
// The real QEMU accepts what we plan (everything but the parts that need a kernel or devices).

/// Start the planned argv under TCG with `-S` (nothing runs), then quit it over the planned QMP
/// socket. Proves the option syntax (chardev append, serial chardev, prealloc, 9p multidevs,
/// qga, user net with loopback hostfwd, drives, MACs) against QEMU itself.
#[test]
fn qemu_accepts_the_planned_argv() {
    let Some(qemu) = ["/usr/bin/qemu-system-x86_64"].into_iter().find(|p| Path::new(p).exists()) else {
        panic!("qemu-system-x86_64 is required (apt-get install qemu-system-x86)");
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let mut n = dut("DUT1");
    n.qemu.accel = Accel::Tcg;
    n.run_root = root.clone();
    // No hugetlbfs here: a plain directory is a valid mem-path for a file-backed memory backend.
    n.hugepages.mounts.insert(PageSize::M2, root.clone());
    let image = format!("{root}/disk,1.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();

    let mut kernel_like = vm("DUT1", 1);
    kernel_like.mem = 64;
    kernel_like.guest_hugepages = 8;
    kernel_like.qga = true;
    kernel_like.jumbo = true;
    kernel_like.interfaces = vec![
        VmInterface::NetUser { net: "10.0.2.0/24".into(), host_port: None },
        vhost("/nonexistent/sock-1-1"),
        vhost_opts(|h| {
            h.csum = true;
            h.gso = true;
            h.queue_size = None;
        })(vhost("/nonexistent/sock-1-2")),
    ];
    kernel_like.vnf = Vnf::None;
    kernel_like.ready_markers = vec!["x".into()];
    let mut image_vm = kernel_like.clone();
    image_vm.qemu_id = 2;
    image_vm.name = "DUT1_2".into();
    image_vm.boot = Boot::Image { image: image.clone(), format: "raw".into() };
    image_vm.drives = vec![Drive { file: image.clone(), format: "raw".into(), cdrom: true, index: Some(1) }];

    let plan = build(&topology(vec![n], vec![kernel_like, image_vm]));
    for vmp in &plan.nodes[0].vms {
        std::fs::create_dir_all(&vmp.paths.run_dir).unwrap();
        // Drop -kernel/-initrd/-append (no kernel here) and stay paused. The vhost-user backends
        // (no switch here) become user-net backends with the same ids, so the planned virtio-net
        // device strings are still checked by QEMU.
        let mut argv: Vec<String> = Vec::new();
        let mut it = vmp.argv.iter();
        while let Some(a) = it.next() {
            let next = |it: &mut std::slice::Iter<String>| it.next().unwrap().clone();
            match a.as_str() {
                "-kernel" | "-initrd" | "-append" => {
                    next(&mut it);
                }
                "-chardev" => {
                    let v = next(&mut it);
                    if !v.starts_with("socket,id=char") {
                        argv.extend([a.clone(), v]);
                    }
                }
                "-netdev" => {
                    let v = next(&mut it);
                    match v.strip_prefix("vhost-user,id=") {
                        Some(rest) => argv.extend([a.clone(), format!("user,id={}", rest.split(',').next().unwrap())]),
                        None => argv.extend([a.clone(), v]),
                    }
                }
                _ => argv.push(a.clone()),
            }
        }
        assert_eq!(argv.iter().filter(|a| a.contains(",mrg_rxbuf=on,host_mtu=9200")).count(), 2);
        argv[0] = qemu.to_string();
        argv.push("-S".into());
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{}: qemu refused:\n{}", vmp.name, String::from_utf8_lossy(&out.stderr));
        let pid: i32 = std::fs::read_to_string(&vmp.paths.pidfile).unwrap().trim().parse().unwrap();
        let quit = std::process::Command::new("socat")
            .args(["-t", "2", "-", &format!("UNIX-CONNECT:{}", vmp.paths.qmp)])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")?;
                c.wait_with_output()
            });
        // Wait for our QEMU (by its pid) to go; kill it by pid if QMP did not work.
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        if !gone {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let reply = String::from_utf8_lossy(&quit.unwrap().stdout).to_string();
        assert!(gone, "{}: qemu did not quit over QMP: {reply}", vmp.name);
        assert!(reply.contains("\"return\""), "{reply}");
        assert!(Path::new(&vmp.paths.serial_log).exists(), "serial log chardev file");
    }
}

/// Every example in `topologies/` (and the lab's, when `scripts/lab.sh up` has written it) loads
/// through the real YAML loader, plans, and renders as text and JSON with every VM present.
#[test]
fn every_example_topology_validates_and_renders() {
    let t = Templates::embedded();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples missing: {files:?}");
    for f in files {
        let topo = harness::topology::load(&f, &t).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let p = plan::build(
            &topo,
            &FactsByNode::new(),
            &PlanOptions { run_id: RUN_ID.into(), templates: &t, only_vms: &[] },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let planned: usize = p.nodes.iter().map(|n| n.vms.len()).sum();
        assert_eq!(planned, topo.vms.len(), "{}", f.display());
        let text = plan::render::text(&p);
        let json: serde_json::Value = serde_json::from_str(&plan::render::json(&p).unwrap()).unwrap();
        for v in &topo.vms {
            assert!(text.contains(&format!("vm {}", v.name)), "{}: {} not rendered", f.display(), v.name);
        }
        assert_eq!(
            json["nodes"].as_array().unwrap().iter().map(|n| n["vms"].as_array().unwrap().len()).sum::<usize>(),
            planned
        );
    }
}
